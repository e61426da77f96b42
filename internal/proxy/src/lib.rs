//! skein's service proxy, in place of kube-proxy: Services and their EndpointSlices become
//! chains, sets and maps in skein's nftables table (`inet skein`).
//!
//! - [`service_map`]: which Service ports get rules and which endpoints each reaches, chosen
//!   as kube-proxy chooses them (ready, else serving-and-terminating; local sets for eTP/iTP
//!   Local; topology hints).
//! - [`ruleset`]: the desired chains and elements, a pure function of the service map and the
//!   node's context; the documented walk of a packet is there.
//! - [`host_ports`]: the pods' hostPorts (the CNI's `portMappings`), DNATed in the same table.
//! - [`sync`]: the mirror of what the kernel holds and the ordered plan that changes only the
//!   difference, in groups that bound each kernel transaction.
//! - [`tracer`]: walks the model for one packet, for tests.
//!
//! No IO here: the daemon's proxy part applies the plans through `skein-nft`'s backend.

pub mod host_ports;
pub mod ruleset;
pub mod service_map;
pub mod stale_flows;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod tracer;

pub use host_ports::{HostPort, HostPortClash};
pub use service_map::{Backend, NodeContext, ServiceMap, ServicePort, Unprogrammable, service_map};
pub use sync::{Mirror, Plan, ProxyState, Stale, is_proxy_object};

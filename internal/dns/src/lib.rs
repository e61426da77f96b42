//! Cluster DNS, in place of CoreDNS: the Kubernetes DNS records of the cluster zone answered
//! from an index built from each snapshot (`index`), with the answers kept ready in wire form
//! so a query costs a hash lookup and a copy (`answer`); the UDP and TCP servers (`server`)
//! and a caching forwarder for every other name (`forward`).
//!
//! The index and the answers are pure; the servers and the forwarder are the IO edge.

pub mod answer;
pub mod client;
pub mod forward;
pub mod index;
pub mod name;
pub mod records;
pub mod resolv_conf;
pub mod server;

pub use answer::{Outcome, Transport, respond};
pub use hickory_proto::rr::RecordType;
pub use index::{Index, PodRecords, ZoneConfig, build};

#[cfg(test)]
mod tests;

//! The node's pod network, through rtnetlink: the bridge that holds the pods' gateway address,
//! one veth pair per pod attachment (the pod end moved into the pod's network namespace, renamed
//! to the runtime's interface name, addressed, with a default route via the gateway), hairpin on
//! the bridge ports, and the sysctls pods need.
//!
//! It knows nothing of IPAM or the CNI protocol: it is handed addresses and a namespace, and
//! owns only links it created (the bridge and the `skv…` host ends).

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

mod attach;
mod bridge;
mod events;
mod local_address;
mod netns;
mod overlay_link;
mod sysctl;
#[cfg(test)]
mod tests;

pub use attach::{Attached, PodAttachment};
pub use bridge::BridgeRepair;
pub use events::{KernelEvent, KernelEvents, kernel_events};
pub use netns::in_netns;
pub use sysctl::{has_br_netfilter, set_sysctl};

/// Prefix of the host ends of pod veths: `down`-style cleanup and GC tell them apart by it.
pub const HOST_IFNAME_PREFIX: &str = "skv";

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("{action}: {source}")]
    Netlink {
        action: String,
        source: rtnetlink::Error,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("interface {ifname} already exists in the pod's network namespace")]
    Exists { ifname: String },
    #[error("interface {ifname} is missing from the pod's network namespace")]
    Missing { ifname: String },
    #[error("interface {ifname} in the pod's network namespace lacks address {address}")]
    AddressMissing { ifname: String, address: IpNet },
    #[error("{0}")]
    Other(String),
}

pub(crate) fn nl(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodNetError {
    let action = action.into();
    move |source| PodNetError::Netlink { action, source }
}

/// The host end's name for an attachment: stable (DEL finds it without state), unique per
/// (container, interface), and within the 15-character limit.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_IFNAME_PREFIX}{:012x}", hash & 0xffff_ffff_ffff)
}

/// The gateway address with the CIDR's prefix, as the bridge holds it.
pub fn bridge_address(cidr: IpNet, gateway: IpAddr) -> IpNet {
    IpNet::new(gateway, cidr.prefix_len()).unwrap_or(cidr)
}

/// A netlink connection in the calling thread's network namespace (the node's).
#[derive(Debug, Clone)]
pub struct PodNet {
    pub(crate) handle: Handle,
}

impl PodNet {
    pub fn connect() -> Result<Self, PodNetError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| PodNetError::Io {
                action: "opening a netlink socket".into(),
                source,
            })?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every link of the namespace.
    pub(crate) async fn links(&self) -> Result<Vec<LinkMessage>, PodNetError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, PodNetError> {
        link_by_name(&self.handle, name).await
    }
}

pub(crate) fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

pub(crate) fn address_of(
    message: &rtnetlink::packet_route::address::AddressMessage,
) -> Option<IpNet> {
    use rtnetlink::packet_route::address::AddressAttribute;
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNet::new(*ip, message.header.prefix_len).ok(),
        _ => None,
    })
}

pub(crate) fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc_eexist())
}

pub(crate) fn ignore_missing(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    match &e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() == -19 => Ok(()), // ENODEV
        _ => Err(e),
    }
}

const fn libc_eexist() -> i32 {
    17
}

pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, PodNetError> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(None),
        Err(e) => Err(PodNetError::Netlink {
            action: format!("looking up {name}"),
            source: e,
        }),
    }
}

//! The UDP view of conntrack entries and the four kinds of stale entry the service proxy asks to
//! have deleted, as pure matches on that view.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::error::Family;
use crate::flow::{Flow, IPPROTO_UDP};

/// A UDP conntrack entry: who sent (original source), to what (original destination: the
/// Service address or a node address for NodePorts), and who answers (reply source: the
/// endpoint after DNAT, the original destination without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpEntry {
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub reply_src: SocketAddr,
}

impl UdpEntry {
    /// The UDP view of `flow`; `None` for other protocols.
    pub(crate) fn of(flow: &Flow) -> Option<Self> {
        let (orig, reply) = (&flow.orig, &flow.reply);
        if orig.proto != IPPROTO_UDP {
            return None;
        }
        Some(Self {
            orig_src: SocketAddr::new(orig.src, orig.src_port?),
            orig_dst: SocketAddr::new(orig.dst, orig.dst_port?),
            reply_src: SocketAddr::new(reply.src, reply.src_port?),
        })
    }

    /// Whether the entry was DNATed: its answers come from somewhere other than where the
    /// client sent. Address and port both, so that a NodePort DNATed to a host-network
    /// endpoint on the node's own address still counts as DNATed.
    pub fn is_dnated(&self) -> bool {
        self.reply_src != self.orig_dst
    }
}

impl fmt::Display for UdpEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} (answered by {})",
            self.orig_src, self.orig_dst, self.reply_src
        )
    }
}

/// Which UDP entries to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpFilter {
    /// Sent to `dst` and DNATed to `endpoint` (reply source address == `endpoint`): an
    /// endpoint that went away.
    Nat { dst: SocketAddr, endpoint: IpAddr },
    /// Sent to port `port` on any address and DNATed to `endpoint`: the same for a NodePort.
    PortNat { port: u16, endpoint: IpAddr },
    /// Sent to `dst` and not DNATed: made while the Service port had no endpoint.
    Unnated { dst: SocketAddr },
    /// Sent to port `port` on any address and not DNATed: the same for a NodePort.
    PortUnnated { port: u16 },
}

impl UdpFilter {
    pub fn matches(&self, entry: &UdpEntry) -> bool {
        match *self {
            UdpFilter::Nat { dst, endpoint } => {
                entry.orig_dst == dst && entry.reply_src.ip() == endpoint
            }
            UdpFilter::PortNat { port, endpoint } => {
                entry.orig_dst.port() == port && entry.reply_src.ip() == endpoint
            }
            UdpFilter::Unnated { dst } => entry.orig_dst == dst && !entry.is_dnated(),
            UdpFilter::PortUnnated { port } => entry.orig_dst.port() == port && !entry.is_dnated(),
        }
    }

    /// The one family whose table can hold a match, or `None` for both.
    pub(crate) fn family(&self) -> Option<Family> {
        match *self {
            UdpFilter::Nat { dst, .. } | UdpFilter::Unnated { dst } => Some(Family::of(dst.ip())),
            UdpFilter::PortNat { endpoint, .. } => Some(Family::of(endpoint)),
            UdpFilter::PortUnnated { .. } => None,
        }
    }
}

//! A conntrack entry as ctnetlink describes it: its original and reply tuples, zone and id,
//! parsed from an `IPCTNL_MSG_CT_NEW` dump message; and the delete request naming it again.
//!
//! The original tuple is what the client sent (to the Service address); the reply tuple is what
//! the answer will look like, so after DNAT its source is the endpoint the entry was sent to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::attr::{AttrWriter, attrs, be_u16, be_u32, wrong_size};
use crate::error::NetlinkError;
use crate::message::NFGENMSG_LEN;

/// `NFNL_SUBSYS_CTNETLINK`: the high byte of the message type.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: what each entry of a dump arrives as.
pub(crate) const IPCTNL_MSG_CT_NEW: u16 = NFNL_SUBSYS_CTNETLINK << 8;
pub(crate) const IPCTNL_MSG_CT_GET: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | 1;
pub(crate) const IPCTNL_MSG_CT_DELETE: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
// enum ctattr_filter, and the kernel's tuple filter bit for the L4 protocol number
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

pub(crate) const IPPROTO_UDP: u8 = 17;

/// One direction of an entry. Ports are absent for protocols without them (ICMP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) proto: u8,
    pub(crate) src_port: Option<u16>,
    pub(crate) dst_port: Option<u16>,
    /// `CTA_TUPLE_ZONE`: only set for directional zones.
    pub(crate) zone: Option<u16>,
}

/// One conntrack entry, with what a delete needs to name exactly this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    /// `AF_INET` or `AF_INET6`, from the message's `nfgenmsg`.
    pub(crate) family: u8,
    pub(crate) orig: Tuple,
    pub(crate) reply: Tuple,
    /// `CTA_ZONE`: absent in the default zone.
    pub(crate) zone: Option<u16>,
    /// `CTA_ID`: lets a delete refuse (ENOENT) a newer entry that reuses the tuple.
    pub(crate) id: Option<u32>,
}

/// The entry in a dump message's payload (after `nlmsghdr`). `Ok(None)` for an entry without
/// both tuples (the kernel always sends them; nothing to match on otherwise).
pub(crate) fn parse_flow(payload: &[u8]) -> Result<Option<Flow>, NetlinkError> {
    let family = *payload
        .first()
        .ok_or_else(|| NetlinkError::Malformed("an entry without its nfgenmsg".into()))?;
    let body = payload
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| NetlinkError::Malformed("an entry shorter than its nfgenmsg".into()))?;
    let (mut orig, mut reply, mut zone, mut id) = (None, None, None, None);
    for attr in attrs(body) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(value)?,
            CTA_TUPLE_REPLY => reply = parse_tuple(value)?,
            CTA_ZONE => zone = Some(be_u16("CTA_ZONE", value)?),
            CTA_ID => id = Some(be_u32("CTA_ID", value)?),
            _ => {}
        }
    }
    Ok(match (orig, reply) {
        (Some(orig), Some(reply)) => Some(Flow {
            family,
            orig,
            reply,
            zone,
            id,
        }),
        _ => None,
    })
}

/// A `CTA_TUPLE_*` nest. `Ok(None)` when it lacks addresses or a protocol.
fn parse_tuple(buf: &[u8]) -> Result<Option<Tuple>, NetlinkError> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut src_port, mut dst_port, mut zone) = (None, None, None);
    for attr in attrs(buf) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_IP => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_IP_V4_SRC => src = Some(v4("CTA_IP_V4_SRC", value)?),
                        CTA_IP_V4_DST => dst = Some(v4("CTA_IP_V4_DST", value)?),
                        CTA_IP_V6_SRC => src = Some(v6("CTA_IP_V6_SRC", value)?),
                        CTA_IP_V6_DST => dst = Some(v6("CTA_IP_V6_DST", value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_PROTO_NUM => {
                            proto = Some(
                                *value
                                    .first()
                                    .ok_or_else(|| wrong_size("CTA_PROTO_NUM", 1, value))?,
                            )
                        }
                        CTA_PROTO_SRC_PORT => src_port = Some(be_u16("CTA_PROTO_SRC_PORT", value)?),
                        CTA_PROTO_DST_PORT => dst_port = Some(be_u16("CTA_PROTO_DST_PORT", value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => zone = Some(be_u16("CTA_TUPLE_ZONE", value)?),
            _ => {}
        }
    }
    Ok(match (src, dst, proto) {
        (Some(src), Some(dst), Some(proto)) => Some(Tuple {
            src,
            dst,
            proto,
            src_port,
            dst_port,
            zone,
        }),
        _ => None,
    })
}

fn v4(kind: &str, value: &[u8]) -> Result<IpAddr, NetlinkError> {
    <[u8; 4]>::try_from(value)
        .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
        .map_err(|_| wrong_size(kind, 4, value))
}

fn v6(kind: &str, value: &[u8]) -> Result<IpAddr, NetlinkError> {
    <[u8; 16]>::try_from(value)
        .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
        .map_err(|_| wrong_size(kind, 16, value))
}

/// The attributes of a dump request asking the kernel for UDP entries only (`CTA_FILTER`, since
/// Linux 5.8; an older kernel ignores them and sends everything, which the caller's own check of
/// the protocol then skips). On a node whose table is mostly TCP this keeps the dump small.
pub(crate) fn udp_dump_filter() -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.nest(CTA_TUPLE_ORIG, |w| {
        w.nest(CTA_TUPLE_PROTO, |w| {
            w.put(CTA_PROTO_NUM, &[IPPROTO_UDP]);
        });
    });
    w.nest(CTA_FILTER, |w| {
        // Host order: the kernel reads it with nla_get_u32.
        w.put(
            CTA_FILTER_ORIG_FLAGS,
            &CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes(),
        );
    });
    w.finish()
}

/// The attributes of an `IPCTNL_MSG_CT_DELETE` for exactly `flow`: its original tuple (without
/// one the kernel would flush the whole table), its zone, and its id.
pub(crate) fn delete_attrs(flow: &Flow) -> Vec<u8> {
    let tuple = &flow.orig;
    let mut w = AttrWriter::new();
    w.nest(CTA_TUPLE_ORIG, |w| {
        w.nest(CTA_TUPLE_IP, |w| match (tuple.src, tuple.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                w.put(CTA_IP_V4_SRC, &src.octets());
                w.put(CTA_IP_V4_DST, &dst.octets());
            }
            (src, dst) => {
                w.put(CTA_IP_V6_SRC, &v6_octets(src));
                w.put(CTA_IP_V6_DST, &v6_octets(dst));
            }
        });
        w.nest(CTA_TUPLE_PROTO, |w| {
            w.put(CTA_PROTO_NUM, &[tuple.proto]);
            if let Some(port) = tuple.src_port {
                w.put(CTA_PROTO_SRC_PORT, &port.to_be_bytes());
            }
            if let Some(port) = tuple.dst_port {
                w.put(CTA_PROTO_DST_PORT, &port.to_be_bytes());
            }
        });
        if let Some(zone) = tuple.zone {
            w.put(CTA_TUPLE_ZONE, &zone.to_be_bytes());
        }
    });
    if let Some(zone) = flow.zone {
        w.put(CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = flow.id {
        w.put(CTA_ID, &id.to_be_bytes());
    }
    w.finish()
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(ip) => ip.octets(),
        // A tuple's two addresses share a family; a mixed one cannot come from the kernel.
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
    }
}

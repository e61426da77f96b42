//! Record data in wire form and the record sets the index keeps ready: each record without
//! its owner name (type, class, TTL, length, data), since an answer's owner is a pointer to
//! the question, written when the answer is.

use std::net::IpAddr;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_MAILB: u16 = 253;
pub const TYPE_MAILA: u16 = 254;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Ip(IpAddr),
    /// PTR, CNAME or NS: a name in wire form.
    Name(u16, Vec<u8>),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Vec<u8>,
    },
    Txt(String),
    Soa {
        mname: Vec<u8>,
        rname: Vec<u8>,
        serial: u32,
        refresh: u32,
        retry: u32,
        expire: u32,
        minimum: u32,
    },
}

impl Data {
    pub fn rtype(&self) -> u16 {
        match self {
            Data::Ip(IpAddr::V4(_)) => TYPE_A,
            Data::Ip(IpAddr::V6(_)) => TYPE_AAAA,
            Data::Name(t, _) => *t,
            Data::Srv { .. } => TYPE_SRV,
            Data::Txt(_) => TYPE_TXT,
            Data::Soa { .. } => TYPE_SOA,
        }
    }

    /// The record data (RDATA) in wire form, names uncompressed.
    pub fn rdata(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Data::Ip(IpAddr::V4(ip)) => out.extend(ip.octets()),
            Data::Ip(IpAddr::V6(ip)) => out.extend(ip.octets()),
            Data::Name(_, name) => out.extend_from_slice(name),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                out.extend(priority.to_be_bytes());
                out.extend(weight.to_be_bytes());
                out.extend(port.to_be_bytes());
                out.extend_from_slice(target);
            }
            Data::Txt(text) => {
                for chunk in text.as_bytes().chunks(255) {
                    out.push(chunk.len() as u8);
                    out.extend_from_slice(chunk);
                }
            }
            Data::Soa {
                mname,
                rname,
                serial,
                refresh,
                retry,
                expire,
                minimum,
            } => {
                out.extend_from_slice(mname);
                out.extend_from_slice(rname);
                for v in [serial, refresh, retry, expire, minimum] {
                    out.extend(v.to_be_bytes());
                }
            }
        }
        out
    }
}

/// A record without its owner: type, class IN, TTL, length and data.
pub fn body(rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + rdata.len());
    out.extend(rtype.to_be_bytes());
    out.extend(CLASS_IN.to_be_bytes());
    out.extend(ttl.to_be_bytes());
    out.extend((rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

/// The records of one name and type, each without its owner, in wire form back to back, and
/// the records the additional section carries with them (SRV targets' addresses), each
/// whole, owner included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    pub rtype: u16,
    pub count: u16,
    pub bodies: Box<[u8]>,
    pub extra_count: u16,
    pub extra: Box<[u8]>,
}

impl RecordSet {
    /// Each record's body (type .. data).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        let b = &self.bodies;
        std::iter::from_fn(move || {
            let len = u16::from_be_bytes([*b.get(at + 8)?, *b.get(at + 9)?]) as usize;
            let body = b.get(at..at + 10 + len)?;
            at += 10 + len;
            Some(body)
        })
    }
}

//! [`Values`]: the values of a set element's key or data, packed into one small allocation.
//!
//! A service proxy holds every element it programs in several places (what a Service wants, who
//! claims the key, what the kernel has) and copies it into plans. As an `Arc<[Value]>` (24 bytes
//! a value), the 70,000 elements of 10,000 Services were 10 MB of the daemon's memory; packed,
//! an IPv4 `address . protocol . port . index` key is 15 bytes.
//!
//! The packing keeps [`Value`]'s order: each value starts with its variant's number, then
//! its payload in big-endian order (an address's family first, an interface name closed by a
//! NUL), so comparing the bytes compares the values, and maps of `Values` iterate as maps of
//! `[Value]` did.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::{AddrType, L4Proto, Value};

/// The values of an element's key or data, shared: a copy is a reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Values(Arc<[u8]>);

// The variants' numbers, in `Value`'s declaration order (its derived order).
const ADDR: u8 = 0;
const NET: u8 = 1;
const PROTO: u8 = 2;
const PORT: u8 = 3;
const MARK: u8 = 4;
const IFNAME: u8 = 5;
const ADDR_TYPE: u8 = 6;
const NFPROTO: u8 = 7;

impl Values {
    pub fn new(values: &[Value]) -> Self {
        let mut out = Vec::with_capacity(values.len() * 6);
        for v in values {
            pack(v, &mut out);
        }
        Values(out.into())
    }

    /// The values, unpacked one by one.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.0 }
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_vec(&self) -> Vec<Value> {
        self.iter().collect()
    }
}

fn pack_addr(addr: &IpAddr, out: &mut Vec<u8>) {
    match addr {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

fn pack(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Addr(a) => {
            out.push(ADDR);
            pack_addr(a, out);
        }
        Value::Net(n) => {
            out.push(NET);
            pack_addr(&n.addr(), out);
            out.push(n.prefix_len());
        }
        Value::Proto(p) => out.extend_from_slice(&[PROTO, *p as u8]),
        Value::Port(p) => {
            out.push(PORT);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Value::Mark(m) => {
            out.push(MARK);
            out.extend_from_slice(&m.to_be_bytes());
        }
        Value::IfName(name) => {
            // Interface names hold no NUL (the kernel pads them with it), so it ends one here.
            out.push(IFNAME);
            out.extend(name.bytes().filter(|b| *b != 0));
            out.push(0);
        }
        Value::AddrType(t) => out.extend_from_slice(&[ADDR_TYPE, *t as u8]),
        Value::NfProto { ipv6 } => out.extend_from_slice(&[NFPROTO, u8::from(*ipv6)]),
    }
}

/// The values of a [`Values`], in order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl Iter<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.rest.split_at(N);
        self.rest = rest;
        head.try_into().expect("N bytes")
    }

    fn addr(&mut self) -> IpAddr {
        match self.take::<1>()[0] {
            4 => IpAddr::V4(Ipv4Addr::from(self.take::<4>())),
            _ => IpAddr::V6(Ipv6Addr::from(self.take::<16>())),
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.rest.is_empty() {
            return None;
        }
        // Only `pack` writes these bytes, so every tag and length is one it wrote.
        Some(match self.take::<1>()[0] {
            ADDR => Value::Addr(self.addr()),
            NET => {
                let addr = self.addr();
                let prefix = self.take::<1>()[0];
                Value::Net(match addr {
                    IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).expect("a packed prefix")),
                    IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).expect("a packed prefix")),
                })
            }
            PROTO => Value::Proto(match self.take::<1>()[0] {
                0 => L4Proto::Tcp,
                1 => L4Proto::Udp,
                _ => L4Proto::Sctp,
            }),
            PORT => Value::Port(u16::from_be_bytes(self.take::<2>())),
            MARK => Value::Mark(u32::from_be_bytes(self.take::<4>())),
            IFNAME => {
                let end = self
                    .rest
                    .iter()
                    .position(|b| *b == 0)
                    .expect("a closing NUL");
                let name = String::from_utf8_lossy(&self.rest[..end]).into_owned();
                self.rest = &self.rest[end + 1..];
                Value::IfName(name.into())
            }
            ADDR_TYPE => {
                self.take::<1>();
                Value::AddrType(AddrType::Local)
            }
            _ => Value::NfProto {
                ipv6: self.take::<1>()[0] != 0,
            },
        })
    }
}

impl From<Vec<Value>> for Values {
    fn from(values: Vec<Value>) -> Self {
        Values::new(&values)
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Vec<Value>> {
        let v4: IpAddr = "10.43.0.10".parse().unwrap();
        let v6: IpAddr = "fd00:43::a".parse().unwrap();
        vec![
            vec![],
            vec![Value::Addr(v4)],
            vec![Value::Addr(v6)],
            vec![
                Value::Addr(v4),
                Value::Proto(L4Proto::Udp),
                Value::Port(53),
                Value::Mark(4),
            ],
            vec![Value::Net("10.42.0.0/16".parse().unwrap())],
            vec![Value::Net("fd00:42::/56".parse().unwrap())],
            vec![Value::Proto(L4Proto::Sctp), Value::Port(65535)],
            vec![Value::IfName("skein0".into()), Value::Addr(v6)],
            vec![Value::IfName("".into())],
            vec![Value::AddrType(AddrType::Local)],
            vec![Value::NfProto { ipv6: true }, Value::Mark(u32::MAX)],
            vec![Value::NfProto { ipv6: false }],
        ]
    }

    #[test]
    fn values_unpack_to_what_was_packed() {
        for values in every_kind() {
            let packed = Values::new(&values);
            assert_eq!(packed.to_vec(), values);
            assert_eq!(packed.len(), values.len());
            assert_eq!(packed.is_empty(), values.is_empty());
        }
    }

    #[test]
    fn packed_values_order_as_the_values_do() {
        let mut cases = every_kind();
        // Neighbours that a careless packing would misorder: a shorter name before a longer
        // one it prefixes, IPv4 before IPv6, a lower port before a higher one, a prefix of a
        // list before the list.
        cases.push(vec![Value::IfName("eth".into()), Value::Port(1)]);
        cases.push(vec![Value::IfName("eth0".into()), Value::Port(0)]);
        cases.push(vec![Value::Port(256)]);
        cases.push(vec![Value::Port(255)]);
        cases.push(vec![Value::Net("10.42.0.0/15".parse().unwrap())]);
        cases.push(vec![Value::Addr("10.43.0.10".parse().unwrap())]);
        cases.push(vec![Value::Addr("9.255.255.255".parse().unwrap())]);
        for a in &cases {
            for b in &cases {
                assert_eq!(
                    Values::new(a).cmp(&Values::new(b)),
                    a.cmp(b),
                    "{a:?} against {b:?}"
                );
            }
        }
    }
}

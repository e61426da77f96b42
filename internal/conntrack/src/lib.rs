//! Conntrack cleanup for UDP Services, over ctnetlink.
//!
//! UDP has no connection end, so the kernel keeps a conntrack entry (and with it the DNAT
//! decision) for as long as a client keeps talking. When an endpoint goes away, entries DNATed
//! to it keep sending a client's datagrams to a dead pod until they time out; when a Service
//! port goes from no endpoints to some, entries made meanwhile (not DNATed: they were rejected)
//! keep the client from ever reaching the new endpoints. The service proxy deletes both kinds,
//! as kube-proxy does, through [`Conntrack`].
//!
//! Each call dumps the UDP entries of the family concerned (`IPCTNL_MSG_CT_GET` with
//! `NLM_F_DUMP`, asked again when the kernel flags the dump as interrupted), picks the matches
//! in userspace, and deletes each by its original tuple, zone and id. Matching in userspace
//! works on every kernel; the only filter the kernel is asked for is the protocol (UDP), which
//! kernels before 5.8 ignore and this crate checks again. A dump is one pass over the table
//! however many filters are given ([`Conntrack::delete_udp`]).
//!
//! Call it once the new rules are in place: an entry made after that already follows them, and
//! one made between the dump and the delete has a new id, so the delete leaves it alone.
//!
//! Blocking code on one socket the caller keeps; the socket belongs to the network namespace
//! of the thread that opened it.

use std::net::{IpAddr, SocketAddr};

mod attr;
mod error;
mod flow;
#[cfg(test)]
mod kernel_tests;
mod message;
mod socket;
#[cfg(test)]
mod tests;
mod udp;

pub use error::{ConntrackError, Family, NetlinkError};
pub use udp::{UdpEntry, UdpFilter};

use flow::{
    Flow, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW, delete_attrs, parse_flow,
    udp_dump_filter,
};
use socket::{Dumped, Transport};

/// How many times a dump is asked again while the kernel keeps flagging it as interrupted.
const DUMP_ATTEMPTS: usize = 5;
/// `ENOENT`: the entry is already gone (expired, or deleted by someone else), which is what a
/// delete wanted.
const ENOENT: i32 = 2;

/// A ctnetlink socket. Keep one: each call reuses it.
#[derive(Debug)]
pub struct Conntrack {
    transport: Transport,
}

impl Conntrack {
    /// Opens the socket, in the calling thread's network namespace.
    pub fn new() -> Result<Self, ConntrackError> {
        Ok(Self {
            transport: Transport::open().map_err(ConntrackError::Open)?,
        })
    }

    /// UDP entries whose original destination is `dst` and that were DNATed to `endpoint`
    /// (reply source address == `endpoint`): deleted; returns how many.
    pub fn delete_udp_nat(
        &mut self,
        dst: SocketAddr,
        endpoint: IpAddr,
    ) -> Result<usize, ConntrackError> {
        self.delete_udp(&[UdpFilter::Nat { dst, endpoint }])
    }

    /// The same for a NodePort: original destination port `port` on any address.
    pub fn delete_udp_port_nat(
        &mut self,
        port: u16,
        endpoint: IpAddr,
    ) -> Result<usize, ConntrackError> {
        self.delete_udp(&[UdpFilter::PortNat { port, endpoint }])
    }

    /// UDP entries to `dst` that were not DNATed (reply source == original destination).
    pub fn delete_udp_unnated(&mut self, dst: SocketAddr) -> Result<usize, ConntrackError> {
        self.delete_udp(&[UdpFilter::Unnated { dst }])
    }

    /// ... and to port `port` on any address (NodePorts).
    pub fn delete_udp_port_unnated(&mut self, port: u16) -> Result<usize, ConntrackError> {
        self.delete_udp(&[UdpFilter::PortUnnated { port }])
    }

    /// Deletes the UDP entries matching any of `filters`, with one dump per family concerned
    /// (the proxy's way after a sync that changed many endpoints); returns how many.
    pub fn delete_udp(&mut self, filters: &[UdpFilter]) -> Result<usize, ConntrackError> {
        let mut deleted = 0;
        for family in families(filters) {
            let matching: Vec<_> = self
                .list_udp(family)?
                .into_iter()
                .filter(|(_, entry)| filters.iter().any(|f| f.matches(entry)))
                .collect();
            for (flow, entry) in matching {
                if self.delete(&flow, &entry)? {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// For tests and the page: the UDP entries, IPv4 then IPv6.
    pub fn udp_entries(&mut self) -> Result<Vec<UdpEntry>, ConntrackError> {
        let mut entries = Vec::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            entries.extend(self.list_udp(family)?.into_iter().map(|(_, entry)| entry));
        }
        Ok(entries)
    }

    /// One family's UDP entries, with the flows that name them for a delete. A dump the kernel
    /// flags as interrupted may have missed entries, so it is asked again.
    fn list_udp(&mut self, family: Family) -> Result<Vec<(Flow, UdpEntry)>, ConntrackError> {
        let fail = |source| ConntrackError::List { family, source };
        let filter = udp_dump_filter();
        for _ in 0..DUMP_ATTEMPTS {
            let mut found = Vec::new();
            let dumped = self
                .transport
                .dump(
                    IPCTNL_MSG_CT_GET,
                    family.af(),
                    &filter,
                    &mut |header, payload| {
                        if header.kind == IPCTNL_MSG_CT_NEW
                            && let Some(flow) = parse_flow(payload)?
                            && let Some(entry) = UdpEntry::of(&flow)
                        {
                            found.push((flow, entry));
                        }
                        Ok(())
                    },
                )
                .map_err(fail)?;
            if dumped == Dumped::Complete {
                return Ok(found);
            }
        }
        Err(fail(NetlinkError::Interrupted {
            attempts: DUMP_ATTEMPTS,
        }))
    }

    /// Deletes exactly `flow`; false when it was already gone.
    fn delete(&mut self, flow: &Flow, entry: &UdpEntry) -> Result<bool, ConntrackError> {
        match self
            .transport
            .call(IPCTNL_MSG_CT_DELETE, flow.family, &delete_attrs(flow))
        {
            Ok(()) => Ok(true),
            Err(NetlinkError::Kernel { errno: ENOENT, .. }) => Ok(false),
            Err(source) => Err(ConntrackError::Delete {
                entry: entry.to_string(),
                source,
            }),
        }
    }
}

/// The families whose tables `filters` can match in, each once, IPv4 first.
fn families(filters: &[UdpFilter]) -> Vec<Family> {
    [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .filter(|family| {
            filters
                .iter()
                .any(|f| f.family().is_none_or(|f| f == *family))
        })
        .collect()
}

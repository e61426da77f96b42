//! Pod address allocation within a node's pod CIDRs: which addresses a pod may get, which one
//! is the gateway, and the next free one after a cursor. Pure: no IO and no state of its own;
//! the store keeps the leases and the cursor and calls in here inside its transaction.
//!
//! Layout of a pod CIDR (CNI host-local's, with the gateway at the first host address):
//! - IPv4 `10.42.1.0/24`: `.0` network, `.1` gateway (held by the node's bridge), `.2` to
//!   `.254` pods, `.255` broadcast.
//! - IPv6 `fd00:42:1::/64`: `::` subnet-router anycast, `::1` gateway, every other address pods.
//!
//! A CIDR with no room for a pod besides those (IPv4 /31 and /32, IPv6 /127 and /128) is
//! refused as a whole with [`IpamError::TooSmall`]: such a CIDR cannot serve as a pod CIDR, and
//! saying so names the mistake, where "exhausted" would send someone looking for leaked leases.
//!
//! A node may have one pod CIDR per address family (dual-stack); each family is allocated on its
//! own, and a pod interface gets one address per family.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

#[cfg(test)]
mod tests;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {cidr} ({usable} usable, all leased)")]
    Exhausted { cidr: IpNet, usable: u128 },
    #[error(
        "{cidr} has no room for pods: the network address, the gateway and (IPv4) the broadcast \
         address leave nothing; a pod CIDR must be a /30 or larger (IPv6: /126 or larger)"
    )]
    TooSmall { cidr: IpNet },
}

/// An address family; a dual-stack node has one pod CIDR of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(cidr: IpNet) -> Self {
        match cidr {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }
}

/// The pod addresses of a CIDR as numbers, so that /64s (and larger) are ranges, never lists.
#[derive(Debug, Clone, Copy)]
struct PodRange {
    family: Family,
    /// The first pod address; the gateway is the one before it.
    first: u128,
    last: u128,
}

impl PodRange {
    /// `None` when the CIDR has no room for a pod.
    fn of(cidr: IpNet) -> Option<Self> {
        let prefix = u32::from(cidr.prefix_len());
        // host_mask is the offset of the CIDR's last address; checked_shr because a /32 (/128)
        // shifts by the full width. The IPv4 broadcast address at the top is not for pods.
        let (family, network, host_mask, broadcast) = match cidr.trunc() {
            IpNet::V4(net) => (
                Family::V4,
                u128::from(u32::from(net.network())),
                u128::from(u32::MAX.checked_shr(prefix).unwrap_or(0)),
                1,
            ),
            IpNet::V6(net) => (
                Family::V6,
                u128::from(net.network()),
                u128::MAX.checked_shr(prefix).unwrap_or(0),
                0,
            ),
        };
        // Offset 0 is the network address, 1 the gateway; pods start at 2.
        let last_offset = host_mask.checked_sub(broadcast)?;
        (last_offset >= 2).then_some(Self {
            family,
            first: network + 2,
            last: network + last_offset,
        })
    }

    fn capacity(&self) -> u128 {
        self.last - self.first + 1
    }

    fn addr(&self, number: u128) -> IpAddr {
        match self.family {
            // PodRange::of keeps IPv4 numbers below 2^32.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(number as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(number)),
        }
    }

    /// The address's number if it is one of this range's pod addresses.
    fn pod_number(&self, addr: IpAddr) -> Option<u128> {
        let number = match (self.family, addr) {
            (Family::V4, IpAddr::V4(a)) => u128::from(u32::from(a)),
            (Family::V6, IpAddr::V6(a)) => u128::from(a),
            _ => return None,
        };
        (self.first..=self.last).contains(&number).then_some(number)
    }
}

/// The pod addresses of `cidr`, lowest first: no network, gateway or broadcast address. Lazy,
/// so it may be taken from for a /64; empty for a CIDR too small for pods.
pub fn usable(cidr: IpNet) -> impl Iterator<Item = IpAddr> {
    PodRange::of(cidr)
        .into_iter()
        .flat_map(|range| (range.first..=range.last).map(move |n| range.addr(n)))
}

/// The gateway of `cidr`: its first host address, which the node's bridge holds.
pub fn gateway(cidr: IpNet) -> Result<IpAddr, IpamError> {
    PodRange::of(cidr)
        .map(|range| range.addr(range.first - 1))
        .ok_or(IpamError::TooSmall { cidr: cidr.trunc() })
}

/// How many pod addresses `cidr` has (0 for a CIDR too small for pods).
pub fn capacity(cidr: IpNet) -> u128 {
    PodRange::of(cidr).map_or(0, |range| range.capacity())
}

/// The first pod address of `cidr` after `after` that is not in `used`, wrapping round at the
/// end, like CNI host-local: an address just released is the last to be handed out again, so a
/// stale reference to it (a conntrack entry, a peer's cache) has time to go away.
///
/// `after` is the address last handed out in this CIDR; `None`, or an address that is not one
/// of its pod addresses, starts from the lowest. `used` may hold addresses of other CIDRs and
/// families; only those in `cidr` count.
pub fn next_free(
    cidr: IpNet,
    used: &BTreeSet<IpAddr>,
    after: Option<IpAddr>,
) -> Result<IpAddr, IpamError> {
    let cidr = cidr.trunc();
    let range = PodRange::of(cidr).ok_or(IpamError::TooSmall { cidr })?;
    let exhausted = IpamError::Exhausted {
        cidr,
        usable: range.capacity(),
    };
    let taken = used
        .range(range.addr(range.first)..=range.addr(range.last))
        .count() as u128;
    if taken >= range.capacity() {
        return Err(exhausted);
    }
    let wrap = |n: u128| if n == range.last { range.first } else { n + 1 };
    let mut candidate = after
        .and_then(|a| range.pod_number(a))
        .map_or(range.first, wrap);
    // At most `taken` candidates are in the way, so the walk is bounded by the leases, never by
    // the size of the CIDR.
    for _ in 0..=taken {
        let addr = range.addr(candidate);
        if !used.contains(&addr) {
            return Ok(addr);
        }
        candidate = wrap(candidate);
    }
    Err(exhausted)
}

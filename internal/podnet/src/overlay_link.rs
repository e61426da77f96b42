//! The overlay's side of the node's routing: the WireGuard link and the routes through it.
//! Kept here so one crate owns the node's netlink conventions.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{LinkUnspec, LinkWireguard, RouteMessageBuilder};

use crate::{PodNet, PodNetError, is_exists, nl};

impl PodNet {
    /// Makes the kernel WireGuard link `name` if it is missing. Fails when the kernel has no
    /// WireGuard (the caller then uses the userspace device).
    pub async fn create_wireguard_link(&self, name: &str) -> Result<(), PodNetError> {
        if self.link(name).await?.is_some() {
            return Ok(());
        }
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .or_else(|e| if is_exists(&e) { Ok(()) } else { Err(e) })
            .map_err(nl(format!("creating WireGuard link {name}")))
    }

    /// Sets `name` up with `mtu`; returns its index, or `None` when there is no such link.
    pub async fn set_up_with_mtu(&self, name: &str, mtu: u32) -> Result<Option<u32>, PodNetError> {
        let Some(link) = self.link(name).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        let current_mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        let up = link
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up);
        if current_mtu != Some(mtu) || !up {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {name} up with MTU {mtu}")))?;
        }
        Ok(Some(index))
    }

    /// Destinations of the main table's routes out of link `index` that are not the kernel's own.
    pub async fn routes_via(&self, index: u32) -> Result<Vec<IpNet>, PodNetError> {
        use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
        let mut found = Vec::new();
        for family in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(family)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            for route in routes {
                let out = route
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                let main = route.header.table
                    == rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN;
                // The kernel's own routes (an IPv6 link's fe80::/64, connected prefixes) are not
                // skein's: removing one only makes the kernel put it back.
                let kernel =
                    route.header.protocol == rtnetlink::packet_route::route::RouteProtocol::Kernel;
                if !out || !main || kernel {
                    continue;
                }
                let dest = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => route_address(d),
                    _ => None,
                });
                if let Some(ip) = dest
                    && let Ok(net) = IpNet::new(ip, route.header.destination_prefix_length)
                {
                    found.push(net);
                }
            }
        }
        Ok(found)
    }

    /// Adds (or replaces) the route to `dest` out of link `index`, preferring source `src` so
    /// the node's own packets leave with an address the peers' allowed IPs accept.
    pub async fn add_route(
        &self,
        index: u32,
        dest: IpNet,
        src: Option<IpAddr>,
    ) -> Result<(), PodNetError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.addr(), dest.prefix_len())
            .map_err(|e| PodNetError::Other(format!("route to {dest}: {e}")))?
            .output_interface(index);
        if let Some(src) = src.filter(|s| s.is_ipv4() == dest.addr().is_ipv4()) {
            builder = builder
                .pref_source(src)
                .map_err(|e| PodNetError::Other(format!("route to {dest}: {e}")))?;
        }
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding the route to {dest}")))
    }

    /// Removes the route to `dest` out of link `index`; a route already gone is fine.
    pub async fn delete_route(&self, index: u32, dest: IpNet) -> Result<(), PodNetError> {
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.addr(), dest.prefix_len())
            .map_err(|e| PodNetError::Other(format!("route to {dest}: {e}")))?
            .output_interface(index)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -3 => Ok(()), // ESRCH
            Err(e) => Err(nl(format!("removing the route to {dest}"))(e)),
        }
    }
}

fn route_address(a: &rtnetlink::packet_route::route::RouteAddress) -> Option<IpAddr> {
    use rtnetlink::packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

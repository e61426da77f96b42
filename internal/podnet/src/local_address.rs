//! Addresses the node answers on without holding them on an interface: `local` routes in the
//! kernel's `local` table, out of `lo` (this kernel has no `dummy` link type). The kernel then
//! delivers packets for the address to the node's own sockets, and a socket may bind it; no
//! interface answers ARP for it, so it stays the node's own on every node at once (the cluster
//! DNS addresses).

use std::net::IpAddr;

use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope, RouteType};

use crate::{PodNet, PodNetError, is_exists, link_by_name, nl};

/// The kernel's `local` routing table.
const TABLE_LOCAL: u32 = 255;

impl PodNet {
    /// Makes `ip` local to this namespace (`ip route add local IP dev lo table local`); an
    /// existing route is kept.
    pub async fn ensure_local_address(&self, ip: IpAddr) -> Result<(), PodNetError> {
        let lo = link_by_name(&self.handle, "lo")
            .await?
            .ok_or_else(|| PodNetError::Other("no loopback link".into()))?;
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, prefix)
            .map_err(|e| PodNetError::Other(format!("local route for {ip}: {e}")))?
            .output_interface(lo.header.index)
            .table_id(TABLE_LOCAL)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(RouteProtocol::Static)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(nl(format!("making {ip} a local address"))(e)),
        }
    }
}

//! The node's pod network, through rtnetlink: the bridge that holds the pods' gateway address,
//! one veth pair per pod attachment (the pod end moved into the pod's network namespace, renamed
//! to the runtime's interface name, addressed, with a default route via the gateway), hairpin on
//! the bridge ports, and the sysctls pods need.
//!
//! It knows nothing of IPAM or the CNI protocol: it is handed addresses and a namespace, and
//! owns only links it created (the bridge and the `skv…` host ends).

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkWireguard,
    RouteMessageBuilder,
};

#[cfg(test)]
mod tests;

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

fn nl(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodNetError {
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

/// What one pod attachment gets.
#[derive(Debug)]
pub struct PodAttachment {
    pub netns: OwnedFd,
    /// The runtime's name for the pod's interface (CNI_IFNAME).
    pub ifname: String,
    pub host_ifname: String,
    pub bridge: String,
    /// The pod's addresses, with their CIDR's prefix length.
    pub addresses: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
    pub mtu: u32,
}

/// What the runtime is told about an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_mac: String,
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// A netlink connection in the calling thread's network namespace (the node's).
#[derive(Debug, Clone)]
pub struct PodNet {
    handle: Handle,
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

    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, PodNetError> {
        link_by_name(&self.handle, name).await
    }

    /// The bridge, up, holding each gateway address, with `mtu`. Idempotent.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        addresses: &[IpNet],
        mtu: u32,
    ) -> Result<u32, PodNetError> {
        // A socket of its own: the kernel runs one request per netlink socket at a time, and a
        // link deletion holds it for an RCU grace period; concurrent pods must not queue.
        let fresh = Self::connect()?;
        let this = &fresh;
        let link = match this.link(name).await? {
            Some(link) => link,
            None => {
                this.handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).build())
                    .execute()
                    .await
                    .or_else(|e| if is_exists(&e) { Ok(()) } else { Err(e) })
                    .map_err(nl(format!("creating bridge {name}")))?;
                this.link(name)
                    .await?
                    .ok_or_else(|| PodNetError::Other(format!("bridge {name} vanished")))?
            }
        };
        let index = link.header.index;
        this.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("setting {name} up")))?;
        let have: Vec<IpNet> = this
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .map_ok(|m| address_of(&m))
            .try_collect::<Vec<_>>()
            .await
            .map_err(nl(format!("reading {name}'s addresses")))?
            .into_iter()
            .flatten()
            .collect();
        for address in addresses {
            if !have.contains(address) {
                this.handle
                    .address()
                    .add(index, address.addr(), address.prefix_len())
                    .execute()
                    .await
                    .or_else(|e| if is_exists(&e) { Ok(()) } else { Err(e) })
                    .map_err(nl(format!("adding {address} to {name}")))?;
            }
        }
        Ok(index)
    }

    /// Wires one pod: veth pair, pod end into the namespace as `ifname` with its addresses and
    /// default routes, host end on the bridge with hairpin. Fails with [`PodNetError::Exists`]
    /// when `ifname` already exists in the namespace.
    pub async fn attach(&self, pod: PodAttachment) -> Result<Attached, PodNetError> {
        // A socket of its own: the kernel runs one request per netlink socket at a time, and a
        // link deletion holds it for an RCU grace period; concurrent pods must not queue.
        let fresh = Self::connect()?;
        let this = &fresh;
        let bridge = this
            .link(&pod.bridge)
            .await?
            .ok_or_else(|| PodNetError::Other(format!("bridge {} is missing", pod.bridge)))?;
        // A host end already there means either a second ADD (the pod's interface exists: the
        // spec's error, and nothing may be touched) or an ADD that died half-way (remove it).
        // Only this rare case pays for a separate look into the pod's namespace.
        if let Some(old) = this.link(&pod.host_ifname).await? {
            let netns = pod.netns.try_clone().map_err(|source| PodNetError::Io {
                action: "duplicating the netns fd".into(),
                source,
            })?;
            let ifname = pod.ifname.clone();
            if in_netns(netns, move |h| async move {
                Ok(link_by_name(&h, &ifname).await?.is_some())
            })
            .await?
            {
                return Err(PodNetError::Exists {
                    ifname: pod.ifname.clone(),
                });
            }
            this.handle
                .link()
                .del(old.header.index)
                .execute()
                .await
                .map_err(nl("removing a stale veth"))?;
        }
        // The pod end is born in the pod's namespace under its final name (the peer carries the
        // namespace in the same request): moving a link afterwards costs an RCU grace period,
        // the bulk of an ADD otherwise. EEXIST here means the name is taken in the pod.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod.ifname.clone())
            .mtu(pod.mtu)
            .setns_by_fd(pod.netns.as_fd().as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(pod.host_ifname.clone())
            .mtu(pod.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match this.handle.link().add(veth).execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {
                return Err(PodNetError::Exists {
                    ifname: pod.ifname.clone(),
                });
            }
            Err(e) => return Err(nl(format!("creating veth {}", pod.host_ifname))(e)),
        }
        let host = this
            .link(&pod.host_ifname)
            .await?
            .ok_or_else(|| PodNetError::Other("veth vanished".into()))?;
        this.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host.header.index)
                    .controller(bridge.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!(
                "attaching {} to {}",
                pod.host_ifname, pod.bridge
            )))?;
        // Hairpin: a pod reaching itself through a Service comes back out of its own port.
        this.handle
            .link()
            .set_port(LinkBridgePort::new(host.header.index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("hairpin on {}", pod.host_ifname)))?;

        let (ifname, addresses, gateways) = (
            pod.ifname.clone(),
            pod.addresses.clone(),
            pod.gateways.clone(),
        );
        let pod_mac = in_netns(pod.netns, move |h| async move {
            let index = link_by_name(&h, &ifname)
                .await?
                .ok_or_else(|| PodNetError::Missing {
                    ifname: ifname.clone(),
                })?
                .header
                .index;
            for a in &addresses {
                h.address()
                    .add(index, a.addr(), a.prefix_len())
                    .execute()
                    .await
                    .map_err(nl(format!("adding {a} to {ifname}")))?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {ifname} up")))?;
            if let Some(lo) = link_by_name(&h, "lo").await? {
                h.link()
                    .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                    .execute()
                    .await
                    .map_err(nl("setting lo up"))?;
            }
            for gw in gateways {
                let route = match gw {
                    IpAddr::V4(gw) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                        .gateway(gw)
                        .output_interface(index)
                        .build(),
                    IpAddr::V6(gw) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                        .gateway(gw)
                        .output_interface(index)
                        .build(),
                };
                h.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(nl(format!("default route via {gw}")))?;
            }
            let link = link_by_name(&h, &ifname)
                .await?
                .ok_or_else(|| PodNetError::Missing {
                    ifname: ifname.clone(),
                })?;
            Ok(mac_of(&link))
        })
        .await;
        let pod_mac = match pod_mac {
            Ok(mac) => mac,
            Err(e) => {
                // Whatever went wrong in the pod's namespace, the pair made above goes again.
                if let Some(host) = this.link(&pod.host_ifname).await? {
                    let _ = this.handle.link().del(host.header.index).execute().await;
                }
                return Err(e);
            }
        };
        let host = this
            .link(&pod.host_ifname)
            .await?
            .ok_or_else(|| PodNetError::Other("veth vanished".into()))?;
        Ok(Attached {
            host_ifname: pod.host_ifname,
            host_mac: mac_of(&host),
            pod_mac,
        })
    }

    /// Removes an attachment: the pod end by name in its namespace when there is one, and the
    /// host end by its derived name. Whatever is already gone is fine (CNI DEL is idempotent).
    pub async fn detach(
        &self,
        netns: Option<OwnedFd>,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<(), PodNetError> {
        // A socket of its own: the kernel runs one request per netlink socket at a time, and a
        // link deletion holds it for an RCU grace period; concurrent pods must not queue.
        let fresh = Self::connect()?;
        let this = &fresh;
        // Deleting the host end deletes the pair, pod end included: no trip into the pod's
        // namespace unless the host end is already gone.
        if this.link(host_ifname).await?.is_some() {
            // On a thread of its own too: the deleting request blocks its caller for the grace
            // period, and the daemon's few runtime threads must keep serving other pods.
            let name = host_ifname.to_string();
            return on_own_thread(None, move |h| async move {
                if let Some(link) = link_by_name(&h, &name).await? {
                    h.link()
                        .del(link.header.index)
                        .execute()
                        .await
                        .or_else(ignore_missing)
                        .map_err(nl(format!("deleting {name}")))?;
                }
                Ok(())
            })
            .await;
        }
        if let Some(netns) = netns {
            let ifname = ifname.to_string();
            in_netns(netns, move |h| async move {
                if let Some(link) = link_by_name(&h, &ifname).await? {
                    h.link()
                        .del(link.header.index)
                        .execute()
                        .await
                        .or_else(ignore_missing)
                        .map_err(nl(format!("deleting {ifname}")))?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// CNI CHECK: the interface exists in the namespace and holds every address.
    pub async fn check(
        &self,
        netns: OwnedFd,
        ifname: &str,
        addresses: &[IpNet],
    ) -> Result<(), PodNetError> {
        let (ifname, addresses) = (ifname.to_string(), addresses.to_vec());
        in_netns(netns, move |h| async move {
            let link = link_by_name(&h, &ifname)
                .await?
                .ok_or_else(|| PodNetError::Missing {
                    ifname: ifname.clone(),
                })?;
            let have: Vec<IpNet> = h
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute()
                .map_ok(|m| address_of(&m))
                .try_collect::<Vec<_>>()
                .await
                .map_err(nl("reading addresses"))?
                .into_iter()
                .flatten()
                .collect();
            match addresses.iter().find(|a| !have.contains(a)) {
                Some(a) => Err(PodNetError::AddressMissing {
                    ifname,
                    address: *a,
                }),
                None => Ok(()),
            }
        })
        .await
    }

    /// Whether `ifname` exists in the namespace.
    pub async fn exists_in(&self, netns: OwnedFd, ifname: &str) -> Result<bool, PodNetError> {
        let ifname = ifname.to_string();
        in_netns(netns, move |h| async move {
            Ok(link_by_name(&h, &ifname).await?.is_some())
        })
        .await
    }

    /// Host ends of pod veths present on the node.
    pub async fn host_ends(&self) -> Result<Vec<String>, PodNetError> {
        // A socket of its own: the kernel runs one request per netlink socket at a time, and a
        // link deletion holds it for an RCU grace period; concurrent pods must not queue.
        let fresh = Self::connect()?;
        let this = &fresh;
        let links: Vec<LinkMessage> = this
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(links
            .iter()
            .filter_map(link_name)
            .filter(|n| n.starts_with(HOST_IFNAME_PREFIX))
            .collect())
    }
}

/// The overlay's side of the node's routing: the WireGuard link and the routes through it.
/// Kept here so one crate owns the node's netlink conventions.
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

    /// Destinations of the main table's routes out of link `index`.
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
                if !out || !main {
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

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn address_of(message: &rtnetlink::packet_route::address::AddressMessage) -> Option<IpNet> {
    use rtnetlink::packet_route::address::AddressAttribute;
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNet::new(*ip, message.header.prefix_len).ok(),
        _ => None,
    })
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc_eexist())
}

fn ignore_missing(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    match &e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() == -19 => Ok(()), // ENODEV
        _ => Err(e),
    }
}

const fn libc_eexist() -> i32 {
    17
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, PodNetError> {
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

/// Runs `work` with a netlink handle inside the network namespace `netns`, on a thread of its
/// own: `setns` changes the calling thread, so the daemon's threads never move.
pub async fn in_netns<T, F, Fut>(netns: OwnedFd, work: F) -> Result<T, PodNetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, PodNetError>>,
{
    on_own_thread(Some(netns), work).await
}

/// Runs `work` with a netlink handle on a thread of its own, inside `netns` when given.
async fn on_own_thread<T, F, Fut>(netns: Option<OwnedFd>, work: F) -> Result<T, PodNetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, PodNetError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skein-netns".into())
        .spawn(move || {
            let result = (|| {
                if let Some(netns) = &netns {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| PodNetError::Io {
                            action: "entering the pod's network namespace".into(),
                            source: e.into(),
                        },
                    )?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| PodNetError::Io {
                        action: "starting a runtime".into(),
                        source,
                    })?;
                runtime.block_on(async move {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().map_err(|source| PodNetError::Io {
                            action: "opening a netlink socket in the pod's namespace".into(),
                            source,
                        })?;
                    tokio::spawn(connection);
                    work(handle).await
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|source| PodNetError::Io {
            action: "starting a thread".into(),
            source,
        })?;
    rx.await
        .map_err(|_| PodNetError::Other("the namespace thread died".into()))?
}

/// Writes a sysctl under /proc/sys (of this network namespace, for net.*).
pub fn set_sysctl(key: &str, value: &str) -> Result<(), PodNetError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| PodNetError::Io {
        action: format!("setting {key} = {value}"),
        source,
    })
}

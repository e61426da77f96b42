//! One pod attachment: a veth pair, its pod end born in the pod's namespace, addressed and
//! routed; its host end on the bridge with hairpin. Also DEL, CHECK and the list of host ends.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::on_own_thread;
use crate::{
    HOST_IFNAME_PREFIX, PodNet, PodNetError, address_of, ignore_missing, in_netns, is_exists,
    link_by_name, link_name, nl,
};

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

impl PodNet {
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
        // On the bridge from birth (IFLA_MASTER in the same request): the kernel's notification
        // of a new host end then never shows it off the bridge, which is what drift looks like.
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(pod.host_ifname.clone())
            .mtu(pod.mtu)
            .controller(bridge.header.index)
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
        Ok(fresh
            .links()
            .await?
            .iter()
            .filter_map(link_name)
            .filter(|n| n.starts_with(HOST_IFNAME_PREFIX))
            .collect())
    }
}

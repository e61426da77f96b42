//! The pod bridge: made if missing, up, holding each gateway address; and its ports (the pods'
//! host ends), put back on it with hairpin when the bridge was made anew. Each call compares
//! what the kernel has with what it should and changes only the difference, saying what.

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec};

use crate::{HOST_IFNAME_PREFIX, PodNet, PodNetError, address_of, is_exists, link_name, nl};

/// What [`PodNet::ensure_bridge`] and [`PodNet::ensure_ports`] had to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeRepair {
    pub created: bool,
    pub set_up: bool,
    pub addresses_added: Vec<IpNet>,
    /// Host ends of pods put (back) on the bridge.
    pub ports_attached: Vec<String>,
}

impl BridgeRepair {
    pub fn is_empty(&self) -> bool {
        !self.created
            && !self.set_up
            && self.addresses_added.is_empty()
            && self.ports_attached.is_empty()
    }

    /// For the page and the log: "bridge skein0 made, 10.42.1.1/24 added, 2 pod links re-attached".
    pub fn describe(&self, bridge: &str) -> String {
        let mut parts = Vec::new();
        if self.created {
            parts.push(format!("bridge {bridge} made"));
        } else if self.set_up {
            parts.push(format!("bridge {bridge} set up"));
        }
        for a in &self.addresses_added {
            parts.push(format!("{a} added to {bridge}"));
        }
        match self.ports_attached.len() {
            0 => {}
            1 => parts.push(format!("pod link {} re-attached", self.ports_attached[0])),
            n => parts.push(format!("{n} pod links re-attached")),
        }
        parts.join(", ")
    }
}

fn controller(link: &LinkMessage) -> Option<u32> {
    use rtnetlink::packet_route::link::LinkAttribute;
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

impl PodNet {
    /// The bridge, up, holding each gateway address, with `mtu` when it is made. Returns its
    /// index and what had to change.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        addresses: &[IpNet],
        mtu: u32,
    ) -> Result<(u32, BridgeRepair), PodNetError> {
        // A socket of its own: the kernel runs one request per netlink socket at a time, and a
        // link deletion holds it for an RCU grace period; concurrent pods must not queue.
        let fresh = Self::connect()?;
        let this = &fresh;
        let mut repair = BridgeRepair::default();
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
                repair.created = true;
                this.link(name)
                    .await?
                    .ok_or_else(|| PodNetError::Other(format!("bridge {name} vanished")))?
            }
        };
        let index = link.header.index;
        if !link.header.flags.contains(LinkFlags::Up) {
            this.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {name} up")))?;
            repair.set_up = !repair.created;
        }
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
                repair.addresses_added.push(*address);
            }
        }
        Ok((index, repair))
    }

    /// Puts every pod host end (`skv…`) that is not on bridge `index` back on it, with hairpin
    /// (a bridge made anew has no ports: the pods' veths outlived the old one). Returns their
    /// names.
    pub async fn ensure_ports(&self, index: u32) -> Result<Vec<String>, PodNetError> {
        let mut attached = Vec::new();
        for link in &self.links().await? {
            let Some(name) = link_name(link) else {
                continue;
            };
            if !name.starts_with(HOST_IFNAME_PREFIX) || controller(link) == Some(index) {
                continue;
            }
            let port = link.header.index;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(port)
                        .controller(index)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("putting {name} on the bridge")))?;
            self.handle
                .link()
                .set_port(LinkBridgePort::new(port).hairpin(true).build())
                .execute()
                .await
                .map_err(nl(format!("hairpin on {name}")))?;
            attached.push(name);
        }
        Ok(attached)
    }
}

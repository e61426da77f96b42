//! The daemon's side of the CNI socket: ADD leases addresses from this node's pod CIDRs and
//! records the pod's hostPorts (one transaction in the store) and wires the pod
//! (`skein-podnet`); DEL undoes both; CHECK and STATUS look; GC is in `gc.rs`. Each change of
//! the host ports is then published for the proxy.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use skein_cluster::Snapshot;
use skein_cni::{
    AddRequest, AddResult, CheckRequest, CniError, DelRequest, GcRequest, Handler, Interface,
    IpConfig, Route,
};
use skein_podnet::{PodAttachment, PodNet, PodNetError};
use skein_store::{AttachRequest, PodRef, Store};
use tokio::sync::{RwLock, watch};

use super::{Settings, code};
use crate::sections::{CidrUse, IpamBoard, IpamSection, PodLease};

/// The gateway addresses with their CIDR's prefix, as the bridge holds them.
pub(super) fn bridge_addresses(gateways: &[(IpNet, IpAddr)]) -> Vec<IpNet> {
    gateways
        .iter()
        .map(|(c, g)| skein_podnet::bridge_address(*c, *g))
        .collect()
}

pub(super) fn dataplane(e: PodNetError) -> CniError {
    match e {
        PodNetError::Exists { ifname } => CniError::Custom {
            code: code::INTERFACE_EXISTS,
            msg: format!("interface {ifname} already exists in the container's network namespace"),
            details: "a second ADD for the same container and interface; DEL it first".into(),
        },
        PodNetError::Missing { .. } | PodNetError::AddressMissing { .. } => CniError::Custom {
            code: code::DATAPLANE,
            msg: e.to_string(),
            details: String::new(),
        },
        other => CniError::Custom {
            code: code::DATAPLANE,
            msg: other.to_string(),
            details: String::new(),
        },
    }
}

pub(super) fn store_error(e: skein_store::StoreError) -> CniError {
    match e {
        skein_store::StoreError::Ipam(ipam) => CniError::Custom {
            code: code::ADDRESS_EXHAUSTED,
            msg: ipam.to_string(),
            details: String::new(),
        },
        other => CniError::Custom {
            code: code::STORE,
            msg: other.to_string(),
            details: String::new(),
        },
    }
}

/// Serves the plugin.
pub struct PodNetwork {
    pub(super) settings: Settings,
    pub(super) store: Store,
    pub(super) net: PodNet,
    pub(super) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(super) mtu: u32,
    /// ADD and DEL hold it shared, GC exclusively: GC never sees half an ADD.
    pub(super) gc_lock: RwLock<()>,
    /// The CIDRs the bridge was last made for, so ADDs skip the netlink round trips after the
    /// first; held while the bridge is being made, so concurrent ADDs wait for it.
    pub(super) ensured: tokio::sync::Mutex<Option<Vec<IpNet>>>,
    /// Wakes the task that refreshes the page's IPAM view: off the request path, coalesced.
    pub(super) reported: tokio::sync::Notify,
    pub(super) ipam: IpamBoard,
    /// Where the proxy reads the node's host ports.
    pub(super) host_ports: super::HostPortsFeed,
    /// Wakes the task that publishes them: off the request path, coalesced.
    pub(super) mapped: tokio::sync::Notify,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("settings", &self.settings)
            .finish()
    }
}

impl PodNetwork {
    /// This node's pod CIDRs, from the cluster view.
    pub(super) fn pod_cidrs(&self) -> Result<Vec<IpNet>, CniError> {
        let snapshot = self.snapshots.borrow().clone();
        match snapshot.node(&self.settings.node) {
            Some(node) if !node.pod_cidrs.is_empty() => Ok(node.pod_cidrs.clone()),
            Some(_) => Err(CniError::TryAgainLater(format!(
                "node {} has no pod CIDR yet (the controller manager allocates it); try again later",
                self.settings.node
            ))),
            None if snapshot.version == 0 => Err(CniError::TryAgainLater(
                "skein has no view of the Kubernetes API yet; try again later".into(),
            )),
            None => Err(CniError::TryAgainLater(format!(
                "node {} is not in the Kubernetes API (check node.name); try again later",
                self.settings.node
            ))),
        }
    }

    /// Each CIDR with its gateway (the first usable address), which the bridge holds.
    pub(super) fn gateways(cidrs: &[IpNet]) -> Result<Vec<(IpNet, IpAddr)>, CniError> {
        cidrs
            .iter()
            .map(|cidr| {
                skein_ipam::gateway(*cidr)
                    .map(|gw| (*cidr, gw))
                    .map_err(|e| CniError::Custom {
                        code: code::ADDRESS_EXHAUSTED,
                        msg: e.to_string(),
                        details: String::new(),
                    })
            })
            .collect()
    }

    /// The bridge for `cidrs`, made once: later ADDs skip the netlink round trips, and the
    /// reconcile loop (which watches the kernel) clears the cache when the bridge drifts.
    async fn ensure_node_network(&self, cidrs: &[IpNet]) -> Result<Vec<(IpNet, IpAddr)>, CniError> {
        let gateways = Self::gateways(cidrs)?;
        let mut ensured = self.ensured.lock().await;
        if ensured.as_deref() != Some(cidrs) {
            self.net
                .ensure_bridge(
                    self.settings.bridge.as_str(),
                    &bridge_addresses(&gateways),
                    self.mtu,
                )
                .await
                .map_err(dataplane)?;
            *ensured = Some(cidrs.to_vec());
        }
        Ok(gateways)
    }

    /// Publishes the node's host ports from the store, when they differ from what the proxy
    /// has. A store that cannot be read leaves the proxy with the last ones (tried again after
    /// the next change, or the next garbage collection).
    pub(super) async fn publish_host_ports(&self) {
        match self.store.host_ports().await {
            Ok(now) => {
                self.host_ports.send_if_modified(|have| {
                    let changed = **have != now;
                    if changed {
                        *have = Arc::new(now);
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!("cannot read the host ports from the store: {e}"),
        }
    }

    /// Publishes leases and use per CIDR on the status board.
    pub(super) async fn report(&self) {
        let (Ok(leases), Ok(usage)) = (self.store.leases().await, self.store.usage().await) else {
            return;
        };
        let cidrs = self.pod_cidrs().unwrap_or_default();
        let mut summary = IpamSection {
            cidrs: Vec::new(),
            pods: Vec::new(),
        };
        for cidr in &cidrs {
            let used = usage.iter().find(|(c, _)| c == cidr).map_or(0, |(_, n)| *n);
            summary.cidrs.push(CidrUse {
                cidr: cidr.to_string(),
                used,
                capacity: u64::try_from(skein_ipam::capacity(*cidr)).unwrap_or(u64::MAX),
            });
        }
        summary.pods = leases
            .into_iter()
            .map(|l| PodLease {
                namespace: l.pod.namespace,
                name: l.pod.name,
                address: l.address.to_string(),
                interface: l.ifname,
                container: l.container_id.chars().take(12).collect(),
            })
            .collect();
        self.ipam.show(&summary);
    }
}

impl Handler for PodNetwork {
    async fn add(&self, request: AddRequest) -> Result<AddResult, CniError> {
        let started = std::time::Instant::now();
        let _shared = self.gc_lock.read().await;
        let cidrs = self.pod_cidrs()?;
        let gateways = self.ensure_node_network(&cidrs).await?;
        let pod = PodRef {
            namespace: request.pod.namespace.clone().unwrap_or_default(),
            name: request.pod.name.clone().unwrap_or_default(),
            uid: request.pod.uid.clone().unwrap_or_default(),
        };
        // Every address and the hostPorts in one transaction: a refused ADD leaves nothing.
        let leases = self
            .store
            .attach(&AttachRequest {
                container_id: request.container_id.clone(),
                ifname: request.ifname.clone(),
                pod,
                cidrs: gateways.iter().map(|(cidr, _)| *cidr).collect(),
                port_mappings: request.port_mappings.clone(),
            })
            .await
            .map_err(store_error)?;
        // The mappings are in the store (or replaced, for a repeated ADD): the proxy may
        // forward them from now on, whatever becomes of the interface below.
        self.mapped.notify_one();
        let addresses: Vec<IpNet> = leases
            .iter()
            .filter_map(|l| IpNet::new(l.address, l.cidr.prefix_len()).ok())
            .collect();
        let leased = started.elapsed();
        let host_ifname = skein_podnet::host_ifname(&request.container_id, &request.ifname);
        let attached = self
            .net
            .attach(PodAttachment {
                netns: request.netns,
                ifname: request.ifname.clone(),
                host_ifname: host_ifname.clone(),
                bridge: self.settings.bridge.to_string(),
                addresses: addresses.clone(),
                gateways: gateways.iter().map(|(_, g)| *g).collect(),
                mtu: self.mtu,
            })
            .await;
        let attached = match attached {
            Ok(a) => a,
            // The interface is there: the lease is the one it holds; keep both.
            Err(e @ PodNetError::Exists { .. }) => return Err(dataplane(e)),
            Err(e) => {
                let _ = self.net.detach(None, &request.ifname, &host_ifname).await;
                let _ = self
                    .store
                    .release(&request.container_id, &request.ifname)
                    .await;
                self.mapped.notify_one();
                return Err(dataplane(e));
            }
        };
        drop(_shared);
        self.reported.notify_one();
        tracing::debug!(container = %request.container_id, ?leased, total = ?started.elapsed(), "ADD");
        Ok(AddResult {
            interfaces: vec![
                Interface {
                    name: host_ifname,
                    mac: Some(attached.host_mac),
                    mtu: Some(self.mtu),
                    ..Default::default()
                },
                Interface {
                    name: request.ifname.clone(),
                    mac: Some(attached.pod_mac),
                    mtu: Some(self.mtu),
                    sandbox: Some(request.netns_path.clone()),
                    ..Default::default()
                },
            ],
            ips: addresses
                .iter()
                .zip(&gateways)
                .map(|(a, (_, g))| IpConfig {
                    address: *a,
                    gateway: Some(*g),
                    interface: Some(1),
                })
                .collect(),
            routes: gateways
                .iter()
                .map(|(cidr, g)| Route {
                    dst: if cidr.addr().is_ipv4() {
                        "0.0.0.0/0".parse().expect("valid")
                    } else {
                        "::/0".parse().expect("valid")
                    },
                    gw: Some(*g),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                })
                .collect(),
            dns: Default::default(),
        })
    }

    async fn del(&self, request: DelRequest) -> Result<(), CniError> {
        let _shared = self.gc_lock.read().await;
        let host_ifname = skein_podnet::host_ifname(&request.container_id, &request.ifname);
        self.net
            .detach(request.netns, &request.ifname, &host_ifname)
            .await
            .map_err(dataplane)?;
        self.store
            .release(&request.container_id, &request.ifname)
            .await
            .map_err(store_error)?;
        drop(_shared);
        self.reported.notify_one();
        self.mapped.notify_one();
        Ok(())
    }

    async fn check(&self, request: CheckRequest) -> Result<(), CniError> {
        let leases = self
            .store
            .lease_of(&request.container_id, &request.ifname)
            .await
            .map_err(store_error)?;
        if leases.is_empty() {
            return Err(CniError::UnknownContainer(format!(
                "no attachment of container {} on interface {}",
                request.container_id, request.ifname
            )));
        }
        let addresses: Vec<IpNet> = leases
            .iter()
            .filter_map(|l| IpNet::new(l.address, l.cidr.prefix_len()).ok())
            .collect();
        self.net
            .check(request.netns, &request.ifname, &addresses)
            .await
            .map_err(dataplane)
    }

    async fn status(&self) -> Result<(), CniError> {
        if let Err(e) = self.pod_cidrs() {
            return Err(CniError::NotAvailable(e.to_string()));
        }
        // Pods hold addresses but their bridge is gone: they are cut off until it is back.
        let leases = self.store.leases().await.map_err(store_error)?;
        let bridge = self
            .net
            .link(self.settings.bridge.as_str())
            .await
            .map_err(dataplane)?;
        if !leases.is_empty() && bridge.is_none() {
            return Err(CniError::NotAvailableImpaired(format!(
                "bridge {} is gone; the {} pods on this node are cut off",
                self.settings.bridge,
                leases.len()
            )));
        }
        Ok(())
    }

    async fn gc(&self, request: GcRequest) -> Result<(), CniError> {
        let valid: BTreeSet<(String, String)> = request
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        self.collect(Some(&valid)).await?;
        self.report().await;
        Ok(())
    }
}

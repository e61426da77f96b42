//! The daemon's `cni` part: serves the CNI plugin's requests on `cni.socket`. ADD leases
//! addresses from this node's pod CIDRs (one transaction in the store) and wires the pod
//! (`skein-podnet`); DEL undoes both; GC runs exclusive of ADD and DEL and frees only leases
//! whose container is gone. It also installs the plugin and its conflist, makes the sysctls pods
//! need, and keeps the masquerade rules in skein's nftables table.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use skein_cluster::Snapshot;
use skein_cni::{
    AddRequest, AddResult, CheckRequest, CniError, DelRequest, GcRequest, Handler, Interface,
    IpConfig, Route,
};
use skein_nft::Backend;
use skein_podnet::{PodAttachment, PodNet, PodNetError};
use skein_status::PartHandle;
use skein_store::{LeaseRequest, PodRef, Store};
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::PartResult;
use crate::sections::{CidrUse, IpamBoard, IpamSection, PodLease, Reporting};

/// The daemon's CNI error codes (the spec leaves 100 and up to plugins; `skein-cni` keeps the
/// ones below 110 for the protocol itself).
pub mod code {
    pub const INTERFACE_EXISTS: u32 = 110;
    pub const ADDRESS_EXHAUSTED: u32 = 111;
    pub const DATAPLANE: u32 = 112;
    pub const STORE: u32 = 113;
}

/// What pods need of the node: forwarding, and no strict reverse-path filter dropping traffic
/// that arrives on the bridge for an address routed elsewhere (loose mode, 2, as flannel does).
const SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "2"),
    ("net.ipv4.conf.default.rp_filter", "2"),
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub bridge: String,
    pub mtu: skein_config::Mtu,
    pub portmap: bool,
    /// The overlay link's MTU; pods never get a larger one.
    pub overlay_mtu: u32,
    pub cluster_cidrs: Vec<IpNet>,
}

/// The MTU pods get: the overlay's (so a pod's packet always fits the tunnel), or a smaller one
/// configured in `cni.mtu`.
pub fn pod_mtu(setting: skein_config::Mtu, overlay_mtu: u32) -> u32 {
    match setting {
        skein_config::Mtu::Fixed(n) => n.min(overlay_mtu),
        skein_config::Mtu::Auto => overlay_mtu,
    }
}

fn dataplane(e: PodNetError) -> CniError {
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

fn store_error(e: skein_store::StoreError) -> CniError {
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
    settings: Settings,
    store: Store,
    net: PodNet,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mtu: u32,
    /// ADD and DEL hold it shared, GC exclusively: GC never sees half an ADD.
    gc_lock: RwLock<()>,
    /// The CIDRs the bridge was last made for, so ADDs skip the netlink round trips after the
    /// first; held while the bridge is being made, so concurrent ADDs wait for it.
    ensured: tokio::sync::Mutex<Option<Vec<IpNet>>>,
    /// Wakes the task that refreshes the page's IPAM view: off the request path, coalesced.
    reported: tokio::sync::Notify,
    ipam: IpamBoard,
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
    fn pod_cidrs(&self) -> Result<Vec<IpNet>, CniError> {
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

    async fn ensure_node_network(&self, cidrs: &[IpNet]) -> Result<Vec<(IpNet, IpAddr)>, CniError> {
        let mut gateways = Vec::new();
        for cidr in cidrs {
            let gw = skein_ipam::gateway(*cidr).map_err(|e| CniError::Custom {
                code: code::ADDRESS_EXHAUSTED,
                msg: e.to_string(),
                details: String::new(),
            })?;
            gateways.push((*cidr, gw));
        }
        let mut ensured = self.ensured.lock().await;
        if ensured.as_deref() != Some(cidrs) {
            let addresses: Vec<IpNet> = gateways
                .iter()
                .map(|(c, g)| skein_podnet::bridge_address(*c, *g))
                .collect();
            self.net
                .ensure_bridge(&self.settings.bridge, &addresses, self.mtu)
                .await
                .map_err(dataplane)?;
            *ensured = Some(cidrs.to_vec());
        }
        Ok(gateways)
    }

    /// Publishes leases and use per CIDR on the status board.
    pub async fn report(&self) {
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

    /// Frees leases of attachments that are gone: not `valid` (when the runtime listed them),
    /// and (always) with no host interface left on the node.
    async fn collect(&self, valid: Option<&BTreeSet<(String, String)>>) -> Result<usize, CniError> {
        let _exclusive = self.gc_lock.write().await;
        let leases = self.store.leases().await.map_err(store_error)?;
        let host_ends: BTreeSet<String> = self
            .net
            .host_ends()
            .await
            .map_err(dataplane)?
            .into_iter()
            .collect();
        let snapshot = self.snapshots.borrow().clone();
        let mut keep = BTreeSet::new();
        for lease in &leases {
            let attachment = (lease.container_id.clone(), lease.ifname.clone());
            let host_end = skein_podnet::host_ifname(&lease.container_id, &lease.ifname);
            let listed = valid.is_none_or(|v| v.contains(&attachment));
            let pod_known = snapshot.version == 0
                || snapshot.pods.values().any(|p| {
                    p.uid == lease.pod.uid
                        && p.node_name.as_deref() == Some(self.settings.node.as_str())
                });
            // Without the runtime's list, a lease goes only when both its pod and its interface
            // are gone; with the list, whatever the runtime no longer knows goes.
            let alive = match valid {
                Some(_) => listed,
                None => pod_known || host_ends.contains(&host_end),
            };
            if alive {
                keep.insert(attachment);
            } else if host_ends.contains(&host_end) {
                let _ = self.net.detach(None, &lease.ifname, &host_end).await;
            }
        }
        let freed = self
            .store
            .release_except(&keep)
            .await
            .map_err(store_error)?;
        for lease in &freed {
            tracing::info!(address = %lease.address, pod = %format!("{}/{}", lease.pod.namespace, lease.pod.name), "lease reclaimed");
        }
        Ok(freed.len())
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
        let mut leases = Vec::new();
        for (cidr, _) in &gateways {
            let lease = self
                .store
                .lease(&LeaseRequest {
                    container_id: request.container_id.clone(),
                    ifname: request.ifname.clone(),
                    pod: pod.clone(),
                    cidr: *cidr,
                })
                .await
                .map_err(store_error)?;
            leases.push(lease);
        }
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
                bridge: self.settings.bridge.clone(),
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
            .link(&self.settings.bridge)
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

/// The part: install, prepare the node, garbage-collect, then serve until cancelled.
pub async fn run(
    settings: Settings,
    store: Store,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    gc_interval: std::time::Duration,
    handle: PartHandle,
    report: Reporting,
    cancel: CancellationToken,
) -> PartResult {
    let written = crate::cni_install::install(
        &settings.conf_dir,
        &settings.bin_dir,
        &settings.socket,
        settings.portmap,
    )
    .map_err(|e| {
        format!(
            "installing the CNI plugin into {} and {}: {e}",
            settings.bin_dir.display(),
            settings.conf_dir.display()
        )
    })?;
    for path in written {
        tracing::info!(path = %path.display(), "installed");
    }
    let mut warnings = Vec::new();
    let net = PodNet::connect().map_err(|e| e.to_string())?;
    let mtu = pod_mtu(settings.mtu, settings.overlay_mtu);
    let listener = skein_cni::bind(&settings.socket)
        .map_err(|e| format!("cni.socket = \"{}\": {e}", settings.socket.display()))?;
    let network = Arc::new(PodNetwork {
        settings: settings.clone(),
        store,
        net,
        snapshots: snapshots.clone(),
        mtu,
        gc_lock: RwLock::new(()),
        ensured: tokio::sync::Mutex::new(None),
        reported: tokio::sync::Notify::new(),
        ipam: IpamBoard::register(&report),
    });
    let serving = tokio::spawn(skein_cni::serve(
        listener,
        network.clone(),
        skein_cni::RequestMetrics::register(&report.metrics),
        cancel.child_token(),
    ));
    let reporter = {
        let network = network.clone();
        tokio::spawn(async move {
            loop {
                network.reported.notified().await;
                network.report().await;
                // At most a few refreshes a second, however many pods come and go.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };

    let mut snapshots = snapshots;
    let mut gc = tokio::time::interval(gc_interval);
    let mut applied_cidrs: Option<Vec<IpNet>> = None;
    let mut collected_once = false;
    let result = loop {
        let cidrs = network.pod_cidrs().ok();
        // Masquerade follows this node's CIDRs; the table is rebuilt only when they change.
        if let Some(cidrs) = &cidrs
            && applied_cidrs.as_ref() != Some(cidrs)
        {
            let tx = skein_nft::masquerade(cidrs, &settings.cluster_cidrs);
            match tokio::task::spawn_blocking(move || skein_nft::NftProgram.apply(&tx)).await {
                Ok(Ok(())) => applied_cidrs = Some(cidrs.clone()),
                Ok(Err(e)) => warnings.push(format!("masquerade rules: {e}")),
                Err(e) => warnings.push(format!("masquerade rules: {e}")),
            }
            if let Err(e) = network.ensure_node_network(cidrs).await {
                warnings.push(e.to_string());
            }
            // Only once the node has pods to serve: a daemon without a cluster changes nothing.
            for (key, value) in SYSCTLS {
                if let Err(e) = skein_podnet::set_sysctl(key, value) {
                    warnings.push(e.to_string());
                }
            }
        }
        let snapshot_ready = snapshots.borrow().version > 0;
        if snapshot_ready && !collected_once {
            // The start-up pass: leases of pods deleted while the daemon was down go now.
            match network.collect(None).await {
                Ok(n) if n > 0 => tracing::info!("reclaimed {n} leases of vanished pods"),
                Ok(_) => {}
                Err(e) => warnings.push(format!("garbage collection: {e}")),
            }
            collected_once = true;
        }
        network.report().await;
        match (&cidrs, warnings.last()) {
            (_, Some(w)) => handle.degraded(w.clone()),
            (Some(c), None) => handle.ok(format!(
                "serving {} · pods on {} · MTU {mtu}",
                settings.socket.display(),
                c.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (None, None) => handle.detail(format!(
                "serving {}; waiting for this node's pod CIDR",
                settings.socket.display()
            )),
        }
        warnings.clear();
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            changed = snapshots.changed() => if changed.is_err() { break Err("the cluster view stopped".into()) },
            _ = gc.tick() => {
                if snapshot_ready && let Err(e) = network.collect(None).await {
                    warnings.push(format!("garbage collection: {e}"));
                }
            }
        }
    };
    serving.abort();
    reporter.abort();
    let _ = std::fs::remove_file(&settings.socket);
    result
}

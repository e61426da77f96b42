//! The daemon's `cni` part: serves the CNI plugin's requests on `cni.socket` (`handler.rs`),
//! reclaims leases of pods that are gone (`gc.rs`), publishes the node's host ports for the
//! proxy (from the store, at start and after each ADD, DEL and GC), installs the plugin and its
//! conflist, and keeps the node's side of pod networking as it should be (`node.rs`): at start,
//! whenever the kernel announces a change to the bridge or its ports or the ruleset changes, and
//! on the resync timer, repairing only the difference and saying so on the page.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::sections::{IpamBoard, Reporting};
use ipnet::IpNet;
use skein_cluster::Snapshot;
use skein_names::IfName;
use skein_podnet::{KernelEvent, PodNet};
use skein_store::Store;
use tokio::sync::{RwLock, watch};
use tokio::time::Instant;

use crate::{Part, PartError, PartResult};

mod gc;
mod handler;
mod node;
#[cfg(test)]
mod tests;

#[cfg(test)]
use gc::plan_gc;
pub use handler::PodNetwork;

/// The daemon's CNI error codes (the spec leaves 100 and up to plugins; `skein-cni` keeps the
/// ones below 110 for the protocol itself).
pub mod code {
    pub const INTERFACE_EXISTS: u32 = 110;
    pub const ADDRESS_EXHAUSTED: u32 = 111;
    pub const DATAPLANE: u32 = 112;
    pub const STORE: u32 = 113;
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub bridge: IfName,
    pub mtu: skein_config::Mtu,
    /// Whether the conflist declares the `portMappings` capability for skein, for portmap, or
    /// for nobody.
    pub port_mappings: crate::cni_install::PortMappings,
    /// The overlay link's MTU; pods never get a larger one.
    pub overlay_mtu: u32,
    /// The overlay interface, when there is one: service traffic the proxy marked for
    /// masquerade leaves through it with the pod gateway address.
    pub overlay: Option<IfName>,
    pub cluster_cidrs: Vec<IpNet>,
    pub gc_interval: std::time::Duration,
    /// `daemon.resync_interval`.
    pub resync: std::time::Duration,
}

/// The MTU pods get: the overlay's (so a pod's packet always fits the tunnel), or a smaller one
/// configured in `cni.mtu`.
pub fn pod_mtu(setting: skein_config::Mtu, overlay_mtu: u32) -> u32 {
    match setting {
        skein_config::Mtu::Fixed(n) => n.min(overlay_mtu),
        skein_config::Mtu::Auto => overlay_mtu,
    }
}

/// How long the kernel may go quiet before a burst of its notifications is acted on.
const SETTLE: Duration = Duration::from_millis(100);
/// How soon a pass that left a problem is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Whether `event` may mean the node's pod network drifted: the bridge went, went down or was
/// made anew (another index), one of its addresses went, or a pod's host end is off it. Pod
/// churn (host ends born on the bridge, ports coming and going) is not drift.
fn concerns_the_bridge(event: &KernelEvent, bridge: &IfName, bridge_index: Option<u32>) -> bool {
    match event {
        KernelEvent::Link {
            name: Some(name),
            index,
            up,
            removed,
            ..
        } if name == bridge.as_str() => *removed || !*up || Some(*index) != bridge_index,
        KernelEvent::Link {
            name: Some(name),
            controller,
            removed: false,
            ..
        } => {
            name.starts_with(skein_podnet::HOST_IFNAME_PREFIX)
                && bridge_index.is_some()
                && *controller != bridge_index
        }
        KernelEvent::Address {
            index,
            removed: true,
        } => Some(*index) == bridge_index,
        KernelEvent::Lost => true,
        _ => false,
    }
}

/// The node's host ports as the store pairs them with the pods' addresses; the daemon's channel
/// outlives the part's restarts.
pub type HostPortsFeed = watch::Sender<Arc<Vec<skein_store::HostPortTarget>>>;

/// The part: install, prepare the node, garbage-collect, then serve until cancelled.
pub async fn run(
    settings: Settings,
    store: Store,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    host_ports: HostPortsFeed,
    part: Part,
    report: Reporting,
) -> PartResult {
    let (handle, cancel) = (&part.handle, &part.cancel);
    let install = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || {
            crate::cni_install::install(&s.conf_dir, &s.bin_dir, &s.socket, s.port_mappings)
        })
    };
    // Copying the binary can take seconds (a debug build is hundreds of MB, fsynced); a stop
    // meanwhile does not wait for it.
    let installed = tokio::select! {
        r = install => r,
        () = cancel.cancelled() => return Ok(()),
    };
    let written = installed
        .map_err(|e| PartError::Failed(format!("installing the CNI plugin: {e}")))?
        .map_err(PartError::io(format!(
            "installing the CNI plugin into {} and {}",
            settings.bin_dir.display(),
            settings.conf_dir.display()
        )))?;
    for path in written {
        tracing::info!(path = %path.display(), "installed");
    }
    let net = PodNet::connect()?;
    let (events_driver, mut events) = skein_podnet::kernel_events()?;
    let stop = part.cancel.clone();
    part.spawn("kernel notifications", async move {
        tokio::select! {
            () = events_driver => Err::<(), _>("the netlink socket closed"),
            () = stop.cancelled() => Ok(()),
        }
    });
    let mut ruleset = skein_nft::RulesetChanges::subscribe()?;
    let mtu = pod_mtu(settings.mtu, settings.overlay_mtu);
    let listener = skein_cni::bind(&settings.socket).map_err(|e| {
        PartError::Failed(format!(
            "cni.socket = \"{}\": {e}",
            settings.socket.display()
        ))
    })?;
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
        host_ports,
        mapped: tokio::sync::Notify::new(),
    });
    let serving = skein_cni::serve(
        listener,
        network.clone(),
        skein_cni::RequestMetrics::register(&report.metrics),
        cancel.child_token(),
    );
    part.spawn("CNI socket server", async move {
        serving.await;
        Ok::<(), String>(())
    });
    {
        let network = network.clone();
        let stop = part.cancel.clone();
        part.spawn("host ports publisher", async move {
            let publish = async {
                loop {
                    network.publish_host_ports().await;
                    network.mapped.notified().await;
                }
            };
            tokio::select! {
                () = publish => {}
                () = stop.cancelled() => {}
            }
            Ok::<(), String>(())
        });
    }
    {
        let network = network.clone();
        let stop = part.cancel.clone();
        part.spawn("IPAM reporter", async move {
            let report = async {
                loop {
                    network.reported.notified().await;
                    network.report().await;
                    // At most a few refreshes a second, however many pods come and go.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                () = report => {}
                () = stop.cancelled() => {}
            }
            Ok::<(), String>(())
        });
    }

    let mut snapshots = snapshots;
    let mut gc = tokio::time::interval(settings.gc_interval);
    let mut resync = tokio::time::interval(settings.resync);
    let mut masquerade = node::Masquerade::default();
    // The CIDRs of the last pass, clean or not: a pass for new CIDRs is preparation, a later
    // difference is drift.
    let mut attempted_cidrs: Option<Vec<IpNet>> = None;
    let mut bridge_index = None;
    let mut warnings: Vec<String> = Vec::new();
    let mut due: Option<Instant> = Some(Instant::now());
    let mut collected_once = false;
    let result = loop {
        let cidrs = network.pod_cidrs().ok();
        if cidrs.is_some() && attempted_cidrs != cidrs {
            due = Some(Instant::now());
        }
        if let Some(c) = &cidrs
            && due.is_some_and(|t| t <= Instant::now())
        {
            due = None;
            let first = attempted_cidrs.as_ref() != Some(c);
            attempted_cidrs = Some(c.clone());
            let sync = network.reconcile_node(c, &mut masquerade).await;
            bridge_index = sync.bridge_index.or(bridge_index);
            if !sync.repairs.is_empty() {
                let what = sync.repairs.join("; ");
                if first {
                    tracing::info!("node prepared for pods: {what}");
                } else {
                    tracing::warn!("repaired drift: {what}");
                    handle.repaired(what);
                }
            }
            warnings = sync.warnings;
            if !warnings.is_empty() {
                // Tried again soon: a failed apply is retried, not left for the timer.
                due = Some(Instant::now() + RETRY);
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
        let settle = |due: &mut Option<Instant>| {
            let soon = Instant::now() + SETTLE;
            *due = Some(due.map_or(soon, |d| d.min(soon)));
        };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            changed = snapshots.changed() => if changed.is_err() { break Err(PartError::ViewClosed) },
            event = events.next() => match event {
                Some(e) if concerns_the_bridge(&e, &settings.bridge, bridge_index) => settle(&mut due),
                Some(_) => {}
                None => break Err(PartError::Failed("the kernel's notifications stopped".into())),
            },
            changed = ruleset.next() => match changed {
                Ok(()) => settle(&mut due),
                Err(e) => break Err(e.into()),
            },
            _ = resync.tick() => due = Some(Instant::now()),
            // Only with CIDRs to reconcile for: before them a due pass waits for the view.
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() && cidrs.is_some() => {}
            _ = gc.tick() => {
                if snapshot_ready && let Err(e) = network.collect(None).await {
                    warnings.push(format!("garbage collection: {e}"));
                }
            }
        }
    };
    let _ = std::fs::remove_file(&settings.socket);
    result
}

//! The daemon's `overlay` part: the node's WireGuard identity, published for the other nodes
//! (through the cluster part), and a device whose peers and routes follow the cluster view.
//!
//! Each turn reads the device, compares it with what the snapshot asks for, and writes only the
//! difference: nodes that come and go add and remove exactly their peer and routes. The device
//! itself is never torn down here: a daemon restart leaves the tunnel carrying traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use skein_cluster::Snapshot;
use skein_nft::{ChainSync, Netlink, OwnedChain};
use skein_overlay::PeerChange;
use skein_overlay::{
    Backend, DeviceChange, DeviceState, NodeKey, Overlay, PeerSpec, Skipped, desired_peers,
    plan_peers, plan_routes,
};
use skein_podnet::{KernelEvent, PodNet};
use tokio::sync::{mpsc, oneshot, watch};

use crate::sections::{
    OverlaySection, PeerState, PeerSummary, PeersBoard, Reporting, SESSION_LIFETIME, SkippedPeer,
};
use crate::{Part, PartError, PartResult};
use skein_config::OverlayMode;
use skein_names::IfName;

/// How often the device is read for the page's handshake and byte figures; each read is also a
/// comparison with what it should hold, so `daemon.resync_interval` is only a bound on top.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub interface: IfName,
    pub mode: OverlayMode,
    pub listen_port: u16,
    pub mtu: u32,
    pub keepalive: Option<u16>,
    pub state_dir: PathBuf,
    /// `daemon.resync_interval`.
    pub resync: Duration,
}

/// What the other nodes need to know about this one; the cluster part publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub public_key: String,
    pub listen_port: u16,
}

/// A request from `skein overlay rotate-key`, answered with a line for the operator.
pub type RotateRequest = oneshot::Sender<Result<String, String>>;

pub async fn run(
    settings: Settings,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    identity: watch::Sender<Option<Identity>>,
    rotations: &mut mpsc::Receiver<RotateRequest>,
    part: Part,
    report: Reporting,
) -> PartResult {
    let (handle, cancel) = (&part.handle, &part.cancel);
    let mut peers_board = PeersBoard::register(&report);
    // The key file is blocking IO: off the async threads.
    let dir = settings.state_dir.clone();
    let key = tokio::task::spawn_blocking(move || NodeKey::load_or_create(&dir))
        .await
        .map_err(|e| PartError::Failed(e.to_string()))?
        .map_err(|e| PartError::Failed(e.to_string()))?;
    let net = PodNet::connect()?;
    let (backend, reason) = skein_overlay::choose_backend(
        settings.mode,
        skein_wireguard::kernel_has_wireguard(),
        settings.interface.as_str(),
    );
    if backend == Backend::Kernel {
        net.create_wireguard_link(settings.interface.as_str())
            .await
            .map_err(|e| PartError::Failed(format!("{reason}, but: {e}")))?;
    }
    let overlay = Overlay::new(settings.interface.as_str(), backend)?;
    let mut key = finish_pending_rotation(&settings.state_dir, &overlay, key)
        .await
        .map_err(PartError::Failed)?;
    tracing::info!(interface = %settings.interface, backend = backend.as_str(), "overlay: {reason}; public key {}", key.public().to_base64());
    identity.send_replace(Some(Identity {
        public_key: key.public().to_base64(),
        listen_port: settings.listen_port,
    }));
    let (events_driver, mut events) = skein_podnet::kernel_events()?;
    let stop = part.cancel.clone();
    part.spawn("kernel notifications", async move {
        tokio::select! {
            () = events_driver => Err::<(), _>("the netlink socket closed"),
            () = stop.cancelled() => Ok(()),
        }
    });
    let mut ruleset = skein_nft::RulesetChanges::subscribe()?;
    let mut mss = Some((
        OwnedChain::new(
            skein_nft::CHAIN_OVERLAY_MSS,
            skein_nft::overlay_mss_clamp(&settings.interface),
        ),
        None,
    ));
    let mut mss_due = true;

    let mut snapshots = snapshots;
    let mut turn = Turn {
        settings: &settings,
        overlay: &overlay,
        net: &net,
        published: BTreeMap::new(),
        reason: &reason,
        index: None,
        routes_waiting: false,
    };
    let mut resync = tokio::time::interval(REFRESH_EVERY.min(settings.resync));
    // The view the device last matched: a change needed against the same view is drift.
    let mut matched_version: Option<u64> = None;
    let mut mss_error: Option<String> = None;
    let mut turn_due = true;
    loop {
        // Nothing in the kernel's tables before the cluster view is complete: a daemon that
        // never reaches an API server (a test's, in the machine's own namespace) leaves no
        // table behind.
        if mss_due && snapshots.borrow().version > 0 {
            mss_due = false;
            mss_error = match reconcile_mss(&mut mss).await {
                Ok(Some(what)) => {
                    tracing::warn!("overlay: repaired drift: {what}");
                    handle.repaired(what);
                    None
                }
                Ok(None) => None,
                Err(e) => Some(format!("MSS clamp: {e}")),
            };
        }
        let snapshot = snapshots.borrow().clone();
        // Notifications about other links and the ruleset do not need a look at the device.
        let outcome = if turn_due {
            Some(turn.run(&key, &snapshot).await)
        } else {
            None
        };
        match outcome {
            None => {}
            Some(Ok((summary, changed))) => {
                if !changed.is_empty() && matched_version == Some(snapshot.version) {
                    let what = changed.join("; ");
                    tracing::warn!("overlay: repaired drift: {what}");
                    handle.repaired(what);
                }
                // Routes that waited for the bridge are preparation, not drift.
                if snapshot.version > 0 && !turn.routes_waiting {
                    matched_version = Some(snapshot.version);
                }
                let up = summary.peers.iter().filter(|p| p.up).count();
                let detail = format!(
                    "{} ({}) · {} of {} peers up · MTU {}",
                    settings.interface,
                    backend.as_str(),
                    up,
                    summary.peers.len(),
                    settings.mtu
                );
                peers_board.show(summary);
                if let Some(e) = &mss_error {
                    handle.degraded(e.clone());
                } else if snapshot.version == 0 {
                    handle.detail("waiting for the cluster view");
                } else {
                    handle.ok(detail);
                }
            }
            Some(Err(e)) => {
                tracing::warn!("overlay: {e}");
                handle.degraded(e);
            }
        }
        turn_due = true;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = snapshots.changed() => if changed.is_err() { return Err(PartError::ViewClosed) },
            _ = resync.tick() => mss_due = true,
            event = events.next() => match event {
                Some(e) if turn.concerns_the_overlay(&e) => {
                    // Let a burst settle, then look again.
                    tokio::time::sleep(SETTLE).await;
                }
                Some(_) => turn_due = false,
                None => return Err(PartError::Failed("the kernel's notifications stopped".into())),
            },
            changed = ruleset.next() => {
                changed?;
                mss_due = true;
                turn_due = false;
            }
            Some(reply) = rotations.recv() => {
                let answer = rotate(&settings, &overlay, &mut key).await;
                if answer.is_ok() {
                    identity.send_replace(Some(Identity {
                        public_key: key.public().to_base64(),
                        listen_port: settings.listen_port,
                    }));
                }
                let _ = reply.send(answer);
            }
        }
    }
}

/// Settles a rotation that a crash interrupted (a leftover `wireguard.key.new`), from the key
/// the device holds; `skein_overlay::decide_pending` reasons through each crash point.
async fn finish_pending_rotation(
    state_dir: &std::path::Path,
    overlay: &Overlay,
    key: NodeKey,
) -> Result<NodeKey, String> {
    let (dir, o) = (state_dir.to_path_buf(), overlay.clone());
    tokio::task::spawn_blocking(move || {
        if !dir.join(skein_overlay::rotation::PENDING_FILE).exists() {
            return Ok(key);
        }
        let device = o.read().ok().and_then(|d| d.public_key);
        let (key, decision) = skein_overlay::finish_pending_rotation(&dir, key, device.as_ref())
            .map_err(|e| e.to_string())?;
        let outcome = match decision {
            Some(skein_overlay::PendingKey::Complete) => "the device held the new key: completed",
            Some(skein_overlay::PendingKey::Discard) => {
                "the device did not hold the new key: discarded"
            }
            None => return Ok(key),
        };
        tracing::warn!(
            "overlay: an interrupted key rotation found; {outcome}; public key {}",
            key.public().to_base64()
        );
        Ok(key)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Makes a new key and hands it to the device before it replaces the key file, then lets it
/// be published (see `skein_overlay::rotation`): a crash at any step leaves file and device
/// agreeing, and a key the device refuses leaves the old one everywhere. The device switches
/// first: the other nodes re-peer when they see the new key, and their fresh peer's first
/// handshake then meets the new key already in place.
async fn rotate(
    settings: &Settings,
    overlay: &Overlay,
    key: &mut NodeKey,
) -> Result<String, String> {
    let (dir, o, current) = (settings.state_dir.clone(), overlay.clone(), key.clone());
    let new = tokio::task::spawn_blocking(move || skein_overlay::rotate(&dir, &o, &current))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let old = std::mem::replace(key, new);
    tracing::info!(
        "overlay: WireGuard key rotated; public key {} replaces {}",
        key.public().to_base64(),
        old.public().to_base64()
    );
    Ok(format!(
        "new WireGuard public key {} (was {}); published on node {}, the other nodes re-peer when they see it",
        key.public().to_base64(),
        old.public().to_base64(),
        settings.node
    ))
}

/// How long the kernel may go quiet before a burst of its notifications is acted on.
const SETTLE: Duration = Duration::from_millis(100);

/// Compares the MSS clamp chain with what was applied and repairs it; `Some` says what it did.
/// The chain travels with its nftables socket (opened on first use, in the daemon's network
/// namespace, and again after a failure to open) into a blocking task and back.
async fn reconcile_mss(
    chain: &mut Option<(OwnedChain, Option<Netlink>)>,
) -> Result<Option<String>, String> {
    let Some((mut owned, netlink)) = chain.take() else {
        return Ok(None);
    };
    let (owned, netlink, result) = tokio::task::spawn_blocking(move || {
        let mut netlink = match netlink.map_or_else(Netlink::new, Ok) {
            Ok(n) => n,
            Err(e) => return (owned, None, Err(e)),
        };
        let r = owned.reconcile(&mut netlink);
        (owned, Some(netlink), r)
    })
    .await
    .map_err(|e| e.to_string())?;
    let name = owned.name().to_string();
    *chain = Some((owned, netlink));
    match result.map_err(|e| e.to_string())? {
        ChainSync::Repaired => Ok(Some(format!("nftables chain {name} restored"))),
        _ => Ok(None),
    }
}

struct Turn<'a> {
    settings: &'a Settings,
    overlay: &'a Overlay,
    net: &'a PodNet,
    /// The endpoint each peer had in the API when last written to the device.
    published: BTreeMap<[u8; 32], SocketAddr>,
    reason: &'a str,
    /// The overlay link's index when last seen.
    index: Option<u32>,
    /// Routes wait for the pod bridge's gateway address (their source) to exist.
    routes_waiting: bool,
}

impl Turn<'_> {
    /// Whether a kernel notification may mean the overlay drifted: its link changed or went,
    /// or a route through it went.
    fn concerns_the_overlay(&self, event: &KernelEvent) -> bool {
        match event {
            KernelEvent::Link { name: Some(n), .. } => n == self.settings.interface.as_str(),
            KernelEvent::Route { oif, removed: true } => oif.is_some() && *oif == self.index,
            KernelEvent::Address { removed: false, .. } => self.routes_waiting,
            KernelEvent::Lost => true,
            _ => false,
        }
    }

    /// One comparison of the device and its routes with the view; returns the page's summary
    /// and, for the log and the page, what had to change.
    async fn run(
        &mut self,
        key: &NodeKey,
        snapshot: &Snapshot,
    ) -> Result<(OverlaySection, Vec<String>), String> {
        let s = self.settings;
        let mut changed = Vec::new();
        let mut index = self
            .net
            .set_up_with_mtu(s.interface.as_str(), s.mtu)
            .await
            .map_err(|e| e.to_string())?;
        // A kernel device is ours to make (a userspace one makes its own TUN): deleted behind
        // skein's back, it is made again.
        if index.is_none() && self.overlay.backend == Backend::Kernel {
            self.net
                .create_wireguard_link(s.interface.as_str())
                .await
                .map_err(|e| e.to_string())?;
            changed.push(format!("WireGuard link {} made again", s.interface));
            index = self
                .net
                .set_up_with_mtu(s.interface.as_str(), s.mtu)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.index = index;
        let o = self.overlay.clone();
        let device = blocking(move || o.read()).await?;
        let (desired, skipped) = desired_peers(snapshot, &s.node, key.public());
        // Until the first view arrives nothing is known about the other nodes: keep the peers
        // the device has (a restarted daemon must not cut the tunnel while it re-lists).
        let changes = if snapshot.version == 0 {
            Vec::new()
        } else {
            // Peers already on the device (from before a restart) were written from what the API
            // said; their endpoints are rewritten only when the published one changes.
            for p in &device.peers {
                if let Some(spec) = desired.iter().find(|d| d.public_key == p.public_key) {
                    self.published
                        .entry(p.public_key.0)
                        .or_insert(spec.endpoint);
                }
            }
            plan_peers(&device.peers, &desired, &self.published)
        };
        let change = DeviceChange {
            private_key: (device.public_key.as_ref() != Some(key.public()))
                .then(|| key.private().clone()),
            listen_port: (device.listen_port != s.listen_port).then_some(s.listen_port),
            peers: changes,
            keepalive: s.keepalive,
        };
        if !change.is_empty() {
            if change.private_key.is_some() && device.public_key.is_none() {
                changed.push(format!(
                    "WireGuard device {} re-configured (it had no key: restarted)",
                    s.interface
                ));
            }
            if change.listen_port.is_some() && device.public_key.is_some() {
                changed.push(format!("listen port {} restored", s.listen_port));
            }
            for c in &change.peers {
                tracing::info!("overlay: {c:?}");
                changed.push(describe_peer_change(c, &desired));
            }
            let (o, ch) = (self.overlay.clone(), change.clone());
            blocking(move || o.apply(&ch)).await?;
            for spec in &desired {
                self.published.insert(spec.public_key.0, spec.endpoint);
            }
            self.published
                .retain(|k, _| desired.iter().any(|d| d.public_key.0 == *k));
        }
        if let Some(index) = index
            && snapshot.version > 0
        {
            changed.extend(self.routes(index, snapshot, &desired).await?);
        }
        let device = if change.peers.is_empty() {
            device
        } else {
            let o = self.overlay.clone();
            blocking(move || o.read()).await?
        };
        Ok((self.summary(key, &device, &desired, &skipped), changed))
    }

    async fn routes(
        &mut self,
        index: u32,
        snapshot: &Snapshot,
        desired: &[PeerSpec],
    ) -> Result<Vec<String>, String> {
        let mut changed = Vec::new();
        // The node's own packets to remote pods leave with its gateway address, which the peers'
        // allowed IPs (this node's pod CIDRs) accept.
        let src: Option<IpAddr> = snapshot
            .node(&self.settings.node)
            .and_then(|n| n.pod_cidrs.first())
            .and_then(|c| skein_ipam::gateway(*c).ok());
        // The CNI part puts the gateway on the bridge; until it has, a route with it as source
        // would be refused. Not an error: the address's arrival brings the next look.
        self.routes_waiting = src.is_some_and(|ip| !is_local_address(ip));
        if self.routes_waiting {
            return Ok(Vec::new());
        }
        let current = self
            .net
            .routes_via(index)
            .await
            .map_err(|e| e.to_string())?;
        let (add, remove) = plan_routes(&current, desired);
        for dest in add {
            tracing::info!("overlay: route {dest} via {}", self.settings.interface);
            self.net
                .add_route(index, dest, src)
                .await
                .map_err(|e| e.to_string())?;
            changed.push(format!(
                "route {dest} via {} added",
                self.settings.interface
            ));
        }
        for dest in remove {
            tracing::info!("overlay: route {dest} removed");
            self.net
                .delete_route(index, dest)
                .await
                .map_err(|e| e.to_string())?;
            changed.push(format!("route {dest} removed"));
        }
        Ok(changed)
    }

    fn summary(
        &self,
        key: &NodeKey,
        device: &DeviceState,
        desired: &[PeerSpec],
        skipped: &[Skipped],
    ) -> OverlaySection {
        let s = self.settings;
        OverlaySection {
            interface: s.interface.to_string(),
            backend: self.overlay.backend.as_str().into(),
            backend_reason: self.reason.to_string(),
            public_key: key.public().to_base64(),
            listen_port: device.listen_port,
            mtu: s.mtu,
            peers: device
                .peers
                .iter()
                .map(|p| PeerSummary {
                    node: desired
                        .iter()
                        .find(|d| d.public_key == p.public_key)
                        .map(|d| d.node.clone())
                        .unwrap_or_default(),
                    public_key: p.public_key.to_base64(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    allowed_ips: p.allowed_ips.iter().map(IpNet::to_string).collect(),
                    latest_handshake_seconds: p.last_handshake_age.map(|a| a.as_secs()),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    up: p.last_handshake_age.is_some_and(|a| a < SESSION_LIFETIME),
                    // Told from the peer's history by `PeersBoard::show`.
                    state: PeerState::Idle,
                })
                .collect(),
            skipped: skipped
                .iter()
                .map(|s| SkippedPeer {
                    node: s.node.clone(),
                    why: s.why.clone(),
                })
                .collect(),
        }
    }
}

fn is_local_address(ip: IpAddr) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
        addrs.any(|a| {
            a.address.is_some_and(|s| {
                s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                    || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
            })
        })
    })
}

/// "peer node-2 added", "peer node-3 updated", "peer … removed", for the log and the page.
fn describe_peer_change(change: &PeerChange, desired: &[PeerSpec]) -> String {
    let key = change.public_key();
    let peer = desired
        .iter()
        .find(|d| &d.public_key == key)
        .map_or_else(|| key.to_base64(), |d| format!("of node {}", d.node));
    let what = match change {
        PeerChange::Add { .. } => "added",
        PeerChange::Update { .. } => "updated",
        PeerChange::Remove { .. } => "removed",
    };
    format!("peer {peer} {what}")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, skein_overlay::OverlayError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

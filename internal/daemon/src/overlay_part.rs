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
use skein_overlay::{
    Backend, DeviceChange, DeviceState, NodeKey, Overlay, PeerSpec, Skipped, desired_peers,
    plan_peers, plan_routes,
};
use skein_podnet::PodNet;
use skein_status::{OverlaySummary, PartHandle, PeerSummary, SkippedPeer, StatusBoard};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::PartResult;

/// How often the device is compared with the view even when nothing changed: picks up a device
/// restarted behind our back and refreshes the handshake figures on the page.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// A peer whose last handshake is older than this has no session left (WireGuard's
/// REJECT_AFTER_TIME).
const SESSION_LIFETIME: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub interface: String,
    pub mode: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub keepalive: Option<u16>,
    pub state_dir: PathBuf,
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
    handle: PartHandle,
    board: StatusBoard,
    cancel: CancellationToken,
) -> PartResult {
    let dir = settings.state_dir.clone();
    let key = tokio::task::spawn_blocking(move || NodeKey::load_or_create(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let net = PodNet::connect().map_err(|e| e.to_string())?;
    let (backend, reason) = skein_overlay::choose_backend(
        &settings.mode,
        skein_wireguard::kernel_has_wireguard(),
        &settings.interface,
    );
    if backend == Backend::Kernel {
        net.create_wireguard_link(&settings.interface)
            .await
            .map_err(|e| format!("{reason}, but: {e}"))?;
    }
    let overlay = Overlay::new(&settings.interface, backend).map_err(|e| e.to_string())?;
    let mut key = finish_pending_rotation(&settings.state_dir, &overlay, key).await?;
    tracing::info!(interface = %settings.interface, backend = backend.as_str(), "overlay: {reason}; public key {}", key.public().to_base64());
    identity.send_replace(Some(Identity {
        public_key: key.public().to_base64(),
        listen_port: settings.listen_port,
    }));
    if let Err(e) = apply_mss_clamp(&settings.interface).await {
        handle.degraded(format!("MSS clamp: {e}"));
    }

    let mut snapshots = snapshots;
    let mut turn = Turn {
        settings: &settings,
        overlay: &overlay,
        net: &net,
        published: BTreeMap::new(),
        reason: &reason,
    };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        let snapshot = snapshots.borrow().clone();
        match turn.run(&key, &snapshot).await {
            Ok(summary) => {
                let up = summary.peers.iter().filter(|p| p.up).count();
                let detail = format!(
                    "{} ({}) · {} of {} peers up · MTU {}",
                    settings.interface,
                    backend.as_str(),
                    up,
                    summary.peers.len(),
                    settings.mtu
                );
                board.set_overlay(summary);
                if snapshot.version == 0 {
                    handle.detail("waiting for the cluster view");
                } else {
                    handle.ok(detail);
                }
            }
            Err(e) => {
                tracing::warn!("overlay: {e}");
                handle.degraded(e);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = snapshots.changed() => if changed.is_err() { return Err("the cluster view stopped".into()) },
            _ = resync.tick() => {}
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

struct Turn<'a> {
    settings: &'a Settings,
    overlay: &'a Overlay,
    net: &'a PodNet,
    /// The endpoint each peer had in the API when last written to the device.
    published: BTreeMap<[u8; 32], SocketAddr>,
    reason: &'a str,
}

impl Turn<'_> {
    async fn run(&mut self, key: &NodeKey, snapshot: &Snapshot) -> Result<OverlaySummary, String> {
        let s = self.settings;
        let index = self
            .net
            .set_up_with_mtu(&s.interface, s.mtu)
            .await
            .map_err(|e| e.to_string())?;
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
            for c in &change.peers {
                tracing::info!("overlay: {c:?}");
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
            self.routes(index, snapshot, &desired).await?;
        }
        let device = if change.peers.is_empty() {
            device
        } else {
            let o = self.overlay.clone();
            blocking(move || o.read()).await?
        };
        Ok(self.summary(key, &device, &desired, &skipped))
    }

    async fn routes(
        &self,
        index: u32,
        snapshot: &Snapshot,
        desired: &[PeerSpec],
    ) -> Result<(), String> {
        // The node's own packets to remote pods leave with its gateway address, which the peers'
        // allowed IPs (this node's pod CIDRs) accept.
        let src: Option<IpAddr> = snapshot
            .node(&self.settings.node)
            .and_then(|n| n.pod_cidrs.first())
            .and_then(|c| c.hosts().next());
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
        }
        for dest in remove {
            tracing::info!("overlay: route {dest} removed");
            self.net
                .delete_route(index, dest)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn summary(
        &self,
        key: &NodeKey,
        device: &DeviceState,
        desired: &[PeerSpec],
        skipped: &[Skipped],
    ) -> OverlaySummary {
        let s = self.settings;
        OverlaySummary {
            interface: s.interface.clone(),
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

async fn apply_mss_clamp(interface: &str) -> Result<(), String> {
    use skein_nft::Backend as _;
    let tx = skein_nft::overlay_mss_clamp(interface);
    tokio::task::spawn_blocking(move || skein_nft::NftProgram.apply(&tx))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, skein_overlay::OverlayError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

//! What the daemon's parts show beyond their line on the board: each part's section (its types,
//! its summary for the overview) and the metrics that come with it. The board and the page know
//! none of these by name; a part registers its own.
//!
//! - `cluster`: the cluster view (nodes, services).
//! - `ipam`: this node's pod addresses; `skein_ipam_addresses_used` and `_capacity` per CIDR.
//! - `peers`: the overlay (served at `/api/v1/peers`); `skein_overlay_peers_up` and, per peer
//!   node, bytes each way and the handshake's age. Each peer's [`PeerState`] tells an idle peer
//!   from a broken one (see [`PeerActivity`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use skein_metrics::{
    ConstCounter, ConstGauge, DescriptorEncoder, EncodeMetric, MetricType, Metrics,
};
use skein_status::{Section, SectionHandle, StatusBoard};

#[cfg(test)]
mod tests;

/// Where a part reports: the status board and the metrics registry.
#[derive(Debug, Clone)]
pub struct Reporting {
    pub board: StatusBoard,
    pub metrics: Metrics,
}

// ---- cluster ----

/// One Node as this daemon's cluster view has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub pod_cidrs: Vec<String>,
    pub internal_ip: Option<String>,
    /// The address the node's skein published (`skein.dev/underlay-address`).
    pub underlay_address: Option<String>,
    /// The Ready condition: `None` when unknown (the node lifecycle controller's verdict for a
    /// node that stopped reporting).
    pub ready: Option<bool>,
    pub this_node: bool,
}

/// One Service as the cluster view has it, with its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<String>,
    /// Ready endpoint addresses from the Service's EndpointSlices.
    pub endpoints: Vec<String>,
}

/// The `cluster` section: whether the API answers, and what it last said. It holds the
/// snapshot itself (shared with the other parts, not copied): setting it costs nothing, and
/// rows are made for the page asked only (at 10,000 Services a row each took tens of
/// milliseconds a second under churn, on the two CPUs the syncs need).
#[derive(Debug, Clone)]
pub struct ClusterSection {
    pub api_reachable: bool,
    /// Unix seconds when `api_reachable` last changed.
    pub api_since: u64,
    /// Every watched kind has been listed at least once.
    pub synced: bool,
    pub snapshot: Arc<skein_cluster::Snapshot>,
    /// This node's name.
    pub me: String,
}

impl ClusterSection {
    pub fn new(
        snapshot: Arc<skein_cluster::Snapshot>,
        health: &skein_cluster::ApiHealth,
        me: &str,
    ) -> Self {
        ClusterSection {
            api_reachable: health.reachable,
            api_since: health
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            synced: health.synced,
            snapshot,
            me: me.to_string(),
        }
    }

    fn node_row(&self, n: &skein_cluster::Node) -> NodeSummary {
        NodeSummary {
            name: n.name.clone(),
            pod_cidrs: n.pod_cidrs.iter().map(ToString::to_string).collect(),
            internal_ip: n.internal_ip.map(|ip| ip.to_string()),
            underlay_address: skein_cluster::NodeAnnouncement::from_annotations(&n.skein)
                .ok()
                .and_then(|a| a.underlay_address)
                .map(|ip| ip.to_string()),
            ready: n.ready,
            this_node: n.name == self.me,
        }
    }

    fn service_row(
        &self,
        key: &skein_cluster::ObjectKey,
        s: &skein_cluster::Service,
    ) -> ServiceSummary {
        // The slice index, not a walk of every slice per Service.
        let mut endpoints: Vec<String> = self
            .snapshot
            .slices_of(key)
            .iter()
            .flat_map(|e| {
                e.endpoints
                    .iter()
                    .filter(|ep| ep.ready)
                    .filter_map(|ep| ep.address.as_ref())
            })
            .map(ToString::to_string)
            .collect();
        endpoints.sort();
        endpoints.dedup();
        ServiceSummary {
            namespace: s.key.namespace().to_owned(),
            name: s.key.name().to_owned(),
            cluster_ips: s.cluster_ips.iter().map(ToString::to_string).collect(),
            endpoints,
        }
    }

    fn plain(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut plain = serde_json::Map::new();
        plain.insert("api_reachable".into(), self.api_reachable.into());
        plain.insert("api_since".into(), self.api_since.into());
        plain.insert("synced".into(), self.synced.into());
        plain.insert("snapshot_version".into(), self.snapshot.version.into());
        plain
    }
}

/// The whole section: its fields and every row.
impl Serialize for ClusterSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Whole {
            #[serde(flatten)]
            plain: serde_json::Map<String, serde_json::Value>,
            nodes: Vec<NodeSummary>,
            services: Vec<ServiceSummary>,
        }
        let snapshot = &self.snapshot;
        Whole {
            plain: self.plain(),
            nodes: snapshot.nodes.values().map(|n| self.node_row(n)).collect(),
            services: snapshot
                .services
                .iter()
                .map(|(k, v)| self.service_row(k, v))
                .collect(),
        }
        .serialize(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterOverview {
    pub api_reachable: bool,
    pub api_since: u64,
    pub synced: bool,
    pub snapshot_version: u64,
    pub nodes: usize,
    pub nodes_ready: usize,
    pub services: usize,
}

impl Section for ClusterSection {
    const TITLE: &'static str = "Cluster";
    const LISTS: &'static [&'static str] = &["nodes", "services"];
    type Summary = ClusterOverview;
    fn summary(&self) -> ClusterOverview {
        let nodes = &self.snapshot.nodes;
        ClusterOverview {
            api_reachable: self.api_reachable,
            api_since: self.api_since,
            synced: self.synced,
            snapshot_version: self.snapshot.version,
            nodes: nodes.len(),
            nodes_ready: nodes.values().filter(|n| n.ready == Some(true)).count(),
            services: self.snapshot.services.len(),
        }
    }

    fn details(&self, page: skein_status::Page) -> serde_json::Value {
        let (nodes, services) = (&self.snapshot.nodes, &self.snapshot.services);
        let node_rows = page.rows(nodes.values(), |n| self.node_row(n));
        let service_rows = page.rows(services.iter(), |(k, s)| self.service_row(k, s));
        skein_status::paged_details(
            page,
            self.plain(),
            vec![
                ("nodes".into(), nodes.len(), node_rows),
                ("services".into(), services.len(), service_rows),
            ],
        )
    }
}

/// The cluster part's section.
pub fn cluster_section(board: &StatusBoard) -> SectionHandle<ClusterSection> {
    board.section("cluster")
}

// ---- ipam ----

/// Address use of one pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CidrUse {
    pub cidr: String,
    pub used: u64,
    pub capacity: u64,
}

/// One leased pod address on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodLease {
    pub namespace: String,
    pub name: String,
    pub address: String,
    pub interface: String,
    /// The first 12 characters of the container ID, as runtimes show it.
    pub container: String,
}

/// The `ipam` section: use per CIDR and the pods holding addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpamSection {
    pub cidrs: Vec<CidrUse>,
    pub pods: Vec<PodLease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpamOverview {
    pub cidrs: Vec<CidrUse>,
    pub pods: usize,
}

impl Section for IpamSection {
    const TITLE: &'static str = "Pods on this node";
    const LISTS: &'static [&'static str] = &["pods"];
    type Summary = IpamOverview;
    fn summary(&self) -> IpamOverview {
        IpamOverview {
            cidrs: self.cidrs.clone(),
            pods: self.pods.len(),
        }
    }
}

/// What the IPAM metrics report, as of the CNI part's last report; always present, so the
/// families show (without samples) before the node has a pod CIDR.
#[derive(Debug, Clone, Default)]
struct IpamMetrics(Arc<RwLock<Vec<CidrUse>>>);

impl skein_metrics::Collector for IpamMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cidrs = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let mut used = encoder.encode_descriptor(
            "skein_ipam_addresses_used",
            "Pod addresses leased on this node, per pod CIDR.",
            None,
            MetricType::Gauge,
        )?;
        for c in &cidrs {
            gauge(c.used).encode(used.encode_family(&[("cidr", c.cidr.as_str())])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "skein_ipam_addresses_capacity",
            "Pod addresses the pod CIDR can hand out (not its network, gateway or broadcast).",
            None,
            MetricType::Gauge,
        )?;
        for c in &cidrs {
            gauge(c.capacity).encode(capacity.encode_family(&[("cidr", c.cidr.as_str())])?)?;
        }
        Ok(())
    }
}

/// The CNI part's section and its IPAM metrics.
#[derive(Debug, Clone)]
pub struct IpamBoard {
    section: SectionHandle<IpamSection>,
    metrics: IpamMetrics,
}

impl IpamBoard {
    pub fn register(to: &Reporting) -> Self {
        Self {
            section: to.board.section("ipam"),
            metrics: to.metrics.collector("ipam", IpamMetrics::default),
        }
    }

    pub fn show(&self, ipam: &IpamSection) {
        self.section.set(ipam.clone());
        // A CIDR the node no longer has drops out of the metrics as it does off the page.
        *self.metrics.0.write().unwrap_or_else(|e| e.into_inner()) = ipam.cidrs.clone();
    }
}

// ---- peers (the overlay) ----

/// How a peer is doing, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// A handshake within WireGuard's session lifetime (180 s): traffic flows now.
    Up,
    /// No session, and nothing sent to it since it was last up (or since the daemon started
    /// watching it): no traffic needed one. WireGuard makes one on the next packet.
    Idle,
    /// Sending to it without a session for less than [`BROKEN_AFTER`]: a handshake is under way.
    Connecting,
    /// Sending to it without a session for [`BROKEN_AFTER`] or longer: it does not answer.
    Broken,
}

/// WireGuard retries a handshake every 5 s (REKEY_TIMEOUT); a peer that let three go by
/// unanswered is broken, not slow.
pub const BROKEN_AFTER: Duration = Duration::from_secs(15);

/// WireGuard's REJECT_AFTER_TIME: a session older than this carries nothing.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// What the overlay part remembers of each peer between turns, to tell idle from broken: the
/// bytes sent to it when it was last up (or first seen), and since when it has been sent more
/// without a session.
#[derive(Debug, Default)]
pub struct PeerActivity {
    peers: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    tx_baseline: u64,
    sending_since: Option<Instant>,
}

impl PeerActivity {
    /// The state of the peer `key` (its public key), given its handshake's age and the bytes
    /// sent to it so far, at `now`.
    ///
    /// The rule: up with a handshake younger than [`SESSION_LIFETIME`]; else idle while the
    /// bytes sent have not grown since it was last up (or first seen: a daemon restart does not
    /// make an old session's traffic look new); else connecting, and broken once that has
    /// lasted [`BROKEN_AFTER`]. A counter that went down (the device was re-made) starts over.
    pub fn observe(
        &mut self,
        key: &str,
        handshake_age: Option<Duration>,
        tx_bytes: u64,
        now: Instant,
    ) -> PeerState {
        let seen = self.peers.entry(key.to_string()).or_insert(Seen {
            tx_baseline: tx_bytes,
            sending_since: None,
        });
        if handshake_age.is_some_and(|a| a < SESSION_LIFETIME) || tx_bytes < seen.tx_baseline {
            *seen = Seen {
                tx_baseline: tx_bytes,
                sending_since: None,
            };
            return if handshake_age.is_some_and(|a| a < SESSION_LIFETIME) {
                PeerState::Up
            } else {
                PeerState::Idle
            };
        }
        if tx_bytes == seen.tx_baseline {
            return PeerState::Idle;
        }
        let since = *seen.sending_since.get_or_insert(now);
        if now.duration_since(since) >= BROKEN_AFTER {
            PeerState::Broken
        } else {
            PeerState::Connecting
        }
    }

    /// Forgets peers the device no longer has.
    pub fn retain(&mut self, keys: &[&str]) {
        self.peers.retain(|k, _| keys.contains(&k.as_str()));
    }
}

/// One WireGuard peer (another node) as this node's device sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerSummary {
    /// The Node it belongs to; empty for a peer the device has that no Node claims.
    pub node: String,
    pub public_key: String,
    /// Where the tunnel sends to: learnt from the peer's packets, else the published one.
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the last completed handshake; `None`: never.
    pub latest_handshake_seconds: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// A handshake within WireGuard's session lifetime (180 s): traffic can flow now.
    pub up: bool,
    /// Up, idle, connecting or broken; filled in by [`PeersBoard::show`].
    pub state: PeerState,
}

/// A Node the overlay cannot peer with, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedPeer {
    pub node: String,
    pub why: String,
}

/// The `peers` section: the overlay on this node. Public keys only: the private key never
/// leaves its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverlaySection {
    pub interface: String,
    /// "kernel" or "userspace".
    pub backend: String,
    /// Why that backend.
    pub backend_reason: String,
    pub public_key: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub peers: Vec<PeerSummary>,
    pub skipped: Vec<SkippedPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverlayOverview {
    pub interface: String,
    pub backend: String,
    pub public_key: String,
    pub peers: usize,
    pub up: usize,
    pub idle: usize,
    pub connecting: usize,
    pub broken: usize,
    pub skipped: usize,
}

impl Section for OverlaySection {
    const TITLE: &'static str = "Encrypted overlay";
    const LISTS: &'static [&'static str] = &["peers", "skipped"];
    type Summary = OverlayOverview;
    fn summary(&self) -> OverlayOverview {
        let count = |s: PeerState| self.peers.iter().filter(|p| p.state == s).count();
        OverlayOverview {
            interface: self.interface.clone(),
            backend: self.backend.clone(),
            public_key: self.public_key.clone(),
            peers: self.peers.len(),
            up: count(PeerState::Up),
            idle: count(PeerState::Idle),
            connecting: count(PeerState::Connecting),
            broken: count(PeerState::Broken),
            skipped: self.skipped.len(),
        }
    }
}

/// What the peer metrics report, as of the overlay's last turn.
#[derive(Debug, Clone, Default)]
struct PeerMetrics(Arc<RwLock<Vec<PeerSummary>>>);

impl skein_metrics::Collector for PeerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let peers = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let up = ConstGauge::new(peers.iter().filter(|p| p.up).count() as i64);
        up.encode(encoder.encode_descriptor(
            "skein_overlay_peers_up",
            "WireGuard peers with a handshake within the session lifetime (180 s).",
            None,
            up.metric_type(),
        )?)?;
        let node = |p: &PeerSummary| {
            if p.node.is_empty() {
                format!(
                    "unknown:{}",
                    p.public_key.chars().take(8).collect::<String>()
                )
            } else {
                p.node.clone()
            }
        };
        let mut rx = encoder.encode_descriptor(
            "skein_overlay_peer_rx_bytes",
            "Bytes received from the peer node through the tunnel, as the device counts them.",
            None,
            MetricType::Counter,
        )?;
        for p in &peers {
            ConstCounter::new(p.rx_bytes).encode(rx.encode_family(&[("node", node(p))])?)?;
        }
        let mut tx = encoder.encode_descriptor(
            "skein_overlay_peer_tx_bytes",
            "Bytes sent to the peer node through the tunnel, as the device counts them.",
            None,
            MetricType::Counter,
        )?;
        for p in &peers {
            ConstCounter::new(p.tx_bytes).encode(tx.encode_family(&[("node", node(p))])?)?;
        }
        let mut age = encoder.encode_descriptor(
            "skein_overlay_peer_handshake_age_seconds",
            "Seconds since the last completed handshake with the peer node (absent: never).",
            None,
            MetricType::Gauge,
        )?;
        for p in &peers {
            if let Some(seconds) = p.latest_handshake_seconds {
                ConstGauge::new(seconds as f64).encode(age.encode_family(&[("node", node(p))])?)?;
            }
        }
        Ok(())
    }
}

/// The overlay part's section, its metrics, and what it remembers of each peer between turns.
#[derive(Debug)]
pub struct PeersBoard {
    section: SectionHandle<OverlaySection>,
    metrics: PeerMetrics,
    activity: PeerActivity,
}

impl PeersBoard {
    pub fn register(to: &Reporting) -> Self {
        Self {
            section: to.board.section("peers"),
            metrics: to.metrics.collector("overlay-peers", PeerMetrics::default),
            activity: PeerActivity::default(),
        }
    }

    /// Fills in each peer's state and shows the overlay.
    pub fn show(&mut self, mut overlay: OverlaySection) {
        let now = Instant::now();
        for p in &mut overlay.peers {
            p.state = self.activity.observe(
                &p.public_key,
                p.latest_handshake_seconds.map(Duration::from_secs),
                p.tx_bytes,
                now,
            );
        }
        let keys: Vec<&str> = overlay
            .peers
            .iter()
            .map(|p| p.public_key.as_str())
            .collect();
        self.activity.retain(&keys);
        *self.metrics.0.write().unwrap_or_else(|e| e.into_inner()) = overlay.peers.clone();
        self.section.set(overlay);
    }
}

//! The daemon's `cluster` part: connects to the Kubernetes API, keeps the cluster view, makes
//! this node's published facts (its `skein.dev/` annotations) match what they should be, and
//! puts the view on the status board. While the API is away the last view stays in force and
//! the part says so.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use skein_cluster::{ApiHealth, NodeAnnouncement, Snapshot, WireGuardPublicKey};
use skein_status::{PartHandle, StatusBoard};
use tokio::sync::watch;

use crate::overlay_part::Identity;
use crate::sections::ClusterSection;
use crate::{Part, PartError, PartResult};
use skein_names::IfName;

/// How soon a failed or outdated annotation publish is tried again.
const REPUBLISH_AFTER: Duration = Duration::from_secs(5);

/// The annotations this node should carry: a pure function of what the node knows about itself.
/// The WireGuard endpoint is the underlay address with the overlay's port; without an underlay
/// address there is nothing to reach, so no key is published either.
pub fn desired_annotations(
    underlay: Option<IpAddr>,
    overlay: Option<&Identity>,
) -> BTreeMap<String, String> {
    let wireguard = underlay.zip(overlay).and_then(|(ip, id)| {
        Some((
            WireGuardPublicKey::from_base64(&id.public_key)?,
            SocketAddr::new(ip, id.listen_port),
        ))
    });
    NodeAnnouncement {
        underlay_address: underlay,
        wireguard_public_key: wireguard.map(|(key, _)| key),
        wireguard_endpoint: wireguard.map(|(_, endpoint)| endpoint),
    }
    .to_annotations()
}

/// Whether the node object (as the snapshot has it) lacks or differs in any desired annotation.
pub fn annotations_outdated(
    snapshot: &Snapshot,
    node: &str,
    desired: &BTreeMap<String, String>,
) -> bool {
    match snapshot.node(node) {
        Some(n) => desired.iter().any(|(k, v)| n.skein.get(k) != Some(v)),
        None => !desired.is_empty(),
    }
}

/// The local address the kernel would use to reach `server`: the interface that carries the
/// node's traffic to the control plane. A UDP `connect` only picks a route; nothing is sent.
fn source_address_towards(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(server).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The first address of interface `name` (IPv4 first, else a global IPv6): the configured
/// `node.underlay_interface`.
pub fn address_of_interface(name: &str) -> Option<IpAddr> {
    let mut v6 = None;
    for a in nix::ifaddrs::getifaddrs().ok()? {
        if a.interface_name != name {
            continue;
        }
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(IpAddr::V4(v4.ip()));
        }
        if let Some(s6) = addr.as_sockaddr_in6()
            && !s6.ip().is_unicast_link_local()
        {
            v6.get_or_insert(IpAddr::V6(s6.ip()));
        }
    }
    v6
}

async fn api_server_address(config: &kube::Config) -> Option<SocketAddr> {
    let host = config.cluster_url.host()?;
    let port = config.cluster_url.port_u16().unwrap_or(443);
    tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .ok()?
        .next()
}

/// What the cluster part is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None`: found automatically.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `node.underlay_interface`; `None`: the address towards the API server.
    pub underlay_interface: Option<IfName>,
    pub node: String,
}

pub async fn run(
    settings: Settings,
    part: Part,
    board: StatusBoard,
    feed: watch::Sender<Arc<Snapshot>>,
    mut overlay: watch::Receiver<Option<Identity>>,
) -> PartResult {
    let Settings {
        kubeconfig,
        underlay_interface,
        node,
    } = settings;
    let (handle, cancel) = (&part.handle, &part.cancel);
    let kubeconfig = kubeconfig
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let config = skein_cluster::client_config(&kubeconfig).await?;
    let server = api_server_address(&config).await;
    let client = skein_cluster::client(config)?;
    // The configured interface's address, else the one the node reaches the API server from.
    // A loopback source means the API is reached through a local proxy (k3s agents talk to
    // 127.0.0.1:6444): no other node could reach that address, so it is not an underlay.
    let underlay = match &underlay_interface {
        None => server
            .and_then(source_address_towards)
            .filter(|ip| !ip.is_loopback()),
        Some(name) => address_of_interface(name.as_str()),
    };
    let underlay_interface = underlay_interface
        .map(|n| n.to_string())
        .unwrap_or_default();
    let mut desired = desired_annotations(underlay, overlay.borrow().as_ref());

    let (view, watching) =
        skein_cluster::watch_cluster(client.clone(), Default::default(), cancel.child_token());
    part.spawn("watchers", async move {
        watching.await;
        Ok::<(), String>(())
    });
    let mut snapshots = view.snapshots.clone();
    let mut health = view.health.clone();
    let mut report = Report::default();
    let mut publish_error: Option<String> = None;
    let mut next_publish = tokio::time::Instant::now();
    let section = crate::sections::cluster_section(&board);

    loop {
        let snapshot: Arc<Snapshot> = snapshots.borrow().clone();
        let api: ApiHealth = health.borrow().clone();
        if api.synced {
            // The other parts first: the page can wait, a Service's new endpoint should not.
            if feed.borrow().version != snapshot.version {
                feed.send_replace(snapshot.clone());
            }
            // The page's section holds the snapshot; its rows are made when someone asks.
            section.set(ClusterSection::new(snapshot.clone(), &api, &node));
        }
        if api.synced
            && tokio::time::Instant::now() >= next_publish
            && annotations_outdated(&snapshot, &node, &desired)
        {
            next_publish = tokio::time::Instant::now() + REPUBLISH_AFTER;
            publish_error =
                match skein_cluster::publish_node_annotations(&client, &node, &desired).await {
                    Ok(()) => None,
                    Err(e) => Some(e.to_string()),
                };
        }
        report.show(
            handle,
            &api,
            &snapshot,
            publish_error.as_deref(),
            underlay,
            &underlay_interface,
        );

        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = snapshots.changed() => if changed.is_err() { return Err(PartError::ViewClosed) },
            changed = health.changed() => if changed.is_err() { return Err(PartError::ViewClosed) },
            changed = overlay.changed() => {
                if changed.is_err() { return Err(PartError::Failed("the overlay part is gone".into())) }
                desired = desired_annotations(underlay, overlay.borrow().as_ref());
                // A new key is published at once, not after the retry delay.
                next_publish = tokio::time::Instant::now();
            },
            _ = tokio::time::sleep_until(next_publish), if publish_error.is_some() || annotations_outdated(&snapshot, &node, &desired) => {}
        }
    }
}

/// What the part last told the board, so the board hears only changes.
#[derive(Debug, Default, PartialEq)]
struct Report {
    last: Option<(u8, String, Option<String>)>,
}

impl Report {
    fn show(
        &mut self,
        handle: &PartHandle,
        api: &ApiHealth,
        snapshot: &Snapshot,
        publish_error: Option<&str>,
        underlay: Option<IpAddr>,
        underlay_interface: &str,
    ) {
        let nodes = snapshot.nodes.len();
        let (level, detail, error) = if !api.reachable && api.synced {
            (
                2,
                format!(
                    "Kubernetes API unreachable; keeping the last view ({nodes} nodes, v{})",
                    snapshot.version
                ),
                api.last_error.clone(),
            )
        } else if !api.synced {
            match &api.last_error {
                Some(e) => (
                    2,
                    "cannot list the cluster's objects yet".to_string(),
                    Some(e.clone()),
                ),
                None => (0, "listing the cluster's objects".to_string(), None),
            }
        } else if let Some(e) = publish_error {
            (
                2,
                "cannot publish this node's address".to_string(),
                Some(e.to_string()),
            )
        } else if underlay.is_none() {
            let why = if underlay_interface.is_empty() {
                "the API server is reached through loopback or not at all; set \
                 node.underlay_interface"
                    .to_string()
            } else {
                format!("node.underlay_interface = \"{underlay_interface}\" has no address")
            };
            (
                2,
                format!("watching {nodes} nodes; no underlay address found ({why})"),
                None,
            )
        } else {
            (
                1,
                format!(
                    "watching the API · {nodes} nodes · view v{}",
                    snapshot.version
                ),
                None,
            )
        };
        let next = (level, detail.clone(), error.clone());
        if self.last.as_ref() == Some(&next) {
            return;
        }
        self.last = Some(next);
        match (level, error) {
            (2, Some(e)) => {
                tracing::warn!("cluster: {detail}: {e}");
                handle.degraded(e);
                handle.detail(detail);
            }
            (2, None) => {
                handle.degraded(detail.clone());
                handle.detail(detail);
            }
            (1, _) => handle.ok(detail),
            _ => handle.detail(detail),
        }
    }
}

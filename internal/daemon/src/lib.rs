//! `skein run`: the daemon's lifecycle. It opens the state store (which takes the state
//! directory's lock), binds the status page, starts the parts under the [`Supervisor`], tells
//! systemd it is ready, and on SIGTERM or SIGINT stops everything within a few seconds.
//!
//! The daemon wires parts together; it implements none of them.

use std::time::Duration;

use skein_config::{Loaded, Settings};
use skein_status::{Identity, StatusBoard};
use skein_store::Store;

mod cluster_part;
mod cni_install;
mod cni_part;
pub mod control;
mod dns_part;
mod overlay_part;
mod proxy_part;
mod sections;
pub mod supervisor;
#[cfg(test)]
mod tests;

pub use supervisor::{Backoff, Part, PartError, PartResult, Supervisor};

/// How long parts get to stop after a signal; systemd's default stop timeout is far longer, but
/// a node being drained should not wait on us.
const STOP_GRACE: Duration = Duration::from_secs(4);
/// How often the store part checks the database.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(60);
/// How often the write-ahead log is folded back into the database.
const STORE_CHECKPOINT_EVERY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] skein_store::StoreError),
    #[error("dashboard.listen = \"{addr}\": cannot listen: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(loaded: Loaded) -> Result<(), DaemonError> {
    let settings = loaded.settings;
    let node = settings.node.name_or(&hostname());
    let board = StatusBoard::new(Identity {
        node: node.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_path: loaded.source.to_string(),
        state_path: settings.store.path.display().to_string(),
    });
    tracing::info!(node = %node, config = %loaded.source, "starting skein {}", env!("CARGO_PKG_VERSION"));
    for name in &loaded.overrides {
        tracing::info!("configuration overridden by {name}");
    }

    let store = Store::open(&settings.store.path).await?;
    let start_id = store.record_start(env!("CARGO_PKG_VERSION")).await?;
    tracing::info!(path = %store.path().display(), "state store open");
    // The host ports of the last run, for the proxy's first sync: it adopts the kernel's table
    // and would otherwise remove them until the cni part publishes its own. Unreadable, they
    // wait for the cni part (which says why in the log); the daemon starts all the same.
    let host_ports = store.host_ports().await.unwrap_or_else(|e| {
        tracing::warn!("cannot read the host ports from the store: {e}");
        Vec::new()
    });

    let listen = settings.dashboard.listen;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| DaemonError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let page = format!("http://{}", listener.local_addr().map_or(listen, |a| a));

    let reporting = sections::Reporting {
        board: board.clone(),
        metrics: skein_metrics::Metrics::new(),
    };
    board.register_metrics(&reporting.metrics);
    let mut parts = Supervisor::new(board.clone(), Backoff::default());
    let (faults_tx, mut faults) = tokio::sync::mpsc::channel(4);
    // The fault hook exists only for tests, and only when the daemon is started for them.
    let faults_tx = std::env::var_os(TEST_FAULTS_ENV)
        .is_some_and(|v| v == "1")
        .then_some(faults_tx);
    spawn_parts(
        &mut parts, &settings, &node, &reporting, &store, host_ports, listener, &page, faults_tx,
    );

    board.set_ready(true);
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving the status page on {page}")),
    ]);
    tracing::info!("ready; status page on {page}");

    let stop = wait_for_stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => { signal?; break; }
            Some(control::Fault { part, reply }) = faults.recv() => {
                let known = parts.inject_panic(&part);
                let _ = reply.send(if known {
                    Ok(format!("part {part} made to panic"))
                } else {
                    Err(format!("no part {part:?}; parts: {}", parts.part_names().join(", ")))
                });
            }
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping");
    board.set_ready(false);
    parts.shutdown(STOP_GRACE).await;
    if let Err(e) = store.record_clean_stop(start_id).await {
        tracing::warn!("could not record the clean stop: {e}");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Set to `1` in a daemon's environment, the control socket also takes `fault panic <part>`.
pub const TEST_FAULTS_ENV: &str = "SKEIN_TEST_FAULTS";

#[allow(clippy::too_many_arguments)]
fn spawn_parts(
    parts: &mut Supervisor,
    settings: &Settings,
    node: &str,
    reporting: &sections::Reporting,
    store: &Store,
    host_ports: Vec<skein_store::HostPortTarget>,
    listener: std::net::TcpListener,
    page: &str,
    faults: Option<tokio::sync::mpsc::Sender<control::Fault>>,
) {
    let resync = settings.daemon.resync_interval;
    let (board, metrics) = (&reporting.board, &reporting.metrics);
    // The cluster part feeds the latest snapshot here; it outlives the part's restarts, so the
    // parts reading it never lose their subscription.
    let (feed, snapshots) =
        tokio::sync::watch::channel(std::sync::Arc::new(skein_cluster::Snapshot::default()));
    // The overlay's identity (public key, port), which the cluster part publishes on the Node.
    let (identity_tx, identity_rx) = tokio::sync::watch::channel(None);
    let cluster = cluster_part::Settings {
        kubeconfig: settings.cluster.kubeconfig.clone(),
        underlay_interface: settings.node.underlay_interface.clone(),
        node: node.to_string(),
    };
    let cluster_board = board.clone();
    parts.spawn("cluster", move |part| {
        cluster_part::run(
            cluster.clone(),
            part,
            cluster_board.clone(),
            feed.clone(),
            identity_rx.clone(),
        )
    });

    let state_dir = settings.store.dir();
    let overlay_mtu = skein_overlay::overlay_mtu(
        match settings.overlay.mtu {
            skein_config::Mtu::Fixed(n) => Some(n),
            skein_config::Mtu::Auto => None,
        },
        skein_overlay::underlay_mtu(),
    );
    let overlay = overlay_part::Settings {
        node: node.to_string(),
        interface: settings.overlay.interface.clone(),
        mode: settings.overlay.mode,
        listen_port: settings.overlay.listen_port,
        mtu: overlay_mtu,
        keepalive: settings.overlay.keepalive_seconds(),
        state_dir: state_dir.clone(),
        resync,
    };
    // Requests from the control socket; the queue outlives the overlay part's restarts.
    let (rotate_tx, rotate_rx) = tokio::sync::mpsc::channel(4);
    let rotate_rx = std::sync::Arc::new(tokio::sync::Mutex::new(rotate_rx));
    let (overlay_snapshots, overlay_report) = (snapshots.clone(), reporting.clone());
    parts.spawn("overlay", move |part| {
        let (settings, snapshots, identity, report, rotations) = (
            overlay.clone(),
            overlay_snapshots.clone(),
            identity_tx.clone(),
            overlay_report.clone(),
            rotate_rx.clone(),
        );
        async move {
            let mut rotations = rotations.lock().await;
            overlay_part::run(settings, snapshots, identity, &mut rotations, part, report).await
        }
    });
    parts.spawn("control", move |part| {
        control::serve(state_dir.clone(), rotate_tx.clone(), faults.clone(), part)
    });

    let cni = cni_part::Settings {
        node: node.to_string(),
        socket: settings.cni.socket.clone(),
        conf_dir: settings.cni.conf_dir.clone(),
        bin_dir: settings.cni.bin_dir.clone(),
        bridge: settings.cni.bridge.clone(),
        mtu: settings.cni.mtu,
        port_mappings: if settings.cni.portmap {
            cni_install::PortMappings::Portmap
        } else if settings.proxy.enabled {
            cni_install::PortMappings::Skein
        } else {
            cni_install::PortMappings::Nobody
        },
        overlay_mtu,
        overlay: Some(settings.overlay.interface.clone()),
        cluster_cidrs: vec![settings.cluster.pod_cidr],
        gc_interval: settings.ipam.gc_interval,
        resync,
    };
    let proxy_snapshots = snapshots.clone();
    let dns_snapshots = snapshots.clone();
    // The cni part publishes the node's host ports here, the proxy forwards them; like the
    // snapshots, the channel outlives both parts' restarts.
    let (host_ports_feed, host_ports) =
        tokio::sync::watch::channel(std::sync::Arc::new(host_ports));
    let (cni_store, cni_report) = (store.clone(), reporting.clone());
    parts.spawn("cni", move |part| {
        cni_part::run(
            cni.clone(),
            cni_store.clone(),
            snapshots.clone(),
            host_ports_feed.clone(),
            part,
            cni_report.clone(),
        )
    });

    let dns_addresses = if settings.dns.enabled {
        vec![settings.dns.listen, settings.dns.cluster_ip]
    } else {
        Vec::new()
    };
    if settings.dns.enabled {
        let dns = dns_part::Settings {
            zone: skein_dns::ZoneConfig {
                domain: settings.cluster.domain.clone(),
                ttl: settings.dns.ttl.as_secs().try_into().unwrap_or(u32::MAX),
                pods: match settings.dns.pods {
                    skein_config::DnsPods::Insecure => skein_dns::PodRecords::Insecure,
                    skein_config::DnsPods::Verified => skein_dns::PodRecords::Verified,
                    skein_config::DnsPods::Disabled => skein_dns::PodRecords::Disabled,
                },
                dns_ips: vec![settings.dns.cluster_ip],
                reverse_cidrs: vec![settings.cluster.pod_cidr, settings.cluster.service_cidr],
            },
            addresses: dns_addresses.clone(),
            upstreams: settings.dns.upstreams.clone(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            resync,
        };
        let dns_report = reporting.clone();
        parts.spawn("dns", move |part| {
            dns_part::run(dns.clone(), dns_snapshots.clone(), part, dns_report.clone())
        });
    }

    if settings.proxy.enabled {
        let proxy = proxy_part::Settings {
            node: node.to_string(),
            cluster_cidrs: vec![settings.cluster.pod_cidr],
            service_cidrs: vec![settings.cluster.service_cidr],
            nodeport_addresses: settings.proxy.nodeport_addresses.clone(),
            // skein answers DNS on these addresses itself, on every node: no DNAT, no reject.
            // With DNS off they are a Service like any other (CoreDNS may sit behind it).
            exempt_ips: dns_addresses.clone(),
            min_sync_interval: settings.proxy.min_sync_interval,
            resync,
        };
        let (proxy_snapshots, proxy_report) = (proxy_snapshots, reporting.clone());
        parts.spawn("proxy", move |part| {
            proxy_part::run(
                proxy.clone(),
                proxy_snapshots.clone(),
                host_ports.clone(),
                part,
                proxy_report.clone(),
            )
        });
    }

    let store = store.clone();
    parts.spawn("store", move |part| store_part(store.clone(), part));

    let (board, metrics) = (board.clone(), metrics.clone());
    let page = page.to_string();
    parts.spawn("dashboard", move |part| {
        // The listener was bound before readiness; each (re)start serves on a clone of it.
        let listener = listener.try_clone();
        let (board, metrics) = (board.clone(), metrics.clone());
        let page = page.clone();
        async move {
            let listener = listener
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(PartError::io("reusing the status page's listening socket"))?;
            part.handle.ok(format!("serving {page}"));
            skein_dashboard::serve(listener, board, metrics, part.cancel.cancelled_owned())
                .await
                .map_err(PartError::io(format!("serving {page}")))
        }
    });
}

/// Keeps an eye on the database: a quick consistency check now and then, and WAL checkpoints.
async fn store_part(store: Store, part: Part) -> PartResult {
    let mut check = tokio::time::interval(STORE_CHECK_EVERY);
    let mut checkpoint = tokio::time::interval(STORE_CHECKPOINT_EVERY);
    checkpoint.tick().await; // the first tick is immediate; no need to checkpoint at start
    loop {
        tokio::select! {
            _ = part.cancel.cancelled() => return Ok(()),
            _ = check.tick() => {
                store.check().await?;
                let s = store.summary().await?;
                let unclean = match s.unclean_stops {
                    0 => String::new(),
                    1 => " · 1 earlier run did not stop cleanly".to_string(),
                    n => format!(" · {n} earlier runs did not stop cleanly"),
                };
                part.handle.ok(format!(
                    "{} · schema v{} · start #{}{unclean}",
                    store.path().display(), s.schema_version, s.starts
                ));
            }
            _ = checkpoint.tick() => store.checkpoint().await?,
        }
    }
}

async fn wait_for_stop_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Tells systemd (when it started us with Type=notify) how we are doing; a no-op otherwise.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The machine's hostname, for a node name left empty in the configuration.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

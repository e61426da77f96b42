//! The daemon's `dns` part: cluster DNS on every node, in place of CoreDNS.
//!
//! Once the cluster view is complete (the first snapshot), it makes the DNS addresses
//! (`dns.listen` and `dns.cluster_ip`) local to the node (`local` routes: nothing else answers
//! for them, and queries to them never leave the node), exempts DNS traffic to and from them
//! from connection tracking (`dns_raw_pre`, `dns_raw_out`), and binds UDP (one SO_REUSEPORT
//! socket per worker) and TCP on both. Each new cluster snapshot rebuilds the index off the
//! async threads and swaps it in whole; queries go on against the old one meanwhile. The proxy
//! part leaves both addresses alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skein_cluster::Snapshot;
use skein_dns::forward::{CacheLimits, Forwarder};
use skein_dns::server::{Context, Counters, IndexCell, serve_tcp, serve_udp, udp_socket};
use skein_dns::{ZoneConfig, answer::DEFAULT_MAX_UDP};
use skein_nft::{ChainSync, Netlink, OwnedChain};
use skein_podnet::PodNet;
use tokio::sync::watch;

use crate::sections::Reporting;
use crate::{Part, PartError, PartResult};

pub mod section;

use section::{DnsBoard, DnsSection};

#[derive(Debug, Clone)]
pub struct Settings {
    pub zone: ZoneConfig,
    /// Where it answers: `dns.listen` and `dns.cluster_ip`.
    pub addresses: Vec<IpAddr>,
    /// `dns.upstreams`; empty: the node's resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// UDP sockets per address.
    pub workers: usize,
    pub resync: Duration,
}

/// How often the page's figures are refreshed, and the upstreams' health checked.
const REFRESH: Duration = Duration::from_secs(1);
const HEALTH_EVERY: Duration = Duration::from_secs(5);

pub async fn run(
    settings: Settings,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    part: Part,
    report: Reporting,
) -> PartResult {
    let handle = &part.handle;
    let (upstreams, upstreams_from) = if settings.upstreams.is_empty() {
        match skein_dns::resolv_conf::system_upstreams() {
            Ok((found, from)) => (found, from.to_string()),
            Err(why) => {
                tracing::warn!("dns: {why}");
                handle.degraded(format!("names outside the cluster get SERVFAIL: {why}"));
                (Vec::new(), "none".to_string())
            }
        }
    } else {
        (settings.upstreams.clone(), "dns.upstreams".to_string())
    };

    // Nothing before the cluster view is complete: an answer now would be NXDOMAIN for every
    // Service, which clients cache; no answer makes them retry.
    let mut snapshots = snapshots;
    if snapshots.borrow().version == 0 {
        handle.detail("waiting for the cluster view");
        loop {
            tokio::select! {
                () = part.cancel.cancelled() => return Ok(()),
                changed = snapshots.changed() => {
                    changed.map_err(|_| PartError::ViewClosed)?;
                    if snapshots.borrow().version > 0 {
                        break;
                    }
                }
            }
        }
    }

    let net = PodNet::connect()?;
    for ip in &settings.addresses {
        net.ensure_local_address(*ip).await?;
    }
    let mut chains = reconcile_chains(None, &settings.addresses).await?;

    let started = Instant::now();
    let first = snapshots.borrow_and_update().clone();
    let zone = settings.zone.clone();
    let index = tokio::task::spawn_blocking(move || skein_dns::build(&first, &zone))
        .await
        .map_err(|e| PartError::Failed(e.to_string()))?;
    let names = index.len();
    let forwarder = Arc::new(Forwarder::new(
        upstreams,
        CacheLimits::default(),
        DEFAULT_MAX_UDP,
    ));
    let ctx = Arc::new(Context {
        index: Arc::new(IndexCell::new(index)),
        forwarder: forwarder.clone(),
        counters: Counters::default(),
        max_udp: DEFAULT_MAX_UDP,
    });

    for ip in &settings.addresses {
        let addr = SocketAddr::new(*ip, 53);
        for _ in 0..settings.workers.max(1) {
            let socket = udp_socket(addr)
                .and_then(tokio::net::UdpSocket::from_std)
                .map_err(PartError::io(format!("binding UDP {addr}")))?;
            part.spawn(
                "dns over UDP",
                until_stopped(&part, serve_udp(socket, ctx.clone())),
            );
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(PartError::io(format!("binding TCP {addr}")))?;
        part.spawn(
            "dns over TCP",
            until_stopped(&part, serve_tcp(listener, ctx.clone())),
        );
    }
    let health = forwarder.clone();
    part.spawn(
        "dns upstream health",
        until_stopped(&part, async move {
            let mut every = tokio::time::interval(HEALTH_EVERY);
            loop {
                every.tick().await;
                health.health_check().await;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::convert::Infallible>(())
        }),
    );

    let listening: Vec<String> = settings
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, 53).to_string())
        .collect();
    tracing::info!(
        "dns: answering {} on {} ({names} names, built in {:.1} ms); forwarding to {}",
        settings.zone.domain,
        listening.join(", "),
        started.elapsed().as_secs_f64() * 1e3,
        forwarder
            .upstreams()
            .iter()
            .map(|u| u.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !forwarder.upstreams().is_empty() {
        handle.ok(format!("answering on {}", listening.join(", ")));
    }

    let board = DnsBoard::register(&report, ctx.clone());
    let mut section = DnsSection::new(&settings, &listening, &upstreams_from);
    let mut ruleset = skein_nft::RulesetChanges::subscribe()?;
    let mut refresh = tokio::time::interval(REFRESH);
    let mut resync = tokio::time::interval(settings.resync);
    resync.reset();
    let mut built_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut version = ctx.index.load().version;
    loop {
        tokio::select! {
            () = part.cancel.cancelled() => return Ok(()),
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Err(PartError::ViewClosed);
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let zone = settings.zone.clone();
                let t = Instant::now();
                let index = tokio::task::spawn_blocking(move || skein_dns::build(&snapshot, &zone))
                    .await
                    .map_err(|e| PartError::Failed(e.to_string()))?;
                version = index.version;
                ctx.index.swap(index);
                built_ms = t.elapsed().as_secs_f64() * 1e3;
            }
            changed = ruleset.next() => {
                changed?;
                chains = reconcile_chains(Some(chains), &settings.addresses).await?;
            }
            _ = resync.tick() => {
                for ip in &settings.addresses {
                    net.ensure_local_address(*ip).await?;
                }
                chains = reconcile_chains(Some(chains), &settings.addresses).await?;
            }
            _ = refresh.tick() => {
                section.refresh(&ctx, version, built_ms);
                board.show(&section);
            }
        }
    }
}

/// `task` until the part's run is asked to stop (the supervisor aborts a helper only after
/// the grace period).
fn until_stopped<E>(
    part: &Part,
    task: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> impl std::future::Future<Output = Result<(), E>> + Send + 'static {
    let stop = part.cancel.clone();
    async move {
        tokio::select! {
            r = task => r,
            () = stop.cancelled() => Ok(()),
        }
    }
}

/// The two NOTRACK chains, compared with the kernel and repaired; they travel with their
/// socket into a blocking task and back.
async fn reconcile_chains(
    chains: Option<(Vec<OwnedChain>, Netlink)>,
    addresses: &[IpAddr],
) -> Result<(Vec<OwnedChain>, Netlink), PartError> {
    let addresses = addresses.to_vec();
    tokio::task::spawn_blocking(move || {
        let (mut chains, mut nl) = match chains {
            Some(c) => c,
            None => {
                let [pre, out] = skein_nft::dns_notrack(&addresses);
                (
                    vec![
                        OwnedChain::new(skein_nft::CHAIN_DNS_RAW_PRE, pre),
                        OwnedChain::new(skein_nft::CHAIN_DNS_RAW_OUT, out),
                    ],
                    Netlink::new()?,
                )
            }
        };
        for chain in &mut chains {
            if chain.reconcile(&mut nl)? == ChainSync::Repaired {
                tracing::info!("dns: nftables chain {} restored", chain.name());
            }
        }
        Ok((chains, nl))
    })
    .await
    .map_err(|e| PartError::Failed(e.to_string()))?
}

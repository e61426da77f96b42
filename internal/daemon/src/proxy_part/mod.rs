//! The daemon's `proxy` part: Services reach their endpoints through skein's nftables table,
//! in place of kube-proxy.
//!
//! At start it probes the kernel for every expression the ruleset uses, refuses to run beside
//! kube-proxy's own tables, and adopts what the kernel already holds (a restart changes
//! nothing when nothing changed in the API). Then each new cluster snapshot is a partial sync:
//! only the Services whose object or slices changed are compared, and only their difference is
//! sent, no sooner than `proxy.min_sync_interval` after the last sync. A full sync (a diff
//! against a fresh dump of the table, never a flush and refill) runs at start, after a failed
//! transaction, when someone else changed the table, and on `daemon.resync_interval`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skein_cluster::Snapshot;
use skein_config::NodePortAddresses;
use skein_nft::{Backend, Netlink, NftError};
use skein_proxy::stale_flows::{StaleFlow, UdpPorts, stale_flows, udp_ports};
use skein_proxy::{Mirror, NodeContext, ProxyState, Stale};
use tokio::sync::watch;

use crate::sections::Reporting;
use crate::{Part, PartError, PartResult};

mod health;
mod host_ports;
pub mod section;
#[cfg(test)]
mod tests;

use health::{Health, HealthServers};
use section::{ProblemRow, ServicesBoard, ServicesSection, SyncRow};

/// The most kernel messages one transaction carries: the kernel's commit time grows faster
/// than linearly with a transaction's size, so a full sync of thousands of Services is cut.
pub const MAX_TRANSACTION: usize = 20_000;

/// How long stale chains stay flushed before they are deleted.
const DELETE_AFTER: Duration = Duration::from_secs(1);

/// How often the page's section is rewritten at most (it serializes every Service).
const SECTION_EVERY: Duration = Duration::from_secs(1);

/// After a failed sync, the next try.
const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub cluster_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub nodeport_addresses: Vec<NodePortAddresses>,
    /// Addresses never DNATed nor rejected: the DNS addresses when skein answers DNS itself.
    pub exempt_ips: Vec<IpAddr>,
    pub min_sync_interval: Duration,
    pub resync: Duration,
}

/// The node's context for the rules, from the settings and the snapshot.
pub fn node_context(settings: &Settings, snapshot: &Snapshot) -> NodeContext {
    let node = snapshot.node(&settings.node);
    let mut nodeport_ips: Vec<IpAddr> = Vec::new();
    for entry in &settings.nodeport_addresses {
        match entry {
            NodePortAddresses::Primary => {
                nodeport_ips.extend(
                    node.into_iter()
                        .flat_map(|n| n.internal_ips.iter().copied()),
                );
            }
            NodePortAddresses::Cidr(cidr) => {
                nodeport_ips.extend(local_addresses().into_iter().filter(|a| cidr.contains(a)))
            }
        }
    }
    nodeport_ips.sort();
    nodeport_ips.dedup();
    NodeContext {
        node: settings.node.clone(),
        zone: node.and_then(|n| n.zone.clone()),
        cluster_cidrs: settings.cluster_cidrs.clone(),
        service_cidrs: settings.service_cidrs.clone(),
        nodeport_ips,
        exempt_ips: settings.exempt_ips.clone(),
    }
}

/// The addresses on this node's interfaces.
fn local_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// kube-proxy's own nftables tables, if any are present: both proxies would DNAT Service
/// traffic at the same priority. Only the tables' names are read.
fn kube_proxy_tables(nl: &mut Netlink) -> Result<Vec<String>, NftError> {
    Ok(nl
        .table_names()?
        .into_iter()
        .filter(|(_, name)| name == "kube-proxy")
        .map(|(family, name)| format!("{family} {name}"))
        .collect())
}

/// What one sync did.
#[derive(Debug, Clone)]
struct Synced {
    full: bool,
    changed: usize,
    transactions: usize,
    duration: Duration,
    delete_later: Vec<Stale>,
    /// The ruleset's generation at which the kernel's table is known to be what the proxy
    /// holds, if it is known.
    generation: Option<u32>,
}

/// Plans and applies one sync; on a full one, the mirror is first replaced with a dump.
/// `known`: the generation the table was known to be at before (see [`Synced::generation`]).
fn sync(
    nl: &mut Netlink,
    state: &mut ProxyState,
    snapshot: &Snapshot,
    ctx: &NodeContext,
    full: bool,
    known: Option<u32>,
) -> Result<Synced, NftError> {
    let started = Instant::now();
    let mut generation = known;
    if full {
        // Read before the dump: a commit in between is in the dump but not in the
        // generation, which only costs another full sync later.
        generation = nl.generation().ok();
        let dump = nl.dump()?;
        state.adopt(dump.as_ref().map(Mirror::from_dump).unwrap_or_default());
    }
    let mut plan = state.plan(snapshot, ctx, full);
    let txs = plan.take_transactions(MAX_TRANSACTION);
    for tx in &txs {
        nl.apply(tx)?;
        generation = nl.committed_generation();
    }
    Ok(Synced {
        full,
        changed: plan.changed,
        transactions: txs.len(),
        duration: started.elapsed(),
        delete_later: plan.delete_later,
        generation,
    })
}

pub async fn run(
    settings: Settings,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut host_ports: watch::Receiver<Arc<Vec<skein_store::HostPortTarget>>>,
    part: Part,
    report: Reporting,
) -> PartResult {
    let handle = &part.handle;
    let board = ServicesBoard::register(&report);
    let mut nl = tokio::task::spawn_blocking(|| {
        let mut nl = Netlink::new()?;
        skein_nft::netlink::probe(&mut nl)?;
        Ok::<_, NftError>(nl)
    })
    .await
    .map_err(|e| PartError::Failed(e.to_string()))??;
    loop {
        let found = kube_proxy_tables(&mut nl)?;
        if found.is_empty() {
            break;
        }
        let msg = format!(
            "kube-proxy is running here (its nftables table {} exists): both would DNAT Service \
             traffic; stop kube-proxy (k3s: --disable-kube-proxy) or set proxy.enabled = false",
            found.join(", ")
        );
        tracing::warn!("proxy: {msg}");
        handle.degraded(msg);
        tokio::select! {
            _ = part.cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }

    let mut ruleset = skein_nft::RulesetChanges::subscribe()?;
    let mut state = ProxyState::new(NodeContext::default());
    let mut snapshots = snapshots;
    let mut full_due = true;
    let mut our_generation: Option<u32> = None;
    let mut last_sync: Option<Instant> = None;
    let mut last_section: Option<Instant> = None;
    let mut section_dirty = false;
    let mut health_problems: Vec<String> = Vec::new();
    let mut pending_deletes: Vec<(Instant, Vec<Stale>)> = Vec::new();
    let mut udp_before: UdpPorts = UdpPorts::new();
    let mut conntrack: Option<skein_conntrack::Conntrack> = None;
    let mut health = HealthServers::default();
    let mut resync = tokio::time::interval(settings.resync);
    resync.tick().await;
    let (mut syncs, mut failures) = (0u64, 0u64);
    let mut last_row: Option<SyncRow> = None;
    let mut error: Option<String> = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        state.set_host_ports(host_ports::for_proxy(&host_ports.borrow_and_update()));
        if snapshot.version > 0 {
            let ctx = node_context(&settings, &snapshot);
            let full = full_due;
            let outcome = tokio::task::block_in_place(|| {
                sync(&mut nl, &mut state, &snapshot, &ctx, full, our_generation)
            });
            last_sync = Some(Instant::now());
            match outcome {
                Ok(done) => {
                    full_due = false;
                    error = None;
                    syncs += 1;
                    our_generation = done.generation;
                    let m = &board.metrics;
                    let secs = done.duration.as_secs_f64();
                    m.sync_duration.observe(secs);
                    if done.full {
                        m.full_sync_duration.observe(secs);
                    } else {
                        m.partial_sync_duration.observe(secs);
                    }
                    if let Some(seen) = snapshot.changed_at
                        && done.changed > 0
                    {
                        m.programming_latency.observe(seen.elapsed().as_secs_f64());
                    }
                    m.last_sync.set(skein_status::unix_now() as i64);
                    if done.changed > 0 {
                        tracing::debug!(
                            snapshot = snapshot.version,
                            full = done.full,
                            changed = done.changed,
                            transactions = done.transactions,
                            "proxy: synced in {:?}",
                            done.duration
                        );
                    }
                    if !done.delete_later.is_empty() {
                        pending_deletes
                            .push((Instant::now() + DELETE_AFTER, done.delete_later.clone()));
                    }
                    last_row = Some(SyncRow {
                        at: skein_status::unix_now(),
                        full: done.full,
                        duration_ms: secs * 1000.0,
                        changed: done.changed,
                        transactions: done.transactions,
                    });
                    // UDP flows to endpoints that left, and those that bypassed a port's
                    // (new) endpoints.
                    let computation = state.computation();
                    let mut udp_after = udp_ports(computation.ports.iter().copied());
                    udp_after.extend(skein_proxy::stale_flows::host_udp_ports(
                        computation.host_ports,
                    ));
                    let flows = stale_flows(&udp_before, &udp_after);
                    udp_before = udp_after;
                    if !flows.is_empty() {
                        tokio::task::block_in_place(|| clear_flows(&mut conntrack, &flows));
                    }
                }
                Err(e) => {
                    failures += 1;
                    board.metrics.failures.inc();
                    full_due = true;
                    state.forget();
                    let msg = format!("syncing the Service rules: {e}");
                    tracing::warn!("proxy: {msg}");
                    error = Some(msg);
                }
            }
            // The health check servers after every change; the page at most once a second
            // (a row per Service port: at 10,000 of them, rebuilding it on every change would
            // cost more than the sync), and a second after a change it missed.
            let now = Instant::now();
            let changed_now = last_row.as_ref().is_some_and(|r| r.changed > 0);
            section_dirty |= changed_now;
            let section_due = last_section.is_none_or(|t| now.duration_since(t) >= SECTION_EVERY);
            // (A health port that could not be bound is tried again with the page.)
            if changed_now || section_due {
                let computation = state.computation();
                let mut want = BTreeMap::new();
                for p in &computation.ports {
                    if p.external_local
                        && let Some(port) = snapshot
                            .services
                            .get(&p.service)
                            .and_then(|s| s.health_check_node_port)
                    {
                        let e = want.entry(port).or_insert(Health {
                            service: p.service.clone(),
                            local_endpoints: 0,
                        });
                        e.local_endpoints = e.local_endpoints.max(p.local.len());
                    }
                }
                health_problems = health.update(&part, &want);
            }
            if section_due {
                last_section = Some(now);
                section_dirty = false;
                let computation = state.computation();
                let mut problems: Vec<ProblemRow> = computation
                    .problems
                    .iter()
                    .map(|u| ProblemRow {
                        service: u.service.to_string(),
                        problem: u.reason.clone(),
                    })
                    .collect();
                problems.extend(host_ports::problems(&computation));
                for bind in &health_problems {
                    problems.push(ProblemRow {
                        service: String::new(),
                        problem: bind.clone(),
                    });
                }
                show_page(
                    &board.section,
                    handle,
                    PageInputs {
                        ports: state.port_lists(),
                        problems,
                        last_sync: last_row.clone(),
                        syncs,
                        failures,
                        error: error.clone(),
                        chains: state.chain_count(),
                    },
                );
            }
        } else {
            handle.detail("waiting for the cluster view");
        }

        let next_delete = pending_deletes.iter().map(|(at, _)| *at).min();
        let retry = error.is_some();
        tokio::select! {
            _ = part.cancel.cancelled() => return Ok(()),
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Err(PartError::ViewClosed);
                }
                // Coalesce: no two syncs closer than min_sync_interval.
                if let Some(last) = last_sync {
                    let wait = settings.min_sync_interval.saturating_sub(last.elapsed());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            changed = host_ports.changed() => {
                if changed.is_err() {
                    return Err(PartError::ViewClosed);
                }
            }
            // The periodic look at the kernel: a full sync (a dump and a comparison, seconds
            // at 10,000 Services) only when the ruleset's generation moved since the table was
            // last known to be the proxy's, or when it is not known.
            // Commits of other programs to their own tables move the generation too: those
            // heard carry the known generation along.
            _ = resync.tick() => {
                our_generation = ruleset.advance(our_generation);
                let now = tokio::task::block_in_place(|| nl.generation().ok());
                if our_generation.is_none() || now != our_generation {
                    full_due = true;
                }
            }
            _ = tokio::time::sleep(RETRY_AFTER), if retry => {}
            changed = ruleset.next() => {
                changed?;
                // Someone else's commit to the table (a flush, an edit): compare with the
                // kernel's own table. Our own commits leave the generation where we saw it.
                let generation = nl.generation().ok();
                if generation.is_none() || generation != our_generation {
                    full_due = true;
                }
            }
            _ = sleep_until(last_section.map(|t| t + SECTION_EVERY)), if section_dirty => {}
            _ = sleep_until(next_delete), if next_delete.is_some() => {
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) =
                    pending_deletes.drain(..).partition(|(at, _)| *at <= now);
                pending_deletes = later;
                let stale: Vec<Stale> = due.into_iter().flat_map(|(_, s)| s).collect();
                let tx = state.deletions(&stale);
                if !tx.is_empty() {
                    if let Err(e) = tokio::task::block_in_place(|| nl.apply(&tx)) {
                        tracing::warn!("proxy: deleting stale chains: {e}");
                        full_due = true;
                    } else {
                        our_generation = nl.committed_generation();
                    }
                }
            }
        }
    }
}

/// What the page shows of the proxy (the ports are the proxy's own lists, shared).
struct PageInputs {
    ports: Vec<Arc<[skein_proxy::ServicePort]>>,
    problems: Vec<ProblemRow>,
    last_sync: Option<SyncRow>,
    syncs: u64,
    failures: u64,
    error: Option<String>,
    chains: usize,
}

/// Writes the page's section and the part's line. Cheap at any size: the section keeps the
/// shared port lists and makes rows only for the page someone asks for.
fn show_page(
    section: &skein_status::SectionHandle<ServicesSection>,
    handle: &skein_status::PartHandle,
    page: PageInputs,
) {
    let service_ports: usize = page.ports.iter().map(|p| p.len()).sum();
    match (&page.error, page.problems.first()) {
        (Some(e), _) => handle.degraded(e.clone()),
        (None, None) => handle.ok(format!(
            "{service_ports} Service ports · {} chains",
            page.chains
        )),
        (None, Some(first)) => handle.degraded(format!(
            "{} Service problem(s), e.g. {}: {}",
            page.problems.len(),
            first.service,
            first.problem
        )),
    }
    section.set(ServicesSection {
        ports: page.ports,
        problems: page.problems,
        last_sync: page.last_sync,
        syncs: page.syncs,
        failures: page.failures,
    });
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Deletes the conntrack entries of UDP flows that lost their endpoint; a failure is logged
/// and the socket reopened next time (the flows time out on their own, only later).
fn clear_flows(
    conntrack: &mut Option<skein_conntrack::Conntrack>,
    flows: &std::collections::BTreeSet<StaleFlow>,
) {
    if conntrack.is_none() {
        match skein_conntrack::Conntrack::new() {
            Ok(c) => *conntrack = Some(c),
            Err(e) => {
                tracing::warn!("proxy: cannot clear stale UDP flows: {e}");
                return;
            }
        }
    }
    let Some(ct) = conntrack.as_mut() else {
        return;
    };
    for flow in flows {
        let result = match flow {
            StaleFlow::Nat { dst, endpoint } => ct.delete_udp_nat(*dst, *endpoint),
            StaleFlow::PortNat { port, endpoint } => ct.delete_udp_port_nat(*port, *endpoint),
            StaleFlow::Unnated { dst } => ct.delete_udp_unnated(*dst),
            StaleFlow::PortUnnated { port } => ct.delete_udp_port_unnated(*port),
        };
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!("proxy: {n} stale UDP conntrack entries deleted ({flow:?})"),
            Err(e) => {
                tracing::warn!("proxy: clearing stale UDP flows ({flow:?}): {e}");
                *conntrack = None;
                return;
            }
        }
    }
}

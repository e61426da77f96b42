//! skein's proxy driven in-process, without the daemon or an API server: the same Services and
//! slices as the API benchmark, made into a snapshot in memory, planned by
//! `skein_proxy::ProxyState` and applied through `skein_nft::Netlink` in the calling thread's
//! network namespace (run it under `ip netns exec` in a fresh one). Times each phase of a full
//! sync (dump, plan, apply) and of one-endpoint changes, so a profiler (callgrind) sees
//! exactly the proxy's work.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use skein_cluster::{EndpointSlice, ObjectKey, Service, Snapshot};
use skein_nft::{Backend, Netlink};
use skein_proxy::{Mirror, NodeContext, ProxyState};

use crate::objects;

/// The daemon's bound on one kernel transaction (`proxy_part::MAX_TRANSACTION`).
const MAX_TRANSACTION: usize = 20_000;

pub fn context() -> NodeContext {
    NodeContext {
        node: "node-1".into(),
        zone: None,
        cluster_cidrs: vec!["10.42.0.0/16".parse().expect("cidr")],
        service_cidrs: vec!["10.43.0.0/16".parse().expect("cidr")],
        nodeport_ips: vec!["198.18.0.11".parse().expect("ip")],
        exempt_ips: Vec::new(),
    }
}

/// Service `i`'s ClusterIP: 10.43.1.0 onwards (the API server allocates at random; any
/// distinct addresses do here).
fn cluster_ip(i: usize) -> String {
    let n = 256 + i;
    format!("10.43.{}.{}", n / 256, n % 256)
}

fn service(i: usize) -> Arc<Service> {
    let ip = cluster_ip(i);
    let mut s = objects::service(&objects::service_name(i), Some(&ip));
    if let Some(spec) = s.spec.as_mut() {
        spec.cluster_ips = Some(vec![ip]);
    }
    Arc::new(Service::from_api(&s).expect("service"))
}

fn slice(i: usize, generation: Option<usize>) -> Arc<EndpointSlice> {
    let s = objects::slice(
        &objects::service_name(i),
        &objects::slice_name(i),
        &objects::addresses(i, generation),
        None,
    );
    Arc::new(EndpointSlice::from_api(&s).expect("slice"))
}

pub fn snapshot(count: usize) -> Snapshot {
    let mut snap = Snapshot {
        version: 1,
        ..Default::default()
    };
    for i in 0..count {
        let key = ObjectKey::new(objects::NAMESPACE, objects::service_name(i));
        snap.services.insert(key, service(i));
        snap.endpoint_slices.insert(
            ObjectKey::new(objects::NAMESPACE, objects::slice_name(i)),
            slice(i, None),
        );
    }
    snap.reindex();
    snap
}

/// `count` bench Services as in [`snapshot`] and the connection target (`conn-target`:
/// `cluster_ip`:80 to `endpoint`:8080, as `objects::target` makes it through the API),
/// programmed into this namespace's table by one full sync; the rules stay when the process
/// exits. Two namespaces programmed so, one with 0 and one with 10,000 others, differ only in
/// the number of Services, so connection rates measured through them side by side compare
/// the two sizes with the machine's drift cancelled.
pub fn program(count: usize, cluster_ip: &str, endpoint: Ipv4Addr) -> anyhow::Result<()> {
    let mut snap = snapshot(count);
    let mut target = objects::service("conn-target", Some(cluster_ip));
    if let Some(spec) = target.spec.as_mut() {
        spec.cluster_ips = Some(vec![cluster_ip.to_string()]);
    }
    snap.services.insert(
        ObjectKey::new(objects::NAMESPACE, "conn-target"),
        Arc::new(Service::from_api(&target).context("the target Service")?),
    );
    snap.endpoint_slices.insert(
        ObjectKey::new(objects::NAMESPACE, "conn-target-a"),
        Arc::new(
            EndpointSlice::from_api(&objects::slice(
                "conn-target",
                "conn-target-a",
                &[endpoint],
                None,
            ))
            .context("the target's slice")?,
        ),
    );
    snap.reindex();
    let mut nl = Netlink::new()?;
    let mut state = ProxyState::new(NodeContext::default());
    let dump = nl.dump()?;
    state.adopt(dump.as_ref().map(Mirror::from_dump).unwrap_or_default());
    let t = Instant::now();
    let mut plan = state.plan(&snap, &context(), true);
    for tx in plan.take_transactions(MAX_TRANSACTION) {
        nl.apply(&tx)?;
    }
    let out = serde_json::json!({
        "services": count + 1,
        "sync_ms": ms(t.elapsed()),
        "chains": state.chain_count(),
    });
    println!("{out}");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A full sync of `count` Services into an empty table, then `changes` one-endpoint changes,
/// each a partial sync; prints JSON with each phase's time.
pub fn run(count: usize, changes: usize) -> anyhow::Result<()> {
    let ctx = context();
    let t = Instant::now();
    let mut snap = snapshot(count);
    let build = t.elapsed();

    let mut nl = Netlink::new()?;
    let mut state = ProxyState::new(NodeContext::default());
    let t = Instant::now();
    let dump = nl.dump()?;
    state.adopt(dump.as_ref().map(Mirror::from_dump).unwrap_or_default());
    let dumped = t.elapsed();
    let t = Instant::now();
    let mut plan = state.plan(&snap, &ctx, true);
    let txs = plan.take_transactions(MAX_TRANSACTION);
    let planned = t.elapsed();
    let t = Instant::now();
    for tx in &txs {
        nl.apply(tx)?;
    }
    let applied = t.elapsed();
    let full = serde_json::json!({
        "services": count,
        "snapshot_build_ms": ms(build),
        "dump_ms": ms(dumped),
        "plan_ms": ms(planned),
        "apply_ms": ms(applied),
        "total_ms": ms(dumped + planned + applied),
        "transactions": txs.len(),
        "ops": txs.iter().map(|t| t.ops.len()).sum::<usize>(),
        "changed": plan.changed,
    });

    // A second full sync against a fresh dump of what is now there: what the daemon's
    // periodic resync costs when nothing changed.
    let t = Instant::now();
    let dump = nl.dump()?;
    state.adopt(dump.as_ref().map(Mirror::from_dump).unwrap_or_default());
    let redumped = t.elapsed();
    let t = Instant::now();
    let mut plan = state.plan(&snap, &ctx, true);
    let txs = plan.take_transactions(MAX_TRANSACTION);
    for tx in &txs {
        nl.apply(tx)?;
    }
    let resync = serde_json::json!({
        "dump_ms": ms(redumped),
        "plan_and_apply_ms": ms(t.elapsed()),
        "changed": plan.changed,
    });

    let mut plan_ms = Vec::new();
    let mut apply_ms = Vec::new();
    let mut total_ms = Vec::new();
    let mut ops = 0;
    for g in 0..changes {
        let i = (g * 7919) % count;
        let mut next = snap.clone();
        next.version += 1;
        next.endpoint_slices.insert(
            ObjectKey::new(objects::NAMESPACE, objects::slice_name(i)),
            slice(i, Some(g)),
        );
        next.reindex();
        snap = next;
        let t = Instant::now();
        let mut plan = state.plan(&snap, &ctx, false);
        let txs = plan.take_transactions(MAX_TRANSACTION);
        let p = t.elapsed();
        let t = Instant::now();
        for tx in &txs {
            nl.apply(tx)?;
        }
        let a = t.elapsed();
        ops += txs.iter().map(|t| t.ops.len()).sum::<usize>();
        plan_ms.push(ms(p));
        apply_ms.push(ms(a));
        total_ms.push(ms(p + a));
        // The daemon deletes the flushed chains a second later; here at once (not timed).
        let stale = state.deletions(&plan.delete_later);
        if !stale.is_empty() {
            nl.apply(&stale)?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() { 0.0 } else { v[v.len() / 2] }
    };
    let out = serde_json::json!({
        "full": full,
        "resync_unchanged": resync,
        "change": {
            "count": changes,
            "ops_each": ops.checked_div(changes).unwrap_or(0),
            "plan_ms_median": median(&mut plan_ms),
            "apply_ms_median": median(&mut apply_ms),
            "total_ms_median": median(&mut total_ms),
            "total_ms_max": total_ms.iter().copied().fold(0.0, f64::max),
        },
        "chains": state.chain_count(),
    });
    println!("{out}");
    Ok(())
}

//! The proxy's sync against the real kernel, in a private network namespace: a full sync of
//! many Services, the restart that adopts it unchanged, and one endpoint change. Timings are
//! printed for people (`--ignored --nocapture` for the big one), never asserted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use skein_cluster::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Protocol, Service, ServicePort,
    ServiceType, SessionAffinity, Snapshot, TargetPort, TrafficPolicy,
};
use skein_nft::{Backend, Netlink};
use skein_proxy::{Mirror, NodeContext, ProxyState};

fn ctx() -> NodeContext {
    NodeContext {
        node: "n1".into(),
        zone: None,
        cluster_cidrs: vec!["10.42.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.43.0.0/16".parse().unwrap()],
        nodeport_ips: vec!["198.18.0.11".parse().unwrap()],
        exempt_ips: vec![],
    }
}

/// `n` ClusterIP Services with `per` endpoints each, on other nodes.
pub fn services(n: usize, per: usize) -> Snapshot {
    let mut s = Snapshot {
        version: 1,
        ..Snapshot::default()
    };
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250);
        s.services.insert(
            ObjectKey::new("bench", &name),
            Arc::new(Service {
                namespace: "bench".into(),
                name: name.clone(),
                service_type: ServiceType::ClusterIp,
                cluster_ips: vec![ip.parse().unwrap()],
                headless: false,
                external_name: None,
                selector: BTreeMap::new(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Number(8080),
                    node_port: None,
                }],
                external_traffic_policy: TrafficPolicy::Cluster,
                internal_traffic_policy: TrafficPolicy::Cluster,
                session_affinity: SessionAffinity::None,
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                health_check_node_port: None,
                problems: vec![],
            }),
        );
        let endpoints = (0..per)
            .map(|j| {
                let k = i * per + j;
                Endpoint {
                    addresses: vec![
                        format!("10.42.{}.{}", 2 + (k / 250) % 200, 1 + k % 250)
                            .parse()
                            .unwrap(),
                    ],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("n2".into()),
                    pod_name: Some(format!("pod-{k}")),
                    hostname: None,
                    zone: None,
                    hints: None,
                }
            })
            .collect();
        s.endpoint_slices.insert(
            ObjectKey::new("bench", &name),
            Arc::new(EndpointSlice {
                namespace: "bench".into(),
                name: name.clone(),
                service_name: Some(name),
                address_type: AddressType::Ipv4,
                endpoints,
                ports: vec![EndpointPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                }],
            }),
        );
    }
    s.reindex();
    s
}

/// Runs `work` on a thread of its own in a fresh network namespace.
pub(super) fn in_private_netns<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        work()
    })
    .join()
    .expect("thread")
}

/// Full sync, restart adoption (nothing changes), one endpoint change; returns the timings.
fn run(n: usize) -> (f64, usize, f64, usize, f64) {
    in_private_netns(move || {
        let snapshot = services(n, 5);
        let mut nl = Netlink::new().expect("netlink");
        let mut state = ProxyState::new(ctx());
        let started = Instant::now();
        let plan = state.plan(&snapshot, &ctx(), true);
        for tx in plan.transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        let full = started.elapsed().as_secs_f64();

        // A restart: a new state adopts the kernel's table and finds nothing to change.
        let started = Instant::now();
        let mut again = ProxyState::new(ctx());
        let dump = nl.dump().expect("dump").expect("table");
        again.adopt(Mirror::from_dump(&dump));
        let plan = again.plan(&snapshot, &ctx(), true);
        let restart_changes = plan.changed;
        for tx in plan.transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        let restart = started.elapsed().as_secs_f64();

        // One endpoint goes away.
        let mut next = snapshot.clone();
        let key = ObjectKey::new("bench", "svc-7");
        Arc::make_mut(next.endpoint_slices.get_mut(&key).unwrap())
            .endpoints
            .pop();
        next.reindex();
        let started = Instant::now();
        let plan = again.plan(&next, &ctx(), false);
        let planned = started.elapsed();
        let changed = plan.changed;
        for tx in plan.transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        let one = started.elapsed().as_secs_f64();
        if n >= 1000 {
            println!(
                "  one endpoint at {n}: plan {:.2} ms, kernel {:.2} ms: {}",
                planned.as_secs_f64() * 1000.0,
                (started.elapsed() - planned).as_secs_f64() * 1000.0,
                plan.transaction().script().replace('\n', "; ")
            );
        }
        (full, restart_changes, restart, changed, one)
    })
}

#[test]
fn a_restart_adopts_the_kernels_table_unchanged_and_one_endpoint_changes_one_service() {
    if !skein_lab::skip::require_root("nftables in a private network namespace") {
        return;
    }
    let (_, restart_changes, _, changed, _) = run(50);
    assert_eq!(
        restart_changes, 0,
        "a restart with nothing new changes nothing"
    );
    // The Service chain rewritten, the gone endpoint's chain flushed.
    assert!(
        (1..=3).contains(&changed),
        "{changed} changes for one endpoint"
    );
}

#[test]
#[ignore = "timing: run with --release --ignored --nocapture"]
fn timing_of_full_and_partial_syncs() {
    for n in [1000, 10_000] {
        let (full, _, restart, _, one) = run(n);
        println!(
            "{n} services x 5 endpoints: full sync {:.3} s, restart (dump + diff) {:.3} s, one endpoint {:.2} ms",
            full,
            restart,
            one * 1000.0
        );
    }
}

#[test]
fn a_restart_that_missed_an_endpoint_change_replaces_that_element_not_the_map() {
    if !skein_lab::skip::require_root("nftables in a private network namespace") {
        return;
    }
    in_private_netns(|| {
        let snapshot = services(50, 5);
        let mut nl = Netlink::new().expect("netlink");
        let mut state = ProxyState::new(ctx());
        for tx in state
            .plan(&snapshot, &ctx(), true)
            .transactions(super::MAX_TRANSACTION)
        {
            nl.apply(&tx).expect("apply");
        }
        // While skein is away, one endpoint's address changes.
        let mut next = snapshot.clone();
        let key = ObjectKey::new("bench", "svc-7");
        Arc::make_mut(next.endpoint_slices.get_mut(&key).expect("slice")).endpoints[0].addresses =
            vec!["10.42.250.1".parse().expect("address")];
        next.reindex();
        let mut again = ProxyState::new(ctx());
        again.adopt(Mirror::from_dump(&nl.dump().expect("dump").expect("table")));
        let plan = again.plan(&next, &ctx(), true);
        let script = plan.transaction().script();
        assert!(!script.contains("flush set"), "{script}");
        // That Service's entries only (its endpoints are drawn in address order, so a new
        // address can move the others' indices): at most its 5.
        assert!((1..=5).contains(&plan.changed), "{script}");
        assert!(script.contains("10.42.250.1"), "{script}");
        let svc7 = skein_cluster::ObjectKey::new("bench", "svc-7");
        let ip = next.services[&svc7].cluster_ips[0].to_string();
        assert!(
            script.lines().all(|l| l.contains(&format!("{{ {ip} . "))),
            "only {ip}'s entries: {script}"
        );
        for tx in plan.transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        // The kernel now holds what a fresh start wants: adopting it again finds nothing.
        let mut third = ProxyState::new(ctx());
        third.adopt(Mirror::from_dump(&nl.dump().expect("dump").expect("table")));
        assert_eq!(third.plan(&next, &ctx(), true).changed, 0);
    });
}

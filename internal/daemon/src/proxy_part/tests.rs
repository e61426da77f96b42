//! The proxy's sync against the real kernel, in a private network namespace: a full sync of
//! many Services, the restart that adopts it unchanged, one endpoint change, and a dual-stack
//! Service reached over both families. Timings are
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

/// A ClusterIP Service with one TCP port, 80 to the endpoints' 8080, named `port_name`.
fn cluster_ip_service(
    namespace: &str,
    name: &str,
    cluster_ips: Vec<std::net::IpAddr>,
    port_name: &str,
) -> Service {
    Service {
        key: ObjectKey::new(namespace, name),
        service_type: ServiceType::ClusterIp,
        cluster_ips,
        headless: false,
        external_name: None,
        selector: BTreeMap::new(),
        ports: vec![ServicePort {
            name: port_name.into(),
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
        publish_not_ready_addresses: false,
        problems: vec![],
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
            Arc::new(cluster_ip_service(
                "bench",
                &name,
                vec![ip.parse().unwrap()],
                "http",
            )),
        );
        let endpoints = (0..per)
            .map(|j| {
                let k = i * per + j;
                Endpoint {
                    address: Some(
                        format!("10.42.{}.{}", 2 + (k / 250) % 200, 1 + k % 250)
                            .parse()
                            .unwrap(),
                    ),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("n2".into()),
                    pod_name: Some(format!("pod-{k}").into()),
                    extra: None,
                }
            })
            .collect();
        s.endpoint_slices.insert(
            ObjectKey::new("bench", &name),
            Arc::new(EndpointSlice {
                key: ObjectKey::new("bench", &name),
                service: Some(ObjectKey::new("bench", &name)),
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
        let mut plan = state.plan(&snapshot, &ctx(), true);
        for tx in plan.take_transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        let full = started.elapsed().as_secs_f64();

        // A restart: a new state adopts the kernel's table and finds nothing to change.
        let started = Instant::now();
        let mut again = ProxyState::new(ctx());
        let dump = nl.dump().expect("dump").expect("table");
        again.adopt(Mirror::from_dump(&dump));
        let mut plan = again.plan(&snapshot, &ctx(), true);
        let restart_changes = plan.changed;
        for tx in plan.take_transactions(super::MAX_TRANSACTION) {
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
        let mut plan = again.plan(&next, &ctx(), false);
        let planned = started.elapsed();
        let changed = plan.changed;
        let script = plan.transaction().script();
        let applying = Instant::now();
        for tx in plan.take_transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        let one = planned.as_secs_f64() + applying.elapsed().as_secs_f64();
        if n >= 1000 {
            println!(
                "  one endpoint at {n}: plan {:.2} ms, kernel {:.2} ms: {}",
                planned.as_secs_f64() * 1000.0,
                applying.elapsed().as_secs_f64() * 1000.0,
                script.replace('\n', "; ")
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
            .take_transactions(super::MAX_TRANSACTION)
        {
            nl.apply(&tx).expect("apply");
        }
        // While skein is away, one endpoint's address changes.
        let mut next = snapshot.clone();
        let key = ObjectKey::new("bench", "svc-7");
        Arc::make_mut(next.endpoint_slices.get_mut(&key).expect("slice")).endpoints[0].address =
            Some("10.42.250.1".parse().expect("address"));
        next.reindex();
        let mut again = ProxyState::new(ctx());
        again.adopt(Mirror::from_dump(&nl.dump().expect("dump").expect("table")));
        let mut plan = again.plan(&next, &ctx(), true);
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
        for tx in plan.take_transactions(super::MAX_TRANSACTION) {
            nl.apply(&tx).expect("apply");
        }
        // The kernel now holds what a fresh start wants: adopting it again finds nothing.
        let mut third = ProxyState::new(ctx());
        third.adopt(Mirror::from_dump(&nl.dump().expect("dump").expect("table")));
        assert_eq!(third.plan(&next, &ctx(), true).changed, 0);
    });
}

/// Runs `ip` with `args` in the calling thread's network namespace (a child inherits it).
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_dual_stack_service_answers_over_ipv4_and_ipv6_through_the_kernel() {
    if !skein_lab::skip::require_root("nftables in a private network namespace") {
        return;
    }
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    in_private_netns(|| {
        // The endpoints are addresses of this namespace; the node's default routes point at a
        // link with nobody on it, so only the rules' DNAT makes a ClusterIP reachable.
        ip(&["link", "set", "lo", "up"]);
        ip(&["addr", "add", "10.42.9.5/32", "dev", "lo"]);
        ip(&["-6", "addr", "add", "fd42::9:5/128", "dev", "lo"]);
        ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
        ip(&["-6", "addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"]);
        ip(&["link", "set", "up0", "up"]);
        ip(&["link", "set", "up1", "up"]);
        ip(&["route", "add", "default", "via", "192.0.2.2"]);
        ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);

        let mut snapshot = services(0, 0);
        let key = ObjectKey::new("default", "dual");
        let service = cluster_ip_service(
            "default",
            "dual",
            vec!["10.43.0.10".parse().unwrap(), "fd43::10".parse().unwrap()],
            "",
        );
        snapshot.services.insert(key, Arc::new(service));
        // A slice per family, as the EndpointSlice controller makes them.
        for (name, family, address) in [
            ("dual-v4", AddressType::Ipv4, "10.42.9.5"),
            ("dual-v6", AddressType::Ipv6, "fd42::9:5"),
        ] {
            snapshot.endpoint_slices.insert(
                ObjectKey::new("default", name),
                Arc::new(EndpointSlice {
                    key: ObjectKey::new("default", name),
                    service: Some(ObjectKey::new("default", "dual")),
                    address_type: family,
                    endpoints: vec![Endpoint {
                        address: Some(address.parse().unwrap()),
                        ready: true,
                        serving: true,
                        terminating: false,
                        node_name: Some("n1".into()),
                        pod_name: Some(format!("pod-{name}").into()),
                        extra: None,
                    }],
                    ports: vec![EndpointPort {
                        name: String::new(),
                        protocol: Protocol::Tcp,
                        port: 8080,
                    }],
                }),
            );
        }
        snapshot.reindex();
        let mut ctx = ctx();
        ctx.cluster_cidrs.push("fd42::/56".parse().unwrap());
        ctx.service_cidrs.push("fd43::/112".parse().unwrap());

        let listeners: Vec<TcpListener> = ["10.42.9.5:8080", "[fd42::9:5]:8080"]
            .iter()
            .map(|a| TcpListener::bind(a).expect("bind"))
            .collect();
        let mut nl = Netlink::new().expect("netlink");
        let mut state = ProxyState::new(ctx.clone());
        for tx in state
            .plan(&snapshot, &ctx, true)
            .take_transactions(super::MAX_TRANSACTION)
        {
            nl.apply(&tx).expect("apply");
        }
        let script = nl.dump().expect("dump").expect("table");
        for (vip, listener) in ["10.43.0.10:80", "[fd43::10]:80"].iter().zip(&listeners) {
            let vip: SocketAddr = vip.parse().unwrap();
            // Connected: the endpoint's answer came back from the ClusterIP (the DNAT undone),
            // else the client would not take it for its own connection's.
            let mut client = TcpStream::connect_timeout(&vip, std::time::Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{vip}: {e}; the table: {script:?}"));
            let (mut served, _) = listener.accept().expect("accept");
            served.write_all(b"hello").expect("write");
            let mut got = [0u8; 5];
            client.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"hello", "{vip}");
        }
        // A port the Service does not serve is refused on both families.
        for vip in ["10.43.0.10:81", "[fd43::10]:81"] {
            let vip: SocketAddr = vip.parse().unwrap();
            let err = TcpStream::connect_timeout(&vip, std::time::Duration::from_secs(2))
                .expect_err("port 81 is not the Service's");
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{vip}: {err}"
            );
        }
    });
}

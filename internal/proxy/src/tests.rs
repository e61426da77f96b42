//! The proxy's behaviours, traced through the generated ruleset without root; and the sync's
//! diffs. Addresses follow the test plan: pods 10.42.0.0/16 (this node 10.42.1.0/24), services
//! 10.43.0.0/16, nodes 198.18.0.0/24 (this node .11), clients off the cluster 198.51.100.0/24.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use skein_cluster::{
    AddressType, Endpoint, EndpointExtra, EndpointPort, EndpointSlice, Hints, ObjectKey, Protocol,
    Service, ServicePort as ApiPort, ServiceType, SessionAffinity, Snapshot, TargetPort,
    TrafficPolicy,
};
use skein_nft::{L4Proto, Op};

use crate::host_ports::{HostPort, HostPorts};
use crate::ruleset::{Fragment, static_fragment};
use crate::service_map::NodeContext;
use crate::sync::ProxyState;
use crate::tracer::{Fate, Packet, RejectKind, Tracer};

const NODE_IP: &str = "198.18.0.11";
/// This node's IPv6 address, for the host ports of dual-stack pods.
const NODE_IP6: &str = "fd18::11";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn ctx() -> NodeContext {
    NodeContext {
        node: "n1".into(),
        zone: Some("z1".into()),
        cluster_cidrs: vec![
            "10.42.0.0/16".parse().unwrap(),
            "fd42::/56".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.43.0.0/16".parse().unwrap(),
            "fd43::/112".parse().unwrap(),
        ],
        nodeport_ips: vec![ip(NODE_IP)],
        exempt_ips: vec![ip("10.43.0.10")],
    }
}

fn service(name: &str, cluster_ip: &str, ports: &[(&str, Protocol, u16)]) -> Service {
    Service {
        key: ObjectKey::new("default", name),
        service_type: ServiceType::ClusterIp,
        cluster_ips: cluster_ip.split(',').map(ip).collect(),
        headless: false,
        external_name: None,
        selector: BTreeMap::new(),
        ports: ports
            .iter()
            .map(|(n, proto, port)| ApiPort {
                name: (*n).into(),
                protocol: *proto,
                port: *port,
                target_port: TargetPort::Number(*port),
                node_port: None,
            })
            .collect(),
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        session_affinity: SessionAffinity::None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        health_check_node_port: None,
        publish_not_ready_addresses: false,
        problems: Vec::new(),
    }
}

#[derive(Clone)]
struct Ep {
    addr: &'static str,
    node: Option<&'static str>,
    ready: bool,
    serving: bool,
    terminating: bool,
    hints: Option<Hints>,
}

fn ep(addr: &'static str, node: &'static str) -> Ep {
    Ep {
        addr,
        node: Some(node),
        ready: true,
        serving: true,
        terminating: false,
        hints: None,
    }
}

fn terminating(mut e: Ep) -> Ep {
    e.ready = false;
    e.terminating = true;
    e
}

fn slice(service: &str, name: &str, eps: &[Ep], ports: &[(&str, Protocol, u16)]) -> EndpointSlice {
    let v6 = eps.first().is_some_and(|e| e.addr.contains(':'));
    EndpointSlice {
        key: ObjectKey::new("default", name),
        service: Some(ObjectKey::new("default", service)),
        address_type: if v6 {
            AddressType::Ipv6
        } else {
            AddressType::Ipv4
        },
        endpoints: eps
            .iter()
            .map(|e| Endpoint {
                address: Some(ip(e.addr)),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                node_name: e.node.map(Into::into),
                pod_name: Some(format!("pod-{}", e.addr).into()),
                extra: e.hints.clone().map(|hints| {
                    Box::new(EndpointExtra {
                        hints: Some(hints),
                        ..EndpointExtra::default()
                    })
                }),
            })
            .collect(),
        ports: ports
            .iter()
            .map(|(n, proto, port)| EndpointPort {
                name: (*n).into(),
                protocol: *proto,
                port: *port,
            })
            .collect(),
    }
}

struct World {
    snapshot: Snapshot,
    host_ports: Vec<HostPort>,
}

impl World {
    fn new() -> Self {
        World {
            snapshot: Snapshot::default(),
            host_ports: Vec::new(),
        }
    }
    fn with_host_ports(mut self, ports: Vec<HostPort>) -> Self {
        self.host_ports = ports;
        self
    }
    fn with(mut self, s: Service, slices: Vec<EndpointSlice>) -> Self {
        for sl in slices {
            self.snapshot
                .endpoint_slices
                .insert(sl.key.clone(), Arc::new(sl));
        }
        self.snapshot.services.insert(s.key.clone(), Arc::new(s));
        self.snapshot.reindex();
        self
    }
    fn fragments(&self) -> Vec<Fragment> {
        let ctx = ctx();
        let map = crate::service_map(&self.snapshot, &ctx);
        let mut out = vec![
            static_fragment(&ctx),
            HostPorts::new(self.host_ports.clone()).fragment,
        ];
        out.extend(
            map.ports
                .iter()
                .map(|p| crate::ruleset::service_fragment(p, &ctx)),
        );
        out.push(crate::ruleset::hairpin_fragment(
            crate::ruleset::local_endpoint_addrs(&map.ports).iter(),
        ));
        out
    }
    fn tracer(&self) -> Tracer {
        let fragments = self.fragments();
        let refs: Vec<&Fragment> = fragments.iter().collect();
        Tracer::new(
            &refs,
            vec![ip(NODE_IP), ip(NODE_IP6), ip("10.42.1.1"), ip("127.0.0.1")],
        )
    }
    fn trace(&self, p: Packet) -> BTreeSet<Fate> {
        self.tracer().trace(&p).expect("trace")
    }
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn reached(addrs: &[(&str, u16)], masquerade: bool) -> BTreeSet<Fate> {
    addrs
        .iter()
        .map(|(a, p)| Fate::Endpoint {
            addr: ip(a),
            port: *p,
            masquerade,
        })
        .collect()
}

fn web() -> World {
    World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![slice(
            "web",
            "web-1",
            &[ep("10.42.1.5", "n1"), ep("10.42.2.6", "n2")],
            &[("http", TCP, 8080)],
        )],
    )
}

#[test]
fn a_cluster_ip_reaches_every_ready_endpoint_and_masquerades_only_off_cluster_sources() {
    let w = web();
    let both = [("10.42.1.5", 8080), ("10.42.2.6", 8080)];
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&both, false)
    );
    assert_eq!(
        w.trace(Packet::tcp(NODE_IP, "10.43.0.20", 80).from_node()),
        reached(&both, true),
        "the node's own traffic is masqueraded"
    );
}

#[test]
fn the_kubernetes_service_reaches_the_api_server_off_the_pod_network() {
    let w = World::new().with(
        service("kubernetes", "10.43.0.1", &[("https", TCP, 443)]),
        vec![slice(
            "kubernetes",
            "kubernetes",
            &[Ep {
                node: None,
                ..ep("198.18.0.2", "")
            }],
            &[("https", TCP, 6443)],
        )],
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.1", 443)),
        reached(&[("198.18.0.2", 6443)], false)
    );
}

fn nodeport(mut w: World, etp: TrafficPolicy) -> World {
    let key = ObjectKey::new("default", "web");
    let s = w
        .snapshot
        .services
        .get_mut(&key)
        .map(Arc::make_mut)
        .unwrap();
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = Some(30080);
    s.external_traffic_policy = etp;
    w
}

#[test]
fn a_node_port_answers_on_the_node_addresses_only() {
    let w = nodeport(web(), TrafficPolicy::Cluster);
    let both = [("10.42.1.5", 8080), ("10.42.2.6", 8080)];
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 30080)),
        reached(&both, true)
    );
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", "10.42.1.1", 30080)),
        [Fate::Passed { masquerade: false }].into(),
        "never on the pod gateway"
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_source_and_stays_on_the_node() {
    let w = nodeport(web(), TrafficPolicy::Local);
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 30080)),
        reached(&[("10.42.1.5", 8080)], false)
    );
    // Pods and the node itself are short-circuited to every endpoint.
    let both = [("10.42.1.5", 8080), ("10.42.2.6", 8080)];
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", NODE_IP, 30080)),
        reached(&both, false)
    );
    assert_eq!(
        w.trace(Packet::tcp(NODE_IP, NODE_IP, 30080).from_node()),
        reached(&both, true)
    );
    // A node without a local endpoint drops (no reset).
    let remote_only = nodeport(
        World::new().with(
            service("web", "10.43.0.20", &[("http", TCP, 80)]),
            vec![slice(
                "web",
                "web-1",
                &[ep("10.42.2.6", "n2")],
                &[("http", TCP, 8080)],
            )],
        ),
        TrafficPolicy::Local,
    );
    assert_eq!(
        remote_only.trace(Packet::tcp("198.51.100.7", NODE_IP, 30080)),
        [Fate::Dropped].into()
    );
    // Pods are still short-circuited to every endpoint there: the no-endpoint check runs
    // after DNAT, as kube-proxy's does.
    assert_eq!(
        remote_only.trace(Packet::tcp("10.42.1.9", NODE_IP, 30080)),
        reached(&[("10.42.2.6", 8080)], false)
    );
}

#[test]
fn internal_traffic_policy_local_uses_local_endpoints_only() {
    let mut w = web();
    w.snapshot
        .services
        .get_mut(&ObjectKey::new("default", "web"))
        .map(Arc::make_mut)
        .unwrap()
        .internal_traffic_policy = TrafficPolicy::Local;
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080)], false)
    );
}

#[test]
fn internal_traffic_policy_local_without_a_local_endpoint_drops() {
    let mut w = World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![slice(
            "web",
            "web-1",
            &[ep("10.42.2.6", "n2")],
            &[("http", TCP, 8080)],
        )],
    );
    w.snapshot
        .services
        .get_mut(&ObjectKey::new("default", "web"))
        .map(Arc::make_mut)
        .unwrap()
        .internal_traffic_policy = TrafficPolicy::Local;
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        [Fate::Dropped].into()
    );
}

#[test]
fn load_balancer_ips_and_external_ips_with_source_ranges() {
    let mut w = nodeport(web(), TrafficPolicy::Cluster);
    {
        let s = w
            .snapshot
            .services
            .get_mut(&ObjectKey::new("default", "web"))
            .map(Arc::make_mut)
            .unwrap();
        s.service_type = ServiceType::LoadBalancer;
        s.load_balancer_ips = vec![ip("203.0.113.5")];
        s.external_ips = vec![ip("203.0.113.9")];
        s.load_balancer_source_ranges = vec!["198.51.100.0/25".parse().unwrap()];
    }
    let both = [("10.42.1.5", 8080), ("10.42.2.6", 8080)];
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", "203.0.113.5", 80)),
        reached(&both, true)
    );
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.200", "203.0.113.5", 80)),
        [Fate::Dropped].into(),
        "outside loadBalancerSourceRanges"
    );
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.200", "203.0.113.9", 80)),
        reached(&both, true),
        "source ranges apply to load-balancer IPs, not externalIPs"
    );
}

#[test]
fn terminating_endpoints_are_used_only_when_no_ready_one_exists() {
    let w = World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![slice(
            "web",
            "web-1",
            &[terminating(ep("10.42.1.5", "n1")), ep("10.42.2.6", "n2")],
            &[("http", TCP, 8080)],
        )],
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.2.6", 8080)], false)
    );
    let only_terminating = World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![slice(
            "web",
            "web-1",
            &[terminating(ep("10.42.1.5", "n1"))],
            &[("http", TCP, 8080)],
        )],
    );
    assert_eq!(
        only_terminating.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080)], false)
    );
}

#[test]
fn named_target_ports_are_resolved_per_endpoint() {
    let w = World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![
            slice(
                "web",
                "web-1",
                &[ep("10.42.1.5", "n1")],
                &[("http", TCP, 8080)],
            ),
            slice(
                "web",
                "web-2",
                &[ep("10.42.2.6", "n2")],
                &[("http", TCP, 9090)],
            ),
        ],
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080), ("10.42.2.6", 9090)], false)
    );
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_masqueraded() {
    let w = web();
    let fates = w.trace(Packet::tcp("10.42.1.5", "10.43.0.20", 80));
    assert!(fates.contains(&Fate::Endpoint {
        addr: ip("10.42.1.5"),
        port: 8080,
        masquerade: true
    }));
    assert!(fates.contains(&Fate::Endpoint {
        addr: ip("10.42.2.6"),
        port: 8080,
        masquerade: false
    }));
}

#[test]
fn no_endpoints_rejects_a_wrong_port_rejects_and_an_unallocated_address_drops() {
    let w = World::new()
        .with(
            service("empty", "10.43.0.30", &[("", TCP, 80), ("dns", UDP, 53)]),
            vec![],
        )
        .with(
            service("web", "10.43.0.20", &[("http", TCP, 80)]),
            web()
                .snapshot
                .endpoint_slices
                .values()
                .map(|s| (**s).clone())
                .collect(),
        );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.30", 80)),
        [Fate::Rejected(RejectKind::TcpReset)].into()
    );
    assert_eq!(
        w.trace(Packet::udp("10.42.1.9", "10.43.0.30", 53)),
        [Fate::Rejected(RejectKind::PortUnreachable)].into()
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 81)),
        [Fate::Rejected(RejectKind::TcpReset)].into(),
        "a live ClusterIP on a port it does not serve"
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.7.7", 80)),
        [Fate::Dropped].into()
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.10", 53)),
        [Fate::Passed { masquerade: false }].into(),
        "the DNS address is exempt"
    );
}

#[test]
fn headless_and_external_name_services_get_no_rules() {
    let mut headless = service("db", "10.43.0.40", &[("", TCP, 5432)]);
    headless.headless = true;
    headless.cluster_ips.clear();
    let mut alias = service("alias", "10.43.0.41", &[("", TCP, 80)]);
    alias.service_type = ServiceType::ExternalName;
    let w = World::new().with(headless, vec![]).with(alias, vec![]);
    let map = crate::service_map(&w.snapshot, &ctx());
    assert!(map.ports.is_empty(), "{:?}", map.ports);
    assert!(map.problems.is_empty());
}

#[test]
fn a_dual_stack_service_gets_rules_per_family() {
    let w = World::new().with(
        service("web", "10.43.0.20,fd43::20", &[("http", TCP, 80)]),
        vec![
            slice(
                "web",
                "web-4",
                &[ep("10.42.1.5", "n1")],
                &[("http", TCP, 8080)],
            ),
            slice(
                "web",
                "web-6",
                &[ep("fd42::1:5", "n1")],
                &[("http", TCP, 8080)],
            ),
        ],
    );
    assert_eq!(
        w.trace(Packet::tcp("fd42::1:9", "fd43::20", 80)),
        reached(&[("fd42::1:5", 8080)], false)
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080)], false)
    );
}

#[test]
fn topology_hints_narrow_the_cluster_set_when_every_endpoint_has_them() {
    let hinted = |e: Ep, zone: &str| Ep {
        hints: Some(Hints {
            for_zones: vec![zone.into()],
            for_nodes: vec![],
        }),
        ..e
    };
    let w = World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![slice(
            "web",
            "web-1",
            &[
                hinted(ep("10.42.1.5", "n1"), "z1"),
                hinted(ep("10.42.2.6", "n2"), "z2"),
            ],
            &[("http", TCP, 8080)],
        )],
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080)], false)
    );
    // One endpoint without hints: hints are ignored.
    let partial = World::new().with(
        service("web", "10.43.0.20", &[("http", TCP, 80)]),
        vec![slice(
            "web",
            "web-1",
            &[hinted(ep("10.42.1.5", "n1"), "z1"), ep("10.42.2.6", "n2")],
            &[("http", TCP, 8080)],
        )],
    );
    assert_eq!(
        partial.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080), ("10.42.2.6", 8080)], false)
    );
}

#[test]
fn client_ip_affinity_records_and_follows_the_client() {
    let mut w = web();
    w.snapshot
        .services
        .get_mut(&ObjectKey::new("default", "web"))
        .map(Arc::make_mut)
        .unwrap()
        .session_affinity = SessionAffinity::ClientIp {
        timeout: Duration::from_secs(600),
    };
    let script = {
        let mut state = ProxyState::new(ctx());
        state.plan(&w.snapshot, &ctx(), true).transaction().script()
    };
    assert!(
        script.contains("flags dynamic,timeout; timeout 10m;"),
        "{script}"
    );
    assert!(script.contains("update @aff_"), "{script}");
    assert!(script.contains("ip saddr @aff_"), "{script}");
}

#[test]
fn a_value_skein_cannot_read_is_reported_and_the_service_left_out() {
    let mut bad = service("bad", "10.43.0.50", &[("", TCP, 80)]);
    bad.problems = vec!["spec.externalIPs[0] \"nope\" is not an IP address".into()];
    let w = web().with(bad, vec![]);
    let map = crate::service_map(&w.snapshot, &ctx());
    assert_eq!(map.problems.len(), 1);
    assert_eq!(map.problems[0].service.to_string(), "default/bad");
    assert!(map.problems[0].reason.contains("spec.externalIPs[0]"));
    assert!(map.ports.iter().any(|p| p.service.name() == "web"));
}

#[test]
fn two_services_claiming_one_external_ip_and_port_are_reported_and_the_first_kept() {
    let mut a = service("a", "10.43.0.60", &[("", TCP, 80)]);
    a.external_ips = vec![ip("203.0.113.9")];
    let mut b = service("b", "10.43.0.61", &[("", TCP, 80)]);
    b.external_ips = vec![ip("203.0.113.9")];
    let eps = |s: &str| vec![slice(s, s, &[ep("10.42.1.5", "n1")], &[("", TCP, 80)])];
    let w = World::new().with(a, eps("a")).with(b, eps("b"));
    let mut state = ProxyState::new(ctx());
    state.plan(&w.snapshot, &ctx(), true);
    let problems = state.computation().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].service.to_string(), "default/b");
    assert!(problems[0].reason.contains("203.0.113.9"), "{problems:?}");
    assert!(problems[0].reason.contains("default/a"), "{problems:?}");
}

#[test]
fn a_second_plan_with_nothing_changed_is_empty() {
    let w = web();
    let mut state = ProxyState::new(ctx());
    let first = state.plan(&w.snapshot, &ctx(), true);
    assert!(first.changed > 0);
    let again = state.plan(&w.snapshot, &ctx(), false);
    assert!(again.is_empty(), "{again:?}");
    let full = state.plan(&w.snapshot, &ctx(), true);
    assert!(
        full.is_empty(),
        "a full plan against a true mirror: {full:?}"
    );
}

/// `web` without its local endpoint (10.42.1.5).
fn without_local_endpoint(w: &World) -> Snapshot {
    let mut next = w.snapshot.clone();
    next.endpoint_slices
        .get_mut(&ObjectKey::new("default", "web-1"))
        .map(Arc::make_mut)
        .unwrap()
        .endpoints
        .remove(0);
    next.reindex();
    next
}

#[test]
fn one_endpoint_change_of_a_map_picked_port_changes_only_elements() {
    let other = service("other", "10.43.0.70", &[("", TCP, 80)]);
    let w = web().with(
        other,
        vec![slice(
            "other",
            "other",
            &[ep("10.42.1.7", "n1")],
            &[("", TCP, 80)],
        )],
    );
    let mut state = ProxyState::new(ctx());
    let first = state.plan(&w.snapshot, &ctx(), true).transaction().script();
    assert!(
        !first.contains("svc_"),
        "ClusterIP-only ports need no chain: {first}"
    );
    let plan = state.plan(&without_local_endpoint(&w), &ctx(), false);
    let script = plan.transaction().script();
    assert!(!script.contains("other"), "{script}");
    assert!(!script.contains("chain"), "elements only: {script}");
    assert!(plan.delete_later.is_empty(), "{:?}", plan.delete_later);
    // One endpoint left: the port moves to the ports with one endpoint, whose entry is the
    // remaining endpoint; the gone endpoint's hairpin pair goes with it. No verdict map changes.
    assert!(
        script.contains("delete element inet skein service_pick_2 { 10.43.0.20 . tcp . 80 }"),
        "{script}"
    );
    assert!(
        script.contains("add element inet skein service_pick_1 { 10.43.0.20 . tcp . 80 }"),
        "{script}"
    );
    assert!(!script.contains("service_ips"), "{script}");
    assert!(
        script.contains(
            "add element inet skein service_endpoints { 10.43.0.20 . tcp . 80 . 0x00000000 : 10.42.2.6 . 8080 }"
        ),
        "{script}"
    );
    assert!(
        script.contains("delete element inet skein hairpin { 10.42.1.5 . 10.42.1.5 }"),
        "{script}"
    );
    let after = World {
        snapshot: without_local_endpoint(&w),
        ..web()
    };
    assert_eq!(
        after.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.2.6", 8080)], false)
    );
}

#[test]
fn one_endpoint_change_of_a_port_with_chains_rewrites_only_its_chains() {
    let mut w = web();
    w.snapshot
        .services
        .get_mut(&ObjectKey::new("default", "web"))
        .map(Arc::make_mut)
        .unwrap()
        .session_affinity = SessionAffinity::ClientIp {
        timeout: Duration::from_secs(600),
    };
    let mut state = ProxyState::new(ctx());
    state.plan(&w.snapshot, &ctx(), true);
    let plan = state.plan(&without_local_endpoint(&w), &ctx(), false);
    let script = plan.transaction().script();
    // The Service chain is rewritten for one endpoint; the gone endpoint's chain and affinity
    // set are flushed now and deleted later.
    assert!(script.contains("flush chain inet skein svc_"), "{script}");
    assert!(script.contains("flush chain inet skein ep_"), "{script}");
    assert_eq!(plan.delete_later.len(), 2, "{:?}", plan.delete_later);
    let deletions = state.deletions(&plan.delete_later).script();
    assert!(
        deletions.starts_with("delete chain inet skein ep_"),
        "{deletions}"
    );
    assert!(
        deletions.contains("delete set inet skein aff_"),
        "{deletions}"
    );
}

#[test]
fn a_service_without_endpoints_moves_from_the_dispatch_map_to_the_reject_map() {
    let w = web();
    let mut state = ProxyState::new(ctx());
    state.plan(&w.snapshot, &ctx(), true);
    let mut next = w.snapshot.clone();
    next.endpoint_slices.clear();
    next.reindex();
    let script = state.plan(&next, &ctx(), false).transaction().script();
    assert!(
        script.contains("delete element inet skein service_pick_2 { 10.43.0.20 . tcp . 80 }"),
        "{script}"
    );
    assert!(
        script.contains(
            "add element inet skein no_endpoint_ips { 10.43.0.20 . tcp . 80 : goto proxy_reject }"
        ),
        "{script}"
    );
}

#[test]
fn chains_land_before_the_dispatch_entries_that_reach_them() {
    let w = web();
    let mut state = ProxyState::new(ctx());
    let tx = state.plan(&w.snapshot, &ctx(), true).transaction();
    let first_element = tx
        .ops
        .iter()
        .position(|op| {
            matches!(op, Op::AddElements { set, .. }
                if set == "service_ips" || set.starts_with("service_pick"))
        })
        .expect("a dispatch entry");
    let last_rule = tx
        .ops
        .iter()
        .rposition(|op| matches!(op, Op::AddRule { .. }))
        .expect("rules");
    assert!(last_rule < first_element, "{}", tx.script());
    // A port's endpoints are in the data map before the port is in its pick set.
    let endpoints = tx
        .ops
        .iter()
        .position(|op| matches!(op, Op::AddElements { set, .. } if set == "service_endpoints"))
        .expect("endpoints");
    assert!(endpoints < first_element, "{}", tx.script());
}

#[test]
fn big_plans_are_cut_into_bounded_transactions_at_group_boundaries() {
    let mut w = World::new();
    for i in 0..300u16 {
        let name = format!("s{i}");
        let mut s = service(&name, &format!("10.43.1.{}", i % 250), &[("", TCP, 80 + i)]);
        s.cluster_ips = vec![ip(&format!("10.43.{}.{}", 1 + i / 250, i % 250))];
        w = w.with(
            s,
            vec![slice(
                Box::leak(name.clone().into_boxed_str()),
                &name,
                &[ep("10.42.1.5", "n1")],
                &[("", TCP, 80)],
            )],
        );
    }
    let mut state = ProxyState::new(ctx());
    let mut plan = state.plan(&w.snapshot, &ctx(), true);
    let all = plan.transaction().ops;
    let txs = plan.take_transactions(500);
    assert!(txs.len() > 2, "{}", txs.len());
    let packed: Vec<Op> = txs.iter().flat_map(|t| t.ops.iter().cloned()).collect();
    assert_eq!(packed, all, "every op, once, in order");
    // A flushed chain is refilled in the same transaction.
    for tx in &txs {
        let flushed: Vec<&String> = tx
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::FlushChain(c) => Some(c),
                _ => None,
            })
            .collect();
        for other in txs.iter().filter(|t| !std::ptr::eq(*t, tx)) {
            assert!(
                !other
                    .ops
                    .iter()
                    .any(|op| matches!(op, Op::AddRule { chain, .. } if flushed.contains(&chain)))
            );
        }
    }
}

#[test]
fn the_tracer_refuses_a_rule_shape_it_does_not_know() {
    let mut f = static_fragment(&ctx());
    let nat = f
        .chains
        .iter()
        .position(|c| c.chain.name == crate::ruleset::CHAIN_NAT_PRE)
        .expect("the nat chain");
    f.chains[nat].rules.insert(
        0,
        skein_nft::Rule::new(Vec::new(), skein_nft::Action::MssClampToRouteMtu),
    );
    let tracer = Tracer::new(&[&f], vec![]);
    let err = tracer
        .trace(&Packet::tcp("10.42.1.9", "10.43.0.20", 80))
        .expect_err("unknown shape");
    assert!(err.to_string().contains("does not know"), "{err}");
}

fn udp_world(endpoints: &[&'static str]) -> World {
    let eps: Vec<Ep> = endpoints.iter().map(|a| ep(a, "n1")).collect();
    let mut s = service("dns", "10.43.0.53", &[("dns", UDP, 53)]);
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = Some(30053);
    let slices = if eps.is_empty() {
        vec![]
    } else {
        vec![slice("dns", "dns-1", &eps, &[("dns", UDP, 5353)])]
    };
    World::new().with(s, slices)
}

fn udp_of(w: &World) -> crate::stale_flows::UdpPorts {
    let map = crate::service_map(&w.snapshot, &ctx());
    crate::stale_flows::udp_ports(map.ports.iter())
}

#[test]
fn a_udp_endpoint_that_leaves_has_its_flows_cleared() {
    use crate::stale_flows::{StaleFlow, stale_flows};
    let before = udp_of(&udp_world(&["10.42.1.5", "10.42.2.6"]));
    let after = udp_of(&udp_world(&["10.42.2.6"]));
    let flows = stale_flows(&before, &after);
    assert_eq!(
        flows,
        [
            StaleFlow::Nat {
                dst: "10.43.0.53:53".parse().unwrap(),
                endpoint: ip("10.42.1.5")
            },
            StaleFlow::PortNat {
                port: 30053,
                endpoint: ip("10.42.1.5")
            },
        ]
        .into()
    );
    assert!(stale_flows(&after, &after).is_empty());
}

#[test]
fn a_udp_port_that_gets_its_first_endpoint_has_its_unnated_flows_cleared() {
    use crate::stale_flows::{StaleFlow, stale_flows};
    let before = udp_of(&udp_world(&[]));
    let after = udp_of(&udp_world(&["10.42.1.5"]));
    assert_eq!(
        stale_flows(&before, &after),
        [
            StaleFlow::Unnated {
                dst: "10.43.0.53:53".parse().unwrap()
            },
            StaleFlow::PortUnnated { port: 30053 },
        ]
        .into()
    );
    // TCP ports are left alone: their connections end on their own.
    let tcp = udp_of(&web());
    assert!(tcp.is_empty());
}

/// A hostPort of pod `pod` (at `addr`, container port 80).
fn host_port(pod: &str, addr: &str, host_port: u16, host_ip: Option<&str>) -> HostPort {
    HostPort {
        pod: ObjectKey::new("default", pod),
        addr: ip(addr),
        port: 80,
        host_port,
        protocol: L4Proto::Tcp,
        host_ip: host_ip.map(ip),
    }
}

fn udp(mut p: HostPort) -> HostPort {
    p.protocol = L4Proto::Udp;
    p
}

#[test]
fn a_host_port_reaches_its_pod_on_the_nodes_addresses_with_the_clients_source_kept() {
    let w = World::new().with_host_ports(vec![host_port("web-1", "10.42.1.5", 8080, None)]);
    let pod = reached(&[("10.42.1.5", 80)], false);
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 8080)),
        pod,
        "from outside the cluster"
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", NODE_IP, 8080)),
        pod,
        "from another pod on the node"
    );
    assert_eq!(
        w.trace(Packet::tcp("198.18.0.12", NODE_IP, 8080)),
        pod,
        "from another node (its pods leave masqueraded to it)"
    );
    assert_eq!(
        w.trace(Packet::tcp(NODE_IP, NODE_IP, 8080).from_node()),
        pod,
        "from the node itself"
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.42.1.1", 8080)),
        pod,
        "on the pod gateway too: it is one of the node's addresses, as with portmap"
    );
    for (what, packet) in [
        (
            "another protocol",
            Packet::udp("198.51.100.7", NODE_IP, 8080),
        ),
        ("another port", Packet::tcp("198.51.100.7", NODE_IP, 8081)),
        (
            "an address not the node's",
            Packet::tcp("10.42.1.9", "203.0.113.1", 8080),
        ),
        (
            "the node's IPv6 address",
            Packet::tcp("fd18::99", NODE_IP6, 8080),
        ),
    ] {
        assert_eq!(
            w.trace(packet),
            [Fate::Passed { masquerade: false }].into(),
            "{what}"
        );
    }
}

#[test]
fn a_pod_reaching_its_own_host_port_is_masqueraded() {
    let w = World::new().with_host_ports(vec![host_port("web-1", "10.42.1.5", 8080, None)]);
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.5", NODE_IP, 8080)),
        reached(&[("10.42.1.5", 80)], true)
    );
}

#[test]
fn a_host_ip_restricts_the_port_to_that_address_and_others_may_hold_it_elsewhere() {
    // The conformance test's three pods: one port on 127.0.0.1, on the node's address, and
    // there over UDP.
    let w = World::new().with_host_ports(vec![
        host_port("pod1", "10.42.1.5", 54321, Some("127.0.0.1")),
        host_port("pod2", "10.42.1.6", 54321, Some(NODE_IP)),
        udp(host_port("pod3", "10.42.1.7", 54321, Some(NODE_IP))),
    ]);
    assert_eq!(
        w.trace(Packet::tcp(NODE_IP, "127.0.0.1", 54321).from_node()),
        reached(&[("10.42.1.5", 80)], false)
    );
    assert_eq!(
        w.trace(Packet::tcp(NODE_IP, NODE_IP, 54321).from_node()),
        reached(&[("10.42.1.6", 80)], false)
    );
    assert_eq!(
        w.trace(Packet::udp(NODE_IP, NODE_IP, 54321).from_node()),
        reached(&[("10.42.1.7", 80)], false)
    );
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.42.1.1", 54321)),
        [Fate::Passed { masquerade: false }].into(),
        "no mapping on the pod gateway"
    );
    let mut state = ProxyState::new(ctx());
    state.set_host_ports(w.host_ports.clone());
    state.plan(&w.snapshot, &ctx(), true);
    assert!(state.computation().host_port_clashes.is_empty());

    // A host IP bound to a mapping for any address: the host IP's own is looked up first.
    let both = World::new().with_host_ports(vec![
        host_port("any", "10.42.1.5", 8080, None),
        host_port("bound", "10.42.1.6", 8080, Some(NODE_IP)),
    ]);
    assert_eq!(
        both.trace(Packet::tcp("198.51.100.7", NODE_IP, 8080)),
        reached(&[("10.42.1.6", 80)], false)
    );
    assert_eq!(
        both.trace(Packet::tcp("10.42.1.9", "10.42.1.1", 8080)),
        reached(&[("10.42.1.5", 80)], false)
    );
}

#[test]
fn an_unspecified_host_ip_binds_every_address_of_its_family_only() {
    let w = World::new().with_host_ports(vec![
        host_port("v4", "10.42.1.5", 8080, Some("0.0.0.0")),
        host_port("v6", "fd42::1:5", 8080, Some("::")),
        host_port("v6", "fd42::1:5", 9090, None),
        // A host IP of the other family forwards nothing (the store never pairs them).
        host_port("mixed", "10.42.1.6", 7070, Some("fd18::11")),
    ]);
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 8080)),
        reached(&[("10.42.1.5", 80)], false)
    );
    assert_eq!(
        w.trace(Packet::tcp("fd18::99", NODE_IP6, 8080)),
        reached(&[("fd42::1:5", 80)], false)
    );
    assert_eq!(
        w.trace(Packet::tcp("fd42::1:5", NODE_IP6, 9090)),
        reached(&[("fd42::1:5", 80)], true),
        "the IPv6 hairpin"
    );
    assert_eq!(
        w.trace(Packet::tcp("fd18::99", NODE_IP6, 7070)),
        [Fate::Passed { masquerade: false }].into()
    );
}

#[test]
fn two_pods_claiming_one_host_port_are_reported_and_the_first_keeps_it() {
    let ports = vec![
        host_port("first", "10.42.1.5", 8080, None),
        host_port("second", "10.42.1.6", 8080, None),
        // Its own other family, and another port, are no clash.
        host_port("second", "fd42::1:6", 8080, None),
        host_port("second", "10.42.1.6", 8081, None),
    ];
    let w = World::new().with_host_ports(ports.clone());
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 8080)),
        reached(&[("10.42.1.5", 80)], false)
    );
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 8081)),
        reached(&[("10.42.1.6", 80)], false)
    );
    let mut state = ProxyState::new(ctx());
    state.set_host_ports(ports);
    state.plan(&w.snapshot, &ctx(), true);
    let clashes = state.computation().host_port_clashes;
    assert_eq!(clashes.len(), 1, "{clashes:?}");
    assert_eq!(clashes[0].pod.to_string(), "default/second");
    assert_eq!(
        clashes[0].reason,
        "hostPort 8080/tcp is already taken by pod default/first"
    );
}

#[test]
fn a_host_port_is_looked_up_before_a_node_port_of_the_same_number() {
    let w = nodeport(web(), TrafficPolicy::Cluster).with_host_ports(vec![host_port(
        "hp",
        "10.42.1.7",
        30080,
        None,
    )]);
    assert_eq!(
        w.trace(Packet::tcp("198.51.100.7", NODE_IP, 30080)),
        reached(&[("10.42.1.7", 80)], false)
    );
    // The ClusterIP is no node address: the Service keeps it.
    assert_eq!(
        w.trace(Packet::tcp("10.42.1.9", "10.43.0.20", 80)),
        reached(&[("10.42.1.5", 8080), ("10.42.2.6", 8080)], false)
    );
}

#[test]
fn host_ports_are_diffed_like_a_service_and_only_their_change_is_sent() {
    let w = web();
    let mut state = ProxyState::new(ctx());
    state.set_host_ports(vec![host_port("a", "10.42.1.5", 8080, None)]);
    let first = state.plan(&w.snapshot, &ctx(), true).transaction().script();
    assert!(first.contains("add chain inet skein hp_"), "{first}");
    assert!(
        first.contains("add element inet skein host_ports { tcp . 8080 : goto hp_"),
        "{first}"
    );

    // The same again: nothing to send, also on a full plan against the mirror.
    state.set_host_ports(vec![host_port("a", "10.42.1.5", 8080, None)]);
    assert!(state.plan(&w.snapshot, &ctx(), false).is_empty());
    assert!(state.plan(&w.snapshot, &ctx(), true).is_empty());

    // A second pod's port: one chain and one element, no Service touched.
    state.set_host_ports(vec![
        host_port("a", "10.42.1.5", 8080, None),
        host_port("b", "10.42.1.6", 9090, Some(NODE_IP)),
    ]);
    let plan = state.plan(&w.snapshot, &ctx(), false);
    let script = plan.transaction().script();
    assert!(!script.contains("svc_"), "{script}");
    assert!(!script.contains("8080"), "{script}");
    assert!(
        script
            .contains("add element inet skein host_ip_ports { 198.18.0.11 . tcp . 9090 : goto hp_"),
        "{script}"
    );
    assert_eq!(plan.changed, 2, "{script}");

    // The first pod gone: its element out, its chain flushed now and deleted later.
    state.set_host_ports(vec![host_port("b", "10.42.1.6", 9090, Some(NODE_IP))]);
    let plan = state.plan(&w.snapshot, &ctx(), false);
    let script = plan.transaction().script();
    assert!(
        script.contains("delete element inet skein host_ports { tcp . 8080 : goto hp_"),
        "{script}"
    );
    assert!(script.contains("flush chain inet skein hp_"), "{script}");
    assert!(!script.contains("9090"), "{script}");
    assert_eq!(plan.delete_later.len(), 1, "{:?}", plan.delete_later);
    assert!(
        state
            .deletions(&plan.delete_later)
            .script()
            .starts_with("delete chain inet skein hp_")
    );

    // A Service change leaves the host ports alone; a full plan agrees with the mirror.
    let mut next = w.snapshot.clone();
    next.endpoint_slices.clear();
    next.reindex();
    let script = state.plan(&next, &ctx(), false).transaction().script();
    assert!(!script.contains("hp_"), "{script}");
    assert!(state.plan(&next, &ctx(), true).is_empty());
}

#[test]
fn a_restart_adopting_the_kernels_host_ports_keeps_them() {
    // What a restarted daemon does: a full plan against the kernel's table, with the host
    // ports the store kept set before it. The chains and elements already there stay.
    let ports = vec![host_port("a", "10.42.1.5", 8080, None)];
    let w = web();
    let mut before = ProxyState::new(ctx());
    before.set_host_ports(ports.clone());
    before.plan(&w.snapshot, &ctx(), true);
    let mut after = ProxyState::new(ctx());
    after.adopt(before.mirror().clone());
    after.set_host_ports(ports);
    let plan = after.plan(&w.snapshot, &ctx(), true);
    assert!(plan.is_empty(), "{}", plan.transaction().script());
    // Without them, the restart would take the host port away.
    let mut forgetful = ProxyState::new(ctx());
    forgetful.adopt(before.mirror().clone());
    let script = forgetful
        .plan(&w.snapshot, &ctx(), true)
        .transaction()
        .script();
    assert!(script.contains("flush chain inet skein hp_"), "{script}");
}

#[test]
fn udp_flows_of_a_host_port_are_cleared_when_it_appears_and_when_its_pod_changes() {
    use crate::stale_flows::{StaleFlow, host_udp_ports, stale_flows};
    let programmed = |ports: Vec<HostPort>| host_udp_ports(&HostPorts::new(ports).programmed);
    let none = programmed(vec![]);
    let a = programmed(vec![
        udp(host_port("a", "10.42.1.5", 5353, None)),
        udp(host_port("a", "10.42.1.5", 514, Some(NODE_IP))),
        host_port("a", "10.42.1.5", 8080, None),
    ]);
    // New ports: the flows that reached the node unNATed before them (as portmap clears).
    assert_eq!(
        stale_flows(&none, &a),
        [
            StaleFlow::Unnated {
                dst: "198.18.0.11:514".parse().unwrap()
            },
            StaleFlow::PortUnnated { port: 5353 },
        ]
        .into()
    );
    assert!(stale_flows(&a, &a).is_empty());
    // Another pod takes the port: the flows DNATed to the first one go.
    let b = programmed(vec![udp(host_port("b", "10.42.1.6", 5353, None))]);
    assert_eq!(
        stale_flows(&a, &b),
        [
            StaleFlow::Nat {
                dst: "198.18.0.11:514".parse().unwrap(),
                endpoint: ip("10.42.1.5")
            },
            StaleFlow::PortNat {
                port: 5353,
                endpoint: ip("10.42.1.5")
            },
        ]
        .into()
    );
    // A port left out in a clash is no flow of its pod's.
    let clash = programmed(vec![
        udp(host_port("a", "10.42.1.5", 5353, None)),
        udp(host_port("b", "10.42.1.6", 5353, None)),
    ]);
    assert_eq!(clash.len(), 1);
    assert!(
        stale_flows(&a, &clash)
            .iter()
            .all(|f| !matches!(f, StaleFlow::PortNat { .. }))
    );
}

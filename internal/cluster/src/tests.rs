//! Unit tests: distillation from API objects written as JSON manifests, event folding, health,
//! error wording and the debounce, all without an API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::core::Status;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::annotations::patch_error;
use crate::connect::{ConfigSource, config_source, load};
use crate::health::{HealthState, describe};
use crate::state::{ClusterState, Report};
use crate::view::{Debounce, Outputs, run};
use crate::*;

fn api<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test manifest")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---- distillation ----

#[test]
fn node_pod_cidrs_prefer_the_list_and_fall_back_to_the_single_field() {
    let cases = [
        (
            json!({"podCIDRs": ["10.42.1.0/24", "fd00:42:1::/64"], "podCIDR": "10.99.0.0/24"}),
            vec!["10.42.1.0/24", "fd00:42:1::/64"],
        ),
        (json!({"podCIDR": "10.42.2.0/24"}), vec!["10.42.2.0/24"]),
        (
            json!({"podCIDRs": [], "podCIDR": "10.42.3.0/24"}),
            vec!["10.42.3.0/24"],
        ),
        (
            json!({"podCIDRs": ["garbage", "10.42.4.0/24"]}),
            vec!["10.42.4.0/24"],
        ),
        (json!({}), vec![]),
    ];
    for (spec, want) in cases {
        let node: core::Node = api(json!({"metadata": {"name": "n1"}, "spec": spec}));
        let got = Node::from_api(&node).expect("node");
        let want: Vec<ipnet::IpNet> = want.iter().map(|c| c.parse().expect("cidr")).collect();
        assert_eq!(got.pod_cidrs, want, "spec {spec}");
    }
}

#[test]
fn node_internal_ip_is_the_first_parseable_internal_address() {
    let cases = [
        (
            json!([{"type": "Hostname", "address": "n1"},
                   {"type": "ExternalIP", "address": "203.0.113.5"},
                   {"type": "InternalIP", "address": "not-an-ip"},
                   {"type": "InternalIP", "address": "192.168.1.10"},
                   {"type": "InternalIP", "address": "fd00::10"}]),
            Some(ip("192.168.1.10")),
        ),
        (
            json!([{"type": "ExternalIP", "address": "203.0.113.5"}]),
            None,
        ),
        (json!([]), None),
    ];
    for (addresses, want) in cases {
        let node: core::Node =
            api(json!({"metadata": {"name": "n1"}, "status": {"addresses": addresses}}));
        assert_eq!(
            Node::from_api(&node).expect("node").internal_ip,
            want,
            "{addresses}"
        );
    }
}

#[test]
fn node_ready_is_none_when_unknown_or_absent() {
    let cases = [
        (Some("True"), Some(true)),
        (Some("False"), Some(false)),
        (Some("Unknown"), None),
        (None, None),
    ];
    for (status, want) in cases {
        let conditions = match status {
            Some(s) => json!([{"type": "MemoryPressure", "status": "False"},
                              {"type": "Ready", "status": s}]),
            None => json!([{"type": "MemoryPressure", "status": "False"}]),
        };
        let node: core::Node =
            api(json!({"metadata": {"name": "n1"}, "status": {"conditions": conditions}}));
        assert_eq!(
            Node::from_api(&node).expect("node").ready,
            want,
            "{status:?}"
        );
    }
}

#[test]
fn node_keeps_only_skein_annotations_with_full_keys() {
    let node: core::Node = api(json!({
        "metadata": {
            "name": "n1",
            "uid": "u-1",
            "annotations": {
                "skein.dev/underlay-address": "192.168.1.10",
                "skein.dev/wireguard-public-key": "abc=",
                "flannel.alpha.coreos.com/public-ip": "192.168.1.10",
                "skein.devx/other": "no"
            }
        },
        "spec": {"unschedulable": true}
    }));
    let got = Node::from_api(&node).expect("node");
    assert_eq!(
        got.skein,
        map(&[
            ("skein.dev/underlay-address", "192.168.1.10"),
            ("skein.dev/wireguard-public-key", "abc="),
        ])
    );
    assert_eq!(got.uid, "u-1");
    assert!(got.unschedulable);
}

#[test]
fn objects_without_identity_are_skipped() {
    assert!(Node::from_api(&api(json!({"metadata": {}}))).is_none());
    assert!(Pod::from_api(&api(json!({"metadata": {"name": "p"}}))).is_none());
    assert!(Service::from_api(&api(json!({"metadata": {"namespace": "default"}}))).is_none());
}

#[test]
fn namespace_keeps_labels() {
    let ns: core::Namespace = api(json!({"metadata": {"name": "prod",
        "labels": {"kubernetes.io/metadata.name": "prod", "team": "a"}}}));
    assert_eq!(
        Namespace::from_api(&ns),
        Some(Namespace {
            name: "prod".into(),
            labels: map(&[("kubernetes.io/metadata.name", "prod"), ("team", "a")]),
        })
    );
}

#[test]
fn pod_distillation() {
    let pod: core::Pod = api(json!({
        "metadata": {"namespace": "default", "name": "web-1", "uid": "u-p",
                     "labels": {"app": "web"}, "deletionTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"nodeName": "n1", "hostNetwork": false, "containers": []},
        "status": {"phase": "Running", "podIP": "10.42.1.5",
                   "podIPs": [{"ip": "10.42.1.5"}, {"ip": "fd00:42:1::5"}]}
    }));
    assert_eq!(
        Pod::from_api(&pod),
        Some(Pod {
            namespace: "default".into(),
            name: "web-1".into(),
            uid: "u-p".into(),
            node_name: Some("n1".into()),
            pod_ips: vec![ip("10.42.1.5"), ip("fd00:42:1::5")],
            labels: map(&[("app", "web")]),
            phase: PodPhase::Running,
            host_network: false,
            terminating: true,
        })
    );
}

#[test]
fn pod_ips_fall_back_to_pod_ip_and_phase_defaults_to_pending() {
    let cases = [
        (
            json!({"podIP": "10.42.1.6"}),
            vec![ip("10.42.1.6")],
            PodPhase::Pending,
        ),
        (
            json!({"podIPs": [], "podIP": "10.42.1.7", "phase": "Succeeded"}),
            vec![ip("10.42.1.7")],
            PodPhase::Succeeded,
        ),
        (
            json!({"podIPs": [{"ip": "bogus"}], "phase": "Failed"}),
            vec![],
            PodPhase::Failed,
        ),
        (json!({"phase": "Unknown"}), vec![], PodPhase::Unknown),
    ];
    for (status, ips, phase) in cases {
        let pod: core::Pod = api(json!({
            "metadata": {"namespace": "default", "name": "p"},
            "spec": {"hostNetwork": true, "containers": []},
            "status": status
        }));
        let got = Pod::from_api(&pod).expect("pod");
        assert_eq!(got.pod_ips, ips, "{status}");
        assert_eq!(got.phase, phase, "{status}");
        assert!(got.host_network);
        assert!(!got.terminating);
        assert_eq!(got.node_name, None);
    }
}

#[test]
fn service_distillation() {
    let svc: core::Service = api(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.43.0.20",
            "clusterIPs": ["10.43.0.20", "fd00:43::20"],
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                {"name": "https", "protocol": "TCP", "port": 443, "targetPort": "https"},
                {"name": "dns", "protocol": "UDP", "port": 53},
                {"name": "broken", "port": 70000}
            ],
            "externalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "externalIPs": ["203.0.113.9"],
            "healthCheckNodePort": 31000,
            "loadBalancerSourceRanges": ["198.51.100.0/24"]
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.5"},
            {"ip": "203.0.113.6", "ipMode": "Proxy"},
            {"hostname": "lb.example"}
        ]}}
    }));
    assert_eq!(
        Service::from_api(&svc),
        Some(Service {
            key: ObjectKey::new("default", "web"),
            service_type: ServiceType::NodePort,
            cluster_ips: vec![ip("10.43.0.20"), ip("fd00:43::20")],
            headless: false,
            external_name: None,
            selector: map(&[("app", "web")]),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Number(8080),
                    node_port: Some(30080),
                },
                ServicePort {
                    name: "https".into(),
                    protocol: Protocol::Tcp,
                    port: 443,
                    target_port: TargetPort::Name("https".into()),
                    node_port: None,
                },
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    target_port: TargetPort::Number(53),
                    node_port: None,
                },
            ],
            external_traffic_policy: TrafficPolicy::Local,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity: SessionAffinity::ClientIp {
                timeout: Duration::from_secs(60)
            },
            external_ips: vec![ip("203.0.113.9")],
            // ipMode Proxy: the load balancer keeps the destination, the node must not DNAT.
            load_balancer_ips: vec![ip("203.0.113.5")],
            load_balancer_source_ranges: vec!["198.51.100.0/24".parse().unwrap()],
            health_check_node_port: Some(31000),
            publish_not_ready_addresses: false,
            problems: vec![],
        })
    );
}

#[test]
fn a_service_value_that_does_not_parse_is_named_by_its_field() {
    let svc: core::Service = api(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {
            "clusterIP": "10.43.0.20",
            "ports": [{"port": 80}],
            "externalIPs": ["203.0.113.9", "not-an-ip"],
            "loadBalancerSourceRanges": ["198.51.100.0/33"]
        }
    }));
    let got = Service::from_api(&svc).expect("service");
    assert_eq!(got.external_ips, vec![ip("203.0.113.9")]);
    assert_eq!(
        got.problems,
        vec![
            "spec.externalIPs[1] \"not-an-ip\" is not an IP address".to_string(),
            "spec.loadBalancerSourceRanges[0] \"198.51.100.0/33\" is not a CIDR".to_string(),
        ]
    );
}

#[test]
fn service_variants() {
    // (spec, cluster_ips, headless, type, affinity)
    let cases = [
        (
            json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}),
            vec![],
            true,
            ServiceType::ClusterIp,
            SessionAffinity::None,
        ),
        (
            json!({"clusterIP": "10.43.0.30"}),
            vec![ip("10.43.0.30")],
            false,
            ServiceType::ClusterIp,
            SessionAffinity::None,
        ),
        (
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
            vec![],
            false,
            ServiceType::ExternalName,
            SessionAffinity::None,
        ),
        (
            json!({"type": "LoadBalancer", "clusterIPs": ["10.43.0.40"],
                   "sessionAffinity": "ClientIP"}),
            vec![ip("10.43.0.40")],
            false,
            ServiceType::LoadBalancer,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(10800),
            },
        ),
    ];
    for (spec, ips, headless, service_type, affinity) in cases {
        let svc: core::Service =
            api(json!({"metadata": {"namespace": "default", "name": "s"}, "spec": spec}));
        let got = Service::from_api(&svc).expect("service");
        assert_eq!(got.cluster_ips, ips, "{spec}");
        assert_eq!(got.headless, headless, "{spec}");
        assert_eq!(got.service_type, service_type, "{spec}");
        assert_eq!(got.session_affinity, affinity, "{spec}");
    }
    let external: core::Service = api(json!({"metadata": {"namespace": "d", "name": "e"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"}}));
    assert_eq!(
        Service::from_api(&external)
            .expect("service")
            .external_name
            .as_deref(),
        Some("db.example.com")
    );
}

#[test]
fn endpoint_conditions_take_kubernetes_defaults() {
    // (conditions, ready, serving, terminating)
    let cases = [
        (json!(null), true, true, false),
        (json!({}), true, true, false),
        (json!({"ready": false}), false, true, false),
        (
            json!({"ready": false, "serving": true, "terminating": true}),
            false,
            true,
            true,
        ),
        (json!({"serving": false}), true, false, false),
    ];
    for (conditions, ready, serving, terminating) in cases {
        let endpoint: discovery::Endpoint =
            api(json!({"addresses": ["10.42.1.5"], "conditions": conditions}));
        let got = Endpoint::from_api(&endpoint);
        assert_eq!(
            (got.ready, got.serving, got.terminating),
            (ready, serving, terminating),
            "{conditions}"
        );
    }
}

#[test]
fn endpoint_slice_distillation() {
    let slice: discovery::EndpointSlice = api(json!({
        "metadata": {"namespace": "default", "name": "web-abcde",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.42.1.5"], "nodeName": "n1", "hostname": "web-0",
             "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "default"}},
            {"addresses": ["10.42.2.6", "junk"], "conditions": {"ready": false},
             "targetRef": {"kind": "Node", "name": "n2"}}
        ],
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "all"},
            {"port": 53, "protocol": "UDP"}
        ]
    }));
    assert_eq!(
        EndpointSlice::from_api(&slice),
        Some(EndpointSlice {
            key: ObjectKey::new("default", "web-abcde"),
            service: Some(ObjectKey::new("default", "web")),
            address_type: AddressType::Ipv4,
            endpoints: vec![
                Endpoint {
                    address: Some(ip("10.42.1.5")),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("n1".into()),
                    pod_name: Some("web-0".into()),
                    extra: Some(Box::new(EndpointExtra {
                        hostname: Some("web-0".into()),
                        ..EndpointExtra::default()
                    })),
                },
                Endpoint {
                    address: Some(ip("10.42.2.6")),
                    ready: false,
                    serving: true,
                    terminating: false,
                    node_name: None,
                    pod_name: None,
                    extra: None,
                },
            ],
            ports: vec![
                EndpointPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080
                },
                EndpointPort {
                    name: String::new(),
                    protocol: Protocol::Udp,
                    port: 53
                },
            ],
        })
    );
}

#[test]
fn endpoint_slice_address_types() {
    let cases = [
        ("IPv4", Some(AddressType::Ipv4)),
        ("IPv6", Some(AddressType::Ipv6)),
        ("FQDN", Some(AddressType::Fqdn)),
        ("IPv7", None),
    ];
    for (address_type, want) in cases {
        let slice: discovery::EndpointSlice = api(json!({
            "metadata": {"namespace": "default", "name": "s"},
            "addressType": address_type,
            "endpoints": [{"addresses": ["db.example.com"]}]
        }));
        let got = EndpointSlice::from_api(&slice);
        assert_eq!(got.as_ref().map(|s| s.address_type), want, "{address_type}");
        if let Some(got) = got {
            assert_eq!(got.service, None);
            assert_eq!(got.endpoints[0].address, None, "a name is not an IP");
        }
    }
}

#[test]
fn network_policy_spec_is_kept_whole() {
    let spec = json!({"podSelector": {"matchLabels": {"app": "db"}},
                      "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]});
    let policy: networking::NetworkPolicy =
        api(json!({"metadata": {"namespace": "prod", "name": "db"}, "spec": spec.clone()}));
    let got = NetworkPolicy::from_api(&policy).expect("policy");
    assert_eq!((got.namespace.as_str(), got.name.as_str()), ("prod", "db"));
    assert_eq!(*got.spec, api::<networking::NetworkPolicySpec>(spec));

    let bare: networking::NetworkPolicy =
        api(json!({"metadata": {"namespace": "prod", "name": "empty"}}));
    assert_eq!(
        *NetworkPolicy::from_api(&bare).expect("policy").spec,
        networking::NetworkPolicySpec::default()
    );
}

// ---- folding ----

fn node(name: &str, ip: &str) -> core::Node {
    api(json!({"metadata": {"name": name},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
}

fn pod(namespace: &str, name: &str) -> core::Pod {
    api(json!({"metadata": {"namespace": namespace, "name": name}}))
}

fn listed<K>(wrap: fn(Event<K>) -> Report, objects: Vec<K>) -> Vec<Report> {
    let mut reports = vec![wrap(Event::Init)];
    reports.extend(objects.into_iter().map(|o| wrap(Event::InitApply(o))));
    reports.push(wrap(Event::InitDone));
    reports
}

/// Every kind listed; nodes and pods with the given objects, the rest empty.
fn initial_lists(nodes: Vec<core::Node>, pods: Vec<core::Pod>) -> Vec<Report> {
    let mut reports = listed(Report::Node, nodes);
    reports.extend(listed(Report::Namespace, vec![]));
    reports.extend(listed(Report::Pod, pods));
    reports.extend(listed(Report::Service, vec![]));
    reports.extend(listed(Report::EndpointSlice, vec![]));
    reports.extend(listed(Report::NetworkPolicy, vec![]));
    reports
}

fn record_all(state: &mut ClusterState, reports: Vec<Report>, now: SystemTime) {
    for report in reports {
        state.record(report, now);
    }
}

fn forbidden(kind: Kind) -> Report {
    let message = format!(
        "{} is forbidden: User \"system:node:n1\" cannot list resource \"{}\" in API group \"\" \
         at the cluster scope",
        kind.resource(),
        kind.resource()
    );
    let status = Status::failure(&message, "Forbidden").with_code(403);
    Report::Failed {
        kind,
        failure: describe(
            kind,
            &watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status))),
        ),
    }
}

fn refused(kind: Kind) -> Report {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    Report::Failed {
        kind,
        failure: describe(
            kind,
            &watcher::Error::WatchFailed(kube::Error::Service(Box::new(io))),
        ),
    }
}

#[test]
fn nothing_is_published_until_every_kind_is_listed() {
    let mut state = ClusterState::new(at(0));
    let mut reports = initial_lists(vec![node("n1", "192.168.1.1")], vec![]);
    let last = reports.pop().expect("the NetworkPolicy InitDone");
    record_all(&mut state, reports, at(1));
    assert!(!state.synced());
    assert_eq!(state.publish(), None, "five of six kinds is not a snapshot");
    assert!(!state.health().synced);

    state.record(last, at(2));
    assert!(state.synced() && state.health().synced);
    let first = state.publish().expect("first snapshot");
    assert_eq!(first.version, 1);
    assert_eq!(
        first.node("n1").and_then(|n| n.internal_ip),
        Some(ip("192.168.1.1"))
    );
    assert_eq!(state.publish(), None, "nothing changed since");
}

#[test]
fn an_empty_cluster_is_still_published_once_listed() {
    let mut state = ClusterState::new(at(0));
    record_all(&mut state, initial_lists(vec![], vec![]), at(1));
    let first = state.publish().expect("first snapshot");
    assert_eq!(
        *first,
        Snapshot {
            version: 1,
            ..Snapshot::default()
        }
    );
}

#[test]
fn apply_and_delete_change_the_snapshot_and_bump_the_version() {
    let mut state = ClusterState::new(at(0));
    record_all(&mut state, initial_lists(vec![], vec![]), at(1));
    assert_eq!(state.publish().map(|s| s.version), Some(1));

    state.record(Report::Pod(Event::Apply(pod("default", "a"))), at(2));
    state.record(Report::Pod(Event::Apply(pod("default", "b"))), at(2));
    let second = state.publish().expect("changed");
    assert_eq!(second.version, 2);
    assert_eq!(
        second.pods.keys().cloned().collect::<Vec<_>>(),
        vec![
            ObjectKey::new("default", "a"),
            ObjectKey::new("default", "b")
        ]
    );

    // An update that changes nothing skein keeps (a heartbeat, a resourceVersion) is no change.
    state.record(Report::Pod(Event::Apply(pod("default", "a"))), at(3));
    assert_eq!(state.publish(), None);

    state.record(Report::Pod(Event::Delete(pod("default", "a"))), at(4));
    state.record(Report::Pod(Event::Delete(pod("default", "gone"))), at(4));
    let third = state.publish().expect("deleted");
    assert_eq!(third.version, 3);
    assert_eq!(
        third.pods.keys().cloned().collect::<Vec<_>>(),
        vec![ObjectKey::new("default", "b")]
    );
}

#[test]
fn an_update_skein_cannot_read_removes_the_old_version() {
    let mut state = ClusterState::new(at(0));
    let slice = |address_type: &str| -> discovery::EndpointSlice {
        api(json!({"metadata": {"namespace": "d", "name": "s"}, "addressType": address_type}))
    };
    let mut reports = initial_lists(vec![], vec![]);
    reports.push(Report::EndpointSlice(Event::Apply(slice("IPv4"))));
    record_all(&mut state, reports, at(1));
    assert_eq!(state.publish().expect("first").endpoint_slices.len(), 1);
    state.record(Report::EndpointSlice(Event::Apply(slice("IPv9"))), at(2));
    assert!(state.publish().expect("removed").endpoint_slices.is_empty());
}

#[test]
fn a_relist_drops_objects_deleted_while_the_watch_was_down() {
    let mut state = ClusterState::new(at(0));
    record_all(
        &mut state,
        initial_lists(
            vec![node("n1", "192.168.1.1"), node("n2", "192.168.1.2")],
            vec![],
        ),
        at(1),
    );
    state.publish().expect("first");

    // The watch fails; during the outage n2 is deleted and n3 added. The re-list is applied
    // whole at InitDone, and nothing of it shows before.
    state.record(refused(Kind::Node), at(2));
    state.record(Report::Node(Event::Init), at(3));
    state.record(
        Report::Node(Event::InitApply(node("n1", "192.168.1.1"))),
        at(3),
    );
    state.record(
        Report::Node(Event::InitApply(node("n3", "192.168.1.3"))),
        at(3),
    );
    assert_eq!(
        state.publish(),
        None,
        "a half-done re-list is not published"
    );
    state.record(Report::Node(Event::InitDone), at(3));
    let after = state.publish().expect("re-listed");
    assert_eq!(after.version, 2);
    assert_eq!(
        after.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["n1", "n3"]
    );
}

#[test]
fn a_relist_interrupted_by_an_error_starts_over() {
    let mut state = ClusterState::new(at(0));
    record_all(
        &mut state,
        initial_lists(vec![node("n1", "192.168.1.1")], vec![]),
        at(1),
    );
    state.publish().expect("first");
    state.record(Report::Node(Event::Init), at(2));
    state.record(
        Report::Node(Event::InitApply(node("n9", "192.168.1.9"))),
        at(2),
    );
    state.record(refused(Kind::Node), at(2));
    // The watcher starts the list again from the beginning.
    record_all(
        &mut state,
        listed(Report::Node, vec![node("n1", "192.168.1.1")]),
        at(3),
    );
    assert_eq!(
        state.publish(),
        None,
        "same nodes as before: nothing to publish"
    );
    assert_eq!(state.current().nodes.keys().collect::<Vec<_>>(), vec!["n1"]);
}

#[test]
fn errors_keep_the_last_snapshot_in_force() {
    let mut state = ClusterState::new(at(0));
    record_all(
        &mut state,
        initial_lists(vec![node("n1", "192.168.1.1")], vec![pod("default", "a")]),
        at(1),
    );
    let published = state.publish().expect("first");
    for kind in Kind::ALL {
        state.record(refused(kind), at(5));
    }
    // The watchers restart their lists, which then fail too.
    for kind in Kind::ALL {
        state.record(forbidden(kind), at(6));
    }
    assert_eq!(state.publish(), None, "an outage publishes nothing");
    assert_eq!(state.current(), *published, "and changes nothing");
    assert!(!state.health().reachable);
    assert!(state.health().synced, "synced once stays synced");
}

// ---- health ----

#[test]
fn health_follows_every_watch() {
    let mut state = ClusterState::new(at(0));
    assert_eq!(*state.health(), ApiHealth::starting(at(0)));

    // Init is emitted before any request is made: it proves nothing.
    state.record(Report::Node(Event::Init), at(1));
    assert!(!state.health().reachable);
    state.record(Report::Node(Event::InitDone), at(2));
    assert!(state.health().reachable);
    assert_eq!(state.health().since, at(2));

    state.record(forbidden(Kind::NetworkPolicy), at(3));
    let health = state.health().clone();
    assert!(!health.reachable);
    assert_eq!(health.since, at(3));
    let error = health.last_error.expect("error");
    assert!(
        error.starts_with("NetworkPolicy: networkpolicies is forbidden: User"),
        "{error}"
    );

    // Other kinds doing well does not hide the forbidden one.
    state.record(Report::Pod(Event::InitDone), at(4));
    assert!(!state.health().reachable);
    // Nor does the forbidden kind's restart, only its answer.
    state.record(Report::NetworkPolicy(Event::Init), at(5));
    assert!(!state.health().reachable);
    state.record(Report::NetworkPolicy(Event::InitDone), at(6));
    let health = state.health().clone();
    assert!(health.reachable);
    assert_eq!(health.since, at(6));
    assert!(
        health.last_error.is_some(),
        "the last error is kept after recovery"
    );
}

#[test]
fn an_expired_watch_is_not_an_outage() {
    let mut health = HealthState::new(at(0));
    health.answered(Kind::Pod, at(1));
    let gone = Status::failure("too old resource version: 1 (2)", "Expired").with_code(410);
    let failure = describe(Kind::Pod, &watcher::Error::WatchError(Box::new(gone)));
    assert!(!failure.outage);
    health.failed(Kind::Pod, failure, at(2));
    assert!(health.health().reachable);
    assert_eq!(health.health().since, at(1));
    assert_eq!(health.health().last_error, None);
}

#[test]
fn watch_errors_are_worded_for_a_person() {
    let api_error = |code: u16, message: &str| {
        kube::Error::Api(Box::new(Status::failure(message, "").with_code(code)))
    };
    let refused = || {
        kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        )))
    };
    // (kind, error, expected fragments)
    let cases: Vec<(Kind, watcher::Error, Vec<&str>)> = vec![
        (
            Kind::Node,
            watcher::Error::InitialListFailed(api_error(
                403,
                "nodes is forbidden: User \"x\" cannot list resource \"nodes\" in API group \"\" \
                 at the cluster scope",
            )),
            vec![
                "Node: nodes is forbidden: User \"x\" cannot list resource \"nodes\" in API group \
                 \"\" at the cluster scope",
                "ClusterRole `skein`",
            ],
        ),
        (
            Kind::EndpointSlice,
            watcher::Error::WatchStartFailed(api_error(403, "")),
            vec![
                "EndpointSlice: ",
                "watch",
                "endpointslices",
                "ClusterRole `skein`",
            ],
        ),
        (
            Kind::Pod,
            watcher::Error::WatchFailed(refused()),
            vec![
                "Pod: the Kubernetes API is unreachable",
                "Connection refused (os error 111)",
            ],
        ),
        (
            Kind::Service,
            watcher::Error::InitialListFailed(api_error(401, "Unauthorized")),
            vec!["Service: ", "credentials", "401"],
        ),
        (
            Kind::Namespace,
            watcher::Error::InitialListFailed(api_error(500, "etcdserver: request timed out")),
            vec![
                "Namespace: ",
                "500",
                "list namespaces",
                "etcdserver: request timed out",
            ],
        ),
    ];
    for (kind, error, fragments) in cases {
        let failure = describe(kind, &error);
        assert!(failure.outage, "{}", failure.message);
        for fragment in fragments {
            assert!(
                failure.message.contains(fragment),
                "{:?} lacks {fragment:?}",
                failure.message
            );
        }
        assert!(
            !failure.message.contains("ServiceError"),
            "{}",
            failure.message
        );
    }
}

// ---- the watch loop ----

#[test]
fn debounce_is_due_one_window_after_the_first_change() {
    let window = Duration::from_millis(30);
    let t0 = tokio::time::Instant::now();
    let mut debounce = Debounce::new(window);
    assert_eq!(debounce.due(), None);
    debounce.changed(t0);
    debounce.changed(t0 + Duration::from_millis(20));
    assert_eq!(
        debounce.due(),
        Some(t0 + window),
        "later changes join the batch"
    );
    debounce.due_now(t0 + Duration::from_millis(25));
    assert_eq!(debounce.due(), Some(t0 + Duration::from_millis(25)));
    debounce.fired();
    assert_eq!(debounce.due(), None);
    debounce.changed(t0 + Duration::from_millis(40));
    assert_eq!(debounce.due(), Some(t0 + Duration::from_millis(70)));
}

#[tokio::test(start_paused = true)]
async fn the_loop_publishes_the_first_listing_at_once_and_then_debounces() {
    let window = Duration::from_millis(30);
    let (reports, stream) = futures::channel::mpsc::unbounded();
    let (snapshots_tx, snapshots) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (health_tx, health) = tokio::sync::watch::channel(ApiHealth::starting(at(0)));
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run(
        stream,
        ClusterState::new(at(0)),
        window,
        Outputs {
            snapshots: snapshots_tx,
            health: health_tx,
        },
        cancel.clone(),
    ));
    let send = |report| reports.unbounded_send(report).expect("loop alive");
    let settle = || tokio::time::sleep(Duration::from_millis(1));

    for report in initial_lists(vec![node("n1", "192.168.1.1")], vec![]) {
        send(report);
    }
    settle().await;
    assert_eq!(
        snapshots.borrow().version,
        1,
        "first listing without waiting"
    );
    assert!(health.borrow().synced && health.borrow().reachable);

    send(Report::Pod(Event::Apply(pod("default", "a"))));
    tokio::time::sleep(Duration::from_millis(20)).await;
    send(Report::Pod(Event::Apply(pod("default", "b"))));
    tokio::time::sleep(Duration::from_millis(8)).await;
    assert_eq!(snapshots.borrow().version, 1, "still inside the window");
    tokio::time::sleep(Duration::from_millis(3)).await;
    let second = snapshots.borrow().clone();
    assert_eq!(second.version, 2);
    assert_eq!(second.pods.len(), 2, "both changes in one snapshot");

    // An outage changes the health, never the snapshot.
    send(refused(Kind::Pod));
    tokio::time::sleep(window * 3).await;
    assert!(Arc::ptr_eq(&snapshots.borrow(), &second));
    assert!(!health.borrow().reachable);

    cancel.cancel();
    task.await.expect("the loop ends when cancelled");
}

// ---- annotations ----

#[test]
fn annotation_patch_is_a_merge_of_skein_keys_only() {
    let ok = map(&[
        (ANNOTATION_UNDERLAY_ADDRESS, "192.168.1.10"),
        ("skein.dev/wireguard-public-key", "abc="),
    ]);
    assert_eq!(
        annotation_patch(&ok).expect("valid"),
        json!({"metadata": {"annotations": {
            "skein.dev/underlay-address": "192.168.1.10",
            "skein.dev/wireguard-public-key": "abc="
        }}})
    );
    for bad in [
        "flannel.alpha.coreos.com/public-ip",
        "skein.dev/",
        "skein.dev/-x",
        "skein.dev/a/b",
        "underlay-address",
    ] {
        let err = annotation_patch(&map(&[(ANNOTATION_UNDERLAY_ADDRESS, "x"), (bad, "y")]))
            .expect_err(bad);
        assert!(matches!(err, ClusterError::AnnotationKey { .. }), "{err}");
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn patch_errors_name_resource_and_verb() {
    let status = |code: u16, message: &str| {
        kube::Error::Api(Box::new(Status::failure(message, "").with_code(code)))
    };
    let denied = patch_error(
        "n1",
        status(
            403,
            "nodes \"n1\" is forbidden: User \"system:serviceaccount:kube-system:skein\" cannot \
             patch resource \"nodes\" in API group \"\" at the cluster scope",
        ),
    )
    .to_string();
    assert!(
        denied.starts_with("cannot patch nodes n1: nodes \"n1\" is forbidden"),
        "{denied}"
    );
    assert!(denied.contains("`patch` on `nodes`"), "{denied}");

    let bare = patch_error("n1", status(403, "")).to_string();
    assert!(bare.contains("patch") && bare.contains("nodes"), "{bare}");

    let missing = patch_error("n1", status(404, "nodes \"n1\" not found"));
    assert!(
        matches!(missing, ClusterError::NodeNotFound { .. }),
        "{missing}"
    );

    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    let down = patch_error("n1", kube::Error::Service(Box::new(io))).to_string();
    assert!(
        down.contains("unreachable") && down.contains("connection refused"),
        "{down}"
    );
}

// ---- client configuration ----

#[test]
fn config_source_precedence() {
    let tmp = tempfile::tempdir().expect("tmp");
    let k3s = tmp.path().join("k3s.yaml");
    let absent = tmp.path().join("absent.yaml");
    std::fs::write(&k3s, "").expect("touch");
    // (setting, KUBERNETES_SERVICE_HOST set, k3s file, expected)
    let cases = [
        (
            "/etc/skein/kubeconfig",
            true,
            &k3s,
            ConfigSource::Setting("/etc/skein/kubeconfig".into()),
        ),
        ("", true, &k3s, ConfigSource::InCluster),
        ("", false, &k3s, ConfigSource::K3s(k3s.clone())),
        ("", false, &absent, ConfigSource::Missing),
    ];
    for (setting, in_cluster, k3s_path, want) in cases {
        assert_eq!(
            config_source(setting, in_cluster, k3s_path),
            want,
            "{setting:?} {in_cluster}"
        );
    }
}

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://192.0.2.1:6443
    insecure-skip-tls-verify: true
users:
- name: test
  user:
    token: not-a-real-token
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
";

#[tokio::test]
async fn a_kubeconfig_file_is_loaded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("kubeconfig");
    std::fs::write(&path, KUBECONFIG).expect("write");
    let config = client_config(path.to_str().expect("utf-8"))
        .await
        .expect("loads");
    assert_eq!(config.cluster_url.to_string(), "https://192.0.2.1:6443/");
    let from_k3s = load(ConfigSource::K3s(path)).await.expect("loads");
    assert_eq!(from_k3s.cluster_url, config.cluster_url);
    client(config).expect("a client is built without connecting");
}

#[tokio::test]
async fn kubeconfig_errors_name_the_setting_and_the_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("missing.yaml");
    let garbled = tmp.path().join("garbled.yaml");
    std::fs::write(&garbled, "clusters: [").expect("write");
    for path in [&missing, &garbled] {
        let err = client_config(path.to_str().expect("utf-8"))
            .await
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("cluster.kubeconfig"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let err = load(ConfigSource::K3s(missing.clone()))
        .await
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("k3s") && err.contains("cluster.kubeconfig is empty"),
        "{err}"
    );

    let err = load(ConfigSource::Missing)
        .await
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("set cluster.kubeconfig"), "{err}");
    assert!(err.contains(K3S_KUBELET_KUBECONFIG), "{err}");
}

// ---- packaging ----

/// The API group of each watched kind, as RBAC rules name it.
fn api_group(kind: Kind) -> &'static str {
    match kind {
        Kind::Node | Kind::Namespace | Kind::Pod | Kind::Service => "",
        Kind::EndpointSlice => "discovery.k8s.io",
        Kind::NetworkPolicy => "networking.k8s.io",
    }
}

/// Verbs by (apiGroup, resource), as an RBAC role grants them.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// Every (apiGroup, resource) the ClusterRole `skein` in packaging/rbac.yaml grants, with its
/// verbs, read as Kubernetes reads the file; and the subjects bound to it.
fn packaged_rbac() -> (Grants, Vec<serde_yaml::Value>) {
    use serde::Deserialize;
    let text = include_str!("../../../packaging/rbac.yaml");
    let mut grants = Grants::new();
    let mut subjects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let object = serde_yaml::Value::deserialize(document).expect("rbac.yaml is YAML");
        let strings = |v: &serde_yaml::Value| -> Vec<String> {
            v.as_sequence()
                .map(|s| {
                    s.iter()
                        .map(|x| x.as_str().expect("a string").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        match object["kind"].as_str() {
            Some("ClusterRole") if object["metadata"]["name"] == "skein" => {
                for rule in object["rules"].as_sequence().expect("rules") {
                    for group in strings(&rule["apiGroups"]) {
                        for resource in strings(&rule["resources"]) {
                            grants
                                .entry((group.clone(), resource))
                                .or_default()
                                .extend(strings(&rule["verbs"]));
                        }
                    }
                }
            }
            Some("ClusterRoleBinding") if object["roleRef"]["name"] == "skein" => {
                subjects.extend(object["subjects"].as_sequence().expect("subjects").clone());
            }
            _ => {}
        }
    }
    (grants, subjects)
}

#[test]
fn the_packaged_role_grants_exactly_the_reads_skein_makes_and_no_write() {
    let (grants, _) = packaged_rbac();
    let verbs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // What the watches use (list, watch), and the one get: this node's own object at start.
    let want: Grants = Kind::ALL
        .into_iter()
        .map(|kind| {
            let needed = if kind == Kind::Node {
                verbs(&["get", "list", "watch"])
            } else {
                verbs(&["list", "watch"])
            };
            (
                (api_group(kind).to_string(), kind.resource().to_string()),
                needed,
            )
        })
        .collect();
    // Exactly: a missing verb breaks skein; an extra one (above all patch or update on nodes,
    // which would let any node rewrite another's WireGuard key) is access it must not have.
    assert_eq!(grants, want);
}

#[test]
fn the_packaged_role_is_bound_to_the_nodes_own_identities_only() {
    let (_, subjects) = packaged_rbac();
    let subjects: Vec<(String, String)> = subjects
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap_or_default().to_string(),
                s["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [("Group".to_string(), "system:nodes".to_string())],
        "each node's skein authenticates as that node, which NodeRestriction confines"
    );
}

// ---- the node announcement ----

fn announced() -> NodeAnnouncement {
    NodeAnnouncement {
        underlay_address: Some("198.18.0.11".parse().expect("ip")),
        wireguard_public_key: Some(WireGuardPublicKey([7; 32])),
        wireguard_endpoint: Some("198.18.0.11:51820".parse().expect("endpoint")),
    }
}

#[test]
fn an_announcement_reads_back_from_its_annotations() {
    let a = announced();
    let annotations = a.to_annotations();
    assert_eq!(
        annotations[ANNOTATION_WIREGUARD_PUBLIC_KEY],
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
    );
    assert_eq!(
        annotations[ANNOTATION_WIREGUARD_ENDPOINT],
        "198.18.0.11:51820"
    );
    assert_eq!(annotations[ANNOTATION_UNDERLAY_ADDRESS], "198.18.0.11");
    assert_eq!(
        NodeAnnouncement::from_annotations(&annotations).expect("valid"),
        a
    );
    let v6 = NodeAnnouncement {
        wireguard_endpoint: Some("[fd00::11]:51820".parse().expect("endpoint")),
        ..a
    };
    assert_eq!(
        v6.to_annotations()[ANNOTATION_WIREGUARD_ENDPOINT],
        "[fd00::11]:51820"
    );
    assert_eq!(
        NodeAnnouncement::from_annotations(&v6.to_annotations()).expect("valid"),
        v6
    );
}

#[test]
fn an_empty_announcement_writes_nothing_and_missing_annotations_are_absent_fields() {
    assert!(NodeAnnouncement::default().to_annotations().is_empty());
    let only_address = map(&[(ANNOTATION_UNDERLAY_ADDRESS, "fd00::11")]);
    let a = NodeAnnouncement::from_annotations(&only_address).expect("valid");
    assert_eq!(a.underlay_address, Some("fd00::11".parse().expect("ip")));
    assert_eq!((a.wireguard_public_key, a.wireguard_endpoint), (None, None));
    let other = map(&[("skein.dev/something-else", "x")]);
    assert_eq!(
        NodeAnnouncement::from_annotations(&other).expect("ignored"),
        NodeAnnouncement::default()
    );
}

#[test]
fn a_bad_announcement_names_each_annotation_and_value() {
    let bad = map(&[
        (ANNOTATION_UNDERLAY_ADDRESS, "198.18.0.300"),
        (ANNOTATION_WIREGUARD_PUBLIC_KEY, "bm90IGEga2V5"),
        (ANNOTATION_WIREGUARD_ENDPOINT, "198.18.0.11"),
    ]);
    let err = NodeAnnouncement::from_annotations(&bad)
        .expect_err("invalid")
        .to_string();
    for part in [
        "skein.dev/underlay-address = \"198.18.0.300\" is not an IP address",
        "skein.dev/wireguard-public-key = \"bm90IGEga2V5\" is not a WireGuard public key",
        "skein.dev/wireguard-endpoint = \"198.18.0.11\" is not address:port",
    ] {
        assert!(err.contains(part), "{err} should say {part}");
    }
}

#[test]
fn public_keys_are_32_bytes_of_base64() {
    let key = WireGuardPublicKey([1; 32]);
    assert_eq!(WireGuardPublicKey::from_base64(&key.to_base64()), Some(key));
    assert_eq!(
        WireGuardPublicKey::from_base64(&format!(" {}\n", key.to_base64())),
        Some(key)
    );
    assert_eq!(WireGuardPublicKey::from_base64("AAAA"), None, "3 bytes");
    assert_eq!(WireGuardPublicKey::from_base64("not base64!"), None);
}

/// A watch that fails once and then says nothing, as kube's watcher does when it resumes a
/// broken watch of a quiet kind.
fn fails_then_quiet(kind: Kind) -> futures::stream::BoxStream<'static, Report> {
    use futures::StreamExt;
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
    let failed = Report::Failed {
        kind,
        failure: describe(
            kind,
            &watcher::Error::WatchStartFailed(kube::Error::Service(Box::new(io))),
        ),
    };
    futures::stream::iter([failed])
        .chain(futures::stream::pending())
        .boxed()
}

#[tokio::test(start_paused = true)]
async fn a_failed_quiet_kind_is_answered_again_once_a_probe_gets_through() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    // The API is back from the third probe on.
    let probe = move || {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move { n >= 3 }
    };
    let every = Duration::from_secs(2);
    let mut reports =
        crate::view::with_recovery_probe(fails_then_quiet(Kind::Pod), Kind::Pod, every, probe);

    let mut state = ClusterState::new(at(0));
    record_all(&mut state, initial_lists(vec![], vec![]), at(1));
    assert!(state.health().reachable);
    let started = tokio::time::Instant::now();
    let first = reports.next().await.expect("the failure");
    assert!(matches!(
        first,
        Report::Failed {
            kind: Kind::Pod,
            ..
        }
    ));
    state.record(first, at(2));
    assert!(!state.health().reachable);

    let second = reports.next().await.expect("the probe's answer");
    assert!(matches!(second, Report::Answered(Kind::Pod)), "{second:?}");
    assert_eq!(probes.load(Ordering::SeqCst), 3);
    assert_eq!(started.elapsed(), every * 3, "one probe per interval");
    state.record(second, at(3));
    assert!(state.health().reachable, "{:?}", state.health());
    assert_eq!(state.health().since, at(3));

    // Answered, the kind is not probed again.
    let quiet = tokio::time::timeout(every * 10, reports.next()).await;
    assert!(quiet.is_err(), "nothing more: {quiet:?}");
    assert_eq!(probes.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_kind_that_never_failed_is_never_probed() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    let probe = move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { true }
    };
    let watch = futures::stream::iter([Report::Pod(Event::Apply(pod("default", "a")))])
        .chain(futures::stream::pending())
        .boxed();
    let mut reports =
        crate::view::with_recovery_probe(watch, Kind::Pod, Duration::from_secs(2), probe);
    assert!(matches!(reports.next().await, Some(Report::Pod(_))));
    let quiet = tokio::time::timeout(Duration::from_secs(60), reports.next()).await;
    assert!(quiet.is_err());
    assert_eq!(probes.load(Ordering::SeqCst), 0);
}

/// What one publish costs at 10,000 Services (each with a slice of 5 endpoints) and 10,000 pods:
/// `cargo test --release -p skein-cluster timing_of_a_publish -- --ignored --nocapture`.
#[test]
#[ignore = "timing: run with --release --ignored --nocapture"]
fn timing_of_a_publish_at_ten_thousand_services() {
    let n = 10_000;
    let services: Vec<core::Service> = (0..n)
        .map(|i| {
            api(
                json!({"metadata": {"namespace": "bench", "name": format!("svc-{i}")},
                "spec": {"clusterIP": format!("10.43.{}.{}", i / 250, i % 250),
                         "ports": [{"port": 80, "protocol": "TCP"}]}}),
            )
        })
        .collect();
    let slices: Vec<discovery::EndpointSlice> = (0..n)
        .map(|i| {
            let endpoints: Vec<serde_json::Value> = (0..5)
                .map(|j| json!({"addresses": [format!("10.42.{}.{}", (i * 5 + j) / 250 % 250, (i * 5 + j) % 250)],
                                "conditions": {"ready": true}, "nodeName": "n2"}))
                .collect();
            api(json!({"metadata": {"namespace": "bench", "name": format!("svc-{i}-abc"),
                            "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"port": 8080, "protocol": "TCP"}]}))
        })
        .collect();
    let pods: Vec<core::Pod> = (0..n).map(|i| pod("bench", &format!("pod-{i}"))).collect();
    let mut state = ClusterState::new(at(0));
    let mut reports = listed(Report::Node, vec![node("n1", "192.168.1.1")]);
    reports.extend(listed(Report::Namespace, vec![]));
    reports.extend(listed(Report::Pod, pods));
    reports.extend(listed(Report::Service, services));
    reports.extend(listed(Report::EndpointSlice, slices.clone()));
    reports.extend(listed(Report::NetworkPolicy, vec![]));
    record_all(&mut state, reports, at(1));
    state.publish().expect("first");
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let mut one = slices[7].clone();
        one.endpoints.as_mut().map(Vec::pop);
        state.record(Report::EndpointSlice(Event::Apply(one)), at(2));
        state.publish();
        state.record(
            Report::EndpointSlice(Event::Apply(slices[7].clone())),
            at(3),
        );
        state.publish();
    }
    println!(
        "one publish: {:.2} ms",
        started.elapsed().as_secs_f64() * 1000.0 / 40.0
    );
}

#[test]
fn the_slice_index_kept_one_slice_at_a_time_equals_one_built_whole() {
    let slice = |name: &str, service: &str, addr: &str| -> discovery::EndpointSlice {
        api(json!({"metadata": {"namespace": "default", "name": name,
                        "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
            "ports": [{"port": 80, "protocol": "TCP"}]}))
    };
    let mut state = ClusterState::new(at(0));
    record_all(&mut state, initial_lists(vec![], vec![]), at(1));
    let steps = vec![
        Event::Apply(slice("web-b", "web", "10.42.1.2")),
        Event::Apply(slice("web-a", "web", "10.42.1.1")),
        Event::Apply(slice("db-a", "db", "10.42.2.1")),
        // A new version of one slice, then one that moves to another Service.
        Event::Apply(slice("web-a", "web", "10.42.1.9")),
        Event::Apply(slice("web-b", "db", "10.42.1.2")),
        Event::Delete(slice("db-a", "db", "10.42.2.1")),
    ];
    for (i, step) in steps.into_iter().enumerate() {
        state.record(Report::EndpointSlice(step), at(2 + i as u64));
        let snapshot = state.publish().expect("a change");
        assert_eq!(
            snapshot.slices_by_service,
            Snapshot::index_slices(&snapshot.endpoint_slices),
            "after step {i}"
        );
    }
    let snapshot = state.publish().unwrap_or_else(|| Arc::new(state.current()));
    let names = |service: &str| -> Vec<String> {
        snapshot
            .slices_of(&ObjectKey::new("default", service))
            .iter()
            .map(|s| s.key.name().to_owned())
            .collect()
    };
    assert_eq!(names("web"), ["web-a"]);
    assert_eq!(names("db"), ["web-b"]);
}

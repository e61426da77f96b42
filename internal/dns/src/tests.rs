//! Table-driven tests of the naming rules and negative answers: queries built and answers
//! parsed with hickory-proto, so every answer is also checked to be a well-formed message.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skein_cluster::{EndpointSlice, Namespace, ObjectKey, Pod, Service, Snapshot};

use crate::answer::{DEFAULT_MAX_UDP, Outcome, Transport, respond};
use crate::index::{PodRecords, ZoneConfig, build};
use crate::name;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn service(ns: &str, name: &str, spec: core::ServiceSpec) -> Arc<Service> {
    Arc::new(
        Service::from_api(&core::Service {
            metadata: meta(ns, name),
            spec: Some(spec),
            ..Default::default()
        })
        .expect("service"),
    )
}

fn port(name: &str, number: i32, protocol: &str) -> core::ServicePort {
    core::ServicePort {
        name: Some(name.into()),
        port: number,
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// A slice of `service` with (address, hostname, ready) endpoints and one port `name`/`number`.
fn slice(
    ns: &str,
    service: &str,
    name: &str,
    eps: &[(&str, Option<&str>, bool)],
    port: (&str, i32),
) -> Arc<EndpointSlice> {
    let mut m = meta(ns, name);
    m.labels = Some(
        [(
            "kubernetes.io/service-name".to_string(),
            service.to_string(),
        )]
        .into(),
    );
    Arc::new(
        EndpointSlice::from_api(&discovery::EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.iter()
                    .map(|(ip, host, ready)| discovery::Endpoint {
                        addresses: vec![ip.to_string()],
                        hostname: host.map(Into::into),
                        conditions: Some(discovery::EndpointConditions {
                            ready: Some(*ready),
                            serving: Some(*ready),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![discovery::EndpointPort {
                name: Some(port.0.into()),
                port: Some(port.1),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
        .expect("slice"),
    )
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot {
        version: 7,
        ..Default::default()
    };
    for ns in ["default", "kube-system", "quiet"] {
        s.namespaces.insert(
            ns.into(),
            Namespace {
                name: ns.into(),
                labels: Default::default(),
            },
        );
    }
    let mut add = |ns: &str, name: &str, spec: core::ServiceSpec| {
        s.services
            .insert(ObjectKey::new(ns, name), service(ns, name, spec));
    };
    add(
        "default",
        "front",
        core::ServiceSpec {
            cluster_ip: Some("10.43.0.20".into()),
            cluster_ips: Some(vec!["10.43.0.20".into()]),
            ports: Some(vec![port("http", 80, "TCP"), port("", 8125, "UDP")]),
            ..Default::default()
        },
    );
    let headless = |ports: Vec<core::ServicePort>, publish: bool| core::ServiceSpec {
        cluster_ip: Some("None".into()),
        cluster_ips: Some(vec!["None".into()]),
        ports: Some(ports),
        publish_not_ready_addresses: Some(publish),
        ..Default::default()
    };
    add(
        "default",
        "db",
        headless(vec![port("pg", 5432, "TCP")], false),
    );
    add(
        "default",
        "all",
        headless(vec![port("pg", 5432, "TCP")], true),
    );
    add(
        "default",
        "big",
        headless(vec![port("pg", 5432, "TCP")], false),
    );
    add(
        "default",
        "ext",
        core::ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("example.test".into()),
            ..Default::default()
        },
    );
    add(
        "default",
        "alias",
        core::ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("front.default.svc.cluster.local".into()),
            ..Default::default()
        },
    );
    let eps = [
        ("10.42.1.5", Some("db-0"), true),
        ("10.42.1.6", None, true),
        ("10.42.1.7", None, false),
    ];
    for (svc, slice_name) in [("db", "db-a"), ("all", "all-a")] {
        s.endpoint_slices.insert(
            ObjectKey::new("default", slice_name),
            slice("default", svc, slice_name, &eps, ("pg", 5432)),
        );
    }
    let many: Vec<String> = (0..250).map(|i| format!("10.42.2.{}", i + 1)).collect();
    let many: Vec<(&str, Option<&str>, bool)> =
        many.iter().map(|ip| (ip.as_str(), None, true)).collect();
    s.endpoint_slices.insert(
        ObjectKey::new("default", "big-a"),
        slice("default", "big", "big-a", &many, ("pg", 5432)),
    );
    s.pods.insert(
        ObjectKey::new("default", "web"),
        Pod {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            node_name: None,
            pod_ips: vec!["10.42.1.9".parse().unwrap()],
            labels: Default::default(),
            phase: skein_cluster::PodPhase::Running,
            host_network: false,
            terminating: false,
        },
    );
    s.reindex();
    s
}

fn config(pods: PodRecords) -> ZoneConfig {
    ZoneConfig {
        domain: "cluster.local".into(),
        ttl: 5,
        pods,
        dns_ips: vec!["10.43.0.10".parse().unwrap()],
        reverse_cidrs: vec![
            "10.42.0.0/16".parse().unwrap(),
            "10.43.0.0/16".parse().unwrap(),
        ],
    }
}

fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// The answer of the default index over `transport`, parsed.
fn ask_with(pods: PodRecords, query: &[u8], transport: Transport) -> Message {
    let index = build(&snapshot(), &config(pods));
    let mut out = Vec::new();
    match respond(&index, query, transport, DEFAULT_MAX_UDP, &mut out) {
        Outcome::Answer(_) => Message::from_vec(&out).expect("the answer parses"),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn ask(name: &str, rtype: RecordType) -> Message {
    ask_with(
        PodRecords::Insecure,
        &query_bytes(name, rtype, None),
        Transport::Udp,
    )
}

/// Each answer record as `owner TYPE data`, sorted.
fn answers(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    v.sort();
    v
}

#[test]
fn names_in_wire_form() {
    assert_eq!(
        name::wire("Front.default."),
        Some(b"\x05front\x07default\x00".to_vec())
    );
    assert_eq!(name::wire(""), Some(vec![0]));
    assert_eq!(name::wire("a..b"), None, "an empty label");
    assert_eq!(name::wire(&"x".repeat(64)), None, "a label over 63 bytes");
    let long = vec!["a".repeat(63); 4].join(".");
    assert_eq!(name::wire(&long), None, "a name over 255 bytes");
    let zone = name::wire("cluster.local").unwrap();
    assert!(name::is_within(
        &name::wire("a.svc.cluster.local").unwrap(),
        &zone
    ));
    assert!(name::is_within(&zone, &zone));
    assert!(
        !name::is_within(&name::wire("xcluster.local").unwrap(), &zone),
        "label-wise, not byte-wise"
    );
    assert_eq!(
        name::text(&name::reverse("10.42.1.5".parse().unwrap())),
        "5.1.42.10.in-addr.arpa."
    );
    assert!(name::text(&name::reverse("fd00::1".parse().unwrap())).starts_with("1.0.0.0."));
    assert_eq!(name::dashed("10.42.1.5".parse().unwrap()), "10-42-1-5");
    assert_eq!(name::dashed("fd00::1".parse().unwrap()), "fd00--1");
    assert_eq!(
        name::undashed(b"10-42-1-5"),
        Some("10.42.1.5".parse().unwrap())
    );
    assert_eq!(name::undashed(b"fd00--1"), Some("fd00::1".parse().unwrap()));
    assert_eq!(name::undashed(b"10-42-1"), None);
    assert_eq!(name::undashed(b"web"), None);
}

/// (question, type, response code, the answer records). An empty list with NOERROR is NODATA.
#[test]
fn records_and_negative_answers() {
    use RecordType::*;
    let nodata: &[&str] = &[];
    let cases: &[(&str, RecordType, ResponseCode, &[&str])] = &[
        (
            "dns-version.cluster.local.",
            TXT,
            ResponseCode::NoError,
            &["dns-version.cluster.local. TXT 1.1.0"],
        ),
        (
            "cluster.local.",
            NS,
            ResponseCode::NoError,
            &["cluster.local. NS ns.dns.cluster.local."],
        ),
        (
            "ns.dns.cluster.local.",
            A,
            ResponseCode::NoError,
            &["ns.dns.cluster.local. A 10.43.0.10"],
        ),
        (
            "front.default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            &["front.default.svc.cluster.local. A 10.43.0.20"],
        ),
        (
            "front.default.svc.cluster.local.",
            AAAA,
            ResponseCode::NoError,
            nodata,
        ),
        (
            "front.default.svc.cluster.local.",
            MX,
            ResponseCode::NoError,
            nodata,
        ),
        (
            "_http._tcp.front.default.svc.cluster.local.",
            SRV,
            ResponseCode::NoError,
            &[
                "_http._tcp.front.default.svc.cluster.local. SRV 0 100 80 front.default.svc.cluster.local.",
            ],
        ),
        (
            "front.default.svc.cluster.local.",
            SRV,
            ResponseCode::NoError,
            &[
                "front.default.svc.cluster.local. SRV 0 100 80 front.default.svc.cluster.local.",
                "front.default.svc.cluster.local. SRV 0 100 8125 front.default.svc.cluster.local.",
            ],
        ),
        // An unnamed port has no SRV name of its own; its protocol's label has no records.
        (
            "_udp.front.default.svc.cluster.local.",
            SRV,
            ResponseCode::NXDomain,
            nodata,
        ),
        (
            "_tcp.front.default.svc.cluster.local.",
            SRV,
            ResponseCode::NoError,
            nodata,
        ),
        (
            "_https._tcp.front.default.svc.cluster.local.",
            SRV,
            ResponseCode::NXDomain,
            nodata,
        ),
        (
            "20.0.43.10.in-addr.arpa.",
            PTR,
            ResponseCode::NoError,
            &["20.0.43.10.in-addr.arpa. PTR front.default.svc.cluster.local."],
        ),
        // The names between the zone and a Service exist.
        (
            "default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            nodata,
        ),
        ("quiet.svc.cluster.local.", A, ResponseCode::NoError, nodata),
        ("svc.cluster.local.", A, ResponseCode::NoError, nodata),
        ("pod.cluster.local.", A, ResponseCode::NoError, nodata),
        ("nope.svc.cluster.local.", A, ResponseCode::NXDomain, nodata),
        (
            "missing.default.svc.cluster.local.",
            A,
            ResponseCode::NXDomain,
            nodata,
        ),
        (
            "x.front.default.svc.cluster.local.",
            A,
            ResponseCode::NXDomain,
            nodata,
        ),
        // Headless: ready endpoints, named by hostname or dashed address.
        (
            "db.default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            &[
                "db.default.svc.cluster.local. A 10.42.1.5",
                "db.default.svc.cluster.local. A 10.42.1.6",
            ],
        ),
        (
            "db-0.db.default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            &["db-0.db.default.svc.cluster.local. A 10.42.1.5"],
        ),
        (
            "10-42-1-6.db.default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            &["10-42-1-6.db.default.svc.cluster.local. A 10.42.1.6"],
        ),
        (
            "10-42-1-7.db.default.svc.cluster.local.",
            A,
            ResponseCode::NXDomain,
            nodata,
        ),
        (
            "_pg._tcp.db.default.svc.cluster.local.",
            SRV,
            ResponseCode::NoError,
            &[
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 10-42-1-6.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
            ],
        ),
        // An address in two headless Services: a PTR for each name (as CoreDNS).
        (
            "5.1.42.10.in-addr.arpa.",
            PTR,
            ResponseCode::NoError,
            &[
                "5.1.42.10.in-addr.arpa. PTR db-0.all.default.svc.cluster.local.",
                "5.1.42.10.in-addr.arpa. PTR db-0.db.default.svc.cluster.local.",
            ],
        ),
        (
            "6.1.42.10.in-addr.arpa.",
            PTR,
            ResponseCode::NoError,
            &[
                "6.1.42.10.in-addr.arpa. PTR 10-42-1-6.all.default.svc.cluster.local.",
                "6.1.42.10.in-addr.arpa. PTR 10-42-1-6.db.default.svc.cluster.local.",
            ],
        ),
        // Not ready, but the Service publishes every address.
        (
            "7.1.42.10.in-addr.arpa.",
            PTR,
            ResponseCode::NoError,
            &["7.1.42.10.in-addr.arpa. PTR 10-42-1-7.all.default.svc.cluster.local."],
        ),
        // publishNotReadyAddresses: every endpoint.
        (
            "all.default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            &[
                "all.default.svc.cluster.local. A 10.42.1.5",
                "all.default.svc.cluster.local. A 10.42.1.6",
                "all.default.svc.cluster.local. A 10.42.1.7",
            ],
        ),
        // ExternalName into the zone: the CNAME and the target's records.
        (
            "alias.default.svc.cluster.local.",
            A,
            ResponseCode::NoError,
            &[
                "alias.default.svc.cluster.local. CNAME front.default.svc.cluster.local.",
                "front.default.svc.cluster.local. A 10.43.0.20",
            ],
        ),
        (
            "ext.default.svc.cluster.local.",
            CNAME,
            ResponseCode::NoError,
            &["ext.default.svc.cluster.local. CNAME example.test."],
        ),
        // Pod names (insecure: any address, in a namespace that exists).
        (
            "10-42-1-9.default.pod.cluster.local.",
            A,
            ResponseCode::NoError,
            &["10-42-1-9.default.pod.cluster.local. A 10.42.1.9"],
        ),
        (
            "10-42-3-3.default.pod.cluster.local.",
            A,
            ResponseCode::NoError,
            &["10-42-3-3.default.pod.cluster.local. A 10.42.3.3"],
        ),
        (
            "10-42-1-9.default.pod.cluster.local.",
            AAAA,
            ResponseCode::NoError,
            nodata,
        ),
        (
            "10-42-1-9.nowhere.pod.cluster.local.",
            A,
            ResponseCode::NXDomain,
            nodata,
        ),
        (
            "web.default.pod.cluster.local.",
            A,
            ResponseCode::NXDomain,
            nodata,
        ),
        (
            "default.pod.cluster.local.",
            A,
            ResponseCode::NoError,
            nodata,
        ),
        // Reverse zones of the cluster CIDRs: answered here, never forwarded.
        (
            "42.10.in-addr.arpa.",
            SOA,
            ResponseCode::NoError,
            &[
                "42.10.in-addr.arpa. SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5",
            ],
        ),
        ("1.42.10.in-addr.arpa.", PTR, ResponseCode::NoError, nodata),
        (
            "99.99.42.10.in-addr.arpa.",
            PTR,
            ResponseCode::NXDomain,
            nodata,
        ),
    ];
    for (qname, rtype, code, want) in cases {
        let m = ask(qname, *rtype);
        let what = format!("{qname} {rtype}");
        assert_eq!(m.metadata.response_code, *code, "{what}: response code");
        assert!(m.metadata.authoritative, "{what}: authoritative");
        assert_eq!(m.metadata.message_type, MessageType::Response, "{what}");
        assert_eq!(m.metadata.id, 4242, "{what}: the query's ID");
        assert_eq!(answers(&m), *want, "{what}: answers");
        if want.is_empty() {
            // NODATA and NXDOMAIN carry the zone's SOA, its TTL the negative TTL.
            assert_eq!(m.authorities.len(), 1, "{what}: SOA in authority");
            assert_eq!(m.authorities[0].record_type(), SOA, "{what}");
            assert_eq!(m.authorities[0].ttl, 5, "{what}: negative TTL");
            let apex = if qname.ends_with(".in-addr.arpa.") {
                "42.10.in-addr.arpa."
            } else {
                "cluster.local."
            };
            assert_eq!(
                m.authorities[0].name.to_string(),
                apex,
                "{what}: the zone's SOA"
            );
        }
        for r in &m.answers {
            assert_eq!(r.ttl, 5, "{what}: dns.ttl");
        }
    }
}

#[test]
fn srv_answers_carry_their_targets_addresses() {
    let m = ask(
        "_http._tcp.front.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let extra: Vec<String> = m
        .additionals
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    assert_eq!(extra, ["front.default.svc.cluster.local. A 10.43.0.20"]);
    let m = ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
    let mut extra: Vec<String> = m
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "10-42-1-6.db.default.svc.cluster.local. 10.42.1.6",
            "db-0.db.default.svc.cluster.local. 10.42.1.5"
        ]
    );
}

#[test]
fn the_questions_case_is_echoed_and_matching_ignores_it() {
    let m = ask("FrOnT.Default.SVC.cluster.LOCAL.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        m.queries[0].name.to_string(),
        "FrOnT.Default.SVC.cluster.LOCAL."
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].name.to_string(),
        "FrOnT.Default.SVC.cluster.LOCAL.",
        "the owner points at the question"
    );
}

#[test]
fn pod_records_follow_the_pods_setting() {
    let q = query_bytes("10-42-1-9.default.pod.cluster.local.", RecordType::A, None);
    let other = query_bytes("10-42-3-3.default.pod.cluster.local.", RecordType::A, None);
    let verified = ask_with(PodRecords::Verified, &q, Transport::Udp);
    assert_eq!(
        answers(&verified),
        ["10-42-1-9.default.pod.cluster.local. A 10.42.1.9"]
    );
    let unknown = ask_with(PodRecords::Verified, &other, Transport::Udp);
    assert_eq!(
        unknown.metadata.response_code,
        ResponseCode::NXDomain,
        "verified: only a pod's address"
    );
    let wrong_ns = ask_with(
        PodRecords::Verified,
        &query_bytes("10-42-1-9.quiet.pod.cluster.local.", RecordType::A, None),
        Transport::Udp,
    );
    assert_eq!(
        wrong_ns.metadata.response_code,
        ResponseCode::NXDomain,
        "verified: a pod of that namespace"
    );
    let disabled = ask_with(PodRecords::Disabled, &q, Transport::Udp);
    assert_eq!(disabled.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn names_outside_the_zones_are_forwarded_and_external_names_chased() {
    let index = build(&snapshot(), &config(PodRecords::Insecure));
    let mut out = Vec::new();
    let q = query_bytes("example.com.", RecordType::A, None);
    match respond(&index, &q, Transport::Udp, DEFAULT_MAX_UDP, &mut out) {
        Outcome::Forward(question) => {
            assert_eq!(question.name, name::wire("example.com").unwrap());
            assert_eq!(question.qtype, 1);
        }
        other => panic!("{other:?}"),
    }
    // A reverse name outside the cluster CIDRs is not ours either.
    let q = query_bytes("1.0.168.192.in-addr.arpa.", RecordType::PTR, None);
    assert!(matches!(
        respond(&index, &q, Transport::Udp, DEFAULT_MAX_UDP, &mut out),
        Outcome::Forward(_)
    ));
    let q = query_bytes("ext.default.svc.cluster.local.", RecordType::A, None);
    match respond(&index, &q, Transport::Udp, DEFAULT_MAX_UDP, &mut out) {
        Outcome::Chase { target, question } => {
            assert_eq!(target, name::wire("example.test").unwrap());
            assert_eq!(question.qtype, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let plain = query_bytes("big.default.svc.cluster.local.", RecordType::A, None);
    let m = ask_with(PodRecords::Insecure, &plain, Transport::Udp);
    assert!(m.metadata.truncation, "TC over UDP without EDNS");
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1, "the question stays");
    // EDNS offers 4096, the cap is 1232: still too big.
    let edns = query_bytes("big.default.svc.cluster.local.", RecordType::A, Some(4096));
    let m = ask_with(PodRecords::Insecure, &edns, Transport::Udp);
    assert!(m.metadata.truncation);
    assert_eq!(
        m.edns.as_ref().map(|e| e.max_payload()),
        Some(1232),
        "our UDP size in OPT"
    );
    let index = build(&snapshot(), &config(PodRecords::Insecure));
    let mut out = Vec::new();
    respond(&index, &plain, Transport::Tcp, DEFAULT_MAX_UDP, &mut out);
    assert!(out.len() > 4000, "{} bytes", out.len());
    let m = Message::from_vec(&out).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 250);
    // A small answer fits in 512.
    let m = ask_with(
        PodRecords::Insecure,
        &query_bytes("db.default.svc.cluster.local.", RecordType::A, None),
        Transport::Udp,
    );
    assert!(!m.metadata.truncation);
    assert!(m.edns.is_none(), "no OPT without EDNS in the query");
}

/// Malformed and unusual queries: the code the RFCs give, or no answer at all.
#[test]
fn bad_queries_get_the_right_codes() {
    let index = build(&snapshot(), &config(PodRecords::Insecure));
    let good = query_bytes("front.default.svc.cluster.local.", RecordType::A, None);
    let code = |q: &[u8]| -> Option<ResponseCode> {
        let mut out = Vec::new();
        match respond(&index, q, Transport::Udp, DEFAULT_MAX_UDP, &mut out) {
            Outcome::Answer(_) => Some(
                Message::from_vec(&out)
                    .expect("parses")
                    .metadata
                    .response_code,
            ),
            Outcome::Drop => None,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code(&good[..11]), None, "shorter than a header");
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(code(&response), None, "a response is never answered");
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.cluster.local.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        code(&two.to_vec().unwrap()),
        Some(ResponseCode::FormErr),
        "two questions"
    );
    let mut none = good.clone();
    none[5] = 0;
    assert_eq!(
        code(&none[..12]),
        Some(ResponseCode::FormErr),
        "no question"
    );
    assert_eq!(
        code(&good[..good.len() - 2]),
        Some(ResponseCode::FormErr),
        "cut in the question"
    );
    let mut status = Message::new(1, MessageType::Query, OpCode::Status);
    status.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        code(&status.to_vec().unwrap()),
        Some(ResponseCode::NotImp),
        "opcode STATUS"
    );
    let mut chaos = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    chaos.set_query_class(DNSClass::CH);
    let mut m = Message::query();
    m.add_query(chaos);
    assert_eq!(
        code(&m.to_vec().unwrap()),
        Some(ResponseCode::Refused),
        "class CH"
    );
    assert_eq!(
        code(&query_bytes("cluster.local.", RecordType::AXFR, None)),
        Some(ResponseCode::Refused),
        "no zone transfer"
    );
    let mut v1 = Message::query();
    v1.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::SOA,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    v1.set_edns(e);
    // 16 is BADVERS in an OPT answer (hickory names the shared code BADSIG).
    assert_eq!(
        code(&v1.to_vec().unwrap()).map(u16::from),
        Some(16),
        "EDNS version 1"
    );
    let mut long_label = good.clone();
    long_label[12] = 0x50;
    assert_eq!(
        code(&long_label),
        Some(ResponseCode::FormErr),
        "a label length over 63"
    );
    let mut pointer = good[..12].to_vec();
    pointer.extend([0xC0, 0x0C, 0, 1, 0, 1]);
    assert_eq!(
        code(&pointer),
        Some(ResponseCode::FormErr),
        "a pointer in the question"
    );
}

#[test]
fn a_rebuilt_index_follows_the_snapshot() {
    let mut s = snapshot();
    let before = build(&s, &config(PodRecords::Insecure));
    s.services.remove(&ObjectKey::new("default", "front"));
    s.version += 1;
    let after = build(&s, &config(PodRecords::Insecure));
    let q = query_bytes("front.default.svc.cluster.local.", RecordType::A, None);
    let mut out = Vec::new();
    respond(&before, &q, Transport::Udp, DEFAULT_MAX_UDP, &mut out);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::NoError
    );
    respond(&after, &q, Transport::Udp, DEFAULT_MAX_UDP, &mut out);
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::NXDomain
    );
    let _: IpAddr = "10.42.1.9".parse().unwrap();
}

#[test]
fn resolv_conf_nameservers_skip_loopback_stubs() {
    use crate::resolv_conf::nameservers;
    let (found, skipped) = nameservers(
        "# a comment\nsearch example.test\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver 192.0.2.53\noptions ndots:1\n",
    );
    assert_eq!(
        found,
        [
            "192.0.2.53:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
    assert!(skipped);
    let (found, skipped) = nameservers("nameserver 127.0.0.53\nnameserver ::1\n");
    assert!(found.is_empty());
    assert!(
        skipped,
        "only a stub: the systemd-resolved list is read instead"
    );
}

/// A fixed budget of arbitrary packets and of mutations of valid queries through the request
/// path: no panic, and every answer parses as a DNS message with the query's ID.
#[test]
fn fuzzed_packets_never_crash_and_every_answer_parses() {
    const BUDGET: usize = 60_000;
    let index = build(&snapshot(), &config(PodRecords::Insecure));
    // xorshift64*: a fixed seed, so a failure is repeatable.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let seeds: Vec<Vec<u8>> = [
        ("front.default.svc.cluster.local.", RecordType::A, None),
        (
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
            Some(1232),
        ),
        ("big.default.svc.cluster.local.", RecordType::A, Some(4096)),
        ("alias.default.svc.cluster.local.", RecordType::A, None),
        (
            "10-42-1-9.default.pod.cluster.local.",
            RecordType::AAAA,
            None,
        ),
        ("5.1.42.10.in-addr.arpa.", RecordType::PTR, Some(512)),
        ("example.com.", RecordType::MX, None),
    ]
    .iter()
    .map(|(n, t, e)| query_bytes(n, *t, *e))
    .collect();
    let (mut answered, mut parsed_ok, mut elsewhere, mut dropped) = (0, 0, 0, 0);
    let mut out = Vec::new();
    for i in 0..BUDGET {
        let packet: Vec<u8> = if i % 2 == 0 {
            // Arbitrary bytes, 0 to 600 long, often with a plausible header.
            let len = (next() % 600) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 12 && i % 4 == 0 {
                p[2] &= 0x7F; // a query
                p[4] = 0;
                p[5] = 1;
            }
            p
        } else {
            // A valid query with a few bytes changed, cut or extended.
            let mut p = seeds[(next() as usize) % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % p.len();
                match next() % 3 {
                    0 => p[at] = next() as u8,
                    1 => p.truncate(at.max(1)),
                    _ => p.insert(at, next() as u8),
                }
            }
            p
        };
        let transport = if i % 3 == 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        match respond(&index, &packet, transport, DEFAULT_MAX_UDP, &mut out) {
            Outcome::Answer(_) => {
                answered += 1;
                let m = Message::from_vec(&out).unwrap_or_else(|e| {
                    panic!("answer to {packet:02x?} does not parse: {e}\n{out:02x?}")
                });
                assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
                assert_eq!(m.metadata.message_type, MessageType::Response);
                if transport == Transport::Udp {
                    assert!(
                        out.len() <= DEFAULT_MAX_UDP as usize,
                        "a UDP answer of {} bytes",
                        out.len()
                    );
                }
                parsed_ok += 1;
            }
            Outcome::Forward(_) | Outcome::Chase { .. } => elsewhere += 1,
            Outcome::Drop => dropped += 1,
        }
    }
    println!(
        "fuzz: {BUDGET} packets: {answered} answered (all {parsed_ok} parse), {elsewhere} to forward, {dropped} dropped"
    );
    assert_eq!(answered + elsewhere + dropped, BUDGET);
    assert!(
        answered > BUDGET / 10,
        "the mutations reach the answer path"
    );
}

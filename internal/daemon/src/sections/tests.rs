//! The parts' sections: peer states over time, summaries, and the metrics that come with them.

use super::*;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_peer_with_a_fresh_handshake_is_up() {
    let mut a = PeerActivity::default();
    let t = Instant::now();
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(5)), 100, t),
        PeerState::Up
    );
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(179)), 100, t),
        PeerState::Up
    );
}

#[test]
fn a_peer_that_never_carried_traffic_is_idle() {
    let mut a = PeerActivity::default();
    let t = Instant::now();
    assert_eq!(a.observe("k", None, 0, t), PeerState::Idle);
    assert_eq!(a.observe("k", None, 0, t + 10 * MINUTE), PeerState::Idle);
}

#[test]
fn a_peer_whose_session_lapsed_without_traffic_is_idle() {
    let mut a = PeerActivity::default();
    let t = Instant::now();
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(10)), 5000, t),
        PeerState::Up
    );
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(400)), 5000, t + 7 * MINUTE),
        PeerState::Idle
    );
}

#[test]
fn a_peer_sent_to_without_a_session_is_connecting_then_broken() {
    let mut a = PeerActivity::default();
    let t = Instant::now();
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(10)), 5000, t),
        PeerState::Up
    );
    let lapsed = Some(Duration::from_secs(200));
    let t1 = t + 3 * MINUTE;
    assert_eq!(a.observe("k", lapsed, 5148, t1), PeerState::Connecting);
    assert_eq!(
        a.observe("k", lapsed, 5296, t1 + Duration::from_secs(5)),
        PeerState::Connecting
    );
    assert_eq!(
        a.observe("k", lapsed, 5444, t1 + BROKEN_AFTER),
        PeerState::Broken
    );
    // The peer answers again: up, and its past no longer counts against it.
    assert_eq!(
        a.observe(
            "k",
            Some(Duration::from_secs(1)),
            6000,
            t1 + 2 * BROKEN_AFTER
        ),
        PeerState::Up
    );
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(300)), 6000, t1 + 10 * MINUTE),
        PeerState::Idle
    );
}

#[test]
fn a_peer_that_never_answered_is_broken_once_sent_to_long_enough() {
    let mut a = PeerActivity::default();
    let t = Instant::now();
    assert_eq!(a.observe("k", None, 0, t), PeerState::Idle);
    assert_eq!(
        a.observe("k", None, 148, t + Duration::from_secs(5)),
        PeerState::Connecting
    );
    assert_eq!(
        a.observe("k", None, 444, t + Duration::from_secs(5) + BROKEN_AFTER),
        PeerState::Broken
    );
}

#[test]
fn traffic_from_before_the_daemon_watched_does_not_make_a_peer_broken() {
    let mut a = PeerActivity::default();
    let t = Instant::now();
    // A restarted daemon meets a device that carried traffic long ago.
    assert_eq!(
        a.observe("k", Some(Duration::from_secs(900)), 1_000_000, t),
        PeerState::Idle
    );
    // A re-made device counts from zero again.
    assert_eq!(a.observe("k", None, 0, t + MINUTE), PeerState::Idle);
    a.retain(&[]);
    assert!(a.peers.is_empty());
}

fn peer(node: &str, handshake: Option<u64>, tx: u64) -> PeerSummary {
    PeerSummary {
        node: node.into(),
        public_key: format!("{node}-key"),
        endpoint: None,
        allowed_ips: vec![],
        latest_handshake_seconds: handshake,
        rx_bytes: 10,
        tx_bytes: tx,
        up: handshake.is_some_and(|h| h < 180),
        state: PeerState::Idle,
    }
}

fn overlay(peers: Vec<PeerSummary>) -> OverlaySection {
    OverlaySection {
        interface: "skein-wg".into(),
        backend: "userspace".into(),
        backend_reason: "overlay.mode = userspace".into(),
        public_key: "pub".into(),
        listen_port: 51820,
        mtu: 1420,
        peers,
        skipped: vec![],
    }
}

#[test]
fn the_peers_section_counts_states_and_its_metrics_follow_each_turn() {
    let board = StatusBoard::new(skein_status::Identity {
        node: "node-1".into(),
        version: "0".into(),
        config_path: "c".into(),
        state_path: "s".into(),
    });
    let metrics = Metrics::new();
    let to = Reporting {
        board: board.clone(),
        metrics: metrics.clone(),
    };
    let mut peers = PeersBoard::register(&to);
    peers.show(overlay(vec![
        peer("node-2", Some(3), 500),
        peer("node-3", None, 0),
    ]));
    let v = serde_json::to_value(board.report()).expect("json");
    let summary = &v["sections"]["peers"]["summary"];
    assert_eq!(
        (summary["up"].as_u64(), summary["idle"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let details = board
        .section_details("peers", skein_status::Page::default())
        .expect("registered");
    assert_eq!(details["peers"][1]["state"], "idle");
    assert_eq!(details["peers"][0]["state"], "up");
    let text = metrics.encode().expect("encodes");
    for line in [
        "skein_overlay_peers_up 1",
        "skein_overlay_peer_tx_bytes_total{node=\"node-2\"} 500",
        "skein_overlay_peer_rx_bytes_total{node=\"node-3\"} 10",
        "skein_overlay_peer_handshake_age_seconds{node=\"node-2\"} 3.0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(
        !text.contains("handshake_age_seconds{node=\"node-3\"}"),
        "never: no sample"
    );
    // A restarted part registers again and reports into the same families.
    let mut again = PeersBoard::register(&to);
    again.show(overlay(vec![]));
    let text = metrics.encode().expect("encodes");
    assert!(
        text.lines().any(|l| l == "skein_overlay_peers_up 0"),
        "{text}"
    );
    assert!(!text.contains("node=\"node-2\""), "{text}");
    assert!(
        text.contains("# TYPE skein_overlay_peer_rx_bytes_total counter"),
        "{text}"
    );
}

#[test]
fn ipam_metrics_follow_the_cidrs_the_node_has() {
    let board = StatusBoard::new(skein_status::Identity {
        node: "node-1".into(),
        version: "0".into(),
        config_path: "c".into(),
        state_path: "s".into(),
    });
    let metrics = Metrics::new();
    let ipam = IpamBoard::register(&Reporting {
        board,
        metrics: metrics.clone(),
    });
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("# TYPE skein_ipam_addresses_used gauge\n"),
        "the family shows before any CIDR: {text}"
    );
    let cidr = |c: &str, used| CidrUse {
        cidr: c.into(),
        used,
        capacity: 253,
    };
    ipam.show(&IpamSection {
        cidrs: vec![cidr("10.42.1.0/24", 3)],
        pods: vec![],
    });
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("skein_ipam_addresses_used{cidr=\"10.42.1.0/24\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("skein_ipam_addresses_capacity{cidr=\"10.42.1.0/24\"} 253\n"),
        "{text}"
    );
    ipam.show(&IpamSection {
        cidrs: vec![cidr("10.42.7.0/24", 0)],
        pods: vec![],
    });
    let text = metrics.encode().expect("encodes");
    assert!(!text.contains("10.42.1.0/24"), "{text}");
    assert!(
        text.contains("skein_ipam_addresses_used{cidr=\"10.42.7.0/24\"} 0\n"),
        "{text}"
    );
}

fn cluster_node(name: &str, ready: Option<bool>) -> skein_cluster::Node {
    skein_cluster::Node {
        name: name.into(),
        uid: format!("uid-{name}"),
        pod_cidrs: vec!["10.42.1.0/24".parse().expect("cidr")],
        internal_ip: Some("198.18.0.11".parse().expect("ip")),
        internal_ips: vec!["198.18.0.11".parse().expect("ip")],
        zone: None,
        ready,
        skein: Default::default(),
        unschedulable: false,
    }
}

fn cluster_service(name: &str, ip: &str) -> skein_cluster::Service {
    skein_cluster::Service {
        key: skein_cluster::ObjectKey::new("default", name),
        service_type: skein_cluster::ServiceType::ClusterIp,
        cluster_ips: vec![ip.parse().expect("ip")],
        headless: false,
        external_name: None,
        selector: Default::default(),
        ports: Vec::new(),
        external_traffic_policy: skein_cluster::TrafficPolicy::Cluster,
        internal_traffic_policy: skein_cluster::TrafficPolicy::Cluster,
        session_affinity: skein_cluster::SessionAffinity::None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        health_check_node_port: None,
        publish_not_ready_addresses: false,
        problems: Vec::new(),
    }
}

#[test]
fn the_cluster_page_makes_only_its_rows_and_matches_the_whole_section_cut() {
    let mut snapshot = skein_cluster::Snapshot {
        version: 7,
        ..Default::default()
    };
    for (i, ready) in [Some(true), None, Some(true)].into_iter().enumerate() {
        let name = format!("node-{}", i + 1);
        snapshot
            .nodes
            .insert(name.clone(), cluster_node(&name, ready));
    }
    for i in 0..5 {
        let name = format!("svc-{i}");
        let key = skein_cluster::ObjectKey::new("default", &name);
        let service = cluster_service(&name, &format!("10.43.0.{}", i + 1));
        snapshot.services.insert(key, Arc::new(service));
    }
    let health = skein_cluster::ApiHealth::starting(std::time::SystemTime::now());
    let section = ClusterSection::new(Arc::new(snapshot), &health, "node-2");
    let whole = serde_json::to_value(&section).expect("serializes");
    for (offset, limit) in [(0, 100), (1, 2), (4, 3), (9, 1)] {
        let page = skein_status::Page::new(Some(offset), Some(limit));
        let paged = section.details(page);
        for list in ["nodes", "services"] {
            let all = whole[list].as_array().expect("rows");
            let want: Vec<_> = all.iter().skip(offset).take(limit).cloned().collect();
            assert_eq!(
                paged[list],
                serde_json::Value::Array(want),
                "{list} {offset}+{limit}"
            );
            assert_eq!(paged["page"]["totals"][list], all.len());
        }
        assert_eq!(paged["snapshot_version"], 7);
    }
    assert_eq!(whole["nodes"][1]["this_node"], true);
    let summary = section.summary();
    assert_eq!(
        (summary.nodes, summary.nodes_ready, summary.services),
        (3, 2, 5)
    );
}

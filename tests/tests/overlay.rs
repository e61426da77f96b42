//! The encrypted overlay end to end, in labs of real nodes: pods on different nodes talk through
//! each node's userspace WireGuard device, nothing with a pod address crosses the underlay in
//! the clear, peers and routes follow the Node objects, a wireguard-go peer configured by hand
//! interoperates, and an echo stream between nodes survives a key rotation and a daemon killed
//! and restarted.

use std::process::{Command, Stdio};
use std::time::Duration;

use skein_e2e::lab::{self, Lab};

fn pod_yaml(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  nodeName: {node}\n  containers: [{{name: main, image: lab, ports: [{{containerPort: 8080}}, {{containerPort: 8080, protocol: UDP}}]}}]\n"
    )
}

/// Applies one pod per (name, node) and waits until each runs: (netns, ip) in order.
fn pods_on(lab: &Lab, pods: &[(&str, &str)]) -> Vec<(String, String)> {
    let yaml: Vec<String> = pods.iter().map(|(n, node)| pod_yaml(n, node)).collect();
    lab.apply(&yaml.join("---\n"));
    lab.wait("the pods to run", Duration::from_secs(90), || {
        pods.iter()
            .map(|(n, _)| lab.pod("default", n))
            .collect::<Option<Vec<_>>>()
    })
}

/// `node`'s `/api/v1/peers`; `null` while its daemon does not answer (it may be restarting).
fn overlay(lab: &Lab, node: &str) -> serde_json::Value {
    match skein_e2e::http_get(lab.page(node), "/api/v1/peers") {
        Some((200, body)) => serde_json::from_str(&body).expect("peers JSON"),
        _ => serde_json::Value::Null,
    }
}

/// `node`'s `/metrics`, read by the Prometheus parser, carry each of `peers` (all up, with
/// traffic) by node name: bytes each way and the handshake's age.
fn peer_metrics_show(lab: &Lab, node: &str, peers: &[serde_json::Value]) {
    if !skein_e2e::require(
        skein_e2e::has_prometheus_parser(),
        "Debian's python3-prometheus-client is not installed",
    ) {
        return;
    }
    let (_, text) = skein_e2e::http_get(lab.page(node), "/metrics").expect("/metrics answers");
    let families = skein_e2e::prometheus_families(&text);
    let value = |name: &str, peer: Option<&str>| {
        families
            .iter()
            .flat_map(|f| f["samples"].as_array().into_iter().flatten())
            .find(|s| s["name"] == name && peer.is_none_or(|p| s["labels"]["node"] == p))
            .and_then(|s| s["value"].as_f64())
    };
    // The page and the metrics come from different turns; every peer stays up meanwhile.
    assert_eq!(
        value("skein_overlay_peers_up", None),
        Some(peers.len() as f64),
        "{text}"
    );
    for p in peers {
        let peer = p["node"].as_str().expect("peer node");
        for name in [
            "skein_overlay_peer_rx_bytes_total",
            "skein_overlay_peer_tx_bytes_total",
        ] {
            assert!(
                value(name, Some(peer)) > Some(0.0),
                "{name} for {peer}: {text}"
            );
        }
        assert!(
            value("skein_overlay_peer_handshake_age_seconds", Some(peer)) < Some(180.0),
            "handshake age for {peer}: {text}"
        );
    }
}

/// The peer of `node`'s device that belongs to node `peer`, if any.
fn peer_of(lab: &Lab, node: &str, peer: &str) -> Option<serde_json::Value> {
    overlay(lab, node)["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == peer)
        .cloned()
}

/// The `skein.dev/` annotation `key` on Node `node`.
fn annotation(lab: &Lab, node: &str, key: &str) -> Option<String> {
    let out = lab.run(&["get", "nodes", "-o", "json"]).1;
    let nodes: serde_json::Value = serde_json::from_str(&out).ok()?;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["metadata"]["name"] == node)?["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

/// Destinations of `netns`'s routes through `dev`.
fn routes_via(lab: &Lab, netns: &str, dev: &str) -> Vec<String> {
    let (_, out) = lab.exec(netns, &["ip", "route", "show", "dev", dev]);
    out.lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Waits until `node`'s daemon answers again and its overlay reports `count` peers.
fn wait_for_peers(lab: &Lab, node: &str, count: usize) {
    lab.wait(
        &format!("{node}'s overlay to report {count} peers"),
        Duration::from_secs(30),
        || (overlay(lab, node)["peers"].as_array()?.len() == count).then_some(()),
    );
}

fn interface(lab: &Lab, node: &str) -> String {
    overlay(lab, node)["interface"]
        .as_str()
        .expect("interface")
        .to_string()
}

#[test]
fn pods_on_different_nodes_talk_through_the_tunnel_and_peers_follow_the_nodes() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    if !skein_e2e::require(
        skein_e2e::which("tcpdump").is_some(),
        "tcpdump is not installed",
    ) {
        return;
    }
    let lab = Lab::up(3, &[]);
    let pods = pods_on(&lab, &[("a", "node-1"), ("b", "node-2"), ("c", "node-3")]);
    let names = ["a", "b", "c"];

    // Capture everything on the underlay bridge while the pods talk.
    let capture = tempfile::NamedTempFile::new().expect("capture file");
    let mut tcpdump = lab
        .command_in(&lab.underlay_netns(), "tcpdump")
        .args(["-i", "br0", "-nn", "-U", "--immediate-mode", "-w"])
        .arg(capture.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tcpdump");
    // tcpdump writes the file's header once it captures.
    lab.wait("tcpdump to capture", Duration::from_secs(10), || {
        (std::fs::metadata(capture.path()).ok()?.len() >= 24).then_some(())
    });
    for (i, (from_ns, from_ip)) in pods.iter().enumerate() {
        for (j, (_, to_ip)) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            for protocol in ["tcp", "udp"] {
                let answer = lab.wait(
                    &format!("{} -> {} over {protocol}", names[i], names[j]),
                    Duration::from_secs(20),
                    || lab.probe(from_ns, protocol, &format!("{to_ip}:8080")),
                );
                assert_eq!(
                    answer,
                    format!("{} {from_ip}", names[j]),
                    "the source address is kept"
                );
            }
        }
    }
    let read = |filter: &str| -> Vec<String> {
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(capture.path())
            .args(["-nn", filter])
            .output()
            .expect("read the capture");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    // Every probe got its answer, so its packets crossed; the capture file may lag a little.
    lab.wait(
        "the capture to hold the tunnel's packets",
        Duration::from_secs(10),
        || (read("udp port 51820").len() >= 12).then_some(()),
    );
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();
    let clear = read("net 10.42.0.0/16");
    assert!(
        clear.is_empty(),
        "pod addresses in the clear on the underlay:\n{}",
        clear.join("\n")
    );
    let tunnel = read("udp port 51820");
    assert!(
        tunnel.len() >= 12,
        "the pods' traffic crossed as WireGuard between the nodes: {} packets",
        tunnel.len()
    );

    // Each node shows its two peers up, with handshakes and bytes, and no private key anywhere.
    for node in ["node-1", "node-2", "node-3"] {
        let o = overlay(&lab, node);
        assert_eq!(o["backend"], "userspace", "{o}");
        let peers = lab.wait(
            &format!("{node}'s peers to show traffic"),
            Duration::from_secs(15),
            || {
                let o = overlay(&lab, node);
                let peers = o["peers"].as_array()?.clone();
                (peers.len() == 2
                    && peers.iter().all(|p| {
                        p["up"] == true
                            && p["rx_bytes"].as_u64() > Some(0)
                            && p["tx_bytes"].as_u64() > Some(0)
                    }))
                .then_some(peers)
            },
        );
        for p in &peers {
            assert!(p["latest_handshake_seconds"].as_u64().is_some(), "{p}");
            assert_eq!(p["state"], "up", "{p}");
        }
        peer_metrics_show(&lab, node, &peers);
        // The node's private key, as its key file holds it (base64) and as the device's control
        // protocol writes it (hex), appears in no answer of the page's listener.
        let key_file = format!("/var/lib/skein-lab/{}/{node}/wireguard.key", lab.name);
        let key_b64 = std::fs::read_to_string(&key_file).expect("the node's wireguard.key");
        let key_b64 = key_b64.trim();
        let decoded = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(c.stdin.as_mut().expect("stdin"), key_b64.as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64 -d");
        assert_eq!(decoded.stdout.len(), 32, "{key_file} holds a WireGuard key");
        let key_hex: String = decoded.stdout.iter().map(|b| format!("{b:02x}")).collect();
        for path in ["/api/v1/status", "/api/v1/peers", "/"] {
            let (code, body) = skein_e2e::http_get(lab.page(node), path).expect(path);
            assert_eq!(code, 200, "{path}");
            for secret in [key_b64.to_string(), key_hex.clone(), key_hex.to_uppercase()] {
                assert!(!body.contains(&secret), "{node}'s private key is in {path}");
            }
        }
    }
    // The page, in a real browser: the backend and why, and each peer's row.
    if skein_e2e::require(
        skein_e2e::which("chromium").is_some(),
        "chromium is not installed",
    ) {
        let dom = skein_e2e::rendered_dom(&format!("http://{}/", lab.page("node-1")));
        assert!(
            dom.contains("userspace WireGuard (overlay.mode = userspace)"),
            "{dom}"
        );
        for peer in ["node-2", "node-3"] {
            assert!(
                dom.contains(&format!("data-peer=\"{peer}\"")),
                "{peer} row: {dom}"
            );
        }
        assert!(dom.contains(">up<"), "{dom}");
    }
    let key_file = format!("/var/lib/skein-lab/{}/node-1/wireguard.key", lab.name);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("key file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{key_file}");

    // A node deleted: the others drop exactly its peer and route; the rest keeps working.
    let ifaces: Vec<String> = ["node-1", "node-2"]
        .iter()
        .map(|n| interface(&lab, n))
        .collect();
    let node3_cidr = routes_via(&lab, &lab.netns("node-1"), &ifaces[0])
        .into_iter()
        .find(|r| pods[2].1.starts_with(r.trim_end_matches("0/24")))
        .expect("a route to node-3's pods");
    let node2_before = peer_of(&lab, "node-1", "node-2").expect("node-2 peer");
    lab.must(&["delete", "node", "node-3"]);
    for (node, iface) in ["node-1", "node-2"].iter().zip(&ifaces) {
        lab.wait(
            &format!("{node} to drop node-3's peer and route"),
            Duration::from_secs(10),
            || {
                let peers = overlay(&lab, node)["peers"].as_array()?.clone();
                let routes = routes_via(&lab, &lab.netns(node), iface);
                (peers.len() == 1 && !routes.contains(&node3_cidr) && routes.len() == 1)
                    .then_some(())
            },
        );
    }
    let node2_after = peer_of(&lab, "node-1", "node-2").expect("node-2 peer kept");
    assert_eq!(node2_before["public_key"], node2_after["public_key"]);
    assert!(
        node2_after["tx_bytes"].as_u64() >= node2_before["tx_bytes"].as_u64(),
        "node-2's peer was left alone (its counters did not restart)"
    );
    assert_eq!(
        lab.probe(&pods[0].0, "tcp", &format!("{}:8080", pods[1].1))
            .as_deref(),
        Some(format!("b {}", pods[0].1).as_str())
    );

    // A restarted node keeps its key; its peer on the others stays as it was.
    let key_before = annotation(&lab, "node-2", "skein.dev/wireguard-public-key").expect("key");
    let peer_before = peer_of(&lab, "node-1", "node-2").expect("peer");
    lab.must(&["stop", "node-2"]);
    lab.must(&["start", "node-2"]);
    wait_for_peers(&lab, "node-2", 1);
    assert_eq!(
        overlay(&lab, "node-2")["public_key"],
        key_before.as_str(),
        "same key after restart"
    );
    assert_eq!(
        annotation(&lab, "node-2", "skein.dev/wireguard-public-key").as_deref(),
        Some(key_before.as_str())
    );
    let peer_after = peer_of(&lab, "node-1", "node-2").expect("peer");
    assert_eq!(peer_before["public_key"], peer_after["public_key"]);
    assert_eq!(peer_before["endpoint"], peer_after["endpoint"]);
    assert!(
        peer_after["tx_bytes"].as_u64() >= peer_before["tx_bytes"].as_u64(),
        "node-1's peer for node-2 was not re-made"
    );
    assert_eq!(
        lab.probe(&pods[0].0, "udp", &format!("{}:8080", pods[1].1))
            .as_deref(),
        Some(format!("b {}", pods[0].1).as_str())
    );
}

#[test]
fn an_echo_stream_between_nodes_survives_key_rotation_and_a_killed_daemon() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(2, &[]);
    let pods = pods_on(&lab, &[("e1", "node-1"), ("e2", "node-2")]);
    let target = format!("{}:8080", pods[1].1);
    lab.wait(
        "the tunnel to carry traffic",
        Duration::from_secs(20),
        || lab.probe(&pods[0].0, "tcp", &target),
    );

    // Rotation on node-1, published and picked up by node-2 while the stream runs.
    let stream = lab.echo_stream(&pods[0].0, &target);
    // The stream runs a while before the event and after it: the gaps are measured across it.
    stream.carries(&lab, "before the rotation");
    let old_key = overlay(&lab, "node-1")["public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let config = lab.config("node-1");
    let out = Command::new(skein_e2e::skein_bin())
        .args(["overlay", "rotate-key", "--config", &config])
        .output()
        .expect("skein overlay rotate-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page shows the new key from the overlay's next turn on.
    let new_key = lab.wait(
        "node-1's page to show a new key",
        Duration::from_secs(10),
        || {
            let key = overlay(&lab, "node-1")["public_key"].as_str()?.to_string();
            (key != old_key).then_some(key)
        },
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&new_key));
    lab.wait(
        "node-2 to peer with node-1's new key",
        Duration::from_secs(10),
        || (peer_of(&lab, "node-2", "node-1")?["public_key"] == new_key.as_str()).then_some(()),
    );
    assert_eq!(
        annotation(&lab, "node-1", "skein.dev/wireguard-public-key").as_deref(),
        Some(new_key.as_str())
    );
    stream.carries(&lab, "after the rotation");
    let rotation = stream.finish();
    eprintln!("through the key rotation: {rotation}");
    assert!(rotation["received"].as_u64() > Some(300), "{rotation}");
    assert!(rotation["max_gap_ms"].as_u64() <= Some(2000), "{rotation}");

    // node-2's daemon killed outright and started again: its userspace tunnel carries on.
    let stream = lab.echo_stream(&pods[0].0, &target);
    stream.carries(&lab, "before the kill");
    let pid = lab.pid("node-2").expect("node-2's skein");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // `start` waits for the killed process to be gone before it starts the new one.
    lab.must(&["start", "node-2"]);
    wait_for_peers(&lab, "node-2", 1);
    stream.carries(&lab, "after the restart");
    let restart = stream.finish();
    eprintln!("through the daemon restart: {restart}");
    assert!(restart["received"].as_u64() > Some(300), "{restart}");
    assert!(restart["max_gap_ms"].as_u64() <= Some(2000), "{restart}");
}

#[test]
fn a_wireguard_go_peer_registered_as_a_node_exchanges_traffic_with_pods() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    if !skein_e2e::require(
        skein_e2e::which("wireguard-go").is_some() && skein_e2e::which("wg").is_some(),
        "wireguard-go and wireguard-tools are not installed",
    ) {
        return;
    }
    let lab = Lab::up(1, &[]);
    let pods = pods_on(&lab, &[("w1", "node-1")]);
    let (pod_ns, pod_ip) = &pods[0];

    // A machine of its own on the underlay, running wireguard-go, configured by hand with wg
    // from what node-1 published. `down` removes it with the lab (its namespace has the prefix).
    let ns = lab.extra_netns("wgo");
    let ul = lab.underlay_netns();
    let iface = lab.extra_interface("go");
    let ip = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &ul, "link", "add", "wgo", "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]);
    ip(&["-n", &ul, "link", "set", "wgo", "master", "br0", "up"]);
    ip(&["-n", &ns, "addr", "add", "198.18.0.50/24", "dev", "eth0"]);
    ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    let mut wggo = lab
        .command_in(&ns, "wireguard-go")
        .args(["-f", &iface])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wireguard-go");
    let socket = format!("/var/run/wireguard/{iface}.sock");
    lab.wait(
        "wireguard-go's control socket",
        Duration::from_secs(10),
        || std::path::Path::new(&socket).exists().then_some(()),
    );
    let keys = tempfile::tempdir().expect("tempdir");
    let private = keys.path().join("private");
    let genkey = Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg genkey");
    std::fs::write(&private, &genkey.stdout).expect("write key");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    std::io::Write::write_all(pubkey.stdin.as_mut().expect("stdin"), &genkey.stdout).expect("key");
    let public = String::from_utf8(pubkey.wait_with_output().expect("pubkey").stdout)
        .expect("utf-8")
        .trim()
        .to_string();

    let node_key =
        annotation(&lab, "node-1", "skein.dev/wireguard-public-key").expect("node-1 key");
    let node_endpoint =
        annotation(&lab, "node-1", "skein.dev/wireguard-endpoint").expect("node-1 endpoint");
    let node_cidr = overlay_cidr_of(&lab, "node-1");
    let ok = lab
        .command_in(&ns, "wg")
        .args(["set", &iface, "private-key"])
        .arg(&private)
        .args([
            "listen-port",
            "51820",
            "peer",
            &node_key,
            "endpoint",
            &node_endpoint,
        ])
        .args(["allowed-ips", &node_cidr])
        .status()
        .expect("wg set")
        .success();
    assert!(ok, "wg set");
    ip(&["-n", &ns, "addr", "add", "10.42.200.1/32", "dev", &iface]);
    ip(&["-n", &ns, "link", "set", &iface, "mtu", "1420", "up"]);
    ip(&["-n", &ns, "route", "add", &node_cidr, "dev", &iface]);

    // Registered as a Node with skein's annotations: node-1 peers with it.
    lab.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: wg-go\n  annotations:\n    \
         skein.dev/wireguard-public-key: \"{public}\"\n    skein.dev/wireguard-endpoint: \"198.18.0.50:51820\"\n\
         spec:\n  podCIDR: 10.42.200.0/24\n  podCIDRs: [10.42.200.0/24]\n"
    ));
    lab.wait("node-1 to peer with wg-go", Duration::from_secs(15), || {
        peer_of(&lab, "node-1", "wg-go")
    });

    // Both ways, TCP and UDP, with the sources kept.
    lab.serve_in(&ns, "wg-go", 9000);
    for protocol in ["tcp", "udp"] {
        let answer = lab.wait(
            &format!("the pod to reach wg-go over {protocol}"),
            Duration::from_secs(15),
            || lab.probe(pod_ns, protocol, "10.42.200.1:9000"),
        );
        assert_eq!(answer, format!("wg-go {pod_ip}"));
        let answer = lab.wait(
            &format!("wg-go to reach the pod over {protocol}"),
            Duration::from_secs(15),
            || lab.probe(&ns, protocol, &format!("{pod_ip}:8080")),
        );
        assert_eq!(answer, "w1 10.42.200.1");
    }
    let (_, shown) = lab.exec(&ns, &["wg", "show", &iface, "latest-handshakes"]);
    assert!(shown.contains(&node_key), "{shown}");
    let _ = wggo.kill();
    let _ = wggo.wait();
}

/// `node`'s pod CIDR as its Node object has it.
fn overlay_cidr_of(lab: &Lab, node: &str) -> String {
    let out = lab.run(&["get", "nodes", "-o", "json"]).1;
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("nodes JSON");
    nodes
        .as_array()
        .expect("list")
        .iter()
        .find(|n| n["metadata"]["name"] == node)
        .and_then(|n| n["spec"]["podCIDR"].as_str())
        .expect("podCIDR")
        .to_string()
}

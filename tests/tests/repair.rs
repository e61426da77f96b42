//! Drift repair end to end: in a lab of two real nodes, state that skein owns is broken behind
//! its back (`nft flush ruleset`, the pod bridge deleted, an overlay route deleted, a WireGuard
//! peer removed, the userspace WireGuard device restarted) and each is put back within one resync
//! interval, the pods talk again, and the node's page names the repair.

use std::time::Duration;

use skein_e2e::lab::{self, Lab};

/// The daemon's default `daemon.resync_interval`: every repair must land within it (kernel
/// notifications make most of them immediate).
const RESYNC: Duration = Duration::from_secs(60);

fn pod_yaml(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  nodeName: {node}\n  containers: [{{name: main, image: lab, ports: [{{containerPort: 8080}}]}}]\n"
    )
}

/// `part`'s entry on `node`'s status page.
fn part_of(lab: &Lab, node: &str, part: &str) -> serde_json::Value {
    lab.node_status(node)
        .map(|s| skein_e2e::part(&s, part).clone())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until `part` on `node` reports a repair, after `before` repairs, whose text contains
/// `words`; returns the text.
fn wait_for_repair(lab: &Lab, node: &str, part: &str, before: u64, words: &str) -> String {
    lab.wait(
        &format!("{node}'s {part} part to report a repair naming {words:?}"),
        RESYNC,
        || {
            let p = part_of(lab, node, part);
            let text = p["last_repair"].as_str()?.to_string();
            (p["repairs"].as_u64()? > before && text.contains(words)).then_some(text)
        },
    )
}

fn repairs(lab: &Lab, node: &str, part: &str) -> u64 {
    part_of(lab, node, part)["repairs"].as_u64().unwrap_or(0)
}

/// Every pod answers every other over TCP, its caller's address kept.
fn all_talk(lab: &Lab, pods: &[(&str, (String, String))], why: &str) {
    for (from, (from_ns, from_ip)) in pods {
        for (to, (_, to_ip)) in pods {
            if from == to {
                continue;
            }
            let answer = lab.wait(&format!("{from} -> {to} {why}"), RESYNC, || {
                lab.probe(from_ns, "tcp", &format!("{to_ip}:8080"))
            });
            assert_eq!(answer, format!("{to} {from_ip}"));
        }
    }
}

#[test]
fn flushed_rules_a_deleted_bridge_route_and_peer_are_repaired_and_named_on_the_page() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(2, &[]);
    let yaml = [
        pod_yaml("a", "node-1"),
        pod_yaml("a2", "node-1"),
        pod_yaml("b", "node-2"),
    ]
    .join("---\n");
    lab.apply(&yaml);
    let pods: Vec<(&str, (String, String))> = ["a", "a2", "b"]
        .into_iter()
        .map(|n| {
            let pod = lab.wait(&format!("pod {n} to run"), Duration::from_secs(90), || {
                lab.pod("default", n)
            });
            (n, pod)
        })
        .collect();
    all_talk(&lab, &pods, "at the start");
    let ns = lab.netns("node-1");

    // 1. Someone flushes the whole ruleset: skein's chains come back.
    let (cni_before, overlay_before) = (
        repairs(&lab, "node-1", "cni"),
        repairs(&lab, "node-1", "overlay"),
    );
    let (ok, out) = lab.exec(&ns, &["nft", "flush", "ruleset"]);
    assert!(ok, "nft flush ruleset: {out}");
    let text = wait_for_repair(&lab, "node-1", "cni", cni_before, "postrouting");
    assert!(text.contains("restored"), "{text}");
    wait_for_repair(&lab, "node-1", "overlay", overlay_before, "overlay_mss");
    let (_, table) = lab.exec(&ns, &["nft", "list", "table", "inet", "skein"]);
    assert!(table.contains("masquerade"), "{table}");
    assert!(table.contains("maxseg size set rt mtu"), "{table}");
    all_talk(&lab, &pods, "after nft flush ruleset");

    // 2. The pod bridge is deleted: made again, with its address, and the pods' links back on it.
    let before = repairs(&lab, "node-1", "cni");
    let (ok, out) = lab.exec(&ns, &["ip", "link", "del", "skein0"]);
    assert!(ok, "ip link del skein0: {out}");
    let text = wait_for_repair(&lab, "node-1", "cni", before, "bridge skein0 made");
    assert!(text.contains("2 pod links re-attached"), "{text}");
    let (_, links) = lab.exec(&ns, &["ip", "-d", "link", "show", "master", "skein0"]);
    assert_eq!(links.matches("hairpin on").count(), 2, "{links}");
    all_talk(&lab, &pods, "after the bridge was deleted");
    let cni = part_of(&lab, "node-1", "cni");
    assert_eq!(cni["state"], "ok", "{cni}");

    // 3. The route to node-2's pods through the tunnel is deleted.
    let peers = skein_e2e::http_get(lab.page("node-1"), "/api/v1/peers")
        .map(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).expect("peers JSON"))
        .expect("node-1's peers");
    let dev = peers["interface"].as_str().expect("interface").to_string();
    let peer = peers["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["node"] == "node-2").cloned())
        .expect("node-2's peer");
    let cidr = peer["allowed_ips"][0]
        .as_str()
        .expect("allowed IP")
        .to_string();
    let before = repairs(&lab, "node-1", "overlay");
    let (ok, out) = lab.exec(&ns, &["ip", "route", "del", &cidr, "dev", &dev]);
    assert!(ok, "ip route del {cidr}: {out}");
    let text = wait_for_repair(&lab, "node-1", "overlay", before, "route");
    assert!(
        text.contains(&format!("route {cidr} via {dev} added")),
        "{text}"
    );
    all_talk(&lab, &pods, "after the overlay route was deleted");

    // 4. node-2's WireGuard peer is removed from node-1's device.
    let before = repairs(&lab, "node-1", "overlay");
    let key = peer["public_key"].as_str().expect("key");
    let (ok, out) = lab.exec(&ns, &["wg", "set", &dev, "peer", key, "remove"]);
    assert!(ok, "wg set {dev} peer {key} remove: {out}");
    let text = wait_for_repair(
        &lab,
        "node-1",
        "overlay",
        before,
        "peer of node node-2 added",
    );
    assert!(!text.is_empty());
    all_talk(&lab, &pods, "after the WireGuard peer was removed");

    // 5. node-1's userspace WireGuard device restarts (a new TUN, no key, no peers, no routes):
    //    the daemon configures it again.
    let before = repairs(&lab, "node-1", "overlay");
    lab.must(&["stop", "node-1-wg"]);
    lab.must(&["start", "node-1-wg"]);
    let text = wait_for_repair(&lab, "node-1", "overlay", before, "re-configured");
    assert!(text.contains("peer of node node-2 added"), "{text}");
    all_talk(&lab, &pods, "after node-1's WireGuard device restarted");
    let overlay = part_of(&lab, "node-1", "overlay");
    lab.wait("node-1's overlay to be ok", RESYNC, || {
        (part_of(&lab, "node-1", "overlay")["state"] == "ok").then_some(())
    });
    assert!(overlay["repairs"].as_u64() > Some(before));

    // 6. Nothing broken, pods come and go: no repair is reported (pod churn is not drift).
    let quiet = |lab: &Lab| {
        (
            repairs(lab, "node-1", "cni"),
            repairs(lab, "node-1", "overlay"),
        )
    };
    let settled = quiet(&lab);
    lab.apply(&pod_yaml("c", "node-1"));
    let c = lab.wait("pod c to run", Duration::from_secs(90), || {
        lab.pod("default", "c")
    });
    lab.wait("a -> c", RESYNC, || {
        lab.probe(&pods[0].1.0, "tcp", &format!("{}:8080", c.1))
    });
    lab.must(&["delete", "pod", "c"]);
    lab.wait("pod c to go", Duration::from_secs(60), || {
        lab.pod("default", "c").is_none().then_some(())
    });
    // Two of the overlay's device reads and a ruleset change of skein's own (none here) later:
    let (_, _) = lab.exec(&ns, &["nft", "add", "table", "inet", "someone_else"]);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        quiet(&lab),
        settled,
        "no drift was made, so none is reported"
    );
}

//! The lab and the daemons' cluster view, end to end: real kube-apiserver and
//! kube-controller-manager, real `skein run` in node namespaces, the packaged RBAC role.

use std::time::Duration;

use skein_e2e::lab::{self, Lab};
use skein_e2e::part;

/// Labs are heavy (an API server each): one at a time in this binary.
/// (name, pod CIDRs, ready) of every node in a daemon's view.
fn view(status: &serde_json::Value) -> Vec<(String, Vec<String>, serde_json::Value)> {
    status["cluster"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    let cidrs = n["pod_cidrs"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        n["name"].as_str().unwrap_or_default().to_string(),
                        cidrs,
                        n["ready"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_nodes_see_each_other_follow_deletions_and_survive_an_api_outage() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let nodes = lab.node_names();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
    // `up` returns once every node is healthy: the status taken right after it says so.
    for node in lab.status["nodes"].as_array().expect("nodes") {
        assert_eq!(node["overall"], "ok", "right after up: {node}");
        assert_eq!(node["problems"], serde_json::json!([]), "{node}");
    }

    // Every daemon lists the three nodes with the pod CIDRs the controller manager allocated,
    // and the underlay address each skein published with the packaged RBAC role.
    for node in &nodes {
        let status = lab.wait(
            &format!("{node}'s view of 3 nodes with pod CIDRs"),
            Duration::from_secs(60),
            || {
                let s = lab.node_status(node)?;
                let v = view(&s);
                (v.len() == 3 && v.iter().all(|(_, cidrs, _)| !cidrs.is_empty())).then_some(s)
            },
        );
        let cidrs: Vec<String> = view(&status).into_iter().flat_map(|(_, c, _)| c).collect();
        let mut distinct = cidrs.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "each node its own CIDR: {cidrs:?}");
        assert!(
            cidrs
                .iter()
                .all(|c| c.starts_with("10.42.") && c.ends_with("/24")),
            "{cidrs:?}"
        );
        lab.wait(
            &format!("{node}'s cluster part ok and all addresses published"),
            Duration::from_secs(30),
            || {
                let s = lab.node_status(node)?;
                let published = s["cluster"]["nodes"]
                    .as_array()?
                    .iter()
                    .all(|n| n["underlay_address"].is_string());
                (part(&s, "cluster")["state"] == "ok" && published).then_some(())
            },
        );
    }

    // A command runs inside a node: it sees the underlay address the lab gave it.
    let (ok, addrs) = lab.exec(
        &lab.netns("node-2"),
        &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
    );
    assert!(ok && addrs.contains("198.18.0.12/24"), "{addrs}");

    // `apply` creates and updates objects of any kind the API serves.
    let applied = lab.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    assert_eq!(applied.lines().count(), 3, "{applied}");
    for (kind, name) in [
        ("namespaces", "shop"),
        ("services", "web"),
        ("networkpolicies", "deny"),
    ] {
        let out = lab.must(&["get", kind]);
        assert!(out.contains(name), "{kind}: {out}");
    }
    lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 81}]}\n");
    let services = lab.must(&["get", "services", "-o", "json"]);
    assert!(
        services.contains("\"port\": 81"),
        "updated in place: {services}"
    );

    // The page shows the same view to a person.
    if skein_e2e::require(
        skein_e2e::which("chromium").is_some(),
        "Debian's chromium is not installed",
    ) {
        let dom = skein_e2e::rendered_dom(&format!("http://{}/", lab.page("node-1")));
        for node in &nodes {
            assert!(
                dom.contains(&format!(r#"data-node="{node}""#)),
                "{node} missing from the page:\n{dom}"
            );
        }
        assert!(dom.contains("node-1 (this node)"), "{dom}");
        assert!(dom.contains("Kubernetes API reachable"), "{dom}");
        assert!(dom.contains("10.42."), "pod CIDRs on the page:\n{dom}");
    }

    // Deleting a Node object removes it from every daemon's view within 2 s.
    lab.must(&["delete", "node", "node-3"]);
    for node in &nodes {
        lab.wait(
            &format!("node-3 gone from {node}'s view"),
            Duration::from_secs(2),
            || {
                let v = view(&lab.node_status(node)?);
                (v.len() == 2 && !v.iter().any(|(n, _, _)| n == "node-3")).then_some(())
            },
        );
    }

    // The API server goes away for 10 s: the daemons keep running and keep their view, and say
    // the API is unreachable.
    lab.must(&["stop", "apiserver"]);
    let outage_started = std::time::Instant::now();
    for node in ["node-1", "node-2"] {
        let status = lab.wait(
            &format!("{node} to report the outage"),
            Duration::from_secs(30),
            || {
                let s = lab.node_status(node)?;
                (s["cluster"]["api_reachable"] == false
                    && part(&s, "cluster")["state"] == "degraded")
                    .then_some(s)
            },
        );
        assert_eq!(status["ready"], true, "the daemon stays ready: {status}");
        assert_eq!(
            view(&status).len(),
            2,
            "the last view stays in force: {status}"
        );
        let cluster = part(&status, "cluster");
        assert!(
            cluster["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("unreachable"),
            "{cluster}"
        );
        assert!(cluster["last_error"].is_string(), "{cluster}");
    }
    if let Some(rest) = Duration::from_secs(10).checked_sub(outage_started.elapsed()) {
        std::thread::sleep(rest);
    }
    lab.must(&["start", "apiserver"]);

    // After it returns (same kine database), the views converge on changes made since.
    lab.wait(
        "the API server to answer again",
        Duration::from_secs(60),
        || lab.run(&["get", "nodes"]).0.then_some(()),
    );
    lab.must(&["delete", "node", "node-2"]);
    for node in ["node-1", "node-2"] {
        lab.wait(
            &format!("{node} to converge after the outage"),
            Duration::from_secs(90),
            || {
                let s = lab.node_status(node)?;
                let v = view(&s);
                let names: Vec<&str> = v.iter().map(|(n, _, _)| n.as_str()).collect();
                (s["cluster"]["api_reachable"] == true && names == ["node-1"]).then_some(())
            },
        );
    }
    // node-1's own object is still there: its view is whole again.
    lab.wait(
        "node-1's cluster part to recover",
        Duration::from_secs(30),
        || (part(&lab.node_status("node-1")?, "cluster")["state"] == "ok").then_some(()),
    );
}

/// A node cut off from a running API server (no restart, so nothing changes and no watch
/// has to re-list) says so, and says it is back once the path returns: a quiet kind's watch
/// resumes without an event, and must not leave the view marked unreachable.
#[test]
fn a_node_cut_off_from_a_running_api_server_recovers_when_the_path_returns() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(1, &[]);
    let netns = lab.netns("node-1");
    // Where the lab serves the API to its nodes.
    let (api, port) = ("198.18.0.1", "6443");
    // New connections to the API are reset, and the ones open now are aborted.
    let cut = format!(
        "table ip skein_test_cutoff {{ chain out {{ type filter hook output priority -300; \
         ip daddr {api} tcp dport {port} reject with tcp reset; }}; }}"
    );
    let (ok, out) = lab.exec(&netns, &["nft", &cut]);
    assert!(ok, "{out}");
    let (ok, out) = lab.exec(&netns, &["ss", "-K", "dst", api, "dport", "=", port]);
    assert!(ok, "{out}");
    let status = lab.wait(
        "node-1 to report the API unreachable",
        Duration::from_secs(30),
        || {
            let s = lab.node_status("node-1")?;
            (s["cluster"]["api_reachable"] == false).then_some(s)
        },
    );
    let cluster = part(&status, "cluster");
    assert_eq!(cluster["state"], "degraded", "{cluster}");
    // Long enough for every watch to have failed and be retrying with backoff.
    std::thread::sleep(Duration::from_secs(5));
    let (ok, out) = lab.exec(
        &netns,
        &["nft", "delete", "table", "ip", "skein_test_cutoff"],
    );
    assert!(ok, "{out}");
    lab.wait(
        "node-1 to see the API again, with nothing changed in the cluster",
        Duration::from_secs(45),
        || {
            let s = lab.node_status("node-1")?;
            (s["cluster"]["api_reachable"] == true && part(&s, "cluster")["state"] == "ok")
                .then_some(())
        },
    );
}

#[test]
fn a_stopped_node_is_marked_not_ready_by_the_node_lifecycle_controller() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(2, &[]);
    lab.wait(
        "node-1 to see node-2 ready",
        Duration::from_secs(60),
        || {
            let v = view(&lab.node_status("node-1")?);
            v.iter()
                .any(|(n, _, ready)| n == "node-2" && *ready == true)
                .then_some(())
        },
    );
    // Stopping the node stops its skein and its kubelet heartbeats: after the controller
    // manager's grace period (25 s in the lab) the real node lifecycle controller marks it.
    lab.must(&["stop", "node-2"]);
    lab.wait(
        "node-1 to see node-2 not ready",
        Duration::from_secs(90),
        || {
            let v = view(&lab.node_status("node-1")?);
            v.iter()
                .any(|(n, _, ready)| n == "node-2" && *ready != true)
                .then_some(())
        },
    );
    let out = lab.must(&["get", "nodes", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("json");
    let node2 = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["metadata"]["name"] == "node-2"))
        .expect("node-2");
    let ready = node2["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("Ready");
    assert_eq!(ready["status"], "Unknown", "{ready}");
    assert_eq!(
        ready["reason"], "NodeStatusUnknown",
        "set by the node lifecycle controller: {ready}"
    );
}

#[test]
fn a_role_without_a_needed_verb_is_named_on_the_status_page() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let packaged = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/rbac.yaml"
    ))
    .expect("packaging/rbac.yaml");
    let without_list = packaged.replace(
        "resources: [\"networkpolicies\"]\n    verbs: [\"list\", \"watch\"]",
        "resources: [\"networkpolicies\"]\n    verbs: [\"watch\"]",
    );
    assert_ne!(
        packaged, without_list,
        "the packaged role grants list on networkpolicies"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let rbac = dir.path().join("rbac.yaml");
    std::fs::write(&rbac, without_list).expect("write");
    // Set up broken on purpose: the node cannot become ok, so `up` waits only for it to be ready.
    let lab = Lab::up(
        1,
        &["--rbac", rbac.to_str().expect("utf-8"), "--allow-unhealthy"],
    );
    let status = lab.wait(
        "the missing verb on the status page",
        Duration::from_secs(60),
        || {
            let s = lab.node_status("node-1")?;
            let cluster = part(&s, "cluster").clone();
            (cluster["state"] == "degraded" && cluster["last_error"].is_string()).then_some(cluster)
        },
    );
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("list") && error.contains("networkpolicies"),
        "names verb and resource: {status}"
    );
}

#[test]
fn down_leaves_nothing_behind_even_after_the_lab_was_killed() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(2, &[]);
    let name = lab.name.clone();
    let dir = lab.dir();
    assert!(std::path::Path::new(&dir).exists());

    // SIGKILL every process of the lab, as a crash would.
    let pids = tagged(&name);
    assert!(
        pids.len() >= 6,
        "kine, apiserver, controller-manager, agent and 2 skein: {pids:?}"
    );
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    lab.must(&["down"]);

    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&lab.extra_netns("")),
        "namespaces left: {netns}"
    );
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&name),
        "host links left"
    );
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left");
    // Killed processes are reaped by init in its own time; none may stay alive.
    lab.wait(
        "every lab process to be gone",
        Duration::from_secs(10),
        || tagged(&name).is_empty().then_some(()),
    );
}

/// Live (non-zombie) processes tagged with this lab's name.
fn tagged(lab: &str) -> Vec<u32> {
    let marker = format!("SKEIN_LAB={lab}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let live = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, r)| !r.starts_with('Z'))
                })
                .unwrap_or(false);
            live && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes())
        })
        .collect()
}

//! Pod networking end to end: pods applied through the real API server, wired by the real CNI
//! plugin and daemon in lab nodes, reaching each other, their node and (masqueraded) the world
//! outside the cluster CIDR; Services getting their EndpointSlices from the real controller.

use std::collections::BTreeSet;
use std::time::Duration;

use skein_e2e::lab::{self, Lab};

fn pod_yaml(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n  containers: [{{name: main, image: lab, ports: [{{containerPort: 8080}}, {{containerPort: 8080, protocol: UDP}}]}}]\n"
    )
}

/// Waits until every named pod runs; returns (netns, ip) per pod, in order.
fn running(lab: &Lab, names: &[String]) -> Vec<(String, String)> {
    lab.wait(
        "the pods to run with addresses",
        Duration::from_secs(90),
        || {
            names
                .iter()
                .map(|n| lab.pod("default", n))
                .collect::<Option<Vec<_>>>()
        },
    )
}

#[test]
fn twenty_pods_get_distinct_addresses_and_reach_each_other_and_the_node() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(1, &[]);
    let names: Vec<String> = (1..=20).map(|i| format!("p{i:02}")).collect();
    let yaml: Vec<String> = names
        .iter()
        .map(|n| pod_yaml(n, "node-1", "mesh"))
        .collect();
    lab.apply(&yaml.join("---\n"));
    let pods = running(&lab, &names);

    let ips: BTreeSet<&str> = pods.iter().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), 20, "every pod its own address: {pods:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.42.")), "{ips:?}");

    // Full mesh, TCP and UDP: each answer names the target pod and sees the source pod's own
    // address (no NAT between pods).
    for (i, (from_ns, from_ip)) in pods.iter().enumerate() {
        for (j, (_, to_ip)) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            for protocol in ["tcp", "udp"] {
                let answer = lab.probe(from_ns, protocol, &format!("{to_ip}:8080"));
                assert_eq!(
                    answer.as_deref(),
                    Some(format!("{} {from_ip}", names[j]).as_str()),
                    "{} -> {} over {protocol}",
                    names[i],
                    names[j]
                );
            }
        }
    }

    // The node: a listener on its underlay address answers every pod.
    lab.serve_in(&lab.netns("node-1"), "node-1", 9000);
    for (i, (ns, ip)) in pods.iter().enumerate() {
        for protocol in ["tcp", "udp"] {
            let answer = lab.wait(
                &format!("{} to reach its node", names[i]),
                Duration::from_secs(10),
                || lab.probe(ns, protocol, "198.18.0.11:9000"),
            );
            assert_eq!(
                answer,
                format!("node-1 {ip}"),
                "{} -> node over {protocol}",
                names[i]
            );
        }
    }

    // The status page lists the pods and the CIDR's use.
    if skein_e2e::require(
        skein_e2e::which("chromium").is_some(),
        "Debian's chromium is not installed",
    ) {
        lab.wait("the page to list the pods", Duration::from_secs(10), || {
            let dom = skein_e2e::rendered_dom(&format!("http://{}/", lab.page("node-1")));
            (dom.contains(r#"data-pod="default/p01""#)
                && dom.contains(r#"data-pod="default/p20""#)
                && dom.contains("20 used"))
            .then_some(())
        });
    }
    lab.wait(
        "the page's IPAM view of 20 pods",
        Duration::from_secs(5),
        || {
            let status = lab.node_status("node-1")?;
            (status["ipam"]["pods"].as_array().map(Vec::len) == Some(20)
                && status["ipam"]["cidrs"][0]["used"] == 20)
                .then_some(())
        },
    );
}

#[test]
fn services_get_the_pods_addresses_and_deleting_a_pod_frees_its_lease() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(2, &[]);
    lab.apply(&format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
        pod_yaml("web-1", "node-1", "web"),
        pod_yaml("web-2", "node-2", "web")
    ));
    let pods = running(&lab, &["web-1".to_string(), "web-2".to_string()]);
    let mut want: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
    want.sort();

    // The real EndpointSlice controller makes the slice from the pods' CNI addresses...
    lab.wait(
        "the EndpointSlice with both pods",
        Duration::from_secs(60),
        || {
            let out = lab.run(&["get", "endpointslices", "-o", "json"]).1;
            want.iter()
                .all(|ip| out.contains(&format!("\"{ip}\"")))
                .then_some(())
        },
    );
    // ...and every daemon's view has it within 2 s.
    for node in ["node-1", "node-2"] {
        lab.wait(
            &format!("{node}'s view of the service's endpoints"),
            Duration::from_secs(2),
            || {
                let s = lab.node_status(node)?;
                let web = s["cluster"]["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == "web")?
                    .clone();
                let mut have: Vec<String> = web["endpoints"]
                    .as_array()?
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect();
                have.sort();
                (have == want).then_some(())
            },
        );
    }

    // Deleting a pod through the API: CNI DEL, lease freed, namespace gone, object gone.
    let (netns, ip) = pods[0].clone();
    lab.must(&["delete", "pod", "web-1"]);
    lab.wait(
        "web-1 to be gone from the API",
        Duration::from_secs(60),
        || {
            let out = lab.run(&["get", "pods"]).1;
            (!out.contains("web-1")).then_some(())
        },
    );
    lab.wait("web-1's lease to be freed", Duration::from_secs(10), || {
        let s = lab.node_status("node-1")?;
        let pods = s["ipam"]["pods"].as_array()?;
        pods.iter()
            .all(|p| p["address"] != ip.as_str())
            .then_some(())
    });
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&netns),
        "pod namespace left"
    );
    lab.wait(
        "node-1's view of the endpoints without web-1",
        Duration::from_secs(60),
        || {
            let s = lab.node_status("node-1")?;
            let web = s["cluster"]["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "web")?
                .clone();
            (!web["endpoints"]
                .as_array()?
                .iter()
                .any(|e| e == ip.as_str()))
            .then_some(())
        },
    );
}

#[test]
fn traffic_leaving_the_cluster_cidr_is_masqueraded_and_pod_traffic_is_not() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(1, &[]);
    lab.apply(&format!(
        "{}---\n{}",
        pod_yaml("a", "node-1", "x"),
        pod_yaml("b", "node-1", "x")
    ));
    let pods = running(&lab, &["a".to_string(), "b".to_string()]);
    let ((a_ns, a_ip), (_, b_ip)) = (&pods[0], &pods[1]);

    // A listener outside the cluster CIDR, in a namespace of its own (the lab's control plane,
    // 198.18.0.1): it sees the node's address, not the pod's.
    let outside = lab.control_plane_netns();
    lab.serve_in(&outside, "outside", 9100);
    for protocol in ["tcp", "udp"] {
        let answer = lab.wait("the outside listener", Duration::from_secs(10), || {
            lab.probe(a_ns, protocol, "198.18.0.1:9100")
        });
        assert_eq!(
            answer, "outside 198.18.0.11",
            "masqueraded to the node's address over {protocol}"
        );
    }
    // Pod to pod keeps the source.
    assert_eq!(
        lab.probe(a_ns, "tcp", &format!("{b_ip}:8080")).as_deref(),
        Some(format!("b {a_ip}").as_str())
    );
}

/// The EndpointSlice endpoints of Service `service`: (address, ready, serving, terminating).
fn slice_endpoints(lab: &Lab, service: &str) -> Vec<(String, bool, bool, bool)> {
    let out = lab.run(&["get", "endpointslices", "-o", "json"]).1;
    let slices: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut found = Vec::new();
    for slice in slices.as_array().into_iter().flatten() {
        if slice["metadata"]["labels"]["kubernetes.io/service-name"] != service {
            continue;
        }
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let c = &ep["conditions"];
            found.push((
                ep["addresses"][0].as_str().unwrap_or_default().to_string(),
                c["ready"] == true,
                c["serving"] == true,
                c["terminating"] == true,
            ));
        }
    }
    found
}

#[test]
fn the_control_plane_reaches_pods_directly_and_a_deleted_pod_serves_through_its_grace_period() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(2, &[]);
    let grace = |name: &str, node: &str, secs: u32| {
        pod_yaml(name, node, "g").replace(
            "  containers:",
            &format!("  terminationGracePeriodSeconds: {secs}\n  containers:"),
        )
    };
    lab.apply(&format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: g, namespace: default}}\n\
         spec: {{selector: {{app: g}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
        grace("g-1", "node-1", 20),
        grace("g-2", "node-2", 20)
    ));
    let pods = running(&lab, &["g-1".to_string(), "g-2".to_string()]);

    // The control plane's namespace has a route to each node's pod CIDR via the node, and
    // reaches every pod with its own address (no NAT on the way, as a webhook call).
    let cp = lab.control_plane_netns();
    for (node, address) in [("node-1", "198.18.0.11"), ("node-2", "198.18.0.12")] {
        let cidr = {
            let out = lab.must(&["get", "nodes", "-o", "json"]);
            let nodes: serde_json::Value = serde_json::from_str(&out).expect("nodes");
            nodes
                .as_array()
                .and_then(|a| a.iter().find(|n| n["metadata"]["name"] == node))
                .and_then(|n| n["spec"]["podCIDR"].as_str())
                .expect("podCIDR")
                .to_string()
        };
        lab.wait(
            &format!("the control plane's route to {node}'s pods"),
            Duration::from_secs(15),
            || {
                let (_, routes) = lab.exec(&cp, &["ip", "-4", "route", "show", &cidr]);
                routes.contains(&format!("via {address}")).then_some(())
            },
        );
    }
    for (name, (_, ip)) in ["g-1", "g-2"].iter().zip(&pods) {
        let answer = lab.wait(
            &format!("the control plane to reach {name}"),
            Duration::from_secs(10),
            || lab.ask(&cp, "tcp", &format!("{ip}:8080")),
        );
        assert_eq!(answer, (name.to_string(), "198.18.0.1".to_string()));
    }
    // And a pod reaches the API server at its own address (the `kubernetes` Service's
    // endpoint): an HTTP answer over TLS, verified against the lab's CA.
    let api = lab.probe_outcome(
        &pods[0].0,
        "https",
        "198.18.0.1:6443",
        &["--ca", &lab.ca_cert(), "--path", "/version"],
    );
    assert!(
        api.status.is_some(),
        "the API server answers a pod: {api:?}"
    );

    // A deleted pod keeps serving through its grace period, as a kubelet's does: the
    // EndpointSlice controller shows it terminating, still serving, no longer ready.
    let (g1_ns, g1_ip) = pods[0].clone();
    let deleted = std::time::Instant::now();
    lab.must(&["delete", "pod", "g-1"]);
    lab.wait(
        "g-1 to be terminating and serving in the EndpointSlice",
        Duration::from_secs(15),
        || {
            slice_endpoints(&lab, "g")
                .contains(&(g1_ip.clone(), false, true, true))
                .then_some(())
        },
    );
    assert!(
        slice_endpoints(&lab, "g").contains(&(pods[1].1.clone(), true, true, false)),
        "g-2 stays ready: {:?}",
        slice_endpoints(&lab, "g")
    );
    while deleted.elapsed() < Duration::from_secs(12) {
        assert_eq!(
            lab.ask(&pods[1].0, "tcp", &format!("{g1_ip}:8080")),
            Some(("g-1".to_string(), pods[1].1.clone())),
            "g-1 serves {:?} after its deletion",
            deleted.elapsed()
        );
        assert!(
            lab.pod("default", "g-1").is_some(),
            "g-1 is still in the API {:?} after its deletion (grace period 20 s)",
            deleted.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.wait(
        "g-1 to be gone once its grace period ended",
        Duration::from_secs(20),
        || {
            let out = lab.run(&["get", "pods"]).1;
            (!out.contains("g-1")).then_some(())
        },
    );
    assert!(
        deleted.elapsed() >= Duration::from_secs(19),
        "g-1 went after {:?}, before its 20 s grace period ended",
        deleted.elapsed()
    );
    lab.wait("g-1's namespace to go", Duration::from_secs(5), || {
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        (!String::from_utf8_lossy(&out.stdout).contains(&g1_ns)).then_some(())
    });

    // A deletion with grace period 0 ends at once.
    let deleted = std::time::Instant::now();
    lab.must(&["delete", "pod", "g-2", "--grace-period", "0"]);
    lab.wait("g-2 to be gone", Duration::from_secs(10), || {
        let out = lab.run(&["get", "pods"]).1;
        (!out.contains("g-2")).then_some(())
    });
    lab.wait("g-2's workload to stop", Duration::from_secs(10), || {
        lab.probe_outcome(
            &lab.control_plane_netns(),
            "tcp",
            &format!("{}:8080", pods[1].1),
            &["--timeout", "1s"],
        )
        .answer
        .is_none()
        .then_some(())
    });
    assert!(deleted.elapsed() < Duration::from_secs(15));
}

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

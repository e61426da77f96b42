//! The service proxy end to end, in 3-node labs through the real API server and EndpointSlice
//! controller: ClusterIP from pods and nodes, the API server through the `kubernetes` Service,
//! NodePort, ClientIP affinity and its expiry, externalTrafficPolicy and internalTrafficPolicy
//! Local (with the health check node port), load-balancer source ranges, topology hints,
//! rejection without endpoints, hairpin, a UDP flow
//! leaving a removed endpoint, terminating endpoints, and a killed daemon that comes back to
//! the same ruleset without breaking a connection.
//!
//! Each answer of a lab workload names its pod and the source address it saw, so a test sees
//! both where a connection went and whether it was masqueraded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use skein_e2e::lab::{self, Lab};

/// How long a change may take to reach a node's rules (API watch, daemon's debounce, sync).
const PROGRAMMED: Duration = Duration::from_secs(30);

/// The address the tests' machine outside the cluster has on the underlay.
const OUTSIDE: &str = "198.18.0.200";

/// A pod of the lab's workload, answering on 8080 (TCP and UDP); `extra` is added to its spec.
fn pod(name: &str, node: &str, app: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n{extra}  containers: [{{name: main, image: lab, ports: [{{containerPort: 8080}}, {{containerPort: 8080, protocol: UDP}}]}}]\n"
    )
}

/// A Service selecting `app: <app>` with `spec` (YAML flow mapping entries) besides the
/// selector: e.g. `ports: [{port: 80, targetPort: 8080}]`.
fn service(name: &str, app: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{selector: {{app: {app}}}, {spec}}}\n"
    )
}

/// TCP and UDP on `port`, both to the pods' 8080.
fn tcp_and_udp(port: u16) -> String {
    format!(
        "ports: [{{name: tcp, port: {port}, targetPort: 8080, protocol: TCP}}, \
         {{name: udp, port: {port}, targetPort: 8080, protocol: UDP}}]"
    )
}

/// Applies `objects`, then waits until every named pod runs: (netns, ip) per pod, in order.
fn apply_and_run(lab: &Lab, objects: &[String], pods: &[&str]) -> Vec<(String, String)> {
    lab.apply(&objects.join("---\n"));
    lab.wait("the pods to run", Duration::from_secs(90), || {
        pods.iter()
            .map(|n| lab.pod("default", n))
            .collect::<Option<Vec<_>>>()
    })
}

/// The Service `name` as the API has it.
fn service_object(lab: &Lab, name: &str) -> serde_json::Value {
    let out = lab.must(&["get", "services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_str(&out).expect("services JSON");
    services
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["metadata"]["name"] == name && s["metadata"]["namespace"] == "default")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no Service {name}: {out}"))
}

fn cluster_ip(lab: &Lab, name: &str) -> String {
    service_object(lab, name)["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string()
}

/// One endpoint of a Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    address: String,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The endpoints of Service `name`'s EndpointSlices, in one object (a slice's endpoints as
/// JSON, from `get` or a watch event).
fn endpoints_of(slice: &serde_json::Value) -> Vec<Endpoint> {
    slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ep| Endpoint {
            address: ep["addresses"][0].as_str().unwrap_or_default().to_string(),
            ready: ep["conditions"]["ready"] == true,
            serving: ep["conditions"]["serving"] == true,
            terminating: ep["conditions"]["terminating"] == true,
        })
        .collect()
}

fn slice_of(slice: &serde_json::Value, service: &str) -> bool {
    slice["metadata"]["labels"]["kubernetes.io/service-name"] == service
        && slice["metadata"]["namespace"] == "default"
}

/// Every endpoint of Service `name` now.
fn endpoints(lab: &Lab, name: &str) -> Vec<Endpoint> {
    let out = lab.run(&["get", "endpointslices", "-o", "json"]).1;
    let slices: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut all: Vec<Endpoint> = slices
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| slice_of(s, name))
        .flat_map(endpoints_of)
        .collect();
    all.sort();
    all
}

/// Waits until Service `name`'s ready endpoints are exactly `ips`.
fn wait_ready_endpoints(lab: &Lab, name: &str, ips: &[&str]) {
    let want: BTreeSet<&str> = ips.iter().copied().collect();
    lab.wait(
        &format!("Service {name}'s ready endpoints {ips:?}"),
        Duration::from_secs(60),
        || {
            let eps = endpoints(lab, name);
            let ready: BTreeSet<&str> = eps
                .iter()
                .filter(|e| e.ready)
                .map(|e| e.address.as_str())
                .collect();
            (ready == want).then_some(())
        },
    );
}

/// Waits until `node`'s proxy has programmed Service `name` with exactly the endpoint
/// addresses `ips`: its page lists what the last sync put into the kernel. A probe that must
/// be dropped there waits for this first; before the node has the endpoints, a Service it
/// knows without any is refused, which is a different (and right) answer.
fn wait_programmed(lab: &Lab, node: &str, name: &str, ips: &[&str]) {
    let want: BTreeSet<&str> = ips.iter().copied().collect();
    lab.wait(
        &format!("{node}'s proxy to program Service {name} with endpoints {ips:?}"),
        PROGRAMMED,
        || {
            let section = services_section(lab, node)?;
            let rows = section["services"].as_array()?;
            let mut seen = BTreeSet::new();
            for row in rows.iter().filter(|r| r["name"] == name) {
                for e in row["endpoints"].as_array()? {
                    let address: std::net::SocketAddr = e["address"].as_str()?.parse().ok()?;
                    seen.insert(address.ip().to_string());
                }
            }
            let seen: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
            (seen == want).then_some(())
        },
    );
}

/// Waits until `target` answers a probe from `netns` (the rules are in place): the answer.
fn first_answer(lab: &Lab, netns: &str, protocol: &str, target: &str) -> (String, String) {
    lab.wait(
        &format!("{protocol} {target} to answer from {netns}"),
        PROGRAMMED,
        || lab.ask(netns, protocol, target),
    )
}

/// `count` probes from `netns`: every answer (pod, source seen); panics on one without, or on
/// a UDP answer from another address than the one asked (its NAT not undone).
fn answers(
    lab: &Lab,
    netns: &str,
    protocol: &str,
    target: &str,
    count: usize,
) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let outcome = lab.probe_outcome(netns, protocol, target, &[]);
            let answer = outcome.workload().unwrap_or_else(|| {
                panic!("probe {i} of {protocol} {target} from {netns} got no answer: {outcome:?}")
            });
            assert_eq!(
                outcome.from.as_deref(),
                Some(target),
                "the answer comes from the address asked: {outcome:?}"
            );
            answer
        })
        .collect()
}

fn names(answers: &[(String, String)]) -> BTreeSet<String> {
    answers.iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn a_cluster_ip_answers_pods_on_every_node_and_the_nodes_and_pods_reach_the_api_server() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let nodes = lab.node_names();
    let mut objects = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        objects.push(pod(&format!("web-{}", i + 1), node, "web", ""));
        objects.push(pod(&format!("client-{}", i + 1), node, "client", ""));
    }
    objects.push(service("web", "web", &tcp_and_udp(80)));
    let pods = apply_and_run(
        &lab,
        &objects,
        &[
            "web-1", "client-1", "web-2", "client-2", "web-3", "client-3",
        ],
    );
    let webs: Vec<&str> = pods.iter().step_by(2).map(|(_, ip)| ip.as_str()).collect();
    wait_ready_endpoints(&lab, "web", &webs);
    let vip = format!("{}:80", cluster_ip(&lab, "web"));
    let backends: BTreeSet<String> = ["web-1", "web-2", "web-3"].map(String::from).into();

    // From a pod on every node, TCP and UDP: every answer comes from a backend, which sees the
    // client pod's own address (pod to Service is not masqueraded); together they reach all three.
    let mut reached = BTreeSet::new();
    for (client_ns, client_ip) in pods.iter().skip(1).step_by(2) {
        for protocol in ["tcp", "udp"] {
            first_answer(&lab, client_ns, protocol, &vip);
            let got = answers(&lab, client_ns, protocol, &vip, 20);
            for (name, source) in &got {
                assert!(
                    backends.contains(name),
                    "{protocol} {vip} answered by {name}"
                );
                assert_eq!(
                    source, client_ip,
                    "{name} saw the client pod's own address over {protocol}"
                );
            }
            reached.extend(names(&got));
        }
    }
    assert_eq!(
        reached, backends,
        "the ClusterIP spreads over every endpoint"
    );

    // From each node itself.
    for node in &nodes {
        let ns = lab.netns(node);
        for protocol in ["tcp", "udp"] {
            first_answer(&lab, &ns, protocol, &vip);
            for (name, _) in answers(&lab, &ns, protocol, &vip, 5) {
                assert!(backends.contains(&name), "{node}: answered by {name}");
            }
        }
    }

    // A pod on each node reaches the API server through the `kubernetes` Service: an HTTP
    // answer over TLS, the server's certificate verified against the lab's CA (any status is
    // an answer: this is the network, not the pod's rights).
    for (client_ns, _) in pods.iter().skip(1).step_by(2) {
        let https = |timeout: &str| {
            lab.probe_outcome(
                client_ns,
                "https",
                "10.43.0.1:443",
                &[
                    "--ca",
                    &lab.ca_cert(),
                    "--path",
                    "/version",
                    "--timeout",
                    timeout,
                ],
            )
        };
        let api = lab.wait(
            &format!("the API server through 10.43.0.1:443 from {client_ns}"),
            PROGRAMMED,
            || Some(https("3s")).filter(|p| p.status.is_some()),
        );
        assert!(api.answer.is_some(), "{api:?}");
    }
}

#[test]
fn a_node_port_answers_on_every_nodes_address_from_another_node_and_from_outside() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    // Endpoints on node-1 and node-2; node-3 has none and forwards (eTP Cluster).
    let pods = apply_and_run(
        &lab,
        &[
            pod("np-1", "node-1", "np", ""),
            pod("np-2", "node-2", "np", ""),
            service(
                "np",
                "np",
                "type: NodePort, externalIPs: [203.0.113.10], \
                 ports: [{name: tcp, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}, \
                 {name: udp, port: 80, targetPort: 8080, nodePort: 30080, protocol: UDP}]",
            ),
        ],
        &["np-1", "np-2"],
    );
    wait_ready_endpoints(&lab, "np", &[&pods[0].1, &pods[1].1]);
    let backends: BTreeSet<String> = ["np-1", "np-2"].map(String::from).into();
    let outside = lab.outside("out", OUTSIDE);

    // From node-2 to the other nodes' addresses, and from outside to every node's.
    let mut tried = Vec::new();
    for target_node in ["node-1", "node-3"] {
        tried.push((lab.netns("node-2"), "node-2".to_string(), target_node));
    }
    for target_node in ["node-1", "node-2", "node-3"] {
        tried.push((outside.clone(), "outside".to_string(), target_node));
    }
    for (from_ns, from, target_node) in tried {
        let target = format!("{}:30080", lab.address(target_node));
        for protocol in ["tcp", "udp"] {
            first_answer(&lab, &from_ns, protocol, &target);
            for (name, _) in answers(&lab, &from_ns, protocol, &target, 5) {
                assert!(
                    backends.contains(&name),
                    "{from} -> {target_node}'s NodePort over {protocol}: {name}"
                );
            }
        }
    }

    // The external IP, routed by the outside machine through a node with an endpoint and
    // through one without.
    for via in ["node-1", "node-3"] {
        route_via(&lab, &outside, "203.0.113.10", via);
        for protocol in ["tcp", "udp"] {
            first_answer(&lab, &outside, protocol, "203.0.113.10:80");
            for (name, _) in answers(&lab, &outside, protocol, "203.0.113.10:80", 5) {
                assert!(
                    backends.contains(&name),
                    "outside -> the external IP via {via} over {protocol}: {name}"
                );
            }
        }
    }
}

#[test]
fn client_ip_affinity_sticks_to_one_endpoint_and_expires() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let nodes = lab.node_names();
    let mut objects = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        objects.push(pod(&format!("aff-{}", i + 1), node, "aff", ""));
        objects.push(pod(&format!("c-{}", i + 1), node, "client", ""));
    }
    objects.push(service(
        "aff",
        "aff",
        "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}, \
         ports: [{port: 80, targetPort: 8080}]",
    ));
    let pods = apply_and_run(
        &lab,
        &objects,
        &["aff-1", "c-1", "aff-2", "c-2", "aff-3", "c-3"],
    );
    let backends: Vec<&str> = pods.iter().step_by(2).map(|(_, ip)| ip.as_str()).collect();
    wait_ready_endpoints(&lab, "aff", &backends);
    let vip = format!("{}:80", cluster_ip(&lab, "aff"));
    let clients: Vec<&str> = pods
        .iter()
        .skip(1)
        .step_by(2)
        .map(|(ns, _)| ns.as_str())
        .collect();

    // Each client, one on each node, sticks: many connections in a row, one endpoint.
    let stuck = |round: usize| -> Vec<String> {
        clients
            .iter()
            .map(|ns| {
                let got = names(&answers(&lab, ns, "tcp", &vip, 15));
                assert_eq!(
                    got.len(),
                    1,
                    "round {round}: one endpoint for every connection from {ns} within the \
                     affinity timeout, got {got:?}"
                );
                got.into_iter().next().expect("one")
            })
            .collect()
    };
    for ns in &clients {
        first_answer(&lab, ns, "tcp", &vip);
    }
    // The first answers above started each client's affinity; a round starts right after.
    let mut previous = stuck(0);
    // Idle past the timeout (10 s), affinity expires and the next connection is a new draw:
    // over three clients and a few rounds, some client lands elsewhere (each draw stays on the
    // same endpoint with probability 1/3; nine such draws all staying: 1 in 19683).
    let mut moved = Vec::new();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_secs(12));
        let now = stuck(round);
        for (i, (before, after)) in previous.iter().zip(&now).enumerate() {
            if before != after {
                moved.push(format!("c-{} in round {round}: {before} -> {after}", i + 1));
            }
        }
        previous = now;
        if !moved.is_empty() {
            break;
        }
    }
    assert!(
        !moved.is_empty(),
        "after the affinity timeout no client ever reached another endpoint: {previous:?}"
    );
    eprintln!("affinity expired: {moved:?}");
}

/// `GET /` on a health check node port from `netns`: (status, body as JSON).
fn health_check(lab: &Lab, netns: &str, target: &str) -> Option<(u16, serde_json::Value)> {
    let p = lab.probe_outcome(netns, "http", target, &["--timeout", "2s"]);
    let status = p.status?;
    let body = serde_json::from_str(p.answer.as_deref()?).ok()?;
    Some((status, body))
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_drops_where_no_endpoint_is() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let pods = apply_and_run(
        &lab,
        &[
            pod("local-1", "node-1", "local", ""),
            pod("c-2", "node-2", "client", ""),
            // A LoadBalancer (the lab has no load balancer: its NodePort is what counts) gets
            // a healthCheckNodePort with eTP Local.
            service(
                "local",
                "local",
                "type: LoadBalancer, externalTrafficPolicy: Local, \
                 ports: [{port: 80, targetPort: 8080, nodePort: 30081}]",
            ),
        ],
        &["local-1", "c-2"],
    );
    wait_ready_endpoints(&lab, "local", &[&pods[0].1]);
    let health_port = service_object(&lab, "local")["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a healthCheckNodePort for eTP Local");
    let outside = lab.outside("out", OUTSIDE);
    let node = |n: &str, port: u64| format!("{}:{port}", lab.address(n));

    // Through node-1, which has the endpoint: the pod sees the outside client's own address.
    let (name, source) = first_answer(&lab, &outside, "tcp", &node("node-1", 30081));
    assert_eq!(name, "local-1");
    assert_eq!(source, OUTSIDE, "eTP Local keeps the client's address");
    for (name, source) in answers(&lab, &outside, "tcp", &node("node-1", 30081), 5) {
        assert_eq!((name.as_str(), source.as_str()), ("local-1", OUTSIDE));
    }

    // node-2 has no local endpoint: the connection is dropped (times out), not refused or
    // reset, so the client's load balancer moves on by its health check.
    for n in ["node-2", "node-3"] {
        wait_programmed(&lab, n, "local", &[&pods[0].1]);
        let p = lab.probe_outcome(&outside, "tcp", &node(n, 30081), &["--timeout", "2s"]);
        assert_eq!(
            p.error_kind.as_deref(),
            Some("timeout"),
            "{n} has no local endpoint: dropped, not answered, refused or reset: {p:?}"
        );
    }

    // The health check node port, as kube-proxy answers it: 200 with the count of local
    // endpoints where there is one, 503 where there is none.
    let (status, body) = lab.wait("node-1's health check node port", PROGRAMMED, || {
        health_check(&lab, &outside, &node("node-1", health_port))
    });
    assert_eq!(status, 200, "{body}");
    assert!(body["localEndpoints"].as_u64() >= Some(1), "{body}");
    assert_eq!(body["service"]["name"], "local", "{body}");
    assert_eq!(body["service"]["namespace"], "default", "{body}");
    for n in ["node-2", "node-3"] {
        let (status, body) = lab.wait(&format!("{n}'s health check node port"), PROGRAMMED, || {
            health_check(&lab, &outside, &node(n, health_port))
        });
        assert_eq!(status, 503, "{n}: {body}");
        assert_eq!(body["localEndpoints"], 0, "{n}: {body}");
    }

    // Traffic from inside the cluster is not external: a pod on node-2 and node-2 itself reach
    // the endpoint through node-2's own NodePort, short-circuited to every endpoint as
    // kube-proxy does, though node-2 has none of its own.
    for (who, ns) in [
        ("a pod on node-2", pods[1].0.clone()),
        ("node-2", lab.netns("node-2")),
    ] {
        let (name, _) = lab.wait(
            &format!("{who} to reach the eTP Local NodePort on node-2, which has no endpoint"),
            PROGRAMMED,
            || lab.ask(&ns, "tcp", &node("node-2", 30081)),
        );
        assert_eq!(name, "local-1", "{who}");
    }
}

#[test]
fn internal_traffic_policy_local_reaches_only_the_clients_own_node() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let pods = apply_and_run(
        &lab,
        &[
            pod("itp-1", "node-1", "itp", ""),
            pod("itp-2", "node-2", "itp", ""),
            pod("c-1", "node-1", "client", ""),
            pod("c-2", "node-2", "client", ""),
            pod("c-3", "node-3", "client", ""),
            service(
                "itp",
                "itp",
                "internalTrafficPolicy: Local, ports: [{port: 80, targetPort: 8080}]",
            ),
        ],
        &["itp-1", "itp-2", "c-1", "c-2", "c-3"],
    );
    wait_ready_endpoints(&lab, "itp", &[&pods[0].1, &pods[1].1]);
    let vip = format!("{}:80", cluster_ip(&lab, "itp"));
    for (client, local) in [(&pods[2], "itp-1"), (&pods[3], "itp-2")] {
        first_answer(&lab, &client.0, "tcp", &vip);
        let got = names(&answers(&lab, &client.0, "tcp", &vip, 20));
        assert_eq!(
            got,
            BTreeSet::from([local.to_string()]),
            "iTP Local: only the node's own endpoint"
        );
    }
    // node-3 has no endpoint of its own: its pods' connections are dropped, as kube-proxy
    // drops them (the Service has endpoints, just none here; kube-proxy rejects only a
    // Service without any endpoint).
    wait_programmed(&lab, "node-3", "itp", &[&pods[0].1, &pods[1].1]);
    let p = lab.probe_outcome(&pods[4].0, "tcp", &vip, &["--timeout", "2s"]);
    assert_eq!(
        p.error_kind.as_deref(),
        Some("timeout"),
        "iTP Local without a local endpoint drops, as kube-proxy does: {p:?}"
    );
}

#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let pods = apply_and_run(
        &lab,
        &[
            pod("c-1", "node-1", "client", ""),
            pod("web-2", "node-2", "web", ""),
            service(
                "empty",
                "nothing",
                "type: NodePort, ports: [{name: tcp, port: 80, targetPort: 8080, nodePort: 30082, protocol: TCP}, \
                 {name: udp, port: 53, targetPort: 8080, nodePort: 30083, protocol: UDP}]",
            ),
            service("web", "web", "ports: [{port: 80, targetPort: 8080}]"),
        ],
        &["c-1", "web-2"],
    );
    wait_ready_endpoints(&lab, "web", &[&pods[1].1]);
    let empty = cluster_ip(&lab, "empty");
    let web = cluster_ip(&lab, "web");
    let outside = lab.outside("out", OUTSIDE);
    let node1 = lab.netns("node-1");
    let refused_at_once = |from: &str, protocol: &str, target: &str| {
        let refused = |p: &skein_e2e::lab::Probe| p.error_kind.as_deref() == Some("refused");
        lab.wait(
            &format!("{protocol} {target} to be refused from {from}"),
            PROGRAMMED,
            || {
                Some(lab.probe_outcome(from, protocol, target, &["--timeout", "2s"]))
                    .filter(refused)
            },
        );
        for _ in 0..5 {
            let p = lab.probe_outcome(from, protocol, target, &["--timeout", "2s"]);
            assert!(refused(&p), "{protocol} {target} from {from}: {p:?}");
            assert!(
                p.elapsed < Duration::from_millis(500),
                "refused at once, not after {:?}: {p:?}",
                p.elapsed
            );
        }
    };
    // From a pod, from the node, and from outside through the NodePort.
    refused_at_once(&pods[0].0, "tcp", &format!("{empty}:80"));
    refused_at_once(&pods[0].0, "udp", &format!("{empty}:53"));
    refused_at_once(&node1, "tcp", &format!("{empty}:80"));
    refused_at_once(&outside, "tcp", &format!("{}:30082", lab.address("node-1")));
    // A live ClusterIP on a port it does not serve is refused too; an address of the service
    // CIDR that no Service holds is dropped.
    first_answer(&lab, &pods[0].0, "tcp", &format!("{web}:80"));
    refused_at_once(&pods[0].0, "tcp", &format!("{web}:81"));
    let p = lab.probe_outcome(&pods[0].0, "tcp", "10.43.254.254:80", &["--timeout", "2s"]);
    assert_eq!(p.error_kind.as_deref(), Some("timeout"), "{p:?}");

    // An endpoint appears: the Service answers.
    let added = apply_and_run(&lab, &[pod("late", "node-3", "nothing", "")], &["late"]);
    wait_ready_endpoints(&lab, "empty", &[&added[0].1]);
    let (name, _) = first_answer(&lab, &pods[0].0, "tcp", &format!("{empty}:80"));
    assert_eq!(name, "late");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let pods = apply_and_run(
        &lab,
        &[
            pod("hp", "node-1", "hp", ""),
            service("hp", "hp", &tcp_and_udp(80)),
        ],
        &["hp"],
    );
    wait_ready_endpoints(&lab, "hp", &[&pods[0].1]);
    let vip = format!("{}:80", cluster_ip(&lab, "hp"));
    let (ns, ip) = &pods[0];
    for protocol in ["tcp", "udp"] {
        let (name, source) = first_answer(&lab, ns, protocol, &vip);
        assert_eq!(name, "hp");
        // Hairpin is masqueraded: with its own address as the source the answer would stay
        // inside the pod and never be un-DNATed.
        assert_ne!(&source, ip, "hairpin over {protocol} is masqueraded");
        for (name, _) in answers(&lab, ns, protocol, &vip, 5) {
            assert_eq!(name, "hp");
        }
    }
}

/// Routes `address/32` from the outside namespace `ns` through `node`, as a router in front
/// of the cluster would send a load balancer's or an external IP's traffic.
fn route_via(lab: &Lab, ns: &str, address: &str, node: &str) {
    let route = format!("{address}/32");
    let via = lab.address(node);
    let (ok, out) = lab.exec(ns, &["ip", "route", "replace", &route, "via", &via]);
    assert!(ok, "{out}");
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients_to_the_load_balancer_address() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    const INGRESS: &str = "203.0.113.20";
    const DENIED: &str = "198.18.0.201";
    // The lab has no load balancer: the Service's status names the ingress address, as a
    // cloud controller would set it.
    let lb = |ranges: &str| {
        format!(
            "{}status: {{loadBalancer: {{ingress: [{{ip: {INGRESS}}}]}}}}\n",
            service(
                "lb",
                "lb",
                &format!(
                    "type: LoadBalancer, loadBalancerSourceRanges: [{ranges}], \
                     ports: [{{port: 80, targetPort: 8080}}]"
                ),
            )
        )
    };
    let pods = apply_and_run(
        &lab,
        &[
            pod("lb-1", "node-1", "lb", ""),
            lb(&format!("{OUTSIDE}/32")),
        ],
        &["lb-1"],
    );
    wait_ready_endpoints(&lab, "lb", &[&pods[0].1]);
    let node_port = service_object(&lab, "lb")["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a nodePort");
    let allowed = lab.outside("out", OUTSIDE);
    let denied = lab.outside("deny", DENIED);
    let target = format!("{INGRESS}:80");
    // Through a node with the endpoint and through one without (eTP Cluster forwards).
    for via in ["node-1", "node-3"] {
        route_via(&lab, &allowed, INGRESS, via);
        route_via(&lab, &denied, INGRESS, via);
        let (name, _) = first_answer(&lab, &allowed, "tcp", &target);
        assert_eq!(name, "lb-1", "the allowed client via {via}");
        let p = lab.probe_outcome(&denied, "tcp", &target, &["--timeout", "2s"]);
        assert_eq!(
            p.error_kind.as_deref(),
            Some("timeout"),
            "a client outside loadBalancerSourceRanges is dropped at the load balancer's \
             address via {via}: {p:?}"
        );
    }
    // The ranges guard the load balancer's address only, as kube-proxy's do: the same client
    // reaches the Service's NodePort.
    let (name, _) = first_answer(
        &lab,
        &denied,
        "tcp",
        &format!("{}:{node_port}", lab.address("node-3")),
    );
    assert_eq!(name, "lb-1");
    // Its address added to the ranges, it is admitted too: the ranges, not the route, kept it
    // out.
    lab.apply(&lb(&format!("{OUTSIDE}/32, {DENIED}/32")));
    let (name, _) = first_answer(&lab, &denied, "tcp", &target);
    assert_eq!(name, "lb-1");
    let (name, _) = first_answer(&lab, &allowed, "tcp", &target);
    assert_eq!(name, "lb-1");
}

/// The zones the EndpointSlice controller hinted for each endpoint address of Service `name`,
/// once every endpoint has some.
fn zone_hints(lab: &Lab, name: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let out = lab.run(&["get", "endpointslices", "-o", "json"]).1;
    let slices: serde_json::Value = serde_json::from_str(&out).ok()?;
    let mut hints = BTreeMap::new();
    for slice in slices.as_array()?.iter().filter(|s| slice_of(s, name)) {
        for ep in slice["endpoints"].as_array()? {
            let zones: Vec<String> = ep["hints"]["forZones"]
                .as_array()?
                .iter()
                .filter_map(|z| z["name"].as_str().map(String::from))
                .collect();
            hints.insert(ep["addresses"][0].as_str()?.to_string(), zones);
        }
    }
    (!hints.is_empty()).then_some(hints)
}

#[test]
fn topology_hints_keep_a_clients_connections_in_its_own_zone() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    // node-1 and node-2 in zone-a, node-3 in zone-b; the EndpointSlice controller gives each
    // endpoint its node's zone (`trafficDistribution: PreferClose`).
    for (node, zone) in [
        ("node-1", "zone-a"),
        ("node-2", "zone-a"),
        ("node-3", "zone-b"),
    ] {
        lab.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: \
             {{topology.kubernetes.io/zone: {zone}}}}}\n"
        ));
    }
    let pods = apply_and_run(
        &lab,
        &[
            pod("web-1", "node-1", "web", ""),
            pod("web-3", "node-3", "web", ""),
            pod("c-2", "node-2", "client", ""),
            pod("c-3", "node-3", "client", ""),
            service(
                "web",
                "web",
                "trafficDistribution: PreferClose, ports: [{port: 80, targetPort: 8080}]",
            ),
        ],
        &["web-1", "web-3", "c-2", "c-3"],
    );
    wait_ready_endpoints(&lab, "web", &[&pods[0].1, &pods[1].1]);
    let hints = lab.wait("zone hints on every endpoint", PROGRAMMED, || {
        zone_hints(&lab, "web")
    });
    assert_eq!(
        hints,
        BTreeMap::from([
            (pods[0].1.clone(), vec!["zone-a".to_string()]),
            (pods[1].1.clone(), vec!["zone-b".to_string()]),
        ]),
        "the controller's hints"
    );
    let vip = format!("{}:80", cluster_ip(&lab, "web"));
    // Before the hints reach a node its rules use both endpoints (and a connection to the
    // other zone's may go unanswered while the overlay to its node comes up): wait for a run
    // of answers from the client's zone alone, then every later one must be from it too.
    for (client, zone_endpoint) in [(&pods[2], "web-1"), (&pods[3], "web-3")] {
        lab.wait(
            &format!("{} to reach only {zone_endpoint}", client.0),
            PROGRAMMED,
            || {
                let got = (0..10)
                    .map(|_| lab.ask(&client.0, "tcp", &vip).map(|(name, _)| name))
                    .collect::<Option<BTreeSet<String>>>()?;
                (got.len() == 1 && got.contains(zone_endpoint)).then_some(())
            },
        );
        let got = names(&answers(&lab, &client.0, "tcp", &vip, 20));
        assert_eq!(
            got,
            BTreeSet::from([zone_endpoint.to_string()]),
            "a client in {zone_endpoint}'s zone"
        );
    }
}

#[test]
fn a_udp_flow_moves_to_a_live_endpoint_within_a_second_of_its_endpoints_removal() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let yaml = |name: &str, node: &str, app: &str| pod(name, node, app, "");
    let pods = apply_and_run(
        &lab,
        &[
            yaml("u-1", "node-1", "u"),
            yaml("u-2", "node-2", "u"),
            yaml("c-3", "node-3", "client"),
            service(
                "u",
                "u",
                "ports: [{port: 5353, targetPort: 8080, protocol: UDP}]",
            ),
        ],
        &["u-1", "u-2", "c-3"],
    );
    wait_ready_endpoints(&lab, "u", &[&pods[0].1, &pods[1].1]);
    let vip = format!("{}:5353", cluster_ip(&lab, "u"));
    first_answer(&lab, &pods[2].0, "udp", &vip);

    // One flow (one source port) from node-3: conntrack keeps it on one endpoint.
    let mut flow = lab.udp_flow(&pods[2].0, &vip, 40000);
    lab.wait("the flow's answers", Duration::from_secs(10), || {
        (flow.answers().len() >= 50).then_some(())
    });
    let first: BTreeSet<String> = flow
        .answers()
        .iter()
        .map(|(_, a)| a.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(first.len(), 1, "one flow, one endpoint: {first:?}");
    let used = first.into_iter().next().expect("one");
    let (gone_ip, live) = if used == "u-1" {
        (pods[0].1.clone(), "u-2")
    } else {
        (pods[1].1.clone(), "u-1")
    };

    // Its endpoint leaves the Service (relabelled: the pod still runs and answers, so a stale
    // conntrack entry would go on reaching it).
    let watch = lab.watch("endpointslices");
    lab.wait("the watch to list", Duration::from_secs(10), || {
        watch
            .events()
            .iter()
            .any(|e| e["event"] == "synced")
            .then_some(())
    });
    let node = if used == "u-1" { "node-1" } else { "node-2" };
    lab.apply(&yaml(&used, node, "retired"));
    let removed_ms = lab.wait(
        &format!("{used} to leave u's EndpointSlice"),
        Duration::from_secs(30),
        || {
            watch.events().iter().find_map(|e| {
                let object = &e["object"];
                let has_it = endpoints_of(object).iter().any(|ep| ep.address == gone_ip);
                let left = slice_of(object, "u")
                    && ((e["event"] == "apply" && !has_it) || (e["event"] == "delete" && has_it));
                left.then(|| e["at_ms"].as_u64()).flatten()
            })
        },
    );
    lab.wait(
        "the flow to go on 3 s more",
        Duration::from_secs(10),
        || {
            flow.answers()
                .iter()
                .any(|(ms, _)| *ms > removed_ms + 3000)
                .then_some(())
        },
    );
    flow.stop();
    let after: Vec<(u64, String)> = flow
        .answers()
        .into_iter()
        .filter(|(ms, _)| *ms > removed_ms + 1000)
        .collect();
    let late: Vec<&(u64, String)> = after
        .iter()
        .filter(|(_, a)| !a.starts_with(&format!("{live} ")))
        .collect();
    assert!(
        !after.is_empty() && late.is_empty(),
        "more than 1 s after {used} left the EndpointSlice the flow must be on {live}: {} of \
         {} answers were not, e.g. {:?}",
        late.len(),
        after.len(),
        late.first()
    );
    let switched = flow
        .answers()
        .into_iter()
        .find(|(ms, a)| *ms > removed_ms && a.starts_with(&format!("{live} ")))
        .map(|(ms, _)| ms - removed_ms);
    eprintln!("the flow moved to {live} {switched:?} ms after the EndpointSlice changed");
    // The retired pod still answers on its own address: the move was the proxy's doing.
    assert_eq!(
        lab.ask(&pods[2].0, "udp", &format!("{gone_ip}:8080"))
            .map(|(n, _)| n),
        Some(used)
    );
}

#[test]
fn a_terminating_pod_gets_no_new_connections_while_a_ready_one_exists() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let grace = "  terminationGracePeriodSeconds: 30\n";
    let pods = apply_and_run(
        &lab,
        &[
            pod("t-1", "node-1", "t", grace),
            pod("t-2", "node-2", "t", grace),
            pod("c-3", "node-3", "client", ""),
            service("t", "t", "ports: [{port: 80, targetPort: 8080}]"),
        ],
        &["t-1", "t-2", "c-3"],
    );
    wait_ready_endpoints(&lab, "t", &[&pods[0].1, &pods[1].1]);
    let vip = format!("{}:80", cluster_ip(&lab, "t"));
    let client = &pods[2].0;
    first_answer(&lab, client, "tcp", &vip);
    let both: BTreeSet<String> = ["t-1", "t-2"].map(String::from).into();
    lab.wait("both endpoints to answer", PROGRAMMED, || {
        (names(&answers(&lab, client, "tcp", &vip, 10)) == both).then_some(())
    });

    // t-1 is deleted: it goes on serving through its grace period, terminating.
    let deleted = Instant::now();
    lab.must(&["delete", "pod", "t-1"]);
    let terminating = |ip: &str| Endpoint {
        address: ip.to_string(),
        ready: false,
        serving: true,
        terminating: true,
    };
    lab.wait("t-1 to be terminating", Duration::from_secs(15), || {
        endpoints(&lab, "t")
            .contains(&terminating(&pods[0].1))
            .then_some(())
    });
    // New connections go to t-2 alone (after the proxy's sync), while t-1 still answers on
    // its own address.
    lab.wait(
        "new connections to reach t-2 alone",
        Duration::from_secs(5),
        || {
            (names(&answers(&lab, client, "tcp", &vip, 5)) == BTreeSet::from(["t-2".to_string()]))
                .then_some(())
        },
    );
    let got = names(&answers(&lab, client, "tcp", &vip, 30));
    assert_eq!(
        got,
        BTreeSet::from(["t-2".to_string()]),
        "no new connection to the terminating t-1 while t-2 is ready"
    );
    assert_eq!(
        lab.ask(client, "tcp", &format!("{}:8080", pods[0].1))
            .map(|(n, _)| n)
            .as_deref(),
        Some("t-1"),
        "t-1 still serves"
    );

    // t-2 goes too: with no ready endpoint left, the serving terminating ones are used.
    lab.must(&["delete", "pod", "t-2"]);
    lab.wait("t-2 to be terminating", Duration::from_secs(15), || {
        let eps = endpoints(&lab, "t");
        (eps.contains(&terminating(&pods[0].1)) && eps.contains(&terminating(&pods[1].1)))
            .then_some(())
    });
    lab.wait(
        "connections to reach the terminating endpoints",
        Duration::from_secs(5),
        || lab.ask(client, "tcp", &vip),
    );
    let got = names(&answers(&lab, client, "tcp", &vip, 10));
    assert!(
        got.is_subset(&both) && !got.is_empty(),
        "only terminating endpoints left: they serve ({got:?})"
    );
    assert!(
        deleted.elapsed() < Duration::from_secs(30),
        "the checks ran within t-1's grace period ({:?})",
        deleted.elapsed()
    );
}

/// `nft list table` text with what changes on its own taken out: an element's remaining
/// time (`expires …`) and counters' values. Tokens are re-joined with single spaces.
fn normalized(table: &str) -> Vec<String> {
    table
        .lines()
        .map(|line| {
            let mut out: Vec<&str> = Vec::new();
            let mut tokens = line.split_whitespace().peekable();
            while let Some(t) = tokens.next() {
                match t {
                    "expires" => {
                        let value = tokens.next().unwrap_or_default();
                        // `expires 9s800ms,` keeps the list's comma.
                        if value.ends_with(',') {
                            out.push(",");
                        }
                    }
                    "packets" | "bytes" => {
                        tokens.next();
                    }
                    _ => out.push(t),
                }
            }
            out.join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// The lines that differ between two normalized listings, for a failure message.
fn difference(before: &[String], after: &[String]) -> String {
    let b: BTreeMap<&String, usize> = before.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l).or_default() += 1;
        m
    });
    let a: BTreeMap<&String, usize> = after.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l).or_default() += 1;
        m
    });
    let mut out = String::new();
    for (line, n) in &b {
        if a.get(line) != Some(n) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for (line, n) in &a {
        if b.get(line) != Some(n) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    out
}

/// The proxy part's `/api/v1/services` section on `node`, while its daemon answers.
fn services_section(lab: &Lab, node: &str) -> Option<serde_json::Value> {
    let (code, body) = skein_e2e::http_get(lab.page(node), "/api/v1/services")?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

#[test]
fn a_killed_daemon_comes_back_to_the_same_ruleset_without_breaking_a_connection() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    // The connection crosses nodes: a client on node-1, whose daemon dies, to web-2 on node-2.
    // Around it, Services of every shape, so node-1's table holds each kind of rule and set.
    let pods = apply_and_run(
        &lab,
        &[
            pod("web-2", "node-2", "web", ""),
            pod("web-3", "node-3", "web-other", ""),
            pod("c-1", "node-1", "client", ""),
            service("web", "web", &tcp_and_udp(80)),
            service(
                "aff",
                "web-other",
                "sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]",
            ),
            service(
                "local",
                "web-other",
                "type: LoadBalancer, externalTrafficPolicy: Local, externalIPs: [203.0.113.10], \
                 ports: [{port: 80, targetPort: 8080}]",
            ),
            service("empty", "nothing", "ports: [{port: 80, targetPort: 8080}]"),
        ],
        &["web-2", "web-3", "c-1"],
    );
    wait_ready_endpoints(&lab, "web", &[&pods[0].1]);
    wait_ready_endpoints(&lab, "aff", &[&pods[1].1]);
    let vip = format!("{}:80", cluster_ip(&lab, "web"));
    let client = &pods[2].0;
    first_answer(&lab, client, "tcp", &vip);
    // An affinity element on node-1 (ClientIP's default timeout, 3 h, outlasts the test).
    first_answer(
        &lab,
        client,
        "tcp",
        &format!("{}:80", cluster_ip(&lab, "aff")),
    );

    let stream = lab.echo_stream(client, &vip);
    stream.carries(&lab, "before the kill");
    let before = lab.nft_table("node-1");
    assert!(
        before.contains(&cluster_ip(&lab, "web")) && before.contains(&pods[0].1),
        "node-1's table holds the Service and its endpoint:\n{before}"
    );

    let pid = lab.pid("node-1").expect("node-1's skein");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    lab.must(&["start", "node-1"]);
    // The proxy's first sync after the restart (a full one, against the kernel's table): it
    // found the kernel as it wanted it. The section is written right after the first sync and
    // then at most once a second while nothing changes, so it is caught with `syncs` at 1.
    let section = lab.wait(
        "node-1's proxy to report its first sync after the restart",
        Duration::from_secs(60),
        || services_section(&lab, "node-1").filter(|s| s["last_sync"].is_object()),
    );
    assert_eq!(
        section["syncs"], 1,
        "the report read is the first sync's: {section}"
    );
    assert_eq!(
        section["last_sync"]["full"], true,
        "{}",
        section["last_sync"]
    );
    assert_eq!(
        section["last_sync"]["changed"], 0,
        "the first sync after a restart changes nothing: {}",
        section["last_sync"]
    );
    stream.carries(&lab, "after the restart");
    let after = lab.nft_table("node-1");
    let (b, a) = (normalized(&before), normalized(&after));
    assert!(
        b == a,
        "node-1's table changed across the restart:\n{}",
        difference(&b, &a)
    );

    let report = stream.finish();
    eprintln!("through the daemon's kill and restart: {report}");
    assert!(
        report["greeting"]
            .as_str()
            .is_some_and(|g| g.starts_with("web-2 ")),
        "{report}"
    );
    assert!(report["received"].as_u64() > Some(300), "{report}");
    assert!(report["max_gap_ms"].as_u64() <= Some(2000), "{report}");
}

//! hostPort end to end: a CNI ADD with `runtimeConfig.portMappings` (what a runtime sends for a
//! Pod's `hostPort`, skein's conflist entry declaring the capability) on a real lab node, and
//! the pod reached on the node's address and host port from another node, from a pod there,
//! and from itself; bound to one host IP only when the mapping says so; across a restart of the
//! daemon; gone after DEL.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use skein_e2e::lab::{self, Lab};

/// Long enough for the daemon to publish the mapping and the proxy to program it.
const PROGRAMMED: Duration = Duration::from_secs(20);

/// A container namespace of the test's own, which `down` removes with the lab.
fn container_netns(lab: &Lab, suffix: &str) -> String {
    let name = lab.extra_netns(suffix);
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip")
        .success();
    assert!(ok, "ip netns add {name}");
    name
}

fn address(lab: &Lab, node: &str) -> String {
    lab.status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
        .and_then(|n| n["address"].as_str())
        .unwrap_or_else(|| panic!("no address for {node}: {}", lab.status))
        .to_string()
}

/// A lab whose nodes' CNI parts serve ADDs.
fn ready_lab(nodes: usize) -> Lab {
    let lab = Lab::up(nodes, &[]);
    for node in lab.node_names() {
        lab.wait(
            &format!("{node}'s CNI part to be ready"),
            Duration::from_secs(60),
            || (skein_e2e::part(&lab.node_status(&node)?, "cni")["state"] == "ok").then_some(()),
        );
    }
    lab
}

/// CNI `command` on `node` for container `id` in `netns`, as a runtime runs it for pod `pod`,
/// with these `runtimeConfig.portMappings` (the runtime adds them because the plugin's entry
/// declares the capability).
fn cni(
    lab: &Lab,
    node: &str,
    command: &str,
    (id, pod): (u64, &str),
    netns: &str,
    mappings: Value,
) -> Value {
    let mut config = lab.cni_config(node, "1.1.0");
    assert_eq!(
        config["capabilities"]["portMappings"], true,
        "skein's conflist entry takes the portMappings capability: {config}"
    );
    config["runtimeConfig"] = json!({ "portMappings": mappings });
    let container = format!("{id:064x}");
    let netns_path = format!("/run/netns/{netns}");
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let (ok, out) = lab.cni_raw(
        node,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &container),
            ("CNI_NETNS", &netns_path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        &config.to_string(),
    );
    assert!(ok, "CNI {command} for {pod}: {out}");
    out
}

/// The pod's IPv4 address from an ADD's result.
fn pod_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string()
}

#[test]
fn a_host_port_reaches_its_pod_from_other_nodes_their_pods_and_itself_until_del() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = ready_lab(2);
    let (node_1, node_2) = (address(&lab, "node-1"), address(&lab, "node-2"));

    let web = container_netns(&lab, "hpweb");
    let added = cni(
        &lab,
        "node-1",
        "ADD",
        (1, "web"),
        &web,
        json!([
            {"hostPort": 8081, "containerPort": 8080, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 8081, "containerPort": 8080, "protocol": "udp", "hostIP": ""},
            // Bound to the node's address: not on the pod gateway.
            {"hostPort": 8082, "containerPort": 8080, "protocol": "TCP", "hostIP": node_1},
        ]),
    );
    let web_ip = pod_ip(&added);
    lab.serve_in(&web, "web", 8080);

    // From another node: the client's own address arrives (no masquerade).
    let other_node = lab.netns("node-2");
    for protocol in ["tcp", "udp"] {
        let answer = lab.wait(
            &format!("node-2 to reach web on {node_1}:8081 over {protocol}"),
            PROGRAMMED,
            || lab.probe(&other_node, protocol, &format!("{node_1}:8081")),
        );
        assert_eq!(answer, format!("web {node_2}"), "over {protocol}");
    }
    assert_eq!(
        lab.probe(&other_node, "tcp", &format!("{node_1}:8082")),
        Some(format!("web {node_2}")),
        "the mapping bound to the node's address"
    );

    // From a pod on node-2: it leaves its node masqueraded, as for any address off the cluster.
    let client = container_netns(&lab, "hpcli");
    cni(&lab, "node-2", "ADD", (2, "client"), &client, json!([]));
    let answer = lab.wait("a pod on node-2 to reach web", PROGRAMMED, || {
        lab.probe(&client, "tcp", &format!("{node_1}:8081"))
    });
    assert_eq!(answer, format!("web {node_2}"));

    // From itself, through its node (hairpin): masqueraded, so the answer finds its way back.
    let answer = lab.wait("web to reach its own host port", PROGRAMMED, || {
        lab.probe(&web, "tcp", &format!("{node_1}:8081"))
    });
    assert!(answer.starts_with("web "), "{answer}");
    assert_ne!(
        answer,
        format!("web {web_ip}"),
        "the hairpin is masqueraded"
    );

    // Bound to the node's address: the pod gateway, another of node-1's addresses, is left
    // alone; the unbound mapping answers there.
    let gateway = added["ips"][0]["gateway"]
        .as_str()
        .expect("gateway")
        .to_string();
    let from_node_1 = lab.netns("node-1");
    assert_eq!(
        lab.probe(&from_node_1, "tcp", &format!("{gateway}:8082")),
        None,
        "8082 is bound to {node_1}"
    );
    assert!(
        lab.probe(&from_node_1, "tcp", &format!("{gateway}:8081"))
            .is_some_and(|a| a.starts_with("web ")),
        "8081 answers on every address of the node"
    );

    // A restart of node-1's daemon: the kernel keeps forwarding while it is down, and the
    // mapping, kept in the state database, is still forwarded once it is back.
    lab.must(&["stop", "node-1"]);
    assert_eq!(
        lab.probe(&other_node, "tcp", &format!("{node_1}:8081")),
        Some(format!("web {node_2}")),
        "while the daemon is down"
    );
    lab.must(&["start", "node-1"]);
    lab.wait(
        "node-1's proxy to be ok again",
        Duration::from_secs(60),
        || {
            let status = lab.node_status("node-1")?;
            (skein_e2e::part(&status, "proxy")["state"] == "ok").then_some(())
        },
    );
    assert_eq!(
        lab.probe(&other_node, "tcp", &format!("{node_1}:8081")),
        Some(format!("web {node_2}")),
        "after the restart"
    );

    // DEL: the host port goes with the pod.
    cni(&lab, "node-1", "DEL", (1, "web"), &web, json!([]));
    lab.wait("the host port to be gone after DEL", PROGRAMMED, || {
        lab.probe(&other_node, "tcp", &format!("{node_1}:8081"))
            .is_none()
            .then_some(())
    });
}

#[test]
fn a_bad_port_mapping_is_refused_by_field_and_leaves_nothing() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = ready_lab(1);
    let netns = container_netns(&lab, "hpbad");
    let mut config = lab.cni_config("node-1", "1.1.0");
    config["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 8081, "containerPort": 8080},
        {"hostPort": 0, "containerPort": 8080}
    ]});
    let netns_path = format!("/run/netns/{netns}");
    let (ok, error) = lab.cni_raw(
        "node-1",
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &format!("{:064x}", 77)),
            ("CNI_NETNS", &netns_path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        &config.to_string(),
    );
    assert!(!ok, "{error}");
    assert_eq!(error["code"], 7, "{error}");
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("runtimeConfig.portMappings[1].hostPort")),
        "{error}"
    );
    let status = lab.node_status("node-1").expect("node-1's page");
    assert_eq!(
        status["ipam"]["pods"].as_array().map(Vec::len),
        Some(0),
        "no lease: {}",
        status["ipam"]
    );
}

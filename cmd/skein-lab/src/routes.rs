//! Routes from the control plane's namespace to the pods: one per pod CIDR of each lab node, via
//! that node's underlay address, kept in line with the Nodes' `spec.podCIDRs` as the controller
//! manager allocates them and as Nodes come and go. So the API server reaches pods as it does a
//! webhook's, and a pod's answer to it (or a pod's own connection to 198.18.0.1:6443, the
//! `kubernetes` Service's endpoint) needs no NAT to come back.
//!
//! The lab's routes carry their own protocol number ([`ROUTE_PROTO`]): the lab changes only
//! those, never the namespace's connected route.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::lab::{self, Lab};

/// `proto` of the routes the lab makes (`ip route ... proto 77`): what marks them as the lab's.
pub const ROUTE_PROTO: &str = "77";

/// (destination CIDR, gateway) for every IPv4 pod CIDR of a Node the lab runs. A Node that is
/// not one of the lab's (a test's hand-made peer) has no underlay address the lab knows, and
/// gets no route.
pub fn desired(lab: &Lab, nodes: &[Node]) -> BTreeSet<(String, Ipv4Addr)> {
    let addresses: BTreeMap<&str, Ipv4Addr> = lab
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.address))
        .collect();
    let mut routes = BTreeSet::new();
    for node in nodes {
        let Some(via) = node.metadata.name.as_deref().and_then(|n| addresses.get(n)) else {
            continue;
        };
        let cidrs = node.spec.iter().flat_map(|s| {
            s.pod_cidrs
                .iter()
                .flatten()
                .chain(s.pod_cidr.iter())
                .cloned()
        });
        for cidr in cidrs {
            if is_ipv4_cidr(&cidr) {
                routes.insert((cidr, *via));
            }
        }
    }
    routes
}

/// Whether `cidr` is an IPv4 `a.b.c.d/len` (the lab is IPv4; an IPv6 pod CIDR gets no route).
fn is_ipv4_cidr(cidr: &str) -> bool {
    cidr.split_once('/').is_some_and(|(addr, len)| {
        addr.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}

/// The lab's routes in the control plane's namespace now: (destination, gateway).
pub fn actual(netns: &str) -> anyhow::Result<BTreeSet<(String, Ipv4Addr)>> {
    let out = lab::ip(&[
        "-n",
        netns,
        "-j",
        "-4",
        "route",
        "show",
        "proto",
        ROUTE_PROTO,
    ])?;
    let routes: Vec<serde_json::Value> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out)?
    };
    Ok(routes
        .iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            // `ip` prints a host route without its length.
            let dst = if dst.contains('/') {
                dst.to_string()
            } else {
                format!("{dst}/32")
            };
            Some((dst, r["gateway"].as_str()?.parse().ok()?))
        })
        .collect())
}

/// Changes the namespace's lab routes to `want`: replaces what differs, deletes what is no
/// longer wanted. Returns what it changed, for the log.
pub fn apply(
    netns: &str,
    want: &BTreeSet<(String, Ipv4Addr)>,
    have: &BTreeSet<(String, Ipv4Addr)>,
) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    let wanted_dsts: BTreeSet<&str> = want.iter().map(|(d, _)| d.as_str()).collect();
    for (dst, via) in have {
        if !wanted_dsts.contains(dst.as_str()) {
            lab::ip(&[
                "-n",
                netns,
                "route",
                "del",
                dst,
                "via",
                &via.to_string(),
                "proto",
                ROUTE_PROTO,
            ])?;
            changed.push(format!("{dst} via {via} removed"));
        }
    }
    for (dst, via) in want {
        if !have.contains(&(dst.clone(), *via)) {
            lab::ip(&[
                "-n",
                netns,
                "route",
                "replace",
                dst,
                "via",
                &via.to_string(),
                "proto",
                ROUTE_PROTO,
            ])?;
            changed.push(format!("{dst} via {via}"));
        }
    }
    Ok(changed)
}

/// Keeps the control plane's routes to the pods in line with the Nodes, forever: on every Node
/// event and every 5 s (a route deleted by hand comes back).
pub async fn run(client: kube::Client, lab_name: String) {
    let api: Api<Node> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: BTreeMap<String, Node> = BTreeMap::new();
    let mut synced = false;
    let mut last_error = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(node))) => {
                    if let Some(name) = node.metadata.name.clone() { listing.insert(name, node); }
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    nodes = std::mem::take(&mut listing);
                    synced = true;
                }
                Some(Ok(watcher::Event::Apply(node))) => {
                    if let Some(name) = node.metadata.name.clone() { nodes.insert(name, node); }
                }
                Some(Ok(watcher::Event::Delete(node))) => {
                    if let Some(name) = &node.metadata.name { nodes.remove(name); }
                }
                Some(Err(e)) => { tracing::debug!("node watch: {e}"); continue; }
                None => return,
            },
            _ = tick.tick() => {}
        }
        if !synced {
            continue;
        }
        let Ok(lab) = Lab::load(&lab_name) else {
            continue;
        };
        let list: Vec<Node> = nodes.values().cloned().collect();
        let want = desired(&lab, &list);
        let result = tokio::task::block_in_place(|| {
            let have = actual(&lab.control_plane_netns)?;
            apply(&lab.control_plane_netns, &want, &have)
        });
        match result {
            Ok(changed) => {
                last_error.clear();
                for change in changed {
                    tracing::info!("control plane route to pods: {change}");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if e != last_error {
                    tracing::warn!("control plane routes to pods: {e}");
                    last_error = e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn lab_of(nodes: &[(&str, Ipv4Addr)]) -> Lab {
        Lab {
            name: "x".into(),
            dir: "/run/skein-lab/x".into(),
            underlay_netns: "skl-x-ul".into(),
            control_plane_netns: "skl-x-cp".into(),
            api_port: 1,
            admin_kubeconfig: "/dev/null".into(),
            nodes: nodes
                .iter()
                .map(|(name, address)| lab::Node {
                    name: name.to_string(),
                    netns: format!("skl-x-{name}"),
                    address: *address,
                    page_port: 1,
                    config: "/dev/null".into(),
                    kubeconfig: "/dev/null".into(),
                    overlay_interface: "skx-1".into(),
                })
                .collect(),
            processes: BTreeMap::new(),
        }
    }

    fn node(name: &str, cidrs: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|c| c.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn each_lab_nodes_ipv4_pod_cidrs_go_via_its_underlay_address() {
        let lab = lab_of(&[
            ("node-1", lab::node_ip(1)),
            ("node-2", lab::node_ip(2)),
            ("node-3", lab::node_ip(3)),
        ]);
        let nodes = [
            node("node-1", &["10.42.0.0/24", "fd00:42::/64"]),
            node("node-2", &["10.42.1.0/24"]),
            // No CIDR yet: no route yet.
            node("node-3", &[]),
            // Not a lab node: the lab does not know where it is.
            node("wg-go", &["10.42.200.0/24"]),
        ];
        let want = desired(&lab, &nodes);
        assert_eq!(
            want,
            BTreeSet::from([
                ("10.42.0.0/24".to_string(), lab::node_ip(1)),
                ("10.42.1.0/24".to_string(), lab::node_ip(2)),
            ])
        );
    }
}

//! The lab's stand-in for a kubelet's node duties: register each Node, then every 10 s renew
//! its Lease in `kube-node-lease` and its Ready condition — unless the node was stopped, so the
//! real node lifecycle controller marks it NotReady as it would a dead machine. Like a kubelet,
//! it does not re-create a Node that was deleted while it runs.
//!
//! It acts with the lab's admin credentials, not each node's: one process stands in for every
//! node's kubelet, and a kubelet's own writes under the Node authorizer and NodeRestriction are
//! a real kubelet's concern, not skein's. What the lab confines is what skein uses, each node's
//! own identity (`system:node:<name>`); the API server runs NodeRestriction as k3s does.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::lab;

pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// What the lab gives the controller manager as `--node-monitor-grace-period`: longer than two
/// heartbeats, so one slow beat does not flap a node.
pub const GRACE: Duration = Duration::from_secs(25);
const LEASE_NAMESPACE: &str = "kube-node-lease";

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Creates the Node object (as a kubelet registers itself); an existing one is kept.
pub async fn register(client: &kube::Client, node: &lab::Node) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH.replace("x86_64", "amd64"),
        ),
    ]);
    let object = Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {}
        Err(e) => return Err(e.into()),
    }
    heartbeat(client, node).await
}

/// One beat: the Ready condition and addresses on the Node's status, and the Lease renewed.
/// Returns an error (NotFound included) without re-creating anything.
pub async fn heartbeat(client: &kube::Client, node: &lab::Node) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(Timestamp::now());
    let status = NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: node.address.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: node.name.clone(),
            },
        ]),
        capacity: Some(resources()),
        allocatable: Some(resources()),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("skein-lab node is running".into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        }]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            kubelet_version: "v0.0.0-skein-lab".into(),
            operating_system: "linux".into(),
            os_image: "skein-lab".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let patch = serde_json::json!({ "status": status });
    let patched = nodes
        .patch_status(
            &node.name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await?;
    renew_lease(client, node, patched.metadata.uid.as_deref()).await
}

fn resources() -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity("2".into())),
        ("memory".to_string(), Quantity("4Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
    ])
}

async fn renew_lease(
    client: &kube::Client,
    node: &lab::Node,
    uid: Option<&str>,
) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let spec = LeaseSpec {
        holder_identity: Some(node.name.clone()),
        lease_duration_seconds: Some(GRACE.as_secs() as i32),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    };
    let owner = uid.map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.name.clone(),
        uid: uid.into(),
        ..Default::default()
    });
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            // Deleting the Node deletes its Lease, as with a kubelet's.
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
    };
    let params = PatchParams::apply("skein-lab").force();
    leases
        .patch(&node.name, &params, &Patch::Apply(&lease))
        .await?;
    Ok(())
}

/// Beats for every node of the lab that is not stopped, forever.
pub async fn run(client: kube::Client, lab_name: String) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut failing: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tick.tick().await;
        let Ok(lab) = lab::Lab::load(&lab_name) else {
            continue;
        };
        for node in &lab.nodes {
            let stopped = lab.processes.get(&node.name).is_some_and(|p| p.stopped);
            if stopped {
                continue;
            }
            match heartbeat(&client, node).await {
                Ok(()) => {
                    if failing.remove(&node.name).is_some() {
                        tracing::info!(node = %node.name, "heartbeat works again");
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if failing.get(&node.name) != Some(&e) {
                        tracing::warn!(node = %node.name, "heartbeat failed: {e}");
                        failing.insert(node.name.clone(), e);
                    }
                }
            }
        }
    }
}

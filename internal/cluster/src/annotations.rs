//! The annotations skein publishes on its own Node object, through which the other nodes learn
//! how to reach it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::{ClusterError, transport_cause};

/// Every annotation skein owns starts with this; others' annotations are not skein's to touch.
pub const ANNOTATION_PREFIX: &str = "skein.dev/";

/// The address other nodes reach this node's overlay on.
pub const ANNOTATION_UNDERLAY_ADDRESS: &str = "skein.dev/underlay-address";

/// The node's WireGuard public key (base64, as `wg pubkey` prints it).
pub const ANNOTATION_WIREGUARD_PUBLIC_KEY: &str = "skein.dev/wireguard-public-key";

/// Where the node's WireGuard listens: `address:port` (`[v6]:port` for IPv6).
pub const ANNOTATION_WIREGUARD_ENDPOINT: &str = "skein.dev/wireguard-endpoint";

/// Named in the Node's managedFields, so `kubectl` shows who wrote the annotations.
const FIELD_MANAGER: &str = "skein";

/// The JSON merge patch that sets `annotations` on a Node's metadata and leaves every other
/// annotation alone. Rejects keys outside `skein.dev/`, and names the API server would refuse.
pub fn annotation_patch(
    annotations: &BTreeMap<String, String>,
) -> Result<serde_json::Value, ClusterError> {
    if let Some(key) = annotations.keys().find(|k| !is_skein_key(k)) {
        return Err(ClusterError::AnnotationKey { key: key.clone() });
    }
    Ok(serde_json::json!({ "metadata": { "annotations": annotations } }))
}

/// `skein.dev/<name>` with the name as Kubernetes allows it: at most 63 characters of
/// alphanumerics, '-', '_' and '.', beginning and ending with an alphanumeric.
fn is_skein_key(key: &str) -> bool {
    let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
        return false;
    };
    let edges_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    edges_ok
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Sets `annotations` on the Node `node` with a merge patch; other annotations stay as they are.
pub async fn publish_node_annotations(
    client: &Client,
    node: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), ClusterError> {
    let patch = annotation_patch(annotations)?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    Api::<core::Node>::all(client.clone())
        .patch(node, &params, &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|e| patch_error(node, e))
}

pub(crate) fn patch_error(node: &str, error: kube::Error) -> ClusterError {
    match error {
        kube::Error::Api(status) => match status.code {
            403 => ClusterError::Forbidden {
                verb: "patch",
                resource: "nodes",
                name: node.to_string(),
                message: if status.message.is_empty() {
                    format!("nodes \"{node}\" is forbidden")
                } else {
                    status.message
                },
            },
            404 => ClusterError::NodeNotFound {
                node: node.to_string(),
            },
            code => ClusterError::Api {
                action: format!("patch the annotations of node {node}"),
                code,
                message: status.message,
            },
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => ClusterError::Unreachable {
            action: format!("patch the annotations of node {node}"),
            cause: transport_cause(&error),
        },
        other => ClusterError::Request {
            action: format!("patch the annotations of node {node}"),
            cause: transport_cause(&other),
        },
    }
}

//! The annotations skein publishes on its own Node object, through which the other nodes learn
//! how to reach it: the [`NodeAnnouncement`], its encoding and decoding in one place, and the
//! patch that publishes it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;

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

/// What a node tells the others about itself. Written by the node's own daemon
/// ([`NodeAnnouncement::to_annotations`]), read by every other one
/// ([`NodeAnnouncement::from_annotations`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAnnouncement {
    /// `skein.dev/underlay-address`: where the node's overlay traffic goes.
    pub underlay_address: Option<IpAddr>,
    /// `skein.dev/wireguard-public-key`.
    pub wireguard_public_key: Option<WireGuardPublicKey>,
    /// `skein.dev/wireguard-endpoint`: where the node's WireGuard listens.
    pub wireguard_endpoint: Option<SocketAddr>,
}

/// A WireGuard public key (Curve25519, 32 bytes), as published: base64, as `wg pubkey` prints
/// it. Public by definition; a private key never gets here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireGuardPublicKey(pub [u8; 32]);

impl WireGuardPublicKey {
    /// `None` unless `text` is the base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        bytes.try_into().ok().map(Self)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl NodeAnnouncement {
    /// The annotations that carry it; absent fields are left out.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(ip) = self.underlay_address {
            out.insert(ANNOTATION_UNDERLAY_ADDRESS.to_string(), ip.to_string());
        }
        if let Some(key) = &self.wireguard_public_key {
            out.insert(ANNOTATION_WIREGUARD_PUBLIC_KEY.to_string(), key.to_base64());
        }
        if let Some(endpoint) = self.wireguard_endpoint {
            out.insert(
                ANNOTATION_WIREGUARD_ENDPOINT.to_string(),
                endpoint.to_string(),
            );
        }
        out
    }

    /// Reads it back from a Node's `skein.dev/` annotations (other annotations are ignored; a
    /// missing one is an absent field). Every annotation that does not parse is reported,
    /// named with its value.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, ClusterError> {
        let mut problems = Vec::new();
        let announcement = Self {
            underlay_address: read(
                annotations,
                ANNOTATION_UNDERLAY_ADDRESS,
                "an IP address",
                |v| v.parse().ok(),
                &mut problems,
            ),
            wireguard_public_key: read(
                annotations,
                ANNOTATION_WIREGUARD_PUBLIC_KEY,
                "a WireGuard public key (44 characters of base64)",
                WireGuardPublicKey::from_base64,
                &mut problems,
            ),
            wireguard_endpoint: read(
                annotations,
                ANNOTATION_WIREGUARD_ENDPOINT,
                "address:port ([v6]:port for IPv6)",
                |v| v.parse().ok(),
                &mut problems,
            ),
        };
        if problems.is_empty() {
            Ok(announcement)
        } else {
            Err(ClusterError::Announcement { problems })
        }
    }
}

/// The annotation `key` parsed; `None` when absent, or when it does not parse (then noted).
fn read<T>(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
    problems: &mut Vec<AnnotationProblem>,
) -> Option<T> {
    let value = annotations.get(key)?;
    let parsed = parse(value.trim());
    if parsed.is_none() {
        problems.push(AnnotationProblem {
            key,
            value: value.clone(),
            expected,
        });
    }
    parsed
}

/// One annotation whose value is not what skein writes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl std::fmt::Display for AnnotationProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "annotation {} = {:?} is not {}",
            self.key, self.value, self.expected
        )
    }
}

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

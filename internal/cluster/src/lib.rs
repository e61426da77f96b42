//! skein's view of the Kubernetes API: where the client configuration comes from (by default
//! the node's own identity) and a client that follows the rotation of its certificate, a
//! watched, versioned [`Snapshot`] of the objects the dataplane is built from, the API's
//! [`ApiHealth`], and the [`NodeAnnouncement`] skein publishes about each node in its
//! annotations.
//!
//! Only this crate talks to the Kubernetes API. What it hands out is skein's own distilled types
//! (built by pure functions from k8s-openapi objects), so the parts that consume a snapshot never
//! see API plumbing, and a snapshot is never emptied because the API went away (fail static).

use std::error::Error as StdError;
use std::path::PathBuf;

mod annotations;
mod client;
mod connect;
mod health;
mod objects;
mod snapshot;
mod state;
mod view;

#[cfg(test)]
mod tests;

pub use annotations::{
    ANNOTATION_PREFIX, ANNOTATION_UNDERLAY_ADDRESS, ANNOTATION_WIREGUARD_ENDPOINT,
    ANNOTATION_WIREGUARD_PUBLIC_KEY, AnnotationProblem, NodeAnnouncement, WireGuardPublicKey,
    annotation_patch, publish_node_annotations,
};
pub use client::client;
pub use connect::{K3S_KUBELET_KUBECONFIG, client_config};
pub use health::{ApiHealth, Kind};
pub use objects::{
    AddressType, Endpoint, EndpointExtra, EndpointPort, EndpointSlice, Hints, Namespace,
    NetworkPolicy, Node, Pod, PodPhase, Protocol, Service, ServicePort, ServiceType,
    SessionAffinity, TargetPort, TrafficPolicy,
};
pub use snapshot::{ObjectKey, Snapshot};
pub use view::{ClusterView, DEFAULT_DEBOUNCE, ViewOptions, watch_cluster};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot load the kubeconfig {path} ({origin}): {}", kubeconfig_cause(.source))]
    Kubeconfig {
        path: PathBuf,
        /// Why this file was read: the setting, or the k3s fallback.
        origin: &'static str,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "cluster.kubeconfig is empty and KUBERNETES_SERVICE_HOST is set, but the in-cluster \
         configuration (service account token and CA) cannot be loaded: {source}"
    )]
    InCluster {
        source: kube::config::InClusterError,
    },
    #[error(
        "no Kubernetes API configured: cluster.kubeconfig is empty, KUBERNETES_SERVICE_HOST is \
         not set (skein is not running in a pod) and {} does not exist; set cluster.kubeconfig \
         to the path of a kubeconfig file", .k3s.display()
    )]
    NoKubeconfig { k3s: PathBuf },
    #[error("cannot build a Kubernetes client from the configuration: {}", error_chain(.source))]
    Client { source: kube::Error },
    #[error(
        "annotation {key:?} is not skein's to publish: keys must be `skein.dev/<name>`, the name \
         made of letters, digits, '-', '_' and '.'"
    )]
    AnnotationKey { key: String },
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Announcement { problems: Vec<AnnotationProblem> },
    /// Writing is not the packaged role's to grant: a node writes its own Node as itself (the
    /// Node authorizer, narrowed by NodeRestriction), so the cure is the right credentials.
    #[error(
        "cannot {verb} {resource} {name}: {message} (skein needs `{verb}` on `{resource}` for its \
         own Node only, which a node's own identity has: user `system:node:{name}` in group \
         `system:nodes`, such as the kubelet's kubeconfig; set cluster.kubeconfig to it, and \
         node.name to the node's name)"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        name: String,
        message: String,
    },
    #[error("node {node} does not exist in the Kubernetes API; check node.name")]
    NodeNotFound { node: String },
    #[error("cannot {action}: the Kubernetes API answered {code}: {message}")]
    Api {
        action: String,
        code: u16,
        message: String,
    },
    #[error("cannot {action}: the Kubernetes API is unreachable: {cause}")]
    Unreachable { action: String, cause: String },
    #[error("cannot {action}: {cause}")]
    Request { action: String, cause: String },
}

/// kube's read error repeats the path the message already names; keep only the OS's reason.
fn kubeconfig_cause(err: &kube::config::KubeconfigError) -> String {
    match err {
        kube::config::KubeconfigError::ReadConfig(io, _) => io.to_string(),
        other => error_chain(other),
    }
}

/// An error and its causes on one line. Many errors already print their cause; a cause whose
/// text is already in the line is not repeated.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// What went wrong with one request that is not an answer from the API server, with kube's own
/// variant prefix ("ServiceError: ...") left off, as it means nothing to a person.
pub(crate) fn transport_cause(err: &kube::Error) -> String {
    match std::error::Error::source(err) {
        Some(inner) => error_chain(inner),
        None => err.to_string(),
    }
}

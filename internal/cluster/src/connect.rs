//! Where the Kubernetes client configuration comes from: `cluster.kubeconfig`, the in-cluster
//! service account, or the kubeconfig of the k3s node's kubelet.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::ClusterError;

/// The kubeconfig of a k3s node's kubelet, written on servers and agents alike: the node's own
/// identity (`system:node:<name>`, group `system:nodes`), which the Node authorizer and
/// NodeRestriction confine to writing its own Node. Used when `cluster.kubeconfig` is empty
/// outside a pod, so skein on any k3s node needs no setting; k3s's admin kubeconfig
/// (`/etc/rancher/k3s/k3s.yaml`, servers only) is deliberately not used.
pub const K3S_KUBELET_KUBECONFIG: &str = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig";

/// Which configuration to load, decided before anything is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    /// `cluster.kubeconfig` names a file.
    Setting(PathBuf),
    /// Running in a pod: the service account's token and CA.
    InCluster,
    /// Not in a pod, on a k3s node.
    K3s(PathBuf),
    /// Nothing to go on.
    Missing,
}

/// The order of precedence: the setting, then a pod's service account, then k3s.
pub(crate) fn config_source(kubeconfig: &str, in_cluster: bool, k3s: &Path) -> ConfigSource {
    if !kubeconfig.is_empty() {
        ConfigSource::Setting(PathBuf::from(kubeconfig))
    } else if in_cluster {
        ConfigSource::InCluster
    } else if k3s.exists() {
        ConfigSource::K3s(k3s.to_path_buf())
    } else {
        ConfigSource::Missing
    }
}

/// The client configuration for `cluster.kubeconfig`: the file it names; when empty, the pod's
/// service account if `KUBERNETES_SERVICE_HOST` is set, else [`K3S_KUBELET_KUBECONFIG`] if it
/// exists.
pub async fn client_config(kubeconfig: &str) -> Result<kube::Config, ClusterError> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    load(config_source(
        kubeconfig,
        in_cluster,
        Path::new(K3S_KUBELET_KUBECONFIG),
    ))
    .await
}

pub(crate) async fn load(source: ConfigSource) -> Result<kube::Config, ClusterError> {
    match source {
        ConfigSource::Setting(path) => from_file(path, "set in cluster.kubeconfig").await,
        ConfigSource::K3s(path) => {
            from_file(
                path,
                "the k3s kubelet's kubeconfig, used because cluster.kubeconfig is empty",
            )
            .await
        }
        ConfigSource::InCluster => {
            kube::Config::incluster().map_err(|source| ClusterError::InCluster { source })
        }
        ConfigSource::Missing => Err(ClusterError::NoKubeconfig {
            k3s: PathBuf::from(K3S_KUBELET_KUBECONFIG),
        }),
    }
}

async fn from_file(path: PathBuf, origin: &'static str) -> Result<kube::Config, ClusterError> {
    let fail = |path: PathBuf, source| ClusterError::Kubeconfig {
        path,
        origin,
        source,
    };
    let kubeconfig = match Kubeconfig::read_from(&path) {
        Ok(k) => k,
        Err(e) => return Err(fail(path, e)),
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(path, e))
}

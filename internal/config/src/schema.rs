//! The file's schema: one struct per section, field names are the file's keys, values as
//! written (strings for durations, CIDRs, modes). [`crate::Settings`] is what parts get.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration. Field names are the file's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub node: Node,
    pub cluster: Cluster,
    pub cni: Cni,
    pub ipam: Ipam,
    pub overlay: Overlay,
    pub proxy: Proxy,
    pub dns: Dns,
    pub policy: Policy,
    pub dashboard: Dashboard,
    pub store: Store,
    pub log: Log,
    pub daemon: Daemon,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Node {
    pub name: String,
    pub underlay_interface: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    pub kubeconfig: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub domain: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            pod_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            domain: "cluster.local".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cni {
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub bridge: String,
    pub mtu: String,
    pub portmap: bool,
}

impl Default for Cni {
    fn default() -> Self {
        Self {
            socket: "/run/skein/cni.sock".into(),
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin".into(),
            bridge: "skein0".into(),
            mtu: "auto".into(),
            portmap: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ipam {
    pub gc_interval: String,
}

impl Default for Ipam {
    fn default() -> Self {
        Self {
            gc_interval: "5m".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overlay {
    pub mode: String,
    pub interface: String,
    pub listen_port: u16,
    pub mtu: String,
    pub persistent_keepalive: String,
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            mode: "auto".into(),
            interface: "skein-wg".into(),
            listen_port: 51820,
            mtu: "auto".into(),
            persistent_keepalive: "0s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Proxy {
    pub enabled: bool,
    pub nodeport_addresses: Vec<String>,
    pub min_sync_interval: String,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            enabled: true,
            nodeport_addresses: vec!["primary".into()],
            min_sync_interval: "10ms".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub enabled: bool,
    pub cluster_ip: String,
    pub listen: String,
    pub upstreams: Vec<String>,
    pub ttl: String,
    pub pods: String,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            enabled: true,
            cluster_ip: "10.43.0.10".into(),
            listen: "169.254.20.10".into(),
            upstreams: Vec::new(),
            ttl: "5s".into(),
            pods: "insecure".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub enabled: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dashboard {
    pub listen: String,
    pub allow_remote: bool,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9610".into(),
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Store {
    pub path: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            path: "/var/lib/skein/state.db".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    pub level: String,
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Daemon {
    pub resync_interval: String,
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            resync_interval: "60s".into(),
        }
    }
}

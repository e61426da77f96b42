//! What the proxy part shows: `/api/v1/services` (each programmed Service port with its
//! endpoints, which are local and which terminating, and what a Service without endpoints does
//! to traffic), the Services it could not program and why, and its last sync; and its metrics,
//! under kube-proxy's names with the `skein_` prefix.

use serde::Serialize;
use skein_metrics::{Counter, Gauge, Histogram, exponential_buckets};
use skein_proxy::ServicePort;
use skein_status::{Section, SectionHandle};

use crate::sections::Reporting;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRow {
    pub address: String,
    pub pod: Option<String>,
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Whether ClusterIP traffic from this node may reach it now.
    pub in_use: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    /// The port's name (empty for a Service's single unnamed port).
    pub port_name: String,
    pub protocol: &'static str,
    pub port: u16,
    pub family: &'static str,
    pub cluster_ips: Vec<String>,
    pub external_ips: Vec<String>,
    pub node_port: Option<u16>,
    pub external_traffic_policy: &'static str,
    pub internal_traffic_policy: &'static str,
    pub affinity_seconds: Option<u64>,
    pub endpoints: Vec<EndpointRow>,
    /// What happens to ClusterIP traffic when no endpoint is usable.
    pub verdict: Option<&'static str>,
}

impl ServiceRow {
    pub fn of(p: &ServicePort) -> ServiceRow {
        let in_use = p.internal_endpoints();
        ServiceRow {
            namespace: p.service.namespace.clone(),
            name: p.service.name.clone(),
            port_name: p.port_name.clone(),
            protocol: p.protocol.name(),
            port: p.port,
            family: if p.ipv6 { "IPv6" } else { "IPv4" },
            cluster_ips: p.cluster_ips.iter().map(ToString::to_string).collect(),
            external_ips: p.external_ips.iter().map(ToString::to_string).collect(),
            node_port: p.node_port,
            external_traffic_policy: if p.external_local { "Local" } else { "Cluster" },
            internal_traffic_policy: if p.internal_local { "Local" } else { "Cluster" },
            affinity_seconds: p.affinity.map(|d| d.as_secs()),
            endpoints: p
                .all
                .iter()
                .map(|b| EndpointRow {
                    address: format!("{}", std::net::SocketAddr::new(b.addr, b.port)),
                    pod: b.pod.clone(),
                    local: b.local,
                    ready: b.ready,
                    serving: b.serving,
                    terminating: b.terminating,
                    in_use: in_use.contains(b),
                })
                .collect(),
            verdict: in_use.is_empty().then_some(if p.cluster.is_empty() {
                "rejected: no usable endpoint"
            } else {
                "dropped: no endpoint on this node (internalTrafficPolicy Local)"
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemRow {
    pub service: String,
    pub problem: String,
}

/// The proxy's last sync.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncRow {
    pub at: u64,
    /// A full sync compares everything with the kernel's own table; a partial one only what
    /// changed in the API.
    pub full: bool,
    pub duration_ms: f64,
    /// Chains (re)written plus elements added or removed.
    pub changed: usize,
    pub transactions: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicesSection {
    pub services: Vec<ServiceRow>,
    pub problems: Vec<ProblemRow>,
    pub last_sync: Option<SyncRow>,
    pub syncs: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicesOverview {
    pub service_ports: usize,
    pub without_endpoints: usize,
    pub problems: usize,
    pub last_sync: Option<SyncRow>,
}

impl Section for ServicesSection {
    const TITLE: &'static str = "Services";
    const LISTS: &'static [&'static str] = &["services", "problems"];
    type Summary = ServicesOverview;
    fn summary(&self) -> ServicesOverview {
        ServicesOverview {
            service_ports: self.services.len(),
            without_endpoints: self.services.iter().filter(|s| s.verdict.is_some()).count(),
            problems: self.problems.len(),
            last_sync: self.last_sync.clone(),
        }
    }
}

/// The proxy's metrics, with kube-proxy's names (`kubeproxy_…` becomes `skein_…`).
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    pub programming_latency: Histogram,
    pub last_sync: Gauge,
    pub failures: Counter,
}

pub struct ServicesBoard {
    pub section: SectionHandle<ServicesSection>,
    pub metrics: ProxyMetrics,
}

impl ServicesBoard {
    pub fn register(to: &Reporting) -> Self {
        let m = &to.metrics;
        let seconds = || Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        ServicesBoard {
            section: to.board.section("services"),
            metrics: ProxyMetrics {
                sync_duration: m.metric(
                    "skein_sync_proxy_rules_duration_seconds",
                    "How long a sync of the Service rules took, from plan to the last kernel acknowledgement",
                    seconds,
                ),
                full_sync_duration: m.metric(
                    "skein_sync_full_proxy_rules_duration_seconds",
                    "How long a full sync (a comparison with the kernel's own table) took",
                    seconds,
                ),
                partial_sync_duration: m.metric(
                    "skein_sync_partial_proxy_rules_duration_seconds",
                    "How long a partial sync (only what changed in the API) took",
                    seconds,
                ),
                programming_latency: m.metric(
                    "skein_network_programming_duration_seconds",
                    "From a change arriving from the API to its rules in the kernel",
                    seconds,
                ),
                last_sync: m.metric(
                    "skein_sync_proxy_rules_last_timestamp_seconds",
                    "When the Service rules were last synced (Unix time)",
                    Gauge::default,
                ),
                failures: m.metric(
                    "skein_sync_proxy_rules_nftables_sync_failures",
                    "Syncs of the Service rules the kernel refused",
                    Counter::default,
                ),
            },
        }
    }
}

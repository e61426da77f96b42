//! What the proxy part shows: `/api/v1/services` (each programmed Service port with its
//! endpoints, which are local and which terminating, and what a Service without endpoints does
//! to traffic), the Services it could not program and why, and its last sync; and its metrics,
//! under kube-proxy's names with the `skein_` prefix.

use std::sync::Arc;

use serde::Serialize;
use skein_metrics::{Counter, Gauge, Histogram, exponential_buckets};
use skein_proxy::ServicePort;
use skein_status::{Page, Section, SectionHandle, paged_details};

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
            namespace: p.service.namespace().to_owned(),
            name: p.service.name().to_owned(),
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
                    pod: b.pod.as_deref().map(String::from),
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

/// The proxy's section. Its Service ports are the proxy's own lists (shared, not copied): a
/// row is made for the ports of the page asked for, so at 10,000 Services the section costs
/// neither memory nor time until someone looks.
#[derive(Debug, Clone, Serialize)]
pub struct ServicesSection {
    #[serde(serialize_with = "rows", rename = "services")]
    pub ports: Vec<Arc<[ServicePort]>>,
    pub problems: Vec<ProblemRow>,
    pub last_sync: Option<SyncRow>,
    pub syncs: u64,
    pub failures: u64,
}

impl ServicesSection {
    fn each_port(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.iter().flat_map(|p| p.iter())
    }
}

/// A row per Service port, as the page shows them.
fn rows<S: serde::Serializer>(ports: &[Arc<[ServicePort]>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ports.iter().flat_map(|p| p.iter()).map(ServiceRow::of))
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
            service_ports: self.each_port().count(),
            without_endpoints: self
                .each_port()
                .filter(|p| p.internal_endpoints().is_empty())
                .count(),
            problems: self.problems.len(),
            last_sync: self.last_sync.clone(),
        }
    }

    fn details(&self, page: Page) -> serde_json::Value {
        let services = page.rows(self.each_port(), ServiceRow::of);
        let problems = page.rows(self.problems.iter(), |p| p);
        let mut plain = serde_json::Map::new();
        plain.insert(
            "last_sync".into(),
            serde_json::to_value(&self.last_sync).unwrap_or_default(),
        );
        plain.insert("syncs".into(), self.syncs.into());
        plain.insert("failures".into(), self.failures.into());
        paged_details(
            page,
            plain,
            vec![
                ("services".into(), self.each_port().count(), services),
                ("problems".into(), self.problems.len(), problems),
            ],
        )
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

/// The programming latency histogram's bucket bounds, in milliseconds.
const PROGRAMMING_BUCKETS_MS: [f64; 32] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0,
    75.0, 80.0, 90.0, 100.0, 125.0, 150.0, 200.0, 250.0, 500.0, 1e3, 2e3, 5e3, 1e4, 3e4, 6e4, 3e5,
];

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
                    // 5 ms steps up to 100 ms, where changes land: a doubling bucket there
                    // (25.6-51.2 ms) left a p99 near 50 ms to interpolation.
                    || Histogram::new(PROGRAMMING_BUCKETS_MS.iter().map(|ms| ms / 1e3)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use skein_cluster::ObjectKey;
    use skein_proxy::Backend;

    fn port(i: usize, endpoints: usize) -> ServicePort {
        let backend = |j: usize| Backend {
            addr: format!("10.42.0.{}", j + 1).parse().expect("ip"),
            port: 8080,
            local: j == 0,
            ready: true,
            serving: true,
            terminating: false,
            pod: Some(format!("web-{j}").into()),
        };
        let all: Vec<Backend> = (0..endpoints).map(backend).collect();
        ServicePort {
            service: ObjectKey::new("default", format!("svc-{i}")),
            port_name: String::new(),
            ipv6: false,
            protocol: skein_nft::L4Proto::Tcp,
            port: 80,
            cluster_ips: vec![format!("10.43.0.{}", i + 1).parse().expect("ip")],
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            node_port: None,
            external_local: false,
            internal_local: false,
            affinity: None,
            cluster: all.clone().into(),
            local: all[..endpoints.min(1)].into(),
            all: all.into(),
        }
    }

    /// The whole section serialized and cut, as sections without their own paging are.
    fn cut_whole(section: &ServicesSection, page: Page) -> serde_json::Value {
        let whole = serde_json::to_value(section).expect("serializes");
        let mut plain = whole.as_object().expect("an object").clone();
        let mut lists = Vec::new();
        for key in ServicesSection::LISTS {
            let items = plain.remove(*key).expect("the list");
            let items = items.as_array().expect("an array").clone();
            let shown = items.iter().skip(page.offset).take(page.limit).cloned();
            lists.push((key.to_string(), items.len(), shown.collect()));
        }
        paged_details(page, plain, lists)
    }

    #[test]
    fn the_services_page_makes_only_its_rows_and_matches_the_whole_section_cut() {
        let section = ServicesSection {
            ports: vec![
                Arc::from(vec![port(0, 2), port(1, 0)]),
                Arc::from(vec![port(2, 3)]),
                Arc::from(Vec::new()),
                Arc::from(vec![port(3, 1)]),
            ],
            problems: vec![ProblemRow {
                service: "default/bad".into(),
                problem: "no ports".into(),
            }],
            last_sync: None,
            syncs: 4,
            failures: 1,
        };
        for (offset, limit) in [(0, 100), (1, 2), (3, 5), (9, 1)] {
            let page = Page::new(Some(offset), Some(limit));
            let paged = section.details(page);
            assert_eq!(paged, cut_whole(&section, page), "page {offset}+{limit}");
            assert_eq!(paged["page"]["totals"]["services"], 4);
        }
        let page = section.details(Page::new(Some(1), Some(2)));
        let names: Vec<&str> = page["services"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["svc-1", "svc-2"]);
        assert_eq!(
            page["services"][0]["verdict"], "rejected: no usable endpoint",
            "a port without endpoints says what happens to its traffic"
        );
        let summary = section.summary();
        assert_eq!((summary.service_ports, summary.without_endpoints), (4, 1));
    }
}

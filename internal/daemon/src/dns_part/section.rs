//! What the DNS part shows: `/api/v1/dns` (where it answers, the zone, queries per second,
//! answers by response code, the cache, each upstream's health and latency), and its metrics,
//! under CoreDNS's names with `coredns_` become `skein_dns_`/`skein_` where a counterpart exists
//! (`skein_dns_requests_total`, `skein_dns_responses_total`, `skein_dns_cache_hits_total`, ...),
//! so dashboards made for CoreDNS adapt by a prefix.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;
use skein_dns::server::{Context, RCODE_NAMES};
use skein_metrics::{ConstCounter, ConstGauge, DescriptorEncoder, EncodeMetric, MetricType};
use skein_status::{Section, SectionHandle};

use super::Settings;
use crate::sections::Reporting;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RcodeRow {
    pub rcode: &'static str,
    pub answers: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamRow {
    pub address: String,
    pub healthy: bool,
    pub answers: u64,
    pub failures: u64,
    /// The last answer's round trip.
    pub last_rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsSection {
    pub zone: String,
    pub listening: Vec<String>,
    pub names: usize,
    /// The snapshot the index was built from, and how long the last build took.
    pub snapshot_version: u64,
    pub last_build_ms: f64,
    pub queries: u64,
    pub udp_queries: u64,
    pub tcp_queries: u64,
    /// Over the last refresh (about a second).
    pub queries_per_second: f64,
    pub answers: Vec<RcodeRow>,
    pub forwarded: u64,
    pub truncated: u64,
    pub cache_entries: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Hits over lookups of forwarded names; `None` before the first.
    pub cache_hit_rate: Option<f64>,
    pub upstreams_from: String,
    pub upstreams: Vec<UpstreamRow>,
    #[serde(skip)]
    last: Option<(Instant, u64)>,
}

impl DnsSection {
    pub fn new(settings: &Settings, listening: &[String], upstreams_from: &str) -> Self {
        Self {
            zone: settings.zone.domain.clone(),
            listening: listening.to_vec(),
            names: 0,
            snapshot_version: 0,
            last_build_ms: 0.0,
            queries: 0,
            udp_queries: 0,
            tcp_queries: 0,
            queries_per_second: 0.0,
            answers: Vec::new(),
            forwarded: 0,
            truncated: 0,
            cache_entries: 0,
            cache_hits: 0,
            cache_misses: 0,
            cache_hit_rate: None,
            upstreams_from: upstreams_from.to_string(),
            upstreams: Vec::new(),
            last: None,
        }
    }

    /// Reads the servers' and the forwarder's counters.
    pub fn refresh(&mut self, ctx: &Context, version: u64, built_ms: f64) {
        let c = &ctx.counters;
        let f = &ctx.forwarder;
        let index = ctx.index.load();
        self.names = index.len();
        self.snapshot_version = version;
        self.last_build_ms = built_ms;
        self.udp_queries = c.udp_queries.load(Ordering::Relaxed);
        self.tcp_queries = c.tcp_queries.load(Ordering::Relaxed);
        self.queries = self.udp_queries + self.tcp_queries;
        let now = Instant::now();
        if let Some((at, queries)) = self.last {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                self.queries_per_second = (self.queries - queries) as f64 / secs;
            }
        }
        self.last = Some((now, self.queries));
        self.answers = RCODE_NAMES
            .iter()
            .zip(&c.rcodes)
            .map(|(name, n)| RcodeRow {
                rcode: name,
                answers: n.load(Ordering::Relaxed),
            })
            .filter(|r| r.answers > 0)
            .collect();
        self.forwarded = c.forwarded.load(Ordering::Relaxed);
        self.truncated = c.truncated.load(Ordering::Relaxed);
        self.cache_entries = f.cache_len();
        self.cache_hits = f.counters.cache_hits.load(Ordering::Relaxed);
        self.cache_misses = f.counters.cache_misses.load(Ordering::Relaxed);
        let lookups = self.cache_hits + self.cache_misses;
        self.cache_hit_rate = (lookups > 0).then(|| self.cache_hits as f64 / lookups as f64);
        self.upstreams = f
            .upstreams()
            .into_iter()
            .map(|u| UpstreamRow {
                address: u.addr.to_string(),
                healthy: u.healthy,
                answers: u.answers,
                failures: u.failures,
                last_rtt_ms: (u.answers > 0).then_some(u.last_rtt_us as f64 / 1e3),
            })
            .collect();
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsOverview {
    pub zone: String,
    pub listening: Vec<String>,
    pub names: usize,
    pub queries_per_second: f64,
    pub cache_hit_rate: Option<f64>,
    pub healthy_upstreams: usize,
    pub upstreams: usize,
}

impl Section for DnsSection {
    const TITLE: &'static str = "Cluster DNS";
    const LISTS: &'static [&'static str] = &["answers", "upstreams"];
    type Summary = DnsOverview;
    fn summary(&self) -> DnsOverview {
        DnsOverview {
            zone: self.zone.clone(),
            listening: self.listening.clone(),
            names: self.names,
            queries_per_second: self.queries_per_second,
            cache_hit_rate: self.cache_hit_rate,
            healthy_upstreams: self.upstreams.iter().filter(|u| u.healthy).count(),
            upstreams: self.upstreams.len(),
        }
    }
}

/// The metrics, read off the servers' counters at each scrape.
#[derive(Debug, Clone, Default)]
struct DnsMetrics(Arc<RwLock<Option<Arc<Context>>>>);

impl skein_metrics::Collector for DnsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(ctx) = self.0.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let c = &ctx.counters;
        let n = |v: &std::sync::atomic::AtomicU64| ConstCounter::new(v.load(Ordering::Relaxed));
        let mut requests = encoder.encode_descriptor(
            "skein_dns_requests",
            "DNS queries received, by transport (CoreDNS: coredns_dns_requests_total).",
            None,
            MetricType::Counter,
        )?;
        n(&c.udp_queries).encode(requests.encode_family(&[("proto", "udp")])?)?;
        n(&c.tcp_queries).encode(requests.encode_family(&[("proto", "tcp")])?)?;
        let mut responses = encoder.encode_descriptor(
            "skein_dns_responses",
            "DNS answers sent, by response code (CoreDNS: coredns_dns_responses_total).",
            None,
            MetricType::Counter,
        )?;
        for (name, v) in RCODE_NAMES.iter().zip(&c.rcodes) {
            n(v).encode(responses.encode_family(&[("rcode", *name)])?)?;
        }
        let f = &ctx.forwarder;
        for (name, help, v) in [
            (
                "skein_dns_cache_hits",
                "Forwarded names answered from the cache (CoreDNS: coredns_cache_hits_total).",
                &f.counters.cache_hits,
            ),
            (
                "skein_dns_cache_misses",
                "Forwarded names not in the cache (CoreDNS: coredns_cache_misses_total).",
                &f.counters.cache_misses,
            ),
        ] {
            n(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        ConstGauge::new(f.cache_len() as i64).encode(encoder.encode_descriptor(
            "skein_dns_cache_entries",
            "Entries in the forwarding cache (CoreDNS: coredns_cache_entries).",
            None,
            MetricType::Gauge,
        )?)?;
        let upstreams = f.upstreams();
        let mut healthy = encoder.encode_descriptor(
            "skein_dns_upstream_healthy",
            "Whether an upstream answers (1) or failed its last tries (0).",
            None,
            MetricType::Gauge,
        )?;
        for u in &upstreams {
            let to = u.addr.to_string();
            ConstGauge::new(i64::from(u.healthy))
                .encode(healthy.encode_family(&[("to", to.as_str())])?)?;
        }
        let mut failures = encoder.encode_descriptor(
            "skein_dns_upstream_failures",
            "Tries of an upstream that got no answer (CoreDNS: coredns_forward_healthcheck_failures_total).",
            None,
            MetricType::Counter,
        )?;
        for u in &upstreams {
            let to = u.addr.to_string();
            ConstCounter::new(u.failures)
                .encode(failures.encode_family(&[("to", to.as_str())])?)?;
        }
        Ok(())
    }
}

pub struct DnsBoard {
    section: SectionHandle<DnsSection>,
}

impl DnsBoard {
    pub fn register(to: &Reporting, ctx: Arc<Context>) -> Self {
        let metrics = to.metrics.collector("dns", DnsMetrics::default);
        *metrics.0.write().unwrap_or_else(|e| e.into_inner()) = Some(ctx);
        Self {
            section: to.board.section("dns"),
        }
    }

    pub fn show(&self, section: &DnsSection) {
        self.section.set(section.clone());
    }
}

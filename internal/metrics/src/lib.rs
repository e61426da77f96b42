//! The daemon's one metrics registry: each part registers its own metrics into it (names
//! `skein_<part>_…`, with Prometheus' unit suffixes `_seconds`, `_bytes` and `_total`), and the
//! page's listener serves it at `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! A part registers again each time the supervisor restarts it; registering a name that is
//! already there hands back the metric registered first, so the series carry on across restarts
//! instead of appearing twice. It knows nothing of what the parts measure.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
pub use prometheus_client::metrics::MetricType;
pub use prometheus_client::metrics::counter::{ConstCounter, Counter};
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Metric;

#[cfg(test)]
mod tests;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric name starts with this.
pub const PREFIX: &str = "skein_";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot encode the metrics: {0}")]
    Encode(std::fmt::Error),
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    registry: Registry,
    /// What is registered under each name, to hand out again (metrics are shared handles).
    registered: BTreeMap<String, Arc<dyn Any + Send + Sync>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The metric named `name` (without the `_total` a counter gets when encoded): the one
    /// registered before under that name, else `make()`'s, registered now.
    ///
    /// A family without samples is left out of the output (the registry skips it); a part
    /// whose metric must show before its first sample reports it through a [`Collector`].
    ///
    /// A name registered before with another type is a bug in the part; the metric made then
    /// is returned unregistered, so the part runs on and the first registration stays served.
    pub fn metric<M>(&self, name: &str, help: &str, make: impl FnOnce() -> M) -> M
    where
        M: Metric + Clone,
    {
        debug_assert!(name.starts_with(PREFIX), "metric {name} lacks {PREFIX}");
        let mut inner = self.lock();
        if let Some(existing) = inner.registered.get(name) {
            return match existing.downcast_ref::<M>() {
                Some(m) => m.clone(),
                None => make(),
            };
        }
        let metric = make();
        // The registry ends the help with a full stop itself.
        inner
            .registry
            .register(name, help.trim_end_matches('.'), metric.clone());
        inner
            .registered
            .insert(name.to_string(), Arc::new(metric.clone()));
        metric
    }

    /// The collector named `name`, asked for its metrics at each scrape: the one registered
    /// before under that name, else `make()`'s, registered now. A collector that keeps what it
    /// reports behind a shared handle (an `Arc`) hands the part that handle back after a
    /// restart, as [`Metrics::metric`] does.
    pub fn collector<C>(&self, name: &str, make: impl FnOnce() -> C) -> C
    where
        C: Collector + Clone,
    {
        let mut inner = self.lock();
        let key = format!("collector:{name}");
        if let Some(existing) = inner.registered.get(&key) {
            return match existing.downcast_ref::<C>() {
                Some(c) => c.clone(),
                None => make(),
            };
        }
        let collector = make();
        inner
            .registry
            .register_collector(Box::new(collector.clone()));
        inner.registered.insert(key, Arc::new(collector.clone()));
        collector
    }

    /// Everything registered, in the Prometheus text format.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let inner = self.lock();
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &inner.registry)
            .map_err(MetricsError::Encode)?;
        Ok(out)
    }

    // A poisoned lock only means a registration panicked; the registry itself is still whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request-latency histogram's buckets: 1 ms to about 16 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

//! The board's own metrics, read off the board at each scrape: each part's state and restarts,
//! and the daemon's readiness.

use skein_metrics::{ConstCounter, ConstGauge, DescriptorEncoder, EncodeMetric, Metrics};

use crate::{State, StatusBoard};

const STATES: [(State, &str); 5] = [
    (State::Starting, "starting"),
    (State::Ok, "ok"),
    (State::Degraded, "degraded"),
    (State::Failed, "failed"),
    (State::Disabled, "disabled"),
];

#[derive(Debug, Clone)]
struct PartMetrics(StatusBoard);

impl StatusBoard {
    /// Adds the board's metrics to `metrics`: `skein_part_up{part}` (1 while a part is ok or
    /// degraded: running and doing its job), `skein_part_state{part,state}` (1 for the state it
    /// is in, 0 for the others), `skein_part_restarts_total{part}` and `skein_ready`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.collector("status-board", || PartMetrics(self.clone()));
    }
}

impl skein_metrics::Collector for PartMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.0.report();

        let ready = ConstGauge::new(i64::from(report.ready));
        ready.encode(encoder.encode_descriptor(
            "skein_ready",
            "Whether the daemon is ready (store open, page listening).",
            None,
            ready.metric_type(),
        )?)?;

        let mut up = encoder.encode_descriptor(
            "skein_part_up",
            "Whether the part is running and doing its job (state ok or degraded).",
            None,
            skein_metrics::MetricType::Gauge,
        )?;
        for p in &report.parts {
            let value = i64::from(matches!(p.state, State::Ok | State::Degraded));
            ConstGauge::new(value).encode(up.encode_family(&[("part", p.name.as_str())])?)?;
        }

        let mut state = encoder.encode_descriptor(
            "skein_part_state",
            "The part's state: 1 for the one it is in, 0 for the others.",
            None,
            skein_metrics::MetricType::Gauge,
        )?;
        for p in &report.parts {
            for (s, label) in STATES {
                let labels = [("part", p.name.as_str()), ("state", label)];
                ConstGauge::new(i64::from(p.state == s)).encode(state.encode_family(&labels)?)?;
            }
        }

        let mut restarts = encoder.encode_descriptor(
            "skein_part_restarts",
            "How often the supervisor restarted the part since the daemon started.",
            None,
            skein_metrics::MetricType::Counter,
        )?;
        for p in &report.parts {
            ConstCounter::new(u64::from(p.restarts))
                .encode(restarts.encode_family(&[("part", p.name.as_str())])?)?;
        }
        Ok(())
    }
}

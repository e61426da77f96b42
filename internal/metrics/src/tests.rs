//! Registration across restarts, collectors, and the text format.

use super::*;

type Requests = Family<[(&'static str, &'static str); 1], Counter>;

#[test]
fn registering_a_name_again_returns_the_first_metric() {
    let m = Metrics::new();
    let first: Requests = m.metric("skein_test_requests", "Requests.", Requests::default);
    first.get_or_create(&[("verb", "add")]).inc();
    let again: Requests = m.metric("skein_test_requests", "Requests.", Requests::default);
    again.get_or_create(&[("verb", "add")]).inc();
    let text = m.encode().expect("encodes");
    assert!(
        text.contains("skein_test_requests_total{verb=\"add\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP skein_test_requests_total Requests.\n"),
        "one full stop: {text}"
    );
    assert_eq!(
        text.matches("# TYPE skein_test_requests_total counter")
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn a_name_reused_with_another_type_keeps_the_first_registration() {
    let m = Metrics::new();
    let g: Gauge = m.metric("skein_test_thing", "A thing.", Gauge::default);
    g.set(3);
    let c: Counter = m.metric("skein_test_thing", "A thing.", Counter::default);
    c.inc();
    let text = m.encode().expect("encodes");
    assert!(text.contains("skein_test_thing 3\n"), "{text}");
    assert!(!text.contains("skein_test_thing_total"), "{text}");
}

#[derive(Debug, Clone)]
struct Fixed(u64);

impl Collector for Fixed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0);
        let mut family =
            encoder.encode_descriptor("skein_test_fixed", "Fixed.", None, counter.metric_type())?;
        counter.encode(family.encode_family(&[("peer", "node-2")])?)
    }
}

#[test]
fn a_collector_is_asked_at_each_scrape_and_registered_once() {
    let m = Metrics::new();
    let first = m.collector("fixed", || Fixed(7));
    let again = m.collector("fixed", || Fixed(8));
    assert_eq!((first.0, again.0), (7, 7), "the first one is handed back");
    let text = m.encode().expect("encodes");
    assert_eq!(
        text.matches("skein_test_fixed_total{peer=\"node-2\"} 7\n")
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn histograms_have_buckets_sum_and_count() {
    let m = Metrics::new();
    let h: Histogram = m.metric("skein_test_duration_seconds", "Duration.", || {
        Histogram::new(latency_buckets())
    });
    h.observe(0.003);
    let text = m.encode().expect("encodes");
    assert!(
        text.contains("skein_test_duration_seconds_bucket{le=\"0.004\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("skein_test_duration_seconds_count 1\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE skein_test_duration_seconds histogram"),
        "{text}"
    );
}

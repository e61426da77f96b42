//! Board semantics: registration, state changes, resolved errors, the overall verdict,
//! sections and their paging, the board's metrics, the JSON shape.

use super::*;

fn board() -> StatusBoard {
    StatusBoard::new(Identity {
        node: "n1".into(),
        version: "0.0.0".into(),
        config_path: "/etc/skein/config.toml".into(),
        state_path: "/var/lib/skein/state.db".into(),
    })
}

#[test]
fn registered_parts_start_in_starting_or_disabled() {
    let b = board();
    b.register("store", true);
    b.register("dns", false);
    let r = b.report();
    let states: Vec<_> = r.parts.iter().map(|p| (p.name.as_str(), p.state)).collect();
    assert_eq!(
        states,
        [("dns", State::Disabled), ("store", State::Starting)]
    );
    assert_eq!(r.overall, State::Starting);
    assert!(!r.ready);
}

#[test]
fn overall_is_the_worst_part_and_ignores_disabled() {
    let b = board();
    let a = b.register("a", true);
    let c = b.register("c", true);
    b.register("off", false);
    a.ok("fine");
    c.ok("fine");
    assert_eq!(b.report().overall, State::Ok);
    c.degraded("slow");
    assert_eq!(b.report().overall, State::Degraded);
    a.failed("broken");
    assert_eq!(b.report().overall, State::Failed);
}

#[test]
fn last_error_survives_recovery_and_restarts_are_counted() {
    let b = board();
    let p = b.register("p", true);
    p.failed("disk full");
    p.restarting("retrying in 1s");
    p.ok("running");
    let s = p.status().expect("registered");
    assert_eq!(s.state, State::Ok);
    assert_eq!(s.detail, "running");
    assert_eq!(s.last_error.as_deref(), Some("disk full"));
    assert!(s.last_error_at.is_some());
    assert_eq!(s.restarts, 1);
}

#[test]
fn report_serializes_with_the_documented_fields() {
    let b = board();
    b.register("store", true).ok("open");
    b.set_ready(true);
    let v = serde_json::to_value(b.report()).expect("json");
    for field in [
        "node",
        "version",
        "config_path",
        "state_path",
        "started_at",
        "uptime_seconds",
        "ready",
        "overall",
        "parts",
        "sections",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["parts"][0]["state"], "ok");
    assert_eq!(v["parts"][0]["last_error"], serde_json::Value::Null);
}

#[test]
fn an_error_is_resolved_once_the_part_is_ok_after_it() {
    let b = board();
    let p = b.register("p", true);
    p.degraded("routes before the bridge has its address");
    let s = p.status().expect("registered");
    assert!(!s.last_error_resolved, "a degraded part's error is present");
    p.ok("running");
    let s = p.status().expect("registered");
    assert!(s.last_error_resolved, "{s:?}");
    p.failed("disk full");
    p.restarting("retrying in 1s");
    let s = p.status().expect("registered");
    assert!(
        !s.last_error_resolved,
        "restarting has not resolved it: {s:?}"
    );
    let v = serde_json::to_value(b.report()).expect("json");
    assert_eq!(v["parts"][0]["last_error_resolved"], false);
}

#[test]
fn a_part_that_never_failed_has_nothing_resolved() {
    let b = board();
    let p = b.register("p", true);
    p.ok("running");
    assert!(!p.status().expect("registered").last_error_resolved);
}

#[derive(serde::Serialize)]
struct Pods {
    cidr: String,
    pods: Vec<String>,
}

impl Section for Pods {
    const TITLE: &'static str = "Pods";
    const LISTS: &'static [&'static str] = &["pods"];
    type Summary = serde_json::Value;
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({ "cidr": self.cidr, "pods": self.pods.len() })
    }
}

fn pods(n: usize) -> Pods {
    Pods {
        cidr: "10.42.1.0/24".into(),
        pods: (0..n).map(|i| format!("pod-{i}")).collect(),
    }
}

#[test]
fn a_registered_section_shows_its_summary_in_the_overview() {
    let b = board();
    let section = b.section::<Pods>("ipam");
    let v = serde_json::to_value(b.report()).expect("json");
    assert_eq!(v["sections"]["ipam"]["summary"], serde_json::Value::Null);
    assert_eq!(v["sections"]["ipam"]["href"], "/api/v1/ipam");
    assert_eq!(v["sections"]["ipam"]["title"], "Pods");
    section.set(pods(3));
    let v = serde_json::to_value(b.report()).expect("json");
    assert_eq!(
        v["sections"]["ipam"]["summary"],
        serde_json::json!({ "cidr": "10.42.1.0/24", "pods": 3 })
    );
    assert!(v["sections"]["ipam"]["updated_at"].is_u64(), "{v}");
    assert!(
        v["sections"]["ipam"].get("pods").is_none(),
        "no details in the overview"
    );
}

#[test]
fn section_details_page_their_lists_and_tell_totals() {
    let b = board();
    b.section::<Pods>("ipam").set(pods(5));
    let all = b
        .section_details("ipam", Page::default())
        .expect("registered");
    assert_eq!(all["pods"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["cidr"], "10.42.1.0/24");
    assert_eq!(all["page"]["totals"]["pods"], 5);
    let page = b
        .section_details("ipam", Page::new(Some(3), Some(1)))
        .expect("registered");
    assert_eq!(page["pods"], serde_json::json!(["pod-3"]));
    assert_eq!(
        page["page"],
        serde_json::json!({ "offset": 3, "limit": 1, "totals": { "pods": 5 } })
    );
    let past = b
        .section_details("ipam", Page::new(Some(9), None))
        .expect("registered");
    assert_eq!(past["pods"], serde_json::json!([]));
    assert_eq!(b.section_details("dns", Page::default()), None);
}

#[test]
fn a_section_registered_again_keeps_its_last_value() {
    let b = board();
    b.section::<Pods>("ipam").set(pods(2));
    let again = b.section::<Pods>("ipam");
    let details = b
        .section_details("ipam", Page::default())
        .expect("registered");
    assert_eq!(details["page"]["totals"]["pods"], 2);
    again.set(pods(1));
    assert_eq!(
        b.section_details("ipam", Page::default())
            .expect("registered")["page"]["totals"]["pods"],
        1
    );
    assert_eq!(b.section_names(), ["ipam"]);
}

#[test]
fn page_limits_are_bounded() {
    assert_eq!(
        Page::new(None, None),
        Page {
            offset: 0,
            limit: Page::DEFAULT_LIMIT
        }
    );
    assert_eq!(Page::new(Some(2), Some(1_000_000)).limit, Page::MAX_LIMIT);
}

#[test]
fn section_names_are_path_segments() {
    for ok in ["ipam", "peers", "dns", "net-policy2"] {
        assert!(valid_section_name(ok), "{ok}");
    }
    for bad in ["", "status", "Peers", "a/b", "a b", "../x"] {
        assert!(!valid_section_name(bad), "{bad}");
    }
}

#[test]
fn part_metrics_are_read_off_the_board() {
    let b = board();
    let metrics = skein_metrics::Metrics::new();
    b.register_metrics(&metrics);
    let cni = b.register("cni", true);
    cni.failed("socket in use");
    cni.restarting("retrying");
    cni.ok("serving");
    b.register("dns", false);
    let text = metrics.encode().expect("encodes");
    for line in [
        "skein_part_up{part=\"cni\"} 1",
        "skein_part_up{part=\"dns\"} 0",
        "skein_part_state{part=\"cni\",state=\"ok\"} 1",
        "skein_part_state{part=\"cni\",state=\"failed\"} 0",
        "skein_part_state{part=\"dns\",state=\"disabled\"} 1",
        "skein_part_restarts_total{part=\"cni\"} 1",
        "skein_ready 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
}

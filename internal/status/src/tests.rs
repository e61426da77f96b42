//! Board semantics: registration, state changes, the overall verdict, the JSON shape.

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
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["parts"][0]["state"], "ok");
    assert_eq!(v["parts"][0]["last_error"], serde_json::Value::Null);
}

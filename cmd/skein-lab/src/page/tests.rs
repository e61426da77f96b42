//! Reading status reports: a part by name, and the lines that say why a node is not ok.

use super::*;
use serde_json::json;

fn report() -> Value {
    json!({
        "overall": "degraded",
        "parts": [
            {"name": "store", "state": "ok", "detail": "open", "last_error": "an old one"},
            {"name": "overlay", "state": "degraded", "detail": "2 of 3 routes",
             "last_error": "route 10.42.2.0/24: no such device"},
            {"name": "proxy", "state": "disabled", "detail": ""},
            {"name": "cni", "state": "starting", "detail": "", "last_error": null},
        ]
    })
}

#[test]
fn finds_a_part_by_name_or_null() {
    assert_eq!(part(&report(), "overlay")["state"], "degraded");
    assert!(part(&report(), "dns").is_null());
    assert!(part(&json!({}), "cni").is_null());
}

#[test]
fn names_each_part_that_keeps_the_node_from_ok_with_its_error() {
    let report = report();
    assert!(!is_ok(&report));
    assert_eq!(
        problems(&report),
        [
            "overlay is degraded: 2 of 3 routes (last error: route 10.42.2.0/24: no such device)",
            "cni is starting",
        ]
    );
}

#[test]
fn a_healthy_report_has_no_problems() {
    let ok =
        json!({"overall": "ok", "parts": [{"name": "store", "state": "ok", "detail": "open"}]});
    assert!(is_ok(&ok));
    assert!(problems(&ok).is_empty());
}

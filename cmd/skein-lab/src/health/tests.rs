//! What `up` says about nodes that are not healthy.

use super::*;
use serde_json::json;

#[test]
fn a_healthy_node_has_no_problems() {
    let ok = json!({"overall": "ok", "parts": [{"name": "cni", "state": "ok"}]});
    assert!(node_problems(Some(&ok)).is_empty());
}

#[test]
fn a_silent_page_and_a_degraded_part_are_named_with_the_error() {
    assert_eq!(node_problems(None), ["its status page does not answer"]);
    let degraded = json!({"overall": "degraded", "parts": [
        {"name": "overlay", "state": "degraded", "detail": "1 of 2 routes",
         "last_error": "adding route 10.42.2.0/24: network unreachable"},
        {"name": "cni", "state": "ok", "detail": "serving"},
    ]});
    let problems = node_problems(Some(&degraded));
    let report = not_healthy_report(
        "demo",
        Duration::from_secs(60),
        &[("node-2".to_string(), problems)],
    );
    assert!(
        report.starts_with("after 60s not every node is ok:"),
        "{report}"
    );
    assert!(
        report.contains(
            "\n  node-2: overlay is degraded: 1 of 2 routes (last error: adding route \
             10.42.2.0/24: network unreachable)"
        ),
        "{report}"
    );
    assert!(!report.contains("cni"), "{report}");
    assert!(report.contains("skein-lab --name demo down"), "{report}");
}

#[test]
fn a_report_that_is_not_ok_without_a_named_part_still_says_so() {
    let odd = json!({"overall": "failed", "parts": []});
    assert_eq!(
        node_problems(Some(&odd)),
        ["its overall health is \"failed\""]
    );
}

//! The waits every test relies on: a check that panics fails the wait with the check's own
//! message at once, and a condition never met fails naming it and its context.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::*;

/// The message a panic carried.
fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_panic_inside_the_check_propagates_with_its_message() {
    let start = Instant::now();
    let payload = catch_unwind(AssertUnwindSafe(|| {
        wait_explained(
            "the page",
            Duration::from_secs(30),
            || "the lab's logs".to_string(),
            || -> Option<()> { panic!("node-1's status is not JSON: <html>") },
        )
    }))
    .expect_err("the wait panics");
    let message = message(payload);
    assert_eq!(message, "node-1's status is not JSON: <html>");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "it did not wait out the deadline first"
    );
}

#[test]
fn a_condition_never_met_times_out_naming_it_and_the_context() {
    let payload = catch_unwind(AssertUnwindSafe(|| {
        wait_explained(
            "node-2 to be ready",
            Duration::from_millis(50),
            || "--- logs/node-2.log".to_string(),
            || None::<()>,
        )
    }))
    .expect_err("the wait panics");
    let message = message(payload);
    assert!(
        message.starts_with("timed out after 50ms waiting for node-2 to be ready\n"),
        "{message}"
    );
    assert!(message.ends_with("--- logs/node-2.log"), "{message}");
}

#[test]
fn a_condition_met_returns_its_value() {
    let mut calls = 0;
    let got = wait_for("the third call", Duration::from_secs(5), || {
        calls += 1;
        (calls == 3).then_some(calls)
    });
    assert_eq!(got, 3);
}

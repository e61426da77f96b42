//! The polling loop: returns the first answer, gives up at the deadline, stops on an error.

use super::*;

#[test]
fn returns_the_first_answer() {
    let mut calls = 0;
    let got = poll(Duration::from_secs(5), Duration::from_millis(1), || {
        calls += 1;
        Ok::<_, String>((calls == 3).then_some(calls))
    });
    assert_eq!(got.expect("answer"), 3);
}

#[test]
fn gives_up_at_the_deadline_having_checked_at_least_once() {
    let mut calls = 0;
    let got = poll(Duration::ZERO, Duration::from_millis(1), || {
        calls += 1;
        Ok::<Option<()>, String>(None)
    });
    assert!(matches!(got, Err(WaitError::TimedOut(d)) if d == Duration::ZERO));
    assert_eq!(calls, 1);
}

#[test]
fn an_error_of_the_check_ends_the_wait_at_once() {
    let start = Instant::now();
    let got = poll(Duration::from_secs(30), Duration::from_millis(1), || {
        Err::<Option<()>, _>("the node exited")
    });
    assert_eq!(got.expect_err("failed").to_string(), "the node exited");
    assert!(start.elapsed() < Duration::from_secs(5));
}

//! Supervisor behaviour with real tasks on a paused clock.

use super::supervisor::*;
use skein_status::{Identity, State, StatusBoard};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn board() -> StatusBoard {
    StatusBoard::new(Identity {
        node: "n".into(),
        version: "v".into(),
        config_path: "c".into(),
        state_path: "s".into(),
    })
}

fn state_of(board: &StatusBoard, name: &str) -> skein_status::PartStatus {
    board
        .report()
        .parts
        .into_iter()
        .find(|p| p.name == name)
        .expect("registered")
}

#[test]
fn backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run() {
    let b = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(8),
        healthy: Duration::from_secs(60),
    };
    let quick = Duration::from_millis(10);
    let mut d = b.next(None, quick);
    let mut seen = vec![d.as_secs()];
    for _ in 0..5 {
        d = b.next(Some(d), quick);
        seen.push(d.as_secs());
    }
    assert_eq!(seen, [1, 2, 4, 8, 8, 8]);
    assert_eq!(
        b.next(Some(Duration::from_secs(8)), Duration::from_secs(61))
            .as_secs(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_part_is_restarted_and_does_not_stop_the_others() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    sup.spawn("flaky", move |handle, _cancel| {
        let n = a.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(format!("attempt {n} failed"))
            } else {
                handle.ok("third time lucky");
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    });
    sup.spawn("steady", |handle, cancel| async move {
        handle.ok("fine");
        cancel.cancelled().await;
        Ok(())
    });

    tokio::time::sleep(Duration::from_millis(10)).await;
    let flaky = state_of(&board, "flaky");
    assert_eq!(flaky.state, State::Failed);
    assert_eq!(flaky.last_error.as_deref(), Some("attempt 0 failed"));
    assert_eq!(state_of(&board, "steady").state, State::Ok);

    // 1 s, then 2 s of backoff: the third attempt runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let flaky = state_of(&board, "flaky");
    assert_eq!(flaky.state, State::Ok, "{flaky:?}");
    assert_eq!(flaky.restarts, 2);
    assert_eq!(flaky.last_error.as_deref(), Some("attempt 1 failed"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(state_of(&board, "steady").state, State::Ok);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_part_is_reported_and_restarted() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    sup.spawn("panicky", move |_handle, cancel| {
        let n = a.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(n > 0, "boom on the first run");
            cancel.cancelled().await;
            Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let p = state_of(&board, "panicky");
    assert_eq!(p.state, State::Failed);
    assert!(
        p.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("panicked: boom"),
        "{p:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_parts_that_ignore_cancellation() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    sup.spawn("stubborn", |_h, _c| async {
        std::future::pending::<()>().await;
        Ok(())
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = tokio::time::Instant::now();
    sup.shutdown(Duration::from_secs(2)).await;
    assert!(before.elapsed() <= Duration::from_secs(3));
}

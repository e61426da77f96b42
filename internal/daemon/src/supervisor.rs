//! Runs each part as its own task and restarts a failed one with backoff, so one part's failure
//! never stops the others. A part reports its own health on its [`PartHandle`]; the supervisor
//! reports failures, panics and restarts.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use skein_status::{PartHandle, StatusBoard};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a part's run returns: `Err` carries a message for the page.
pub type PartResult = Result<(), String>;
type PartFuture = Pin<Box<dyn Future<Output = PartResult> + Send>>;
type PartFn = Box<dyn Fn(PartHandle, CancellationToken) -> PartFuture + Send + Sync>;

/// Backoff between restarts: doubling from `first` up to `max`; a part that ran for `healthy`
/// before failing starts again from `first`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub healthy: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
            healthy: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the next start, given the last delay and how long the last run lasted.
    pub fn next(&self, last: Option<Duration>, ran_for: Duration) -> Duration {
        match last {
            Some(last) if ran_for < self.healthy => (last * 2).min(self.max),
            _ => self.first,
        }
    }
}

/// The set of running parts.
pub struct Supervisor {
    board: StatusBoard,
    backoff: Backoff,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("parts", &self.tasks.len())
            .finish()
    }
}

impl Supervisor {
    pub fn new(board: StatusBoard, backoff: Backoff) -> Self {
        Self {
            board,
            backoff,
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Starts `run` as the part `name`; it is called again after each failure.
    pub fn spawn<F, Fut>(&mut self, name: &str, run: F)
    where
        F: Fn(PartHandle, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = PartResult> + Send + 'static,
    {
        let handle = self.board.register(name, true);
        let run: PartFn = Box::new(move |h, c| Box::pin(run(h, c)));
        let cancel = self.cancel.clone();
        let backoff = self.backoff;
        self.tasks.spawn(keep_running(handle, run, cancel, backoff));
    }

    /// Asks every part to stop and waits up to `grace` for them; the rest are aborted.
    pub async fn shutdown(mut self, grace: Duration) {
        self.cancel.cancel();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!("parts still running after {grace:?}; stopping them");
            self.tasks.shutdown().await;
        }
    }
}

async fn keep_running(
    handle: PartHandle,
    run: PartFn,
    cancel: CancellationToken,
    backoff: Backoff,
) {
    let mut delay: Option<Duration> = None;
    loop {
        let started = tokio::time::Instant::now();
        // Each run is a task of its own, so a panic is caught here instead of ending the daemon.
        let outcome = tokio::spawn(run(handle.clone(), cancel.child_token())).await;
        if cancel.is_cancelled() {
            return;
        }
        let error = match outcome {
            Ok(Ok(())) => "stopped unexpectedly".to_string(),
            Ok(Err(e)) => e,
            Err(join) if join.is_panic() => format!("panicked: {}", panic_message(join)),
            Err(join) => format!("task ended: {join}"),
        };
        tracing::error!(part = handle.name(), error = %error, "part failed");
        handle.failed(error);
        let wait = backoff.next(delay, started.elapsed());
        delay = Some(wait);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        handle.restarting(format!("restarting after {}s", wait.as_secs_f32()));
        tracing::info!(part = handle.name(), "restarting part");
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

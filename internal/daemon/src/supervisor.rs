//! Runs each part as its own task and restarts a failed one with backoff, so one part's failure
//! never stops the others. A part reports its own health on its [`PartHandle`]; the supervisor
//! reports failures, panics and restarts.
//!
//! Every run of a part owns its helper tasks ([`Part::spawn`]: socket servers, reporters): when
//! the run ends (returns, fails, panics, or is stopped) the supervisor aborts them and waits for
//! them before the next run starts, so a restarted part never meets its predecessor's tasks (a
//! socket still served, a listener still bound). A helper that fails or panics ends the run.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_status::{PartHandle, StatusBoard};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why a part's run ended badly; shown on the page and in the log.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error(transparent)]
    Store(#[from] skein_store::StoreError),
    #[error(transparent)]
    PodNet(#[from] skein_podnet::PodNetError),
    #[error(transparent)]
    Overlay(#[from] skein_overlay::OverlayError),
    #[error(transparent)]
    Nft(#[from] skein_nft::NftError),
    #[error(transparent)]
    Cluster(#[from] skein_cluster::ClusterError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the cluster view stopped")]
    ViewClosed,
    #[error("its task `{task}` ended: {why}")]
    Helper { task: &'static str, why: String },
    /// A failure described where it happened (an operation and the error it met).
    #[error("{0}")]
    Failed(String),
}

impl PartError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PartError {
        let what = what.into();
        move |source| PartError::Io { what, source }
    }
}

/// How long the helpers of a run that ended (failed or panicked) get to stop after they are
/// asked to, before they are aborted; shutdown has its own grace period.
const RESTART_GRACE: Duration = Duration::from_secs(2);

/// What a part's run returns.
pub type PartResult = Result<(), PartError>;
type PartFuture = Pin<Box<dyn Future<Output = PartResult> + Send>>;
type PartFn = Box<dyn Fn(Part) -> PartFuture + Send + Sync>;

/// What one run of a part gets: its line on the board, the signal to stop, and a place for its
/// helper tasks.
#[derive(Debug, Clone)]
pub struct Part {
    pub handle: PartHandle,
    pub cancel: CancellationToken,
    /// To the loop of this run, which spawns each helper into the set it owns.
    helpers: mpsc::UnboundedSender<Helper>,
}

/// How a helper task ended: its name and, if it failed, why.
type HelperEnd = (&'static str, Result<(), String>);
type Helper = Pin<Box<dyn Future<Output = HelperEnd> + Send>>;

impl Part {
    /// Runs `task` for as long as this run of the part lasts; it is aborted when the run ends.
    /// A helper that fails or panics ends the run, and the part is restarted; one that returns
    /// `Ok` has simply finished (a served connection).
    pub fn spawn<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        // A run that already ended drops the helper unstarted.
        let _ = self.helpers.send(Box::pin(async move {
            (name, task.await.map_err(|e| e.to_string()))
        }));
    }
}

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
    /// How long a stopping part's run and helpers get before they are aborted.
    grace: Arc<Mutex<Duration>>,
    tasks: JoinSet<()>,
    faults: BTreeMap<String, Arc<Notify>>,
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
            grace: Arc::new(Mutex::new(Duration::ZERO)),
            tasks: JoinSet::new(),
            faults: BTreeMap::new(),
        }
    }

    /// Starts `run` as the part `name`; it is called again after each failure.
    pub fn spawn<F, Fut>(&mut self, name: &str, run: F)
    where
        F: Fn(Part) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = PartResult> + Send + 'static,
    {
        let handle = self.board.register(name, true);
        let run: PartFn = Box::new(move |p| Box::pin(run(p)));
        let fault = Arc::new(Notify::new());
        self.faults.insert(name.to_string(), fault.clone());
        let life = Life {
            cancel: self.cancel.clone(),
            grace: self.grace.clone(),
            backoff: self.backoff,
            fault,
        };
        self.tasks.spawn(keep_running(handle, run, life));
    }

    /// Makes the current run of part `name` panic inside its own task, as a bug would: the
    /// fault hook behind the tests that show a panicking part leaves nothing behind. `false`
    /// when there is no such part.
    pub fn inject_panic(&self, name: &str) -> bool {
        match self.faults.get(name) {
            Some(fault) => {
                // Only a run that is running now: no permit is stored for a part in backoff.
                fault.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// The names of the parts, for the fault hook's answers.
    pub fn part_names(&self) -> Vec<String> {
        self.faults.keys().cloned().collect()
    }

    /// Asks every part to stop, gives each run and its helpers up to `grace`, aborts what is
    /// left, and returns once every task has ended.
    pub async fn shutdown(mut self, grace: Duration) {
        *self.grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What the loop that keeps one part running shares with the supervisor.
struct Life {
    cancel: CancellationToken,
    grace: Arc<Mutex<Duration>>,
    backoff: Backoff,
    fault: Arc<Notify>,
}

async fn keep_running(handle: PartHandle, run: PartFn, life: Life) {
    let mut delay: Option<Duration> = None;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = run_once(&handle, &run, &life).await;
        let Some(error) = outcome else { return };
        tracing::error!(part = handle.name(), error = %error, "part failed");
        handle.failed(error);
        let wait = life.backoff.next(delay, started.elapsed());
        delay = Some(wait);
        tokio::select! {
            _ = life.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        handle.restarting(format!("restarting after {}s", wait.as_secs_f32()));
        tracing::info!(part = handle.name(), "restarting part");
    }
}

/// One run of a part with its helpers; `None` when it ended because the daemon is stopping,
/// else why it ended. Returns only once the run and every helper task have ended.
async fn run_once(handle: &PartHandle, run: &PartFn, life: &Life) -> Option<String> {
    let (helpers_tx, mut spawns) = mpsc::unbounded_channel();
    let part = Part {
        handle: handle.clone(),
        cancel: life.cancel.child_token(),
        helpers: helpers_tx,
    };
    let cancel = part.cancel.clone();
    // The run is a task of its own, so a panic is caught here instead of ending the daemon; it
    // and its helpers sit in JoinSets, so dropping them (an aborted supervisor) aborts them too.
    let mut main = JoinSet::new();
    let mut helpers: JoinSet<HelperEnd> = JoinSet::new();
    let fault = life.fault.clone();
    let future = run(part);
    main.spawn(async move {
        tokio::select! {
            r = future => r,
            _ = fault.notified() => panic!("fault injected for a test"),
        }
    });
    let ended = loop {
        tokio::select! {
            outcome = main.join_next() => break describe_run(outcome),
            Some(end) = helpers.join_next(), if !helpers.is_empty() => {
                if let Some(why) = describe_helper(end) {
                    break Some(why);
                }
            }
            Some(task) = spawns.recv() => {
                helpers.spawn(task);
            }
            _ = life.cancel.cancelled() => break None,
        }
    };
    // Whatever ended the run, its helpers and (if still going) the run itself stop now: first
    // asked to (the run's token), then aborted after the grace period.
    cancel.cancel();
    spawns.close();
    let grace = if life.cancel.is_cancelled() {
        *life.grace.lock().unwrap_or_else(|e| e.into_inner())
    } else {
        RESTART_GRACE
    };
    let all_done = async {
        while main.join_next().await.is_some() {}
        while helpers.join_next().await.is_some() {}
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            part = handle.name(),
            "still running after {grace:?}; stopping it"
        );
    }
    main.shutdown().await;
    helpers.shutdown().await;
    if life.cancel.is_cancelled() {
        None
    } else {
        ended.or_else(|| Some("stopped unexpectedly".into()))
    }
}

fn describe_run(outcome: Option<Result<PartResult, tokio::task::JoinError>>) -> Option<String> {
    Some(match outcome {
        Some(Ok(Ok(()))) | None => "stopped unexpectedly".to_string(),
        Some(Ok(Err(e))) => e.to_string(),
        Some(Err(join)) if join.is_panic() => format!("panicked: {}", panic_message(join)),
        Some(Err(join)) => format!("task ended: {join}"),
    })
}

fn describe_helper(end: Result<HelperEnd, tokio::task::JoinError>) -> Option<String> {
    Some(match end {
        Ok((_, Ok(()))) => return None,
        Ok((task, Err(why))) => PartError::Helper { task, why }.to_string(),
        Err(join) if join.is_cancelled() => return None,
        Err(join) if join.is_panic() => format!("a task panicked: {}", panic_message(join)),
        Err(join) => format!("a task ended: {join}"),
    })
}

fn panic_message(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

//! The watch loop: six kube-runtime watchers merged into one stream, folded into the cluster
//! state, and snapshots published on a watch channel at most once per debounce window.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{BoxStream, Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{ApiHealth, Kind, describe};
use crate::snapshot::Snapshot;
use crate::state::{ClusterState, Report};

/// Long enough to gather a burst of pod and EndpointSlice changes (the API sends one change's
/// events within a few milliseconds) into one snapshot, short enough that it is not most of a
/// new endpoint's programming latency: a publish costs 0.01 ms at 10,000 Services, the proxy's
/// partial sync a few, so at 30 ms the wait was three quarters of the median.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// How long after the first change of a batch the batch is published.
    pub debounce: Duration,
}

impl Default for ViewOptions {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// The receiving ends of a running [`watch_cluster`]; clone freely.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Version 0 (empty) until every kind has been listed once; after that, only ever replaced
    /// by a newer complete snapshot, never emptied because the API went away.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub health: watch::Receiver<ApiHealth>,
}

/// Starts watching the cluster. Nothing happens until the returned future is polled (spawn it
/// as a task); it runs until `cancel` is cancelled. Each watcher re-lists with kube's default
/// backoff (0.8 s doubling to 30 s) after an error; the errors show in [`ClusterView::health`].
pub fn watch_cluster(
    client: Client,
    options: ViewOptions,
    cancel: CancellationToken,
) -> (ClusterView, impl Future<Output = ()> + Send + 'static) {
    let now = SystemTime::now();
    let (snapshots_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (health_tx, health) = watch::channel(ApiHealth::starting(now));
    let reports = futures::stream::select_all([
        reports::<core::Node>(&client, Kind::Node, Report::Node),
        reports::<core::Namespace>(&client, Kind::Namespace, Report::Namespace),
        reports::<core::Pod>(&client, Kind::Pod, Report::Pod),
        reports::<core::Service>(&client, Kind::Service, Report::Service),
        reports::<discovery::EndpointSlice>(&client, Kind::EndpointSlice, Report::EndpointSlice),
        reports::<networking::NetworkPolicy>(&client, Kind::NetworkPolicy, Report::NetworkPolicy),
    ]);
    let outputs = Outputs {
        snapshots: snapshots_tx,
        health: health_tx,
    };
    let run = run(
        reports,
        ClusterState::new(now),
        options.debounce,
        outputs,
        cancel,
    );
    (ClusterView { snapshots, health }, run)
}

fn reports<K>(
    client: &Client,
    kind: Kind,
    wrap: fn(Event<K>) -> Report,
) -> BoxStream<'static, Report>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // Lists served from the API server's watch cache, as client-go's informers do: after an API
    // server restart every node's skein re-lists at once, and quorum reads of every pod from
    // etcd would be the costliest way to do it. The watch that follows brings the list current.
    let config = watcher::Config::default().any_semantic();
    let api = Api::<K>::all(client.clone());
    let watch = watcher::watcher(api.clone(), config)
        .default_backoff()
        .map(move |item| match item {
            Ok(event) => {
                trace_event(kind, &event);
                wrap(event)
            }
            Err(error) => Report::Failed {
                kind,
                failure: describe(kind, &error),
            },
        })
        .boxed();
    // A quorum read of one item: cheap however many objects there are (a list served from the
    // watch cache would ignore the limit).
    let probe = move || {
        let api = api.clone();
        async move {
            let one = kube::api::ListParams::default().limit(1);
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, api.list_metadata(&one)).await,
                Ok(Ok(_))
            )
        }
    };
    with_recovery_probe(watch, kind, PROBE_EVERY, probe)
}

/// At debug level, one line per watch event: when a node is late to act on a change, its log
/// says whether the change reached it.
fn trace_event<K: Resource>(kind: Kind, event: &Event<K>) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let (what, object) = match event {
        Event::Apply(o) => ("apply", Some(o)),
        Event::Delete(o) => ("delete", Some(o)),
        Event::Init => ("relist", None),
        Event::InitApply(o) => ("listed", Some(o)),
        Event::InitDone => ("relisted", None),
    };
    if what == "listed" {
        return;
    }
    let meta = object.map(|o| o.meta());
    tracing::debug!(
        %kind,
        namespace = meta.and_then(|m| m.namespace.as_deref()).unwrap_or(""),
        name = meta.and_then(|m| m.name.as_deref()).unwrap_or(""),
        version = meta.and_then(|m| m.resource_version.as_deref()).unwrap_or(""),
        "watch event: {what}"
    );
}

/// How often a failing kind is probed, and how long one probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// kube's watcher resumes a broken watch without an event to show for it, so a quiet kind (no
/// Pods yet, no NetworkPolicy) that failed once would look failing until its next change,
/// however long the API has been back. While `kind` is failing, `probe` asks the API for it
/// every `every`; the first answer is reported as [`Report::Answered`]. The watch is not
/// polled during a probe, which is bounded by its timeout.
pub(crate) fn with_recovery_probe<P, F>(
    watch: BoxStream<'static, Report>,
    kind: Kind,
    every: Duration,
    probe: P,
) -> BoxStream<'static, Report>
where
    P: Fn() -> F + Send + 'static,
    F: Future<Output = bool> + Send + 'static,
{
    let failing =
        |report: &Report| matches!(report, Report::Failed { failure, .. } if failure.outage);
    futures::stream::unfold(
        (watch, probe, false),
        move |(mut watch, probe, is_failing)| async move {
            if !is_failing {
                let report = watch.next().await?;
                let now_failing = failing(&report);
                return Some((report, (watch, probe, now_failing)));
            }
            let mut next_probe = Box::pin(tokio::time::sleep(every));
            loop {
                tokio::select! {
                    report = watch.next() => {
                        let report = report?;
                        // Still failing until the watch has an answer of its own.
                        let now_failing = matches!(report, Report::Failed { .. });
                        return Some((report, (watch, probe, now_failing)));
                    }
                    () = &mut next_probe => {
                        if probe().await {
                            return Some((Report::Answered(kind), (watch, probe, false)));
                        }
                        next_probe.set(tokio::time::sleep(every));
                    }
                }
            }
        },
    )
    .boxed()
}

pub(crate) struct Outputs {
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub health: watch::Sender<ApiHealth>,
}

/// When the pending batch is due, if one is pending.
#[derive(Debug, Clone)]
pub(crate) struct Debounce {
    window: Duration,
    due: Option<Instant>,
}

impl Debounce {
    pub fn new(window: Duration) -> Self {
        Self { window, due: None }
    }

    /// A change arrived: the batch is due one window after its first change, and later
    /// changes join it rather than push it back, so a steady trickle cannot starve publishing.
    pub fn changed(&mut self, now: Instant) {
        self.due.get_or_insert(now + self.window);
    }

    /// Publish at once (the first complete snapshot: everything waits on it).
    pub fn due_now(&mut self, now: Instant) {
        self.due = Some(self.due.map_or(now, |due| due.min(now)));
    }

    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// When the pending batch's first change arrived.
    pub fn first_change(&self) -> Option<Instant> {
        self.due.map(|due| due - self.window)
    }

    pub fn fired(&mut self) {
        self.due = None;
    }
}

/// The IO side, kept thin: reports in, snapshots and health out. Generic over the stream so a
/// test can drive it without an API server.
pub(crate) async fn run<S>(
    mut reports: S,
    mut state: ClusterState,
    window: Duration,
    outputs: Outputs,
    cancel: CancellationToken,
) where
    S: Stream<Item = Report> + Unpin,
{
    let mut debounce = Debounce::new(window);
    loop {
        let due = debounce.due();
        tokio::select! {
            // Cancellation first, then publishing, so a busy stream cannot delay either.
            biased;
            () = cancel.cancelled() => return,
            () = sleep_until(due), if due.is_some() => {
                let first = debounce.first_change();
                debounce.fired();
                if let Some(mut snapshot) = state.publish() {
                    if let Some(snap) = Arc::get_mut(&mut snapshot) {
                        snap.changed_at = first.map(Instant::into_std);
                    }
                    tracing::debug!(version = snapshot.version, "snapshot published");
                    // send_replace: nobody listening is not a reason to stop watching.
                    outputs.snapshots.send_replace(snapshot);
                }
            }
            report = reports.next() => {
                let Some(report) = report else {
                    // The watchers never end; should they, the last snapshot stays in force.
                    tracing::error!("Kubernetes watches ended; the last snapshot stays in force");
                    cancel.cancelled().await;
                    return;
                };
                let was_synced = state.synced();
                state.record(report, SystemTime::now());
                if state.pending() {
                    if was_synced {
                        debounce.changed(Instant::now());
                    } else {
                        debounce.due_now(Instant::now());
                    }
                }
                outputs.health.send_if_modified(|health| {
                    let changed = health != state.health();
                    if changed {
                        *health = state.health().clone();
                    }
                    changed
                });
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

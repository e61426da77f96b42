//! Whether the Kubernetes API answers skein's watches, and watcher errors put into words a
//! person can act on.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use kube::core::Status;
use kube::runtime::watcher;

use crate::transport_cause;

/// The kinds skein watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];

    /// The API resource, as RBAC rules and the API server's messages name it.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// How the Kubernetes API is doing, as the watches see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiHealth {
    /// Every watch is working. False from the first failure of any watch until each failed
    /// watch has had an answer again; also false before the first answer.
    pub reachable: bool,
    /// When `reachable` last changed (or when watching started).
    pub since: SystemTime,
    /// The most recent watch error, kept after recovery so the page can say what happened.
    pub last_error: Option<String>,
    /// Every kind has been listed at least once, so snapshots are being published.
    pub synced: bool,
}

impl ApiHealth {
    /// Before any answer: not (yet) reachable, not synced.
    pub fn starting(now: SystemTime) -> Self {
        Self {
            reachable: false,
            since: now,
            last_error: None,
            synced: false,
        }
    }
}

/// A watcher error put into words, and whether it means the API is failing skein.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchFailure {
    pub message: String,
    /// False for the routine "410 Gone" of a watch that fell too far behind: the API answered,
    /// the watcher re-lists, and flagging an outage would cry wolf.
    pub outage: bool,
}

pub(crate) fn describe(kind: Kind, error: &watcher::Error) -> WatchFailure {
    let outage = |message| WatchFailure {
        message,
        outage: true,
    };
    match error {
        watcher::Error::WatchError(status) if status.code == 410 => WatchFailure {
            message: format!("{kind}: watch expired (410 Gone), listing again"),
            outage: false,
        },
        watcher::Error::WatchError(status) => outage(status_message(kind, "watch", status)),
        watcher::Error::InitialListFailed(e) => outage(client_message(kind, "list", e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            outage(client_message(kind, "watch", e))
        }
        watcher::Error::NoResourceVersion => outage(format!(
            "{kind}: the Kubernetes API sent a list without a resourceVersion; listing again"
        )),
    }
}

fn client_message(kind: Kind, verb: &str, error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status_message(kind, verb, status),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            format!(
                "{kind}: the Kubernetes API is unreachable: {}",
                transport_cause(error)
            )
        }
        kube::Error::Auth(_) => format!(
            "{kind}: cannot authenticate to the Kubernetes API: {}",
            transport_cause(error)
        ),
        _ => format!(
            "{kind}: cannot {verb} {}: {}",
            kind.resource(),
            transport_cause(error)
        ),
    }
}

/// The API server's own message names the user, verb, resource and scope of a denial, which is
/// exactly what an administrator needs; it is kept, with a pointer to skein's RBAC.
fn status_message(kind: Kind, verb: &str, status: &Status) -> String {
    let resource = kind.resource();
    let said = if status.message.is_empty() {
        status.reason.clone()
    } else {
        status.message.clone()
    };
    match status.code {
        403 if said.is_empty() => format!(
            "{kind}: forbidden to {verb} {resource} (grant `{verb}` on `{resource}` in the \
             ClusterRole `skein`)"
        ),
        403 => format!("{kind}: {said} (grant it in the ClusterRole `skein`)"),
        401 => format!("{kind}: the Kubernetes API rejected skein's credentials (401): {said}"),
        code => format!("{kind}: the Kubernetes API answered {code} to {verb} {resource}: {said}"),
    }
}

/// [`ApiHealth`] kept per kind: one forbidden kind keeps the API unreachable however well the
/// other watches do, rather than flapping with every event they get.
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    health: ApiHealth,
    failing: BTreeMap<Kind, String>,
}

impl HealthState {
    pub fn new(now: SystemTime) -> Self {
        Self {
            health: ApiHealth::starting(now),
            failing: BTreeMap::new(),
        }
    }

    pub fn health(&self) -> &ApiHealth {
        &self.health
    }

    /// A watch of `kind` had an answer from the API.
    pub fn answered(&mut self, kind: Kind, now: SystemTime) {
        if self.failing.remove(&kind).is_some() {
            tracing::info!(%kind, "watch recovered");
        }
        if self.failing.is_empty() && !self.health.reachable {
            self.health.reachable = true;
            self.health.since = now;
            tracing::info!("Kubernetes API reachable");
        }
    }

    pub fn failed(&mut self, kind: Kind, failure: WatchFailure, now: SystemTime) {
        if !failure.outage {
            tracing::debug!(%kind, error = %failure.message, "watch restarting");
            return;
        }
        // Errors repeat with every backoff retry; a person needs to hear each new one once.
        if self.failing.get(&kind) != Some(&failure.message) {
            tracing::warn!(%kind, error = %failure.message, "watch failed; retrying with backoff");
        }
        self.failing.insert(kind, failure.message.clone());
        if self.health.reachable {
            self.health.reachable = false;
            self.health.since = now;
            tracing::warn!("Kubernetes API unreachable; keeping the last snapshot in force");
        }
        self.health.last_error = Some(failure.message);
    }

    pub fn synced(&mut self) {
        self.health.synced = true;
    }
}

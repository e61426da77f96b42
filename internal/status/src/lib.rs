//! The status board: what each part of the daemon last said about its health, the node's
//! identity, and the sections the parts register. The daemon's parts write to it through a
//! [`PartHandle`] and their [`SectionHandle`]s; the page and the JSON API read a [`Report`] of
//! it and each section's details. It knows nothing of what the parts do: a part that has more
//! to show registers a section of its own, by name, with a type it defines.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

mod metrics;
mod section;

#[cfg(test)]
mod tests;

pub use section::{
    Page, Section, SectionHandle, SectionOverview, paged_details, valid_section_name,
};

/// A part's health, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Started, not yet reported.
    Starting,
    Ok,
    /// Working, with a problem worth a look (the error says which).
    Degraded,
    /// Not working; the supervisor retries it.
    Failed,
    /// Switched off in the configuration.
    Disabled,
}

/// One part's line on the board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartStatus {
    pub name: String,
    pub state: State,
    /// Unix seconds when `state` last changed.
    pub since: u64,
    /// A short sentence about what the part is doing, for people.
    pub detail: String,
    /// The most recent error, kept after recovery so a flapping part can be diagnosed.
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// The last error is in the past: the part has been `ok` since after it happened. The page
    /// shows a resolved error muted, a present one in red.
    pub last_error_resolved: bool,
    pub restarts: u32,
    /// The most recent drift the part found in the kernel and put right ("bridge skein0 made,
    /// 3 pod links re-attached"), when, and how many repairs since start.
    pub last_repair: Option<String>,
    pub last_repair_at: Option<u64>,
    pub repairs: u32,
}

/// Facts about this daemon that do not change while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub node: String,
    pub version: String,
    pub config_path: String,
    pub state_path: String,
}

/// Everything the JSON API and the page show, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub identity: Identity,
    pub started_at: u64,
    pub now: u64,
    pub uptime_seconds: u64,
    pub ready: bool,
    /// The worst state of any part: what a glance at the page should tell.
    pub overall: State,
    pub parts: Vec<PartStatus>,
    /// Each registered section's summary, by name; its details are at its `href`.
    pub sections: BTreeMap<String, SectionOverview>,
}

#[derive(Debug)]
struct Inner {
    identity: Identity,
    started_at: u64,
    ready: bool,
    parts: BTreeMap<String, PartStatus>,
    sections: BTreeMap<String, section::Slot>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    inner: Arc<RwLock<Inner>>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl StatusBoard {
    pub fn new(identity: Identity) -> Self {
        let inner = Inner {
            identity,
            started_at: unix_now(),
            ready: false,
            parts: BTreeMap::new(),
            sections: BTreeMap::new(),
        };
        Self {
            inner: Arc::new(RwLock::new(inner)),
        }
    }

    /// Adds a part in state `Starting` (or `Disabled`) and returns its handle.
    pub fn register(&self, name: &str, enabled: bool) -> PartHandle {
        let state = if enabled {
            State::Starting
        } else {
            State::Disabled
        };
        let detail = if enabled {
            "starting"
        } else {
            "disabled in the configuration"
        };
        self.write(|inner| {
            inner.parts.insert(
                name.to_string(),
                PartStatus {
                    name: name.to_string(),
                    state,
                    since: unix_now(),
                    detail: detail.to_string(),
                    last_error: None,
                    last_error_at: None,
                    last_error_resolved: false,
                    restarts: 0,
                    last_repair: None,
                    last_repair_at: None,
                    repairs: 0,
                },
            );
        });
        PartHandle {
            board: self.clone(),
            name: name.to_string(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.write(|inner| inner.ready = ready);
    }

    pub fn is_ready(&self) -> bool {
        self.read(|inner| inner.ready)
    }

    pub fn report(&self) -> Report {
        self.read(|inner| {
            let now = unix_now();
            let parts: Vec<PartStatus> = inner
                .parts
                .values()
                .map(|p| PartStatus {
                    last_error_resolved: error_resolved(p),
                    ..p.clone()
                })
                .collect();
            let overall = parts
                .iter()
                .map(|p| p.state)
                .max_by_key(|s| severity(*s))
                .unwrap_or(State::Ok);
            Report {
                identity: inner.identity.clone(),
                started_at: inner.started_at,
                now,
                uptime_seconds: now.saturating_sub(inner.started_at),
                ready: inner.ready,
                overall: if overall == State::Disabled {
                    State::Ok
                } else {
                    overall
                },
                parts,
                sections: inner
                    .sections
                    .iter()
                    .map(|(name, slot)| (name.clone(), slot.overview(name)))
                    .collect(),
            }
        })
    }

    // A poisoned lock only means a writer panicked mid-update of plain data; the board stays usable.
    pub(crate) fn write(&self, f: impl FnOnce(&mut Inner)) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

/// An error is resolved once the part is `ok` and has been since the error or later. A part that
/// is starting again after a failure has not resolved it yet.
fn error_resolved(p: &PartStatus) -> bool {
    p.state == State::Ok && p.last_error_at.is_some_and(|at| at <= p.since)
}

/// How bad a state looks on the page; `overall` is the worst.
fn severity(state: State) -> u8 {
    match state {
        State::Disabled => 0,
        State::Ok => 1,
        State::Starting => 2,
        State::Degraded => 3,
        State::Failed => 4,
    }
}

/// A part's pen for its own line on the board.
#[derive(Debug, Clone)]
pub struct PartHandle {
    board: StatusBoard,
    name: String,
}

impl PartHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ok(&self, detail: impl Into<String>) {
        self.set(State::Ok, detail.into(), None);
    }

    pub fn degraded(&self, error: impl Into<String>) {
        self.set(State::Degraded, String::new(), Some(error.into()));
    }

    pub fn failed(&self, error: impl Into<String>) {
        self.set(State::Failed, String::new(), Some(error.into()));
    }

    /// Changes the sentence about what the part is doing, leaving its state alone.
    pub fn detail(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(|p| p.detail = detail);
    }

    /// Records that the part found the kernel changed behind its back and put it right.
    pub fn repaired(&self, what: impl Into<String>) {
        let what = what.into();
        self.update(|p| {
            p.repairs += 1;
            p.last_repair = Some(what);
            p.last_repair_at = Some(unix_now());
        });
    }

    /// Marks a restart by the supervisor: state `Starting`, the last error kept.
    pub fn restarting(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(|p| {
            p.restarts += 1;
            if p.state != State::Starting {
                p.since = unix_now();
            }
            p.state = State::Starting;
            p.detail = detail;
        });
    }

    pub fn status(&self) -> Option<PartStatus> {
        self.board.read(|inner| {
            inner.parts.get(&self.name).map(|p| PartStatus {
                last_error_resolved: error_resolved(p),
                ..p.clone()
            })
        })
    }

    fn set(&self, state: State, detail: String, error: Option<String>) {
        self.update(|p| {
            if p.state != state {
                p.state = state;
                p.since = unix_now();
            }
            if !detail.is_empty() || error.is_some() {
                p.detail = detail;
            }
            if let Some(error) = error {
                p.last_error = Some(error);
                p.last_error_at = Some(unix_now());
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut PartStatus)) {
        self.board.write(|inner| {
            if let Some(part) = inner.parts.get_mut(&self.name) {
                f(part);
            }
        });
    }
}

//! Sections: what a part has to show beyond its line on the board. A part registers its
//! section by name with a type of its own; the overview carries each section's summary, and
//! `/api/v1/<name>` its details, with the lists in them paged.

use std::marker::PhantomData;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{StatusBoard, unix_now};

/// A part's section: its details (the type itself, serialized as a JSON object) and a short
/// summary of them for the overview.
pub trait Section: Serialize + Send + Sync + 'static {
    /// The heading the page shows above it.
    const TITLE: &'static str;
    /// The fields that are lists: `/api/v1/<name>` pages them and tells their totals.
    const LISTS: &'static [&'static str];
    type Summary: Serialize;
    fn summary(&self) -> Self::Summary;
}

/// A section as the overview (`/api/v1/status`) carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectionOverview {
    pub title: &'static str,
    /// Where the details are.
    pub href: String,
    /// `null` until the part first sets its section.
    pub summary: Value,
    /// Unix seconds of the last update.
    pub updated_at: Option<u64>,
}

/// Which part of each list the details carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;

    /// From `?offset=&limit=`: absent means the first [`Page::DEFAULT_LIMIT`]; a limit above
    /// [`Page::MAX_LIMIT`] is lowered to it.
    pub fn new(offset: Option<usize>, limit: Option<usize>) -> Self {
        Self {
            offset: offset.unwrap_or(0),
            limit: limit.unwrap_or(Self::DEFAULT_LIMIT).min(Self::MAX_LIMIT),
        }
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new(None, None)
    }
}

/// What the board keeps of a section: serialized when set, so readers never wait on a part.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    title: &'static str,
    lists: &'static [&'static str],
    summary: Value,
    details: Value,
    updated_at: Option<u64>,
}

impl Slot {
    pub(crate) fn overview(&self, name: &str) -> SectionOverview {
        SectionOverview {
            title: self.title,
            href: format!("/api/v1/{name}"),
            summary: self.summary.clone(),
            updated_at: self.updated_at,
        }
    }

    /// The details with each list cut to `page`, and a `page` object telling the offset, the
    /// limit and each list's total. `null` until the part first sets its section.
    fn details(&self, page: Page) -> Value {
        let Value::Object(details) = &self.details else {
            return self.details.clone();
        };
        let mut out = Map::new();
        let mut totals = Map::new();
        for (key, value) in details {
            match value {
                Value::Array(items) if self.lists.contains(&key.as_str()) => {
                    totals.insert(key.clone(), items.len().into());
                    let shown = items.iter().skip(page.offset).take(page.limit).cloned();
                    out.insert(key.clone(), Value::Array(shown.collect()));
                }
                other => {
                    out.insert(key.clone(), other.clone());
                }
            }
        }
        out.insert(
            "page".into(),
            serde_json::json!({ "offset": page.offset, "limit": page.limit, "totals": totals }),
        );
        Value::Object(out)
    }
}

/// Whether `name` can be a section: it becomes a path (`/api/v1/<name>`) and a JSON key.
pub fn valid_section_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name != "status"
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl StatusBoard {
    /// Registers the section `name` (again, after a part's restart: the last value stays until
    /// the part sets a new one) and returns the part's pen for it.
    ///
    /// `name` is lowercase letters, digits and '-', and not `status`; a part that passes another
    /// is a bug, caught by its tests.
    pub fn section<T: Section>(&self, name: &str) -> SectionHandle<T> {
        debug_assert!(valid_section_name(name), "bad section name {name:?}");
        self.write(|inner| {
            inner
                .sections
                .entry(name.to_string())
                .or_insert_with(|| Slot {
                    title: T::TITLE,
                    lists: T::LISTS,
                    summary: Value::Null,
                    details: Value::Null,
                    updated_at: None,
                });
        });
        SectionHandle {
            board: self.clone(),
            name: name.to_string(),
            kind: PhantomData,
        }
    }

    /// The names of the registered sections.
    pub fn section_names(&self) -> Vec<String> {
        self.read(|inner| inner.sections.keys().cloned().collect())
    }

    /// The details of section `name`, lists paged; `None` when no part registered it.
    pub fn section_details(&self, name: &str, page: Page) -> Option<Value> {
        self.read(|inner| inner.sections.get(name).map(|slot| slot.details(page)))
    }
}

/// A part's pen for its section.
#[derive(Debug)]
pub struct SectionHandle<T> {
    board: StatusBoard,
    name: String,
    kind: PhantomData<fn(&T)>,
}

impl<T> Clone for SectionHandle<T> {
    fn clone(&self) -> Self {
        Self {
            board: self.board.clone(),
            name: self.name.clone(),
            kind: PhantomData,
        }
    }
}

impl<T: Section> SectionHandle<T> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces what the section shows.
    pub fn set(&self, value: &T) {
        // Types made for the page serialize; one that fails shows as `null` rather than stale.
        let summary = serde_json::to_value(value.summary()).unwrap_or(Value::Null);
        let details = serde_json::to_value(value).unwrap_or(Value::Null);
        let now = unix_now();
        self.board.write(|inner| {
            if let Some(slot) = inner.sections.get_mut(&self.name) {
                slot.summary = summary;
                slot.details = details;
                slot.updated_at = Some(now);
            }
        });
    }
}

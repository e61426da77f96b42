//! Sections: what a part has to show beyond its line on the board. A part registers its
//! section by name with a type of its own; the overview carries each section's summary, and
//! `/api/v1/<name>` its details, with the lists in them paged.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
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

    /// The details with each list cut to `page` (see [`paged_details`]), made when someone
    /// asks, not when the part sets them. By default the whole value is serialized and its
    /// lists cut; a section with long lists of rows it makes from shared data (10,000 Services)
    /// overrides this to make only the page's rows.
    fn details(&self, page: Page) -> Value {
        let Ok(text) = serde_json::to_string(self) else {
            return Value::Null;
        };
        let Ok(RawObject(fields)) = serde_json::from_str::<RawObject>(&text) else {
            return Value::Null;
        };
        let mut plain = Map::new();
        let mut lists = Vec::new();
        for (key, raw) in fields {
            if Self::LISTS.contains(&key.as_str()) {
                let items: Vec<&RawValue> = serde_json::from_str(raw.get()).unwrap_or_default();
                let total = items.len();
                let shown = page.rows(items.into_iter(), |raw| {
                    serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null)
                });
                lists.push((key, total, shown));
            } else {
                plain.insert(key, serde_json::from_str(raw.get()).unwrap_or(Value::Null));
            }
        }
        paged_details(page, plain, lists)
    }
}

/// A section's details as `/api/v1/<name>` serves them: the `plain` fields, each list's page
/// of items, and a `page` object telling the offset, the limit and each list's total.
pub fn paged_details(
    page: Page,
    mut plain: Map<String, Value>,
    lists: Vec<(String, usize, Vec<Value>)>,
) -> Value {
    let mut totals = Map::new();
    for (key, total, shown) in lists {
        totals.insert(key.clone(), total.into());
        plain.insert(key, Value::Array(shown));
    }
    plain.insert(
        "page".into(),
        serde_json::json!({ "offset": page.offset, "limit": page.limit, "totals": totals }),
    );
    Value::Object(plain)
}

/// A section's value, kept as the part set it; its details are made on request.
trait Details: Send + Sync {
    fn page(&self, page: Page) -> Value;
}

impl<T: Section> Details for T {
    fn page(&self, page: Page) -> Value {
        self.details(page)
    }
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

impl Page {
    /// The page's part of `items`, each made into its row (`row`, only for the items shown)
    /// and then into JSON.
    pub fn rows<I, T: Serialize>(
        &self,
        items: impl Iterator<Item = I>,
        row: impl FnMut(I) -> T,
    ) -> Vec<Value> {
        items
            .skip(self.offset)
            .take(self.limit)
            .map(row)
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect()
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new(None, None)
    }
}

/// What the board keeps of a section: its summary, serialized when set, and the value itself,
/// whose details are made when someone asks (a part's set costs no serialization of its lists).
#[derive(Clone)]
pub(crate) struct Slot {
    title: &'static str,
    summary: Value,
    /// `None` until the part first sets its section.
    details: Option<Arc<dyn Details>>,
    updated_at: Option<u64>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("title", &self.title)
            .field("summary", &self.summary)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl Slot {
    pub(crate) fn new(title: &'static str) -> Slot {
        Slot {
            title,
            summary: Value::Null,
            details: None,
            updated_at: None,
        }
    }

    pub(crate) fn overview(&self, name: &str) -> SectionOverview {
        SectionOverview {
            title: self.title,
            href: format!("/api/v1/{name}"),
            summary: self.summary.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// A JSON object's members in their order, each value left as text.
struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Members<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = m.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(RawObject(members))
            }
        }
        d.deserialize_map(Members(std::marker::PhantomData))
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
                .or_insert_with(|| Slot::new(T::TITLE));
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

    /// The details of section `name`, lists paged (`null` until its part first sets it);
    /// `None` when no part registered it. Made outside the board's lock.
    pub fn section_details(&self, name: &str, page: Page) -> Option<Value> {
        let details = self.read(|inner| inner.sections.get(name).map(|s| s.details.clone()))?;
        Some(details.map_or(Value::Null, |d| d.page(page)))
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
    pub fn set(&self, value: T) {
        // Types made for the page serialize; one that fails shows as `null` rather than stale.
        let summary = serde_json::to_value(value.summary()).unwrap_or(Value::Null);
        let details: Arc<dyn Details> = Arc::new(value);
        let now = unix_now();
        self.board.write(|inner| {
            if let Some(slot) = inner.sections.get_mut(&self.name) {
                slot.summary = summary;
                slot.details = Some(details);
                slot.updated_at = Some(now);
            }
        });
    }
}

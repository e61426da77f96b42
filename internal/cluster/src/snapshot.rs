//! The immutable, versioned snapshot of the cluster that the dataplane parts are built from.

use std::fmt;
use std::sync::Arc;

use crate::objects::{EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service};

/// A namespaced object's identity; orders by namespace, then name.
///
/// One shared string, `namespace/name` (neither part can hold a `/`): a key is kept in several
/// maps per object (the snapshot's, the proxy's, the page's), and at 10,000 Services two
/// `String`s per copy were megabytes; a clone is a reference count.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    text: Arc<str>,
    /// Where the `/` is.
    slash: u32,
}

impl ObjectKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        let (namespace, name) = (namespace.as_ref(), name.as_ref());
        let mut text = String::with_capacity(namespace.len() + 1 + name.len());
        text.push_str(namespace);
        text.push('/');
        text.push_str(name);
        Self {
            text: text.into(),
            slash: u32::try_from(namespace.len()).expect("a namespace shorter than 4 GiB"),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.text[..self.slash as usize]
    }

    pub fn name(&self) -> &str {
        &self.text[self.slash as usize + 1..]
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // By parts: as one string, `a-b/x` would sort before `a/x`.
        (self.namespace(), self.name()).cmp(&(other.namespace(), other.name()))
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectKey")
            .field("namespace", &self.namespace())
            .field("name", &self.name())
            .finish()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The maps a snapshot holds: ordered like a `BTreeMap`, and persistent, so the watch loop
/// publishes a new snapshot by sharing every unchanged part with the last one (a clone is O(1),
/// which at 10,000 Services is the difference between microseconds and tens of milliseconds on
/// every change).
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// The cluster as skein last saw it, whole: every kind completed at least one list before the
/// first snapshot is published, so no consumer sees Services without their EndpointSlices.
///
/// Version 0 is the empty placeholder a watch channel starts with; each published snapshot has
/// a higher version than the one before. Shared as `Arc<Snapshot>`, never changed in place.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub version: u64,
    pub nodes: Map<String, Node>,
    pub namespaces: Map<String, Namespace>,
    pub pods: Map<ObjectKey, Pod>,
    pub services: Map<ObjectKey, Arc<Service>>,
    pub endpoint_slices: Map<ObjectKey, Arc<EndpointSlice>>,
    /// The EndpointSlices of each Service (by their `kubernetes.io/service-name` label), in
    /// slice-name order.
    pub slices_by_service: Map<ObjectKey, Vec<Arc<EndpointSlice>>>,
    pub network_policies: Map<ObjectKey, NetworkPolicy>,
    /// When the first change this snapshot carries arrived from the API (before the debounce
    /// window): where the service proxy's network-programming latency starts.
    pub changed_at: Option<std::time::Instant>,
}

/// The Service a slice belongs to (its `kubernetes.io/service-name` label), if any.
fn slice_service(slice: &EndpointSlice) -> Option<ObjectKey> {
    slice.service.clone()
}

impl Snapshot {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The EndpointSlices of Service `key`.
    pub fn slices_of(&self, key: &ObjectKey) -> &[Arc<EndpointSlice>] {
        self.slices_by_service.get(key).map_or(&[], Vec::as_slice)
    }

    /// The index behind [`Snapshot::slices_of`], built whole.
    pub fn index_slices(
        slices: &Map<ObjectKey, Arc<EndpointSlice>>,
    ) -> Map<ObjectKey, Vec<Arc<EndpointSlice>>> {
        let mut index: Map<ObjectKey, Vec<Arc<EndpointSlice>>> = Map::new();
        for slice in slices.values() {
            if let Some(service) = slice_service(slice) {
                index.entry(service).or_default().push(slice.clone());
            }
        }
        index
    }

    /// The index after one slice changed from `before` to `after` (either absent), without a
    /// walk of the others: the slice leaves its old Service's list and joins its new one's in
    /// name order.
    pub fn reindex_slice(
        index: &mut Map<ObjectKey, Vec<Arc<EndpointSlice>>>,
        before: Option<&Arc<EndpointSlice>>,
        after: Option<&Arc<EndpointSlice>>,
    ) {
        if let Some(old) = before
            && let Some(service) = slice_service(old)
        {
            let emptied = index.get_mut(&service).is_some_and(|list| {
                list.retain(|s| s.key != old.key);
                list.is_empty()
            });
            if emptied {
                index.remove(&service);
            }
        }
        if let Some(new) = after
            && let Some(service) = slice_service(new)
        {
            let list = index.entry(service).or_default();
            let at = list.partition_point(|s| s.key.name() < new.key.name());
            list.insert(at, new.clone());
        }
    }

    /// Recomputes the slice index after changing `endpoint_slices` by hand (tests).
    pub fn reindex(&mut self) {
        self.slices_by_service = Snapshot::index_slices(&self.endpoint_slices);
    }
}

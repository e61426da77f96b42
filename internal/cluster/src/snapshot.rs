//! The immutable, versioned snapshot of the cluster that the dataplane parts are built from.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::objects::{EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service};

/// A namespaced object's identity; orders by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The cluster as skein last saw it, whole: every kind completed at least one list before the
/// first snapshot is published, so no consumer sees Services without their EndpointSlices.
///
/// Version 0 is the empty placeholder a watch channel starts with; each published snapshot has
/// a higher version than the one before. Shared as `Arc<Snapshot>`, never changed in place.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub version: u64,
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// The EndpointSlices of each Service (by their `kubernetes.io/service-name` label), in
    /// slice-name order.
    pub slices_by_service: BTreeMap<ObjectKey, Vec<Arc<EndpointSlice>>>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// When the first change this snapshot carries arrived from the API (before the debounce
    /// window): where the service proxy's network-programming latency starts.
    pub changed_at: Option<std::time::Instant>,
}

impl Snapshot {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The EndpointSlices of Service `key`.
    pub fn slices_of(&self, key: &ObjectKey) -> &[Arc<EndpointSlice>] {
        self.slices_by_service.get(key).map_or(&[], Vec::as_slice)
    }

    /// The index behind [`Snapshot::slices_of`].
    pub fn index_slices(
        slices: &BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    ) -> BTreeMap<ObjectKey, Vec<Arc<EndpointSlice>>> {
        let mut index: BTreeMap<ObjectKey, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in slices.values() {
            if let Some(service) = &slice.service_name {
                index
                    .entry(ObjectKey::new(&slice.namespace, service))
                    .or_default()
                    .push(slice.clone());
            }
        }
        index
    }

    /// Recomputes the slice index after changing `endpoint_slices` by hand (tests).
    pub fn reindex(&mut self) {
        self.slices_by_service = Snapshot::index_slices(&self.endpoint_slices);
    }
}

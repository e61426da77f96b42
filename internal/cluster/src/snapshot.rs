//! The immutable, versioned snapshot of the cluster that the dataplane parts are built from.

use std::collections::BTreeMap;
use std::fmt;

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
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
}

impl Snapshot {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
}

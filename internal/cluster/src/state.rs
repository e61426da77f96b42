//! Folding watcher events into the cluster state, and cutting snapshots of it: pure, so re-lists,
//! deletions and failures are tested without an API server.

use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::Resource;
use kube::runtime::watcher::Event;

use crate::health::{ApiHealth, HealthState, Kind, WatchFailure};
use crate::objects::{EndpointSlice, Namespace, NetworkPolicy, Node, Pod, Service};
use crate::snapshot::{Map, ObjectKey, Snapshot};

/// What one of the six watches produced; merging the watches' streams needs one item type.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "reports pass through one at a time; boxing would allocate per event for nothing"
)]
pub(crate) enum Report {
    Node(Event<core::Node>),
    Namespace(Event<core::Namespace>),
    Pod(Event<core::Pod>),
    Service(Event<core::Service>),
    EndpointSlice(Event<discovery::EndpointSlice>),
    NetworkPolicy(Event<networking::NetworkPolicy>),
    Failed {
        kind: Kind,
        failure: WatchFailure,
    },
    /// The API answered a probe of a failing kind (see `view::with_recovery_probe`).
    Answered(Kind),
}

/// One kind's objects, and the list in progress when the watcher is (re-)listing.
#[derive(Debug)]
struct Table<K: Ord + Clone, V: Clone> {
    live: Map<K, V>,
    /// Filled between `Init` and `InitDone` and swapped in whole at `InitDone`, so that objects
    /// deleted while the watch was down disappear, and no half-listed kind is ever published.
    relist: Option<Map<K, V>>,
    /// Completed at least one list.
    listed: bool,
}

impl<K: Ord + Clone, V: PartialEq + Clone> Table<K, V> {
    fn new() -> Self {
        Self {
            live: Map::new(),
            relist: None,
            listed: false,
        }
    }

    /// Applies one event; true when the live objects changed. `key` names an object (from the
    /// distilled value when there is one, so the map's key can share the value's own).
    fn fold<A>(
        &mut self,
        event: Event<A>,
        key: impl Fn(&A, Option<&V>) -> Option<K>,
        distill: impl Fn(&A) -> Option<V>,
    ) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(Map::new());
                false
            }
            Event::InitApply(object) => {
                if let Some(v) = distill(&object)
                    && let Some(k) = key(&object, Some(&v))
                {
                    self.relist.get_or_insert_default().insert(k, v);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.listed = true;
                if listed == self.live {
                    false
                } else {
                    self.live = listed;
                    true
                }
            }
            Event::Apply(object) => {
                let value = distill(&object);
                let Some(k) = key(&object, value.as_ref()) else {
                    return false;
                };
                match value {
                    Some(v) if self.live.get(&k) == Some(&v) => false,
                    Some(v) => {
                        self.live.insert(k, v);
                        true
                    }
                    // Changed into something skein cannot use: the old version is no truer.
                    None => self.live.remove(&k).is_some(),
                }
            }
            Event::Delete(object) => {
                key(&object, None).is_some_and(|k| self.live.remove(&k).is_some())
            }
        }
    }
}

fn name_key<A: Resource, V>(object: &A, _: Option<&V>) -> Option<String> {
    object.meta().name.clone()
}

fn object_key<A: Resource, V>(object: &A, _: Option<&V>) -> Option<ObjectKey> {
    let meta = object.meta();
    Some(ObjectKey::new(meta.namespace.clone()?, meta.name.clone()?))
}

/// The key of an object whose distilled value carries it: one shared string for both.
fn own_key<A: Resource, V: Keyed>(object: &A, value: Option<&Arc<V>>) -> Option<ObjectKey> {
    match value {
        Some(v) => Some(v.key().clone()),
        None => object_key::<A, ()>(object, None),
    }
}

/// A distilled object that holds its own key.
trait Keyed {
    fn key(&self) -> &ObjectKey;
}

impl Keyed for Service {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

impl Keyed for EndpointSlice {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

/// The cluster as the watches have reported it so far, and the API's health.
#[derive(Debug)]
pub(crate) struct ClusterState {
    nodes: Table<String, Node>,
    namespaces: Table<String, Namespace>,
    pods: Table<ObjectKey, Pod>,
    // Behind an Arc: a snapshot at 10,000 Services copies pointers, and a consumer tells an
    // unchanged object by the pointer.
    services: Table<ObjectKey, Arc<Service>>,
    endpoint_slices: Table<ObjectKey, Arc<EndpointSlice>>,
    network_policies: Table<ObjectKey, NetworkPolicy>,
    /// The EndpointSlices by Service, kept in step with `endpoint_slices` one slice at a time.
    slices_by_service: Map<ObjectKey, Vec<Arc<EndpointSlice>>>,
    /// Version of the last snapshot handed out; 0 before the first.
    version: u64,
    /// Changed since the last snapshot.
    dirty: bool,
    health: HealthState,
}

impl ClusterState {
    pub fn new(now: SystemTime) -> Self {
        Self {
            nodes: Table::new(),
            namespaces: Table::new(),
            pods: Table::new(),
            services: Table::new(),
            endpoint_slices: Table::new(),
            network_policies: Table::new(),
            slices_by_service: Map::new(),
            version: 0,
            dirty: false,
            health: HealthState::new(now),
        }
    }

    pub fn record(&mut self, report: Report, now: SystemTime) {
        let was_synced = self.synced();
        let (kind, answered, changed) = match report {
            Report::Failed { kind, failure } => {
                self.health.failed(kind, failure, now);
                return;
            }
            Report::Answered(kind) => {
                self.health.answered(kind, now);
                return;
            }
            Report::Node(e) => (
                Kind::Node,
                answered(&e),
                self.nodes.fold(e, name_key, Node::from_api),
            ),
            Report::Namespace(e) => (
                Kind::Namespace,
                answered(&e),
                self.namespaces.fold(e, name_key, Namespace::from_api),
            ),
            Report::Pod(e) => (
                Kind::Pod,
                answered(&e),
                self.pods.fold(e, object_key, Pod::from_api),
            ),
            Report::Service(e) => (
                Kind::Service,
                answered(&e),
                self.services
                    .fold(e, own_key, |o| Service::from_api(o).map(Arc::new)),
            ),
            Report::EndpointSlice(e) => {
                let answered = answered(&e);
                let relisted = matches!(e, Event::InitDone);
                let key = match &e {
                    Event::Apply(o) | Event::Delete(o) => object_key::<_, ()>(o, None),
                    _ => None,
                };
                let before = key
                    .as_ref()
                    .and_then(|k| self.endpoint_slices.live.get(k).cloned());
                let changed = self
                    .endpoint_slices
                    .fold(e, own_key, |o| EndpointSlice::from_api(o).map(Arc::new));
                if changed && relisted {
                    self.slices_by_service = Snapshot::index_slices(&self.endpoint_slices.live);
                } else if changed && let Some(k) = key {
                    let after = self.endpoint_slices.live.get(&k).cloned();
                    Snapshot::reindex_slice(
                        &mut self.slices_by_service,
                        before.as_ref(),
                        after.as_ref(),
                    );
                }
                (Kind::EndpointSlice, answered, changed)
            }
            Report::NetworkPolicy(e) => (
                Kind::NetworkPolicy,
                answered(&e),
                self.network_policies
                    .fold(e, object_key, NetworkPolicy::from_api),
            ),
        };
        if answered {
            self.health.answered(kind, now);
        }
        self.dirty |= changed;
        if !was_synced && self.synced() {
            self.health.synced();
            tracing::info!(
                nodes = self.nodes.live.len(),
                namespaces = self.namespaces.live.len(),
                pods = self.pods.live.len(),
                services = self.services.live.len(),
                endpoint_slices = self.endpoint_slices.live.len(),
                network_policies = self.network_policies.live.len(),
                "cluster listed"
            );
        }
    }

    /// Every kind has completed a list.
    pub fn synced(&self) -> bool {
        self.nodes.listed
            && self.namespaces.listed
            && self.pods.listed
            && self.services.listed
            && self.endpoint_slices.listed
            && self.network_policies.listed
    }

    /// There is something for [`ClusterState::publish`] to hand out.
    pub fn pending(&self) -> bool {
        self.synced() && (self.dirty || self.version == 0)
    }

    /// The next snapshot, if anything changed since the last one and every kind is listed.
    pub fn publish(&mut self) -> Option<Arc<Snapshot>> {
        if !self.pending() {
            return None;
        }
        self.version += 1;
        self.dirty = false;
        Some(Arc::new(self.current()))
    }

    /// The state as it stands, stamped with the last published version.
    pub fn current(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            nodes: self.nodes.live.clone(),
            namespaces: self.namespaces.live.clone(),
            pods: self.pods.live.clone(),
            services: self.services.live.clone(),
            endpoint_slices: self.endpoint_slices.live.clone(),
            slices_by_service: self.slices_by_service.clone(),
            network_policies: self.network_policies.live.clone(),
            changed_at: None,
        }
    }

    pub fn health(&self) -> &ApiHealth {
        self.health.health()
    }
}

/// `Init` is produced before the list request is even sent, so it proves nothing about the API;
/// every other event is an answer.
fn answered<A>(event: &Event<A>) -> bool {
    !matches!(event, Event::Init)
}

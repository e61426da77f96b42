//! Garbage collection of leases: a pure plan (which leases stay, which host ends go) from the
//! store's leases, the node's links, the runtime's list and the cluster view, and a thin apply.

use std::collections::BTreeSet;

use skein_cni::CniError;
use skein_store::Lease;

use super::handler::{PodNetwork, dataplane, store_error};

/// What a collection does: the attachments whose leases stay, and the host ends of the others
/// that are still on the node (detached before their leases go).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    pub keep: BTreeSet<(String, String)>,
    /// (pod interface name, host end)
    pub detach: Vec<(String, String)>,
}

/// Decides which leases are alive. `valid`: the runtime's list of attachments (a CNI GC),
/// `None` for the daemon's own passes. `pods_here`: the UIDs of the pods the API binds to this
/// node, `None` before the first cluster view (then nothing counts as gone for lack of a pod).
///
/// With the runtime's list, whatever it no longer knows goes. Without it, a lease goes only
/// when both its pod and its interface are gone.
pub fn plan_gc(
    leases: &[Lease],
    host_ends: &BTreeSet<String>,
    valid: Option<&BTreeSet<(String, String)>>,
    pods_here: Option<&BTreeSet<String>>,
) -> GcPlan {
    let mut plan = GcPlan::default();
    for lease in leases {
        let attachment = (lease.container_id.clone(), lease.ifname.clone());
        let host_end = skein_podnet::host_ifname(&lease.container_id, &lease.ifname);
        let alive = match valid {
            Some(v) => v.contains(&attachment),
            None => {
                pods_here.is_none_or(|uids| uids.contains(&lease.pod.uid))
                    || host_ends.contains(&host_end)
            }
        };
        if alive {
            plan.keep.insert(attachment);
        } else if host_ends.contains(&host_end) {
            plan.detach.push((lease.ifname.clone(), host_end));
        }
    }
    plan
}

impl PodNetwork {
    /// Frees leases of attachments that are gone (see [`plan_gc`]); returns how many.
    pub(super) async fn collect(
        &self,
        valid: Option<&BTreeSet<(String, String)>>,
    ) -> Result<usize, CniError> {
        let _exclusive = self.gc_lock.write().await;
        let leases = self.store.leases().await.map_err(store_error)?;
        let host_ends: BTreeSet<String> = self
            .net
            .host_ends()
            .await
            .map_err(dataplane)?
            .into_iter()
            .collect();
        let snapshot = self.snapshots.borrow().clone();
        let pods_here: Option<BTreeSet<String>> = (snapshot.version > 0).then(|| {
            snapshot
                .pods
                .values()
                .filter(|p| p.node_name.as_deref() == Some(self.settings.node.as_str()))
                .map(|p| p.uid.clone())
                .collect()
        });
        let plan = plan_gc(&leases, &host_ends, valid, pods_here.as_ref());
        for (ifname, host_end) in &plan.detach {
            let _ = self.net.detach(None, ifname, host_end).await;
        }
        let freed = self
            .store
            .release_except(&plan.keep)
            .await
            .map_err(store_error)?;
        for lease in &freed {
            tracing::info!(address = %lease.address, pod = %format!("{}/{}", lease.pod.namespace, lease.pod.name), "lease reclaimed");
        }
        // Also when nothing was freed: a failed read of the store is tried again here.
        self.mapped.notify_one();
        Ok(freed.len())
    }
}

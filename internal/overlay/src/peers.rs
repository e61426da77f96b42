//! The overlay's pure core: which peers and routes the node should have, as a function of the
//! cluster view, and the ordered changes from what the device has to that. No IO here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use skein_cluster::{NodeAnnouncement, Snapshot};
use wireguard_control::Key;

use crate::device::PeerState;

/// One other node as the overlay should peer with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub node: String,
    pub public_key: Key,
    /// As the node published it.
    pub endpoint: SocketAddr,
    /// The node's pod CIDRs.
    pub allowed_ips: Vec<IpNet>,
}

/// A node that cannot be a peer, and why (shown on the page, so an operator can fix it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub why: String,
}

/// The peers this node (`me`, whose public key is `my_key`) should have: every other Node
/// that published a key and an endpoint and has pod CIDRs. Sorted by node name.
pub fn desired_peers(snapshot: &Snapshot, me: &str, my_key: &Key) -> (Vec<PeerSpec>, Vec<Skipped>) {
    let mut peers: Vec<PeerSpec> = Vec::new();
    let mut skipped = Vec::new();
    let mut keys_seen: BTreeMap<[u8; 32], String> = BTreeMap::new();
    let mut nodes: Vec<_> = snapshot.nodes.values().filter(|n| n.name != me).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in nodes {
        let skip = |why: String| Skipped {
            node: node.name.clone(),
            why,
        };
        let announcement = match NodeAnnouncement::from_annotations(&node.skein) {
            Ok(a) => a,
            Err(e) => {
                skipped.push(skip(e.to_string()));
                continue;
            }
        };
        let (Some(published_key), Some(endpoint)) = (
            announcement.wireguard_public_key,
            announcement.wireguard_endpoint,
        ) else {
            skipped.push(skip(
                "has not published a WireGuard key and endpoint yet".into(),
            ));
            continue;
        };
        let public_key = Key(published_key.0);
        if node.pod_cidrs.is_empty() {
            skipped.push(skip("has no pod CIDR yet".into()));
            continue;
        }
        if &public_key == my_key {
            skipped.push(skip("publishes this node's own WireGuard key".into()));
            continue;
        }
        if let Some(first) = keys_seen.get(&public_key.0) {
            skipped.push(skip(format!(
                "publishes the same WireGuard key as node {first}"
            )));
            continue;
        }
        keys_seen.insert(public_key.0, node.name.clone());
        peers.push(PeerSpec {
            node: node.name.clone(),
            public_key,
            endpoint,
            allowed_ips: node.pod_cidrs.clone(),
        });
    }
    (peers, skipped)
}

/// One change to the device's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Add {
        public_key: Key,
        endpoint: SocketAddr,
        allowed_ips: Vec<IpNet>,
    },
    /// An existing peer whose allowed IPs or published endpoint changed. `endpoint` is `None`
    /// when only the allowed IPs changed: the endpoint the tunnel learned (a roaming or NAT'd
    /// peer) stays. `current_endpoint` is what the device has, for backends that must re-add.
    Update {
        public_key: Key,
        endpoint: Option<SocketAddr>,
        current_endpoint: Option<SocketAddr>,
        allowed_ips: Vec<IpNet>,
        old_allowed_ips: Vec<IpNet>,
    },
    Remove {
        public_key: Key,
    },
}

impl PeerChange {
    pub fn public_key(&self) -> &Key {
        match self {
            PeerChange::Add { public_key, .. }
            | PeerChange::Update { public_key, .. }
            | PeerChange::Remove { public_key } => public_key,
        }
    }
}

/// The changes from `current` (what the device has) to `desired`. `published` is the endpoint
/// each peer had in the API when it was last applied: an endpoint is written again only when
/// the published one changed, never because the device learned another.
///
/// Order: additions and updates first, removals last, so a pod CIDR that moves between peers is
/// never without one.
pub fn plan_peers(
    current: &[PeerState],
    desired: &[PeerSpec],
    published: &BTreeMap<[u8; 32], SocketAddr>,
) -> Vec<PeerChange> {
    let have: BTreeMap<[u8; 32], &PeerState> =
        current.iter().map(|p| (p.public_key.0, p)).collect();
    let want: BTreeSet<[u8; 32]> = desired.iter().map(|p| p.public_key.0).collect();
    let mut changes = Vec::new();
    for spec in desired {
        match have.get(&spec.public_key.0) {
            None => changes.push(PeerChange::Add {
                public_key: spec.public_key.clone(),
                endpoint: spec.endpoint,
                allowed_ips: sorted(&spec.allowed_ips),
            }),
            Some(state) => {
                let ips_differ = sorted(&state.allowed_ips) != sorted(&spec.allowed_ips);
                let endpoint_changed = match published.get(&spec.public_key.0) {
                    Some(last) => *last != spec.endpoint,
                    // Not known what was applied (a restart): only a peer without any endpoint
                    // needs one.
                    None => state.endpoint.is_none(),
                };
                if ips_differ || endpoint_changed {
                    changes.push(PeerChange::Update {
                        public_key: spec.public_key.clone(),
                        endpoint: endpoint_changed.then_some(spec.endpoint),
                        current_endpoint: state.endpoint,
                        allowed_ips: sorted(&spec.allowed_ips),
                        old_allowed_ips: sorted(&state.allowed_ips),
                    });
                }
            }
        }
    }
    for state in current {
        if !want.contains(&state.public_key.0) {
            changes.push(PeerChange::Remove {
                public_key: state.public_key.clone(),
            });
        }
    }
    changes
}

/// Routes to add and to remove on the overlay link: every peer's allowed IPs go through it.
/// Additions come first when applied, for the same reason as in [`plan_peers`].
pub fn plan_routes(current: &[IpNet], desired: &[PeerSpec]) -> (Vec<IpNet>, Vec<IpNet>) {
    let want: BTreeSet<IpNet> = desired
        .iter()
        .flat_map(|p| p.allowed_ips.iter().map(IpNet::trunc))
        .collect();
    let have: BTreeSet<IpNet> = current.iter().map(IpNet::trunc).collect();
    (
        want.difference(&have).copied().collect(),
        have.difference(&want).copied().collect(),
    )
}

fn sorted(ips: &[IpNet]) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = ips.iter().map(IpNet::trunc).collect();
    set.into_iter().collect()
}

//! From one desired ruleset to the next: a mirror of what skein last put in the kernel, and the
//! ordered operations that change only the difference. Pure: the apply step sends the groups.
//!
//! Order is what keeps a half-programmed Service unreachable when a big change is split into
//! several kernel transactions: new sets and chains first, then chain contents from the leaves
//! up (endpoint chains, Service chains, external chains, the static ones), then dispatch
//! elements (removals before additions, a key whose verdict changes in one group), and last the
//! stale chains, flushed now and deleted a second later (older kernels answer EBUSY when a
//! chain is deleted in the transaction that drops the last jump to it).

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use skein_cluster::{EndpointSlice, ObjectKey, Service, Snapshot};
use skein_nft::{Chain, Element, Mapped, Op, Set, Transaction, Values, fingerprint};

use crate::host_ports::{HostPort, HostPortClash, HostPorts};
use crate::ruleset::{
    CHAIN_FILTER_OUT, CHAIN_FILTER_PRE, CHAIN_FIREWALL, CHAIN_NAT_OUT, CHAIN_NAT_PRE, CHAIN_REJECT,
    CHAIN_SERVICES, ChainSpec, Fragment, GENERATED_PREFIXES, SetSpec, Tier, service_fragment,
    static_fragment,
};
use crate::service_map::{NodeContext, ServicePort, Unprogrammable, service_ports};

/// Who owns a fragment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Owner {
    Static,
    /// Shared: every element a Service claims names it.
    Service(Arc<ObjectKey>),
    /// The pods' host ports, as one.
    HostPorts,
    /// The hairpin pairs of every local endpoint, which Services share.
    Hairpin,
}

/// A Service as last computed: its inputs (to skip it when they did not change) and its ports.
/// Its fragment is not kept: [`fragment_of`] makes it again from the ports when a plan needs
/// it (the node context of a partial plan is the one they were computed with), since 10,000
/// kept fragments were 8 MB of the daemon's memory.
#[derive(Debug, Clone)]
struct Computed {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    /// Shared, so the page can show them off the sync's path.
    ports: Arc<[ServicePort]>,
    problems: Vec<String>,
}

/// The chains, sets and elements of a Service's ports.
fn fragment_of(ports: &[ServicePort], ctx: &NodeContext) -> Fragment {
    let mut fragment = Fragment::default();
    for p in ports {
        let f = service_fragment(p, ctx);
        fragment.chains.extend(f.chains);
        fragment.sets.extend(f.sets);
        for (set, elements) in f.elements {
            fragment.elements.extend(&set, elements);
        }
    }
    fragment
}

/// What the kernel holds of the proxy's objects, as far as skein knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    /// Chain → its rules' fingerprints (`None` for a rule skein did not write).
    pub chains: BTreeMap<String, Vec<Option<u64>>>,
    pub sets: BTreeSet<String>,
    /// Set → key → what it maps to, for sets whose elements skein manages.
    pub elements: BTreeMap<String, BTreeMap<Values, Option<Mapped>>>,
    /// Sets known only from a kernel dump: their elements' bytes ([`skein_nft::element_bytes`]).
    pub dumped: BTreeMap<String, BTreeSet<Vec<u8>>>,
}

impl Mirror {
    /// The proxy's share of a kernel dump (other parts' chains are not its business).
    pub fn from_dump(dump: &skein_nft::TableDump) -> Mirror {
        let mut m = Mirror::default();
        for (name, chain) in &dump.chains {
            if is_proxy_object(name) {
                m.chains.insert(
                    name.clone(),
                    chain.rules.iter().map(|r| r.fingerprint).collect(),
                );
            }
        }
        for (name, set) in &dump.sets {
            if is_proxy_object(name) {
                m.sets.insert(name.clone());
                m.dumped.insert(name.clone(), set.elements.clone());
            }
        }
        m
    }
}

/// Whether a chain or set name is the proxy's: a static name of its own or a generated one.
pub fn is_proxy_object(name: &str) -> bool {
    const STATIC: [&str; 12] = [
        crate::ruleset::CHAIN_HAIRPIN,
        CHAIN_FILTER_PRE,
        CHAIN_FILTER_OUT,
        CHAIN_FIREWALL,
        crate::ruleset::CHAIN_CHECK_IN,
        crate::ruleset::CHAIN_CHECK_FWD,
        crate::ruleset::CHAIN_CHECK_OUT,
        crate::ruleset::CHAIN_CHECKS,
        CHAIN_REJECT,
        CHAIN_NAT_PRE,
        CHAIN_NAT_OUT,
        CHAIN_SERVICES,
    ];
    const SETS: [&str; 11] = [
        crate::ruleset::SERVICE_ENDPOINTS,
        crate::ruleset::HAIRPIN,
        crate::ruleset::SERVICE_IPS,
        crate::ruleset::SERVICE_NODEPORTS,
        crate::ruleset::NODEPORT_IPS,
        crate::ruleset::CLUSTER_IPS,
        crate::ruleset::NO_ENDPOINT_IPS,
        crate::ruleset::NO_ENDPOINT_NODEPORTS,
        crate::ruleset::FIREWALL_IPS,
        crate::host_ports::HOST_PORTS,
        crate::host_ports::HOST_IP_PORTS,
    ];
    STATIC.contains(&name)
        || name.starts_with("proxy_pick")
        || name.starts_with("service_pick")
        || SETS
            .iter()
            .any(|s| name == *s || name.strip_suffix('6') == Some(*s))
        || GENERATED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A change, in groups that must each land in one kernel transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub groups: Vec<Vec<Op>>,
    /// Chains and sets to delete a second from now (already flushed by this plan).
    pub delete_later: Vec<Stale>,
    /// How many chains were (re)written and elements added or removed.
    pub changed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stale {
    Chain(String),
    Set(String),
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(Vec::is_empty)
    }

    /// The groups packed into transactions of at most `max_weight` ([`Op::weight`]) each, in
    /// order; a group bigger than that is a transaction of its own. The groups move into them:
    /// a full sync's tens of thousands of elements are not held twice.
    pub fn take_transactions(&mut self, max_weight: usize) -> Vec<Transaction> {
        let mut out: Vec<Transaction> = Vec::new();
        let mut current = Transaction::default();
        let mut weight = 0;
        for group in std::mem::take(&mut self.groups) {
            let w: usize = group.iter().map(Op::weight).sum();
            if weight > 0 && weight + w > max_weight {
                out.push(std::mem::take(&mut current));
                weight = 0;
            }
            current.ops.extend(group);
            weight += w;
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }

    /// Everything in one transaction (small changes, tests).
    pub fn transaction(&self) -> Transaction {
        Transaction {
            ops: self.groups.iter().flatten().cloned().collect(),
        }
    }
}

/// The desired state of every Service, and what was put in the kernel.
#[derive(Debug, Default)]
pub struct ProxyState {
    ctx: NodeContext,
    computed: BTreeMap<ObjectKey, Computed>,
    static_fragment: Fragment,
    /// Which owner holds each element key of the shared maps, per set (the first one, in key
    /// order, when two Services claim the same destination).
    claims: BTreeMap<String, BTreeMap<Values, Owner>>,
    mirror: Mirror,
    clashes: BTreeMap<ObjectKey, Vec<String>>,
    host_ports: HostPorts,
    /// The host ports' fragment the mirror holds, while a change waits for the next plan.
    host_ports_before: Option<Fragment>,
    /// Local endpoint address → how many Services have it: the hairpin pairs.
    local_endpoints: BTreeMap<std::net::IpAddr, usize>,
    hairpin: Fragment,
}

/// What a sync computed, for the page.
#[derive(Debug, Clone, Default)]
pub struct Computation<'a> {
    pub ports: Vec<&'a ServicePort>,
    pub problems: Vec<Unprogrammable>,
    /// The host ports programmed, and those left out because another pod holds their port.
    pub host_ports: &'a [HostPort],
    pub host_port_clashes: &'a [HostPortClash],
}

impl ProxyState {
    pub fn new(ctx: NodeContext) -> Self {
        Self {
            ctx,
            ..Self::default()
        }
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Every programmed Service port, and every Service that could not be programmed and why.
    pub fn computation(&self) -> Computation<'_> {
        let mut c = Computation {
            host_ports: &self.host_ports.programmed,
            host_port_clashes: &self.host_ports.clashes,
            ..Computation::default()
        };
        for (key, comp) in &self.computed {
            c.ports.extend(comp.ports.iter());
            for reason in comp
                .problems
                .iter()
                .chain(self.clashes.get(key).into_iter().flatten())
            {
                c.problems.push(Unprogrammable {
                    service: key.clone(),
                    reason: reason.clone(),
                });
            }
        }
        c
    }

    /// Every programmed Service port, a list per Service, shared rather than copied: what the
    /// page shows, built on another thread than the sync's.
    pub fn port_lists(&self) -> Vec<Arc<[ServicePort]>> {
        self.computed.values().map(|c| c.ports.clone()).collect()
    }

    /// The pods' host ports, in the order their claims came (the first of two claims of one
    /// port keeps it). Compared like a Service: the next plan sends only what changed, and
    /// nothing when they are the same.
    pub fn set_host_ports(&mut self, ports: Vec<HostPort>) {
        if ports == self.host_ports.ports {
            return;
        }
        let before = std::mem::replace(&mut self.host_ports, HostPorts::new(ports));
        // Two changes before a plan: the mirror still holds the first one's predecessor.
        self.host_ports_before.get_or_insert(before.fragment);
    }

    /// Replaces the mirror with the kernel's own view (start, after a failed transaction, after
    /// someone else changed the table): the next plan diffs against what is really there.
    pub fn adopt(&mut self, mirror: Mirror) {
        self.mirror = mirror;
    }

    /// The plan from the mirror to the ruleset `snapshot` asks for. `full` recomputes every
    /// Service (and must, after [`ProxyState::adopt`] or a new node context); otherwise only
    /// Services whose object or slices changed are recomputed and compared.
    pub fn plan(&mut self, snapshot: &Snapshot, ctx: &NodeContext, full: bool) -> Plan {
        let full = full || *ctx != self.ctx;
        self.ctx = ctx.clone();
        let mut changed: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut old: Vec<(Owner, Fragment)> = Vec::new();
        // The recomputed Services' fragments, for this plan only (all of them on a full one).
        let mut fragments: BTreeMap<ObjectKey, Fragment> = BTreeMap::new();
        // The snapshot's Services, their slices and the computed Services side by side, all in
        // key order: one step per Service rather than two lookups, which at 10,000 Services is
        // most of a small plan.
        let mut todo = Vec::new();
        let mut gone = Vec::new();
        let mut locals_changed = false;
        {
            let mut computed = self.computed.iter().peekable();
            let mut slices = snapshot.slices_by_service.iter().peekable();
            for (key, service) in &snapshot.services {
                while let Some((k, _)) = computed.next_if(|(k, _)| *k < key) {
                    gone.push(k.clone());
                }
                while slices.next_if(|(k, _)| *k < key).is_some() {}
                let own: &[Arc<EndpointSlice>] = match slices.peek() {
                    Some((k, v)) if *k == key => v,
                    _ => &[],
                };
                let before = computed.next_if(|(k, _)| *k == key).map(|(_, c)| c);
                let same = !full
                    && before.is_some_and(|c| {
                        same_arc(&c.service, service)
                            && c.slices.len() == own.len()
                            && c.slices.iter().zip(own.iter()).all(|(a, b)| same_arc(a, b))
                    });
                if !same {
                    todo.push((key, service, own));
                }
            }
            gone.extend(computed.map(|(k, _)| k.clone()));
        }
        for (key, service, own) in todo {
            let (ports, problems) = match service_ports(key, service, own, ctx) {
                Ok(ports) => (ports, Vec::new()),
                Err(problems) => (Vec::new(), problems),
            };
            fragments.insert(key.clone(), fragment_of(&ports, ctx));
            locals_changed |= count_local(&mut self.local_endpoints, &ports, true);
            let previous = self.computed.insert(
                key.clone(),
                Computed {
                    service: service.clone(),
                    slices: own.to_vec(),
                    ports: ports.into(),
                    problems,
                },
            );
            if let Some(previous) = previous {
                locals_changed |= count_local(&mut self.local_endpoints, &previous.ports, false);
                // A full plan compares against the whole mirror, not against what was.
                if !full {
                    old.push((
                        Owner::Service(Arc::new(key.clone())),
                        fragment_of(&previous.ports, ctx),
                    ));
                }
            }
            changed.insert(key.clone());
        }
        for key in gone {
            if let Some(c) = self.computed.remove(&key) {
                locals_changed |= count_local(&mut self.local_endpoints, &c.ports, false);
                if !full {
                    old.push((
                        Owner::Service(Arc::new(key.clone())),
                        fragment_of(&c.ports, ctx),
                    ));
                }
            }
            changed.insert(key);
        }
        if full {
            self.static_fragment = static_fragment(ctx);
        }
        let host_ports = self.host_ports_before.is_some();
        old.extend(self.host_ports_before.take().map(|f| (Owner::HostPorts, f)));
        // Rebuilt only when an address came or went, not on every plan.
        let hairpin =
            locals_changed.then(|| crate::ruleset::hairpin_fragment(self.local_endpoints.keys()));
        let hairpin_changed = hairpin.as_ref().is_some_and(|h| *h != self.hairpin);
        if let Some(hairpin) = hairpin.filter(|_| hairpin_changed) {
            old.push((
                Owner::Hairpin,
                std::mem::replace(&mut self.hairpin, hairpin),
            ));
        }
        self.diff(
            &changed,
            &fragments,
            &old,
            full,
            host_ports,
            hairpin_changed,
        )
    }

    /// The desired chains, sets and elements of the owners to compare: all of them on a full
    /// plan, else the changed Services (plus the static part, which changes only with the node
    /// context, so only on full plans; the host ports when `host_ports` says they changed).
    /// `fragments` holds the recomputed Services' fragments: every Service's on a full plan.
    fn diff(
        &mut self,
        changed: &BTreeSet<ObjectKey>,
        fragments: &BTreeMap<ObjectKey, Fragment>,
        old: &[(Owner, Fragment)],
        full: bool,
        host_ports: bool,
        hairpin: bool,
    ) -> Plan {
        // Claims: recompute whole on a full plan; otherwise release the changed owners' claims.
        if full {
            self.claims.clear();
            self.clashes.clear();
        } else {
            // The changed owners' claims, found by what they had (not by a walk of every
            // claim): the keys of their old fragments they held.
            for (owner, fragment) in old {
                for (set, elements) in &fragment.elements {
                    let Some(claims) = self.claims.get_mut(set) else {
                        continue;
                    };
                    for e in elements {
                        if claims.get(&e.key) == Some(owner) {
                            claims.remove(&e.key);
                        }
                    }
                }
            }
            for k in changed {
                self.clashes.remove(k);
            }
        }
        let old: Vec<&Fragment> = old.iter().map(|(_, f)| f).collect();
        let mut owners: Vec<(Owner, &Fragment)> = Vec::new();
        if full || host_ports {
            owners.push((Owner::HostPorts, &self.host_ports.fragment));
        }
        if full || hairpin {
            owners.push((Owner::Hairpin, &self.hairpin));
        }
        if full {
            owners.push((Owner::Static, &self.static_fragment));
        }
        owners.extend(
            fragments
                .iter()
                .map(|(k, f)| (Owner::Service(Arc::new(k.clone())), f)),
        );

        // What the compared owners want.
        let mut want_chains: BTreeMap<&str, &ChainSpec> = BTreeMap::new();
        let mut want_sets: BTreeMap<&str, &SetSpec> = BTreeMap::new();
        let mut want_elements: BTreeMap<String, BTreeMap<Values, Option<Mapped>>> = BTreeMap::new();
        for (owner, fragment) in &owners {
            for c in &fragment.chains {
                want_chains.insert(&c.chain.name, c);
            }
            for s in &fragment.sets {
                want_sets.insert(&s.set.name, s);
            }
            for (set, elements) in &fragment.elements {
                let claims = self.claims.entry(set.clone()).or_default();
                let wanted = want_elements.entry(set.clone()).or_default();
                for e in elements {
                    match claims.get(&e.key) {
                        Some(other) if other != owner => {
                            if let Owner::Service(k) = owner {
                                self.clashes.entry((**k).clone()).or_default().push(format!(
                                    "{} {} is already taken by {}",
                                    set,
                                    key_text(&e.key),
                                    match other {
                                        Owner::Service(o) => o.to_string(),
                                        Owner::Static => "the node".to_string(),
                                        Owner::HostPorts => "a pod's hostPort".to_string(),
                                        Owner::Hairpin => "a local endpoint".to_string(),
                                    }
                                ));
                            }
                            continue;
                        }
                        _ => {
                            claims.insert(e.key.clone(), owner.clone());
                        }
                    }
                    wanted.insert(e.key.clone(), e.value.clone());
                }
            }
        }

        // What the mirror holds of the compared owners: everything on a full plan; the old
        // fragments' objects otherwise (found by the names the new ones would have, plus the
        // mirror entries claimed by nobody any more).
        let mut plan = Plan::default();
        let mut create = Vec::new();
        for (name, spec) in &want_sets {
            if !self.mirror.sets.contains(*name) {
                create.push(Op::AddSet(spec.set.clone()));
                self.mirror.sets.insert((*name).to_string());
            }
        }
        // One group per chain (its flush and refill land together: a chain is never seen
        // half-filled), leaves first.
        let mut fills: BTreeMap<Tier, Vec<Vec<Op>>> = BTreeMap::new();
        for (name, spec) in &want_chains {
            let prints: Vec<Option<u64>> =
                spec.rules.iter().map(|r| Some(fingerprint(r))).collect();
            let mut group = Vec::new();
            match self.mirror.chains.get(*name) {
                Some(have) if *have == prints => continue,
                // A base chain keeps its hook; only its rules are replaced.
                Some(_) => group.push(Op::FlushChain((*name).to_string())),
                None => create.push(Op::AddChain(spec.chain.clone())),
            }
            for rule in &spec.rules {
                group.push(Op::AddRule {
                    chain: (*name).to_string(),
                    rule: rule.clone(),
                });
            }
            fills.entry(spec.tier).or_default().push(group);
            plan.changed += 1;
            self.mirror.chains.insert((*name).to_string(), prints);
        }
        if !create.is_empty() {
            create.insert(0, Op::AddTable);
            plan.groups.push(create);
        }
        plan.groups
            .extend(fills.into_values().flatten().filter(|g| !g.is_empty()));

        // Elements, per set.
        let sets: BTreeSet<String> = if full {
            want_elements
                .keys()
                .cloned()
                .chain(self.mirror.elements.keys().cloned())
                .chain(self.mirror.dumped.keys().cloned())
                .collect()
        } else {
            want_elements
                .keys()
                .cloned()
                .chain(old.iter().flat_map(|f| f.elements.keys().cloned()))
                .collect()
        };
        // Every wanted set's definition on a full plan; the compared owners' otherwise (a
        // partial plan meets no dumped set: those are all resolved by the full plan after
        // adopting a dump).
        let set_defs: BTreeMap<String, Set> = if full {
            self.static_fragment
                .sets
                .iter()
                .chain(self.host_ports.fragment.sets.iter())
                .chain(fragments.values().flat_map(|f| f.sets.iter()))
                .map(|s| (s.set.name.clone(), s.set.clone()))
                .collect()
        } else {
            want_sets
                .iter()
                .map(|(n, s)| ((*n).to_string(), s.set.clone()))
                .collect()
        };
        // Sets the kernel fills (affinity): their elements are never skein's to compare; a
        // restart keeps them, with their timeouts.
        // (Only a full plan meets them: no fragment lists elements for them.)
        let unmanaged: BTreeSet<&str> = if full {
            self.static_fragment
                .sets
                .iter()
                .chain(self.host_ports.fragment.sets.iter())
                .chain(fragments.values().flat_map(|f| f.sets.iter()))
                .filter(|s| !s.managed)
                .map(|s| s.set.name.as_str())
                .collect()
        } else {
            BTreeSet::new()
        };
        for set in sets {
            if unmanaged.contains(set.as_str()) {
                self.mirror.dumped.remove(&set);
                continue;
            }
            let want = want_elements.remove(&set).unwrap_or_default();
            if let Some(dumped) = self.mirror.dumped.remove(&set) {
                // Known only as bytes: add what is missing; if the kernel holds anything else,
                // replace the set's content in one transaction (only after a restart that missed
                // API changes, or someone else's edit).
                let Some(def) = set_defs.get(&set) else {
                    continue; // a stale set: deleted with its chains below
                };
                let want_bytes: BTreeMap<Vec<u8>, Element> = want
                    .iter()
                    .map(|(k, v)| {
                        let e = Element {
                            key: k.clone(),
                            value: v.clone(),
                        };
                        (skein_nft::element_bytes(def, &e), e)
                    })
                    .collect();
                let extra: Vec<&Vec<u8>> = dumped
                    .iter()
                    .filter(|b| !want_bytes.contains_key(*b))
                    .collect();
                // Extra elements that are only new values of wanted keys (an endpoint changed
                // while skein was away, or since the last plan) are replaced one by one; only
                // an element of a key nobody wants (known here by its bytes alone) makes the
                // set's content be replaced whole.
                let by_key: BTreeMap<Vec<u8>, &Element> = if def.interval {
                    BTreeMap::new()
                } else {
                    want_bytes
                        .values()
                        .map(|e| (skein_nft::element_key_bytes(def, e), e))
                        .collect()
                };
                let key_len = by_key.keys().next().map_or(0, Vec::len);
                let changed_keys: Option<Vec<Element>> = extra
                    .iter()
                    .map(|b| {
                        b.get(..key_len)
                            .and_then(|k| by_key.get(k))
                            .map(|e| (*e).clone())
                    })
                    .collect();
                let flush = !extra.is_empty() && changed_keys.is_none();
                let mut group = Vec::new();
                let missing: Vec<Element> = if flush {
                    group.push(Op::FlushSet(set.clone()));
                    want_bytes.values().cloned().collect()
                } else {
                    if let Some(keys) = changed_keys.filter(|k| !k.is_empty()) {
                        group.push(Op::DeleteElements {
                            set: set.clone(),
                            elements: keys,
                        });
                    }
                    want_bytes
                        .iter()
                        .filter(|(b, _)| !dumped.contains(*b))
                        .map(|(_, e)| e.clone())
                        .collect()
                };
                plan.changed += missing.len() + usize::from(flush);
                if !missing.is_empty() {
                    group.push(Op::AddElements {
                        set: set.clone(),
                        elements: missing,
                    });
                }
                if !group.is_empty() {
                    plan.groups.push(group);
                }
                self.mirror.elements.insert(set, want);
                continue;
            }
            let have = self.mirror.elements.entry(set.clone()).or_default();
            // The keys to compare: on a full plan all of them; on a partial one those the
            // changed owners want now or had before.
            let candidates: BTreeSet<Values> = if full {
                have.keys().chain(want.keys()).cloned().collect()
            } else {
                want.keys()
                    .cloned()
                    .chain(
                        old.iter()
                            .filter_map(|f| f.elements.get(set.as_str()))
                            .flatten()
                            .map(|e| e.key.clone()),
                    )
                    .collect()
            };
            let mut remove = Vec::new();
            let mut add = Vec::new();
            for key in candidates {
                if !full
                    && !want.contains_key(&key)
                    && matches!(
                        self.claims.get(&set).and_then(|c| c.get(&key)),
                        Some(Owner::Static) | Some(Owner::Service(_))
                    )
                {
                    // Another owner holds the key now (it was in a clash this owner won
                    // before, or the other one took it over): not this owner's to remove.
                    continue;
                }
                match (have.get(&key), want.get(&key)) {
                    (Some(h), Some(w)) if h == w => {}
                    (Some(h), Some(w)) => {
                        // Same key, new verdict or data: removed and added in one transaction.
                        plan.groups.push(vec![
                            Op::DeleteElements {
                                set: set.clone(),
                                elements: vec![Element {
                                    key: key.clone(),
                                    value: h.clone(),
                                }],
                            },
                            Op::AddElements {
                                set: set.clone(),
                                elements: vec![Element {
                                    key: key.clone(),
                                    value: w.clone(),
                                }],
                            },
                        ]);
                        plan.changed += 1;
                        have.insert(key, w.clone());
                    }
                    (Some(h), None) => {
                        remove.push(Element {
                            key: key.clone(),
                            value: h.clone(),
                        });
                        have.remove(&key);
                    }
                    (None, Some(w)) => {
                        add.push(Element {
                            key: key.clone(),
                            value: w.clone(),
                        });
                        have.insert(key, w.clone());
                    }
                    (None, None) => {}
                }
            }
            plan.changed += remove.len() + add.len();
            if !remove.is_empty() {
                plan.groups.push(vec![Op::DeleteElements {
                    set: set.clone(),
                    elements: remove,
                }]);
            }
            if !add.is_empty() {
                plan.groups
                    .push(vec![Op::AddElements { set, elements: add }]);
            }
        }

        // Stale chains and sets: the proxy's objects in the mirror that no owner wants.
        // On a full plan that is every mirror entry nobody wants; on a partial one, what the
        // changed owners had and no longer want (names carry the owner's hash, so no other
        // owner has them).
        let (stale_chains, stale_sets): (Vec<String>, Vec<String>) = if full {
            let chains: BTreeSet<&str> = self
                .static_fragment
                .chains
                .iter()
                .chain(self.host_ports.fragment.chains.iter())
                .chain(fragments.values().flat_map(|f| f.chains.iter()))
                .map(|c| c.chain.name.as_str())
                .collect();
            (
                self.mirror
                    .chains
                    .keys()
                    .filter(|c| !chains.contains(c.as_str()))
                    .cloned()
                    .collect(),
                self.mirror
                    .sets
                    .iter()
                    .filter(|s| !set_defs.contains_key(*s))
                    .cloned()
                    .collect(),
            )
        } else {
            (
                old.iter()
                    .flat_map(|f| f.chains.iter())
                    .map(|c| c.chain.name.clone())
                    .filter(|n| !want_chains.contains_key(n.as_str()))
                    .collect(),
                old.iter()
                    .flat_map(|f| f.sets.iter())
                    .map(|s| s.set.name.clone())
                    .filter(|n| !want_sets.contains_key(n.as_str()))
                    .collect(),
            )
        };
        let mut flush = Vec::new();
        for chain in stale_chains {
            self.mirror.chains.remove(&chain);
            flush.push(Op::FlushChain(chain.clone()));
            plan.delete_later.push(Stale::Chain(chain));
        }
        if !flush.is_empty() {
            plan.groups.push(flush);
        }
        for set in stale_sets {
            self.mirror.sets.remove(&set);
            self.mirror.elements.remove(&set);
            self.mirror.dumped.remove(&set);
            plan.delete_later.push(Stale::Set(set));
        }
        if full {
            // Maps filled one insertion at a time keep their B-tree nodes about half full; built
            // again from their sorted entries every node is full. At 10,000 Services the mirror
            // and the claims hold 70,000 entries each, and stay that size until the next change.
            for map in self.mirror.elements.values_mut() {
                *map = std::mem::take(map).into_iter().collect();
            }
            for map in self.claims.values_mut() {
                *map = std::mem::take(map).into_iter().collect();
            }
        }
        plan
    }

    /// Deletes what [`Plan::delete_later`] named, unless it came back meanwhile.
    pub fn deletions(&self, stale: &[Stale]) -> Transaction {
        let mut tx = Transaction::default();
        for s in stale {
            match s {
                Stale::Chain(c) if !self.mirror.chains.contains_key(c) => {
                    tx.push(Op::DeleteChain(c.clone()));
                }
                _ => {}
            }
        }
        // Sets after the chains whose rules referenced them.
        for s in stale {
            match s {
                Stale::Set(name) if !self.mirror.sets.contains(name) => {
                    tx.push(Op::DeleteSet(name.clone()));
                }
                _ => {}
            }
        }
        tx
    }

    /// The mirror after a failed transaction is unknown: the next plan must be a full one
    /// against a fresh dump.
    pub fn forget(&mut self) {
        self.mirror = Mirror::default();
    }

    pub fn chain_count(&self) -> usize {
        self.mirror.chains.len()
    }
}

fn key_text(key: &Values) -> String {
    key.iter()
        .map(|v| skein_nft::render::value(&v))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// The chain model of a [`ChainSpec`], for callers that need it plain.
pub fn chain_of(spec: &ChainSpec) -> &Chain {
    &spec.chain
}

/// Counts each local endpoint address of `ports` once, up (`add`) or down.
/// True when an address gained its first Service or lost its last: the hairpin pairs change.
fn count_local(
    counts: &mut BTreeMap<std::net::IpAddr, usize>,
    ports: &[ServicePort],
    add: bool,
) -> bool {
    let mut changed = false;
    for addr in crate::ruleset::local_endpoint_addrs(ports) {
        if add {
            let n = counts.entry(addr).or_default();
            changed |= *n == 0;
            *n += 1;
        } else if let Some(n) = counts.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&addr);
                changed = true;
            }
        }
    }
    changed
}

/// The pointer first: an object the API did not change is the same allocation.
fn same_arc<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

//! The desired ruleset, as a pure function: the static chains every node has, and for each
//! Service port the elements it adds to the shared maps (and, for the ports that need them,
//! chains of its own).
//!
//! The packet's walk (IPv6 the same with `ip6` and the `…6` sets):
//!
//! - `proxy_filter_pre` / `proxy_filter_out` (filter, prerouting / output, -110), new
//!   connections only → `proxy_firewall`: exempt addresses return; load-balancer source ranges
//!   (`firewall_ips` → `fw_…` chains), checked on the load balancer's own address.
//! - `proxy_nat_pre` / `proxy_nat_out` (nat, prerouting / output, -100) → `proxy_services`:
//!   `service_ips` (ClusterIPs → `svc_…`, external IPs → `ext_…`); other ClusterIPs → `proxy_pick`,
//!   which finds the port in `service_pick_k` (k: its count of endpoints); for the node's own
//!   addresses the pods' host ports (`host_ip_ports`, `host_ports` → `hp_…`, see
//!   [`crate::host_ports`]); and, for the node's NodePort addresses, `service_nodeports`
//!   (→ `ext_…`).
//! - `proxy_services` also marks ClusterIP traffic from off the pod network for masquerade.
//! - `proxy_pick_k` (static, one per endpoint count k up to [`MAX_PICK`]): the ClusterIP port
//!   of a Service without affinity or external destinations is DNATed to one of its k entries
//!   in `service_endpoints` (`ClusterIP . proto . port . i : endpoint . port`, drawn by
//!   `numgen random mod k`). Such a Service has no chain and no verdict-map entry: a change of
//!   its endpoints changes elements of plain sets and a data map only, which the kernel commits
//!   without revalidating every chain (any change to a verdict map makes it revalidate them).
//! - `svc_…` (the other ports): ClientIP affinity (`aff_…` sets); one endpoint drawn
//!   (`numgen random mod k` per rule, k = endpoints left, which is uniform), DNATed by that
//!   rule, or `goto ep_…` with affinity.
//! - `ext_…`: eTP Cluster marks for masquerade and goes to `svc_…`; eTP Local sends pod and
//!   node traffic to `svc_…` (node traffic masqueraded) and the rest, with its source kept, to a
//!   local endpoint.
//! - `ep_…` (with affinity): affinity recorded; DNAT.
//! - `proxy_check_in` / `_fwd` / `_out` (filter, input / forward / output, -10: after DNAT,
//!   as kube-proxy's), new connections only → `proxy_checks`: what is still addressed to a
//!   Service was not DNATed: ports without endpoints (`no_endpoint_ips`,
//!   `no_endpoint_nodeports` → `proxy_reject`, or drop under a Local traffic policy), a live
//!   ClusterIP on a port it does not serve (reject), any other service address (drop).
//! - `proxy_hairpin` (filter, postrouting, srcnat - 10): a new connection from a local
//!   endpoint to itself (`hairpin`: `pod . pod` for each) is marked for masquerade.
//! - `postrouting` (the CNI part's chain) masquerades what is marked.
//!
//! Every chain and set a Service port owns carries a hash of the port's identity in its name,
//! so no two collide, and a readable tail for people.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use skein_names::NftComment;
use skein_nft::{
    Action, Chain, ChainType, CmpOp, CtState, Element, Field, Hook, HookPoint, KeyType, L4Proto,
    MASQUERADE_MARK, Match, Reject, Rule, Set, Statement, Value, Verdict, comment,
};

use crate::service_map::{Backend, NodeContext, ServicePort};

pub const CHAIN_FILTER_PRE: &str = "proxy_filter_pre";
pub const CHAIN_FILTER_OUT: &str = "proxy_filter_out";
pub const CHAIN_FIREWALL: &str = "proxy_firewall";
pub const CHAIN_CHECK_IN: &str = "proxy_check_in";
pub const CHAIN_CHECK_FWD: &str = "proxy_check_fwd";
pub const CHAIN_CHECK_OUT: &str = "proxy_check_out";
pub const CHAIN_CHECKS: &str = "proxy_checks";
pub const CHAIN_REJECT: &str = "proxy_reject";
pub const CHAIN_NAT_PRE: &str = "proxy_nat_pre";
pub const CHAIN_NAT_OUT: &str = "proxy_nat_out";
pub const CHAIN_SERVICES: &str = "proxy_services";
pub const CHAIN_HAIRPIN: &str = "proxy_hairpin";

/// The priority of the hairpin check: on the way out, after routing and before the CNI part's
/// masquerade (srcnat) reads the mark.
pub const PRIORITY_HAIRPIN: i32 = skein_nft::priority::SRCNAT - 10;

/// The most endpoints a Service port can have and still be picked from the shared
/// `service_endpoints` map (one static `proxy_pick_k` chain per count); a port with more gets a
/// chain of its own.
pub const MAX_PICK: usize = 32;

/// `proxy_pick_k` (IPv4) or `proxy_pick6_k`: DNAT to one of the k entries `service_endpoints`
/// holds for the packet's ClusterIP and port.
pub fn pick_chain(k: usize, ipv6: bool) -> String {
    if ipv6 {
        format!("proxy_pick6_{k}")
    } else {
        format!("proxy_pick_{k}")
    }
}

/// `service_pick_k` (IPv4) or `service_pick6_k`: the ClusterIP ports with k endpoints in
/// `service_endpoints`. A plain set, so moving a port from one to another (an endpoint more or
/// fewer) is a change of elements the kernel commits without revalidating the table, as it
/// must after any change to a verdict map.
pub fn pick_set(k: usize, ipv6: bool) -> String {
    if ipv6 {
        format!("service_pick6_{k}")
    } else {
        format!("service_pick_{k}")
    }
}

pub const CHAIN_PICK: &str = "proxy_pick";

/// The priority of the proxy's firewall chains: before DNAT (-100), so the source-range check
/// sees the load balancer's own address.
pub const PRIORITY_FILTER: i32 = -110;

/// The priority of the proxy's checks: after DNAT, in input, forward and output (kube-proxy's
/// `filter - 10`), so they see only what nothing DNATed: a packet a Service chain sent on
/// (a pod's short-circuit to every endpoint under eTP Local) is no longer addressed to the
/// Service.
pub const PRIORITY_CHECKS: i32 = -10;

/// The shared sets and maps, per family (`false` IPv4, `true` IPv6).
pub fn set_name(base: &str, ipv6: bool) -> String {
    if ipv6 {
        format!("{base}6")
    } else {
        base.to_string()
    }
}
pub const SERVICE_IPS: &str = "service_ips";
pub const SERVICE_NODEPORTS: &str = "service_nodeports";
pub const NODEPORT_IPS: &str = "nodeport_ips";
pub const CLUSTER_IPS: &str = "cluster_ips";
pub const NO_ENDPOINT_IPS: &str = "no_endpoint_ips";
pub const NO_ENDPOINT_NODEPORTS: &str = "no_endpoint_nodeports";
pub const FIREWALL_IPS: &str = "firewall_ips";
pub const SERVICE_ENDPOINTS: &str = "service_endpoints";
pub const HAIRPIN: &str = "hairpin";

/// What kind a generated chain is; also the order in which they must land (an endpoint's
/// chain before the Service chain that jumps to it, which lands before the dispatch entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Endpoint,
    Service,
    External,
    Static,
}

/// A chain's desired content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub chain: Chain,
    pub tier: Tier,
    pub rules: Vec<Rule>,
}

/// A set's definition and (unless the kernel fills it, as for affinity) its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub set: Set,
    /// `false` for a dynamic set the kernel fills: skein never diffs its elements.
    pub managed: bool,
}

/// Everything the proxy wants in the table that one owner (a Service port, or the static part)
/// is responsible for. Elements go into shared maps, keyed by map name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub chains: Vec<ChainSpec>,
    pub sets: Vec<SetSpec>,
    pub elements: SetElements,
}

impl Fragment {
    fn element(&mut self, set: &str, element: Element) {
        self.elements.insert(set, element);
    }
}

/// Elements by set: the sets in name order, each set's elements in order and unique (what a
/// `BTreeMap<String, BTreeSet<Element>>` holds, in vectors). A Service's fragment has a few
/// elements in each of a few sets, and kept 10,000 times: a B-tree's node is sized for eleven,
/// which made these maps the largest thing the proxy held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetElements(Vec<(String, Vec<Element>)>);

impl SetElements {
    /// Adds `element` to `set` (once: an equal element is kept as it is).
    pub fn insert(&mut self, set: &str, element: Element) {
        let elements = self.set_mut(set);
        if let Err(at) = elements.binary_search(&element) {
            elements.insert(at, element);
        }
    }

    /// Adds every one of `elements` to `set`.
    pub fn extend(&mut self, set: &str, elements: impl IntoIterator<Item = Element>) {
        for e in elements {
            self.insert(set, e);
        }
    }

    fn set_mut(&mut self, set: &str) -> &mut Vec<Element> {
        let at = match self.0.binary_search_by(|(name, _)| name.as_str().cmp(set)) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (set.to_string(), Vec::new()));
                at
            }
        };
        &mut self.0[at].1
    }

    pub fn get(&self, set: &str) -> Option<&[Element]> {
        self.0
            .binary_search_by(|(name, _)| name.as_str().cmp(set))
            .ok()
            .map(|at| self.0[at].1.as_slice())
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(name, _)| name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &[Element])> {
        self.0.iter().map(|(name, e)| (name, e.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Gives back the room the vectors grew into: the fragment is kept as it is now.
    pub fn shrink_to_fit(&mut self) {
        for (_, elements) in &mut self.0 {
            elements.shrink_to_fit();
        }
        self.0.shrink_to_fit();
    }
}

impl<'a> IntoIterator for &'a SetElements {
    type Item = (&'a String, &'a [Element]);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Vec<Element>)>,
        fn(&'a (String, Vec<Element>)) -> (&'a String, &'a [Element]),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(name, e)| (name, e.as_slice()))
    }
}

impl IntoIterator for SetElements {
    type Item = (String, Vec<Element>);
    type IntoIter = std::vec::IntoIter<(String, Vec<Element>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A short, stable hash (base32 of FNV-1a, 8 characters) of a generated object's identity.
pub fn short_hash(identity: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..8)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// `prefix_hash_readable`, cut to the longest name skein generates; characters nft names
/// cannot hold become `_`.
pub(crate) fn generated_name(prefix: &str, identity: &str, readable: &str) -> String {
    let readable: String = readable
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = format!("{prefix}_{}_{readable}", short_hash(identity));
    name.truncate(skein_names::MAX_NFT_NAME);
    name
}

/// Every generated name starts with one of these; anything else in the table with such a
/// prefix that no Service wants is stale.
pub const GENERATED_PREFIXES: [&str; 7] = ["svc_", "ext_", "ep_", "fw_", "aff_", "src_", "hp_"];

/// The names of one Service port's objects.
#[derive(Debug, Clone)]
struct Names {
    identity: String,
    readable: String,
}

impl Names {
    fn new(p: &ServicePort) -> Self {
        let family = if p.ipv6 { "6" } else { "4" };
        Self {
            identity: format!(
                "{}/{}/{}/{}/{family}",
                p.service.namespace(),
                p.service.name(),
                p.protocol.name(),
                p.port_name
            ),
            readable: format!(
                "{}_{}_{}",
                p.service.namespace(),
                p.service.name(),
                if p.port_name.is_empty() {
                    p.port.to_string()
                } else {
                    p.port_name.clone()
                }
            ),
        }
    }
    fn svc(&self) -> String {
        generated_name("svc", &self.identity, &self.readable)
    }
    fn ext(&self) -> String {
        generated_name("ext", &self.identity, &self.readable)
    }
    fn fw(&self) -> String {
        generated_name("fw", &self.identity, &self.readable)
    }
    fn src(&self) -> String {
        generated_name("src", &self.identity, &self.readable)
    }
    fn ep(&self, b: &Backend) -> String {
        let id = format!("{}/{}/{}", self.identity, b.addr, b.port);
        generated_name("ep", &id, &format!("{}_{}", self.readable, b.addr))
    }
    fn aff(&self, b: &Backend, timeout: Duration) -> String {
        // The timeout is part of the identity: a new timeout is a new set (the kernel cannot
        // change a set's timeout in place), and the old one goes with its chains.
        let id = format!(
            "{}/{}/{}/{}",
            self.identity,
            b.addr,
            b.port,
            timeout.as_secs()
        );
        generated_name("aff", &id, &format!("{}_{}", self.readable, b.addr))
    }
}

pub(crate) fn fields(ipv6: bool) -> (Field, Field) {
    if ipv6 {
        (Field::Ip6Saddr, Field::Ip6Daddr)
    } else {
        (Field::IpSaddr, Field::IpDaddr)
    }
}

pub(crate) fn addr_type(ipv6: bool) -> KeyType {
    if ipv6 {
        KeyType::Ipv6Addr
    } else {
        KeyType::Ipv4Addr
    }
}

pub(crate) fn marked_for_masquerade(matches: Vec<Match>) -> Rule {
    Rule::new(matches, Action::Continue).with_statement(Statement::SetMarkBits(MASQUERADE_MARK))
}

fn goto(chain: &str) -> Action {
    Action::Verdict(Verdict::Goto(chain.to_string()))
}

fn label(p: &ServicePort) -> NftComment {
    NftComment::lossy(&p.display())
}

/// The chain of one endpoint under ClientIP affinity: the client recorded, then DNAT.
fn endpoint_chain(p: &ServicePort, names: &Names, b: &Backend, timeout: Duration) -> ChainSpec {
    let (saddr, _) = fields(p.ipv6);
    let dnat = Rule::new(
        vec![Match::Cmp {
            field: Field::L4Proto,
            op: CmpOp::Eq,
            value: Value::Proto(p.protocol),
        }],
        Action::Dnat {
            addr: b.addr,
            port: Some(b.port),
        },
    )
    .with_comment(NftComment::lossy(&format!(
        "{} -> {}",
        p.display(),
        b.pod.as_deref().unwrap_or("endpoint")
    )))
    // The statement comes before the DNAT; the rendering puts statements first too.
    .with_statement(Statement::UpdateSet {
        set: names.aff(b, timeout),
        key: vec![saddr],
    });
    ChainSpec {
        chain: Chain {
            name: names.ep(b),
            hook: None,
        },
        tier: Tier::Endpoint,
        rules: vec![dnat],
    }
}

/// Whether an endpoint gets a chain of its own: only with affinity, which records the client
/// before the DNAT. Every other endpoint is DNATed by the rule that draws it (a pod reaching
/// itself through its Service is caught on the way out, by `proxy_hairpin`).
fn has_chain(p: &ServicePort) -> bool {
    p.affinity.is_some()
}

/// Whether the port's ClusterIP traffic is picked from the shared `service_endpoints` map
/// rather than by a chain of its own: no affinity (which needs per-endpoint chains), no
/// external destinations (whose traffic reaches the pick by another address), and a count of
/// endpoints a static pick chain exists for. A change to such a port's endpoints is a change of
/// map elements only, which the kernel applies without revalidating the table's chains.
pub fn picked_from_map(p: &ServicePort) -> bool {
    p.affinity.is_none()
        && !p.has_external()
        && (1..=MAX_PICK).contains(&p.internal_endpoints().len())
}

/// What the rule that picks `b` does: go to its chain, or DNAT to it.
fn to_endpoint(p: &ServicePort, names: &Names, b: &Backend) -> (Vec<Match>, Action) {
    if has_chain(p) {
        return (Vec::new(), goto(&names.ep(b)));
    }
    (
        vec![Match::Cmp {
            field: Field::L4Proto,
            op: CmpOp::Eq,
            value: Value::Proto(p.protocol),
        }],
        Action::Dnat {
            addr: b.addr,
            port: Some(b.port),
        },
    )
}

/// Rules that pick one of `endpoints`: affinity first (a client with a live entry goes back
/// to its endpoint), then a uniform draw.
fn pick_rules(p: &ServicePort, names: &Names, endpoints: &[Backend]) -> Vec<Rule> {
    let (saddr, _) = fields(p.ipv6);
    let mut rules = Vec::new();
    if let Some(timeout) = p.affinity {
        for b in endpoints {
            rules.push(Rule::new(
                vec![Match::InSet {
                    key: vec![saddr],
                    set: names.aff(b, timeout),
                    negate: false,
                }],
                goto(&names.ep(b)),
            ));
        }
    }
    let n = endpoints.len();
    for (i, b) in endpoints.iter().enumerate() {
        let left = (n - i) as u32;
        let (mut matches, action) = to_endpoint(p, names, b);
        if left > 1 {
            matches.push(Match::Random {
                modulus: left,
                value: 0,
            });
        }
        let mut rule = Rule::new(matches, action);
        if matches!(rule.action, Action::Dnat { .. }) {
            rule.comment = Some(NftComment::lossy(&format!(
                "{} -> {}",
                p.display(),
                b.pod.as_deref().unwrap_or("endpoint")
            )));
        }
        rules.push(rule);
    }
    rules
}

/// The fragment of one Service port.
pub fn service_fragment(p: &ServicePort, ctx: &NodeContext) -> Fragment {
    let names = Names::new(p);
    let (saddr, _) = fields(p.ipv6);
    let mut f = Fragment::default();
    let family_cidrs: Vec<IpNet> = ctx
        .cluster_cidrs
        .iter()
        .copied()
        .filter(|c| c.addr().is_ipv6() == p.ipv6)
        .collect();
    let internal = p.internal_endpoints();
    let external = p.external_endpoints();
    let cluster_ips: Vec<IpAddr> = p
        .cluster_ips
        .iter()
        .copied()
        .filter(|ip| !ctx.exempt_ips.contains(ip))
        .collect();

    // Endpoint chains for every endpoint either set reaches, and their affinity sets.
    let mut reached: BTreeSet<&Backend> = BTreeSet::new();
    reached.extend(internal.iter());
    if p.has_external() {
        reached.extend(external.iter());
        reached.extend(p.cluster.iter());
    }
    if let Some(timeout) = p.affinity {
        for b in &reached {
            f.chains.push(endpoint_chain(p, &names, b, timeout));
            let mut set = Set::new(names.aff(b, timeout), vec![addr_type(p.ipv6)]);
            set.timeout = Some(timeout);
            f.sets.push(SetSpec {
                set,
                managed: false,
            });
        }
    }

    let proto = Value::Proto(p.protocol);
    let port = Value::Port(p.port);
    if picked_from_map(p) {
        // ClusterIP traffic to the static pick chain for this many endpoints, which draws
        // one of the entries here.
        let pick = pick_set(internal.len(), p.ipv6);
        for ip in &cluster_ips {
            let key = vec![Value::Addr(*ip), proto.clone(), port.clone()];
            f.element(
                &set_name(CLUSTER_IPS, p.ipv6),
                Element::key(vec![Value::Addr(*ip)]),
            );
            for (i, b) in internal.iter().enumerate() {
                let mut at = key.clone();
                at.push(Value::Mark(i as u32));
                f.element(
                    &set_name(SERVICE_ENDPOINTS, p.ipv6),
                    Element::data(at, vec![Value::Addr(b.addr), Value::Port(b.port)]),
                );
            }
            f.element(&pick, Element::key(key));
        }
        return f;
    }

    // The service chain: ClusterIP traffic (internal policy).
    // (Off-cluster sources are marked for masquerade by one static rule in `proxy_services`.)
    let svc = names.svc();
    let mut rules = pick_rules(p, &names, internal);
    if let Some(first) = rules.first_mut()
        && first.comment.is_none()
    {
        first.comment = Some(label(p));
    }
    // Without endpoints and external destinations, nothing would reach the chain.
    if !internal.is_empty() || p.has_external() {
        f.chains.push(ChainSpec {
            chain: Chain {
                name: svc.clone(),
                hook: None,
            },
            tier: Tier::Service,
            rules,
        });
    }

    for ip in &cluster_ips {
        let key = vec![Value::Addr(*ip), proto.clone(), port.clone()];
        f.element(
            &set_name(CLUSTER_IPS, p.ipv6),
            Element::key(vec![Value::Addr(*ip)]),
        );
        if internal.is_empty() {
            // As kube-proxy: a Service without any endpoint rejects; one whose endpoints are
            // all elsewhere under internalTrafficPolicy Local drops.
            let verdict = if p.cluster.is_empty() {
                Verdict::Goto(CHAIN_REJECT.into())
            } else {
                Verdict::Drop
            };
            f.element(
                &set_name(NO_ENDPOINT_IPS, p.ipv6),
                Element::mapped(key, verdict),
            );
        } else {
            f.element(
                &set_name(SERVICE_IPS, p.ipv6),
                Element::mapped(key, Verdict::Goto(svc.clone())),
            );
        }
    }

    if !p.has_external() {
        return f;
    }
    // The external chain: NodePort, externalIPs, load-balancer IPs.
    let ext = names.ext();
    let mut rules = Vec::new();
    if p.external_local {
        for cidr in &family_cidrs {
            rules.push(
                Rule::new(
                    vec![Match::Prefix {
                        field: saddr,
                        net: *cidr,
                        negate: false,
                    }],
                    goto(&svc),
                )
                .with_comment(NftComment::lossy(&format!(
                    "{} pod traffic to all endpoints",
                    p.display()
                ))),
            );
        }
        rules.push(
            Rule::new(
                vec![Match::Cmp {
                    field: Field::FibSaddrType,
                    op: CmpOp::Eq,
                    value: Value::AddrType(skein_nft::AddrType::Local),
                }],
                goto(&svc),
            )
            .with_statement(Statement::SetMarkBits(MASQUERADE_MARK))
            .with_comment(NftComment::lossy(&format!(
                "{} node traffic to all endpoints",
                p.display()
            ))),
        );
        if external.is_empty() {
            rules.push(
                Rule::new(Vec::new(), Action::Verdict(Verdict::Drop)).with_comment(
                    NftComment::lossy(&format!("{} has no local endpoint", p.display())),
                ),
            );
        } else {
            rules.extend(pick_rules(p, &names, external));
        }
    } else {
        rules.push(
            marked_for_masquerade(Vec::new())
                .with_comment(NftComment::lossy(&format!("{} external", p.display()))),
        );
        rules.push(Rule::new(Vec::new(), goto(&svc)));
    }
    f.chains.push(ChainSpec {
        chain: Chain {
            name: ext.clone(),
            hook: None,
        },
        tier: Tier::External,
        rules,
    });
    // No external endpoint: eTP Local drops (as kube-proxy does: no reset, the client's
    // load balancer moves on by health check), eTP Cluster rejects.
    // As kube-proxy: without any endpoint, external traffic is rejected; with endpoints but
    // none for external traffic (eTP Local, none on this node), what the external chain does
    // not send on (pods and the node itself are short-circuited to every endpoint) is dropped
    // after DNAT, with no reset, so the client's load balancer moves on by its health check.
    let dead = if external.is_empty() {
        Some(if p.cluster.is_empty() {
            Verdict::Goto(CHAIN_REJECT.into())
        } else {
            Verdict::Drop
        })
    } else {
        None
    };
    let dispatch = !p.cluster.is_empty();
    let firewall = if p.source_ranges.is_empty() || p.load_balancer_ips.is_empty() {
        None
    } else {
        let fw = names.fw();
        let src = names.src();
        let mut set = Set::new(src.clone(), vec![addr_type(p.ipv6)]);
        set.interval = true;
        f.sets.push(SetSpec { set, managed: true });
        for range in &p.source_ranges {
            f.element(&src, Element::key(vec![Value::Net(*range)]));
        }
        f.chains.push(ChainSpec {
            chain: Chain {
                name: fw.clone(),
                hook: None,
            },
            tier: Tier::External,
            rules: vec![
                Rule::new(
                    vec![Match::InSet {
                        key: vec![saddr],
                        set: src,
                        negate: true,
                    }],
                    Action::Verdict(Verdict::Drop),
                )
                .with_comment(NftComment::lossy(&format!(
                    "{} loadBalancerSourceRanges",
                    p.display()
                ))),
            ],
        });
        Some(fw)
    };
    for ip in &p.external_ips {
        let key = vec![Value::Addr(*ip), proto.clone(), port.clone()];
        if let Some(v) = &dead {
            f.element(
                &set_name(NO_ENDPOINT_IPS, p.ipv6),
                Element::mapped(key.clone(), v.clone()),
            );
        }
        if dispatch {
            f.element(
                &set_name(SERVICE_IPS, p.ipv6),
                Element::mapped(key.clone(), Verdict::Goto(ext.clone())),
            );
        }
        if let Some(fw) = &firewall
            && p.load_balancer_ips.contains(ip)
        {
            f.element(
                &set_name(FIREWALL_IPS, p.ipv6),
                Element::mapped(key, Verdict::Goto(fw.clone())),
            );
        }
    }
    if let Some(node_port) = p.node_port {
        let key = vec![proto.clone(), Value::Port(node_port)];
        if let Some(v) = &dead {
            f.element(
                &set_name(NO_ENDPOINT_NODEPORTS, p.ipv6),
                Element::mapped(key.clone(), v.clone()),
            );
        }
        if dispatch {
            f.element(
                &set_name(SERVICE_NODEPORTS, p.ipv6),
                Element::mapped(key, Verdict::Goto(ext.clone())),
            );
        }
    }
    f
}

/// The addresses of the ports' local endpoints, each once: whom the hairpin pairs are for.
pub fn local_endpoint_addrs<'a>(
    ports: impl IntoIterator<Item = &'a ServicePort>,
) -> BTreeSet<IpAddr> {
    ports
        .into_iter()
        .flat_map(|p| p.cluster.iter().chain(p.local.iter()))
        .filter(|b| b.local)
        .map(|b| b.addr)
        .collect()
}

/// The hairpin pairs (`pod . pod`) of these local endpoint addresses.
pub fn hairpin_fragment<'a>(local: impl Iterator<Item = &'a IpAddr>) -> Fragment {
    let mut f = Fragment::default();
    for addr in local {
        f.element(
            &set_name(HAIRPIN, addr.is_ipv6()),
            Element::key(vec![Value::Addr(*addr), Value::Addr(*addr)]),
        );
    }
    f
}

fn base(name: &str, kind: ChainType, hook: HookPoint, priority: i32) -> Chain {
    Chain {
        name: name.into(),
        hook: Some(Hook {
            kind,
            hook,
            priority,
        }),
    }
}

/// The chains and sets every node has, whatever its Services.
pub fn static_fragment(ctx: &NodeContext) -> Fragment {
    let mut f = Fragment::default();
    let new_only = Match::AnyBits {
        field: Field::CtState,
        bits: CtState::NEW,
        negate: false,
    };
    // Every base chain is one jump: new connections to the firewall (before DNAT) and to the
    // checks (after it), everything to the Service dispatch.
    let jump = |to: &str, matches: Vec<Match>| {
        Rule::new(matches, Action::Verdict(Verdict::Jump(to.into())))
    };
    let bases = [
        (
            CHAIN_FILTER_PRE,
            ChainType::Filter,
            HookPoint::Prerouting,
            PRIORITY_FILTER,
            CHAIN_FIREWALL,
        ),
        (
            CHAIN_FILTER_OUT,
            ChainType::Filter,
            HookPoint::Output,
            PRIORITY_FILTER,
            CHAIN_FIREWALL,
        ),
        (
            CHAIN_NAT_PRE,
            ChainType::Nat,
            HookPoint::Prerouting,
            skein_nft::priority::DSTNAT,
            CHAIN_SERVICES,
        ),
        (
            CHAIN_NAT_OUT,
            ChainType::Nat,
            HookPoint::Output,
            skein_nft::priority::DSTNAT,
            CHAIN_SERVICES,
        ),
        (
            CHAIN_CHECK_IN,
            ChainType::Filter,
            HookPoint::Input,
            PRIORITY_CHECKS,
            CHAIN_CHECKS,
        ),
        (
            CHAIN_CHECK_FWD,
            ChainType::Filter,
            HookPoint::Forward,
            PRIORITY_CHECKS,
            CHAIN_CHECKS,
        ),
        (
            CHAIN_CHECK_OUT,
            ChainType::Filter,
            HookPoint::Output,
            PRIORITY_CHECKS,
            CHAIN_CHECKS,
        ),
    ];
    for (name, kind, hook, priority, to) in bases {
        let matches = if to == CHAIN_SERVICES {
            Vec::new()
        } else {
            vec![new_only.clone()]
        };
        f.chains.push(ChainSpec {
            chain: base(name, kind, hook, priority),
            tier: Tier::Static,
            rules: vec![jump(to, matches)],
        });
    }
    f.chains.push(ChainSpec {
        chain: Chain {
            name: CHAIN_REJECT.into(),
            hook: None,
        },
        tier: Tier::Endpoint,
        rules: vec![
            Rule::new(
                vec![Match::Cmp {
                    field: Field::L4Proto,
                    op: CmpOp::Eq,
                    value: Value::Proto(L4Proto::Tcp),
                }],
                Action::Reject(Reject::TcpReset),
            )
            .with_comment(comment("Service port without endpoints")),
            Rule::new(Vec::new(), Action::Reject(Reject::PortUnreachable)),
        ],
    });

    let mut firewall = Vec::new();
    let mut checks = Vec::new();
    let mut services = Vec::new();
    let mut hairpin = Vec::new();
    for ipv6 in [false, true] {
        let (_, daddr) = fields(ipv6);
        let svc_key = vec![daddr, Field::L4Proto, Field::ThDport];
        let port_key = vec![Field::L4Proto, Field::ThDport];
        let at = addr_type(ipv6);
        let full = vec![at, KeyType::InetProto, KeyType::InetService];
        let ports = vec![KeyType::InetProto, KeyType::InetService];
        let mut map = |name: &str, key: Vec<KeyType>, verdicts: bool| {
            let mut set = Set::new(set_name(name, ipv6), key);
            set.verdicts = verdicts;
            f.sets.push(SetSpec { set, managed: true });
        };
        map(SERVICE_IPS, full.clone(), true);
        map(SERVICE_NODEPORTS, ports.clone(), true);
        map(NO_ENDPOINT_IPS, full.clone(), true);
        map(NO_ENDPOINT_NODEPORTS, ports, true);
        map(FIREWALL_IPS, full.clone(), true);
        map(CLUSTER_IPS, vec![at], false);
        map(NODEPORT_IPS, vec![at], false);
        map(HAIRPIN, vec![at, at], false);
        let mut endpoints = Set::new(set_name(SERVICE_ENDPOINTS, ipv6), {
            let mut key = full.clone();
            key.push(KeyType::Mark);
            key
        });
        endpoints.data = vec![at, KeyType::InetService];
        f.sets.push(SetSpec {
            set: endpoints,
            managed: true,
        });
        let mut picks = Vec::new();
        for k in 1..=MAX_PICK {
            f.sets.push(SetSpec {
                set: Set::new(pick_set(k, ipv6), full.clone()),
                managed: true,
            });
            picks.push(Rule::new(
                vec![Match::InSet {
                    key: svc_key.clone(),
                    set: pick_set(k, ipv6),
                    negate: false,
                }],
                goto(&pick_chain(k, ipv6)),
            ));
            let mut key = svc_key.clone();
            key.push(Field::Random { modulus: k as u32 });
            f.chains.push(ChainSpec {
                chain: Chain {
                    name: pick_chain(k, ipv6),
                    hook: None,
                },
                tier: Tier::Endpoint,
                rules: vec![Rule::new(
                    Vec::new(),
                    Action::DnatMap {
                        key,
                        map: set_name(SERVICE_ENDPOINTS, ipv6),
                        ipv6,
                    },
                )],
            });
        }
        f.chains.push(ChainSpec {
            chain: Chain {
                name: set_name(CHAIN_PICK, ipv6),
                hook: None,
            },
            tier: Tier::Endpoint,
            rules: picks,
        });
        // A pod that reached itself through a Service: its reply must come back through the
        // node, so the connection is masqueraded (the set holds `pod . pod` for every local
        // endpoint; a pod talking to its own address directly never leaves it).
        hairpin.push(
            marked_for_masquerade(vec![
                new_only.clone(),
                Match::InSet {
                    key: vec![fields(ipv6).0, daddr],
                    set: set_name(HAIRPIN, ipv6),
                    negate: false,
                },
            ])
            .with_comment(comment("a pod reaching itself through a Service")),
        );
        for ip in ctx.exempt_ips.iter().filter(|ip| ip.is_ipv6() == ipv6) {
            let exempt = Rule::new(
                vec![Match::Cmp {
                    field: daddr,
                    op: CmpOp::Eq,
                    value: Value::Addr(*ip),
                }],
                Action::Verdict(Verdict::Return),
            )
            .with_comment(comment("answered on the node itself"));
            checks.push(exempt.clone());
            firewall.push(exempt);
        }
        firewall.push(Rule::new(
            Vec::new(),
            Action::Vmap {
                key: svc_key.clone(),
                map: set_name(FIREWALL_IPS, ipv6),
            },
        ));
        checks.push(Rule::new(
            Vec::new(),
            Action::Vmap {
                key: svc_key.clone(),
                map: set_name(NO_ENDPOINT_IPS, ipv6),
            },
        ));
        let on_nodeport_ip = Match::InSet {
            key: vec![daddr],
            set: set_name(NODEPORT_IPS, ipv6),
            negate: false,
        };
        checks.push(Rule::new(
            vec![on_nodeport_ip.clone()],
            Action::Vmap {
                key: port_key.clone(),
                map: set_name(NO_ENDPOINT_NODEPORTS, ipv6),
            },
        ));
        // Still addressed to a live ClusterIP after DNAT: a port it does not serve.
        checks.push(
            Rule::new(
                vec![Match::InSet {
                    key: vec![daddr],
                    set: set_name(CLUSTER_IPS, ipv6),
                    negate: false,
                }],
                goto(CHAIN_REJECT),
            )
            .with_comment(comment("a ClusterIP on a port it does not serve")),
        );
        for cidr in ctx
            .service_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv6() == ipv6)
        {
            checks.push(
                Rule::new(
                    vec![Match::Prefix {
                        field: daddr,
                        net: *cidr,
                        negate: false,
                    }],
                    Action::Verdict(Verdict::Drop),
                )
                .with_comment(comment("an unallocated service address")),
            );
        }
        let (saddr, _) = fields(ipv6);
        for cidr in ctx
            .cluster_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv6() == ipv6)
        {
            services.push(
                marked_for_masquerade(vec![
                    Match::InSet {
                        key: vec![daddr],
                        set: set_name(CLUSTER_IPS, ipv6),
                        negate: false,
                    },
                    Match::Prefix {
                        field: saddr,
                        net: *cidr,
                        negate: true,
                    },
                ])
                .with_comment(comment("ClusterIP traffic from off the pod network")),
            );
        }
        services.push(Rule::new(
            Vec::new(),
            Action::Vmap {
                key: svc_key,
                map: set_name(SERVICE_IPS, ipv6),
            },
        ));
        // The ports picked from `service_endpoints` are not in `service_ips`: found by their
        // count of endpoints (a ClusterIP first, so other traffic pays one lookup).
        services.push(
            Rule::new(
                vec![Match::InSet {
                    key: vec![daddr],
                    set: set_name(CLUSTER_IPS, ipv6),
                    negate: false,
                }],
                Action::Verdict(Verdict::Jump(set_name(CHAIN_PICK, ipv6))),
            )
            .with_comment(comment("ClusterIP ports picked from service_endpoints")),
        );
        // Host ports before NodePorts: a pod's hostPort is the node's port too.
        let (host_port_maps, host_port_rules) = crate::host_ports::dispatch(ipv6);
        f.sets.extend(host_port_maps);
        services.extend(host_port_rules);
        services.push(Rule::new(
            vec![on_nodeport_ip],
            Action::Vmap {
                key: port_key,
                map: set_name(SERVICE_NODEPORTS, ipv6),
            },
        ));
    }
    f.chains.push(ChainSpec {
        chain: Chain {
            name: CHAIN_FIREWALL.into(),
            hook: None,
        },
        tier: Tier::Static,
        rules: firewall,
    });
    f.chains.push(ChainSpec {
        chain: Chain {
            name: CHAIN_CHECKS.into(),
            hook: None,
        },
        tier: Tier::Static,
        rules: checks,
    });
    f.chains.push(ChainSpec {
        chain: Chain {
            name: CHAIN_SERVICES.into(),
            hook: None,
        },
        tier: Tier::Static,
        rules: services,
    });
    f.chains.push(ChainSpec {
        chain: base(
            CHAIN_HAIRPIN,
            ChainType::Filter,
            HookPoint::Postrouting,
            PRIORITY_HAIRPIN,
        ),
        tier: Tier::Static,
        rules: hairpin,
    });
    for ip in &ctx.nodeport_ips {
        f.element(
            &set_name(NODEPORT_IPS, ip.is_ipv6()),
            Element::key(vec![Value::Addr(*ip)]),
        );
    }
    f
}

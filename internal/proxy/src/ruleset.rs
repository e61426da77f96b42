//! The desired ruleset, as a pure function: the static chains every node has, and for each
//! Service port its own chains and the elements it adds to the shared dispatch maps.
//!
//! The packet's walk (IPv6 the same with `ip6` and the `…6` sets):
//!
//! - `proxy_filter_pre` / `proxy_filter_out` (filter, prerouting / output, -110), new
//!   connections only → `proxy_firewall`: exempt addresses return; load-balancer source ranges
//!   (`firewall_ips` → `fw_…` chains), checked on the load balancer's own address.
//! - `proxy_nat_pre` / `proxy_nat_out` (nat, prerouting / output, -100) → `proxy_services`:
//!   `service_ips` (ClusterIPs → `svc_…`, external IPs → `ext_…`); for the node's own
//!   addresses the pods' host ports (`host_ip_ports`, `host_ports` → `hp_…`, see
//!   [`crate::host_ports`]); and, for the node's NodePort addresses, `service_nodeports`
//!   (→ `ext_…`).
//! - `proxy_services` also marks ClusterIP traffic from off the pod network for masquerade.
//! - `svc_…`: ClientIP affinity (`aff_…` sets); one endpoint drawn (`numgen random mod k` per
//!   rule, k = endpoints left, which is uniform), DNATed by that rule, or `goto ep_…` for a
//!   local endpoint (hairpin) or with affinity.
//! - `ext_…`: eTP Cluster marks for masquerade and goes to `svc_…`; eTP Local sends pod and
//!   node traffic to `svc_…` (node traffic masqueraded) and the rest, with its source kept, to a
//!   local endpoint.
//! - `ep_…` (local endpoints, and all with affinity): the endpoint reaching itself (hairpin) is
//!   marked for masquerade; affinity recorded; DNAT.
//! - `proxy_check_in` / `_fwd` / `_out` (filter, input / forward / output, -10: after DNAT,
//!   as kube-proxy's), new connections only → `proxy_checks`: what is still addressed to a
//!   Service was not DNATed: ports without endpoints (`no_endpoint_ips`,
//!   `no_endpoint_nodeports` → `proxy_reject`, or drop under a Local traffic policy), a live
//!   ClusterIP on a port it does not serve (reject), any other service address (drop).
//! - `postrouting` (the CNI part's chain) masquerades what is marked.
//!
//! Every chain and set a Service port owns carries a hash of the port's identity in its name,
//! so no two collide, and a readable tail for people.

use std::collections::{BTreeMap, BTreeSet};
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
    pub elements: BTreeMap<String, BTreeSet<Element>>,
}

impl Fragment {
    fn element(&mut self, set: &str, element: Element) {
        self.elements
            .entry(set.to_string())
            .or_default()
            .insert(element);
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
                p.service.namespace,
                p.service.name,
                p.protocol.name(),
                p.port_name
            ),
            readable: format!(
                "{}_{}_{}",
                p.service.namespace,
                p.service.name,
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

/// The chains of one endpoint: hairpin masquerade, affinity, DNAT.
fn endpoint_chain(p: &ServicePort, names: &Names, b: &Backend) -> ChainSpec {
    let (saddr, _) = fields(p.ipv6);
    let mut rules = vec![
        marked_for_masquerade(vec![Match::Cmp {
            field: saddr,
            op: CmpOp::Eq,
            value: Value::Addr(b.addr),
        }])
        .with_comment(NftComment::lossy(&format!("{} hairpin", p.display()))),
    ];
    let mut dnat = Rule::new(
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
    )));
    if let Some(timeout) = p.affinity {
        dnat = dnat.with_statement(Statement::UpdateSet {
            set: names.aff(b, timeout),
            key: vec![saddr],
        });
        // The statement comes before the DNAT; the rendering puts statements first too.
    }
    rules.push(dnat);
    ChainSpec {
        chain: Chain {
            name: names.ep(b),
            hook: None,
        },
        tier: Tier::Endpoint,
        rules,
    }
}

/// Whether an endpoint gets a chain of its own: only when something must happen besides the
/// DNAT. A local endpoint may be the client itself (hairpin: a pod on this node reaching itself
/// through its Service; a remote one never sends through this node's prerouting), and affinity
/// records the client. Every other endpoint is DNATed by the rule that draws it, which keeps a
/// Service with remote endpoints at one chain.
fn has_chain(p: &ServicePort, b: &Backend) -> bool {
    b.local || p.affinity.is_some()
}

/// What the rule that picks `b` does: go to its chain, or DNAT to it.
fn to_endpoint(p: &ServicePort, names: &Names, b: &Backend) -> (Vec<Match>, Action) {
    if has_chain(p, b) {
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
    for b in reached.iter().filter(|b| has_chain(p, b)) {
        f.chains.push(endpoint_chain(p, &names, b));
        if let Some(timeout) = p.affinity {
            let mut set = Set::new(names.aff(b, timeout), vec![addr_type(p.ipv6)]);
            set.timeout = Some(timeout);
            f.sets.push(SetSpec {
                set,
                managed: false,
            });
        }
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
    f.chains.push(ChainSpec {
        chain: Chain {
            name: svc.clone(),
            hook: None,
        },
        tier: Tier::Service,
        rules,
    });

    let proto = Value::Proto(p.protocol);
    let port = Value::Port(p.port);
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
    let to_firewall = Rule::new(
        vec![new_only.clone()],
        Action::Verdict(Verdict::Jump(CHAIN_FIREWALL.into())),
    );
    let to_checks = Rule::new(
        vec![new_only],
        Action::Verdict(Verdict::Jump(CHAIN_CHECKS.into())),
    );
    for (name, hook) in [
        (CHAIN_CHECK_IN, HookPoint::Input),
        (CHAIN_CHECK_FWD, HookPoint::Forward),
        (CHAIN_CHECK_OUT, HookPoint::Output),
    ] {
        f.chains.push(ChainSpec {
            chain: base(name, ChainType::Filter, hook, PRIORITY_CHECKS),
            tier: Tier::Static,
            rules: vec![to_checks.clone()],
        });
    }
    for (name, hook) in [
        (CHAIN_FILTER_PRE, HookPoint::Prerouting),
        (CHAIN_FILTER_OUT, HookPoint::Output),
    ] {
        f.chains.push(ChainSpec {
            chain: base(name, ChainType::Filter, hook, PRIORITY_FILTER),
            tier: Tier::Static,
            rules: vec![to_firewall.clone()],
        });
    }
    for (name, hook) in [
        (CHAIN_NAT_PRE, HookPoint::Prerouting),
        (CHAIN_NAT_OUT, HookPoint::Output),
    ] {
        f.chains.push(ChainSpec {
            chain: base(name, ChainType::Nat, hook, skein_nft::priority::DSTNAT),
            tier: Tier::Static,
            rules: vec![Rule::new(
                Vec::new(),
                Action::Verdict(Verdict::Jump(CHAIN_SERVICES.into())),
            )],
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
        for ip in ctx.exempt_ips.iter().filter(|ip| ip.is_ipv6() == ipv6) {
            checks.push(
                Rule::new(
                    vec![Match::Cmp {
                        field: daddr,
                        op: CmpOp::Eq,
                        value: Value::Addr(*ip),
                    }],
                    Action::Verdict(Verdict::Return),
                )
                .with_comment(comment("answered on the node itself")),
            );
            firewall.push(
                Rule::new(
                    vec![Match::Cmp {
                        field: daddr,
                        op: CmpOp::Eq,
                        value: Value::Addr(*ip),
                    }],
                    Action::Verdict(Verdict::Return),
                )
                .with_comment(comment("answered on the node itself")),
            );
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
    for ip in &ctx.nodeport_ips {
        f.element(
            &set_name(NODEPORT_IPS, ip.is_ipv6()),
            Element::key(vec![Value::Addr(*ip)]),
        );
    }
    f
}

//! hostPort: traffic to the node on a pod's host port reaches the pod, as the reference
//! `portmap` plugin does it, in skein's own table. A pure function of the node's mappings
//! (which the CNI ADDs asked for and the store keeps) to one [`Fragment`], owned by the host
//! ports as a whole ([`crate::ProxyState::set_host_ports`]).
//!
//! The packet's walk, after `service_ips` in `proxy_services` and before the NodePorts, only for
//! the node's own addresses (`fib daddr type local`):
//!
//! - `host_ip_ports`: `ip daddr . meta l4proto . th dport : goto hp_…`, the mappings bound to
//!   one host IP (Kubernetes' `hostIP`, `127.0.0.1` too);
//! - `host_ports`: `meta l4proto . th dport : goto hp_…`, the mappings for any of the node's
//!   addresses (no `hostIP`, or an unspecified one: `0.0.0.0` binds IPv4 only, `::` IPv6).
//! - `hp_…`: the pod reaching itself through its host port (hairpin) is marked for
//!   masquerade, then DNAT to the pod's address and container port. A client's source is kept
//!   otherwise, as with `portmap`.
//!
//! A host IP's mapping is looked up first, so one host port may go to one pod on `127.0.0.1`,
//! to another on the node's address, and to a third over another protocol (the scheduler allows
//! that, and the conformance tests ask for it). Two mappings with the same key (host IP or
//! none, protocol, port, family) cannot both be served: the first one given keeps it (the daemon
//! gives them in order of arrival, so a pod holding a port never loses it to a newcomer) and the
//! other is reported by pod name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use skein_cluster::ObjectKey;
use skein_names::NftComment;
use skein_nft::{
    Action, AddrType, Chain, CmpOp, Element, Field, KeyType, L4Proto, Match, Rule, Set, Value,
    Verdict,
};

use crate::ruleset::{
    ChainSpec, Fragment, SetSpec, Tier, addr_type, fields, generated_name, marked_for_masquerade,
    set_name,
};

/// The map of mappings for any of the node's addresses (`…6` for IPv6).
pub const HOST_PORTS: &str = "host_ports";
/// The map of mappings bound to one host IP (`…6` for IPv6).
pub const HOST_IP_PORTS: &str = "host_ip_ports";

/// One pod's host port in one address family: what to forward where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// The pod, as the CNI ADD named it (namespace, name).
    pub pod: ObjectKey,
    /// The pod's address in this family.
    pub addr: IpAddr,
    /// The container port.
    pub port: u16,
    pub host_port: u16,
    pub protocol: L4Proto,
    /// `None`: any of the node's addresses. An unspecified address binds its family only.
    pub host_ip: Option<IpAddr>,
}

impl HostPort {
    /// The host IP the mapping is bound to, if it names one the packet's destination is
    /// compared with (an unspecified one is no destination).
    pub fn bound_to(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }

    /// `198.18.0.11:8080/tcp`, `8080/udp (IPv6)`: the claim, as people write it.
    pub fn display(&self) -> String {
        let family = if self.addr.is_ipv6() { " (IPv6)" } else { "" };
        match self.bound_to() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{}", self.host_port, self.protocol.name()),
            Some(IpAddr::V4(ip)) => format!("{ip}:{}/{}", self.host_port, self.protocol.name()),
            None => format!("{}/{}{family}", self.host_port, self.protocol.name()),
        }
    }

    /// What no second mapping may claim: the map and key its element has.
    fn claim(&self) -> (String, Vec<Value>) {
        let ipv6 = self.addr.is_ipv6();
        let ports = vec![Value::Proto(self.protocol), Value::Port(self.host_port)];
        match self.bound_to() {
            Some(ip) => {
                let mut key = vec![Value::Addr(ip)];
                key.extend(ports);
                (set_name(HOST_IP_PORTS, ipv6), key)
            }
            None => (set_name(HOST_PORTS, ipv6), ports),
        }
    }

    fn chain_name(&self) -> String {
        let family = if self.addr.is_ipv6() { "6" } else { "4" };
        let host_ip = self.bound_to().map(|ip| ip.to_string()).unwrap_or_default();
        generated_name(
            "hp",
            &format!(
                "{}/{}/{}/{host_ip}/{}/{family}",
                self.pod.namespace(),
                self.pod.name(),
                self.protocol.name(),
                self.host_port
            ),
            &format!(
                "{}_{}_{}",
                self.pod.namespace(),
                self.pod.name(),
                self.host_port
            ),
        )
    }
}

/// A mapping that could not be programmed: its key is another pod's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPortClash {
    pub pod: ObjectKey,
    pub reason: String,
}

/// The node's host ports as last set: the input, its fragment, the mappings it programs and
/// those left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPorts {
    pub ports: Vec<HostPort>,
    pub fragment: Fragment,
    pub programmed: Vec<HostPort>,
    pub clashes: Vec<HostPortClash>,
}

impl HostPorts {
    /// The fragment of `ports`: one `hp_…` chain and one map element per mapping, the first
    /// of two with the same key kept. A host IP of the other family than the pod's address
    /// forwards nothing (the store never pairs them).
    pub fn new(ports: Vec<HostPort>) -> Self {
        let mut fragment = Fragment::default();
        let mut programmed = Vec::new();
        let mut clashes = Vec::new();
        let mut claimed: BTreeMap<(String, Vec<Value>), &HostPort> = BTreeMap::new();
        for p in &ports {
            if p.host_ip.is_some_and(|ip| ip.is_ipv6() != p.addr.is_ipv6()) {
                continue;
            }
            let claim = p.claim();
            if let Some(holder) = claimed.get(&claim) {
                if holder.pod != p.pod {
                    clashes.push(HostPortClash {
                        pod: p.pod.clone(),
                        reason: format!(
                            "hostPort {} is already taken by pod {}",
                            p.display(),
                            holder.pod
                        ),
                    });
                }
                continue;
            }
            let chain = p.chain_name();
            fragment.chains.push(chain_of(p, &chain));
            let (set, key) = claim.clone();
            fragment
                .elements
                .insert(&set, Element::mapped(key, Verdict::Goto(chain)));
            claimed.insert(claim, p);
            programmed.push(p.clone());
        }
        Self {
            ports,
            fragment,
            programmed,
            clashes,
        }
    }
}

/// `hp_…`: hairpin masquerade, then DNAT to the pod.
fn chain_of(p: &HostPort, name: &str) -> ChainSpec {
    let (saddr, _) = fields(p.addr.is_ipv6());
    let what = format!("{} hostPort {}", p.pod, p.display());
    ChainSpec {
        chain: Chain {
            name: name.to_string(),
            hook: None,
        },
        tier: Tier::Endpoint,
        rules: vec![
            marked_for_masquerade(vec![Match::Cmp {
                field: saddr,
                op: CmpOp::Eq,
                value: Value::Addr(p.addr),
            }])
            .with_comment(NftComment::lossy(&format!("{what} hairpin"))),
            Rule::new(
                vec![Match::Cmp {
                    field: Field::L4Proto,
                    op: CmpOp::Eq,
                    value: Value::Proto(p.protocol),
                }],
                Action::Dnat {
                    addr: p.addr,
                    port: Some(p.port),
                },
            )
            .with_comment(NftComment::lossy(&what)),
        ],
    }
}

/// The static part, per family: the two maps, and the rules of `proxy_services` that look them
/// up (host IP first), for the node's own addresses only.
pub(crate) fn dispatch(ipv6: bool) -> (Vec<SetSpec>, Vec<Rule>) {
    let (_, daddr) = fields(ipv6);
    let ports = vec![KeyType::InetProto, KeyType::InetService];
    let mut with_ip = vec![addr_type(ipv6)];
    with_ip.extend(ports.iter().copied());
    let map = |name: &str, key: Vec<KeyType>| {
        let mut set = Set::new(set_name(name, ipv6), key);
        set.verdicts = true;
        SetSpec { set, managed: true }
    };
    let local = Match::Cmp {
        field: Field::FibDaddrType,
        op: CmpOp::Eq,
        value: Value::AddrType(AddrType::Local),
    };
    let rules = vec![
        Rule::new(
            vec![local.clone()],
            Action::Vmap {
                key: vec![daddr, Field::L4Proto, Field::ThDport],
                map: set_name(HOST_IP_PORTS, ipv6),
            },
        ),
        Rule::new(
            vec![
                Match::Cmp {
                    field: Field::NfProto,
                    op: CmpOp::Eq,
                    value: Value::NfProto { ipv6 },
                },
                local,
            ],
            Action::Vmap {
                key: vec![Field::L4Proto, Field::ThDport],
                map: set_name(HOST_PORTS, ipv6),
            },
        ),
    ];
    (
        vec![map(HOST_IP_PORTS, with_ip), map(HOST_PORTS, ports)],
        rules,
    )
}

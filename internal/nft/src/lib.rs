//! skein's nftables table, `inet skein`, and nothing else in the ruleset.
//!
//! A change is a [`Transaction`]: an ordered list of structured operations on the table
//! ([`model`]: chains, rules made of matches and actions, named sets and maps and their
//! elements), applied atomically by a [`Backend`]. The rules themselves are pure functions of
//! the node's state (see [`masquerade`]); the netlink backend ([`Netlink`]) is the thin apply
//! step: batches of `NFT_MSG_*` messages built in-process on a socket the caller keeps, bounded
//! in size so the kernel's commit time stays linear. [`render`] prints the same model in nft's
//! syntax, for people and for golden tests; no nft text is ever parsed.
//!
//! ## The hook plan
//!
//! Every base chain skein will have, with the part that owns it. Parts never write another
//! part's chain. Rows marked *planned* arrive with their part; their hooks and priorities are
//! fixed now so that three parts can share one table without reordering later.
//!
//! | chain              | type   | hook        | priority      | owner    | what |
//! |--------------------|--------|-------------|---------------|----------|------|
//! | `dns_raw_pre`      | filter | prerouting  | -300 (raw)    | dns      | NOTRACK of DNS traffic to and from the DNS addresses |
//! | `dns_raw_out`      | filter | output      | -300 (raw)    | dns      | the same for the answers and the node's own queries |
//! | `overlay_mss`      | filter | forward     | -150 (mangle) | overlay  | clamp TCP MSS to the route MTU through the overlay |
//! | `proxy_filter_pre` | filter | prerouting  | -110          | proxy    | new connections → `proxy_firewall`: source ranges, reject/drop of dead service ports |
//! | `proxy_filter_out` | filter | output      | -110          | proxy    | the same for the node's own traffic |
//! | `proxy_nat_pre`    | nat    | prerouting  | -100 (dstnat) | proxy    | Service DNAT through sets, a data map and verdict maps |
//! | `proxy_nat_out`    | nat    | output      | -100 (dstnat) | proxy    | DNAT of the node's own Service traffic |
//! | `policy_forward`   | filter | forward     | 0 (filter)    | policy   | *planned*: NetworkPolicy for routed and bridged pod traffic |
//! | `policy_input`     | filter | input       | 0 (filter)    | policy   | *planned*: NetworkPolicy for pod-to-host traffic |
//! | `proxy_hairpin`    | filter | postrouting | 90            | proxy    | a pod reaching itself through a Service marked for masquerade |
//! | `postrouting`      | nat    | postrouting | 100 (srcnat)  | cni      | the one masquerade chain: pod traffic leaving the cluster CIDR; the proxy's masquerade mark becomes an input of this chain's builder, never a second writer |
//!
//! Bridged pod-to-pod traffic reaches the `forward` hooks only with `br_netfilter` and
//! `net.bridge.bridge-nf-call-iptables`/`-ip6tables` = 1, which the CNI part ensures (and names
//! on the page when the module is missing).
//!
//! Each chain is rebuilt by its own transaction (add, flush, fill), so the parts that own
//! different chains never undo each other's rules. An [`OwnedChain`] keeps one chain as it
//! should be: it compares the fingerprints the kernel's rules carry with the desired rules' and
//! re-applies only when they differ; [`RulesetChanges`] (the nftables netlink group) tells the
//! owner when to look. [`netlink::probe`] names, at start, a kernel feature the rules need and
//! the kernel lacks.

use std::net::IpAddr;

use ipnet::IpNet;
use skein_names::{IfName, NftComment};

pub mod model;
mod monitor;
pub mod netlink;
mod owned;
pub mod render;
mod rule_text;
#[cfg(test)]
mod tests;
mod values;

pub use model::*;
pub use monitor::RulesetChanges;
pub use netlink::{Netlink, element_bytes, element_key_bytes};
pub use owned::{ChainSync, OwnedChain};
pub use render::fingerprint;

/// The one table skein owns.
pub const TABLE: &str = "skein";
pub const FAMILY: &str = "inet";
pub const CHAIN_POSTROUTING: &str = "postrouting";
pub const CHAIN_OVERLAY_MSS: &str = "overlay_mss";
pub const CHAIN_DNS_RAW_PRE: &str = "dns_raw_pre";
pub const CHAIN_DNS_RAW_OUT: &str = "dns_raw_out";

/// The packet mark bit with which the service proxy asks the `postrouting` chain to masquerade
/// a connection (kube-proxy's `0x4000`, the same bit, so people who know one know the other).
pub const MASQUERADE_MARK: u32 = 0x4000;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open a netlink socket for nftables: {0}")]
    Socket(std::io::Error),
    #[error("the kernel refused {what}: {reason}")]
    Rejected { what: String, reason: String },
    #[error("the kernel lacks a feature skein's ruleset needs: {0}")]
    Missing(String),
    #[error(
        "the ruleset changed while skein wrote it (generation {expected}, now {found}); retrying with a full sync"
    )]
    Raced { expected: u32, found: u32 },
    #[error("cannot read skein's table back from the kernel: {0}")]
    Dump(String),
    #[error("cannot follow nftables changes (netlink): {0}")]
    Monitor(std::io::Error),
}

/// Applies transactions to the kernel and reads skein's table back.
pub trait Backend {
    /// Applies the transaction atomically: all of it or none of it.
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError>;
    /// One chain's rules; `None` when the table or the chain does not exist.
    fn chain(&mut self, name: &str) -> Result<Option<ChainDump>, NftError>;
    /// The whole table (chains, rules' fingerprints, sets' elements); `None` without a table.
    fn dump(&mut self) -> Result<Option<TableDump>, NftError>;
    /// The ruleset's generation: it changes with every commit by anyone.
    fn generation(&mut self) -> Result<u32, NftError>;
}

/// A fixed comment of skein's own; API names go through [`NftComment::lossy`] instead.
pub fn comment(text: &'static str) -> NftComment {
    NftComment::new(text).unwrap_or_else(|_| NftComment::lossy(text))
}

/// The start of every chain's transaction: the table and the base chain made if missing, the
/// chain emptied; the caller adds the rules. Other chains are left as they are.
fn rebuild_chain(name: &str, hook: Hook) -> Transaction {
    let mut tx = Transaction::default();
    tx.push(Op::AddTable)
        .push(Op::AddChain(Chain {
            name: name.into(),
            hook: Some(hook),
        }))
        .push(Op::FlushChain(name.into()));
    tx
}

/// The rules of a transaction made by [`rebuild_chain`], in order.
pub fn rules_of(tx: &Transaction) -> Vec<&Rule> {
    tx.ops
        .iter()
        .filter_map(|op| match op {
            Op::AddRule { rule, .. } => Some(rule),
            _ => None,
        })
        .collect()
}

/// TCP SYNs forwarded into or out of the overlay interface `ifname` get their MSS clamped to
/// the route's MTU, so a smaller MTU somewhere on the path cannot black-hole large segments.
pub fn overlay_mss_clamp(ifname: &IfName) -> Transaction {
    let mut tx = rebuild_chain(
        CHAIN_OVERLAY_MSS,
        Hook {
            kind: ChainType::Filter,
            hook: HookPoint::Forward,
            priority: priority::MANGLE,
        },
    );
    for dir in [Field::OifName, Field::IifName] {
        tx.push(Op::AddRule {
            chain: CHAIN_OVERLAY_MSS.into(),
            rule: Rule::new(
                vec![
                    Match::Cmp {
                        field: dir,
                        op: CmpOp::Eq,
                        value: Value::IfName(ifname.as_str().into()),
                    },
                    Match::Cmp {
                        field: Field::L4Proto,
                        op: CmpOp::Eq,
                        value: Value::Proto(L4Proto::Tcp),
                    },
                    Match::Masked {
                        field: Field::TcpFlags,
                        mask: TcpFlags::SYN | TcpFlags::RST,
                        value: TcpFlags::SYN,
                    },
                ],
                Action::MssClampToRouteMtu,
            )
            .with_comment(comment("MSS clamp on the overlay")),
        });
    }
    tx
}

/// DNS traffic to and from the node's DNS addresses (port 53, UDP and TCP) skips connection
/// tracking, both ways, as NodeLocal DNSCache sets it up: a flood of lookups cannot fill the
/// conntrack table, and no NAT rule ever sees them. Two transactions, one per chain
/// (`dns_raw_pre` for what arrives, `dns_raw_out` for what the node sends).
pub fn dns_notrack(addrs: &[IpAddr]) -> [Transaction; 2] {
    [
        (CHAIN_DNS_RAW_PRE, HookPoint::Prerouting),
        (CHAIN_DNS_RAW_OUT, HookPoint::Output),
    ]
    .map(|(chain, hook)| {
        let mut tx = rebuild_chain(
            chain,
            Hook {
                kind: ChainType::Filter,
                hook,
                priority: priority::RAW,
            },
        );
        for addr in addrs {
            let (saddr, daddr) = match addr {
                IpAddr::V4(_) => (Field::IpSaddr, Field::IpDaddr),
                IpAddr::V6(_) => (Field::Ip6Saddr, Field::Ip6Daddr),
            };
            for proto in [L4Proto::Udp, L4Proto::Tcp] {
                // Queries to the address, and its answers.
                for (addr_field, port_field) in [(daddr, Field::ThDport), (saddr, Field::ThSport)] {
                    tx.push(Op::AddRule {
                        chain: chain.into(),
                        rule: Rule::new(
                            vec![
                                Match::Cmp {
                                    field: addr_field,
                                    op: CmpOp::Eq,
                                    value: Value::Addr(*addr),
                                },
                                Match::Cmp {
                                    field: Field::L4Proto,
                                    op: CmpOp::Eq,
                                    value: Value::Proto(proto),
                                },
                                Match::Cmp {
                                    field: port_field,
                                    op: CmpOp::Eq,
                                    value: Value::Port(53),
                                },
                            ],
                            Action::Continue,
                        )
                        .with_statement(Statement::NoTrack)
                        .with_comment(comment("cluster DNS, untracked")),
                    });
                }
            }
        }
        tx
    })
}

/// Where the node's masquerading happens, for [`masquerade`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasqueradePlan {
    /// The node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// The whole cluster's pod CIDRs: pod traffic to them keeps its source.
    pub cluster_cidrs: Vec<IpNet>,
    /// The overlay's interface and the node's pod gateway addresses: traffic the service proxy
    /// marked for masquerade that leaves through the overlay takes the gateway address (the
    /// peer's WireGuard accepts only pod-CIDR sources), not the underlay one `masquerade` picks.
    pub overlay: Option<(IfName, Vec<IpAddr>)>,
}

/// The table's full state for masquerading, one transaction that rebuilds its chain (applying
/// it twice changes nothing):
/// - connections the service proxy marked ([`MASQUERADE_MARK`]) leave with the node's address,
///   or with the pod gateway address through the overlay;
/// - pod traffic from the node's pod CIDRs to anywhere outside the cluster CIDRs leaves with the
///   node's address; pod-to-pod traffic keeps its source.
pub fn masquerade(plan: &MasqueradePlan) -> Transaction {
    let mut tx = rebuild_chain(
        CHAIN_POSTROUTING,
        Hook {
            kind: ChainType::Nat,
            hook: HookPoint::Postrouting,
            priority: priority::SRCNAT,
        },
    );
    let marked = Match::AnyBits {
        field: Field::Mark,
        bits: MASQUERADE_MARK,
        negate: false,
    };
    if let Some((ifname, gateways)) = &plan.overlay {
        for gateway in gateways {
            tx.push(Op::AddRule {
                chain: CHAIN_POSTROUTING.into(),
                rule: Rule::new(
                    vec![
                        marked.clone(),
                        Match::Cmp {
                            field: Field::NfProto,
                            op: CmpOp::Eq,
                            value: Value::NfProto {
                                ipv6: gateway.is_ipv6(),
                            },
                        },
                        Match::Cmp {
                            field: Field::OifName,
                            op: CmpOp::Eq,
                            value: Value::IfName(ifname.as_str().into()),
                        },
                    ],
                    Action::Snat { addr: *gateway },
                )
                .with_comment(comment("service traffic into the overlay")),
            });
        }
    }
    tx.push(Op::AddRule {
        chain: CHAIN_POSTROUTING.into(),
        rule: Rule::new(vec![marked], Action::Masquerade)
            .with_comment(comment("service traffic the proxy marked")),
    });
    for pod in &plan.pod_cidrs {
        for cluster in plan
            .cluster_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == pod.addr().is_ipv4())
        {
            let (saddr, daddr) = if pod.addr().is_ipv4() {
                (Field::IpSaddr, Field::IpDaddr)
            } else {
                (Field::Ip6Saddr, Field::Ip6Daddr)
            };
            tx.push(Op::AddRule {
                chain: CHAIN_POSTROUTING.into(),
                rule: Rule::new(
                    vec![
                        Match::Prefix {
                            field: saddr,
                            net: *pod,
                            negate: false,
                        },
                        Match::Prefix {
                            field: daddr,
                            net: *cluster,
                            negate: true,
                        },
                    ],
                    Action::Masquerade,
                )
                .with_comment(comment("pod traffic leaving the cluster")),
            });
        }
    }
    tx
}

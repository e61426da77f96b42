//! The start-up probe: every expression kind the model can produce, tried in a scratch table
//! of its own (`inet skein_probe`, always deleted afterwards), one batch per kind, so a kernel
//! without a module skein needs is named at start rather than at the first rule that uses it.
//!
//! It runs in the namespace whose traffic skein serves, so no probe rule may ever see a
//! packet: the base chains (which prove the chain types) stay empty, and every rule is added
//! to a regular chain nothing jumps to. The kernel loads and checks an expression when its
//! rule is added, wherever the rule is; only the hook checks of a reachable chain are left
//! out, and those concern skein's own rules, not the kernel. (Rules on the hooks reset and
//! NATed the node's live connections while the table existed.)

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::Netlink;
use crate::NftError;
use crate::model::*;

const PROBE_TABLE: &str = "skein_probe";

/// Checks that the kernel accepts every expression kind skein's rules use; `Missing` names the
/// first feature it refuses. Leaves nothing behind, also when it fails.
pub fn probe(nl: &mut Netlink) -> Result<(), NftError> {
    let saved = std::mem::replace(&mut nl.table, PROBE_TABLE);
    let result = run(nl);
    let cleanup = remove(nl);
    nl.table = saved;
    result.and(cleanup)
}

fn remove(nl: &mut Netlink) -> Result<(), NftError> {
    if nl.table_exists()? {
        nl.apply_ops(&[Op::DeleteTable], None)?;
    }
    Ok(())
}

fn rule(chain: &str, matches: Vec<Match>, action: Action) -> Op {
    Op::AddRule {
        chain: chain.into(),
        rule: Rule::new(matches, action),
    }
}

fn cmp(field: Field, value: Value) -> Match {
    Match::Cmp {
        field,
        op: CmpOp::Eq,
        value,
    }
}

fn tcp() -> Match {
    cmp(Field::L4Proto, Value::Proto(L4Proto::Tcp))
}

/// A base chain of the probe's: it proves that the kernel has the chain type and stays empty.
fn base(name: &str, kind: ChainType, hook: HookPoint, priority: i32) -> Op {
    Op::AddChain(Chain {
        name: name.into(),
        hook: Some(Hook {
            kind,
            hook,
            priority,
        }),
    })
}

/// A chain for the probe's rules, on no hook and jumped to from none: no packet reaches it.
fn unhooked(name: &str) -> Op {
    Op::AddChain(Chain {
        name: name.into(),
        hook: None,
    })
}

/// The probe's batches, each with the feature it needs, in an order where each relies only on
/// what the ones before it proved.
pub(super) fn kinds() -> Vec<(&'static str, Vec<Op>)> {
    let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
    let mut dynamic = Set::new("recent", vec![KeyType::Ipv4Addr, KeyType::InetService]);
    dynamic.timeout = Some(Duration::from_secs(60));
    let mut ranges = Set::new("ranges", vec![KeyType::Ipv4Addr]);
    ranges.interval = true;
    let mut concat_ranges = Set::new(
        "concat_ranges",
        vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
    );
    concat_ranges.interval = true;
    let mut vmap = Set::new("vmap", vec![KeyType::Ipv4Addr, KeyType::InetService]);
    vmap.verdicts = true;
    let key3 = vec![Field::IpDaddr, Field::L4Proto, Field::ThDport];
    let mut endpoints = Set::new(
        "endpoints",
        vec![
            KeyType::Ipv4Addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Mark,
        ],
    );
    endpoints.data = vec![KeyType::Ipv4Addr, KeyType::InetService];
    vec![
        (
            "nf_tables (the inet family, regular and filter base chains)",
            vec![
                Op::AddTable,
                unhooked("jumped"),
                unhooked("filter"),
                unhooked("input"),
                base(
                    "hook_forward",
                    ChainType::Filter,
                    HookPoint::Forward,
                    priority::MANGLE,
                ),
                base(
                    "hook_input",
                    ChainType::Filter,
                    HookPoint::Input,
                    priority::FILTER,
                ),
            ],
        ),
        (
            "nat chains (nft_chain_nat)",
            vec![
                unhooked("nat_pre"),
                unhooked("nat_post"),
                base(
                    "hook_nat_pre",
                    ChainType::Nat,
                    HookPoint::Prerouting,
                    priority::DSTNAT,
                ),
                base(
                    "hook_nat_post",
                    ChainType::Nat,
                    HookPoint::Postrouting,
                    priority::SRCNAT,
                ),
            ],
        ),
        (
            "payload, meta, cmp, bitwise and verdicts (nf_tables core)",
            vec![
                rule(
                    "filter",
                    vec![
                        Match::Prefix {
                            field: Field::IpSaddr,
                            net: "10.0.0.0/8".parse().expect("literal"),
                            negate: true,
                        },
                        cmp(Field::IifName, Value::IfName("lo".into())),
                        cmp(Field::ThDport, Value::Port(53)),
                        Match::AnyBits {
                            field: Field::Mark,
                            bits: 0x4000,
                            negate: false,
                        },
                        Match::Masked {
                            field: Field::TcpFlags,
                            mask: TcpFlags::SYN | TcpFlags::RST,
                            value: TcpFlags::SYN,
                        },
                    ],
                    Action::Verdict(Verdict::Jump("jumped".into())),
                ),
                rule(
                    "jumped",
                    vec![cmp(Field::NfProto, Value::NfProto { ipv6: true })],
                    Action::Verdict(Verdict::Return),
                ),
            ],
        ),
        (
            "meta mark set (nft_meta)",
            vec![Op::AddRule {
                chain: "filter".into(),
                rule: Rule::new(vec![], Action::Continue)
                    .with_statement(Statement::SetMarkBits(0x4000)),
            }],
        ),
        (
            "notrack (nft_notrack)",
            vec![Op::AddRule {
                chain: "filter".into(),
                rule: Rule::new(vec![], Action::Continue).with_statement(Statement::NoTrack),
            }],
        ),
        (
            "counter (nft_counter)",
            vec![Op::AddRule {
                chain: "filter".into(),
                rule: Rule::new(vec![], Action::Continue).with_statement(Statement::Counter),
            }],
        ),
        (
            "ct state and status (nft_ct)",
            vec![rule(
                "filter",
                vec![
                    Match::AnyBits {
                        field: Field::CtState,
                        bits: CtState::NEW,
                        negate: false,
                    },
                    Match::AnyBits {
                        field: Field::CtStatus,
                        bits: CtStatus::DNAT,
                        negate: true,
                    },
                ],
                Action::Verdict(Verdict::Accept),
            )],
        ),
        (
            "fib (nft_fib_inet)",
            vec![rule(
                "filter",
                vec![cmp(Field::FibDaddrType, Value::AddrType(AddrType::Local))],
                Action::Continue,
            )],
        ),
        (
            "numgen (nft_numgen)",
            vec![rule(
                "filter",
                vec![Match::Random {
                    modulus: 2,
                    value: 1,
                }],
                Action::Continue,
            )],
        ),
        (
            "named sets and lookups (nft_set_hash, nft_lookup)",
            vec![
                Op::AddSet(Set::new(
                    "plain",
                    vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
                )),
                Op::AddElements {
                    set: "plain".into(),
                    elements: vec![Element::key(vec![
                        Value::Addr(v4([10, 0, 0, 1])),
                        Value::Proto(L4Proto::Tcp),
                        Value::Port(80),
                    ])],
                },
                rule(
                    "filter",
                    vec![Match::InSet {
                        key: key3.clone(),
                        set: "plain".into(),
                        negate: true,
                    }],
                    Action::Continue,
                ),
            ],
        ),
        (
            "verdict maps (nft_lookup)",
            vec![
                Op::AddSet(vmap),
                Op::AddElements {
                    set: "vmap".into(),
                    elements: vec![Element::mapped(
                        vec![Value::Addr(v4([10, 0, 0, 1])), Value::Port(80)],
                        Verdict::Goto("jumped".into()),
                    )],
                },
                rule(
                    "filter",
                    vec![],
                    Action::Vmap {
                        key: vec![Field::IpDaddr, Field::ThDport],
                        map: "vmap".into(),
                    },
                ),
            ],
        ),
        (
            "interval sets (nft_set_rbtree)",
            vec![
                Op::AddSet(ranges),
                Op::AddElements {
                    set: "ranges".into(),
                    elements: vec![Element::key(vec![Value::Net(
                        "10.1.0.0/16".parse().expect("literal"),
                    )])],
                },
            ],
        ),
        (
            "concatenated interval sets (nft_set_pipapo)",
            vec![
                Op::AddSet(concat_ranges),
                Op::AddElements {
                    set: "concat_ranges".into(),
                    elements: vec![Element::key(vec![
                        Value::Net("10.2.0.0/16".parse().expect("literal")),
                        Value::Proto(L4Proto::Udp),
                        Value::Port(53),
                    ])],
                },
            ],
        ),
        (
            "dynset with timeouts (nft_dynset)",
            vec![
                Op::AddSet(dynamic),
                Op::AddRule {
                    chain: "filter".into(),
                    rule: Rule::new(vec![], Action::Continue).with_statement(
                        Statement::UpdateSet {
                            set: "recent".into(),
                            key: vec![Field::IpSaddr, Field::ThDport],
                        },
                    ),
                },
            ],
        ),
        (
            "nat (nft_nat)",
            vec![
                rule(
                    "nat_pre",
                    vec![tcp()],
                    Action::Dnat {
                        addr: v4([10, 0, 0, 2]),
                        port: Some(8080),
                    },
                ),
                rule(
                    "nat_pre",
                    vec![],
                    Action::Dnat {
                        addr: "fd00::2".parse().expect("literal"),
                        port: None,
                    },
                ),
                rule(
                    "nat_post",
                    vec![],
                    Action::Snat {
                        addr: v4([10, 0, 0, 3]),
                    },
                ),
            ],
        ),
        (
            "nat to a data map's address and port, drawn by numgen (nft_nat, nft_lookup)",
            vec![
                Op::AddSet(endpoints),
                Op::AddElements {
                    set: "endpoints".into(),
                    elements: vec![Element::data(
                        vec![
                            Value::Addr(v4([10, 0, 0, 1])),
                            Value::Proto(L4Proto::Tcp),
                            Value::Port(80),
                            Value::Mark(0),
                        ],
                        vec![Value::Addr(v4([10, 0, 0, 2])), Value::Port(8080)],
                    )],
                },
                rule(
                    "nat_pre",
                    vec![],
                    Action::DnatMap {
                        key: vec![
                            Field::IpDaddr,
                            Field::L4Proto,
                            Field::ThDport,
                            Field::Random { modulus: 1 },
                        ],
                        map: "endpoints".into(),
                        ipv6: false,
                    },
                ),
            ],
        ),
        (
            "masquerade (nft_masq)",
            vec![rule("nat_post", vec![], Action::Masquerade)],
        ),
        (
            "reject (nft_reject_inet)",
            vec![
                rule("input", vec![tcp()], Action::Reject(Reject::TcpReset)),
                rule("input", vec![], Action::Reject(Reject::PortUnreachable)),
            ],
        ),
        (
            "notrack (nft_ct)",
            vec![rule("filter", vec![], Action::Notrack)],
        ),
        (
            "tcp option maxseg size set rt mtu (nft_rt, nft_exthdr)",
            vec![rule("filter", vec![tcp()], Action::MssClampToRouteMtu)],
        ),
    ]
}

fn run(nl: &mut Netlink) -> Result<(), NftError> {
    // A probe that died half-way leaves its table: start from none.
    remove(nl)?;
    for (i, (feature, ops)) in kinds().into_iter().enumerate() {
        match nl.apply_ops(&ops, None) {
            Ok(()) => {}
            // Not being allowed to write the ruleset is not a missing feature.
            Err(NftError::Rejected { reason, .. })
                if i > 0 || !reason.contains("Operation not permitted") =>
            {
                return Err(NftError::Missing(format!(
                    "{feature}: the kernel refused it ({reason})"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

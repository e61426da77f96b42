//! Kernel tests of the netlink backend, each in a private network namespace of its own thread
//! (it vanishes with the thread; the host's ruleset is never touched). `nft` is only a checker
//! here: what it lists must be what [`crate::render`] renders, rule for rule.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use skein_lab::skip::{require, require_root};

use super::*;
use crate::{MasqueradePlan, masquerade, overlay_mss_clamp};

/// Runs `f` on a thread in a fresh network namespace; panics propagate.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn kernel(what: &str) -> bool {
    require_root(what)
}

fn nft_present() -> bool {
    let ok = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    require(ok, "the nft program (used as a checker)")
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("nft runs");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `nft list table inet skein`'s rules by chain, and each chain's hook line.
fn listed_rules(listing: &str) -> BTreeMap<String, (Option<String>, Vec<String>)> {
    let mut out: BTreeMap<String, (Option<String>, Vec<String>)> = BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            chain = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        if line.starts_with("set ") || line.starts_with("map ") || line == "}" {
            chain = None;
            continue;
        }
        if let Some(c) = &chain {
            let entry = out.entry(c.clone()).or_default();
            if line.starts_with("type ") {
                entry.0 = Some(line.to_string());
            } else if !line.is_empty() {
                // Counters are state, not rule: the rendering says `counter`.
                entry.1.push(without_counter_values(line));
            }
        }
    }
    out
}

fn without_counter_values(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        if words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
        {
            i += 5;
        } else {
            i += 1;
        }
    }
    out.join(" ")
}

fn v4(s: &str) -> Value {
    Value::Addr(s.parse().expect("address"))
}

fn net(s: &str) -> Value {
    Value::Net(s.parse().expect("prefix"))
}

fn cmp(field: Field, value: Value) -> Match {
    Match::Cmp {
        field,
        op: CmpOp::Eq,
        value,
    }
}

fn neq(field: Field, value: Value) -> Match {
    Match::Cmp {
        field,
        op: CmpOp::Neq,
        value,
    }
}

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

fn add(chain: &str, rule: Rule) -> Op {
    Op::AddRule {
        chain: chain.into(),
        rule,
    }
}

fn set(name: &str, key: Vec<KeyType>, f: impl FnOnce(&mut Set)) -> Set {
    let mut s = Set::new(name, key);
    f(&mut s);
    s
}

/// Every set shape skein makes, with elements.
fn sample_sets() -> Vec<(Set, Vec<Element>)> {
    use KeyType::*;
    let jump = |c: &str| Verdict::Jump(c.into());
    vec![
        (
            set("svc_ips", vec![Ipv4Addr, InetProto, InetService], |s| {
                s.comment = Some(crate::comment("service addresses"));
            }),
            vec![
                Element::key(vec![
                    v4("10.43.0.10"),
                    Value::Proto(L4Proto::Udp),
                    Value::Port(53),
                ]),
                Element::key(vec![
                    v4("10.43.0.1"),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(443),
                ]),
            ],
        ),
        (
            set("svc_map", vec![Ipv4Addr, InetService], |s| {
                s.verdicts = true
            }),
            vec![
                Element::mapped(vec![v4("10.43.0.10"), Value::Port(53)], jump("svc-a")),
                Element::mapped(
                    vec![v4("10.43.0.11"), Value::Port(80)],
                    Verdict::Goto("svc-b".into()),
                ),
                Element::mapped(vec![v4("10.43.0.12"), Value::Port(81)], Verdict::Drop),
                Element::mapped(vec![v4("10.43.0.13"), Value::Port(82)], Verdict::Accept),
            ],
        ),
        (
            set("svc6_map", vec![Ipv6Addr, InetProto, InetService], |s| {
                s.verdicts = true
            }),
            vec![Element::mapped(
                vec![
                    Value::Addr("fd43::a".parse().expect("v6")),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(53),
                ],
                jump("svc-a"),
            )],
        ),
        (
            set("ports", vec![InetService], |_| {}),
            vec![
                Element::key(vec![Value::Port(80)]),
                Element::key(vec![Value::Port(443)]),
            ],
        ),
        (
            set("protos", vec![InetProto], |_| {}),
            vec![Element::key(vec![Value::Proto(L4Proto::Sctp)])],
        ),
        (
            set("recent", vec![Ipv4Addr, InetService], |s| {
                s.timeout = Some(Duration::from_secs(3 * 3600));
            }),
            vec![],
        ),
        (
            set("ifaces", vec![IfName], |_| {}),
            vec![
                Element::key(vec![Value::IfName("eth0".into())]),
                Element::key(vec![Value::IfName("skein-wg".into())]),
            ],
        ),
        (
            set("marks", vec![Mark], |_| {}),
            vec![
                Element::key(vec![Value::Mark(0x10)]),
                Element::key(vec![Value::Mark(0x4000)]),
            ],
        ),
        (
            set("ranges", vec![Ipv4Addr], |s| s.interval = true),
            vec![
                Element::key(vec![net("10.0.0.0/8")]),
                Element::key(vec![v4("192.168.1.1")]),
                Element::key(vec![net("192.168.2.0/24")]),
                Element::key(vec![net("255.255.255.0/24")]),
            ],
        ),
        (
            set("ranges6", vec![Ipv6Addr], |s| s.interval = true),
            vec![Element::key(vec![net("fd00::/64")])],
        ),
        (
            set("cranges", vec![Ipv4Addr, InetProto, InetService], |s| {
                s.interval = true
            }),
            vec![
                Element::key(vec![
                    net("10.42.0.0/16"),
                    Value::Proto(L4Proto::Tcp),
                    Value::Port(80),
                ]),
                Element::key(vec![
                    v4("10.43.0.1"),
                    Value::Proto(L4Proto::Udp),
                    Value::Port(53),
                ]),
            ],
        ),
        (
            set("no_elements", vec![Ipv6Addr, InetService], |_| {}),
            vec![],
        ),
        (
            set(
                "endpoints",
                vec![Ipv4Addr, InetProto, InetService, Mark],
                |s| s.data = vec![Ipv4Addr, InetService],
            ),
            vec![
                Element::data(
                    vec![
                        v4("10.43.0.10"),
                        Value::Proto(L4Proto::Tcp),
                        Value::Port(80),
                        Value::Mark(0),
                    ],
                    vec![v4("10.42.1.5"), Value::Port(8080)],
                ),
                Element::data(
                    vec![
                        v4("10.43.0.10"),
                        Value::Proto(L4Proto::Tcp),
                        Value::Port(80),
                        Value::Mark(1),
                    ],
                    vec![v4("10.42.2.5"), Value::Port(8080)],
                ),
            ],
        ),
        (
            set(
                "endpoints6",
                vec![Ipv6Addr, InetProto, InetService, Mark],
                |s| s.data = vec![Ipv6Addr, InetService],
            ),
            vec![Element::data(
                vec![
                    Value::Addr("fd43::a".parse().expect("v6")),
                    Value::Proto(L4Proto::Udp),
                    Value::Port(53),
                    Value::Mark(0),
                ],
                vec![
                    Value::Addr("fd42::5".parse().expect("v6")),
                    Value::Port(5353),
                ],
            )],
        ),
        (
            set("pairs", vec![Ipv4Addr, Ipv4Addr], |_| {}),
            vec![Element::key(vec![v4("10.42.0.5"), v4("10.42.0.5")])],
        ),
    ]
}

/// Every rule shape skein makes, by chain.
fn sample_rules() -> Vec<(&'static str, Rule)> {
    use Field::*;
    let tcp = || cmp(L4Proto, Value::Proto(crate::L4Proto::Tcp));
    let udp = || cmp(L4Proto, Value::Proto(crate::L4Proto::Udp));
    let verdict = |v| Action::Verdict(v);
    let key3 = vec![IpDaddr, L4Proto, ThDport];
    vec![
        (
            "nat_pre",
            Rule::new(
                vec![Match::InSet {
                    key: key3.clone(),
                    set: "svc_ips".into(),
                    negate: false,
                }],
                verdict(Verdict::Jump("svc-a".into())),
            )
            .with_comment(crate::comment("services")),
        ),
        (
            "nat_pre",
            Rule::new(
                vec![],
                Action::Vmap {
                    key: vec![IpDaddr, ThDport],
                    map: "svc_map".into(),
                },
            ),
        ),
        (
            "nat_pre",
            Rule::new(
                vec![],
                Action::Vmap {
                    key: vec![Ip6Daddr, L4Proto, ThDport],
                    map: "svc6_map".into(),
                },
            ),
        ),
        (
            "nat_pre",
            Rule::new(
                vec![
                    tcp(),
                    cmp(IpDaddr, v4("10.43.0.10")),
                    cmp(ThDport, Value::Port(53)),
                ],
                Action::Dnat {
                    addr: "10.42.1.5".parse().expect("v4"),
                    port: Some(5353),
                },
            ),
        ),
        (
            "nat_pre",
            Rule::new(
                vec![udp()],
                Action::Dnat {
                    addr: "fd42::5".parse().expect("v6"),
                    port: Some(53),
                },
            ),
        ),
        (
            "svc-a",
            Rule::new(
                vec![Match::Random {
                    modulus: 3,
                    value: 0,
                }],
                verdict(Verdict::Jump("svc-b".into())),
            ),
        ),
        (
            "svc-a",
            Rule::new(
                vec![],
                Action::DnatMap {
                    key: vec![IpDaddr, L4Proto, ThDport, Random { modulus: 2 }],
                    map: "endpoints".into(),
                    ipv6: false,
                },
            ),
        ),
        (
            "svc-a",
            Rule::new(
                vec![],
                Action::DnatMap {
                    key: vec![Ip6Daddr, L4Proto, ThDport, Random { modulus: 3 }],
                    map: "endpoints6".into(),
                    ipv6: true,
                },
            ),
        ),
        (
            "svc-a",
            Rule::new(
                vec![Match::InSet {
                    key: vec![IpSaddr, IpDaddr],
                    set: "pairs".into(),
                    negate: false,
                }],
                Action::Continue,
            )
            .with_statement(Statement::SetMarkBits(0x4000)),
        ),
        (
            "svc-a",
            Rule::new(
                vec![],
                Action::Dnat {
                    addr: "10.42.1.6".parse().expect("v4"),
                    port: None,
                },
            ),
        ),
        (
            "svc-b",
            Rule::new(
                vec![Match::Prefix {
                    field: IpSaddr,
                    net: "10.42.0.0/16".parse().expect("net"),
                    negate: true,
                }],
                Action::Continue,
            )
            .with_statement(Statement::SetMarkBits(crate::MASQUERADE_MARK)),
        ),
        ("svc-b", Rule::new(vec![], verdict(Verdict::Return))),
        (
            "fw",
            Rule::new(
                vec![
                    Match::AnyBits {
                        field: CtState,
                        bits: crate::CtState::NEW,
                        negate: false,
                    },
                    Match::InSet {
                        key: vec![ThDport],
                        set: "ports".into(),
                        negate: true,
                    },
                ],
                verdict(Verdict::Drop),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::AnyBits {
                    field: CtStatus,
                    bits: crate::CtStatus::DNAT,
                    negate: false,
                }],
                verdict(Verdict::Accept),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![
                    cmp(FibDaddrType, Value::AddrType(AddrType::Local)),
                    tcp(),
                    cmp(ThDport, Value::Port(30000)),
                ],
                verdict(Verdict::Accept),
            )
            .with_statement(Statement::Counter),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::AnyBits {
                    field: Mark,
                    bits: 0x4000,
                    negate: true,
                }],
                verdict(Verdict::Return),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![
                    cmp(IifName, Value::IfName("eth0".into())),
                    neq(OifName, Value::IfName("lo".into())),
                    Match::Prefix {
                        field: Ip6Saddr,
                        net: "fd00::/64".parse().expect("net"),
                        negate: false,
                    },
                    Match::Prefix {
                        field: Ip6Daddr,
                        net: "fd01::/48".parse().expect("net"),
                        negate: true,
                    },
                ],
                verdict(Verdict::Goto("svc-b".into())),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![cmp(Mark, Value::Mark(0x10)), neq(ThSport, Value::Port(53))],
                Action::Continue,
            )
            .with_statement(Statement::SetMarkBits(0x4000)),
        ),
        (
            "fw",
            Rule::new(vec![], Action::Continue).with_statement(Statement::UpdateSet {
                set: "recent".into(),
                key: vec![IpSaddr, ThDport],
            }),
        ),
        (
            "fw",
            Rule::new(
                vec![
                    cmp(NfProto, Value::NfProto { ipv6: true }),
                    Match::InSet {
                        key: vec![IifName],
                        set: "ifaces".into(),
                        negate: false,
                    },
                ],
                verdict(Verdict::Accept),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::InSet {
                    key: vec![IpSaddr],
                    set: "ranges".into(),
                    negate: false,
                }],
                verdict(Verdict::Drop),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::InSet {
                    key: vec![Ip6Saddr],
                    set: "ranges6".into(),
                    negate: true,
                }],
                verdict(Verdict::Drop),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::InSet {
                    key: key3,
                    set: "cranges".into(),
                    negate: false,
                }],
                verdict(Verdict::Accept),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![
                    Match::InSet {
                        key: vec![L4Proto],
                        set: "protos".into(),
                        negate: false,
                    },
                    Match::InSet {
                        key: vec![Mark],
                        set: "marks".into(),
                        negate: false,
                    },
                ],
                verdict(Verdict::Accept),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::Masked {
                    field: Mark,
                    mask: 0xff00,
                    value: 0x100,
                }],
                verdict(Verdict::Accept),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::Masked {
                    field: TcpFlags,
                    mask: crate::TcpFlags::SYN | crate::TcpFlags::RST,
                    value: crate::TcpFlags::SYN,
                }],
                Action::Continue,
            )
            .with_statement(Statement::Counter),
        ),
        (
            "fw",
            Rule::new(
                vec![Match::AnyBits {
                    field: CtState,
                    bits: crate::CtState::ESTABLISHED | crate::CtState::RELATED,
                    negate: false,
                }],
                verdict(Verdict::Accept),
            ),
        ),
        (
            "fw",
            Rule::new(
                vec![
                    Match::AnyBits {
                        field: CtState,
                        bits: crate::CtState::UNTRACKED,
                        negate: true,
                    },
                    cmp(IpSaddr, v4("10.1.2.3")),
                    cmp(Ip6Daddr, Value::Addr("fd00::1".parse().expect("v6"))),
                ],
                Action::Continue,
            ),
        ),
        (
            "inp",
            Rule::new(
                vec![tcp(), cmp(ThDport, Value::Port(31000))],
                Action::Reject(Reject::TcpReset),
            ),
        ),
        (
            "inp",
            Rule::new(
                vec![cmp(ThDport, Value::Port(31001))],
                Action::Reject(Reject::PortUnreachable),
            ),
        ),
        (
            "raw_out",
            Rule::new(
                vec![
                    cmp(IpDaddr, v4("10.43.0.10")),
                    udp(),
                    cmp(ThDport, Value::Port(53)),
                ],
                Action::Notrack,
            ),
        ),
    ]
}

/// A transaction with every rule shape, set type, map, interval set and element, and the
/// builders' masquerade and MSS chains.
fn sample() -> Transaction {
    let mut tx = Transaction::default();
    tx.push(Op::AddTable);
    for name in ["svc-a", "svc-b"] {
        tx.push(Op::AddChain(Chain {
            name: name.into(),
            hook: None,
        }));
    }
    tx.push(base("fw", ChainType::Filter, HookPoint::Prerouting, -110))
        .push(base(
            "nat_pre",
            ChainType::Nat,
            HookPoint::Prerouting,
            priority::DSTNAT,
        ))
        .push(base(
            "inp",
            ChainType::Filter,
            HookPoint::Input,
            priority::FILTER,
        ))
        .push(base(
            "raw_out",
            ChainType::Filter,
            HookPoint::Output,
            priority::RAW,
        ));
    for (s, elements) in sample_sets() {
        let name = s.name.clone();
        tx.push(Op::AddSet(s));
        if !elements.is_empty() {
            tx.push(Op::AddElements {
                set: name,
                elements,
            });
        }
    }
    for (chain, rule) in sample_rules() {
        tx.push(add(chain, rule));
    }
    let wg = skein_names::IfName::new("skein-wg").expect("name");
    let plan = MasqueradePlan {
        pod_cidrs: vec![
            "10.42.1.0/24".parse().expect("net"),
            "fd42:1::/64".parse().expect("net"),
        ],
        cluster_cidrs: vec![
            "10.42.0.0/16".parse().expect("net"),
            "fd42::/48".parse().expect("net"),
        ],
        overlay: Some((
            wg.clone(),
            vec![
                "10.42.1.1".parse().expect("v4"),
                "fd42:1::1".parse().expect("v6"),
            ],
        )),
    };
    tx.ops.extend(masquerade(&plan).ops);
    tx.ops.extend(overlay_mss_clamp(&wg).ops);
    tx
}

/// The rules of a transaction by chain, in order.
fn rules_by_chain(tx: &Transaction) -> BTreeMap<String, Vec<&Rule>> {
    let mut out: BTreeMap<String, Vec<&Rule>> = BTreeMap::new();
    for op in &tx.ops {
        if let Op::AddRule { chain, rule } = op {
            out.entry(chain.clone()).or_default().push(rule);
        }
    }
    out
}

#[test]
fn nft_lists_every_rule_as_skein_renders_it_and_dumps_read_back() {
    if !kernel("nftables in a network namespace") || !nft_present() {
        return;
    }
    in_netns(|| {
        let mut nl = Netlink::new().expect("socket");
        let tx = sample();
        nl.apply(&tx)
            .unwrap_or_else(|e| panic!("{e}\n{}", tx.script()));
        let listing = nft(&["list", "table", "inet", "skein"]);
        if std::env::var_os("SKEIN_NFT_SHOW").is_some() {
            eprintln!("{listing}");
        }
        // The other listings read the same user data: handles, and JSON.
        nft(&["-a", "list", "table", "inet", "skein"]);
        let json = nft(&["-j", "list", "table", "inet", "skein"]);
        assert!(json.contains("\"comment\": \"services\""), "{json}");
        let listed = listed_rules(&listing);
        let mut differences = Vec::new();
        for (chain, rules) in rules_by_chain(&tx) {
            let got = listed
                .get(&chain)
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            let want: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
            for i in 0..got.len().max(want.len()) {
                let (g, w) = (got.get(i), want.get(i));
                if g != w {
                    differences.push(format!("{chain}[{i}]\n  nft:  {g:?}\n  ours: {w:?}"));
                }
            }
        }
        // Base chains' hook lines too: the same hook and priority as rendered.
        for op in &tx.ops {
            if let Op::AddChain(Chain {
                name,
                hook: Some(_),
            }) = op
            {
                let script = Transaction {
                    ops: vec![op.clone()],
                }
                .script();
                let ours = script
                    .split(" { ")
                    .nth(1)
                    .map(|s| s.trim_end().trim_end_matches('}').trim().to_string());
                let got = listed.get(name).and_then(|(h, _)| h.clone());
                if got != ours {
                    differences.push(format!("chain {name}\n  nft:  {got:?}\n  ours: {ours:?}"));
                }
            }
        }
        assert!(
            differences.is_empty(),
            "{}\n\nnft listed:\n{listing}",
            differences.join("\n")
        );

        // The dump: every rule's fingerprint, every set's elements.
        let dump = nl.dump().expect("dump").expect("the table exists");
        for (chain, rules) in rules_by_chain(&tx) {
            let got: Vec<Option<u64>> = dump.chains[&chain]
                .rules
                .iter()
                .map(|r| r.fingerprint)
                .collect();
            let want: Vec<Option<u64>> =
                rules.iter().map(|r| Some(crate::fingerprint(r))).collect();
            assert_eq!(got, want, "fingerprints of {chain}");
        }
        assert!(dump.chains["fw"].base && !dump.chains["svc-a"].base);
        for (s, elements) in sample_sets() {
            let want: BTreeSet<Vec<u8>> = elements.iter().map(|e| element_bytes(&s, e)).collect();
            assert_eq!(dump.sets[&s.name].elements, want, "elements of {}", s.name);
        }
        assert_eq!(dump.generation, nl.generation().expect("generation"));
        let chain = nl.chain("fw").expect("chain").expect("exists");
        assert_eq!(chain, dump.chains["fw"]);
        assert_eq!(nl.chain("none").expect("chain"), None);

        // Applying it again changes nothing but the rules, which are appended again.
        nl.apply(&masquerade(&MasqueradePlan::default()))
            .expect("re-apply");

        // Deleting a rule by handle, then elements, then flushing and deleting.
        let victim = dump.chains["svc-b"].rules[0].handle;
        let mut tx = Transaction::default();
        tx.push(Op::DeleteRule {
            chain: "svc-b".into(),
            handle: victim,
        });
        let (ranges, range_elements) = sample_sets()
            .into_iter()
            .find(|(s, _)| s.name == "ranges")
            .expect("ranges");
        tx.push(Op::DeleteElements {
            set: "ranges".into(),
            elements: range_elements[..2].to_vec(),
        });
        let (cranges, crange_elements) = sample_sets()
            .into_iter()
            .find(|(s, _)| s.name == "cranges")
            .expect("cranges");
        tx.push(Op::DeleteElements {
            set: "cranges".into(),
            elements: crange_elements[..1].to_vec(),
        });
        nl.apply(&tx).expect("deletes");
        let after = nl.dump().expect("dump").expect("table");
        assert_eq!(after.chains["svc-b"].rules.len(), 1);
        assert!(
            after.chains["svc-b"]
                .rules
                .iter()
                .all(|r| r.handle != victim)
        );
        let left: BTreeSet<Vec<u8>> = range_elements[2..]
            .iter()
            .map(|e| element_bytes(&ranges, e))
            .collect();
        assert_eq!(after.sets["ranges"].elements, left);
        let left: BTreeSet<Vec<u8>> = crange_elements[1..]
            .iter()
            .map(|e| element_bytes(&cranges, e))
            .collect();
        assert_eq!(after.sets["cranges"].elements, left);

        let mut tx = Transaction::default();
        tx.push(Op::FlushChain("fw".into()))
            .push(Op::FlushSet("svc_ips".into()))
            .push(Op::FlushChain("nat_pre".into()))
            .push(Op::FlushSet("svc_map".into()))
            .push(Op::DeleteSet("svc_map".into()))
            .push(Op::DeleteChain("raw_out".into()));
        nl.apply(&tx).expect("flushes and deletes");
        let after = nl.dump().expect("dump").expect("table");
        assert!(after.chains["fw"].rules.is_empty());
        assert!(!after.chains.contains_key("raw_out"));
        assert!(after.sets["svc_ips"].elements.is_empty());
        assert!(!after.sets.contains_key("svc_map"));

        nl.apply(&Transaction {
            ops: vec![Op::DeleteTable],
        })
        .expect("delete table");
        assert_eq!(nl.dump().expect("dump"), None);
        assert_eq!(nl.chain("fw").expect("chain"), None);
    });
}

#[test]
fn a_refused_op_is_named_in_nft_syntax_and_nothing_of_its_batch_applies() {
    if !kernel("nftables in a network namespace") {
        return;
    }
    in_netns(|| {
        let mut nl = Netlink::new().expect("socket");
        let mut tx = Transaction::default();
        tx.push(Op::AddTable)
            .push(Op::AddChain(Chain {
                name: "ok".into(),
                hook: None,
            }))
            .push(add(
                "ok",
                Rule::new(vec![], Action::Verdict(Verdict::Jump("missing".into()))),
            ));
        let err = nl.apply(&tx).expect_err("a jump to a missing chain");
        let text = err.to_string();
        assert!(
            text.contains("add rule inet skein ok jump missing"),
            "{text}"
        );
        assert!(text.contains("No such file or directory"), "{text}");
        assert_eq!(nl.dump().expect("dump"), None, "the batch applied nothing");

        // Element errors name the message's elements.
        tx.ops.pop();
        tx.push(Op::AddSet(Set::new("s", vec![KeyType::Ipv4Addr])));
        nl.apply(&tx).expect("table and set");
        let elements: Vec<Element> = (0..10u8)
            .map(|i| Element::key(vec![v4(&format!("10.0.0.{i}"))]))
            .collect();
        let err = nl
            .apply(&Transaction {
                ops: vec![Op::AddElements {
                    set: "nope".into(),
                    elements,
                }],
            })
            .expect_err("a missing set");
        let text = err.to_string();
        assert!(
            text.contains(
                "add element inet skein nope { 10.0.0.0, 10.0.0.1, 10.0.0.2, 10.0.0.3 } (and 6 more"
            ),
            "{text}"
        );

        // A generation that moved on is a race, not a refusal.
        let generation = nl.generation().expect("generation");
        // (A batch that changes nothing commits nothing, and leaves the generation.)
        nl.apply(&Transaction {
            ops: vec![Op::AddChain(Chain {
                name: "other".into(),
                hook: None,
            })],
        })
        .expect("a commit");
        match nl.apply_at(
            &Transaction {
                ops: vec![Op::AddTable],
            },
            generation,
        ) {
            Err(NftError::Raced { expected, found }) => {
                assert_eq!(expected, generation);
                assert_ne!(found, generation);
            }
            other => panic!("expected a race, got {other:?}"),
        }
        let now = nl.generation().expect("generation");
        nl.apply_at(
            &Transaction {
                ops: vec![Op::AddTable],
            },
            now,
        )
        .expect("at the current generation");
    });
}

#[test]
fn apply_bounded_writes_fifty_thousand_elements_in_order() {
    if !kernel("nftables in a network namespace") {
        return;
    }
    in_netns(|| {
        let mut nl = Netlink::new().expect("socket");
        let s = Set::new("big", vec![KeyType::Ipv4Addr, KeyType::InetService]);
        let elements: Vec<Element> = (0..50_000u32)
            .map(|i| {
                Element::key(vec![
                    Value::Addr(IpAddr::V4((0x0a00_0000 + i).into())),
                    Value::Port((i % 60_000) as u16),
                ])
            })
            .collect();
        let mut tx = Transaction::default();
        tx.push(Op::AddTable)
            .push(Op::AddSet(s.clone()))
            .push(Op::AddElements {
                set: "big".into(),
                elements: elements.clone(),
            });
        let start = Instant::now();
        nl.apply_bounded(&tx, 5_000).expect("bounded apply");
        eprintln!("50,000 elements in batches of 5,000: {:?}", start.elapsed());
        let dump = nl.dump().expect("dump").expect("table");
        let want: BTreeSet<Vec<u8>> = elements.iter().map(|e| element_bytes(&s, e)).collect();
        assert_eq!(dump.sets["big"].elements.len(), 50_000);
        assert_eq!(dump.sets["big"].elements, want);
        // The same as one batch: one transaction of 50,000 elements in one datagram.
        let mut tx = Transaction::default();
        tx.push(Op::FlushSet("big".into())).push(Op::AddElements {
            set: "big".into(),
            elements,
        });
        nl.apply(&tx).expect("one batch");
        assert_eq!(
            nl.dump().expect("dump").expect("table").sets["big"].elements,
            want
        );
    });
}

#[test]
fn the_probe_passes_and_leaves_no_table() {
    if !kernel("nftables in a network namespace") {
        return;
    }
    in_netns(|| {
        let mut nl = Netlink::new().expect("socket");
        nl.apply(&Transaction {
            ops: vec![Op::AddTable],
        })
        .expect("skein's table");
        probe(&mut nl).expect("the probe");
        // Only skein's own table is left.
        assert!(nl.table_exists().expect("table"));
        nl.table = "skein_probe";
        assert!(
            !nl.table_exists().expect("probe table"),
            "the probe left its table"
        );
        nl.table = crate::TABLE;
    });
}

/// What keeps the probe off the traffic, checked on its batches: every rule is in a chain on
/// no hook, and every base chain stays empty.
#[test]
fn every_probe_rule_is_in_a_chain_no_packet_reaches() {
    let kinds = super::probe::kinds();
    let hooked: BTreeSet<String> = kinds
        .iter()
        .flat_map(|(_, ops)| ops)
        .filter_map(|op| match op {
            Op::AddChain(c) if c.hook.is_some() => Some(c.name.clone()),
            _ => None,
        })
        .collect();
    assert!(!hooked.is_empty(), "the probe proves base chains too");
    for (feature, ops) in &kinds {
        for op in ops {
            if let Op::AddRule { chain, .. } = op {
                assert!(
                    !hooked.contains(chain),
                    "{feature}: a rule on the hooked chain {chain}"
                );
            }
            if let Op::AddRule { rule, .. } = op
                && let Action::Verdict(Verdict::Jump(to) | Verdict::Goto(to)) = &rule.action
            {
                assert!(!hooked.contains(to), "{feature}: a jump to {to}");
            }
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// The probe runs on a live node, in the namespace whose traffic skein serves: a rule of its
/// on a hook would DNAT, SNAT or reset that traffic for as long as its table lives (a start
/// that reset the daemon's own API connections left its watches silent). Streams from a peer
/// namespace over a veth pair, a message and its echo at a time, live through twenty probes.
#[test]
fn the_probe_leaves_the_traffic_of_its_namespace_alone() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc;
    const STREAMS: usize = 8;
    if !kernel("nftables in a network namespace") {
        return;
    }
    in_netns(|| {
        ip(&[
            "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
        ]);
        // The peer: a namespace of its own, held by its thread until the streams exist (the
        // sockets hold it after that).
        let (tid_tx, tid_rx) = mpsc::channel::<String>();
        let (port_tx, port_rx) = mpsc::channel::<u16>();
        let peer = std::thread::spawn(move || -> Vec<TcpStream> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let me = std::fs::read_link("/proc/thread-self").expect("thread-self");
            let tid = me.file_name().expect("tid").to_string_lossy().into_owned();
            tid_tx.send(tid).expect("send tid");
            let port = port_rx.recv().expect("port");
            ip(&["addr", "add", "192.0.2.2/24", "dev", "probe1"]);
            ip(&["link", "set", "probe1", "up"]);
            (0..STREAMS)
                .map(|_| TcpStream::connect(("192.0.2.1", port)).expect("connect"))
                .collect()
        });
        let tid = tid_rx.recv().expect("the peer's thread id");
        ip(&["link", "set", "probe1", "netns", &tid]);
        ip(&["addr", "add", "192.0.2.1/24", "dev", "probe0"]);
        ip(&["link", "set", "probe0", "up"]);
        let listener = TcpListener::bind("192.0.2.1:0").expect("listen");
        port_tx
            .send(listener.local_addr().expect("address").port())
            .expect("send port");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let done = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU64::new(0));
        let talkers: Vec<_> = peer
            .join()
            .expect("the peer's streams")
            .into_iter()
            .map(|mut client| {
                client
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let stop = done.clone();
                let total = echoes.clone();
                std::thread::spawn(move || -> Result<u64, String> {
                    let mut echoed = 0u64;
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        client
                            .write_all(&[7u8; 64])
                            .map_err(|e| format!("send: {e}"))?;
                        client
                            .read_exact(&mut buf)
                            .map_err(|e| format!("echo {echoed}: {e}"))?;
                        echoed += 1;
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(echoed)
                })
            })
            .collect();
        // Every stream is talking before the probes, and still after them.
        let progressed = |beyond: u64| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while echoes.load(Ordering::Relaxed) < beyond + 10 * STREAMS as u64
                && Instant::now() < deadline
            {
                std::thread::yield_now();
            }
            echoes.load(Ordering::Relaxed)
        };
        let before = progressed(0);
        let mut nl = Netlink::new().expect("socket");
        for _ in 0..20 {
            probe(&mut nl).expect("the probe");
        }
        progressed(before);
        done.store(true, Ordering::Relaxed);
        let outcomes: Vec<_> = talkers
            .into_iter()
            .map(|t| t.join().expect("talker"))
            .collect();
        assert!(
            outcomes.iter().all(|o| o.as_ref().is_ok_and(|n| *n > 0)),
            "streams broke while the probe ran: {outcomes:?}"
        );
    });
}

/// A service-proxy-sized ruleset: `chains` chains of 5 rules each behind one verdict map of
/// `elements` entries, reached from a nat base chain (so each commit validates the jumps).
fn large(chains: usize, elements: usize) -> Transaction {
    use Field::*;
    let mut tx = Transaction::default();
    let mut map = Set::new(
        "svc",
        vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
    );
    map.verdicts = true;
    tx.push(Op::AddTable)
        .push(base(
            "nat_pre",
            ChainType::Nat,
            HookPoint::Prerouting,
            priority::DSTNAT,
        ))
        .push(Op::AddSet(map));
    for c in 0..chains {
        let name = format!("svc-{c}");
        tx.push(Op::AddChain(Chain {
            name: name.clone(),
            hook: None,
        }));
        let ep = |k: u32| IpAddr::V4((0x0a2a_0000 + (c as u32 * 4 + k) % 65_000).into());
        let tcp = || cmp(L4Proto, Value::Proto(crate::L4Proto::Tcp));
        let rules = [
            Rule::new(
                vec![Match::Prefix {
                    field: IpSaddr,
                    net: "10.42.0.0/16".parse().expect("net"),
                    negate: true,
                }],
                Action::Continue,
            )
            .with_statement(Statement::SetMarkBits(crate::MASQUERADE_MARK)),
            Rule::new(
                vec![
                    Match::Random {
                        modulus: 3,
                        value: 0,
                    },
                    tcp(),
                ],
                Action::Dnat {
                    addr: ep(0),
                    port: Some(8080),
                },
            ),
            Rule::new(
                vec![
                    Match::Random {
                        modulus: 2,
                        value: 0,
                    },
                    tcp(),
                ],
                Action::Dnat {
                    addr: ep(1),
                    port: Some(8080),
                },
            ),
            Rule::new(
                vec![tcp()],
                Action::Dnat {
                    addr: ep(2),
                    port: Some(8080),
                },
            ),
            Rule::new(vec![], Action::Verdict(Verdict::Return)).with_statement(Statement::Counter),
        ];
        for rule in rules {
            tx.push(add(
                &name,
                rule.with_comment(crate::comment("default/service:http")),
            ));
        }
    }
    tx.push(add(
        "nat_pre",
        Rule::new(
            vec![],
            Action::Vmap {
                key: vec![IpDaddr, L4Proto, ThDport],
                map: "svc".into(),
            },
        ),
    ));
    let elements: Vec<Element> = (0..elements as u32)
        .map(|i| {
            Element::mapped(
                vec![
                    Value::Addr(IpAddr::V4((0x0a2b_0000 + i).into())),
                    Value::Proto(crate::L4Proto::Tcp),
                    Value::Port(80),
                ],
                Verdict::Goto(format!("svc-{}", i as usize % chains.max(1))),
            )
        })
        .collect();
    tx.push(Op::AddElements {
        set: "svc".into(),
        elements,
    });
    tx
}

#[test]
#[ignore = "a measurement, not a check: cargo test -p skein-nft -- --ignored --nocapture timing"]
fn timing_of_a_large_ruleset_by_batch_size() {
    if !kernel("nftables in a network namespace") {
        return;
    }
    let tx = large(10_000, 60_000);
    eprintln!("{} ops, weight {}", tx.ops.len(), tx.weight());
    // usize::MAX: the whole transaction as one batch.
    for max in [1_000, 5_000, 20_000, usize::MAX] {
        let tx = tx.clone();
        let took = in_netns(move || {
            let mut nl = Netlink::new().expect("socket");
            let start = Instant::now();
            nl.apply_bounded(&tx, max).expect("apply");
            let took = start.elapsed();
            let dump_start = Instant::now();
            let dump = nl.dump().expect("dump").expect("table");
            assert_eq!(dump.sets["svc"].elements.len(), 60_000);
            (took, dump_start.elapsed())
        });
        eprintln!(
            "10,000 chains x 5 rules + 60,000 map elements, batches of {}: apply {:?}, dump {:?}",
            if max == usize::MAX {
                "everything".to_string()
            } else {
                max.to_string()
            },
            took.0,
            took.1
        );
    }
}

/// A current-thread runtime for the change monitor's socket (its reactor), in the test's
/// namespace thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Whether `changes` reports a commit within `within`.
async fn reports(changes: &mut crate::RulesetChanges, within: Duration) -> bool {
    tokio::time::timeout(within, changes.next())
        .await
        .map(|r| r.expect("monitor"))
        .is_ok()
}

#[test]
fn skeins_own_commits_wake_no_subscription_and_another_programs_does() {
    if !(kernel("nftables in a network namespace") && nft_present()) {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut changes = crate::RulesetChanges::subscribe().expect("subscribe");
            let mut nl = Netlink::new().expect("socket");
            let s = Set::new("own", vec![KeyType::Ipv4Addr]);
            let mut tx = Transaction::default();
            tx.push(Op::AddTable)
                .push(Op::AddSet(s))
                .push(Op::AddElements {
                    set: "own".into(),
                    elements: (1..=100u32)
                        .map(|i| Element::key(vec![Value::Addr(IpAddr::V4(i.into()))]))
                        .collect(),
                });
            nl.apply(&tx).expect("apply");
            assert!(
                !reports(&mut changes, Duration::from_millis(500)).await,
                "skein's own commit reached its own subscription"
            );
            // The commit was the only one: its generation is known, and is the kernel's.
            let ours = nl.committed_generation().expect("the commit's generation");
            assert_eq!(nl.generation().expect("generation"), ours);
            // Another program's commit to its own table wakes nothing, and carries what skein
            // knows of its table along to the new generation.
            nft(&["add", "table", "ip", "someone_else"]);
            assert!(!reports(&mut changes, Duration::from_millis(500)).await);
            let now = nl.generation().expect("generation");
            assert_eq!(now, ours.wrapping_add(1));
            assert_eq!(changes.advance(Some(ours)), Some(now));
            let ours = now;
            // The socket is back in the group: nft's commit is heard, and moves the generation.
            nft(&["add", "chain", "inet", "skein", "edited"]);
            assert!(
                reports(&mut changes, Duration::from_secs(5)).await,
                "another program's commit to skein's table went unheard"
            );
            let now = nl.generation().expect("generation");
            assert_ne!(now, ours);
            // A commit that touched skein's table is not carried over.
            assert_eq!(changes.advance(Some(ours)), Some(ours));
        })
    });
}

#[test]
fn a_commit_that_moved_the_generation_beyond_its_own_reports_a_missed_change() {
    if !kernel("nftables in a network namespace") {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut changes = crate::RulesetChanges::subscribe().expect("subscribe");
            let netns = crate::monitor::netns_id();
            // One commit of skein's own: the generation moved by one, nothing was hidden.
            let quiet = crate::monitor::Quiet::begin(netns, || Some(7)).expect("subscribed");
            quiet.end(true, || Some(8));
            assert!(!reports(&mut changes, Duration::from_millis(300)).await);
            // A refused batch commits nothing: a move of one was someone else's.
            let quiet = crate::monitor::Quiet::begin(netns, || Some(8)).expect("subscribed");
            quiet.end(false, || Some(9));
            assert!(reports(&mut changes, Duration::from_secs(1)).await);
            // Two moves for one commit: one was someone else's.
            let quiet = crate::monitor::Quiet::begin(netns, || Some(9)).expect("subscribed");
            quiet.end(true, || Some(11));
            assert!(reports(&mut changes, Duration::from_secs(1)).await);
            // An unreadable generation: anything may have happened.
            let quiet = crate::monitor::Quiet::begin(netns, || None).expect("subscribed");
            quiet.end(true, || Some(12));
            assert!(reports(&mut changes, Duration::from_secs(1)).await);
            // Subscriptions in another namespace are not this commit's.
            assert!(crate::monitor::Quiet::begin(netns.map(|n| n + 1), || Some(1)).is_none());
        })
    });
}

//! Golden renderings of the pure rule builders, OwnedChain against a fake backend, and the
//! change monitor's datagram scan. The kernel tests of the netlink backend are in
//! `netlink/tests.rs`.

use super::*;

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|c| c.parse().expect("cidr")).collect()
}

fn plan(pods: &[&str], cluster: &[&str]) -> MasqueradePlan {
    MasqueradePlan {
        pod_cidrs: nets(pods),
        cluster_cidrs: nets(cluster),
        overlay: None,
    }
}

fn wg() -> skein_names::IfName {
    skein_names::IfName::new("skein-wg").expect("valid")
}

#[test]
fn masquerade_rebuilds_its_chain_in_one_transaction() {
    let tx = masquerade(&plan(&["10.42.1.0/24"], &["10.42.0.0/16"]));
    assert_eq!(
        tx.script(),
        "add table inet skein\n\
         add chain inet skein postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
         flush chain inet skein postrouting\n\
         add rule inet skein postrouting meta mark & 0x00004000 != 0x00000000 masquerade comment \"service traffic the proxy marked\"\n\
         add rule inet skein postrouting ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade comment \"pod traffic leaving the cluster\"\n"
    );
}

#[test]
fn through_the_overlay_marked_traffic_takes_the_gateway_address() {
    let mut p = plan(
        &["10.42.1.0/24", "fd42:1::/64"],
        &["10.42.0.0/16", "fd42::/48"],
    );
    p.overlay = Some((
        wg(),
        vec!["10.42.1.1".parse().unwrap(), "fd42:1::1".parse().unwrap()],
    ));
    let script = masquerade(&p).script();
    let rules: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("add rule inet skein postrouting "))
        .collect();
    assert_eq!(
        rules,
        [
            "meta mark & 0x00004000 != 0x00000000 meta nfproto ipv4 oifname \"skein-wg\" snat ip to 10.42.1.1 comment \"service traffic into the overlay\"",
            "meta mark & 0x00004000 != 0x00000000 meta nfproto ipv6 oifname \"skein-wg\" snat ip6 to fd42:1::1 comment \"service traffic into the overlay\"",
            "meta mark & 0x00004000 != 0x00000000 masquerade comment \"service traffic the proxy marked\"",
            "ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade comment \"pod traffic leaving the cluster\"",
            "ip6 saddr fd42:1::/64 ip6 daddr != fd42::/48 masquerade comment \"pod traffic leaving the cluster\"",
        ]
    );
}

#[test]
fn no_pod_cidr_means_only_the_marked_rule() {
    let script = masquerade(&plan(&[], &["10.42.0.0/16"])).script();
    assert_eq!(script.matches("add rule").count(), 1, "{script}");
    assert!(script.contains("flush chain inet skein postrouting"));
}

#[test]
fn each_chain_is_rebuilt_without_touching_the_others() {
    for tx in [masquerade(&plan(&[], &[])), overlay_mss_clamp(&wg())] {
        assert!(
            !tx.ops
                .iter()
                .any(|op| matches!(op, Op::DeleteTable | Op::DeleteChain(_))),
            "{}",
            tx.script()
        );
        let flushed: Vec<&Op> = tx
            .ops
            .iter()
            .filter(|op| matches!(op, Op::FlushChain(_)))
            .collect();
        assert_eq!(flushed.len(), 1, "{}", tx.script());
    }
}

#[test]
fn mss_is_clamped_both_ways_through_the_overlay() {
    assert_eq!(
        overlay_mss_clamp(&wg()).script(),
        "add table inet skein\n\
         add chain inet skein overlay_mss { type filter hook forward priority mangle; policy accept; }\n\
         flush chain inet skein overlay_mss\n\
         add rule inet skein overlay_mss oifname \"skein-wg\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment \"MSS clamp on the overlay\"\n\
         add rule inet skein overlay_mss iifname \"skein-wg\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment \"MSS clamp on the overlay\"\n"
    );
}

#[test]
fn comments_cannot_break_out_of_their_quotes() {
    let mut tx = Transaction::default();
    tx.push(Op::AddRule {
        chain: "c".into(),
        rule: Rule::new(vec![], Action::Verdict(Verdict::Accept))
            .with_comment(skein_names::NftComment::lossy("a \"quoted\" word")),
    });
    assert_eq!(
        tx.script(),
        "add rule inet skein c accept comment \"a _quoted_ word\"\n"
    );
}

#[test]
fn rules_render_as_nft_lists_them() {
    let tcp = Match::Cmp {
        field: Field::L4Proto,
        op: CmpOp::Eq,
        value: Value::Proto(L4Proto::Tcp),
    };
    let dport = Match::Cmp {
        field: Field::ThDport,
        op: CmpOp::Eq,
        value: Value::Port(80),
    };
    let ipv4 = Match::Cmp {
        field: Field::NfProto,
        op: CmpOp::Eq,
        value: Value::NfProto { ipv6: false },
    };
    let saddr = Match::Cmp {
        field: Field::IpSaddr,
        op: CmpOp::Eq,
        value: Value::Addr("10.0.0.1".parse().unwrap()),
    };
    let accept = || Action::Verdict(Verdict::Accept);
    let text = |m: Vec<Match>, a: Action| Rule::new(m, a).to_string();
    // A transport field after `meta l4proto` makes it nft's implicit dependency.
    assert_eq!(
        text(vec![tcp.clone(), dport.clone()], accept()),
        "tcp dport 80 accept"
    );
    assert_eq!(
        text(vec![dport.clone(), tcp.clone()], accept()),
        "th dport 80 meta l4proto tcp accept"
    );
    assert_eq!(text(vec![dport.clone()], accept()), "th dport 80 accept");
    assert_eq!(
        text(vec![ipv4.clone(), saddr.clone()], accept()),
        "ip saddr 10.0.0.1 accept"
    );
    assert_eq!(
        text(
            vec![
                ipv4,
                Match::AnyBits {
                    field: Field::Mark,
                    bits: 0x4000,
                    negate: false
                }
            ],
            Action::Masquerade
        ),
        "meta nfproto ipv4 meta mark & 0x00004000 != 0x00000000 masquerade"
    );
    assert_eq!(
        text(
            vec![tcp.clone()],
            Action::Vmap {
                key: vec![Field::IpDaddr, Field::ThDport],
                map: "m".into()
            }
        ),
        "ip daddr . tcp dport vmap @m"
    );
    assert_eq!(
        text(
            vec![tcp],
            Action::Dnat {
                addr: "10.0.0.2".parse().unwrap(),
                port: Some(8080)
            }
        ),
        "meta l4proto tcp dnat ip to 10.0.0.2:8080"
    );
    assert_eq!(
        text(
            vec![Match::AnyBits {
                field: Field::CtState,
                bits: CtState::NEW | CtState::UNTRACKED,
                negate: true
            }],
            Action::Reject(Reject::PortUnreachable)
        ),
        "ct state ! new,untracked reject"
    );
}

/// A table in memory: chains of rule fingerprints, filled by the transactions it is given.
#[derive(Default)]
struct FakeKernel {
    chains: std::collections::BTreeMap<String, Vec<Option<u64>>>,
    applies: usize,
}

impl Backend for FakeKernel {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.applies += 1;
        for op in &tx.ops {
            match op {
                Op::AddChain(c) => {
                    self.chains.entry(c.name.clone()).or_default();
                }
                Op::FlushChain(name) => {
                    self.chains.insert(name.clone(), Vec::new());
                }
                Op::AddRule { chain, rule } => {
                    self.chains
                        .entry(chain.clone())
                        .or_default()
                        .push(Some(fingerprint(rule)));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn chain(&mut self, name: &str) -> Result<Option<ChainDump>, NftError> {
        Ok(self.chains.get(name).map(|rules| ChainDump {
            base: true,
            rules: rules
                .iter()
                .enumerate()
                .map(|(i, f)| RuleDump {
                    handle: i as u64 + 1,
                    fingerprint: *f,
                })
                .collect(),
        }))
    }

    fn dump(&mut self) -> Result<Option<TableDump>, NftError> {
        Ok(None)
    }

    fn generation(&mut self) -> Result<u32, NftError> {
        Ok(self.applies as u32)
    }
}

#[test]
fn an_owned_chain_is_applied_once_and_repaired_only_when_it_drifts() {
    let mut kernel = FakeKernel::default();
    let tx = masquerade(&plan(&["10.42.1.0/24"], &["10.42.0.0/16"]));
    let mut chain = OwnedChain::new(CHAIN_POSTROUTING, tx.clone());
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Applied);
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Unchanged);
    assert_eq!(
        kernel.applies, 1,
        "nothing re-applied while nothing changed"
    );
    // `nft flush ruleset`: the chain is gone.
    kernel.chains.clear();
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Repaired);
    assert_eq!(kernel.chains[CHAIN_POSTROUTING].len(), 2);
    // A rule someone else added (no fingerprint), then one edited (another fingerprint).
    kernel.chains.get_mut(CHAIN_POSTROUTING).unwrap().push(None);
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Repaired);
    kernel.chains.get_mut(CHAIN_POSTROUTING).unwrap()[0] = Some(1);
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Repaired);
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Unchanged);
    // New content is an apply, not a repair.
    chain.set_desired(masquerade(&plan(&[], &[])));
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Applied);
    chain.set_desired(masquerade(&plan(&[], &[])));
    assert_eq!(chain.reconcile(&mut kernel).unwrap(), ChainSync::Unchanged);
    // A chain already as desired (left by an earlier run) is adopted without an apply.
    let applies = kernel.applies;
    let mut adopted = OwnedChain::new(CHAIN_POSTROUTING, masquerade(&plan(&[], &[])));
    assert_eq!(
        adopted.reconcile(&mut kernel).unwrap(),
        ChainSync::Unchanged
    );
    assert_eq!(kernel.applies, applies);
}

#[test]
fn element_bytes_pad_concatenations_and_keep_ranges() {
    let mut s = Set::new("s", vec![KeyType::Ipv4Addr, KeyType::InetService]);
    let e = Element::key(vec![
        Value::Addr("10.0.0.1".parse().unwrap()),
        Value::Port(80),
    ]);
    assert_eq!(element_bytes(&s, &e), [10, 0, 0, 1, 0, 80, 0, 0]);
    s.interval = true;
    let r = Element::key(vec![
        Value::Net("10.0.0.0/8".parse().unwrap()),
        Value::Port(80),
    ]);
    assert_eq!(
        element_bytes(&s, &r),
        [10, 0, 0, 0, 0, 80, 0, 0, 10, 255, 255, 255, 0, 80, 0, 0]
    );
    let single = Set {
        interval: true,
        ..Set::new("r", vec![KeyType::Ipv4Addr])
    };
    let r = Element::key(vec![Value::Net("10.0.0.0/8".parse().unwrap())]);
    assert_eq!(element_bytes(&single, &r), [10, 0, 0, 0, 11, 0, 0, 0]);
    let to_end = Element::key(vec![Value::Net("255.0.0.0/8".parse().unwrap())]);
    assert_eq!(element_bytes(&single, &to_end), [255, 0, 0, 0, 0, 0, 0, 0]);
    let mut map = Set::new("m", vec![KeyType::InetService]);
    map.verdicts = true;
    let m = Element::mapped(vec![Value::Port(53)], Verdict::Jump("x".into()));
    assert_eq!(
        element_bytes(&map, &m),
        [0, 53, 0xff, 0xff, 0xff, 0xfd, b'x']
    );
}

/// One netlink message: header, then `payload`.
fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&[0; 10]);
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// An nftables object message of `family` whose table attribute is `table`.
fn nft_object(msg: u16, family: u8, table: &str) -> Vec<u8> {
    let mut p = vec![family, 0, 0, 0];
    let name = format!("{table}\0");
    p.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
    p.extend_from_slice(&1u16.to_ne_bytes());
    p.extend_from_slice(name.as_bytes());
    while p.len() % 4 != 0 {
        p.push(0);
    }
    nlmsg((10 << 8) | msg, &p)
}

#[test]
fn only_commits_that_touch_skeins_table_count() {
    const NEWCHAIN: u16 = 3;
    const DELTABLE: u16 = 2;
    let newgen = nlmsg((10 << 8) | 15, &[0, 0, 0, 0]);
    let scan = |datagrams: &[Vec<u8>]| {
        let mut touched = false;
        let mut elsewhere = Vec::new();
        datagrams
            .iter()
            .map(|d| crate::monitor::scan(d, &mut touched, &mut elsewhere))
            .collect::<Vec<_>>()
    };
    // Another program's table, and a table named skein in another family: no change for skein.
    assert_eq!(
        scan(&[[
            nft_object(NEWCHAIN, 1, "filter"),
            nft_object(NEWCHAIN, 2, "skein"),
            newgen.clone()
        ]
        .concat()]),
        [false]
    );
    // `nft flush ruleset`: skein's table deleted, then the commit's NEWGEN in the next datagram.
    assert_eq!(
        scan(&[nft_object(DELTABLE, 1, "skein"), newgen.clone()]),
        [false, true]
    );
    // One commit counts once, however many of skein's objects it touched.
    assert_eq!(
        scan(&[[
            nft_object(NEWCHAIN, 1, "skein"),
            nft_object(NEWCHAIN, 1, "skein"),
            newgen.clone(),
            newgen.clone()
        ]
        .concat()]),
        [true]
    );
    // Garbage does not panic.
    assert_eq!(scan(&[vec![0xff; 7], vec![0; 40]]), [false, false]);
}

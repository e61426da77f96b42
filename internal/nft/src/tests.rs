//! Golden scripts of the pure rule builders.

use super::*;

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|c| c.parse().expect("cidr")).collect()
}

#[test]
fn masquerade_rebuilds_its_chain_in_one_transaction() {
    let tx = masquerade(&nets(&["10.42.1.0/24"]), &nets(&["10.42.0.0/16"]));
    assert_eq!(
        tx.script(),
        "add table inet skein\n\
         add chain inet skein postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
         flush chain inet skein postrouting\n\
         add rule inet skein postrouting ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade comment \"pod traffic leaving the cluster\"\n"
    );
}

#[test]
fn dual_stack_pairs_families_and_never_mixes_them() {
    let tx = masquerade(
        &nets(&["10.42.1.0/24", "fd00:42:1::/64"]),
        &nets(&["10.42.0.0/16", "fd00:42::/48"]),
    );
    let script = tx.script();
    let rules: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("add rule"))
        .collect();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules[0].contains("ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16"));
    assert!(rules[1].contains("ip6 saddr fd00:42:1::/64 ip6 daddr != fd00:42::/48"));
}

#[test]
fn no_pod_cidr_means_an_empty_chain() {
    let tx = masquerade(&[], &nets(&["10.42.0.0/16"]));
    assert!(!tx.script().contains("add rule"));
    assert!(tx.script().contains("flush chain inet skein postrouting"));
}

#[test]
fn each_chain_is_rebuilt_without_touching_the_others() {
    for tx in [masquerade(&[], &[]), overlay_mss_clamp(&wg())] {
        assert!(!tx.ops.contains(&Op::FlushTable), "{}", tx.script());
    }
}

#[test]
fn mss_is_clamped_both_ways_through_the_overlay() {
    let script = overlay_mss_clamp(&wg()).script();
    assert!(script.contains("add chain inet skein overlay_mss { type filter hook forward priority mangle; policy accept; }"), "{script}");
    for dir in ["oifname", "iifname"] {
        assert!(
            script.contains(&format!(
                "{dir} \"skein-wg\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu"
            )),
            "{script}"
        );
    }
}

#[test]
fn comments_cannot_break_out_of_their_quotes() {
    let mut tx = Transaction::default();
    tx.push(Op::AddRule {
        chain: "c".into(),
        rule: "accept".into(),
        comment: Some(skein_names::NftComment::lossy("a \"quoted\" word")),
    });
    assert_eq!(
        tx.script(),
        "add rule inet skein c accept comment \"a _quoted_ word\"\n"
    );
}

fn wg() -> skein_names::IfName {
    skein_names::IfName::new("skein-wg").expect("valid")
}

/// A table in memory: chains by name, filled by the scripts it is given.
#[derive(Default)]
struct FakeKernel {
    chains: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
    applies: std::cell::Cell<usize>,
}

impl Backend for FakeKernel {
    fn apply(&self, tx: &Transaction) -> Result<(), NftError> {
        self.applies.set(self.applies.get() + 1);
        let mut chains = self.chains.borrow_mut();
        for op in &tx.ops {
            match op {
                Op::AddChain { name, .. } => {
                    chains.entry(name.clone()).or_default();
                }
                Op::FlushChain { name } => {
                    chains.insert(name.clone(), String::new());
                }
                Op::AddRule { chain, rule, .. } => {
                    chains.entry(chain.clone()).or_default().push_str(rule);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn list_chain(&self, name: &str) -> Result<Option<String>, NftError> {
        Ok(self.chains.borrow().get(name).cloned())
    }
}

#[test]
fn an_owned_chain_is_applied_once_and_repaired_only_when_it_drifts() {
    let kernel = FakeKernel::default();
    let tx = masquerade(
        &["10.42.1.0/24".parse().unwrap()],
        &["10.42.0.0/16".parse().unwrap()],
    );
    let mut chain = OwnedChain::new(CHAIN_POSTROUTING, tx.clone());
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Applied);
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Unchanged);
    assert_eq!(
        kernel.applies.get(),
        1,
        "nothing re-applied while nothing changed"
    );
    // `nft flush ruleset`: the chain is gone.
    kernel.chains.borrow_mut().clear();
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Repaired);
    assert!(
        kernel
            .list_chain(CHAIN_POSTROUTING)
            .unwrap()
            .unwrap()
            .contains("masquerade")
    );
    // A rule edited behind skein's back.
    kernel
        .chains
        .borrow_mut()
        .insert(CHAIN_POSTROUTING.into(), "accept".into());
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Repaired);
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Unchanged);
    // New content is an apply, not a repair.
    chain.set_desired(masquerade(&[], &[]));
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Applied);
    chain.set_desired(masquerade(&[], &[]));
    assert_eq!(chain.reconcile(&kernel).unwrap(), ChainSync::Unchanged);
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
        datagrams
            .iter()
            .map(|d| crate::monitor::scan(d, &mut touched))
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

//! Two shapes for ClusterIP dispatch at 10,000 Services, through skein's netlink backend in the
//! calling thread's network namespace (run it under `ip netns exec` in a fresh one):
//!
//! - (a) one hash map `ip daddr . meta l4proto . th dport : verdict` (skein's `service_ips`);
//! - (b) the same key in 64 interval maps (`flags interval`, the kernel's pipapo sets for a
//!   concatenated key), each element in the map its key's hash picks, one vmap rule per map.
//!
//! Each element's verdict is `goto` one of 10,000 chains (as skein's `svc_…` chains), made
//! first. Timed: loading the 10,000 elements in one transaction (after emptying the maps), and
//! changing one element's verdict (delete and add in one transaction).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use skein_nft::{
    Action, Backend, Chain, ChainType, Element, Field, Hook, HookPoint, KeyType, L4Proto, Netlink,
    Op, Rule, Set, Transaction, Value, Verdict, priority,
};

const KEY: [Field; 3] = [Field::IpDaddr, Field::L4Proto, Field::ThDport];

fn key(i: usize) -> Vec<Value> {
    let n = 256 + i;
    vec![
        Value::Addr(IpAddr::V4(Ipv4Addr::new(
            10,
            43,
            (n / 256) as u8,
            (n % 256) as u8,
        ))),
        Value::Proto(L4Proto::Tcp),
        Value::Port(80),
    ]
}

fn chain(i: usize) -> String {
    format!("svc_{i:05}")
}

fn shard(i: usize, shards: usize) -> usize {
    // FNV-1a of the key's address bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let n = 256 + i;
    for b in [10u8, 43, (n / 256) as u8, (n % 256) as u8] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

fn map(name: &str, interval: bool) -> Set {
    let mut s = Set::new(name, KEY.iter().map(|f| KeyType::of(*f)).collect());
    s.verdicts = true;
    s.interval = interval;
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(nl: &mut Netlink, tx: &Transaction) -> anyhow::Result<f64> {
    let t = Instant::now();
    nl.apply(tx)?;
    Ok(ms(t.elapsed()))
}

pub fn run(count: usize, shards: usize, repeats: usize) -> anyhow::Result<()> {
    let mut nl = Netlink::new()?;
    // The chains every verdict points at, and a base chain for the rules that bind the maps.
    let mut tx = Transaction::default();
    tx.push(Op::AddTable);
    tx.push(Op::AddChain(Chain {
        name: "dispatch".into(),
        hook: Some(Hook {
            kind: ChainType::Nat,
            hook: HookPoint::Prerouting,
            priority: priority::DSTNAT,
        }),
    }));
    for i in 0..count {
        tx.push(Op::AddChain(Chain {
            name: chain(i),
            hook: None,
        }));
        tx.push(Op::AddRule {
            chain: chain(i),
            rule: Rule::new(Vec::new(), Action::Verdict(Verdict::Accept)),
        });
    }
    let t = Instant::now();
    nl.apply_bounded(&tx, 20_000)?;
    let chains_ms = ms(t.elapsed());

    // The maps and the rules that look them up.
    let mut tx = Transaction::default();
    let lookup = |map: String| Op::AddRule {
        chain: "dispatch".into(),
        rule: Rule::new(
            Vec::new(),
            Action::Vmap {
                key: KEY.to_vec(),
                map,
            },
        ),
    };
    tx.push(Op::AddSet(map("hash_map", false)));
    tx.push(lookup("hash_map".into()));
    for s in 0..shards {
        let name = format!("shard_{s:02}");
        tx.push(Op::AddSet(map(&name, true)));
        tx.push(lookup(name));
    }
    nl.apply(&tx)?;

    let element = |i: usize, target: usize| Element::mapped(key(i), Verdict::Goto(chain(target)));
    let mut report = serde_json::Map::new();
    report.insert("elements".into(), count.into());
    report.insert("shards".into(), shards.into());
    report.insert("chains_ms".into(), chains_ms.into());
    for (label, sharded) in [("hash_map", false), ("interval_shards", true)] {
        let sets: Vec<String> = if sharded {
            (0..shards).map(|s| format!("shard_{s:02}")).collect()
        } else {
            vec!["hash_map".into()]
        };
        let set_of = |i: usize| {
            if sharded {
                format!("shard_{:02}", shard(i, shards))
            } else {
                "hash_map".to_string()
            }
        };
        let mut loads = Vec::new();
        let mut flushes = Vec::new();
        for _ in 0..repeats {
            let mut flush = Transaction::default();
            for s in &sets {
                flush.push(Op::FlushSet(s.clone()));
            }
            flushes.push(timed(&mut nl, &flush)?);
            let mut by_set: std::collections::BTreeMap<String, Vec<Element>> = Default::default();
            for i in 0..count {
                by_set.entry(set_of(i)).or_default().push(element(i, i));
            }
            let mut load = Transaction::default();
            for (set, elements) in by_set {
                load.push(Op::AddElements { set, elements });
            }
            loads.push(timed(&mut nl, &load)?);
        }
        let mut changes = Vec::new();
        for r in 0..20 {
            let i = (r * 7919) % count;
            let other = (i + 1) % count;
            // Timed: element i's verdict moves to another chain; then, untimed, back.
            for (old, new, time) in [(i, other, true), (other, i, false)] {
                let mut tx = Transaction::default();
                tx.push(Op::DeleteElements {
                    set: set_of(i),
                    elements: vec![element(i, old)],
                });
                tx.push(Op::AddElements {
                    set: set_of(i),
                    elements: vec![element(i, new)],
                });
                let took = timed(&mut nl, &tx)?;
                if time {
                    changes.push(took);
                }
            }
        }
        report.insert(
            label.into(),
            serde_json::json!({
                "load_ms": loads,
                "load_ms_median": median(loads.clone()),
                "flush_ms_median": median(flushes),
                "change_ms": changes,
                "change_ms_median": median(changes.clone()),
            }),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

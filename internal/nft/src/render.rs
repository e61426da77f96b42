//! The transaction model in nft's syntax (`nft -f`): for people reading what skein does, and
//! for golden tests. The kernel never receives this text; the netlink backend encodes the model.
//! A rule prints as `nft list` prints the rule the backend wrote ([`crate::rule_text`]).

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::*;
use crate::{FAMILY, TABLE};

impl Transaction {
    /// The transaction in `nft -f` syntax.
    pub fn script(&self) -> String {
        let mut out = String::new();
        let t = format!("{FAMILY} {TABLE}");
        for op in &self.ops {
            let _ = match op {
                Op::AddTable => writeln!(out, "add table {t}"),
                Op::DeleteTable => writeln!(out, "delete table {t}"),
                Op::AddChain(Chain { name, hook: None }) => writeln!(out, "add chain {t} {name}"),
                Op::AddChain(Chain {
                    name,
                    hook: Some(h),
                }) => writeln!(out, "add chain {t} {name} {{ {}; }}", hook(h)),
                Op::FlushChain(name) => writeln!(out, "flush chain {t} {name}"),
                Op::DeleteChain(name) => writeln!(out, "delete chain {t} {name}"),
                Op::AddRule { chain, rule } => writeln!(out, "add rule {t} {chain} {rule}"),
                Op::DeleteRule { chain, handle } => {
                    writeln!(out, "delete rule {t} {chain} handle {handle}")
                }
                Op::AddSet(set) => writeln!(
                    out,
                    "add {} {t} {} {{ {} }}",
                    if set.verdicts || !set.data.is_empty() {
                        "map"
                    } else {
                        "set"
                    },
                    set.name,
                    set_body(set)
                ),
                Op::FlushSet(name) => writeln!(out, "flush set {t} {name}"),
                Op::DeleteSet(name) => writeln!(out, "delete set {t} {name}"),
                Op::AddElements { set, elements } => {
                    writeln!(
                        out,
                        "add element {t} {set} {{ {} }}",
                        elements_text(elements)
                    )
                }
                Op::DeleteElements { set, elements } => {
                    writeln!(
                        out,
                        "delete element {t} {set} {{ {} }}",
                        elements_text(elements)
                    )
                }
            };
        }
        out
    }
}

fn hook(h: &Hook) -> String {
    let kind = match h.kind {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    };
    let point = match h.hook {
        HookPoint::Prerouting => "prerouting",
        HookPoint::Input => "input",
        HookPoint::Forward => "forward",
        HookPoint::Output => "output",
        HookPoint::Postrouting => "postrouting",
    };
    format!(
        "type {kind} hook {point} priority {}; policy accept",
        priority_name(h.priority)
    )
}

/// nft's names for the standard priorities, as `nft list` prints them.
fn priority_name(p: i32) -> String {
    let named = [
        (priority::RAW, "raw"),
        (priority::MANGLE, "mangle"),
        (priority::DSTNAT, "dstnat"),
        (priority::FILTER, "filter"),
        (priority::SRCNAT, "srcnat"),
    ];
    if let Some((_, n)) = named.iter().find(|(v, _)| *v == p) {
        return (*n).to_string();
    }
    // nft prints the nearest name with an offset (`dstnat - 10`).
    let (v, n) = named
        .iter()
        .min_by_key(|(v, _)| (p - v).abs())
        .copied()
        .unwrap_or((0, "filter"));
    if p > v {
        format!("{n} + {}", p - v)
    } else {
        format!("{n} - {}", v - p)
    }
}

fn set_body(set: &Set) -> String {
    let key: Vec<&str> = set.key.iter().map(|k| key_type(*k)).collect();
    let mut body = format!("type {}", key.join(" . "));
    if set.verdicts {
        body.push_str(" : verdict");
    } else if !set.data.is_empty() {
        let data: Vec<&str> = set.data.iter().map(|k| key_type(*k)).collect();
        let _ = write!(body, " : {}", data.join(" . "));
    }
    body.push(';');
    let mut flags = Vec::new();
    if set.interval {
        flags.push("interval");
    }
    if set.timeout.is_some() {
        flags.push("dynamic");
        flags.push("timeout");
    }
    if !flags.is_empty() {
        let _ = write!(body, " flags {};", flags.join(","));
    }
    if let Some(t) = set.timeout {
        let _ = write!(body, " timeout {};", duration(t));
    }
    if let Some(c) = &set.comment {
        let _ = write!(body, " comment \"{c}\";");
    }
    body
}

fn key_type(k: KeyType) -> &'static str {
    match k {
        KeyType::Ipv4Addr => "ipv4_addr",
        KeyType::Ipv6Addr => "ipv6_addr",
        KeyType::InetProto => "inet_proto",
        KeyType::InetService => "inet_service",
        KeyType::Mark => "mark",
        KeyType::IfName => "ifname",
    }
}

/// nft's duration syntax: `3h`, `1m30s`, `10800s` all parse; this prints whole units.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn elements_text(elements: &[Element]) -> String {
    elements
        .iter()
        .map(|e| {
            let key: Vec<String> = e.key.iter().map(|v| value(&v)).collect();
            match &e.value {
                Some(Mapped::Verdict(v)) => format!("{} : {}", key.join(" . "), verdict(v)),
                Some(Mapped::Data(d)) => {
                    let data: Vec<String> = d.iter().map(|v| value(&v)).collect();
                    format!("{} : {}", key.join(" . "), data.join(" . "))
                }
                None => key.join(" . "),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn field(f: Field) -> &'static str {
    match f {
        Field::IpSaddr => "ip saddr",
        Field::IpDaddr => "ip daddr",
        Field::Ip6Saddr => "ip6 saddr",
        Field::Ip6Daddr => "ip6 daddr",
        Field::L4Proto => "meta l4proto",
        Field::ThSport => "th sport",
        Field::ThDport => "th dport",
        Field::Mark => "meta mark",
        Field::NfProto => "meta nfproto",
        Field::IifName => "iifname",
        Field::OifName => "oifname",
        Field::FibDaddrType => "fib daddr type",
        Field::FibSaddrType => "fib saddr type",
        Field::CtState => "ct state",
        Field::CtStatus => "ct status",
        Field::TcpFlags => "tcp flags",
        Field::Random { .. } => "numgen random",
    }
}

pub fn value(v: &Value) -> String {
    match v {
        Value::Addr(a) => a.to_string(),
        Value::Net(n) => n.to_string(),
        Value::Proto(p) => p.name().to_string(),
        Value::Port(p) => p.to_string(),
        // nft prints marks as 32-bit hex.
        Value::Mark(m) => format!("{m:#010x}"),
        // NftComment-like: interface names hold no quote (IfName refuses them).
        Value::IfName(n) => format!("\"{n}\""),
        Value::AddrType(AddrType::Local) => "local".to_string(),
        Value::NfProto { ipv6: false } => "ipv4".to_string(),
        Value::NfProto { ipv6: true } => "ipv6".to_string(),
    }
}

pub(crate) fn bits_text(field: Field, bits: u32) -> String {
    let names: &[(u32, &str)] = match field {
        Field::CtState => &[
            (CtState::INVALID, "invalid"),
            (CtState::ESTABLISHED, "established"),
            (CtState::RELATED, "related"),
            (CtState::NEW, "new"),
            (CtState::UNTRACKED, "untracked"),
        ],
        Field::CtStatus => &[(CtStatus::SNAT, "snat"), (CtStatus::DNAT, "dnat")],
        Field::TcpFlags => &[
            (TcpFlags::FIN, "fin"),
            (TcpFlags::SYN, "syn"),
            (TcpFlags::RST, "rst"),
            (TcpFlags::ACK, "ack"),
        ],
        _ => &[],
    };
    let named: Vec<&str> = names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    let covered: u32 = names.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
    if !named.is_empty() && bits & !covered == 0 {
        named.join(",")
    } else {
        format!("{bits:#x}")
    }
}

pub(crate) fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

/// A stable 64-bit fingerprint of a rule (FNV-1a of its rendering), stored with the rule in the
/// kernel so a later dump tells whether the kernel's rule is the one skein would write now,
/// across restarts and without decoding expressions.
pub fn fingerprint(rule: &Rule) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

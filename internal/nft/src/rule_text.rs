//! A rule in nft's syntax exactly as `nft list` prints the rule the netlink backend wrote for
//! it: nft hides a `meta l4proto`/`meta nfproto` match that a later field depends on (and then
//! names `th` fields by the protocol, `tcp dport`), prints marks as 32-bit hex and ct/tcp bit
//! sets by name, and calls the inet family's default reject plain `reject`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::model::*;
use crate::render::{bits_text, field, value, verdict};

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = hidden_dependencies(self);
        // The transport protocol an earlier `meta l4proto` established: nft names `th` by it.
        let mut l4: Option<L4Proto> = None;
        let mut parts: Vec<String> = Vec::new();
        for (i, m) in self.matches.iter().enumerate() {
            let text = match_text(m, l4);
            if let Match::Cmp {
                field: Field::L4Proto,
                op: CmpOp::Eq,
                value: Value::Proto(p),
            } = m
            {
                l4 = Some(*p);
            }
            if !hidden.contains(&i) {
                parts.push(text);
            }
        }
        for s in &self.statements {
            parts.push(match s {
                Statement::SetMarkBits(bits) => format!("meta mark set meta mark | {bits:#010x}"),
                Statement::UpdateSet { set, key } => {
                    format!("update @{set} {{ {} }}", fields(key, l4))
                }
                Statement::Counter => "counter".to_string(),
                Statement::NoTrack => "notrack".to_string(),
            });
        }
        parts.extend(action_text(&self.action, l4));
        if let Some(c) = &self.comment {
            // NftComment holds no quote or backslash, so it cannot end the string.
            parts.push(format!("comment \"{c}\""));
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// The fields an item of a rule reads.
fn uses_match(m: &Match) -> Vec<Field> {
    match m {
        Match::Cmp { field, .. }
        | Match::Prefix { field, .. }
        | Match::AnyBits { field, .. }
        | Match::Masked { field, .. } => vec![*field],
        Match::InSet { key, .. } => key.clone(),
        Match::Random { .. } => Vec::new(),
    }
}

/// The `meta l4proto P` and `meta nfproto F` matches nft treats as the dependency of a later
/// transport or network field, and so does not print (the most recent one of each, once).
fn hidden_dependencies(rule: &Rule) -> BTreeSet<usize> {
    let mut hidden = BTreeSet::new();
    let mut l4: Option<usize> = None;
    let mut family: Option<(usize, bool)> = None;
    let mut kill = |used: &[Field], l4: &mut Option<usize>, family: &mut Option<(usize, bool)>| {
        if used
            .iter()
            .any(|f| matches!(f, Field::ThSport | Field::ThDport | Field::TcpFlags))
        {
            hidden.extend(l4.take());
        }
        for f in used {
            let ipv6 = match f {
                Field::IpSaddr | Field::IpDaddr => false,
                Field::Ip6Saddr | Field::Ip6Daddr => true,
                _ => continue,
            };
            if let Some((i, fam)) = *family
                && fam == ipv6
            {
                hidden.insert(i);
                *family = None;
            }
        }
    };
    for (i, m) in rule.matches.iter().enumerate() {
        kill(&uses_match(m), &mut l4, &mut family);
        match m {
            Match::Cmp {
                field: Field::L4Proto,
                op: CmpOp::Eq,
                value: Value::Proto(_),
            } => l4 = Some(i),
            Match::Cmp {
                field: Field::NfProto,
                op: CmpOp::Eq,
                value: Value::NfProto { ipv6 },
            } => family = Some((i, *ipv6)),
            _ => {}
        }
    }
    for s in &rule.statements {
        if let Statement::UpdateSet { key, .. } = s {
            kill(key, &mut l4, &mut family);
        }
    }
    if let Action::Vmap { key, .. } | Action::DnatMap { key, .. } = &rule.action {
        kill(key, &mut l4, &mut family);
    }
    hidden
}

/// A field's name, `th` named by the transport protocol when one is established.
fn field_in(f: Field, l4: Option<L4Proto>) -> String {
    match (f, l4) {
        (Field::Random { modulus }, _) => format!("numgen random mod {modulus}"),
        (Field::ThSport, Some(p)) => format!("{} sport", p.name()),
        (Field::ThDport, Some(p)) => format!("{} dport", p.name()),
        _ => field(f).to_string(),
    }
}

fn fields(key: &[Field], l4: Option<L4Proto>) -> String {
    key.iter()
        .map(|f| field_in(*f, l4))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// A bit pattern of a field as nft prints it: names for ct and tcp bits, 32-bit hex otherwise.
fn hex(f: Field, bits: u32) -> String {
    match f {
        Field::CtState | Field::CtStatus | Field::TcpFlags => bits_text(f, bits),
        _ => format!("{bits:#010x}"),
    }
}

fn named_bits(f: Field) -> bool {
    matches!(f, Field::CtState | Field::CtStatus | Field::TcpFlags)
}

fn match_text(m: &Match, l4: Option<L4Proto>) -> String {
    match m {
        Match::Cmp {
            field,
            op,
            value: v,
        } => format!(
            "{} {}{}",
            field_in(*field, l4),
            if *op == CmpOp::Neq { "!= " } else { "" },
            value(v)
        ),
        Match::Prefix { field, net, negate } => format!(
            "{} {}{net}",
            field_in(*field, l4),
            if *negate { "!= " } else { "" }
        ),
        // `ct state new,established`, `ct state ! untracked`, `tcp flags syn`.
        Match::AnyBits {
            field,
            bits,
            negate,
        } if named_bits(*field) => format!(
            "{} {}{}",
            field_in(*field, l4),
            if *negate { "! " } else { "" },
            bits_text(*field, *bits)
        ),
        Match::AnyBits {
            field,
            bits,
            negate,
        } => format!(
            "{} & {} {} {}",
            field_in(*field, l4),
            hex(*field, *bits),
            if *negate { "==" } else { "!=" },
            hex(*field, 0)
        ),
        Match::InSet { key, set, negate } => format!(
            "{} {}@{set}",
            fields(key, l4),
            if *negate { "!= " } else { "" }
        ),
        Match::Random { modulus, value } => format!("numgen random mod {modulus} {value}"),
        Match::Masked {
            field: Field::TcpFlags,
            mask,
            value,
        } => format!(
            "tcp flags {} / {}",
            bits_text(Field::TcpFlags, *value),
            bits_text(Field::TcpFlags, *mask)
        ),
        Match::Masked { field, mask, value } => format!(
            "{} & {} == {}",
            field_in(*field, l4),
            hex(*field, *mask),
            hex(*field, *value)
        ),
    }
}

fn action_text(action: &Action, l4: Option<L4Proto>) -> Option<String> {
    use std::net::IpAddr::{V4, V6};
    let mut out = String::new();
    let _ = match action {
        Action::Continue => return None,
        Action::Verdict(v) => write!(out, "{}", verdict(v)),
        Action::Vmap { key, map } => write!(out, "{} vmap @{map}", fields(key, l4)),
        Action::DnatMap { key, map, ipv6 } => write!(
            out,
            "dnat {} to {} map @{map}",
            if *ipv6 { "ip6" } else { "ip" },
            fields(key, l4)
        ),
        Action::Dnat {
            addr: V4(a),
            port: Some(p),
        } => write!(out, "dnat ip to {a}:{p}"),
        Action::Dnat {
            addr: V4(a),
            port: None,
        } => write!(out, "dnat ip to {a}"),
        Action::Dnat {
            addr: V6(a),
            port: Some(p),
        } => write!(out, "dnat ip6 to [{a}]:{p}"),
        Action::Dnat {
            addr: V6(a),
            port: None,
        } => write!(out, "dnat ip6 to {a}"),
        Action::Snat { addr: V4(a) } => write!(out, "snat ip to {a}"),
        Action::Snat { addr: V6(a) } => write!(out, "snat ip6 to {a}"),
        Action::Masquerade => write!(out, "masquerade"),
        Action::Reject(Reject::TcpReset) => write!(out, "reject with tcp reset"),
        // icmpx port-unreachable is the inet family's default, which nft prints bare.
        Action::Reject(Reject::PortUnreachable) => write!(out, "reject"),
        Action::Notrack => write!(out, "notrack"),
        Action::MssClampToRouteMtu => write!(out, "tcp option maxseg size set rt mtu"),
    };
    Some(out)
}

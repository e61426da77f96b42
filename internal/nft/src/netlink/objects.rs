//! The table's objects as `NFT_MSG_*` messages: table, chains, rules (expressions from
//! [`super::expr`], comment and fingerprint in the user data), sets and maps with the user data
//! nft reads back, and set elements with their key bytes. Also the canonical bytes of an element,
//! shared with the dump decoder so desired and kernel elements compare.

use std::net::IpAddr;
use std::ops::Range;

use super::consts::*;
use super::expr;
use super::wire::{Msg, nft_type};
use crate::model::*;

/// The type of the user-data TLV that carries skein's fingerprint of a rule: nft knows types 0
/// (comment) and 1 (ebtables policy) and skips the others when it lists a rule.
pub(crate) const UDATA_RULE_FINGERPRINT: u8 = 0x73;
/// nft's rule comment TLV (`NFTNL_UDATA_RULE_COMMENT`).
const UDATA_RULE_COMMENT: u8 = 0;
/// nft's set user data (`NFTNL_UDATA_SET_*`).
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;
/// nft's `enum byteorder`.
const BYTEORDER_HOST_ENDIAN: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// nft's `EXPR_CONCAT`, the expression type its user data records for a concatenated key.
const EXPR_CONCAT: u32 = 13;

/// Element lists are one nested attribute, whose length is 16 bits: a message holds the
/// elements that fit in this many bytes, and an operation with more takes several messages.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 60_000;

/// One message of a batch and what it came from: the op, and for element operations the range
/// of the op's elements it carries (for naming the op in an error).
pub(crate) struct Piece {
    pub bytes: Vec<u8>,
    pub elements: Option<Range<usize>>,
}

/// What element encoding needs to know of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Shape {
    pub interval: bool,
    pub concat: bool,
}

impl Shape {
    pub(crate) fn of(set: &Set) -> Self {
        Self {
            interval: set.interval,
            concat: set.key.len() > 1,
        }
    }
}

fn msg(kind: u16, flags: u16, seq: u32) -> Msg {
    Msg::new(nft_type(kind), flags | NLM_F_ACK, seq, NFPROTO_INET, 0)
}

/// The messages of one op; `seq` is advanced per message. `shape` says how the named set of an
/// element op lays out its keys.
pub(crate) fn encode(
    op: &Op,
    table: &str,
    seq: &mut u32,
    set_id: u32,
    shape: impl Fn(&str) -> Shape,
) -> Result<Vec<Piece>, String> {
    let mut next = || {
        *seq = seq.wrapping_add(1);
        *seq
    };
    let one = |m: Msg| {
        Ok(vec![Piece {
            bytes: m.finish(),
            elements: None,
        }])
    };
    match op {
        Op::AddTable => {
            let mut m = msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, next());
            m.str(NFTA_TABLE_NAME, table).u32(NFTA_TABLE_FLAGS, 0);
            one(m)
        }
        Op::DeleteTable => {
            let mut m = msg(NFT_MSG_DELTABLE, 0, next());
            m.str(NFTA_TABLE_NAME, table);
            one(m)
        }
        Op::AddChain(chain) => {
            let mut m = msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, next());
            m.str(NFTA_CHAIN_TABLE, table)
                .str(NFTA_CHAIN_NAME, &chain.name);
            if let Some(h) = &chain.hook {
                m.begin(NFTA_CHAIN_HOOK)
                    .u32(NFTA_HOOK_HOOKNUM, hook_number(h.hook))
                    .u32(NFTA_HOOK_PRIORITY, h.priority as u32)
                    .end()
                    .u32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                    .str(
                        NFTA_CHAIN_TYPE,
                        match h.kind {
                            ChainType::Filter => "filter",
                            ChainType::Nat => "nat",
                        },
                    );
            }
            one(m)
        }
        Op::FlushChain(name) => {
            let mut m = msg(NFT_MSG_DELRULE, 0, next());
            m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, name);
            one(m)
        }
        Op::DeleteChain(name) => {
            let mut m = msg(NFT_MSG_DELCHAIN, 0, next());
            m.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, name);
            one(m)
        }
        Op::AddRule { chain, rule } => {
            let mut m = msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, next());
            m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
            expr::expressions(&mut m, rule)?;
            m.bytes(NFTA_RULE_USERDATA, &rule_userdata(rule));
            one(m)
        }
        Op::DeleteRule { chain, handle } => {
            let mut m = msg(NFT_MSG_DELRULE, 0, next());
            m.str(NFTA_RULE_TABLE, table)
                .str(NFTA_RULE_CHAIN, chain)
                .u64(NFTA_RULE_HANDLE, *handle);
            one(m)
        }
        Op::AddSet(set) => one(new_set(set, table, next(), set_id)?),
        Op::FlushSet(name) => {
            let mut m = msg(NFT_MSG_DELSETELEM, 0, next());
            m.str(NFTA_SET_ELEM_LIST_TABLE, table)
                .str(NFTA_SET_ELEM_LIST_SET, name);
            one(m)
        }
        Op::DeleteSet(name) => {
            let mut m = msg(NFT_MSG_DELSET, 0, next());
            m.str(NFTA_SET_TABLE, table).str(NFTA_SET_NAME, name);
            one(m)
        }
        Op::AddElements { set, elements } => elements_messages(
            NFT_MSG_NEWSETELEM,
            table,
            set,
            elements,
            shape(set),
            &mut next,
        ),
        Op::DeleteElements { set, elements } => elements_messages(
            NFT_MSG_DELSETELEM,
            table,
            set,
            elements,
            shape(set),
            &mut next,
        ),
    }
}

fn hook_number(h: HookPoint) -> u32 {
    match h {
        HookPoint::Prerouting => NF_INET_PRE_ROUTING,
        HookPoint::Input => NF_INET_LOCAL_IN,
        HookPoint::Forward => NF_INET_FORWARD,
        HookPoint::Output => NF_INET_LOCAL_OUT,
        HookPoint::Postrouting => NF_INET_POST_ROUTING,
    }
}

/// nft's comment TLV (so `nft list` prints it), then skein's fingerprint.
fn rule_userdata(rule: &Rule) -> Vec<u8> {
    let mut u = Vec::new();
    if let Some(c) = &rule.comment {
        let mut text = c.to_string().into_bytes();
        text.push(0);
        tlv(&mut u, UDATA_RULE_COMMENT, &text);
    }
    tlv(
        &mut u,
        UDATA_RULE_FINGERPRINT,
        &crate::fingerprint(rule).to_be_bytes(),
    );
    u
}

/// The fingerprint TLV of a rule's user data, if skein wrote one.
pub(crate) fn fingerprint_of(userdata: &[u8]) -> Option<u64> {
    let mut rest = userdata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_RULE_FINGERPRINT && len == 8 {
            return Some(u64::from_be_bytes(value.try_into().ok()?));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// One nftnl user-data TLV: a byte of type, a byte of length.
fn tlv(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// nft's datatype id, length and byte order of a key part.
fn key_type(k: KeyType) -> (u32, usize, u32) {
    match k {
        KeyType::Ipv4Addr => (TYPE_IPADDR, 4, BYTEORDER_BIG_ENDIAN),
        KeyType::Ipv6Addr => (TYPE_IP6ADDR, 16, BYTEORDER_BIG_ENDIAN),
        KeyType::InetProto => (TYPE_INET_PROTOCOL, 1, 0),
        KeyType::InetService => (TYPE_INET_SERVICE, 2, BYTEORDER_BIG_ENDIAN),
        KeyType::Mark => (TYPE_MARK, 4, BYTEORDER_HOST_ENDIAN),
        KeyType::IfName => (TYPE_IFNAME, 16, BYTEORDER_HOST_ENDIAN),
    }
}

fn new_set(set: &Set, table: &str, seq: u32, id: u32) -> Result<Msg, String> {
    if set.key.is_empty() {
        return Err("a set needs a key type".into());
    }
    let concat = set.key.len() > 1;
    let mut flags = 0;
    if set.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if set.verdicts || !set.data.is_empty() {
        flags |= NFT_SET_MAP;
    }
    if set.timeout.is_some() {
        flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
    }
    // pipapo, the only backend for ranges of concatenated keys, wants the field lengths.
    let with_fields = concat && set.interval;
    if with_fields {
        flags |= NFT_SET_CONCAT;
    }
    let types: Vec<(u32, usize, u32)> = set.key.iter().map(|k| key_type(*k)).collect();
    let type_id = types
        .iter()
        .fold(0u32, |acc, (id, _, _)| (acc << TYPE_BITS) | id);
    let key_len = parts_len(&types);
    let mut m = msg(NFT_MSG_NEWSET, NLM_F_CREATE, seq);
    m.str(NFTA_SET_TABLE, table)
        .str(NFTA_SET_NAME, &set.name)
        .u32(NFTA_SET_FLAGS, flags)
        .u32(NFTA_SET_KEY_TYPE, type_id)
        .u32(NFTA_SET_KEY_LEN, key_len as u32);
    let data: Vec<(u32, usize, u32)> = set.data.iter().map(|k| key_type(*k)).collect();
    if set.verdicts {
        m.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT)
            .u32(NFTA_SET_DATA_LEN, 0);
    } else if !data.is_empty() {
        m.u32(
            NFTA_SET_DATA_TYPE,
            data.iter()
                .fold(0u32, |acc, (id, _, _)| (acc << TYPE_BITS) | id),
        )
        .u32(NFTA_SET_DATA_LEN, parts_len(&data) as u32);
    }
    m.u32(NFTA_SET_ID, id);
    if let Some(t) = set.timeout {
        m.u64(NFTA_SET_TIMEOUT, t.as_millis() as u64);
    }
    if with_fields {
        m.begin(NFTA_SET_DESC).begin(NFTA_SET_DESC_CONCAT);
        for (_, len, _) in &types {
            m.begin(NFTA_LIST_ELEM)
                .u32(NFTA_SET_FIELD_LEN, *len as u32)
                .end();
        }
        m.end().end();
    }
    // What nft 1.0.6 writes, so that `nft list` prints keys and the comment as nft's own.
    let mut u = Vec::new();
    let byteorder = if concat { 0 } else { types[0].2 };
    tlv(&mut u, UDATA_SET_KEYBYTEORDER, &byteorder.to_ne_bytes());
    if set.verdicts {
        tlv(&mut u, UDATA_SET_DATABYTEORDER, &0u32.to_ne_bytes());
    } else if !data.is_empty() {
        let order = if data.len() > 1 { 0 } else { data[0].2 };
        tlv(&mut u, UDATA_SET_DATABYTEORDER, &order.to_ne_bytes());
    }
    if concat {
        let mut nested = Vec::new();
        tlv(&mut nested, 0, &EXPR_CONCAT.to_ne_bytes());
        tlv(&mut nested, 1, &[]);
        tlv(&mut u, UDATA_SET_KEY_TYPEOF, &nested);
    }
    if set.verdicts || !data.is_empty() {
        tlv(&mut u, UDATA_SET_DATA_INTERVAL, &0u32.to_ne_bytes());
    }
    if let Some(c) = &set.comment {
        let mut text = c.to_string().into_bytes();
        text.push(0);
        tlv(&mut u, UDATA_SET_COMMENT, &text);
    }
    m.bytes(NFTA_SET_USERDATA, &u);
    Ok(m)
}

/// The length of a key or value of these parts: one part as it is, concatenated parts each
/// padded to 32 bits.
fn parts_len(parts: &[(u32, usize, u32)]) -> usize {
    match parts {
        [(_, len, _)] => *len,
        _ => parts.iter().map(|(_, l, _)| super::wire::align4(*l)).sum(),
    }
}

/// An element as the kernel holds it.
pub(crate) struct Encoded {
    pub key: Vec<u8>,
    /// The inclusive end of a range in a concatenated interval set (`NFTA_SET_ELEM_KEY_END`).
    pub key_end: Option<Vec<u8>>,
    /// In a single-field interval set, the key of the element that closes the range (flagged
    /// `NFT_SET_ELEM_INTERVAL_END`); `None` for a range that runs to the end of the key space.
    pub closing: Option<Vec<u8>>,
    pub verdict: Option<Verdict>,
    /// A data map's value, encoded.
    pub data: Option<Vec<u8>>,
}

/// One key part's first and last value: a prefix covers a range, anything else one value.
fn part(value: &Value) -> (Vec<u8>, Vec<u8>) {
    let one = |b: Vec<u8>| (b.clone(), b);
    match value {
        Value::Addr(IpAddr::V4(a)) => one(a.octets().to_vec()),
        Value::Addr(IpAddr::V6(a)) => one(a.octets().to_vec()),
        Value::Net(ipnet::IpNet::V4(n)) => (
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
        ),
        Value::Net(ipnet::IpNet::V6(n)) => (
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
        ),
        Value::Proto(p) => one(vec![p.number()]),
        Value::Port(p) => one(p.to_be_bytes().to_vec()),
        Value::Mark(m) => one(m.to_ne_bytes().to_vec()),
        Value::IfName(n) => {
            let mut v: Vec<u8> = n.as_bytes().iter().copied().take(15).collect();
            v.resize(16, 0);
            one(v)
        }
        Value::AddrType(AddrType::Local) => one(RTN_LOCAL.to_ne_bytes().to_vec()),
        Value::NfProto { ipv6 } => one(vec![if *ipv6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }]),
    }
}

/// The value after `last`, or `None` past the end of the key space. Marks are host order.
fn after(value: &Value, last: &[u8]) -> Option<Vec<u8>> {
    if let Value::Mark(_) = value {
        let n = u32::from_ne_bytes(last.try_into().ok()?).checked_add(1)?;
        return Some(n.to_ne_bytes().to_vec());
    }
    let mut v = last.to_vec();
    for b in v.iter_mut().rev() {
        let (n, carry) = b.overflowing_add(1);
        *b = n;
        if !carry {
            return Some(v);
        }
    }
    None
}

pub(crate) fn encode_element(shape: Shape, element: &Element) -> Encoded {
    let mut key = Vec::new();
    let mut last = Vec::new();
    let values = element.key.to_vec();
    for value in &values {
        let (mut first, mut end) = part(value);
        if shape.concat {
            first.resize(super::wire::align4(first.len()), 0);
            end.resize(super::wire::align4(end.len()), 0);
        }
        key.extend_from_slice(&first);
        last.extend_from_slice(&end);
    }
    let (key_end, closing) = match (shape.interval, shape.concat, &values[..]) {
        (true, true, _) => (Some(last), None),
        (true, false, [value]) => (None, after(value, &last)),
        _ => (None, None),
    };
    let data = match &element.value {
        Some(Mapped::Data(values)) => {
            let mut bytes = Vec::new();
            let several = values.len() > 1;
            for v in values.iter() {
                let (mut b, _) = part(&v);
                if several {
                    b.resize(super::wire::align4(b.len()), 0);
                }
                bytes.extend_from_slice(&b);
            }
            Some(bytes)
        }
        _ => None,
    };
    Encoded {
        key,
        key_end,
        closing,
        verdict: element.verdict().cloned(),
        data,
    }
}

/// The canonical bytes of an element: its key, the end of its range (inclusive for a
/// concatenated interval set, exclusive for a single-field one, zeros for a range that runs to
/// the end), and its verdict's code and chain. A dump's [`crate::SetDump`] holds the same bytes
/// for the same element.
pub fn element_bytes(set: &Set, element: &Element) -> Vec<u8> {
    let e = encode_element(Shape::of(set), element);
    let single_interval = set.interval && set.key.len() == 1;
    let closing =
        single_interval.then(|| e.closing.clone().unwrap_or_else(|| vec![0; e.key.len()]));
    canonical(
        &e.key,
        e.key_end.as_deref().or(closing.as_deref()),
        e.verdict.as_ref().map(expr::verdict_code),
        e.data.as_deref(),
    )
}

/// The key part of [`element_bytes`] (for a set without intervals, where the key comes first):
/// what tells a changed value of one key from an element of another key.
pub fn element_key_bytes(set: &Set, element: &Element) -> Vec<u8> {
    encode_element(Shape::of(set), element).key
}

pub(crate) fn canonical(
    key: &[u8],
    end: Option<&[u8]>,
    verdict: Option<(i32, Option<&str>)>,
    data: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = key.to_vec();
    if let Some(end) = end {
        out.extend_from_slice(end);
    }
    if let Some((code, chain)) = verdict {
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(chain.unwrap_or_default().as_bytes());
    }
    if let Some(data) = data {
        out.push(b':');
        out.extend_from_slice(data);
    }
    out
}

fn element_attrs(
    m: &mut Msg,
    key: &[u8],
    key_end: Option<&[u8]>,
    closing: bool,
    verdict: Option<&Verdict>,
    data: Option<&[u8]>,
) {
    m.begin(NFTA_LIST_ELEM).data_value(NFTA_SET_ELEM_KEY, key);
    if let Some(end) = key_end {
        m.data_value(NFTA_SET_ELEM_KEY_END, end);
    }
    if closing {
        m.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
    }
    if let Some(v) = verdict {
        m.begin(NFTA_SET_ELEM_DATA);
        expr::verdict(m, v);
        m.end();
    }
    if let Some(d) = data {
        m.data_value(NFTA_SET_ELEM_DATA, d);
    }
    m.end();
}

fn elements_messages(
    kind: u16,
    table: &str,
    set: &str,
    elements: &[Element],
    shape: Shape,
    next: &mut impl FnMut() -> u32,
) -> Result<Vec<Piece>, String> {
    let flags = if kind == NFT_MSG_NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    let start = |seq| {
        let mut m = msg(kind, flags, seq);
        m.str(NFTA_SET_ELEM_LIST_TABLE, table)
            .str(NFTA_SET_ELEM_LIST_SET, set)
            .begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        m
    };
    let mut pieces = Vec::new();
    let mut m = start(next());
    let mut first = 0;
    let header = m.len();
    for (i, element) in elements.iter().enumerate() {
        for value in element.key.iter() {
            if let Value::IfName(n) = value {
                expr::ifname(&n)?;
            }
        }
        if m.len() - header > ELEMENTS_PER_MESSAGE_BYTES {
            m.end();
            pieces.push(Piece {
                bytes: std::mem::replace(&mut m, start(next())).finish(),
                elements: Some(first..i),
            });
            first = i;
        }
        let e = encode_element(shape, element);
        element_attrs(
            &mut m,
            &e.key,
            e.key_end.as_deref(),
            false,
            e.verdict.as_ref(),
            e.data.as_deref(),
        );
        if let Some(closing) = &e.closing {
            element_attrs(&mut m, closing, None, true, None, None);
        }
    }
    m.end();
    pieces.push(Piece {
        bytes: m.finish(),
        elements: Some(first..elements.len()),
    });
    Ok(pieces)
}

//! The structured transaction model: what a rule matches, what it does, the named sets and maps
//! it looks up, and the operations on the table. Backends encode it (the netlink backend builds
//! `NFT_MSG_*` messages from it); [`crate::render`] prints it in nft's syntax for people and for
//! golden tests; the proxy's packet tracer walks it. Nothing here is free-form text, so no
//! writer has to parse nft's grammar.
//!
//! The model holds only the shapes skein generates. Every generated rule uses named sets and
//! maps: an anonymous set in a transaction makes the kernel's commit time grow with the square of
//! the transaction's size.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use skein_names::NftComment;

/// A value a rule reads from the packet, its metadata or its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `ip saddr` (implies IPv4).
    IpSaddr,
    /// `ip daddr` (implies IPv4).
    IpDaddr,
    /// `ip6 saddr` (implies IPv6).
    Ip6Saddr,
    /// `ip6 daddr` (implies IPv6).
    Ip6Daddr,
    /// `meta l4proto`: the transport protocol, after IPv6 extension headers.
    L4Proto,
    /// `th sport`: the transport header's source port (TCP, UDP and SCTP share the offset).
    ThSport,
    /// `th dport`.
    ThDport,
    /// `meta mark`.
    Mark,
    /// `meta nfproto`: `ipv4` or `ipv6` in the inet family.
    NfProto,
    /// `iifname`.
    IifName,
    /// `oifname`.
    OifName,
    /// `fib daddr type`: how the routing table classifies the destination address.
    FibDaddrType,
    /// `fib saddr type`: the same for the source address (`local`: the node sent it).
    FibSaddrType,
    /// `ct state` (a bit set of [`CtState`]).
    CtState,
    /// `ct status` (a bit set of [`CtStatus`]).
    CtStatus,
    /// `tcp flags` (implies TCP).
    TcpFlags,
    /// `numgen random mod modulus`: a fresh draw per packet, from 0 to `modulus - 1`; as a
    /// key part, it picks one of a map's `modulus` entries for the rest of the key.
    Random { modulus: u32 },
}

/// Bits of `ct state`, as the kernel numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtState;
impl CtState {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 1 << 1;
    pub const RELATED: u32 = 1 << 2;
    pub const NEW: u32 = 1 << 3;
    pub const UNTRACKED: u32 = 1 << 6;
}

/// Bits of `tcp flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpFlags;
impl TcpFlags {
    pub const FIN: u32 = 1;
    pub const SYN: u32 = 1 << 1;
    pub const RST: u32 = 1 << 2;
    pub const ACK: u32 = 1 << 4;
}

/// Bits of `ct status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtStatus;
impl CtStatus {
    pub const SNAT: u32 = 1 << 4;
    pub const DNAT: u32 = 1 << 5;
}

/// The address classes of `fib daddr type` skein matches on (`RTN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrType {
    Local,
}

/// A transport protocol (`meta l4proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        }
    }
}

/// A constant a field is compared with, or one part of a set element's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Addr(IpAddr),
    /// A prefix: in a set element of an interval set, the range it covers.
    Net(IpNet),
    Proto(L4Proto),
    Port(u16),
    /// A 32-bit number in host byte order (`meta mark`).
    Mark(u32),
    /// An interface name (matched whole, NUL-padded to 16 bytes).
    /// Boxed rather than a `String`: this keeps every `Value` at 24 bytes (an element holds its
    /// values packed, [`Values`], but a plan unpacks them to encode them).
    IfName(Box<str>),
    AddrType(AddrType),
    /// `ipv4` (`false`) or `ipv6` (`true`) for `meta nfproto`.
    NfProto {
        ipv6: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Neq,
}

/// One condition of a rule; a rule matches when all of its conditions hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `field value` or `field != value`.
    Cmp {
        field: Field,
        op: CmpOp,
        value: Value,
    },
    /// `ip saddr 10.42.0.0/16` or `ip saddr != 10.42.0.0/16`.
    Prefix {
        field: Field,
        net: IpNet,
        negate: bool,
    },
    /// Any of `bits` set in a 32-bit field (`ct state new`, `meta mark & 0x4000 != 0`), or, with
    /// `negate`, none of them.
    AnyBits {
        field: Field,
        bits: u32,
        negate: bool,
    },
    /// The key (one field, or several concatenated) is in the named set: `ip daddr . meta
    /// l4proto . th dport @nodeport_ips`; or, with `negate`, is not.
    InSet {
        key: Vec<Field>,
        set: String,
        negate: bool,
    },
    /// `numgen random mod modulus == value`: a fresh random draw per packet.
    Random { modulus: u32, value: u32 },
    /// `field & mask == value` (`tcp flags syn / syn,rst`).
    Masked { field: Field, mask: u32, value: u32 },
}

/// A statement that does not end the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Statement {
    /// `meta mark set meta mark | bits`.
    SetMarkBits(u32),
    /// `update @set { key }`: adds the key to a dynamic set, or refreshes its timeout.
    UpdateSet { set: String, key: Vec<Field> },
    /// `counter`.
    Counter,
    /// `notrack`: the packet skips connection tracking (raw priority hooks only).
    NoTrack,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// `reject with tcp reset` (only for TCP packets).
    TcpReset,
    /// `reject with icmpx port-unreachable` (ICMP or ICMPv6 by the packet's family).
    PortUnreachable,
}

/// How a rule ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// No verdict: the packet goes on to the next rule.
    Continue,
    Verdict(Verdict),
    /// `key vmap @map`: the verdict the map holds for the key; no entry means go on.
    Vmap {
        key: Vec<Field>,
        map: String,
    },
    /// `dnat ip to addr:port` (or `ip6 to [addr]:port`); the rule must match `meta l4proto`
    /// first when a port is given.
    Dnat {
        addr: IpAddr,
        port: Option<u16>,
    },
    /// `dnat ip to key map @map`: to the address and port the data map holds for the key
    /// (`ip6` with `ipv6`); no entry means no DNAT and the packet goes on.
    DnatMap {
        key: Vec<Field>,
        map: String,
        ipv6: bool,
    },
    /// `snat ip to addr`.
    Snat {
        addr: IpAddr,
    },
    Masquerade,
    Reject(Reject),
    /// `notrack`: no connection tracking for the packet.
    Notrack,
    /// `tcp option maxseg size set rt mtu`: the MSS clamped to the route's MTU.
    MssClampToRouteMtu,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub statements: Vec<Statement>,
    pub action: Action,
    pub comment: Option<NftComment>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Self {
        Self {
            matches,
            statements: Vec::new(),
            action,
            comment: None,
        }
    }

    pub fn with_statement(mut self, statement: Statement) -> Self {
        self.statements.push(statement);
        self
    }

    pub fn with_comment(mut self, comment: NftComment) -> Self {
        self.comment = Some(comment);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// A base chain's hook. The policy is always accept: skein's chains add to what the node
/// does, they never make a default of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hook {
    pub kind: ChainType,
    pub hook: HookPoint,
    pub priority: i32,
}

/// Priorities nft names (`NF_IP_PRI_*`).
pub mod priority {
    pub const RAW: i32 = -300;
    pub const MANGLE: i32 = -150;
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SRCNAT: i32 = 100;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    pub name: String,
    /// `None` for a regular chain, reached by jumps and gotos.
    pub hook: Option<Hook>,
}

/// The type of one part of a set's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    Mark,
    IfName,
}

impl KeyType {
    /// The type a field's values have in a set key.
    pub fn of(field: Field) -> KeyType {
        match field {
            Field::IpSaddr | Field::IpDaddr => KeyType::Ipv4Addr,
            Field::Ip6Saddr | Field::Ip6Daddr => KeyType::Ipv6Addr,
            Field::L4Proto => KeyType::InetProto,
            Field::ThSport | Field::ThDport => KeyType::InetService,
            Field::IifName | Field::OifName => KeyType::IfName,
            Field::Mark
            | Field::NfProto
            | Field::FibDaddrType
            | Field::FibSaddrType
            | Field::CtState
            | Field::CtStatus
            | Field::TcpFlags
            | Field::Random { .. } => KeyType::Mark,
        }
    }
}

/// A named set, a verdict map when `verdicts` is set, or a data map when `data` names the
/// types of what it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    pub name: String,
    /// One type, or several for a concatenated key.
    pub key: Vec<KeyType>,
    /// A verdict map (`type ... : verdict`).
    pub verdicts: bool,
    /// A data map (`type ... : ipv4_addr . inet_service`): the types of its values.
    pub data: Vec<KeyType>,
    /// Elements may be ranges (prefixes).
    pub interval: bool,
    /// Elements expire; rules may add them (`update @set`), which needs `dynamic` too.
    pub timeout: Option<Duration>,
    pub comment: Option<NftComment>,
}

impl Set {
    pub fn new(name: impl Into<String>, key: Vec<KeyType>) -> Self {
        Self {
            name: name.into(),
            key,
            verdicts: false,
            data: Vec::new(),
            interval: false,
            timeout: None,
            comment: None,
        }
    }
}

/// What a map holds for a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapped {
    Verdict(Verdict),
    /// One value per part of the map's data type.
    Data(Values),
}

pub use crate::values::Values;

/// One element of a set or map: a key (one value per part of the set's key; a [`Value::Net`]
/// for a range in an interval set) and, in a map, what it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub key: Values,
    pub value: Option<Mapped>,
}

impl Element {
    pub fn key(key: impl Into<Values>) -> Self {
        Self {
            key: key.into(),
            value: None,
        }
    }

    pub fn mapped(key: impl Into<Values>, verdict: Verdict) -> Self {
        Self {
            key: key.into(),
            value: Some(Mapped::Verdict(verdict)),
        }
    }

    pub fn data(key: impl Into<Values>, data: impl Into<Values>) -> Self {
        Self {
            key: key.into(),
            value: Some(Mapped::Data(data.into())),
        }
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.value {
            Some(Mapped::Verdict(v)) => Some(v),
            _ => None,
        }
    }
}

/// One operation on skein's table (`inet skein`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if missing (never fails on an existing one).
    AddTable,
    DeleteTable,
    /// Creates the chain if missing.
    AddChain(Chain),
    FlushChain(String),
    DeleteChain(String),
    /// Appends a rule to a chain.
    AddRule {
        chain: String,
        rule: Rule,
    },
    /// Deletes the rule with this kernel handle.
    DeleteRule {
        chain: String,
        handle: u64,
    },
    /// Creates the set if missing.
    AddSet(Set),
    FlushSet(String),
    DeleteSet(String),
    AddElements {
        set: String,
        elements: Vec<Element>,
    },
    DeleteElements {
        set: String,
        elements: Vec<Element>,
    },
}

impl Op {
    /// How many kernel messages the operation costs, which is what bounds a batch.
    pub fn weight(&self) -> usize {
        match self {
            Op::AddElements { elements, .. } | Op::DeleteElements { elements, .. } => {
                elements.len().max(1)
            }
            _ => 1,
        }
    }
}

/// An ordered list of operations applied as one atomic change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The total [`Op::weight`].
    pub fn weight(&self) -> usize {
        self.ops.iter().map(Op::weight).sum()
    }
}

/// The kernel's table as a dump returned it: enough to diff against, not a full decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDump {
    /// The ruleset's generation when the dump was taken.
    pub generation: u32,
    pub chains: std::collections::BTreeMap<String, ChainDump>,
    pub sets: std::collections::BTreeMap<String, SetDump>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainDump {
    /// Whether it is a base chain (on a hook).
    pub base: bool,
    /// The chain's rules in order.
    pub rules: Vec<RuleDump>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDump {
    pub handle: u64,
    /// The fingerprint skein stored with the rule ([`crate::fingerprint`] of the rule it
    /// sent); `None` for a rule skein did not write (someone else's `nft add rule`).
    pub fingerprint: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetDump {
    /// The set's elements as their encoded keys (and verdicts), comparable with
    /// [`crate::element_bytes`].
    pub elements: std::collections::BTreeSet<Vec<u8>>,
}

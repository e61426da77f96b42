//! A packet tracer for tests: walks a ruleset model in hook order for one packet (the first of
//! a new connection) and says what becomes of it: which endpoints it may reach, whether it is
//! marked for masquerade, dropped or rejected. A random draw (`numgen`) forks the walk, so the
//! answer is every endpoint the packet can reach. A rule shape it does not know is an error,
//! never a guess.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use skein_nft::{
    Action, AddrType, CmpOp, CtState, Element, Field, HookPoint, L4Proto, MASQUERADE_MARK, Mapped,
    Match, Reject, Rule, Statement, TcpFlags, Value, Verdict,
};

use crate::ruleset::{ChainSpec, Fragment};

/// Where a packet enters the node's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a pod or from off the node: prerouting.
    Arriving,
    /// Sent by the node itself: output.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: L4Proto,
    pub sport: u16,
    pub dport: u16,
    pub origin: Origin,
}

impl Packet {
    pub fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
        Packet {
            src: src.parse().expect("source address"),
            dst: dst.parse().expect("destination address"),
            protocol: L4Proto::Tcp,
            sport: 40000,
            dport,
            origin: Origin::Arriving,
        }
    }

    pub fn udp(src: &str, dst: &str, dport: u16) -> Packet {
        Packet {
            protocol: L4Proto::Udp,
            ..Packet::tcp(src, dst, dport)
        }
    }

    pub fn from_node(mut self) -> Packet {
        self.origin = Origin::Local;
        self
    }
}

/// What can become of the packet on one path through the rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// DNATed to this endpoint; `masquerade` when the packet is marked for it.
    Endpoint {
        addr: IpAddr,
        port: u16,
        masquerade: bool,
    },
    /// Untouched by the proxy.
    Passed {
        masquerade: bool,
    },
    Dropped,
    Rejected(RejectKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectKind {
    TcpReset,
    PortUnreachable,
}

/// A ruleset to trace through: chains and set contents, and the node's own addresses (for
/// `fib ... type local`).
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    chains: BTreeMap<String, ChainSpec>,
    sets: BTreeMap<String, BTreeSet<Element>>,
    pub local_addrs: Vec<IpAddr>,
}

/// Why a trace could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("rule shape the tracer does not know, in chain {chain}: {rule}")]
    Unknown { chain: String, rule: String },
    #[error("jump to a chain that does not exist: {0}")]
    NoChain(String),
    #[error("lookup in a set that does not exist: {0}")]
    NoSet(String),
}

/// Per-path state.
#[derive(Debug, Clone, Default)]
struct Path {
    mark: u32,
}

enum Flow {
    /// Go on with the next rule (or return to the caller at the chain's end).
    Next,
    /// `return`: back to the caller.
    Return,
    /// The hook is done with the packet: accepted by a base chain or its DNAT.
    Accept(Option<(IpAddr, u16)>),
    End(Fate),
}

impl Tracer {
    pub fn new(fragments: &[&Fragment], local_addrs: Vec<IpAddr>) -> Tracer {
        let mut t = Tracer {
            local_addrs,
            ..Tracer::default()
        };
        for f in fragments {
            for c in &f.chains {
                t.chains.insert(c.chain.name.clone(), c.clone());
            }
            for s in &f.sets {
                t.sets.entry(s.set.name.clone()).or_default();
            }
            for (set, elements) in &f.elements {
                t.sets
                    .entry(set.clone())
                    .or_default()
                    .extend(elements.iter().cloned());
            }
        }
        t
    }

    /// Every fate the packet can meet, walking the proxy's base chains in hook order:
    /// the filter chains at -110, then the nat chains at -100.
    pub fn trace(&self, packet: &Packet) -> Result<BTreeSet<Fate>, TraceError> {
        let mut fates = BTreeSet::new();
        // Each live path: its state, the packet as rewritten so far, and where it was DNATed.
        let start = vec![(Path::default(), packet.clone(), None)];
        let live = match packet.origin {
            Origin::Local => {
                let sent = self.hook(HookPoint::Output, start, &mut fates)?;
                self.hook(HookPoint::Postrouting, sent, &mut fates)?
            }
            Origin::Arriving => {
                let routed = self.hook(HookPoint::Prerouting, start, &mut fates)?;
                // After prerouting the packet is routed: to the node itself, or on.
                let (local, forwarded): (Vec<_>, Vec<_>) = routed
                    .into_iter()
                    .partition(|(_, p, _)| self.local_addrs.contains(&p.dst));
                let mut out = self.hook(HookPoint::Input, local, &mut fates)?;
                let forwarded = self.hook(HookPoint::Forward, forwarded, &mut fates)?;
                out.extend(self.hook(HookPoint::Postrouting, forwarded, &mut fates)?);
                out
            }
        };
        for (path, _, to) in live {
            let masquerade = path.mark & MASQUERADE_MARK != 0;
            fates.insert(match to {
                Some((addr, port)) => Fate::Endpoint {
                    addr,
                    port,
                    masquerade,
                },
                None => Fate::Passed { masquerade },
            });
        }
        Ok(fates)
    }

    /// Runs the base chains of one hook in priority order; a DNAT rewrites the packet for the
    /// chains after it. Paths that end (dropped, rejected) go to `fates`.
    #[expect(clippy::type_complexity, reason = "a private walk's working list")]
    fn hook(
        &self,
        hook: HookPoint,
        mut paths: Vec<(Path, Packet, Option<(IpAddr, u16)>)>,
        fates: &mut BTreeSet<Fate>,
    ) -> Result<Vec<(Path, Packet, Option<(IpAddr, u16)>)>, TraceError> {
        let mut bases: Vec<&ChainSpec> = self
            .chains
            .values()
            .filter(|c| c.chain.hook.is_some_and(|h| h.hook == hook))
            .collect();
        bases.sort_by_key(|c| c.chain.hook.map(|h| h.priority));
        for base in bases {
            let mut next = Vec::new();
            for (path, packet, to) in paths {
                for (path, flow) in self.run(&base.chain.name, &packet, path, 0)? {
                    match flow {
                        Flow::End(f) => {
                            fates.insert(f);
                        }
                        Flow::Accept(Some((addr, port))) => {
                            let mut rewritten = packet.clone();
                            rewritten.dst = addr;
                            rewritten.dport = port;
                            next.push((path, rewritten, Some((addr, port))));
                        }
                        Flow::Next | Flow::Return | Flow::Accept(None) => {
                            next.push((path, packet.clone(), to));
                        }
                    }
                }
            }
            paths = next;
        }
        Ok(paths)
    }

    /// Runs one chain; each returned path says how it left the chain.
    fn run(
        &self,
        chain: &str,
        packet: &Packet,
        path: Path,
        depth: usize,
    ) -> Result<Vec<(Path, Flow)>, TraceError> {
        if depth > 16 {
            return Err(TraceError::Unknown {
                chain: chain.to_string(),
                rule: "jumps nested deeper than 16".to_string(),
            });
        }
        let spec = self
            .chains
            .get(chain)
            .ok_or_else(|| TraceError::NoChain(chain.to_string()))?;
        let mut live = vec![path];
        let mut out = Vec::new();
        for rule in &spec.rules {
            let mut next = Vec::new();
            for path in live {
                for (path, matched) in self.matches(chain, rule, packet, path)? {
                    if !matched {
                        next.push(path);
                        continue;
                    }
                    for (path, flow) in self.act(chain, rule, packet, path, depth)? {
                        match flow {
                            Flow::Next => next.push(path),
                            other => out.push((path, other)),
                        }
                    }
                }
            }
            live = next;
            if live.is_empty() {
                break;
            }
        }
        out.extend(live.into_iter().map(|p| (p, Flow::Next)));
        Ok(out)
    }

    /// Whether the rule's conditions hold; a random draw yields both answers.
    fn matches(
        &self,
        chain: &str,
        rule: &Rule,
        packet: &Packet,
        path: Path,
    ) -> Result<Vec<(Path, bool)>, TraceError> {
        let mut branches = vec![(path, true)];
        for m in &rule.matches {
            let mut next = Vec::new();
            for (path, ok) in branches {
                if !ok {
                    next.push((path, false));
                    continue;
                }
                match m {
                    Match::Random { modulus, value } => {
                        if *value < *modulus {
                            next.push((path.clone(), true));
                        }
                        if *modulus > 1 {
                            next.push((path, false));
                        }
                    }
                    other => {
                        let ok = self.holds(chain, rule, other, packet, &path)?;
                        next.push((path, ok));
                    }
                }
            }
            branches = next;
        }
        Ok(branches)
    }

    fn holds(
        &self,
        chain: &str,
        rule: &Rule,
        m: &Match,
        packet: &Packet,
        path: &Path,
    ) -> Result<bool, TraceError> {
        let unknown = || TraceError::Unknown {
            chain: chain.to_string(),
            rule: rule.to_string(),
        };
        Ok(match m {
            Match::Cmp { field, op, value } => {
                let Some(v) = self.field(*field, packet, path) else {
                    return Ok(false); // an ip field on an IPv6 packet: the rule does not apply
                };
                (v == *value) == (*op == CmpOp::Eq)
            }
            Match::Prefix { field, net, negate } => {
                let Some(Value::Addr(a)) = self.field(*field, packet, path) else {
                    return Ok(false);
                };
                net.contains(&a) != *negate
            }
            Match::AnyBits {
                field: Field::CtState,
                bits,
                negate,
            } => (bits & CtState::NEW != 0) != *negate,
            Match::AnyBits {
                field: Field::Mark,
                bits,
                negate,
            } => (path.mark & bits != 0) != *negate,
            Match::AnyBits { .. } => return Err(unknown()),
            Match::InSet { key, set, negate } => {
                let mut values = Vec::new();
                for f in key {
                    match self.field(*f, packet, path) {
                        Some(v) => values.push(v),
                        None => return Ok(false),
                    }
                }
                let elements = self
                    .sets
                    .get(set)
                    .ok_or_else(|| TraceError::NoSet(set.clone()))?;
                elements.iter().any(|e| key_matches(&e.key, &values)) != *negate
            }
            Match::Masked {
                field: Field::TcpFlags,
                mask,
                value,
            } => packet.protocol == L4Proto::Tcp && (TcpFlags::SYN & mask) == *value,
            Match::Masked { .. } | Match::Random { .. } => return Err(unknown()),
        })
    }

    /// A field's value for this packet; `None` when the packet has no such field (IPv4 fields
    /// of an IPv6 packet).
    fn field(&self, field: Field, packet: &Packet, path: &Path) -> Option<Value> {
        let v4 = packet.src.is_ipv4();
        Some(match field {
            Field::IpSaddr if v4 => Value::Addr(packet.src),
            Field::IpDaddr if v4 => Value::Addr(packet.dst),
            Field::Ip6Saddr if !v4 => Value::Addr(packet.src),
            Field::Ip6Daddr if !v4 => Value::Addr(packet.dst),
            Field::IpSaddr | Field::IpDaddr | Field::Ip6Saddr | Field::Ip6Daddr => return None,
            Field::L4Proto => Value::Proto(packet.protocol),
            Field::ThSport => Value::Port(packet.sport),
            Field::ThDport => Value::Port(packet.dport),
            Field::Mark => Value::Mark(path.mark),
            Field::NfProto => Value::NfProto { ipv6: !v4 },
            Field::FibDaddrType if self.local_addrs.contains(&packet.dst) => {
                Value::AddrType(AddrType::Local)
            }
            Field::FibSaddrType
                if packet.origin == Origin::Local || self.local_addrs.contains(&packet.src) =>
            {
                Value::AddrType(AddrType::Local)
            }
            // Not local: a value no rule compares with.
            Field::FibDaddrType | Field::FibSaddrType => Value::Mark(0),
            // A draw is not a field of the packet: the walk forks on it (`DnatMap`).
            Field::IifName
            | Field::OifName
            | Field::CtState
            | Field::CtStatus
            | Field::TcpFlags
            | Field::Random { .. } => {
                return None;
            }
        })
    }

    fn act(
        &self,
        chain: &str,
        rule: &Rule,
        packet: &Packet,
        mut path: Path,
        depth: usize,
    ) -> Result<Vec<(Path, Flow)>, TraceError> {
        let unknown = || TraceError::Unknown {
            chain: chain.to_string(),
            rule: rule.to_string(),
        };
        for s in &rule.statements {
            match s {
                Statement::SetMarkBits(bits) => path.mark |= bits,
                // Affinity entries are the kernel's business; a trace starts with none.
                Statement::UpdateSet { .. } | Statement::Counter | Statement::NoTrack => {}
            }
        }
        let verdict = match &rule.action {
            Action::Continue => return Ok(vec![(path, Flow::Next)]),
            Action::Verdict(v) => v.clone(),
            Action::Vmap { key, map } => {
                let mut values = Vec::new();
                for f in key {
                    match self.field(*f, packet, &path) {
                        Some(v) => values.push(v),
                        None => return Ok(vec![(path, Flow::Next)]),
                    }
                }
                let elements = self
                    .sets
                    .get(map)
                    .ok_or_else(|| TraceError::NoSet(map.clone()))?;
                match elements
                    .iter()
                    .find(|e| key_matches(&e.key, &values))
                    .map(Element::verdict)
                {
                    Some(Some(v)) => v.clone(),
                    Some(None) => return Err(unknown()),
                    None => return Ok(vec![(path, Flow::Next)]),
                }
            }
            Action::DnatMap { key, map, .. } => {
                // Every value a draw can take forks the walk.
                let mut keys: Vec<Vec<Value>> = vec![Vec::new()];
                for f in key {
                    if let Field::Random { modulus } = f {
                        keys = keys
                            .into_iter()
                            .flat_map(|k| {
                                (0..*modulus).map(move |i| {
                                    let mut k = k.clone();
                                    k.push(Value::Mark(i));
                                    k
                                })
                            })
                            .collect();
                        continue;
                    }
                    let Some(v) = self.field(*f, packet, &path) else {
                        return Ok(vec![(path, Flow::Next)]);
                    };
                    for k in &mut keys {
                        k.push(v.clone());
                    }
                }
                let elements = self
                    .sets
                    .get(map)
                    .ok_or_else(|| TraceError::NoSet(map.clone()))?;
                let mut out = Vec::new();
                for k in keys {
                    let found = elements.iter().find(|e| key_matches(&e.key, &k));
                    out.push(match found.map(|e| &e.value) {
                        Some(Some(Mapped::Data(d))) => match d.to_vec()[..] {
                            [Value::Addr(a), Value::Port(p)] => {
                                (path.clone(), Flow::Accept(Some((a, p))))
                            }
                            _ => return Err(unknown()),
                        },
                        Some(_) => return Err(unknown()),
                        // No entry: no DNAT, on with the next rule.
                        None => (path.clone(), Flow::Next),
                    });
                }
                return Ok(out);
            }
            Action::Dnat {
                addr,
                port: Some(port),
            } => return Ok(vec![(path, Flow::Accept(Some((*addr, *port))))]),
            Action::Reject(Reject::TcpReset) => {
                return Ok(vec![(
                    path,
                    Flow::End(Fate::Rejected(RejectKind::TcpReset)),
                )]);
            }
            Action::Reject(Reject::PortUnreachable) => {
                return Ok(vec![(
                    path,
                    Flow::End(Fate::Rejected(RejectKind::PortUnreachable)),
                )]);
            }
            Action::Dnat { .. }
            | Action::Snat { .. }
            | Action::Masquerade
            | Action::Notrack
            | Action::MssClampToRouteMtu => return Err(unknown()),
        };
        Ok(match verdict {
            Verdict::Accept => vec![(path, Flow::Accept(None))],
            Verdict::Drop => vec![(path, Flow::End(Fate::Dropped))],
            Verdict::Return => vec![(path, Flow::Return)],
            Verdict::Jump(target) => self
                .run(&target, packet, path, depth + 1)?
                .into_iter()
                .map(|(p, flow)| match flow {
                    // Back from a jump: on with this chain.
                    Flow::Return | Flow::Next => (p, Flow::Next),
                    other => (p, other),
                })
                .collect(),
            Verdict::Goto(target) => self
                .run(&target, packet, path, depth + 1)?
                .into_iter()
                .map(|(p, flow)| match flow {
                    // The end of a goto'd chain returns to this chain's caller.
                    Flow::Return | Flow::Next => (p, Flow::Return),
                    other => (p, other),
                })
                .collect(),
        })
    }
}

/// Whether a set element's key matches the packet's values (a prefix part matches any
/// address in it).
fn key_matches(key: &skein_nft::Values, values: &[Value]) -> bool {
    key.len() == values.len()
        && key.iter().zip(values).all(|(k, v)| match (&k, v) {
            (Value::Net(n), Value::Addr(a)) => n.contains(a),
            (k, v) => k == v,
        })
}

//! A rule's expressions (`NFTA_RULE_EXPRESSIONS`) as nft 1.0.6 would build them for the same
//! text, so that `nft list` prints the rule back as [`crate::render`] renders it: the same
//! loads, registers and implicit dependencies (`meta nfproto ipv4` before an `ip` payload,
//! `meta l4proto tcp` before `tcp flags` and the MSS option).

use std::net::IpAddr;

use super::consts::*;
use super::wire::Msg;
use crate::model::*;

/// Where a field comes from and how long it is in a register.
enum Source {
    Payload {
        base: u32,
        offset: u32,
    },
    Meta(u32),
    Ct(u32),
    /// `fib daddr type` or, with `NFTA_FIB_F_SADDR`, `fib saddr type`.
    FibType(u32),
    /// `numgen random mod modulus`.
    Random(u32),
}

fn source(field: Field) -> (Source, usize) {
    use Source::*;
    let net = |offset| Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
    };
    let th = |offset| Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset,
    };
    match field {
        Field::IpSaddr => (net(12), 4),
        Field::IpDaddr => (net(16), 4),
        Field::Ip6Saddr => (net(8), 16),
        Field::Ip6Daddr => (net(24), 16),
        Field::L4Proto => (Meta(NFT_META_L4PROTO), 1),
        Field::ThSport => (th(0), 2),
        Field::ThDport => (th(2), 2),
        Field::Mark => (Meta(NFT_META_MARK), 4),
        Field::NfProto => (Meta(NFT_META_NFPROTO), 1),
        Field::IifName => (Meta(NFT_META_IIFNAME), 16),
        Field::OifName => (Meta(NFT_META_OIFNAME), 16),
        Field::FibDaddrType => (FibType(NFTA_FIB_F_DADDR), 4),
        Field::FibSaddrType => (FibType(NFTA_FIB_F_SADDR), 4),
        Field::CtState => (Ct(NFT_CT_STATE), 4),
        Field::CtStatus => (Ct(NFT_CT_STATUS), 4),
        Field::TcpFlags => (th(13), 1),
        Field::Random { modulus } => (Random(modulus), 4),
    }
}

/// How many bytes a field takes in a register.
pub(crate) fn field_len(field: Field) -> usize {
    source(field).1
}

/// A value as the kernel compares it with `field`: network order for packet bytes, host order
/// for marks and other metadata numbers, interface names NUL-padded to 16 bytes.
pub(crate) fn value_bytes(field: Field, value: &Value) -> Result<Vec<u8>, String> {
    let len = field_len(field);
    let bytes = match (field, value) {
        (Field::IpSaddr | Field::IpDaddr, Value::Addr(IpAddr::V4(a))) => a.octets().to_vec(),
        (Field::Ip6Saddr | Field::Ip6Daddr, Value::Addr(IpAddr::V6(a))) => a.octets().to_vec(),
        (Field::L4Proto, Value::Proto(p)) => vec![p.number()],
        (Field::ThSport | Field::ThDport, Value::Port(p)) => p.to_be_bytes().to_vec(),
        (Field::Mark | Field::CtState | Field::CtStatus | Field::Random { .. }, Value::Mark(m)) => {
            m.to_ne_bytes().to_vec()
        }
        (Field::TcpFlags, Value::Mark(m)) => vec![*m as u8],
        (Field::NfProto, Value::NfProto { ipv6 }) => vec![nfproto(*ipv6)],
        (Field::IifName | Field::OifName, Value::IfName(n)) => ifname(n)?,
        (Field::FibDaddrType | Field::FibSaddrType, Value::AddrType(AddrType::Local)) => {
            RTN_LOCAL.to_ne_bytes().to_vec()
        }
        _ => {
            return Err(format!(
                "{} cannot be compared with {}",
                crate::render::field(field),
                crate::render::value(value)
            ));
        }
    };
    debug_assert_eq!(bytes.len(), len);
    Ok(bytes)
}

fn nfproto(ipv6: bool) -> u8 {
    if ipv6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }
}

pub(crate) fn ifname(name: &str) -> Result<Vec<u8>, String> {
    if name.len() >= 16 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    Ok(v)
}

/// A bit pattern of `field`'s width (host order for 32-bit metadata, one byte for tcp flags).
fn bits_bytes(field: Field, bits: u32) -> Vec<u8> {
    match field_len(field) {
        1 => vec![bits as u8],
        2 => (bits as u16).to_be_bytes().to_vec(),
        _ => bits.to_ne_bytes().to_vec(),
    }
}

/// The protocol context nft keeps while it builds a rule: what earlier matches established,
/// so that a dependency is added only where nft adds one.
#[derive(Default)]
struct Context {
    ipv6: Option<bool>,
    l4: Option<L4Proto>,
}

/// The register a value `offset` bytes into a (concatenated) key is loaded into: `NFT_REG_1` for
/// the first (as nft does), then the 32-bit registers that follow it.
fn register(offset: usize) -> u32 {
    if offset == 0 {
        NFT_REG_1
    } else {
        NFT_REG32_00 + (offset / 4) as u32
    }
}

/// The 64 bytes of registers a key can fill (`NFT_REG32_00` to `NFT_REG32_15`).
const REGISTER_BYTES: usize = 64;

struct Builder<'a> {
    m: &'a mut Msg,
    ctx: Context,
}

/// Appends the rule's expressions to `m` as one `NFTA_RULE_EXPRESSIONS` list.
pub(crate) fn expressions(m: &mut Msg, rule: &Rule) -> Result<(), String> {
    m.begin(NFTA_RULE_EXPRESSIONS);
    let mut b = Builder {
        m,
        ctx: Context::default(),
    };
    for matched in &rule.matches {
        b.matched(matched)?;
    }
    for statement in &rule.statements {
        b.statement(statement)?;
    }
    b.action(&rule.action)?;
    b.m.end();
    Ok(())
}

impl Builder<'_> {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Msg)) {
        self.m
            .begin(NFTA_LIST_ELEM)
            .str(NFTA_EXPR_NAME, name)
            .begin(NFTA_EXPR_DATA);
        body(self.m);
        self.m.end().end();
    }

    /// The implicit match nft puts before a field that only exists for one protocol.
    fn dependency(&mut self, field: Field) {
        match field {
            Field::IpSaddr | Field::IpDaddr => self.need_family(false),
            Field::Ip6Saddr | Field::Ip6Daddr => self.need_family(true),
            Field::TcpFlags => self.need_l4(L4Proto::Tcp),
            _ => {}
        }
    }

    fn need_family(&mut self, ipv6: bool) {
        if self.ctx.ipv6 != Some(ipv6) {
            self.load_raw(Field::NfProto, NFT_REG_1);
            self.cmp(NFT_CMP_EQ, &[nfproto(ipv6)]);
            self.ctx.ipv6 = Some(ipv6);
        }
    }

    fn need_l4(&mut self, proto: L4Proto) {
        if self.ctx.l4 != Some(proto) {
            self.load_raw(Field::L4Proto, NFT_REG_1);
            self.cmp(NFT_CMP_EQ, &[proto.number()]);
            self.ctx.l4 = Some(proto);
        }
    }

    fn load(&mut self, field: Field) {
        self.dependency(field);
        self.load_raw(field, NFT_REG_1);
    }

    /// Loads a key of one or more fields into consecutive registers, dependencies first (they
    /// use register 1 too); returns the first register.
    fn load_key(&mut self, key: &[Field]) -> Result<u32, String> {
        let total: usize = key.iter().map(|f| super::wire::align4(field_len(*f))).sum();
        if key.is_empty() || total > REGISTER_BYTES {
            return Err(format!(
                "a key of {} bytes does not fit the registers",
                total
            ));
        }
        for f in key {
            self.dependency(*f);
        }
        let mut offset = 0;
        for f in key {
            self.load_raw(*f, register(offset));
            offset += super::wire::align4(field_len(*f));
        }
        Ok(NFT_REG_1)
    }

    fn load_raw(&mut self, field: Field, dreg: u32) {
        let (src, len) = source(field);
        match src {
            Source::Payload { base, offset } => self.expr("payload", |m| {
                m.u32(NFTA_PAYLOAD_DREG, dreg)
                    .u32(NFTA_PAYLOAD_BASE, base)
                    .u32(NFTA_PAYLOAD_OFFSET, offset)
                    .u32(NFTA_PAYLOAD_LEN, len as u32);
            }),
            Source::Meta(key) => self.expr("meta", |m| {
                m.u32(NFTA_META_KEY, key).u32(NFTA_META_DREG, dreg);
            }),
            Source::Ct(key) => self.expr("ct", |m| {
                m.u32(NFTA_CT_KEY, key).u32(NFTA_CT_DREG, dreg);
            }),
            Source::FibType(flags) => self.expr("fib", |m| {
                m.u32(NFTA_FIB_DREG, dreg)
                    .u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                    .u32(NFTA_FIB_FLAGS, flags);
            }),
            Source::Random(modulus) => self.random(modulus, dreg),
        }
    }

    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.expr("cmp", |m| {
            m.u32(NFTA_CMP_SREG, NFT_REG_1)
                .u32(NFTA_CMP_OP, op)
                .data_value(NFTA_CMP_DATA, data);
        });
    }

    /// `reg1 = (reg1 & mask) ^ xor`.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |m| {
            m.u32(NFTA_BITWISE_SREG, NFT_REG_1)
                .u32(NFTA_BITWISE_DREG, NFT_REG_1)
                .u32(NFTA_BITWISE_OP, NFT_BITWISE_BOOL)
                .u32(NFTA_BITWISE_LEN, mask.len() as u32)
                .data_value(NFTA_BITWISE_MASK, mask)
                .data_value(NFTA_BITWISE_XOR, xor);
        });
    }

    fn random(&mut self, modulus: u32, dreg: u32) {
        self.expr("numgen", |m| {
            m.u32(NFTA_NG_DREG, dreg)
                .u32(NFTA_NG_MODULUS, modulus)
                .u32(NFTA_NG_TYPE, NFT_NG_RANDOM);
        });
    }

    /// A lookup of the key in `sreg`; with `dreg`, a map's value is loaded there (the verdict
    /// register for a verdict map).
    fn lookup(&mut self, set: &str, sreg: u32, dreg: Option<u32>, invert: bool) {
        self.expr("lookup", |m| {
            m.str(NFTA_LOOKUP_SET, set).u32(NFTA_LOOKUP_SREG, sreg);
            if let Some(dreg) = dreg {
                m.u32(NFTA_LOOKUP_DREG, dreg);
            }
            if invert {
                m.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    fn matched(&mut self, matched: &Match) -> Result<(), String> {
        match matched {
            Match::Cmp { field, op, value } => {
                let data = value_bytes(*field, value)?;
                self.load(*field);
                self.cmp(cmp_op(*op), &data);
                if *op == CmpOp::Eq {
                    match (field, value) {
                        (Field::NfProto, Value::NfProto { ipv6 }) => self.ctx.ipv6 = Some(*ipv6),
                        (Field::L4Proto, Value::Proto(p)) => self.ctx.l4 = Some(*p),
                        _ => {}
                    }
                }
            }
            Match::Prefix { field, net, negate } => {
                let (addr, mask) = match (field, net) {
                    (Field::IpSaddr | Field::IpDaddr, ipnet::IpNet::V4(n)) => {
                        (n.network().octets().to_vec(), n.netmask().octets().to_vec())
                    }
                    (Field::Ip6Saddr | Field::Ip6Daddr, ipnet::IpNet::V6(n)) => {
                        (n.network().octets().to_vec(), n.netmask().octets().to_vec())
                    }
                    _ => {
                        return Err(format!(
                            "{} cannot be compared with {net}",
                            crate::render::field(*field)
                        ));
                    }
                };
                self.load(*field);
                if net.prefix_len() < net.max_prefix_len() {
                    self.bitwise(&mask, &vec![0; mask.len()]);
                }
                self.cmp(if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &addr);
            }
            Match::AnyBits {
                field,
                bits,
                negate,
            } => {
                let mask = bits_bytes(*field, *bits);
                self.load(*field);
                self.bitwise(&mask, &vec![0; mask.len()]);
                let op = if *negate { NFT_CMP_EQ } else { NFT_CMP_NEQ };
                self.cmp(op, &vec![0; mask.len()]);
            }
            Match::Masked { field, mask, value } => {
                let mask_bytes = bits_bytes(*field, *mask);
                self.load(*field);
                self.bitwise(&mask_bytes, &vec![0; mask_bytes.len()]);
                self.cmp(NFT_CMP_EQ, &bits_bytes(*field, *value));
            }
            Match::InSet { key, set, negate } => {
                let sreg = self.load_key(key)?;
                self.lookup(set, sreg, None, *negate);
            }
            Match::Random { modulus, value } => {
                self.random(*modulus, NFT_REG_1);
                self.cmp(NFT_CMP_EQ, &value.to_ne_bytes());
            }
        }
        Ok(())
    }

    fn statement(&mut self, statement: &Statement) -> Result<(), String> {
        match statement {
            Statement::SetMarkBits(bits) => {
                self.load_raw(Field::Mark, NFT_REG_1);
                self.bitwise(&(!bits).to_ne_bytes(), &bits.to_ne_bytes());
                self.expr("meta", |m| {
                    m.u32(NFTA_META_KEY, NFT_META_MARK)
                        .u32(NFTA_META_SREG, NFT_REG_1);
                });
            }
            Statement::UpdateSet { set, key } => {
                let sreg = self.load_key(key)?;
                self.expr("dynset", |m| {
                    m.str(NFTA_DYNSET_SET_NAME, set)
                        .u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE)
                        .u32(NFTA_DYNSET_SREG_KEY, sreg);
                });
            }
            Statement::Counter => self.expr("counter", |m| {
                m.u64(NFTA_COUNTER_BYTES, 0).u64(NFTA_COUNTER_PACKETS, 0);
            }),
            Statement::NoTrack => self.expr("notrack", |_| {}),
        }
        Ok(())
    }

    fn action(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Continue => {}
            Action::Verdict(v) => self.expr("immediate", |m| {
                m.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                m.begin(NFTA_IMMEDIATE_DATA);
                verdict(m, v);
                m.end();
            }),
            Action::Vmap { key, map } => {
                let sreg = self.load_key(key)?;
                self.lookup(map, sreg, Some(NFT_REG_VERDICT), false);
            }
            Action::DnatMap { key, map, ipv6 } => {
                // As nft: the family's dependency first (the key may not name it), the map's
                // address and port into register 1 and the 32-bit register after the address.
                self.need_family(*ipv6);
                let sreg = self.load_key(key)?;
                self.lookup(map, sreg, Some(NFT_REG_1), false);
                let (family, addr_len) = if *ipv6 {
                    (NFPROTO_IPV6, 16)
                } else {
                    (NFPROTO_IPV4, 4)
                };
                self.expr("nat", |m| {
                    m.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
                        .u32(NFTA_NAT_FAMILY, u32::from(family))
                        .u32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1)
                        .u32(NFTA_NAT_REG_PROTO_MIN, register(addr_len))
                        .u32(
                            NFTA_NAT_FLAGS,
                            NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
                        );
                });
            }
            Action::Dnat { addr, port } => self.nat(NFT_NAT_DNAT, *addr, *port),
            Action::Snat { addr } => self.nat(NFT_NAT_SNAT, *addr, None),
            Action::Masquerade => self.expr("masq", |_| {}),
            Action::Reject(kind) => {
                let (ty, code) = match kind {
                    Reject::TcpReset => (NFT_REJECT_TCP_RST, 0u8),
                    Reject::PortUnreachable => (
                        NFT_REJECT_ICMPX_UNREACH,
                        NFT_REJECT_ICMPX_PORT_UNREACH as u8,
                    ),
                };
                self.expr("reject", |m| {
                    m.u32(NFTA_REJECT_TYPE, ty)
                        .bytes(NFTA_REJECT_ICMP_CODE, &[code]);
                });
            }
            Action::Notrack => self.expr("notrack", |_| {}),
            Action::MssClampToRouteMtu => {
                self.need_l4(L4Proto::Tcp);
                self.expr("rt", |m| {
                    m.u32(NFTA_RT_KEY, NFT_RT_TCPMSS)
                        .u32(NFTA_RT_DREG, NFT_REG_1);
                });
                // The route's MSS arrives in host order; the option is written in network order.
                self.expr("byteorder", |m| {
                    m.u32(NFTA_BYTEORDER_SREG, NFT_REG_1)
                        .u32(NFTA_BYTEORDER_DREG, NFT_REG_1)
                        .u32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON)
                        .u32(NFTA_BYTEORDER_LEN, 2)
                        .u32(NFTA_BYTEORDER_SIZE, 2);
                });
                self.expr("exthdr", |m| {
                    m.bytes(NFTA_EXTHDR_TYPE, &[TCPOPT_MAXSEG as u8])
                        .u32(NFTA_EXTHDR_OFFSET, 2)
                        .u32(NFTA_EXTHDR_LEN, 2)
                        .u32(NFTA_EXTHDR_SREG, NFT_REG_1)
                        .u32(NFTA_EXTHDR_OP, NFT_EXTHDR_OP_TCPOPT);
                });
            }
        }
        Ok(())
    }

    /// The address in register 1 and the port in register 2, as nft loads them.
    fn nat(&mut self, ty: u32, addr: IpAddr, port: Option<u16>) {
        let (family, bytes) = match addr {
            IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
            IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
        };
        self.expr("immediate", |m| {
            m.u32(NFTA_IMMEDIATE_DREG, NFT_REG_1)
                .data_value(NFTA_IMMEDIATE_DATA, &bytes);
        });
        if let Some(p) = port {
            self.expr("immediate", |m| {
                m.u32(NFTA_IMMEDIATE_DREG, NFT_REG_1 + 1)
                    .data_value(NFTA_IMMEDIATE_DATA, &p.to_be_bytes());
            });
        }
        self.expr("nat", |m| {
            m.u32(NFTA_NAT_TYPE, ty)
                .u32(NFTA_NAT_FAMILY, u32::from(family))
                .u32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            if port.is_some() {
                m.u32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_1 + 1)
                    .u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
            }
        });
    }
}

fn cmp_op(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => NFT_CMP_EQ,
        CmpOp::Neq => NFT_CMP_NEQ,
    }
}

/// `NFTA_DATA_VERDICT { code, chain }` inside an already opened data attribute.
pub(crate) fn verdict(m: &mut Msg, v: &Verdict) {
    let (code, chain) = verdict_code(v);
    m.begin(NFTA_DATA_VERDICT)
        .u32(NFTA_VERDICT_CODE, code as u32);
    if let Some(c) = chain {
        m.str(NFTA_VERDICT_CHAIN, c);
    }
    m.end();
}

pub(crate) fn verdict_code(v: &Verdict) -> (i32, Option<&str>) {
    match v {
        Verdict::Accept => (NF_ACCEPT as i32, None),
        Verdict::Drop => (NF_DROP as i32, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO, Some(c)),
    }
}

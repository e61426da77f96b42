//! A query in, an answer out, in wire form: the question parsed by hand, the answer copied
//! from the index's ready records, only the ID, the flags, the question (as asked, so its case
//! is echoed) and the EDNS record written per query. No IO; the servers call it.

use crate::index::{Index, Lookup};
use crate::name::{MAX_LABEL, MAX_NAME};
use crate::records::{
    self, CLASS_ANY, CLASS_IN, TYPE_ANY, TYPE_AXFR, TYPE_CNAME, TYPE_IXFR, TYPE_MAILA, TYPE_MAILB,
    TYPE_OPT,
};

pub const HEADER: usize = 12;
/// A UDP answer's size without EDNS (RFC 1035 4.2.1).
pub const PLAIN_UDP: usize = 512;
/// The largest UDP answer by default, whatever a client offers: the DNS flag day 2020 value,
/// which fits the pods' MTU unfragmented.
pub const DEFAULT_MAX_UDP: u16 = 1232;

/// Response codes (RFC 1035 4.1.1, RFC 6891 for BADVERS).
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const BADVERS: u16 = 16;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The EDNS(0) record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A query's question, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The name, lower case, wire form.
    pub name: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the query (the header and question are copied from there).
    pub end: usize,
    pub edns: Option<Edns>,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is in the output buffer; its response code.
    Answer(u16),
    /// Outside every zone answered here: forward it (the question says what to cache by).
    Forward(Question),
    /// An ExternalName: the buffer holds the answer with the CNAME; the target's records of the
    /// question's type come from the forwarder.
    Chase { question: Question, target: Vec<u8> },
    /// Nothing to send: not a query (too short to answer, or a response).
    Drop,
}

/// Where a query could not be parsed, and the code to answer with.
enum Refusal {
    Drop,
    Rcode(u16),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Skips a name that may be compressed; the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *b.get(at)? as usize;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2).filter(|e| *e <= b.len()),
            l if l <= MAX_LABEL => at += 1 + l,
            _ => return None,
        }
    }
}

/// The question and EDNS record of a query; a refusal says whether to answer at all.
fn parse(query: &[u8]) -> Result<Question, (Refusal, Option<Question>)> {
    if query.len() < HEADER {
        return Err((Refusal::Drop, None));
    }
    let flags = u16_at(query, 2).unwrap_or_default();
    if flags & 0x8000 != 0 {
        // A response: answering it would let two servers loop.
        return Err((Refusal::Drop, None));
    }
    let counts = [4, 6, 8, 10].map(|at| u16_at(query, at).unwrap_or_default());
    let mut q = Question {
        id: u16_at(query, 0).unwrap_or_default(),
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        name: Vec::new(),
        qtype: 0,
        qclass: 0,
        end: HEADER,
        edns: None,
    };
    let opcode = (flags >> 11) & 0xF;
    if counts[0] != 1 {
        return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
    }
    // The question's name: labels only (a pointer in the first name could only point back
    // into the header).
    let mut at = HEADER;
    let mut name = Vec::with_capacity(64);
    loop {
        let Some(&len) = query.get(at) else {
            return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
        };
        let len = len as usize;
        if len > MAX_LABEL || at + 1 + len > query.len() || name.len() + 1 + len > MAX_NAME {
            return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
        }
        name.push(len as u8);
        name.extend(
            query[at + 1..at + 1 + len]
                .iter()
                .map(u8::to_ascii_lowercase),
        );
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    let (Some(qtype), Some(qclass)) = (u16_at(query, at), u16_at(query, at + 2)) else {
        return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
    };
    q.name = name;
    q.qtype = qtype;
    q.qclass = qclass;
    q.end = at + 4;
    if opcode != 0 {
        return Err((Refusal::Rcode(rcode::NOTIMP), Some(q)));
    }
    if counts[1] != 0 || counts[2] != 0 {
        return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
    }
    // The additional section: at most one OPT, at the root.
    let mut at = q.end;
    for _ in 0..counts[3] {
        let start = at;
        let Some(after) = skip_name(query, at) else {
            return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
        };
        let (Some(rtype), Some(class), Some(rdlen)) = (
            u16_at(query, after),
            u16_at(query, after + 2),
            u16_at(query, after + 8),
        ) else {
            return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
        };
        let ttl = query.get(after + 4..after + 8).unwrap_or_default();
        at = after + 10 + rdlen as usize;
        if at > query.len() {
            return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
        }
        if rtype == TYPE_OPT {
            if q.edns.is_some() || after != start + 1 || query[start] != 0 {
                return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
            }
            q.edns = Some(Edns {
                udp_size: class,
                version: ttl[1],
                dnssec_ok: ttl[2] & 0x80 != 0,
            });
        }
    }
    if q.qtype == TYPE_OPT {
        return Err((Refusal::Rcode(rcode::FORMERR), Some(q)));
    }
    Ok(q)
}

/// The largest answer this transport may carry for this question.
pub fn limit(q: &Question, transport: Transport, max_udp: u16) -> usize {
    match (transport, q.edns) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, None) => PLAIN_UDP,
        (Transport::Udp, Some(e)) => (e.udp_size.min(max_udp) as usize).max(PLAIN_UDP),
    }
}

/// An answer under way: the header's counts are patched in when it is done.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    answers: u16,
    authority: u16,
    additional: u16,
}

impl Writer<'_> {
    /// An answer record whose owner is the question's name (a pointer to offset 12).
    fn answer_body(&mut self, body: &[u8]) {
        self.owner_body(HEADER as u16, body);
    }

    fn owner_body(&mut self, owner_at: u16, body: &[u8]) {
        self.out.extend((0xC000 | owner_at).to_be_bytes());
        self.out.extend_from_slice(body);
        self.answers += 1;
    }
}

fn write_header(out: &mut Vec<u8>, q: &Question, rcode: u16, authoritative: bool) {
    let mut flags = 0x8000u16 | 0x0080; // QR, RA
    if authoritative {
        flags |= 0x0400;
    }
    if q.recursion_desired {
        flags |= 0x0100;
    }
    if q.checking_disabled {
        flags |= 0x0010;
    }
    flags |= rcode & 0xF;
    out.extend(q.id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend([0u8; 8]);
}

fn set_counts(out: &mut [u8], qd: u16, an: u16, ns: u16, ar: u16) {
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..8].copy_from_slice(&an.to_be_bytes());
    out[8..10].copy_from_slice(&ns.to_be_bytes());
    out[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// The OPT record of an answer to an EDNS query: our UDP size, the upper bits of the code.
fn write_opt(out: &mut Vec<u8>, rcode: u16, max_udp: u16) {
    out.push(0);
    out.extend(TYPE_OPT.to_be_bytes());
    out.extend(max_udp.to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.extend([0u8, 0, 0]);
    out.extend(0u16.to_be_bytes());
}

/// An answer with no records: the header, the question if there was one, OPT.
pub fn write_error(
    out: &mut Vec<u8>,
    query: &[u8],
    q: Option<&Question>,
    rcode: u16,
    max_udp: u16,
) {
    out.clear();
    match q {
        Some(q) if q.end > HEADER => {
            write_header(out, q, rcode, false);
            out.extend_from_slice(&query[HEADER..q.end]);
            let opt = q.edns.is_some() as u16;
            if q.edns.is_some() {
                write_opt(out, rcode, max_udp);
            }
            set_counts(out, 1, 0, 0, opt);
        }
        Some(q) => {
            write_header(out, q, rcode, false);
        }
        None => {}
    }
}

/// Answers `query` from `index` into `out` (cleared first), or says where it goes instead.
pub fn respond(
    index: &Index,
    query: &[u8],
    transport: Transport,
    max_udp: u16,
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    let q = match parse(query) {
        Ok(q) => q,
        Err((Refusal::Drop, _)) => return Outcome::Drop,
        Err((Refusal::Rcode(code), q)) => {
            write_error(out, query, q.as_ref(), code, max_udp);
            return Outcome::Answer(code);
        }
    };
    if let Some(e) = q.edns
        && e.version != 0
    {
        write_error(out, query, Some(&q), rcode::BADVERS, max_udp);
        return Outcome::Answer(rcode::BADVERS);
    }
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        write_error(out, query, Some(&q), rcode::REFUSED, max_udp);
        return Outcome::Answer(rcode::REFUSED);
    }
    let entry = match index.lookup(&q.name) {
        Lookup::Outside => {
            return match q.qtype {
                TYPE_AXFR | TYPE_IXFR | TYPE_MAILA | TYPE_MAILB => {
                    write_error(out, query, Some(&q), rcode::NOTIMP, max_udp);
                    Outcome::Answer(rcode::NOTIMP)
                }
                _ => Outcome::Forward(q),
            };
        }
        found => found,
    };
    match q.qtype {
        // No zone transfers of the cluster zone.
        TYPE_AXFR | TYPE_IXFR => {
            write_error(out, query, Some(&q), rcode::REFUSED, max_udp);
            return Outcome::Answer(rcode::REFUSED);
        }
        TYPE_MAILA | TYPE_MAILB => {
            write_error(out, query, Some(&q), rcode::NOTIMP, max_udp);
            return Outcome::Answer(rcode::NOTIMP);
        }
        _ => {}
    }

    write_header(out, &q, rcode::NOERROR, true);
    out.extend_from_slice(&query[HEADER..q.end]);
    let mut w = Writer {
        out,
        answers: 0,
        authority: 0,
        additional: 0,
    };
    let mut extra: Vec<(&[u8], u16)> = Vec::new();
    let mut code = rcode::NOERROR;
    let mut chase = None;
    match entry {
        Lookup::Name(entry) => {
            if let (Some(target), true) = (&entry.alias, q.qtype != TYPE_CNAME) {
                // The CNAME, then the target's records: from the index when it is ours.
                let cname = entry.set(TYPE_CNAME).and_then(|s| s.iter().next());
                if let Some(body) = cname {
                    let rdata_at = (w.out.len() + 2 + 10) as u16;
                    w.answer_body(body);
                    match index.lookup(target) {
                        Lookup::Name(t) => {
                            for set in t
                                .sets
                                .iter()
                                .filter(|s| q.qtype == TYPE_ANY || s.rtype == q.qtype)
                            {
                                for body in set.iter() {
                                    w.owner_body(rdata_at, body);
                                }
                            }
                        }
                        Lookup::Pod(ip) => {
                            let data = records::Data::Ip(ip);
                            if data.rtype() == q.qtype {
                                w.owner_body(
                                    rdata_at,
                                    &records::body(data.rtype(), index.ttl(), &data.rdata()),
                                );
                            }
                        }
                        Lookup::NoName => {}
                        Lookup::Outside => chase = Some(target.to_vec()),
                    }
                }
            } else {
                for set in entry
                    .sets
                    .iter()
                    .filter(|s| q.qtype == TYPE_ANY || s.rtype == q.qtype)
                {
                    for body in set.iter() {
                        w.answer_body(body);
                    }
                    if set.extra_count > 0 {
                        extra.push((&set.extra, set.extra_count));
                    }
                }
            }
        }
        Lookup::Pod(ip) => {
            let data = records::Data::Ip(ip);
            if q.qtype == data.rtype() || q.qtype == TYPE_ANY {
                w.answer_body(&records::body(data.rtype(), index.ttl(), &data.rdata()));
            }
        }
        Lookup::NoName => code = rcode::NXDOMAIN,
        Lookup::Outside => unreachable!("forwarded above"),
    }
    if let Some(target) = chase {
        let (an, ns, ar) = (w.answers, w.authority, w.additional);
        set_counts(w.out, 1, an, ns, ar);
        return Outcome::Chase {
            question: q,
            target,
        };
    }
    if w.answers == 0
        && let Some(auth) = index.authority(&q.name)
    {
        w.out.extend_from_slice(&auth.soa);
        w.authority += 1;
    }
    for (records, count) in extra {
        w.out.extend_from_slice(records);
        w.additional += count;
    }
    if q.edns.is_some() {
        write_opt(w.out, code, max_udp);
        w.additional += 1;
    }
    let (an, ns, ar) = (w.answers, w.authority, w.additional);
    set_counts(out, 1, an, ns, ar);
    out[3] = (out[3] & 0xF0) | (code & 0xF) as u8;
    if out.len() > limit(&q, transport, max_udp) {
        // Too big for UDP: the question alone, TC set, so the client asks again over TCP.
        out.truncate(q.end);
        out[2] |= 0x02;
        let opt = q.edns.is_some() as u16;
        if q.edns.is_some() {
            write_opt(out, code, max_udp);
        }
        set_counts(out, 1, 0, 0, opt);
    }
    Outcome::Answer(code)
}

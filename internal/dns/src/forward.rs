//! Names outside the zones answered here go to the upstream servers (`dns.upstreams`), through
//! a cache: positive and negative answers, bounded in entries, their TTLs capped. Upstreams are
//! tried in order, a failing one after the healthy ones until a health check (`. NS`, as
//! CoreDNS's forward plugin sends) finds it answering again; a truncated UDP answer is asked
//! again over TCP; when none answers within the deadline the client gets SERVFAIL, not
//! silence.
//!
//! Messages here are hickory-proto's: this is the path where parsing costs nothing next to the
//! round trip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::answer::{self, Question, Transport};
use crate::name;

/// How long a client waits at most before SERVFAIL.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// One try of one upstream.
const ATTEMPT: Duration = Duration::from_millis(1000);
/// Failures in a row that take an upstream out of the first rank.
const UNHEALTHY_AFTER: u32 = 2;

/// Cache bounds, as k3s's Corefile (`cache 30`) and CoreDNS's default capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    pub entries: usize,
    pub max_ttl: Duration,
    pub max_negative_ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            entries: 9984,
            max_ttl: Duration::from_secs(30),
            max_negative_ttl: Duration::from_secs(30),
        }
    }
}

/// One upstream and what the forwarder has seen of it.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    failures_in_a_row: AtomicU32,
    answers: AtomicU64,
    failures: AtomicU64,
    last_rtt_us: AtomicU64,
}

/// An upstream's state for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub answers: u64,
    pub failures: u64,
    pub last_rtt_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: Vec<u8>,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
}

#[derive(Debug)]
struct Cached {
    message: Message,
    stored: Instant,
    ttl: Duration,
}

/// Counters of the forwarder, read by the page and the metrics.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub servfails: AtomicU64,
}

#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    cache: Mutex<HashMap<Key, Cached>>,
    limits: CacheLimits,
    max_udp: u16,
    pub counters: ForwardCounters,
}

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream DNS server is configured")]
    NoUpstreams,
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, limits: CacheLimits, max_udp: u16) -> Self {
        Self {
            upstreams: upstreams
                .into_iter()
                .map(|addr| Upstream {
                    addr,
                    healthy: AtomicBool::new(true),
                    failures_in_a_row: AtomicU32::new(0),
                    answers: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    last_rtt_us: AtomicU64::new(0),
                })
                .collect(),
            cache: Mutex::new(HashMap::new()),
            limits,
            max_udp,
            counters: ForwardCounters::default(),
        }
    }

    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.upstreams
            .iter()
            .map(|u| UpstreamStatus {
                addr: u.addr,
                healthy: u.healthy.load(Ordering::Relaxed),
                answers: u.answers.load(Ordering::Relaxed),
                failures: u.failures.load(Ordering::Relaxed),
                last_rtt_us: u.last_rtt_us.load(Ordering::Relaxed),
            })
            .collect()
    }

    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or_default()
    }

    /// The answer to a client's `query` (its bytes, parsed as `q`) from the cache or an
    /// upstream, with the client's ID and question; SERVFAIL when none answers in time.
    /// Returns the answer's response code.
    pub async fn forward(
        &self,
        query: &[u8],
        q: &Question,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> u16 {
        match self
            .resolve(
                &q.name,
                q.qtype,
                q.qclass,
                q.edns.is_some_and(|e| e.dnssec_ok),
                q.checking_disabled,
            )
            .await
        {
            Ok((mut message, age)) => {
                age_ttls(&mut message, age);
                message.metadata.authoritative = false;
                finish(query, q, message, transport, self.max_udp, out)
            }
            Err(e) => {
                tracing::debug!(name = %name::text(&q.name), error = %e, "dns: forwarding failed");
                self.counters.servfails.fetch_add(1, Ordering::Relaxed);
                answer::write_error(out, query, Some(q), answer::rcode::SERVFAIL, self.max_udp);
                answer::rcode::SERVFAIL
            }
        }
    }

    /// An ExternalName's answer: its CNAME (owner the question's name as asked) and the
    /// target's records of the asked type, as CoreDNS gives them (glibc does not chase a bare
    /// CNAME). A target that does not resolve leaves the CNAME alone.
    pub async fn chase(
        &self,
        query: &[u8],
        q: &Question,
        target: &[u8],
        ttl: u32,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> u16 {
        let Ok(client) = Message::from_vec(query) else {
            answer::write_error(out, query, Some(q), answer::rcode::FORMERR, self.max_udp);
            return answer::rcode::FORMERR;
        };
        let (Some(asked), Some(target_name)) = (client.queries.first(), wire_to_name(target))
        else {
            answer::write_error(out, query, Some(q), answer::rcode::FORMERR, self.max_udp);
            return answer::rcode::FORMERR;
        };
        let mut message = Message::new(q.id, MessageType::Response, OpCode::Query);
        message.add_answer(Record::from_rdata(
            asked.name.clone(),
            ttl,
            RData::CNAME(CNAME(target_name)),
        ));
        if let Ok((found, age)) = self
            .resolve(target, q.qtype, q.qclass, false, q.checking_disabled)
            .await
        {
            let mut found = found;
            age_ttls(&mut found, age);
            message.answers.extend(found.answers);
        }
        message.metadata.authoritative = true;
        finish(query, q, message, transport, self.max_udp, out)
    }

    /// The upstreams' answer to a question, from the cache when it is there: the message and
    /// how long it has been kept.
    async fn resolve(
        &self,
        qname: &[u8],
        qtype: u16,
        qclass: u16,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Result<(Message, Duration), ForwardError> {
        let key = Key {
            name: qname.to_vec(),
            qtype,
            qclass,
            dnssec_ok,
            checking_disabled,
        };
        if let Some(hit) = self.cached(&key) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let name = wire_to_name(qname).ok_or(ForwardError::Timeout(DEADLINE))?;
        let mut query = Query::query(name, RecordType::from(qtype));
        query.set_query_class(DNSClass::from(qclass));
        let message = self.ask(&query, dnssec_ok, checking_disabled).await?;
        if let Some(ttl) = cache_ttl(&message, &self.limits) {
            self.store(key, &message, ttl);
        }
        Ok((message, Duration::ZERO))
    }

    fn cached(&self, key: &Key) -> Option<(Message, Duration)> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get(key)?;
        let age = entry.stored.elapsed();
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        Some((entry.message.clone(), age))
    }

    fn store(&self, key: Key, message: &Message, ttl: Duration) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= self.limits.entries {
            cache.retain(|_, e| e.stored.elapsed() < e.ttl);
            // Still full: drop an arbitrary entry (the map's order is random per process).
            if cache.len() >= self.limits.entries
                && let Some(k) = cache.keys().next().cloned()
            {
                cache.remove(&k);
            }
        }
        cache.insert(
            key,
            Cached {
                message: message.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// The upstreams in the order to try them: healthy first, each in configured order.
    fn order(&self) -> Vec<&Upstream> {
        let (mut healthy, sick): (Vec<&Upstream>, Vec<&Upstream>) = self
            .upstreams
            .iter()
            .partition(|u| u.healthy.load(Ordering::Relaxed));
        healthy.extend(sick);
        healthy
    }

    async fn ask(
        &self,
        query: &Query,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let started = Instant::now();
        // Each upstream at most twice, while the deadline allows.
        let order = self.order();
        for upstream in order.iter().chain(order.iter()) {
            let left = DEADLINE.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let t = Instant::now();
            match tokio::time::timeout(
                left.min(ATTEMPT),
                exchange(
                    upstream.addr,
                    query,
                    dnssec_ok,
                    checking_disabled,
                    self.max_udp,
                ),
            )
            .await
            {
                Ok(Ok(answer)) => {
                    upstream.answers.fetch_add(1, Ordering::Relaxed);
                    upstream
                        .last_rtt_us
                        .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    upstream.failures_in_a_row.store(0, Ordering::Relaxed);
                    upstream.healthy.store(true, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %upstream.addr, error = %e, "dns: upstream failed");
                    self.failed(upstream);
                    // A refusal comes at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
                Err(_) => self.failed(upstream),
            }
        }
        Err(ForwardError::Timeout(DEADLINE))
    }

    fn failed(&self, upstream: &Upstream) {
        upstream.failures.fetch_add(1, Ordering::Relaxed);
        if upstream.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= UNHEALTHY_AFTER {
            upstream.healthy.store(false, Ordering::Relaxed);
        }
    }

    /// Asks each unhealthy upstream for `. NS`; one that answers is healthy again. The daemon
    /// calls it every few seconds.
    pub async fn health_check(&self) {
        for upstream in self
            .upstreams
            .iter()
            .filter(|u| !u.healthy.load(Ordering::Relaxed))
        {
            let query = Query::query(Name::root(), RecordType::NS);
            if let Ok(Ok(_)) = tokio::time::timeout(
                ATTEMPT,
                exchange(upstream.addr, &query, false, false, self.max_udp),
            )
            .await
            {
                tracing::info!(upstream = %upstream.addr, "dns: upstream answers again");
                upstream.failures_in_a_row.store(0, Ordering::Relaxed);
                upstream.healthy.store(true, Ordering::Relaxed);
            }
        }
    }
}

fn wire_to_name(wire: &[u8]) -> Option<Name> {
    let mut n = Name::from_labels(name::labels(wire)).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// How long an upstream's answer may be kept: its smallest TTL (the SOA's negative TTL for
/// NXDOMAIN and NODATA), capped; nothing for failures and zero TTLs.
fn cache_ttl(m: &Message, limits: &CacheLimits) -> Option<Duration> {
    let negative = match m.metadata.response_code {
        ResponseCode::NoError => m.answers.is_empty(),
        ResponseCode::NXDomain => true,
        _ => return None,
    };
    let ttl = if negative {
        let soa = m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })?;
        Duration::from_secs(soa.into()).min(limits.max_negative_ttl)
    } else {
        let min = m.answers.iter().map(|r| r.ttl).min()?;
        Duration::from_secs(min.into()).min(limits.max_ttl)
    };
    (!ttl.is_zero()).then_some(ttl)
}

fn age_ttls(m: &mut Message, age: Duration) {
    let age = age.as_secs() as u32;
    for r in m
        .answers
        .iter_mut()
        .chain(m.authorities.iter_mut())
        .chain(m.additionals.iter_mut())
    {
        r.ttl = r.ttl.saturating_sub(age);
    }
}

/// `message` made the answer to the client: its ID, flags and question as asked, our EDNS
/// when it sent one, truncated when it does not fit the transport.
fn finish(
    query: &[u8],
    q: &Question,
    mut message: Message,
    transport: Transport,
    max_udp: u16,
    out: &mut Vec<u8>,
) -> u16 {
    let client = Message::from_vec(query).ok();
    message.metadata.id = q.id;
    message.metadata.message_type = MessageType::Response;
    message.metadata.recursion_desired = q.recursion_desired;
    message.metadata.recursion_available = true;
    message.metadata.checking_disabled = q.checking_disabled;
    if let Some(client) = &client {
        message.queries = client.queries.clone();
    }
    message.edns = q.edns.map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(max_udp);
        e
    });
    // hickory keeps OPT apart from the additional section; drop any the upstream left in.
    message
        .additionals
        .retain(|r| r.record_type() != RecordType::OPT);
    let code = u16::from(message.metadata.response_code);
    let limit = answer::limit(q, transport, max_udp);
    out.clear();
    match message.to_vec() {
        Ok(bytes) if bytes.len() <= limit => out.extend(bytes),
        Ok(_) => out.extend(message.truncate().to_vec().unwrap_or_default()),
        Err(_) => {
            answer::write_error(out, query, Some(q), answer::rcode::SERVFAIL, max_udp);
            return answer::rcode::SERVFAIL;
        }
    }
    code
}

/// One question to one upstream: over UDP from a fresh socket (a random source port), over
/// TCP when the answer is truncated. The answer must carry the query's ID and question.
async fn exchange(
    upstream: SocketAddr,
    query: &Query,
    dnssec_ok: bool,
    checking_disabled: bool,
    max_udp: u16,
) -> std::io::Result<Message> {
    let id: u16 = rand_id();
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = checking_disabled;
    m.add_query(query.clone());
    let mut e = Edns::new();
    e.set_max_payload(max_udp);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    let bytes = m.to_vec().map_err(std::io::Error::other)?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("address");
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    let answer = loop {
        let n = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            Ok(a) if a.metadata.id == id && a.queries.first() == Some(query) => break a,
            // A stray or forged datagram: keep waiting for ours.
            _ => continue,
        }
    };
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    let mut stream = TcpStream::connect(upstream).await?;
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    let answer = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if answer.metadata.id != id {
        return Err(std::io::Error::other("an answer over TCP with another ID"));
    }
    Ok(answer)
}

/// A query ID no one can guess from the last: from the standard library's randomly keyed
/// hasher, fed a counter and the clock.
fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u16
}

//! The DNS servers: UDP (one socket per worker with SO_REUSEPORT, so the kernel spreads
//! queries over them) and TCP (length-prefixed messages, several per connection), both
//! answering through `answer::respond` from the current index, handing the rest to the
//! forwarder.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::answer::{self, Outcome, Transport};
use crate::forward::Forwarder;
use crate::index::Index;

/// The index the servers answer from, swapped whole. A reader keeps its own `Arc` and takes
/// the lock only when the generation moved, so a rebuild never holds up a query.
#[derive(Debug, Default)]
pub struct IndexCell {
    current: Mutex<Arc<Index>>,
    generation: AtomicU64,
}

impl IndexCell {
    pub fn new(index: Index) -> Self {
        Self {
            current: Mutex::new(Arc::new(index)),
            generation: AtomicU64::new(1),
        }
    }

    pub fn swap(&self, index: Index) {
        let index = Arc::new(index);
        if let Ok(mut current) = self.current.lock() {
            *current = index;
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn load(&self) -> Arc<Index> {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            cell: self,
            seen: self.generation.load(Ordering::Acquire),
            index: self.load(),
        }
    }
}

struct Reader<'a> {
    cell: &'a IndexCell,
    seen: u64,
    index: Arc<Index>,
}

impl Reader<'_> {
    fn get(&mut self) -> Arc<Index> {
        let generation = self.cell.generation.load(Ordering::Acquire);
        if generation != self.seen {
            self.seen = generation;
            self.index = self.cell.load();
        }
        self.index.clone()
    }
}

/// What the servers count, for the page and the metrics: queries per transport, answers per
/// response code (the codes up to REFUSED, then all others), and what went elsewhere.
#[derive(Debug, Default)]
pub struct Counters {
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    pub rcodes: [AtomicU64; 7],
    pub forwarded: AtomicU64,
    pub truncated: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    fn answered(&self, rcode: u16, reply: &[u8]) {
        self.rcodes[(rcode as usize).min(6)].fetch_add(1, Ordering::Relaxed);
        if reply.get(2).is_some_and(|f| f & 0x02 != 0) {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Names of the response codes the counters keep, in their order.
pub const RCODE_NAMES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
];

#[derive(Debug)]
pub struct Context {
    pub index: Arc<IndexCell>,
    pub forwarder: Arc<Forwarder>,
    pub counters: Counters,
    pub max_udp: u16,
}

/// A UDP socket bound to `addr`, with SO_REUSEPORT so that several can share it.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    match addr {
        SocketAddr::V4(v4) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(v6))?,
    }
    Ok(std::net::UdpSocket::from(fd))
}

/// Answers queries on `socket` until it fails. Forwarded queries run as tasks of their own,
/// so a slow upstream never holds up the cluster's names.
pub async fn serve_udp(socket: UdpSocket, ctx: Arc<Context>) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut reader = ctx.index.reader();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(1500);
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        ctx.counters.udp_queries.fetch_add(1, Ordering::Relaxed);
        let index = reader.get();
        match answer::respond(&index, &buf[..n], Transport::Udp, ctx.max_udp, &mut out) {
            Outcome::Answer(code) => {
                ctx.counters.answered(code, &out);
                // A send that fails (the client went away) is the client's loss only.
                let _ = socket.send_to(&out, peer).await;
            }
            Outcome::Drop => {
                ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                ctx.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                let (socket, ctx, query) = (socket.clone(), ctx.clone(), buf[..n].to_vec());
                let ttl = index.ttl();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let code = elsewhere(&ctx, other, &query, ttl, Transport::Udp, &mut out).await;
                    ctx.counters.answered(code, &out);
                    let _ = socket.send_to(&out, peer).await;
                });
            }
        }
    }
}

async fn elsewhere(
    ctx: &Context,
    outcome: Outcome,
    query: &[u8],
    ttl: u32,
    transport: Transport,
    out: &mut Vec<u8>,
) -> u16 {
    match outcome {
        Outcome::Forward(q) => ctx.forwarder.forward(query, &q, transport, out).await,
        Outcome::Chase { question, target } => {
            ctx.forwarder
                .chase(query, &question, &target, ttl, transport, out)
                .await
        }
        Outcome::Answer(_) | Outcome::Drop => unreachable!("answered where it was asked"),
    }
}

/// How long a TCP connection may stay idle between queries (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP connections at once; more wait in the listen queue.
const TCP_CONNECTIONS: usize = 256;

pub async fn serve_tcp(listener: TcpListener, ctx: Arc<Context>) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, _) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp_connection(stream, &ctx).await;
        });
    }
}

async fn tcp_connection(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let mut reader = ctx.index.reader();
    let mut out = Vec::with_capacity(1500);
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            // Idle, closed, or reset: the connection ends.
            _ => return Ok(()),
        };
        let mut query = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(std::io::Error::other)??;
        ctx.counters.tcp_queries.fetch_add(1, Ordering::Relaxed);
        let index = reader.get();
        let code = match answer::respond(&index, &query, Transport::Tcp, ctx.max_udp, &mut out) {
            Outcome::Answer(code) => code,
            Outcome::Drop => {
                ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            other => {
                ctx.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                elsewhere(ctx, other, &query, index.ttl(), Transport::Tcp, &mut out).await
            }
        };
        ctx.counters.answered(code, &out);
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend((out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
    }
}

//! The socket side: sending one batch as one datagram and reading every ack, and requests and
//! multi-datagram dumps with their retries.

use std::time::Duration;

use netlink_sys::{Socket, protocols};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::consts::*;
use super::wire::{self, Msg};
use crate::NftError;

/// What the kernel said about one batch.
pub(crate) struct BatchOutcome {
    /// The first refusal by sequence number: `(seq, errno)`.
    pub error: Option<(u32, i32)>,
    /// Acks were dropped (the receive buffer overflowed): the outcome is unknown.
    pub lost: bool,
}

/// A received message, copied out of the datagram.
pub(crate) struct Reply {
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// An ack's skb costs the receive buffer far more than its 36 bytes; this bounds it.
const ACK_TRUESIZE: usize = 2048;
/// How long a request waits for the kernel before it gives up (the kernel answers in-line,
/// so this only ends a wait that would otherwise never end).
const RECV_TIMEOUT: Duration = Duration::from_secs(30);
/// Dump restarts before giving up on a table that keeps changing.
const DUMP_TRIES: usize = 20;

pub(crate) struct Channel {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    sndbuf: usize,
    rcvbuf: usize,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn os_error(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

impl Channel {
    pub(crate) fn open() -> Result<Self, NftError> {
        let mut socket = Socket::new(protocols::NETLINK_NETFILTER).map_err(NftError::Socket)?;
        socket.bind_auto().map_err(NftError::Socket)?;
        // Errors do not echo the (possibly 60 kB) message they refuse.
        socket.set_cap_ack(true).map_err(NftError::Socket)?;
        setsockopt(
            &socket,
            sockopt::ReceiveTimeout,
            &TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(|e| NftError::Socket(e.into()))?;
        let mut channel = Self {
            socket,
            buf: vec![0; 256 * 1024],
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            sndbuf: 0,
            rcvbuf: 0,
        };
        channel.grow_rcvbuf(4 << 20);
        Ok(channel)
    }

    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The last sequence number handed out; batch builders advance it themselves.
    pub(crate) fn seq_mut(&mut self) -> &mut u32 {
        &mut self.seq
    }

    /// Root may raise buffers past the sysctl limits (`*BUFFORCE`); others get what the limits
    /// allow, and a batch too large for that fails with EMSGSIZE, named.
    fn grow_sndbuf(&mut self, want: usize) {
        if want > self.sndbuf {
            let v = want.min(i32::MAX as usize / 2);
            if setsockopt(&self.socket, sockopt::SndBufForce, &v).is_err() {
                let _ = setsockopt(&self.socket, sockopt::SndBuf, &v);
            }
            self.sndbuf = want;
        }
    }

    fn grow_rcvbuf(&mut self, want: usize) {
        if want > self.rcvbuf {
            let v = want.min(i32::MAX as usize / 2);
            if setsockopt(&self.socket, sockopt::RcvBufForce, &v).is_err() {
                let _ = setsockopt(&self.socket, sockopt::RcvBuf, &v);
            }
            self.rcvbuf = want;
        }
    }

    fn recv(&mut self, flags: libc::c_int) -> std::io::Result<usize> {
        let mut buf: &mut [u8] = &mut self.buf;
        let n = self.socket.recv(&mut buf, flags)?;
        Ok(n.min(self.buf.len()))
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let sent = self.socket.send(bytes, 0)?;
        if sent != bytes.len() {
            return Err(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// Reads whatever is queued without waiting, so later requests start clean.
    fn drain(&mut self) {
        while self.recv(libc::MSG_DONTWAIT).is_ok() {}
    }

    /// Sends a whole batch (one datagram: the kernel's transaction is what one datagram holds)
    /// and reads the acks of the messages numbered `first..=last`, `acks` of which asked for one.
    pub(crate) fn batch(
        &mut self,
        bytes: &[u8],
        first: u32,
        last: u32,
        acks: usize,
    ) -> Result<BatchOutcome, NftError> {
        self.grow_sndbuf(bytes.len() + (64 << 10));
        self.grow_rcvbuf((acks + 16) * ACK_TRUESIZE);
        self.drain();
        self.send(bytes).map_err(|e| NftError::Rejected {
            what: format!("a batch of {} bytes", bytes.len()),
            reason: e.to_string(),
        })?;
        let ours = |seq: u32| seq.wrapping_sub(first) <= last.wrapping_sub(first);
        let mut outcome = BatchOutcome {
            error: None,
            lost: false,
        };
        let mut seen = 0;
        // nfnetlink handles the batch within the send, so its acks are queued by now; a
        // blocking read covers only what is still missing.
        loop {
            // Once acks were dropped, the missing ones never come.
            let wait = !outcome.lost && outcome.error.is_none() && seen < acks;
            let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
            let n = match self.recv(flags) {
                Ok(n) => n,
                Err(e) if errno(&e) == libc::EINTR => continue,
                Err(e) if errno(&e) == libc::ENOBUFS => {
                    outcome.lost = true;
                    continue;
                }
                Err(e) if errno(&e) == libc::EAGAIN && !wait => break,
                Err(e) => {
                    return Err(NftError::Rejected {
                        what: "a batch".into(),
                        reason: format!("reading its acks: {e}"),
                    });
                }
            };
            for m in wire::messages(&self.buf[..n]) {
                if m.kind != NLMSG_ERROR {
                    continue;
                }
                let Some((err, seq)) = wire::error_of(m.payload) else {
                    continue;
                };
                if !ours(seq) {
                    continue;
                }
                seen += 1;
                if err != 0 {
                    let earlier = outcome
                        .error
                        .is_none_or(|(s, _)| seq.wrapping_sub(first) < s.wrapping_sub(first));
                    if earlier {
                        outcome.error = Some((seq, err));
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// A request answered by one message (or an error).
    pub(crate) fn request(&mut self, msg: Msg, seq: u32) -> Result<Result<Reply, i32>, NftError> {
        let bytes = msg.finish();
        self.drain();
        self.send(&bytes)
            .map_err(|e| NftError::Dump(format!("sending a request: {e}")))?;
        loop {
            let n = match self.recv(0) {
                Ok(n) => n,
                Err(e) if errno(&e) == libc::EINTR || errno(&e) == libc::ENOBUFS => continue,
                Err(e) => return Err(NftError::Dump(format!("reading a reply: {e}"))),
            };
            for m in wire::messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                if m.kind == NLMSG_ERROR {
                    match wire::error_of(m.payload) {
                        Some((0, _)) => continue,
                        Some((err, _)) => return Ok(Err(err)),
                        None => return Err(NftError::Dump("a truncated error".into())),
                    }
                }
                return Ok(Ok(Reply {
                    kind: m.kind,
                    payload: m.payload.to_vec(),
                }));
            }
        }
    }

    /// A dump: every message until `NLMSG_DONE`, restarted when the kernel says the ruleset
    /// changed under it (`NLM_F_DUMP_INTR`, `EINTR`) or messages were lost (`ENOBUFS`).
    /// `Err(errno)` when the kernel refused the dump (ENOENT for a missing set).
    pub(crate) fn dump(
        &mut self,
        build: impl Fn(u32) -> Msg,
    ) -> Result<Result<Vec<Reply>, i32>, NftError> {
        'attempt: for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            let bytes = build(seq).finish();
            self.drain();
            self.send(&bytes)
                .map_err(|e| NftError::Dump(format!("sending a dump request: {e}")))?;
            let mut out = Vec::new();
            let mut interrupted = false;
            loop {
                let n = match self.recv(0) {
                    Ok(n) => n,
                    Err(e) if errno(&e) == libc::EINTR => continue,
                    Err(e) if errno(&e) == libc::ENOBUFS => {
                        // The rest of this dump may still arrive; let it, then start over.
                        std::thread::sleep(Duration::from_millis(10));
                        self.drain();
                        continue 'attempt;
                    }
                    Err(e) => return Err(NftError::Dump(format!("reading a dump: {e}"))),
                };
                for m in wire::messages(&self.buf[..n]) {
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.kind {
                        NLMSG_DONE => {
                            let status = m
                                .payload
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                .unwrap_or(0);
                            if interrupted || status == -libc::EINTR {
                                continue 'attempt;
                            }
                            if status < 0 {
                                return Ok(Err(-status));
                            }
                            return Ok(Ok(out));
                        }
                        NLMSG_ERROR => match wire::error_of(m.payload) {
                            Some((0, _)) => {}
                            Some((err, _)) if err == libc::EINTR => continue 'attempt,
                            Some((err, _)) => return Ok(Err(err)),
                            None => return Err(NftError::Dump("a truncated error".into())),
                        },
                        kind => out.push(Reply {
                            kind,
                            payload: m.payload.to_vec(),
                        }),
                    }
                }
            }
        }
        Err(NftError::Dump(format!(
            "the ruleset kept changing during {DUMP_TRIES} attempts"
        )))
    }
}

pub(crate) fn describe_errno(errno: i32) -> String {
    os_error(errno)
}

//! The blocking NETLINK_NETFILTER socket: one request at a time, its answers told apart from
//! leftovers of an earlier exchange by sequence number.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::error::NetlinkError;
use crate::message::{
    Header, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, done_code, error_payload, messages, request,
};

/// The kernel never builds a dump datagram above 32 KiB (it sizes them after the reader's
/// buffer, capped there); twice that leaves room and still detects a cut one.
const RECV_BUFFER: usize = 64 * 1024;
/// A larger socket buffer than the default, so a dump of a big table needs fewer wake-ups.
const SOCKET_RCVBUF: i32 = 1 << 20;
/// `MSG_TRUNC`: `recv` returns the datagram's real length even when the buffer was smaller.
const MSG_TRUNC: i32 = 0x20;
/// `EINTR`: a dump the kernel gave up on because the table changed under it.
const EINTR: i32 = 4;

/// What a dump hands each of its data messages to: the header and the payload after it.
pub(crate) type Visit<'a> = dyn FnMut(&Header, &[u8]) -> Result<(), NetlinkError> + 'a;

#[derive(Debug)]
pub(crate) struct Transport {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// False while a request's answer has not been read to its end. A dump left half-read
    /// stays open in the kernel, which then refuses the next one (EBUSY), so a socket found out
    /// of step is replaced before the next request.
    in_step: bool,
}

/// How a dump ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dumped {
    Complete,
    /// The kernel flagged it (or ended it) as interrupted: ask again.
    Interrupted,
}

fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Refusals carry the kernel's reason, and acknowledgements do not echo the request.
    socket.set_ext_ack(true)?;
    socket.set_cap_ack(true)?;
    // Best effort: without it dumps are only slower.
    let _ = socket.set_rx_buf_sz(SOCKET_RCVBUF);
    Ok(socket)
}

impl Transport {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        Ok(Self {
            socket: open_socket()?,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
            in_step: true,
        })
    }

    fn send(&mut self, kind: u16, flags: u16, family: u8, attrs: &[u8]) -> io::Result<u32> {
        if !self.in_step {
            // In the calling thread's namespace, as the first one was: the daemon's threads
            // never change namespace.
            self.socket = open_socket()?;
            self.in_step = true;
        }
        self.seq = self.seq.wrapping_add(1);
        let msg = request(kind, flags, self.seq, family, attrs);
        self.socket.send(&msg, 0)?;
        self.in_step = false;
        Ok(self.seq)
    }

    /// Reads one datagram into `self.buf`.
    fn recv(&mut self) -> Result<(), NetlinkError> {
        loop {
            self.buf.clear();
            self.buf.reserve(RECV_BUFFER);
            let capacity = self.buf.capacity();
            match self.socket.recv(&mut self.buf, MSG_TRUNC) {
                Ok(n) if n > capacity => {
                    return Err(NetlinkError::Malformed(format!(
                        "a datagram of {n} bytes was cut to {capacity}"
                    )));
                }
                Ok(_) => return Ok(()),
                // A signal, not the kernel: read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Dumps `kind` for `family` (`attrs`: what the kernel may filter on), handing each data
    /// message (header, payload) to `visit`.
    pub(crate) fn dump(
        &mut self,
        kind: u16,
        family: u8,
        attrs: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<Dumped, NetlinkError> {
        let seq = self.send(kind, NLM_F_REQUEST | NLM_F_DUMP, family, attrs)?;
        let mut dump = DumpReader::new(seq);
        loop {
            self.recv()?;
            if let Fed::Ended(outcome) = dump.feed(&self.buf, visit)? {
                self.in_step = true;
                return outcome;
            }
        }
    }

    /// For the tests: a dump request of which only the first datagram is read, as when a
    /// caller's read fails midway; `forget` pretends it was read whole.
    #[cfg(test)]
    pub(crate) fn abandon_a_dump(&mut self, kind: u16, family: u8, forget: bool) {
        self.send(kind, NLM_F_REQUEST | NLM_F_DUMP, family, &[])
            .expect("send");
        self.recv().expect("recv");
        self.in_step = forget;
    }

    /// Sends one request that wants only an acknowledgement, and waits for it.
    pub(crate) fn call(&mut self, kind: u16, family: u8, attrs: &[u8]) -> Result<(), NetlinkError> {
        let seq = self.send(kind, NLM_F_REQUEST | NLM_F_ACK, family, attrs)?;
        loop {
            self.recv()?;
            for message in messages(&self.buf) {
                let (header, payload) = message?;
                if header.seq == seq && header.kind == NLMSG_ERROR {
                    self.in_step = true;
                    return error_payload(&header, payload);
                }
            }
        }
    }
}

/// What one datagram of a dump told.
#[derive(Debug)]
pub(crate) enum Fed {
    /// The dump goes on in the next datagram.
    More,
    /// The dump has ended, well or not; nothing of it is left to read.
    Ended(Result<Dumped, NetlinkError>),
}

/// Follows one dump through the datagrams that carry it.
#[derive(Debug)]
pub(crate) struct DumpReader {
    seq: u32,
    interrupted: bool,
    /// The first entry `visit` refused: reported once the dump has been read to its end.
    failed: Option<NetlinkError>,
}

impl DumpReader {
    pub(crate) fn new(seq: u32) -> Self {
        Self {
            seq,
            interrupted: false,
            failed: None,
        }
    }

    /// Reads one datagram. Messages of another sequence number (left over from an exchange
    /// cut short) are skipped. `Err` when the datagram itself is malformed, so the dump's end
    /// cannot be found.
    pub(crate) fn feed(
        &mut self,
        datagram: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<Fed, NetlinkError> {
        for message in messages(datagram) {
            let (header, payload) = message?;
            if header.seq != self.seq {
                continue;
            }
            if header.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            let end = match header.kind {
                NLMSG_NOOP => continue,
                NLMSG_DONE => match done_code(payload) {
                    0 => Ok(()),
                    code => Err(NetlinkError::Kernel {
                        errno: code.saturating_neg(),
                        message: None,
                    }),
                },
                // An error ends a dump: no NLMSG_DONE follows.
                NLMSG_ERROR => error_payload(&header, payload),
                NLMSG_OVERRUN => {
                    return Err(NetlinkError::Malformed(
                        "the kernel reported an overrun".into(),
                    ));
                }
                _ => {
                    if self.failed.is_none()
                        && let Err(e) = visit(&header, payload)
                    {
                        self.failed = Some(e);
                    }
                    continue;
                }
            };
            return Ok(Fed::Ended(match (end, self.failed.take()) {
                (Err(NetlinkError::Kernel { errno: EINTR, .. }), _) => Ok(Dumped::Interrupted),
                (Err(e), _) | (Ok(()), Some(e)) => Err(e),
                (Ok(()), None) if self.interrupted => Ok(Dumped::Interrupted),
                (Ok(()), None) => Ok(Dumped::Complete),
            }));
        }
        Ok(Fed::More)
    }
}

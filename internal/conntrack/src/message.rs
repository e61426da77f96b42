//! Netlink framing for nfnetlink: `nlmsghdr` + `nfgenmsg` requests, the messages packed in one
//! received datagram, and the error/acknowledgement payload.

use crate::attr::{align, attrs};
use crate::error::NetlinkError;

/// `struct nlmsghdr`: len, type, flags, seq, pid (host order).
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id (network order).
pub(crate) const NFGENMSG_LEN: usize = 4;

pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// On any message of a dump, including `NLMSG_DONE`: the table changed while the kernel walked
/// it, so the dump may have missed entries and must be asked again.
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// On an acknowledgement: the request was not echoed back (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// On an acknowledgement: extended-ack attributes follow (`NETLINK_EXT_ACK`).
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's text for a refusal.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;

/// A received message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
}

/// One request: `nlmsghdr`, `nfgenmsg` for `family`, then the attributes.
pub(crate) fn request(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&u32::try_from(len).expect("a small request").to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel fills in the socket's own.
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    buf.extend_from_slice(attrs);
    buf
}

/// The messages in one datagram, each with its payload (after `nlmsghdr`).
pub(crate) fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

#[derive(Debug)]
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(Header, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let head = self.rest.get(..NLMSG_HDRLEN).ok_or_else(|| {
                NetlinkError::Malformed(format!(
                    "{} bytes left after the last message, less than a header",
                    self.rest.len()
                ))
            })?;
            let word = |at: usize| u32::from_ne_bytes(head[at..at + 4].try_into().expect("4"));
            let half = |at: usize| u16::from_ne_bytes(head[at..at + 2].try_into().expect("2"));
            let len = word(0) as usize;
            if len < NLMSG_HDRLEN || len > self.rest.len() {
                return Err(NetlinkError::Malformed(format!(
                    "a message claims {len} bytes, {} remain",
                    self.rest.len()
                )));
            }
            let header = Header {
                kind: half(4),
                flags: half(6),
                seq: word(8),
            };
            let payload = &self.rest[NLMSG_HDRLEN..len];
            self.rest = self.rest.get(align(len)..).unwrap_or(&[]);
            Ok((header, payload))
        })();
        if parsed.is_err() {
            self.rest = &[];
        }
        Some(parsed)
    }
}

/// The payload of an `NLMSG_ERROR` message: 0 for an acknowledgement, else the refusal (with
/// the kernel's extended-ack text when present).
pub(crate) fn error_payload(header: &Header, payload: &[u8]) -> Result<(), NetlinkError> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4")))
        .ok_or_else(|| NetlinkError::Malformed("an error message without its code".into()))?;
    if code == 0 {
        return Ok(());
    }
    let mut message = None;
    if header.flags & NLM_F_ACK_TLVS != 0 {
        // After the code comes the request's header (capped) or the whole request.
        let echoed = if header.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4")) as usize)
                .unwrap_or(NLMSG_HDRLEN)
        };
        let tlvs = payload.get(4 + align(echoed)..).unwrap_or(&[]);
        for attr in attrs(tlvs) {
            let Ok((kind, value)) = attr else { break };
            if kind == NLMSGERR_ATTR_MSG {
                let text = value.split(|b| *b == 0).next().unwrap_or(&[]);
                message = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Err(NetlinkError::Kernel {
        errno: code.saturating_neg(),
        message,
    })
}

/// The error code an `NLMSG_DONE` carries (0 for a dump that ended well).
pub(crate) fn done_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4")))
        .unwrap_or(0)
}

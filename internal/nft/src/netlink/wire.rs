//! Netlink's byte layout, by hand: building one nfnetlink message (header, `nfgenmsg`, nested
//! attributes) and walking the messages and attributes of a datagram the kernel sent back.

use super::consts::*;

/// `NFNL_SUBSYS_NFTABLES << 8 | msg`, the full message type of an nftables message.
pub(crate) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction.
pub(crate) struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// A message of type `kind` with the `nfgenmsg` of `family` and `res_id` (big endian).
    pub(crate) fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[family, NFNETLINK_V0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    pub(crate) fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING` policies expect.
    pub(crate) fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(ty, &v)
    }

    /// nf_tables numbers are big endian on the wire.
    pub(crate) fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub(crate) fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub(crate) fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end() without begin()");
        let len = self.buf.len() - start;
        debug_assert!(len <= usize::from(u16::MAX), "nested attribute too long");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self
    }

    /// `NFTA_*_DATA { NFTA_DATA_VALUE bytes }`, how cmp, bitwise and immediate carry constants.
    pub(crate) fn data_value(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.begin(ty).bytes(NFTA_DATA_VALUE, value).end()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "unclosed nested attribute");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// A message the kernel sent: header fields and the payload after the header.
pub(crate) struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of one datagram; a truncated tail ends the walk.
pub(crate) fn messages(datagram: &[u8]) -> impl Iterator<Item = Received<'_>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let msg = Received {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes(rest[8..12].try_into().ok()?),
            payload: &rest[16..len],
        };
        rest = &rest[align4(len).min(rest.len())..];
        Some(msg)
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ack) and the sequence number of the message
/// it answers.
pub(crate) fn error_of(payload: &[u8]) -> Option<(i32, u32)> {
    let errno = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    let seq = u32::from_ne_bytes(payload.get(12..16)?.try_into().ok()?);
    Some((-errno, seq))
}

/// The attributes of a byte range: `(type without flags, value)`.
pub(crate) fn attrs(mut rest: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((ty, value))
    })
}

/// The attributes of an nftables message, after its 4-byte `nfgenmsg`.
pub(crate) fn nft_attrs(payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs(payload.get(4..).unwrap_or_default())
}

pub(crate) fn find(attrs_of: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(attrs_of).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

pub(crate) fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(0..4)?.try_into().ok()?))
}

pub(crate) fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(0..8)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub(crate) fn string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

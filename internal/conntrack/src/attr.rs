//! Netlink attributes (`struct nlattr`): the type-length-value records that ctnetlink nests its
//! tuples in, read without copying and written into one growing buffer.
//!
//! Attribute headers are in host order; the values ctnetlink puts in them (addresses, ports,
//! zones, ids) are in network order, and the callers convert them.

use crate::error::NetlinkError;

/// Set on an attribute whose payload is itself a list of attributes.
pub(crate) const NLA_F_NESTED: u16 = 1 << 15;
/// Set on an attribute whose payload is in network order (informational only).
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// The type bits: the flags above are not part of the type.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
/// `struct nlattr`: u16 length (header included), u16 type.
pub(crate) const NLA_HDRLEN: usize = 4;

/// Netlink's 4-byte alignment, for message and attribute lengths alike.
pub(crate) const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The attributes in `buf`, in order: `(type without flags, payload)`.
pub(crate) fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

#[derive(Debug)]
pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Trailing padding shorter than a header is not an attribute.
        if self.rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.rest[0], self.rest[1]]));
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.rest.len() {
            let error = NetlinkError::Malformed(format!(
                "attribute {kind} claims {len} bytes, {} remain",
                self.rest.len()
            ));
            self.rest = &[];
            return Some(Err(error));
        }
        let payload = &self.rest[NLA_HDRLEN..len];
        // The last attribute's padding may be missing.
        self.rest = self.rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok((kind, payload)))
    }
}

/// A big-endian (network order) u16 payload, as ctnetlink sends ports and zones.
pub(crate) fn be_u16(kind: &str, payload: &[u8]) -> Result<u16, NetlinkError> {
    <[u8; 2]>::try_from(payload)
        .map(u16::from_be_bytes)
        .map_err(|_| wrong_size(kind, 2, payload))
}

/// A big-endian u32 payload, as ctnetlink sends ids.
pub(crate) fn be_u32(kind: &str, payload: &[u8]) -> Result<u32, NetlinkError> {
    <[u8; 4]>::try_from(payload)
        .map(u32::from_be_bytes)
        .map_err(|_| wrong_size(kind, 4, payload))
}

pub(crate) fn wrong_size(kind: &str, want: usize, payload: &[u8]) -> NetlinkError {
    NetlinkError::Malformed(format!("{kind} has {} bytes, not {want}", payload.len()))
}

/// Attributes written one after another into a buffer, nests patched with their length once
/// their contents are in.
#[derive(Debug, Default)]
pub(crate) struct AttrWriter {
    buf: Vec<u8>,
}

impl AttrWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn put(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + payload.len();
        self.header(len, kind);
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A nested attribute whose contents `fill` writes.
    pub(crate) fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.header(0, kind | NLA_F_NESTED);
        fill(self);
        // Nested contents are padded already, so the nest's length is aligned as well.
        let len = u16::try_from(self.buf.len() - start).expect("a nest fits in 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn header(&mut self, len: usize, kind: u16) {
        let len = u16::try_from(len).expect("an attribute fits in 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }
}

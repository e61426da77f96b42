//! Domain names in wire form (length-prefixed labels, the root's empty label last), lower case:
//! what the index is keyed by and what answers carry. Text names from the API are checked
//! here, once, when the index is built.

use std::net::IpAddr;

/// Longest name in wire form (RFC 1035 3.1).
pub const MAX_NAME: usize = 255;
/// Longest label (RFC 1035 2.3.4).
pub const MAX_LABEL: usize = 63;

/// `a.b.c` (a trailing dot optional) in wire form, lower case; `None` for an empty label, a
/// label over 63 bytes or a name over 255.
pub fn wire(dotted: &str) -> Option<Vec<u8>> {
    let dotted = dotted.strip_suffix('.').unwrap_or(dotted);
    let mut out = Vec::with_capacity(dotted.len() + 2);
    if !dotted.is_empty() {
        for label in dotted.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// `label` prepended to `name` (both wire form); `None` when the result is not a name.
pub fn child(label: &str, name: &[u8]) -> Option<Vec<u8>> {
    if label.is_empty() || label.len() > MAX_LABEL || label.len() + 1 + name.len() > MAX_NAME {
        return None;
    }
    let mut out = Vec::with_capacity(label.len() + 1 + name.len());
    out.push(label.len() as u8);
    out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    out.extend_from_slice(name);
    Some(out)
}

/// The labels of a wire name, leftmost first (the root's empty label not included).
pub fn labels(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = *name.get(at)? as usize;
        if len == 0 {
            return None;
        }
        let label = name.get(at + 1..at + 1 + len)?;
        at += 1 + len;
        Some(label)
    })
}

/// The name without its leftmost label; `None` for the root.
pub fn parent(name: &[u8]) -> Option<&[u8]> {
    let len = *name.first()? as usize;
    (len > 0).then(|| name.get(1 + len..)).flatten()
}

/// Whether `name` is `zone` or below it (label-wise, both lower-case wire names).
pub fn is_within(name: &[u8], zone: &[u8]) -> bool {
    let mut at: &[u8] = name;
    loop {
        if at.len() == zone.len() {
            return at == zone;
        }
        if at.len() < zone.len() {
            return false;
        }
        match parent(at) {
            Some(p) => at = p,
            None => return false,
        }
    }
}

/// The dotted text of a wire name, with the trailing dot: for logs, the page and tests.
pub fn text(name: &[u8]) -> String {
    let mut out = String::new();
    for label in labels(name) {
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// The reverse-lookup name of an address: `5.1.42.10.in-addr.arpa.` or the nibbles under
/// `ip6.arpa.`.
pub fn reverse(ip: IpAddr) -> Vec<u8> {
    let mut dotted = String::with_capacity(72);
    match ip {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                dotted.push_str(&octet.to_string());
                dotted.push('.');
            }
            dotted.push_str("in-addr.arpa");
        }
        IpAddr::V6(v6) => {
            for octet in v6.octets().iter().rev() {
                dotted.push_str(&format!("{:x}.{:x}.", octet & 0xf, octet >> 4));
            }
            dotted.push_str("ip6.arpa");
        }
    }
    wire(&dotted).expect("a reverse name is a valid name")
}

/// An address as one label, as CoreDNS names endpoints without a hostname and pods:
/// `10-42-1-5`, `fd00--1` (the address's text with `.` or `:` turned into `-`).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a dashed label stands for (`10-42-1-5`, `fd00--1`), if it is one.
pub fn undashed(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    if text.bytes().filter(|b| *b == b'-').count() == 3
        && let Ok(v4) = text.replace('-', ".").parse()
    {
        return Some(IpAddr::V4(v4));
    }
    text.replace('-', ":").parse().ok().map(IpAddr::V6)
}

//! The one place that decides whether a name may reach the kernel: interface names (links,
//! WireGuard devices, CNI interfaces), nftables object names (chains, sets, maps) and rule
//! comments. Every other crate takes these types instead of checking strings itself, so a name
//! that could break out of a rule (a `"` or `;` in nft text, a `/` in a socket path) is refused
//! once, at the edge where it enters, with an error that says what is wrong.
//!
//! Does not know where a name came from: callers wrap [`NameError`] with the config key, the CNI
//! variable or the API field.

use std::fmt;
use std::str::FromStr;

#[cfg(test)]
mod tests;

/// The longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// The longest nftables object name skein generates. The kernel takes 256 bytes
/// (NFT_NAME_MAXLEN); shorter keeps `nft list` readable.
pub const MAX_NFT_NAME: usize = 64;
/// The longest rule comment the kernel keeps (NFT_USERDATA_MAXLEN for the comment).
pub const MAX_NFT_COMMENT: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("{name:?} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("{name:?} holds {found:?}; {allowed}")]
    Character {
        name: String,
        found: char,
        allowed: &'static str,
    },
    #[error("{name:?} is not a name (`.` and `..` are path components)")]
    Dot { name: String },
    #[error("{name:?} must start with a letter")]
    Start { name: String },
}

const IFNAME_ALLOWED: &str = "an interface name holds only letters, digits, '-', '_' and '.'";
const NFT_NAME_ALLOWED: &str = "an nftables name holds only letters, digits and '_'";
const COMMENT_ALLOWED: &str = "a rule comment holds no quotes, backslashes or control characters";

fn check_len(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            name: name.to_string(),
            len: name.len(),
            max,
        });
    }
    Ok(())
}

fn check_chars(
    name: &str,
    ok: impl Fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), NameError> {
    match name.chars().find(|c| !ok(*c)) {
        Some(found) => Err(NameError::Character {
            name: name.to_string(),
            found,
            allowed,
        }),
        None => Ok(()),
    }
}

/// A Linux interface name that is also safe inside nft text and in a socket path: 1 to 15 bytes
/// of ASCII letters, digits, `-`, `_` and `.`, not `.` or `..`. Linux itself allows more (any
/// byte but `/`, `:` and white space); skein refuses the rest rather than quote it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_len(&name, MAX_IFNAME)?;
        check_chars(
            &name,
            |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            IFNAME_ALLOWED,
        )?;
        if name == "." || name == ".." {
            return Err(NameError::Dot { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a chain, set or map in skein's table: a letter, then letters, digits and `_`, at
/// most [`MAX_NFT_NAME`] bytes. Generated names (prefix + hash + readable key) are built from
/// API names, so they go through here too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NftName(String);

impl NftName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_len(&name, MAX_NFT_NAME)?;
        check_chars(
            &name,
            |c| c.is_ascii_alphanumeric() || c == '_',
            NFT_NAME_ALLOWED,
        )?;
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::Start { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A rule comment: printable text without `"` or `\`, at most [`MAX_NFT_COMMENT`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NftComment(String);

fn comment_char_ok(c: char) -> bool {
    !c.is_control() && c != '"' && c != '\\'
}

impl NftComment {
    pub fn new(text: impl Into<String>) -> Result<Self, NameError> {
        let text = text.into();
        check_len(&text, MAX_NFT_COMMENT)?;
        check_chars(&text, comment_char_ok, COMMENT_ALLOWED)?;
        Ok(Self(text))
    }

    /// For text built from API names (`namespace/service:port`), which the comment only
    /// describes: characters a comment cannot hold become `_`, and text past
    /// [`MAX_NFT_COMMENT`] bytes is cut at a character boundary and ends in `…`.
    pub fn lossy(text: &str) -> Self {
        let mut out: String = text
            .chars()
            .map(|c| if comment_char_ok(c) { c } else { '_' })
            .collect();
        if out.len() > MAX_NFT_COMMENT {
            let ellipsis = '…';
            let mut cut = MAX_NFT_COMMENT - ellipsis.len_utf8();
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push(ellipsis);
        }
        if out.is_empty() {
            out.push('_');
        }
        Self(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_like {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_like!(IfName, NftName, NftComment);

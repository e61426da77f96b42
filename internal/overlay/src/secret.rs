//! Private key material: [`PrivateKey`] never prints itself and wipes its bytes when dropped.
//! Everything that carries the node's private key (the key file's text, the control protocol's
//! requests and answers, the change written to a device) holds it in this type or in a
//! [`Zeroizing`] buffer, so no error, log line, `Debug` output or page can show it.

use std::fmt;

use wireguard_control::Key;
use zeroize::{Zeroize, Zeroizing};

/// A WireGuard private key. `Debug` shows only that it is redacted and its public half; there
/// is no `Display`. The bytes are zeroed on drop, in every clone.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey(<redacted>, public {})",
            self.public().to_base64()
        )
    }
}

impl PrivateKey {
    /// A fresh key from the operating system's random source, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        Self::take(Key::generate_private())
    }

    /// The key as `wg genkey` writes it (44 characters of base64); `None` when it is not one.
    pub fn from_base64(text: &str) -> Option<Self> {
        Key::from_base64(text).ok().map(Self::take)
    }

    /// The key as the control protocol writes it (64 hex digits); `None` when it is not one.
    pub fn from_hex(text: &str) -> Option<Self> {
        Key::from_hex(text).ok().map(Self::take)
    }

    /// The public half.
    pub fn public(&self) -> Key {
        WipedKey(Key(self.0)).0.get_public()
    }

    /// The base64 text of the key file, wiped when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let key = WipedKey(Key(self.0));
        Zeroizing::new(key.0.to_base64())
    }

    /// The hex text of the control protocol, wiped when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(64));
        for b in &self.0 {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        out
    }

    /// The key in wireguard-control's own type, which its kernel backend takes by value and
    /// does not wipe: only for handing the key to that call, never to keep.
    pub fn to_wireguard_control(&self) -> Key {
        Key(self.0)
    }

    /// Moves the bytes out of a dependency's key type and wipes it.
    fn take(key: Key) -> Self {
        let key = WipedKey(key);
        Self(key.0.0)
    }
}

/// Wipes a private key that arrived in a dependency's type (e.g. the kernel's answer).
pub(crate) fn wipe(key: Key) {
    drop(WipedKey(key));
}

/// wireguard-control's `Key` does not wipe itself; this wrapper does, for the moments one
/// exists on our side.
struct WipedKey(Key);

impl Drop for WipedKey {
    fn drop(&mut self) {
        self.0.0.zeroize();
    }
}

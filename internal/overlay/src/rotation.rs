//! Replacing the node's key so that a crash at any step leaves the key file, the device and the
//! published key agreeing. The steps, in order:
//!
//! 1. write the new key to `wireguard.key.new` and sync it (and the directory);
//! 2. give it to the device;
//! 3. rename it over `wireguard.key` and sync the directory;
//! 4. publish its public half (the caller, once [`rotate`] returned it).
//!
//! A leftover `wireguard.key.new` at start means a crash between 1 and 3; [`decide_pending`]
//! says what to do with it from what the device holds.

use std::path::Path;

use wireguard_control::Key;

use crate::device::{DeviceChange, Overlay, OverlayError};
use crate::key::{KeyError, NodeKey, io_error, read_key_file, sync_dir};
use crate::secret::PrivateKey;

/// The new key while a rotation is under way, in the state directory.
pub const PENDING_FILE: &str = "wireguard.key.new";

/// The part of a WireGuard device a rotation needs; [`Overlay`] is the real one.
pub trait KeyDevice {
    /// The public half of the key the device holds; `None` when it holds none.
    fn public_key(&self) -> Result<Option<Key>, OverlayError>;
    fn set_private_key(&self, key: &PrivateKey) -> Result<(), OverlayError>;
}

impl KeyDevice for Overlay {
    fn public_key(&self) -> Result<Option<Key>, OverlayError> {
        Ok(self.read()?.public_key)
    }

    fn set_private_key(&self, key: &PrivateKey) -> Result<(), OverlayError> {
        self.apply(&DeviceChange {
            private_key: Some(key.clone()),
            ..Default::default()
        })
    }
}

/// What to do at start with a leftover `wireguard.key.new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKey {
    /// The device already holds it: finish the rename, then publish it as usual.
    Complete,
    /// The device does not hold it: delete it; the old key stays.
    Discard,
}

/// The decision for a leftover `wireguard.key.new`, from the public half of the key it holds
/// (`None` when it holds no readable key) and that of the key the device holds (`None` when
/// the device holds none or cannot be read). Crash by crash:
///
/// - during step 1 (the file half written): no readable key, and the device still holds the
///   old one. Discard.
/// - between 1 and 2: the device holds the old key. Discard: the peers know only the old key
///   (nothing was published), and the old file is intact.
/// - between 2 and 3, the device still running: it holds the new key. Complete: the file then
///   matches the device, and the start publishes the new key, which is where step 4 would have
///   taken it. The peers lose the tunnel until they see it, as in any rotation.
/// - between 2 and 3, the device restarted as well (a reboot; `skein wireguard` restarted): it
///   holds no key. Discard: the old key is the one the peers know; the daemon gives it to the
///   device on its first turn.
/// - after 3: no `.new` is left; the file holds the new key, published at start.
///
/// A device that cannot be read is treated as holding no key: whatever it holds, the daemon's
/// first turn gives it the key the file holds, so keeping the old file is what stays true.
pub fn decide_pending(pending_public: Option<&Key>, device_public: Option<&Key>) -> PendingKey {
    match (pending_public, device_public) {
        (Some(pending), Some(device)) if pending == device => PendingKey::Complete,
        _ => PendingKey::Discard,
    }
}

/// Settles a leftover `wireguard.key.new` in `state_dir` (see [`decide_pending`]) and returns
/// the node's key from then on, with the decision taken (`None`: nothing was left over).
pub fn finish_pending_rotation(
    state_dir: &Path,
    current: NodeKey,
    device_public: Option<&Key>,
) -> Result<(NodeKey, Option<PendingKey>), KeyError> {
    let pending_path = state_dir.join(PENDING_FILE);
    let pending = match read_key_file(&pending_path) {
        Ok(key) => key.ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((current, None)),
        // Unreadable is as good as half written: nothing in it can be used.
        Err(_) => None,
    };
    let decision = decide_pending(
        pending.as_ref().map(PrivateKey::public).as_ref(),
        device_public,
    );
    match (decision, pending) {
        (PendingKey::Complete, Some(pending)) => {
            std::fs::rename(&pending_path, NodeKey::path_in(state_dir)).map_err(io_error(
                &pending_path,
                "completing the WireGuard key rotation",
            ))?;
            sync_dir(state_dir);
            Ok((NodeKey::from_private(pending), Some(PendingKey::Complete)))
        }
        _ => {
            discard(state_dir, &pending_path)?;
            Ok((current, Some(PendingKey::Discard)))
        }
    }
}

/// Replaces `current` with a new key, in the steps of this module's header but the last: the
/// caller publishes the key returned. When the device refuses the new key, or the file cannot
/// be replaced, the old key stays in `wireguard.key` (never touched) and in the device (put
/// back if the device took the new one after all), and the error says so.
pub fn rotate(
    state_dir: &Path,
    device: &dyn KeyDevice,
    current: &NodeKey,
) -> Result<NodeKey, KeyError> {
    let key_path = NodeKey::path_in(state_dir);
    let pending_path = state_dir.join(PENDING_FILE);
    let new = NodeKey::generate();
    if let Err(e) = new.write_synced(&pending_path) {
        let _ = discard(state_dir, &pending_path);
        return Err(e);
    }
    sync_dir(state_dir);
    if let Err(e) = device.set_private_key(new.private()) {
        put_back(device, current);
        discard(state_dir, &pending_path)?;
        return Err(KeyError::Refused {
            path: key_path.display().to_string(),
            cause: e.to_string(),
        });
    }
    if let Err(e) = std::fs::rename(&pending_path, &key_path) {
        put_back(device, current);
        let _ = discard(state_dir, &pending_path);
        return Err(io_error(&key_path, "replacing the WireGuard key file")(e));
    }
    sync_dir(state_dir);
    Ok(new)
}

/// Gives the device `current` again unless it already holds it. A refused request leaves a
/// device as it was, but one whose connection broke mid-request may have taken the new key.
/// Best effort: should this fail too, the daemon's next turn gives the device the file's key.
fn put_back(device: &dyn KeyDevice, current: &NodeKey) {
    if device.public_key().ok().flatten().as_ref() != Some(current.public()) {
        let _ = device.set_private_key(current.private());
    }
}

fn discard(state_dir: &Path, pending_path: &Path) -> Result<(), KeyError> {
    match std::fs::remove_file(pending_path) {
        Ok(()) => {
            sync_dir(state_dir);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(
            pending_path,
            "discarding an unfinished WireGuard key rotation",
        )(e)),
    }
}

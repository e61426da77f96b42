//! The node's WireGuard key pair. The private key lives only in `wireguard.key` (mode 0600) in
//! the state directory and in the device; it is never logged, shown or sent to the API. The
//! state directory must be persistent: a key on a tmpfs would be new after every reboot and
//! every peer would have to learn it again.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wireguard_control::Key;
use zeroize::Zeroizing;

use crate::secret::PrivateKey;

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "wireguard.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a WireGuard private key (expected 44 characters of base64, as `wg genkey` writes)"
    )]
    Malformed { path: String },
    #[error(
        "the device did not take the new WireGuard key ({cause}); the old key stays in \
         {path} and in the device"
    )]
    Refused { path: String, cause: String },
    #[error(
        "{path} is on a tmpfs, so the node's WireGuard key would change at every reboot; \
         put store.path on persistent storage"
    )]
    OnTmpfs { path: String },
}

/// The node's key pair. `Debug` shows the public half only; the private half is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey {
    private: PrivateKey,
    public: Key,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public.to_base64())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Self {
        Self::from_private(PrivateKey::generate())
    }

    pub fn from_private(private: PrivateKey) -> Self {
        let public = private.public();
        Self { private, public }
    }

    pub fn public(&self) -> &Key {
        &self.public
    }

    /// For the device only.
    pub fn private(&self) -> &PrivateKey {
        &self.private
    }

    /// The key file in `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(KEY_FILE)
    }

    /// Reads the key from `state_dir`, making and saving one on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, KeyError> {
        let path = Self::path_in(state_dir);
        refuse_tmpfs(state_dir)?;
        match read_key_file(&path) {
            Ok(key) => {
                // A copied or restored file may have lost its mode; the key is still good.
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                Ok(Self::from_private(key?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.save(state_dir)?;
                Ok(key)
            }
            Err(source) => Err(KeyError::Io {
                path: path.display().to_string(),
                action: "reading the WireGuard key",
                source,
            }),
        }
    }

    /// Writes the key to `state_dir` atomically (temp file, fsync, rename, fsync of the
    /// directory): after a crash the file holds the old key or the new one, never half of one.
    pub fn save(&self, state_dir: &Path) -> Result<(), KeyError> {
        let path = Self::path_in(state_dir);
        let tmp = state_dir.join(format!("{KEY_FILE}.tmp"));
        self.write_synced(&tmp)?;
        std::fs::rename(&tmp, &path)
            .map_err(io_error(&path, "replacing the WireGuard key file"))?;
        sync_dir(state_dir);
        Ok(())
    }

    /// Writes the private key to `path` (a new file, 0600) and syncs it to disk.
    pub(crate) fn write_synced(&self, path: &Path) -> Result<(), KeyError> {
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path, "creating the WireGuard key file"))?;
        let mut text = self.private.to_base64();
        text.push('\n');
        file.write_all(text.as_bytes())
            .map_err(io_error(path, "writing the WireGuard key"))?;
        file.sync_all()
            .map_err(io_error(path, "syncing the WireGuard key"))
    }
}

/// Reads a key file. The outer error is the file's; the inner one says it holds no key, and
/// names the file only: the text is wiped, never quoted.
pub(crate) fn read_key_file(path: &Path) -> std::io::Result<Result<PrivateKey, KeyError>> {
    let text = Zeroizing::new(std::fs::read_to_string(path)?);
    Ok(
        PrivateKey::from_base64(text.trim()).ok_or_else(|| KeyError::Malformed {
            path: path.display().to_string(),
        }),
    )
}

pub(crate) fn io_error(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.display().to_string();
    move |source| KeyError::Io {
        path,
        action,
        source,
    }
}

/// Makes a rename or removal in `dir` durable. Best effort: a file system that cannot sync a
/// directory still renamed atomically.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

fn refuse_tmpfs(dir: &Path) -> Result<(), KeyError> {
    match nix::sys::statfs::statfs(dir) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => Err(KeyError::OnTmpfs {
            path: dir.display().to_string(),
        }),
        _ => Ok(()),
    }
}

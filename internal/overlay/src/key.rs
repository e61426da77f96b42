//! The node's WireGuard key pair. The private key lives only in `wireguard.key` (mode 0600) in
//! the state directory and in the device; it is never logged, shown or sent to the API. The
//! state directory must be persistent: a key on a tmpfs would be new after every reboot and
//! every peer would have to learn it again.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wireguard_control::Key;

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
        "{path} is on a tmpfs, so the node's WireGuard key would change at every reboot; \
         put store.path on persistent storage"
    )]
    OnTmpfs { path: String },
}

/// The node's key pair. `Debug` shows the public half only.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey {
    private: Key,
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
        Self::from_private(Key::generate_private())
    }

    pub fn from_private(private: Key) -> Self {
        let public = private.get_public();
        Self { private, public }
    }

    pub fn public(&self) -> &Key {
        &self.public
    }

    /// For the device only.
    pub fn private(&self) -> &Key {
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
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key = Key::from_base64(text.trim()).map_err(|_| KeyError::Malformed {
                    path: path.display().to_string(),
                })?;
                // A copied or restored file may have lost its mode; the key is still good.
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                Ok(Self::from_private(key))
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
        let io = |action: &'static str| {
            let p = path.display().to_string();
            move |source| KeyError::Io {
                path: p,
                action,
                source,
            }
        };
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating the WireGuard key file"))?;
        writeln!(file, "{}", self.private.to_base64()).map_err(io("writing the WireGuard key"))?;
        file.sync_all().map_err(io("syncing the WireGuard key"))?;
        std::fs::rename(&tmp, &path).map_err(io("replacing the WireGuard key file"))?;
        if let Ok(dir) = std::fs::File::open(state_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
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

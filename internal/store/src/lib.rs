//! The node's state store: one SQLite file (`store.path`), owned by one daemon at a time.
//!
//! Only this crate touches SQLite. It makes the state directory (0700) and the database (0600),
//! takes the directory's lock so a second daemon cannot share it, refuses a database written by
//! a newer schema, and applies the migrations embedded from `migrations/`. It keeps the IPAM
//! leases (see `leases.rs`) and the hostPort mappings that live and die with them
//! (`port_mappings.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

mod leases;
mod port_mappings;
#[cfg(test)]
mod tests;

pub use leases::{Lease, LeaseRequest, PodRef};
pub use port_mappings::{AttachRequest, HostPortTarget};

/// The schema migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Name of the lock file in the state directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "skein.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot prepare state directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another skein is running (pid {pid}) with the state directory {dir}; stop it first")]
    Locked { dir: PathBuf, pid: String },
    #[error("cannot lock state directory {dir}: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open state database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "state database {path} has schema version {found}, written by a newer skein; this skein \
         knows versions up to {known} and will not downgrade it (install the newer skein again, \
         or move the file away to start from empty state)"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot migrate state database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("state database {path}: {source}")]
    Query { path: PathBuf, source: sqlx::Error },
    #[error("state database {path} holds a malformed lease: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("state database {path} holds a malformed port mapping: {detail}")]
    MalformedMapping { path: PathBuf, detail: String },
    /// No address to hand out: the pod CIDR is full, or too small for pods; the message names it.
    #[error(transparent)]
    Ipam(#[from] skein_ipam::IpamError),
    #[error(
        "container {} interface {} already holds {} from {}, not from {requested}; release it \
         (CNI DEL) before asking again",
        .lease.container_id, .lease.ifname, .lease.address, .lease.cidr
    )]
    LeaseElsewhere {
        lease: Box<leases::Lease>,
        requested: ipnet::IpNet,
    },
}

/// Holds the state directory's lock for as long as it lives.
#[derive(Debug)]
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let lock_err = |source| StoreError::Lock {
            dir: dir.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(lock_err)?;
        // flock: released by the kernel when the process dies, so a crash never leaves it stale.
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() {
                    "unknown".to_string()
                } else {
                    pid.to_string()
                };
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(Self { _file: file })
    }
}

/// The open state store. Dropping it releases the directory lock.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    _lock: std::sync::Arc<DirLock>,
    /// Writers take turns here rather than in SQLite's busy handler, which sleeps in steps of up
    /// to tens of milliseconds: eight pods at once would wait on its timer, not on the disk.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// What the status page shows about the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub schema_version: i64,
    /// Starts recorded, this one included.
    pub starts: i64,
    /// Earlier starts that never recorded a clean stop (crashes, kills, power loss).
    pub unclean_stops: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The newest schema version this build knows.
pub fn known_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, after taking its directory's lock.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        prepare_dir(dir)?;
        let lock = DirLock::acquire(dir)?;
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        prepare_file(path).map_err(|e| open_err(sqlx::Error::Io(e)))?;

        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a lease committed is a lease kept, even across power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;

        let store = Self {
            pool,
            path: path.to_path_buf(),
            _lock: std::sync::Arc::new(lock),
            writer: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let known = known_schema_version();
        if let Some(found) = self.applied_version().await?
            && found > known
        {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found,
                known,
            });
        }
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: self.path.clone(),
                source,
            })
    }

    /// The highest migration applied to the file, if it has any.
    async fn applied_version(&self) -> Result<Option<i64>, StoreError> {
        let has_table: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        if has_table == 0 {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.query_err(e))
    }

    fn query_err(&self, source: sqlx::Error) -> StoreError {
        StoreError::Query {
            path: self.path.clone(),
            source,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records this start; the id is handed back to [`Store::record_clean_stop`].
    pub async fn record_start(&self, version: &str) -> Result<i64, StoreError> {
        sqlx::query("INSERT INTO daemon_starts (started_at, pid, version) VALUES (?, ?, ?)")
            .bind(unix_now())
            .bind(i64::from(std::process::id()))
            .bind(version)
            .execute(&self.pool)
            .await
            .map(|r| r.last_insert_rowid())
            .map_err(|e| self.query_err(e))
    }

    pub async fn record_clean_stop(&self, start_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE daemon_starts SET clean_stop = 1 WHERE id = ?")
            .bind(start_id)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| self.query_err(e))
    }

    pub async fn summary(&self) -> Result<Summary, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS starts,
                    coalesce(sum(clean_stop = 0 AND id < (SELECT max(id) FROM daemon_starts)), 0)
                        AS unclean
             FROM daemon_starts",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(Summary {
            schema_version: self.applied_version().await?.unwrap_or(0),
            starts: row.get("starts"),
            unclean_stops: row.get("unclean"),
        })
    }

    /// A cheap check that the file is still readable and consistent.
    pub async fn check(&self) -> Result<(), StoreError> {
        let verdict: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(self.query_err(sqlx::Error::Protocol(format!("quick_check: {verdict}"))))
        }
    }

    /// Folds the write-ahead log back into the database file, so it does not grow unbounded.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| self.query_err(e))
    }

    /// Closes every connection; the lock goes when the last clone is dropped.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the state directory 0700. An existing directory is left as it is (it may be a shared
/// one such as /tmp in a test), with a warning when others can read it.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    let dir_err = |source| StoreError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    match fs::metadata(dir) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "state directory is accessible to other users; 0700 is expected");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(dir_err)?;
            // DirBuilder's mode is filtered by the umask; set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)
        }
        Err(e) => Err(dir_err(e)),
    }
}

/// Creates the database file 0600 before SQLite does (SQLite would honour the umask, and gives
/// its -wal and -shm files the database file's mode), and tightens an existing one.
fn prepare_file(path: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "state database mode set to 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

//! IPAM leases: which pod interface (CNI attachment) holds which address. Each method is one
//! transaction, so an address is never handed out twice, also when the daemon dies mid-ADD; the
//! choice of address is `skein_ipam`'s, made inside the transaction.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use skein_ipam::Family;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use crate::{Store, StoreError, unix_now};

/// The columns a [`Lease`] is read from, in every query that reads one.
macro_rules! lease_columns {
    () => {
        "cidr, address, container_id, ifname, pod_namespace, pod_name, pod_uid, created_at"
    };
}

/// The pod an address is for, as the CNI ADD names it (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`); empty strings when the runtime did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A CNI ADD's request for one address of `cidr` for the attachment (`container_id`, `ifname`).
/// A dual-stack pod makes one request per pod CIDR of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub container_id: String,
    pub ifname: String,
    pub pod: PodRef,
    pub cidr: IpNet,
}

/// An address held by a pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The pod CIDR it was taken from, in network form.
    pub cidr: IpNet,
    pub address: IpAddr,
    pub container_id: String,
    pub ifname: String,
    pub pod: PodRef,
    /// Unix seconds.
    pub created_at: i64,
}

/// The `family` column's value.
pub(crate) fn family_column(cidr: IpNet) -> i64 {
    match Family::of(cidr) {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

fn lease_from_row(row: &SqliteRow) -> Result<Lease, String> {
    let text = |column: &str| {
        row.try_get::<String, _>(column)
            .map_err(|e| format!("{column}: {e}"))
    };
    let cidr: IpNet = text("cidr")?.parse().map_err(|e| format!("cidr: {e}"))?;
    let address: IpAddr = text("address")?
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    Ok(Lease {
        cidr,
        address,
        container_id: text("container_id")?,
        ifname: text("ifname")?,
        pod: PodRef {
            namespace: text("pod_namespace")?,
            name: text("pod_name")?,
            uid: text("pod_uid")?,
        },
        created_at: row
            .try_get("created_at")
            .map_err(|e| format!("created_at: {e}"))?,
    })
}

/// The order leases are reported in: by pod CIDR (IPv4 first), then by address.
fn sort_leases(leases: &mut [Lease]) {
    leases.sort_by_key(|l| (l.cidr, l.address));
}

/// The leases whose attachment is not in `keep`.
fn not_kept(leases: Vec<Lease>, keep: &BTreeSet<(String, String)>) -> Vec<Lease> {
    leases
        .into_iter()
        .filter(|l| !keep.contains(&(l.container_id.clone(), l.ifname.clone())))
        .collect()
}

/// A write transaction that holds this process's writer turn until it ends.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Store {
    /// Starts a transaction that holds the database's write lock from its first statement.
    /// sqlx's plain `begin` is a deferred BEGIN: two allocations would both read the same free
    /// address and the second would fail when upgrading to write. IMMEDIATE makes them queue
    /// at BEGIN instead (for up to the busy timeout), each seeing the other's committed lease.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.query_err(e))?;
        Ok(WriteTx { tx, _turn: turn })
    }

    fn parse_leases(&self, rows: &[SqliteRow]) -> Result<Vec<Lease>, StoreError> {
        let mut leases = rows
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|detail| StoreError::Malformed {
                path: self.path.clone(),
                detail,
            })?;
        sort_leases(&mut leases);
        Ok(leases)
    }

    /// An address of `req.cidr` for the attachment. If the attachment already holds one of that
    /// CIDR, that lease comes back unchanged: an ADD repeated after a crash gets its address
    /// again. Otherwise the next free address after the CIDR's cursor is taken.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<Lease, StoreError> {
        let mut tx = self.begin_write().await?;
        let lease = self.lease_in(&mut tx, req).await?;
        tx.commit().await.map_err(|e| self.query_err(e))?;
        Ok(lease)
    }

    /// [`Store::lease`]'s work inside the caller's transaction, which commits it (or, dropped,
    /// rolls it back).
    pub(crate) async fn lease_in(
        &self,
        tx: &mut WriteTx,
        req: &LeaseRequest,
    ) -> Result<Lease, StoreError> {
        let cidr = req.cidr.trunc();
        let family = family_column(cidr);

        let held = sqlx::query(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE container_id = ? AND ifname = ? AND family = ?"
        ))
        .bind(&req.container_id)
        .bind(&req.ifname)
        .bind(family)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| self.query_err(e))?;
        if let Some(row) = held {
            let lease = self.parse_leases(&[row])?.remove(0);
            if lease.cidr == cidr {
                return Ok(lease);
            }
            return Err(StoreError::LeaseElsewhere {
                lease: Box::new(lease),
                requested: cidr,
            });
        }

        // Every address of the family, not just the CIDR's: after a pod CIDR change an old,
        // overlapping CIDR's leases are still in use.
        let used = sqlx::query_scalar::<_, String>("SELECT address FROM leases WHERE family = ?")
            .bind(family)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| self.query_err(e))?
            .iter()
            .map(|a| a.parse::<IpAddr>())
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| StoreError::Malformed {
                path: self.path.clone(),
                detail: format!("address: {e}"),
            })?;
        let cursor: Option<String> =
            sqlx::query_scalar("SELECT last_address FROM ipam_cursor WHERE cidr = ?")
                .bind(cidr.to_string())
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| self.query_err(e))?;
        // The cursor is only where the round-robin resumes; one that does not parse starts it
        // from the bottom of the CIDR rather than failing the ADD.
        let after = cursor.and_then(|c| c.parse::<IpAddr>().ok());
        let address = skein_ipam::next_free(cidr, &used, after)?;

        let lease = Lease {
            cidr,
            address,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            pod: req.pod.clone(),
            created_at: unix_now(),
        };
        sqlx::query(concat!(
            "INSERT INTO leases (",
            lease_columns!(),
            ", family) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(lease.cidr.to_string())
        .bind(lease.address.to_string())
        .bind(&lease.container_id)
        .bind(&lease.ifname)
        .bind(&lease.pod.namespace)
        .bind(&lease.pod.name)
        .bind(&lease.pod.uid)
        .bind(lease.created_at)
        .bind(family)
        .execute(&mut **tx)
        .await
        .map_err(|e| self.query_err(e))?;
        sqlx::query(
            "INSERT INTO ipam_cursor (cidr, last_address) VALUES (?, ?)
             ON CONFLICT (cidr) DO UPDATE SET last_address = excluded.last_address",
        )
        .bind(lease.cidr.to_string())
        .bind(lease.address.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(lease)
    }

    /// Gives back every address of the attachment, and its port mappings, and returns the
    /// leases it held. Releasing an attachment that holds nothing is no error: a CNI DEL may
    /// come more than once.
    pub async fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(concat!(
            "DELETE FROM leases WHERE container_id = ? AND ifname = ? RETURNING ",
            lease_columns!()
        ))
        .bind(container_id)
        .bind(ifname)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.query_err(e))?;
        let freed = self.parse_leases(&rows)?;
        self.unmap_in(&mut tx, container_id, ifname).await?;
        tx.commit().await.map_err(|e| self.query_err(e))?;
        Ok(freed)
    }

    /// Gives back every lease whose attachment (container id, interface name) is not in `keep`,
    /// with the attachment's port mappings, and returns the leases it freed. The caller decides what is gone; it must count an ADD still in
    /// flight as kept, or that ADD's fresh lease goes too.
    pub async fn release_except(
        &self,
        keep: &BTreeSet<(String, String)>,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(concat!("SELECT ", lease_columns!(), " FROM leases"))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.query_err(e))?;
        let freed = not_kept(self.parse_leases(&rows)?, keep);
        for lease in &freed {
            sqlx::query("DELETE FROM leases WHERE address = ?")
                .bind(lease.address.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.query_err(e))?;
        }
        self.unmap_except_in(&mut tx, keep).await?;
        tx.commit().await.map_err(|e| self.query_err(e))?;
        Ok(freed)
    }

    /// Every lease, by pod CIDR and address.
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", lease_columns!(), " FROM leases"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_err(e))?;
        self.parse_leases(&rows)
    }

    /// The leases of one attachment: none, or one per address family.
    pub async fn lease_of(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE container_id = ? AND ifname = ?"
        ))
        .bind(container_id)
        .bind(ifname)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        self.parse_leases(&rows)
    }

    /// Leases held per pod CIDR, for the status page's used/free (free is
    /// `skein_ipam::capacity(cidr)` less used). A CIDR without leases is not listed.
    pub async fn usage(&self) -> Result<Vec<(IpNet, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT cidr, count(*) FROM leases GROUP BY cidr")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.query_err(e))?;
        let mut usage = rows
            .into_iter()
            .map(|(cidr, used)| {
                let cidr = cidr.parse::<IpNet>().map_err(|e| format!("cidr: {e}"))?;
                Ok((cidr, u64::try_from(used).unwrap_or(0)))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|detail| StoreError::Malformed {
                path: self.path.clone(),
                detail,
            })?;
        usage.sort();
        Ok(usage)
    }
}

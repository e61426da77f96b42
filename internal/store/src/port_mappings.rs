//! hostPort mappings: what each CNI attachment asked to have forwarded to it
//! (`runtimeConfig.portMappings`). They are written in the ADD's lease transaction
//! ([`Store::attach`]) and removed in the one that frees the attachment's leases, so they live
//! exactly as long as the addresses they forward to; [`Store::host_ports`] pairs each with
//! those addresses for the service proxy.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use skein_cni::{PortMapping, Protocol};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::leases::{Lease, LeaseRequest, PodRef, WriteTx};
use crate::{Store, StoreError};

/// A CNI ADD's whole claim: an address of each of the node's pod CIDRs, and the port mappings
/// to forward to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub ifname: String,
    pub pod: PodRef,
    /// One address is leased from each; a dual-stack node has two.
    pub cidrs: Vec<IpNet>,
    pub port_mappings: Vec<PortMapping>,
}

/// One port mapping of an attachment paired with one of its addresses: what the proxy forwards
/// the host port to. A mapping bound to a host IP pairs with the address of that family only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortTarget {
    pub container_id: String,
    pub ifname: String,
    pub pod: PodRef,
    pub mapping: PortMapping,
    pub address: IpAddr,
}

/// The `host_ip` column's text: empty for none.
fn host_ip_column(host_ip: Option<IpAddr>) -> String {
    host_ip.map(|ip| ip.to_string()).unwrap_or_default()
}

fn mapping_from_row(row: &SqliteRow) -> Result<PortMapping, String> {
    let port = |column: &str| {
        row.try_get::<i64, _>(column)
            .map_err(|e| format!("{column}: {e}"))
            .and_then(|n| u16::try_from(n).map_err(|_| format!("{column}: {n} is not a port")))
    };
    let text = |column: &str| {
        row.try_get::<String, _>(column)
            .map_err(|e| format!("{column}: {e}"))
    };
    let protocol = text("protocol")?;
    let host_ip = text("host_ip")?;
    Ok(PortMapping {
        host_port: port("host_port")?,
        container_port: port("container_port")?,
        protocol: Protocol::parse(&protocol)
            .ok_or_else(|| format!("protocol: {protocol:?} is not tcp, udp or sctp"))?,
        host_ip: if host_ip.is_empty() {
            None
        } else {
            Some(
                host_ip
                    .parse()
                    .map_err(|e| format!("host_ip: {host_ip:?}: {e}"))?,
            )
        },
    })
}

impl Store {
    fn malformed_mapping(&self, detail: String) -> StoreError {
        StoreError::MalformedMapping {
            path: self.path.clone(),
            detail,
        }
    }

    /// An address of each of `req.cidrs` for the attachment (the ones it already holds, as
    /// [`Store::lease`] gives them, when the ADD is repeated) and its port mappings replaced by
    /// `req.port_mappings`, in one transaction: when any part is refused (a CIDR full, an
    /// address held from another CIDR), nothing is written and what the attachment held stays.
    pub async fn attach(&self, req: &AttachRequest) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut leases = Vec::with_capacity(req.cidrs.len());
        for cidr in &req.cidrs {
            let lease = LeaseRequest {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                pod: req.pod.clone(),
                cidr: *cidr,
            };
            leases.push(self.lease_in(&mut tx, &lease).await?);
        }
        // Unchanged mappings keep their rows, and with them their place in the order of
        // arrival: an ADD repeated after a crash does not lose a host port to a later claim.
        if self
            .mappings_in(&mut tx, &req.container_id, &req.ifname)
            .await?
            == req.port_mappings
        {
            tx.commit().await.map_err(|e| self.query_err(e))?;
            return Ok(leases);
        }
        self.unmap_in(&mut tx, &req.container_id, &req.ifname)
            .await?;
        for m in &req.port_mappings {
            sqlx::query(
                "INSERT INTO port_mappings (container_id, ifname, host_port, container_port,
                                            protocol, host_ip)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&req.container_id)
            .bind(&req.ifname)
            .bind(i64::from(m.host_port))
            .bind(i64::from(m.container_port))
            .bind(m.protocol.as_str())
            .bind(host_ip_column(m.host_ip))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.query_err(e))?;
        }
        tx.commit().await.map_err(|e| self.query_err(e))?;
        Ok(leases)
    }

    /// Removes the attachment's port mappings inside the caller's transaction.
    pub(crate) async fn unmap_in(
        &self,
        tx: &mut WriteTx,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM port_mappings WHERE container_id = ? AND ifname = ?")
            .bind(container_id)
            .bind(ifname)
            .execute(&mut **tx)
            .await
            .map(drop)
            .map_err(|e| self.query_err(e))
    }

    /// Removes the port mappings of every attachment not in `keep`, inside the caller's
    /// transaction.
    pub(crate) async fn unmap_except_in(
        &self,
        tx: &mut WriteTx,
        keep: &BTreeSet<(String, String)>,
    ) -> Result<(), StoreError> {
        let attachments: Vec<(String, String)> =
            sqlx::query_as("SELECT DISTINCT container_id, ifname FROM port_mappings")
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| self.query_err(e))?;
        for (container_id, ifname) in attachments {
            if !keep.contains(&(container_id.clone(), ifname.clone())) {
                self.unmap_in(tx, &container_id, &ifname).await?;
            }
        }
        Ok(())
    }

    /// The attachment's port mappings, in the order the ADD gave them.
    pub async fn port_mappings_of(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<PortMapping>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.query_err(e))?;
        self.mappings_in(&mut conn, container_id, ifname).await
    }

    async fn mappings_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<PortMapping>, StoreError> {
        let rows = sqlx::query(
            "SELECT host_port, container_port, protocol, host_ip FROM port_mappings
             WHERE container_id = ? AND ifname = ? ORDER BY id",
        )
        .bind(container_id)
        .bind(ifname)
        .fetch_all(conn)
        .await
        .map_err(|e| self.query_err(e))?;
        rows.iter()
            .map(mapping_from_row)
            .collect::<Result<_, _>>()
            .map_err(|detail| self.malformed_mapping(detail))
    }

    /// The node's host ports: every mapping paired with each address of its attachment (only
    /// the host IP's family when it names one). Earliest mapping first, IPv4 before IPv6, so the
    /// first claim of a host port comes first.
    pub async fn host_ports(&self) -> Result<Vec<HostPortTarget>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.container_id, m.ifname, m.host_port, m.container_port, m.protocol,
                    m.host_ip, l.address, l.pod_namespace, l.pod_name, l.pod_uid
             FROM port_mappings m
             JOIN leases l ON l.container_id = m.container_id AND l.ifname = m.ifname
             ORDER BY m.id, l.family",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let text = |column: &str| {
                row.try_get::<String, _>(column)
                    .map_err(|e| self.malformed_mapping(format!("{column}: {e}")))
            };
            let mapping = mapping_from_row(row).map_err(|d| self.malformed_mapping(d))?;
            let address: IpAddr = text("address")?
                .parse()
                .map_err(|e| self.malformed_mapping(format!("address: {e}")))?;
            if mapping
                .host_ip
                .is_some_and(|ip| ip.is_ipv6() != address.is_ipv6())
            {
                continue;
            }
            out.push(HostPortTarget {
                container_id: text("container_id")?,
                ifname: text("ifname")?,
                pod: PodRef {
                    namespace: text("pod_namespace")?,
                    name: text("pod_name")?,
                    uid: text("pod_uid")?,
                },
                mapping,
                address,
            });
        }
        Ok(out)
    }
}

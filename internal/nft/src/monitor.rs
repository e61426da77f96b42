//! Change notifications for the nftables ruleset: a netlink socket in the `NFNLGRP_NFTABLES`
//! group hears every committed change. Only a commit that touched skein's own table (an object
//! whose table attribute is `skein` in the `inet` family, a deleted table included, as by `nft
//! flush ruleset`) counts, once per commit (its `NFT_MSG_NEWGEN`): other programs' rule churn
//! costs a parse, not a comparison. skein's own commits count too; comparing then finds nothing.

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};

use crate::NftError;

/// The nftables multicast group (`NFNLGRP_NFTABLES` in linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// nfnetlink subsystem of nftables messages (the high byte of the message type).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The message that ends every commit's notifications.
const NFT_MSG_NEWGEN: u16 = 15;
/// `NFPROTO_INET`, the family of skein's table.
const NFPROTO_INET: u8 = 1;
/// The table-name attribute: 1 in every nftables object (`NFTA_TABLE_NAME`,
/// `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, `NFTA_SET_ELEM_LIST_TABLE`, ...).
const NFTA_TABLE: u16 = 1;

/// Reads one datagram of notifications: sets `touched` when a message names skein's table, and
/// returns `true` at the end of a commit (`NEWGEN`) that touched it (clearing `touched`).
pub(crate) fn scan(datagram: &[u8], touched: &mut bool) -> bool {
    let mut committed = false;
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            break;
        }
        let payload = &rest[16..len];
        if kind >> 8 == NFNL_SUBSYS_NFTABLES {
            if kind & 0xff == NFT_MSG_NEWGEN {
                committed |= std::mem::take(touched);
            } else if names_skeins_table(payload) {
                *touched = true;
            }
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    committed
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Whether an nftables message (nfgenmsg, then attributes) is about `inet skein`.
fn names_skeins_table(payload: &[u8]) -> bool {
    if payload.len() < 4 || payload[0] != NFPROTO_INET {
        return false;
    }
    let mut attrs = &payload[4..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return false;
        }
        if kind == NFTA_TABLE {
            let name = &attrs[4..len];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            return name == crate::TABLE.as_bytes();
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    false
}

/// A subscription to ruleset changes in this network namespace.
pub struct RulesetChanges {
    socket: TokioSocket,
    buf: Vec<u8>,
}

impl std::fmt::Debug for RulesetChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesetChanges").finish_non_exhaustive()
    }
}

impl RulesetChanges {
    pub fn subscribe() -> Result<Self, NftError> {
        let io = NftError::Monitor;
        let mut socket = TokioSocket::new(protocols::NETLINK_NETFILTER).map_err(io)?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, 0))
            .map_err(io)?;
        socket
            .socket_ref()
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(io)?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Waits for the next commit that touched skein's table. Lost notifications (the socket's
    /// buffer overflowed under a burst) count as one: anything may have changed.
    pub async fn next(&mut self) -> Result<(), NftError> {
        let mut touched = false;
        loop {
            self.buf.clear();
            match self.socket.recv_from(&mut self.buf).await {
                Ok(_) => {
                    if scan(&self.buf, &mut touched) {
                        return Ok(());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                Err(e) => return Err(NftError::Monitor(e)),
            }
        }
    }
}

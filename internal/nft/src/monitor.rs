//! Change notifications for the nftables ruleset: a netlink socket in the `NFNLGRP_NFTABLES`
//! group hears every committed change (skein's own included). The messages are not parsed:
//! any change is a reason to compare skein's chains with what they should hold, which is cheap
//! and finds nothing when the change was someone else's table or skein's own.

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};

use crate::NftError;

/// The nftables multicast group (`NFNLGRP_NFTABLES` in linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

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

    /// Waits for the next change. A lost notification (the socket's buffer overflowed under a
    /// burst) also counts as a change.
    pub async fn next(&mut self) -> Result<(), NftError> {
        self.buf.clear();
        match self.socket.recv_from(&mut self.buf).await {
            Ok(_) => Ok(()),
            // ENOBUFS: notifications were dropped; something changed.
            Err(e) if e.raw_os_error() == Some(105) => Ok(()),
            Err(e) => Err(NftError::Monitor(e)),
        }
    }
}

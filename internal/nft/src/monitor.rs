//! Change notifications for the nftables ruleset: a netlink socket in the `NFNLGRP_NFTABLES`
//! group hears every committed change. Only a commit that touched skein's own table (an object
//! whose table attribute is `skein` in the `inet` family, a deleted table included, as by `nft
//! flush ruleset`) counts, once per commit (its `NFT_MSG_NEWGEN`): other programs' rule churn
//! costs a parse, not a comparison. skein's own commits are made with the process's sockets out
//! of the group ([`Quiet`]), so they cost the kernel no notifications and wake no part.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use netlink_sys::{Socket, SocketAddr, protocols};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::NftError;
use crate::netlink::wire::{be_u32, nft_attrs};

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
/// The generation attribute of `NEWGEN`.
const NFTA_GEN_ID: u16 = 1;
/// How many generations of other tables' commits are remembered (see [`RulesetChanges::advance`]).
const ELSEWHERE_KEPT: usize = 1024;

/// Reads one datagram of notifications: sets `touched` when a message names skein's table, and
/// returns `true` at the end of a commit (`NEWGEN`) that touched it (clearing `touched`). The
/// generation a commit that did not touch it made goes to `elsewhere`.
pub(crate) fn scan(datagram: &[u8], touched: &mut bool, elsewhere: &mut Vec<u32>) -> bool {
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
                if std::mem::take(touched) {
                    committed = true;
                } else if let Some(generation) = generation_id(payload) {
                    elsewhere.push(generation);
                }
            } else if names_skeins_table(payload) {
                *touched = true;
            }
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    committed
}

/// `NFTA_GEN_ID` of a `NEWGEN` message: the generation the commit made.
fn generation_id(payload: &[u8]) -> Option<u32> {
    nft_attrs(payload)
        .find(|(kind, _)| *kind == NFTA_GEN_ID)
        .and_then(|(_, v)| be_u32(v))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Whether an nftables message (nfgenmsg, then attributes) is about `inet skein`.
fn names_skeins_table(payload: &[u8]) -> bool {
    payload.first() == Some(&NFPROTO_INET)
        && nft_attrs(payload)
            .find(|(kind, _)| *kind == NFTA_TABLE)
            .is_some_and(|(_, name)| {
                name.split(|b| *b == 0).next().unwrap_or_default() == crate::TABLE.as_bytes()
            })
}

/// A subscription to ruleset changes in this network namespace.
pub struct RulesetChanges {
    subscription: Arc<Subscription>,
    buf: Vec<u8>,
    /// Generations made by commits that did not touch skein's table, oldest first.
    elsewhere: Vec<u32>,
}

/// A socket in the nftables group, shared with skein's own commits, which take it out of the
/// group while they commit (see [`Quiet`]).
struct Subscription {
    socket: AsyncFd<Socket>,
    /// The network namespace the socket is in (its inode), so that a commit in another
    /// namespace (the tests run many) leaves it alone.
    netns: Option<u64>,
    /// Set when a commit of skein's own may have hidden another program's: the next
    /// [`RulesetChanges::next`] returns at once.
    missed: AtomicBool,
    wake: Notify,
}

/// Every live subscription of this process.
static SUBSCRIPTIONS: Mutex<Vec<Weak<Subscription>>> = Mutex::new(Vec::new());
/// skein's own commits, one at a time, so that each one's change of the generation is its own.
static COMMITS: Mutex<()> = Mutex::new(());

/// The calling thread's network namespace (the inode of its `ns/net`).
pub(crate) fn netns_id() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

impl std::fmt::Debug for RulesetChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesetChanges").finish_non_exhaustive()
    }
}

impl RulesetChanges {
    /// Joins the nftables group in the calling thread's network namespace.
    pub fn subscribe() -> Result<Self, NftError> {
        let io = NftError::Monitor;
        let mut socket = Socket::new(protocols::NETLINK_NETFILTER).map_err(io)?;
        socket.bind(&SocketAddr::new(0, 0)).map_err(io)?;
        socket.set_non_blocking(true).map_err(io)?;
        socket.add_membership(NFNLGRP_NFTABLES).map_err(io)?;
        // `AsyncFd::new` is deprecated for types that may not own their descriptor; a netlink
        // `Socket` owns its own and closes it only when dropped, which is after the
        // registration ends (the `AsyncFd` owns it), as in netlink-sys's own tokio socket.
        #[allow(deprecated)]
        let socket = AsyncFd::new(socket).map_err(io)?;
        let subscription = Arc::new(Subscription {
            socket,
            netns: netns_id(),
            missed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let mut all = lock(&SUBSCRIPTIONS);
        all.retain(|s| s.strong_count() > 0);
        all.push(Arc::downgrade(&subscription));
        Ok(Self {
            subscription,
            buf: Vec::with_capacity(64 * 1024),
            elsewhere: Vec::new(),
        })
    }

    /// Waits for the next commit that touched skein's table. Lost notifications (the socket's
    /// buffer overflowed under a burst, or another program committed while skein's own commit
    /// had the socket out of the group) count as one: anything may have changed.
    pub async fn next(&mut self) -> Result<(), NftError> {
        let mut touched = false;
        loop {
            let sub = &self.subscription;
            if sub.missed.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
            let mut ready = tokio::select! {
                ready = sub.socket.readable() => ready.map_err(NftError::Monitor)?,
                () = sub.wake.notified() => continue,
            };
            self.buf.clear();
            match ready.try_io(|s| s.get_ref().recv(&mut self.buf, 0)) {
                Ok(Ok(_)) => {
                    let seen = scan(&self.buf, &mut touched, &mut self.elsewhere);
                    if self.elsewhere.len() > ELSEWHERE_KEPT {
                        let over = self.elsewhere.len() - ELSEWHERE_KEPT;
                        self.elsewhere.drain(..over);
                    }
                    if seen {
                        return Ok(());
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                Ok(Err(e)) => return Err(NftError::Monitor(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl RulesetChanges {
    /// The generation skein's table is known at, carried past the commits heard since that
    /// touched other tables only: a caller that knew the table at `known` knows it at the
    /// result (a commit of other programs to their own tables changes nothing of skein's).
    /// Stops at the first generation not heard as such; `None` stays `None`.
    pub fn advance(&self, known: Option<u32>) -> Option<u32> {
        let mut known = known?;
        while self.elsewhere.contains(&known.wrapping_add(1)) {
            known = known.wrapping_add(1);
        }
        Some(known)
    }
}

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // The data stays valid whatever panicked while holding it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One of skein's own commits, made with this process's subscriptions out of the group.
///
/// Every listener makes the kernel build a notification per changed object while it commits:
/// at 10,000 Services a full sync's 70,000 elements cost more in notifications (a page-sized
/// buffer allocated for each) than the commit itself, and each of skein's parts then read and
/// scanned them all, only to find its own commit. Another program's commit in the window is
/// not lost: the generation is read before the sockets leave the group and after they are
/// back, and a change beyond this commit's own wakes every subscription as a missed one.
pub(crate) struct Quiet {
    subscriptions: Vec<Arc<Subscription>>,
    before: Option<u32>,
    _turn: MutexGuard<'static, ()>,
}

impl Quiet {
    /// Reads the generation (`generation`) and takes `netns`'s subscriptions out of the group;
    /// `None` when there are none (nothing to do).
    pub(crate) fn begin(
        netns: Option<u64>,
        generation: impl FnOnce() -> Option<u32>,
    ) -> Option<Quiet> {
        let turn = lock(&COMMITS);
        let subscriptions: Vec<Arc<Subscription>> = lock(&SUBSCRIPTIONS)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| netns.is_some() && s.netns == netns)
            .collect();
        if subscriptions.is_empty() {
            return None;
        }
        let before = generation();
        for s in &subscriptions {
            // A socket that stays in the group hears this commit as before: no harm.
            let _ = s.socket.get_ref().drop_membership(NFNLGRP_NFTABLES);
        }
        Some(Quiet {
            subscriptions,
            before,
            _turn: turn,
        })
    }

    /// Puts the subscriptions back in the group, then reads the generation: if it moved by
    /// more than this commit's own (`committed`: one if the kernel took the batch), another
    /// program committed meanwhile, and every subscription is told it missed something.
    /// Returns the generation this commit made when it was the window's only one.
    pub(crate) fn end(
        self,
        committed: bool,
        generation: impl FnOnce() -> Option<u32>,
    ) -> Option<u32> {
        let mut rejoined = true;
        for s in &self.subscriptions {
            rejoined &= s.socket.get_ref().add_membership(NFNLGRP_NFTABLES).is_ok();
        }
        let after = generation();
        let ours = u32::from(committed);
        let hidden = match (self.before, after) {
            (Some(before), Some(after)) => after.wrapping_sub(before) > ours,
            _ => true,
        };
        if hidden || !rejoined {
            for s in &self.subscriptions {
                s.missed.store(true, Ordering::Release);
                s.wake.notify_one();
            }
        }
        match (self.before, after) {
            (Some(before), Some(after)) if committed && after == before.wrapping_add(1) => {
                Some(after)
            }
            _ => None,
        }
    }
}

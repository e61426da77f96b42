//! The netlink backend: transactions as nfnetlink batches of `NFT_MSG_*` messages, built in
//! this process (no nft program, no libnftnl) on one `NETLINK_NETFILTER` socket the caller keeps.
//!
//! A transaction is one batch: `NFNL_MSG_BATCH_BEGIN`, one message per op (element ops take one
//! message per ~60 kB of elements), `NFNL_MSG_BATCH_END`, sent as one datagram, which the kernel
//! applies as one transaction: all of it, or none of it. Every message asks for an ack, so a
//! refusal names the op that caused it, in nft syntax. [`Netlink::apply_bounded`] splits a big
//! transaction into several batches when one would be too slow to commit.

use std::ops::Range;

use crate::model::*;
use crate::{Backend, NftError};

mod consts;
mod dump;
mod expr;
mod io;
mod objects;
mod probe;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

pub use objects::{element_bytes, element_key_bytes};
pub use probe::probe;

use consts::*;

/// skein's nftables socket, in the network namespace of the thread that opened it.
pub struct Netlink {
    channel: io::Channel,
    set_ids: u32,
    /// `skein`, or the probe's scratch table while it runs.
    table: &'static str,
    /// The socket's network namespace, whose subscriptions its commits quiet.
    netns: Option<u64>,
    /// See [`Netlink::committed_generation`].
    committed: Option<u32>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

/// The messages of a batch, and which op (and which of its elements) each came from.
struct Batch {
    bytes: Vec<u8>,
    /// `(seq, op index, elements)` of every op message, in order.
    index: Vec<(u32, usize, Option<Range<usize>>)>,
    first: u32,
    last: u32,
}

impl Netlink {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NftError> {
        Ok(Self {
            channel: io::Channel::open()?,
            set_ids: 0,
            table: crate::TABLE,
            netns: crate::monitor::netns_id(),
            committed: None,
        })
    }

    /// The ruleset's generation right after the last batch this socket sent, when that batch
    /// committed and no other commit came between (known from the generation read around
    /// it while this process's change subscriptions were quieted; `None` otherwise, and when
    /// the process has no subscription). A caller that holds this generation and later finds
    /// the same one knows the kernel's ruleset is exactly as it left it.
    pub fn committed_generation(&self) -> Option<u32> {
        self.committed
    }

    /// Like [`Backend::apply`], but refused (as [`NftError::Raced`]) when the ruleset's
    /// generation is no longer `generation`: someone committed since the caller read it.
    pub fn apply_at(&mut self, tx: &Transaction, generation: u32) -> Result<(), NftError> {
        self.apply_ops(&tx.ops, Some(generation))
    }

    /// Applies a transaction as several batches of at most `max_weight` ([`Op::weight`]) each,
    /// in order, so that no single commit grows too large (the kernel's commit time grows
    /// faster than linearly with its size). Ops stay whole, except element ops heavier than
    /// `max_weight`, whose elements are split across batches.
    ///
    /// The transaction is no longer atomic: a failure leaves the batches before it applied,
    /// and between batches the kernel runs with a partial change. Ordering is the caller's
    /// safety: every prefix of the ops must be a state the ruleset may be in (sets and chains
    /// before the rules and elements that refer to them; new rules before old ones go).
    pub fn apply_bounded(&mut self, tx: &Transaction, max_weight: usize) -> Result<(), NftError> {
        let max = max_weight.max(1);
        let mut batch: Vec<Op> = Vec::new();
        let mut weight = 0;
        for op in split_heavy(&tx.ops, max) {
            if weight + op.weight() > max && !batch.is_empty() {
                self.apply_ops(&batch, None)?;
                batch.clear();
                weight = 0;
            }
            weight += op.weight();
            batch.push(op);
        }
        if !batch.is_empty() {
            self.apply_ops(&batch, None)?;
        }
        Ok(())
    }

    fn apply_ops(&mut self, ops: &[Op], generation: Option<u32>) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        let shapes = self.shapes(ops)?;
        let batch = self.build(ops, generation, &shapes)?;
        let acks = batch.index.len();
        let quiet = crate::monitor::Quiet::begin(self.netns, || self.read_generation().ok());
        let outcome = self
            .channel
            .batch(&batch.bytes, batch.first, batch.last, acks);
        self.committed = None;
        if let Some(quiet) = quiet {
            let committed = outcome.as_ref().is_ok_and(|o| o.error.is_none() && !o.lost);
            self.committed = quiet.end(committed, || self.read_generation().ok());
        }
        let outcome = outcome?;
        if let Some((seq, errno)) = outcome.error {
            if let (Some(expected), libc::ERESTART) = (generation, errno) {
                let found = self.read_generation()?;
                return Err(NftError::Raced { expected, found });
            }
            let what = match batch.index.iter().find(|(s, _, _)| *s == seq) {
                Some((_, i, elements)) => describe(&ops[*i], elements.clone()),
                None => format!("a batch of {} operations", ops.len()),
            };
            return Err(NftError::Rejected {
                what,
                reason: io::describe_errno(errno),
            });
        }
        if outcome.lost {
            return Err(NftError::Rejected {
                what: format!("a batch of {} operations", ops.len()),
                reason:
                    "its acknowledgements were lost (receive buffer full); the outcome is unknown"
                        .into(),
            });
        }
        Ok(())
    }

    /// How each set that element ops name lays out its keys: from the transaction's own
    /// `AddSet`, else from the kernel.
    fn shapes(
        &mut self,
        ops: &[Op],
    ) -> Result<std::collections::HashMap<String, objects::Shape>, NftError> {
        let mut shapes = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::AddSet(set) => {
                    shapes.insert(set.name.clone(), objects::Shape::of(set));
                }
                Op::AddElements { set, elements } | Op::DeleteElements { set, elements }
                    if !shapes.contains_key(set) =>
                {
                    let shape = match self.set_info(set)? {
                        Some(info) => info.shape(),
                        // The kernel will refuse the op; guess so that it gets there.
                        None => objects::Shape {
                            interval: false,
                            concat: elements.first().is_some_and(|e| e.key.len() > 1),
                        },
                    };
                    shapes.insert(set.clone(), shape);
                }
                _ => {}
            }
        }
        Ok(shapes)
    }

    fn build(
        &mut self,
        ops: &[Op],
        generation: Option<u32>,
        shapes: &std::collections::HashMap<String, objects::Shape>,
    ) -> Result<Batch, NftError> {
        let first = self.channel.next_seq();
        let mut begin = wire::Msg::new(NFNL_MSG_BATCH_BEGIN, 0, first, 0, NFNL_SUBSYS_NFTABLES);
        if let Some(g) = generation {
            begin.u32(NFNL_BATCH_GENID, g);
        }
        let mut bytes = begin.finish();
        let mut index = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if let Op::AddSet(_) = op {
                self.set_ids = self.set_ids.wrapping_add(1);
            }
            let id = self.set_ids;
            let pieces = objects::encode(op, self.table, self.channel.seq_mut(), id, |name| {
                shapes.get(name).copied().unwrap_or_default()
            })
            .map_err(|reason| NftError::Rejected {
                what: describe(op, None),
                reason,
            })?;
            let count = pieces.len() as u32;
            let last_seq = *self.channel.seq_mut();
            for (k, piece) in pieces.into_iter().enumerate() {
                bytes.extend_from_slice(&piece.bytes);
                let seq = last_seq.wrapping_sub(count - 1 - k as u32);
                index.push((seq, i, piece.elements));
            }
        }
        let last = self.channel.next_seq();
        let end = wire::Msg::new(NFNL_MSG_BATCH_END, 0, last, 0, NFNL_SUBSYS_NFTABLES);
        bytes.extend_from_slice(&end.finish());
        Ok(Batch {
            bytes,
            index,
            first,
            last,
        })
    }
}

/// Element ops heavier than `max` as several ops of at most `max` elements.
fn split_heavy(ops: &[Op], max: usize) -> impl Iterator<Item = Op> + '_ {
    ops.iter().flat_map(move |op| -> Vec<Op> {
        match op {
            Op::AddElements { set, elements } if elements.len() > max => elements
                .chunks(max)
                .map(|c| Op::AddElements {
                    set: set.clone(),
                    elements: c.to_vec(),
                })
                .collect(),
            Op::DeleteElements { set, elements } if elements.len() > max => elements
                .chunks(max)
                .map(|c| Op::DeleteElements {
                    set: set.clone(),
                    elements: c.to_vec(),
                })
                .collect(),
            _ => vec![op.clone()],
        }
    })
}

/// How many elements an error shows of the message the kernel refused.
const SHOWN_ELEMENTS: usize = 4;

/// The op in nft syntax; for an element op, the elements of the refused message (a few).
fn describe(op: &Op, elements: Option<Range<usize>>) -> String {
    let (shown, more) = match (op, elements) {
        (
            Op::AddElements { set, elements: all } | Op::DeleteElements { set, elements: all },
            Some(range),
        ) => {
            let part = &all[range.clone()];
            let take: Vec<Element> = part.iter().take(SHOWN_ELEMENTS).cloned().collect();
            let op = match op {
                Op::AddElements { .. } => Op::AddElements {
                    set: set.clone(),
                    elements: take,
                },
                _ => Op::DeleteElements {
                    set: set.clone(),
                    elements: take,
                },
            };
            (op, part.len().saturating_sub(SHOWN_ELEMENTS))
        }
        _ => (op.clone(), 0),
    };
    let text = Transaction { ops: vec![shown] }.script();
    let text = text.trim_end();
    if more > 0 {
        format!("{text} (and {more} more elements of the same message)")
    } else {
        text.to_string()
    }
}

impl Backend for Netlink {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.apply_ops(&tx.ops, None)
    }

    fn chain(&mut self, name: &str) -> Result<Option<ChainDump>, NftError> {
        self.read_chain(name)
    }

    fn dump(&mut self) -> Result<Option<TableDump>, NftError> {
        self.read_table()
    }

    fn generation(&mut self) -> Result<u32, NftError> {
        self.read_generation()
    }
}

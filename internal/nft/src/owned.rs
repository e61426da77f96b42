//! A chain skein owns and keeps as it should be: its transaction (add, flush, fill) and the
//! kernel's listing of it right after skein last applied that transaction. Comparing the
//! listing now with that one tells a chain someone changed or removed (an `nft flush ruleset`,
//! a deleted table, an edited rule) without skein having to parse nft's output.

use crate::{Backend, NftError, Transaction};

/// What a [`OwnedChain::reconcile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainSync {
    /// The kernel holds what was applied last.
    Unchanged,
    /// First apply, or a new desired content.
    Applied,
    /// The kernel's chain had drifted (changed or gone) and was put back.
    Repaired,
}

#[derive(Debug, Clone)]
pub struct OwnedChain {
    name: String,
    desired: Transaction,
    applied: Option<String>,
}

impl OwnedChain {
    pub fn new(name: &str, desired: Transaction) -> Self {
        Self {
            name: name.to_string(),
            desired,
            applied: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new content for the chain; the next reconcile applies it.
    pub fn set_desired(&mut self, desired: Transaction) {
        if desired != self.desired {
            self.desired = desired;
            self.applied = None;
        }
    }

    /// Compares the kernel's chain with what was applied and applies the transaction when they
    /// differ (or nothing was applied yet).
    pub fn reconcile(&mut self, backend: &impl Backend) -> Result<ChainSync, NftError> {
        let outcome = match &self.applied {
            None => ChainSync::Applied,
            Some(applied) => {
                if backend.list_chain(&self.name)?.as_ref() == Some(applied) {
                    return Ok(ChainSync::Unchanged);
                }
                ChainSync::Repaired
            }
        };
        backend.apply(&self.desired)?;
        self.applied = backend.list_chain(&self.name)?;
        Ok(outcome)
    }
}

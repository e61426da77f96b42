//! A chain skein owns and keeps as it should be: its transaction (add, flush, fill), compared
//! with the kernel's chain by the fingerprints skein stores with each rule. A chain someone
//! changed or removed (an `nft flush ruleset`, a deleted table, an edited or added rule) shows as
//! a different list of fingerprints, without skein having to decode the kernel's expressions.

use crate::{Backend, NftError, Transaction, fingerprint, rules_of};

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
    /// The desired rules' fingerprints, in order.
    expected: Vec<u64>,
    /// Whether `desired` was applied (by this process) or found in place.
    settled: bool,
}

impl OwnedChain {
    pub fn new(name: &str, desired: Transaction) -> Self {
        Self {
            name: name.to_string(),
            expected: fingerprints(&desired),
            desired,
            settled: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new content for the chain; the next reconcile applies it.
    pub fn set_desired(&mut self, desired: Transaction) {
        if desired != self.desired {
            self.expected = fingerprints(&desired);
            self.desired = desired;
            self.settled = false;
        }
    }

    /// Compares the kernel's chain with the desired one and applies the transaction when they
    /// differ. A chain already as desired (left by an earlier run) is adopted untouched.
    pub fn reconcile(&mut self, backend: &mut impl Backend) -> Result<ChainSync, NftError> {
        let current = backend.chain(&self.name)?;
        let matches = current.as_ref().is_some_and(|c| {
            c.rules
                .iter()
                .map(|r| r.fingerprint)
                .eq(self.expected.iter().copied().map(Some))
        });
        let outcome = match (matches, self.settled) {
            (true, _) => {
                self.settled = true;
                return Ok(ChainSync::Unchanged);
            }
            (false, false) => ChainSync::Applied,
            (false, true) => ChainSync::Repaired,
        };
        backend.apply(&self.desired)?;
        self.settled = true;
        Ok(outcome)
    }
}

fn fingerprints(tx: &Transaction) -> Vec<u64> {
    rules_of(tx).into_iter().map(fingerprint).collect()
}

//! Waiting for a condition with a deadline: one polling loop for the lab and its tests, so no
//! wait becomes a bare sleep and a failed wait says that time ran out. A panic inside the check
//! is not a timeout: it unwinds through the loop untouched, with its own message.

use std::time::{Duration, Instant};

/// Why [`poll`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError<E> {
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The check itself failed: waiting longer would not help.
    #[error("{0}")]
    Failed(E),
}

/// Calls `check` every `every` until it returns `Ok(Some(_))` or an error, or until `deadline`
/// has passed since the first call. The check always runs at least once.
pub fn poll<T, E>(
    deadline: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<T, WaitError<E>> {
    let start = Instant::now();
    loop {
        if let Some(value) = check().map_err(WaitError::Failed)? {
            return Ok(value);
        }
        if start.elapsed() >= deadline {
            return Err(WaitError::TimedOut(deadline));
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests;

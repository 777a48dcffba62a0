//! Waits between retries: exponential, capped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backoff between retries.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// First wait.
    pub initial_ms: u64,
    /// Longest wait.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 200,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// The wait before retry `attempt` (0-based).
    pub fn wait(&self, attempt: u32) -> Duration {
        let ms = self
            .initial_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.max_ms);
        Duration::from_millis(ms)
    }
}

//! Exponential backoff: how long a retry loop waits after its `attempt`th consecutive failure.

use std::time::Duration;

/// Delays doubling from `base` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure (attempt 0).
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff doubling from `base` up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The largest delay after `attempt` failures: `min(max, base * 2^attempt)`. For retries
    /// whose next time is shown to operators (it must not move when asked twice).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // Past 2^16 the product saturates and `max` wins anyway.
        self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max)
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]` ("full jitter"), so many clients
    /// that failed together (a fleet that lost its control plane) do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_to_max_and_jitter_stays_under_the_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings: Vec<u128> = (0..8).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5), "no overflow however many failures");
        for attempt in 0..40 {
            assert!(backoff.delay(attempt) <= backoff.ceiling(attempt));
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| backoff.delay(6)).collect();
        assert!(spread.len() > 10, "jittered delays differ: {spread:?}");
    }
}

//! Exponential backoff with jitter, for everything that retries a
//! connection or a failed round (listener, revocation subscriber, worker).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// Counts one more failure and answers how long to wait before retrying:
    /// `base * 2^failures`, at most `max`, minus up to a fifth at random so
    /// that many processes do not retry in step.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doubled = self
            .base
            .saturating_mul(2u32.saturating_pow(self.failures.min(16)));
        let delay = doubled.min(self.max);
        let jitter = rand::rng().random_range(0.0..0.2);
        delay.mul_f64(1.0 - jitter)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let first = backoff.next_delay();
        assert!(first <= Duration::from_millis(200) && first >= Duration::from_millis(160));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(5));
        }
        assert!(backoff.next_delay() >= Duration::from_secs(4));
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
    }
}

//! Reconnect delays: exponential backoff with full jitter.
//!
//! The n-th consecutive failure waits a uniformly random time in `0 ..= min(cap, base × 2ⁿ)`
//! ("full jitter", AWS architecture blog). Spreading reconnects over the whole window keeps a
//! fleet of gateways from hammering a server that just came back all in the same second.
//!
//! The random source is a seeded [`StdRng`]: give [`BackoffConfig::seed`] in tests to get the
//! same delays on every run; leave it `None` in production to seed from the OS.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Settings of [`Backoff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackoffConfig {
    /// Upper bound of the first delay, milliseconds. Default 1,000.
    pub base_ms: u64,
    /// Largest upper bound, milliseconds. Default 60,000.
    pub cap_ms: u64,
    /// Seed of the jitter's random source; `None` (the default) seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 1_000,
            cap_ms: 60_000,
            seed: None,
        }
    }
}

impl BackoffConfig {
    /// Check the values: `base_ms` at least 1, `cap_ms` at least `base_ms`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.base_ms == 0 {
            return Err(Error::InvalidConfig {
                param: "backoff.base_ms",
                reason: "must be at least 1 ms".into(),
            });
        }
        if self.cap_ms < self.base_ms {
            return Err(Error::InvalidConfig {
                param: "backoff.cap_ms",
                reason: format!("must be at least backoff.base_ms ({})", self.base_ms),
            });
        }
        Ok(())
    }
}

/// Exponential backoff with full jitter; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new(config: BackoffConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Backoff {
            config,
            failures: 0,
            rng,
        }
    }

    /// The upper bound of the next delay: `min(cap, base × 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u64.checked_shl(self.failures.min(63)).unwrap_or(u64::MAX);
        Duration::from_millis(
            self.config
                .base_ms
                .saturating_mul(factor)
                .min(self.config.cap_ms),
        )
    }

    /// The delay before the next attempt, and count one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling().as_millis() as u64;
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(self.rng.random_range(0..=ceiling))
    }

    /// Failures counted since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forget the failures (call it when a session was established).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(seed: u64) -> Backoff {
        Backoff::new(BackoffConfig {
            base_ms: 100,
            cap_ms: 1_000,
            seed: Some(seed),
        })
    }

    #[test]
    fn delays_stay_under_a_doubling_ceiling_capped_at_the_cap() {
        let mut backoff = seeded(7);
        let ceilings: Vec<u64> = (0..6)
            .map(|_| {
                let ceiling = backoff.ceiling().as_millis() as u64;
                let delay = backoff.next_delay().as_millis() as u64;
                assert!(delay <= ceiling, "{delay} > {ceiling}");
                ceiling
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_jitter_spreads_them() {
        let run = |seed| {
            let mut b = seeded(seed);
            (0..20).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        // Full jitter: over many draws at the cap, delays cover the window rather than
        // clustering at its top.
        let mut b = seeded(3);
        for _ in 0..10 {
            b.next_delay();
        }
        let draws: Vec<u64> = (0..200)
            .map(|_| b.next_delay().as_millis() as u64)
            .collect();
        assert!(
            draws.iter().any(|d| *d < 250),
            "no small delay in {draws:?}"
        );
        assert!(
            draws.iter().any(|d| *d > 750),
            "no large delay in {draws:?}"
        );
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut b = seeded(0);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_millis(1_000));
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        let err = BackoffConfig {
            base_ms: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("backoff.base_ms"), "{err}");
        let err = BackoffConfig {
            base_ms: 10,
            cap_ms: 5,
            seed: None,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("backoff.cap_ms"), "{err}");
    }
}

//! The retry policy: when to try again after a failed upload, as a sans-IO state machine.
//!
//! # Invariants
//!
//! * The delay after the `n`-th consecutive failure is drawn uniformly from
//!   `0 ..= min(cap, base × 2^(n-1))` ("full jitter"), so a fleet of gateways that lost the
//!   server together does not come back in lock-step.
//! * A `Retry-After` sent with a 429 or a 503 wins over the computed delay (clamped to
//!   [`RetryPolicy::retry_after_cap_ms`] so a broken server cannot park the uplink for a day).
//! * A 4xx other than 408 and 429 is never retried as is: [`classify_status`] sorts it into
//!   "dead-letter the records" or "blocked until the configuration is fixed".
//! * Time is passed in (`now: Instant`), randomness is injected (`R: RngCore`): no clock, no
//!   global RNG, no I/O. The uplink's tokio driver is a thin loop around [`Backoff`].
//!
//! # Calls
//!
//! Before each attempt the driver waits for [`Backoff::poll_timeout`] (none: go now) and takes
//! [`Backoff::epoch`]; after it, it calls [`Backoff::on_success`] or
//! [`Backoff::on_failure`] with that epoch. Several batches may be in flight at once: a
//! failure of an attempt that started before another failure (or success) was recorded does
//! not grow the backoff again, so two batches failing together count as one failure.
//! [`Backoff::wake`] drops the pending delay (the server is known to be back).

use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Error;

/// Tunables of the retry schedule. Plain data; [`RetryPolicy::validate`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Ceiling of the first delay, ms. Default 1,000.
    pub base_ms: u64,
    /// Largest ceiling any delay may have, ms. Default 60,000.
    pub cap_ms: u64,
    /// Longest honoured `Retry-After`, ms; longer values are clamped. Default 600,000 (10 min).
    pub retry_after_cap_ms: u64,
    /// Stop retrying on the timer after failing this long without a success, ms. The records
    /// stay in the buffer and the uplink reports `down` until [`Backoff::wake`] (the gateway
    /// calls it when its control channel reconnects). `None` (default): retry for ever.
    pub max_elapsed_ms: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 1_000,
            cap_ms: 60_000,
            retry_after_cap_ms: 600_000,
            max_elapsed_ms: None,
        }
    }
}

impl RetryPolicy {
    /// Check the values: every duration positive, `base_ms <= cap_ms`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.base_ms == 0 {
            return Err(Error::invalid("retry.base_ms", "must be at least 1 ms"));
        }
        if self.cap_ms < self.base_ms {
            return Err(Error::invalid(
                "retry.cap_ms",
                format!("{} is below retry.base_ms ({})", self.cap_ms, self.base_ms),
            ));
        }
        if self.max_elapsed_ms == Some(0) {
            return Err(Error::invalid(
                "retry.max_elapsed_ms",
                "must be at least 1 ms, or left out to retry for ever",
            ));
        }
        Ok(())
    }

    /// The largest delay after `failures` consecutive failures (1 for the first):
    /// `min(cap, base × 2^(failures-1))`; zero for zero failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(63);
        let ms = self
            .base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cap_ms);
        Duration::from_millis(ms)
    }

    /// A delay drawn with full jitter: uniform in `0 ..= ceiling(failures)`, at 1 ms grain.
    pub fn jittered<R: RngCore + ?Sized>(&self, failures: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(failures).as_millis() as u64;
        if ceiling == 0 {
            return Duration::ZERO;
        }
        // Uniform over 0..=ceiling; the modulo bias is below 2^-40 for any sane ceiling.
        Duration::from_millis(rng.next_u64() % (ceiling + 1))
    }
}

/// What became of one upload attempt that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with this non-2xx status.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` the server sent, if any.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the request timeout (including a hang after the request
    /// was sent: the server may have stored the batch).
    Timeout,
    /// The connection could not be opened, or broke before the answer arrived.
    Connection,
}

/// How the uplink treats an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx: the server answered the batch.
    Success,
    /// 408, 429, 5xx: a transient condition; release the batch and retry after a backoff.
    Retry,
    /// 413 for a batch: too large for this server; send smaller batches (a single record
    /// that is still too large is dead-lettered).
    TooLarge,
    /// A 4xx that says the records themselves are bad (400, 409, 422, ...): retrying cannot
    /// help, so the batch goes to the dead-letter store with the server's reason.
    DeadLetter,
    /// A 4xx (or 3xx) that says the request can never be accepted by this endpoint with
    /// these credentials — 401, 403, 404, 405, 407, 415, redirects. The records are fine,
    /// the configuration is not: they stay in the buffer, the uplink reports `down` and
    /// retries at the capped interval (or at once on [`Backoff::wake`]).
    Blocked,
}

/// Sort an HTTP status into what the uplink does with the batch.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 429 => StatusClass::Retry,
        413 => StatusClass::TooLarge,
        401 | 403 | 404 | 405 | 407 | 415 => StatusClass::Blocked,
        400..=499 => StatusClass::DeadLetter,
        500..=599 => StatusClass::Retry,
        _ => StatusClass::Blocked,
    }
}

impl Failure {
    /// True for failures that call for a retry later (timeouts, broken connections, 408,
    /// 429, 5xx, and the blocked statuses, which retry at the capped interval).
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Connection => true,
            Failure::Status { status, .. } => {
                matches!(
                    classify_status(*status),
                    StatusClass::Retry | StatusClass::Blocked
                )
            }
        }
    }

    fn honoured_retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status {
                status: 429 | 503,
                retry_after,
            } => *retry_after,
            _ => None,
        }
    }

    fn is_blocked(&self) -> bool {
        matches!(self, Failure::Status { status, .. } if classify_status(*status) == StatusClass::Blocked)
    }
}

/// What the driver should do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again, not before this instant.
    RetryAt(Instant),
    /// The failing stretch lasted longer than `max_elapsed_ms`: stop retrying on the timer
    /// until [`Backoff::wake`]. Nothing is dropped; the records stay in the buffer.
    GiveUp,
}

/// Backoff state shared by every batch of one uplink. See the module docs for the calls.
#[derive(Debug)]
pub struct Backoff<R> {
    policy: RetryPolicy,
    rng: R,
    failures: u32,
    failing_since: Option<Instant>,
    not_before: Option<Instant>,
    parked: bool,
    epoch: u64,
}

impl<R: RngCore> Backoff<R> {
    /// A fresh state: no failures, nothing to wait for.
    pub fn new(policy: RetryPolicy, rng: R) -> Self {
        Backoff {
            policy,
            rng,
            failures: 0,
            failing_since: None,
            not_before: None,
            parked: false,
            epoch: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Consecutive failures counted for the backoff (concurrent failures count once).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The epoch to hand back to [`Backoff::on_failure`] for an attempt starting now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True after [`RetryDecision::GiveUp`], until [`Backoff::wake`].
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// When the next attempt may start; `None` when it may start now (or, if
    /// [`Backoff::is_parked`], only after a wake).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.not_before
    }

    /// True when an attempt may start at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        !self.parked && self.not_before.is_none_or(|at| at <= now)
    }

    /// An attempt succeeded: forget every failure.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.failing_since = None;
        self.not_before = None;
        self.parked = false;
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// An attempt that started at `started_epoch` failed at `now`.
    pub fn on_failure(
        &mut self,
        now: Instant,
        started_epoch: u64,
        failure: &Failure,
    ) -> RetryDecision {
        let retry_after = failure
            .honoured_retry_after()
            .map(|d| d.min(Duration::from_millis(self.policy.retry_after_cap_ms)));
        let failing_since = *self.failing_since.get_or_insert(now);
        if started_epoch == self.epoch {
            // The first failure seen since this attempt started: it counts.
            self.failures = self.failures.saturating_add(1);
            self.epoch = self.epoch.wrapping_add(1);
            let delay = match retry_after {
                Some(d) => d,
                None if failure.is_blocked() => Duration::from_millis(self.policy.cap_ms),
                None => self.policy.jittered(self.failures, &mut self.rng),
            };
            self.not_before = Some(now + delay);
        } else if let Some(d) = retry_after {
            // A concurrent failure: the delay already set stands, but a server's explicit
            // Retry-After may only lengthen it.
            let at = now + d;
            self.not_before = Some(self.not_before.map_or(at, |nb| nb.max(at)));
        }
        if let Some(max) = self.policy.max_elapsed_ms
            && now.saturating_duration_since(failing_since) >= Duration::from_millis(max)
        {
            self.parked = true;
            self.not_before = None;
            return RetryDecision::GiveUp;
        }
        RetryDecision::RetryAt(self.not_before.unwrap_or(now))
    }

    /// Drop any pending delay and leave the parked state: the server is known to be back.
    /// The failure count stays, so a false alarm continues the schedule where it was.
    pub fn wake(&mut self) {
        self.not_before = None;
        if self.parked {
            self.parked = false;
            self.failing_since = None;
        }
        self.epoch = self.epoch.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn backoff(seed: u64) -> Backoff<SmallRng> {
        Backoff::new(RetryPolicy::default(), SmallRng::seed_from_u64(seed))
    }

    fn status(status: u16, retry_after_s: Option<u64>) -> Failure {
        Failure::Status {
            status,
            retry_after: retry_after_s.map(Duration::from_secs),
        }
    }

    #[test]
    fn ceilings_double_from_base_up_to_cap() {
        let p = RetryPolicy::default();
        let got: Vec<u64> = (0..10).map(|n| p.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            got,
            [
                0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        assert_eq!(classify_status(200), StatusClass::Success);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(s), StatusClass::Retry, "{s}");
        }
        for s in [400, 409, 422] {
            assert_eq!(classify_status(s), StatusClass::DeadLetter, "{s}");
        }
        for s in [401, 403, 404, 407, 415, 302] {
            assert_eq!(classify_status(s), StatusClass::Blocked, "{s}");
        }
        assert_eq!(classify_status(413), StatusClass::TooLarge);
        assert!(!status(400, None).is_retryable());
        assert!(status(408, None).is_retryable());
        assert!(Failure::Timeout.is_retryable());
    }

    #[test]
    fn retry_after_is_honoured_only_on_429_and_503() {
        let t0 = Instant::now();
        let mut b = backoff(1);
        let e = b.epoch();
        assert_eq!(
            b.on_failure(t0, e, &status(503, Some(7))),
            RetryDecision::RetryAt(t0 + Duration::from_secs(7))
        );
        let e = b.epoch();
        // A 500 with Retry-After falls back to jitter, whose ceiling is 2 s at failure 2.
        let RetryDecision::RetryAt(at) = b.on_failure(t0, e, &status(500, Some(30))) else {
            panic!("no give-up configured");
        };
        assert!(at - t0 <= Duration::from_secs(2));
    }

    #[test]
    fn concurrent_failures_count_once_and_success_resets() {
        let t0 = Instant::now();
        let mut b = backoff(2);
        let e = b.epoch();
        b.on_failure(t0, e, &Failure::Timeout);
        b.on_failure(t0, e, &Failure::Connection);
        assert_eq!(b.failures(), 1);
        let stale = b.epoch();
        b.on_success();
        assert_eq!(b.failures(), 0);
        assert!(b.ready(t0));
        // A failure of an attempt that started before the success does not restart backoff.
        assert_eq!(
            b.on_failure(t0, stale, &Failure::Timeout),
            RetryDecision::RetryAt(t0)
        );
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn blocked_statuses_wait_the_cap() {
        let t0 = Instant::now();
        let mut b = backoff(3);
        let e = b.epoch();
        assert_eq!(
            b.on_failure(t0, e, &status(401, None)),
            RetryDecision::RetryAt(t0 + Duration::from_secs(60))
        );
    }

    #[test]
    fn wake_clears_the_delay_but_keeps_the_count() {
        let t0 = Instant::now();
        let mut b = backoff(4);
        for _ in 0..5 {
            let e = b.epoch();
            b.on_failure(t0, e, &status(503, Some(60)));
        }
        assert!(!b.ready(t0));
        b.wake();
        assert!(b.ready(t0));
        assert_eq!(b.failures(), 5);
    }

    #[test]
    fn max_elapsed_parks_until_woken() {
        let policy = RetryPolicy {
            max_elapsed_ms: Some(10_000),
            ..RetryPolicy::default()
        };
        let mut b = Backoff::new(policy, SmallRng::seed_from_u64(5));
        let t0 = Instant::now();
        let e = b.epoch();
        assert!(matches!(
            b.on_failure(t0, e, &Failure::Timeout),
            RetryDecision::RetryAt(_)
        ));
        let e = b.epoch();
        assert_eq!(
            b.on_failure(t0 + Duration::from_secs(10), e, &Failure::Timeout),
            RetryDecision::GiveUp
        );
        assert!(b.is_parked() && !b.ready(t0 + Duration::from_secs(3600)));
        b.wake();
        assert!(b.ready(t0 + Duration::from_secs(10)));
        // The failing stretch restarts after a wake.
        let e = b.epoch();
        assert!(matches!(
            b.on_failure(t0 + Duration::from_secs(11), e, &Failure::Timeout),
            RetryDecision::RetryAt(_)
        ));
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = RetryPolicy {
            cap_ms: 10,
            ..RetryPolicy::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("retry.cap_ms")
        );
        let bad = RetryPolicy {
            base_ms: 0,
            ..RetryPolicy::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("retry.base_ms")
        );
        RetryPolicy::default().validate().unwrap();
    }

    proptest! {
        /// Every delay lies in 0..=min(cap, base·2^(n-1)) — the full-jitter bound.
        #[test]
        fn delays_stay_within_the_jitter_bounds(
            seed: u64,
            base_ms in 1u64..5_000,
            extra_cap in 0u64..120_000,
            failures in 1usize..40,
        ) {
            let policy = RetryPolicy { base_ms, cap_ms: base_ms + extra_cap, ..RetryPolicy::default() };
            let mut b = Backoff::new(policy.clone(), SmallRng::seed_from_u64(seed));
            let t0 = Instant::now();
            for n in 1..=failures as u32 {
                let e = b.epoch();
                let RetryDecision::RetryAt(at) = b.on_failure(t0, e, &Failure::Timeout) else {
                    panic!("no max elapsed configured");
                };
                prop_assert!(at - t0 <= policy.ceiling(n));
                prop_assert!(policy.ceiling(n) <= Duration::from_millis(policy.cap_ms));
            }
        }

        /// The jitter covers its whole range: over many draws both the low and the high
        /// quarter of 0..=ceiling are hit, and the mean is near ceiling/2.
        #[test]
        fn jitter_spreads_over_the_whole_range(seed: u64, failures in 1u32..12) {
            let policy = RetryPolicy::default();
            let mut rng = SmallRng::seed_from_u64(seed);
            let ceiling = policy.ceiling(failures).as_millis() as f64;
            let draws: Vec<f64> = (0..2_000)
                .map(|_| policy.jittered(failures, &mut rng).as_millis() as f64)
                .collect();
            prop_assert!(draws.iter().all(|d| *d <= ceiling));
            prop_assert!(draws.iter().any(|d| *d < ceiling / 4.0));
            prop_assert!(draws.iter().any(|d| *d > ceiling * 3.0 / 4.0));
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            prop_assert!((mean - ceiling / 2.0).abs() < ceiling * 0.05, "mean {mean} ceiling {ceiling}");
        }

        /// A Retry-After on 429/503 wins over the computed delay, whatever the failure count,
        /// clamped only by retry_after_cap_ms.
        #[test]
        fn retry_after_wins(
            seed: u64,
            prior in 0u32..20,
            retry_after_ms in 0u64..2_000_000,
            status in prop::sample::select(vec![429u16, 503]),
        ) {
            let mut b = backoff(seed);
            let t0 = Instant::now();
            for _ in 0..prior {
                let e = b.epoch();
                b.on_failure(t0, e, &Failure::Connection);
            }
            let e = b.epoch();
            let failure = Failure::Status { status, retry_after: Some(Duration::from_millis(retry_after_ms)) };
            let expected = retry_after_ms.min(b.policy().retry_after_cap_ms);
            prop_assert_eq!(
                b.on_failure(t0, e, &failure),
                RetryDecision::RetryAt(t0 + Duration::from_millis(expected))
            );
        }
    }
}

//! Per-principal token buckets (sans-IO: every call takes `now`).
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`. A request costs tokens
//! (1 per request, or the batch's record count) and is let through when the bucket holds
//! that many. A batch larger than `burst` is let through when the bucket is full and leaves
//! it in debt — the principal then waits for the debt to be repaid. A refused request is told
//! how long until its cost would be granted (`Retry-After`).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Error;

/// One token-bucket limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BucketConfig {
    /// Refill rate, tokens per second. Default 1,000.
    pub per_second: f64,
    /// Capacity, tokens. Default 2,000.
    pub burst: f64,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig {
            per_second: 1_000.0,
            burst: 2_000.0,
        }
    }
}

impl BucketConfig {
    fn validate(&self, name: &str) -> Result<(), Error> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(Error::invalid(
                format!("{name}.per_second"),
                "must be a positive number",
            ));
        }
        if !(self.burst.is_finite() && self.burst >= 1.0) {
            return Err(Error::invalid(
                format!("{name}.burst"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Rate limits applied per principal (tenant and subject). `None` disables a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Requests per principal, checked before the body is read. Default 50/s, burst 100.
    pub requests: Option<BucketConfig>,
    /// Records per principal, charged after decoding. Default 100,000/s, burst 200,000.
    pub records: Option<BucketConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests: Some(BucketConfig {
                per_second: 50.0,
                burst: 100.0,
            }),
            records: Some(BucketConfig {
                per_second: 100_000.0,
                burst: 200_000.0,
            }),
        }
    }
}

impl RateLimitConfig {
    /// No limit at all.
    pub fn unlimited() -> Self {
        RateLimitConfig {
            requests: None,
            records: None,
        }
    }

    /// Check the values, naming the parameter on error.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(b) = &self.requests {
            b.validate("rate_limit.requests")?;
        }
        if let Some(b) = &self.records {
            b.validate("rate_limit.records")?;
        }
        Ok(())
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    config: BucketConfig,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: BucketConfig, now: Instant) -> Self {
        TokenBucket {
            tokens: config.burst,
            config,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.config.per_second).min(self.config.burst);
        self.updated = now;
    }

    /// Take `cost` tokens at `now`; `Err(wait)` when refused: retry after `wait`.
    ///
    /// Granted when the bucket holds `cost` tokens — or, for a cost above `burst`, when it
    /// is full; such a request leaves the bucket in debt.
    pub fn try_take(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        self.refill(now);
        let needed = cost.min(self.config.burst);
        if self.tokens >= needed {
            self.tokens -= cost;
            Ok(())
        } else {
            let secs = (needed - self.tokens) / self.config.per_second;
            Err(Duration::from_secs_f64(secs))
        }
    }

    /// True when the bucket is full at `now` (it can be forgotten without changing behaviour).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.config.burst
    }
}

/// Buckets keyed by principal. Full buckets are forgotten when the map grows, so idle
/// principals cost nothing.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    config: BucketConfig,
    buckets: HashMap<K, TokenBucket>,
    prune_at: usize,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    /// An empty set of buckets, each with `config`.
    pub fn new(config: BucketConfig) -> Self {
        KeyedBuckets {
            config,
            buckets: HashMap::new(),
            prune_at: 1024,
        }
    }

    /// Take `cost` tokens from `key`'s bucket.
    pub fn try_take(&mut self, key: &K, now: Instant, cost: f64) -> Result<(), Duration> {
        if self.buckets.len() >= self.prune_at {
            self.buckets.retain(|_, b| !b.is_full(now));
            self.prune_at = (self.buckets.len() * 2).max(1024);
        }
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(now, cost);
        }
        let mut bucket = TokenBucket::new(self.config.clone(), now);
        let result = bucket.try_take(now, cost);
        self.buckets.insert(key.clone(), bucket);
        result
    }

    /// Principals currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no principal is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(per_second: f64, burst: f64) -> BucketConfig {
        BucketConfig { per_second, burst }
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(10.0, 3.0), t0);
        for _ in 0..3 {
            b.try_take(t0, 1.0).unwrap();
        }
        let wait = b.try_take(t0, 1.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // 100 ms refills one token.
        b.try_take(t0 + Duration::from_millis(100), 1.0).unwrap();
        assert!(b.try_take(t0 + Duration::from_millis(100), 1.0).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_once_then_waits_out_its_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(100.0, 50.0), t0);
        b.try_take(t0, 250.0).unwrap();
        // 200 tokens of debt at 100/s: about 2 s.
        let wait = b.try_take(t0, 1.0).unwrap_err();
        assert!(
            wait >= Duration::from_secs(2) && wait < Duration::from_millis(2_100),
            "{wait:?}"
        );
        assert!(b.try_take(t0 + Duration::from_millis(1_990), 1.0).is_err());
        b.try_take(t0 + Duration::from_millis(2_010), 1.0).unwrap();
    }

    #[test]
    fn principals_have_separate_buckets_and_idle_ones_are_pruned() {
        let t0 = Instant::now();
        let mut keyed = KeyedBuckets::new(cfg(1.0, 1.0));
        keyed.try_take(&"a", t0, 1.0).unwrap();
        assert!(keyed.try_take(&"a", t0, 1.0).is_err());
        keyed.try_take(&"b", t0, 1.0).unwrap();
        keyed.prune_at = 2;
        keyed
            .try_take(&"c", t0 + Duration::from_secs(10), 1.0)
            .unwrap();
        // a and b were full again after 10 s and were dropped; c is new.
        assert_eq!(keyed.len(), 1);
    }

    proptest! {
        /// Over any schedule, the tokens granted never exceed burst + rate × elapsed, plus
        /// the debt one request larger than the burst may leave.
        #[test]
        fn never_grants_more_than_rate_allows(
            steps in prop::collection::vec((0u64..500, 1u32..20), 1..200),
            rate in 1.0f64..100.0,
            burst in 1.0f64..50.0,
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(cfg(rate, burst), t0);
            let mut now = t0;
            let mut granted = 0.0;
            let mut max_cost = 0.0f64;
            for (gap_ms, cost) in steps {
                now += Duration::from_millis(gap_ms);
                if b.try_take(now, f64::from(cost)).is_ok() {
                    granted += f64::from(cost);
                    max_cost = max_cost.max(f64::from(cost));
                }
            }
            let elapsed = (now - t0).as_secs_f64();
            prop_assert!(granted <= burst + rate * elapsed + (max_cost - burst).max(0.0) + 1e-6);
        }
    }
}

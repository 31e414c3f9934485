//! The uplink's health: `healthy`, `degraded` or `down`, from the outcomes of its attempts.
//!
//! # Rules
//!
//! * Any success → `healthy`, failure count back to zero.
//! * A failure → `degraded`; [`HealthConfig::down_after_failures`] consecutive failures →
//!   `down`.
//! * A *blocked* failure (the server refuses the credentials or the endpoint does not exist:
//!   see [`crate::StatusClass::Blocked`]) → `down` at once: waiting will not fix it.
//! * Giving up after `max_elapsed_ms` ([`crate::RetryDecision::GiveUp`]) → `down`.
//!
//! Sans-IO: wall-clock time (for "last success at") is passed in as ms since the epoch.

use gateway_proto::UplinkHealth;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Thresholds of the health state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Consecutive failed attempts after which the uplink is `down`. Default 5.
    pub down_after_failures: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            down_after_failures: 5,
        }
    }
}

impl HealthConfig {
    /// Check the values: `down_after_failures` at least 1.
    pub fn validate(&self) -> Result<(), Error> {
        if self.down_after_failures == 0 {
            return Err(Error::invalid(
                "health.down_after_failures",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A snapshot of the health state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// The state.
    pub health: UplinkHealth,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failure's description, kept after a success for diagnosis.
    pub last_error: Option<String>,
    /// When the last failure happened, ms since the epoch.
    pub last_failure_ms: Option<i64>,
    /// When the last success happened, ms since the epoch.
    pub last_success_ms: Option<i64>,
}

/// The kind of a failure, for the health rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// May fix itself (timeouts, 5xx, 429): counts toward `down_after_failures`.
    Transient,
    /// Will not fix itself (credentials refused, endpoint missing) or retries gave up:
    /// `down` at once.
    Fatal,
}

/// The health state machine.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    config: HealthConfig,
    status: HealthStatus,
}

impl HealthTracker {
    /// A tracker that starts `healthy` with no history.
    pub fn new(config: HealthConfig) -> Self {
        HealthTracker {
            config,
            status: HealthStatus {
                health: UplinkHealth::Healthy,
                consecutive_failures: 0,
                last_error: None,
                last_failure_ms: None,
                last_success_ms: None,
            },
        }
    }

    /// The current state.
    pub fn health(&self) -> UplinkHealth {
        self.status.health
    }

    /// A snapshot of everything tracked.
    pub fn status(&self) -> &HealthStatus {
        &self.status
    }

    /// An attempt succeeded at `now_ms`.
    pub fn on_success(&mut self, now_ms: i64) {
        self.status.health = UplinkHealth::Healthy;
        self.status.consecutive_failures = 0;
        self.status.last_success_ms = Some(now_ms);
    }

    /// An attempt failed at `now_ms` with this description.
    pub fn on_failure(&mut self, now_ms: i64, kind: FailureKind, error: impl Into<String>) {
        let s = &mut self.status;
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        s.last_error = Some(error.into());
        s.last_failure_ms = Some(now_ms);
        s.health = if kind == FailureKind::Fatal
            || s.consecutive_failures >= self.config.down_after_failures
        {
            UplinkHealth::Down
        } else {
            UplinkHealth::Degraded
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_healthy_degraded_down_and_back() {
        let mut h = HealthTracker::new(HealthConfig {
            down_after_failures: 3,
        });
        assert_eq!(h.health(), UplinkHealth::Healthy);
        h.on_failure(10, FailureKind::Transient, "503");
        assert_eq!(h.health(), UplinkHealth::Degraded);
        h.on_failure(20, FailureKind::Transient, "timeout");
        assert_eq!(h.health(), UplinkHealth::Degraded);
        h.on_failure(30, FailureKind::Transient, "connection refused");
        assert_eq!(h.health(), UplinkHealth::Down);
        assert_eq!(h.status().consecutive_failures, 3);
        assert_eq!(h.status().last_error.as_deref(), Some("connection refused"));
        assert_eq!(h.status().last_failure_ms, Some(30));
        h.on_success(40);
        let s = h.status();
        assert_eq!(s.health, UplinkHealth::Healthy);
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.last_success_ms, Some(40));
        assert_eq!(s.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn fatal_failures_are_down_at_once() {
        let mut h = HealthTracker::new(HealthConfig::default());
        h.on_failure(1, FailureKind::Fatal, "401 unauthorized");
        assert_eq!(h.health(), UplinkHealth::Down);
    }

    #[test]
    fn zero_threshold_is_refused() {
        let err = HealthConfig {
            down_after_failures: 0,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("health.down_after_failures"));
    }
}

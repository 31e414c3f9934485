//! Settings of the agent registry and of the service around it.

use gateway_proto::Limits;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Settings of an [`AgentRegistry`](super::AgentRegistry). `Default` suits a site gateway.
///
/// ```
/// use gateway_control::gateway::agents::AgentRegistryConfig;
/// let config: AgentRegistryConfig =
///     serde_json::from_str(r#"{"heartbeat_interval_ms": 5000}"#).unwrap();
/// assert_eq!(config.heartbeat_interval_ms, 5_000);
/// assert_eq!(config.offline_after_intervals, 1.5);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentRegistryConfig {
    /// Heartbeat interval announced to agents, ms. Default 10,000 (10 s); 100 ms to 1 day.
    pub heartbeat_interval_ms: u64,
    /// An agent silent for longer than this many heartbeat intervals is offline. Default 1.5,
    /// the rule the server applies to gateways; at least 1.
    pub offline_after_intervals: f64,
    /// Commands that may wait for one agent's acknowledgement. Default 32.
    pub max_pending_commands: usize,
    /// Agents (online or offline) the registry tracks; a new agent beyond this is refused.
    /// Default 10,000.
    pub max_agents: usize,
    /// Size rules for what agents send: `max_id_len` bounds agent ids and kinds,
    /// `max_attributes`, `max_attribute_key_len` and `max_attribute_value_len` bound
    /// capabilities, attributes and status maps. Default `Limits::default()`.
    pub limits: Limits,
}

impl Default for AgentRegistryConfig {
    fn default() -> Self {
        AgentRegistryConfig {
            heartbeat_interval_ms: 10_000,
            offline_after_intervals: 1.5,
            max_pending_commands: 32,
            max_agents: 10_000,
            limits: Limits::default(),
        }
    }
}

impl AgentRegistryConfig {
    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        if !(100..=DAY_MS).contains(&self.heartbeat_interval_ms) {
            return Err(Error::InvalidConfig {
                param: "heartbeat_interval_ms",
                reason: format!(
                    "{} ms is outside 100..={DAY_MS} ms",
                    self.heartbeat_interval_ms
                ),
            });
        }
        if !(self.offline_after_intervals.is_finite()
            && (1.0..=100.0).contains(&self.offline_after_intervals))
        {
            return Err(Error::InvalidConfig {
                param: "offline_after_intervals",
                reason: format!(
                    "{} must be a number from 1 to 100 (1.5 is the usual rule)",
                    self.offline_after_intervals
                ),
            });
        }
        for (param, value) in [
            ("max_pending_commands", self.max_pending_commands),
            ("max_agents", self.max_agents),
            ("limits.max_id_len", self.limits.max_id_len),
            (
                "limits.max_attribute_key_len",
                self.limits.max_attribute_key_len,
            ),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    param,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    /// How long an agent may stay silent before it is offline, ms:
    /// `ceil(heartbeat_interval_ms × offline_after_intervals)`.
    pub fn offline_after_ms(&self) -> i64 {
        (self.heartbeat_interval_ms as f64 * self.offline_after_intervals).ceil() as i64
    }
}

/// Settings of an [`AgentService`](super::AgentService): the registry's plus those of the
/// tokio and HTTP layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentServiceConfig {
    /// The registry's settings.
    pub registry: AgentRegistryConfig,
    /// Largest request body the agent routes read, after gzip decompression, bytes; larger
    /// bodies get 413 `payload_too_large`. Default 64 KiB.
    pub max_request_bytes: usize,
    /// Events buffered for each [`AgentService::subscribe`](super::AgentService::subscribe)
    /// receiver; a receiver further behind loses the oldest. Default 1,024.
    pub event_capacity: usize,
}

impl Default for AgentServiceConfig {
    fn default() -> Self {
        AgentServiceConfig {
            registry: AgentRegistryConfig::default(),
            max_request_bytes: 64 * 1024,
            event_capacity: 1024,
        }
    }
}

impl AgentServiceConfig {
    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        self.registry.validate()?;
        if self.max_request_bytes < 1024 {
            return Err(Error::InvalidConfig {
                param: "max_request_bytes",
                reason: format!(
                    "{} bytes cannot hold a registration; use at least 1024",
                    self.max_request_bytes
                ),
            });
        }
        if self.event_capacity == 0 {
            return Err(Error::InvalidConfig {
                param: "event_capacity",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_parameter() {
        AgentServiceConfig::default().validate().unwrap();
        assert_eq!(AgentRegistryConfig::default().offline_after_ms(), 15_000);

        let mut config = AgentServiceConfig::default();
        config.registry.heartbeat_interval_ms = 0;
        let err = config.validate().unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    param: "heartbeat_interval_ms",
                    ..
                }
            ),
            "{err}"
        );

        let mut config = AgentRegistryConfig {
            offline_after_intervals: f64::NAN,
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                param: "offline_after_intervals",
                ..
            })
        ));
        config.offline_after_intervals = 0.5;
        assert!(config.validate().is_err());

        let config = AgentRegistryConfig {
            max_pending_commands: 0,
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                param: "max_pending_commands",
                ..
            })
        ));

        let config = AgentServiceConfig {
            max_request_bytes: 10,
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig {
                param: "max_request_bytes",
                ..
            })
        ));
    }

    #[test]
    fn config_reads_from_partial_json() {
        let config: AgentServiceConfig =
            serde_json::from_str(r#"{"registry": {"max_agents": 3}, "event_capacity": 8}"#)
                .unwrap();
        assert_eq!(config.registry.max_agents, 3);
        assert_eq!(config.registry.heartbeat_interval_ms, 10_000);
        assert_eq!(config.event_capacity, 8);
        assert_eq!(config.max_request_bytes, 64 * 1024);
    }
}

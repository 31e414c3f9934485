//! Registry configuration: devices keyed by id, each with its adapter kind, limits and the
//! adapter's own settings (connection and credentials).
//!
//! ```json
//! {
//!   "devices": {
//!     "front-door": {
//!       "kind": "hikvision-isapi",
//!       "limits": {"max_in_flight": 1, "command_timeout_ms": 10000, "max_retries": 2},
//!       "settings": {"base_url": "https://192.0.2.10", "username": "admin", "password": "..."}
//!     }
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The registry's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Devices by id. Ids are 1 to 128 characters of letters, digits, `_`, `-`, `.`, `:`.
    pub devices: BTreeMap<String, DeviceConfig>,
}

impl RegistryConfig {
    /// Parse from JSON text; errors name the offending parameter.
    pub fn from_json(text: &str) -> Result<RegistryConfig, Error> {
        serde_json::from_str(text).map_err(|e| Error::config("devices config", e.to_string()))
    }
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The adapter kind, as a registered [`crate::AdapterFactory::kind`] (`hikvision-isapi`).
    pub kind: String,
    /// Per-device limits; every field has a default.
    #[serde(default)]
    pub limits: DeviceLimits,
    /// The adapter's own settings: connection and credentials. Each adapter documents its
    /// fields (for `hikvision-isapi`: [`crate::hikvision::HikvisionConfig`]).
    #[serde(default)]
    pub settings: Value,
}

impl DeviceConfig {
    /// A device of this kind with default limits.
    pub fn new(kind: impl Into<String>, settings: Value) -> Self {
        DeviceConfig {
            kind: kind.into(),
            limits: DeviceLimits::default(),
            settings,
        }
    }
}

/// How the registry treats one device's commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceLimits {
    /// Commands sent to the device at the same time. Default 1: devices on site are small
    /// controllers, and a door command must not race a reboot.
    pub max_in_flight: u32,
    /// Commands that may wait for a free slot; one more is refused with [`Error::Busy`].
    /// Default 16.
    pub max_queued: u32,
    /// How long one attempt may take, and how long a command may wait for a slot, in ms.
    /// Default 10 000. A control-channel command's `execution_timeout_ms` overrides it.
    pub command_timeout_ms: u64,
    /// Extra attempts for idempotent commands after a retryable error (unreachable device,
    /// timeout, device busy). Default 2. Commands that are not idempotent are never retried.
    pub max_retries: u32,
    /// Wait before the first retry, doubled before each further one, in ms. Default 250.
    pub retry_backoff_ms: u64,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits {
            max_in_flight: 1,
            max_queued: 16,
            command_timeout_ms: 10_000,
            max_retries: 2,
            retry_backoff_ms: 250,
        }
    }
}

impl DeviceLimits {
    /// `command_timeout_ms` as a duration.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    /// Check every field; `prefix` is prepended to the parameter name in the error.
    pub fn validate(&self, prefix: &str) -> Result<(), Error> {
        let param = |name: &str| format!("{prefix}{name}");
        if self.max_in_flight == 0 || self.max_in_flight > 64 {
            return Err(Error::config(
                param("max_in_flight"),
                format!("must be 1 to 64, got {}", self.max_in_flight),
            ));
        }
        if self.max_queued > 10_000 {
            return Err(Error::config(
                param("max_queued"),
                format!("must be at most 10000, got {}", self.max_queued),
            ));
        }
        if self.command_timeout_ms == 0 || self.command_timeout_ms > 3_600_000 {
            return Err(Error::config(
                param("command_timeout_ms"),
                format!(
                    "must be 1 to 3600000 (one hour), got {}",
                    self.command_timeout_ms
                ),
            ));
        }
        if self.max_retries > 10 {
            return Err(Error::config(
                param("max_retries"),
                format!("must be at most 10, got {}", self.max_retries),
            ));
        }
        if self.retry_backoff_ms > 600_000 {
            return Err(Error::config(
                param("retry_backoff_ms"),
                format!(
                    "must be at most 600000 (ten minutes), got {}",
                    self.retry_backoff_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Check a device id: 1 to 128 characters of letters, digits, `_`, `-`, `.`, `:`.
pub fn validate_device_id(device_id: &str) -> Result<(), Error> {
    let valid = !device_id.is_empty()
        && device_id.len() <= 128
        && device_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            format!("devices.{device_id}"),
            "a device id is 1 to 128 characters of letters, digits, `_`, `-`, `.`, `:`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let config: RegistryConfig = serde_json::from_value(json!({
            "devices": {"d1": {"kind": "k", "limits": {"max_retries": 0}}}
        }))
        .unwrap();
        let limits = &config.devices["d1"].limits;
        assert_eq!(limits.max_in_flight, 1);
        assert_eq!(limits.max_retries, 0);
        assert!(limits.validate("x.").is_ok());
        let bad = DeviceLimits {
            max_in_flight: 0,
            ..DeviceLimits::default()
        };
        let err = bad.validate("devices.d1.limits.").unwrap_err();
        assert!(
            err.to_string().contains("devices.d1.limits.max_in_flight"),
            "{err}"
        );
        let bad = DeviceLimits {
            command_timeout_ms: 0,
            ..DeviceLimits::default()
        };
        assert!(
            bad.validate("")
                .unwrap_err()
                .to_string()
                .contains("command_timeout_ms")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = RegistryConfig::from_json(r#"{"devices": {"d1": {"kind": "k", "limts": {}}}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("limts"), "{err}");
        assert!(validate_device_id("front-door.1").is_ok());
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id("a b").is_err());
    }
}

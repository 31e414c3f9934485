//! The crate's one error type.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in this crate.
///
/// Errors fall in two groups, and [`Error::is_rejection`] tells them apart:
///
/// * **Rejections** happen before anything is sent to a device: an unknown device, a command the
///   device does not offer, a payload that does not fit, a full queue, a bad configuration. A
///   control-channel command that ends here is `rejected`.
/// * **Failures** happen while talking to the device: it answered with an error status, refused
///   the credentials, could not be reached, answered something unreadable, or took too long.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No device with this id is in the registry.
    #[error("unknown device `{device_id}`: no device with this id is configured")]
    UnknownDevice {
        /// The id that was asked for.
        device_id: String,
    },
    /// The command kind is not one this crate knows (see [`crate::command`] for the list).
    #[error("unknown device command kind `{kind}`: expected one of {expected}")]
    UnknownCommandKind {
        /// The kind that was given.
        kind: String,
        /// The kinds that are understood, comma separated.
        expected: String,
    },
    /// The device's adapter does not offer this command.
    #[error("device `{device_id}` does not support command `{command}`; it supports: {supported}")]
    UnsupportedCommand {
        /// The device.
        device_id: String,
        /// The command's name (see [`crate::DeviceCommand::name`]).
        command: String,
        /// The commands the device offers, comma separated.
        supported: String,
    },
    /// The command's payload does not fit: a missing or unknown field, a wrong type, a door
    /// number the device does not have, an action it does not offer.
    #[error("invalid payload for command `{command}`: field `{field}`: {reason}")]
    InvalidPayload {
        /// The command (kind or name) whose payload was refused.
        command: String,
        /// The offending field.
        field: String,
        /// What is wrong with it and what would be accepted.
        reason: String,
    },
    /// A configuration value is invalid; `param` is its path, e.g.
    /// `devices.front-door.settings.base_url`.
    #[error("invalid configuration: `{param}`: {reason}")]
    InvalidConfig {
        /// Path of the parameter.
        param: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// Too many commands already wait for this device.
    #[error(
        "device `{device_id}` is busy: {queued} commands already wait for it (its \
         `limits.max_queued`); try again later or raise the limit"
    )]
    Busy {
        /// The device.
        device_id: String,
        /// How many commands wait.
        queued: usize,
    },
    /// The device answered with an error status; its own text is kept in [`DeviceError`].
    #[error("the device refused the request: {0}")]
    Device(DeviceError),
    /// The device refused the credentials, or is locked after too many wrong ones. The adapter
    /// stops sending requests for a while after this, so a wrong password cannot lock the
    /// device out: fix the credentials in the configuration.
    #[error("authentication failed: {reason}")]
    Auth {
        /// Why, in words, including the device's lockout state when it sent one.
        reason: String,
        /// Lockout details from the device's answer, when it sent them.
        lockout: Option<Lockout>,
    },
    /// The device could not be reached: connection refused or dropped, DNS, TLS handshake.
    #[error("cannot reach the device: {message}")]
    Transport {
        /// What the HTTP stack reported.
        message: String,
    },
    /// The device answered something this adapter cannot read.
    #[error("unexpected answer from the device: {reason}")]
    Protocol {
        /// What was wrong with the answer.
        reason: String,
    },
    /// The command or request did not finish in time.
    #[error("no answer within {} ms", .after.as_millis())]
    Timeout {
        /// The limit that was reached.
        after: Duration,
    },
    /// TLS could not be set up (a CA file that does not parse, ...).
    #[error("TLS setup failed: {reason}")]
    Tls {
        /// What went wrong.
        reason: String,
    },
    /// The device has no event source.
    #[error("device `{device_id}` has no event source")]
    NoEventSource {
        /// The device.
        device_id: String,
    },
    /// An event cursor could not be read (it was written by another adapter or corrupted).
    #[error("invalid event cursor: {reason}")]
    InvalidCursor {
        /// What is wrong with it.
        reason: String,
    },
    /// A local I/O error (binding the simulator's socket, reading a CA file).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when the error happened before anything was sent to a device (unknown device,
    /// unknown or unsupported command, bad payload or configuration, full queue).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Error::UnknownDevice { .. }
                | Error::UnknownCommandKind { .. }
                | Error::UnsupportedCommand { .. }
                | Error::InvalidPayload { .. }
                | Error::InvalidConfig { .. }
                | Error::Busy { .. }
                | Error::NoEventSource { .. }
                | Error::InvalidCursor { .. }
        )
    }

    /// True when trying the same request again may succeed: the device could not be reached,
    /// did not answer in time, or said it is busy. Authentication failures are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Device(e) => e.is_busy(),
            _ => false,
        }
    }

    /// The device's own error, when it answered with one.
    pub fn device_error(&self) -> Option<&DeviceError> {
        match self {
            Error::Device(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn payload(
        command: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidPayload {
            command: command.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            param: param.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Error::Protocol {
            reason: reason.into(),
        }
    }
}

/// An error status a device answered with, in its own words.
///
/// For Hikvision ISAPI: `code` is `statusCode` (`"4"`), `sub_code` is `subStatusCode`
/// (`"invalidOperation"`) and `message` is `errorMsg`, else `statusString`, else the sub code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceError {
    /// HTTP status of the answer, when the device speaks HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The vendor's status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The vendor's finer status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    /// The device's own error text.
    pub message: String,
}

impl DeviceError {
    /// True when the device said it is busy (ISAPI statusCode 2 or `deviceBusy`, or HTTP 503).
    pub fn is_busy(&self) -> bool {
        self.code.as_deref() == Some("2")
            || self.sub_code.as_deref() == Some("deviceBusy")
            || self.http_status == Some(503)
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(status) = self.http_status {
            parts.push(format!("HTTP {status}"));
        }
        match (&self.code, &self.sub_code) {
            (Some(code), Some(sub)) => parts.push(format!("status {code} ({sub})")),
            (Some(code), None) => parts.push(format!("status {code}")),
            (None, Some(sub)) => parts.push(format!("status {sub}")),
            (None, None) => {}
        }
        if parts.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", parts.join(", "), self.message)
        }
    }
}

/// What a device said about its login lockout in a 401 answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockout {
    /// True when the device says it is locked (`lockStatus` = `lock`).
    pub locked: bool,
    /// Seconds until it unlocks (`unlockTime`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_in_secs: Option<u64>,
    /// Wrong logins left before it locks (`retryLoginTime`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries_left: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_and_retryable_errors_are_told_apart() {
        let unknown = Error::UnknownDevice {
            device_id: "x".into(),
        };
        assert!(unknown.is_rejection());
        assert!(!unknown.is_retryable());
        let busy = Error::Device(DeviceError {
            http_status: Some(200),
            code: Some("2".into()),
            sub_code: Some("deviceBusy".into()),
            message: "Device Busy".into(),
        });
        assert!(busy.is_retryable());
        assert!(!busy.is_rejection());
        let auth = Error::Auth {
            reason: "bad".into(),
            lockout: None,
        };
        assert!(!auth.is_retryable());
        assert!(
            Error::Timeout {
                after: Duration::from_millis(5)
            }
            .is_retryable()
        );
    }

    #[test]
    fn device_error_display_keeps_the_device_text() {
        let e = DeviceError {
            http_status: Some(403),
            code: Some("4".into()),
            sub_code: Some("invalidOperation".into()),
            message: "Invalid Operation".into(),
        };
        assert_eq!(
            e.to_string(),
            "HTTP 403, status 4 (invalidOperation): Invalid Operation"
        );
    }
}

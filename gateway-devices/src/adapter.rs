//! The seam integrators implement: [`DeviceAdapter`] for what a device is and does, and
//! [`EventSource`] for the events it reports.
//!
//! `ADAPTERS.md` in this crate walks through writing an adapter for a new vendor.

use std::fmt;

use async_trait::async_trait;
use gateway_proto::Record;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DeviceCommand, Error};

/// A driver for one device.
///
/// The registry holds adapters as `Arc<dyn DeviceAdapter>` and calls them from many tasks;
/// implement it with [`async_trait`](crate::async_trait) (re-exported by this crate):
///
/// ```
/// use gateway_devices::{
///     async_trait, CommandSpec, DeviceAdapter, DeviceCommand, DeviceDescription,
///     DeviceOutcome, Error, Health,
/// };
///
/// struct Relay;
///
/// #[async_trait]
/// impl DeviceAdapter for Relay {
///     async fn describe(&self) -> Result<DeviceDescription, Error> {
///         Ok(DeviceDescription::new("acme", "R-1", "0001", "1.0"))
///     }
///     fn commands(&self) -> Vec<CommandSpec> {
///         vec![CommandSpec::new("info", true)]
///     }
///     async fn execute(&self, command: &DeviceCommand) -> Result<DeviceOutcome, Error> {
///         match command {
///             DeviceCommand::Info => Ok(DeviceOutcome::from_description(&self.describe().await?)),
///             other => Err(Error::Protocol { reason: format!("{} is not offered", other.name()) }),
///         }
///     }
///     async fn health(&self) -> Health {
///         Health::healthy("relay answers")
///     }
/// }
/// ```
///
/// Contract:
/// * `execute` sends the command once. The registry owns timeouts, retries (only for commands
///   whose [`CommandSpec::idempotent`] is true, only for [`Error::is_retryable`] errors) and
///   the one-in-flight limit, so adapters must not retry on their own, except for protocol
///   steps like an authentication challenge.
/// * `execute` is cancel-safe at await points: the registry drops the future on timeout.
/// * Errors keep the device's own words ([`Error::Device`] with a [`crate::DeviceError`]).
/// * Nothing may panic on what a device sends.
#[async_trait]
pub trait DeviceAdapter: Send + Sync + 'static {
    /// What the device is. May ask the device; adapters usually cache the answer.
    async fn describe(&self) -> Result<DeviceDescription, Error>;

    /// The commands this device offers, by [`DeviceCommand::name`]. The registry refuses any
    /// other command with [`Error::UnsupportedCommand`] before calling `execute`.
    fn commands(&self) -> Vec<CommandSpec>;

    /// Check a command's arguments against what the device can do (a door number it has, an
    /// action it offers) before anything is sent; return [`Error::InvalidPayload`] if they do
    /// not fit. May read cached capabilities from the device. The default accepts everything.
    async fn validate(&self, command: &DeviceCommand) -> Result<(), Error> {
        let _ = command;
        Ok(())
    }

    /// Run one command on the device.
    async fn execute(&self, command: &DeviceCommand) -> Result<DeviceOutcome, Error>;

    /// Is the device reachable and usable now? Never fails: problems are a [`Health`] state.
    async fn health(&self) -> Health;

    /// The device's event source, if it reports events.
    fn events(&self) -> Option<&dyn EventSource> {
        None
    }
}

/// One command an adapter offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The command's name ([`DeviceCommand::name`]).
    pub name: String,
    /// True when sending it twice has the same effect as once; only such commands are retried.
    /// For `door`, the registry also asks [`crate::DoorAction::is_idempotent`]: `open` is never
    /// retried even when this is true.
    pub idempotent: bool,
}

impl CommandSpec {
    /// A command spec.
    pub fn new(name: impl Into<String>, idempotent: bool) -> Self {
        CommandSpec {
            name: name.into(),
            idempotent,
        }
    }
}

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDescription {
    /// Maker, lower case (`hikvision`).
    pub vendor: String,
    /// Model (`DS-K1T341AM`).
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware version, with its build when known (`V3.2.30 build 220210`).
    pub firmware: String,
    /// What it can do, as short names (`door`, `reboot`, `time`, `events`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Vendor-specific facts (device type, MAC address, door count, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, Value>,
}

impl DeviceDescription {
    /// A description without capabilities or details.
    pub fn new(
        vendor: impl Into<String>,
        model: impl Into<String>,
        serial: impl Into<String>,
        firmware: impl Into<String>,
    ) -> Self {
        DeviceDescription {
            vendor: vendor.into(),
            model: model.into(),
            serial: serial.into(),
            firmware: firmware.into(),
            capabilities: Vec::new(),
            details: serde_json::Map::new(),
        }
    }
}

/// The result of a command that succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    /// One human-readable line (`door 1: open`).
    pub summary: String,
    /// Structured result; becomes the control-channel ack's `result`.
    pub data: Value,
}

impl DeviceOutcome {
    /// An outcome.
    pub fn new(summary: impl Into<String>, data: Value) -> Self {
        DeviceOutcome {
            summary: summary.into(),
            data,
        }
    }

    /// The outcome of an `info` command.
    pub fn from_description(description: &DeviceDescription) -> Self {
        DeviceOutcome {
            summary: format!(
                "{} {} (serial {}, firmware {})",
                description.vendor, description.model, description.serial, description.firmware
            ),
            data: serde_json::to_value(description).unwrap_or(Value::Null),
        }
    }
}

/// How a device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Answers normally.
    Healthy,
    /// Answers, but with errors or slowly.
    Degraded,
    /// Cannot be reached.
    Unreachable,
    /// Refuses the credentials or is locked; the adapter is not sending requests for a while.
    AuthFailed,
}

/// The answer of [`DeviceAdapter::health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The state.
    pub state: HealthState,
    /// Why, in words.
    pub detail: String,
}

impl Health {
    /// A healthy answer.
    pub fn healthy(detail: impl Into<String>) -> Self {
        Health {
            state: HealthState::Healthy,
            detail: detail.into(),
        }
    }

    /// Any state.
    pub fn new(state: HealthState, detail: impl Into<String>) -> Self {
        Health {
            state,
            detail: detail.into(),
        }
    }

    /// The health implied by an error from the device.
    pub fn from_error(error: &Error) -> Self {
        let state = match error {
            Error::Auth { .. } => HealthState::AuthFailed,
            Error::Transport { .. } | Error::Timeout { .. } => HealthState::Unreachable,
            _ => HealthState::Degraded,
        };
        Health::new(state, error.to_string())
    }
}

/// Where an event source stopped: persist it with the records it came with, hand it back after
/// a restart, and the source continues with the next event — none repeated, none skipped.
///
/// Opaque text owned by the adapter that wrote it (the Hikvision adapter writes a small JSON
/// object). Serializes as a plain JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventCursor(String);

impl EventCursor {
    /// Wrap stored cursor text.
    pub fn new(text: impl Into<String>) -> Self {
        EventCursor(text.into())
    }

    /// The text to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Events read in one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// The events, oldest first, as records for the `devices` stream (or the adapter's
    /// configured stream).
    pub records: Vec<Record>,
    /// Where to continue from. Persist it only after the records are stored durably; after a
    /// crash in between, the same records come again (they carry the same record ids, so the
    /// store deduplicates them).
    pub cursor: Option<EventCursor>,
    /// True when the device has more events right now: poll again without waiting.
    pub more: bool,
}

/// A source of device events with a resumable cursor.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// Read up to `max` events after `cursor` (`None`: from the configured start). Returns the
    /// events and the cursor after them. Returns [`Error::InvalidCursor`] for a cursor this
    /// source cannot read.
    async fn poll_events(
        &self,
        cursor: Option<&EventCursor>,
        max: usize,
    ) -> Result<EventBatch, Error>;
}

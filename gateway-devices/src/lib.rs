//! # gateway-devices
//!
//! The seam between an edge gateway and the IP devices on its site (access controllers, door
//! stations, cameras): an adapter trait integrators implement per vendor, a registry that runs
//! commands with per-device limits and a timestamped lifecycle, a Hikvision ISAPI adapter with
//! Digest authentication, and an ISAPI device simulator for tests and demos.
//!
//! * [`DeviceAdapter`] — what a device is ([`DeviceAdapter::describe`]), which commands it offers
//!   ([`DeviceAdapter::commands`]), how to run one ([`DeviceAdapter::execute`]), its
//!   [`DeviceAdapter::health`], and optionally an [`EventSource`] that yields
//!   [`gateway_proto::Record`]s with a persistable [`EventCursor`].
//! * [`DeviceRegistry`] — devices by id, built from a serde [`RegistryConfig`] through
//!   [`AdapterFactory`]s keyed by kind. It refuses unknown devices, unsupported commands and bad
//!   payloads with a typed [`Error`] before anything is sent, keeps one command in flight per
//!   device by default, times commands out, retries only idempotent ones, and publishes every
//!   [`CommandReport`] transition (`pending → sent → succeeded | failed | timed_out`).
//! * [`command`] — the control-channel vocabulary (`device.door.open`, `device.command`, ...)
//!   and [`DeviceRequest::from_control`], which parses a kind and a JSON payload.
//! * [`hikvision`] — the ISAPI adapter ([`hikvision::HikvisionAdapter`], kind
//!   `hikvision-isapi`) and its public parsers; [`digest`] — RFC 7616 Digest, both ends.
//! * [`simulator`] (feature `simulator`, on by default) — a real HTTP(S) ISAPI device on
//!   loopback with door state, an event log and fault knobs.
//!
//! `ADAPTERS.md` in this crate walks through writing an adapter for a new vendor.
//!
//! ## Example: a registry from configuration, driving a simulated door controller
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use gateway_devices::hikvision::HikvisionFactory;
//! use gateway_devices::simulator::{DoorState, Simulator, SimulatorConfig};
//! use gateway_devices::{DeviceRegistry, RegistryConfig};
//! use gateway_proto::{Command, CommandAckState, CommandId};
//! use serde_json::json;
//!
//! // A device to talk to (in production: the real controller's address).
//! let simulator = Simulator::start(SimulatorConfig::default()).await?;
//!
//! // The gateway's configuration file, as JSON.
//! let config = RegistryConfig::from_json(&json!({"devices": {"front-door": {
//!     "kind": "hikvision-isapi",
//!     "limits": {"command_timeout_ms": 5000},
//!     "settings": {"base_url": simulator.base_url(), "username": "admin",
//!                  "password": SimulatorConfig::DEFAULT_PASSWORD}
//! }}}).to_string())?;
//! let registry = DeviceRegistry::builder().with_factory(HikvisionFactory).build(&config)?;
//!
//! // A command as it arrives on the control channel, and the ack to send back.
//! let command = Command {
//!     id: CommandId::new_v7(),
//!     kind: "device.door.open".into(),
//!     payload: json!({"door": 1}),
//!     priority: 0,
//!     delivery_deadline_ms: None,
//!     execution_timeout_ms: None,
//!     target: Some("front-door".into()),
//! };
//! let ack = registry.execute_control(&command).await;
//! assert_eq!(ack.state, CommandAckState::Succeeded);
//! assert_eq!(simulator.door_state(1), Some(DoorState::Open));
//!
//! // Device events as records, with a cursor to persist next to them.
//! simulator.push_card_event("100054", "Ada", "card-1");
//! let batch = registry.poll_events("front-door", None, 100).await?;
//! assert_eq!(batch.records.len(), 2); // the remote door opening and the card
//! let cursor = batch.cursor.expect("a cursor after the records");
//! let again = registry.poll_events("front-door", Some(&cursor), 100).await?;
//! assert!(again.records.is_empty());
//! simulator.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Metrics and tracing
//!
//! Through the `metrics` facade (the binary installs an exporter):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `gateway_devices_commands_total` | counter | `device`, `command`, `state` |
//! | `gateway_devices_commands_rejected_total` | counter | `reason` |
//! | `gateway_devices_command_retries_total` | counter | `device` |
//! | `gateway_devices_command_duration_seconds` | histogram | `device`, `command` |
//! | `gateway_devices_commands_in_flight` | gauge | `device` |
//! | `gateway_devices_http_requests_total` | counter | `device`, `status` |
//! | `gateway_devices_http_request_duration_seconds` | histogram | `device` |
//! | `gateway_devices_auth_failures_total` | counter | `device` |
//! | `gateway_devices_event_polls_total` | counter | `device`, `result` |
//! | `gateway_devices_events_total` | counter | `device` |
//! | `gateway_devices_event_items_skipped_total` | counter | `device` |
//!
//! Every command's end is logged with `tracing` (`info` on success, `warn` on failure), as are
//! authentication refusals; requests are logged at `debug`. Passwords never appear in logs or
//! `Debug` output.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
pub mod command;
mod config;
pub mod digest;
mod error;
pub mod hikvision;
mod lifecycle;
mod registry;
#[cfg(feature = "simulator")]
pub mod simulator;
pub mod time;
pub mod tls;

pub use adapter::{
    CommandSpec, DeviceAdapter, DeviceDescription, DeviceOutcome, EventBatch, EventCursor,
    EventSource, Health, HealthState,
};
pub use async_trait::async_trait;
pub use command::{DeviceCommand, DeviceRequest, DoorAction};
pub use config::{DeviceConfig, DeviceLimits, RegistryConfig, validate_device_id};
pub use error::{DeviceError, Error, Lockout};
pub use lifecycle::{CommandFailure, CommandReport, CommandState, rejection_ack};
pub use registry::{
    AdapterContext, AdapterFactory, DeviceRegistry, ExecuteOptions, RegistryBuilder,
};

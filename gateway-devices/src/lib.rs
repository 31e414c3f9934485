//! # gateway-devices
//!
//! (crate docs written below)

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
pub use registry::{AdapterContext, AdapterFactory, DeviceRegistry, ExecuteOptions, RegistryBuilder};

//! # gateway-control
//!
//! The control channel between gateways and the server (WebSocket `GET /v1/control`):
//! registration, heartbeats, presence, commands down and acknowledgements up — built to hold
//! when the network does not.
//!
//! TODO crate docs

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
mod close;
mod error;
pub mod gateway;
#[cfg(feature = "server")]
pub mod server;
mod state;

pub use close::CloseReason;
pub use error::Error;
pub use gateway::{
    ConnectionState, GatewayClient, GatewayClientConfig, GatewayEvent, GatewayEvents,
    GatewayHandle, GatewaySession, GatewaySessionConfig, MemoryJournal, Outcome, OutcomeState,
    SqliteJournal, Transmit,
};
pub use state::{CommandState, UnknownState};

#[cfg(feature = "server")]
pub use server::{
    CommandQueue, ControlPlane, EventLog, Hub, HubConfig, HubEvent, NewCommand, ServerEvent,
    ServerSession, ServerSessionConfig, ServerTransmit, SqliteCommandQueue,
};

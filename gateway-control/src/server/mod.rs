//! The server end (feature `server`): [`ServerSession`] (sans-IO), the persistent
//! [`queue`], [`presence`], the [`events`] log, the [`ControlPlane`] tying them together, and
//! the tokio/axum [`Hub`].

mod connection;
pub mod events;
mod http;
mod hub;
mod plane;
pub mod presence;
pub mod queue;
mod session;

pub use connection::{ConnectionEvent, ServerConnection};
pub use events::{EventLog, EventLogConfig, LoggedEvent, Subscription};
pub use http::{ApiError, authenticate, event_routes, event_stream};
pub use hub::{Hub, HubBuilder, HubConfig, HubEvent};
pub use plane::{
    ControlPlane, EVENT_COMMAND_ACK_IGNORED, EVENT_COMMAND_PROGRESS, EVENT_COMMAND_STATE,
    EVENT_GATEWAY_OFFLINE, EVENT_GATEWAY_ONLINE, PlaneRequest,
};
pub use presence::{GatewayPresence, Presence, PresenceChange, Transport};
pub use queue::{
    AckOutcome, AckRecord, CommandFilter, CommandQueue, CommandRecord, Delivery, NewCommand,
    QueueConfig, QueueOp, QueueOutput, Resend, SqliteCommandQueue, StateChange, Sweep,
};
pub use session::{ServerEvent, ServerSession, ServerSessionConfig, ServerTransmit};

//! # gateway-control
//!
//! The control channel between gateways and the server (WebSocket `GET /v1/control`):
//! registration, heartbeats, presence, commands down and acknowledgements up — built to hold
//! when the network does not.
//!
//! ## Layers
//!
//! | layer | gateway end ([`gateway`]) | server end ([`server`], feature `server`) |
//! |---|---|---|
//! | sans-IO core (no clock, no tokio) | [`GatewaySession`] | [`ServerSession`], [`server::ServerConnection`], [`ControlPlane`] |
//! | storage (SQLite) | [`gateway::SqliteJournal`] (executed ids, outcomes, pending acks) | [`SqliteCommandQueue`] (commands, timers, ack history), [`EventLog`] |
//! | tokio driver | [`GatewayClient`] (tokio-tungstenite + rustls/ring) | [`Hub`] (axum `GET /v1/control`, REST fallback, operator API, SSE) |
//! | REST fallback | [`gateway::RestPoller`] | [`Hub::router`] |
//! | agent API (registration, heartbeats, presence, commands to agents) | [`AgentRegistry`] (sans-IO), [`AgentService`] (tokio), `agent_routes` (axum, feature `agent-api`) — see [`gateway::agents`] | |
//!
//! The cores follow quinn-proto: inputs `connected`, `handle_frame(now, ..)`,
//! `handle_timeout(now)`, `disconnected`; outputs `poll_transmit()`, `poll_event()`,
//! `poll_timeout()`. Each type's docs give the call order. Time is always passed in, so the
//! tests drive both ends through virtual time (`tests/common/mod.rs` has the in-memory
//! `Pair`).
//!
//! ## Guarantees
//!
//! * **Commands run at most once per id** on the gateway: the journal records a command
//!   before the application sees it; a redelivery is answered with the stored outcome; a
//!   command interrupted by a crash is reported `failed`, never re-run.
//! * **No outcome lost**: an outcome is journaled before it is queued, re-sent after a
//!   reconnect or restart, and the server redelivers every unfinished command on each new
//!   session — and, on a live session, every `redeliver_after_ms` while a command has no
//!   outcome (a frame can be lost, or fail to be stored, without the session ending) — which
//!   the journal answers with the stored outcome.
//! * **Commands are stored before `enqueue` returns**, delivered per gateway by priority then
//!   age, and move only forward through `queued → sent → received → in_progress →
//!   succeeded | failed | rejected` (or `expired`, `timed_out`, `canceled`; see
//!   [`CommandState`]). Their timers are stored with them: deadlines fire for gateways that
//!   never return, and across server restarts. Late acknowledgements are recorded, never
//!   applied backwards. A `queued` or `sent` command cancels plainly, a `received` or
//!   `in_progress` one only with `force`; in both later cases the gateway may already hold it
//!   and run it, and is left to recover (its acknowledgements no longer move the command).
//! * **Tenants never meet.** Gateway ids are unique across the server and a
//!   [`GatewayDirectory`](gateway_proto::auth::GatewayDirectory) ([`server::HubBuilder::directory`])
//!   says whose each is. A command is stored under its gateway's tenant, and an operator can
//!   only enqueue for, read, list and cancel their own tenant's (another tenant's gateway or
//!   command answers 404, exactly as a missing one). Delivery, redelivery, the REST fetch and
//!   acknowledgements name the gateway *and* the tenant of its token, so a command reaches,
//!   and is finished by, only a session of its own gateway and tenant. A gateway whose token
//!   names another tenant than the directory gets an `error` frame (`forbidden`) and a close
//!   at the handshake (403 on the REST fallback), and presence never moves a gateway id to
//!   another tenant. Without a directory ([`Hub::new`]) the hub knows only gateways that
//!   connected since it started, under the tenant they first connected with, and refuses
//!   commands for any other — safe, but a command for an offline gateway waits for it to
//!   reconnect after a server restart: give production servers a directory.
//! * **Events are tenant-scoped**: every command and presence event is published under its
//!   tenant; the SSE stream shows an operator only their own tenant's events, and events
//!   published without a tenant reach no operator.
//! * **Frames fit the channel**: a command whose `command` frame would exceed
//!   `limits.max_frame_bytes` is refused at enqueue (413 `payload_too_large`), and one already
//!   queued is failed as `rejected` (with the sizes in its detail) instead of being sent to a
//!   gateway that would refuse it and reconnect in a loop.
//! * **Presence**: silent for 1.5 × the heartbeat interval means offline; session epochs keep
//!   a late disconnect of an old session from marking a reconnected gateway offline.
//! * **A stalled gateway cannot stall the server**: each connection's queue is bounded
//!   ([`HubConfig::connection_queue_capacity`]) and each frame must be
//!   written within `write_timeout_ms`; a gateway that stops reading is disconnected
//!   ([`CloseReason::Backlogged`]) and gets what it missed on its next session.
//! * **The link**: heartbeats carry a `StatusSnapshot`; two intervals without `heartbeat_ack`
//!   mean the link is dead; reconnects use exponential backoff with full jitter
//!   ([`backoff`]); frames produced while down wait in a bounded outbox and go out in order.
//! * **Identity comes from the token** ([`gateway_proto::auth::Authenticator`]); a `hello`
//!   naming another gateway gets an `identity_mismatch` error frame and a close. Unknown or
//!   malformed frames get an `error` frame and the connection stays up.
//!
//! Every command state change and presence change is published to the [`EventLog`]
//! (`command.state`, `command.progress`, `command.ack_ignored`, `gateway.online`,
//! `gateway.offline`), which [`server::event_routes`] serves as resumable Server-Sent Events.
//! Metrics (the `metrics` facade) are named `gateway_control_*`.
//!
//! ## Example: one handshake and one command, in memory
//!
//! ```
//! # #[cfg(feature = "server")]
//! # fn main() -> Result<(), gateway_control::Error> {
//! use std::sync::Arc;
//! use std::time::Instant;
//! use gateway_control::gateway::{MemoryJournal, Outcome};
//! use gateway_control::server::{ServerEvent, ServerSession, ServerSessionConfig, ServerTransmit};
//! use gateway_control::{GatewayEvent, GatewaySession, GatewaySessionConfig, Transmit};
//! use gateway_proto::auth::{Principal, Role};
//! use gateway_proto::clock::ManualClock;
//! use gateway_proto::{Command, CommandAckState, CommandId, ControlFrame, SessionId};
//!
//! let now = Instant::now();
//! let mut gateway = GatewaySession::new(GatewaySessionConfig::new("gw-1"), MemoryJournal::new())?;
//! let mut server = ServerSession::new(
//!     ServerSessionConfig::default(),
//!     Principal::new("acme", "gw-1", Role::Gateway), // from the bearer token
//!     SessionId::new_v7(),
//!     Arc::new(ManualClock::new(1_750_000_000_000)),
//!     now,
//! );
//!
//! // The session asks for a connection; the driver opens one and says so.
//! assert_eq!(gateway.poll_transmit(), Some(Transmit::Connect));
//! gateway.connected(now);
//!
//! // Carry frames both ways until both ends are quiet.
//! fn exchange(gateway: &mut GatewaySession, server: &mut ServerSession, now: Instant) {
//!     loop {
//!         let mut moved = false;
//!         while let Some(Transmit::Frame(frame)) = gateway.poll_transmit() {
//!             server.handle_frame(now, frame);
//!             moved = true;
//!         }
//!         while let Some(ServerTransmit::Frame(frame)) = server.poll_transmit() {
//!             gateway.handle_frame(now, frame).unwrap();
//!             moved = true;
//!         }
//!         if !moved {
//!             return;
//!         }
//!     }
//! }
//! exchange(&mut gateway, &mut server, now);
//! assert!(gateway.is_established());
//! assert!(matches!(server.poll_event(), Some(ServerEvent::Established { .. })));
//!
//! // A command goes down; the application gets it once and reports the outcome.
//! let id = CommandId::new_v7();
//! let command = Command {
//!     id,
//!     kind: "flush".into(),
//!     payload: serde_json::Value::Null,
//!     priority: 0,
//!     delivery_deadline_ms: None,
//!     execution_timeout_ms: None,
//!     target: None,
//! };
//! server.send(ControlFrame::Command(command))?;
//! exchange(&mut gateway, &mut server, now);
//! let handed_over = std::iter::from_fn(|| gateway.poll_event())
//!     .filter(|e| matches!(e, GatewayEvent::Command(_)))
//!     .count();
//! assert_eq!(handed_over, 1);
//! gateway.report_outcome(id, Outcome::succeeded())?;
//! exchange(&mut gateway, &mut server, now);
//! let acks: Vec<CommandAckState> = std::iter::from_fn(|| server.poll_event())
//!     .filter_map(|e| match e {
//!         ServerEvent::CommandAck(ack) => Some(ack.state),
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(acks, [CommandAckState::Received, CommandAckState::Succeeded]);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "server"))]
//! # fn main() {}
//! ```
//!
//! ## Wiring a server and a gateway
//!
//! Server: open a [`SqliteCommandQueue`] and an [`EventLog`], build a [`Hub`] with
//! [`Hub::builder`] and the server's gateway directory
//! ([`gateway_proto::auth::StaticTokens`] is both authenticator and directory), call
//! [`Hub::spawn_timers`], and serve `hub.router()` (gateways) merged with
//! `hub.operator_router()` and [`server::event_routes`] (operators). The application learns of
//! sessions (with their `hello`, which carries `applied_policies`) and of frames the channel
//! does not consume (`policy_status`) from [`Hub::subscribe`], pushes server → gateway frames
//! (`policy_update`) with [`Hub::send_frame`], publishes its own events with
//! [`EventLog::publish`], and enqueues commands with [`Hub::enqueue`].
//!
//! Gateway: open a [`gateway::SqliteJournal`] and start a [`GatewayClient`] (or
//! [`GatewayClient::builder`] to announce applied policies in the first `hello`). Commands and
//! `policy_update` frames arrive as [`GatewayEvent`]s; outcomes go back with
//! [`GatewayHandle::report_outcome`], other frames (`policy_status`) with
//! [`GatewayHandle::send`]; [`GatewayHandle::watch_state`] wakes whoever waits for the
//! control channel to come back (the uplink).

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
#[cfg(feature = "agent-api")]
pub use gateway::agents::agent_routes;
pub use gateway::agents::{
    AgentEvent, AgentInfo, AgentRegistry, AgentRegistryConfig, AgentService, AgentServiceConfig,
    SqliteAgentStore,
};
pub use gateway::{
    ConnectionState, GatewayClient, GatewayClientConfig, GatewayEvent, GatewayEvents,
    GatewayHandle, GatewaySession, GatewaySessionConfig, MemoryJournal, Outcome, OutcomeState,
    SqliteJournal, Transmit,
};
pub use state::{CommandState, UnknownState};

#[cfg(feature = "server")]
pub use server::{
    CommandQueue, ControlPlane, EventLog, Hub, HubBuilder, HubConfig, HubEvent, NewCommand,
    ServerEvent, ServerSession, ServerSessionConfig, ServerTransmit, SqliteCommandQueue,
};

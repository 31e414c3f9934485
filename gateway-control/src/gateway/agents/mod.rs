//! The gateway's agent API: agents register, send heartbeats, are tracked online/offline, and
//! receive commands in heartbeat answers (`POST /v1/agents/register`,
//! `POST /v1/agents/heartbeat`; wire contract in `docs/PROTOCOL.md` §3).
//!
//! # Rules this module keeps
//!
//! * **Presence** — an agent is online from its registration or any heartbeat until it is
//!   silent for longer than `ceil(heartbeat_interval_ms × offline_after_intervals)` (1.5 by
//!   default: the rule the server applies to gateways); the first instant past that, it is
//!   offline and an [`AgentEvent::Offline`] is emitted. The next heartbeat brings it back
//!   ([`AgentEvent::Online`]). [`AgentService::online_count`] is the `connected_agents` of the
//!   gateway's status.
//! * **Unknown agents** — a heartbeat from an agent that never registered is refused
//!   ([`Error::UnknownAgent`], 404 `not_found`): the agent must register. Registering again
//!   is always allowed (after an agent restart); it restarts the agent's `seq` numbering.
//!   A heartbeat whose `seq` is not above the last one (late, reordered) is tolerated: it
//!   counts as a sign of life and its acknowledgements apply, but it does not overwrite the
//!   newer `status` and `queued_records`.
//! * **Commands** — a queued command is repeated in every heartbeat answer until the agent
//!   lists its id in `acked_commands`; the acknowledgement is reported once
//!   ([`AgentEvent::CommandAcknowledged`]), repeats are ignored. At most
//!   `max_pending_commands` wait per agent ([`Error::AgentQueueFull`] beyond). A command may
//!   carry an expiry, after which it is dropped ([`AgentEvent::CommandExpired`]). Agents must
//!   execute each id at most once — an agent that restarts because of a `restart` command
//!   must remember that id across its own restart (or acknowledge it first), since the
//!   command is repeated until acknowledged.
//! * **Who may act as an agent** — see [`may_act_as`]: a token of role `agent` acts as the
//!   agent named by its subject, or as any agent when its subject is [`ANY_AGENT`] (`*`, a
//!   site-wide agent token); `gateway` and `admin` tokens may not register or heartbeat. An
//!   agent id belongs to the tenant that registered it first: another tenant gets 403.
//! * **Limits** — at most `max_agents` agents ([`Error::TooManyAgents`], 409 `conflict`);
//!   ids, kinds, versions 1–128 bytes, host names 1–255, capabilities/attributes/status up
//!   to `limits.max_attributes` entries (400 `invalid_request` naming the field).
//! * **What survives a restart** — with a [`SqliteAgentStore`] the registrations do
//!   (saved before the register answer leaves; last sign of life saved when an agent goes
//!   offline), so agents keep heartbeating after a gateway restart without registering
//!   again; they show offline until their next heartbeat. Pending commands do **not**: a
//!   control-channel command cut short by a crash is reported `failed` by the gateway's
//!   command journal and must not reach the agent afterwards. Without a store everything
//!   is in memory and agents get 404 after a restart, then register again.
//!
//! # Layers
//!
//! | layer | type |
//! |---|---|
//! | sans-IO core (no clock, no tokio) | [`AgentRegistry`] |
//! | storage | [`AgentStore`], [`SqliteAgentStore`] |
//! | tokio service (timer, events, store, control bridge) | [`AgentService`] |
//! | HTTP (axum, feature `agent-api`) | [`agent_routes`] |
//!
//! # Commands from the control channel
//!
//! An `agent.<kind>` command (e.g. `agent.restart`) whose `target` is an agent id reaches
//! that agent as a command of kind `<kind>` with the same id and payload, on its next
//! heartbeat ([`AgentService::deliver_control_command`]). When the agent acknowledges it,
//! the gateway reports the server command `succeeded` with detail `delivered to agent`
//! ([`AgentService::spawn_control_reporter`]); if it is not acknowledged within the command's
//! `execution_timeout_ms` it is reported `failed`; if the agent is unknown,
//! `deliver_control_command` fails at once and the command is reported `rejected`.
//!
//! ```no_run
//! # #[cfg(feature = "agent-api")]
//! # async fn wire(
//! #     handle: gateway_control::GatewayHandle,
//! #     mut events: gateway_control::GatewayEvents,
//! #     auth: std::sync::Arc<dyn gateway_proto::auth::Authenticator>,
//! #     data_dir: std::path::PathBuf,
//! # ) -> Result<(), gateway_control::Error> {
//! use gateway_control::gateway::agents::{
//!     AGENT_COMMAND_PREFIX, AgentService, SqliteAgentStore, agent_routes,
//! };
//! use gateway_control::{GatewayEvent, Outcome};
//!
//! let agents = AgentService::builder("gw-1")
//!     .store(SqliteAgentStore::open(data_dir.join("agents.db"))?)
//!     .policy_checksum(|| None) // from the policy applier
//!     .spawn()?;
//! agents.spawn_control_reporter(handle.clone());
//! let app: axum::Router = agent_routes(agents.clone(), auth);
//! // ... serve `app` merged with /v1/records, /v1/policy, /v1/status ...
//! while let Some(event) = events.recv().await {
//!     if let GatewayEvent::Command(command) = event {
//!         if command.kind.starts_with(AGENT_COMMAND_PREFIX) {
//!             if let Err(e) = agents.deliver_control_command(&command) {
//!                 handle.report_outcome(command.id, Outcome::rejected(e.to_string())).await?;
//!             }
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Example: the registry with explicit time
//!
//! ```
//! use gateway_control::gateway::agents::{AgentEvent, AgentRegistry, AgentRegistryConfig};
//! use gateway_proto::{AgentCommand, AgentHeartbeatRequest, CommandId, RegisterAgentRequest};
//!
//! let t0 = 1_750_000_000_000; // ms since the epoch, from the caller's clock
//! let mut agents = AgentRegistry::new("gw-1", AgentRegistryConfig::default())?; // 10 s beats
//! let answer = agents.register(
//!     "acme", // the tenant of the caller's token
//!     &RegisterAgentRequest {
//!         agent_id: "pc-12".into(),
//!         kind: "endpoint".into(),
//!         version: "2.1.0".into(),
//!         hostname: "pc-12.office".into(),
//!         capabilities: vec!["restart".into()],
//!         attributes: Default::default(),
//!     },
//!     t0,
//! )?;
//! assert_eq!(answer.heartbeat_interval_ms, 10_000);
//! assert_eq!(agents.online_count(), 1);
//!
//! // A command waits for the agent's next heartbeat and is repeated until acknowledged.
//! let restart = AgentCommand { id: CommandId::new_v7(), kind: "restart".into(), payload: serde_json::Value::Null };
//! agents.enqueue_command("pc-12", restart.clone(), t0)?;
//! let mut beat = AgentHeartbeatRequest {
//!     agent_id: "pc-12".into(),
//!     seq: 1,
//!     queued_records: 0,
//!     status: Default::default(),
//!     acked_commands: vec![],
//! };
//! assert_eq!(agents.heartbeat("acme", &beat, t0 + 10_000)?.commands, [restart.clone()]);
//! beat.seq = 2;
//! beat.acked_commands = vec![restart.id];
//! assert!(agents.heartbeat("acme", &beat, t0 + 20_000)?.commands.is_empty());
//!
//! // Silent for more than 1.5 × 10 s: offline at the deadline the registry announces.
//! let deadline = agents.poll_timeout().unwrap();
//! assert_eq!(deadline, t0 + 20_000 + 15_001);
//! agents.handle_timeout(deadline);
//! let events: Vec<AgentEvent> = std::iter::from_fn(|| agents.poll_event()).collect();
//! assert!(matches!(&events[..], [
//!     AgentEvent::Registered { .. },
//!     AgentEvent::Online { .. },
//!     AgentEvent::CommandAcknowledged { command_id, .. },
//!     AgentEvent::Offline { .. },
//! ] if *command_id == restart.id));
//! assert_eq!(agents.online_count(), 0);
//! # Ok::<(), gateway_control::Error>(())
//! ```
//!
//! [`Error::UnknownAgent`]: crate::Error::UnknownAgent
//! [`Error::AgentQueueFull`]: crate::Error::AgentQueueFull
//! [`Error::TooManyAgents`]: crate::Error::TooManyAgents

mod access;
mod config;
#[cfg(feature = "agent-api")]
mod http;
#[cfg(test)]
mod model_tests;
mod registry;
mod service;
mod store;

pub use access::{ANY_AGENT, may_act_as};
pub use config::{AgentRegistryConfig, AgentServiceConfig};
#[cfg(feature = "agent-api")]
pub use http::agent_routes;
pub use registry::{
    AgentEvent, AgentInfo, AgentRegistration, AgentRegistry, MAX_HOSTNAME_LEN, PendingCommand,
};
pub use service::{
    AGENT_COMMAND_PREFIX, AgentService, AgentServiceBuilder, ControlOutcome, DELIVERED_TO_AGENT,
    PolicyChecksumFn,
};
pub use store::{AgentStore, SqliteAgentStore};

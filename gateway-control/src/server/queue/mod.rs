//! The server's persistent command queue: what each gateway must do, where each command is
//! in its lifecycle, and the timers that move it when nobody answers.
//!
//! # Guarantees
//!
//! * **Stored before acknowledged.** [`CommandQueue::enqueue`] returns the id only after the
//!   command is committed.
//! * **Per-gateway order.** Delivery takes queued commands by priority (higher first), then
//!   age ([`CommandQueue::take_for_delivery`]), at most `max_in_flight` unfinished at once.
//! * **At-least-once delivery.** `sent` commands are redelivered when `received` does not come
//!   within `redeliver_after_ms`, and every unfinished command is resent when the gateway
//!   reconnects; the gateway's journal answers redeliveries without running them twice.
//! * **No outcome lost.** A `received` or `in_progress` command is sent again every
//!   `redeliver_after_ms` without an acknowledgement, on a live session too: an outcome can be
//!   lost without the session ending (a frame lost on the way, an acknowledgement the server
//!   failed to store), and the journal answers the redelivery with the stored outcome — or
//!   with `received` while the command still runs, which neither moves it nor restarts its
//!   step timer.
//! * **Deadlines hold without the gateway.** Every unfinished command carries a timer
//!   (`timer_ms`, persisted): the delivery deadline (→ `expired`), the redelivery time, or the
//!   step deadline (→ `timed_out`; each progress report restarts it). [`CommandQueue::sweep`]
//!   fires them; since they are stored, they survive a server restart (the failure of
//!   ThingsBoard #11642, where pending commands lost their timers, cannot happen).
//! * **Forward only.** Acknowledgements move a command only to a later state
//!   ([`CommandState::rank`]); a late or stale one (for example `succeeded` after `timed_out`)
//!   is recorded in the acknowledgement history ([`CommandQueue::acks`]) and changes nothing.
//! * **Tenant-scoped.** Every command carries the tenant it was enqueued for. Delivery
//!   ([`CommandQueue::take_for_delivery`]) and acknowledgements ([`CommandQueue::record_ack`])
//!   name the gateway *and* its tenant (from its credentials), and touch only commands of that
//!   tenant: a command is never handed to, nor finished by, a gateway of another tenant. A
//!   command stored without a tenant (by an older version) is never delivered; it expires.
//!   [`CommandFilter::tenant`] scopes listings in the store itself.
//!
//! Every method that changes a command returns its [`StateChange`]s; the caller publishes
//! them (the [`super::ControlPlane`] does, as `command.state` events).

mod sqlite;

use gateway_proto::{Command, CommandAck, CommandAckState, CommandId, ErrorCode, Limits};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteCommandQueue;

use crate::{CommandState, Error};

/// Settings of the command queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Delivery deadline of commands enqueued without one, ms after enqueueing. Default 24 h.
    pub default_delivery_ttl_ms: u64,
    /// Execution timeout (step timer) of commands enqueued without one, ms. Default 10 min.
    pub default_execution_timeout_ms: u64,
    /// A `sent` command not confirmed `received` within this is sent again, and so is a
    /// `received` or `in_progress` one without an acknowledgement for this long (its outcome
    /// may have been lost; the gateway's journal answers without running it again), ms.
    /// Default 30 s.
    pub redeliver_after_ms: u64,
    /// `synchronous=FULL` (survives power loss) instead of `NORMAL` (survives a crash of the
    /// process). Default false.
    pub fsync_every_write: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            default_delivery_ttl_ms: 24 * 60 * 60 * 1000,
            default_execution_timeout_ms: 10 * 60 * 1000,
            redeliver_after_ms: 30_000,
            fsync_every_write: false,
        }
    }
}

impl QueueConfig {
    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        for (param, value) in [
            ("default_delivery_ttl_ms", self.default_delivery_ttl_ms),
            (
                "default_execution_timeout_ms",
                self.default_execution_timeout_ms,
            ),
            ("redeliver_after_ms", self.redeliver_after_ms),
        ] {
            if value == 0 || value > i64::MAX as u64 / 2 {
                return Err(Error::InvalidConfig {
                    param,
                    reason: format!("must be between 1 and {} ms", i64::MAX / 2),
                });
            }
        }
        Ok(())
    }
}

/// A command to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCommand {
    /// The gateway that must run it.
    pub gateway_id: String,
    /// What to do, e.g. `device.door.open`.
    pub kind: String,
    /// Arguments (`null` when none).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Higher is delivered first. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// A target inside the gateway (device or agent id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Absolute delivery deadline, ms since the epoch; `None` uses the queue's default TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_deadline_ms: Option<i64>,
    /// Execution timeout (step timer), ms; `None` uses the queue's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_ms: Option<u64>,
    /// Tenant of the gateway (and of the operator who enqueued it): scopes delivery,
    /// acknowledgements and who sees the command and its events. `None` lets the
    /// [`super::ControlPlane`] fill in the gateway's tenant from its gateway directory; a
    /// tenant the gateway does not belong to is refused there as an unknown gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl NewCommand {
    /// A command of `kind` for `gateway_id`, with no payload and default timers.
    pub fn new(gateway_id: impl Into<String>, kind: impl Into<String>) -> Self {
        NewCommand {
            gateway_id: gateway_id.into(),
            kind: kind.into(),
            payload: serde_json::Value::Null,
            priority: 0,
            target: None,
            delivery_deadline_ms: None,
            execution_timeout_ms: None,
            tenant: None,
        }
    }

    /// With this payload.
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = payload;
        self
    }

    /// With this priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// With this absolute delivery deadline (ms since the epoch).
    pub fn delivery_deadline_ms(mut self, deadline_ms: i64) -> Self {
        self.delivery_deadline_ms = Some(deadline_ms);
        self
    }

    /// With this execution timeout.
    pub fn execution_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.execution_timeout_ms = Some(timeout_ms);
        self
    }

    /// With this target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// With this tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Check the fields against `limits` and `now_ms`; the error names the field.
    pub fn validate(&self, limits: &Limits, now_ms: i64) -> Result<(), Error> {
        let invalid = |e: gateway_proto::Error| Error::InvalidRequest {
            reason: e.to_string(),
        };
        limits
            .check_id("gateway_id", &self.gateway_id, ErrorCode::InvalidRequest)
            .map_err(invalid)?;
        limits
            .check_id("kind", &self.kind, ErrorCode::InvalidRequest)
            .map_err(invalid)?;
        if let Some(target) = &self.target {
            limits
                .check_id("target", target, ErrorCode::InvalidRequest)
                .map_err(invalid)?;
        }
        if let Some(deadline) = self.delivery_deadline_ms
            && deadline <= now_ms
        {
            return Err(Error::InvalidRequest {
                reason: format!(
                    "delivery_deadline_ms {deadline} is not in the future (server time {now_ms})"
                ),
            });
        }
        if self.execution_timeout_ms == Some(0) {
            return Err(Error::InvalidRequest {
                reason: "execution_timeout_ms must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A stored command and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Id (UUIDv7).
    pub id: CommandId,
    /// The gateway that must run it.
    pub gateway_id: String,
    /// Tenant of the command: its gateway's, and its operator's. Only a session of this
    /// tenant gets it, and only this tenant's operators see it. (`None` only for commands
    /// stored by an older version: never delivered, never shown.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What to do.
    pub kind: String,
    /// Arguments.
    pub payload: serde_json::Value,
    /// Target inside the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Where it is now.
    pub state: CommandState,
    /// Enqueued at, ms since the epoch.
    pub created_ms: i64,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
    /// Must be received before this, ms since the epoch.
    pub delivery_deadline_ms: i64,
    /// Step timer length, ms.
    pub execution_timeout_ms: u64,
    /// While `received`/`in_progress`: when it times out unless progress comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_deadline_ms: Option<i64>,
    /// Deliveries so far (first delivery, redeliveries).
    pub attempts: u32,
    /// Detail of the last state change (the gateway's text, why it expired, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The gateway's structured result, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl CommandRecord {
    /// The `command` frame that delivers it.
    pub fn to_command(&self) -> Command {
        Command {
            id: self.id,
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            delivery_deadline_ms: Some(self.delivery_deadline_ms),
            execution_timeout_ms: Some(self.execution_timeout_ms),
            target: self.target.clone(),
        }
    }
}

/// One state change of a command (published as a `command.state` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// The command.
    pub id: CommandId,
    /// Its gateway.
    pub gateway_id: String,
    /// Tenant of the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// State before; `None` when the command was just enqueued.
    pub from: Option<CommandState>,
    /// State after.
    pub to: CommandState,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Why, or the gateway's detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One acknowledgement as received, applied or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckRecord {
    /// The command.
    pub command_id: CommandId,
    /// Received at, ms since the epoch.
    pub at_ms: i64,
    /// The state the gateway reported.
    pub state: CommandAckState,
    /// The gateway's detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The gateway's structured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// False for a late or stale acknowledgement that did not move the command.
    pub applied: bool,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq)]
pub struct AckOutcome {
    /// The command's tenant (what its events are published under).
    pub tenant: Option<String>,
    /// The command's state afterwards.
    pub state: CommandState,
    /// False when it was stale (recorded only).
    pub applied: bool,
    /// The state change it caused, if any.
    pub change: Option<StateChange>,
    /// True for progress on a command already `in_progress` (its step timer restarted).
    pub progress: bool,
}

/// Commands taken for delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// Frames to send, in order.
    pub commands: Vec<Command>,
    /// `queued → sent` changes.
    pub changes: Vec<StateChange>,
}

/// Which already delivered commands [`CommandQueue::take_for_delivery`] sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// None: only queued commands.
    Nothing,
    /// `sent` ones (not confirmed): a REST poll, where the last answer may have been lost.
    Sent,
    /// `sent`, `received` and `in_progress` ones: a new session, where acknowledgements of
    /// the last one may have been lost. The gateway's journal answers without running twice.
    Unfinished,
}

/// One operation of a [`CommandQueue::apply`] batch.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueOp {
    /// [`CommandQueue::take_for_delivery`].
    Deliver {
        /// The gateway.
        gateway_id: String,
        /// Its tenant (from its credentials).
        tenant: String,
        /// In-flight window.
        max_in_flight: usize,
        /// What to send again.
        resend: Resend,
    },
    /// [`CommandQueue::record_ack`], then, if the command finished, a delivery of what now
    /// fits the window.
    Ack {
        /// The gateway that reported.
        gateway_id: String,
        /// Its tenant (from its credentials).
        tenant: String,
        /// The acknowledgement.
        ack: CommandAck,
        /// In-flight window for the follow-up delivery.
        max_in_flight: usize,
    },
    /// [`CommandQueue::refuse`], then a delivery of what now fits the window.
    Refuse {
        /// The gateway the command was for.
        gateway_id: String,
        /// Its tenant.
        tenant: String,
        /// The command.
        id: CommandId,
        /// Why the server will not send it.
        detail: String,
        /// In-flight window for the follow-up delivery.
        max_in_flight: usize,
    },
}

/// The result of one [`QueueOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueueOutput {
    /// Commands taken for delivery.
    Delivered(Delivery),
    /// What the acknowledgement did, and the follow-up delivery.
    Acked {
        /// What the acknowledgement did.
        outcome: AckOutcome,
        /// Commands that now fit the window.
        next: Delivery,
    },
    /// The command the server refused to send, and the follow-up delivery.
    Refused {
        /// The change to `rejected`; `None` when the command had already finished.
        change: Option<StateChange>,
        /// Commands that now fit the window.
        next: Delivery,
    },
}

/// What a [`CommandQueue::sweep`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    /// Commands that expired or timed out.
    pub changes: Vec<StateChange>,
    /// Unfinished commands whose redelivery is due: `sent` ones not confirmed `received`, and
    /// `received`/`in_progress` ones without an outcome (resend them if their gateway is
    /// connected).
    pub redeliver: Vec<CommandRecord>,
}

/// Which commands [`CommandQueue::list`] returns (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandFilter {
    /// Only this tenant's (applied in the store, before `limit`). The operator API always
    /// sets it to the caller's tenant; `None` lists every tenant's commands (server-side code
    /// only).
    pub tenant: Option<String>,
    /// Only this gateway's.
    pub gateway_id: Option<String>,
    /// Only in this state.
    pub state: Option<CommandState>,
    /// At most this many. Default 100.
    pub limit: usize,
}

impl Default for CommandFilter {
    fn default() -> Self {
        CommandFilter {
            tenant: None,
            gateway_id: None,
            state: None,
            limit: 100,
        }
    }
}

/// Storage of commands; see the [module docs](self) for what every implementation keeps.
/// Methods take the wall-clock time as `now_ms` (ms since the epoch).
pub trait CommandQueue: Send + Sync + 'static {
    /// Store a command as `queued`; returns it once committed.
    fn enqueue(&self, command: NewCommand, now_ms: i64) -> Result<CommandRecord, Error>;

    /// Store many commands in one transaction (fan-out to a fleet).
    fn enqueue_many(
        &self,
        commands: Vec<NewCommand>,
        now_ms: i64,
    ) -> Result<Vec<CommandRecord>, Error>;

    /// Commands to send to `gateway_id` of `tenant` now: first those `resend` selects again,
    /// then queued ones by priority and age while fewer than `max_in_flight` are unfinished
    /// (moved to `sent`). Only commands of `tenant` are considered.
    fn take_for_delivery(
        &self,
        gateway_id: &str,
        tenant: &str,
        now_ms: i64,
        max_in_flight: usize,
        resend: Resend,
    ) -> Result<Delivery, Error>;

    /// Run many delivery and acknowledgement operations, in order, in one transaction (group
    /// commit: the hub batches what its connections need). The outer error is a storage
    /// failure that rolled the whole batch back; inner errors concern one operation.
    ///
    /// The default runs each operation on its own.
    fn apply(
        &self,
        ops: Vec<QueueOp>,
        now_ms: i64,
    ) -> Result<Vec<Result<QueueOutput, Error>>, Error> {
        Ok(ops
            .into_iter()
            .map(|op| match op {
                QueueOp::Deliver {
                    gateway_id,
                    tenant,
                    max_in_flight,
                    resend,
                } => self
                    .take_for_delivery(&gateway_id, &tenant, now_ms, max_in_flight, resend)
                    .map(QueueOutput::Delivered),
                QueueOp::Ack {
                    gateway_id,
                    tenant,
                    ack,
                    max_in_flight,
                } => self
                    .record_ack(&gateway_id, &tenant, &ack, now_ms)
                    .and_then(|outcome| {
                        let next = if outcome.applied && outcome.state.is_terminal() {
                            self.take_for_delivery(
                                &gateway_id,
                                &tenant,
                                now_ms,
                                max_in_flight,
                                Resend::Nothing,
                            )?
                        } else {
                            Delivery::default()
                        };
                        Ok(QueueOutput::Acked { outcome, next })
                    }),
                QueueOp::Refuse {
                    gateway_id,
                    tenant,
                    id,
                    detail,
                    max_in_flight,
                } => self
                    .refuse(&gateway_id, &tenant, &id, &detail, now_ms)
                    .and_then(|change| {
                        let next = self.take_for_delivery(
                            &gateway_id,
                            &tenant,
                            now_ms,
                            max_in_flight,
                            Resend::Nothing,
                        )?;
                        Ok(QueueOutput::Refused { change, next })
                    }),
            })
            .collect())
    }

    /// Apply an acknowledgement from `gateway_id` of `tenant` (forward only; always recorded).
    /// A command of another gateway of the same tenant is [`Error::WrongGateway`]; one of
    /// another tenant is [`Error::UnknownCommand`], as if it did not exist (nothing is
    /// recorded).
    fn record_ack(
        &self,
        gateway_id: &str,
        tenant: &str,
        ack: &CommandAck,
        now_ms: i64,
    ) -> Result<AckOutcome, Error>;

    /// The server will not send an unfinished command of `gateway_id`/`tenant` (its frame is
    /// larger than the control channel allows): it becomes `rejected` with `detail`. `None`
    /// when it had already finished; the same refusals as [`record_ack`](Self::record_ack)
    /// for another gateway's or tenant's command.
    fn refuse(
        &self,
        gateway_id: &str,
        tenant: &str,
        id: &CommandId,
        detail: &str,
        now_ms: i64,
    ) -> Result<Option<StateChange>, Error>;

    /// Cancel a command. `queued` and `sent` (written to the channel, not yet confirmed
    /// `received`) cancel plainly; `received` and `in_progress` only with `force`. Either way
    /// the gateway may already hold the command and run it: its later acknowledgements are
    /// recorded but never move the command out of `canceled`, and the gateway is left to
    /// recover on its own.
    fn cancel(&self, id: &CommandId, force: bool, now_ms: i64) -> Result<StateChange, Error>;

    /// One command.
    fn get(&self, id: &CommandId) -> Result<Option<CommandRecord>, Error>;

    /// Commands matching `filter`, newest first (the tenant and gateway filters apply before
    /// the limit).
    fn list(&self, filter: &CommandFilter) -> Result<Vec<CommandRecord>, Error>;

    /// The acknowledgement history of a command, oldest first.
    fn acks(&self, id: &CommandId) -> Result<Vec<AckRecord>, Error>;

    /// Fire every timer due at `now_ms`: expire, time out, schedule redeliveries (of `sent`
    /// commands and of running ones whose outcome has not come).
    fn sweep(&self, now_ms: i64) -> Result<Sweep, Error>;

    /// The earliest pending timer, ms since the epoch.
    fn next_timer_ms(&self) -> Result<Option<i64>, Error>;
}

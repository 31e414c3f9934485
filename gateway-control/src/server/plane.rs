//! [`ControlPlane`]: the server's command queue, presence registry and event log tied
//! together, without I/O of its own — what a connection, a REST call or a timer does to them.

use std::sync::{Arc, Mutex, MutexGuard};

use gateway_proto::auth::Principal;
use gateway_proto::clock::Clock;
use gateway_proto::{Command, CommandAck, CommandId, Hello, SessionId, StatusSnapshot};
use serde_json::json;

use super::events::EventLog;
use super::presence::{GatewayPresence, Presence, PresenceChange};
use super::queue::{
    AckOutcome, CommandFilter, CommandQueue, CommandRecord, NewCommand, QueueOp, QueueOutput,
    Resend, StateChange,
};
use crate::{CommandState, Error};

/// Event kind of a command state change.
pub const EVENT_COMMAND_STATE: &str = "command.state";
/// Event kind of a progress report on a command already `in_progress`.
pub const EVENT_COMMAND_PROGRESS: &str = "command.progress";
/// Event kind of a late or stale acknowledgement (recorded, not applied).
pub const EVENT_COMMAND_ACK_IGNORED: &str = "command.ack_ignored";
/// Event kind of a gateway coming online.
pub const EVENT_GATEWAY_ONLINE: &str = "gateway.online";
/// Event kind of a gateway going offline.
pub const EVENT_GATEWAY_OFFLINE: &str = "gateway.offline";

/// A queue operation a connection needs, answered with the commands to send
/// ([`ControlPlane::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PlaneRequest {
    /// Commands to deliver now (`resend` selects what goes again, e.g. on a new session).
    Deliver {
        /// The gateway.
        gateway_id: String,
        /// What to send again.
        resend: Resend,
    },
    /// Apply an acknowledgement; the answer holds the commands that then fit the window.
    Ack {
        /// The gateway that sent it.
        gateway_id: String,
        /// The acknowledgement.
        ack: CommandAck,
    },
}

/// The server-side logic of the control channel: the command queue, the presence registry
/// and the event log tied together, without I/O of its own.
///
/// Every command state change and presence change goes to the [`EventLog`]. Methods are
/// synchronous and short (one SQLite transaction at most); the [`super::Hub`] calls them from
/// its connection tasks, tests call them directly.
pub struct ControlPlane {
    queue: Arc<dyn CommandQueue>,
    presence: Mutex<Presence>,
    events: EventLog,
    clock: Arc<dyn Clock>,
    max_in_flight: usize,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A control plane over `queue`, publishing to `events`. `max_in_flight` bounds the
    /// unfinished commands per gateway; `offline_after_intervals` is the silence rule (1.5).
    pub fn new(
        queue: Arc<dyn CommandQueue>,
        events: EventLog,
        clock: Arc<dyn Clock>,
        max_in_flight: usize,
        offline_after_intervals: f64,
    ) -> Self {
        ControlPlane {
            queue,
            presence: Mutex::new(Presence::new(offline_after_intervals)),
            events,
            clock,
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn CommandQueue> {
        &self.queue
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Wall-clock now, ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn presence_lock(&self) -> MutexGuard<'_, Presence> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_change(&self, change: &StateChange) {
        metrics::counter!("gateway_control_command_transitions_total", "to" => change.to.as_str())
            .increment(1);
        let data = serde_json::to_value(change).unwrap_or(serde_json::Value::Null);
        self.events
            .publish(EVENT_COMMAND_STATE, change.tenant.as_deref(), data);
    }

    fn publish_presence(&self, change: &PresenceChange) {
        let kind = if change.online {
            EVENT_GATEWAY_ONLINE
        } else {
            EVENT_GATEWAY_OFFLINE
        };
        let data = serde_json::to_value(change).unwrap_or(serde_json::Value::Null);
        self.events.publish(kind, Some(&change.tenant), data);
        metrics::gauge!("gateway_control_gateways_online")
            .set(self.presence_lock().online_count() as f64);
    }

    fn publish_delivery(&self, changes: &[StateChange]) {
        for change in changes {
            self.publish_change(change);
        }
    }

    // ----- operator side -----

    /// Store a command (published as `queued`).
    pub fn enqueue(&self, command: NewCommand) -> Result<CommandRecord, Error> {
        let record = self.queue.enqueue(command, self.now_ms())?;
        metrics::counter!("gateway_control_commands_enqueued_total").increment(1);
        self.publish_change(&created(&record));
        Ok(record)
    }

    /// Store many commands in one transaction.
    pub fn enqueue_many(&self, commands: Vec<NewCommand>) -> Result<Vec<CommandRecord>, Error> {
        let records = self.queue.enqueue_many(commands, self.now_ms())?;
        metrics::counter!("gateway_control_commands_enqueued_total")
            .increment(records.len() as u64);
        for record in &records {
            self.publish_change(&created(record));
        }
        Ok(records)
    }

    /// Cancel a command (see [`CommandQueue::cancel`]).
    pub fn cancel(&self, id: &CommandId, force: bool) -> Result<StateChange, Error> {
        let change = self.queue.cancel(id, force, self.now_ms())?;
        self.publish_change(&change);
        Ok(change)
    }

    /// One command.
    pub fn command(&self, id: &CommandId) -> Result<Option<CommandRecord>, Error> {
        self.queue.get(id)
    }

    /// Commands matching `filter`.
    pub fn commands(&self, filter: &CommandFilter) -> Result<Vec<CommandRecord>, Error> {
        self.queue.list(filter)
    }

    /// One gateway's presence.
    pub fn presence(&self, gateway_id: &str) -> Option<GatewayPresence> {
        self.presence_lock().get(gateway_id).cloned()
    }

    /// Every known gateway's presence.
    pub fn gateways(&self) -> Vec<GatewayPresence> {
        self.presence_lock().list()
    }

    // ----- WebSocket sessions -----

    /// A session was established: the gateway is online under a new epoch; returns the epoch.
    /// (Then deliver with [`PlaneRequest::Deliver`] and [`Resend::Unfinished`].)
    pub fn session_started(
        &self,
        principal: &Principal,
        hello: &Hello,
        session_id: SessionId,
        heartbeat_interval_ms: u64,
    ) -> u64 {
        let now = self.now_ms();
        let (epoch, change) = self.presence_lock().session_started(
            &principal.tenant,
            hello,
            session_id,
            heartbeat_interval_ms,
            now,
        );
        if let Some(change) = change {
            self.publish_presence(&change);
        }
        epoch
    }

    /// A heartbeat (or any frame, with `status: None`) from session `epoch`.
    pub fn seen(&self, gateway_id: &str, epoch: u64, status: Option<StatusSnapshot>) {
        let now = self.now_ms();
        self.presence_lock().seen(gateway_id, epoch, status, now);
    }

    /// Queued commands that fit the in-flight window now (moved to `sent`).
    pub fn deliverable(&self, gateway_id: &str) -> Result<Vec<Command>, Error> {
        let delivery = self.queue.take_for_delivery(
            gateway_id,
            self.now_ms(),
            self.max_in_flight,
            Resend::Nothing,
        )?;
        self.publish_delivery(&delivery.changes);
        Ok(delivery.commands)
    }

    fn publish_ack(&self, gateway_id: &str, ack: &CommandAck, outcome: &AckOutcome) {
        if let Some(change) = &outcome.change {
            self.publish_change(change);
        } else if outcome.progress {
            self.events.publish(
                EVENT_COMMAND_PROGRESS,
                None,
                json!({"id": ack.id, "gateway_id": gateway_id, "detail": ack.detail}),
            );
        } else if !outcome.applied {
            metrics::counter!("gateway_control_acks_ignored_total").increment(1);
            self.events.publish(
                EVENT_COMMAND_ACK_IGNORED,
                None,
                json!({
                    "id": ack.id,
                    "gateway_id": gateway_id,
                    "reported": ack.state,
                    "state": outcome.state,
                    "detail": ack.detail,
                }),
            );
        }
    }

    /// An acknowledgement from `gateway_id`. Publishes the change (or the ignored ack) and, when
    /// the command finished, returns the next commands that now fit the in-flight window.
    pub fn command_ack(
        &self,
        gateway_id: &str,
        ack: &CommandAck,
    ) -> Result<(AckOutcome, Vec<Command>), Error> {
        let outcome = self.queue.record_ack(gateway_id, ack, self.now_ms())?;
        self.publish_ack(gateway_id, ack, &outcome);
        let next = if outcome.applied && outcome.state.is_terminal() {
            self.deliverable(gateway_id)?
        } else {
            Vec::new()
        };
        Ok((outcome, next))
    }

    /// Run many connections' requests in one queue transaction (group commit), publish what
    /// changed once it is committed, and answer each request with the commands to send.
    pub fn apply(&self, requests: Vec<PlaneRequest>) -> Vec<Result<Vec<Command>, Error>> {
        let count = requests.len();
        let ops: Vec<QueueOp> = requests
            .iter()
            .map(|request| match request {
                PlaneRequest::Deliver { gateway_id, resend } => QueueOp::Deliver {
                    gateway_id: gateway_id.clone(),
                    max_in_flight: self.max_in_flight,
                    resend: *resend,
                },
                PlaneRequest::Ack { gateway_id, ack } => QueueOp::Ack {
                    gateway_id: gateway_id.clone(),
                    ack: ack.clone(),
                    max_in_flight: self.max_in_flight,
                },
            })
            .collect();
        let results = match self.queue.apply(ops, self.now_ms()) {
            Ok(results) => results,
            Err(e) => {
                tracing::error!(error = %e, "a batch of {count} queue operations failed");
                let reason = e.to_string();
                return (0..count)
                    .map(|_| {
                        Err(Error::BatchFailed {
                            reason: reason.clone(),
                        })
                    })
                    .collect();
            }
        };
        metrics::histogram!("gateway_control_queue_batch_size").record(count as f64);
        requests
            .iter()
            .zip(results)
            .map(|(request, result)| match result? {
                QueueOutput::Delivered(delivery) => {
                    self.publish_delivery(&delivery.changes);
                    Ok(delivery.commands)
                }
                QueueOutput::Acked { outcome, next } => {
                    if let PlaneRequest::Ack { gateway_id, ack } = request {
                        self.publish_ack(gateway_id, ack, &outcome);
                    }
                    self.publish_delivery(&next.changes);
                    Ok(next.commands)
                }
            })
            .collect()
    }

    /// Session `epoch` ended; the gateway goes offline unless a newer session took over.
    pub fn session_ended(&self, gateway_id: &str, epoch: u64, reason: &str) {
        let now = self.now_ms();
        let change = self
            .presence_lock()
            .session_ended(gateway_id, epoch, reason, now);
        if let Some(change) = change {
            self.publish_presence(&change);
        }
    }

    // ----- REST fallback -----

    /// A REST heartbeat from the gateway `principal` stands for.
    pub fn rest_heartbeat(
        &self,
        principal: &Principal,
        status: StatusSnapshot,
        heartbeat_interval_ms: u64,
    ) {
        let now = self.now_ms();
        let change = self.presence_lock().rest_heartbeat(
            &principal.tenant,
            &principal.subject,
            status,
            heartbeat_interval_ms,
            now,
        );
        if let Some(change) = change {
            self.publish_presence(&change);
        }
    }

    /// Commands for a REST poll: unconfirmed `sent` ones again, then deliverable queued ones.
    pub fn rest_fetch(&self, gateway_id: &str) -> Result<Vec<Command>, Error> {
        let delivery = self.queue.take_for_delivery(
            gateway_id,
            self.now_ms(),
            self.max_in_flight,
            Resend::Sent,
        )?;
        self.publish_delivery(&delivery.changes);
        Ok(delivery.commands)
    }

    // ----- timers -----

    /// Fire due timers: expire and time out commands, mark silent gateways offline. Returns
    /// the unfinished commands to redeliver, with their gateway (see
    /// [`Sweep::redeliver`](super::queue::Sweep::redeliver)).
    pub fn tick(&self) -> Result<Vec<(String, Command)>, Error> {
        let now = self.now_ms();
        let sweep = self.queue.sweep(now)?;
        for change in &sweep.changes {
            self.publish_change(change);
        }
        let offline = self.presence_lock().sweep(now);
        for change in &offline {
            self.publish_presence(change);
        }
        Ok(sweep
            .redeliver
            .into_iter()
            .map(|r| (r.gateway_id.clone(), r.to_command()))
            .collect())
    }

    /// When [`tick`](Self::tick) must run next, ms since the epoch.
    pub fn next_timer_ms(&self) -> Result<Option<i64>, Error> {
        let queue = self.queue.next_timer_ms()?;
        let presence = self.presence_lock().next_deadline_ms();
        Ok(match (queue, presence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

fn created(record: &CommandRecord) -> StateChange {
    StateChange {
        id: record.id,
        gateway_id: record.gateway_id.clone(),
        tenant: record.tenant.clone(),
        from: None,
        to: CommandState::Queued,
        at_ms: record.created_ms,
        detail: None,
    }
}

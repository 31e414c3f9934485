//! [`ControlPlane`]: the server's command queue, presence registry and event log tied
//! together, without I/O of its own — what a connection, a REST call or a timer does to them.

use std::sync::{Arc, Mutex, MutexGuard};

use gateway_proto::auth::{GatewayDirectory, Principal};
use gateway_proto::clock::Clock;
use gateway_proto::{
    Command, CommandAck, CommandId, ControlFrame, Hello, Limits, SessionId, StatusSnapshot,
    WireMessage,
};
use serde_json::json;

use super::events::EventLog;
use super::presence::{GatewayPresence, Presence, PresenceChange};
use super::queue::{
    AckOutcome, CommandFilter, CommandQueue, CommandRecord, NewCommand, QueueOp, QueueOutput,
    Resend, StateChange,
};
use crate::{CommandState, Error};

// Every event below is published under the tenant of its command or gateway, so the SSE
// stream shows it to that tenant's operators only. (A command stored without a tenant, by an
// older version, publishes under `None`, which no operator stream shows.)

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
/// ([`ControlPlane::apply`]). Each names the gateway and its tenant (from its credentials):
/// the queue only hands over, and only lets it finish, commands of that tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum PlaneRequest {
    /// Commands to deliver now (`resend` selects what goes again, e.g. on a new session).
    Deliver {
        /// The gateway.
        gateway_id: String,
        /// Its tenant.
        tenant: String,
        /// What to send again.
        resend: Resend,
    },
    /// Apply an acknowledgement; the answer holds the commands that then fit the window.
    Ack {
        /// The gateway that sent it.
        gateway_id: String,
        /// Its tenant.
        tenant: String,
        /// The acknowledgement.
        ack: CommandAck,
    },
    /// The connection will not send a command (its frame is larger than
    /// `max_frame_bytes`): it becomes `rejected` with `detail`; the answer holds the commands
    /// that then fit the window.
    Refuse {
        /// The gateway the command was for.
        gateway_id: String,
        /// Its tenant.
        tenant: String,
        /// The command.
        id: CommandId,
        /// Why.
        detail: String,
    },
}

/// The server-side logic of the control channel: the command queue, the presence registry
/// and the event log tied together, without I/O of its own.
///
/// Every command state change and presence change goes to the [`EventLog`], under the tenant
/// of the command or gateway. Methods are synchronous and short (one SQLite transaction at
/// most); the [`super::Hub`] calls them from its connection tasks, tests call them directly.
///
/// # Tenants
///
/// Gateway ids are unique across the server, and a [`GatewayDirectory`]
/// ([`with_directory`](Self::with_directory)) says which tenant each provisioned gateway
/// belongs to. The plane uses it to
///
/// * fill in or check the tenant of every command enqueued ([`enqueue`](Self::enqueue)): a
///   gateway not provisioned in the command's tenant is [`Error::UnknownGateway`], whether
///   another tenant has it or nobody does;
/// * admit gateways ([`admit`](Self::admit)): a session or REST call whose token names
///   another tenant than the directory is [`Error::GatewayNotAdmitted`].
///
/// **Without a directory** the plane knows only the gateways it has seen: a gateway id
/// belongs to the tenant it first connected under (WebSocket or REST) since the server
/// started. Commands for a gateway not seen yet are refused as unknown (after a restart,
/// until the gateway reconnects), and a gateway id is never admitted under a second tenant.
/// Give the plane a directory in production.
pub struct ControlPlane {
    queue: Arc<dyn CommandQueue>,
    presence: Mutex<Presence>,
    events: EventLog,
    clock: Arc<dyn Clock>,
    directory: Option<Arc<dyn GatewayDirectory>>,
    max_in_flight: usize,
    max_frame_bytes: usize,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("directory", &self.directory.is_some())
            .finish_non_exhaustive()
    }
}

/// Encoded size of a server → gateway frame: the larger of its JSON and protobuf encodings,
/// so the answer holds whichever subprotocol the gateway chose.
pub(crate) fn frame_len(frame: &ControlFrame) -> usize {
    frame.to_json().len().max(frame.to_protobuf().len())
}

impl ControlPlane {
    /// A control plane over `queue`, publishing to `events`. `max_in_flight` bounds the
    /// unfinished commands per gateway; `offline_after_intervals` is the silence rule (1.5).
    /// No gateway directory (see the [type docs](Self)); command frames up to the default
    /// `max_frame_bytes` (1 MiB).
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
            directory: None,
            max_in_flight: max_in_flight.max(1),
            max_frame_bytes: Limits::default().max_frame_bytes,
        }
    }

    /// With this gateway directory: which tenant each provisioned gateway belongs to.
    pub fn with_directory(mut self, directory: Arc<dyn GatewayDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// With this limit on a `command` frame, bytes (the `max_frame_bytes` the gateways
    /// accept): larger commands are refused at enqueue ([`Error::CommandTooLarge`]).
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
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

    /// The largest `command` frame accepted, bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
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

    // ----- tenants -----

    /// The tenant of a gateway: the directory's answer, or without a directory the tenant it
    /// connected under since the server started. `None`: not provisioned (or not seen).
    pub fn tenant_of(&self, gateway_id: &str) -> Option<String> {
        match &self.directory {
            Some(directory) => directory.tenant_of(gateway_id),
            None => self
                .presence_lock()
                .tenant_of(gateway_id)
                .map(str::to_owned),
        }
    }

    /// May the gateway authenticated as `gateway` hold a session or call the REST fallback?
    /// [`Error::GatewayNotAdmitted`] when its token's tenant is not the one the directory
    /// places it in (or, without a directory, not the tenant its id already belongs to).
    pub fn admit(&self, gateway: &Principal) -> Result<(), Error> {
        let admitted = match &self.directory {
            Some(directory) => {
                directory.tenant_of(&gateway.subject).as_deref() == Some(gateway.tenant.as_str())
            }
            None => self
                .presence_lock()
                .tenant_of(&gateway.subject)
                .is_none_or(|t| t == gateway.tenant),
        };
        if admitted {
            Ok(())
        } else {
            metrics::counter!("gateway_control_gateways_not_admitted_total").increment(1);
            Err(Error::GatewayNotAdmitted {
                gateway_id: gateway.subject.clone(),
                tenant: gateway.tenant.clone(),
            })
        }
    }

    /// Settle a new command's tenant against `tenant_of` and check its frame size.
    fn prepare(
        &self,
        mut command: NewCommand,
        tenant_of: impl Fn(&str) -> Option<String>,
    ) -> Result<NewCommand, Error> {
        let tenant = tenant_of(&command.gateway_id)
            .filter(|tenant| command.tenant.as_ref().is_none_or(|t| t == tenant))
            .ok_or_else(|| Error::UnknownGateway {
                gateway_id: command.gateway_id.clone(),
            })?;
        command.tenant = Some(tenant);
        // The frame as it will go out, with its timers at their widest.
        let frame = ControlFrame::Command(Command {
            id: CommandId::new_v7(),
            kind: command.kind.clone(),
            payload: command.payload.clone(),
            priority: command.priority,
            delivery_deadline_ms: Some(i64::MAX),
            execution_timeout_ms: Some(u64::MAX),
            target: command.target.clone(),
        });
        let size = frame_len(&frame);
        if size > self.max_frame_bytes {
            metrics::counter!("gateway_control_commands_too_large_total").increment(1);
            return Err(Error::CommandTooLarge {
                size,
                limit: self.max_frame_bytes,
            });
        }
        Ok(command)
    }

    // ----- operator side -----

    /// Store a command (published as `queued`). Its tenant is the gateway's
    /// ([`tenant_of`](Self::tenant_of)); a command naming another tenant, or a gateway that
    /// is not provisioned, is [`Error::UnknownGateway`]. A command whose frame would exceed
    /// `max_frame_bytes` is [`Error::CommandTooLarge`].
    pub fn enqueue(&self, command: NewCommand) -> Result<CommandRecord, Error> {
        let command = self.prepare(command, |gateway| self.tenant_of(gateway))?;
        let record = self.queue.enqueue(command, self.now_ms())?;
        metrics::counter!("gateway_control_commands_enqueued_total").increment(1);
        self.publish_change(&created(&record));
        Ok(record)
    }

    /// Store many commands in one transaction (all or none; the same checks as
    /// [`enqueue`](Self::enqueue)).
    pub fn enqueue_many(&self, commands: Vec<NewCommand>) -> Result<Vec<CommandRecord>, Error> {
        let commands = match &self.directory {
            Some(directory) => commands
                .into_iter()
                .map(|c| self.prepare(c, |gateway| directory.tenant_of(gateway)))
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                let presence = self.presence_lock();
                let tenant_of = |gateway: &str| presence.tenant_of(gateway).map(str::to_owned);
                commands
                    .into_iter()
                    .map(|c| self.prepare(c, tenant_of))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
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
    /// (Then deliver with [`PlaneRequest::Deliver`] and [`Resend::Unfinished`].) A gateway
    /// that is not admitted ([`admit`](Self::admit)), or whose id presence holds under
    /// another tenant, is [`Error::GatewayNotAdmitted`] and changes nothing: close the
    /// session.
    pub fn session_started(
        &self,
        principal: &Principal,
        hello: &Hello,
        session_id: SessionId,
        heartbeat_interval_ms: u64,
    ) -> Result<u64, Error> {
        self.admit(principal)?;
        let now = self.now_ms();
        let (epoch, change) = self.presence_lock().session_started(
            &principal.tenant,
            hello,
            session_id,
            heartbeat_interval_ms,
            now,
        )?;
        if let Some(change) = change {
            self.publish_presence(&change);
        }
        Ok(epoch)
    }

    /// A heartbeat (or any frame, with `status: None`) from session `epoch`.
    pub fn seen(&self, gateway_id: &str, epoch: u64, status: Option<StatusSnapshot>) {
        let now = self.now_ms();
        self.presence_lock().seen(gateway_id, epoch, status, now);
    }

    /// Queued commands of `gateway` (its id and tenant) that fit the in-flight window now
    /// (moved to `sent`).
    pub fn deliverable(&self, gateway: &Principal) -> Result<Vec<Command>, Error> {
        let delivery = self.queue.take_for_delivery(
            &gateway.subject,
            &gateway.tenant,
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
                outcome.tenant.as_deref(),
                json!({"id": ack.id, "gateway_id": gateway_id, "detail": ack.detail}),
            );
        } else if !outcome.applied {
            metrics::counter!("gateway_control_acks_ignored_total").increment(1);
            self.events.publish(
                EVENT_COMMAND_ACK_IGNORED,
                outcome.tenant.as_deref(),
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

    /// An acknowledgement from `gateway` (its id and tenant, from its credentials). Publishes
    /// the change (or the ignored ack) and, when the command finished, returns the next
    /// commands that now fit the in-flight window. A command of another tenant is
    /// [`Error::UnknownCommand`]; another gateway's of the same tenant
    /// [`Error::WrongGateway`].
    pub fn command_ack(
        &self,
        gateway: &Principal,
        ack: &CommandAck,
    ) -> Result<(AckOutcome, Vec<Command>), Error> {
        let outcome =
            self.queue
                .record_ack(&gateway.subject, &gateway.tenant, ack, self.now_ms())?;
        self.publish_ack(&gateway.subject, ack, &outcome);
        let next = if outcome.applied && outcome.state.is_terminal() {
            self.deliverable(gateway)?
        } else {
            Vec::new()
        };
        Ok((outcome, next))
    }

    /// Run many connections' requests in one queue transaction (group commit), publish what
    /// changed once it is committed, and answer each request with the commands to send.
    pub fn apply(&self, requests: Vec<PlaneRequest>) -> Vec<Result<Vec<Command>, Error>> {
        let count = requests.len();
        let max_in_flight = self.max_in_flight;
        let ops: Vec<QueueOp> = requests
            .iter()
            .map(|request| match request {
                PlaneRequest::Deliver {
                    gateway_id,
                    tenant,
                    resend,
                } => QueueOp::Deliver {
                    gateway_id: gateway_id.clone(),
                    tenant: tenant.clone(),
                    max_in_flight,
                    resend: *resend,
                },
                PlaneRequest::Ack {
                    gateway_id,
                    tenant,
                    ack,
                } => QueueOp::Ack {
                    gateway_id: gateway_id.clone(),
                    tenant: tenant.clone(),
                    ack: ack.clone(),
                    max_in_flight,
                },
                PlaneRequest::Refuse {
                    gateway_id,
                    tenant,
                    id,
                    detail,
                } => QueueOp::Refuse {
                    gateway_id: gateway_id.clone(),
                    tenant: tenant.clone(),
                    id: *id,
                    detail: detail.clone(),
                    max_in_flight,
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
                    if let PlaneRequest::Ack {
                        gateway_id, ack, ..
                    } = request
                    {
                        self.publish_ack(gateway_id, ack, &outcome);
                    }
                    self.publish_delivery(&next.changes);
                    Ok(next.commands)
                }
                QueueOutput::Refused { change, next } => {
                    if let Some(change) = &change {
                        metrics::counter!("gateway_control_commands_refused_total").increment(1);
                        self.publish_change(change);
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

    /// A REST heartbeat from the gateway `principal` stands for. A gateway that is not
    /// admitted is [`Error::GatewayNotAdmitted`] and changes nothing.
    pub fn rest_heartbeat(
        &self,
        principal: &Principal,
        status: StatusSnapshot,
        heartbeat_interval_ms: u64,
    ) -> Result<(), Error> {
        self.admit(principal)?;
        let now = self.now_ms();
        let change = self.presence_lock().rest_heartbeat(
            &principal.tenant,
            &principal.subject,
            status,
            heartbeat_interval_ms,
            now,
        )?;
        if let Some(change) = change {
            self.publish_presence(&change);
        }
        Ok(())
    }

    /// Commands for a REST poll of `gateway` (its id and tenant): unconfirmed `sent` ones
    /// again, then deliverable queued ones — only commands of its tenant.
    pub fn rest_fetch(&self, gateway: &Principal) -> Result<Vec<Command>, Error> {
        let delivery = self.queue.take_for_delivery(
            &gateway.subject,
            &gateway.tenant,
            self.now_ms(),
            self.max_in_flight,
            Resend::Sent,
        )?;
        self.publish_delivery(&delivery.changes);
        Ok(delivery.commands)
    }

    // ----- timers -----

    /// Fire due timers: expire and time out commands, mark silent gateways offline. Returns
    /// the unfinished commands to redeliver (see
    /// [`Sweep::redeliver`](super::queue::Sweep::redeliver)); send each only to a session of
    /// its gateway *and* tenant.
    pub fn tick(&self) -> Result<Vec<CommandRecord>, Error> {
        let now = self.now_ms();
        let sweep = self.queue.sweep(now)?;
        for change in &sweep.changes {
            self.publish_change(change);
        }
        let offline = self.presence_lock().sweep(now);
        for change in &offline {
            self.publish_presence(change);
        }
        Ok(sweep.redeliver)
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

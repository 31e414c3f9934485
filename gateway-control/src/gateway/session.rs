//! [`GatewaySession`]: the gateway end of the control channel, without I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use gateway_proto::{
    AppliedPolicy, BufferPressure, Command, CommandAck, CommandId, ControlFrame, ErrorCode,
    ErrorFrame, Heartbeat, Hello, Limits, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, PolicyUpdate,
    SessionId, StatusSnapshot, UplinkHealth, Welcome,
};
use serde::{Deserialize, Serialize};

use super::journal::{CommandJournal, Outcome};
use super::ledger::{Incoming, Ledger};
use crate::backoff::{Backoff, BackoffConfig};
use crate::{CloseReason, Error};

/// Settings of a [`GatewaySession`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewaySessionConfig {
    /// The gateway's id, sent in `hello`. It must match the identity of the token.
    pub gateway_id: String,
    /// Software name and version sent in `hello`. Default `gateway-control/<version>`.
    pub software: String,
    /// Optional features announced in `hello`, e.g. `policy.patch`.
    pub capabilities: Vec<String>,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// How long to wait for `welcome` after the connection opened, ms. Default 10,000.
    pub handshake_timeout_ms: u64,
    /// Heartbeat intervals without a `heartbeat_ack` after which the link is dead. Default 2.
    pub missed_acks_before_dead: u32,
    /// Frames that may wait for a connection. Command outcomes always fit (they are journaled
    /// too); other frames are refused with [`Error::OutboxFull`] beyond this. Default 1,024.
    pub outbox_capacity: usize,
}

impl Default for GatewaySessionConfig {
    fn default() -> Self {
        GatewaySessionConfig {
            gateway_id: String::new(),
            software: concat!("gateway-control/", env!("CARGO_PKG_VERSION")).into(),
            capabilities: Vec::new(),
            backoff: BackoffConfig::default(),
            handshake_timeout_ms: 10_000,
            missed_acks_before_dead: 2,
            outbox_capacity: 1_024,
        }
    }
}

impl GatewaySessionConfig {
    /// The defaults, for this gateway id.
    pub fn new(gateway_id: impl Into<String>) -> Self {
        GatewaySessionConfig {
            gateway_id: gateway_id.into(),
            ..Default::default()
        }
    }

    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        Limits::default()
            .check_id("gateway_id", &self.gateway_id, ErrorCode::InvalidRequest)
            .map_err(|e| Error::InvalidConfig {
                param: "gateway_id",
                reason: e.to_string(),
            })?;
        self.backoff.validate()?;
        let positive = [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "missed_acks_before_dead",
                u64::from(self.missed_acks_before_dead),
            ),
            ("outbox_capacity", self.outbox_capacity as u64),
        ];
        for (param, value) in positive {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    param,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// What the driver must do on the wire, from [`GatewaySession::poll_transmit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Transmit {
    /// Open a connection now; then call [`GatewaySession::connected`] or, if it fails,
    /// [`GatewaySession::disconnected`].
    Connect,
    /// Send this frame.
    Frame(ControlFrame),
    /// Close the connection. The session has already moved on: do not call `disconnected`.
    Close(CloseReason),
}

/// What happened, for the application, from [`GatewaySession::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GatewayEvent {
    /// The server welcomed the gateway: the control channel is up (wake the uplink).
    Connected {
        /// The server's id for this session.
        session_id: SessionId,
        /// The negotiated protocol version.
        protocol_version: u32,
        /// How often heartbeats go out.
        heartbeat_interval: Duration,
    },
    /// The control channel went down; the next attempt is at `retry_at`.
    Disconnected {
        /// Why.
        reason: CloseReason,
        /// When the session will ask for a new connection.
        retry_at: Instant,
    },
    /// A new command to run. Report its outcome with [`GatewaySession::report_outcome`].
    /// `received` has already been sent. A redelivery never shows up here twice.
    Command(Command),
    /// A policy update from the server; answer with a `policy_status` frame via
    /// [`GatewaySession::send`].
    PolicyUpdate(PolicyUpdate),
    /// The server answered a frame with an `error` frame.
    ServerError(ErrorFrame),
    /// A command that was running when the gateway last stopped was finished as `failed`
    /// (it is never run twice); the outcome goes to the server.
    CommandInterrupted {
        /// The command.
        id: CommandId,
    },
    /// Emitted by the tokio driver: a connection attempt failed (refused token, unreachable
    /// server, ...). The session retries after its backoff.
    ConnectFailed {
        /// What failed, including the HTTP status of a refused upgrade.
        reason: String,
    },
}

/// The session's connection state, from [`GatewaySession::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Waiting for the driver to open a connection.
    Connecting,
    /// Connected, `hello` sent, waiting for `welcome`.
    Handshaking,
    /// Welcomed: frames flow.
    Established {
        /// The server's session id.
        session_id: SessionId,
    },
    /// Down; a new connection is wanted at `retry_at`.
    Disconnected {
        /// When to try again.
        retry_at: Instant,
    },
    /// Closed for good by [`GatewaySession::close`].
    Stopped,
}

#[derive(Debug)]
struct Link {
    session_id: SessionId,
    interval: Duration,
    next_heartbeat_at: Instant,
    /// When the oldest heartbeat still waiting for its ack went out.
    unacked_since: Option<Instant>,
    last_sent_seq: u64,
}

#[derive(Debug)]
enum State {
    Connecting,
    Handshaking { since: Instant },
    Established(Link),
    Disconnected { retry_at: Instant },
    Stopped,
}

/// The gateway end of the control channel as a state machine: no I/O, no clock, no tokio.
///
/// # Calling it
///
/// The driver owns the connection and the timer, and loops:
///
/// 1. **Inputs**, as they happen: [`connected`](Self::connected) when a connection opened,
///    [`handle_frame`](Self::handle_frame) for each decoded frame,
///    [`disconnected`](Self::disconnected) when the connection failed or closed, and
///    [`handle_timeout`](Self::handle_timeout) when the instant from `poll_timeout` passed.
///    The application's calls ([`report_outcome`](Self::report_outcome),
///    [`send`](Self::send), [`set_status`](Self::set_status), ...) are inputs too.
/// 2. **Outputs**, after every input: drain [`poll_transmit`](Self::poll_transmit) (connect,
///    send, close) and [`poll_event`](Self::poll_event) until both return `None`, then arm the
///    timer from [`poll_timeout`](Self::poll_timeout).
///
/// Every input takes `now`; the session never reads a clock, so tests drive it through
/// virtual time. A new session starts by asking for a connection (`Transmit::Connect`).
///
/// # Behaviour
///
/// * `hello` (id, version range, capabilities, applied policies, last command id) →
///   `welcome` (session id, heartbeat interval, server time). A `welcome` with a version
///   outside ours closes the link.
/// * A heartbeat with the latest [`StatusSnapshot`] goes out at once and every interval; when
///   [`GatewaySessionConfig::missed_acks_before_dead`] intervals (2) pass without a
///   `heartbeat_ack`, the link is declared dead and closed.
/// * Reconnects wait for exponential backoff with full jitter ([`Backoff`]), reset by each
///   `welcome`.
/// * Frames produced while down wait in a bounded outbox and go out in order after the next
///   `welcome`. Command outcomes are also in the journal, so they survive a restart.
/// * Each new command is journaled, acknowledged `received` and handed to the application
///   once; a redelivery is answered from the journal. See [`super::journal`].
pub struct GatewaySession {
    config: GatewaySessionConfig,
    ledger: Ledger,
    state: State,
    backoff: Backoff,
    outbox: VecDeque<ControlFrame>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<GatewayEvent>,
    status: StatusSnapshot,
    applied_policies: Vec<AppliedPolicy>,
    last_command_id: Option<CommandId>,
    heartbeat_seq: u64,
    /// `(local instant, server ms)` at the last welcome or heartbeat ack.
    server_clock: Option<(Instant, i64)>,
    outbox_dropped: u64,
}

impl std::fmt::Debug for GatewaySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySession")
            .field("gateway_id", &self.config.gateway_id)
            .field("state", &self.state)
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

/// A status snapshot with every figure at zero, normal pressure and a healthy uplink: what
/// heartbeats carry until [`GatewaySession::set_status`] is called.
pub fn empty_status() -> StatusSnapshot {
    StatusSnapshot {
        cpu_percent: 0.0,
        memory_used_bytes: 0,
        memory_total_bytes: 0,
        disk_free_bytes: 0,
        disk_total_bytes: 0,
        buffer_records: 0,
        buffer_bytes: 0,
        buffer_pressure: BufferPressure::Normal,
        uplink_health: UplinkHealth::Healthy,
        connected_agents: 0,
        uptime_seconds: 0,
    }
}

impl GatewaySession {
    /// A session over `journal`. Commands the journal shows as still running were interrupted
    /// by a restart: they are finished as `failed` (and reported) instead of running again;
    /// pending outcomes wait in the outbox for the first `welcome`.
    pub fn new(config: GatewaySessionConfig, journal: impl CommandJournal) -> Result<Self, Error> {
        config.validate()?;
        let mut ledger = Ledger::new(Box::new(journal));
        let interrupted = ledger.recover()?;
        let outbox: VecDeque<ControlFrame> = ledger
            .pending()?
            .into_iter()
            .map(ControlFrame::CommandAck)
            .collect();
        let last_command_id = ledger.last_command_id()?;
        let events = interrupted
            .into_iter()
            .map(|id| GatewayEvent::CommandInterrupted { id })
            .collect();
        Ok(GatewaySession {
            backoff: Backoff::new(config.backoff.clone()),
            config,
            ledger,
            state: State::Connecting,
            outbox,
            transmits: VecDeque::from([Transmit::Connect]),
            events,
            status: empty_status(),
            applied_policies: Vec::new(),
            last_command_id,
            heartbeat_seq: 0,
            server_clock: None,
            outbox_dropped: 0,
        })
    }

    // ----- getters -----

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        match &self.state {
            State::Connecting => ConnectionState::Connecting,
            State::Handshaking { .. } => ConnectionState::Handshaking,
            State::Established(link) => ConnectionState::Established {
                session_id: link.session_id,
            },
            State::Disconnected { retry_at } => ConnectionState::Disconnected {
                retry_at: *retry_at,
            },
            State::Stopped => ConnectionState::Stopped,
        }
    }

    /// True when welcomed by the server.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Frames waiting for a connection.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Progress frames dropped because the outbox was full.
    pub fn outbox_dropped(&self) -> u64 {
        self.outbox_dropped
    }

    /// The config.
    pub fn config(&self) -> &GatewaySessionConfig {
        &self.config
    }

    /// The server's wall clock now (ms since the epoch), estimated from the last `welcome` or
    /// `heartbeat_ack`; `None` before the first `welcome`.
    pub fn server_time_ms(&self, now: Instant) -> Option<i64> {
        self.server_clock.map(|(at, server_ms)| {
            let elapsed = now.saturating_duration_since(at).as_millis();
            server_ms.saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX))
        })
    }

    // ----- inputs from the transport -----

    /// A connection is open: `hello` goes out.
    pub fn connected(&mut self, now: Instant) {
        if matches!(self.state, State::Stopped) {
            return;
        }
        self.transmits.retain(|t| !matches!(t, Transmit::Connect));
        self.state = State::Handshaking { since: now };
        let hello = Hello {
            gateway_id: self.config.gateway_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: MIN_PROTOCOL_VERSION,
            capabilities: self.config.capabilities.clone(),
            applied_policies: self.applied_policies.clone(),
            last_command_id: self.last_command_id,
            software: self.config.software.clone(),
        };
        self.transmits
            .push_back(Transmit::Frame(ControlFrame::Hello(hello)));
    }

    /// The connection failed to open, broke or was closed by the server. Frames not yet taken
    /// by the driver go back to the outbox; a reconnect is scheduled with backoff. Calling it
    /// when already down does nothing.
    pub fn disconnected(&mut self, now: Instant) {
        match self.state {
            State::Connecting | State::Handshaking { .. } | State::Established(_) => {
                self.go_down(now, CloseReason::ConnectionLost, false);
            }
            State::Disconnected { .. } | State::Stopped => {}
        }
    }

    /// A frame from the server. Errors are journal failures only: the command was then not
    /// taken (nothing was acknowledged) and the server will redeliver it.
    pub fn handle_frame(&mut self, now: Instant, frame: ControlFrame) -> Result<(), Error> {
        match frame {
            ControlFrame::Welcome(welcome) => self.on_welcome(now, welcome),
            ControlFrame::HeartbeatAck(ack) => {
                if let State::Established(link) = &mut self.state
                    && ack.seq <= link.last_sent_seq
                {
                    link.unacked_since = None;
                    self.server_clock = Some((now, ack.server_time_ms));
                }
            }
            ControlFrame::Command(command) => return self.on_command(now, command),
            ControlFrame::PolicyUpdate(update) => {
                if self.is_established() {
                    self.events.push_back(GatewayEvent::PolicyUpdate(update));
                } else {
                    self.reply_unexpected("policy_update before welcome");
                }
            }
            ControlFrame::Error(error) => self.events.push_back(GatewayEvent::ServerError(error)),
            other @ (ControlFrame::Hello(_)
            | ControlFrame::Heartbeat(_)
            | ControlFrame::CommandAck(_)
            | ControlFrame::PolicyStatus(_)) => {
                let what = format!("`{}` goes from gateway to server", other.frame_type());
                self.reply_unexpected(&what);
            }
        }
        Ok(())
    }

    /// A frame from the server could not be decoded: answer with an `error` frame.
    pub fn handle_decode_error(&mut self, error: &gateway_proto::Error) {
        let frame = ControlFrame::Error(ErrorFrame::from(error));
        self.transmit_or_drop(frame);
    }

    /// Time passed: reconnect when the backoff ran out, give up a handshake that took too
    /// long, send a heartbeat, or declare the link dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        let handshake_timeout = Duration::from_millis(self.config.handshake_timeout_ms);
        let missed = self.config.missed_acks_before_dead;
        match &mut self.state {
            State::Disconnected { retry_at } if now >= *retry_at => {
                self.state = State::Connecting;
                self.transmits.push_back(Transmit::Connect);
            }
            State::Handshaking { since } if now >= *since + handshake_timeout => {
                self.go_down(now, CloseReason::HandshakeTimeout, true);
            }
            State::Established(link) => {
                let dead_after = link.interval.saturating_mul(missed);
                if let Some(since) = link.unacked_since
                    && now >= since + dead_after
                {
                    metrics::counter!("gateway_control_gateway_link_dead_total").increment(1);
                    self.go_down(
                        now,
                        CloseReason::LinkDead {
                            missed_acks: missed,
                        },
                        true,
                    );
                    return;
                }
                if now >= link.next_heartbeat_at {
                    self.heartbeat_seq += 1;
                    link.last_sent_seq = self.heartbeat_seq;
                    link.unacked_since.get_or_insert(now);
                    link.next_heartbeat_at = now + link.interval;
                    let heartbeat = Heartbeat {
                        seq: self.heartbeat_seq,
                        status: self.status.clone(),
                    };
                    self.transmits
                        .push_back(Transmit::Frame(ControlFrame::Heartbeat(heartbeat)));
                }
            }
            _ => {}
        }
    }

    // ----- inputs from the application -----

    /// The status the next heartbeats carry.
    pub fn set_status(&mut self, status: StatusSnapshot) {
        self.status = status;
    }

    /// The policies the gateway runs, announced in the next `hello`.
    pub fn set_applied_policies(&mut self, policies: Vec<AppliedPolicy>) {
        self.applied_policies = policies;
    }

    /// Report progress of a running command (`in_progress`; restarts the server's step
    /// timer). While down, progress waits in the outbox if there is room, else it is dropped.
    pub fn report_progress(&mut self, id: CommandId, detail: Option<String>) -> Result<(), Error> {
        let ack = self.ledger.progress(id, detail)?;
        let frame = ControlFrame::CommandAck(ack);
        if self.is_established() {
            self.transmits.push_back(Transmit::Frame(frame));
        } else if self.outbox.len() < self.config.outbox_capacity {
            self.outbox.push_back(frame);
        } else {
            self.outbox_dropped += 1;
        }
        Ok(())
    }

    /// Report the final outcome of a command. It is journaled first, then sent (or queued
    /// until the next `welcome`). Fails for an unknown or already finished command.
    pub fn report_outcome(&mut self, id: CommandId, outcome: Outcome) -> Result<(), Error> {
        let ack = self.ledger.outcome(id, &outcome)?;
        self.send_or_queue(ControlFrame::CommandAck(ack));
        Ok(())
    }

    /// Send a gateway → server frame the session does not produce itself, e.g.
    /// `policy_status` or `error`. While down it waits in the outbox; a full outbox refuses it.
    pub fn send(&mut self, frame: ControlFrame) -> Result<(), Error> {
        match &frame {
            ControlFrame::PolicyStatus(_) | ControlFrame::Error(_) => {}
            ControlFrame::CommandAck(_) => {
                return Err(Error::FrameNotAllowed {
                    frame_type: "command_ack",
                    reason: "use report_progress or report_outcome, which journal the outcome",
                });
            }
            other => {
                return Err(Error::FrameNotAllowed {
                    frame_type: other.frame_type(),
                    reason: "the session sends hello and heartbeat itself; the others go from server to gateway",
                });
            }
        }
        if !self.is_established() && self.outbox.len() >= self.config.outbox_capacity {
            return Err(Error::OutboxFull {
                capacity: self.config.outbox_capacity,
            });
        }
        self.send_or_queue(frame);
        Ok(())
    }

    /// Close for good: the connection is closed and never reopened.
    pub fn close(&mut self) {
        if !matches!(self.state, State::Stopped) {
            self.state = State::Stopped;
            self.transmits
                .push_back(Transmit::Close(CloseReason::Requested));
        }
    }

    // ----- outputs -----

    /// The next thing to do on the wire. Taking a command outcome marks it sent in the journal.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.transmits.pop_front()?;
        if let Transmit::Frame(ControlFrame::CommandAck(ack)) = &transmit
            && ack.state.is_terminal()
            && let Err(e) = self.ledger.ack_sent(&ack.id)
        {
            // Harmless: the outcome is re-sent from the journal after a restart, and the
            // server redelivers unfinished commands anyway.
            tracing::warn!(command = %ack.id, error = %e, "could not mark an outcome as sent");
        }
        Some(transmit)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<GatewayEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` while
    /// connecting (the driver owns that timeout) or stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting | State::Stopped => None,
            State::Disconnected { retry_at } => Some(*retry_at),
            State::Handshaking { since } => {
                Some(*since + Duration::from_millis(self.config.handshake_timeout_ms))
            }
            State::Established(link) => {
                let dead = link.unacked_since.map(|since| {
                    since
                        + link
                            .interval
                            .saturating_mul(self.config.missed_acks_before_dead)
                });
                Some(match dead {
                    Some(dead) => dead.min(link.next_heartbeat_at),
                    None => link.next_heartbeat_at,
                })
            }
        }
    }

    // ----- internals -----

    fn on_welcome(&mut self, now: Instant, welcome: Welcome) {
        if !matches!(self.state, State::Handshaking { .. }) {
            self.reply_unexpected("welcome outside the handshake");
            return;
        }
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.protocol_version) {
            let error = ErrorFrame::new(
                ErrorCode::UnsupportedProtocolVersion,
                format!(
                    "welcome chose protocol version {}, this gateway speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
                    welcome.protocol_version
                ),
            );
            self.transmits
                .push_back(Transmit::Frame(ControlFrame::Error(error)));
            self.go_down(now, CloseReason::UnsupportedVersion, true);
            return;
        }
        let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(1));
        self.state = State::Established(Link {
            session_id: welcome.session_id,
            interval,
            next_heartbeat_at: now,
            unacked_since: None,
            last_sent_seq: self.heartbeat_seq,
        });
        self.server_clock = Some((now, welcome.server_time_ms));
        self.backoff.reset();
        self.events.push_back(GatewayEvent::Connected {
            session_id: welcome.session_id,
            protocol_version: welcome.protocol_version,
            heartbeat_interval: interval,
        });
        // The first heartbeat goes out at once, ahead of the backlog, so the server sees the
        // gateway's status straight away.
        self.handle_timeout(now);
        while let Some(frame) = self.outbox.pop_front() {
            self.transmits.push_back(Transmit::Frame(frame));
        }
    }

    fn on_command(&mut self, now: Instant, command: Command) -> Result<(), Error> {
        if !self.is_established() {
            self.reply_unexpected("command before welcome");
            return Ok(());
        }
        self.last_command_id = Some(command.id);
        match self.ledger.on_command(command, self.server_time_ms(now))? {
            Incoming::New(command) => {
                let received = CommandAck {
                    id: command.id,
                    state: gateway_proto::CommandAckState::Received,
                    detail: None,
                    result: None,
                };
                self.transmits
                    .push_back(Transmit::Frame(ControlFrame::CommandAck(received)));
                self.events.push_back(GatewayEvent::Command(*command));
            }
            Incoming::Known(answer) => self.send_or_queue(ControlFrame::CommandAck(answer)),
        }
        Ok(())
    }

    fn send_or_queue(&mut self, frame: ControlFrame) {
        if self.is_established() {
            self.transmits.push_back(Transmit::Frame(frame));
        } else {
            self.outbox.push_back(frame);
        }
    }

    fn transmit_or_drop(&mut self, frame: ControlFrame) {
        if matches!(
            self.state,
            State::Handshaking { .. } | State::Established(_)
        ) {
            self.transmits.push_back(Transmit::Frame(frame));
        }
    }

    fn reply_unexpected(&mut self, what: &str) {
        let frame = ControlFrame::Error(ErrorFrame::new(
            ErrorCode::UnexpectedFrame,
            format!("unexpected frame: {what}"),
        ));
        self.transmit_or_drop(frame);
    }

    /// Leave the connected states: requeue unsent frames, schedule the next attempt.
    fn go_down(&mut self, now: Instant, reason: CloseReason, close: bool) {
        let mut requeue = Vec::new();
        let mut kept = VecDeque::new();
        for transmit in self.transmits.drain(..) {
            match transmit {
                Transmit::Frame(ControlFrame::Hello(_) | ControlFrame::Heartbeat(_)) => {}
                Transmit::Frame(ControlFrame::CommandAck(ack))
                    if ack.state == gateway_proto::CommandAckState::Received => {}
                Transmit::Frame(frame @ ControlFrame::Error(_)) if close => {
                    // The closing error goes out before the close.
                    kept.push_back(Transmit::Frame(frame));
                }
                Transmit::Frame(ControlFrame::Error(_)) => {}
                Transmit::Frame(frame) => requeue.push(frame),
                Transmit::Connect | Transmit::Close(_) => {}
            }
        }
        for frame in requeue.into_iter().rev() {
            self.outbox.push_front(frame);
        }
        self.transmits = kept;
        if close {
            self.transmits.push_back(Transmit::Close(reason.clone()));
        }
        let retry_at = now + self.backoff.next_delay();
        self.state = State::Disconnected { retry_at };
        metrics::counter!("gateway_control_gateway_disconnects_total").increment(1);
        self.events
            .push_back(GatewayEvent::Disconnected { reason, retry_at });
    }
}

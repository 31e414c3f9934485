//! [`ServerSession`]: the server end of one control connection, without I/O.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_proto::auth::Principal;
use gateway_proto::clock::Clock;
use gateway_proto::{
    CommandAck, ControlFrame, ErrorCode, ErrorFrame, Heartbeat, HeartbeatAck, Hello, SessionId,
    StatusSnapshot, Welcome, negotiate_version,
};
use serde::{Deserialize, Serialize};

use crate::{CloseReason, Error};

/// Settings of a [`ServerSession`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSessionConfig {
    /// Heartbeat interval told to gateways in `welcome`, ms. Default 30,000.
    pub heartbeat_interval_ms: u64,
    /// A gateway silent for this many intervals is dropped (and marked offline). Default 1.5,
    /// the MQTT keep-alive rule.
    pub offline_after_intervals: f64,
    /// How long a new connection may take to send `hello`, ms. Default 10,000.
    pub handshake_timeout_ms: u64,
}

impl Default for ServerSessionConfig {
    fn default() -> Self {
        ServerSessionConfig {
            heartbeat_interval_ms: 30_000,
            offline_after_intervals: 1.5,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl ServerSessionConfig {
    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat_interval_ms == 0 {
            return Err(Error::InvalidConfig {
                param: "heartbeat_interval_ms",
                reason: "must be at least 1".into(),
            });
        }
        if !(self.offline_after_intervals.is_finite() && self.offline_after_intervals >= 1.0) {
            return Err(Error::InvalidConfig {
                param: "offline_after_intervals",
                reason: format!(
                    "must be a number of at least 1.0, got {}",
                    self.offline_after_intervals
                ),
            });
        }
        if self.handshake_timeout_ms == 0 {
            return Err(Error::InvalidConfig {
                param: "handshake_timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// How long a gateway may stay silent: `offline_after_intervals × heartbeat_interval_ms`.
    pub fn silence_limit(&self) -> Duration {
        Duration::from_secs_f64(
            self.heartbeat_interval_ms as f64 / 1000.0 * self.offline_after_intervals,
        )
    }
}

/// What the driver must do on the wire, from [`ServerSession::poll_transmit`].
#[derive(Debug, Clone, PartialEq)]
pub enum ServerTransmit {
    /// Send this frame.
    Frame(ControlFrame),
    /// Close the connection (after sending the frames before it).
    Close(CloseReason),
}

/// What happened, for the server, from [`ServerSession::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// `hello` was accepted and `welcome` sent.
    Established {
        /// The gateway's `hello` (its applied policies, capabilities, last command id).
        hello: Box<Hello>,
        /// The session id sent in `welcome`.
        session_id: SessionId,
        /// The negotiated protocol version.
        protocol_version: u32,
    },
    /// A heartbeat (already answered).
    Heartbeat {
        /// Its sequence number.
        seq: u64,
        /// The gateway's status.
        status: Box<StatusSnapshot>,
    },
    /// The gateway acknowledged a command.
    CommandAck(CommandAck),
    /// A gateway → server frame the session does not handle itself (`policy_status`, `error`).
    Frame(ControlFrame),
    /// The session ended; no more frames flow.
    Closed {
        /// Why.
        reason: CloseReason,
        /// True when the session had been established.
        was_established: bool,
    },
}

#[derive(Debug)]
enum State {
    AwaitingHello { since: Instant },
    Established { last_frame_at: Instant },
    Closed,
}

/// The server end of one control connection as a state machine: no I/O, no tokio; wall-clock
/// time for `welcome` and `heartbeat_ack` comes from an injected [`Clock`].
///
/// # Calling it
///
/// Create it when a WebSocket upgrade was authenticated, with the [`Principal`] of the token
/// (never with what `hello` claims). Then:
///
/// 1. **Inputs**: [`connected`](Self::connected) once, [`handle_frame`](Self::handle_frame)
///    for each decoded frame, [`handle_decode_error`](Self::handle_decode_error) for bytes that
///    did not decode, [`handle_timeout`](Self::handle_timeout) when `poll_timeout` passed,
///    [`disconnected`](Self::disconnected) when the transport closed, and
///    [`send`](Self::send) for server → gateway frames (commands, policy updates).
/// 2. **Outputs**, after every input: drain [`poll_transmit`](Self::poll_transmit) and
///    [`poll_event`](Self::poll_event), then arm the timer from
///    [`poll_timeout`](Self::poll_timeout).
///
/// # Behaviour
///
/// * `hello` whose `gateway_id` differs from the principal: `error` (`identity_mismatch`) and
///   close. A gateway the server refused up front ([`refuse_hello`](Self::refuse_hello), e.g.
///   because its gateway directory places it in another tenant than its token): the given
///   `error` and close. No common version: `error` (`unsupported_protocol_version`) and close.
///   Otherwise `welcome` with the heartbeat interval and [`ServerEvent::Established`].
/// * Each `heartbeat` is answered with `heartbeat_ack`. Any frame counts as a sign of life; a
///   gateway silent for [`ServerSessionConfig::silence_limit`] is closed ([`CloseReason::Silent`]).
/// * Frames that are out of place (before `hello`, a second `hello`, server → gateway types)
///   and undecodable bytes get an `error` frame; the connection stays up.
pub struct ServerSession {
    config: ServerSessionConfig,
    principal: Principal,
    session_id: SessionId,
    clock: Arc<dyn Clock>,
    state: State,
    refusal: Option<Refusal>,
    transmits: VecDeque<ServerTransmit>,
    events: VecDeque<ServerEvent>,
}

/// Why the next `hello` will be refused.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
    reason: CloseReason,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("gateway", &self.principal.subject)
            .field("session_id", &self.session_id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    /// A session for the gateway authenticated as `principal`; `now` starts the handshake
    /// timer.
    pub fn new(
        config: ServerSessionConfig,
        principal: Principal,
        session_id: SessionId,
        clock: Arc<dyn Clock>,
        now: Instant,
    ) -> Self {
        ServerSession {
            config,
            principal,
            session_id,
            clock,
            state: State::AwaitingHello { since: now },
            refusal: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ----- getters -----

    /// The gateway id (from the credentials).
    pub fn gateway_id(&self) -> &str {
        &self.principal.subject
    }

    /// The principal of the connection.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// True after an accepted `hello`, until closed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    // ----- inputs -----

    /// The connection is open (restarts the handshake timer at `now`).
    pub fn connected(&mut self, now: Instant) {
        if let State::AwaitingHello { since } = &mut self.state {
            *since = now;
        }
    }

    /// A decoded frame from the gateway.
    pub fn handle_frame(&mut self, now: Instant, frame: ControlFrame) {
        match &mut self.state {
            State::Closed => return,
            State::Established { last_frame_at } => *last_frame_at = now,
            State::AwaitingHello { .. } => {}
        }
        match frame {
            ControlFrame::Hello(hello) => self.on_hello(now, hello),
            _ if !self.is_established() => {
                self.reply(
                    ErrorCode::UnexpectedFrame,
                    format!("`{}` before hello: send hello first", frame.frame_type()),
                );
            }
            ControlFrame::Heartbeat(Heartbeat { seq, status }) => {
                let ack = HeartbeatAck {
                    seq,
                    server_time_ms: self.clock.now_ms(),
                };
                self.transmits
                    .push_back(ServerTransmit::Frame(ControlFrame::HeartbeatAck(ack)));
                self.events.push_back(ServerEvent::Heartbeat {
                    seq,
                    status: Box::new(status),
                });
            }
            ControlFrame::CommandAck(ack) => self.events.push_back(ServerEvent::CommandAck(ack)),
            frame @ (ControlFrame::PolicyStatus(_) | ControlFrame::Error(_)) => {
                self.events.push_back(ServerEvent::Frame(frame));
            }
            other @ (ControlFrame::Welcome(_)
            | ControlFrame::HeartbeatAck(_)
            | ControlFrame::Command(_)
            | ControlFrame::PolicyUpdate(_)) => {
                self.reply(
                    ErrorCode::UnexpectedFrame,
                    format!("`{}` goes from server to gateway", other.frame_type()),
                );
            }
        }
    }

    /// Bytes from the gateway that did not decode: answer with an `error` frame (code
    /// `unknown_frame`, `malformed_frame` or `payload_too_large`); the connection stays up.
    pub fn handle_decode_error(&mut self, now: Instant, error: &gateway_proto::Error) {
        if let State::Established { last_frame_at } = &mut self.state {
            *last_frame_at = now;
        }
        if !self.is_closed() {
            self.transmits
                .push_back(ServerTransmit::Frame(ControlFrame::Error(
                    ErrorFrame::from(error),
                )));
        }
    }

    /// Time passed: close a connection that never said `hello`, or a gateway gone silent.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
        {
            let reason = match self.state {
                State::AwaitingHello { .. } => CloseReason::HandshakeTimeout,
                _ => CloseReason::Silent,
            };
            self.close(reason);
        }
    }

    /// The transport closed. Does nothing when the session already closed itself.
    pub fn disconnected(&mut self, _now: Instant) {
        if !self.is_closed() {
            let was_established = self.is_established();
            self.state = State::Closed;
            self.events.push_back(ServerEvent::Closed {
                reason: CloseReason::ConnectionLost,
                was_established,
            });
        }
    }

    /// Send a server → gateway frame: `command`, `policy_update` or `error`.
    pub fn send(&mut self, frame: ControlFrame) -> Result<(), Error> {
        match &frame {
            ControlFrame::Command(_) | ControlFrame::PolicyUpdate(_) | ControlFrame::Error(_) => {}
            other => {
                return Err(Error::FrameNotAllowed {
                    frame_type: other.frame_type(),
                    reason: "the session sends welcome and heartbeat_ack itself; the others go from gateway to server",
                });
            }
        }
        if !self.is_established() {
            return Err(Error::NotEstablished {
                reason: "no hello accepted yet, or already closed",
            });
        }
        self.transmits.push_back(ServerTransmit::Frame(frame));
        Ok(())
    }

    /// Refuse the handshake: the gateway's `hello` will be answered with an `error` frame
    /// (`code`, `message`) and the session closed with `reason`, instead of `welcome`. For a
    /// check the server makes on the credentials before the handshake — the
    /// [`super::Hub`] refuses a gateway whose token names a tenant its gateway directory does
    /// not place it in (`forbidden`, [`CloseReason::NotProvisioned`]). A `hello` naming
    /// another gateway is still answered `identity_mismatch` first.
    pub fn refuse_hello(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        reason: CloseReason,
    ) {
        self.refusal = Some(Refusal {
            code,
            message: message.into(),
            reason,
        });
    }

    /// Send an `error` frame, then close the session for `reason` (a session the server
    /// cannot keep, e.g. one presence refused after the handshake).
    pub fn close_with_error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        reason: CloseReason,
    ) {
        if self.is_closed() {
            return;
        }
        self.reply(code, message.into());
        self.close(reason);
    }

    /// Close the session for `reason` (e.g. [`CloseReason::Superseded`]).
    pub fn close(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        let was_established = self.is_established();
        self.state = State::Closed;
        self.transmits
            .push_back(ServerTransmit::Close(reason.clone()));
        self.events.push_back(ServerEvent::Closed {
            reason,
            was_established,
        });
    }

    // ----- outputs -----

    /// The next thing to do on the wire.
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        self.transmits.pop_front()
    }

    /// The next event for the server.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHello { since } => {
                Some(since + Duration::from_millis(self.config.handshake_timeout_ms))
            }
            State::Established { last_frame_at } => {
                Some(last_frame_at + self.config.silence_limit())
            }
            State::Closed => None,
        }
    }

    // ----- internals -----

    fn on_hello(&mut self, now: Instant, hello: Hello) {
        if self.is_established() {
            self.reply(
                ErrorCode::UnexpectedFrame,
                "a second hello in one session".into(),
            );
            return;
        }
        if hello.gateway_id != self.principal.subject {
            metrics::counter!("gateway_control_server_identity_mismatches_total").increment(1);
            self.reply(
                ErrorCode::IdentityMismatch,
                format!(
                    "hello names gateway `{}` but the token belongs to `{}`",
                    hello.gateway_id, self.principal.subject
                ),
            );
            self.close(CloseReason::IdentityMismatch);
            return;
        }
        if let Some(refusal) = self.refusal.take() {
            metrics::counter!("gateway_control_server_sessions_refused_total").increment(1);
            self.close_with_error(refusal.code, refusal.message, refusal.reason);
            return;
        }
        let version = match negotiate_version(hello.min_protocol_version, hello.protocol_version) {
            Ok(version) => version,
            Err(e) => {
                self.reply(ErrorCode::UnsupportedProtocolVersion, e.to_string());
                self.close(CloseReason::UnsupportedVersion);
                return;
            }
        };
        self.state = State::Established { last_frame_at: now };
        let welcome = Welcome {
            session_id: self.session_id,
            protocol_version: version,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            server_time_ms: self.clock.now_ms(),
        };
        self.transmits
            .push_back(ServerTransmit::Frame(ControlFrame::Welcome(welcome)));
        self.events.push_back(ServerEvent::Established {
            hello: Box::new(hello),
            session_id: self.session_id,
            protocol_version: version,
        });
    }

    fn reply(&mut self, code: ErrorCode, message: String) {
        self.transmits
            .push_back(ServerTransmit::Frame(ControlFrame::Error(ErrorFrame::new(
                code, message,
            ))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::auth::Role;
    use gateway_proto::clock::ManualClock;
    use gateway_proto::{ErrorCode, PROTOCOL_VERSION};

    fn session(now: Instant) -> ServerSession {
        ServerSession::new(
            ServerSessionConfig {
                heartbeat_interval_ms: 1_000,
                offline_after_intervals: 1.5,
                handshake_timeout_ms: 500,
            },
            Principal::new("acme", "gw-1", Role::Gateway),
            SessionId::new_v7(),
            Arc::new(ManualClock::new(42)),
            now,
        )
    }

    fn hello(id: &str, min: u32, max: u32) -> ControlFrame {
        ControlFrame::Hello(Hello {
            gateway_id: id.into(),
            protocol_version: max,
            min_protocol_version: min,
            capabilities: vec![],
            applied_policies: vec![],
            last_command_id: None,
            software: "t".into(),
        })
    }

    fn drain(s: &mut ServerSession) -> Vec<ServerTransmit> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn error_code(t: &ServerTransmit) -> ErrorCode {
        match t {
            ServerTransmit::Frame(ControlFrame::Error(e)) => e.code.clone(),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    #[test]
    fn welcome_carries_the_negotiated_version_interval_and_server_time() {
        let now = Instant::now();
        let mut s = session(now);
        s.handle_frame(now, hello("gw-1", 1, PROTOCOL_VERSION + 5));
        let out = drain(&mut s);
        let ServerTransmit::Frame(ControlFrame::Welcome(w)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(w.protocol_version, PROTOCOL_VERSION);
        assert_eq!(w.heartbeat_interval_ms, 1_000);
        assert_eq!(w.server_time_ms, 42);
        assert!(matches!(
            s.poll_event(),
            Some(ServerEvent::Established { .. })
        ));
    }

    #[test]
    fn identity_mismatch_and_version_mismatch_close_after_an_error_frame() {
        let now = Instant::now();
        let mut s = session(now);
        s.handle_frame(now, hello("gw-2", 1, PROTOCOL_VERSION));
        let out = drain(&mut s);
        assert_eq!(error_code(&out[0]), ErrorCode::IdentityMismatch);
        assert_eq!(out[1], ServerTransmit::Close(CloseReason::IdentityMismatch));
        assert!(s.is_closed());

        let mut s = session(now);
        s.handle_frame(
            now,
            hello("gw-1", PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2),
        );
        let out = drain(&mut s);
        assert_eq!(error_code(&out[0]), ErrorCode::UnsupportedProtocolVersion);
        assert_eq!(
            out[1],
            ServerTransmit::Close(CloseReason::UnsupportedVersion)
        );
    }

    #[test]
    fn out_of_place_frames_get_errors_and_the_session_stays_up() {
        let now = Instant::now();
        let mut s = session(now);
        let heartbeat = ControlFrame::Heartbeat(Heartbeat {
            seq: 1,
            status: crate::gateway::empty_status(),
        });
        s.handle_frame(now, heartbeat.clone());
        assert_eq!(error_code(&drain(&mut s)[0]), ErrorCode::UnexpectedFrame);
        s.handle_frame(now, hello("gw-1", 1, PROTOCOL_VERSION));
        drain(&mut s);
        s.handle_frame(now, hello("gw-1", 1, PROTOCOL_VERSION));
        assert_eq!(error_code(&drain(&mut s)[0]), ErrorCode::UnexpectedFrame);
        let welcome = ControlFrame::Welcome(Welcome {
            session_id: SessionId::new_v7(),
            protocol_version: 1,
            heartbeat_interval_ms: 1,
            server_time_ms: 0,
        });
        s.handle_frame(now, welcome);
        assert_eq!(error_code(&drain(&mut s)[0]), ErrorCode::UnexpectedFrame);
        let garbage = gateway_proto::decode_frame(
            b"{\"type\":\"nope\"}",
            gateway_proto::Encoding::Json,
            &Default::default(),
        )
        .unwrap_err();
        s.handle_decode_error(now, &garbage);
        assert_eq!(error_code(&drain(&mut s)[0]), ErrorCode::UnknownFrame);
        s.handle_frame(now, heartbeat);
        assert!(matches!(
            drain(&mut s)[0],
            ServerTransmit::Frame(ControlFrame::HeartbeatAck(_))
        ));
        assert!(s.is_established());
    }

    #[test]
    fn silence_and_missing_hello_close_on_time() {
        let now = Instant::now();
        let mut s = session(now);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_millis(500)));
        s.handle_timeout(now + Duration::from_millis(499));
        assert!(!s.is_closed());
        s.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(
            drain(&mut s),
            [ServerTransmit::Close(CloseReason::HandshakeTimeout)]
        );

        let mut s = session(now);
        s.handle_frame(now, hello("gw-1", 1, PROTOCOL_VERSION));
        let later = now + Duration::from_millis(800);
        s.handle_frame(
            later,
            ControlFrame::PolicyStatus(gateway_proto::PolicyStatus {
                name: "p".into(),
                version: 1,
                state: gateway_proto::PolicyState::Applied,
                reason: None,
                code: None,
                running_version: None,
            }),
        );
        // Any frame is a sign of life: the limit runs from the last one.
        assert_eq!(s.poll_timeout(), Some(later + Duration::from_millis(1_500)));
        s.handle_timeout(later + Duration::from_millis(1_500));
        assert!(s.is_closed());
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(matches!(
            events.last(),
            Some(ServerEvent::Closed {
                reason: CloseReason::Silent,
                was_established: true
            })
        ));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ServerEvent::Frame(ControlFrame::PolicyStatus(_))))
        );
    }

    #[test]
    fn only_server_to_gateway_frames_can_be_sent_and_only_when_established() {
        let now = Instant::now();
        let mut s = session(now);
        let update = ControlFrame::Error(gateway_proto::ErrorFrame::new(ErrorCode::Internal, "x"));
        assert!(matches!(
            s.send(update.clone()),
            Err(Error::NotEstablished { .. })
        ));
        s.handle_frame(now, hello("gw-1", 1, PROTOCOL_VERSION));
        assert!(s.send(update).is_ok());
        assert!(matches!(
            s.send(hello("gw-1", 1, 1)),
            Err(Error::FrameNotAllowed {
                frame_type: "hello",
                ..
            })
        ));
    }

    #[test]
    fn a_refused_gateway_gets_the_error_and_a_close_instead_of_welcome() {
        let now = Instant::now();
        let mut s = session(now);
        s.refuse_hello(
            ErrorCode::Forbidden,
            "gateway `gw-1` is not provisioned in tenant `acme`",
            CloseReason::NotProvisioned,
        );
        // Nothing happens before the hello.
        assert!(drain(&mut s).is_empty());
        s.handle_frame(now, hello("gw-1", 1, PROTOCOL_VERSION));
        let out = drain(&mut s);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(error_code(&out[0]), ErrorCode::Forbidden);
        assert_eq!(out[1], ServerTransmit::Close(CloseReason::NotProvisioned));
        assert!(s.is_closed());
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(
            events,
            [ServerEvent::Closed {
                reason: CloseReason::NotProvisioned,
                was_established: false
            }]
        );

        // An identity mismatch is still reported as such.
        let mut s = session(now);
        s.refuse_hello(ErrorCode::Forbidden, "no", CloseReason::NotProvisioned);
        s.handle_frame(now, hello("gw-2", 1, PROTOCOL_VERSION));
        assert_eq!(error_code(&drain(&mut s)[0]), ErrorCode::IdentityMismatch);
    }
}

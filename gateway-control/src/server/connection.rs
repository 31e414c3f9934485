//! [`ServerConnection`]: a [`ServerSession`] wired to the [`ControlPlane`], still without
//! I/O — what the [`super::Hub`] runs per WebSocket, and what tests drive in memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use gateway_proto::{Command, ControlFrame, ErrorFrame, Hello, SessionId};

use super::plane::{ControlPlane, PlaneRequest};
use super::queue::Resend;
use super::session::{ServerEvent, ServerSession};
use crate::{CloseReason, Error};

/// What a connection tells the application, from [`ServerConnection::drive`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The session was established and registered in presence under `epoch`.
    Established {
        /// The session.
        session_id: SessionId,
        /// Its presence epoch.
        epoch: u64,
        /// The gateway's `hello`.
        hello: Arc<Hello>,
    },
    /// A gateway → server frame for the application (`policy_status`, `error`).
    Frame(ControlFrame),
    /// The session ended (presence already updated).
    Closed {
        /// Its epoch, if it was established.
        epoch: Option<u64>,
        /// Why.
        reason: CloseReason,
    },
}

/// A [`ServerSession`] plus the glue to the control plane: an accepted `hello` starts presence
/// and asks for every unfinished command again; heartbeats update presence; acknowledgements
/// become queue requests; the end of the session updates presence.
///
/// # Calling it
///
/// After every input to the session: [`drive`](Self::drive) (presence and events), then
/// answer each [`poll_request`](Self::poll_request) with [`ControlPlane::apply`] and hand the
/// answer to [`handle_reply`](Self::handle_reply) — in order; the hub batches many
/// connections' requests into one transaction — then drain the session's transmits.
/// [`run_requests`](Self::run_requests) does the request step synchronously.
#[derive(Debug)]
pub struct ServerConnection {
    session: ServerSession,
    epoch: Option<u64>,
    requests: VecDeque<PlaneRequest>,
}

impl ServerConnection {
    /// Wrap a new session.
    pub fn new(session: ServerSession) -> Self {
        ServerConnection {
            session,
            epoch: None,
            requests: VecDeque::new(),
        }
    }

    /// The session.
    pub fn session(&self) -> &ServerSession {
        &self.session
    }

    /// The session, for inputs.
    pub fn session_mut(&mut self) -> &mut ServerSession {
        &mut self.session
    }

    /// The presence epoch, once established.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Send commands over the session; ones that cannot go now stay unconfirmed in the queue
    /// and are redelivered.
    pub fn send_commands(&mut self, commands: Vec<Command>) {
        for command in commands {
            if let Err(e) = self.session.send(ControlFrame::Command(command)) {
                tracing::debug!(error = %e, "command not sent now; it will be redelivered");
            }
        }
    }

    /// Ask for whatever queued commands fit the in-flight window now.
    pub fn request_delivery(&mut self) {
        if self.session.is_established() {
            self.requests.push_back(PlaneRequest::Deliver {
                gateway_id: self.session.gateway_id().to_owned(),
                resend: Resend::Nothing,
            });
        }
    }

    /// The next queue request to answer with [`ControlPlane::apply`].
    pub fn poll_request(&mut self) -> Option<PlaneRequest> {
        self.requests.pop_front()
    }

    /// The answer to the oldest request: commands to send, or an error for the gateway.
    pub fn handle_reply(&mut self, reply: Result<Vec<Command>, Error>) {
        match reply {
            Ok(commands) => self.send_commands(commands),
            Err(e) => {
                let frame = ControlFrame::Error(ErrorFrame::new(e.code(), e.to_string()));
                let _ = self.session.send(frame);
            }
        }
    }

    /// Answer every pending request now, one transaction each.
    pub fn run_requests(&mut self, plane: &ControlPlane) {
        while let Some(request) = self.poll_request() {
            let reply = plane
                .apply(vec![request])
                .pop()
                .unwrap_or_else(|| Ok(Vec::new()));
            self.handle_reply(reply);
        }
    }

    /// Apply the session's pending events to presence; queue what needs the command queue;
    /// return the events for the application.
    pub fn drive(
        &mut self,
        plane: &ControlPlane,
        heartbeat_interval_ms: u64,
    ) -> Vec<ConnectionEvent> {
        let mut out = Vec::new();
        while let Some(event) = self.session.poll_event() {
            let gateway_id = self.session.gateway_id().to_owned();
            match event {
                ServerEvent::Established {
                    hello, session_id, ..
                } => {
                    let epoch = plane.session_started(
                        self.session.principal(),
                        &hello,
                        session_id,
                        heartbeat_interval_ms,
                    );
                    self.epoch = Some(epoch);
                    out.push(ConnectionEvent::Established {
                        session_id,
                        epoch,
                        hello: Arc::from(hello),
                    });
                    self.requests.push_back(PlaneRequest::Deliver {
                        gateway_id,
                        resend: Resend::Unfinished,
                    });
                }
                ServerEvent::Heartbeat { status, .. } => {
                    if let Some(epoch) = self.epoch {
                        plane.seen(&gateway_id, epoch, Some(*status));
                    }
                }
                ServerEvent::CommandAck(ack) => {
                    if let Some(epoch) = self.epoch {
                        plane.seen(&gateway_id, epoch, None);
                    }
                    self.requests
                        .push_back(PlaneRequest::Ack { gateway_id, ack });
                }
                ServerEvent::Frame(frame) => out.push(ConnectionEvent::Frame(frame)),
                ServerEvent::Closed { reason, .. } => {
                    if let Some(epoch) = self.epoch {
                        plane.session_ended(&gateway_id, epoch, &reason.to_string());
                    }
                    self.requests.clear();
                    out.push(ConnectionEvent::Closed {
                        epoch: self.epoch,
                        reason,
                    });
                }
            }
        }
        out
    }

    /// The transport closed.
    pub fn disconnected(&mut self, now: Instant) {
        self.session.disconnected(now);
    }
}

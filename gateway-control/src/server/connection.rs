//! [`ServerConnection`]: a [`ServerSession`] wired to the [`ControlPlane`], still without
//! I/O — what the [`super::Hub`] runs per WebSocket, and what tests drive in memory.

use std::sync::Arc;
use std::time::Instant;

use gateway_proto::{Command, ControlFrame, ErrorFrame, Hello, SessionId};

use super::plane::ControlPlane;
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
/// and resends unfinished commands; heartbeats update presence; acknowledgements move
/// commands (and pull the next ones); the end of the session updates presence.
///
/// Call [`drive`](Self::drive) after every input to the session, then drain the session's
/// transmits.
#[derive(Debug)]
pub struct ServerConnection {
    session: ServerSession,
    epoch: Option<u64>,
}

impl ServerConnection {
    /// Wrap a new session.
    pub fn new(session: ServerSession) -> Self {
        ServerConnection {
            session,
            epoch: None,
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

    /// Deliver whatever queued commands fit the in-flight window now.
    pub fn deliver(&mut self, plane: &ControlPlane) {
        if self.session.is_established() {
            match plane.deliverable(self.session.gateway_id()) {
                Ok(commands) => self.send_commands(commands),
                Err(e) => tracing::error!(error = %e, "could not take commands for delivery"),
            }
        }
    }

    fn reply_error(&mut self, error: &Error) {
        let frame = ControlFrame::Error(ErrorFrame::new(error.code(), error.to_string()));
        let _ = self.session.send(frame);
    }

    /// Apply the session's pending events to `plane`; returns the events for the application.
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
                } => match plane.session_started(
                    self.session.principal(),
                    &hello,
                    session_id,
                    heartbeat_interval_ms,
                ) {
                    Ok((epoch, commands)) => {
                        self.epoch = Some(epoch);
                        out.push(ConnectionEvent::Established {
                            session_id,
                            epoch,
                            hello: Arc::from(hello),
                        });
                        self.send_commands(commands);
                    }
                    Err(e) => {
                        tracing::error!(gateway = %gateway_id, error = %e, "could not start a session");
                        self.reply_error(&e);
                        self.session
                            .close(CloseReason::ProtocolError(e.to_string()));
                    }
                },
                ServerEvent::Heartbeat { status, .. } => {
                    if let Some(epoch) = self.epoch {
                        plane.seen(&gateway_id, epoch, Some(*status));
                    }
                }
                ServerEvent::CommandAck(ack) => {
                    if let Some(epoch) = self.epoch {
                        plane.seen(&gateway_id, epoch, None);
                    }
                    match plane.command_ack(&gateway_id, &ack) {
                        Ok((_, next)) => self.send_commands(next),
                        Err(e) => self.reply_error(&e),
                    }
                }
                ServerEvent::Frame(frame) => out.push(ConnectionEvent::Frame(frame)),
                ServerEvent::Closed { reason, .. } => {
                    if let Some(epoch) = self.epoch {
                        plane.session_ended(&gateway_id, epoch, &reason.to_string());
                    }
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

//! [`ServerConnection`]: a [`ServerSession`] wired to the [`ControlPlane`], still without
//! I/O — what the [`super::Hub`] runs per WebSocket, and what tests drive in memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use gateway_proto::{Command, CommandId, ControlFrame, ErrorFrame, Hello, SessionId};

use super::plane::{ControlPlane, PlaneRequest, frame_len};
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
/// Every queue request names the gateway *and* the tenant of the session's principal, so the
/// session is only ever handed, and only ever finishes, commands of its own tenant. A gateway
/// the plane does not admit ([`ControlPlane::admit`]) is refused at the handshake
/// ([`check_admission`](Self::check_admission)) or, at the latest, when its session would
/// start: an `error` frame (`forbidden`) and a close ([`CloseReason::NotProvisioned`]).
///
/// # Calling it
///
/// Once, before the first frame: [`check_admission`](Self::check_admission). After every
/// input to the session: [`drive`](Self::drive) (presence and events), then
/// answer each [`poll_request`](Self::poll_request) with [`ControlPlane::apply`] and hand the
/// answer to [`handle_reply`](Self::handle_reply) — in order; the hub batches many
/// connections' requests into one transaction — then drain the session's transmits.
/// [`run_requests`](Self::run_requests) does the request step synchronously.
#[derive(Debug)]
pub struct ServerConnection {
    session: ServerSession,
    epoch: Option<u64>,
    requests: VecDeque<PlaneRequest>,
    max_frame_bytes: Option<usize>,
}

impl ServerConnection {
    /// Wrap a new session. Command frames are not size-checked until
    /// [`with_max_frame_bytes`](Self::with_max_frame_bytes).
    pub fn new(session: ServerSession) -> Self {
        ServerConnection {
            session,
            epoch: None,
            requests: VecDeque::new(),
            max_frame_bytes: None,
        }
    }

    /// Never send a `command` frame larger than this (the `max_frame_bytes` gateways
    /// accept; measured as the larger of its JSON and protobuf encodings): such a command is
    /// failed as `rejected`, with the sizes in its detail, instead of being sent — a gateway
    /// would refuse the frame and reconnect, again and again until the delivery deadline.
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = Some(max_frame_bytes);
        self
    }

    /// Check the session's principal with [`ControlPlane::admit`]; a gateway that is not
    /// admitted gets its `hello` refused ([`ServerSession::refuse_hello`]) instead of a
    /// `welcome`.
    pub fn check_admission(&mut self, plane: &ControlPlane) {
        if let Err(e) = plane.admit(self.session.principal()) {
            self.session
                .refuse_hello(e.code(), e.to_string(), CloseReason::NotProvisioned);
        }
    }

    fn gateway_id(&self) -> String {
        self.session.gateway_id().to_owned()
    }

    fn tenant(&self) -> String {
        self.session.principal().tenant.clone()
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
    /// and are redelivered. One whose frame is larger than
    /// [`with_max_frame_bytes`](Self::with_max_frame_bytes) allows is not sent: a
    /// [`PlaneRequest::Refuse`] turns it `rejected`.
    pub fn send_commands(&mut self, commands: Vec<Command>) {
        for command in commands {
            let id = command.id;
            let frame = ControlFrame::Command(command);
            let oversized = self
                .max_frame_bytes
                .map(|limit| (frame_len(&frame), limit))
                .filter(|(size, limit)| size > limit);
            if let Some((size, limit)) = oversized {
                self.refuse(id, size, limit);
            } else if let Err(e) = self.session.send(frame) {
                tracing::debug!(error = %e, "command not sent now; it will be redelivered");
            }
        }
    }

    /// Ask the queue to reject a command whose frame is too large to send.
    fn refuse(&mut self, id: CommandId, size: usize, limit: usize) {
        tracing::warn!(%id, size, limit, "command frame too large: rejected instead of sent");
        self.requests.push_back(PlaneRequest::Refuse {
            gateway_id: self.gateway_id(),
            tenant: self.tenant(),
            id,
            detail: format!(
                "refused by the server: the command frame is {size} bytes, more than the \
                 {limit} bytes the control channel carries (max_frame_bytes); it was never sent"
            ),
        });
    }

    /// Ask for whatever queued commands fit the in-flight window now.
    pub fn request_delivery(&mut self) {
        if self.session.is_established() {
            self.requests.push_back(PlaneRequest::Deliver {
                gateway_id: self.gateway_id(),
                tenant: self.tenant(),
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
                    let started = plane.session_started(
                        self.session.principal(),
                        &hello,
                        session_id,
                        heartbeat_interval_ms,
                    );
                    let epoch = match started {
                        Ok(epoch) => epoch,
                        Err(e) => {
                            // Its `Closed` event follows in this loop.
                            self.session.close_with_error(
                                e.code(),
                                e.to_string(),
                                CloseReason::NotProvisioned,
                            );
                            continue;
                        }
                    };
                    self.epoch = Some(epoch);
                    out.push(ConnectionEvent::Established {
                        session_id,
                        epoch,
                        hello: Arc::from(hello),
                    });
                    self.requests.push_back(PlaneRequest::Deliver {
                        gateway_id,
                        tenant: self.tenant(),
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
                    self.requests.push_back(PlaneRequest::Ack {
                        gateway_id,
                        tenant: self.tenant(),
                        ack,
                    });
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

//! The crate's error type.

use gateway_proto::{CommandId, ErrorBody, ErrorCode};

use crate::CommandState;

/// Everything that can go wrong in this crate.
///
/// Each variant says what failed and, where it helps, what to do about it. [`Error::code`] maps
/// a variant to the stable [`ErrorCode`] used in HTTP error bodies and `error` frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid configuration `{param}`: {reason}")]
    InvalidConfig {
        /// The parameter, as named in the config struct (e.g. `backoff.cap_ms`).
        param: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A SQLite database (command journal, command queue, event log, agent registry) failed.
    #[error(
        "{what} storage failed: {source} (check that the file is writable and the disk is not full)"
    )]
    Storage {
        /// Which store failed (`command journal`, `command queue`, `event log`, `agent registry`).
        what: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Stored data could not be decoded (a corrupted or foreign database file).
    #[error("{what} holds unreadable data: {reason}")]
    CorruptStore {
        /// Which store.
        what: &'static str,
        /// What could not be read.
        reason: String,
    },
    /// A wire message could not be decoded or broke a protocol rule.
    #[error(transparent)]
    Proto(#[from] gateway_proto::Error),
    /// The outbox is full: the frame was not queued. Retry once the control channel is back.
    #[error(
        "the outbox is full ({capacity} frames wait for the connection); the frame was dropped"
    )]
    OutboxFull {
        /// The configured capacity (`outbox_capacity`).
        capacity: usize,
    },
    /// The frame type may not be sent through this call.
    #[error("a `{frame_type}` frame cannot be sent here: {reason}")]
    FrameNotAllowed {
        /// The frame's type.
        frame_type: &'static str,
        /// Which call to use instead.
        reason: &'static str,
    },
    /// The session is not in a state that allows this call.
    #[error("the session is not established: {reason}")]
    NotEstablished {
        /// Why the call could not be made now.
        reason: &'static str,
    },
    /// The command id is not known here.
    #[error("command {id} is not known")]
    UnknownCommand {
        /// The id.
        id: CommandId,
    },
    /// The command already has a final outcome; it cannot change any more.
    #[error("command {id} already finished as `{state}`")]
    CommandFinished {
        /// The id.
        id: CommandId,
        /// Its final state.
        state: CommandState,
    },
    /// Canceling a command the gateway may already be running needs `force`.
    #[error(
        "command {id} is `{state}`: the gateway may already run it; cancel with force=true to stop tracking it anyway"
    )]
    CancelRequiresForce {
        /// The id.
        id: CommandId,
        /// Its current state.
        state: CommandState,
    },
    /// A command does not belong to the gateway that reported on it.
    #[error("command {id} does not belong to gateway `{gateway_id}`")]
    WrongGateway {
        /// The command.
        id: CommandId,
        /// The gateway that reported.
        gateway_id: String,
    },
    /// The gateway is not provisioned in the caller's tenant (the server's gateway directory
    /// does not place it there, or, without a directory, it never connected under that
    /// tenant). Deliberately the same whether another tenant has it or nobody does.
    #[error(
        "gateway `{gateway_id}` is not known (it must be provisioned in your tenant; without a gateway directory the server only knows gateways that connected since it started)"
    )]
    UnknownGateway {
        /// The gateway id that was named.
        gateway_id: String,
    },
    /// A gateway's credentials name a tenant the server does not place it in: its control
    /// session or REST call is refused.
    #[error(
        "gateway `{gateway_id}` is not provisioned in tenant `{tenant}`: check the gateway's token against the server's gateway directory"
    )]
    GatewayNotAdmitted {
        /// The gateway (from its token).
        gateway_id: String,
        /// The tenant its token names.
        tenant: String,
    },
    /// A command whose `command` frame would be larger than the control channel carries
    /// (`limits.max_frame_bytes`); the gateway could never receive it.
    #[error(
        "the command frame would be {size} bytes, more than the {limit} bytes the control channel carries (`max_frame_bytes`): send a smaller payload, or a reference to the data"
    )]
    CommandTooLarge {
        /// Encoded size of the frame (the larger of its JSON and protobuf encodings).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The gateway has no live control session on this server.
    #[error("gateway `{gateway_id}` is not connected")]
    NotConnected {
        /// The gateway.
        gateway_id: String,
    },
    /// A request was refused because of its content.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The WebSocket connection could not be opened or broke.
    #[error("control channel to {url}: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// An HTTP request (REST fallback) failed before an answer came back.
    #[error("HTTP request to {url} failed: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered an HTTP request with an error.
    #[error("server answered {status}: {} ({})", .body.error.message, .body.error.code)]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// A batch of queue operations was rolled back by a storage failure (logged where it
    /// happened); the commands concerned stay where they were and are retried.
    #[error("the command queue could not store a batch: {reason}")]
    BatchFailed {
        /// The storage error.
        reason: String,
    },
    /// The driver task has stopped; no more calls can be served.
    #[error("the control-channel driver has stopped")]
    DriverStopped,
    /// The agent is not registered at this gateway.
    #[error(
        "agent `{agent_id}` is not registered at this gateway: register it first (POST /v1/agents/register)"
    )]
    UnknownAgent {
        /// The agent id.
        agent_id: String,
    },
    /// The agent id is registered by another tenant; a caller may only act on its own agents.
    #[error("agent `{agent_id}` is registered by another tenant")]
    AgentOfOtherTenant {
        /// The agent id.
        agent_id: String,
    },
    /// The gateway already tracks as many agents as it may; the registration was refused.
    #[error(
        "this gateway already tracks {limit} agents (`max_agents`): raise the limit or remove agents that are gone"
    )]
    TooManyAgents {
        /// The configured limit (`max_agents`).
        limit: usize,
    },
    /// The agent has as many undelivered commands as it may hold; the command was not queued.
    #[error(
        "agent `{agent_id}` already has {capacity} commands waiting for acknowledgement (`max_pending_commands`): retry once it has taken them"
    )]
    AgentQueueFull {
        /// The agent id.
        agent_id: String,
        /// The configured capacity (`max_pending_commands`).
        capacity: usize,
    },
}

impl Error {
    /// The stable code reported for this error in an HTTP error body or an `error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Proto(e) => e.code(),
            Error::UnknownCommand { .. }
            | Error::UnknownGateway { .. }
            | Error::NotConnected { .. }
            | Error::UnknownAgent { .. } => ErrorCode::NotFound,
            Error::WrongGateway { .. }
            | Error::AgentOfOtherTenant { .. }
            | Error::GatewayNotAdmitted { .. } => ErrorCode::Forbidden,
            Error::TooManyAgents { .. } => ErrorCode::Conflict,
            Error::AgentQueueFull { .. } => ErrorCode::Unavailable,
            Error::CommandFinished { .. } | Error::CancelRequiresForce { .. } => {
                ErrorCode::Conflict
            }
            Error::InvalidRequest { .. } | Error::InvalidConfig { .. } => ErrorCode::InvalidRequest,
            Error::CommandTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::FrameNotAllowed { .. } | Error::NotEstablished { .. } => {
                ErrorCode::UnexpectedFrame
            }
            Error::Rejected { body, .. } => body.error.code.clone(),
            Error::OutboxFull { .. } | Error::Connect { .. } | Error::Http { .. } => {
                ErrorCode::Unavailable
            }
            Error::DriverStopped => ErrorCode::Unavailable,
            Error::Storage { .. } | Error::CorruptStore { .. } | Error::BatchFailed { .. } => {
                ErrorCode::Internal
            }
        }
    }

    /// The HTTP error body for this error.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }

    pub(crate) fn journal(source: rusqlite::Error) -> Self {
        Error::Storage {
            what: "command journal",
            source,
        }
    }

    pub(crate) fn agent_store(source: rusqlite::Error) -> Self {
        Error::Storage {
            what: "agent registry",
            source,
        }
    }

    #[cfg(feature = "server")]
    pub(crate) fn queue(source: rusqlite::Error) -> Self {
        Error::Storage {
            what: "command queue",
            source,
        }
    }

    #[cfg(feature = "server")]
    pub(crate) fn event_log(source: rusqlite::Error) -> Self {
        Error::Storage {
            what: "event log",
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_bodies_carry_them() {
        let id = CommandId::new_v7();
        let err = Error::CancelRequiresForce {
            id,
            state: CommandState::Received,
        };
        assert_eq!(err.code(), ErrorCode::Conflict);
        let body = err.to_body();
        assert_eq!(body.http_status(), 409);
        assert!(
            body.error.message.contains("force=true"),
            "{}",
            body.error.message
        );
        assert_eq!(Error::UnknownCommand { id }.code().http_status(), 404);
    }
}

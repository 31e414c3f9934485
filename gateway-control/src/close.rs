//! Why a control session ended.

use std::fmt;

/// Why a session closed, on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The transport reported the connection lost (or it could not be opened).
    ConnectionLost,
    /// The handshake (`hello` → `welcome`) did not finish in time.
    HandshakeTimeout,
    /// Gateway side: this many heartbeat intervals passed without a `heartbeat_ack`.
    LinkDead {
        /// Intervals without an acknowledgement.
        missed_acks: u32,
    },
    /// Server side: the gateway sent nothing for 1.5 × its heartbeat interval.
    Silent,
    /// Server side: `hello` named another gateway than the credentials.
    IdentityMismatch,
    /// The peers share no protocol version.
    UnsupportedVersion,
    /// The peer broke the protocol in a way that cannot be answered with an `error` frame.
    ProtocolError(String),
    /// Server side: a newer session of the same gateway replaced this one.
    Superseded,
    /// The application asked for it.
    Requested,
    /// Server side: the gateway's token names a tenant the server does not place the gateway
    /// in (its gateway directory, or the tenant the gateway id is already registered under).
    NotProvisioned,
    /// Server side: the gateway did not take the frames sent to it (its connection's queue
    /// filled, or one frame could not be written within the silence limit). Commands it did
    /// not get are redelivered on its next session.
    Backlogged,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ConnectionLost => f.write_str("connection lost"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timed out"),
            CloseReason::LinkDead { missed_acks } => {
                write!(
                    f,
                    "link dead: {missed_acks} heartbeat intervals without an ack"
                )
            }
            CloseReason::Silent => f.write_str("gateway silent for 1.5 heartbeat intervals"),
            CloseReason::IdentityMismatch => f.write_str("hello names another gateway"),
            CloseReason::UnsupportedVersion => f.write_str("no common protocol version"),
            CloseReason::ProtocolError(why) => write!(f, "protocol error: {why}"),
            CloseReason::Superseded => f.write_str("replaced by a newer session"),
            CloseReason::Requested => f.write_str("closed by the application"),
            CloseReason::NotProvisioned => {
                f.write_str("the gateway is not provisioned in its token's tenant")
            }
            CloseReason::Backlogged => f.write_str("the gateway did not take its frames in time"),
        }
    }
}

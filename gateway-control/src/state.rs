//! The lifecycle of a command, shared by the server's queue, its events and its API.

use std::fmt;
use std::str::FromStr;

use gateway_proto::CommandAckState;
use serde::{Deserialize, Serialize};

/// Where a command is in its lifecycle.
///
/// Delivery and execution are tracked apart, as in AWS IoT Jobs:
///
/// ```text
/// queued → sent → received → in_progress → succeeded | failed | rejected
///   │        │        └──────────┴──────→ timed_out   (no outcome within the step timer)
///   └────────┴──────────────────────────→ expired     (not received before its delivery deadline)
///   └─ queued/sent ── canceled (plain)    received/in_progress ── canceled (force only)
/// ```
///
/// States only move forward ([`CommandState::rank`]); the six terminal states never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Stored, waiting for delivery.
    Queued,
    /// Written to the gateway's control channel (or fetched over REST), not yet confirmed.
    Sent,
    /// The gateway confirmed it has the command.
    Received,
    /// The gateway reported progress; the step timer restarts with each report.
    InProgress,
    /// Finished successfully (terminal).
    Succeeded,
    /// Finished with an error (terminal).
    Failed,
    /// Refused without running (terminal): by the gateway, or by the server when the
    /// command's frame is too large for the control channel.
    Rejected,
    /// Not received before its delivery deadline (terminal).
    Expired,
    /// Received, but no outcome within its execution timeout (terminal).
    TimedOut,
    /// Canceled by an operator (terminal). A command canceled after it was `sent` may still
    /// run on the gateway; its later acknowledgements are recorded, never applied.
    Canceled,
}

impl CommandState {
    /// Every state, in lifecycle order.
    pub const ALL: [CommandState; 10] = [
        CommandState::Queued,
        CommandState::Sent,
        CommandState::Received,
        CommandState::InProgress,
        CommandState::Succeeded,
        CommandState::Failed,
        CommandState::Rejected,
        CommandState::Expired,
        CommandState::TimedOut,
        CommandState::Canceled,
    ];

    /// True for the six final states.
    pub fn is_terminal(self) -> bool {
        self.rank() == 4
    }

    /// Position in the lifecycle: queued 0, sent 1, received 2, in_progress 3, terminal 4.
    /// A report moves a command only to a higher rank (or in_progress → in_progress, which
    /// restarts the step timer).
    pub fn rank(self) -> u8 {
        match self {
            CommandState::Queued => 0,
            CommandState::Sent => 1,
            CommandState::Received => 2,
            CommandState::InProgress => 3,
            _ => 4,
        }
    }

    /// The snake_case name, as in the API and the event stream.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Received => "received",
            CommandState::InProgress => "in_progress",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::Rejected => "rejected",
            CommandState::Expired => "expired",
            CommandState::TimedOut => "timed_out",
            CommandState::Canceled => "canceled",
        }
    }
}

impl From<CommandAckState> for CommandState {
    fn from(ack: CommandAckState) -> Self {
        match ack {
            CommandAckState::Received => CommandState::Received,
            CommandAckState::InProgress => CommandState::InProgress,
            CommandAckState::Succeeded => CommandState::Succeeded,
            CommandAckState::Failed => CommandState::Failed,
            CommandAckState::Rejected => CommandState::Rejected,
        }
    }
}

impl fmt::Display for CommandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a command state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a command state (queued, sent, received, in_progress, succeeded, failed, rejected, expired, timed_out, canceled)"
)]
pub struct UnknownState(pub String);

impl FromStr for CommandState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ranks_order_the_lifecycle() {
        for state in CommandState::ALL {
            assert_eq!(state.as_str().parse::<CommandState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
        }
        assert!(CommandState::Queued.rank() < CommandState::Sent.rank());
        assert!(CommandState::Received.rank() < CommandState::InProgress.rank());
        let terminal: Vec<_> = CommandState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal.len(), 6, "{terminal:?}");
        assert!(!CommandState::InProgress.is_terminal());
    }
}

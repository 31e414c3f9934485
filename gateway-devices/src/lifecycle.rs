//! The life of one device command: `pending → sent → succeeded | failed | timed_out`, with the
//! wall-clock time of each step and the device's own error text.

use std::fmt;

use gateway_proto::{CommandAck, CommandAckState, CommandId};
use serde::{Deserialize, Serialize};

use crate::{DeviceCommand, DeviceError, DeviceOutcome, Error};

/// Where a command is.
///
/// ```text
/// pending ──► sent ──► succeeded
///    │          ├────► failed
///    │          └────► timed_out
///    └───────────────► timed_out   (no slot on the device freed up in time; never sent)
/// ```
///
/// Commands refused before they are pending (unknown device, unsupported command, bad payload,
/// full queue) never get a state: the registry returns an [`Error`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted, waiting for the device's in-flight slot.
    Pending,
    /// Sent to the device (possibly again, for a retried idempotent command).
    Sent,
    /// The device did it.
    Succeeded,
    /// The device refused it, or could not be reached.
    Failed,
    /// No answer in time.
    TimedOut,
}

impl CommandState {
    /// True for `succeeded`, `failed` and `timed_out`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            CommandState::Succeeded | CommandState::Failed | CommandState::TimedOut
        )
    }

    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Sent => "sent",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for CommandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command failed or timed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailure {
    /// What went wrong, in words (the [`Error`]'s message).
    pub message: String,
    /// The device's own error, when it answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_error: Option<DeviceError>,
}

impl From<&Error> for CommandFailure {
    fn from(error: &Error) -> Self {
        CommandFailure {
            message: error.to_string(),
            device_error: error.device_error().cloned(),
        }
    }
}

/// Everything known about one command, at one step of its life.
///
/// The registry publishes a report at each transition ([`crate::DeviceRegistry::subscribe`]) and
/// returns the final one from [`crate::DeviceRegistry::execute`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReport {
    /// The command's id (the control channel's, or a fresh UUIDv7).
    pub id: CommandId,
    /// The device.
    pub device_id: String,
    /// The command.
    pub command: DeviceCommand,
    /// Where it is.
    pub state: CommandState,
    /// How many times it was sent (more than 1 only for retried idempotent commands).
    pub attempts: u32,
    /// When it became pending, ms since the Unix epoch.
    pub pending_at_ms: i64,
    /// When it was first sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// When it reached its terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// The result, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DeviceOutcome>,
    /// Why it failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CommandFailure>,
}

impl CommandReport {
    pub(crate) fn pending(
        id: CommandId,
        device_id: &str,
        command: DeviceCommand,
        now_ms: i64,
    ) -> Self {
        CommandReport {
            id,
            device_id: device_id.to_string(),
            command,
            state: CommandState::Pending,
            attempts: 0,
            pending_at_ms: now_ms,
            sent_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            failure: None,
        }
    }

    pub(crate) fn mark_sent(&mut self, now_ms: i64) {
        self.state = CommandState::Sent;
        self.attempts += 1;
        self.sent_at_ms.get_or_insert(now_ms);
    }

    pub(crate) fn finish(&mut self, result: Result<DeviceOutcome, Error>, now_ms: i64) {
        self.finished_at_ms = Some(now_ms);
        match result {
            Ok(outcome) => {
                self.state = CommandState::Succeeded;
                self.outcome = Some(outcome);
            }
            Err(error) => {
                self.state = match error {
                    Error::Timeout { .. } => CommandState::TimedOut,
                    _ => CommandState::Failed,
                };
                self.failure = Some(CommandFailure::from(&error));
            }
        }
    }

    /// The control-channel state for this report: `in_progress` while pending or sent,
    /// `succeeded`, or `failed` (for both `failed` and `timed_out`).
    pub fn ack_state(&self) -> CommandAckState {
        match self.state {
            CommandState::Pending | CommandState::Sent => CommandAckState::InProgress,
            CommandState::Succeeded => CommandAckState::Succeeded,
            CommandState::Failed | CommandState::TimedOut => CommandAckState::Failed,
        }
    }

    /// The control-channel acknowledgement for this report: state, detail (the outcome's
    /// summary or the failure text, with the device's own words) and result (the outcome's data).
    pub fn to_ack(&self) -> CommandAck {
        let detail = match (&self.outcome, &self.failure) {
            (Some(outcome), _) => Some(outcome.summary.clone()),
            (None, Some(failure)) => Some(match self.state {
                CommandState::TimedOut => format!("timed out: {}", failure.message),
                _ => failure.message.clone(),
            }),
            (None, None) => Some(format!("{} on device {}", self.state, self.device_id)),
        };
        CommandAck {
            id: self.id,
            state: self.ack_state(),
            detail,
            result: self.outcome.as_ref().map(|o| o.data.clone()),
        }
    }
}

/// The control-channel acknowledgement for a command refused before it was pending.
pub fn rejection_ack(id: CommandId, error: &Error) -> CommandAck {
    CommandAck {
        id,
        state: CommandAckState::Rejected,
        detail: Some(error.to_string()),
        result: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_walks_the_lifecycle_and_maps_to_acks() {
        let id = CommandId::new_v7();
        let mut report = CommandReport::pending(id, "d1", DeviceCommand::Reboot, 100);
        assert_eq!(report.ack_state(), CommandAckState::InProgress);
        report.mark_sent(110);
        report.mark_sent(120);
        assert_eq!(report.attempts, 2);
        assert_eq!(report.sent_at_ms, Some(110));
        report.finish(
            Err(Error::Device(DeviceError {
                http_status: Some(403),
                code: Some("4".into()),
                sub_code: Some("invalidOperation".into()),
                message: "Invalid Operation".into(),
            })),
            130,
        );
        assert_eq!(report.state, CommandState::Failed);
        let ack = report.to_ack();
        assert_eq!(ack.state, CommandAckState::Failed);
        assert!(ack.detail.unwrap().contains("Invalid Operation"));

        let mut ok = CommandReport::pending(id, "d1", DeviceCommand::Info, 1);
        ok.mark_sent(2);
        ok.finish(Ok(DeviceOutcome::new("fine", json!({"a": 1}))), 3);
        let ack = ok.to_ack();
        assert_eq!(ack.state, CommandAckState::Succeeded);
        assert_eq!(ack.result, Some(json!({"a": 1})));

        let mut slow = CommandReport::pending(id, "d1", DeviceCommand::Info, 1);
        slow.finish(
            Err(Error::Timeout {
                after: std::time::Duration::from_millis(5),
            }),
            9,
        );
        assert_eq!(slow.state, CommandState::TimedOut);
        assert!(slow.state.is_terminal());
        assert_eq!(slow.to_ack().state, CommandAckState::Failed);
    }
}

//! Control-channel frames (WebSocket `GET /v1/control`).
//!
//! In JSON every frame is an object tagged by `type`:
//! `{"type": "heartbeat", "seq": 7, "status": {...}}`. In protobuf it is one
//! `gateway.v1.ControlFrame` message whose `oneof frame` holds the variant.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{CommandId, ErrorCode, SessionId};

/// Every frame of the control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame {
    /// Gateway → server, first frame of a session.
    Hello(Hello),
    /// Server → gateway, answer to `hello`.
    Welcome(Welcome),
    /// Gateway → server, periodic, with a status snapshot.
    Heartbeat(Heartbeat),
    /// Server → gateway, answer to `heartbeat`.
    HeartbeatAck(HeartbeatAck),
    /// Server → gateway: something to do.
    Command(Command),
    /// Gateway → server: progress or outcome of a command.
    CommandAck(CommandAck),
    /// Server → gateway: run this version of a policy.
    PolicyUpdate(PolicyUpdate),
    /// Gateway → server: what happened to a policy update.
    PolicyStatus(PolicyStatus),
    /// Either side: a frame could not be handled.
    Error(ErrorFrame),
}

impl ControlFrame {
    /// Every frame type name, as used in the JSON `type` tag.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "welcome",
        "heartbeat",
        "heartbeat_ack",
        "command",
        "command_ack",
        "policy_update",
        "policy_status",
        "error",
    ];

    /// The frame's type name, as in the JSON `type` tag.
    pub fn frame_type(&self) -> &'static str {
        match self {
            ControlFrame::Hello(_) => "hello",
            ControlFrame::Welcome(_) => "welcome",
            ControlFrame::Heartbeat(_) => "heartbeat",
            ControlFrame::HeartbeatAck(_) => "heartbeat_ack",
            ControlFrame::Command(_) => "command",
            ControlFrame::CommandAck(_) => "command_ack",
            ControlFrame::PolicyUpdate(_) => "policy_update",
            ControlFrame::PolicyStatus(_) => "policy_status",
            ControlFrame::Error(_) => "error",
        }
    }
}

/// The version of one policy a gateway runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// Policy name.
    pub name: String,
    /// Version the gateway runs.
    pub version: u64,
    /// Hex SHA-256 of the canonical (RFC 8785) document.
    pub checksum: String,
}

/// Gateway → server, first frame of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The gateway's id. The server checks it against the identity of the credentials.
    pub gateway_id: String,
    /// Highest protocol version the gateway speaks.
    pub protocol_version: u32,
    /// Lowest protocol version the gateway speaks.
    pub min_protocol_version: u32,
    /// Optional features the gateway supports, e.g. `policy.patch`, `device.hikvision`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Policies the gateway runs now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_policies: Vec<AppliedPolicy>,
    /// The last command the gateway received, so the server can resume delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command_id: Option<CommandId>,
    /// Software name and version, e.g. `gateway/0.1.0`.
    pub software: String,
}

/// Server → gateway, answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Id of this session.
    pub session_id: SessionId,
    /// Protocol version chosen for the session (see [`crate::negotiate_version`]).
    pub protocol_version: u32,
    /// Interval at which the gateway must send heartbeats, in milliseconds (at least 1).
    pub heartbeat_interval_ms: u64,
    /// Server wall-clock time, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
}

/// Fill level of a gateway's buffer relative to its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferPressure {
    /// Below the warning threshold (80 % by default).
    Normal,
    /// Between the warning and the critical thresholds.
    Warning,
    /// At or above the critical threshold (95 % by default): collectors push back.
    Critical,
}

impl BufferPressure {
    /// The snake_case name, as on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            BufferPressure::Normal => "normal",
            BufferPressure::Warning => "warning",
            BufferPressure::Critical => "critical",
        }
    }
}

impl fmt::Display for BufferPressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health of a gateway's uplink to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkHealth {
    /// The last attempt succeeded.
    Healthy,
    /// Recent attempts failed; still retrying.
    Degraded,
    /// Many consecutive failures: the server is unreachable.
    Down,
}

impl UplinkHealth {
    /// The snake_case name, as on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            UplinkHealth::Healthy => "healthy",
            UplinkHealth::Degraded => "degraded",
            UplinkHealth::Down => "down",
        }
    }
}

impl fmt::Display for UplinkHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time view of a gateway's resources and queues, sent in every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// CPU use in percent of one core, summed over cores (0 ..= 100 × cores); finite.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory installed, bytes.
    pub memory_total_bytes: u64,
    /// Free space on the data disk, bytes.
    pub disk_free_bytes: u64,
    /// Size of the data disk, bytes.
    pub disk_total_bytes: u64,
    /// Records waiting in the buffer.
    pub buffer_records: u64,
    /// Bytes of records waiting in the buffer.
    pub buffer_bytes: u64,
    /// Buffer fill level.
    pub buffer_pressure: BufferPressure,
    /// Uplink health.
    pub uplink_health: UplinkHealth,
    /// Agents currently online at this gateway.
    pub connected_agents: u32,
    /// Seconds since the gateway process started.
    pub uptime_seconds: u64,
}

/// Gateway → server, periodic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sequence number, increasing within a session.
    pub seq: u64,
    /// The gateway's status now.
    pub status: StatusSnapshot,
}

/// Server → gateway, answer to [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The `seq` of the heartbeat being answered.
    pub seq: u64,
    /// Server wall-clock time, milliseconds since the Unix epoch.
    pub server_time_ms: i64,
}

/// Server → gateway: something to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Command id. A redelivery carries the same id; the gateway executes each id at most once.
    pub id: CommandId,
    /// What to do, e.g. `device.door.open`, `policy.apply`, `flush`, `agent.restart`.
    pub kind: String,
    /// Arguments; `null` when the command takes none.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Higher runs first; 0 by default.
    #[serde(default)]
    pub priority: i32,
    /// Milliseconds since the epoch after which the command must not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_deadline_ms: Option<i64>,
    /// How long execution may take once received, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_ms: Option<u64>,
    /// A target inside the gateway (a device id, an agent id), when the kind needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// State a gateway reports for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandAckState {
    /// The gateway has the command (sent at once on arrival).
    Received,
    /// Execution started or made progress (resets the server's step timer).
    InProgress,
    /// Finished successfully (terminal).
    Succeeded,
    /// Finished with an error (terminal).
    Failed,
    /// Refused without running: unknown kind, bad payload, expired (terminal).
    Rejected,
}

impl CommandAckState {
    /// True for `succeeded`, `failed` and `rejected`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            CommandAckState::Succeeded | CommandAckState::Failed | CommandAckState::Rejected
        )
    }

    /// The snake_case name, as on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            CommandAckState::Received => "received",
            CommandAckState::InProgress => "in_progress",
            CommandAckState::Succeeded => "succeeded",
            CommandAckState::Failed => "failed",
            CommandAckState::Rejected => "rejected",
        }
    }
}

impl fmt::Display for CommandAckState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Gateway → server: progress or outcome of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    /// The command's id.
    pub id: CommandId,
    /// The state reached.
    pub state: CommandAckState,
    /// Human-readable detail (the device's error text, a progress note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Structured result. `Some(Value::Null)` (sent as `"result": null`) and `None` (no
    /// `result` key) are distinct.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_value"
    )]
    pub result: Option<serde_json::Value>,
}

/// Deserialize a present field as `Some`, even when its value is `null`; an absent field
/// falls back to `None` through `#[serde(default)]`.
fn present_value<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// What a [`PolicyUpdate`] carries: the whole document, or a patch against a base version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyContent {
    /// The full document.
    Full {
        /// The policy document.
        document: serde_json::Value,
    },
    /// A JSON Patch (RFC 6902) against `base_version`.
    Patch {
        /// The version the patch applies to; if the gateway runs another, it answers
        /// `rejected` with code `base_mismatch` and the server sends the full document.
        base_version: u64,
        /// The patch: an array of RFC 6902 operations.
        operations: serde_json::Value,
    },
}

/// Server → gateway: run this version of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    /// Policy name.
    pub name: String,
    /// Version, increasing per name.
    pub version: u64,
    /// Hex SHA-256 of the canonical (RFC 8785) resulting document.
    pub checksum: String,
    /// Full document or patch.
    pub content: PolicyContent,
    /// Ed25519 signature over the checksum text (64 bytes; base64 in JSON).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::base64_serde::option"
    )]
    pub signature: Option<Bytes>,
}

/// Outcome of a policy update on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyState {
    /// Verified, persisted and running.
    Applied,
    /// Refused; the gateway keeps running its previous version.
    Rejected,
}

/// Gateway → server: what happened to a [`PolicyUpdate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Policy name.
    pub name: String,
    /// The version the update carried.
    pub version: u64,
    /// Applied or rejected.
    pub state: PolicyState,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Stable code for a rejection (`base_mismatch`, `checksum_mismatch`, `bad_signature`,
    /// `stale_version`, `validation_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// The version the gateway runs after handling the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_version: Option<u64>,
}

/// Either side: a frame could not be handled. The connection stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable code, e.g. `unknown_frame`.
    pub code: ErrorCode,
    /// Human-readable sentence.
    pub message: String,
}

impl ErrorFrame {
    /// An error frame with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorFrame {
            code,
            message: message.into(),
        }
    }
}

impl From<&crate::Error> for ErrorFrame {
    fn from(e: &crate::Error) -> Self {
        let code = match e.code() {
            ErrorCode::MalformedBody | ErrorCode::InvalidRequest => ErrorCode::MalformedFrame,
            other => other,
        };
        ErrorFrame::new(code, e.to_string())
    }
}

//! The prost types generated from `proto/gateway/v1/*.proto`, and the validating conversions
//! between them and the domain types.
//!
//! Domain → protobuf is infallible (`From`). Protobuf → domain is `TryFrom` and checks every
//! structural rule: a required message or `oneof` is set, ids are 16 non-zero bytes, enums are
//! known and not `UNSPECIFIED`, embedded JSON text parses (a record's JSON body is checked and
//! kept as text, see [`JsonText`](crate::JsonText)). Errors name the field.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/gateway.v1.rs"));

use bytes::Bytes;

use crate as d;
use crate::{BatchId, CommandId, Error, ErrorCode, RecordId, SessionId};

fn json_text(value: &serde_json::Value) -> String {
    // Serializing a `Value` to a string cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn parse_json(text: &str, field: &str, code: ErrorCode) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::invalid(field, code, format!("not valid JSON text: {e}")))
}

/// JSON text where the empty string stands for `null`.
fn parse_json_or_null(text: &str, field: &str) -> Result<serde_json::Value, Error> {
    if text.is_empty() {
        Ok(serde_json::Value::Null)
    } else {
        parse_json(text, field, ErrorCode::MalformedFrame)
    }
}

fn bytes_of(id: &[u8; 16]) -> Bytes {
    Bytes::copy_from_slice(id)
}

// ---------------------------------------------------------------- records

impl From<&d::Record> for Record {
    fn from(r: &d::Record) -> Self {
        Record {
            id: r.id.map(|id| bytes_of(id.as_bytes())).unwrap_or_default(),
            stream: r.stream.clone(),
            source: r.source.clone(),
            timestamp_ms: r.timestamp_ms,
            attributes: r.attributes.clone(),
            body: Some(match &r.body {
                d::Body::Json(text) => record::Body::Json(text.as_str().to_owned()),
                d::Body::Raw(b) => record::Body::Raw(b.clone()),
            }),
        }
    }
}

impl TryFrom<Record> for d::Record {
    type Error = Error;

    fn try_from(r: Record) -> Result<Self, Error> {
        let id = if r.id.is_empty() {
            None
        } else {
            Some(RecordId::from_wire(&r.id, "id")?)
        };
        let body = match r.body {
            Some(record::Body::Json(text)) => d::Body::Json(d::JsonText::from_string(text)?),
            Some(record::Body::Raw(bytes)) => d::Body::Raw(bytes),
            None => return Err(Error::missing("body")),
        };
        Ok(d::Record {
            id,
            stream: r.stream,
            source: r.source,
            timestamp_ms: r.timestamp_ms,
            attributes: r.attributes,
            body,
        })
    }
}

impl From<&d::Batch> for Batch {
    fn from(b: &d::Batch) -> Self {
        Batch {
            batch_id: bytes_of(b.batch_id.as_bytes()),
            gateway_id: b.gateway_id.clone(),
            records: b.records.iter().map(Record::from).collect(),
        }
    }
}

impl TryFrom<Batch> for d::Batch {
    type Error = Error;

    fn try_from(b: Batch) -> Result<Self, Error> {
        if b.batch_id.is_empty() {
            return Err(Error::missing("batch_id"));
        }
        let batch_id = BatchId::from_wire(&b.batch_id, "batch_id")?;
        let records = b
            .records
            .into_iter()
            .enumerate()
            .map(|(i, r)| d::Record::try_from(r).map_err(|e| e.within(&format!("records[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(d::Batch {
            batch_id,
            gateway_id: b.gateway_id,
            records,
        })
    }
}

impl From<&d::Rejection> for Rejection {
    fn from(r: &d::Rejection) -> Self {
        Rejection {
            index: r.index,
            code: r.code.as_str().to_owned(),
            message: r.message.clone(),
        }
    }
}

impl TryFrom<Rejection> for d::Rejection {
    type Error = Error;

    fn try_from(r: Rejection) -> Result<Self, Error> {
        Ok(d::Rejection {
            index: r.index,
            code: required_code(&r.code, "code")?,
            message: r.message,
        })
    }
}

fn required_code(text: &str, field: &str) -> Result<ErrorCode, Error> {
    if text.is_empty() {
        Err(Error::missing(field))
    } else {
        Ok(ErrorCode::parse(text))
    }
}

impl From<&d::BatchAck> for BatchAck {
    fn from(a: &d::BatchAck) -> Self {
        BatchAck {
            accepted: a.accepted,
            duplicates: a.duplicates,
            rejected: a.rejected.iter().map(Rejection::from).collect(),
        }
    }
}

impl TryFrom<BatchAck> for d::BatchAck {
    type Error = Error;

    fn try_from(a: BatchAck) -> Result<Self, Error> {
        Ok(d::BatchAck {
            accepted: a.accepted,
            duplicates: a.duplicates,
            rejected: a
                .rejected
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    d::Rejection::try_from(r).map_err(|e| e.within(&format!("rejected[{i}]")))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&d::ErrorBody> for ErrorBody {
    fn from(e: &d::ErrorBody) -> Self {
        ErrorBody {
            error: Some(ErrorDetail {
                code: e.error.code.as_str().to_owned(),
                message: e.error.message.clone(),
            }),
        }
    }
}

impl TryFrom<ErrorBody> for d::ErrorBody {
    type Error = Error;

    fn try_from(e: ErrorBody) -> Result<Self, Error> {
        let detail = e.error.ok_or_else(|| Error::missing("error"))?;
        Ok(d::ErrorBody {
            error: d::ErrorDetail {
                code: required_code(&detail.code, "error.code")?,
                message: detail.message,
            },
        })
    }
}

// ---------------------------------------------------------------- agent API

impl From<&d::RegisterAgentRequest> for RegisterAgentRequest {
    fn from(r: &d::RegisterAgentRequest) -> Self {
        RegisterAgentRequest {
            agent_id: r.agent_id.clone(),
            kind: r.kind.clone(),
            version: r.version.clone(),
            hostname: r.hostname.clone(),
            capabilities: r.capabilities.clone(),
            attributes: r.attributes.clone(),
        }
    }
}

impl TryFrom<RegisterAgentRequest> for d::RegisterAgentRequest {
    type Error = Error;

    fn try_from(r: RegisterAgentRequest) -> Result<Self, Error> {
        Ok(d::RegisterAgentRequest {
            agent_id: r.agent_id,
            kind: r.kind,
            version: r.version,
            hostname: r.hostname,
            capabilities: r.capabilities,
            attributes: r.attributes,
        })
    }
}

impl From<&d::RegisterAgentResponse> for RegisterAgentResponse {
    fn from(r: &d::RegisterAgentResponse) -> Self {
        RegisterAgentResponse {
            agent_id: r.agent_id.clone(),
            gateway_id: r.gateway_id.clone(),
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            policy_checksum: r.policy_checksum.clone(),
        }
    }
}

impl TryFrom<RegisterAgentResponse> for d::RegisterAgentResponse {
    type Error = Error;

    fn try_from(r: RegisterAgentResponse) -> Result<Self, Error> {
        Ok(d::RegisterAgentResponse {
            agent_id: r.agent_id,
            gateway_id: r.gateway_id,
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            policy_checksum: r.policy_checksum,
        })
    }
}

impl From<&d::AgentHeartbeatRequest> for AgentHeartbeatRequest {
    fn from(r: &d::AgentHeartbeatRequest) -> Self {
        AgentHeartbeatRequest {
            agent_id: r.agent_id.clone(),
            seq: r.seq,
            queued_records: r.queued_records,
            status: r.status.clone(),
            acked_commands: r
                .acked_commands
                .iter()
                .map(|id| bytes_of(id.as_bytes()))
                .collect(),
        }
    }
}

impl TryFrom<AgentHeartbeatRequest> for d::AgentHeartbeatRequest {
    type Error = Error;

    fn try_from(r: AgentHeartbeatRequest) -> Result<Self, Error> {
        Ok(d::AgentHeartbeatRequest {
            agent_id: r.agent_id,
            seq: r.seq,
            queued_records: r.queued_records,
            status: r.status,
            acked_commands: r
                .acked_commands
                .iter()
                .enumerate()
                .map(|(i, id)| CommandId::from_wire(id, &format!("acked_commands[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&d::AgentCommand> for AgentCommand {
    fn from(c: &d::AgentCommand) -> Self {
        AgentCommand {
            id: bytes_of(c.id.as_bytes()),
            kind: c.kind.clone(),
            payload_json: json_text(&c.payload),
        }
    }
}

impl TryFrom<AgentCommand> for d::AgentCommand {
    type Error = Error;

    fn try_from(c: AgentCommand) -> Result<Self, Error> {
        Ok(d::AgentCommand {
            id: CommandId::from_wire(&c.id, "id")?,
            kind: c.kind,
            payload: parse_json_or_null(&c.payload_json, "payload_json")?,
        })
    }
}

impl From<&d::AgentHeartbeatResponse> for AgentHeartbeatResponse {
    fn from(r: &d::AgentHeartbeatResponse) -> Self {
        AgentHeartbeatResponse {
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            policy_checksum: r.policy_checksum.clone(),
            commands: r.commands.iter().map(AgentCommand::from).collect(),
        }
    }
}

impl TryFrom<AgentHeartbeatResponse> for d::AgentHeartbeatResponse {
    type Error = Error;

    fn try_from(r: AgentHeartbeatResponse) -> Result<Self, Error> {
        Ok(d::AgentHeartbeatResponse {
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            policy_checksum: r.policy_checksum,
            commands: r
                .commands
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    d::AgentCommand::try_from(c).map_err(|e| e.within(&format!("commands[{i}]")))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

// ---------------------------------------------------------------- status

impl From<d::BufferPressure> for BufferPressure {
    fn from(p: d::BufferPressure) -> Self {
        match p {
            d::BufferPressure::Normal => BufferPressure::Normal,
            d::BufferPressure::Warning => BufferPressure::Warning,
            d::BufferPressure::Critical => BufferPressure::Critical,
        }
    }
}

fn buffer_pressure(raw: i32, field: &str) -> Result<d::BufferPressure, Error> {
    match BufferPressure::try_from(raw) {
        Ok(BufferPressure::Normal) => Ok(d::BufferPressure::Normal),
        Ok(BufferPressure::Warning) => Ok(d::BufferPressure::Warning),
        Ok(BufferPressure::Critical) => Ok(d::BufferPressure::Critical),
        Ok(BufferPressure::Unspecified) => Err(Error::missing(field)),
        Err(_) => Err(unknown_enum(field, raw)),
    }
}

impl From<d::UplinkHealth> for UplinkHealth {
    fn from(h: d::UplinkHealth) -> Self {
        match h {
            d::UplinkHealth::Healthy => UplinkHealth::Healthy,
            d::UplinkHealth::Degraded => UplinkHealth::Degraded,
            d::UplinkHealth::Down => UplinkHealth::Down,
        }
    }
}

fn uplink_health(raw: i32, field: &str) -> Result<d::UplinkHealth, Error> {
    match UplinkHealth::try_from(raw) {
        Ok(UplinkHealth::Healthy) => Ok(d::UplinkHealth::Healthy),
        Ok(UplinkHealth::Degraded) => Ok(d::UplinkHealth::Degraded),
        Ok(UplinkHealth::Down) => Ok(d::UplinkHealth::Down),
        Ok(UplinkHealth::Unspecified) => Err(Error::missing(field)),
        Err(_) => Err(unknown_enum(field, raw)),
    }
}

fn unknown_enum(field: &str, raw: i32) -> Error {
    Error::invalid(
        field,
        ErrorCode::MalformedFrame,
        format!("unknown enum value {raw}"),
    )
}

impl From<&d::StatusSnapshot> for StatusSnapshot {
    fn from(s: &d::StatusSnapshot) -> Self {
        StatusSnapshot {
            cpu_percent: s.cpu_percent,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            disk_free_bytes: s.disk_free_bytes,
            disk_total_bytes: s.disk_total_bytes,
            buffer_records: s.buffer_records,
            buffer_bytes: s.buffer_bytes,
            buffer_pressure: BufferPressure::from(s.buffer_pressure) as i32,
            uplink_health: UplinkHealth::from(s.uplink_health) as i32,
            connected_agents: s.connected_agents,
            uptime_seconds: s.uptime_seconds,
        }
    }
}

impl TryFrom<StatusSnapshot> for d::StatusSnapshot {
    type Error = Error;

    fn try_from(s: StatusSnapshot) -> Result<Self, Error> {
        if !s.cpu_percent.is_finite() || s.cpu_percent < 0.0 {
            return Err(Error::invalid(
                "cpu_percent",
                ErrorCode::MalformedFrame,
                format!(
                    "must be a finite, non-negative number, got {}",
                    s.cpu_percent
                ),
            ));
        }
        Ok(d::StatusSnapshot {
            cpu_percent: s.cpu_percent,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            disk_free_bytes: s.disk_free_bytes,
            disk_total_bytes: s.disk_total_bytes,
            buffer_records: s.buffer_records,
            buffer_bytes: s.buffer_bytes,
            buffer_pressure: buffer_pressure(s.buffer_pressure, "buffer_pressure")?,
            uplink_health: uplink_health(s.uplink_health, "uplink_health")?,
            connected_agents: s.connected_agents,
            uptime_seconds: s.uptime_seconds,
        })
    }
}

// ---------------------------------------------------------------- control frames

impl From<&d::ControlFrame> for ControlFrame {
    fn from(f: &d::ControlFrame) -> Self {
        use control_frame::Frame;
        let frame = match f {
            d::ControlFrame::Hello(h) => Frame::Hello(Hello {
                gateway_id: h.gateway_id.clone(),
                protocol_version: h.protocol_version,
                min_protocol_version: h.min_protocol_version,
                capabilities: h.capabilities.clone(),
                applied_policies: h
                    .applied_policies
                    .iter()
                    .map(|p| AppliedPolicy {
                        name: p.name.clone(),
                        version: p.version,
                        checksum: p.checksum.clone(),
                    })
                    .collect(),
                last_command_id: h.last_command_id.map(|id| bytes_of(id.as_bytes())),
                software: h.software.clone(),
            }),
            d::ControlFrame::Welcome(w) => Frame::Welcome(Welcome {
                session_id: bytes_of(w.session_id.as_bytes()),
                protocol_version: w.protocol_version,
                heartbeat_interval_ms: w.heartbeat_interval_ms,
                server_time_ms: w.server_time_ms,
            }),
            d::ControlFrame::Heartbeat(h) => Frame::Heartbeat(Heartbeat {
                seq: h.seq,
                status: Some(StatusSnapshot::from(&h.status)),
            }),
            d::ControlFrame::HeartbeatAck(a) => Frame::HeartbeatAck(HeartbeatAck {
                seq: a.seq,
                server_time_ms: a.server_time_ms,
            }),
            d::ControlFrame::Command(c) => Frame::Command(Command {
                id: bytes_of(c.id.as_bytes()),
                kind: c.kind.clone(),
                payload_json: json_text(&c.payload),
                priority: c.priority,
                delivery_deadline_ms: c.delivery_deadline_ms,
                execution_timeout_ms: c.execution_timeout_ms,
                target: c.target.clone(),
            }),
            d::ControlFrame::CommandAck(a) => Frame::CommandAck(CommandAck {
                id: bytes_of(a.id.as_bytes()),
                state: command_ack_state_to_pb(a.state) as i32,
                detail: a.detail.clone(),
                result_json: a.result.as_ref().map(json_text),
            }),
            d::ControlFrame::PolicyUpdate(u) => Frame::PolicyUpdate(PolicyUpdate {
                name: u.name.clone(),
                version: u.version,
                checksum: u.checksum.clone(),
                content: Some(match &u.content {
                    d::PolicyContent::Full { document } => {
                        policy_update::Content::Full(PolicyDocument {
                            document_json: json_text(document),
                        })
                    }
                    d::PolicyContent::Patch {
                        base_version,
                        operations,
                    } => policy_update::Content::Patch(PolicyPatch {
                        base_version: *base_version,
                        patch_json: json_text(operations),
                    }),
                }),
                signature: u.signature.clone(),
            }),
            d::ControlFrame::PolicyStatus(s) => Frame::PolicyStatus(PolicyStatus {
                name: s.name.clone(),
                version: s.version,
                state: match s.state {
                    d::PolicyState::Applied => PolicyState::Applied,
                    d::PolicyState::Rejected => PolicyState::Rejected,
                } as i32,
                reason: s.reason.clone(),
                code: s.code.as_ref().map(|c| c.as_str().to_owned()),
                running_version: s.running_version,
            }),
            d::ControlFrame::Error(e) => Frame::Error(ErrorFrame {
                code: e.code.as_str().to_owned(),
                message: e.message.clone(),
            }),
        };
        ControlFrame { frame: Some(frame) }
    }
}

fn command_ack_state_to_pb(s: d::CommandAckState) -> CommandAckState {
    match s {
        d::CommandAckState::Received => CommandAckState::Received,
        d::CommandAckState::InProgress => CommandAckState::InProgress,
        d::CommandAckState::Succeeded => CommandAckState::Succeeded,
        d::CommandAckState::Failed => CommandAckState::Failed,
        d::CommandAckState::Rejected => CommandAckState::Rejected,
    }
}

fn command_ack_state(raw: i32) -> Result<d::CommandAckState, Error> {
    match CommandAckState::try_from(raw) {
        Ok(CommandAckState::Received) => Ok(d::CommandAckState::Received),
        Ok(CommandAckState::InProgress) => Ok(d::CommandAckState::InProgress),
        Ok(CommandAckState::Succeeded) => Ok(d::CommandAckState::Succeeded),
        Ok(CommandAckState::Failed) => Ok(d::CommandAckState::Failed),
        Ok(CommandAckState::Rejected) => Ok(d::CommandAckState::Rejected),
        Ok(CommandAckState::Unspecified) => Err(Error::missing("state")),
        Err(_) => Err(unknown_enum("state", raw)),
    }
}

impl TryFrom<ControlFrame> for d::ControlFrame {
    type Error = Error;

    fn try_from(f: ControlFrame) -> Result<Self, Error> {
        use control_frame::Frame;
        let frame = f.frame.ok_or_else(|| Error::UnknownFrameType {
            frame_type: "protobuf ControlFrame with no known frame set".into(),
        })?;
        let (name, result) = match frame {
            Frame::Hello(h) => ("hello", hello(h).map(d::ControlFrame::Hello)),
            Frame::Welcome(w) => (
                "welcome",
                SessionId::from_wire(&w.session_id, "session_id").map(|session_id| {
                    d::ControlFrame::Welcome(d::Welcome {
                        session_id,
                        protocol_version: w.protocol_version,
                        heartbeat_interval_ms: w.heartbeat_interval_ms,
                        server_time_ms: w.server_time_ms,
                    })
                }),
            ),
            Frame::Heartbeat(h) => (
                "heartbeat",
                h.status
                    .ok_or_else(|| Error::missing("status"))
                    .and_then(|s| d::StatusSnapshot::try_from(s).map_err(|e| e.within("status")))
                    .map(|status| d::ControlFrame::Heartbeat(d::Heartbeat { seq: h.seq, status })),
            ),
            Frame::HeartbeatAck(a) => (
                "heartbeat_ack",
                Ok(d::ControlFrame::HeartbeatAck(d::HeartbeatAck {
                    seq: a.seq,
                    server_time_ms: a.server_time_ms,
                })),
            ),
            Frame::Command(c) => ("command", command(c).map(d::ControlFrame::Command)),
            Frame::CommandAck(a) => (
                "command_ack",
                command_ack(a).map(d::ControlFrame::CommandAck),
            ),
            Frame::PolicyUpdate(u) => (
                "policy_update",
                policy_update(u).map(d::ControlFrame::PolicyUpdate),
            ),
            Frame::PolicyStatus(s) => (
                "policy_status",
                policy_status(s).map(d::ControlFrame::PolicyStatus),
            ),
            Frame::Error(e) => (
                "error",
                required_code(&e.code, "code").map(|code| {
                    d::ControlFrame::Error(d::ErrorFrame {
                        code,
                        message: e.message,
                    })
                }),
            ),
        };
        result.map_err(|e| e.within(name))
    }
}

fn hello(h: Hello) -> Result<d::Hello, Error> {
    Ok(d::Hello {
        gateway_id: h.gateway_id,
        protocol_version: h.protocol_version,
        min_protocol_version: h.min_protocol_version,
        capabilities: h.capabilities,
        applied_policies: h
            .applied_policies
            .into_iter()
            .map(|p| d::AppliedPolicy {
                name: p.name,
                version: p.version,
                checksum: p.checksum,
            })
            .collect(),
        last_command_id: h
            .last_command_id
            .map(|id| CommandId::from_wire(&id, "last_command_id"))
            .transpose()?,
        software: h.software,
    })
}

fn command(c: Command) -> Result<d::Command, Error> {
    Ok(d::Command {
        id: CommandId::from_wire(&c.id, "id")?,
        kind: c.kind,
        payload: parse_json_or_null(&c.payload_json, "payload_json")?,
        priority: c.priority,
        delivery_deadline_ms: c.delivery_deadline_ms,
        execution_timeout_ms: c.execution_timeout_ms,
        target: c.target,
    })
}

fn command_ack(a: CommandAck) -> Result<d::CommandAck, Error> {
    Ok(d::CommandAck {
        id: CommandId::from_wire(&a.id, "id")?,
        state: command_ack_state(a.state)?,
        detail: a.detail,
        result: a
            .result_json
            .map(|t| parse_json(&t, "result_json", ErrorCode::MalformedFrame))
            .transpose()?,
    })
}

fn policy_update(u: PolicyUpdate) -> Result<d::PolicyUpdate, Error> {
    let content = match u.content {
        Some(policy_update::Content::Full(doc)) => d::PolicyContent::Full {
            document: parse_json(
                &doc.document_json,
                "full.document_json",
                ErrorCode::MalformedFrame,
            )?,
        },
        Some(policy_update::Content::Patch(p)) => d::PolicyContent::Patch {
            base_version: p.base_version,
            operations: parse_json(&p.patch_json, "patch.patch_json", ErrorCode::MalformedFrame)?,
        },
        None => return Err(Error::missing("content")),
    };
    Ok(d::PolicyUpdate {
        name: u.name,
        version: u.version,
        checksum: u.checksum,
        content,
        signature: u.signature,
    })
}

fn policy_status(s: PolicyStatus) -> Result<d::PolicyStatus, Error> {
    let state = match PolicyState::try_from(s.state) {
        Ok(PolicyState::Applied) => d::PolicyState::Applied,
        Ok(PolicyState::Rejected) => d::PolicyState::Rejected,
        Ok(PolicyState::Unspecified) => return Err(Error::missing("state")),
        Err(_) => return Err(unknown_enum("state", s.state)),
    };
    Ok(d::PolicyStatus {
        name: s.name,
        version: s.version,
        state,
        reason: s.reason,
        code: s.code.map(|c| ErrorCode::parse(&c)),
        running_version: s.running_version,
    })
}

//! The gateway's local API for agents: `POST /v1/agents/register` and `POST /v1/agents/heartbeat`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CommandId;

/// `POST /v1/agents/register`: an agent announces itself to its gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterAgentRequest {
    /// Stable uid of the agent; also the `source` of its records.
    pub agent_id: String,
    /// Kind of agent, e.g. `endpoint` or `printer-discovery`.
    pub kind: String,
    /// Software version of the agent.
    pub version: String,
    /// Host name of the machine the agent runs on.
    pub hostname: String,
    /// Capabilities the agent announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Free-form attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// Answer to [`RegisterAgentRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterAgentResponse {
    /// The agent id, echoed.
    pub agent_id: String,
    /// Id of the gateway the agent registered with.
    pub gateway_id: String,
    /// How often the agent must send a heartbeat, in milliseconds. An agent silent for
    /// 1.5 × this interval is marked offline.
    pub heartbeat_interval_ms: u64,
    /// Checksum of the policy the gateway serves (the ETag of `GET /v1/policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_checksum: Option<String>,
}

/// `POST /v1/agents/heartbeat`: an agent says it is alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHeartbeatRequest {
    /// The agent id given at registration.
    pub agent_id: String,
    /// Sequence number, increasing per agent.
    pub seq: u64,
    /// Records the agent holds that it could not send yet.
    #[serde(default)]
    pub queued_records: u64,
    /// Free-form status values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, String>,
    /// Commands the agent has received (from earlier heartbeat answers); the gateway stops
    /// delivering them and reports them delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked_commands: Vec<CommandId>,
}

/// A command for an agent, delivered in a heartbeat answer (for example `restart`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCommand {
    /// Command id; the agent executes each id at most once.
    pub id: CommandId,
    /// Command kind, e.g. `restart`.
    pub kind: String,
    /// Arguments; `null` when the command takes none.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// Answer to [`AgentHeartbeatRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHeartbeatResponse {
    /// How often the agent must send a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Checksum of the policy the gateway serves; when it differs from the one the agent
    /// holds, the agent fetches `GET /v1/policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_checksum: Option<String>,
    /// Commands for this agent. Each is repeated in every answer until the agent lists its id
    /// in [`AgentHeartbeatRequest::acked_commands`]; execute each id at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<AgentCommand>,
}

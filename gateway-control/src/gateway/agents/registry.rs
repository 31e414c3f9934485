//! The sans-IO agent registry: who is registered, who is online, which commands wait for
//! which agent. No clock, no tokio, no storage: time comes in as `now_ms` (ms since the Unix
//! epoch) and changes go out through [`AgentRegistry::poll_event`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use gateway_proto::{
    AgentCommand, AgentHeartbeatRequest, AgentHeartbeatResponse, CommandId, ErrorCode,
    RegisterAgentRequest, RegisterAgentResponse,
};
use serde::{Deserialize, Serialize};

use super::config::AgentRegistryConfig;
use crate::Error;

/// Longest host name accepted at registration, bytes (a DNS name has at most 253).
pub const MAX_HOSTNAME_LEN: usize = 255;

/// What the registry knows about one agent (a snapshot from [`AgentRegistry::agents`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's id (also the `source` of its records).
    pub agent_id: String,
    /// Tenant of the principal that registered it; only that tenant may act as it.
    pub tenant: String,
    /// Kind of agent, e.g. `endpoint`.
    pub kind: String,
    /// Agent software version.
    pub version: String,
    /// Host the agent runs on.
    pub hostname: String,
    /// Capabilities it announced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Free-form attributes from its registration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Online now: registered or heard from within the silence limit.
    pub online: bool,
    /// Its last registration, ms since the epoch.
    pub registered_at_ms: i64,
    /// Its last sign of life (registration or heartbeat), ms since the epoch.
    pub last_seen_ms: i64,
    /// When it went offline, ms since the epoch; `None` while online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since_ms: Option<i64>,
    /// Highest heartbeat `seq` since its last registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// Heartbeats that arrived with a `seq` not above `last_seq` (late or reordered).
    pub stale_heartbeats: u64,
    /// Records the agent reported holding undelivered, from its latest heartbeat.
    pub queued_records: u64,
    /// Status values from its latest heartbeat.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, String>,
    /// Commands waiting for its acknowledgement, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_commands: Vec<PendingCommand>,
}

/// A command waiting for an agent's acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCommand {
    /// The command as the agent receives it.
    pub command: AgentCommand,
    /// When it was queued, ms since the epoch.
    pub enqueued_at_ms: i64,
    /// When it is dropped undelivered ([`AgentEvent::CommandExpired`]), ms since the epoch;
    /// `None` waits for the agent forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Heartbeat answers that have carried it so far.
    pub deliveries: u32,
}

/// The durable part of an agent: what a gateway must remember across a restart to keep
/// answering the agent's heartbeats (see [`AgentRegistry::restore`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    /// The agent's id.
    pub agent_id: String,
    /// Tenant of the principal that registered it.
    pub tenant: String,
    /// Kind of agent.
    pub kind: String,
    /// Agent software version.
    pub version: String,
    /// Host the agent runs on.
    pub hostname: String,
    /// Capabilities it announced.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Its last registration, ms since the epoch.
    pub registered_at_ms: i64,
    /// Its last sign of life when this was taken, ms since the epoch.
    pub last_seen_ms: i64,
}

/// A change the registry reports, from [`AgentRegistry::poll_event`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentEvent {
    /// An agent registered (for the first time, or again after a restart).
    Registered {
        /// The agent.
        agent_id: String,
        /// True when the registry did not know the agent before.
        first_time: bool,
        /// When, ms since the epoch.
        at_ms: i64,
    },
    /// An agent came online (registration, or a heartbeat after it was offline).
    Online {
        /// The agent.
        agent_id: String,
        /// When, ms since the epoch.
        at_ms: i64,
    },
    /// An agent stayed silent longer than the limit and is now offline.
    Offline {
        /// The agent.
        agent_id: String,
        /// When the registry noticed, ms since the epoch.
        at_ms: i64,
        /// Its last sign of life, ms since the epoch.
        last_seen_ms: i64,
    },
    /// The agent listed a pending command in `acked_commands`: it has the command and
    /// delivery stops. Reported once per command id.
    CommandAcknowledged {
        /// The agent.
        agent_id: String,
        /// The command.
        command_id: CommandId,
    },
    /// A pending command reached its expiry unacknowledged and was dropped.
    CommandExpired {
        /// The agent.
        agent_id: String,
        /// The command.
        command_id: CommandId,
    },
}

impl AgentEvent {
    /// The agent the event is about.
    pub fn agent_id(&self) -> &str {
        match self {
            AgentEvent::Registered { agent_id, .. }
            | AgentEvent::Online { agent_id, .. }
            | AgentEvent::Offline { agent_id, .. }
            | AgentEvent::CommandAcknowledged { agent_id, .. }
            | AgentEvent::CommandExpired { agent_id, .. } => agent_id,
        }
    }
}

/// The agents of one gateway; see the [module docs](super) for the rules it keeps.
///
/// # Call order
///
/// 1. [`AgentRegistry::new`], then [`AgentRegistry::restore`] for each registration kept
///    from an earlier run (they start offline).
/// 2. For each request: [`AgentRegistry::register`] or [`AgentRegistry::heartbeat`], then
///    drain [`AgentRegistry::poll_event`].
/// 3. Commands go in with [`AgentRegistry::enqueue_command`]; they leave in heartbeat answers.
/// 4. Arm a timer for [`AgentRegistry::poll_timeout`]; when it fires call
///    [`AgentRegistry::handle_timeout`] and drain [`AgentRegistry::poll_event`] again. The
///    deadline only moves earlier when an agent comes online or a command with an expiry is
///    queued, so re-read it after those.
///
/// Not synchronized: wrap it in a mutex ([`AgentService`](super::AgentService) does).
#[derive(Debug)]
pub struct AgentRegistry {
    config: AgentRegistryConfig,
    gateway_id: String,
    agents: HashMap<String, AgentInfo>,
    events: VecDeque<AgentEvent>,
    online: usize,
}

impl AgentRegistry {
    /// An empty registry for the gateway `gateway_id`, after checking `config`.
    pub fn new(gateway_id: impl Into<String>, config: AgentRegistryConfig) -> Result<Self, Error> {
        config.validate()?;
        let gateway_id = gateway_id.into();
        config
            .limits
            .check_id("gateway_id", &gateway_id, ErrorCode::InvalidRequest)
            .map_err(|e| Error::InvalidConfig {
                param: "gateway_id",
                reason: e.to_string(),
            })?;
        Ok(AgentRegistry {
            config,
            gateway_id,
            agents: HashMap::new(),
            events: VecDeque::new(),
            online: 0,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &AgentRegistryConfig {
        &self.config
    }

    /// The gateway's id, as told to agents at registration.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    // ------------------------------------------------------------------ inputs

    /// Bring back an agent registered in an earlier run, offline until it is heard from.
    /// An agent already known is left alone (returns false). Restoring ignores `max_agents`:
    /// nothing that was registered is forgotten.
    pub fn restore(&mut self, registration: AgentRegistration) -> bool {
        if self.agents.contains_key(&registration.agent_id) {
            return false;
        }
        let info = AgentInfo {
            agent_id: registration.agent_id.clone(),
            tenant: registration.tenant,
            kind: registration.kind,
            version: registration.version,
            hostname: registration.hostname,
            capabilities: registration.capabilities,
            attributes: registration.attributes,
            online: false,
            registered_at_ms: registration.registered_at_ms,
            last_seen_ms: registration.last_seen_ms,
            offline_since_ms: Some(registration.last_seen_ms),
            last_seq: None,
            stale_heartbeats: 0,
            queued_records: 0,
            status: BTreeMap::new(),
            pending_commands: Vec::new(),
        };
        self.agents.insert(registration.agent_id, info);
        true
    }

    /// An agent registers on behalf of a principal of `tenant`. Registering again (after an
    /// agent restart) updates what the agent announced, restarts its `seq` numbering and keeps
    /// its pending commands. The agent is online from now.
    ///
    /// The answer's `policy_checksum` is `None`: the registry does not know the policy, the
    /// caller fills it in.
    ///
    /// Errors: a request breaking the size rules ([`Error::Proto`], 400 `invalid_request`),
    /// an agent id owned by another tenant ([`Error::AgentOfOtherTenant`]), a new agent
    /// beyond `max_agents` ([`Error::TooManyAgents`]).
    pub fn register(
        &mut self,
        tenant: &str,
        request: &RegisterAgentRequest,
        now_ms: i64,
    ) -> Result<RegisterAgentResponse, Error> {
        self.check_registration(request)?;
        let first_time = match self.agents.get_mut(&request.agent_id) {
            Some(agent) => {
                if agent.tenant != tenant {
                    return Err(Error::AgentOfOtherTenant {
                        agent_id: request.agent_id.clone(),
                    });
                }
                agent.kind.clone_from(&request.kind);
                agent.version.clone_from(&request.version);
                agent.hostname.clone_from(&request.hostname);
                agent.capabilities.clone_from(&request.capabilities);
                agent.attributes.clone_from(&request.attributes);
                agent.registered_at_ms = now_ms;
                agent.last_seen_ms = agent.last_seen_ms.max(now_ms);
                agent.last_seq = None;
                false
            }
            None => {
                if self.agents.len() >= self.config.max_agents {
                    return Err(Error::TooManyAgents {
                        limit: self.config.max_agents,
                    });
                }
                let info = AgentInfo {
                    agent_id: request.agent_id.clone(),
                    tenant: tenant.to_owned(),
                    kind: request.kind.clone(),
                    version: request.version.clone(),
                    hostname: request.hostname.clone(),
                    capabilities: request.capabilities.clone(),
                    attributes: request.attributes.clone(),
                    online: false,
                    registered_at_ms: now_ms,
                    last_seen_ms: now_ms,
                    offline_since_ms: Some(now_ms),
                    last_seq: None,
                    stale_heartbeats: 0,
                    queued_records: 0,
                    status: BTreeMap::new(),
                    pending_commands: Vec::new(),
                };
                self.agents.insert(request.agent_id.clone(), info);
                true
            }
        };
        self.events.push_back(AgentEvent::Registered {
            agent_id: request.agent_id.clone(),
            first_time,
            at_ms: now_ms,
        });
        if let Some(agent) = self.agents.get_mut(&request.agent_id) {
            come_online(agent, now_ms, &mut self.online, &mut self.events);
        }
        Ok(RegisterAgentResponse {
            agent_id: request.agent_id.clone(),
            gateway_id: self.gateway_id.clone(),
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            policy_checksum: None,
        })
    }

    /// A heartbeat from an agent, on behalf of a principal of `tenant`.
    ///
    /// In this order: the agent is seen now (online again if it was offline); a heartbeat
    /// whose `seq` is not above the last one is *stale* — tolerated, counted, but its
    /// `queued_records` and `status` do not overwrite newer values; every pending command
    /// listed in `acked_commands` is removed and reported once
    /// ([`AgentEvent::CommandAcknowledged`]; ids not pending are ignored); expired commands
    /// are dropped; every command still pending goes into the answer.
    ///
    /// The answer's `policy_checksum` is `None`: the caller fills it in.
    ///
    /// Errors: [`Error::UnknownAgent`] (answer 404 `not_found`: the agent must register),
    /// [`Error::AgentOfOtherTenant`], or a request breaking the size rules ([`Error::Proto`]).
    pub fn heartbeat(
        &mut self,
        tenant: &str,
        request: &AgentHeartbeatRequest,
        now_ms: i64,
    ) -> Result<AgentHeartbeatResponse, Error> {
        self.check_heartbeat(request)?;
        let agent = self
            .agents
            .get_mut(&request.agent_id)
            .ok_or_else(|| Error::UnknownAgent {
                agent_id: request.agent_id.clone(),
            })?;
        if agent.tenant != tenant {
            return Err(Error::AgentOfOtherTenant {
                agent_id: request.agent_id.clone(),
            });
        }
        agent.last_seen_ms = agent.last_seen_ms.max(now_ms);
        if agent.last_seq.is_none_or(|last| request.seq > last) {
            agent.last_seq = Some(request.seq);
            agent.queued_records = request.queued_records;
            agent.status.clone_from(&request.status);
        } else {
            agent.stale_heartbeats += 1;
        }
        come_online(agent, now_ms, &mut self.online, &mut self.events);

        for id in &request.acked_commands {
            if let Some(at) = agent
                .pending_commands
                .iter()
                .position(|p| p.command.id == *id)
            {
                agent.pending_commands.remove(at);
                self.events.push_back(AgentEvent::CommandAcknowledged {
                    agent_id: agent.agent_id.clone(),
                    command_id: *id,
                });
            }
        }
        expire_commands(agent, now_ms, &mut self.events);

        let commands = agent
            .pending_commands
            .iter_mut()
            .map(|pending| {
                pending.deliveries = pending.deliveries.saturating_add(1);
                pending.command.clone()
            })
            .collect();
        Ok(AgentHeartbeatResponse {
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            policy_checksum: None,
            commands,
        })
    }

    /// Queue a command for an agent (online or offline); it goes out in every heartbeat
    /// answer until the agent acknowledges it. Queueing an id that is already pending for
    /// this agent changes nothing.
    ///
    /// Errors: [`Error::UnknownAgent`], [`Error::AgentQueueFull`] (`max_pending_commands`),
    /// [`Error::InvalidRequest`] for an empty kind.
    pub fn enqueue_command(
        &mut self,
        agent_id: &str,
        command: AgentCommand,
        now_ms: i64,
    ) -> Result<(), Error> {
        self.enqueue_command_expiring(agent_id, command, now_ms, None)
    }

    /// As [`AgentRegistry::enqueue_command`], dropping the command unacknowledged at
    /// `expires_at_ms` (ms since the epoch) with an [`AgentEvent::CommandExpired`].
    pub fn enqueue_command_expiring(
        &mut self,
        agent_id: &str,
        command: AgentCommand,
        now_ms: i64,
        expires_at_ms: Option<i64>,
    ) -> Result<(), Error> {
        if command.kind.is_empty() {
            return Err(Error::InvalidRequest {
                reason: "an agent command needs a kind (e.g. `restart`)".into(),
            });
        }
        let agent = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| Error::UnknownAgent {
                agent_id: agent_id.to_owned(),
            })?;
        if agent
            .pending_commands
            .iter()
            .any(|p| p.command.id == command.id)
        {
            return Ok(());
        }
        if agent.pending_commands.len() >= self.config.max_pending_commands {
            return Err(Error::AgentQueueFull {
                agent_id: agent_id.to_owned(),
                capacity: self.config.max_pending_commands,
            });
        }
        agent.pending_commands.push(PendingCommand {
            command,
            enqueued_at_ms: now_ms,
            expires_at_ms,
            deliveries: 0,
        });
        Ok(())
    }

    /// Stop delivering a pending command. Returns false when it was not pending.
    pub fn cancel_command(&mut self, agent_id: &str, command_id: CommandId) -> bool {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return false;
        };
        let before = agent.pending_commands.len();
        agent
            .pending_commands
            .retain(|p| p.command.id != command_id);
        agent.pending_commands.len() != before
    }

    /// Forget an agent (gone for good); its pending commands are dropped with it and returned
    /// in the snapshot. It may register again later.
    pub fn remove(&mut self, agent_id: &str) -> Option<AgentInfo> {
        let agent = self.agents.remove(agent_id)?;
        if agent.online {
            self.online -= 1;
        }
        Some(agent)
    }

    /// Apply the timers due at `now_ms`: agents silent for longer than
    /// [`AgentRegistryConfig::offline_after_ms`] go offline, expired commands are dropped.
    /// Events come out ordered by agent id.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        let limit = self.config.offline_after_ms();
        let mut changed: Vec<&mut AgentInfo> = self
            .agents
            .values_mut()
            .filter(|a| {
                (a.online && now_ms.saturating_sub(a.last_seen_ms) > limit)
                    || a.pending_commands
                        .iter()
                        .any(|p| p.expires_at_ms.is_some_and(|at| at <= now_ms))
            })
            .collect();
        changed.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        for agent in changed {
            if agent.online && now_ms.saturating_sub(agent.last_seen_ms) > limit {
                agent.online = false;
                agent.offline_since_ms = Some(now_ms);
                self.online -= 1;
                self.events.push_back(AgentEvent::Offline {
                    agent_id: agent.agent_id.clone(),
                    at_ms: now_ms,
                    last_seen_ms: agent.last_seen_ms,
                });
            }
            expire_commands(agent, now_ms, &mut self.events);
        }
    }

    // ------------------------------------------------------------------ outputs

    /// The next change to report, oldest first. Drain after every input.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// When [`AgentRegistry::handle_timeout`] must run next, ms since the epoch: the first
    /// moment an online agent is silent for too long, or a pending command expires.
    pub fn poll_timeout(&self) -> Option<i64> {
        let limit = self.config.offline_after_ms();
        self.agents
            .values()
            .flat_map(|a| {
                let offline = a
                    .online
                    .then(|| a.last_seen_ms.saturating_add(limit).saturating_add(1));
                let expiry = a
                    .pending_commands
                    .iter()
                    .filter_map(|p| p.expires_at_ms)
                    .min();
                offline.into_iter().chain(expiry)
            })
            .min()
    }

    // ------------------------------------------------------------------ getters

    /// Every known agent, sorted by id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut all: Vec<AgentInfo> = self.agents.values().cloned().collect();
        all.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        all
    }

    /// One agent.
    pub fn agent(&self, agent_id: &str) -> Option<&AgentInfo> {
        self.agents.get(agent_id)
    }

    /// The durable part of one agent, for a store.
    pub fn registration(&self, agent_id: &str) -> Option<AgentRegistration> {
        self.agents.get(agent_id).map(|a| AgentRegistration {
            agent_id: a.agent_id.clone(),
            tenant: a.tenant.clone(),
            kind: a.kind.clone(),
            version: a.version.clone(),
            hostname: a.hostname.clone(),
            capabilities: a.capabilities.clone(),
            attributes: a.attributes.clone(),
            registered_at_ms: a.registered_at_ms,
            last_seen_ms: a.last_seen_ms,
        })
    }

    /// Agents online now (the `connected_agents` of the gateway's status).
    pub fn online_count(&self) -> usize {
        self.online
    }

    /// Agents known, online or offline.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// True when no agent is known.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    // ------------------------------------------------------------------ validation

    fn check_registration(&self, request: &RegisterAgentRequest) -> Result<(), Error> {
        let limits = &self.config.limits;
        let code = ErrorCode::InvalidRequest;
        limits.check_id("agent_id", &request.agent_id, code.clone())?;
        limits.check_id("kind", &request.kind, code.clone())?;
        limits.check_id("version", &request.version, code.clone())?;
        check_text("hostname", &request.hostname, 1, MAX_HOSTNAME_LEN)?;
        if request.capabilities.len() > limits.max_attributes {
            return Err(invalid(
                "capabilities",
                format!(
                    "{} entries, more than the limit of {}",
                    request.capabilities.len(),
                    limits.max_attributes
                ),
            ));
        }
        for (i, capability) in request.capabilities.iter().enumerate() {
            check_text(
                &format!("capabilities[{i}]"),
                capability,
                1,
                limits.max_attribute_key_len,
            )?;
        }
        self.check_map("attributes", &request.attributes)
    }

    fn check_heartbeat(&self, request: &AgentHeartbeatRequest) -> Result<(), Error> {
        self.config
            .limits
            .check_id("agent_id", &request.agent_id, ErrorCode::InvalidRequest)?;
        self.check_map("status", &request.status)
    }

    fn check_map(&self, field: &str, map: &BTreeMap<String, String>) -> Result<(), Error> {
        let limits = &self.config.limits;
        if map.len() > limits.max_attributes {
            return Err(invalid(
                field,
                format!(
                    "{} entries, more than the limit of {}",
                    map.len(),
                    limits.max_attributes
                ),
            ));
        }
        for (key, value) in map {
            check_text(
                &format!("{field}.key"),
                key,
                1,
                limits.max_attribute_key_len,
            )?;
            check_text(
                &format!("{field}.{key}"),
                value,
                0,
                limits.max_attribute_value_len,
            )?;
        }
        Ok(())
    }
}

fn come_online(
    agent: &mut AgentInfo,
    now_ms: i64,
    online: &mut usize,
    events: &mut VecDeque<AgentEvent>,
) {
    if agent.online {
        return;
    }
    agent.online = true;
    agent.offline_since_ms = None;
    *online += 1;
    events.push_back(AgentEvent::Online {
        agent_id: agent.agent_id.clone(),
        at_ms: now_ms,
    });
}

fn expire_commands(agent: &mut AgentInfo, now_ms: i64, events: &mut VecDeque<AgentEvent>) {
    let agent_id = &agent.agent_id;
    agent.pending_commands.retain(|p| {
        let expired = p.expires_at_ms.is_some_and(|at| at <= now_ms);
        if expired {
            events.push_back(AgentEvent::CommandExpired {
                agent_id: agent_id.clone(),
                command_id: p.command.id,
            });
        }
        !expired
    });
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Proto(gateway_proto::Error::InvalidField {
        field: field.to_owned(),
        code: ErrorCode::InvalidRequest,
        reason: reason.into(),
    })
}

fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), Error> {
    if value.len() < min {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes, more than the limit of {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_750_000_000_000;

    fn registry() -> AgentRegistry {
        let config = AgentRegistryConfig {
            heartbeat_interval_ms: 1_000,
            max_pending_commands: 2,
            max_agents: 3,
            ..Default::default()
        };
        AgentRegistry::new("gw-1", config).unwrap()
    }

    fn registration(id: &str) -> RegisterAgentRequest {
        RegisterAgentRequest {
            agent_id: id.into(),
            kind: "endpoint".into(),
            version: "1.2.3".into(),
            hostname: "pc-12".into(),
            capabilities: vec!["restart".into()],
            attributes: BTreeMap::from([("os".into(), "linux".into())]),
        }
    }

    fn heartbeat(id: &str, seq: u64, acked: &[CommandId]) -> AgentHeartbeatRequest {
        AgentHeartbeatRequest {
            agent_id: id.into(),
            seq,
            queued_records: seq * 10,
            status: BTreeMap::from([("seq".into(), seq.to_string())]),
            acked_commands: acked.to_vec(),
        }
    }

    fn restart() -> AgentCommand {
        AgentCommand {
            id: CommandId::new_v7(),
            kind: "restart".into(),
            payload: serde_json::Value::Null,
        }
    }

    fn events(registry: &mut AgentRegistry) -> Vec<AgentEvent> {
        std::iter::from_fn(|| registry.poll_event()).collect()
    }

    #[test]
    fn registration_answers_with_the_interval_and_brings_the_agent_online() {
        let mut r = registry();
        let answer = r.register("acme", &registration("a1"), T0).unwrap();
        assert_eq!(answer.agent_id, "a1");
        assert_eq!(answer.gateway_id, "gw-1");
        assert_eq!(answer.heartbeat_interval_ms, 1_000);
        assert_eq!(answer.policy_checksum, None);
        assert_eq!(
            events(&mut r),
            [
                AgentEvent::Registered {
                    agent_id: "a1".into(),
                    first_time: true,
                    at_ms: T0
                },
                AgentEvent::Online {
                    agent_id: "a1".into(),
                    at_ms: T0
                },
            ]
        );
        assert_eq!(r.online_count(), 1);
        let info = r.agent("a1").unwrap();
        assert_eq!(
            (info.kind.as_str(), info.hostname.as_str()),
            ("endpoint", "pc-12")
        );
        assert_eq!(info.tenant, "acme");
        assert_eq!(info.capabilities, ["restart"]);

        // Registering again (an agent restart) is allowed: no second Online, new details.
        let mut again = registration("a1");
        again.version = "1.3.0".into();
        r.register("acme", &again, T0 + 10).unwrap();
        assert_eq!(
            events(&mut r),
            [AgentEvent::Registered {
                agent_id: "a1".into(),
                first_time: false,
                at_ms: T0 + 10
            }]
        );
        assert_eq!(r.agent("a1").unwrap().version, "1.3.0");
        assert_eq!(r.len(), 1);
        assert_eq!(r.online_count(), 1);
    }

    #[test]
    fn offline_after_one_and_a_half_intervals_of_silence_not_before() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        r.heartbeat("acme", &heartbeat("a1", 1, &[]), T0 + 1_000)
            .unwrap();
        events(&mut r);
        // Silent for exactly 1.5 intervals: still online. One ms more: offline.
        assert_eq!(r.poll_timeout(), Some(T0 + 2_501));
        r.handle_timeout(T0 + 2_500);
        assert!(events(&mut r).is_empty());
        assert!(r.agent("a1").unwrap().online);
        r.handle_timeout(T0 + 2_501);
        assert_eq!(
            events(&mut r),
            [AgentEvent::Offline {
                agent_id: "a1".into(),
                at_ms: T0 + 2_501,
                last_seen_ms: T0 + 1_000
            }]
        );
        assert_eq!(r.online_count(), 0);
        assert_eq!(r.poll_timeout(), None);
        let info = r.agent("a1").unwrap();
        assert!(!info.online);
        assert_eq!(info.offline_since_ms, Some(T0 + 2_501));
        // A second sweep reports nothing new.
        r.handle_timeout(T0 + 9_000);
        assert!(events(&mut r).is_empty());
    }

    #[test]
    fn a_heartbeat_brings_an_offline_agent_online_again() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        r.handle_timeout(T0 + 5_000);
        events(&mut r);
        assert_eq!(r.online_count(), 0);
        r.heartbeat("acme", &heartbeat("a1", 1, &[]), T0 + 6_000)
            .unwrap();
        assert_eq!(
            events(&mut r),
            [AgentEvent::Online {
                agent_id: "a1".into(),
                at_ms: T0 + 6_000
            }]
        );
        assert_eq!(r.online_count(), 1);
        assert_eq!(r.poll_timeout(), Some(T0 + 6_000 + 1_501));
    }

    #[test]
    fn a_command_is_repeated_until_acknowledged_and_reported_once() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        let command = restart();
        let id = command.id;
        r.enqueue_command("a1", command.clone(), T0).unwrap();
        // Queueing the same id again changes nothing.
        r.enqueue_command("a1", command.clone(), T0).unwrap();
        events(&mut r);

        for seq in 1..=3 {
            let answer = r
                .heartbeat("acme", &heartbeat("a1", seq, &[]), T0 + seq as i64)
                .unwrap();
            assert_eq!(
                answer.commands,
                std::slice::from_ref(&command),
                "heartbeat {seq}"
            );
        }
        assert_eq!(r.agent("a1").unwrap().pending_commands[0].deliveries, 3);
        assert!(events(&mut r).is_empty());

        let answer = r
            .heartbeat("acme", &heartbeat("a1", 4, &[id]), T0 + 4)
            .unwrap();
        assert!(answer.commands.is_empty());
        assert_eq!(
            events(&mut r),
            [AgentEvent::CommandAcknowledged {
                agent_id: "a1".into(),
                command_id: id
            }]
        );
        // The agent repeats its ack (it lost our answer): nothing is reported twice.
        r.heartbeat("acme", &heartbeat("a1", 5, &[id]), T0 + 5)
            .unwrap();
        assert!(events(&mut r).is_empty());
    }

    #[test]
    fn the_command_queue_is_bounded_per_agent() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        r.register("acme", &registration("a2"), T0).unwrap();
        r.enqueue_command("a1", restart(), T0).unwrap();
        r.enqueue_command("a1", restart(), T0).unwrap();
        let err = r.enqueue_command("a1", restart(), T0).unwrap_err();
        assert!(
            matches!(err, Error::AgentQueueFull { capacity: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("max_pending_commands"));
        // Another agent has its own queue.
        r.enqueue_command("a2", restart(), T0).unwrap();
        // An acknowledgement frees a place.
        let first = r.agent("a1").unwrap().pending_commands[0].command.id;
        r.heartbeat("acme", &heartbeat("a1", 1, &[first]), T0)
            .unwrap();
        r.enqueue_command("a1", restart(), T0).unwrap();
        assert_eq!(r.agent("a1").unwrap().pending_commands.len(), 2);
    }

    #[test]
    fn unknown_agents_are_refused_with_a_typed_error() {
        let mut r = registry();
        let err = r
            .heartbeat("acme", &heartbeat("ghost", 1, &[]), T0)
            .unwrap_err();
        assert!(matches!(&err, Error::UnknownAgent { agent_id } if agent_id == "ghost"));
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert!(err.to_string().contains("register it first"));
        let err = r.enqueue_command("ghost", restart(), T0).unwrap_err();
        assert!(matches!(err, Error::UnknownAgent { .. }));
        assert!(events(&mut r).is_empty());
        assert_eq!(r.online_count(), 0);
    }

    #[test]
    fn stale_heartbeats_are_tolerated_but_do_not_overwrite_newer_status() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        r.heartbeat("acme", &heartbeat("a1", 5, &[]), T0 + 100)
            .unwrap();
        let answer = r
            .heartbeat("acme", &heartbeat("a1", 3, &[]), T0 + 200)
            .unwrap();
        assert_eq!(answer.heartbeat_interval_ms, 1_000);
        let info = r.agent("a1").unwrap();
        assert_eq!(info.last_seq, Some(5));
        assert_eq!(info.queued_records, 50);
        assert_eq!(info.stale_heartbeats, 1);
        assert_eq!(
            info.last_seen_ms,
            T0 + 200,
            "a stale heartbeat still counts as life"
        );
        // A restarted agent registers again and starts its numbering over.
        r.register("acme", &registration("a1"), T0 + 300).unwrap();
        r.heartbeat("acme", &heartbeat("a1", 1, &[]), T0 + 400)
            .unwrap();
        let info = r.agent("a1").unwrap();
        assert_eq!((info.last_seq, info.queued_records), (Some(1), 10));
    }

    #[test]
    fn another_tenant_cannot_take_over_or_drive_an_agent() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        let err = r
            .register("globex", &registration("a1"), T0 + 1)
            .unwrap_err();
        assert!(matches!(err, Error::AgentOfOtherTenant { .. }));
        assert_eq!(err.code(), ErrorCode::Forbidden);
        let err = r
            .heartbeat("globex", &heartbeat("a1", 1, &[]), T0 + 1)
            .unwrap_err();
        assert!(matches!(err, Error::AgentOfOtherTenant { .. }));
        assert_eq!(r.agent("a1").unwrap().tenant, "acme");
    }

    #[test]
    fn the_number_of_agents_is_bounded_and_removal_frees_a_place() {
        let mut r = registry();
        for id in ["a1", "a2", "a3"] {
            r.register("acme", &registration(id), T0).unwrap();
        }
        let err = r.register("acme", &registration("a4"), T0).unwrap_err();
        assert!(matches!(err, Error::TooManyAgents { limit: 3 }), "{err}");
        // Known agents may still register again.
        r.register("acme", &registration("a3"), T0 + 1).unwrap();
        r.enqueue_command("a1", restart(), T0).unwrap();
        let removed = r.remove("a1").unwrap();
        assert_eq!(removed.pending_commands.len(), 1);
        assert_eq!(r.online_count(), 2);
        r.register("acme", &registration("a4"), T0 + 2).unwrap();
        assert_eq!(
            r.agents()
                .iter()
                .map(|a| a.agent_id.as_str())
                .collect::<Vec<_>>(),
            ["a2", "a3", "a4"]
        );
    }

    #[test]
    fn commands_with_an_expiry_are_dropped_and_reported_when_it_passes() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        let command = restart();
        r.enqueue_command_expiring("a1", command.clone(), T0, Some(T0 + 500))
            .unwrap();
        events(&mut r);
        assert_eq!(r.poll_timeout(), Some(T0 + 500));
        r.handle_timeout(T0 + 499);
        assert!(events(&mut r).is_empty());
        r.handle_timeout(T0 + 500);
        assert_eq!(
            events(&mut r),
            [AgentEvent::CommandExpired {
                agent_id: "a1".into(),
                command_id: command.id
            }]
        );
        let answer = r
            .heartbeat("acme", &heartbeat("a1", 1, &[]), T0 + 600)
            .unwrap();
        assert!(answer.commands.is_empty());
        assert!(!r.cancel_command("a1", command.id));
    }

    #[test]
    fn a_cancelled_command_is_no_longer_delivered() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        let command = restart();
        r.enqueue_command("a1", command.clone(), T0).unwrap();
        assert!(r.cancel_command("a1", command.id));
        let answer = r
            .heartbeat("acme", &heartbeat("a1", 1, &[]), T0 + 1)
            .unwrap();
        assert!(answer.commands.is_empty());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut r = registry();
        let mut request = registration("");
        let err = r.register("acme", &request, T0).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert!(err.to_string().contains("agent_id"), "{err}");

        request.agent_id = "x".repeat(129);
        assert!(r.register("acme", &request, T0).is_err());

        let mut request = registration("a1");
        request.hostname = String::new();
        let err = r.register("acme", &request, T0).unwrap_err();
        assert!(err.to_string().contains("hostname"), "{err}");

        let mut request = registration("a1");
        request.capabilities = (0..65).map(|i| format!("c{i}")).collect();
        let err = r.register("acme", &request, T0).unwrap_err();
        assert!(err.to_string().contains("capabilities"), "{err}");

        let mut request = registration("a1");
        request.attributes.insert("k".into(), "v".repeat(5_000));
        let err = r.register("acme", &request, T0).unwrap_err();
        assert!(err.to_string().contains("attributes.k"), "{err}");

        r.register("acme", &registration("a1"), T0).unwrap();
        let mut beat = heartbeat("a1", 1, &[]);
        beat.status.insert("bad\nkey".into(), "v".into());
        let err = r.heartbeat("acme", &beat, T0).unwrap_err();
        assert!(err.to_string().contains("status.key"), "{err}");

        let err = r
            .enqueue_command(
                "a1",
                AgentCommand {
                    kind: String::new(),
                    ..restart()
                },
                T0,
            )
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }));
    }

    #[test]
    fn restored_agents_start_offline_and_answer_heartbeats() {
        let mut r = registry();
        r.register("acme", &registration("a1"), T0).unwrap();
        let saved = r.registration("a1").unwrap();

        let mut after_restart = registry();
        assert!(after_restart.restore(saved.clone()));
        assert!(!after_restart.restore(saved), "already known");
        assert_eq!(after_restart.online_count(), 0);
        assert!(!after_restart.agent("a1").unwrap().online);
        after_restart
            .heartbeat("acme", &heartbeat("a1", 7, &[]), T0 + 60_000)
            .unwrap();
        assert_eq!(
            events(&mut after_restart),
            [AgentEvent::Online {
                agent_id: "a1".into(),
                at_ms: T0 + 60_000
            }]
        );
    }

    #[test]
    fn events_serialize_with_a_type_tag() {
        let event = AgentEvent::Offline {
            agent_id: "a1".into(),
            at_ms: 2,
            last_seen_ms: 1,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "offline", "agent_id": "a1", "at_ms": 2, "last_seen_ms": 1})
        );
        assert_eq!(event.agent_id(), "a1");
    }
}

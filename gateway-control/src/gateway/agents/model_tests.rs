//! Model test: random sequences of registrations, heartbeats (with acknowledgements),
//! enqueues, time steps and timer runs, applied to the real [`AgentRegistry`] and to a plain
//! model of the rules; answers, events, presence and the next deadline must agree.

use std::collections::BTreeMap;

use gateway_proto::{AgentCommand, AgentHeartbeatRequest, CommandId, RegisterAgentRequest};
use proptest::prelude::*;

use super::{AgentEvent, AgentRegistry, AgentRegistryConfig};
use crate::Error;

const INTERVAL: u64 = 1_000;
const OFFLINE_AFTER: i64 = 1_500;
const MAX_PENDING: usize = 3;
const MAX_AGENTS: usize = 3;
const AGENTS: [&str; 4] = ["a0", "a1", "a2", "a3"];

#[derive(Debug, Clone)]
enum Op {
    Register(usize),
    /// Acknowledge the pending commands picked by the mask bits; bit 7 also repeats an
    /// acknowledgement of a command already acknowledged.
    Heartbeat(usize, u8),
    Enqueue(usize),
    Advance(i64),
    Timeout,
    /// Move time to the model's next deadline plus this offset (-1 or 0), then run the
    /// timers: hits the exact boundary of the offline rule.
    TimeoutAtDeadline(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..AGENTS.len()).prop_map(Op::Register),
        4 => (0..AGENTS.len(), any::<u8>()).prop_map(|(a, m)| Op::Heartbeat(a, m)),
        3 => (0..AGENTS.len()).prop_map(Op::Enqueue),
        3 => (0..2_000i64).prop_map(Op::Advance),
        2 => Just(Op::Timeout),
        2 => (-1..=0i64).prop_map(Op::TimeoutAtDeadline),
    ]
}

#[derive(Debug, Default)]
struct ModelAgent {
    online: bool,
    last_seen: i64,
    pending: Vec<CommandId>,
    acked: Vec<CommandId>,
}

#[derive(Debug, Default)]
struct Model {
    agents: BTreeMap<&'static str, ModelAgent>,
}

impl Model {
    fn online(&self) -> usize {
        self.agents.values().filter(|a| a.online).count()
    }

    fn deadline(&self) -> Option<i64> {
        self.agents
            .values()
            .filter(|a| a.online)
            .map(|a| a.last_seen + OFFLINE_AFTER + 1)
            .min()
    }
}

fn drain(registry: &mut AgentRegistry) -> Vec<AgentEvent> {
    std::iter::from_fn(|| registry.poll_event()).collect()
}

fn registration(id: &str) -> RegisterAgentRequest {
    RegisterAgentRequest {
        agent_id: id.into(),
        kind: "endpoint".into(),
        version: "1".into(),
        hostname: "host".into(),
        capabilities: vec![],
        attributes: BTreeMap::new(),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = AgentRegistryConfig {
        heartbeat_interval_ms: INTERVAL,
        max_pending_commands: MAX_PENDING,
        max_agents: MAX_AGENTS,
        ..Default::default()
    };
    let mut real = AgentRegistry::new("gw", config).unwrap();
    let mut model = Model::default();
    let mut now: i64 = 1_000_000;
    let mut seq = 0u64;

    for op in ops {
        match op.clone() {
            Op::Register(a) => {
                let id = AGENTS[a];
                let known = model.agents.contains_key(id);
                let result = real.register("t", &registration(id), now);
                if !known && model.agents.len() >= MAX_AGENTS {
                    prop_assert!(
                        matches!(result, Err(Error::TooManyAgents { .. })),
                        "{:?}",
                        result
                    );
                    prop_assert!(drain(&mut real).is_empty());
                    continue;
                }
                prop_assert!(result.is_ok());
                let agent = model.agents.entry(id).or_default();
                let mut expected = vec![AgentEvent::Registered {
                    agent_id: id.into(),
                    first_time: !known,
                    at_ms: now,
                }];
                if !agent.online {
                    expected.push(AgentEvent::Online {
                        agent_id: id.into(),
                        at_ms: now,
                    });
                }
                agent.online = true;
                agent.last_seen = agent.last_seen.max(now);
                prop_assert_eq!(drain(&mut real), expected);
            }
            Op::Heartbeat(a, mask) => {
                let id = AGENTS[a];
                seq += 1;
                let Some(agent) = model.agents.get_mut(id) else {
                    let request = AgentHeartbeatRequest {
                        agent_id: id.into(),
                        seq,
                        queued_records: 0,
                        status: BTreeMap::new(),
                        acked_commands: vec![],
                    };
                    let result = real.heartbeat("t", &request, now);
                    prop_assert!(
                        matches!(result, Err(Error::UnknownAgent { .. })),
                        "{:?}",
                        result
                    );
                    continue;
                };
                let mut acks: Vec<CommandId> = agent
                    .pending
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, id)| *id)
                    .collect();
                if mask & 0x80 != 0
                    && let Some(old) = agent.acked.first()
                {
                    acks.push(*old);
                }
                let request = AgentHeartbeatRequest {
                    agent_id: id.into(),
                    seq,
                    queued_records: 0,
                    status: BTreeMap::new(),
                    acked_commands: acks.clone(),
                };
                let answer = real.heartbeat("t", &request, now);
                prop_assert!(answer.is_ok());
                let answer = answer.unwrap();

                let mut expected = Vec::new();
                if !agent.online {
                    expected.push(AgentEvent::Online {
                        agent_id: id.into(),
                        at_ms: now,
                    });
                }
                agent.online = true;
                agent.last_seen = agent.last_seen.max(now);
                for ack in acks {
                    if let Some(at) = agent.pending.iter().position(|p| *p == ack) {
                        agent.pending.remove(at);
                        agent.acked.push(ack);
                        expected.push(AgentEvent::CommandAcknowledged {
                            agent_id: id.into(),
                            command_id: ack,
                        });
                    }
                }
                prop_assert_eq!(drain(&mut real), expected);
                let delivered: Vec<CommandId> = answer.commands.iter().map(|c| c.id).collect();
                prop_assert_eq!(&delivered, &agent.pending);
            }
            Op::Enqueue(a) => {
                let id = AGENTS[a];
                let command = AgentCommand {
                    id: CommandId::new_v7(),
                    kind: "restart".into(),
                    payload: serde_json::Value::Null,
                };
                let result = real.enqueue_command(id, command.clone(), now);
                match model.agents.get_mut(id) {
                    None => prop_assert!(
                        matches!(result, Err(Error::UnknownAgent { .. })),
                        "{:?}",
                        result
                    ),
                    Some(agent) if agent.pending.len() >= MAX_PENDING => {
                        prop_assert!(
                            matches!(result, Err(Error::AgentQueueFull { .. })),
                            "{:?}",
                            result
                        )
                    }
                    Some(agent) => {
                        prop_assert!(result.is_ok());
                        agent.pending.push(command.id);
                    }
                }
                prop_assert!(drain(&mut real).is_empty());
            }
            Op::Advance(ms) => now += ms,
            Op::Timeout | Op::TimeoutAtDeadline(_) => {
                if let (Op::TimeoutAtDeadline(offset), Some(deadline)) = (&op, model.deadline()) {
                    now = now.max(deadline + offset);
                }
                real.handle_timeout(now);
                let mut expected = Vec::new();
                for (id, agent) in model.agents.iter_mut() {
                    if agent.online && now - agent.last_seen > OFFLINE_AFTER {
                        agent.online = false;
                        expected.push(AgentEvent::Offline {
                            agent_id: (*id).into(),
                            at_ms: now,
                            last_seen_ms: agent.last_seen,
                        });
                    }
                }
                prop_assert_eq!(drain(&mut real), expected);
            }
        }
        prop_assert_eq!(real.online_count(), model.online());
        prop_assert_eq!(real.poll_timeout(), model.deadline());
        let listed: Vec<(String, bool, usize)> = real
            .agents()
            .into_iter()
            .map(|a| (a.agent_id, a.online, a.pending_commands.len()))
            .collect();
        let modelled: Vec<(String, bool, usize)> = model
            .agents
            .iter()
            .map(|(id, a)| ((*id).to_owned(), a.online, a.pending.len()))
            .collect();
        prop_assert_eq!(listed, modelled);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_registry_follows_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

//! Model-based property test: random interleavings of commands, outcomes, disconnects,
//! frame loss, server outages and crashes of either process (journal and queue reopened from
//! their SQLite files) — then the network heals. Every command must end in exactly one
//! terminal state, none may run twice, and no outcome the gateway reported may be lost.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{GATEWAY, Pair};
use gateway_control::CommandState;
use gateway_control::gateway::{Outcome, OutcomeState};
use gateway_control::server::NewCommand;
use gateway_proto::CommandId;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue { priority: i32, short_timers: bool },
    Advance(u64),
    Complete { pick: usize, outcome: u8 },
    Progress { pick: usize },
    Disconnect,
    LossBurst { to_gateway: bool, ms: u64 },
    ServerOutage { ms: u64 },
    RestartGateway,
    RestartServer,
    Cancel { pick: usize, force: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3i32, proptest::bool::weighted(0.2))
            .prop_map(|(priority, short_timers)| Op::Enqueue { priority, short_timers }),
        4 => (0..3_000u64).prop_map(Op::Advance),
        4 => (any::<usize>(), 0..3u8).prop_map(|(pick, outcome)| Op::Complete { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Op::Progress { pick }),
        2 => Just(Op::Disconnect),
        1 => (any::<bool>(), 0..4_000u64).prop_map(|(to_gateway, ms)| Op::LossBurst { to_gateway, ms }),
        1 => (0..6_000u64).prop_map(|ms| Op::ServerOutage { ms }),
        2 => Just(Op::RestartGateway),
        1 => Just(Op::RestartServer),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, force)| Op::Cancel { pick, force }),
    ]
}

fn outcome_of(n: u8) -> Outcome {
    match n {
        0 => Outcome::succeeded(),
        1 => Outcome::failed("boom"),
        _ => Outcome::rejected("no"),
    }
}

struct Model {
    enqueued: Vec<CommandId>,
    /// What the gateway application (or its crash recovery) decided for each command.
    decided: HashMap<CommandId, OutcomeState>,
    canceled: HashSet<CommandId>,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut pair = Pair::default_pair();
    let mut model = Model {
        enqueued: Vec::new(),
        decided: HashMap::new(),
        canceled: HashSet::new(),
    };
    pair.advance(Duration::from_millis(50));
    for op in ops {
        match op {
            Op::Enqueue {
                priority,
                short_timers,
            } => {
                let mut command = NewCommand::new(GATEWAY, "work").priority(priority);
                if short_timers {
                    command = command
                        .delivery_deadline_ms(pair.wall_ms() + 8_000)
                        .execution_timeout_ms(4_000);
                }
                model.enqueued.push(pair.enqueue(command).id);
            }
            Op::Advance(ms) => pair.advance(Duration::from_millis(ms)),
            Op::Complete { pick, outcome } => {
                if !pair.running.is_empty() {
                    let id = pair.running[pick % pair.running.len()].id;
                    let outcome = outcome_of(outcome);
                    model.decided.insert(id, outcome.state);
                    pair.complete(id, outcome);
                }
            }
            Op::Progress { pick } => {
                if !pair.running.is_empty() {
                    let id = pair.running[pick % pair.running.len()].id;
                    pair.gateway.report_progress(id, None).unwrap();
                    pair.pump();
                }
            }
            Op::Disconnect => pair.disconnect(),
            Op::LossBurst { to_gateway, ms } => {
                if to_gateway {
                    pair.drop_to_gateway = true;
                } else {
                    pair.drop_to_server = true;
                }
                pair.advance(Duration::from_millis(ms));
                pair.drop_to_gateway = false;
                pair.drop_to_server = false;
            }
            Op::ServerOutage { ms } => {
                pair.set_server_up(false);
                pair.advance(Duration::from_millis(ms));
                pair.set_server_up(true);
            }
            Op::RestartGateway => {
                // Whatever the application was running dies with it; the journal finishes
                // those commands as failed.
                for command in &pair.running {
                    model.decided.insert(command.id, OutcomeState::Failed);
                }
                pair.restart_gateway();
            }
            Op::RestartServer => pair.restart_server(),
            Op::Cancel { pick, force } => {
                if !model.enqueued.is_empty() {
                    let id = model.enqueued[pick % model.enqueued.len()];
                    if pair.plane.cancel(&id, force).is_ok() {
                        model.canceled.insert(id);
                    }
                }
            }
        }
    }

    // The network heals; the application finishes what it runs.
    for _ in 0..40 {
        let running: Vec<_> = pair.running.iter().map(|c| c.id).collect();
        for id in running {
            model.decided.insert(id, OutcomeState::Succeeded);
            pair.complete(id, Outcome::succeeded());
        }
        pair.advance(Duration::from_secs(3));
        let all_done = model
            .enqueued
            .iter()
            .all(|id| pair.command(id).state.is_terminal());
        if all_done && pair.running.is_empty() {
            break;
        }
    }
    // Let the last acknowledgements land.
    pair.advance(Duration::from_secs(5));

    let terminal_events = pair
        .logged("command.state")
        .into_iter()
        .filter(|e| {
            e["to"]
                .as_str()
                .and_then(|s| s.parse::<CommandState>().ok())
                .is_some_and(|s| s.is_terminal())
        })
        .fold(HashMap::<String, u32>::new(), |mut m, e| {
            *m.entry(e["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
            m
        });

    for id in &model.enqueued {
        let record = pair.command(id);
        prop_assert!(record.state.is_terminal(), "{id} ended {:?}", record.state);
        prop_assert_eq!(
            terminal_events.get(&id.to_string()).copied(),
            Some(1),
            "{} must reach exactly one terminal state",
            id
        );
        let runs = pair.executions.get(id).copied().unwrap_or(0);
        prop_assert!(runs <= 1, "{id} ran {runs} times");
        let gateway_outcome = match record.state {
            CommandState::Succeeded => Some(OutcomeState::Succeeded),
            CommandState::Failed => Some(OutcomeState::Failed),
            CommandState::Rejected => Some(OutcomeState::Rejected),
            _ => None,
        };
        match model.decided.get(id) {
            Some(decided) => match gateway_outcome {
                // No outcome lost, none invented: the server holds exactly what the gateway
                // decided...
                Some(reported) => prop_assert_eq!(reported, *decided, "{}", id),
                // ...unless the server had already given up on the command (timer or
                // operator), in which case the late outcome must not have moved it.
                None => prop_assert!(
                    matches!(
                        record.state,
                        CommandState::TimedOut | CommandState::Canceled | CommandState::Expired
                    ),
                    "{id}: decided {decided:?}, server says {:?}",
                    record.state
                ),
            },
            None => {
                // Never run to an outcome by the application: only the server's own terminal
                // states, or the gateway refusing it for a passed deadline.
                prop_assert!(
                    runs == 0 || !matches!(record.state, CommandState::Succeeded),
                    "{id}: succeeded without an outcome"
                );
                if let Some(state) = gateway_outcome {
                    prop_assert_eq!(state, OutcomeState::Rejected, "{}: {:?}", id, record);
                    prop_assert_eq!(runs, 0);
                }
            }
        }
        if model.canceled.contains(id) {
            prop_assert_eq!(record.state, CommandState::Canceled);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_command_ends_once_runs_at_most_once_and_keeps_its_outcome(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run(ops)?;
    }
}

//! The sans-IO cores driven through the in-memory [`Pair`] on virtual time: no sleeps, no
//! sockets; storage is real SQLite.

mod common;

use std::time::Duration;

use common::{GATEWAY, Pair};
use gateway_control::gateway::Outcome;
use gateway_control::server::{ConnectionEvent, NewCommand};
use gateway_control::{CloseReason, CommandState, ConnectionState, GatewayEvent};
use gateway_proto::{AppliedPolicy, CommandAckState, ControlFrame, PolicyState, PolicyStatus};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy_status(name: &str, version: u64) -> ControlFrame {
    ControlFrame::PolicyStatus(PolicyStatus {
        name: name.into(),
        version,
        state: PolicyState::Applied,
        reason: None,
        code: None,
        running_version: Some(version),
    })
}

#[test]
fn handshake_announces_policies_and_brings_the_gateway_online() {
    let mut pair = Pair::default_pair();
    let applied = AppliedPolicy {
        name: "collect".into(),
        version: 7,
        checksum: "a".repeat(64),
    };
    pair.gateway.set_applied_policies(vec![applied.clone()]);
    pair.advance(ms(100));

    assert!(matches!(
        pair.gateway.state(),
        ConnectionState::Established { .. }
    ));
    let connected = pair
        .gateway_events
        .iter()
        .find_map(|(_, e)| match e {
            GatewayEvent::Connected {
                heartbeat_interval, ..
            } => Some(*heartbeat_interval),
            _ => None,
        })
        .expect("connected event");
    assert_eq!(connected, ms(1_000), "interval comes from welcome");
    let hello = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ConnectionEvent::Established { hello, .. } => Some(hello.clone()),
            _ => None,
        })
        .expect("established on the server");
    assert_eq!(hello.gateway_id, GATEWAY);
    assert_eq!(hello.applied_policies, vec![applied]);
    // The first heartbeat goes out at once, so presence has a status straight away.
    let presence = pair.plane.presence(GATEWAY).expect("presence");
    assert!(presence.online);
    assert!(presence.last_status.is_some());
    assert_eq!(pair.logged("gateway.online").len(), 1);
}

#[test]
fn two_intervals_without_heartbeat_ack_declare_the_link_dead() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    assert!(pair.gateway.is_established());
    // From now on nothing comes back from the server; the connection itself stays up.
    pair.drop_to_gateway = true;
    let silenced_at = pair.now;
    pair.advance(ms(5_000));
    let (dead_at, reason) = pair
        .gateway_events
        .iter()
        .find_map(|(t, e)| match e {
            GatewayEvent::Disconnected { reason, .. } => Some((*t, reason.clone())),
            _ => None,
        })
        .expect("link declared dead");
    assert_eq!(reason, CloseReason::LinkDead { missed_acks: 2 });
    // The first unanswered heartbeat went out at the next interval tick (≤ 1 s after the
    // silence began); death comes exactly two intervals after it.
    let elapsed = dead_at - silenced_at;
    assert!(
        elapsed > ms(2_000) && elapsed <= ms(3_000),
        "dead after {elapsed:?}"
    );
}

#[test]
fn reconnects_back_off_exponentially_with_jitter_and_reset_on_welcome() {
    let mut pair = Pair::default_pair();
    pair.set_server_up(false);
    pair.advance(ms(20_000));
    let attempts = pair.connect_attempts.clone();
    assert!(attempts.len() >= 6, "attempts: {}", attempts.len());
    // Backoff config: base 100 ms, cap 2 s. Gap n is at most min(cap, base·2ⁿ).
    for (n, pair_of) in attempts.windows(2).enumerate() {
        let gap = pair_of[1] - pair_of[0];
        let ceiling = ms((100u64 << n.min(20)).min(2_000));
        assert!(gap <= ceiling, "gap {n} = {gap:?} above {ceiling:?}");
    }
    // Jitter: the gaps are not all at their ceiling.
    let at_ceiling = attempts
        .windows(2)
        .enumerate()
        .filter(|(n, w)| w[1] - w[0] == ms((100u64 << (*n).min(20)).min(2_000)))
        .count();
    assert!(at_ceiling < attempts.len() - 1);

    // Same seed, same schedule.
    let mut again = Pair::default_pair();
    again.set_server_up(false);
    again.advance(ms(20_000));
    let gaps = |a: &[std::time::Instant]| a.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>();
    assert_eq!(gaps(&attempts), gaps(&again.connect_attempts));

    // Back up: welcomed, and the next drop starts again from the base delay.
    pair.set_server_up(true);
    pair.advance(ms(3_000));
    assert!(pair.gateway.is_established());
    pair.disconnect();
    let ConnectionState::Disconnected { retry_at } = pair.gateway.state() else {
        panic!("expected disconnected, got {:?}", pair.gateway.state());
    };
    assert!(
        retry_at - pair.now <= ms(100),
        "backoff reset after welcome"
    );
}

#[test]
fn frames_produced_offline_go_out_in_order_after_reconnect() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    let id = pair.enqueue(NewCommand::new(GATEWAY, "flush")).id;
    pair.advance(ms(50));
    assert_eq!(pair.running.len(), 1);
    pair.set_server_up(false);
    pair.gateway.send(policy_status("a", 1)).unwrap();
    pair.gateway
        .report_outcome(id, Outcome::succeeded())
        .unwrap();
    pair.gateway.send(policy_status("b", 2)).unwrap();
    assert_eq!(pair.gateway.outbox_len(), 3);
    pair.advance(ms(1_000));
    pair.server_received.clear();
    pair.set_server_up(true);
    pair.advance(ms(5_000));
    let order: Vec<String> = pair
        .server_received
        .iter()
        .filter_map(|f| match f {
            ControlFrame::PolicyStatus(s) => Some(format!("status {}", s.name)),
            ControlFrame::CommandAck(a) => Some(format!("ack {}", a.state)),
            ControlFrame::Hello(_) => Some("hello".into()),
            _ => None,
        })
        .collect();
    // The outbox goes out in the order it was filled, right after hello. The server also
    // resends the unfinished command on the new session; the gateway answers that redelivery
    // from its journal (a second, stale `succeeded`).
    assert_eq!(
        order[..4],
        ["hello", "status a", "ack succeeded", "status b"]
    );
    assert!(order[4..].iter().all(|f| f == "ack succeeded"), "{order:?}");
    assert_eq!(pair.executions[&id], 1);
    assert_eq!(pair.command(&id).state, CommandState::Succeeded);
    // The server application saw both policy statuses.
    let statuses = pair
        .server_events
        .iter()
        .filter(|e| matches!(e, ConnectionEvent::Frame(ControlFrame::PolicyStatus(_))))
        .count();
    assert_eq!(statuses, 2);
}

#[test]
fn a_full_outbox_refuses_application_frames_but_keeps_outcomes() {
    let mut pair = Pair::default_pair();
    pair.gateway_config.outbox_capacity = 2;
    pair.restart_gateway();
    pair.advance(ms(100));
    let id = pair.enqueue(NewCommand::new(GATEWAY, "flush")).id;
    pair.advance(ms(50));
    pair.set_server_up(false);
    pair.gateway.send(policy_status("a", 1)).unwrap();
    pair.gateway.send(policy_status("b", 1)).unwrap();
    let err = pair.gateway.send(policy_status("c", 1)).unwrap_err();
    assert!(err.to_string().contains("outbox is full"), "{err}");
    pair.gateway
        .report_outcome(id, Outcome::succeeded())
        .unwrap();
    pair.set_server_up(true);
    pair.advance(ms(5_000));
    assert_eq!(pair.command(&id).state, CommandState::Succeeded);
}

#[test]
fn a_redelivered_command_is_answered_from_the_journal_not_run_again() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    let id = pair.enqueue(NewCommand::new(GATEWAY, "door.open")).id;
    pair.advance(ms(50));
    assert_eq!(pair.executions[&id], 1);
    // The outcome is written, but the connection breaks before it reaches the server.
    pair.drop_to_server = true;
    pair.complete(
        id,
        Outcome::succeeded().with_result(serde_json::json!({"opened": true})),
    );
    pair.disconnect();
    pair.drop_to_server = false;
    assert_ne!(pair.command(&id).state, CommandState::Succeeded);
    // Crash the gateway too: only the journal remembers.
    pair.restart_gateway();
    pair.advance(ms(5_000));
    assert_eq!(pair.executions[&id], 1, "never run twice");
    let record = pair.command(&id);
    assert_eq!(record.state, CommandState::Succeeded);
    assert_eq!(record.result, Some(serde_json::json!({"opened": true})));
    assert!(record.attempts >= 2, "it was redelivered: {record:?}");
}

#[test]
fn a_command_running_during_a_crash_is_failed_not_rerun() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    let id = pair.enqueue(NewCommand::new(GATEWAY, "firmware.update")).id;
    pair.advance(ms(50));
    pair.restart_gateway();
    pair.advance(ms(5_000));
    assert_eq!(pair.executions[&id], 1);
    let record = pair.command(&id);
    assert_eq!(record.state, CommandState::Failed);
    assert!(record.detail.unwrap().contains("interrupted"));
    assert!(
        pair.gateway_events
            .iter()
            .any(|(_, e)| matches!(e, GatewayEvent::CommandInterrupted { id: i } if *i == id))
    );
}

#[test]
fn commands_for_an_offline_gateway_expire_at_their_deadline_and_never_run() {
    let mut pair = Pair::default_pair();
    pair.set_server_up(false);
    let deadline = pair.wall_ms() + 3_000;
    let id = pair
        .enqueue(NewCommand::new(GATEWAY, "door.open").delivery_deadline_ms(deadline))
        .id;
    pair.advance(ms(2_999));
    assert_eq!(pair.command(&id).state, CommandState::Queued);
    pair.advance(ms(2));
    let record = pair.command(&id);
    assert_eq!(record.state, CommandState::Expired);
    pair.set_server_up(true);
    pair.advance(ms(5_000));
    assert!(pair.gateway.is_established());
    assert!(!pair.executions.contains_key(&id));
}

#[test]
fn deadlines_survive_a_server_restart() {
    let mut pair = Pair::default_pair();
    pair.set_server_up(false);
    let deadline = pair.wall_ms() + 10_000;
    let id = pair
        .enqueue(NewCommand::new(GATEWAY, "door.open").delivery_deadline_ms(deadline))
        .id;
    pair.advance(ms(4_000));
    pair.restart_server();
    pair.advance(ms(6_001));
    assert_eq!(pair.command(&id).state, CommandState::Expired);
}

#[test]
fn execution_times_out_without_progress_and_late_outcomes_never_move_it_back() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    let id = pair
        .enqueue(NewCommand::new(GATEWAY, "scan").execution_timeout_ms(2_000))
        .id;
    pair.advance(ms(50));
    assert_eq!(pair.command(&id).state, CommandState::Received);
    // Progress restarts the step timer: 3 s in, still alive.
    pair.advance(ms(1_500));
    pair.gateway
        .report_progress(id, Some("half".into()))
        .unwrap();
    pair.advance(ms(1_500));
    assert_eq!(pair.command(&id).state, CommandState::InProgress);
    pair.advance(ms(600));
    assert_eq!(pair.command(&id).state, CommandState::TimedOut);
    // The outcome arrives late: recorded, not applied.
    pair.complete(id, Outcome::succeeded());
    pair.advance(ms(100));
    assert_eq!(pair.command(&id).state, CommandState::TimedOut);
    let acks = pair.plane.queue().acks(&id).unwrap();
    let last = acks.last().unwrap();
    assert_eq!(last.state, CommandAckState::Succeeded);
    assert!(!last.applied);
    assert_eq!(pair.logged("command.ack_ignored").len(), 1);
}

#[test]
fn a_silent_gateway_goes_offline_within_one_and_a_half_intervals() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    assert!(pair.plane.presence(GATEWAY).unwrap().online);
    pair.drop_to_server = true;
    let last_seen = pair.plane.presence(GATEWAY).unwrap().last_seen_ms;
    pair.advance(ms(3_000));
    let offline = pair.logged("gateway.offline");
    assert_eq!(offline.len(), 1, "{offline:?}");
    let at = offline[0]["at_ms"].as_i64().unwrap();
    assert!(
        at - last_seen <= 1_501,
        "offline {} ms after last seen",
        at - last_seen
    );
    assert!(at - last_seen > 1_000);
}

#[test]
fn commands_go_out_by_priority_then_age_within_the_in_flight_window() {
    let mut pair = Pair::default_pair();
    pair.max_in_flight = 1;
    pair.restart_server();
    pair.set_server_up(false);
    let low = pair.enqueue(NewCommand::new(GATEWAY, "low")).id;
    let high_old = pair
        .enqueue(NewCommand::new(GATEWAY, "high1").priority(5))
        .id;
    let high_new = pair
        .enqueue(NewCommand::new(GATEWAY, "high2").priority(5))
        .id;
    pair.auto_complete = Some(Outcome::succeeded());
    pair.set_server_up(true);
    pair.advance(ms(5_000));
    let order: Vec<_> = pair
        .gateway_events
        .iter()
        .filter_map(|(_, e)| match e {
            GatewayEvent::Command(c) => Some(c.id),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![high_old, high_new, low]);
    for id in [low, high_old, high_new] {
        assert_eq!(pair.command(&id).state, CommandState::Succeeded);
    }
}

#[test]
fn unconfirmed_commands_are_redelivered_after_the_redelivery_delay() {
    let mut pair = Pair::default_pair();
    pair.queue_config.redeliver_after_ms = 2_000;
    pair.restart_server();
    pair.advance(ms(100));
    // The command goes out but never arrives.
    pair.drop_to_gateway = true;
    let id = pair.enqueue(NewCommand::new(GATEWAY, "flush")).id;
    pair.advance(ms(500));
    pair.drop_to_gateway = false;
    assert_eq!(pair.command(&id).state, CommandState::Sent);
    pair.advance(ms(2_000));
    assert_eq!(pair.executions.get(&id), Some(&1));
    assert_eq!(pair.command(&id).state, CommandState::Received);
}

#[test]
fn an_outcome_lost_on_a_link_that_stays_up_is_asked_for_again() {
    let mut pair = Pair::default_pair();
    pair.queue_config.redeliver_after_ms = 2_000;
    pair.restart_server();
    pair.advance(ms(100));
    let id = pair.enqueue(NewCommand::new(GATEWAY, "flush")).id;
    pair.advance(ms(50));
    assert_eq!(pair.command(&id).state, CommandState::Received);
    // The outcome is lost, but for less than the silence limit: the session survives, so no
    // reconnect will bring the command back.
    pair.drop_to_server = true;
    pair.complete(id, Outcome::failed("jammed"));
    pair.advance(ms(500));
    pair.drop_to_server = false;
    pair.advance(ms(1_000));
    assert_eq!(pair.command(&id).state, CommandState::Received);
    assert_eq!(
        pair.logged("gateway.offline").len(),
        0,
        "the session stayed up"
    );
    // The server asks again; the journal answers with the stored outcome.
    pair.advance(ms(1_000));
    let record = pair.command(&id);
    assert_eq!(record.state, CommandState::Failed);
    assert_eq!(record.detail.as_deref(), Some("jammed"));
    assert_eq!(pair.executions[&id], 1, "answered, not run again");
}

#[test]
fn redeliveries_of_a_running_command_do_not_restart_its_step_timer() {
    let mut pair = Pair::default_pair();
    pair.queue_config.redeliver_after_ms = 1_000;
    pair.restart_server();
    pair.advance(ms(100));
    let id = pair
        .enqueue(NewCommand::new(GATEWAY, "scan").execution_timeout_ms(4_000))
        .id;
    pair.advance(ms(50));
    pair.gateway.report_progress(id, None).unwrap();
    pair.advance(ms(50));
    assert_eq!(pair.command(&id).state, CommandState::InProgress);
    // The application hangs. The server asks again every second on the live session, and
    // each reconnect redelivers it too; the journal answers `received` ("already running"),
    // which is not progress.
    for _ in 0..3 {
        pair.advance(ms(1_000));
        pair.disconnect();
    }
    pair.advance(ms(800));
    assert!(pair.command(&id).attempts >= 5, "{:?}", pair.command(&id));
    assert_eq!(pair.command(&id).state, CommandState::InProgress);
    pair.advance(ms(300));
    assert_eq!(pair.command(&id).state, CommandState::TimedOut);
    assert_eq!(pair.executions[&id], 1);
}

#[test]
fn canceling_needs_force_once_delivered() {
    let mut pair = Pair::default_pair();
    pair.set_server_up(false);
    let queued = pair.enqueue(NewCommand::new(GATEWAY, "a")).id;
    pair.plane.cancel(&queued, false).unwrap();
    assert_eq!(pair.command(&queued).state, CommandState::Canceled);
    pair.set_server_up(true);
    pair.advance(ms(100));
    let running = pair.enqueue(NewCommand::new(GATEWAY, "b")).id;
    pair.advance(ms(50));
    let err = pair.plane.cancel(&running, false).unwrap_err();
    assert!(err.to_string().contains("force"), "{err}");
    let change = pair.plane.cancel(&running, true).unwrap();
    assert_eq!(change.to, CommandState::Canceled);
    pair.complete(running, Outcome::succeeded());
    assert_eq!(pair.command(&running).state, CommandState::Canceled);
    assert!(!pair.executions.contains_key(&queued));
}

#[test]
fn every_state_change_is_published_once() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    pair.auto_complete = Some(Outcome::failed("jammed"));
    let id = pair.enqueue(NewCommand::new(GATEWAY, "door.open")).id;
    pair.advance(ms(100));
    let path: Vec<String> = pair
        .logged("command.state")
        .into_iter()
        .filter(|e| e["id"] == id.to_string())
        .map(|e| e["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(path, ["queued", "sent", "received", "failed"]);
}

#[test]
fn a_command_too_large_for_the_channel_is_rejected_instead_of_sent() {
    let mut pair = Pair::default_pair();
    // The server sends no command frame over 2,000 bytes (the plane itself accepted it: a
    // command stored under a larger limit, or by an older version).
    pair.max_frame_bytes = Some(2_000);
    pair.auto_complete = Some(Outcome::succeeded());
    pair.advance(ms(100));
    let big = pair
        .enqueue(
            NewCommand::new(GATEWAY, "device.upload").payload(serde_json::json!({
                "blob": "x".repeat(5_000)
            })),
        )
        .id;
    let small = pair.enqueue(NewCommand::new(GATEWAY, "flush")).id;
    pair.advance(ms(1_000));

    let record = pair.command(&big);
    assert_eq!(record.state, CommandState::Rejected);
    let detail = record.detail.unwrap_or_default();
    assert!(
        detail.contains("2000 bytes") && detail.contains("never sent"),
        "{detail}"
    );
    assert!(
        !pair.executions.contains_key(&big),
        "the gateway never got it"
    );
    assert!(
        pair.server_received
            .iter()
            .all(|f| !matches!(f, ControlFrame::CommandAck(a) if a.id == big)),
        "nothing came back for a frame that never left"
    );
    // The link stayed up and the next command went through.
    assert_eq!(pair.command(&small).state, CommandState::Succeeded);
    assert_eq!(pair.connect_attempts.len(), 1, "no reconnect loop");
    let path: Vec<String> = pair
        .logged("command.state")
        .into_iter()
        .filter(|e| e["id"] == big.to_string())
        .map(|e| e["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(path, ["queued", "sent", "rejected"]);
}

#[test]
fn a_sent_command_cancels_without_force_and_a_late_receipt_does_not_revive_it() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    // Enqueued while connected: written to the link, `received` not back yet (10 ms latency).
    let id = pair.enqueue(NewCommand::new(GATEWAY, "door.open")).id;
    assert_eq!(pair.command(&id).state, CommandState::Sent);
    let change = pair.plane.cancel(&id, false).expect("a plain cancel");
    assert_eq!(change.from, Some(CommandState::Sent));
    assert_eq!(change.to, CommandState::Canceled);
    pair.advance(ms(100));
    // The frame was already on its way: the gateway got it and confirmed it. Documented: it
    // may run it; the server records the receipt and keeps the command canceled.
    assert_eq!(pair.executions.get(&id), Some(&1));
    pair.complete(id, Outcome::succeeded());
    pair.advance(ms(100));
    let record = pair.command(&id);
    assert_eq!(record.state, CommandState::Canceled);
    let acks = pair.plane.queue().acks(&id).unwrap();
    let reported: Vec<(CommandAckState, bool)> =
        acks.iter().map(|a| (a.state, a.applied)).collect();
    assert_eq!(
        reported,
        [
            (CommandAckState::Received, false),
            (CommandAckState::Succeeded, false)
        ]
    );
    assert_eq!(pair.logged("command.ack_ignored").len(), 2);
}

use super::*;

fn gws(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("gw-{i:03}")).collect()
}

fn status(version: u64, state: PolicyState, code: Option<ErrorCode>) -> PolicyStatus {
    PolicyStatus {
        name: "fw".into(),
        version,
        state,
        reason: code.as_ref().map(|c| format!("because {c}")),
        code,
        running_version: None,
    }
}

fn applied(version: u64) -> PolicyStatus {
    status(version, PolicyState::Applied, None)
}

fn rejected(version: u64, code: ErrorCode) -> PolicyStatus {
    status(version, PolicyState::Rejected, Some(code))
}

/// Release everything releasable, mark it delivered, return the gateways.
fn send(t: &mut RolloutTracker, now: i64) -> Vec<String> {
    let released = t.release(now, |_| true);
    for (g, p) in &released {
        t.mark_delivered(g, p, false, now);
    }
    released.into_iter().map(|(g, _)| g).collect()
}

#[test]
fn an_unstaged_rollout_releases_everything_and_completes() {
    let mut t = RolloutTracker::new();
    let id = t
        .start_rollout("fw", 2, gws(5), StagedRollout::default(), 0)
        .unwrap();
    assert_eq!(t.summary(id).unwrap().pending, 5);
    assert_eq!(send(&mut t, 10).len(), 5);
    let s = t.summary(id).unwrap();
    assert_eq!(
        (s.delivered, s.released, s.state),
        (5, 5, RolloutState::InProgress)
    );
    for g in gws(5) {
        assert_eq!(t.handle_status(&g, &applied(2), 20), StatusEffect::Recorded);
    }
    let s = t.summary(id).unwrap();
    assert_eq!(
        (s.applied, s.pending, s.delivered, s.state),
        (5, 0, 0, RolloutState::Completed)
    );
    let target = t.status("gw-000", "fw").unwrap();
    assert_eq!(target.last_attempt_ms, Some(10));
    assert_eq!(target.last_success_ms, Some(20));
    assert_eq!(target.reported_version, Some(2));
}

#[test]
fn per_minute_staging_releases_at_most_n_in_any_minute() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        max_per_minute: Some(3),
        ..Default::default()
    };
    let id = t.start_rollout("fw", 2, gws(7), staging, 0).unwrap();
    assert_eq!(send(&mut t, 0).len(), 3);
    assert_eq!(send(&mut t, 59_999).len(), 0);
    assert_eq!(t.poll_timeout(), Some(60_000));
    assert_eq!(send(&mut t, 60_000).len(), 3);
    assert_eq!(send(&mut t, 120_000).len(), 1);
    assert_eq!(t.summary(id).unwrap().released, 7);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn percent_in_flight_staging_waits_for_answers() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        max_percent_in_flight: Some(20),
        ..Default::default()
    };
    t.start_rollout("fw", 2, gws(10), staging, 0).unwrap();
    let first = send(&mut t, 0);
    assert_eq!(first.len(), 2, "20 % of 10");
    assert!(send(&mut t, 1).is_empty());
    t.handle_status(&first[0], &applied(2), 2);
    assert_eq!(send(&mut t, 3).len(), 1);
    t.handle_status(&first[1], &rejected(2, ErrorCode::ValidationFailed), 4);
    assert_eq!(send(&mut t, 5).len(), 1);
}

#[test]
fn offline_gateways_do_not_use_the_budget() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        max_per_minute: Some(2),
        ..Default::default()
    };
    t.start_rollout("fw", 2, gws(4), staging, 0).unwrap();
    let released = t.release(0, |g| g == "gw-002" || g == "gw-003");
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|(g, _)| g == "gw-002" || g == "gw-003"));
    // gw-000 connects later: released once the window allows.
    assert!(t.due_for("gw-000", 1).is_empty());
    assert_eq!(t.due_for("gw-000", 60_000), vec!["fw".to_owned()]);
}

#[test]
fn the_abort_rule_halts_a_rollout_after_enough_rejections() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        max_per_minute: Some(4),
        abort: Some(AbortRule {
            rejected_percent: 50.0,
            min_reported: 4,
        }),
        ..Default::default()
    };
    let id = t.start_rollout("fw", 2, gws(20), staging, 0).unwrap();
    let first = send(&mut t, 0);
    // 3 rejections out of 3 reported: below the minimum, no abort yet.
    for g in &first[..3] {
        t.handle_status(g, &rejected(2, ErrorCode::ValidationFailed), 1);
    }
    assert_eq!(t.summary(id).unwrap().state, RolloutState::InProgress);
    t.handle_status(&first[3], &applied(2), 2);
    let s = t.summary(id).unwrap();
    assert_eq!(s.state, RolloutState::Aborted, "{s:?}");
    assert!(s.abort_reason.as_deref().unwrap().contains("3 of 4"));
    assert!(
        send(&mut t, 600_000).is_empty(),
        "an aborted rollout releases nothing"
    );
    assert_eq!(s.released, 4);
    assert_eq!(s.pending, 16);
    let target = t.status(&first[0], "fw").unwrap();
    assert_eq!(target.state, TargetState::Rejected);
    assert_eq!(target.error_code, Some(ErrorCode::ValidationFailed));
    assert_eq!(target.reason.as_deref(), Some("because validation_failed"));
}

#[test]
fn the_abort_rule_spares_a_rollout_under_the_threshold() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        abort: Some(AbortRule {
            rejected_percent: 50.0,
            min_reported: 2,
        }),
        ..Default::default()
    };
    let id = t.start_rollout("fw", 2, gws(4), staging, 0).unwrap();
    let all = send(&mut t, 0);
    t.handle_status(&all[0], &rejected(2, ErrorCode::ValidationFailed), 1);
    t.handle_status(&all[1], &applied(2), 1);
    assert_eq!(
        t.summary(id).unwrap().state,
        RolloutState::InProgress,
        "50 % is not above 50 %"
    );
}

#[test]
fn a_refused_patch_goes_back_to_pending_for_the_full_document() {
    let mut t = RolloutTracker::new();
    t.start_rollout("fw", 2, gws(1), StagedRollout::default(), 0)
        .unwrap();
    let released = t.release(0, |_| true);
    t.mark_delivered(&released[0].0, "fw", true, 0);
    let effect = t.handle_status("gw-000", &rejected(2, ErrorCode::BaseMismatch), 1);
    assert_eq!(effect, StatusEffect::ResendFull);
    let target = t.status("gw-000", "fw").unwrap();
    assert!(target.needs_full);
    assert_eq!(target.state, TargetState::Pending);
    assert_eq!(t.due_for("gw-000", 2), vec!["fw".to_owned()]);
    // The full document refused by checksum is a real rejection, not another resend.
    t.mark_delivered("gw-000", "fw", false, 2);
    assert_eq!(
        t.handle_status("gw-000", &rejected(2, ErrorCode::ChecksumMismatch), 3),
        StatusEffect::Recorded
    );
    assert_eq!(
        t.status("gw-000", "fw").unwrap().state,
        TargetState::Rejected
    );
}

#[test]
fn statuses_about_other_versions_are_ignored() {
    let mut t = RolloutTracker::new();
    t.start_rollout("fw", 3, gws(1), StagedRollout::default(), 0)
        .unwrap();
    send(&mut t, 0);
    assert_eq!(
        t.handle_status("gw-000", &applied(2), 1),
        StatusEffect::Ignored
    );
    assert_eq!(
        t.handle_status("nobody", &applied(3), 1),
        StatusEffect::Ignored
    );
    assert_eq!(
        t.status("gw-000", "fw").unwrap().state,
        TargetState::Delivered
    );
}

#[test]
fn reports_from_hello_settle_targets() {
    let mut t = RolloutTracker::new();
    t.set_desired("gw-000", "fw", 2);
    t.set_desired("gw-001", "fw", 2);
    t.handle_report("gw-000", "fw", Some(2), true, 5);
    t.handle_report("gw-001", "fw", Some(1), false, 5);
    assert_eq!(
        t.status("gw-000", "fw").unwrap().state,
        TargetState::Applied
    );
    assert_eq!(t.status("gw-000", "fw").unwrap().last_success_ms, Some(5));
    assert_eq!(t.due_for("gw-001", 5), vec!["fw".to_owned()]);
    // A delivery lost with the connection goes back to pending on the next hello.
    t.mark_delivered("gw-001", "fw", false, 6);
    t.handle_report("gw-001", "fw", Some(1), false, 7);
    assert_eq!(
        t.status("gw-001", "fw").unwrap().state,
        TargetState::Pending
    );
}

#[test]
fn only_transient_rejections_are_retried_on_reconnect() {
    let mut t = RolloutTracker::new();
    t.set_desired("a", "fw", 2);
    t.set_desired("b", "fw", 2);
    for (g, code) in [
        ("a", ErrorCode::Internal),
        ("b", ErrorCode::ValidationFailed),
    ] {
        t.mark_delivered(g, "fw", false, 0);
        t.handle_status(g, &rejected(2, code), 1);
        t.handle_report(g, "fw", Some(1), false, 2);
    }
    assert_eq!(t.status("a", "fw").unwrap().state, TargetState::Pending);
    assert_eq!(t.status("b", "fw").unwrap().state, TargetState::Rejected);
}

#[test]
fn a_target_the_server_cannot_send_is_rejected_and_stays_so() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        abort: Some(AbortRule {
            rejected_percent: 50.0,
            min_reported: 2,
        }),
        ..Default::default()
    };
    let id = t.start_rollout("fw", 2, gws(3), staging, 0).unwrap();
    let released = t.release(1, |_| true);
    assert_eq!(released.len(), 3);
    for g in ["gw-000", "gw-001"] {
        t.reject(g, "fw", ErrorCode::PayloadTooLarge, "too large to send");
    }
    let target = t.status("gw-000", "fw").unwrap();
    assert_eq!(target.state, TargetState::Rejected);
    assert_eq!(target.error_code, Some(ErrorCode::PayloadTooLarge));
    assert_eq!(target.reason.as_deref(), Some("too large to send"));
    assert_eq!(target.last_attempt_ms, None, "nothing was sent");
    let s = t.summary(id).unwrap();
    assert_eq!((s.rejected, s.pending), (2, 1));
    assert!(s.abort_reason.is_some(), "it counts for the abort rule");
    // A reconnect does not retry it: the document would not fit any better.
    t.handle_report("gw-000", "fw", Some(1), false, 5);
    assert_eq!(
        t.status("gw-000", "fw").unwrap().state,
        TargetState::Rejected
    );
    // Unknown targets are ignored.
    t.reject("nobody", "fw", ErrorCode::PayloadTooLarge, "x");
    assert!(t.status("nobody", "fw").is_none());
}

#[test]
fn a_later_rollout_supersedes_targets_of_an_earlier_one() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        max_per_minute: Some(1),
        ..Default::default()
    };
    let first = t.start_rollout("fw", 2, gws(3), staging, 0).unwrap();
    send(&mut t, 0);
    let second = t
        .start_rollout("fw", 3, gws(3), StagedRollout::default(), 1)
        .unwrap();
    let s1 = t.summary(first).unwrap();
    assert_eq!(
        (s1.superseded, s1.pending + s1.delivered, s1.state),
        (3, 0, RolloutState::Completed)
    );
    assert_eq!(send(&mut t, 2).len(), 3);
    assert_eq!(t.summary(second).unwrap().delivered, 3);
    assert_eq!(t.status("gw-000", "fw").unwrap().desired_version, 3);
}

#[test]
fn targets_already_on_the_version_count_as_applied() {
    let mut t = RolloutTracker::new();
    t.set_desired("a", "fw", 1);
    t.handle_report("a", "fw", Some(1), true, 0);
    // Re-pointing a rollout at the version it already runs (e.g. after an assignment change).
    t.clear_desired("a", "fw");
    t.set_desired("a", "fw", 1);
    t.handle_report("a", "fw", Some(1), true, 0);
    let id = t
        .start_rollout("fw", 2, ["a".to_owned()], StagedRollout::default(), 0)
        .unwrap();
    assert_eq!(t.summary(id).unwrap().pending, 1);
    send(&mut t, 1);
    t.handle_status("a", &applied(2), 2);
    // A newer rollout that goes back to a version the gateway reported counts it applied only
    // when that is what it runs.
    let again = t
        .start_rollout("fw", 2, ["a".to_owned()], StagedRollout::default(), 3)
        .unwrap();
    assert_eq!(t.summary(again).unwrap().applied, 1);
}

#[test]
fn staging_limits_are_validated_by_name() {
    let bad = [
        (
            StagedRollout {
                max_per_minute: Some(0),
                ..Default::default()
            },
            "max_per_minute",
        ),
        (
            StagedRollout {
                max_percent_in_flight: Some(0),
                ..Default::default()
            },
            "max_percent_in_flight",
        ),
        (
            StagedRollout {
                max_percent_in_flight: Some(101),
                ..Default::default()
            },
            "max_percent_in_flight",
        ),
        (
            StagedRollout {
                abort: Some(AbortRule {
                    rejected_percent: f64::NAN,
                    min_reported: 1,
                }),
                ..Default::default()
            },
            "abort.rejected_percent",
        ),
        (
            StagedRollout {
                abort: Some(AbortRule {
                    rejected_percent: 10.0,
                    min_reported: 0,
                }),
                ..Default::default()
            },
            "abort.min_reported",
        ),
    ];
    for (staging, name) in bad {
        match RolloutTracker::new().start_rollout("fw", 1, gws(1), staging, 0) {
            Err(Error::InvalidParameter { param_name, .. }) => assert_eq!(param_name, name),
            other => panic!("expected {name} to be refused, got {other:?}"),
        }
    }
}

#[test]
fn manual_abort_stops_releases_and_unknown_rollouts_are_errors() {
    let mut t = RolloutTracker::new();
    let id = t
        .start_rollout("fw", 2, gws(2), StagedRollout::default(), 0)
        .unwrap();
    t.abort(id, "operator said so").unwrap();
    assert!(send(&mut t, 0).is_empty());
    assert_eq!(
        t.summary(id).unwrap().abort_reason.as_deref(),
        Some("operator said so")
    );
    assert!(matches!(t.abort(99, "x"), Err(Error::UnknownRollout(99))));
}

#[test]
fn prune_forgets_finished_rollouts_only() {
    let mut t = RolloutTracker::new();
    let done = t
        .start_rollout("fw", 2, gws(2), StagedRollout::default(), 0)
        .unwrap();
    for g in send(&mut t, 0) {
        t.handle_status(&g, &applied(2), 1);
    }
    let running = t
        .start_rollout("dns", 1, gws(2), StagedRollout::default(), 5)
        .unwrap();
    let later = t
        .start_rollout("ntp", 1, gws(1), StagedRollout::default(), 50)
        .unwrap();
    assert_eq!(t.prune(10), vec![done]);
    assert!(t.summary(done).is_none());
    assert!(t.summary(running).is_some(), "still in progress");
    assert!(t.summary(later).is_some(), "too recent");
    // Targets of a forgotten rollout keep working.
    assert_eq!(
        t.status("gw-000", "fw").unwrap().state,
        TargetState::Applied
    );
    t.handle_report("gw-000", "fw", Some(1), false, 60);
    assert!(t.due_for("gw-000", 60).contains(&"fw".to_owned()));
}

#[test]
fn a_restored_rollout_keeps_its_releases_abort_state_and_ids() {
    let mut t = RolloutTracker::new();
    let staging = StagedRollout {
        max_per_minute: Some(2),
        ..Default::default()
    };
    let id = t.start_rollout("fw", 2, gws(5), staging, 0).unwrap();
    send(&mut t, 0);
    let record = t.rollout_record(id).unwrap();
    assert_eq!(
        record
            .targets
            .iter()
            .filter(|(_, released)| *released)
            .count(),
        2
    );

    let mut restarted = RolloutTracker::new();
    restarted.restore_rollout(record.clone());
    let s = restarted.summary(id).unwrap();
    assert_eq!((s.total, s.released, s.pending), (5, 2, 5));
    // Released targets are due at once on reconnect; the others wait for the budget.
    assert_eq!(restarted.due_for("gw-000", 1), vec!["fw".to_owned()]);
    assert_eq!(
        restarted.release(1, |_| true).len(),
        2,
        "a fresh minute after the restart"
    );
    // New rollouts never reuse a restored id.
    assert!(
        restarted
            .start_rollout("dns", 1, gws(1), StagedRollout::default(), 2)
            .unwrap()
            > id
    );

    let mut aborted = RolloutTracker::new();
    aborted.restore_rollout(RolloutRecord {
        aborted: Some("halted".into()),
        ..record
    });
    assert!(aborted.release(1, |_| true).is_empty());
    assert!(
        aborted.due_for("gw-004", 1).is_empty(),
        "unreleased targets of an aborted rollout wait"
    );
    assert_eq!(aborted.summary(id).unwrap().state, RolloutState::Aborted);
}

mod model {
    //! Random operation sequences: the per-rollout counters the tracker keeps incrementally must
    //! always equal a recount over the targets, and staging limits must hold.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Start {
            version: u64,
            gateways: Vec<u8>,
            per_minute: Option<u32>,
            percent: Option<u8>,
            abort: bool,
        },
        SetDesired {
            gateway: u8,
            version: u64,
        },
        Clear {
            gateway: u8,
        },
        Release {
            connected_mask: u8,
        },
        Deliver {
            gateway: u8,
            patch: bool,
        },
        Status {
            gateway: u8,
            applied: bool,
            code: u8,
        },
        Report {
            gateway: u8,
            in_sync: bool,
        },
        Tick {
            ms: i64,
        },
        Abort,
        Prune,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (1u64..5, prop::collection::vec(0u8..8, 0..8), prop::option::of(1u32..4), prop::option::of(1u8..=100), any::<bool>())
                .prop_map(|(version, gateways, per_minute, percent, abort)| Op::Start { version, gateways, per_minute, percent, abort }),
            1 => (0u8..8, 1u64..5).prop_map(|(gateway, version)| Op::SetDesired { gateway, version }),
            1 => (0u8..8).prop_map(|gateway| Op::Clear { gateway }),
            3 => any::<u8>().prop_map(|connected_mask| Op::Release { connected_mask }),
            3 => (0u8..8, any::<bool>()).prop_map(|(gateway, patch)| Op::Deliver { gateway, patch }),
            3 => (0u8..8, any::<bool>(), 0u8..4).prop_map(|(gateway, applied, code)| Op::Status { gateway, applied, code }),
            1 => (0u8..8, any::<bool>()).prop_map(|(gateway, in_sync)| Op::Report { gateway, in_sync }),
            1 => (0i64..90_000).prop_map(|ms| Op::Tick { ms }),
            1 => Just(Op::Abort),
            1 => Just(Op::Prune),
        ]
    }

    fn name(g: u8) -> String {
        format!("gw-{g}")
    }

    proptest! {
        #[test]
        fn counters_match_a_recount(ops in prop::collection::vec(op(), 1..60)) {
            let mut t = RolloutTracker::new();
            let mut now = 0i64;
            let mut releases: Vec<(RolloutId, i64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Start { version, gateways, per_minute, percent, abort } => {
                        let mut gws: Vec<String> = gateways.into_iter().map(name).collect();
                        gws.sort();
                        gws.dedup();
                        let staging = StagedRollout {
                            max_per_minute: per_minute,
                            max_percent_in_flight: percent,
                            abort: abort.then_some(AbortRule { rejected_percent: 50.0, min_reported: 2 }),
                        };
                        t.start_rollout("fw", version, gws, staging, now).unwrap();
                    }
                    Op::SetDesired { gateway, version } => t.set_desired(&name(gateway), "fw", version),
                    Op::Clear { gateway } => t.clear_desired(&name(gateway), "fw"),
                    Op::Release { connected_mask } => {
                        for (g, _) in t.release(now, |g| {
                            let i: u8 = g[3..].parse().unwrap();
                            connected_mask & (1 << i) != 0
                        }) {
                            let rollout = t.status(&g, "fw").unwrap().rollout.unwrap();
                            releases.push((rollout, now));
                        }
                    }
                    Op::Deliver { gateway, patch } => {
                        if t.status(&name(gateway), "fw").is_some_and(|s| s.released) {
                            t.mark_delivered(&name(gateway), "fw", patch, now);
                        }
                    }
                    Op::Status { gateway, applied, code } => {
                        if let Some(desired) = t.status(&name(gateway), "fw").map(|s| s.desired_version) {
                            let code = [ErrorCode::BaseMismatch, ErrorCode::ValidationFailed, ErrorCode::Internal, ErrorCode::ChecksumMismatch][code as usize].clone();
                            let s = if applied { super::applied(desired) } else { rejected(desired, code) };
                            t.handle_status(&name(gateway), &s, now);
                        }
                    }
                    Op::Report { gateway, in_sync } => {
                        let desired = t.status(&name(gateway), "fw").map(|s| s.desired_version);
                        t.handle_report(&name(gateway), "fw", desired.filter(|_| in_sync), in_sync, now);
                    }
                    Op::Tick { ms } => now += ms,
                    Op::Abort => {
                        if let Some(last) = t.rollouts().last().map(|r| r.id) {
                            t.abort(last, "test").unwrap();
                        }
                    }
                    Op::Prune => {
                        t.prune(now);
                    }
                }
                for summary in t.rollouts() {
                    let mine: Vec<&TargetStatus> = t.targets().filter(|s| s.rollout == Some(summary.id)).collect();
                    let count = |state| mine.iter().filter(|s| s.state == state).count();
                    prop_assert_eq!(summary.pending, count(TargetState::Pending), "{:?}", summary);
                    prop_assert_eq!(summary.delivered, count(TargetState::Delivered));
                    prop_assert_eq!(summary.applied, count(TargetState::Applied));
                    prop_assert_eq!(summary.rejected, count(TargetState::Rejected));
                    // No sliding minute ever saw more releases than the limit allows.
                    if let Some(limit) = t.rollouts.get(&summary.id).and_then(|r| r.staging.max_per_minute) {
                        let times: Vec<i64> = releases.iter().filter(|(r, _)| *r == summary.id).map(|(_, at)| *at).collect();
                        for at in &times {
                            let window = times.iter().filter(|t| **t > at - 60_000 && **t <= *at).count();
                            prop_assert!(window <= limit as usize, "{} releases within a minute, limit {}", window, limit);
                        }
                    }
                    if let Some(r) = t.rollouts.get(&summary.id) {
                        let in_flight = mine.iter().filter(|s| s.released && s.state.in_flight()).count();
                        prop_assert_eq!(r.in_flight, in_flight);
                    }
                }
            }
        }
    }
}

//! `PolicyService` end to end: a real SQLite file, a channel as the update sink, real
//! `PolicyApplier`s answering every frame. Publish → updates → statuses → rollout applied;
//! staged rollouts released by the service's own timer over paused tokio time; `base_mismatch`
//! answered with the full document; events and audit records; tenant isolation; a restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use gateway_policy::{
    AbortRule, AcceptAll, AssignTarget, AuditEvent, Error, PolicyEvent, PolicyServiceConfig,
    RolloutState, StagedRollout, TargetState, VersionOutcome,
};
use gateway_proto::PolicyContent;
use gateway_proto::clock::ManualClock;
use serde_json::{Value, json};
use support::{Fleet, TokioClock, admin, kinds};

const T0: i64 = 1_700_000_000_000;

fn big_document(mode: &str) -> Value {
    let allow: Vec<u32> = (1000..1200).collect();
    json!({"mode": mode, "allow": allow})
}

#[tokio::test]
async fn publish_assign_apply_and_report_every_step() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut f = Fleet::start(clock.clone()).await;
    f.add_gateways(&["gw-a", "gw-b", "gw-c"]);
    for id in ["gw-a", "gw-b", "gw-c"] {
        f.connect(id, "acme").await;
    }
    assert_eq!(f.pump().await, 0, "nothing is assigned yet");
    let ann = admin("acme", "ann");

    let r = f
        .service
        .publish(&ann, "fw", big_document("audit"), "first", None)
        .await
        .unwrap();
    assert_eq!((r.version, r.outcome), (1, VersionOutcome::Created));
    assert!(r.rollouts.is_empty(), "no gateway follows fw yet");
    let r = f
        .service
        .assign(&ann, "fw", AssignTarget::Tenant("acme".into()), None, None)
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(r.rollouts.len(), 1);
    let rollout = r.rollouts[0].id;
    assert_eq!((r.rollouts[0].total, r.rollouts[0].delivered), (3, 3));

    clock.advance_ms(10);
    assert_eq!(f.pump().await, 3);
    for id in ["gw-a", "gw-b", "gw-c"] {
        assert_eq!(f.running_version(id, "fw"), Some(1));
    }
    let status = f.service.rollout_status("acme", "fw").await.unwrap();
    assert_eq!((status.counts.total, status.counts.applied), (3, 3));
    assert!(
        status
            .gateways
            .iter()
            .all(|g| g.state == TargetState::Applied
                && g.reported_version == Some(1)
                && g.last_success_ms == Some(T0 + 10)
                && g.last_attempt_ms == Some(T0)
                && g.connected)
    );
    assert_eq!(status.rollouts[0].state, RolloutState::Completed);

    // Every step was reported: the publish, the assignment, the rollout starting and
    // completing, three statuses and two audit records.
    let events = f.events();
    assert_eq!(
        kinds(&events),
        vec![
            "policy.published",
            "audit",
            "policy.assigned",
            "policy.rollout",
            "audit",
            "policy.status",
            "policy.status",
            "policy.status",
            "policy.rollout",
        ]
    );
    assert!(events.iter().all(|e| e.tenant == "acme"));
    assert_eq!(events[0].data["version"], 1);
    assert_eq!(events[0].data["author"], "ann");
    assert_eq!(events[3].data["state"], "in_progress");
    assert_eq!(events[3].data["total"], 3);
    let status_event = &events[5].data;
    assert_eq!(status_event["state"], "applied");
    assert_eq!(status_event["target_state"], "applied");
    assert_eq!(status_event["rollout"], rollout);
    assert!(
        status_event["gateway_id"]
            .as_str()
            .unwrap()
            .starts_with("gw-")
    );
    assert_eq!(events[8].data["state"], "completed");
    assert_eq!(events[8].data["applied"], 3);
    let audit: AuditEvent = serde_json::from_value(events[4].data.clone()).unwrap();
    assert_eq!(
        (
            audit.actor.as_str(),
            audit.tenant.as_str(),
            audit.action.as_str(),
            audit.result.as_str()
        ),
        ("ann", "acme", "policy.assign", "ok")
    );
    assert_eq!(
        audit.target,
        json!({"policy": "fw", "assignment": {"tenant": "acme"}})
    );
    assert_eq!(audit.detail["rollouts"], json!([rollout]));

    // Version 2 goes out as a signed patch against version 1 and lands everywhere.
    let r = f
        .service
        .publish(&ann, "fw", big_document("enforce"), "enforce", None)
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    let sent = f.take_sent();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|o| matches!(
        o.update.content,
        PolicyContent::Patch {
            base_version: 1,
            ..
        }
    ) && o.update.signature.is_some()));
    for o in sent {
        f.deliver(o).await;
    }
    let view = f.service.rollout("acme", r.rollouts[0].id).await.unwrap();
    assert_eq!((view.applied, view.state), (3, RolloutState::Completed));
    for id in ["gw-a", "gw-b", "gw-c"] {
        assert_eq!(f.running_version(id, "fw"), Some(2));
    }
}

#[tokio::test(start_paused = true)]
async fn a_staged_rollout_is_released_by_the_service_timer() {
    let clock = TokioClock::new(T0);
    let mut f = Fleet::start(clock.clone()).await;
    let ids = ["gw-1", "gw-2", "gw-3", "gw-4", "gw-5"];
    f.add_gateways(&ids);
    for id in ids {
        f.connect(id, "acme").await;
    }
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "v1", None)
        .await
        .unwrap();
    let staging = StagedRollout {
        max_per_minute: Some(2),
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let r = f
        .service
        .assign(
            &ann,
            "fw",
            AssignTarget::Tenant("acme".into()),
            None,
            Some(staging),
        )
        .await
        .unwrap();
    let rollout = r.rollouts[0].id;
    assert_eq!((r.rollouts[0].total, r.rollouts[0].released), (5, 2));
    assert_eq!(f.pump().await, 2, "two gateways in the first minute");

    // Nobody calls the service: its own timer releases the next two when the minute is over.
    let next = f.updates.recv().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "released after {waited:?}"
    );
    f.deliver(next).await;
    assert_eq!(f.pump().await, 1, "the second of the minute's two");
    let view = f.service.rollout("acme", rollout).await.unwrap();
    assert_eq!((view.released, view.applied, view.pending), (4, 4, 1));
    assert_eq!(view.state, RolloutState::InProgress);

    // And the last one a minute later; then the rollout completes.
    let last = f.updates.recv().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(120));
    f.deliver(last).await;
    let view = f.service.rollout("acme", rollout).await.unwrap();
    assert_eq!((view.applied, view.state), (5, RolloutState::Completed));
    for id in ids {
        assert_eq!(f.running_version(id, "fw"), Some(1));
    }
    let events = f.events();
    let rollout_states: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == PolicyEvent::ROLLOUT)
        .map(|e| &e.data["state"])
        .collect();
    assert_eq!(rollout_states, vec!["in_progress", "completed"]);
}

#[tokio::test(start_paused = true)]
async fn finished_rollouts_are_pruned_after_the_retention() {
    let clock = TokioClock::new(T0);
    let config = PolicyServiceConfig {
        rollout_retention_ms: 10_000,
        prune_interval_ms: 5_000,
    };
    let mut f = Fleet::start_with(clock, config).await;
    f.add_gateways(&["gw-1"]);
    f.connect("gw-1", "acme").await;
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "", None)
        .await
        .unwrap();
    let r = f
        .service
        .assign(&ann, "fw", AssignTarget::Gateway("gw-1".into()), None, None)
        .await
        .unwrap();
    f.pump().await;
    let id = r.rollouts[0].id;
    assert_eq!(
        f.service.rollout("acme", id).await.unwrap().state,
        RolloutState::Completed
    );
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(matches!(
        f.service.rollout("acme", id).await,
        Err(Error::UnknownRollout(_))
    ));
    // The gateway's status is still tracked.
    let gw = f.service.gateway_policies("acme", "gw-1").await.unwrap();
    assert_eq!(gw.policies[0].state, TargetState::Applied);
}

#[tokio::test]
async fn a_refused_patch_is_answered_with_the_full_document() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut f = Fleet::start(clock).await;
    f.add_gateways(&["gw-1"]);
    f.connect("gw-1", "acme").await;
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", big_document("audit"), "", None)
        .await
        .unwrap();
    f.service
        .assign(&ann, "fw", AssignTarget::Tenant("acme".into()), None, None)
        .await
        .unwrap();
    f.pump().await;
    assert_eq!(f.running_version("gw-1", "fw"), Some(1));

    // The gateway loses its disk without the server noticing: it runs nothing, but the server
    // still believes it runs version 1 and sends version 2 as a patch.
    f.add_gateway("gw-1", AcceptAll);
    f.service
        .publish(&ann, "fw", big_document("enforce"), "", None)
        .await
        .unwrap();
    assert_eq!(f.pump().await, 2, "the patch, then the full document");
    assert!(matches!(
        f.delivered[1].update.content,
        PolicyContent::Patch {
            base_version: 1,
            ..
        }
    ));
    assert!(matches!(
        f.delivered[2].update.content,
        PolicyContent::Full { .. }
    ));
    assert_eq!(f.running_version("gw-1", "fw"), Some(2));
    let gw = f.service.gateway_policies("acme", "gw-1").await.unwrap();
    assert_eq!(
        (gw.policies[0].state, gw.policies[0].reported_version),
        (TargetState::Applied, Some(2))
    );
    let statuses: Vec<PolicyEvent> = f
        .events()
        .into_iter()
        .filter(|e| e.kind == PolicyEvent::STATUS)
        .collect();
    let last_two: Vec<(&Value, &Value)> = statuses[1..]
        .iter()
        .map(|e| (&e.data["state"], &e.data["code"]))
        .collect();
    assert_eq!(
        last_two,
        vec![
            (&json!("rejected"), &json!("base_mismatch")),
            (&json!("applied"), &Value::Null)
        ]
    );
}

#[tokio::test]
async fn a_rollout_aborts_on_rejections_and_says_so() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut f = Fleet::start(clock).await;
    let ids = ["gw-1", "gw-2", "gw-3", "gw-4"];
    for id in ids {
        f.add_gateway(id, |_: &str, doc: &Value| {
            if doc["mode"] == "broken" {
                Err("mode broken is not supported".to_owned())
            } else {
                Ok(())
            }
        });
        f.connect(id, "acme").await;
    }
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", json!({"mode": "ok"}), "", None)
        .await
        .unwrap();
    f.service
        .assign(&ann, "fw", AssignTarget::Tenant("acme".into()), None, None)
        .await
        .unwrap();
    f.pump().await;
    f.events();
    let staging = StagedRollout {
        max_percent_in_flight: Some(50),
        abort: Some(AbortRule {
            rejected_percent: 40.0,
            min_reported: 2,
        }),
        ..Default::default()
    };
    let r = f
        .service
        .publish(&ann, "fw", json!({"mode": "broken"}), "", Some(staging))
        .await
        .unwrap();
    assert_eq!(r.rollouts[0].released, 2, "50 % in flight");
    // The first rejection frees a slot (one report is below min_reported), so a third gateway
    // gets the version; the second rejection passes the threshold and stops the rollout.
    assert_eq!(f.pump().await, 3);
    let view = f.service.rollout("acme", r.rollouts[0].id).await.unwrap();
    assert_eq!(view.state, RolloutState::Aborted);
    assert_eq!(
        (view.rejected, view.released, view.pending),
        (3, 3, 1),
        "the fourth gateway is never sent the version"
    );
    for id in ids {
        assert_eq!(
            f.running_version(id, "fw"),
            Some(1),
            "{id} keeps its policy"
        );
    }
    let status = f.service.rollout_status("acme", "fw").await.unwrap();
    let rejected: Vec<_> = status
        .gateways
        .iter()
        .filter(|g| g.state == TargetState::Rejected)
        .collect();
    assert_eq!(rejected.len(), 3);
    assert!(
        rejected
            .iter()
            .all(|g| g.reason.as_deref().unwrap().contains("mode broken")
                && g.error_code == Some(gateway_proto::ErrorCode::ValidationFailed))
    );
    let events = f.events();
    let aborted = events
        .iter()
        .find(|e| e.kind == PolicyEvent::ROLLOUT && e.data["state"] == "aborted")
        .expect("an aborted rollout event");
    assert!(
        aborted.data["abort_reason"]
            .as_str()
            .unwrap()
            .contains("rejected")
    );
    // An operator cannot abort it again into another state, nor abort a completed one.
    let again = f
        .service
        .abort_rollout(&ann, r.rollouts[0].id, None)
        .await
        .unwrap();
    assert_eq!(again.state, RolloutState::Aborted);
}

#[tokio::test]
async fn a_gateway_that_was_away_gets_what_it_missed_on_connect() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut f = Fleet::start(clock).await;
    f.add_gateways(&["gw-1", "gw-2"]);
    f.connect("gw-1", "acme").await;
    f.connect("gw-2", "acme").await;
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "", None)
        .await
        .unwrap();
    f.service
        .assign(&ann, "fw", AssignTarget::Tenant("acme".into()), None, None)
        .await
        .unwrap();
    f.pump().await;
    f.service.gateway_disconnected("gw-2").await.unwrap();
    f.service
        .publish(&ann, "fw", json!({"v": 2}), "", None)
        .await
        .unwrap();
    let sent = f.take_sent();
    assert_eq!(
        sent.iter()
            .map(|o| o.gateway_id.as_str())
            .collect::<Vec<_>>(),
        vec!["gw-1"]
    );
    for o in sent {
        f.deliver(o).await;
    }
    let gw2 = f.service.gateway_policies("acme", "gw-2").await.unwrap();
    assert!(!gw2.gateway.connected);
    assert_eq!(gw2.policies[0].state, TargetState::Pending);
    f.connect("gw-2", "acme").await;
    assert_eq!(f.pump().await, 1);
    assert_eq!(f.running_version("gw-2", "fw"), Some(2));
}

#[tokio::test]
async fn tenants_only_see_and_change_their_own() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut f = Fleet::start(clock).await;
    f.add_gateways(&["acme-1", "acme-2", "globex-1"]);
    f.connect("acme-1", "acme").await;
    f.connect("acme-2", "acme").await;
    f.connect("globex-1", "globex").await;
    let ann = admin("acme", "ann");
    let gus = admin("globex", "gus");

    // Both tenants put a gateway in a group called "eu"; the groups are distinct.
    f.service
        .set_gateway_groups(&ann, "acme-1", vec!["eu".into()])
        .await
        .unwrap();
    let g = f
        .service
        .set_gateway_groups(&gus, "globex-1", vec!["eu".into()])
        .await
        .unwrap();
    assert_eq!(
        (g.tenant.as_str(), g.groups.clone()),
        ("globex", vec!["eu".to_owned()])
    );
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "", None)
        .await
        .unwrap();
    let r = f
        .service
        .assign(&ann, "fw", AssignTarget::Group("eu".into()), None, None)
        .await
        .unwrap();
    assert_eq!(r.rollouts[0].total, 1);
    f.pump().await;
    assert_eq!(f.running_version("acme-1", "fw"), Some(1));
    assert_eq!(f.running_version("acme-2", "fw"), None, "not in the group");
    assert_eq!(
        f.running_version("globex-1", "fw"),
        None,
        "globex's eu is another group"
    );

    // The name belongs to acme now.
    assert!(matches!(
        f.service
            .publish(&gus, "fw", json!({"v": 666}), "", None)
            .await,
        Err(Error::NameTaken { .. })
    ));
    assert!(matches!(
        f.service.policy("globex", "fw", None).await,
        Err(Error::UnknownPolicy { .. })
    ));
    assert!(matches!(
        f.service.rollout("globex", r.rollouts[0].id).await,
        Err(Error::UnknownRollout(_))
    ));
    assert!(matches!(
        f.service.abort_rollout(&gus, r.rollouts[0].id, None).await,
        Err(Error::UnknownRollout(_))
    ));
    assert!(f.service.policies("globex").await.unwrap().is_empty());
    // Nor can acme reach globex's gateway or tenant.
    assert!(matches!(
        f.service
            .assign(
                &ann,
                "fw",
                AssignTarget::Gateway("globex-1".into()),
                None,
                None
            )
            .await,
        Err(Error::UnknownGateway { .. })
    ));
    assert!(matches!(
        f.service
            .assign(
                &ann,
                "fw",
                AssignTarget::Tenant("globex".into()),
                None,
                None
            )
            .await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        f.service.set_gateway_groups(&ann, "globex-1", vec![]).await,
        Err(Error::UnknownGateway { .. })
    ));
    assert!(matches!(
        f.service.gateway_policies("acme", "globex-1").await,
        Err(Error::UnknownGateway { .. })
    ));
    // globex publishes its own policy; acme does not see it.
    f.service
        .publish(&gus, "dns", json!({"servers": []}), "", None)
        .await
        .unwrap();
    let names: Vec<String> = f
        .service
        .policies("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["fw"]);
    assert!(
        f.take_sent().is_empty(),
        "nothing reached another tenant's gateway"
    );

    // The refused attempts were audited with their result.
    let audits: Vec<AuditEvent> = f
        .events()
        .into_iter()
        .filter(|e| e.kind == PolicyEvent::AUDIT)
        .map(|e| serde_json::from_value(e.data).unwrap())
        .collect();
    let refused: Vec<(&str, &str, &str)> = audits
        .iter()
        .filter(|a| a.result != "ok")
        .map(|a| (a.tenant.as_str(), a.action.as_str(), a.result.as_str()))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("globex", "policy.publish", "conflict"),
            ("globex", "rollout.abort", "not_found"),
            ("acme", "policy.assign", "not_found"),
            ("acme", "policy.assign", "forbidden"),
            ("acme", "gateway.set_groups", "not_found"),
        ]
    );
    assert!(audits.iter().any(|a| a.action == "gateway.set_groups"
        && a.actor == "gus"
        && a.detail["groups"] == json!(["eu"])));
}

#[tokio::test]
async fn ownership_and_rollouts_survive_a_restart() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut f = Fleet::start(clock.clone()).await;
    f.add_gateways(&["gw-1"]);
    f.connect("gw-1", "acme").await;
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "", None)
        .await
        .unwrap();
    let r = f
        .service
        .assign(&ann, "fw", AssignTarget::Gateway("gw-1".into()), None, None)
        .await
        .unwrap();
    f.pump().await;
    let mut f = f.restart().await;
    assert!(matches!(
        f.service
            .publish(&admin("globex", "gus"), "fw", json!({}), "", None)
            .await,
        Err(Error::NameTaken { .. })
    ));
    let heads = f.service.policies("acme").await.unwrap();
    assert_eq!(heads[0].owner.as_deref(), Some("acme"));
    // The gateway comes back running version 1: nothing to send, its target is applied.
    f.connect("gw-1", "acme").await;
    assert!(f.take_sent().is_empty());
    let view = f.service.rollout("acme", r.rollouts[0].id).await.unwrap();
    assert_eq!((view.applied, view.state), (1, RolloutState::Completed));
}

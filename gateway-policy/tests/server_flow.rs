//! End to end, server to gateways: `PolicyServer` on a real SQLite file, talking to real
//! `PolicyApplier`s through the frames they would exchange (`hello.applied_policies`,
//! `policy_update`, `policy_status`). Covers publish, patches, signatures, dedup of identical
//! publishes, rollback, base mismatch recovery, assignment precedence, staged rollouts halting on
//! rejections, and a server restart.

#![cfg(feature = "server")]

use std::collections::BTreeMap;

use gateway_policy::{
    AbortRule, AcceptAll, ApplierConfig, Assignment, GatewayInfo, MemoryAppliedStore, Outgoing,
    PolicyApplier, PolicyServer, PolicyServerConfig, PolicySigner, PolicyStore, PolicyValidator,
    PublishOutcome, RolloutState, SqlitePolicyStore, StagedRollout, Target, TargetState,
};
use gateway_proto::{ErrorCode, PolicyContent, PolicyState, PolicyUpdate};
use serde_json::{Value, json};

const SECRET: [u8; 32] = [11; 32];

struct Fleet {
    server: PolicyServer<SqlitePolicyStore>,
    gateways: BTreeMap<String, PolicyApplier<MemoryAppliedStore>>,
    stores: BTreeMap<String, MemoryAppliedStore>,
    now: i64,
    _dir: tempfile::TempDir,
}

fn server_config(signed: bool) -> PolicyServerConfig {
    PolicyServerConfig {
        signing_key: signed.then(|| hex(&SECRET)),
        ..Default::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gateway_config() -> ApplierConfig {
    ApplierConfig {
        public_key: Some(PolicySigner::from_bytes(&SECRET).verifier().to_hex()),
        ..Default::default()
    }
}

impl Fleet {
    fn new(signed: bool) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlitePolicyStore::open(dir.path().join("policies.db")).unwrap();
        Fleet {
            server: PolicyServer::new(store, server_config(signed)).unwrap(),
            gateways: BTreeMap::new(),
            stores: BTreeMap::new(),
            now: 1_000,
            _dir: dir,
        }
    }

    fn tick(&mut self, ms: i64) -> i64 {
        self.now += ms;
        self.now
    }

    fn add_gateway(&mut self, id: &str, validator: impl PolicyValidator + 'static) {
        let store = MemoryAppliedStore::new();
        let (applier, _) = PolicyApplier::open(gateway_config(), store.clone(), validator).unwrap();
        self.gateways.insert(id.to_owned(), applier);
        self.stores.insert(id.to_owned(), store);
    }

    /// The gateway connects with a `hello` listing what it runs; deliver what the server sends.
    fn connect(&mut self, id: &str) -> Vec<PolicyUpdate> {
        let applied = self.gateways[id].applied_policies();
        let now = self.tick(1);
        let updates = self.server.connect(id, "acme", &applied, now).unwrap();
        self.deliver(
            updates
                .iter()
                .map(|u| Outgoing {
                    gateway_id: id.into(),
                    update: u.clone(),
                })
                .collect(),
        );
        updates
    }

    /// Hand updates to their gateways and the statuses back to the server, until quiet.
    fn deliver(&mut self, mut outgoing: Vec<Outgoing>) -> usize {
        let mut delivered = 0;
        while let Some(Outgoing { gateway_id, update }) = outgoing.pop() {
            delivered += 1;
            let now = self.tick(1);
            let status = self
                .gateways
                .get_mut(&gateway_id)
                .unwrap()
                .apply(&update, now);
            outgoing.extend(
                self.server
                    .handle_status(&gateway_id, &status, now)
                    .unwrap(),
            );
        }
        delivered
    }

    fn running(&self, id: &str) -> Option<(u64, Value)> {
        self.gateways[id]
            .running("fw")
            .map(|p| (p.version, p.document.clone()))
    }
}

fn tenant_assignment(now: i64) -> Assignment {
    Assignment {
        policy: "fw".into(),
        tenant: "acme".into(),
        target: Target::Tenant("acme".into()),
        version: None,
        assigned_at: now,
        author: "ann".into(),
    }
}

#[test]
fn publish_patch_dedup_and_rollback_across_a_signed_fleet() {
    let mut f = Fleet::new(true);
    for id in ["gw-a", "gw-b", "gw-c"] {
        f.add_gateway(id, AcceptAll);
    }
    let big: Vec<u32> = (0..200).collect();
    let v1 = json!({"mode": "audit", "allow": big});
    let r = f
        .server
        .publish("fw", v1.clone(), "ann", "first", None, f.now)
        .unwrap();
    assert!(r.outcome.as_ref().unwrap().created());
    assert!(r.rollouts.is_empty(), "nothing is assigned yet");
    let r = f
        .server
        .assign(tenant_assignment(f.now), None, f.now)
        .unwrap();
    assert!(r.updates.is_empty(), "no gateway is connected yet");
    assert_eq!(r.rollouts.len(), 0, "no gateway is known yet");

    // Each gateway connects with nothing: full, signed v1.
    for id in ["gw-a", "gw-b", "gw-c"] {
        let updates = f.connect(id);
        assert_eq!(updates.len(), 1);
        assert!(matches!(updates[0].content, PolicyContent::Full { .. }));
        assert_eq!(updates[0].signature.as_ref().map(|s| s.len()), Some(64));
        assert_eq!(f.running(id), Some((1, v1.clone())));
    }

    // v2 goes out as a patch against v1 and lands everywhere.
    let mut v2 = v1.clone();
    v2["mode"] = json!("enforce");
    let r = f
        .server
        .publish("fw", v2.clone(), "ann", "enforce", None, f.now)
        .unwrap();
    assert_eq!(r.updates.len(), 3);
    assert!(r.updates.iter().all(|o| matches!(
        o.update.content,
        PolicyContent::Patch {
            base_version: 1,
            ..
        }
    )));
    let rollout = r.rollouts[0];
    f.deliver(r.updates);
    for id in ["gw-a", "gw-b", "gw-c"] {
        assert_eq!(f.running(id), Some((2, v2.clone())));
    }
    let summary = f.server.rollout_summary(rollout).unwrap();
    assert_eq!(
        (summary.applied, summary.state),
        (3, RolloutState::Completed)
    );

    // The same document again (other key order, other whitespace): nothing is created or sent.
    let same: Value = serde_json::from_str(&serde_json::to_string_pretty(&v2).unwrap()).unwrap();
    let r = f
        .server
        .publish("fw", same, "bob", "again", None, f.now)
        .unwrap();
    assert!(matches!(r.outcome, Some(PublishOutcome::Unchanged(ref p)) if p.version == 2));
    assert!(r.updates.is_empty() && r.rollouts.is_empty());
    assert_eq!(f.server.store().history("fw").unwrap().len(), 2);

    // Rollback to v1: a new version 3 with v1's document, recorded with its author and message.
    let r = f
        .server
        .rollback("fw", 1, "carol", "enforce broke printing", None, f.now)
        .unwrap();
    let v3 = r.outcome.as_ref().unwrap().policy().clone();
    assert_eq!((v3.version, &v3.document), (3, &v1));
    assert_eq!(
        (v3.author.as_str(), v3.message.as_str()),
        ("carol", "enforce broke printing")
    );
    f.deliver(r.updates);
    for id in ["gw-a", "gw-b", "gw-c"] {
        assert_eq!(f.running(id), Some((3, v1.clone())));
    }
    let history = f.server.store().history("fw").unwrap();
    assert_eq!(
        history.iter().map(|h| h.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(history[2].checksum, history[0].checksum);
}

#[test]
fn a_gateway_that_runs_another_base_gets_the_full_document() {
    let mut f = Fleet::new(true);
    f.add_gateway("gw-a", AcceptAll);
    let big: Vec<u32> = (0..100).collect();
    f.server
        .publish("fw", json!({"v": 1, "big": big}), "ann", "1", None, f.now)
        .unwrap();
    f.server
        .assign(tenant_assignment(f.now), None, f.now)
        .unwrap();
    f.connect("gw-a");
    f.server.disconnect("gw-a");
    f.server
        .publish("fw", json!({"v": 2, "big": big}), "ann", "2", None, f.now)
        .unwrap();
    f.server
        .publish("fw", json!({"v": 3, "big": big}), "ann", "3", None, f.now)
        .unwrap();

    // The gateway says it runs v2 (a restored backup, a confused peer) but really runs v1: the
    // server sends a patch against v2, the applier refuses it with base_mismatch, the server
    // answers with the full document.
    let v2 = f.server.store().fetch("fw", 2).unwrap().unwrap();
    let claimed = vec![gateway_proto::AppliedPolicy {
        name: "fw".into(),
        version: 2,
        checksum: v2.checksum,
    }];
    let now = f.tick(1);
    let updates = f.server.connect("gw-a", "acme", &claimed, now).unwrap();
    assert!(matches!(
        updates[0].content,
        PolicyContent::Patch {
            base_version: 2,
            ..
        }
    ));
    let status = f.gateways.get_mut("gw-a").unwrap().apply(&updates[0], now);
    assert_eq!(status.code, Some(ErrorCode::BaseMismatch));
    let resend = f.server.handle_status("gw-a", &status, now).unwrap();
    assert_eq!(resend.len(), 1);
    assert!(matches!(
        resend[0].update.content,
        PolicyContent::Full { .. }
    ));
    f.deliver(resend);
    assert_eq!(f.running("gw-a").unwrap().0, 3);
    assert_eq!(
        f.server.tracker().status("gw-a", "fw").unwrap().state,
        TargetState::Applied
    );

    // A gateway reporting a version whose checksum the server does not have gets a full document.
    f.server.disconnect("gw-a");
    f.server
        .publish("fw", json!({"v": 4, "big": big}), "ann", "4", None, f.now)
        .unwrap();
    let bogus = vec![gateway_proto::AppliedPolicy {
        name: "fw".into(),
        version: 3,
        checksum: "0".repeat(64),
    }];
    let now = f.tick(1);
    let updates = f.server.connect("gw-a", "acme", &bogus, now).unwrap();
    assert!(matches!(updates[0].content, PolicyContent::Full { .. }));
}

#[test]
fn an_unsigning_server_is_refused_by_gateways_that_require_signatures() {
    let mut f = Fleet::new(false);
    f.add_gateway("gw-a", AcceptAll);
    f.server
        .publish("fw", json!({"a": 1}), "ann", "1", None, f.now)
        .unwrap();
    f.server
        .assign(tenant_assignment(f.now), None, f.now)
        .unwrap();
    let updates = f.connect("gw-a");
    assert!(updates[0].signature.is_none());
    assert_eq!(f.running("gw-a"), None);
    let target = f.server.tracker().status("gw-a", "fw").unwrap();
    assert_eq!(target.state, TargetState::Rejected);
    assert_eq!(target.error_code, Some(ErrorCode::BadSignature));
    assert!(target.reason.as_deref().unwrap().contains("unsigned"));
}

#[test]
fn group_and_gateway_assignments_override_the_tenant() {
    let mut f = Fleet::new(true);
    for id in ["gw-a", "gw-b", "gw-c"] {
        f.add_gateway(id, AcceptAll);
    }
    for v in 1..=3 {
        f.server
            .publish("fw", json!({"v": v}), "ann", "v", None, f.now)
            .unwrap();
    }
    let now = f.now;
    f.server
        .register_gateway(GatewayInfo::new("gw-b", "acme").with_group("lab"), now)
        .unwrap();
    f.server.assign(tenant_assignment(now), None, now).unwrap();
    f.server
        .assign(
            Assignment {
                target: Target::Group("lab".into()),
                version: Some(2),
                ..tenant_assignment(now)
            },
            None,
            now,
        )
        .unwrap();
    f.server
        .assign(
            Assignment {
                target: Target::Gateway("gw-c".into()),
                version: Some(1),
                ..tenant_assignment(now)
            },
            None,
            now,
        )
        .unwrap();
    for id in ["gw-a", "gw-b", "gw-c"] {
        f.connect(id);
    }
    assert_eq!(f.running("gw-a").unwrap().0, 3);
    assert_eq!(f.running("gw-b").unwrap().0, 2);
    assert_eq!(f.running("gw-c").unwrap().0, 1);
    // Unpinning gw-c moves it to the tenant's latest.
    let r = f
        .server
        .unassign("fw", &Target::Gateway("gw-c".into()), None, f.now)
        .unwrap();
    assert_eq!(r.updates.len(), 1);
    f.deliver(r.updates);
    assert_eq!(f.running("gw-c").unwrap().0, 3);
    assert_eq!(f.server.desired_versions("gw-b").get("fw"), Some(&2));
    // Pinning a version that does not exist is refused.
    let err = f
        .server
        .assign(
            Assignment {
                version: Some(9),
                ..tenant_assignment(f.now)
            },
            None,
            f.now,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            gateway_policy::Error::UnknownVersion { version: 9, .. }
        ),
        "{err}"
    );
}

#[test]
fn a_staged_rollout_halts_when_too_many_gateways_reject_it() {
    let mut f = Fleet::new(true);
    let refuse_bad = |_: &str, doc: &Value| {
        if doc.get("bad") == Some(&json!(true)) {
            Err("`bad` is not allowed".to_owned())
        } else {
            Ok(())
        }
    };
    let ids: Vec<String> = (0..20).map(|i| format!("gw-{i:02}")).collect();
    for id in &ids {
        f.add_gateway(id, refuse_bad);
    }
    f.server
        .publish("fw", json!({"bad": false}), "ann", "good", None, f.now)
        .unwrap();
    f.server
        .assign(tenant_assignment(f.now), None, f.now)
        .unwrap();
    for id in &ids {
        f.connect(id);
        assert_eq!(f.running(id).unwrap().0, 1);
    }

    let staging = StagedRollout {
        max_per_minute: Some(5),
        abort: Some(AbortRule {
            rejected_percent: 50.0,
            min_reported: 3,
        }),
        ..Default::default()
    };
    let r = f
        .server
        .publish(
            "fw",
            json!({"bad": true}),
            "ann",
            "oops",
            Some(staging.clone()),
            f.now,
        )
        .unwrap();
    let rollout = r.rollouts[0];
    assert_eq!(r.updates.len(), 5, "only 5 per minute");
    f.deliver(r.updates);
    let s = f.server.rollout_summary(rollout).unwrap();
    assert_eq!(
        (s.state, s.released, s.rejected, s.pending),
        (RolloutState::Aborted, 5, 5, 15),
        "{s:?}"
    );
    assert!(
        s.abort_reason
            .as_deref()
            .unwrap()
            .contains("above the abort threshold")
    );

    // Minutes later nothing more goes out, and every gateway still runs the good version.
    let now = f.tick(10 * 60_000);
    assert!(f.server.poll(now).unwrap().is_empty());
    assert_eq!(f.server.poll_timeout(), None);
    for id in &ids {
        assert_eq!(f.running(id).unwrap().0, 1, "{id}");
    }
    let rejected = f.server.gateway_status("gw-00");
    assert_eq!(rejected[0].error_code, Some(ErrorCode::ValidationFailed));

    // A fixed version supersedes the aborted rollout and reaches everyone, 5 per minute.
    let r = f
        .server
        .publish(
            "fw",
            json!({"bad": false, "fixed": true}),
            "ann",
            "fix",
            Some(staging),
            f.now,
        )
        .unwrap();
    let fix = r.rollouts[0];
    let mut sent = f.deliver(r.updates);
    while sent < 20 {
        let now = f.tick(60_000);
        let due = f.server.poll(now).unwrap();
        assert!(due.len() <= 5);
        assert!(!due.is_empty(), "the rollout stalled after {sent}");
        sent += f.deliver(due);
    }
    let s = f.server.rollout_summary(fix).unwrap();
    assert_eq!((s.state, s.applied), (RolloutState::Completed, 20), "{s:?}");
    assert_eq!(f.server.rollout_summary(rollout).unwrap().superseded, 20);
    for id in &ids {
        assert_eq!(f.running(id).unwrap().0, 3);
    }
}

#[test]
fn a_restarted_server_and_gateway_agree_without_resending() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("policies.db");
    let gateway_store = MemoryAppliedStore::new();
    {
        let mut server =
            PolicyServer::new(SqlitePolicyStore::open(&db).unwrap(), server_config(true)).unwrap();
        let (mut applier, _) =
            PolicyApplier::open(gateway_config(), gateway_store.clone(), AcceptAll).unwrap();
        server
            .publish("fw", json!({"a": 1}), "ann", "1", None, 0)
            .unwrap();
        server.assign(tenant_assignment(0), None, 0).unwrap();
        for update in server.connect("gw-a", "acme", &[], 1).unwrap() {
            let status = applier.apply(&update, 2);
            server.handle_status("gw-a", &status, 2).unwrap();
        }
    }
    // Both sides restart: the gateway loads what it applied, the server its assignments.
    let mut server =
        PolicyServer::new(SqlitePolicyStore::open(&db).unwrap(), server_config(true)).unwrap();
    let (applier, report) =
        PolicyApplier::open(gateway_config(), gateway_store, AcceptAll).unwrap();
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(server.desired_versions("gw-a").get("fw"), Some(&1));
    assert_eq!(
        server.tracker().status("gw-a", "fw").unwrap().state,
        TargetState::Pending
    );
    let updates = server
        .connect("gw-a", "acme", &applier.applied_policies(), 10)
        .unwrap();
    assert!(
        updates.is_empty(),
        "the gateway already runs the desired version"
    );
    let target = server.tracker().status("gw-a", "fw").unwrap();
    assert_eq!(
        (target.state, target.reported_version),
        (TargetState::Applied, Some(1))
    );
    assert_eq!(server.store().latest("fw").unwrap().unwrap().version, 1);
}

#[test]
fn statuses_and_publishes_validate_their_input() {
    let mut f = Fleet::new(false);
    assert!(matches!(
        f.server.publish("bad name", json!({}), "a", "m", None, 0),
        Err(gateway_policy::Error::InvalidName { .. })
    ));
    let bad_staging = StagedRollout {
        max_percent_in_flight: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        f.server
            .publish("fw", json!({}), "a", "m", Some(bad_staging), 0),
        Err(gateway_policy::Error::InvalidParameter {
            param_name: "max_percent_in_flight",
            ..
        })
    ));
    assert!(
        f.server.store().latest("fw").unwrap().is_none(),
        "nothing was published"
    );
    assert!(matches!(
        f.server.assign(tenant_assignment(0), None, 0),
        Err(gateway_policy::Error::UnknownPolicy { .. })
    ));
    // A status from a gateway the server does not track changes nothing.
    let stray = gateway_proto::PolicyStatus {
        name: "fw".into(),
        version: 1,
        state: PolicyState::Applied,
        reason: None,
        code: None,
        running_version: Some(1),
    };
    assert!(
        f.server
            .handle_status("ghost", &stray, 0)
            .unwrap()
            .is_empty()
    );
    let bad_key = PolicyServerConfig {
        signing_key: Some("nothex".into()),
        ..Default::default()
    };
    assert!(matches!(
        PolicyServer::new(SqlitePolicyStore::open_in_memory().unwrap(), bad_key),
        Err(gateway_policy::Error::InvalidParameter {
            param_name: "signing_key",
            ..
        })
    ));
}

#[test]
fn staged_and_aborted_rollouts_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("policies.db");
    let refuse_bad = |_: &str, doc: &Value| {
        if doc.get("bad") == Some(&json!(true)) {
            Err("`bad` is not allowed".to_owned())
        } else {
            Ok(())
        }
    };
    let ids: Vec<String> = (0..12).map(|i| format!("gw-{i:02}")).collect();
    let mut appliers: BTreeMap<String, PolicyApplier<MemoryAppliedStore>> = ids
        .iter()
        .map(|id| {
            let a = PolicyApplier::open(gateway_config(), MemoryAppliedStore::new(), refuse_bad)
                .unwrap()
                .0;
            (id.clone(), a)
        })
        .collect();
    let staging = StagedRollout {
        max_per_minute: Some(4),
        abort: Some(AbortRule {
            rejected_percent: 50.0,
            min_reported: 2,
        }),
        ..Default::default()
    };
    let (good_rollout, bad_rollout);
    {
        let mut server =
            PolicyServer::new(SqlitePolicyStore::open(&db).unwrap(), server_config(true)).unwrap();
        server
            .publish("fw", json!({"v": 1}), "ann", "1", None, 0)
            .unwrap();
        server.assign(tenant_assignment(0), None, 0).unwrap();
        for id in &ids {
            for u in server.connect(id, "acme", &[], 1).unwrap() {
                let st = appliers.get_mut(id).unwrap().apply(&u, 1);
                server.handle_status(id, &st, 1).unwrap();
            }
        }
        // A good staged version: 4 of 12 go out before the "crash".
        let r = server
            .publish("fw", json!({"v": 2}), "ann", "2", Some(staging.clone()), 10)
            .unwrap();
        good_rollout = r.rollouts[0];
        assert_eq!(r.updates.len(), 4);
        for o in r.updates {
            let st = appliers
                .get_mut(&o.gateway_id)
                .unwrap()
                .apply(&o.update, 11);
            server.handle_status(&o.gateway_id, &st, 11).unwrap();
        }
        assert_eq!(server.rollout_summary(good_rollout).unwrap().applied, 4);
    }
    // Restart: every gateway reconnects at once; the staging still holds (at most 4 this minute).
    let mut server =
        PolicyServer::new(SqlitePolicyStore::open(&db).unwrap(), server_config(true)).unwrap();
    let s = server.rollout_summary(good_rollout).unwrap();
    assert_eq!((s.total, s.released), (12, 4));
    let mut sent = 0;
    for id in &ids {
        let applied = appliers[id].applied_policies();
        for u in server.connect(id, "acme", &applied, 20).unwrap() {
            sent += 1;
            let st = appliers.get_mut(id).unwrap().apply(&u, 21);
            server.handle_status(id, &st, 21).unwrap();
        }
    }
    assert_eq!(
        sent, 4,
        "the restart must not release the whole fleet at once"
    );
    let s = server.rollout_summary(good_rollout).unwrap();
    assert_eq!((s.applied, s.released, s.pending), (8, 8, 4), "{s:?}");

    // A bad version aborts; after another restart its unreleased targets still get nothing.
    let r = server
        .publish(
            "fw",
            json!({"v": 3, "bad": true}),
            "ann",
            "3",
            Some(staging),
            100,
        )
        .unwrap();
    bad_rollout = r.rollouts[0];
    let released_bad: Vec<String> = r.updates.iter().map(|o| o.gateway_id.clone()).collect();
    for o in r.updates {
        let st = appliers
            .get_mut(&o.gateway_id)
            .unwrap()
            .apply(&o.update, 101);
        server.handle_status(&o.gateway_id, &st, 101).unwrap();
    }
    assert_eq!(
        server.rollout_summary(bad_rollout).unwrap().state,
        RolloutState::Aborted
    );
    drop(server);
    let mut server =
        PolicyServer::new(SqlitePolicyStore::open(&db).unwrap(), server_config(true)).unwrap();
    let s = server.rollout_summary(bad_rollout).unwrap();
    assert_eq!(s.state, RolloutState::Aborted, "{s:?}");
    for id in &ids {
        let applied = appliers[id].applied_policies();
        for u in server.connect(id, "acme", &applied, 200_000).unwrap() {
            // Targets released before the restart are re-sent once (at-least-once delivery; the
            // tracker does not persist per-target answers). The others must get nothing.
            assert!(
                u.version == 3 && released_bad.contains(id),
                "{id} got version {} after the restart although the rollout was aborted",
                u.version
            );
            let st = appliers.get_mut(id).unwrap().apply(&u, 200_001);
            assert_eq!(st.state, PolicyState::Rejected);
            server.handle_status(id, &st, 200_001).unwrap();
        }
    }
    let s = server.rollout_summary(bad_rollout).unwrap();
    assert_eq!(
        (s.state, s.released, s.pending),
        (
            RolloutState::Aborted,
            released_bad.len(),
            12 - released_bad.len()
        ),
        "{s:?}"
    );
    assert!(server.poll(300_000).unwrap().is_empty());
    assert_eq!(
        server.prune_rollouts(1_000).unwrap(),
        2,
        "both finished rollouts are forgotten"
    );
    drop(server);
    let server =
        PolicyServer::new(SqlitePolicyStore::open(&db).unwrap(), server_config(true)).unwrap();
    assert!(server.rollout_summary(good_rollout).is_err());
    assert!(server.rollout_summary(bad_rollout).is_err());
}

//! Two tenants, `acme` and `globex`, on one `PolicyService` (real SQLite file, real
//! `PolicyApplier`s): an operator can never push a policy onto another tenant's gateway — not by
//! registering its id first, not by naming it in an assignment, not through state left by an
//! older release — and every event goes only to the tenant whose data it carries.

mod support;

use std::sync::Arc;

use gateway_policy::{
    AssignTarget, Assignment, AuditEvent, Error, GatewayInfo, PolicyEvent, PolicyServer,
    PolicyServerConfig, PolicyServiceConfig, PolicyStore, SqlitePolicyStore, Target,
};
use gateway_proto::auth::{Principal, Role, StaticTokens};
use gateway_proto::clock::ManualClock;
use gateway_proto::{PolicyState, PolicyStatus};
use serde_json::json;
use support::{Fleet, admin};

const T0: i64 = 1_700_000_000_000;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn is_unknown_gateway<T: std::fmt::Debug>(result: gateway_policy::Result<T>) -> bool {
    matches!(result, Err(Error::UnknownGateway { .. }))
}

/// The review's reproduction, on a server without a gateway directory: acme names globex's
/// gateway id before it connects and after, and publishes twice; globex's gateway gets nothing.
#[tokio::test]
async fn without_a_directory_an_operator_cannot_reach_another_tenants_gateway() {
    let mut f = Fleet::start(clock()).await;
    f.add_gateways(&["gw-a", "gw-b"]);
    f.connect("gw-a", "acme").await;
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "acme-evil", json!({"v": 1}), "", None)
        .await
        .unwrap();

    // Before globex's gw-b ever connected: acme can neither register it nor assign to it.
    assert!(is_unknown_gateway(
        f.service
            .set_gateway_groups(&ann, "gw-b", vec!["evil".into()])
            .await
    ));
    assert!(is_unknown_gateway(
        f.service
            .assign(
                &ann,
                "acme-evil",
                AssignTarget::Gateway("gw-b".into()),
                None,
                None
            )
            .await
    ));
    assert!(
        f.service
            .inspect(|s| s.gateway("gw-b").is_none())
            .await
            .unwrap(),
        "nothing was registered"
    );

    // globex's real gw-b connects; acme still cannot name it, read it or reach it.
    f.connect("gw-b", "globex").await;
    assert!(is_unknown_gateway(
        f.service
            .set_gateway_groups(&ann, "gw-b", vec!["evil".into()])
            .await
    ));
    assert!(is_unknown_gateway(
        f.service
            .assign(
                &ann,
                "acme-evil",
                AssignTarget::Gateway("gw-b".into()),
                None,
                None
            )
            .await
    ));
    assert!(is_unknown_gateway(
        f.service.gateway_policies("acme", "gw-b").await
    ));
    f.service
        .assign(
            &ann,
            "acme-evil",
            AssignTarget::Tenant("acme".into()),
            None,
            None,
        )
        .await
        .unwrap();
    f.service
        .publish(&ann, "acme-evil", json!({"v": 2}), "", None)
        .await
        .unwrap();
    let sent = f.take_sent();
    assert!(!sent.is_empty(), "acme's own gateway is served");
    assert!(
        sent.iter().all(|o| o.gateway_id == "gw-a"),
        "only acme's gateway: {:?}",
        sent.iter().map(|o| &o.gateway_id).collect::<Vec<_>>()
    );
    assert_eq!(f.running_version("gw-b", "acme-evil"), None);
    let view = f.service.gateway_policies("globex", "gw-b").await.unwrap();
    assert!(view.policies.is_empty() && view.gateway.groups.is_empty());

    // Each refusal was audited as not_found, in acme's name.
    let refused: Vec<(String, String)> = f
        .events()
        .into_iter()
        .filter(|e| e.kind == PolicyEvent::AUDIT)
        .map(|e| serde_json::from_value::<AuditEvent>(e.data).unwrap())
        .filter(|a| a.result != "ok")
        .map(|a| (a.tenant, a.action))
        .collect();
    assert_eq!(refused.len(), 4);
    assert!(refused.iter().all(|(tenant, _)| tenant == "acme"));
}

/// With a directory, an operator can prepare a gateway of its own tenant before it connects,
/// and still cannot touch another tenant's.
#[tokio::test]
async fn with_a_directory_operators_name_only_gateways_provisioned_in_their_tenant() {
    let directory = Arc::new(
        StaticTokens::new()
            .with("a", Principal::new("acme", "gw-a", Role::Gateway))
            .with("b", Principal::new("globex", "gw-b", Role::Gateway)),
    );
    let mut f = Fleet::start_with_directory(clock(), directory).await;
    f.add_gateways(&["gw-a", "gw-b"]);
    let ann = admin("acme", "ann");
    let gus = admin("globex", "gus");
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "", None)
        .await
        .unwrap();

    // globex's gateway, connected or not, and an id nobody provisioned: not found for acme.
    for id in ["gw-b", "gw-nobody"] {
        assert!(is_unknown_gateway(
            f.service
                .set_gateway_groups(&ann, id, vec!["eu".into()])
                .await
        ));
        assert!(is_unknown_gateway(
            f.service
                .assign(&ann, "fw", AssignTarget::Gateway(id.into()), None, None)
                .await
        ));
    }
    f.connect("gw-b", "globex").await;
    assert!(is_unknown_gateway(
        f.service.gateway_policies("acme", "gw-b").await
    ));
    assert!(is_unknown_gateway(
        f.service
            .set_gateway_groups(&ann, "gw-b", vec!["eu".into()])
            .await
    ));

    // acme's own gw-a is registered before it ever connects, and gets its policy on connect.
    let view = f
        .service
        .set_gateway_groups(&ann, "gw-a", vec!["eu".into()])
        .await
        .unwrap();
    assert_eq!(
        (view.tenant.as_str(), view.connected),
        ("acme", false),
        "registered in acme"
    );
    let r = f
        .service
        .assign(&ann, "fw", AssignTarget::Group("eu".into()), None, None)
        .await
        .unwrap();
    assert_eq!((r.rollouts[0].total, r.rollouts[0].pending), (1, 1));
    f.service
        .assign(
            &ann,
            "fw",
            AssignTarget::Gateway("gw-a".into()),
            Some(1),
            None,
        )
        .await
        .unwrap();
    assert!(f.take_sent().is_empty(), "gw-a is not connected yet");
    f.connect("gw-a", "acme").await;
    assert_eq!(f.pump().await, 1);
    assert_eq!(f.running_version("gw-a", "fw"), Some(1));
    assert_eq!(f.running_version("gw-b", "fw"), None);

    // globex names its own gateway; acme's group "eu" is not globex's.
    f.service
        .set_gateway_groups(&gus, "gw-b", vec!["eu".into()])
        .await
        .unwrap();
    f.service
        .publish(&ann, "fw", json!({"v": 2}), "", None)
        .await
        .unwrap();
    let sent = f.take_sent();
    assert!(sent.iter().all(|o| o.gateway_id == "gw-a"));
    assert!(
        f.service
            .gateway_policies("globex", "gw-b")
            .await
            .unwrap()
            .policies
            .is_empty()
    );
}

/// A database written before the fix: acme registered globex's gateway id in acme, put it in a
/// group and assigned its policy to the group and to the gateway (a rollout waits for it). When
/// globex's real gateway connects, nothing of acme's follows it — now and after a restart.
#[tokio::test]
async fn a_gateway_that_connects_in_another_tenant_keeps_nothing_of_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("policies.db");
    {
        let store = SqlitePolicyStore::open(&db).unwrap();
        store.set_policy_owner("acme-evil", "acme").unwrap();
        let mut server = PolicyServer::new(store, PolicyServerConfig::default()).unwrap();
        server
            .register_gateway(GatewayInfo::new("gw-b", "acme").with_group("acme/evil"), 0)
            .unwrap();
        server
            .publish("acme-evil", json!({"evil": 1}), "mallory", "", None, 0)
            .unwrap();
        for target in [
            Target::Group("acme/evil".into()),
            Target::Gateway("gw-b".into()),
        ] {
            let change = server
                .assign(
                    Assignment {
                        policy: "acme-evil".into(),
                        tenant: "acme".into(),
                        target,
                        version: None,
                        assigned_at: 0,
                        author: "mallory".into(),
                    },
                    None,
                    0,
                )
                .unwrap();
            assert!(change.updates.is_empty(), "gw-b is not connected");
        }
        assert!(
            server
                .store()
                .rollouts()
                .unwrap()
                .iter()
                .any(|r| r.targets.iter().any(|(g, _)| g == "gw-b")),
            "a rollout waits for gw-b"
        );
    }
    let mut f = Fleet::open(
        &db,
        clock(),
        PolicyServiceConfig::default(),
        PolicyServerConfig::default(),
        None,
    )
    .await;
    f.add_gateways(&["gw-b"]);
    f.connect("gw-b", "globex").await;
    assert!(
        f.take_sent().is_empty(),
        "acme's policy does not follow gw-b"
    );

    let ann = admin("acme", "ann");
    let r = f
        .service
        .publish(&ann, "acme-evil", json!({"evil": 2}), "", None)
        .await
        .unwrap();
    assert!(r.rollouts.is_empty(), "no acme gateway follows it");
    assert!(f.take_sent().is_empty());
    assert_eq!(f.running_version("gw-b", "acme-evil"), None);

    // The gateway is globex's, with no groups and no policies; acme's gateway assignment is
    // gone (its own group assignment stays, and reaches none of globex's gateways).
    let view = f.service.gateway_policies("globex", "gw-b").await.unwrap();
    assert!(view.gateway.groups.is_empty() && view.policies.is_empty());
    assert!(is_unknown_gateway(
        f.service.gateway_policies("acme", "gw-b").await
    ));
    let kinds: Vec<&str> = f
        .service
        .assignments("acme", "acme-evil")
        .await
        .unwrap()
        .iter()
        .map(|a| a.target.kind())
        .collect();
    assert_eq!(kinds, vec!["group"]);
    let persisted = f
        .service
        .inspect(|s| s.store().rollouts().unwrap())
        .await
        .unwrap();
    assert!(
        persisted
            .iter()
            .all(|r| r.targets.iter().all(|(g, _)| g != "gw-b")),
        "gw-b left every persisted rollout"
    );
    assert!(
        f.events()
            .iter()
            .all(|e| e.tenant != "globex" || !e.data.to_string().contains("acme-evil")),
        "globex hears nothing of acme's policy"
    );

    // After a restart gw-b still gets nothing.
    let mut f = f.restart().await;
    f.connect("gw-b", "globex").await;
    assert!(f.take_sent().is_empty());
}

/// The same, live: a gateway that ran acme's policy is re-provisioned to globex. It leaves acme's
/// rollouts, and acme's next versions never reach it.
#[tokio::test]
async fn a_reprovisioned_gateway_leaves_its_old_tenants_rollouts() {
    let mut f = Fleet::start(clock()).await;
    f.add_gateways(&["gw-a", "gw-x"]);
    f.connect("gw-a", "acme").await;
    f.connect("gw-x", "acme").await;
    let ann = admin("acme", "ann");
    f.service
        .publish(&ann, "fw", json!({"v": 1}), "", None)
        .await
        .unwrap();
    f.service
        .set_gateway_groups(&ann, "gw-x", vec!["lab".into()])
        .await
        .unwrap();
    f.service
        .assign(&ann, "fw", AssignTarget::Group("lab".into()), None, None)
        .await
        .unwrap();
    f.service
        .assign(&ann, "fw", AssignTarget::Gateway("gw-a".into()), None, None)
        .await
        .unwrap();
    f.pump().await;
    assert_eq!(f.running_version("gw-x", "fw"), Some(1));
    let status = f.service.rollout_status("acme", "fw").await.unwrap();
    assert_eq!(status.counts.total, 2);

    // gw-x's credentials now belong to globex; it reconnects.
    f.service.gateway_disconnected("gw-x").await.unwrap();
    f.connect("gw-x", "globex").await;
    assert!(f.take_sent().is_empty());
    let status = f.service.rollout_status("acme", "fw").await.unwrap();
    assert_eq!(
        status
            .gateways
            .iter()
            .map(|g| g.gateway_id.as_str())
            .collect::<Vec<_>>(),
        vec!["gw-a"]
    );
    f.service
        .publish(&ann, "fw", json!({"v": 2}), "", None)
        .await
        .unwrap();
    let sent = f.take_sent();
    assert_eq!(
        sent.iter()
            .map(|o| o.gateway_id.as_str())
            .collect::<Vec<_>>(),
        vec!["gw-a"]
    );
    assert_eq!(
        f.running_version("gw-x", "fw"),
        Some(1),
        "it keeps what it ran (there is no remove frame) but gets nothing new"
    );
    let view = f.service.gateway_policies("globex", "gw-x").await.unwrap();
    assert!(view.gateway.groups.is_empty() && view.policies.is_empty());
}

/// On `PolicyServer` itself, whatever the integrator assigns: an assignment reaches only gateways
/// of its tenant, even when its target names another tenant's gateway id or a group that
/// gateway is in; and registering a gateway in another tenant drops what named it.
#[test]
fn assignments_reach_only_gateways_of_their_tenant() {
    let store = SqlitePolicyStore::open_in_memory().unwrap();
    let mut server = PolicyServer::new(store, PolicyServerConfig::default()).unwrap();
    server
        .register_gateway(GatewayInfo::new("gw-g", "globex").with_group("eu"), 0)
        .unwrap();
    server
        .register_gateway(GatewayInfo::new("gw-a", "acme").with_group("eu"), 0)
        .unwrap();
    assert!(server.connect("gw-g", "globex", &[], 1).unwrap().is_empty());
    server
        .publish("fw", json!({"v": 1}), "ann", "", None, 2)
        .unwrap();
    let acme = |target: Target| Assignment {
        policy: "fw".into(),
        tenant: "acme".into(),
        target,
        version: None,
        assigned_at: 3,
        author: "ann".into(),
    };
    for target in [Target::Gateway("gw-g".into()), Target::Group("eu".into())] {
        let change = server.assign(acme(target), None, 3).unwrap();
        assert!(change.updates.is_empty(), "nothing for globex's gateway");
    }
    assert!(server.desired_versions("gw-g").is_empty());
    assert_eq!(server.desired_versions("gw-a").get("fw"), Some(&1));
    // A tenant target must be the assignment's own tenant.
    assert!(matches!(
        server.assign(acme(Target::Tenant("globex".into())), None, 4),
        Err(Error::InvalidParameter {
            param_name: "tenant",
            ..
        })
    ));
    // gw-a moves to globex: acme's gateway assignment to gw-a would follow it; it is dropped.
    server
        .assign(acme(Target::Gateway("gw-a".into())), None, 5)
        .unwrap();
    server
        .register_gateway(GatewayInfo::new("gw-a", "globex"), 6)
        .unwrap();
    assert!(server.desired_versions("gw-a").is_empty());
    assert!(
        !server
            .assignments()
            .all()
            .any(|a| a.target == Target::Gateway("gw-a".into()))
    );
    assert!(server.gateway_status("gw-a").is_empty());
}

/// A policy published outside the service (no owner) and assigned to both tenants: every rollout
/// event goes to one tenant and counts only its gateways; statuses go to their gateway's tenant;
/// nothing is ever emitted with an empty tenant.
#[tokio::test]
async fn events_go_only_to_the_tenant_whose_data_they_carry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("policies.db");
    {
        let store = SqlitePolicyStore::open(&db).unwrap();
        let mut server = PolicyServer::new(store, PolicyServerConfig::default()).unwrap();
        server
            .publish("shared", json!({"v": 1}), "ops", "", None, 0)
            .unwrap();
        for tenant in ["acme", "globex"] {
            server
                .assign(
                    Assignment {
                        policy: "shared".into(),
                        tenant: tenant.into(),
                        target: Target::Tenant(tenant.into()),
                        version: None,
                        assigned_at: 0,
                        author: "ops".into(),
                    },
                    None,
                    0,
                )
                .unwrap();
        }
    }
    let mut f = Fleet::open(
        &db,
        clock(),
        PolicyServiceConfig::default(),
        PolicyServerConfig::default(),
        None,
    )
    .await;
    f.add_gateways(&["a-1", "a-2", "g-1"]);
    f.connect("a-1", "acme").await;
    f.connect("a-2", "acme").await;
    f.connect("g-1", "globex").await;
    assert_eq!(f.pump().await, 3);
    f.events();

    // acme publishes version 2: one rollout over both tenants' gateways.
    let r = f
        .service
        .publish(&admin("acme", "ann"), "shared", json!({"v": 2}), "", None)
        .await
        .unwrap();
    assert_eq!(r.rollouts[0].total, 2, "acme's view counts acme's gateways");
    assert_eq!(f.pump().await, 3);
    // A status from a gateway the server does not know belongs to nobody.
    f.service
        .policy_status(
            "ghost",
            PolicyStatus {
                name: "shared".into(),
                version: 2,
                state: PolicyState::Applied,
                reason: None,
                code: None,
                running_version: Some(2),
            },
        )
        .await
        .unwrap();

    let events = f.events();
    assert!(events.iter().all(|e| !e.tenant.is_empty()), "{events:?}");
    let rollout_events: Vec<(&str, &str, u64)> = events
        .iter()
        .filter(|e| e.kind == PolicyEvent::ROLLOUT)
        .map(|e| {
            (
                e.tenant.as_str(),
                e.data["state"].as_str().unwrap(),
                e.data["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rollout_events,
        vec![
            ("acme", "in_progress", 2),
            ("globex", "in_progress", 1),
            ("acme", "completed", 2),
            ("globex", "completed", 1),
        ]
    );
    let statuses: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind == PolicyEvent::STATUS)
        .map(|e| (e.tenant.as_str(), e.data["gateway_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![("acme", "a-1"), ("acme", "a-2"), ("globex", "g-1")]
    );
}

//! No `policy_update` frame larger than a gateway accepts ever leaves the server: a document too
//! large is refused at publish and rollback (`payload_too_large`), a version that no longer fits
//! (published under a larger limit) is never sent — its target is `rejected`, not `delivered`
//! forever while the gateway reconnects in a loop — and what is sent decodes under the gateway's
//! `Limits`. Real SQLite files and real `PolicyApplier`s.

mod support;

use std::sync::Arc;

use gateway_policy::{
    AssignTarget, Error, PolicyServer, PolicyServerConfig, PolicyServiceConfig, PolicyStore,
    RolloutState, SqlitePolicyStore, TargetState, update_frame_len,
};
use gateway_proto::clock::ManualClock;
use gateway_proto::{ControlFrame, Encoding, ErrorCode, Limits, WireMessage, decode_frame};
use serde_json::{Value, json};
use support::{Fleet, admin};

const T0: i64 = 1_700_000_000_000;
const LIMIT: usize = 4096;

fn limited(limit: usize) -> PolicyServerConfig {
    PolicyServerConfig {
        max_update_frame_bytes: limit,
        ..Default::default()
    }
}

fn padded(len: usize) -> Value {
    json!({"mode": "enforce", "pad": "x".repeat(len)})
}

async fn fleet(limit: usize) -> Fleet {
    Fleet::start_full(
        Arc::new(ManualClock::new(T0)),
        PolicyServiceConfig::default(),
        limited(limit),
        None,
    )
    .await
}

#[test]
fn the_limit_defaults_to_the_gateways_frame_limit_and_is_validated() {
    let config: PolicyServerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(
        config.max_update_frame_bytes,
        Limits::default().max_frame_bytes
    );
    match limited(100).validate() {
        Err(Error::InvalidParameter { param_name, .. }) => {
            assert_eq!(param_name, "max_update_frame_bytes")
        }
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[tokio::test]
async fn a_document_too_large_for_a_frame_is_refused_and_the_largest_that_fits_is_delivered() {
    let mut f = fleet(LIMIT).await;
    f.add_gateways(&["gw-1"]);
    f.connect("gw-1", "acme").await;
    let ann = admin("acme", "ann");

    let e = f
        .service
        .publish(&ann, "fw", padded(LIMIT), "", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::PolicyTooLarge { limit: LIMIT, frame_bytes, .. } if frame_bytes > LIMIT),
        "{e}"
    );
    assert_eq!(e.code(), ErrorCode::PayloadTooLarge);
    assert!(
        matches!(
            f.service.history("acme", "fw").await,
            Err(Error::UnknownPolicy { .. })
        ),
        "nothing was stored"
    );

    // The largest padding that passes, delivered signed to a connected gateway.
    let mut pad = LIMIT;
    while f
        .service
        .publish(&ann, "fw", padded(pad), "", None)
        .await
        .is_err()
    {
        pad -= 1;
    }
    f.service
        .assign(&ann, "fw", AssignTarget::Tenant("acme".into()), None, None)
        .await
        .unwrap();
    let sent = f.take_sent();
    assert_eq!(sent.len(), 1);
    let frame = ControlFrame::PolicyUpdate(sent[0].update.clone());
    let len = update_frame_len(&sent[0].update);
    assert!(len <= LIMIT && len > LIMIT - 64, "{len}");
    let gateway_limits = Limits {
        max_frame_bytes: LIMIT,
        ..Limits::default()
    };
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        decode_frame(&frame.encode(encoding), encoding, &gateway_limits)
            .unwrap_or_else(|e| panic!("the gateway refuses the {encoding:?} frame: {e}"));
    }
    for o in sent {
        f.deliver(o).await;
    }
    assert_eq!(f.running_version("gw-1", "fw"), Some(1));
}

/// A database from a server with a larger limit holds a version too large for this one: a
/// rollback to it is refused, and a gateway pinned to it is never sent a frame it would refuse
/// (which made it drop the session and reconnect in a loop while the target stayed
/// `delivered`): the target is `rejected` with the reason, and stays so across reconnects.
#[tokio::test]
async fn a_version_that_no_longer_fits_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("policies.db");
    {
        let store = SqlitePolicyStore::open(&db).unwrap();
        store.set_policy_owner("fw", "acme").unwrap();
        let mut server = PolicyServer::new(store, limited(4 * LIMIT)).unwrap();
        server
            .publish("fw", padded(2 * LIMIT), "ann", "large", None, 0)
            .unwrap();
        server
            .publish("fw", padded(10), "ann", "small", None, 0)
            .unwrap();
    }
    let mut f = Fleet::open(
        &db,
        Arc::new(ManualClock::new(T0)),
        PolicyServiceConfig::default(),
        limited(LIMIT),
        None,
    )
    .await;
    let ann = admin("acme", "ann");
    let e = f
        .service
        .rollback(&ann, "fw", 1, "", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PolicyTooLarge { .. }), "{e}");
    assert_eq!(
        f.service.history("acme", "fw").await.unwrap().len(),
        2,
        "no version was created"
    );

    f.add_gateways(&["gw-1", "gw-2"]);
    f.connect("gw-1", "acme").await;
    f.connect("gw-2", "acme").await;
    let r = f
        .service
        .assign(
            &ann,
            "fw",
            AssignTarget::Gateway("gw-1".into()),
            Some(1),
            None,
        )
        .await
        .unwrap();
    assert!(f.take_sent().is_empty(), "version 1 does not fit a frame");
    assert_eq!(
        (r.rollouts[0].rejected, r.rollouts[0].state),
        (1, RolloutState::Completed)
    );
    f.service
        .assign(&ann, "fw", AssignTarget::Tenant("acme".into()), None, None)
        .await
        .unwrap();
    let sent = f.take_sent();
    assert_eq!(
        sent.iter()
            .map(|o| o.gateway_id.as_str())
            .collect::<Vec<_>>(),
        vec!["gw-2"],
        "version 2 fits"
    );
    for o in sent {
        f.deliver(o).await;
    }
    let view = f.service.gateway_policies("acme", "gw-1").await.unwrap();
    let target = &view.policies[0];
    assert_eq!(target.state, TargetState::Rejected);
    assert_eq!(target.error_code, Some(ErrorCode::PayloadTooLarge));
    let reason = target.reason.as_deref().unwrap();
    assert!(
        reason.contains("too large") && reason.contains("4096"),
        "{reason}"
    );
    assert_eq!(target.last_attempt_ms, None, "nothing was sent");

    // Reconnecting sends nothing and changes nothing; gw-2 keeps version 2.
    for _ in 0..3 {
        f.service.gateway_disconnected("gw-1").await.unwrap();
        f.connect("gw-1", "acme").await;
        assert!(f.take_sent().is_empty());
    }
    let view = f.service.gateway_policies("acme", "gw-1").await.unwrap();
    assert_eq!(view.policies[0].state, TargetState::Rejected);
    assert_eq!(f.running_version("gw-1", "fw"), None);
    assert_eq!(f.running_version("gw-2", "fw"), Some(2));
    let persisted = f
        .service
        .inspect(|s| s.store().history("fw").unwrap().len())
        .await
        .unwrap();
    assert_eq!(persisted, 2);
}

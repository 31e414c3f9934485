use gateway_proto::Bytes;
use serde_json::json;

use super::*;
use crate::{Policy, PolicySigner, diff};

fn policy(version: u64, doc: Value) -> Policy {
    Policy::new("fw", version, doc, 0, "ann", "test").unwrap()
}

fn applier(store: MemoryAppliedStore) -> PolicyApplier<MemoryAppliedStore> {
    PolicyApplier::open(ApplierConfig::default(), store, AcceptAll)
        .unwrap()
        .0
}

fn patch_update(from: &Policy, to: &Policy) -> PolicyUpdate {
    PolicyUpdate {
        name: to.name.clone(),
        version: to.version,
        checksum: to.checksum.clone(),
        content: PolicyContent::Patch {
            base_version: from.version,
            operations: diff(&from.document, &to.document),
        },
        signature: None,
    }
}

fn assert_rejected(status: &PolicyStatus, code: ErrorCode, running: Option<u64>) {
    assert_eq!(status.state, PolicyState::Rejected, "{status:?}");
    assert_eq!(status.code.as_ref(), Some(&code), "{status:?}");
    assert!(status.reason.as_deref().is_some_and(|r| !r.is_empty()));
    assert_eq!(status.running_version, running);
}

#[test]
fn full_then_patch_applies_persists_and_switches() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    let v1 = policy(1, json!({"mode": "audit", "ports": [22]}));
    let v2 = policy(2, json!({"mode": "enforce", "ports": [22, 443]}));

    let s = a.apply(&v1.full_update(None), 100);
    assert_eq!(
        (s.state, s.running_version, s.code),
        (PolicyState::Applied, Some(1), None)
    );
    let s = a.apply(&patch_update(&v1, &v2), 200);
    assert_eq!(
        (s.state, s.running_version),
        (PolicyState::Applied, Some(2))
    );

    let running = a.running("fw").unwrap();
    assert_eq!(running.document, v2.document);
    assert_eq!(running.applied_at, 200);
    let stored = store.get("fw").unwrap();
    assert_eq!((stored.version, stored.document), (2, v2.document.clone()));
    assert_eq!(
        a.applied_policies(),
        vec![AppliedPolicy {
            name: "fw".into(),
            version: 2,
            checksum: v2.checksum.clone()
        }]
    );
}

#[test]
fn a_duplicate_of_the_running_version_is_applied_without_work() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    let v1 = policy(1, json!({"a": 1}));
    a.apply(&v1.full_update(None), 1);
    store.set_fail_saves(true); // a duplicate must not even try to save
    let s = a.apply(&v1.full_update(None), 2);
    assert_eq!(
        (s.state, s.running_version),
        (PolicyState::Applied, Some(1))
    );
    assert_eq!(a.running("fw").unwrap().applied_at, 1);
}

#[test]
fn stale_versions_and_conflicting_same_versions_are_refused() {
    let mut a = applier(MemoryAppliedStore::new());
    a.apply(&policy(3, json!({"a": 3})).full_update(None), 1);
    assert_rejected(
        &a.apply(&policy(2, json!({"a": 2})).full_update(None), 2),
        ErrorCode::StaleVersion,
        Some(3),
    );
    assert_rejected(
        &a.apply(&policy(3, json!({"a": 9})).full_update(None), 2),
        ErrorCode::StaleVersion,
        Some(3),
    );
    assert_eq!(a.running("fw").unwrap().document, json!({"a": 3}));
}

#[test]
fn a_patch_against_another_base_asks_for_the_full_document() {
    let mut a = applier(MemoryAppliedStore::new());
    let v1 = policy(1, json!({"a": 1}));
    let v2 = policy(2, json!({"a": 2}));
    let v3 = policy(3, json!({"a": 3}));
    // Nothing runs yet.
    assert_rejected(
        &a.apply(&patch_update(&v1, &v2), 1),
        ErrorCode::BaseMismatch,
        None,
    );
    a.apply(&v1.full_update(None), 1);
    // Based on v2 while v1 runs.
    assert_rejected(
        &a.apply(&patch_update(&v2, &v3), 2),
        ErrorCode::BaseMismatch,
        Some(1),
    );
    // Right base number but a patch that does not apply to what runs.
    let mut broken = patch_update(&v1, &v3);
    broken.content = PolicyContent::Patch {
        base_version: 1,
        operations: json!([{"op": "remove", "path": "/missing"}]),
    };
    assert_rejected(&a.apply(&broken, 3), ErrorCode::BaseMismatch, Some(1));
    assert_eq!(a.running("fw").unwrap().version, 1);
}

#[test]
fn a_wrong_or_malformed_checksum_is_refused() {
    let mut a = applier(MemoryAppliedStore::new());
    let mut u = policy(1, json!({"a": 1})).full_update(None);
    u.checksum = crate::checksum(&json!({"a": 2})).unwrap();
    assert_rejected(&a.apply(&u, 1), ErrorCode::ChecksumMismatch, None);
    u.checksum = "ABC".into();
    assert_rejected(&a.apply(&u, 1), ErrorCode::ChecksumMismatch, None);
    assert!(a.running("fw").is_none());
}

#[test]
fn the_validator_hook_decides_last() {
    let validator = |_: &str, doc: &Value| {
        if doc.get("mode").is_some() {
            Ok(())
        } else {
            Err("`mode` is required".to_owned())
        }
    };
    let (mut a, _) = PolicyApplier::open(
        ApplierConfig::default(),
        MemoryAppliedStore::new(),
        validator,
    )
    .unwrap();
    let s = a.apply(&policy(1, json!({"nomode": 1})).full_update(None), 1);
    assert_rejected(&s, ErrorCode::ValidationFailed, None);
    assert_eq!(s.reason.as_deref(), Some("`mode` is required"));
    assert_eq!(
        a.apply(&policy(2, json!({"mode": 1})).full_update(None), 1)
            .state,
        PolicyState::Applied
    );
}

#[test]
fn a_failed_save_keeps_the_running_policy() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    a.apply(&policy(1, json!({"a": 1})).full_update(None), 1);
    store.set_fail_saves(true);
    assert_rejected(
        &a.apply(&policy(2, json!({"a": 2})).full_update(None), 2),
        ErrorCode::Internal,
        Some(1),
    );
    assert_eq!(a.running("fw").unwrap().version, 1);
    store.set_fail_saves(false);
    assert_eq!(
        a.apply(&policy(2, json!({"a": 2})).full_update(None), 3)
            .state,
        PolicyState::Applied
    );
}

#[test]
fn signatures_are_required_when_a_key_is_configured() {
    let signer = PolicySigner::from_bytes(&[5; 32]);
    let config = ApplierConfig {
        public_key: Some(signer.verifier().to_hex()),
        ..Default::default()
    };
    let (mut a, _) = PolicyApplier::open(config, MemoryAppliedStore::new(), AcceptAll).unwrap();
    let v1 = policy(1, json!({"a": 1}));
    assert_rejected(
        &a.apply(&v1.full_update(None), 1),
        ErrorCode::BadSignature,
        None,
    );
    let stranger = PolicySigner::from_bytes(&[6; 32]);
    assert_rejected(
        &a.apply(&v1.full_update(Some(&stranger)), 1),
        ErrorCode::BadSignature,
        None,
    );
    let mut wrong_sum = v1.full_update(Some(&signer));
    wrong_sum.signature = Some(signer.sign(&"0".repeat(64)));
    assert_rejected(&a.apply(&wrong_sum, 1), ErrorCode::BadSignature, None);
    let mut short = v1.full_update(Some(&signer));
    short.signature = Some(Bytes::from_static(b"short"));
    assert_rejected(&a.apply(&short, 1), ErrorCode::BadSignature, None);
    assert_eq!(
        a.apply(&v1.full_update(Some(&signer)), 1).state,
        PolicyState::Applied
    );
    // A patch carries the signature of its resulting checksum.
    let v2 = policy(2, json!({"a": 2}));
    let mut p = patch_update(&v1, &v2);
    p.signature = Some(signer.sign(&v2.checksum));
    assert_eq!(a.apply(&p, 2).state, PolicyState::Applied);
}

#[test]
fn a_bad_public_key_in_the_config_names_the_parameter() {
    let config = ApplierConfig {
        public_key: Some("xyz".into()),
        ..Default::default()
    };
    let err = PolicyApplier::open(config, MemoryAppliedStore::new(), AcceptAll).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                param_name: "public_key",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_malformed_name_is_refused_without_touching_the_store() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    let mut u = policy(1, json!({})).full_update(None);
    u.name = "../../etc".into();
    let s = a.apply(&u, 1);
    assert_eq!(s.code, Some(ErrorCode::MalformedFrame));
    assert!(store.load_all().unwrap().is_empty());
}

#[test]
fn restart_loads_the_last_applied_policies() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    a.apply(&policy(4, json!({"a": 4})).full_update(None), 1);
    let (b, report) = PolicyApplier::open(ApplierConfig::default(), store, AcceptAll).unwrap();
    assert_eq!(report.loaded.len(), 1);
    assert!(report.problems.is_empty());
    assert_eq!(b.running("fw").unwrap().version, 4);
    assert_eq!(b.running("fw").unwrap().document, json!({"a": 4}));
}

#[test]
fn a_stored_policy_that_fails_validation_is_reported_and_start_goes_on() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    a.apply(&policy(4, json!({"legacy": true})).full_update(None), 1);
    let mut other = policy(1, json!({"mode": "x"}));
    other.name = "dns".into();
    a.apply(&other.full_update(None), 1);

    let strict = |_: &str, doc: &Value| {
        if doc.get("legacy").is_some() {
            Err("`legacy` is no longer supported".to_owned())
        } else {
            Ok(())
        }
    };
    // Default: skip it, report it, run the rest.
    let (b, report) = PolicyApplier::open(ApplierConfig::default(), store.clone(), strict).unwrap();
    assert!(b.running("fw").is_none());
    assert_eq!(b.running("dns").unwrap().version, 1);
    assert_eq!(report.problems.len(), 1);
    let problem = &report.problems[0];
    assert_eq!(problem.code, ErrorCode::ValidationFailed);
    assert!(!problem.kept_running);
    let status = problem.status().unwrap();
    assert_eq!(
        (status.name.as_str(), status.version, status.state),
        ("fw", 4, PolicyState::Rejected)
    );
    assert_eq!(status.running_version, None);

    // KeepRunning: run it, still report it.
    let config = ApplierConfig {
        invalid_stored: InvalidStoredPolicy::KeepRunning,
        ..Default::default()
    };
    let (c, report) = PolicyApplier::open(config, store, strict).unwrap();
    assert_eq!(c.running("fw").unwrap().version, 4);
    assert!(report.problems[0].kept_running);
    assert_eq!(
        report.problems[0].status().unwrap().running_version,
        Some(4)
    );
}

#[test]
fn a_stored_policy_with_a_damaged_document_is_reported() {
    let store = MemoryAppliedStore::new();
    store.insert(StoredPolicy {
        name: "fw".into(),
        version: 2,
        checksum: crate::checksum(&json!({"a": 1})).unwrap(),
        document: json!({"a": 2}),
        signature: None,
        applied_at: 0,
    });
    let (a, report) = PolicyApplier::open(ApplierConfig::default(), store, AcceptAll).unwrap();
    assert!(a.running("fw").is_none());
    assert_eq!(report.problems[0].code, ErrorCode::ChecksumMismatch);
}

#[test]
fn unsigned_stored_policies_are_reported_once_signatures_are_required() {
    let store = MemoryAppliedStore::new();
    let mut a = applier(store.clone());
    a.apply(&policy(1, json!({"a": 1})).full_update(None), 1);
    let config = ApplierConfig {
        public_key: Some(PolicySigner::from_bytes(&[1; 32]).verifier().to_hex()),
        ..Default::default()
    };
    let (b, report) = PolicyApplier::open(config, store, AcceptAll).unwrap();
    assert!(b.running("fw").is_none());
    assert_eq!(report.problems[0].code, ErrorCode::BadSignature);
}

#[test]
fn the_reader_follows_switches() {
    let mut a = applier(MemoryAppliedStore::new());
    let reader = a.reader();
    assert_eq!(reader.lookup("fw", None), PolicyLookup::NotFound);
    let v1 = policy(1, json!({"a": 1}));
    a.apply(&v1.full_update(None), 1);
    let old_etag = crate::etag(&v1.checksum);
    assert_eq!(
        reader.lookup("fw", Some(&old_etag)),
        PolicyLookup::NotModified {
            etag: old_etag.clone()
        }
    );
    let v2 = policy(2, json!({"a": 2}));
    a.apply(&v2.full_update(None), 2);
    match reader.lookup("fw", Some(&old_etag)) {
        PolicyLookup::Current { etag, policy } => {
            assert_eq!(etag, crate::etag(&v2.checksum));
            assert_eq!(policy.document, json!({"a": 2}));
        }
        other => panic!("expected the new document, got {other:?}"),
    }
    assert_eq!(reader.all().len(), 1);
}

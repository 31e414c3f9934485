//! Model-based test of the gateway's `PolicyApplier`: random sequences of valid, stale, duplicate,
//! out-of-order, wrongly based, corrupt and badly signed updates, with restarts in between, run
//! against the real applier and against a few lines of model. After every step the applier runs
//! exactly what the model says — the newest valid version — and answered as the model says.

use gateway_policy::{
    AppliedPolicyStore, ApplierConfig, FileAppliedStore, MemoryAppliedStore, Policy, PolicyApplier,
    PolicySigner, diff,
};
use gateway_proto::{PolicyContent, PolicyState, PolicyUpdate};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Step {
    /// The server publishes a new version (skipping `gap` numbers) and sends it, as a patch
    /// against what the gateway runs when `as_patch` (and something runs).
    Publish { doc: Value, gap: u8, as_patch: bool },
    /// Re-send an older published version in full.
    Stale { back: u8 },
    /// Re-send the last update sent, unchanged.
    Duplicate,
    /// A new version as a patch against a base the gateway does not run.
    WrongBase { doc: Value, base_offset: u8 },
    /// A new version whose checksum belongs to another document.
    CorruptChecksum { doc: Value },
    /// A new version whose patch operations were damaged in transit.
    CorruptPatch { doc: Value },
    /// A new version unsigned, or signed by another key.
    BadSignature { doc: Value, unsigned: bool },
    /// A new version sent twice out of order: the newer one first, then the older one.
    OutOfOrder { first: Value, second: Value },
    /// Another document under the version number that runs (a server that lost its history).
    SameVersionOtherDocument { doc: Value },
    /// The gateway restarts.
    Restart,
}

fn doc() -> impl Strategy<Value = Value> {
    (0u8..6, prop::collection::vec(0u16..50, 0..6), "[a-z]{0,4}").prop_map(|(mode, ports, tag)| {
        json!({"mode": mode, "ports": ports, "tag": tag, "limits": {"rate": mode as u32 * 10}})
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (doc(), 0u8..3, any::<bool>()).prop_map(|(doc, gap, as_patch)| Step::Publish { doc, gap, as_patch }),
        1 => (0u8..4).prop_map(|back| Step::Stale { back }),
        1 => Just(Step::Duplicate),
        1 => (doc(), 1u8..3).prop_map(|(doc, base_offset)| Step::WrongBase { doc, base_offset }),
        1 => doc().prop_map(|doc| Step::CorruptChecksum { doc }),
        1 => doc().prop_map(|doc| Step::CorruptPatch { doc }),
        1 => (doc(), any::<bool>()).prop_map(|(doc, unsigned)| Step::BadSignature { doc, unsigned }),
        1 => (doc(), doc()).prop_map(|(first, second)| Step::OutOfOrder { first, second }),
        1 => doc().prop_map(|doc| Step::SameVersionOtherDocument { doc }),
        1 => Just(Step::Restart),
    ]
}

/// The server's side of the test: published versions and the signing key.
struct Server {
    signer: PolicySigner,
    published: Vec<Policy>,
    next_version: u64,
}

impl Server {
    fn publish(&mut self, doc: Value, gap: u8) -> Policy {
        self.next_version += 1 + gap as u64;
        let p = Policy::new("fw", self.next_version, doc, 0, "model", "step").unwrap();
        self.published.push(p.clone());
        p
    }

    fn full(&self, p: &Policy) -> PolicyUpdate {
        p.full_update(Some(&self.signer))
    }

    fn patch(&self, base: &Policy, p: &Policy) -> PolicyUpdate {
        PolicyUpdate {
            content: PolicyContent::Patch {
                base_version: base.version,
                operations: diff(&base.document, &p.document),
            },
            ..self.full(p)
        }
    }
}

/// The model: the version and document that should run.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    running: Option<Policy>,
}

impl Model {
    /// What a correct applier does with `update`, whose honest content is `intended` (`None`
    /// when the update is corrupt or badly signed in a way no applier may accept).
    fn apply(&mut self, update: &PolicyUpdate, intended: Option<&Policy>) -> PolicyState {
        let running_version = self.running.as_ref().map(|p| p.version);
        if let (Some(run), Some(p)) = (&self.running, intended)
            && p.version == run.version
            && p.checksum == run.checksum
        {
            return PolicyState::Applied; // duplicate
        }
        let Some(p) = intended else {
            return PolicyState::Rejected;
        };
        if running_version.is_some_and(|v| p.version <= v) {
            return PolicyState::Rejected;
        }
        if let PolicyContent::Patch { base_version, .. } = &update.content
            && Some(*base_version) != running_version
        {
            return PolicyState::Rejected;
        }
        self.running = Some(p.clone());
        PolicyState::Applied
    }
}

/// Run `steps`; `signed`: the gateway requires signatures (Ed25519 is slow in debug builds, so
/// only some cases pay for it).
fn run<S: AppliedPolicyStore + Clone + 'static>(
    steps: Vec<Step>,
    store: S,
    signed: bool,
) -> Result<(), TestCaseError> {
    let signer = PolicySigner::from_bytes(&[42; 32]);
    let stranger = PolicySigner::from_bytes(&[43; 32]);
    let config = ApplierConfig {
        public_key: signed.then(|| signer.verifier().to_hex()),
        ..Default::default()
    };
    let open = |store: S| {
        PolicyApplier::open(config.clone(), store, gateway_policy::AcceptAll)
            .unwrap()
            .0
    };
    let mut applier = open(store.clone());
    let mut server = Server {
        signer,
        published: Vec::new(),
        next_version: 0,
    };
    let mut model = Model { running: None };
    let mut last: Option<(PolicyUpdate, Option<Policy>)> = None;

    for (i, step) in steps.into_iter().enumerate() {
        let mut sends: Vec<(PolicyUpdate, Option<Policy>)> = Vec::new();
        match step {
            Step::Publish { doc, gap, as_patch } => {
                let p = server.publish(doc, gap);
                let update = match (&model.running, as_patch) {
                    (Some(base), true) => server.patch(base, &p),
                    _ => server.full(&p),
                };
                sends.push((update, Some(p)));
            }
            Step::Stale { back } => {
                let n = server.published.len();
                if n > 0 {
                    let p = server.published[n.saturating_sub(1 + back as usize)].clone();
                    sends.push((server.full(&p), Some(p)));
                }
            }
            Step::Duplicate => sends.extend(last.clone()),
            Step::WrongBase { doc, base_offset } => {
                if let Some(base) = model.running.clone() {
                    let p = server.publish(doc, 0);
                    let mut update = server.patch(&base, &p);
                    if let PolicyContent::Patch { base_version, .. } = &mut update.content {
                        *base_version = base.version.saturating_sub(base_offset as u64);
                    }
                    sends.push((update, Some(p)));
                }
            }
            Step::CorruptChecksum { doc } => {
                let p = server.publish(doc, 0);
                let mut update = server.full(&p);
                update.checksum = gateway_policy::checksum(&json!({"other": p.version})).unwrap();
                update.signature = Some(server.signer.sign(&update.checksum));
                sends.push((update, None));
            }
            Step::CorruptPatch { doc } => {
                if let Some(base) = model.running.clone() {
                    let p = server.publish(doc, 0);
                    let mut update = server.patch(&base, &p);
                    update.content = PolicyContent::Patch {
                        base_version: base.version,
                        operations: json!([{"op": "replace", "path": "/mode", "value": "tampered"}]),
                    };
                    sends.push((update, None));
                }
            }
            Step::BadSignature { doc, unsigned } => {
                let p = server.publish(doc, 0);
                let mut update = server.full(&p);
                update.signature = (!unsigned).then(|| stranger.sign(&p.checksum));
                // Without a configured key the signature is not checked: the update is valid.
                sends.push((update, (!signed).then_some(p)));
            }
            Step::OutOfOrder { first, second } => {
                let older = server.publish(first, 0);
                let newer = server.publish(second, 0);
                sends.push((server.full(&newer), Some(newer)));
                sends.push((server.full(&older), Some(older)));
            }
            Step::SameVersionOtherDocument { doc } => {
                if let Some(run) = model.running.clone() {
                    let mut p =
                        Policy::new("fw", run.version, doc, 0, "model", "conflict").unwrap();
                    if p.checksum == run.checksum {
                        p = Policy::new("fw", run.version, json!({"conflict": true}), 0, "m", "c")
                            .unwrap();
                    }
                    sends.push((server.full(&p), Some(p)));
                }
            }
            Step::Restart => {
                drop(applier);
                applier = open(store.clone());
            }
        }
        for (update, intended) in sends {
            let expected = model.apply(&update, intended.as_ref());
            let status = applier.apply(&update, i as i64);
            prop_assert_eq!(status.state, expected, "step {}: {:?}", i, status);
            prop_assert_eq!(
                status.running_version,
                model.running.as_ref().map(|p| p.version)
            );
            if status.state == PolicyState::Rejected {
                prop_assert!(status.code.is_some() && status.reason.is_some());
            }
            last = Some((update, intended));
        }
        let running = applier.running("fw");
        prop_assert_eq!(
            running
                .as_ref()
                .map(|r| (r.version, r.checksum.clone(), r.document.clone())),
            model
                .running
                .as_ref()
                .map(|p| (p.version, p.checksum.clone(), p.document.clone())),
            "after step {}",
            i
        );
    }
    // Whatever happened, a restart runs the same newest valid version.
    let reopened = open(store);
    prop_assert_eq!(
        reopened.running("fw").map(|r| r.version),
        model.running.as_ref().map(|p| p.version)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_applier_runs_the_newest_valid_version(
        steps in prop::collection::vec(step(), 1..40),
        signed in any::<bool>(),
    ) {
        run(steps, MemoryAppliedStore::new(), signed)?;
    }
}

/// `FileAppliedStore` is not `Clone`; share a directory instead.
#[derive(Clone)]
struct DirStore(std::sync::Arc<tempfile::TempDir>);

impl AppliedPolicyStore for DirStore {
    fn load_all(
        &self,
    ) -> gateway_policy::Result<Vec<gateway_policy::Result<gateway_policy::StoredPolicy>>> {
        FileAppliedStore::open(self.0.path())?.load_all()
    }
    fn save(&mut self, policy: &gateway_policy::StoredPolicy) -> gateway_policy::Result<()> {
        FileAppliedStore::open(self.0.path())?.save(policy)
    }
}

proptest! {
    // Fewer cases: every save fsyncs a real file.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn the_same_holds_on_the_file_store(steps in prop::collection::vec(step(), 1..25)) {
        run(steps, DirStore(std::sync::Arc::new(tempfile::tempdir().unwrap())), true)?;
    }
}

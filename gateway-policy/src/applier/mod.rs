//! The gateway side: the applier, its stores and the agents' read handle.

mod reader;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_proto::{
    AppliedPolicy, ErrorCode, PolicyContent, PolicyState, PolicyStatus, PolicyUpdate, is_checksum,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use reader::{PolicyLookup, PolicyReader, RunningPolicy};
pub use store::{
    AppliedPolicyStore, FileAppliedStore, MemoryAppliedStore, StagedWrite, StoredPolicy,
};

use crate::{Error, PolicyVerifier, Result, apply_patch, checksum, validate_name};

/// The integrator's check of a policy document, run before a policy is applied and on every
/// policy loaded at start. Return `Err(reason)` to refuse it; the reason goes to the server.
///
/// Any `Fn(&str, &Value) -> Result<(), String>` is a validator:
/// ```
/// let validator = |name: &str, doc: &serde_json::Value| {
///     if doc.get("mode").is_some() { Ok(()) } else { Err(format!("{name}: `mode` is required")) }
/// };
/// # let _: &dyn gateway_policy::PolicyValidator = &validator;
/// ```
pub trait PolicyValidator: Send + Sync {
    /// Accept (`Ok`) or refuse (`Err` with a reason a human can act on) `document`.
    fn validate(&self, name: &str, document: &Value) -> std::result::Result<(), String>;
}

impl<F> PolicyValidator for F
where
    F: Fn(&str, &Value) -> std::result::Result<(), String> + Send + Sync,
{
    fn validate(&self, name: &str, document: &Value) -> std::result::Result<(), String> {
        self(name, document)
    }
}

/// A validator that accepts every document.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl PolicyValidator for AcceptAll {
    fn validate(&self, _name: &str, _document: &Value) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// What [`PolicyApplier::open`] does with a stored policy that no longer passes verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidStoredPolicy {
    /// Do not run it; the server sends a fresh full document when the gateway connects.
    #[default]
    Skip,
    /// Run it anyway (it passed every check when it was applied); only report the problem.
    KeepRunning,
}

/// Configuration of a [`PolicyApplier`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplierConfig {
    /// The server's Ed25519 public key, 64 hex digits. When set, updates without a valid signature
    /// are refused with `bad_signature`. Default: none (signatures are not checked).
    pub public_key: Option<String>,
    /// What to do at start with a stored policy that no longer verifies. Default: `skip`.
    pub invalid_stored: InvalidStoredPolicy,
}

impl ApplierConfig {
    /// Check the configuration; the error names the bad parameter.
    pub fn validate(&self) -> Result<()> {
        self.verifier().map(|_| ())
    }

    fn verifier(&self) -> Result<Option<PolicyVerifier>> {
        self.public_key
            .as_deref()
            .map(PolicyVerifier::from_hex)
            .transpose()
            .map_err(|e| Error::invalid("public_key", e.to_string()))
    }
}

/// What [`PolicyApplier::open`] found in the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Policies loaded and running.
    pub loaded: Vec<AppliedPolicy>,
    /// Stored entries that failed a check.
    pub problems: Vec<LoadProblem>,
}

/// A stored policy that did not pass the checks at start.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadProblem {
    /// The policy, when the entry was readable enough to tell.
    pub policy: Option<AppliedPolicy>,
    /// Stable code: `internal` for a damaged entry, else as for an update.
    pub code: ErrorCode,
    /// What is wrong.
    pub reason: String,
    /// True when the policy runs anyway ([`InvalidStoredPolicy::KeepRunning`]).
    pub kept_running: bool,
}

impl LoadProblem {
    /// The `policy_status` to send the server about this problem, when the policy is known.
    pub fn status(&self) -> Option<PolicyStatus> {
        let policy = self.policy.as_ref()?;
        Some(PolicyStatus {
            name: policy.name.clone(),
            version: policy.version,
            state: PolicyState::Rejected,
            reason: Some(format!(
                "stored policy failed its check at start: {}",
                self.reason
            )),
            code: Some(self.code.clone()),
            running_version: self.kept_running.then_some(policy.version),
        })
    }
}

/// Applies policy updates on the gateway.
///
/// # Guarantees
/// * A policy update is applied only if **all** of these hold, checked in this order: the name is
///   well formed; the signature verifies (when a public key is configured); the version is newer
///   than the one running; a patch's `base_version` is the running version and the patch applies;
///   the result hashes to the update's checksum; the integrator's [`PolicyValidator`] accepts it;
///   it was persisted. Anything refused keeps the running policy and is answered with a
///   `rejected` [`PolicyStatus`] carrying a reason and an [`ErrorCode`]:
///
///   | cause | code |
///   |---|---|
///   | malformed name or checksum text | `malformed_frame` / `checksum_mismatch` |
///   | signature missing or wrong | `bad_signature` |
///   | version not newer | `stale_version` |
///   | patch base is not the running version, or the patch does not apply | `base_mismatch` (the server then sends the full document) |
///   | checksum does not match the result | `checksum_mismatch` |
///   | validator refused | `validation_failed` |
///   | persisting failed | `internal` |
///
///   Re-sending the version that already runs, with the same checksum, is answered `applied`
///   without doing anything (at-least-once delivery makes duplicates normal).
/// * Persisting is atomic (see [`FileAppliedStore`]): a crash at any moment leaves
///   the old or the new policy on disk, never a mix. The switch happens after the write, so a
///   crash between them only means the new policy is running after restart — as the server was
///   about to be told.
/// * [`PolicyApplier::open`] loads the last applied policies, so a gateway that cannot reach the
///   server runs its last good policy. A stored policy that is damaged, or that the validator (or
///   signature check) no longer accepts, is **reported** in the [`LoadReport`] and never stops the
///   start (OPA issue #3837 is the failure avoided here). By default such a policy is not run, so
///   the gateway does not report it in `hello` and the server sends a fresh full document;
///   [`InvalidStoredPolicy::KeepRunning`] runs it anyway.
///
/// Call order: [`open`](Self::open) once at start; send [`applied_policies`](Self::applied_policies)
/// in `hello`; for every `policy_update` frame call [`apply`](Self::apply) and send the
/// `policy_status` it returns; give [`reader`](Self::reader) handles to the agent-facing HTTP
/// handlers.
pub struct PolicyApplier<S = FileAppliedStore> {
    store: S,
    verifier: Option<PolicyVerifier>,
    validator: Box<dyn PolicyValidator>,
    running: reader::RunningMap,
}

impl<S: AppliedPolicyStore> PolicyApplier<S> {
    /// Start an applier on `store`, loading the policies applied before. Fails only when the
    /// configuration is invalid or the store cannot be read at all; bad entries are reported in
    /// the [`LoadReport`].
    pub fn open(
        config: ApplierConfig,
        store: S,
        validator: impl PolicyValidator + 'static,
    ) -> Result<(Self, LoadReport)> {
        let verifier = config.verifier()?;
        let applier = PolicyApplier {
            store,
            verifier,
            validator: Box::new(validator),
            running: Arc::default(),
        };
        let report = applier.load(config.invalid_stored)?;
        Ok((applier, report))
    }

    fn load(&self, on_invalid: InvalidStoredPolicy) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut running = BTreeMap::new();
        for entry in self.store.load_all()? {
            let stored = match entry {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(error = %e, "a stored policy is damaged; not running it");
                    report.problems.push(LoadProblem {
                        policy: None,
                        code: ErrorCode::Internal,
                        reason: e.to_string(),
                        kept_running: false,
                    });
                    continue;
                }
            };
            let applied = AppliedPolicy {
                name: stored.name.clone(),
                version: stored.version,
                checksum: stored.checksum.clone(),
            };
            let signature = stored.signature.as_deref().map(hex::decode);
            let check = match signature {
                Some(Err(e)) => Err(Rejection::new(
                    ErrorCode::BadSignature,
                    format!("stored signature is not hex: {e}"),
                )),
                Some(Ok(sig)) => self.check_document(
                    &stored.name,
                    &stored.checksum,
                    Some(&sig),
                    &stored.document,
                ),
                None => self.check_document(&stored.name, &stored.checksum, None, &stored.document),
            };
            let keep = match check {
                Ok(()) => true,
                Err(rejection) => {
                    let kept_running = on_invalid == InvalidStoredPolicy::KeepRunning;
                    tracing::warn!(
                        policy = %stored.name, version = stored.version, code = %rejection.code,
                        reason = %rejection.reason, kept_running,
                        "a stored policy no longer passes its checks"
                    );
                    report.problems.push(LoadProblem {
                        policy: Some(applied.clone()),
                        code: rejection.code,
                        reason: rejection.reason,
                        kept_running,
                    });
                    kept_running
                }
            };
            if keep {
                metrics::gauge!("gateway_policy_running_version", "policy" => stored.name.clone())
                    .set(stored.version as f64);
                report.loaded.push(applied);
                running.insert(
                    stored.name.clone(),
                    Arc::new(RunningPolicy {
                        name: stored.name,
                        version: stored.version,
                        checksum: stored.checksum,
                        document: stored.document,
                        applied_at: stored.applied_at,
                    }),
                );
            }
        }
        tracing::info!(
            loaded = report.loaded.len(),
            problems = report.problems.len(),
            "loaded the last applied policies"
        );
        *self.running.write().unwrap_or_else(|e| e.into_inner()) = running;
        Ok(report)
    }

    /// Handle one `policy_update`: verify, persist and switch, or refuse. Returns the
    /// `policy_status` to send back. `now_ms` (ms since the epoch) is recorded as the apply time.
    pub fn apply(&mut self, update: &PolicyUpdate, now_ms: i64) -> PolicyStatus {
        let current = self.running(&update.name);
        let outcome = self.try_apply(update, current.as_deref(), now_ms);
        let running_version = self.running(&update.name).map(|p| p.version);
        match outcome {
            Ok(()) => {
                metrics::counter!("gateway_policy_updates_total", "result" => "applied")
                    .increment(1);
                PolicyStatus {
                    name: update.name.clone(),
                    version: update.version,
                    state: PolicyState::Applied,
                    reason: None,
                    code: None,
                    running_version,
                }
            }
            Err(rejection) => {
                tracing::warn!(
                    policy = %update.name, version = update.version, code = %rejection.code,
                    reason = %rejection.reason, ?running_version, "policy update rejected"
                );
                metrics::counter!(
                    "gateway_policy_updates_total",
                    "result" => "rejected",
                    "code" => rejection.code.as_str().to_owned()
                )
                .increment(1);
                PolicyStatus {
                    name: update.name.clone(),
                    version: update.version,
                    state: PolicyState::Rejected,
                    reason: Some(rejection.reason),
                    code: Some(rejection.code),
                    running_version,
                }
            }
        }
    }

    fn try_apply(
        &mut self,
        update: &PolicyUpdate,
        current: Option<&RunningPolicy>,
        now_ms: i64,
    ) -> std::result::Result<(), Rejection> {
        validate_name(&update.name)
            .map_err(|e| Rejection::new(ErrorCode::MalformedFrame, e.to_string()))?;
        if !is_checksum(&update.checksum) {
            return Err(Rejection::new(
                ErrorCode::ChecksumMismatch,
                "the checksum is not 64 lowercase hex digits",
            ));
        }
        self.check_signature(&update.checksum, update.signature.as_deref())?;
        if let Some(current) = current {
            if update.version == current.version && update.checksum == current.checksum {
                tracing::debug!(policy = %update.name, version = update.version, "duplicate update of the running version");
                return Ok(());
            }
            if update.version <= current.version {
                return Err(Rejection::new(
                    ErrorCode::StaleVersion,
                    format!(
                        "version {} is not newer than the running version {}",
                        update.version, current.version
                    ),
                ));
            }
        }
        let document = match &update.content {
            PolicyContent::Full { document } => document.clone(),
            PolicyContent::Patch {
                base_version,
                operations,
            } => {
                let base = current
                    .filter(|c| c.version == *base_version)
                    .ok_or_else(|| {
                        Rejection::new(
                            ErrorCode::BaseMismatch,
                            match current {
                                Some(c) => format!(
                                    "the patch is against version {base_version} but version {} runs; send the full document",
                                    c.version
                                ),
                                None => format!(
                                    "the patch is against version {base_version} but no version runs; send the full document"
                                ),
                            },
                        )
                    })?;
                apply_patch(&base.document, operations).map_err(|e| {
                    Rejection::new(
                        ErrorCode::BaseMismatch,
                        format!("{e}; send the full document"),
                    )
                })?
            }
        };
        self.check_document_content(&update.name, &update.checksum, &document)?;

        let stored = StoredPolicy {
            name: update.name.clone(),
            version: update.version,
            checksum: update.checksum.clone(),
            document,
            signature: update.signature.as_deref().map(hex::encode),
            applied_at: now_ms,
        };
        self.store.save(&stored).map_err(|e| {
            Rejection::new(
                ErrorCode::Internal,
                format!("cannot persist the policy: {e}"),
            )
        })?;

        let running = Arc::new(RunningPolicy {
            name: stored.name,
            version: stored.version,
            checksum: stored.checksum,
            document: stored.document,
            applied_at: now_ms,
        });
        tracing::info!(
            policy = %running.name, version = running.version, checksum = %running.checksum,
            previous = ?current.map(|c| c.version), "policy applied"
        );
        metrics::gauge!("gateway_policy_running_version", "policy" => running.name.clone())
            .set(running.version as f64);
        self.running
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(running.name.clone(), running);
        Ok(())
    }

    fn check_signature(
        &self,
        checksum: &str,
        signature: Option<&[u8]>,
    ) -> std::result::Result<(), Rejection> {
        match &self.verifier {
            Some(verifier) => verifier
                .verify(checksum, signature)
                .map_err(|e| Rejection::new(ErrorCode::BadSignature, e.to_string())),
            None => Ok(()),
        }
    }

    fn check_document(
        &self,
        name: &str,
        checksum: &str,
        signature: Option<&[u8]>,
        document: &Value,
    ) -> std::result::Result<(), Rejection> {
        self.check_signature(checksum, signature)?;
        self.check_document_content(name, checksum, document)
    }

    fn check_document_content(
        &self,
        name: &str,
        expected: &str,
        document: &Value,
    ) -> std::result::Result<(), Rejection> {
        let actual = checksum(document)
            .map_err(|e| Rejection::new(ErrorCode::ChecksumMismatch, e.to_string()))?;
        if actual != expected {
            return Err(Rejection::new(
                ErrorCode::ChecksumMismatch,
                format!("the document hashes to {actual}, the update says {expected}"),
            ));
        }
        self.validator
            .validate(name, document)
            .map_err(|reason| Rejection::new(ErrorCode::ValidationFailed, reason))
    }

    /// The running policy of this name.
    pub fn running(&self, name: &str) -> Option<Arc<RunningPolicy>> {
        self.reader().get(name)
    }

    /// Every running policy as `hello.applied_policies` reports them.
    pub fn applied_policies(&self) -> Vec<AppliedPolicy> {
        self.reader().applied_policies()
    }

    /// A read handle for agent-facing lookups; it follows every switch.
    pub fn reader(&self) -> PolicyReader {
        PolicyReader {
            running: self.running.clone(),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S> std::fmt::Debug for PolicyApplier<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyApplier")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

/// Why an update was refused.
struct Rejection {
    code: ErrorCode,
    reason: String,
}

impl Rejection {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests;

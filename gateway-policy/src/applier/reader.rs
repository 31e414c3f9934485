//! Read access to the running policies for the gateway's agents (`GET /v1/policy`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use gateway_proto::AppliedPolicy;
use serde_json::Value;

use crate::{etag, if_none_match};

/// A policy the gateway runs now.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningPolicy {
    /// Policy name.
    pub name: String,
    /// Version running.
    pub version: u64,
    /// Checksum of `document`; also its HTTP ETag (see [`crate::etag`]).
    pub checksum: String,
    /// The document.
    pub document: Value,
    /// When it was applied (or first applied, for one loaded at start), ms since the epoch.
    pub applied_at: i64,
}

impl RunningPolicy {
    /// This policy as reported in `hello.applied_policies`.
    pub fn applied(&self) -> AppliedPolicy {
        AppliedPolicy {
            name: self.name.clone(),
            version: self.version,
            checksum: self.checksum.clone(),
        }
    }

    /// The `ETag` header value for this policy.
    pub fn etag(&self) -> String {
        etag(&self.checksum)
    }
}

pub(crate) type RunningMap = Arc<RwLock<BTreeMap<String, Arc<RunningPolicy>>>>;

/// A cheap, cloneable read handle on the policies a [`crate::PolicyApplier`] runs. Hand it to the
/// HTTP handlers that serve agents; it sees every switch the applier makes, at once and whole.
#[derive(Debug, Clone)]
pub struct PolicyReader {
    pub(crate) running: RunningMap,
}

/// Answer to a conditional `GET /v1/policy`.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyLookup {
    /// No policy of that name runs: answer `404 Not Found`.
    NotFound,
    /// The client's copy is current: answer `304 Not Modified` with this `ETag`.
    NotModified {
        /// The `ETag` header value.
        etag: String,
    },
    /// Answer `200 OK` with the document and this `ETag`.
    Current {
        /// The `ETag` header value.
        etag: String,
        /// The running policy.
        policy: Arc<RunningPolicy>,
    },
}

impl PolicyReader {
    /// The running policy of this name.
    pub fn get(&self, name: &str) -> Option<Arc<RunningPolicy>> {
        self.read().get(name).cloned()
    }

    /// Every running policy, by name.
    pub fn all(&self) -> Vec<Arc<RunningPolicy>> {
        self.read().values().cloned().collect()
    }

    /// The policies as `hello.applied_policies` reports them.
    pub fn applied_policies(&self) -> Vec<AppliedPolicy> {
        self.read().values().map(|p| p.applied()).collect()
    }

    /// Look a policy up for an agent's `GET /v1/policy`, honouring its `If-None-Match` header.
    ///
    /// ```
    /// use gateway_policy::{MemoryAppliedStore, PolicyApplier, PolicyLookup, ApplierConfig, Policy};
    /// let (mut applier, _) =
    ///     PolicyApplier::open(ApplierConfig::default(), MemoryAppliedStore::new(), gateway_policy::AcceptAll)
    ///         .unwrap();
    /// let policy = Policy::new("fw", 1, serde_json::json!({"mode": "audit"}), 0, "ops", "first").unwrap();
    /// applier.apply(&policy.full_update(None), 0);
    ///
    /// let reader = applier.reader();
    /// let PolicyLookup::Current { etag, .. } = reader.lookup("fw", None) else { panic!() };
    /// assert_eq!(reader.lookup("fw", Some(&etag)), PolicyLookup::NotModified { etag: etag.clone() });
    /// assert_eq!(reader.lookup("other", None), PolicyLookup::NotFound);
    /// ```
    pub fn lookup(&self, name: &str, if_none_match_header: Option<&str>) -> PolicyLookup {
        let Some(policy) = self.get(name) else {
            return PolicyLookup::NotFound;
        };
        let etag = policy.etag();
        match if_none_match_header {
            Some(header) if if_none_match(header, &policy.checksum) => {
                PolicyLookup::NotModified { etag }
            }
            _ => PolicyLookup::Current { etag, policy },
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<RunningPolicy>>> {
        self.running.read().unwrap_or_else(|e| e.into_inner())
    }
}

//! The server's policy store: versions with history, assignments and gateway membership.

use serde_json::Value;

use super::{Assignment, GatewayInfo, RolloutId, RolloutRecord, Target};
use crate::{Error, Policy, PolicyVersionInfo, Result, diff};

/// Result of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishOutcome {
    /// A new version was created.
    Created(Policy),
    /// The document's checksum equals the current version's: nothing was created; this is the
    /// current version.
    Unchanged(Policy),
}

impl PublishOutcome {
    /// The created or current version.
    pub fn policy(&self) -> &Policy {
        match self {
            PublishOutcome::Created(p) | PublishOutcome::Unchanged(p) => p,
        }
    }

    /// True when a new version was created.
    pub fn created(&self) -> bool {
        matches!(self, PublishOutcome::Created(_))
    }
}

/// Storage of policy versions, assignments and gateway membership. SQLite by default
/// ([`super::SqlitePolicyStore`]); a PostgreSQL implementation lets several servers share one.
///
/// # Invariants implementations keep
/// * Versions of a name start at 1 and increase by 1; a stored version never changes.
/// * `publish` is atomic: two concurrent publishes of the same name get different versions.
/// * `publish` of a document whose checksum equals the latest version's creates nothing.
pub trait PolicyStore: Send + Sync {
    /// Store `document` as the next version of `name`, or return
    /// [`PublishOutcome::Unchanged`] when its checksum equals the latest version's.
    fn publish(
        &self,
        name: &str,
        document: Value,
        author: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<PublishOutcome>;

    /// The latest version of `name`.
    fn latest(&self, name: &str) -> Result<Option<Policy>>;

    /// One version of `name`.
    fn fetch(&self, name: &str, version: u64) -> Result<Option<Policy>>;

    /// Every version of `name`, oldest first, without documents. Empty for an unknown name.
    fn history(&self, name: &str) -> Result<Vec<PolicyVersionInfo>>;

    /// Every policy name with its latest version number.
    fn latest_versions(&self) -> Result<Vec<(String, u64)>>;

    /// Add or replace (same policy and target) an assignment, with its tenant.
    fn put_assignment(&self, assignment: &Assignment) -> Result<()>;

    /// Remove an assignment; true if there was one.
    fn remove_assignment(&self, policy: &str, target: &Target) -> Result<bool>;

    /// Every assignment.
    fn assignments(&self) -> Result<Vec<Assignment>>;

    /// Add or replace a gateway's membership (tenant, groups).
    fn put_gateway(&self, gateway: &GatewayInfo) -> Result<()>;

    /// Remove a gateway; true if it was known.
    fn remove_gateway(&self, gateway_id: &str) -> Result<bool>;

    /// Every known gateway.
    fn gateways(&self) -> Result<Vec<GatewayInfo>>;

    /// Persist a rollout that just started, with its targets.
    fn insert_rollout(&self, rollout: &RolloutRecord) -> Result<()>;

    /// Record that these targets of a rollout were released.
    fn mark_released(&self, rollout: RolloutId, gateways: &[&str]) -> Result<()>;

    /// Record that a rollout was aborted, and why.
    fn set_rollout_aborted(&self, rollout: RolloutId, reason: &str) -> Result<()>;

    /// Every persisted rollout, oldest first, targets sorted by gateway id.
    fn rollouts(&self) -> Result<Vec<RolloutRecord>>;

    /// Forget rollouts (see [`super::RolloutTracker::prune`]).
    fn delete_rollouts(&self, rollouts: &[RolloutId]) -> Result<()>;

    /// Remove `gateway_id` from the targets of every persisted rollout (it moved to another
    /// tenant: nothing of its old tenant's rollouts may follow it).
    fn remove_gateway_from_rollouts(&self, gateway_id: &str) -> Result<()>;

    /// Record that policy `name` belongs to `tenant` (see [`super::PolicyService`]: the first
    /// tenant to change a name through the service owns it).
    fn set_policy_owner(&self, name: &str, tenant: &str) -> Result<()>;

    /// Every owned policy name with its tenant. Names never changed through the service (published
    /// directly through [`super::PolicyServer`]) have no owner.
    fn policy_owners(&self) -> Result<Vec<(String, String)>>;

    /// A version, or [`Error::UnknownVersion`] / [`Error::UnknownPolicy`].
    fn get(&self, name: &str, version: u64) -> Result<Policy> {
        match self.fetch(name, version)? {
            Some(p) => Ok(p),
            None if self.latest(name)?.is_none() => Err(Error::UnknownPolicy {
                name: name.to_owned(),
            }),
            None => Err(Error::UnknownVersion {
                name: name.to_owned(),
                version,
            }),
        }
    }

    /// The JSON Patch (RFC 6902) from version `from` to version `to` of `name`.
    fn diff(&self, name: &str, from: u64, to: u64) -> Result<Value> {
        let a = self.get(name, from)?;
        let b = self.get(name, to)?;
        Ok(diff(&a.document, &b.document))
    }

    /// Publish the document of version `to_version` again as a new version, so versions never
    /// move backwards. `message` defaults to "rollback to version N" when empty. Unchanged when
    /// that document is already the latest.
    fn rollback(
        &self,
        name: &str,
        to_version: u64,
        author: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<PublishOutcome> {
        let old = self.get(name, to_version)?;
        let message = if message.is_empty() {
            format!("rollback to version {to_version}")
        } else {
            message.to_owned()
        };
        self.publish(name, old.document, author, &message, now_ms)
    }
}

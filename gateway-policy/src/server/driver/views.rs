//! What the operator API answers: tenant-scoped views of policies, assignments, rollouts and
//! gateways. Every type here is the JSON body of an answer (see `API.md`), so clients can
//! deserialize them.

use std::collections::BTreeMap;

use gateway_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::server::{
    Assignment, PolicyServer, PolicyStore, RolloutId, RolloutState, RolloutSummary, Target,
    TargetState, TargetStatus,
};
use crate::{Error, Result};

/// Where an assignment applies, as an operator names it: `{"tenant": "acme"}`,
/// `{"group": "eu"}` or `{"gateway": "gw-1"}`.
///
/// Groups are per tenant: the service stores group `eu` of tenant `acme` as the
/// [`Target::Group`] `acme/eu`, so one tenant's group never matches another tenant's gateways.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignTarget {
    /// Every gateway of the tenant (must be the caller's own).
    Tenant(String),
    /// Every gateway of the caller's tenant in this group.
    Group(String),
    /// One gateway of the caller's tenant.
    Gateway(String),
}

impl AssignTarget {
    /// `tenant`, `group` or `gateway`.
    pub fn kind(&self) -> &'static str {
        match self {
            AssignTarget::Tenant(_) => "tenant",
            AssignTarget::Group(_) => "group",
            AssignTarget::Gateway(_) => "gateway",
        }
    }

    /// The tenant, group or gateway id.
    pub fn id(&self) -> &str {
        match self {
            AssignTarget::Tenant(id) | AssignTarget::Group(id) | AssignTarget::Gateway(id) => id,
        }
    }

    /// A target from its kind and id (as in `DELETE .../assignments/{kind}/{id}`).
    pub fn from_parts(kind: &str, id: impl Into<String>) -> Result<AssignTarget> {
        match kind {
            "tenant" => Ok(AssignTarget::Tenant(id.into())),
            "group" => Ok(AssignTarget::Group(id.into())),
            "gateway" => Ok(AssignTarget::Gateway(id.into())),
            other => Err(Error::invalid(
                "target",
                format!("unknown target kind {other:?}; use tenant, group or gateway"),
            )),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        serde_json::json!({ self.kind(): self.id() })
    }
}

/// Whether a publish or rollback created a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionOutcome {
    /// A new version was created.
    Created,
    /// The document equals the latest version's: nothing was created.
    Unchanged,
}

/// The answer to a publish or rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    /// Policy name.
    pub name: String,
    /// The created version, or the latest one when nothing was created.
    pub version: u64,
    /// Its checksum.
    pub checksum: String,
    /// Created or unchanged.
    pub outcome: VersionOutcome,
    /// The rollouts started (empty when unchanged or when no gateway follows the latest version).
    pub rollouts: Vec<RolloutView>,
}

/// A policy in a listing: its latest version without the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyHead {
    /// Policy name.
    pub name: String,
    /// Latest version.
    pub version: u64,
    /// Its checksum.
    pub checksum: String,
    /// When it was created, ms since the epoch.
    pub created_at: i64,
    /// Who created it.
    pub author: String,
    /// Why.
    pub message: String,
    /// The tenant that owns the name; `None` for a policy published outside the service.
    pub owner: Option<String>,
}

/// The JSON Patch between two versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDiff {
    /// Policy name.
    pub name: String,
    /// The version the patch applies to.
    pub from: u64,
    /// The version it produces.
    pub to: u64,
    /// RFC 6902 operations.
    pub patch: Value,
}

/// An assignment as the caller's tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentView {
    /// Policy name.
    pub policy: String,
    /// Where it applies.
    pub target: AssignTarget,
    /// A pinned version, or `None` to follow the latest.
    pub version: Option<u64>,
    /// When it was made, ms since the epoch.
    pub assigned_at: i64,
    /// Who made it.
    pub author: String,
}

/// The answer to an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignResult {
    /// The assignment in force.
    pub assignment: AssignmentView,
    /// True when there was no assignment of this policy to this target before.
    pub created: bool,
    /// The rollouts started.
    pub rollouts: Vec<RolloutView>,
}

/// The answer to removing an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnassignResult {
    /// The assignment removed.
    pub removed: AssignmentView,
    /// The rollouts started for gateways that fall back to a less specific assignment.
    pub rollouts: Vec<RolloutView>,
}

/// A rollout, counted over the caller's tenant's gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Rollout id.
    pub id: RolloutId,
    /// Policy name.
    pub policy: String,
    /// Version rolled out.
    pub version: u64,
    /// `aborted` when the rollout was aborted; otherwise `in_progress` while one of the tenant's
    /// targets is pending or delivered, else `completed`.
    pub state: RolloutState,
    /// Why it was aborted.
    pub abort_reason: Option<String>,
    /// When it started, ms since the epoch.
    pub started_at_ms: i64,
    /// Targets (gateway × policy) that belong to this rollout now; targets moved to a later
    /// rollout are no longer counted.
    pub total: usize,
    /// Of those, released by the staging.
    pub released: usize,
    /// In `pending` (released or not).
    pub pending: usize,
    /// In `delivered`.
    pub delivered: usize,
    /// In `applied`.
    pub applied: usize,
    /// In `rejected`.
    pub rejected: usize,
}

/// Targets counted by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// All targets.
    pub total: usize,
    /// In `pending`.
    pub pending: usize,
    /// In `delivered`.
    pub delivered: usize,
    /// In `applied`.
    pub applied: usize,
    /// In `rejected`.
    pub rejected: usize,
}

impl StateCounts {
    fn add(&mut self, state: TargetState) {
        self.total += 1;
        match state {
            TargetState::Pending => self.pending += 1,
            TargetState::Delivered => self.delivered += 1,
            TargetState::Applied => self.applied += 1,
            TargetState::Rejected => self.rejected += 1,
        }
    }
}

/// One gateway × one policy: what it should run, what it said it runs, and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    /// Gateway id.
    pub gateway_id: String,
    /// Policy name.
    pub policy: String,
    /// The version the gateway should run.
    pub desired_version: u64,
    /// The version it last said it runs.
    pub reported_version: Option<u64>,
    /// `pending`, `delivered`, `applied` or `rejected`.
    pub state: TargetState,
    /// The gateway's reason for the last rejection.
    pub reason: Option<String>,
    /// The code of the last rejection.
    pub error_code: Option<ErrorCode>,
    /// When an update was last sent, ms since the epoch.
    pub last_attempt_ms: Option<i64>,
    /// When the gateway last reported the desired version applied, ms since the epoch.
    pub last_success_ms: Option<i64>,
    /// The rollout the target belongs to (`None`: set outside a rollout, e.g. a new gateway).
    pub rollout: Option<RolloutId>,
    /// True while the gateway is connected.
    pub connected: bool,
}

/// A policy's rollout status over the caller's tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRollout {
    /// Policy name.
    pub policy: String,
    /// Its latest version.
    pub latest_version: Option<u64>,
    /// The tenant's targets of this policy by state.
    pub counts: StateCounts,
    /// Every target of this policy on the tenant's gateways, by gateway id.
    pub gateways: Vec<TargetView>,
    /// The policy's rollouts still kept (finished ones are pruned after the retention), newest
    /// first, counted over the tenant's gateways.
    pub rollouts: Vec<RolloutView>,
}

/// A gateway's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    /// Gateway id.
    pub gateway_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its groups in the tenant, sorted.
    pub groups: Vec<String>,
    /// True while it is connected.
    pub connected: bool,
}

/// A gateway's policies and where each stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayPolicies {
    /// The gateway.
    #[serde(flatten)]
    pub gateway: GatewayView,
    /// One entry per policy assigned to it, by name.
    pub policies: Vec<TargetView>,
}

// --- Tenant scoping -------------------------------------------------------------------------

/// Separates a tenant from a group name in stored group targets and memberships.
const GROUP_SEPARATOR: char = '/';

/// The stored name of `group` of `tenant`.
pub(crate) fn group_key(tenant: &str, group: &str) -> String {
    format!("{tenant}{GROUP_SEPARATOR}{group}")
}

/// The tenant-local name of a stored group, if it belongs to `tenant`.
pub(crate) fn local_group<'a>(tenant: &str, stored: &'a str) -> Option<&'a str> {
    stored
        .strip_prefix(tenant)?
        .strip_prefix(GROUP_SEPARATOR)
        .filter(|g| !g.contains(GROUP_SEPARATOR))
}

/// Group names follow the policy-name rule (letters, digits, `.`, `_`, `-`).
pub(crate) fn validate_group(group: &str) -> Result<()> {
    crate::validate_name(group).map_err(|e| match e {
        Error::InvalidName { reason, .. } => Error::invalid(
            "groups",
            format!(
                "group {group:?}: {}",
                reason.replace("a policy name", "a group name")
            ),
        ),
        other => other,
    })
}

/// A gateway id as a path segment and a stored key: 1 to 256 bytes without control characters.
pub(crate) fn validate_gateway_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "gateway_id",
            "a gateway id is 1 to 256 bytes without control characters",
        ));
    }
    Ok(())
}

pub(crate) fn gateway_in_tenant<S: PolicyStore>(
    server: &PolicyServer<S>,
    gateway_id: &str,
    tenant: &str,
) -> bool {
    server
        .gateway(gateway_id)
        .is_some_and(|g| g.tenant == tenant)
}

/// The stored target an operator of `tenant` means; `gateway_of_tenant` says whether a gateway
/// id may be named.
pub(crate) fn internal_target(
    tenant: &str,
    target: &AssignTarget,
    gateway_of_tenant: impl FnOnce(&str) -> bool,
) -> Result<Target> {
    match target {
        AssignTarget::Tenant(t) if t == tenant => Ok(Target::Tenant(t.clone())),
        AssignTarget::Tenant(t) => Err(Error::Forbidden(format!(
            "operators of tenant {tenant:?} assign within their own tenant, not {t:?}"
        ))),
        AssignTarget::Group(g) => {
            validate_group(g)?;
            Ok(Target::Group(group_key(tenant, g)))
        }
        AssignTarget::Gateway(id) if gateway_of_tenant(id) => Ok(Target::Gateway(id.clone())),
        AssignTarget::Gateway(id) => Err(Error::UnknownGateway {
            gateway_id: id.clone(),
        }),
    }
}

/// The target of an assignment as `tenant` sees it; `None` for another tenant's assignment
/// (and for a group stored without the tenant prefix, made outside the service).
pub(crate) fn visible_target(tenant: &str, assignment: &Assignment) -> Option<AssignTarget> {
    if assignment.tenant != tenant {
        return None;
    }
    match &assignment.target {
        Target::Tenant(t) => (t == tenant).then(|| AssignTarget::Tenant(t.clone())),
        Target::Group(g) => local_group(tenant, g).map(|g| AssignTarget::Group(g.to_owned())),
        Target::Gateway(id) => Some(AssignTarget::Gateway(id.clone())),
    }
}

pub(crate) fn assignment_view(assignment: &Assignment, target: AssignTarget) -> AssignmentView {
    AssignmentView {
        policy: assignment.policy.clone(),
        target,
        version: assignment.version,
        assigned_at: assignment.assigned_at,
        author: assignment.author.clone(),
    }
}

pub(crate) fn target_view<S: PolicyStore>(
    server: &PolicyServer<S>,
    t: &TargetStatus,
) -> TargetView {
    TargetView {
        gateway_id: t.gateway_id.clone(),
        policy: t.policy.clone(),
        desired_version: t.desired_version,
        reported_version: t.reported_version,
        state: t.state,
        reason: t.reason.clone(),
        error_code: t.error_code.clone(),
        last_attempt_ms: t.last_attempt_ms,
        last_success_ms: t.last_success_ms,
        rollout: t.rollout,
        connected: server.is_connected(&t.gateway_id),
    }
}

pub(crate) fn gateway_view<S: PolicyStore>(
    server: &PolicyServer<S>,
    gateway_id: &str,
) -> Option<GatewayView> {
    let info = server.gateway(gateway_id)?;
    let mut groups: Vec<String> = info
        .groups
        .iter()
        .filter_map(|g| local_group(&info.tenant, g))
        .map(str::to_owned)
        .collect();
    groups.sort();
    Some(GatewayView {
        gateway_id: info.id.clone(),
        tenant: info.tenant.clone(),
        groups,
        connected: server.is_connected(gateway_id),
    })
}

/// A rollout's view with nothing counted yet.
fn empty_view(s: RolloutSummary) -> RolloutView {
    RolloutView {
        id: s.id,
        policy: s.policy,
        version: s.version,
        state: s.state,
        abort_reason: s.abort_reason,
        started_at_ms: s.started_at_ms,
        total: 0,
        released: 0,
        pending: 0,
        delivered: 0,
        applied: 0,
        rejected: 0,
    }
}

impl RolloutView {
    fn count(&mut self, t: &TargetStatus) {
        self.total += 1;
        self.released += usize::from(t.released);
        match t.state {
            TargetState::Pending => self.pending += 1,
            TargetState::Delivered => self.delivered += 1,
            TargetState::Applied => self.applied += 1,
            TargetState::Rejected => self.rejected += 1,
        }
    }

    /// The state over the counted targets: aborted stays aborted, else in progress while one is
    /// pending or delivered.
    fn settle(&mut self) {
        if self.state != RolloutState::Aborted {
            self.state = if self.pending + self.delivered > 0 {
                RolloutState::InProgress
            } else {
                RolloutState::Completed
            };
        }
    }
}

/// Rollouts counted over `tenant`'s gateways, in the order of `ids` (unknown ids are skipped).
/// One pass over every target.
pub(crate) fn rollout_views<S: PolicyStore>(
    server: &PolicyServer<S>,
    ids: &[RolloutId],
    tenant: &str,
) -> Vec<RolloutView> {
    let mut views: BTreeMap<RolloutId, RolloutView> = ids
        .iter()
        .filter_map(|id| server.tracker().summary(*id))
        .map(|s| (s.id, empty_view(s)))
        .collect();
    if views.is_empty() {
        return Vec::new();
    }
    for t in server.tracker().targets() {
        let Some(view) = t.rollout.and_then(|r| views.get_mut(&r)) else {
            continue;
        };
        if gateway_in_tenant(server, &t.gateway_id, tenant) {
            view.count(t);
        }
    }
    ids.iter()
        .filter_map(|id| views.remove(id))
        .map(|mut view| {
            view.settle();
            view
        })
        .collect()
}

/// Rollouts split by the tenant of their gateways: for each of `ids`, one view per tenant that
/// has a gateway in it, counted over that tenant's gateways only. One pass over every target.
pub(crate) fn rollout_views_by_tenant<S: PolicyStore>(
    server: &PolicyServer<S>,
    ids: &[RolloutId],
) -> BTreeMap<RolloutId, BTreeMap<String, RolloutView>> {
    let blanks: BTreeMap<RolloutId, RolloutView> = ids
        .iter()
        .filter_map(|id| server.tracker().summary(*id))
        .map(|s| (s.id, empty_view(s)))
        .collect();
    let mut out: BTreeMap<RolloutId, BTreeMap<String, RolloutView>> = BTreeMap::new();
    if blanks.is_empty() {
        return out;
    }
    for t in server.tracker().targets() {
        let Some(blank) = t.rollout.and_then(|r| blanks.get(&r)) else {
            continue;
        };
        let Some(gateway) = server.gateway(&t.gateway_id) else {
            continue;
        };
        out.entry(blank.id)
            .or_default()
            .entry(gateway.tenant.clone())
            .or_insert_with(|| blank.clone())
            .count(t);
    }
    out.values_mut()
        .flat_map(|views| views.values_mut())
        .for_each(RolloutView::settle);
    out
}

/// A policy's rollout status over `tenant`'s gateways.
pub(crate) fn policy_rollout<S: PolicyStore>(
    server: &PolicyServer<S>,
    policy: &str,
    tenant: &str,
) -> PolicyRollout {
    let mut counts = StateCounts::default();
    let mut gateways: Vec<TargetView> = server
        .tracker()
        .targets()
        .filter(|t| t.policy == policy && gateway_in_tenant(server, &t.gateway_id, tenant))
        .map(|t| {
            counts.add(t.state);
            target_view(server, t)
        })
        .collect();
    gateways.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
    let ids: Vec<RolloutId> = server
        .tracker()
        .rollouts()
        .into_iter()
        .rev()
        .filter(|r| r.policy == policy)
        .map(|r| r.id)
        .collect();
    PolicyRollout {
        policy: policy.to_owned(),
        latest_version: server.latest_version(policy),
        counts,
        gateways,
        rollouts: rollout_views(server, &ids, tenant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_scoped_by_tenant() {
        let key = group_key("acme", "eu");
        assert_eq!(key, "acme/eu");
        assert_eq!(local_group("acme", &key), Some("eu"));
        assert_eq!(local_group("acme-2", &key), None);
        assert_eq!(local_group("acm", &key), None);
        // A tenant whose name contains the separator still only sees its own groups.
        assert_eq!(local_group("a/b", "a/b/eu"), Some("eu"));
        assert_eq!(local_group("a", "a/b/eu"), None);
        assert_eq!(
            local_group("acme", "eu"),
            None,
            "unscoped groups are invisible"
        );
    }

    #[test]
    fn group_and_gateway_ids_are_validated() {
        validate_group("eu-west.1").unwrap();
        let e = validate_group("eu/west").unwrap_err();
        assert!(e.to_string().contains("group name"), "{e}");
        validate_gateway_id("gw-1").unwrap();
        assert!(validate_gateway_id("").is_err());
        assert!(validate_gateway_id("a\nb").is_err());
        assert!(validate_gateway_id(&"x".repeat(257)).is_err());
    }

    #[test]
    fn targets_read_from_json_and_parts() {
        let t: AssignTarget = serde_json::from_str(r#"{"group": "eu"}"#).unwrap();
        assert_eq!(t, AssignTarget::Group("eu".into()));
        assert_eq!(t.to_json(), serde_json::json!({"group": "eu"}));
        assert_eq!(
            AssignTarget::from_parts("gateway", "gw-1").unwrap(),
            AssignTarget::Gateway("gw-1".into())
        );
        assert!(AssignTarget::from_parts("planet", "x").is_err());
        assert!(serde_json::from_str::<AssignTarget>(r#"{"planet": "x"}"#).is_err());
    }
}

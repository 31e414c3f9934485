//! Which policy applies to which gateways.
//!
//! Every assignment belongs to one tenant and only ever reaches gateways of that tenant, whatever
//! its target names: a group or gateway id of another tenant matches nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A set of gateways an assignment applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Target {
    /// Every gateway of a tenant.
    Tenant(String),
    /// Every gateway in a named group.
    Group(String),
    /// One gateway.
    Gateway(String),
}

impl Target {
    /// `tenant`, `group` or `gateway`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Tenant(_) => "tenant",
            Target::Group(_) => "group",
            Target::Gateway(_) => "gateway",
        }
    }

    /// The tenant, group or gateway id.
    pub fn id(&self) -> &str {
        match self {
            Target::Tenant(id) | Target::Group(id) | Target::Gateway(id) => id,
        }
    }

    /// Build a target from its kind and id (as stored); `None` for an unknown kind.
    pub fn from_parts(kind: &str, id: impl Into<String>) -> Option<Target> {
        match kind {
            "tenant" => Some(Target::Tenant(id.into())),
            "group" => Some(Target::Group(id.into())),
            "gateway" => Some(Target::Gateway(id.into())),
            _ => None,
        }
    }

    /// Higher is more specific.
    fn specificity(&self) -> u8 {
        match self {
            Target::Tenant(_) => 0,
            Target::Group(_) => 1,
            Target::Gateway(_) => 2,
        }
    }

    /// True when this target covers `gateway`, by the target alone. An [`Assignment`] also
    /// requires the gateway to be of its [`tenant`](Assignment::tenant) (see
    /// [`Assignment::covers`]).
    pub fn matches(&self, gateway: &GatewayInfo) -> bool {
        match self {
            Target::Tenant(t) => *t == gateway.tenant,
            Target::Group(g) => gateway.groups.iter().any(|x| x == g),
            Target::Gateway(id) => *id == gateway.id,
        }
    }
}

/// "Policy `policy` applies to `target` within `tenant`", at a pinned version or the latest one.
///
/// The tenant bounds the target: the assignment covers a gateway only when the gateway is of
/// `tenant` *and* the target matches it, so a [`Target::Gateway`] or [`Target::Group`] naming
/// another tenant's gateway or group reaches nothing. A [`Target::Tenant`] must name `tenant`
/// itself ([`PolicyServer::assign`](crate::PolicyServer::assign) checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Policy name.
    pub policy: String,
    /// The tenant the assignment belongs to; only its gateways can receive it.
    pub tenant: String,
    /// Which gateways of the tenant.
    pub target: Target,
    /// A pinned version, or `None` to follow every new version.
    #[serde(default)]
    pub version: Option<u64>,
    /// When the assignment was made, ms since the epoch.
    pub assigned_at: i64,
    /// Who made it.
    pub author: String,
}

impl Assignment {
    /// True when this assignment applies to `gateway`: the gateway is of the assignment's tenant
    /// and the target matches it.
    pub fn covers(&self, gateway: &GatewayInfo) -> bool {
        self.tenant == gateway.tenant && self.target.matches(gateway)
    }
}

/// A gateway as assignments see it: its tenant and the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Gateway id.
    pub id: String,
    /// Tenant the gateway belongs to.
    pub tenant: String,
    /// Named groups the gateway is in.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl GatewayInfo {
    /// A gateway of `tenant` in no group.
    pub fn new(id: impl Into<String>, tenant: impl Into<String>) -> Self {
        GatewayInfo {
            id: id.into(),
            tenant: tenant.into(),
            groups: Vec::new(),
        }
    }

    /// The same gateway, also in `group`.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }
}

/// Assignments indexed by policy name, resolving desired versions.
///
/// # Resolution
/// For a gateway and a policy name, only assignments of the gateway's tenant count
/// ([`Assignment::covers`]); of those, the most specific matching assignment wins: a gateway
/// assignment over a group assignment over a tenant assignment. Between several groups of the
/// gateway, the most recently made assignment wins (ties: the greater group name), so the result
/// never depends on storage order. An assignment either pins a version or follows the latest one.
#[derive(Debug, Clone, Default)]
pub struct AssignmentTable {
    by_policy: BTreeMap<String, Vec<Assignment>>,
}

impl AssignmentTable {
    /// A table holding `assignments`.
    pub fn new(assignments: impl IntoIterator<Item = Assignment>) -> Self {
        let mut table = AssignmentTable::default();
        for a in assignments {
            table.put(a);
        }
        table
    }

    /// Add an assignment, replacing the one of the same policy and target.
    pub fn put(&mut self, assignment: Assignment) {
        let list = self.by_policy.entry(assignment.policy.clone()).or_default();
        list.retain(|a| a.target != assignment.target);
        list.push(assignment);
    }

    /// Remove the assignment of `policy` to `target`; true if there was one.
    pub fn remove(&mut self, policy: &str, target: &Target) -> bool {
        let Some(list) = self.by_policy.get_mut(policy) else {
            return false;
        };
        let before = list.len();
        list.retain(|a| &a.target != target);
        let removed = list.len() != before;
        if list.is_empty() {
            self.by_policy.remove(policy);
        }
        removed
    }

    /// Every assignment.
    pub fn all(&self) -> impl Iterator<Item = &Assignment> {
        self.by_policy.values().flatten()
    }

    /// Policy names that have at least one assignment.
    pub fn policies(&self) -> BTreeSet<String> {
        self.by_policy.keys().cloned().collect()
    }

    /// The assignment of `policy` that decides for `gateway`, if any.
    pub fn winning(&self, policy: &str, gateway: &GatewayInfo) -> Option<&Assignment> {
        self.by_policy
            .get(policy)?
            .iter()
            .filter(|a| a.covers(gateway))
            .max_by(|a, b| {
                (a.target.specificity(), a.assigned_at, a.target.id()).cmp(&(
                    b.target.specificity(),
                    b.assigned_at,
                    b.target.id(),
                ))
            })
    }

    /// The version of `policy` that `gateway` should run, given the latest version of each
    /// policy (`latest(name)`); `None` when no assignment covers it or nothing was published.
    pub fn desired_version(
        &self,
        policy: &str,
        gateway: &GatewayInfo,
        latest: impl Fn(&str) -> Option<u64>,
    ) -> Option<u64> {
        let winner = self.winning(policy, gateway)?;
        winner.version.or_else(|| latest(policy))
    }

    /// Every policy's desired version for `gateway`.
    pub fn desired_versions(
        &self,
        gateway: &GatewayInfo,
        latest: impl Fn(&str) -> Option<u64>,
    ) -> BTreeMap<String, u64> {
        self.by_policy
            .keys()
            .filter_map(|p| Some((p.clone(), self.desired_version(p, gateway, &latest)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(policy: &str, target: Target, version: Option<u64>, at: i64) -> Assignment {
        Assignment {
            policy: policy.into(),
            tenant: "acme".into(),
            target,
            version,
            assigned_at: at,
            author: "ops".into(),
        }
    }

    fn latest(_: &str) -> Option<u64> {
        Some(9)
    }

    #[test]
    fn the_most_specific_assignment_wins() {
        let gw = GatewayInfo::new("gw-1", "acme").with_group("eu");
        let other = GatewayInfo::new("gw-2", "acme");
        let mut table = AssignmentTable::new([
            assign("fw", Target::Tenant("acme".into()), None, 1),
            assign("fw", Target::Group("eu".into()), Some(3), 2),
        ]);
        assert_eq!(table.desired_version("fw", &gw, latest), Some(3));
        assert_eq!(table.desired_version("fw", &other, latest), Some(9));
        table.put(assign("fw", Target::Gateway("gw-1".into()), Some(2), 0));
        assert_eq!(table.desired_version("fw", &gw, latest), Some(2));
        assert!(table.remove("fw", &Target::Gateway("gw-1".into())));
        assert_eq!(table.desired_version("fw", &gw, latest), Some(3));
    }

    #[test]
    fn between_groups_the_newest_assignment_wins() {
        let gw = GatewayInfo::new("gw-1", "acme")
            .with_group("eu")
            .with_group("lab");
        let table = AssignmentTable::new([
            assign("fw", Target::Group("lab".into()), Some(5), 20),
            assign("fw", Target::Group("eu".into()), Some(4), 10),
        ]);
        assert_eq!(table.desired_version("fw", &gw, latest), Some(5));
    }

    #[test]
    fn other_tenants_and_unassigned_policies_get_nothing() {
        let gw = GatewayInfo::new("gw-1", "globex");
        let table = AssignmentTable::new([assign("fw", Target::Tenant("acme".into()), None, 1)]);
        assert_eq!(table.desired_version("fw", &gw, latest), None);
        assert_eq!(table.desired_version("dns", &gw, latest), None);
        assert!(table.desired_versions(&gw, latest).is_empty());
        // Following the latest version of a policy never published gives nothing either.
        let acme = GatewayInfo::new("gw-2", "acme");
        assert_eq!(table.desired_version("fw", &acme, |_| None), None);
    }

    #[test]
    fn group_and_gateway_targets_never_cross_tenants() {
        // acme names a gateway id and a group name that globex's gateway has.
        let globex = GatewayInfo::new("gw-x", "globex").with_group("eu");
        let table = AssignmentTable::new([
            assign("fw", Target::Gateway("gw-x".into()), Some(1), 1),
            assign("dns", Target::Group("eu".into()), Some(2), 1),
        ]);
        assert_eq!(table.desired_version("fw", &globex, latest), None);
        assert_eq!(table.desired_version("dns", &globex, latest), None);
        assert!(table.desired_versions(&globex, latest).is_empty());
        // The same gateway in acme receives both.
        let acme = GatewayInfo::new("gw-x", "acme").with_group("eu");
        assert_eq!(table.desired_version("fw", &acme, latest), Some(1));
        assert_eq!(table.desired_version("dns", &acme, latest), Some(2));
        // And globex's own assignment of the same target reaches its gateway.
        let mut table = table;
        table.put(Assignment {
            tenant: "globex".into(),
            ..assign("web", Target::Gateway("gw-x".into()), Some(4), 2)
        });
        assert_eq!(table.desired_version("web", &globex, latest), Some(4));
        assert_eq!(table.desired_version("web", &acme, latest), None);
    }

    #[test]
    fn put_replaces_the_assignment_of_the_same_target() {
        let mut table = AssignmentTable::default();
        table.put(assign("fw", Target::Tenant("acme".into()), Some(1), 1));
        table.put(assign("fw", Target::Tenant("acme".into()), Some(2), 2));
        assert_eq!(table.all().count(), 1);
        assert_eq!(
            table.desired_version("fw", &GatewayInfo::new("g", "acme"), latest),
            Some(2)
        );
    }

    #[test]
    fn targets_round_trip_through_their_parts_and_json() {
        for t in [
            Target::Tenant("a".into()),
            Target::Group("b".into()),
            Target::Gateway("c".into()),
        ] {
            assert_eq!(Target::from_parts(t.kind(), t.id()), Some(t.clone()));
            let json = serde_json::to_value(&t).unwrap();
            assert_eq!(json["kind"], t.kind());
            assert_eq!(serde_json::from_value::<Target>(json).unwrap(), t);
        }
        assert_eq!(Target::from_parts("planet", "x"), None);
    }
}

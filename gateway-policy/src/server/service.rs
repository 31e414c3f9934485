//! [`PolicyServer`]: the store, assignments, rollout tracker and update planner wired together —
//! the server side of policy distribution as one sans-IO object.

use std::collections::{BTreeMap, HashMap};

use gateway_proto::{
    AppliedPolicy, ErrorCode, Limits, PolicyContent, PolicyState, PolicyStatus, PolicyUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Assignment, AssignmentTable, GatewayInfo, PolicyStore, PublishOutcome, RolloutId,
    RolloutSummary, RolloutTracker, StagedRollout, StatusEffect, Target, TargetStatus,
    UpdatePlanner,
};
use crate::{Error, PolicySigner, Result, validate_name};

/// Configuration of a [`PolicyServer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyServerConfig {
    /// Ed25519 secret key (64 hex digits) to sign every update with. Default: none (unsigned).
    pub signing_key: Option<String>,
    /// Staging for rollouts whose call does not give one. Default: everything at once.
    pub default_staging: StagedRollout,
    /// The largest `policy_update` frame the server sends, in bytes: the whole encoded frame
    /// (name, version, checksum, signature and the document or patch), in the larger of the JSON
    /// and protobuf encodings. Gateways refuse a frame over their
    /// [`Limits::max_frame_bytes`](gateway_proto::Limits::max_frame_bytes) and drop the session,
    /// so keep this at most the gateways' limit. A publish or rollback whose full-document frame
    /// would exceed it is refused with [`Error::PolicyTooLarge`] (`413 payload_too_large`), and
    /// no frame over it is ever sent (a target that cannot be sent is recorded `rejected` with
    /// code `payload_too_large`). Default: `Limits::default().max_frame_bytes` (1 MiB); since
    /// the whole frame is measured, the frame's other fields need no extra margin. At least 1024.
    pub max_update_frame_bytes: usize,
}

impl Default for PolicyServerConfig {
    fn default() -> Self {
        PolicyServerConfig {
            signing_key: None,
            default_staging: StagedRollout::default(),
            max_update_frame_bytes: Limits::default().max_frame_bytes,
        }
    }
}

impl PolicyServerConfig {
    /// The smallest accepted [`max_update_frame_bytes`](Self::max_update_frame_bytes).
    pub const MIN_UPDATE_FRAME_BYTES: usize = 1024;

    /// Check the configuration; the error names the bad parameter.
    pub fn validate(&self) -> Result<()> {
        self.signer().map(|_| ())?;
        if self.max_update_frame_bytes < Self::MIN_UPDATE_FRAME_BYTES {
            return Err(Error::invalid(
                "max_update_frame_bytes",
                format!(
                    "must be at least {} bytes, got {}",
                    Self::MIN_UPDATE_FRAME_BYTES,
                    self.max_update_frame_bytes
                ),
            ));
        }
        self.default_staging.validate()
    }

    fn signer(&self) -> Result<Option<PolicySigner>> {
        self.signing_key
            .as_deref()
            .map(PolicySigner::from_hex)
            .transpose()
            .map_err(|e| Error::invalid("signing_key", e.to_string()))
    }
}

/// An update to send to one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The gateway to send it to.
    pub gateway_id: String,
    /// The `policy_update` frame's content.
    pub update: PolicyUpdate,
}

/// What a change (publish, rollback, assignment) did.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeResult {
    /// For publish and rollback: created or unchanged.
    pub outcome: Option<PublishOutcome>,
    /// The rollouts started (one per target version; none when no gateway is affected).
    pub rollouts: Vec<RolloutId>,
    /// Updates to send now to connected gateways.
    pub updates: Vec<Outgoing>,
}

/// The server side of policy distribution.
///
/// Inputs: [`connect`](Self::connect) (a gateway's `hello`), [`disconnect`](Self::disconnect),
/// [`handle_status`](Self::handle_status) (a `policy_status` frame), the operator's changes
/// ([`publish`](Self::publish), [`rollback`](Self::rollback), [`assign`](Self::assign),
/// [`unassign`](Self::unassign), [`register_gateway`](Self::register_gateway)) and
/// [`poll`](Self::poll) at [`poll_timeout`](Self::poll_timeout) for staged rollouts. Each returns
/// the `policy_update` frames to send now. Time is passed in (`now_ms`, ms since the epoch);
/// nothing here reads a clock or does network I/O. Wrap it in a mutex or an actor task to share it.
///
/// # Tenancy
/// Every gateway belongs to one tenant (the tenant it connects with, or that
/// [`register_gateway`](Self::register_gateway) gives it) and every [`Assignment`] to one tenant;
/// a gateway only ever receives assignments of its own tenant ([`Assignment::covers`]), whatever
/// group or gateway id their target names. When a gateway connects (or is registered) with a
/// tenant other than the one recorded for it, nothing of the old tenant follows it: its groups
/// are dropped, every assignment naming it ([`Target::Gateway`]) is removed, and it leaves every
/// rollout; only then do the new tenant's assignments apply.
///
/// # Frame size
/// No `policy_update` frame larger than [`PolicyServerConfig::max_update_frame_bytes`] is ever
/// returned: [`publish`](Self::publish) and [`rollback`](Self::rollback) refuse a document whose
/// full-document frame would be larger ([`Error::PolicyTooLarge`]), and a target whose update
/// still does not fit (a version published under a larger limit) is recorded `rejected` with code
/// `payload_too_large` instead of being sent.
///
/// # What survives a restart
/// Versions, assignments, gateway membership and rollouts (targets, which were released, abort
/// state) live in the store, so a staged rollout keeps its pace and an aborted one stays aborted.
/// Per-target answers are not written (that would cost a write per status): after a restart every
/// target is `pending` until the gateway's `hello` settles it, and a released target whose gateway
/// still runs an older version is sent its update once more (at-least-once delivery; a gateway
/// that rejected it rejects it again and the tracker records that). The per-minute window of a
/// staged rollout starts afresh.
pub struct PolicyServer<S> {
    store: S,
    planner: UpdatePlanner,
    assignments: AssignmentTable,
    gateways: HashMap<String, GatewayInfo>,
    latest: HashMap<String, u64>,
    /// Connected gateways and what they run (from `hello`, then from statuses).
    connected: HashMap<String, HashMap<String, AppliedPolicy>>,
    tracker: RolloutTracker,
    default_staging: StagedRollout,
}

impl<S: PolicyStore> PolicyServer<S> {
    /// A server on `store`, loading assignments, gateways and latest versions from it. Every
    /// known gateway starts with its desired versions `pending` until it connects.
    pub fn new(store: S, config: PolicyServerConfig) -> Result<Self> {
        config.validate()?;
        let signer = config.signer()?;
        let mut server = PolicyServer {
            planner: UpdatePlanner::new(signer).with_max_frame_bytes(config.max_update_frame_bytes),
            assignments: AssignmentTable::new(store.assignments()?),
            gateways: store
                .gateways()?
                .into_iter()
                .map(|g| (g.id.clone(), g))
                .collect(),
            latest: store.latest_versions()?.into_iter().collect(),
            connected: HashMap::new(),
            tracker: RolloutTracker::new(),
            default_staging: config.default_staging,
            store,
        };
        let mut restored = 0;
        for record in server.store.rollouts()? {
            server.tracker.restore_rollout(record);
            restored += 1;
        }
        let stray: Vec<String> = server
            .tracker
            .targets()
            .filter(|t| !server.gateways.contains_key(&t.gateway_id))
            .map(|t| t.gateway_id.clone())
            .collect();
        for id in stray {
            server.tracker.remove_gateway(&id);
        }
        let ids: Vec<String> = server.gateways.keys().cloned().collect();
        for id in ids {
            server.refresh_gateway(&id);
        }
        tracing::info!(
            gateways = server.gateways.len(),
            rollouts = restored,
            "policy server loaded its state"
        );
        Ok(server)
    }

    /// The store underneath (history, fetch, diff).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The rollout tracker (per-target status, summaries).
    pub fn tracker(&self) -> &RolloutTracker {
        &self.tracker
    }

    /// The assignments in force.
    pub fn assignments(&self) -> &AssignmentTable {
        &self.assignments
    }

    /// A known gateway's membership (tenant, groups).
    pub fn gateway(&self, gateway_id: &str) -> Option<&GatewayInfo> {
        self.gateways.get(gateway_id)
    }

    /// Every known gateway, in no particular order.
    pub fn gateways(&self) -> impl Iterator<Item = &GatewayInfo> {
        self.gateways.values()
    }

    /// The latest version of `name`, if it was ever published.
    pub fn latest_version(&self, name: &str) -> Option<u64> {
        self.latest.get(name).copied()
    }

    /// The desired version of every policy for `gateway_id`.
    pub fn desired_versions(&self, gateway_id: &str) -> BTreeMap<String, u64> {
        self.gateways
            .get(gateway_id)
            .map(|g| {
                self.assignments
                    .desired_versions(g, |p| self.latest.get(p).copied())
            })
            .unwrap_or_default()
    }

    /// Every target of a gateway.
    pub fn gateway_status(&self, gateway_id: &str) -> Vec<TargetStatus> {
        self.tracker.gateway(gateway_id).cloned().collect()
    }

    /// Counts by state for one rollout.
    pub fn rollout_summary(&self, rollout: RolloutId) -> Result<RolloutSummary> {
        self.tracker
            .summary(rollout)
            .ok_or(Error::UnknownRollout(rollout))
    }

    /// Stop a rollout by hand: nothing more is released.
    pub fn abort_rollout(&mut self, rollout: RolloutId, reason: &str) -> Result<()> {
        self.tracker.abort(rollout, reason)?;
        let reason = self
            .tracker
            .summary(rollout)
            .and_then(|s| s.abort_reason)
            .unwrap_or_else(|| reason.to_owned());
        self.store.set_rollout_aborted(rollout, &reason)
    }

    /// Forget finished rollouts started before `before_ms` (see [`RolloutTracker::prune`]).
    pub fn prune_rollouts(&mut self, before_ms: i64) -> Result<usize> {
        let pruned = self.tracker.prune(before_ms);
        self.store.delete_rollouts(&pruned)?;
        Ok(pruned.len())
    }

    /// Add or update a gateway's membership. Its desired versions change at once (outside any
    /// rollout); returns the updates to send if it is connected. A tenant other than the one
    /// recorded moves the gateway: everything of its old tenant is dropped first (see
    /// "Tenancy" above).
    pub fn register_gateway(&mut self, gateway: GatewayInfo, now_ms: i64) -> Result<Vec<Outgoing>> {
        if let Some(known) = self.gateways.get(&gateway.id)
            && known.tenant != gateway.tenant
        {
            let old = known.tenant.clone();
            self.leave_tenant(&gateway.id, &old, &gateway.tenant)?;
        }
        if self.gateways.get(&gateway.id) != Some(&gateway) {
            self.store.put_gateway(&gateway)?;
            self.gateways.insert(gateway.id.clone(), gateway.clone());
        }
        self.refresh_gateway(&gateway.id);
        self.send_due(&gateway.id, now_ms)
    }

    /// Forget a gateway and its targets.
    pub fn remove_gateway(&mut self, gateway_id: &str) -> Result<bool> {
        let known = self.store.remove_gateway(gateway_id)?;
        self.gateways.remove(gateway_id);
        self.connected.remove(gateway_id);
        self.tracker.remove_gateway(gateway_id);
        Ok(known)
    }

    /// A gateway connected and said, in its `hello`, which policies it runs; `tenant` is the
    /// tenant of its credentials. A gateway not known yet is registered in `tenant` with no
    /// groups. A gateway recorded in another tenant moves to `tenant` with no groups, and nothing
    /// of its old tenant follows it (see "Tenancy" above). Returns the updates to send it now.
    pub fn connect(
        &mut self,
        gateway_id: &str,
        tenant: &str,
        applied: &[AppliedPolicy],
        now_ms: i64,
    ) -> Result<Vec<PolicyUpdate>> {
        let info = match self.gateways.get(gateway_id) {
            Some(known) if known.tenant == tenant => None,
            Some(known) => {
                let old = known.tenant.clone();
                self.leave_tenant(gateway_id, &old, tenant)?;
                Some(GatewayInfo::new(gateway_id, tenant))
            }
            None => Some(GatewayInfo::new(gateway_id, tenant)),
        };
        if let Some(info) = info {
            self.store.put_gateway(&info)?;
            self.gateways.insert(info.id.clone(), info);
        }
        self.refresh_gateway(gateway_id);
        let running: HashMap<String, AppliedPolicy> = applied
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let targets: Vec<(String, u64)> = self
            .tracker
            .gateway(gateway_id)
            .map(|t| (t.policy.clone(), t.desired_version))
            .collect();
        for (policy, desired) in targets {
            let reported = running.get(&policy);
            let in_sync = match reported {
                Some(r) if r.version == desired => self
                    .planner
                    .policy(&self.store, &policy, desired)?
                    .is_some_and(|p| p.checksum == r.checksum),
                _ => false,
            };
            self.tracker.handle_report(
                gateway_id,
                &policy,
                reported.map(|r| r.version),
                in_sync,
                now_ms,
            );
        }
        self.connected.insert(gateway_id.to_owned(), running);
        tracing::debug!(gateway = %gateway_id, policies = applied.len(), "gateway connected");
        Ok(self
            .send_due(gateway_id, now_ms)?
            .into_iter()
            .map(|o| o.update)
            .collect())
    }

    /// A gateway moves from tenant `old` to `new`: drop every assignment naming it and every
    /// target and rollout membership it has, so nothing of `old` follows it. Its groups go with
    /// the new membership the caller records.
    fn leave_tenant(&mut self, gateway_id: &str, old: &str, new: &str) -> Result<()> {
        let naming = Target::Gateway(gateway_id.to_owned());
        let policies: Vec<String> = self
            .assignments
            .all()
            .filter(|a| a.target == naming)
            .map(|a| a.policy.clone())
            .collect();
        for policy in &policies {
            self.store.remove_assignment(policy, &naming)?;
            self.assignments.remove(policy, &naming);
        }
        self.store.remove_gateway_from_rollouts(gateway_id)?;
        self.tracker.remove_gateway(gateway_id);
        tracing::warn!(
            gateway = %gateway_id, old_tenant = %old, new_tenant = %new,
            assignments_removed = policies.len(),
            "gateway changed tenant: its groups, assignments and rollout targets were dropped"
        );
        Ok(())
    }

    /// The gateway's connection closed.
    pub fn disconnect(&mut self, gateway_id: &str) {
        self.connected.remove(gateway_id);
    }

    /// True while the gateway is connected.
    pub fn is_connected(&self, gateway_id: &str) -> bool {
        self.connected.contains_key(gateway_id)
    }

    /// A gateway's `policy_status`. Returns updates to send: the full document to this gateway
    /// when it refused a patch, and any releases the answer made room for in a staged rollout.
    pub fn handle_status(
        &mut self,
        gateway_id: &str,
        status: &PolicyStatus,
        now_ms: i64,
    ) -> Result<Vec<Outgoing>> {
        if status.state == PolicyState::Applied
            && let Some(policy) = self
                .planner
                .policy(&self.store, &status.name, status.version)?
            && let Some(running) = self.connected.get_mut(gateway_id)
        {
            running.insert(
                status.name.clone(),
                AppliedPolicy {
                    name: status.name.clone(),
                    version: status.version,
                    checksum: policy.checksum.clone(),
                },
            );
        }
        let rollout = self
            .tracker
            .status(gateway_id, &status.name)
            .and_then(|t| t.rollout);
        let was_aborted = rollout
            .and_then(|r| self.tracker.summary(r))
            .is_some_and(|s| s.abort_reason.is_some());
        let effect = self.tracker.handle_status(gateway_id, status, now_ms);
        if let Some(summary) = rollout.and_then(|r| self.tracker.summary(r))
            && !was_aborted
            && let Some(reason) = &summary.abort_reason
        {
            self.store.set_rollout_aborted(summary.id, reason)?;
        }
        metrics::counter!(
            "gateway_policy_statuses_total",
            "state" => match status.state { PolicyState::Applied => "applied", PolicyState::Rejected => "rejected" }
        )
        .increment(1);
        let mut out = Vec::new();
        if effect == StatusEffect::ResendFull && self.is_connected(gateway_id) {
            tracing::info!(gateway = %gateway_id, policy = %status.name, "patch refused; sending the full document");
            if let Some(update) = self.build_and_mark(gateway_id, &status.name, now_ms)? {
                out.push(Outgoing {
                    gateway_id: gateway_id.to_owned(),
                    update,
                });
            }
        }
        out.extend(self.release(now_ms)?);
        Ok(out)
    }

    /// Publish a new version of `name` and roll it out to every gateway that follows its latest
    /// version. Publishing the current document again creates nothing
    /// ([`PublishOutcome::Unchanged`]) and starts no rollout. A document whose full-document
    /// frame would exceed [`PolicyServerConfig::max_update_frame_bytes`] is refused with
    /// [`Error::PolicyTooLarge`] before anything is stored.
    pub fn publish(
        &mut self,
        name: &str,
        document: Value,
        author: &str,
        message: &str,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<ChangeResult> {
        validate_name(name)?;
        if let Some(s) = &staging {
            s.validate()?;
        }
        self.planner.check_document(name, &document)?;
        let outcome = self
            .store
            .publish(name, document, author, message, now_ms)?;
        self.after_publish(outcome, staging, now_ms)
    }

    /// Publish the document of an old version as a new version (versions never move back) and
    /// roll it out like [`publish`](Self::publish), with the same frame size check.
    pub fn rollback(
        &mut self,
        name: &str,
        to_version: u64,
        author: &str,
        message: &str,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<ChangeResult> {
        if let Some(s) = &staging {
            s.validate()?;
        }
        let old = self.store.get(name, to_version)?;
        self.planner.check_document(name, &old.document)?;
        let outcome = self
            .store
            .rollback(name, to_version, author, message, now_ms)?;
        self.after_publish(outcome, staging, now_ms)
    }

    fn after_publish(
        &mut self,
        outcome: PublishOutcome,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<ChangeResult> {
        let PublishOutcome::Created(policy) = &outcome else {
            return Ok(ChangeResult {
                outcome: Some(outcome),
                rollouts: Vec::new(),
                updates: Vec::new(),
            });
        };
        self.latest.insert(policy.name.clone(), policy.version);
        let name = policy.name.clone();
        let (rollouts, updates) = self.reconcile_policy(&name, staging, now_ms)?;
        Ok(ChangeResult {
            outcome: Some(outcome),
            rollouts,
            updates,
        })
    }

    /// Assign a policy to a tenant, group or gateway (replacing the assignment of the same
    /// target) and roll out the resulting desired versions. A pinned version must exist. The
    /// assignment reaches only gateways of its [`tenant`](Assignment::tenant); a
    /// [`Target::Tenant`] must name that tenant.
    ///
    /// Pinning a version older than one a gateway already runs makes that gateway answer
    /// `stale_version` (gateways only move forward); use [`rollback`](Self::rollback) to go back.
    pub fn assign(
        &mut self,
        assignment: Assignment,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<ChangeResult> {
        validate_name(&assignment.policy)?;
        if let Some(s) = &staging {
            s.validate()?;
        }
        if let Target::Tenant(t) = &assignment.target
            && *t != assignment.tenant
        {
            return Err(Error::invalid(
                "tenant",
                format!(
                    "an assignment of tenant {:?} cannot target tenant {t:?}",
                    assignment.tenant
                ),
            ));
        }
        match assignment.version {
            Some(v) => {
                self.store.get(&assignment.policy, v)?;
            }
            None if !self.latest.contains_key(&assignment.policy) => {
                return Err(Error::UnknownPolicy {
                    name: assignment.policy.clone(),
                });
            }
            None => {}
        }
        self.store.put_assignment(&assignment)?;
        let policy = assignment.policy.clone();
        self.assignments.put(assignment);
        let (rollouts, updates) = self.reconcile_policy(&policy, staging, now_ms)?;
        Ok(ChangeResult {
            outcome: None,
            rollouts,
            updates,
        })
    }

    /// Remove an assignment. Gateways it covered fall back to a less specific assignment, or
    /// stop being tracked for that policy (they keep running what they have: the protocol has
    /// no "remove policy" frame).
    pub fn unassign(
        &mut self,
        policy: &str,
        target: &Target,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<ChangeResult> {
        let removed = self.store.remove_assignment(policy, target)?;
        self.assignments.remove(policy, target);
        if !removed {
            return Ok(ChangeResult {
                outcome: None,
                rollouts: Vec::new(),
                updates: Vec::new(),
            });
        }
        let (rollouts, updates) = self.reconcile_policy(policy, staging, now_ms)?;
        Ok(ChangeResult {
            outcome: None,
            rollouts,
            updates,
        })
    }

    /// Release what staged rollouts allow now and build the updates. Call at
    /// [`poll_timeout`](Self::poll_timeout).
    pub fn poll(&mut self, now_ms: i64) -> Result<Vec<Outgoing>> {
        self.release(now_ms)
    }

    /// When [`poll`](Self::poll) may have something to release.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.tracker.poll_timeout()
    }

    /// Recompute one policy's desired version on every gateway; start one rollout per new
    /// version and release what the staging allows.
    fn reconcile_policy(
        &mut self,
        policy: &str,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<(Vec<RolloutId>, Vec<Outgoing>)> {
        let mut moves: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut dropped = Vec::new();
        for gateway in self.gateways.values() {
            let desired = self
                .assignments
                .desired_version(policy, gateway, |p| self.latest.get(p).copied());
            let current = self
                .tracker
                .status(&gateway.id, policy)
                .map(|t| t.desired_version);
            match desired {
                Some(v) if Some(v) != current => {
                    moves.entry(v).or_default().push(gateway.id.clone())
                }
                Some(_) => {}
                None if current.is_some() => dropped.push(gateway.id.clone()),
                None => {}
            }
        }
        for gateway in dropped {
            self.tracker.clear_desired(&gateway, policy);
        }
        let staging = staging.unwrap_or_else(|| self.default_staging.clone());
        let mut rollouts = Vec::new();
        for (version, mut gateways) in moves {
            gateways.sort();
            let id =
                self.tracker
                    .start_rollout(policy, version, gateways, staging.clone(), now_ms)?;
            if let Some(record) = self.tracker.rollout_record(id) {
                self.store.insert_rollout(&record)?;
            }
            rollouts.push(id);
        }
        let updates = self.release(now_ms)?;
        Ok((rollouts, updates))
    }

    /// Point one gateway's targets at its current desired versions (outside any rollout).
    fn refresh_gateway(&mut self, gateway_id: &str) {
        let Some(gateway) = self.gateways.get(gateway_id) else {
            return;
        };
        let desired = self
            .assignments
            .desired_versions(gateway, |p| self.latest.get(p).copied());
        let stale: Vec<String> = self
            .tracker
            .gateway(gateway_id)
            .filter(|t| !desired.contains_key(&t.policy))
            .map(|t| t.policy.clone())
            .collect();
        for policy in stale {
            self.tracker.clear_desired(gateway_id, &policy);
        }
        for (policy, version) in desired {
            self.tracker.set_desired(gateway_id, &policy, version);
        }
    }

    fn release(&mut self, now_ms: i64) -> Result<Vec<Outgoing>> {
        let connected = &self.connected;
        let released = self.tracker.release(now_ms, |g| connected.contains_key(g));
        let mut by_rollout: BTreeMap<RolloutId, Vec<&str>> = BTreeMap::new();
        for (gateway, policy) in &released {
            if let Some(r) = self.tracker.status(gateway, policy).and_then(|t| t.rollout) {
                by_rollout.entry(r).or_default().push(gateway);
            }
        }
        for (rollout, gateways) in by_rollout {
            self.store.mark_released(rollout, &gateways)?;
        }
        let mut out = Vec::with_capacity(released.len());
        for (gateway_id, policy) in released {
            if let Some(update) = self.build_and_mark(&gateway_id, &policy, now_ms)? {
                out.push(Outgoing { gateway_id, update });
            }
        }
        Ok(out)
    }

    fn send_due(&mut self, gateway_id: &str, now_ms: i64) -> Result<Vec<Outgoing>> {
        if !self.is_connected(gateway_id) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (policy, released_from) in self.tracker.due_for_releasing(gateway_id, now_ms) {
            if let Some(rollout) = released_from {
                self.store.mark_released(rollout, &[gateway_id])?;
            }
            if let Some(update) = self.build_and_mark(gateway_id, &policy, now_ms)? {
                out.push(Outgoing {
                    gateway_id: gateway_id.to_owned(),
                    update,
                });
            }
        }
        Ok(out)
    }

    fn build_and_mark(
        &mut self,
        gateway_id: &str,
        policy: &str,
        now_ms: i64,
    ) -> Result<Option<PolicyUpdate>> {
        let Some(target) = self.tracker.status(gateway_id, policy) else {
            return Ok(None);
        };
        let (version, force_full) = (target.desired_version, target.needs_full);
        let running = self.connected.get(gateway_id).and_then(|m| m.get(policy));
        let update = match self.planner.update_for(
            &self.store,
            policy,
            version,
            running,
            force_full,
        ) {
            Ok(update) => update,
            Err(e @ Error::PolicyTooLarge { .. }) => {
                // Sending it would only make the gateway drop the session and reconnect.
                tracing::warn!(gateway = %gateway_id, %policy, version, error = %e, "update not sent");
                self.tracker.reject(
                    gateway_id,
                    policy,
                    ErrorCode::PayloadTooLarge,
                    e.to_string(),
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let patch = matches!(update.content, PolicyContent::Patch { .. });
        self.tracker
            .mark_delivered(gateway_id, policy, patch, now_ms);
        metrics::counter!("gateway_policy_updates_sent_total", "content" => if patch { "patch" } else { "full" })
            .increment(1);
        Ok(Some(update))
    }
}

impl<S> std::fmt::Debug for PolicyServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyServer")
            .field("gateways", &self.gateways.len())
            .field("connected", &self.connected.len())
            .field("signed", &self.planner.signer().is_some())
            .finish_non_exhaustive()
    }
}

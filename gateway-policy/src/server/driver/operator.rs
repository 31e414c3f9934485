//! The operator's actions and reads, scoped by tenant (see [`PolicyService`]'s "Tenancy") and
//! audited. The HTTP API ([`PolicyService::operator_router`]) is a thin layer over these methods.

use gateway_proto::auth::Principal;
use serde_json::{Value, json};

use super::views::{
    self, AssignResult, AssignTarget, AssignmentView, GatewayPolicies, GatewayView, PolicyDiff,
    PolicyHead, PolicyRollout, PublishResult, RolloutView, UnassignResult, VersionOutcome,
};
use super::{AuditEvent, Core, PolicyEvent, PolicyService};
use crate::server::{
    Assignment, ChangeResult, GatewayInfo, PolicyStore, PublishOutcome, RolloutId, RolloutState,
    StagedRollout,
};
use crate::{Error, Policy, PolicyVersionInfo, Result, validate_name};

impl<S: PolicyStore> Core<S> {
    /// Reads of a name another tenant owns answer `not_found`, as if it did not exist.
    fn check_readable(&self, policy: &str, tenant: &str) -> Result<()> {
        match self.owner(policy) {
            Some(owner) if owner != tenant => Err(Error::UnknownPolicy {
                name: policy.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Changes to a name another tenant owns answer `conflict`.
    fn check_writable(&self, policy: &str, tenant: &str) -> Result<()> {
        match self.owner(policy) {
            Some(owner) if owner != tenant => Err(Error::NameTaken {
                name: policy.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Make `tenant` the owner of an unowned name.
    fn claim(&mut self, policy: &str, tenant: &str) -> Result<()> {
        if self.owners.contains_key(policy) {
            return Ok(());
        }
        self.server.store().set_policy_owner(policy, tenant)?;
        self.owners.insert(policy.to_owned(), tenant.to_owned());
        tracing::info!(%policy, %tenant, "policy name claimed");
        Ok(())
    }

    fn publish_result(&self, change: &ChangeResult, tenant: &str) -> Result<PublishResult> {
        let Some(outcome) = &change.outcome else {
            return Err(Error::invalid(
                "outcome",
                "the policy server returned no outcome for a publish",
            ));
        };
        let policy = outcome.policy();
        Ok(PublishResult {
            name: policy.name.clone(),
            version: policy.version,
            checksum: policy.checksum.clone(),
            outcome: match outcome {
                PublishOutcome::Created(_) => VersionOutcome::Created,
                PublishOutcome::Unchanged(_) => VersionOutcome::Unchanged,
            },
            rollouts: views::rollout_views(&self.server, &change.rollouts, tenant),
        })
    }

    fn publish(
        &mut self,
        actor: &Principal,
        name: &str,
        document: Value,
        message: &str,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<PublishResult> {
        validate_name(name)?;
        self.check_writable(name, &actor.tenant)?;
        // Claimed before publishing so a first version can never go out unowned.
        self.claim(name, &actor.tenant)?;
        let mut change =
            self.server
                .publish(name, document, &actor.subject, message, staging, now_ms)?;
        self.send(std::mem::take(&mut change.updates));
        if let Some(PublishOutcome::Created(p)) = &change.outcome {
            self.emit(
                PolicyEvent::PUBLISHED,
                &actor.tenant,
                json!({
                    "policy": p.name, "version": p.version, "checksum": p.checksum,
                    "author": p.author, "message": p.message,
                }),
            );
        }
        self.sync_rollouts(None);
        self.publish_result(&change, &actor.tenant)
    }

    fn rollback(
        &mut self,
        actor: &Principal,
        name: &str,
        to_version: u64,
        message: &str,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<PublishResult> {
        self.check_writable(name, &actor.tenant)?;
        let mut change =
            self.server
                .rollback(name, to_version, &actor.subject, message, staging, now_ms)?;
        // Frames first: the targets are marked delivered already, so they must leave.
        self.send(std::mem::take(&mut change.updates));
        self.claim(name, &actor.tenant)?;
        if let Some(PublishOutcome::Created(p)) = &change.outcome {
            self.emit(
                PolicyEvent::ROLLED_BACK,
                &actor.tenant,
                json!({
                    "policy": p.name, "version": p.version, "to_version": to_version,
                    "checksum": p.checksum, "author": p.author, "message": p.message,
                }),
            );
        }
        self.sync_rollouts(None);
        self.publish_result(&change, &actor.tenant)
    }

    fn assign(
        &mut self,
        actor: &Principal,
        name: &str,
        target: &AssignTarget,
        version: Option<u64>,
        staging: Option<StagedRollout>,
        now_ms: i64,
    ) -> Result<AssignResult> {
        validate_name(name)?;
        self.check_writable(name, &actor.tenant)?;
        let stored = views::internal_target(&actor.tenant, target, |id| {
            self.may_name_gateway(id, &actor.tenant)
        })?;
        let created = !self
            .server
            .assignments()
            .all()
            .any(|a| a.policy == name && a.target == stored && a.tenant == actor.tenant);
        let assignment = Assignment {
            policy: name.to_owned(),
            tenant: actor.tenant.clone(),
            target: stored,
            version,
            assigned_at: now_ms,
            author: actor.subject.clone(),
        };
        let view = views::assignment_view(&assignment, target.clone());
        let change = self.server.assign(assignment, staging, now_ms)?;
        self.send(change.updates);
        self.claim(name, &actor.tenant)?;
        self.emit(
            PolicyEvent::ASSIGNED,
            &actor.tenant,
            json!({
                "policy": name, "target": target.to_json(), "version": version,
                "author": actor.subject,
            }),
        );
        self.sync_rollouts(None);
        Ok(AssignResult {
            assignment: view,
            created,
            rollouts: views::rollout_views(&self.server, &change.rollouts, &actor.tenant),
        })
    }

    fn unassign(
        &mut self,
        actor: &Principal,
        name: &str,
        target: &AssignTarget,
        now_ms: i64,
    ) -> Result<UnassignResult> {
        self.check_writable(name, &actor.tenant)?;
        // Any gateway id may be named here: only an assignment of the caller's tenant is removed.
        let stored = views::internal_target(&actor.tenant, target, |_| true)?;
        let Some(existing) = self
            .server
            .assignments()
            .all()
            .find(|a| a.policy == name && a.target == stored && a.tenant == actor.tenant)
            .cloned()
        else {
            return Err(Error::UnknownAssignment {
                policy: name.to_owned(),
                target: format!("{}:{}", target.kind(), target.id()),
            });
        };
        let change = self.server.unassign(name, &stored, None, now_ms)?;
        self.send(change.updates);
        self.claim(name, &actor.tenant)?;
        self.emit(
            PolicyEvent::UNASSIGNED,
            &actor.tenant,
            json!({"policy": name, "target": target.to_json(), "author": actor.subject}),
        );
        self.sync_rollouts(None);
        Ok(UnassignResult {
            removed: views::assignment_view(&existing, target.clone()),
            rollouts: views::rollout_views(&self.server, &change.rollouts, &actor.tenant),
        })
    }

    fn set_gateway_groups(
        &mut self,
        actor: &Principal,
        gateway_id: &str,
        groups: &[String],
        now_ms: i64,
    ) -> Result<GatewayView> {
        views::validate_gateway_id(gateway_id)?;
        for g in groups {
            views::validate_group(g)?;
        }
        self.require_gateway_of(gateway_id, &actor.tenant)?;
        // Groups set outside the service (without the tenant prefix) are kept, within the
        // tenant. A record of another tenant (only possible with a directory that provisions the
        // gateway in the caller's tenant) keeps nothing: the server drops what it had.
        let mut stored: Vec<String> = self
            .server
            .gateway(gateway_id)
            .filter(|g| g.tenant == actor.tenant)
            .map(|g| g.groups.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|g| views::local_group(&actor.tenant, g).is_none())
            .collect();
        stored.extend(groups.iter().map(|g| views::group_key(&actor.tenant, g)));
        stored.sort();
        stored.dedup();
        let info = GatewayInfo {
            id: gateway_id.to_owned(),
            tenant: actor.tenant.clone(),
            groups: stored,
        };
        let out = self.server.register_gateway(info, now_ms)?;
        self.send(out);
        self.sync_rollouts(None);
        views::gateway_view(&self.server, gateway_id).ok_or_else(|| Error::UnknownGateway {
            gateway_id: gateway_id.to_owned(),
        })
    }

    fn abort_rollout(
        &mut self,
        actor: &Principal,
        rollout: RolloutId,
        reason: Option<&str>,
    ) -> Result<RolloutView> {
        let summary = self.server.rollout_summary(rollout)?;
        if self
            .owner(&summary.policy)
            .is_some_and(|o| o != actor.tenant)
        {
            return Err(Error::UnknownRollout(rollout));
        }
        if summary.state == RolloutState::Completed {
            return Err(Error::RolloutFinished(rollout));
        }
        let reason = match reason {
            Some(r) if !r.trim().is_empty() => r.to_owned(),
            _ => format!("aborted by {}", actor.subject),
        };
        self.server.abort_rollout(rollout, &reason)?;
        self.claim(&summary.policy, &actor.tenant)?;
        self.sync_rollouts(Some(&[rollout]));
        views::rollout_views(&self.server, &[rollout], &actor.tenant)
            .pop()
            .ok_or(Error::UnknownRollout(rollout))
    }

    fn policies(&self, tenant: &str) -> Result<Vec<PolicyHead>> {
        let mut out = Vec::new();
        for (name, _) in self.server.store().latest_versions()? {
            if self.check_readable(&name, tenant).is_err() {
                continue;
            }
            let Some(p) = self.server.store().latest(&name)? else {
                continue;
            };
            out.push(PolicyHead {
                owner: self.owner(&name).map(str::to_owned),
                name: p.name,
                version: p.version,
                checksum: p.checksum,
                created_at: p.created_at,
                author: p.author,
                message: p.message,
            });
        }
        Ok(out)
    }

    fn policy(&self, tenant: &str, name: &str, version: Option<u64>) -> Result<Policy> {
        self.check_readable(name, tenant)?;
        match version {
            Some(v) => self.server.store().get(name, v),
            None => self
                .server
                .store()
                .latest(name)?
                .ok_or_else(|| Error::UnknownPolicy {
                    name: name.to_owned(),
                }),
        }
    }

    fn history(&self, tenant: &str, name: &str) -> Result<Vec<PolicyVersionInfo>> {
        self.check_readable(name, tenant)?;
        let history = self.server.store().history(name)?;
        if history.is_empty() {
            return Err(Error::UnknownPolicy {
                name: name.to_owned(),
            });
        }
        Ok(history)
    }

    fn diff(&self, tenant: &str, name: &str, from: u64, to: u64) -> Result<PolicyDiff> {
        self.check_readable(name, tenant)?;
        let patch = self.server.store().diff(name, from, to)?;
        Ok(PolicyDiff {
            name: name.to_owned(),
            from,
            to,
            patch,
        })
    }

    fn require_published(&self, tenant: &str, name: &str) -> Result<()> {
        self.check_readable(name, tenant)?;
        if self.server.latest_version(name).is_none() {
            return Err(Error::UnknownPolicy {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn assignments_of(&self, tenant: &str, name: &str) -> Result<Vec<AssignmentView>> {
        self.require_published(tenant, name)?;
        let mut out: Vec<AssignmentView> = self
            .server
            .assignments()
            .all()
            .filter(|a| a.policy == name)
            .filter_map(|a| {
                let target = views::visible_target(tenant, a)?;
                Some(views::assignment_view(a, target))
            })
            .collect();
        out.sort_by(|a, b| (a.target.kind(), a.target.id()).cmp(&(b.target.kind(), b.target.id())));
        Ok(out)
    }

    fn rollout_view(&self, tenant: &str, rollout: RolloutId) -> Result<RolloutView> {
        let summary = self.server.rollout_summary(rollout)?;
        if self.check_readable(&summary.policy, tenant).is_err() {
            return Err(Error::UnknownRollout(rollout));
        }
        views::rollout_views(&self.server, &[rollout], tenant)
            .pop()
            .ok_or(Error::UnknownRollout(rollout))
    }

    fn gateway_policies(&self, tenant: &str, gateway_id: &str) -> Result<GatewayPolicies> {
        let unknown = || Error::UnknownGateway {
            gateway_id: gateway_id.to_owned(),
        };
        // Recorded in the tenant, and (with a directory) still provisioned in it.
        if !views::gateway_in_tenant(&self.server, gateway_id, tenant)
            || !self.may_name_gateway(gateway_id, tenant)
        {
            return Err(unknown());
        }
        let gateway = views::gateway_view(&self.server, gateway_id).ok_or_else(unknown)?;
        let policies = self
            .server
            .tracker()
            .gateway(gateway_id)
            .map(|t| views::target_view(&self.server, t))
            .collect();
        Ok(GatewayPolicies { gateway, policies })
    }
}

/// `{rollout ids}` of a result, for audit details.
fn ids(rollouts: &[RolloutView]) -> Vec<RolloutId> {
    rollouts.iter().map(|r| r.id).collect()
}

impl<S: PolicyStore + 'static> PolicyService<S> {
    /// Publish a new version of `name` as `actor` (the author is its subject) and roll it out to
    /// the gateways that follow the latest version. The same document again creates nothing
    /// ([`VersionOutcome::Unchanged`]). Audited as `policy.publish`.
    pub async fn publish(
        &self,
        actor: &Principal,
        name: &str,
        document: Value,
        message: &str,
        staging: Option<StagedRollout>,
    ) -> Result<PublishResult> {
        let (actor, name, message) = (actor.clone(), name.to_owned(), message.to_owned());
        self.call(move |core, now| {
            let result = core.publish(&actor, &name, document, &message, staging, now);
            core.audit(AuditEvent::new(
                &actor,
                "policy.publish",
                json!({"policy": name}),
                &result,
                |r| {
                    json!({"version": r.version, "checksum": r.checksum, "outcome": r.outcome,
                           "rollouts": ids(&r.rollouts)})
                },
            ));
            result
        })
        .await
    }

    /// Publish the document of `to_version` again as a new version and roll it out. Audited as
    /// `policy.rollback`.
    pub async fn rollback(
        &self,
        actor: &Principal,
        name: &str,
        to_version: u64,
        message: &str,
        staging: Option<StagedRollout>,
    ) -> Result<PublishResult> {
        let (actor, name, message) = (actor.clone(), name.to_owned(), message.to_owned());
        self.call(move |core, now| {
            let result = core.rollback(&actor, &name, to_version, &message, staging, now);
            core.audit(AuditEvent::new(
                &actor,
                "policy.rollback",
                json!({"policy": name}),
                &result,
                |r| {
                    json!({"to_version": to_version, "version": r.version, "checksum": r.checksum,
                           "outcome": r.outcome, "rollouts": ids(&r.rollouts)})
                },
            ));
            result
        })
        .await
    }

    /// Assign `name` to a target of `actor`'s tenant (replacing the assignment of the same
    /// target), pinned to `version` or following the latest, and roll out the result. Audited
    /// as `policy.assign`.
    pub async fn assign(
        &self,
        actor: &Principal,
        name: &str,
        target: AssignTarget,
        version: Option<u64>,
        staging: Option<StagedRollout>,
    ) -> Result<AssignResult> {
        let (actor, name) = (actor.clone(), name.to_owned());
        self.call(move |core, now| {
            let result = core.assign(&actor, &name, &target, version, staging, now);
            core.audit(AuditEvent::new(
                &actor,
                "policy.assign",
                json!({"policy": name, "assignment": target.to_json()}),
                &result,
                |r| json!({"version": version, "created": r.created, "rollouts": ids(&r.rollouts)}),
            ));
            result
        })
        .await
    }

    /// Remove the assignment of `name` to `target`. Gateways it covered fall back to a less
    /// specific assignment or stop being tracked (they keep what they run). Audited as
    /// `policy.unassign`.
    pub async fn unassign(
        &self,
        actor: &Principal,
        name: &str,
        target: AssignTarget,
    ) -> Result<UnassignResult> {
        let (actor, name) = (actor.clone(), name.to_owned());
        self.call(move |core, now| {
            let result = core.unassign(&actor, &name, &target, now);
            core.audit(AuditEvent::new(
                &actor,
                "policy.unassign",
                json!({"policy": name, "assignment": target.to_json()}),
                &result,
                |r| json!({"rollouts": ids(&r.rollouts)}),
            ));
            result
        })
        .await
    }

    /// Set the groups of a gateway of `actor`'s tenant (replacing the groups it had in that
    /// tenant). Its desired versions change at once. Audited as `gateway.set_groups`.
    ///
    /// The gateway must be of the tenant ([`Error::UnknownGateway`] otherwise): with a
    /// [`GatewayDirectory`](gateway_proto::auth::GatewayDirectory) that provisions it in the
    /// tenant, a gateway that never connected is registered, so policies can be assigned before
    /// it first connects; without a directory, only a gateway that connected in the tenant.
    pub async fn set_gateway_groups(
        &self,
        actor: &Principal,
        gateway_id: &str,
        groups: Vec<String>,
    ) -> Result<GatewayView> {
        let (actor, gateway_id) = (actor.clone(), gateway_id.to_owned());
        self.call(move |core, now| {
            let result = core.set_gateway_groups(&actor, &gateway_id, &groups, now);
            core.audit(AuditEvent::new(
                &actor,
                "gateway.set_groups",
                json!({"gateway": gateway_id}),
                &result,
                |r| json!({"groups": r.groups}),
            ));
            result
        })
        .await
    }

    /// Stop a rollout: nothing more is released (what was sent stays sent). Aborting an aborted
    /// rollout is a no-op; a completed one is [`Error::RolloutFinished`]. Audited as
    /// `rollout.abort`.
    pub async fn abort_rollout(
        &self,
        actor: &Principal,
        rollout: RolloutId,
        reason: Option<String>,
    ) -> Result<RolloutView> {
        let actor = actor.clone();
        self.call(move |core, _| {
            let result = core.abort_rollout(&actor, rollout, reason.as_deref());
            core.audit(AuditEvent::new(
                &actor,
                "rollout.abort",
                json!({"rollout": rollout}),
                &result,
                |r| json!({"policy": r.policy, "version": r.version, "reason": r.abort_reason}),
            ));
            result
        })
        .await
    }

    /// Every policy `tenant` can see, with its latest version (no documents), by name.
    pub async fn policies(&self, tenant: &str) -> Result<Vec<PolicyHead>> {
        let tenant = tenant.to_owned();
        self.call(move |core, _| core.policies(&tenant)).await
    }

    /// One version of a policy (`None`: the latest), with its document.
    pub async fn policy(&self, tenant: &str, name: &str, version: Option<u64>) -> Result<Policy> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.call(move |core, _| core.policy(&tenant, &name, version))
            .await
    }

    /// A policy's history, oldest first, without documents.
    pub async fn history(&self, tenant: &str, name: &str) -> Result<Vec<PolicyVersionInfo>> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.call(move |core, _| core.history(&tenant, &name)).await
    }

    /// The JSON Patch from version `from` to version `to`.
    pub async fn diff(&self, tenant: &str, name: &str, from: u64, to: u64) -> Result<PolicyDiff> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.call(move |core, _| core.diff(&tenant, &name, from, to))
            .await
    }

    /// The assignments of a policy inside `tenant`.
    pub async fn assignments(&self, tenant: &str, name: &str) -> Result<Vec<AssignmentView>> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.call(move |core, _| core.assignments_of(&tenant, &name))
            .await
    }

    /// A policy's rollout status over `tenant`'s gateways.
    pub async fn rollout_status(&self, tenant: &str, name: &str) -> Result<PolicyRollout> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.call(move |core, _| {
            core.require_published(&tenant, &name)?;
            Ok(views::policy_rollout(&core.server, &name, &tenant))
        })
        .await
    }

    /// One rollout, counted over `tenant`'s gateways.
    pub async fn rollout(&self, tenant: &str, rollout: RolloutId) -> Result<RolloutView> {
        let tenant = tenant.to_owned();
        self.call(move |core, _| core.rollout_view(&tenant, rollout))
            .await
    }

    /// A gateway of `tenant`: its groups and every policy's status on it.
    pub async fn gateway_policies(
        &self,
        tenant: &str,
        gateway_id: &str,
    ) -> Result<GatewayPolicies> {
        let (tenant, gateway_id) = (tenant.to_owned(), gateway_id.to_owned());
        self.call(move |core, _| core.gateway_policies(&tenant, &gateway_id))
            .await
    }
}

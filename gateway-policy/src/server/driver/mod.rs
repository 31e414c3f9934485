//! [`PolicyService`]: the tokio driver around [`PolicyServer`] — what a server binary runs.
//! The operator actions live in `operator`, the answers' types in `views`, the sinks in `hooks`.

mod hooks;
mod operator;
mod views;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use gateway_proto::auth::GatewayDirectory;
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{AppliedPolicy, PolicyStatus, PolicyUpdate};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub use hooks::{AuditEvent, EventSink, PolicyEvent, UpdateSink};
pub use views::{
    AssignResult, AssignTarget, AssignmentView, GatewayPolicies, GatewayView, PolicyDiff,
    PolicyHead, PolicyRollout, PublishResult, RolloutView, StateCounts, TargetView, UnassignResult,
    VersionOutcome,
};

use super::{Outgoing, PolicyServer, PolicyStore, RolloutId, RolloutState, SqlitePolicyStore};
use crate::{Error, Result};

/// Configuration of a [`PolicyService`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyServiceConfig {
    /// Forget rollouts that finished (completed or aborted) and started more than this long ago,
    /// in ms. Their targets stay tracked. Default: 7 days.
    pub rollout_retention_ms: i64,
    /// How often to look for rollouts to forget, in ms. Default: 1 hour.
    pub prune_interval_ms: i64,
}

impl Default for PolicyServiceConfig {
    fn default() -> Self {
        PolicyServiceConfig {
            rollout_retention_ms: 7 * 24 * 3_600_000,
            prune_interval_ms: 3_600_000,
        }
    }
}

impl PolicyServiceConfig {
    /// Check the configuration; the error names the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.rollout_retention_ms <= 0 {
            return Err(Error::invalid(
                "rollout_retention_ms",
                format!("must be positive, got {}", self.rollout_retention_ms),
            ));
        }
        if self.prune_interval_ms <= 0 {
            return Err(Error::invalid(
                "prune_interval_ms",
                format!("must be positive, got {}", self.prune_interval_ms),
            ));
        }
        Ok(())
    }
}

/// The server side of policy distribution as a running service: a cheap-to-clone handle.
///
/// # What it does
/// * Owns the [`PolicyServer`] behind a mutex; every call runs on tokio's blocking pool
///   (`spawn_blocking`), so SQLite never blocks an async worker thread. Calls are serialised,
///   and the frames a call produces reach the [`UpdateSink`] in order, under the lock.
/// * Runs staged rollouts on its own: a timer task sleeps until
///   [`PolicyServer::poll_timeout`] and releases what the staging allows; it also forgets
///   finished rollouts after [`PolicyServiceConfig::rollout_retention_ms`]. The timer stops when
///   the last handle is dropped.
/// * Adds tenancy for operators: policy names are one global namespace, and each name belongs
///   to the tenant that first changed it through the service; groups, assignments and gateways
///   are per tenant (see "Tenancy" below and the crate's `API.md`).
/// * Reports every rollout and status change and every operator action to an optional
///   [`EventSink`] ([`PolicyEvent`], [`AuditEvent`]).
///
/// # Inputs the host forwards
/// [`gateway_connected`](Self::gateway_connected) (a gateway's `hello`),
/// [`gateway_disconnected`](Self::gateway_disconnected) and
/// [`policy_status`](Self::policy_status) (a `policy_status` frame). Operators act through
/// [`operator_router`](Self::operator_router) or the same methods in Rust
/// ([`publish`](Self::publish), [`rollback`](Self::rollback), [`assign`](Self::assign),
/// [`unassign`](Self::unassign), [`set_gateway_groups`](Self::set_gateway_groups),
/// [`abort_rollout`](Self::abort_rollout) and the reads), which take the acting
/// [`Principal`](gateway_proto::auth::Principal).
///
/// # Tenancy
/// * Policy names are one global namespace. A name belongs to the tenant whose operator first
///   published, rolled back, assigned or aborted a rollout of it through the service (recorded
///   in the store, so it survives restarts). Another tenant gets [`Error::UnknownPolicy`]
///   (`not_found`) reading it and [`Error::NameTaken`] (`conflict`) changing it. Names
///   published directly through [`PolicyServer`] have no owner: every tenant can read them, and
///   the first to change one through the service claims it.
/// * Assignments belong to the caller's tenant and go to that tenant, to a group (groups are
///   per tenant: group `eu` of `acme` is stored as `acme/eu`), or to a gateway of the caller's
///   tenant. A gateway only ever receives assignments of its own tenant. Listings show only the
///   caller's tenant's assignments.
/// * A gateway belongs to the tenant of its credentials, given by
///   [`gateway_connected`](Self::gateway_connected). An operator may name a gateway (set its
///   groups, assign to it, read its policies) only when it is a gateway of the operator's
///   tenant; otherwise, whether it exists elsewhere or not at all, the answer is
///   [`Error::UnknownGateway`] (`404 not_found`):
///   * with a [`GatewayDirectory`] ([`PolicyServiceBuilder::directory`]), the directory says
///     which tenant a gateway id is provisioned in, so an operator can set the groups of (and
///     assign to) a gateway of the tenant before it first connects;
///   * without one, only gateways that connected in the operator's tenant can be named (setting
///     groups never registers an unknown gateway).
///
///   Reads (`GET /v1/gateways/{id}/policies`) also need the gateway to be recorded in the
///   caller's tenant.
/// * A gateway that connects with a tenant other than the one recorded for it (re-provisioned,
///   or named by another tenant's operator before the directory existed) keeps nothing of the
///   old tenant: its groups, the assignments naming it and its rollout targets are dropped
///   ([`PolicyServer`]'s "Tenancy").
/// * Rollout views count only the caller's tenant's gateways, and every event goes to the
///   tenant whose data it carries (see [`EventSink`]).
/// * Roles are the router's business: the methods trust the principal they are given.
pub struct PolicyService<S: PolicyStore + 'static = SqlitePolicyStore> {
    shared: Arc<Shared<S>>,
}

impl<S: PolicyStore + 'static> Clone for PolicyService<S> {
    fn clone(&self) -> Self {
        PolicyService {
            shared: self.shared.clone(),
        }
    }
}

impl<S: PolicyStore + 'static> std::fmt::Debug for PolicyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("clock", &self.shared.clock)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PolicyService`]: the server and the update sink are required; the clock
/// (default [`SystemClock`]), the event sink (default none), the gateway directory (default
/// none) and the configuration are optional.
pub struct PolicyServiceBuilder<S: PolicyStore + 'static> {
    server: PolicyServer<S>,
    updates: Arc<dyn UpdateSink>,
    events: Option<Arc<dyn EventSink>>,
    directory: Option<Arc<dyn GatewayDirectory>>,
    clock: Arc<dyn Clock>,
    config: PolicyServiceConfig,
}

impl<S: PolicyStore + 'static> std::fmt::Debug for PolicyServiceBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyServiceBuilder")
            .field("server", &self.server)
            .field("events", &self.events.is_some())
            .field("directory", &self.directory.is_some())
            .field("clock", &self.clock)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: PolicyStore + 'static> PolicyServiceBuilder<S> {
    /// The wall clock (ms since the epoch) the service passes to the server. Default:
    /// [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where rollout, status and audit events go. Default: nowhere.
    pub fn events(mut self, events: impl EventSink) -> Self {
        self.events = Some(Arc::new(events));
        self
    }

    /// [`events`](Self::events) from a shared sink.
    pub fn events_arc(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = Some(events);
        self
    }

    /// The server's list of provisioned gateways and their tenants (e.g. the
    /// [`StaticTokens`](gateway_proto::auth::StaticTokens) the server authenticates with).
    /// With it, operators can name a gateway of their tenant before it first connects; without
    /// it, only gateways that connected in the operator's tenant (see [`PolicyService`]'s
    /// "Tenancy"). Default: none.
    pub fn directory(self, directory: impl GatewayDirectory) -> Self {
        self.directory_arc(Arc::new(directory))
    }

    /// [`directory`](Self::directory) from a shared directory, e.g. the `Arc<StaticTokens>` the
    /// authenticator is made of.
    pub fn directory_arc(mut self, directory: Arc<dyn GatewayDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Retention and pruning of finished rollouts.
    pub fn config(mut self, config: PolicyServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the service on the current tokio runtime: load policy ownership from the store (on
    /// the blocking pool) and spawn the timer task. Fails with [`Error::Unavailable`] outside a
    /// tokio runtime, or with the store's error.
    pub async fn start(self) -> Result<PolicyService<S>> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Unavailable(format!("start needs a tokio runtime: {e}")))?;
        let PolicyServiceBuilder {
            server,
            updates,
            events,
            directory,
            clock,
            config,
        } = self;
        let loader_clock = clock.clone();
        let core = runtime
            .spawn_blocking(move || {
                let hooks = Hooks {
                    updates,
                    events,
                    directory,
                };
                Core::load(server, hooks, config, loader_clock.now_ms())
            })
            .await
            .map_err(|e| Error::Unavailable(format!("loading the policy service failed: {e}")))??;
        let shared = Arc::new(Shared {
            next_wake_ms: AtomicI64::new(NO_WAKE),
            core: Mutex::new(core),
            clock,
            wake: Arc::new(Notify::new()),
            runtime: runtime.clone(),
        });
        shared.store_next_wake();
        runtime.spawn(run_timer(
            Arc::downgrade(&shared),
            shared.wake.clone(),
            shared.clock.clone(),
        ));
        Ok(PolicyService { shared })
    }
}

const NO_WAKE: i64 = i64::MAX;

struct Shared<S: PolicyStore + 'static> {
    core: Mutex<Core<S>>,
    clock: Arc<dyn Clock>,
    /// The next time the timer must run ([`NO_WAKE`] for none), so it never takes the lock.
    next_wake_ms: AtomicI64,
    wake: Arc<Notify>,
    runtime: tokio::runtime::Handle,
}

impl<S: PolicyStore + 'static> Shared<S> {
    fn run<R>(&self, f: impl FnOnce(&mut Core<S>, i64) -> Result<R>) -> Result<R> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now_ms();
        let result = f(&mut core, now);
        let next = core.next_wake().unwrap_or(NO_WAKE);
        drop(core);
        self.next_wake_ms.store(next, Ordering::SeqCst);
        self.wake.notify_one();
        result
    }

    fn store_next_wake(&self) {
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let next = core.next_wake().unwrap_or(NO_WAKE);
        self.next_wake_ms.store(next, Ordering::SeqCst);
    }
}

impl<S: PolicyStore + 'static> Drop for Shared<S> {
    fn drop(&mut self) {
        // Wake the timer so it sees the service is gone and exits.
        self.wake.notify_one();
    }
}

/// Sleep until the next release or pruning is due, run it, repeat; exit when the service is
/// dropped. Calls wake it so a new deadline is picked up at once.
async fn run_timer<S: PolicyStore + 'static>(
    shared: Weak<Shared<S>>,
    wake: Arc<Notify>,
    clock: Arc<dyn Clock>,
) {
    let mut last_tick_deadline = None;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let next = strong.next_wake_ms.load(Ordering::SeqCst);
        drop(strong);
        if next == NO_WAKE {
            wake.notified().await;
            continue;
        }
        let mut wait_ms = (next - clock.now_ms()).max(0);
        if last_tick_deadline == Some(next) {
            // The last run did not move the deadline (a clock behind the timer): do not spin.
            wait_ms = wait_ms.max(1_000);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                let service = PolicyService { shared: strong };
                last_tick_deadline = Some(next);
                if let Err(e) = service.call(|core, now| core.maintain(now)).await {
                    tracing::error!(error = %e, "policy service timer failed; retrying at the next deadline");
                }
            }
            _ = wake.notified() => {}
        }
    }
}

/// What the host gave the service: where frames and events go, and who owns which gateway.
struct Hooks {
    updates: Arc<dyn UpdateSink>,
    events: Option<Arc<dyn EventSink>>,
    directory: Option<Arc<dyn GatewayDirectory>>,
}

/// The state behind the lock.
pub(crate) struct Core<S> {
    pub(crate) server: PolicyServer<S>,
    /// Policy name → owning tenant.
    owners: HashMap<String, String>,
    updates: Arc<dyn UpdateSink>,
    events: Option<Arc<dyn EventSink>>,
    directory: Option<Arc<dyn GatewayDirectory>>,
    /// Last reported state of every rollout not aborted.
    watched: HashMap<RolloutId, RolloutState>,
    /// The highest rollout id seen, so new rollouts are reported once.
    last_rollout: RolloutId,
    config: PolicyServiceConfig,
    last_prune_ms: i64,
}

impl<S: PolicyStore> Core<S> {
    fn load(
        server: PolicyServer<S>,
        hooks: Hooks,
        config: PolicyServiceConfig,
        now_ms: i64,
    ) -> Result<Self> {
        let Hooks {
            updates,
            events,
            directory,
        } = hooks;
        let owners = server.store().policy_owners()?.into_iter().collect();
        let summaries = server.tracker().rollouts();
        let last_rollout = summaries.iter().map(|s| s.id).max().unwrap_or(0);
        let watched = summaries
            .into_iter()
            .filter(|s| s.state != RolloutState::Aborted)
            .map(|s| (s.id, s.state))
            .collect();
        Ok(Core {
            server,
            owners,
            updates,
            events,
            directory,
            watched,
            last_rollout,
            config,
            last_prune_ms: now_ms,
        })
    }

    fn next_wake(&self) -> Option<i64> {
        let prune = self
            .last_prune_ms
            .saturating_add(self.config.prune_interval_ms);
        Some(self.server.poll_timeout().map_or(prune, |t| t.min(prune)))
    }

    /// Release what staged rollouts allow, prune when due.
    fn maintain(&mut self, now_ms: i64) -> Result<()> {
        let out = self.server.poll(now_ms)?;
        self.send(out);
        if now_ms - self.last_prune_ms >= self.config.prune_interval_ms {
            self.last_prune_ms = now_ms;
            let pruned = self
                .server
                .prune_rollouts(now_ms - self.config.rollout_retention_ms)?;
            if pruned > 0 {
                tracing::info!(pruned, "forgot finished rollouts");
            }
        }
        self.sync_rollouts(None);
        Ok(())
    }

    fn send(&self, outgoing: Vec<Outgoing>) {
        for o in outgoing {
            self.updates.send(&o.gateway_id, o.update);
        }
    }

    fn send_to(&self, gateway_id: &str, updates: Vec<PolicyUpdate>) {
        for update in updates {
            self.updates.send(gateway_id, update);
        }
    }

    fn emit(&self, kind: &str, tenant: &str, data: Value) {
        if let Some(events) = &self.events {
            events.event(kind, tenant, data);
        }
    }

    fn audit(&self, event: AuditEvent) {
        if self.events.is_none() {
            return;
        }
        let tenant = event.tenant.clone();
        match serde_json::to_value(&event) {
            Ok(data) => self.emit(PolicyEvent::AUDIT, &tenant, data),
            Err(e) => tracing::error!(error = %e, "could not encode an audit event"),
        }
    }

    fn owner(&self, policy: &str) -> Option<&str> {
        self.owners.get(policy).map(String::as_str)
    }

    /// True when an operator of `tenant` may name `gateway_id` in a change: the directory
    /// provisions it in `tenant`, or, without a directory, it connected in `tenant`.
    fn may_name_gateway(&self, gateway_id: &str, tenant: &str) -> bool {
        match &self.directory {
            Some(directory) => directory.tenant_of(gateway_id).as_deref() == Some(tenant),
            None => views::gateway_in_tenant(&self.server, gateway_id, tenant),
        }
    }

    /// [`may_name_gateway`](Self::may_name_gateway), as the error operators get.
    fn require_gateway_of(&self, gateway_id: &str, tenant: &str) -> Result<()> {
        if self.may_name_gateway(gateway_id, tenant) {
            Ok(())
        } else {
            Err(Error::UnknownGateway {
                gateway_id: gateway_id.to_owned(),
            })
        }
    }

    /// Report rollouts that started or changed state: the given ones (or every rollout not
    /// aborted), plus any new one.
    fn sync_rollouts(&mut self, only: Option<&[RolloutId]>) {
        let mut changed = Vec::new();
        while let Some(summary) = self.server.tracker().summary(self.last_rollout + 1) {
            self.last_rollout = summary.id;
            if summary.state != RolloutState::Aborted {
                self.watched.insert(summary.id, summary.state);
            }
            changed.push(summary);
        }
        let ids: Vec<RolloutId> = match only {
            Some(ids) => ids.to_vec(),
            None => self.watched.keys().copied().collect(),
        };
        for id in ids {
            let Some(last) = self.watched.get(&id).copied() else {
                continue;
            };
            match self.server.tracker().summary(id) {
                None => {
                    self.watched.remove(&id);
                }
                Some(summary) if summary.state != last => {
                    if summary.state == RolloutState::Aborted {
                        self.watched.remove(&id);
                    } else {
                        self.watched.insert(id, summary.state);
                    }
                    changed.push(summary);
                }
                Some(_) => {}
            }
        }
        if changed.is_empty() {
            return;
        }
        // Each tenant hears of a rollout counted over its own gateways only: the owner of the
        // policy, and every tenant with a gateway in the rollout. Nobody else, and never an
        // empty tenant standing for "everyone".
        let ids: Vec<RolloutId> = changed.iter().map(|s| s.id).collect();
        let mut by_tenant = views::rollout_views_by_tenant(&self.server, &ids);
        for summary in changed {
            let mut per_tenant = by_tenant.remove(&summary.id).unwrap_or_default();
            if let Some(owner) = self.owner(&summary.policy)
                && !per_tenant.contains_key(owner)
            {
                let view = views::rollout_views(&self.server, &[summary.id], owner).pop();
                if let Some(view) = view {
                    per_tenant.insert(owner.to_owned(), view);
                }
            }
            if per_tenant.is_empty() {
                tracing::debug!(rollout = summary.id, policy = %summary.policy, "a rollout of no tenant changed state");
            }
            for (tenant, view) in per_tenant {
                match serde_json::to_value(&view) {
                    Ok(data) => self.emit(PolicyEvent::ROLLOUT, &tenant, data),
                    Err(e) => tracing::error!(error = %e, "could not encode a rollout event"),
                }
            }
        }
    }

    fn gateway_connected(
        &mut self,
        gateway_id: &str,
        tenant: &str,
        applied: &[AppliedPolicy],
        now_ms: i64,
    ) -> Result<()> {
        // Rollouts the gateway was in before: it leaves them if it changed tenant.
        let before: Vec<RolloutId> = self
            .server
            .tracker()
            .gateway(gateway_id)
            .filter_map(|t| t.rollout)
            .collect();
        let updates = self.server.connect(gateway_id, tenant, applied, now_ms)?;
        self.send_to(gateway_id, updates);
        let mut rollouts: Vec<RolloutId> = self
            .server
            .tracker()
            .gateway(gateway_id)
            .filter_map(|t| t.rollout)
            .collect();
        rollouts.extend(before);
        rollouts.sort_unstable();
        rollouts.dedup();
        self.sync_rollouts(Some(&rollouts));
        Ok(())
    }

    fn policy_status(
        &mut self,
        gateway_id: &str,
        status: &PolicyStatus,
        now_ms: i64,
    ) -> Result<()> {
        let before = self
            .server
            .tracker()
            .status(gateway_id, &status.name)
            .and_then(|t| t.rollout);
        let out = self.server.handle_status(gateway_id, status, now_ms)?;
        self.send(out);
        let target = self.server.tracker().status(gateway_id, &status.name);
        let data = json!({
            "gateway_id": gateway_id,
            "policy": status.name,
            "version": status.version,
            "state": status.state,
            "reason": status.reason,
            "code": status.code,
            "running_version": status.running_version,
            "target_state": target.map(|t| t.state),
            "rollout": target.and_then(|t| t.rollout),
        });
        // A status goes to its gateway's tenant; one from a gateway the server does not know
        // belongs to no tenant and is not reported.
        if let Some(gateway) = self.server.gateway(gateway_id) {
            let tenant = gateway.tenant.clone();
            self.emit(PolicyEvent::STATUS, &tenant, data);
        }
        let rollouts: Vec<RolloutId> = before.into_iter().collect();
        self.sync_rollouts(Some(&rollouts));
        Ok(())
    }
}

impl<S: PolicyStore + 'static> PolicyService<S> {
    /// Start building a service around `server` (built from the store with
    /// [`PolicyServer::new`], which reads the store: do it at start-up or on the blocking pool),
    /// delivering frames through `updates`.
    pub fn builder(server: PolicyServer<S>, updates: impl UpdateSink) -> PolicyServiceBuilder<S> {
        Self::builder_arc(server, Arc::new(updates))
    }

    /// [`builder`](Self::builder) with a shared sink.
    pub fn builder_arc(
        server: PolicyServer<S>,
        updates: Arc<dyn UpdateSink>,
    ) -> PolicyServiceBuilder<S> {
        PolicyServiceBuilder {
            server,
            updates,
            events: None,
            directory: None,
            clock: Arc::new(SystemClock),
            config: PolicyServiceConfig::default(),
        }
    }

    /// Run `f` on the blocking pool with the lock held and the clock read.
    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core<S>, i64) -> Result<R> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.shared
            .runtime
            .spawn_blocking(move || shared.run(f))
            .await
            .map_err(|e| {
                Error::Unavailable(format!("the policy service call did not finish: {e}"))
            })?
    }

    /// A gateway's control session started; `applied` is what its `hello` says it runs. A gateway
    /// not known yet is registered in `tenant`. Sends it what it misses.
    pub async fn gateway_connected(
        &self,
        gateway_id: &str,
        tenant: &str,
        applied: &[AppliedPolicy],
    ) -> Result<()> {
        let (gateway_id, tenant, applied) =
            (gateway_id.to_owned(), tenant.to_owned(), applied.to_vec());
        self.call(move |core, now| core.gateway_connected(&gateway_id, &tenant, &applied, now))
            .await
    }

    /// A gateway's control session ended: nothing is sent to it until it connects again.
    ///
    /// Forward only the end of the gateway's *current* session: when a new session replaced an
    /// old one, the old one's close must not mark the gateway disconnected.
    pub async fn gateway_disconnected(&self, gateway_id: &str) -> Result<()> {
        let gateway_id = gateway_id.to_owned();
        self.call(move |core, _| {
            core.server.disconnect(&gateway_id);
            Ok(())
        })
        .await
    }

    /// A gateway's `policy_status` frame. Sends the full document when it refused a patch
    /// (`base_mismatch`) and whatever the answer let a staged rollout release.
    pub async fn policy_status(&self, gateway_id: &str, status: PolicyStatus) -> Result<()> {
        let gateway_id = gateway_id.to_owned();
        self.call(move |core, now| core.policy_status(&gateway_id, &status, now))
            .await
    }

    /// Read the server's state (the store, the tracker, assignments) with the lock held, on the
    /// blocking pool. For reads the operator methods do not cover.
    pub async fn inspect<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&PolicyServer<S>) -> R + Send + 'static,
    {
        self.call(move |core, _| Ok(f(&core.server))).await
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::PolicyServerConfig;

    fn server() -> PolicyServer<SqlitePolicyStore> {
        let store = SqlitePolicyStore::open_in_memory().unwrap();
        PolicyServer::new(store, PolicyServerConfig::default()).unwrap()
    }

    #[test]
    fn config_defaults_and_validation_name_the_parameter() {
        let config: PolicyServiceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, PolicyServiceConfig::default());
        assert_eq!(config.rollout_retention_ms, 604_800_000);
        config.validate().unwrap();
        for (bad, param) in [
            (
                PolicyServiceConfig {
                    rollout_retention_ms: 0,
                    ..Default::default()
                },
                "rollout_retention_ms",
            ),
            (
                PolicyServiceConfig {
                    prune_interval_ms: -1,
                    ..Default::default()
                },
                "prune_interval_ms",
            ),
        ] {
            assert!(matches!(
                bad.validate(),
                Err(Error::InvalidParameter { param_name, .. }) if param_name == param
            ));
        }
    }

    #[test]
    fn starting_outside_a_tokio_runtime_is_an_error_not_a_panic() {
        let start = PolicyService::builder(server(), |_: &str, _: PolicyUpdate| {}).start();
        let mut start = std::pin::pin!(start);
        let mut cx = Context::from_waker(Waker::noop());
        match start.as_mut().poll(&mut cx) {
            Poll::Ready(Err(Error::Unavailable(reason))) => {
                assert!(reason.contains("tokio runtime"), "{reason}")
            }
            other => panic!(
                "expected Unavailable, got {:?}",
                other.map(|r| r.map(|_| ()))
            ),
        }
    }

    #[tokio::test]
    async fn the_timer_task_ends_with_the_last_handle() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let service = PolicyService::builder(server(), |_: &str, _: PolicyUpdate| {})
            .start()
            .await
            .unwrap();
        let copy = service.clone();
        assert_eq!(metrics.num_alive_tasks(), 1, "the timer");
        drop(service);
        tokio::task::yield_now().await;
        assert_eq!(metrics.num_alive_tasks(), 1, "a clone keeps it alive");
        drop(copy);
        for _ in 0..100 {
            if metrics.num_alive_tasks() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the timer task is still alive");
    }
}

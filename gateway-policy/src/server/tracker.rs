//! The rollout tracker.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use gateway_proto::{ErrorCode, PolicyState, PolicyStatus};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Identifies a rollout within a [`RolloutTracker`].
pub type RolloutId = u64;

const MINUTE_MS: i64 = 60_000;

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Not sent yet (or to be sent again).
    Pending,
    /// Sent; no answer yet.
    Delivered,
    /// The gateway runs the desired version.
    Applied,
    /// The gateway refused the desired version (see `reason` and `error_code`).
    Rejected,
}

impl TargetState {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Delivered => "delivered",
            TargetState::Applied => "applied",
            TargetState::Rejected => "rejected",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn in_flight(self) -> bool {
        matches!(self, TargetState::Pending | TargetState::Delivered)
    }
}

/// One gateway × one policy: desired and reported version, state and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Gateway id.
    pub gateway_id: String,
    /// Policy name.
    pub policy: String,
    /// The version the gateway should run.
    pub desired_version: u64,
    /// The version the gateway last said it runs.
    pub reported_version: Option<u64>,
    /// Where the target stands.
    pub state: TargetState,
    /// The gateway's reason for the last rejection.
    pub reason: Option<String>,
    /// The code of the last rejection.
    pub error_code: Option<ErrorCode>,
    /// When an update was last sent, ms since the epoch.
    pub last_attempt_ms: Option<i64>,
    /// When the gateway last reported the desired version applied, ms since the epoch.
    pub last_success_ms: Option<i64>,
    /// The rollout the target belongs to; `None` for a change outside any rollout (a new gateway).
    pub rollout: Option<RolloutId>,
    /// True once a staged rollout released the target.
    pub released: bool,
    /// True when the next update must carry the full document (a patch was refused).
    pub needs_full: bool,
    /// True when the last update sent was a patch.
    pub last_sent_patch: bool,
}

/// Limits of a staged rollout. The default releases everything at once and never aborts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StagedRollout {
    /// Release at most this many targets in any 60 s window. Default: no limit.
    pub max_per_minute: Option<u32>,
    /// Keep at most this percentage (1–100) of the rollout's targets released but unanswered
    /// ("N % at a time"; at least one). Default: no limit.
    pub max_percent_in_flight: Option<u8>,
    /// When to stop. Default: never.
    pub abort: Option<AbortRule>,
}

/// Abort a rollout when too many gateways reject it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortRule {
    /// Abort when rejected / (applied + rejected) exceeds this percentage (0–100).
    pub rejected_percent: f64,
    /// ... once at least this many targets have answered (at least 1).
    pub min_reported: u32,
}

impl StagedRollout {
    /// Check the limits; the error names the bad parameter.
    pub fn validate(&self) -> Result<()> {
        if self.max_per_minute == Some(0) {
            return Err(Error::invalid(
                "max_per_minute",
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        if let Some(p) = self.max_percent_in_flight
            && !(1..=100).contains(&p)
        {
            return Err(Error::invalid(
                "max_percent_in_flight",
                format!("must be between 1 and 100, got {p}"),
            ));
        }
        if let Some(rule) = &self.abort {
            if !(rule.rejected_percent.is_finite()
                && (0.0..=100.0).contains(&rule.rejected_percent))
            {
                return Err(Error::invalid(
                    "abort.rejected_percent",
                    format!("must be between 0 and 100, got {}", rule.rejected_percent),
                ));
            }
            if rule.min_reported == 0 {
                return Err(Error::invalid("abort.min_reported", "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Overall state of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Targets remain pending or delivered.
    InProgress,
    /// Every target answered (applied or rejected) or moved to a later rollout.
    Completed,
    /// Stopped by its abort rule or by an operator; nothing more is released.
    Aborted,
}

/// Counts by state for one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    /// Rollout id.
    pub id: RolloutId,
    /// Policy name.
    pub policy: String,
    /// Version rolled out.
    pub version: u64,
    /// Overall state.
    pub state: RolloutState,
    /// Why it was aborted.
    pub abort_reason: Option<String>,
    /// When it started, ms since the epoch.
    pub started_at_ms: i64,
    /// Targets at the start.
    pub total: usize,
    /// Targets released so far.
    pub released: usize,
    /// Targets in `pending` (released or not).
    pub pending: usize,
    /// Targets in `delivered`.
    pub delivered: usize,
    /// Targets in `applied`.
    pub applied: usize,
    /// Targets in `rejected`.
    pub rejected: usize,
    /// Targets moved to a later rollout.
    pub superseded: usize,
}

/// A rollout as the server persists it, so a restart keeps staged and aborted rollouts as they
/// were (see [`RolloutTracker::restore_rollout`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: RolloutId,
    /// Policy name.
    pub policy: String,
    /// Version rolled out.
    pub version: u64,
    /// When it started, ms since the epoch.
    pub started_at_ms: i64,
    /// Its staging limits.
    pub staging: StagedRollout,
    /// Why it was aborted, if it was.
    pub aborted: Option<String>,
    /// Its targets (gateway ids), in release order, each with whether it was released.
    pub targets: Vec<(String, bool)>,
}

/// What the server should do after a `policy_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusEffect {
    /// Nothing more to send.
    Recorded,
    /// Send the full document of the desired version now (a patch was refused).
    ResendFull,
    /// The status was about another version than the desired one, or an unknown target.
    Ignored,
}

#[derive(Debug)]
struct Rollout {
    id: RolloutId,
    policy: String,
    version: u64,
    started_at_ms: i64,
    staging: StagedRollout,
    aborted: Option<String>,
    total: usize,
    released: usize,
    superseded: usize,
    counts: [usize; 4],
    in_flight: usize,
    unreleased: VecDeque<String>,
    release_times: VecDeque<i64>,
}

impl Rollout {
    fn budget(&mut self, now_ms: i64) -> usize {
        if self.aborted.is_some() {
            return 0;
        }
        let mut budget = usize::MAX;
        if let Some(per_minute) = self.staging.max_per_minute {
            while self
                .release_times
                .front()
                .is_some_and(|t| *t <= now_ms - MINUTE_MS)
            {
                self.release_times.pop_front();
            }
            budget = budget.min((per_minute as usize).saturating_sub(self.release_times.len()));
        }
        if let Some(percent) = self.staging.max_percent_in_flight {
            let window = (self.total * percent as usize).div_ceil(100).max(1);
            budget = budget.min(window.saturating_sub(self.in_flight));
        }
        budget
    }

    fn record_release(&mut self, now_ms: i64) {
        self.released += 1;
        self.in_flight += 1;
        if self.staging.max_per_minute.is_some() {
            self.release_times.push_back(now_ms);
        }
    }

    fn summary(&self) -> RolloutSummary {
        let [pending, delivered, applied, rejected] = self.counts;
        let state = if self.aborted.is_some() {
            RolloutState::Aborted
        } else if pending + delivered == 0 {
            RolloutState::Completed
        } else {
            RolloutState::InProgress
        };
        RolloutSummary {
            id: self.id,
            policy: self.policy.clone(),
            version: self.version,
            state,
            abort_reason: self.aborted.clone(),
            started_at_ms: self.started_at_ms,
            total: self.total,
            released: self.released,
            pending,
            delivered,
            applied,
            rejected,
            superseded: self.superseded,
        }
    }

    fn check_abort(&mut self) {
        let Some(rule) = &self.staging.abort else {
            return;
        };
        if self.aborted.is_some() {
            return;
        }
        let applied = self.counts[TargetState::Applied.index()];
        let rejected = self.counts[TargetState::Rejected.index()];
        let reported = applied + rejected;
        if reported < rule.min_reported as usize || reported == 0 {
            return;
        }
        let share = rejected as f64 * 100.0 / reported as f64;
        if share > rule.rejected_percent {
            let reason = format!(
                "{rejected} of {reported} reporting gateways rejected version {} ({share:.1} %), above the abort threshold of {} %",
                self.version, rule.rejected_percent
            );
            tracing::warn!(rollout = self.id, policy = %self.policy, %reason, "rollout aborted");
            metrics::counter!("gateway_policy_rollouts_aborted_total").increment(1);
            self.aborted = Some(reason);
        }
    }
}

/// Tracks desired and reported policy versions per gateway, and the rollouts that move them.
///
///
/// A sans-IO state machine: every call takes the time (`now_ms`, ms since the epoch) and nothing
/// here reads a clock, sleeps or does I/O.
///
/// # States of a target (one gateway × one policy)
/// ```text
///            release + send               status applied
/// pending ─────────────────▶ delivered ───────────────────▶ applied
///    ▲                          │ status rejected
///    │ base_mismatch            ▼
///    └─────────────────────── rejected (reason, error code)
/// ```
/// `pending` also covers targets a staged rollout has not released yet. A `hello` whose reported
/// version is the desired one moves a target to `applied`; a lost delivery (the gateway reconnects
/// still running an older version) moves it back to `pending`. A `base_mismatch` rejection of a
/// patch puts the target back to `pending` with the full document due. A rejection with `internal`
/// (the gateway could not persist) is retried when the gateway reconnects; other rejections stand
/// until the desired version changes. Each target records, as OPA's status API does, the last
/// attempt, the last success, and the error code and message of the last failure.
///
/// # Rollouts
/// A rollout moves a set of targets to one version of a policy. With a [`StagedRollout`] it
/// releases them at most `max_per_minute` per sliding minute and/or with at most
/// `max_percent_in_flight` % of its targets released but not yet answered, and it aborts (releases
/// nothing more) when, once `min_reported` targets have answered, the rejected share exceeds
/// `rejected_percent` (AWS IoT Jobs' rollout and abort configs). Only targets whose gateway is
/// connected are released, so offline gateways never use up the budget; they are released when
/// they connect and the budget allows. A target belongs to the latest rollout that included it;
/// the earlier rollout counts it as `superseded`.
#[derive(Debug, Default)]
pub struct RolloutTracker {
    targets: HashMap<String, BTreeMap<String, TargetStatus>>,
    rollouts: BTreeMap<RolloutId, Rollout>,
    /// Rollouts with targets waiting to be released, so releasing never scans finished ones.
    releasing: BTreeSet<RolloutId>,
    next_rollout: RolloutId,
}

impl RolloutTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        RolloutTracker {
            next_rollout: 1,
            ..Default::default()
        }
    }

    /// Start a rollout of `policy` at `version` to `gateways`. Targets already running that
    /// version (as last reported) count as applied at once.
    pub fn start_rollout(
        &mut self,
        policy: &str,
        version: u64,
        gateways: impl IntoIterator<Item = String>,
        staging: StagedRollout,
        now_ms: i64,
    ) -> Result<RolloutId> {
        staging.validate()?;
        let id = self.next_rollout.max(1);
        self.insert_rollout(id, policy, version, now_ms, staging, None);
        for gateway in gateways {
            self.attach(&gateway, policy, version, Some(id));
        }
        tracing::info!(rollout = id, %policy, version, targets = self.rollouts[&id].total, "rollout started");
        Ok(id)
    }

    fn insert_rollout(
        &mut self,
        id: RolloutId,
        policy: &str,
        version: u64,
        started_at_ms: i64,
        staging: StagedRollout,
        aborted: Option<String>,
    ) {
        self.next_rollout = self.next_rollout.max(id + 1);
        self.rollouts.insert(
            id,
            Rollout {
                id,
                policy: policy.to_owned(),
                version,
                started_at_ms,
                staging,
                aborted,
                total: 0,
                released: 0,
                superseded: 0,
                counts: [0; 4],
                in_flight: 0,
                unreleased: VecDeque::new(),
                release_times: VecDeque::new(),
            },
        );
    }

    /// Rebuild a persisted rollout after a restart: same id, staging and abort state, its targets
    /// pending with their released flags (a later [`handle_report`](Self::handle_report) settles
    /// the ones already applied). Restore records oldest first, so later rollouts supersede
    /// earlier ones as they did live. The per-minute window starts empty.
    pub fn restore_rollout(&mut self, record: RolloutRecord) {
        let RolloutRecord {
            id,
            policy,
            version,
            started_at_ms,
            staging,
            aborted,
            targets,
        } = record;
        self.insert_rollout(id, &policy, version, started_at_ms, staging, aborted);
        for (gateway, released) in targets {
            self.attach(&gateway, &policy, version, Some(id));
            if released {
                self.mark_released(&gateway, &policy, id);
            }
        }
    }

    /// The record to persist for a rollout (targets sorted by gateway id).
    pub fn rollout_record(&self, rollout: RolloutId) -> Option<RolloutRecord> {
        let r = self.rollouts.get(&rollout)?;
        let mut targets: Vec<(String, bool)> = self
            .targets()
            .filter(|t| t.rollout == Some(rollout))
            .map(|t| (t.gateway_id.clone(), t.released))
            .collect();
        targets.sort();
        Some(RolloutRecord {
            id: r.id,
            policy: r.policy.clone(),
            version: r.version,
            started_at_ms: r.started_at_ms,
            staging: r.staging.clone(),
            aborted: r.aborted.clone(),
            targets,
        })
    }

    /// Mark a restored target released without counting it against the staging budget.
    fn mark_released(&mut self, gateway: &str, policy: &str, rollout: RolloutId) {
        let Some(target) = self
            .targets
            .get_mut(gateway)
            .and_then(|m| m.get_mut(policy))
        else {
            return;
        };
        if target.rollout != Some(rollout) || target.released {
            return;
        }
        target.released = true;
        if let Some(r) = self.rollouts.get_mut(&rollout) {
            r.released += 1;
            if target.state.in_flight() {
                r.in_flight += 1;
            }
        }
    }

    /// Make `version` the desired version of `policy` for one gateway outside any rollout (a
    /// gateway that just joined, a pinned assignment): it is released at once. Does nothing when
    /// that version is already desired.
    pub fn set_desired(&mut self, gateway: &str, policy: &str, version: u64) {
        if self.status(gateway, policy).map(|t| t.desired_version) == Some(version) {
            return;
        }
        self.attach(gateway, policy, version, None);
    }

    /// Stop tracking `policy` on `gateway` (its assignment went away).
    pub fn clear_desired(&mut self, gateway: &str, policy: &str) {
        let removed = self.targets.get_mut(gateway).and_then(|m| m.remove(policy));
        if let Some(old) = removed {
            self.detach(&old);
        }
    }

    /// Forget a gateway entirely.
    pub fn remove_gateway(&mut self, gateway: &str) {
        if let Some(all) = self.targets.remove(gateway) {
            for old in all.values() {
                self.detach(old);
            }
        }
    }

    fn attach(&mut self, gateway: &str, policy: &str, version: u64, rollout: Option<RolloutId>) {
        let previous = self.targets.get_mut(gateway).and_then(|m| m.remove(policy));
        let reported = previous.as_ref().and_then(|p| p.reported_version);
        let in_sync = previous.as_ref().is_some_and(|p| {
            p.reported_version == Some(version)
                && (p.desired_version != version || p.state == TargetState::Applied)
        });
        if let Some(old) = &previous {
            self.detach(old);
            if let Some(old_rollout) = old.rollout.and_then(|r| self.rollouts.get_mut(&r))
                && rollout.is_some()
            {
                old_rollout.superseded += 1;
            }
        }
        let state = if in_sync {
            TargetState::Applied
        } else {
            TargetState::Pending
        };
        let target = TargetStatus {
            gateway_id: gateway.to_owned(),
            policy: policy.to_owned(),
            desired_version: version,
            reported_version: reported,
            state,
            reason: None,
            error_code: None,
            last_attempt_ms: previous.as_ref().and_then(|p| p.last_attempt_ms),
            last_success_ms: previous.as_ref().and_then(|p| p.last_success_ms),
            rollout,
            released: rollout.is_none(),
            needs_full: false,
            last_sent_patch: false,
        };
        if let Some(r) = rollout.and_then(|r| self.rollouts.get_mut(&r)) {
            r.total += 1;
            r.counts[state.index()] += 1;
            if state == TargetState::Pending {
                r.unreleased.push_back(gateway.to_owned());
                self.releasing.insert(r.id);
            }
        }
        self.targets
            .entry(gateway.to_owned())
            .or_default()
            .insert(policy.to_owned(), target);
    }

    /// Remove a target's contribution to its rollout's counters.
    fn detach(&mut self, target: &TargetStatus) {
        let Some(r) = target.rollout.and_then(|r| self.rollouts.get_mut(&r)) else {
            return;
        };
        let i = target.state.index();
        r.counts[i] = r.counts[i].saturating_sub(1);
        if target.released && target.state.in_flight() {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
    }

    /// Move a target to `state`, keeping its rollout's counters right; checks the abort rule.
    fn transition(&mut self, gateway: &str, policy: &str, state: TargetState) {
        let Some(target) = self
            .targets
            .get_mut(gateway)
            .and_then(|m| m.get_mut(policy))
        else {
            return;
        };
        let old = target.state;
        target.state = state;
        let released = target.released;
        let Some(r) = target.rollout.and_then(|r| self.rollouts.get_mut(&r)) else {
            return;
        };
        r.counts[old.index()] = r.counts[old.index()].saturating_sub(1);
        r.counts[state.index()] += 1;
        if released {
            match (old.in_flight(), state.in_flight()) {
                (true, false) => r.in_flight = r.in_flight.saturating_sub(1),
                (false, true) => r.in_flight += 1,
                _ => {}
            }
        }
        if old != state && matches!(state, TargetState::Applied | TargetState::Rejected) {
            r.check_abort();
        }
    }

    /// What the gateway said it runs, from its `hello`: `reported` is its version of `policy`
    /// (`None` if it runs none) and `in_sync` whether that is the desired version with the
    /// desired checksum.
    pub fn handle_report(
        &mut self,
        gateway: &str,
        policy: &str,
        reported: Option<u64>,
        in_sync: bool,
        now_ms: i64,
    ) {
        let Some(target) = self
            .targets
            .get_mut(gateway)
            .and_then(|m| m.get_mut(policy))
        else {
            return;
        };
        target.reported_version = reported;
        let next = if in_sync {
            if target.state != TargetState::Applied {
                target.last_success_ms = Some(now_ms);
                target.reason = None;
                target.error_code = None;
            }
            TargetState::Applied
        } else {
            match target.state {
                TargetState::Rejected
                    if !matches!(
                        target.error_code,
                        Some(ErrorCode::Internal | ErrorCode::Unavailable)
                    ) =>
                {
                    TargetState::Rejected
                }
                _ => TargetState::Pending,
            }
        };
        self.transition(gateway, policy, next);
    }

    /// Record that an update was sent (`patch`: it carried a patch, not the full document).
    pub fn mark_delivered(&mut self, gateway: &str, policy: &str, patch: bool, now_ms: i64) {
        let Some(target) = self
            .targets
            .get_mut(gateway)
            .and_then(|m| m.get_mut(policy))
        else {
            return;
        };
        target.last_attempt_ms = Some(now_ms);
        target.last_sent_patch = patch;
        self.transition(gateway, policy, TargetState::Delivered);
    }

    /// Record a gateway's `policy_status`.
    pub fn handle_status(
        &mut self,
        gateway: &str,
        status: &PolicyStatus,
        now_ms: i64,
    ) -> StatusEffect {
        let Some(target) = self
            .targets
            .get_mut(gateway)
            .and_then(|m| m.get_mut(&status.name))
        else {
            return StatusEffect::Ignored;
        };
        if status.running_version.is_some() {
            target.reported_version = status.running_version;
        }
        if status.version != target.desired_version {
            return StatusEffect::Ignored;
        }
        let (state, effect) = match status.state {
            PolicyState::Applied => {
                target.reported_version = Some(status.version);
                target.last_success_ms = Some(now_ms);
                target.reason = None;
                target.error_code = None;
                target.needs_full = false;
                (TargetState::Applied, StatusEffect::Recorded)
            }
            PolicyState::Rejected => {
                target.reason = status.reason.clone();
                target.error_code = status.code.clone();
                let patch_refused = target.last_sent_patch
                    && matches!(
                        status.code,
                        Some(ErrorCode::BaseMismatch | ErrorCode::ChecksumMismatch)
                    );
                if patch_refused {
                    target.needs_full = true;
                    (TargetState::Pending, StatusEffect::ResendFull)
                } else {
                    (TargetState::Rejected, StatusEffect::Recorded)
                }
            }
        };
        self.transition(gateway, &status.name, state);
        effect
    }

    /// Record that the server cannot send the desired version to this target (its update does
    /// not fit in a control frame): the target becomes `rejected` with `code` and `reason`, as if
    /// the gateway had refused it. Like a gateway's rejection it counts for the abort rule and
    /// stands until the desired version changes.
    pub fn reject(
        &mut self,
        gateway: &str,
        policy: &str,
        code: ErrorCode,
        reason: impl Into<String>,
    ) {
        let Some(target) = self
            .targets
            .get_mut(gateway)
            .and_then(|m| m.get_mut(policy))
        else {
            return;
        };
        target.reason = Some(reason.into());
        target.error_code = Some(code);
        target.needs_full = false;
        self.transition(gateway, policy, TargetState::Rejected);
    }

    /// Release what the staged rollouts allow now, among targets whose gateway is `connected`.
    /// Returns the released (gateway, policy) pairs: send each its update and call
    /// [`mark_delivered`](Self::mark_delivered).
    pub fn release(
        &mut self,
        now_ms: i64,
        connected: impl Fn(&str) -> bool,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut drained = Vec::new();
        for id in &self.releasing {
            let Some(rollout) = self.rollouts.get_mut(id) else {
                drained.push(*id);
                continue;
            };
            let mut budget = rollout.budget(now_ms);
            let mut waiting = VecDeque::new();
            while budget > 0 {
                let Some(gateway) = rollout.unreleased.pop_front() else {
                    break;
                };
                let Some(target) = self
                    .targets
                    .get_mut(&gateway)
                    .and_then(|m| m.get_mut(&rollout.policy))
                else {
                    continue;
                };
                if target.rollout != Some(rollout.id)
                    || target.released
                    || target.state != TargetState::Pending
                {
                    continue;
                }
                if !connected(&gateway) {
                    waiting.push_back(gateway);
                    continue;
                }
                target.released = true;
                rollout.record_release(now_ms);
                budget -= 1;
                out.push((gateway, rollout.policy.clone()));
            }
            waiting.append(&mut rollout.unreleased);
            rollout.unreleased = waiting;
            if rollout.unreleased.is_empty() {
                drained.push(*id);
            }
        }
        for id in drained {
            self.releasing.remove(&id);
        }
        out
    }

    /// The policies of `gateway` to send now: pending targets already released, plus those its
    /// rollout's budget can release now (released by this call).
    pub fn due_for(&mut self, gateway: &str, now_ms: i64) -> Vec<String> {
        self.due_for_releasing(gateway, now_ms)
            .into_iter()
            .map(|(policy, _)| policy)
            .collect()
    }

    /// [`due_for`](Self::due_for), also saying which rollout each target was released from by
    /// this call (`None` when it was released before).
    pub fn due_for_releasing(
        &mut self,
        gateway: &str,
        now_ms: i64,
    ) -> Vec<(String, Option<RolloutId>)> {
        let Some(targets) = self.targets.get_mut(gateway) else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (policy, target) in targets.iter_mut() {
            if target.state != TargetState::Pending {
                continue;
            }
            let mut released_now = None;
            if !target.released {
                let Some(rollout) = target.rollout.and_then(|r| self.rollouts.get_mut(&r)) else {
                    continue;
                };
                if rollout.budget(now_ms) == 0 {
                    continue;
                }
                target.released = true;
                rollout.record_release(now_ms);
                released_now = Some(rollout.id);
            }
            due.push((policy.clone(), released_now));
        }
        due
    }

    /// When [`release`](Self::release) may release more (a per-minute window reopens), if a
    /// rollout is waiting on one.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.rollouts
            .values()
            .filter(|r| r.aborted.is_none() && !r.unreleased.is_empty())
            .filter_map(|r| {
                let limit = r.staging.max_per_minute? as usize;
                (r.release_times.len() >= limit)
                    .then(|| r.release_times.front().map(|t| t + MINUTE_MS))
                    .flatten()
            })
            .min()
    }

    /// Forget rollouts that are no longer in progress (completed or aborted) and started before
    /// `before_ms`, so a long-running server does not keep every rollout ever made. Their
    /// targets stay tracked; [`summary`](Self::summary) of a forgotten rollout is `None`.
    /// Returns the forgotten ids.
    pub fn prune(&mut self, before_ms: i64) -> Vec<RolloutId> {
        let old: Vec<RolloutId> = self
            .rollouts
            .values()
            .filter(|r| {
                r.started_at_ms < before_ms && r.summary().state != RolloutState::InProgress
            })
            .map(|r| r.id)
            .collect();
        for id in &old {
            self.rollouts.remove(id);
            self.releasing.remove(id);
        }
        old
    }

    /// Abort a rollout by hand: nothing more is released.
    pub fn abort(&mut self, rollout: RolloutId, reason: impl Into<String>) -> Result<()> {
        let r = self
            .rollouts
            .get_mut(&rollout)
            .ok_or(Error::UnknownRollout(rollout))?;
        if r.aborted.is_none() {
            r.aborted = Some(reason.into());
        }
        Ok(())
    }

    /// The target of `gateway` and `policy`.
    pub fn status(&self, gateway: &str, policy: &str) -> Option<&TargetStatus> {
        self.targets.get(gateway)?.get(policy)
    }

    /// Every target of `gateway`, by policy name.
    pub fn gateway(&self, gateway: &str) -> impl Iterator<Item = &TargetStatus> {
        self.targets
            .get(gateway)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every target.
    pub fn targets(&self) -> impl Iterator<Item = &TargetStatus> {
        self.targets.values().flat_map(|m| m.values())
    }

    /// Counts by state for one rollout.
    pub fn summary(&self, rollout: RolloutId) -> Option<RolloutSummary> {
        self.rollouts.get(&rollout).map(Rollout::summary)
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> Vec<RolloutSummary> {
        self.rollouts.values().map(Rollout::summary).collect()
    }
}

#[cfg(test)]
mod tests;

//! What [`PolicyService`](super::PolicyService) hands back to its host: `policy_update` frames
//! to deliver ([`UpdateSink`]) and events to log ([`EventSink`], [`PolicyEvent`],
//! [`AuditEvent`]).

use gateway_proto::PolicyUpdate;
use gateway_proto::auth::Principal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Outgoing;

/// Delivers `policy_update` frames to gateways.
///
/// Called with the service's lock held, in the order the frames must reach each gateway, so it
/// must be quick and must not call back into the service: hand the frame to a channel or a
/// connection's send queue (a control hub's `send_frame`). A frame for a gateway that is not
/// connected may be dropped: the service sends what a gateway misses when it connects again
/// ([`PolicyService::gateway_connected`](super::PolicyService::gateway_connected)).
///
/// Closures `Fn(&str, PolicyUpdate)` and `tokio::sync::mpsc::UnboundedSender<Outgoing>` are
/// sinks.
pub trait UpdateSink: Send + Sync + 'static {
    /// Send `update` to `gateway_id`.
    fn send(&self, gateway_id: &str, update: PolicyUpdate);
}

impl<F> UpdateSink for F
where
    F: Fn(&str, PolicyUpdate) + Send + Sync + 'static,
{
    fn send(&self, gateway_id: &str, update: PolicyUpdate) {
        self(gateway_id, update)
    }
}

impl UpdateSink for tokio::sync::mpsc::UnboundedSender<Outgoing> {
    fn send(&self, gateway_id: &str, update: PolicyUpdate) {
        let outgoing = Outgoing {
            gateway_id: gateway_id.to_owned(),
            update,
        };
        // A closed receiver means nobody delivers any more; dropping is what the contract allows.
        let _ = tokio::sync::mpsc::UnboundedSender::send(self, outgoing);
    }
}

/// Receives every rollout and status change and every operator action, for an event stream
/// (SSE) and an audit log. Kinds and data shapes: [`PolicyEvent`] and [`AuditEvent`].
///
/// Called with the service's lock held, in order; keep it quick (append to a log, push to a
/// channel) and do not call back into the service. `tenant` is the tenant the event belongs to,
/// and the event carries only that tenant's data, so a host may show it to that tenant's
/// operators: the actor's tenant for operator actions and audit records, the gateway's for
/// statuses (statuses from a gateway the server does not know are not reported), and for
/// rollouts one event per tenant — the policy's owner and each tenant with a gateway in the
/// rollout — counted over that tenant's gateways. No event stands for "every tenant": `tenant`
/// is empty only for data of gateways that connected with an empty tenant.
///
/// Closures `Fn(&str, &str, serde_json::Value)` and
/// `tokio::sync::mpsc::UnboundedSender<PolicyEvent>` are sinks.
pub trait EventSink: Send + Sync + 'static {
    /// One event.
    fn event(&self, kind: &str, tenant: &str, data: Value);
}

impl<F> EventSink for F
where
    F: Fn(&str, &str, Value) + Send + Sync + 'static,
{
    fn event(&self, kind: &str, tenant: &str, data: Value) {
        self(kind, tenant, data)
    }
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<PolicyEvent> {
    fn event(&self, kind: &str, tenant: &str, data: Value) {
        let event = PolicyEvent {
            kind: kind.to_owned(),
            tenant: tenant.to_owned(),
            data,
        };
        let _ = self.send(event);
    }
}

/// One event, as an [`EventSink`] receives it (owned, for channels and tests).
///
/// | kind | when | `data` |
/// |---|---|---|
/// | `policy.published` | a publish created a version | `{policy, version, checksum, author, message}` |
/// | `policy.rolled_back` | a rollback created a version | `{policy, version, to_version, checksum, author, message}` |
/// | `policy.assigned` | an assignment was made or replaced | `{policy, target, version, author}` |
/// | `policy.unassigned` | an assignment was removed | `{policy, target, author}` |
/// | `policy.rollout` | a rollout started or changed state (`in_progress`, `completed`, `aborted`), once per tenant concerned | a [`RolloutView`](crate::RolloutView) counted over the event's tenant's gateways: `{id, policy, version, state, abort_reason, started_at_ms, total, released, pending, delivered, applied, rejected}` |
/// | `policy.status` | a gateway answered an update | `{gateway_id, policy, version, state, reason, code, running_version, target_state, rollout}` |
/// | `audit` | an operator action, successful or not | an [`AuditEvent`] |
///
/// `target` in assignment events is `{"tenant": id}`, `{"group": name}` or `{"gateway": id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEvent {
    /// The kind, one of the constants of this type.
    pub kind: String,
    /// The tenant the event belongs to; the data is that tenant's only (see [`EventSink`]).
    pub tenant: String,
    /// The event's data (see the table above).
    pub data: Value,
}

impl PolicyEvent {
    /// A publish created a version.
    pub const PUBLISHED: &'static str = "policy.published";
    /// A rollback created a version.
    pub const ROLLED_BACK: &'static str = "policy.rolled_back";
    /// An assignment was made or replaced.
    pub const ASSIGNED: &'static str = "policy.assigned";
    /// An assignment was removed.
    pub const UNASSIGNED: &'static str = "policy.unassigned";
    /// A rollout started or changed state.
    pub const ROLLOUT: &'static str = "policy.rollout";
    /// A gateway answered an update.
    pub const STATUS: &'static str = "policy.status";
    /// An operator action (see [`AuditEvent`]).
    pub const AUDIT: &'static str = "audit";
}

/// The `data` of an `audit` event: who did what to what, and how it ended.
///
/// | `action` | `target` | `detail` on success |
/// |---|---|---|
/// | `policy.publish` | `{policy}` | `{version, checksum, outcome, rollouts}` |
/// | `policy.rollback` | `{policy}` | `{to_version, version, checksum, outcome, rollouts}` |
/// | `policy.assign` | `{policy, assignment}` | `{version, created, rollouts}` |
/// | `policy.unassign` | `{policy, assignment}` | `{rollouts}` |
/// | `rollout.abort` | `{rollout}` | `{policy, version, reason}` |
/// | `gateway.set_groups` | `{gateway}` | `{groups}` |
///
/// `assignment` is `{"tenant": id}`, `{"group": name}` or `{"gateway": id}`; `rollouts` are
/// rollout ids. On failure `result` is the error code (`not_found`, `conflict`, ...) and
/// `detail` is `{message}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The principal's subject (the operator's name).
    pub actor: String,
    /// The principal's tenant.
    pub tenant: String,
    /// What was attempted (see the table above).
    pub action: String,
    /// What it was attempted on.
    pub target: Value,
    /// `ok`, or the error code the attempt failed with.
    pub result: String,
    /// What came of it, or `{message}` on failure.
    pub detail: Value,
}

impl AuditEvent {
    pub(crate) fn new<T>(
        actor: &Principal,
        action: &str,
        target: Value,
        result: &crate::Result<T>,
        detail: impl FnOnce(&T) -> Value,
    ) -> AuditEvent {
        let (result, detail) = match result {
            Ok(value) => ("ok".to_owned(), detail(value)),
            Err(e) => (
                e.code().as_str().to_owned(),
                serde_json::json!({ "message": e.to_string() }),
            ),
        };
        AuditEvent {
            actor: actor.subject.clone(),
            tenant: actor.tenant.clone(),
            action: action.to_owned(),
            target,
            result,
            detail,
        }
    }
}

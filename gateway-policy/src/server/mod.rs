//! Server side (feature `server`): the policy store with history, diff and rollback; assignment
//! of policies to tenants, groups and gateways; the rollout tracker; and the planner that builds
//! the `policy_update` each gateway needs. [`PolicyServer`] wires them together;
//! [`PolicyService`] runs it on tokio, with the operator HTTP API
//! ([`PolicyService::operator_router`]).

mod api;
mod assignment;
mod driver;
mod planner;
mod service;
mod sqlite;
mod store;
mod tracker;

pub use assignment::{Assignment, AssignmentTable, GatewayInfo, Target};
pub use driver::{
    AssignResult, AssignTarget, AssignmentView, AuditEvent, EventSink, GatewayPolicies,
    GatewayView, PolicyDiff, PolicyEvent, PolicyHead, PolicyRollout, PolicyService,
    PolicyServiceBuilder, PolicyServiceConfig, PublishResult, RolloutView, StateCounts, TargetView,
    UnassignResult, UpdateSink, VersionOutcome,
};
pub use planner::{UpdatePlanner, build_update, update_frame_len};
pub use service::{ChangeResult, Outgoing, PolicyServer, PolicyServerConfig};
pub use sqlite::SqlitePolicyStore;
pub use store::{PolicyStore, PublishOutcome};
pub use tracker::{
    AbortRule, RolloutId, RolloutRecord, RolloutState, RolloutSummary, RolloutTracker,
    StagedRollout, StatusEffect, TargetState, TargetStatus,
};

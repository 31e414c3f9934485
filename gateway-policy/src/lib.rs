//! # gateway-policy
//!
//! Versioned policies (JSON configuration documents) from publish on the server to applied on
//! every gateway: the same version everywhere, verified, and never half-applied.
//!
//! ## The model
//! * [`Policy`]`{ name, version, checksum, document, created_at, author, message }`: versions
//!   start at 1 and only move forward per name; every change records who and why.
//! * [`checksum`]: lowercase hex SHA-256 over the RFC 8785 (JCS) canonical form, so key order,
//!   whitespace and number spelling never change it, and other languages compute the same one.
//! * [`diff`] / [`apply_patch`] / [`apply_patch_verified`]: RFC 6902 JSON Patch between any two
//!   documents, and applying one with the checksum verified after.
//! * [`PolicySigner`] / [`PolicyVerifier`]: optional Ed25519 signatures over the checksum.
//!
//! ## Gateway side
//! [`PolicyApplier`] takes `policy_update` frames and answers `policy_status` frames. It applies
//! an update only if it is newer than what runs, its patch base is what runs (else
//! `base_mismatch`, and the server sends the full document), its checksum and signature verify
//! and the integrator's [`PolicyValidator`] accepts it; it persists atomically
//! ([`FileAppliedStore`]: write-temp + fsync + rename) before switching. On start it runs the
//! last applied policies; a stored policy that no longer verifies is reported, never a reason to
//! refuse to start. [`PolicyReader`] serves agents (`GET /v1/policy` with [`etag`] and
//! [`if_none_match`]).
//!
//! ## Server side (feature `server`, on by default)
//! [`PolicyStore`] ([`SqlitePolicyStore`]) keeps versions, history, assignments and gateway
//! membership, with [`PolicyStore::diff`] and [`PolicyStore::rollback`]. [`PolicyServer`] resolves
//! [`Assignment`]s (tenant, group, gateway) to desired versions, tracks every gateway × policy in a
//! [`RolloutTracker`] (pending, delivered, applied, rejected; staged rollouts with abort rules) and
//! builds the update each gateway needs: a patch against the version it runs when the server
//! still has it, the full document otherwise, signed when a key is configured, and never a
//! frame larger than gateways accept ([`PolicyServerConfig::max_update_frame_bytes`], 1 MiB by
//! default: a larger document is refused at publish with [`Error::PolicyTooLarge`]). Everything
//! takes the time as an argument; nothing reads a clock.
//!
//! [`PolicyService`] runs a [`PolicyServer`] on tokio for a server binary: SQLite on the blocking
//! pool, its own timer for staged rollouts, frames out through an [`UpdateSink`], rollout, status
//! and audit events out through an [`EventSink`], tenancy for operators, and the operator HTTP API
//! ([`PolicyService::operator_router`]; routes, bodies and error codes in `API.md`).
//!
//! ### Tenancy
//! One server serves many tenants; no tenant's operator can reach another tenant's gateways or
//! see its data:
//! * every gateway belongs to the tenant of its credentials (given when it connects), every
//!   [`Assignment`] to one tenant, and a gateway only ever receives assignments of its own tenant
//!   ([`Assignment::covers`]), whatever group or gateway id their target names;
//! * an operator names a gateway (sets its groups, assigns to it, reads its policies) only if it
//!   is a gateway of the operator's tenant, else `404 not_found`. Give the service the server's
//!   list of provisioned gateways ([`PolicyServiceBuilder::directory`], a
//!   [`GatewayDirectory`](gateway_proto::auth::GatewayDirectory) such as `StaticTokens`) so
//!   operators can prepare gateways before they first connect; without one, only gateways that
//!   connected in the operator's tenant can be named;
//! * a gateway that connects with another tenant than the one recorded keeps nothing of the old
//!   one: its groups, the assignments naming it and its rollout targets are dropped;
//! * policy names are one namespace, each owned by the tenant that first changed it through the
//!   service; groups are per tenant;
//! * every event and audit record goes to the tenant whose data it carries (rollout events once
//!   per tenant, counted over its gateways).
//!
//! ### Wiring into a server with a control hub
//! ```text
//! let policies = PolicyService::builder(PolicyServer::new(store, config)?, {
//!         let hub = hub.clone();
//!         move |gateway_id: &str, update: PolicyUpdate| {
//!             let _ = hub.send_frame(gateway_id, ControlFrame::PolicyUpdate(update)); // offline: dropped
//!         }
//!     })
//!     .events(move |kind: &str, tenant: &str, data: Value| { events.publish(kind, Some(tenant), data); })
//!     .directory_arc(tokens.clone()) // Arc<StaticTokens>: the provisioned gateways and their tenants
//!     .start().await?;
//! let app = app.merge(policies.operator_router(authenticator.clone()));
//! // From the hub's events:
//! //   SessionEstablished { gateway_id, tenant, hello, .. } => policies.gateway_connected(&gateway_id, &tenant, &hello.applied_policies)
//! //   Frame { frame: ControlFrame::PolicyStatus(s), gateway_id, .. } => policies.policy_status(&gateway_id, s.clone())
//! //   SessionClosed { gateway_id, .. } (of the current session only) => policies.gateway_disconnected(&gateway_id)
//! ```
//!
//! ## Example: the service, with an in-memory update sink
//!
//! ```
//! # #[cfg(feature = "server")] {
//! use std::sync::{Arc, Mutex};
//!
//! use gateway_policy::{
//!     AcceptAll, ApplierConfig, AssignTarget, MemoryAppliedStore, PolicyApplier, PolicyServer,
//!     PolicyServerConfig, PolicyService, RolloutState, SqlitePolicyStore,
//! };
//! use gateway_proto::PolicyUpdate;
//! use gateway_proto::auth::{Principal, Role, StaticTokens};
//! use serde_json::{Value, json};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // Where frames go: a server hands them to its control hub; here, a list.
//! let outbox: Arc<Mutex<Vec<(String, PolicyUpdate)>>> = Arc::default();
//! let events: Arc<Mutex<Vec<String>>> = Arc::default();
//! let (sink, log) = (outbox.clone(), events.clone());
//! // The server's tokens: who may call, and which tenant each gateway belongs to.
//! let tokens = Arc::new(
//!     StaticTokens::new()
//!         .with("s3cret", Principal::new("acme", "ann", Role::Admin))
//!         .with("gw-1-token", Principal::new("acme", "gw-1", Role::Gateway)),
//! );
//! let store = SqlitePolicyStore::open_in_memory().unwrap();
//! let server = PolicyServer::new(store, PolicyServerConfig::default()).unwrap();
//! let service = PolicyService::builder(server, move |gateway_id: &str, update: PolicyUpdate| {
//!     sink.lock().unwrap().push((gateway_id.to_owned(), update));
//! })
//! .events(move |kind: &str, _tenant: &str, _data: Value| log.lock().unwrap().push(kind.into()))
//! .directory_arc(tokens.clone())
//! .start()
//! .await
//! .unwrap();
//!
//! // The operator API, to merge into the server's router.
//! let _operator_routes: axum::Router = service.operator_router(tokens);
//!
//! // A gateway connects, running nothing yet.
//! let (mut gateway, _) =
//!     PolicyApplier::open(ApplierConfig::default(), MemoryAppliedStore::new(), AcceptAll).unwrap();
//! service.gateway_connected("gw-1", "acme", &gateway.applied_policies()).await.unwrap();
//!
//! // An operator publishes a policy and assigns it to the tenant (what the routes call).
//! let ann = Principal::new("acme", "ann", Role::Admin);
//! service.publish(&ann, "firewall", json!({"mode": "enforce"}), "first", None).await.unwrap();
//! let assigned = service
//!     .assign(&ann, "firewall", AssignTarget::Tenant("acme".into()), None, None)
//!     .await
//!     .unwrap();
//!
//! // The update went out; the gateway applies it and answers with its status.
//! let sent: Vec<_> = outbox.lock().unwrap().drain(..).collect();
//! assert_eq!(sent.len(), 1);
//! for (gateway_id, update) in sent {
//!     let status = gateway.apply(&update, 0);
//!     service.policy_status(&gateway_id, status).await.unwrap();
//! }
//! let rollout = service.rollout("acme", assigned.rollouts[0].id).await.unwrap();
//! assert_eq!((rollout.applied, rollout.state), (1, RolloutState::Completed));
//! let kinds = events.lock().unwrap().clone();
//! assert!(kinds.contains(&"policy.published".to_owned()) && kinds.contains(&"audit".to_owned()));
//! # });
//! # }
//! ```
//!
//! ## Example: publish on the server, apply on a gateway
//!
//! ```
//! # #[cfg(feature = "server")] {
//! use gateway_policy::{
//!     AcceptAll, ApplierConfig, Assignment, MemoryAppliedStore, PolicyApplier, PolicyLookup,
//!     PolicyServer, PolicyServerConfig, PolicySigner, SqlitePolicyStore, Target,
//! };
//! use gateway_proto::{PolicyContent, PolicyState};
//! use serde_json::json;
//!
//! // Server: a store, a signing key, a policy assigned to every gateway of tenant "acme".
//! let secret = "11".repeat(32);
//! let public = PolicySigner::from_hex(&secret).unwrap().verifier().to_hex();
//! let store = SqlitePolicyStore::open_in_memory().unwrap();
//! let config = PolicyServerConfig { signing_key: Some(secret), ..Default::default() };
//! let mut server = PolicyServer::new(store, config).unwrap();
//! let allow: Vec<u16> = (1000..1100).collect();
//! server.publish("firewall", json!({"mode": "audit", "allow": allow}), "ann", "first", None, 0).unwrap();
//! server.assign(
//!     Assignment {
//!         policy: "firewall".into(),
//!         tenant: "acme".into(),
//!         target: Target::Tenant("acme".into()),
//!         version: None, // follow the latest version
//!         assigned_at: 0,
//!         author: "ann".into(),
//!     },
//!     None,
//!     0,
//! ).unwrap();
//!
//! // Gateway: requires the server's signature; persists to memory here (files in production).
//! let gateway_config = ApplierConfig { public_key: Some(public), ..Default::default() };
//! let (mut applier, _report) =
//!     PolicyApplier::open(gateway_config, MemoryAppliedStore::new(), AcceptAll).unwrap();
//!
//! // The gateway connects: its hello lists what it runs (nothing), the server sends version 1.
//! let updates = server.connect("gw-1", "acme", &applier.applied_policies(), 1).unwrap();
//! for update in &updates {
//!     let status = applier.apply(update, 2);
//!     assert_eq!(status.state, PolicyState::Applied);
//!     server.handle_status("gw-1", &status, 2).unwrap();
//! }
//!
//! // A new version goes out as a signed patch against version 1.
//! let change = server
//!     .publish("firewall", json!({"mode": "enforce", "allow": allow}), "ann", "enforce", None, 3)
//!     .unwrap();
//! let update = &change.updates[0].update;
//! assert!(matches!(update.content, PolicyContent::Patch { base_version: 1, .. }));
//! let status = applier.apply(update, 4);
//! assert_eq!(status.running_version, Some(2));
//! server.handle_status("gw-1", &status, 4).unwrap();
//! let summary = server.rollout_summary(change.rollouts[0]).unwrap();
//! assert_eq!(summary.applied, 1);
//!
//! // Agents read the running document; the checksum is the ETag.
//! let reader = applier.reader();
//! let PolicyLookup::Current { etag, policy } = reader.lookup("firewall", None) else { panic!() };
//! assert_eq!(policy.document["mode"], "enforce");
//! assert!(matches!(reader.lookup("firewall", Some(&etag)), PolicyLookup::NotModified { .. }));
//! # }
//! ```
//!
//! ## Metrics
//! Through the `metrics` facade: `gateway_policy_updates_total{result,code}` and
//! `gateway_policy_running_version{policy}` (gateway), `gateway_policy_publishes_total{result}`,
//! `gateway_policy_updates_sent_total{content}`, `gateway_policy_statuses_total{state}` and
//! `gateway_policy_rollouts_aborted_total` (server).
#![forbid(unsafe_code)]
// The crate docs link the server-side items, which a build without `server` does not have.
#![cfg_attr(not(feature = "server"), allow(rustdoc::broken_intra_doc_links))]
#![warn(missing_docs)]

mod applier;
mod checksum;
mod error;
mod etag;
#[cfg(feature = "http")]
mod http;
mod patch;
mod policy;
#[cfg(feature = "server")]
mod server;
mod signing;

pub use applier::{
    AcceptAll, AppliedPolicyStore, ApplierConfig, FileAppliedStore, InvalidStoredPolicy,
    LoadProblem, LoadReport, MemoryAppliedStore, PolicyApplier, PolicyLookup, PolicyReader,
    PolicyValidator, RunningPolicy, StagedWrite, StoredPolicy,
};
pub use checksum::{
    canonical_json, canonicalize_text, checksum, checksum_of_canonical, verify_checksum,
};
pub use error::{Error, Result};
pub use etag::{etag, if_none_match};
#[cfg(feature = "http")]
pub use http::{HEADER_POLICY_NAME, HEADER_POLICY_VERSION, policy_router};
pub use patch::{apply_patch, apply_patch_verified, diff};
pub use policy::{MAX_NAME_LEN, Policy, PolicyVersionInfo, validate_name};
#[cfg(feature = "server")]
pub use server::{
    AbortRule, AssignResult, AssignTarget, Assignment, AssignmentTable, AssignmentView, AuditEvent,
    ChangeResult, EventSink, GatewayInfo, GatewayPolicies, GatewayView, Outgoing, PolicyDiff,
    PolicyEvent, PolicyHead, PolicyRollout, PolicyServer, PolicyServerConfig, PolicyService,
    PolicyServiceBuilder, PolicyServiceConfig, PolicyStore, PublishOutcome, PublishResult,
    RolloutId, RolloutRecord, RolloutState, RolloutSummary, RolloutTracker, RolloutView,
    SqlitePolicyStore, StagedRollout, StateCounts, StatusEffect, Target, TargetState, TargetStatus,
    TargetView, UnassignResult, UpdatePlanner, UpdateSink, VersionOutcome, build_update,
    update_frame_len,
};
pub use signing::{PolicySigner, PolicyVerifier};

/// The types integrators move into tasks or share behind a mutex must be `Send` (+ `Sync` for
/// the read handle); this fails to compile if a change breaks that.
#[allow(dead_code)]
fn assert_thread_safe() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<PolicyApplier<FileAppliedStore>>();
    send_sync::<PolicyReader>();
    send_sync::<PolicySigner>();
    #[cfg(feature = "server")]
    send::<PolicyServer<SqlitePolicyStore>>();
    #[cfg(feature = "server")]
    send_sync::<SqlitePolicyStore>();
}

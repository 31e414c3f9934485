//! # gateway-policy
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod applier;
mod checksum;
mod error;
mod etag;
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
pub use patch::{apply_patch, apply_patch_verified, diff};
pub use policy::{MAX_NAME_LEN, Policy, PolicyVersionInfo, validate_name};
#[cfg(feature = "server")]
pub use server::{
    AbortRule, Assignment, AssignmentTable, ChangeResult, GatewayInfo, Outgoing, PolicyServer,
    PolicyServerConfig, PolicyStore, PublishOutcome, RolloutId, RolloutState, RolloutSummary,
    RolloutTracker, SqlitePolicyStore, StagedRollout, StatusEffect, Target, TargetState,
    TargetStatus, UpdatePlanner, build_update,
};
pub use signing::{PolicySigner, PolicyVerifier};

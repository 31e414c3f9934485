//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Rejections of a policy update on the gateway are not errors of the API: they come back as a
/// `rejected` [`gateway_proto::PolicyStatus`]. This enum is for calls that cannot complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or an argument is out of range; `param_name` names it.
    #[error("invalid parameter `{param_name}`: {reason}")]
    InvalidParameter {
        /// The parameter, as spelt in the config struct or the function signature.
        param_name: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// A policy name breaks the naming rule (see [`crate::validate_name`]).
    #[error("invalid policy name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A document could not be put in canonical (RFC 8785) form, or JSON text could not be parsed.
    #[error("cannot canonicalise the policy document: {0}")]
    Canonical(String),

    /// A JSON Patch is malformed (not an array of RFC 6902 operations) or does not apply to the
    /// base document (a path that does not exist, a failed `test`).
    #[error("JSON patch does not apply: {0}")]
    Patch(String),

    /// The document does not hash to the checksum it was sent or stored with.
    #[error("checksum mismatch: expected {expected}, the document hashes to {actual}")]
    ChecksumMismatch {
        /// The checksum that came with the document.
        expected: String,
        /// The checksum of the document as received.
        actual: String,
    },

    /// A signature or a key is malformed, or a signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),

    /// The named policy has no version in the store.
    #[error("policy {name:?} does not exist")]
    UnknownPolicy {
        /// The policy name.
        name: String,
    },

    /// The policy exists but not at this version.
    #[error("policy {name:?} has no version {version}")]
    UnknownVersion {
        /// The policy name.
        name: String,
        /// The version asked for.
        version: u64,
    },

    /// No rollout has this id.
    #[error("rollout {0} does not exist")]
    UnknownRollout(u64),

    /// A file of the gateway's policy store could not be read or written.
    #[error("policy store I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Stored data could not be decoded (a damaged file or database row).
    #[error("stored policy data is corrupt ({what}): {reason}")]
    Corrupt {
        /// Which file or row.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A policy name belongs to another tenant (see `PolicyService`: the first tenant to change
    /// a name through the service owns it).
    #[error("policy name {name:?} belongs to another tenant; choose another name")]
    NameTaken {
        /// The policy name.
        name: String,
    },

    /// No gateway with this id belongs to the caller's tenant (the same answer whether it does
    /// not exist or belongs to another tenant).
    #[error(
        "gateway {gateway_id:?} is not a gateway of this tenant (it must be provisioned in the tenant, or, on a server without a gateway directory, have connected in it)"
    )]
    UnknownGateway {
        /// The gateway id.
        gateway_id: String,
    },

    /// The policy has no assignment to this target.
    #[error("policy {policy:?} has no assignment to {target}")]
    UnknownAssignment {
        /// The policy name.
        policy: String,
        /// The target, as `kind:id`.
        target: String,
    },

    /// The caller may not do this (for example assign a policy to another tenant).
    #[error("not allowed: {0}")]
    Forbidden(String),

    /// The rollout already completed, so there is nothing left to abort.
    #[error("rollout {0} already completed; there is nothing left to abort")]
    RolloutFinished(u64),

    /// A policy document is too large to reach a gateway: the `policy_update` frame carrying it
    /// would exceed the largest frame gateways accept
    /// ([`PolicyServerConfig::max_update_frame_bytes`](crate::PolicyServerConfig::max_update_frame_bytes)).
    #[error(
        "policy {name:?} is too large to send: its policy_update frame would be {frame_bytes} bytes, over the {limit}-byte limit of a control frame; make the document smaller or split it into several policies"
    )]
    PolicyTooLarge {
        /// The policy name.
        name: String,
        /// The encoded size of the frame that would carry the full document.
        frame_bytes: usize,
        /// The limit it exceeds.
        limit: usize,
    },

    /// The policy service cannot run the call: no tokio runtime, or the runtime is shutting down.
    #[error("policy service unavailable: {0}")]
    Unavailable(String),

    /// The SQLite policy store failed.
    #[cfg(feature = "server")]
    #[error("policy store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl Error {
    /// The stable error code an API answers this error with (its HTTP status is
    /// [`ErrorCode::http_status`](gateway_proto::ErrorCode::http_status)): `invalid_request`
    /// for bad arguments, `not_found` for unknown policies, versions, rollouts, gateways and
    /// assignments, `conflict` for a taken name or a finished rollout, `payload_too_large` for a
    /// document too large to send, `forbidden`, `unavailable`, and `internal` for storage failures and damaged data.
    pub fn code(&self) -> gateway_proto::ErrorCode {
        use gateway_proto::ErrorCode;
        match self {
            Error::InvalidParameter { .. }
            | Error::InvalidName { .. }
            | Error::Canonical(_)
            | Error::Patch(_) => ErrorCode::InvalidRequest,
            Error::UnknownPolicy { .. }
            | Error::UnknownVersion { .. }
            | Error::UnknownRollout(_)
            | Error::UnknownGateway { .. }
            | Error::UnknownAssignment { .. } => ErrorCode::NotFound,
            Error::NameTaken { .. } | Error::RolloutFinished(_) => ErrorCode::Conflict,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::PolicyTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::ChecksumMismatch { .. }
            | Error::BadSignature(_)
            | Error::Io { .. }
            | Error::Corrupt { .. } => ErrorCode::Internal,
            #[cfg(feature = "server")]
            Error::Sqlite(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(param_name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            param_name,
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::ErrorCode;

    #[test]
    fn codes_follow_the_api_contract() {
        let cases = [
            (Error::invalid("x", "y"), ErrorCode::InvalidRequest),
            (
                Error::UnknownPolicy { name: "fw".into() },
                ErrorCode::NotFound,
            ),
            (Error::UnknownRollout(3), ErrorCode::NotFound),
            (Error::NameTaken { name: "fw".into() }, ErrorCode::Conflict),
            (Error::RolloutFinished(3), ErrorCode::Conflict),
            (Error::Forbidden("no".into()), ErrorCode::Forbidden),
            (
                Error::PolicyTooLarge {
                    name: "fw".into(),
                    frame_bytes: 2,
                    limit: 1,
                },
                ErrorCode::PayloadTooLarge,
            ),
            (
                Error::Unavailable("stopping".into()),
                ErrorCode::Unavailable,
            ),
            (
                Error::Corrupt {
                    what: "row".into(),
                    reason: "bad".into(),
                },
                ErrorCode::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }
}

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

    /// The SQLite policy store failed.
    #[cfg(feature = "server")]
    #[error("policy store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl Error {
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

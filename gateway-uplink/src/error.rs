//! The crate's error type.

use std::path::PathBuf;

/// A boxed error from a pluggable part (a record source, a sink).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid configuration `{param}`: {reason}")]
    InvalidConfig {
        /// The parameter, as a path into the config (`retry.cap_ms`).
        param: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// A file the configuration names could not be read.
    #[error("cannot read {what} `{}`: {source}", path.display())]
    ReadFile {
        /// What the file was meant to hold (`client certificate`).
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS material (certificate, key, CA) could not be parsed or used.
    #[error("TLS setup failed: {reason}")]
    Tls {
        /// What failed, naming the file or the setting.
        reason: String,
    },
    /// The HTTP client could not be built (an invalid proxy variable, for example).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The record source (the buffer) failed; the uplink keeps running and retries.
    #[error("the record source failed while {operation}: {source}")]
    Source {
        /// What the uplink was doing (`leasing a batch`).
        operation: &'static str,
        /// The source's own error.
        #[source]
        source: BoxError,
    },
    /// The SQLite record store failed.
    #[cfg(feature = "server")]
    #[error("record store failed while {operation}: {source}")]
    Store {
        /// What the store was doing (`opening the database`).
        operation: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored record could not be decoded; the database was written by something else.
    #[cfg(feature = "server")]
    #[error("record store holds an undecodable record at position {position}: {reason}")]
    CorruptRecord {
        /// Position of the record.
        position: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The uplink was shut down; create a new one.
    #[error("the uplink has been shut down")]
    ShutDown,
    /// A background task panicked or was cancelled (a bug: please report it).
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn invalid(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            param: param.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn source(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Source {
            operation,
            source: source.into(),
        }
    }

    #[cfg(feature = "server")]
    pub(crate) fn store(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| Error::Store { operation, source }
    }
}

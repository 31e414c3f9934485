//! The one error type of this crate.

use std::path::PathBuf;

use crate::LeaseId;

/// Everything that can go wrong with a [`Buffer`](crate::Buffer).
///
/// Every message says what happened and what to do about it. After any error except
/// [`Error::Closed`] the buffer stays open and keeps every record it had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`BufferConfig`](crate::BufferConfig) parameter is out of range.
    #[error("invalid buffer configuration: `{param}` {reason}")]
    InvalidConfig {
        /// The parameter's name, as in the config struct.
        param: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument of a call is out of range (for example `max_records == 0`).
    #[error("invalid argument `{param}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        param: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The append does not fit under `quota_bytes`, and the overflow policy (or the records still
    /// leased) leaves nothing to evict. Nothing of the append was stored.
    #[error(
        "buffer quota exceeded: the append needs {needed} bytes, {used} of {quota} bytes are in use \
         ({unevictable} of them leased or, under reject_newest, not evictable); retry once the uplink \
         has drained the backlog, or raise `quota_bytes`, or set `overflow = \"drop_oldest\"`"
    )]
    QuotaExceeded {
        /// Encoded bytes of the refused append.
        needed: u64,
        /// Encoded bytes stored when the append was refused.
        used: u64,
        /// The configured quota.
        quota: u64,
        /// Bytes that could not be evicted to make room (all of them under `RejectNewest`; the
        /// leased ones under `DropOldest`).
        unevictable: u64,
    },

    /// The disk is full, or the file reached `max_file_bytes` (`SQLITE_FULL`). The write that hit
    /// it was rolled back; the buffer stays open, keeps what it had, and accepts writes again
    /// once space returns (acks free space inside the file).
    #[error(
        "no space left for buffer {path}: the disk is full or the file reached `max_file_bytes`; \
         nothing of this write was stored. Free disk space or raise `max_file_bytes`; the buffer \
         keeps working and accepts writes again once space returns"
    )]
    DiskFull {
        /// The buffer file.
        path: PathBuf,
    },

    /// The file exists but is not a gateway buffer (not SQLite, or a SQLite database of some
    /// other application). It was left untouched.
    #[error(
        "{path} is not a gateway-buffer file ({reason}); it was left untouched. Point the buffer \
         at a new path, or move that file away if it is not needed"
    )]
    NotABuffer {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },

    /// The file was written by a newer release, in a format this release cannot read. It was
    /// left untouched.
    #[error(
        "{path} is a gateway-buffer file of format version {found}, newer than the versions this \
         release reads (up to {supported}); it was left untouched. Run the newer release that wrote \
         it until it has drained, or point this one at another path"
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The format version found in the file.
        found: i64,
        /// The newest format version this release reads.
        supported: i64,
    },

    /// SQLite reports the file as damaged. It was left untouched.
    #[error(
        "buffer file {path} is corrupt ({detail}); it was left untouched. Move it aside (records \
         may be salvageable with the sqlite3 shell's `.recover`) and start a new buffer"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's description.
        detail: String,
    },

    /// Another buffer (in this or another process) has the file open. A buffer file has exactly
    /// one owner, because leases live in its memory.
    #[error(
        "buffer file {path} is in use by another process or another open Buffer; close that one \
         first (Buffer::close) or use another path"
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },

    /// The lease is not live: it was already acked, released or dead-lettered, it expired
    /// (`lease_timeout`) and its records went back to the queue, or it belongs to an earlier open
    /// of the buffer. Its records were not removed by this call and will be delivered again.
    #[error(
        "lease {lease} is not live (already acked or released, expired after `lease_timeout`, or \
         from an earlier open of the buffer); its records are back in the queue and will be leased \
         again"
    )]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },

    /// The buffer was closed with [`Buffer::close`](crate::Buffer::close), or its writer thread
    /// stopped.
    #[error("the buffer is closed; open it again with Buffer::open")]
    Closed,

    /// A file-system operation on the buffer's path failed.
    #[error("I/O error on buffer file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// SQLite failed in a way not covered above (I/O error, out of memory, ...). The operation
    /// was rolled back.
    #[error("SQLite error on buffer file {path} while {context}: {message}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// What the buffer was doing.
        context: &'static str,
        /// SQLite's message.
        message: String,
    },
}

impl Error {
    /// Map a SQLite error to the typed variants where one fits.
    pub(crate) fn sqlite(
        path: &std::path::Path,
        context: &'static str,
        e: rusqlite::Error,
    ) -> Self {
        use rusqlite::ErrorCode as C;
        let path = path.to_path_buf();
        match e.sqlite_error_code() {
            Some(C::DiskFull) => Error::DiskFull { path },
            Some(C::DatabaseBusy | C::DatabaseLocked) => Error::Locked { path },
            Some(C::DatabaseCorrupt) => Error::Corrupt {
                path,
                detail: e.to_string(),
            },
            Some(C::NotADatabase) => Error::NotABuffer {
                path,
                reason: format!("SQLite says: {e}"),
            },
            _ => Error::Storage {
                path,
                context,
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_full_maps_to_disk_full() {
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let mapped = Error::sqlite(std::path::Path::new("/x/buf.db"), "appending", e);
        assert!(matches!(mapped, Error::DiskFull { .. }), "{mapped:?}");
        assert!(mapped.to_string().contains("/x/buf.db"));
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::NewerFormat {
            path: "/b.db".into(),
            found: 9,
            supported: 1,
        };
        assert!(e.to_string().contains("left untouched"), "{e}");
        let e = Error::QuotaExceeded {
            needed: 10,
            used: 90,
            quota: 95,
            unevictable: 90,
        };
        assert!(e.to_string().contains("quota_bytes"), "{e}");
    }
}

//! The values the buffer hands out: receipts, leases, dead letters and statistics.

use std::fmt;

use gateway_proto::{BufferPressure, Bytes, Record, RecordId};
use serde::Serialize;

/// What a successful [`Buffer::append`](crate::Buffer::append) committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The ids of the appended records, in the order given (assigned UUIDv7 where a record had
    /// none).
    pub ids: Vec<RecordId>,
    /// Encoded (protobuf) bytes the records take in the queue.
    pub bytes: u64,
}

/// Identifies a lease. Unique for the life of the file: it carries the number of the open that
/// issued it, so a lease from before a restart is never mistaken for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId {
    pub(crate) generation: u64,
    pub(crate) number: u64,
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.generation, self.number)
    }
}

/// Records handed to one consumer until it calls [`ack`](crate::Buffer::ack),
/// [`release`](crate::Buffer::release) or [`dead_letter`](crate::Buffer::dead_letter), or
/// `expires_at_ms` passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The lease's id.
    pub id: LeaseId,
    /// The records, oldest first; every `id` is `Some`.
    pub records: Vec<Record>,
    /// Encoded bytes of the records.
    pub bytes: u64,
    /// When the lease expires and its records return to the queue (ms since the Unix epoch, by
    /// the buffer's clock).
    pub expires_at_ms: i64,
}

/// A lease whose records are still in their stored form; see
/// [`Buffer::lease_encoded`](crate::Buffer::lease_encoded).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedLease {
    /// The lease's id.
    pub id: LeaseId,
    /// The records, oldest first, each a protobuf `gateway.v1.Record` message with its id set.
    pub records: Vec<Bytes>,
    /// Encoded bytes of the records.
    pub bytes: u64,
    /// When the lease expires (ms since the Unix epoch, by the buffer's clock).
    pub expires_at_ms: i64,
}

/// A record of a lease that the far end refused for good, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Index into [`Lease::records`].
    pub index: usize,
    /// Stable code, e.g. the server's `invalid_stream`.
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
}

/// A dead letter as stored: the record, why it was refused and when.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// The refused record.
    pub record: Record,
    /// Stable code given with the refusal.
    pub code: String,
    /// Reason given with the refusal.
    pub reason: String,
    /// When it was dead-lettered (ms since the Unix epoch, by the buffer's clock).
    pub at_ms: i64,
}

/// Why a record left the queue other than by `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionReason {
    /// Older than `retention`.
    Age,
    /// Evicted to make room under `quota_bytes` (overflow policy `DropOldest`).
    Quota,
}

impl EvictionReason {
    /// The snake_case name used in metrics labels and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            EvictionReason::Age => "age",
            EvictionReason::Quota => "quota",
        }
    }
}

/// A snapshot of the buffer's state. Totals count since this open of the buffer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BufferStats {
    /// Records in the queue (leased or not).
    pub records: u64,
    /// Encoded bytes of those records; this is what `quota_bytes` limits.
    pub bytes: u64,
    /// Records under a live lease.
    pub leased_records: u64,
    /// Encoded bytes under a live lease.
    pub leased_bytes: u64,
    /// Live leases.
    pub leases: u64,
    /// Age of the oldest record in the queue (ms, by the buffer's clock); `None` when empty.
    pub oldest_age_ms: Option<i64>,
    /// Size of the database file plus its write-ahead log, in bytes.
    pub file_bytes: u64,
    /// The configured quota.
    pub quota_bytes: u64,
    /// Current pressure level.
    pub pressure: BufferPressure,
    /// Records appended since open.
    pub appended_total: u64,
    /// Records acked since open (including the accepted part of dead-lettered leases).
    pub acked_total: u64,
    /// Records evicted for age since open.
    pub evicted_age_total: u64,
    /// Records evicted for quota since open.
    pub evicted_quota_total: u64,
    /// Records moved to the dead-letter table since open.
    pub dead_lettered_total: u64,
    /// Dead letters stored now.
    pub dead_letters: u64,
    /// Dead letters dropped since open because there were more than `max_dead_letters`.
    pub dead_letters_dropped_total: u64,
    /// Stored records that could not be decoded and were moved to the dead letters (code
    /// `undecodable_record`) since open.
    pub undecodable_total: u64,
    /// Transactions committed by the writer since open (one per group commit).
    pub commits_total: u64,
}

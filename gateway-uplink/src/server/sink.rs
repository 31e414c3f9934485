//! Where the receiver puts the records it accepted: the [`RecordSink`] trait.

use std::future::Future;
use std::time::Duration;

use gateway_proto::auth::Principal;
use gateway_proto::{BatchId, ErrorCode, Record};

/// Who sent a batch and when it arrived, handed to the sink with the records.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestContext {
    /// The authenticated caller. Dedup and reads are scoped by its tenant.
    pub principal: Principal,
    /// The batch id (also the `Idempotency-Key`).
    pub batch_id: BatchId,
    /// The gateway id of the credentials: a gateway's own id, empty when the caller is not a
    /// gateway (an agent posting to its gateway). A batch's `gateway_id` is only checked
    /// against it, never trusted in its place.
    pub gateway_id: String,
    /// Receiver's wall-clock time, ms since the epoch.
    pub received_at_ms: i64,
}

/// What a sink did with the records it was handed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkOutcome {
    /// Records stored for the first time.
    pub accepted: u32,
    /// Records already stored earlier (same tenant and id): not stored again.
    pub duplicates: u32,
}

/// Why a sink refused records. Each variant maps to one HTTP answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink is full for now (a gateway buffer at `Critical`, a quota reached):
    /// 503 with `code` (normally `buffer_critical`) and `Retry-After`.
    #[error("{message}")]
    Backpressure {
        /// The error code to answer with.
        code: ErrorCode,
        /// Human-readable sentence.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The records can never be taken as sent (for example, larger than the sink's whole
    /// capacity): 413 `payload_too_large`, so the client splits or dead-letters them.
    #[error("{message}")]
    TooLarge {
        /// Human-readable sentence.
        message: String,
    },
    /// Storage is failing (disk error, database locked too long): 503 `unavailable`.
    #[error("{message}")]
    Unavailable {
        /// Human-readable sentence.
        message: String,
        /// When to try again, if known.
        retry_after: Option<Duration>,
    },
    /// A bug or an unexpected state: 500 `internal`.
    #[error("{message}")]
    Internal {
        /// Human-readable sentence.
        message: String,
    },
}

/// Storage behind `POST /v1/records`.
///
/// The receiver authenticates, decodes, validates and rate-limits; the sink gets only the
/// valid records of a batch, in order, each with an id (records sent without one got a
/// fresh UUIDv7 from [`Record::ensure_id`]). A sink must be idempotent per
/// `(principal.tenant, record id)`: a record it has stored before is counted in
/// [`SinkOutcome::duplicates`] and not stored again, so a client may re-send a batch whose
/// answer it never saw. `accepted + duplicates` must equal the number of records handed in.
pub trait RecordSink: Send + Sync + 'static {
    /// A cheap check before the body is even read: refuse early when the sink cannot take
    /// anything now (a critical buffer). The default admits everything.
    fn admit(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Store `records` sent in one batch.
    fn store(
        &self,
        context: &IngestContext,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<SinkOutcome, SinkError>> + Send;
}

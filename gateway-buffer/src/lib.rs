//! # gateway-buffer
//!
//! A durable store-and-forward queue of [`gateway_proto::Record`]s in one SQLite file: while
//! the cloud is away, every record an agent handed over lives here.
//!
//! ## Invariants
//!
//! 1. **An append that returned `Ok` is committed.** The caller is answered only after the
//!    `COMMIT` of the transaction holding its records; it survives `kill -9` under either
//!    [`Durability`], and power loss under [`Durability::Full`].
//! 2. **A record leaves the queue only by `ack` / `dead_letter`, or by eviction** — age
//!    (`retention`) or quota (overflow `DropOldest`) — and every eviction is counted by reason
//!    (in [`BufferStats`] and the `gateway_buffer_evicted_records_total{reason}` metric) and
//!    logged. Leased records are never evicted.
//! 3. **No record is in two live leases.** Leases hand out the oldest records not leased;
//!    released and expired leases put their records back ahead of newer ones, in order.
//! 4. **Appends are all-or-nothing**, and a refused or failed append changes nothing.
//! 5. **The buffer never deletes or overwrites a file it did not create**: a file that is not a
//!    buffer, or of a newer format, is refused before SQLite writes a byte to it.
//!
//! ## On-disk layout (format version 1)
//!
//! One SQLite database in WAL mode, `application_id = 0x47574246` (`GWBF`), auto-vacuum
//! `INCREMENTAL`, opened with `locking_mode = EXCLUSIVE` (one owner per file):
//!
//! | table | columns | role |
//! |---|---|---|
//! | `buffer_schema` | `version, created_ms, created_by` | one row per format version the file went through; the highest is the format |
//! | `buffer_meta` | `key, value` | `generation`: how many times the file was opened (lease ids carry it) |
//! | `records` | `seq INTEGER PRIMARY KEY, appended_ms, data BLOB` | the queue; `data` is the protobuf `gateway.v1.Record` (`gateway_proto::pb::Record`) with its id always set |
//! | `dead_letters` | `id, record BLOB, code, reason, at_ms` | records the far end refused for good, or that no longer decode |
//!
//! `seq` grows with every append, so the queue order is the rowid order and acks delete whole
//! rowid ranges. Records are protobuf so a file written by one release reads in the next:
//! decoders skip fields they do not know, and the format version table lets a later release
//! migrate the tables themselves (a file of a *newer* format is refused with
//! [`Error::NewerFormat`], never rewritten).
//!
//! ## Recovery
//!
//! Lease state lives only in memory: the highest `seq` ever leased (the cursor), the live leases
//! and the records returned to the queue. Opening the file therefore returns every lease of the
//! previous run by construction, and SQLite's WAL recovery brings back exactly the committed
//! transactions. Counters are recomputed from the table at open; totals in [`BufferStats`]
//! count since that open. A stored record that no longer decodes is moved to the dead letters
//! (code `undecodable_record`) instead of blocking the queue.
//!
//! ## Concurrency and group commit
//!
//! One OS thread owns the connection. Every call on a [`Buffer`] (a cheap clone, `Send + Sync`)
//! sends a request and awaits the answer, so async callers never block. Each time the writer
//! wakes it takes every queued request and runs consecutive writes in one transaction, so 64
//! tasks appending one record each cost one commit (and, under `Full`, one `fsync`), not 64.
//! The writer thread only runs SQL: records are encoded to protobuf in the appending task and
//! decoded in the leasing task. An append of more than 512 records streams to the writer in
//! chunks of 256, so the writer inserts one chunk while the caller encodes the next (a
//! savepoint keeps such an append all-or-nothing). If a group's transaction fails (disk full),
//! it is rolled back and each request is replayed alone, so only the request that hit the
//! problem sees the error. [`Buffer::lease_encoded`] hands out the stored protobuf bytes, for a
//! consumer that forwards them without decoding.
//!
//! ## Space
//!
//! `quota_bytes` limits the encoded bytes of the queued records; pressure is
//! [`BufferPressure::Normal`](gateway_proto::BufferPressure) below `warning_threshold` (0.80),
//! `Warning` below `critical_threshold` (0.95), `Critical` above, readable with
//! [`Buffer::pressure`] and watchable with [`Buffer::subscribe_pressure`]. `max_file_bytes`
//! caps the file itself; a full disk or a full file is [`Error::DiskFull`] on the write that hit
//! it, and the buffer keeps working once space returns. Freed pages go back to the file system
//! by incremental vacuum during maintenance: at most 512 pages (2 MiB) per pass while records
//! remain (moving live pages is what costs), all of them once the queue is empty.
//!
//! ## Metrics and spans
//!
//! Through the `metrics` facade (whatever recorder the process installs; the gateway binary
//! exports Prometheus):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `gateway_buffer_appended_records_total` | counter | records committed by appends |
//! | `gateway_buffer_appended_bytes_total` | counter | encoded bytes committed by appends |
//! | `gateway_buffer_acked_records_total` | counter | records removed by acks |
//! | `gateway_buffer_evicted_records_total{reason="age"\|"quota"}` | counter | records evicted |
//! | `gateway_buffer_dead_lettered_records_total` | counter | records moved to the dead letters |
//! | `gateway_buffer_dead_letters_dropped_total` | counter | dead letters dropped over `max_dead_letters` |
//! | `gateway_buffer_undecodable_records_total` | counter | stored records that no longer decoded |
//! | `gateway_buffer_leases_expired_total` | counter | leases that expired |
//! | `gateway_buffer_commits_total` | counter | group commits |
//! | `gateway_buffer_errors_total{kind}` | counter | failed writes (`disk_full`, `quota_exceeded`, `storage`) |
//! | `gateway_buffer_records` | gauge | records in the queue |
//! | `gateway_buffer_bytes` | gauge | encoded bytes in the queue |
//! | `gateway_buffer_leased_records` | gauge | records under live leases |
//! | `gateway_buffer_leased_bytes` | gauge | bytes under live leases |
//! | `gateway_buffer_dead_letters` | gauge | dead letters stored |
//! | `gateway_buffer_pressure` | gauge | 0 normal, 1 warning, 2 critical |
//! | `gateway_buffer_file_bytes` | gauge | database file plus WAL |
//! | `gateway_buffer_commit_records` | histogram | records per group commit |
//! | `gateway_buffer_commit_seconds` | histogram | time to run and commit one group |
//!
//! `tracing` spans: `gateway_buffer.open`, `gateway_buffer.append`, `gateway_buffer.commit`
//! (requests and records per group), `gateway_buffer.lease`, `gateway_buffer.maintenance`;
//! evictions, expired leases, pressure changes and quarantined records are logged.
//!
//! ## Example
//!
//! ```
//! use gateway_buffer::{Buffer, BufferConfig, DeadLetter};
//! use gateway_proto::{Body, Record};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gateway_buffer::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default()).await?;
//!
//! // Producers append; Ok means committed.
//! let receipt = buffer
//!     .append(vec![
//!         Record::new("logs", "agent-7", 1_732_363_200_000, Body::from(json!({"msg": "up"}))),
//!         Record::new("logs", "agent-7", 1_732_363_200_001, Body::from(json!({"msg": "bad"}))),
//!     ])
//!     .await?;
//! assert_eq!(receipt.ids.len(), 2);
//!
//! // A consumer leases the oldest records, sends them, then acks (or releases on failure).
//! let lease = buffer.lease(500, 1 << 20).await?.expect("two records are queued");
//! assert_eq!(lease.records[0].id, Some(receipt.ids[0]));
//! // The far end refused the second record for good: dead-letter it, ack the first.
//! buffer
//!     .dead_letter(lease.id, vec![DeadLetter {
//!         index: 1,
//!         code: "invalid_body".into(),
//!         reason: "schema mismatch".into(),
//!     }])
//!     .await?;
//!
//! let stats = buffer.stats().await?;
//! assert_eq!((stats.records, stats.acked_total, stats.dead_letters), (0, 1, 1));
//! buffer.close().await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod buffer;
mod codec;
mod config;
mod error;
mod leases;
mod schema;
mod store;
mod telemetry;
mod types;
mod writer;

pub use buffer::Buffer;
pub use config::{BufferConfig, Durability, MIN_FILE_BYTES, OverflowPolicy};
pub use error::Error;
pub use types::{
    AppendReceipt, BufferStats, DeadLetter, EncodedLease, EvictionReason, Lease, LeaseId,
    StoredDeadLetter,
};

/// The newest on-disk format version this release reads and writes.
pub const FORMAT_VERSION: i64 = schema::FORMAT_VERSION;

/// `PRAGMA application_id` of every buffer file (ASCII `GWBF`).
pub const APPLICATION_ID: i32 = schema::APPLICATION_ID;

//! The server's record store: SQLite, each record kept once per tenant, read back in order.
//!
//! # Guarantees
//!
//! * **Exactly once per tenant.** A record is identified by `(tenant, id)`: a re-sent record
//!   is counted as a duplicate, never stored twice, and one tenant's ids never suppress
//!   another's — the tenant is part of the key.
//! * **Per-tenant positions.** Each stored record gets the next position of its tenant
//!   (1, 2, 3, ... without gaps; duplicates do not use one). `read` pages through a tenant's
//!   records by position, optionally for one stream.
//! * **Atomic batches.** One call to [`SqliteRecordStore::store_records`] is one transaction:
//!   records, positions and dedup state commit together.
//! * **Throughput with any ids.** Dedup does not use a B-tree index over every id (which
//!   collapses with random UUIDv4 ids); it is a small log-structured merge tree in the same
//!   file — memtable, sorted runs with Bloom filters, incremental merges — described in the
//!   `dedup` module. Figures for v7 and v4 ids are in `BENCHMARKS.md`.
//!
//! # Layout
//!
//! `records.rowid = tenant_key << 40 | position`: a tenant's records are one contiguous,
//! append-only rowid range (2^40 positions per tenant, 2^23 tenants). `records_by_stream`
//! indexes `stream` (its implicit rowid suffix makes it `(stream, tenant, position)`), so a
//! stream read is one range scan. The record itself is stored as its protobuf encoding.
//! One process owns a store file at a time (the dedup memtable lives in its memory).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use gateway_proto::{Record, pb};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::dedup::{self, DedupConfig, DedupIndex};
use super::sink::{IngestContext, RecordSink, SinkError, SinkOutcome};
use crate::Error;

const POSITION_BITS: u32 = 40;
const MAX_POSITION: u64 = (1 << POSITION_BITS) - 1;
const MAX_TENANT_KEY: i64 = (1 << (63 - POSITION_BITS)) - 1;

/// How hard SQLite syncs on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// `synchronous=NORMAL` in WAL mode: a committed batch survives a process crash; the
    /// last commits may be lost on power loss. Default.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is synced to disk before it returns.
    Full,
}

/// Settings of the SQLite record store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SqliteStoreConfig {
    /// Durability of commits. Default [`Synchronous::Normal`].
    pub synchronous: Synchronous,
    /// Page cache per connection, KiB. Default 65,536 (64 MiB).
    pub cache_kib: u32,
    /// How long to wait for a lock held by another connection, ms. Default 5,000.
    pub busy_timeout_ms: u32,
    /// Largest page a read returns. Default 1,000.
    pub max_read_limit: usize,
    /// Record ids held in memory before they are written out as a sorted dedup run. More
    /// means fewer, larger runs; each key costs about 50 bytes of memory. Default 500,000.
    pub dedup_memtable_keys: usize,
    /// Dedup runs of one level merged into one run of the next level. Default 4.
    pub dedup_fan_in: usize,
    /// Fewest dedup keys a merge copies per ingest transaction (it copies at least two per
    /// record stored). Default 4,096.
    pub dedup_merge_min_step: usize,
}

impl Default for SqliteStoreConfig {
    fn default() -> Self {
        SqliteStoreConfig {
            synchronous: Synchronous::Normal,
            cache_kib: 64 * 1024,
            busy_timeout_ms: 5_000,
            max_read_limit: 1_000,
            dedup_memtable_keys: 500_000,
            dedup_fan_in: 4,
            dedup_merge_min_step: 4_096,
        }
    }
}

impl SqliteStoreConfig {
    /// Check the values, naming the parameter on error.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_read_limit == 0 {
            return Err(Error::invalid("max_read_limit", "must be at least 1"));
        }
        if self.dedup_memtable_keys == 0 {
            return Err(Error::invalid("dedup_memtable_keys", "must be at least 1"));
        }
        if self.dedup_fan_in < 2 {
            return Err(Error::invalid("dedup_fan_in", "must be at least 2"));
        }
        Ok(())
    }
}

/// Which records to read back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReadQuery {
    /// Only this stream; `None` for every stream.
    pub stream: Option<String>,
    /// Only records after this position (0: from the start).
    pub after: u64,
    /// At most this many records (capped by [`SqliteStoreConfig::max_read_limit`]).
    pub limit: usize,
}

/// One stored record and where it sits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Position within the tenant, from 1.
    pub position: u64,
    /// The gateway id of the batch that brought it (empty for agents).
    pub gateway_id: String,
    /// When the receiver stored it, ms since the epoch.
    pub received_at_ms: i64,
    /// The record as received.
    pub record: Record,
}

/// A page of records, the answer of `GET /v1/records`.
///
/// JSON: `{"records": [{"position": 1, "gateway_id": "gw-1", "received_at_ms": ..., "record": {...}}], "next_after": 1}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordPage {
    /// The records, by increasing position.
    pub records: Vec<StoredRecord>,
    /// Pass as `after` to read the next page: the last position returned, or the query's
    /// `after` when the page is empty.
    pub next_after: u64,
}

/// The SQLite record store. Cheap to clone; clones share the connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use gateway_proto::auth::{Principal, Role};
/// use gateway_proto::{BatchId, Body, Record, RecordId};
/// use gateway_uplink::server::{IngestContext, ReadQuery, SqliteRecordStore, SqliteStoreConfig};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteRecordStore::open(dir.path().join("records.db"), SqliteStoreConfig::default())?;
/// let context = IngestContext {
///     principal: Principal::new("acme", "gw-1", Role::Gateway),
///     batch_id: BatchId::new_v7(),
///     gateway_id: "gw-1".into(),
///     received_at_ms: 1_732_363_200_000,
/// };
/// let record = Record::new("logs", "agent-7", 1_732_363_200_000, Body::from(serde_json::json!("hi")))
///     .with_id(RecordId::new_v7());
/// let first = store.store_records(&context, vec![record.clone()]).await?;
/// let again = store.store_records(&context, vec![record]).await?;
/// assert_eq!((first.accepted, again.duplicates), (1, 1));
/// let page = store.read("acme", ReadQuery { stream: Some("logs".into()), after: 0, limit: 10 }).await?;
/// assert_eq!(page.records.len(), 1);
/// assert_eq!(page.records[0].position, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteRecordStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    config: SqliteStoreConfig,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    dedup: DedupIndex,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO store_meta (key, value) VALUES ('format', '1');
CREATE TABLE IF NOT EXISTS tenants (
    tenant_key INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_position INTEGER NOT NULL,
    flushed_position INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    tenant_key INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    id BLOB NOT NULL,
    stream TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_stream ON records (stream);
";

fn open_connection(path: &Path, config: &SqliteStoreConfig) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(Error::store("opening the database"))?;
    let sync = match config.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA cache_size = -{};
         PRAGMA temp_store = MEMORY;",
        config.cache_kib
    ))
    .map_err(Error::store("configuring the database"))?;
    conn.busy_timeout(std::time::Duration::from_millis(u64::from(
        config.busy_timeout_ms,
    )))
    .map_err(Error::store("configuring the database"))?;
    Ok(conn)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the connection usable: SQLite rolls back an
    // unfinished transaction when the next one begins.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn dedup_config(config: &SqliteStoreConfig) -> DedupConfig {
    DedupConfig {
        memtable_keys: config.dedup_memtable_keys,
        fan_in: config.dedup_fan_in,
        merge_min_step: config.dedup_merge_min_step.max(1),
    }
}

impl SqliteRecordStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: impl AsRef<Path>, config: SqliteStoreConfig) -> Result<Self, Error> {
        config.validate()?;
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, &config)?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| conn.execute_batch(dedup::SCHEMA))
            .map_err(Error::store("creating the schema"))?;
        let dedup = DedupIndex::open(&conn, dedup_config(&config))?;
        let writer = Writer { conn, dedup };
        let reader = open_connection(&path, &config)?;
        Ok(SqliteRecordStore {
            inner: Arc::new(Inner {
                path,
                config,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Store one batch's records in one transaction (blocking; see
    /// [`SqliteRecordStore::store_records`]).
    pub fn store_records_blocking(
        &self,
        context: &IngestContext,
        records: &[Record],
    ) -> Result<SinkOutcome, Error> {
        let mut writer = lock(&self.inner.writer);
        let Writer { conn, dedup } = &mut *writer;
        let result = store_in_transaction(conn, dedup, context, records);
        if result.is_err() {
            // The transaction rolled back; the in-memory dedup state may hold its keys.
            *dedup = DedupIndex::open(conn, dedup_config(&self.inner.config))?;
        }
        result
    }

    /// Dedup state, for tests and diagnostics: (ids in the memtable, sorted runs).
    pub fn dedup_stats(&self) -> (usize, usize) {
        let writer = lock(&self.inner.writer);
        (writer.dedup.memtable_len(), writer.dedup.run_count())
    }

    /// Store one batch's records in one transaction; duplicates (same tenant and id as a
    /// stored record, including earlier in the same batch) are counted and skipped. Every
    /// record must have an id.
    pub async fn store_records(
        &self,
        context: &IngestContext,
        records: Vec<Record>,
    ) -> Result<SinkOutcome, Error> {
        let store = self.clone();
        let context = context.clone();
        tokio::task::spawn_blocking(move || store.store_records_blocking(&context, &records))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Read a tenant's records by position (blocking; see [`SqliteRecordStore::read`]).
    pub fn read_blocking(&self, tenant: &str, query: &ReadQuery) -> Result<RecordPage, Error> {
        let conn = lock(&self.inner.reader);
        let limit = query.limit.clamp(1, self.inner.config.max_read_limit);
        let Some(tenant_key) = conn
            .query_row(
                "SELECT tenant_key FROM tenants WHERE name = ?1",
                [tenant],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map_err(Error::store("looking up a tenant"))?
        else {
            return Ok(RecordPage {
                records: Vec::new(),
                next_after: query.after,
            });
        };
        let after = query.after.min(MAX_POSITION);
        let low = (tenant_key << POSITION_BITS) | after as i64;
        let high = (tenant_key << POSITION_BITS) | MAX_POSITION as i64;
        let mut records = Vec::with_capacity(limit.min(1024));
        let mut push = |row: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
            let rowid: i64 = row.get(0)?;
            let position = (rowid as u64) & MAX_POSITION;
            let blob: Vec<u8> = row.get(3)?;
            records.push((position, row.get(1)?, row.get(2)?, blob));
            Ok(())
        };
        match &query.stream {
            Some(stream) => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT rowid, gateway_id, received_at_ms, record FROM records
                         WHERE stream = ?1 AND rowid > ?2 AND rowid <= ?3
                         ORDER BY rowid LIMIT ?4",
                    )
                    .map_err(Error::store("preparing a read"))?;
                let mut rows = stmt
                    .query(params![stream, low, high, limit as i64])
                    .map_err(Error::store("reading records"))?;
                while let Some(row) = rows.next().map_err(Error::store("reading records"))? {
                    push(row).map_err(Error::store("reading records"))?;
                }
            }
            None => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT rowid, gateway_id, received_at_ms, record FROM records
                         WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid LIMIT ?3",
                    )
                    .map_err(Error::store("preparing a read"))?;
                let mut rows = stmt
                    .query(params![low, high, limit as i64])
                    .map_err(Error::store("reading records"))?;
                while let Some(row) = rows.next().map_err(Error::store("reading records"))? {
                    push(row).map_err(Error::store("reading records"))?;
                }
            }
        }
        let next_after = records.last().map_or(query.after, |r| r.0);
        let records = records
            .into_iter()
            .map(|(position, gateway_id, received_at_ms, blob)| {
                let record = pb::Record::decode(blob.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|pb| Record::try_from(pb).map_err(|e| e.to_string()))
                    .map_err(|reason| Error::CorruptRecord { position, reason })?;
                Ok(StoredRecord {
                    position,
                    gateway_id,
                    received_at_ms,
                    record,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(RecordPage {
            records,
            next_after,
        })
    }

    /// Read up to `query.limit` records of `tenant` after position `query.after`, in order.
    pub async fn read(&self, tenant: &str, query: ReadQuery) -> Result<RecordPage, Error> {
        let store = self.clone();
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || store.read_blocking(&tenant, &query))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Records stored for `tenant` (the last position handed out).
    pub fn count_blocking(&self, tenant: &str) -> Result<u64, Error> {
        let conn = lock(&self.inner.reader);
        let next: Option<i64> = conn
            .query_row(
                "SELECT next_position FROM tenants WHERE name = ?1",
                [tenant],
                |row| row.get(0),
            )
            .optional()
            .map_err(Error::store("counting records"))?;
        Ok(next.map_or(0, |n| (n as u64).saturating_sub(1)))
    }
}

fn store_in_transaction(
    conn: &mut Connection,
    dedup: &mut DedupIndex,
    context: &IngestContext,
    records: &[Record],
) -> Result<SinkOutcome, Error> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(Error::store("starting a transaction"))?;
    let (tenant_key, mut next_position) = tenant_row(&tx, &context.principal.tenant)?;
    let mut outcome = SinkOutcome::default();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO records
                     (rowid, tenant_key, timestamp_ms, id, stream, gateway_id, received_at_ms, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(Error::store("preparing the insert"))?;
        let mut encoded = Vec::with_capacity(512);
        for record in records {
            let Some(id) = record.id else {
                return Err(Error::invalid(
                    "records[].id",
                    "the store needs record ids; the receiver assigns missing ones",
                ));
            };
            let key = dedup::key(tenant_key, &id);
            if dedup.contains(&tx, &key)? {
                outcome.duplicates += 1;
                continue;
            }
            if next_position > MAX_POSITION {
                return Err(Error::invalid(
                    "tenant",
                    format!(
                        "tenant {:?} has used every position",
                        context.principal.tenant
                    ),
                ));
            }
            encoded.clear();
            record.encode_protobuf(&mut encoded);
            let rowid = (tenant_key << POSITION_BITS) | next_position as i64;
            insert
                .execute(params![
                    rowid,
                    tenant_key,
                    record.timestamp_ms,
                    &id.as_bytes()[..],
                    record.stream,
                    context.gateway_id,
                    context.received_at_ms,
                    encoded,
                ])
                .map_err(Error::store("inserting a record"))?;
            dedup.insert(key);
            outcome.accepted += 1;
            next_position += 1;
        }
    }
    tx.execute(
        "UPDATE tenants SET next_position = ?1 WHERE tenant_key = ?2",
        params![next_position as i64, tenant_key],
    )
    .map_err(Error::store("advancing the tenant position"))?;
    dedup.after_batch(&tx, outcome.accepted as usize)?;
    tx.commit().map_err(Error::store("committing a batch"))?;
    Ok(outcome)
}

/// The tenant's key and next position, creating the tenant on first use.
fn tenant_row(tx: &rusqlite::Transaction<'_>, tenant: &str) -> Result<(i64, u64), Error> {
    let found = tx
        .prepare_cached("SELECT tenant_key, next_position FROM tenants WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([tenant], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()
        })
        .map_err(Error::store("looking up a tenant"))?;
    if let Some((key, next)) = found {
        return Ok((key, next as u64));
    }
    tx.execute(
        "INSERT INTO tenants (name, next_position) VALUES (?1, 1)",
        [tenant],
    )
    .map_err(Error::store("creating a tenant"))?;
    let key = tx.last_insert_rowid();
    if key > MAX_TENANT_KEY {
        return Err(Error::invalid(
            "tenant",
            format!("more than {MAX_TENANT_KEY} tenants in one store"),
        ));
    }
    Ok((key, 1))
}

impl RecordSink for SqliteRecordStore {
    async fn store(
        &self,
        context: &IngestContext,
        records: Vec<Record>,
    ) -> Result<SinkOutcome, SinkError> {
        self.store_records(context, records)
            .await
            .map_err(|e| match e {
                Error::Store { .. } => SinkError::Unavailable {
                    message: format!("the record store is failing: {e}"),
                    retry_after: Some(std::time::Duration::from_secs(1)),
                },
                other => SinkError::Internal {
                    message: other.to_string(),
                },
            })
    }
}

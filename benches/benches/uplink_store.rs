//! The server record store's ingest with time-ordered (v7) and random (v4) record ids,
//! against raw inserts of the same rows into a table without any index, and against the
//! obvious design (a unique index on `(tenant, id)`) that collapses with random ids.
//!
//! Each variant starts from a table pre-filled with `PREFILL` rows and inserts batches of
//! `BATCH` records, one transaction per batch (as the receiver does per request). Records
//! come from 500 agents in turn, each with its own clock offset (up to ±2 s); timestamps
//! advance like live traffic (100 records per ms). The last variant is the evaluated
//! alternative of keying the unique index by `(tenant, timestamp, id)`, which only clusters
//! when clocks agree. Run: `cargo bench -p gateway-benches --bench uplink_store`.

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway_proto::auth::{Principal, Role};
use gateway_proto::{BatchId, Body, Record, RecordId, pb};
use gateway_uplink::server::{IngestContext, SqliteRecordStore, SqliteStoreConfig};
use prost::Message as _;
use rusqlite::{Connection, params};

const BATCH: usize = 1_024;
/// Rows in the table before measuring; `UPLINK_STORE_PREFILL` overrides (a long run with
/// millions of rows shows how each design holds up as the table grows).
fn prefill() -> usize {
    std::env::var("UPLINK_STORE_PREFILL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// `UPLINK_STORE_ONLY=store_v4_ids,raw_append_no_index` runs only those variants.
fn selected(name: &str) -> bool {
    std::env::var("UPLINK_STORE_ONLY").map_or(true, |only| only.split(',').any(|n| n == name))
}

/// Makes records with increasing timestamps, like live traffic.
struct Source {
    seq: u64,
    v4: bool,
    t0: i64,
}

impl Source {
    fn new(v4: bool) -> Self {
        Source {
            seq: 0,
            v4,
            t0: 1_750_000_000_000,
        }
    }

    fn batch(&mut self) -> Vec<Record> {
        (0..BATCH)
            .map(|_| {
                self.seq += 1;
                // Agent `seq % 500` runs `skew` ms off (a fixed offset per agent).
                let agent = self.seq % 500;
                let skew = (agent.wrapping_mul(2_654_435_761) % 4_001) as i64 - 2_000;
                let ts = self.t0 + (self.seq / 100) as i64 + skew;
                let id = if self.v4 {
                    uuid::Uuid::new_v4()
                } else {
                    uuid::Uuid::now_v7()
                };
                Record::new(
                    "logs",
                    "agent-7",
                    ts,
                    Body::from(serde_json::json!({"seq": self.seq, "msg": "m".repeat(160)})),
                )
                .with_id(RecordId::from_uuid(id).unwrap())
            })
            .collect()
    }
}

fn context() -> IngestContext {
    IngestContext {
        principal: Principal::new("acme", "gw-1", Role::Gateway),
        batch_id: BatchId::new_v7(),
        gateway_id: "gw-1".into(),
        received_at_ms: 1_750_000_000_000,
    }
}

/// One way of storing a batch.
trait Sink {
    fn insert(&mut self, records: &[Record]);
}

struct Store(SqliteRecordStore);

impl Sink for Store {
    fn insert(&mut self, records: &[Record]) {
        let outcome = self.0.store_records_blocking(&context(), records).unwrap();
        assert_eq!(outcome.accepted as usize, records.len());
    }
}

fn raw_connection(path: &std::path::Path, ddl: &str) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;",
    )
    .unwrap();
    conn.execute_batch(ddl).unwrap();
    conn
}

/// Raw appends: the same row (protobuf record and the same columns) into a rowid table
/// without any index — the ceiling for a store that only appends.
struct Raw(Connection, &'static str);

impl Raw {
    fn plain(path: &std::path::Path) -> Self {
        Raw(
            raw_connection(
                path,
                "CREATE TABLE records (tenant_key INTEGER, timestamp_ms INTEGER, id BLOB,
                 stream TEXT, gateway_id TEXT, received_at_ms INTEGER, record BLOB);",
            ),
            "INSERT INTO records VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
    }

    /// The obvious dedup: a unique index on (tenant, id) — or, `by_time`, on
    /// (tenant, timestamp, id).
    fn unique_index(path: &std::path::Path, by_time: bool) -> Self {
        let columns = if by_time {
            "tenant_key, timestamp_ms, id"
        } else {
            "tenant_key, id"
        };
        Raw(
            raw_connection(
                path,
                &format!(
                    "CREATE TABLE records (tenant_key INTEGER, timestamp_ms INTEGER, id BLOB,
                     stream TEXT, gateway_id TEXT, received_at_ms INTEGER, record BLOB);
                     CREATE UNIQUE INDEX dedup ON records ({columns});"
                ),
            ),
            "INSERT OR IGNORE INTO records VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
    }
}

impl Sink for Raw {
    fn insert(&mut self, records: &[Record]) {
        let tx = self.0.transaction().unwrap();
        {
            let mut stmt = tx.prepare_cached(self.1).unwrap();
            let mut buf = Vec::with_capacity(512);
            for r in records {
                buf.clear();
                pb::Record::from(r).encode(&mut buf).unwrap();
                stmt.execute(params![
                    1,
                    r.timestamp_ms,
                    &r.id.unwrap().as_bytes()[..],
                    r.stream,
                    "gw-1",
                    1_750_000_000_000i64,
                    buf
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

fn bench_variant(
    c: &mut Criterion,
    name: &str,
    v4: bool,
    open: impl Fn(&std::path::Path) -> Box<dyn Sink>,
) {
    if !selected(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sink = open(&dir.path().join("bench.db"));
    let mut source = Source::new(v4);
    let started = Instant::now();
    let mut chunk = Instant::now();
    for i in 1..=prefill() / BATCH {
        sink.insert(&source.batch());
        if i % 1_000 == 0 {
            eprintln!(
                "{name}: {} rows, last {} rows at {:.0} rows/s",
                i * BATCH,
                1_000 * BATCH,
                (1_000 * BATCH) as f64 / chunk.elapsed().as_secs_f64()
            );
            chunk = Instant::now();
        }
    }
    eprintln!(
        "{name}: prefilled {} rows in {:.2?}",
        prefill() / BATCH * BATCH,
        started.elapsed()
    );
    let mut group = c.benchmark_group("uplink_store_ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<Record>> = (0..iters).map(|_| source.batch()).collect();
            let t = Instant::now();
            for batch in &batches {
                sink.insert(batch);
            }
            t.elapsed()
        });
    });
    group.finish();
}

fn store_ingest(c: &mut Criterion) {
    let store = |p: &std::path::Path| -> Box<dyn Sink> {
        Box::new(Store(
            SqliteRecordStore::open(p, SqliteStoreConfig::default()).unwrap(),
        ))
    };
    bench_variant(c, "raw_append_no_index", true, |p| Box::new(Raw::plain(p)));
    bench_variant(c, "store_v7_ids", false, store);
    bench_variant(c, "store_v4_ids", true, store);
    bench_variant(c, "unique_tenant_id_index_v7_ids", false, |p| {
        Box::new(Raw::unique_index(p, false))
    });
    bench_variant(c, "unique_tenant_id_index_v4_ids", true, |p| {
        Box::new(Raw::unique_index(p, false))
    });
    bench_variant(c, "unique_tenant_timestamp_id_index_v4_ids", true, |p| {
        Box::new(Raw::unique_index(p, true))
    });
}

criterion_group!(benches, store_ingest);
criterion_main!(benches);

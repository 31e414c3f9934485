#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn.

//! gateway-buffer throughput against a raw-rusqlite baseline measured in the same run.
//!
//! * `buffer_append_batch`: one caller appending 1,024 records of ~200 encoded bytes per call,
//!   against raw prepared `INSERT`s of the same encoded rows in one transaction (same table
//!   shape, same pragmas). Target: ≥ 0.7 × baseline and ≥ 100 MB/s.
//! * `buffer_append_concurrent`: 64 tasks each appending one record at a time (group commit),
//!   `Normal` and `Full`. Target (`Normal`): ≥ 250,000 records/s.
//! * `buffer_drain`: lease (1,024 at a time) + ack of a 1,000,000-record backlog, with decoded
//!   records (`lease`) and stored protobuf (`lease_encoded`). Target: at least as fast as
//!   batched append.
//!
//! Run: `cargo bench -p gateway-benches --bench buffer`. See BENCHMARKS.md for figures.

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gateway_buffer::{Buffer, BufferConfig, Durability};
use gateway_proto::{Body, Record, RecordId, pb};
use serde_json::json;

const BATCH: usize = 1024;
const BACKLOG: usize = 1_000_000;
const TASKS: usize = 64;

/// A log record of about 200 bytes once encoded.
fn record(n: usize) -> Record {
    Record::new(
        "logs",
        "agent-0042",
        1_732_363_200_000 + n as i64,
        Body::from(json!({
            "level": "info",
            "msg": "user session started on workstation pc-12 via rdp",
            "seq": n,
            "pid": 4242,
        })),
    )
    .with_attribute("host", "pc-12")
    .with_attribute("site", "berlin-3")
}

fn batch(start: usize) -> Vec<Record> {
    (start..start + BATCH).map(record).collect()
}

fn encoded(records: &[Record]) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| {
            let r = r.clone().with_id(RecordId::new_v7());
            prost::Message::encode_to_vec(&pb::Record::from(&r))
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(durability: Durability) -> BufferConfig {
    BufferConfig {
        durability,
        quota_bytes: 1 << 40,
        ..Default::default()
    }
}

/// The raw baseline: the same table and pragmas as the buffer, prepared INSERTs, one
/// transaction per batch.
struct RawSqlite {
    conn: rusqlite::Connection,
    next_seq: i64,
}

impl RawSqlite {
    fn open(path: &std::path::Path) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.pragma_update(None, "cache_size", -16384).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 4096)
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY, appended_ms INTEGER NOT NULL, data BLOB NOT NULL)",
        )
        .unwrap();
        RawSqlite { conn, next_seq: 1 }
    }

    fn insert(&mut self, rows: &[Vec<u8>]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO records (seq, appended_ms, data) VALUES (?1, ?2, ?3)")
                .unwrap();
            for data in rows {
                stmt.execute(rusqlite::params![self.next_seq, 1_732_363_200_000i64, data])
                    .unwrap();
                self.next_seq += 1;
            }
        }
        tx.commit().unwrap();
    }
}

fn append_batch(c: &mut Criterion) {
    let rt = runtime();
    let records = batch(0);
    let rows = encoded(&records);
    let bytes: usize = rows.iter().map(Vec::len).sum();
    eprintln!(
        "buffer_append_batch: {BATCH} records, {bytes} encoded bytes per batch ({} B/record)",
        bytes / BATCH
    );

    let mut group = c.benchmark_group("buffer_append_batch");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(6));

    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawSqlite::open(&dir.path().join("raw.db"));
    group.bench_function("raw_rusqlite_baseline", |b| b.iter(|| raw.insert(&rows)));
    drop(raw);

    let dir = tempfile::tempdir().unwrap();
    let buffer = rt
        .block_on(Buffer::open(
            dir.path().join("buffer.db"),
            config(Durability::Normal),
        ))
        .unwrap();
    group.bench_function("gateway_buffer_normal", |b| {
        b.to_async(&rt).iter_batched(
            || records.clone(),
            |records| {
                let buffer = buffer.clone();
                async move { buffer.append(records).await.unwrap() }
            },
            BatchSize::SmallInput,
        )
    });
    rt.block_on(buffer.close()).unwrap();
    group.finish();
}

fn append_concurrent(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("buffer_append_concurrent");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));

    // Context for the figures below: the same single rows inserted by one thread, one
    // transaction per 64 rows (what a perfect group commit of 64 waiting appends costs).
    let rows = encoded(&batch(0));
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawSqlite::open(&dir.path().join("raw.db"));
    group.bench_function("raw_rusqlite_64_rows_per_transaction", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(TASKS);
                raw.insert(&rows[..n]);
                left -= n;
            }
            start.elapsed()
        })
    });
    drop(raw);

    for durability in [Durability::Normal, Durability::Full] {
        let dir = tempfile::tempdir().unwrap();
        let buffer = rt
            .block_on(Buffer::open(
                dir.path().join("buffer.db"),
                config(durability),
            ))
            .unwrap();
        let name = format!("64_tasks_single_record_{durability:?}").to_lowercase();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let buffer = buffer.clone();
                async move {
                    let per_task = (iters as usize).div_ceil(TASKS);
                    // Records are built before the clock starts: only appending is measured.
                    let inputs: Vec<Vec<Record>> = (0..TASKS)
                        .map(|t| (0..per_task).map(|i| record(t * per_task + i)).collect())
                        .collect();
                    let start = Instant::now();
                    let tasks: Vec<_> = inputs
                        .into_iter()
                        .map(|records| {
                            let buffer = buffer.clone();
                            tokio::spawn(async move {
                                for record in records {
                                    buffer.append(vec![record]).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    // Normalise to `iters` records.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * TASKS) as f64)
                }
            })
        });
        let stats = rt.block_on(buffer.stats()).unwrap();
        eprintln!(
            "{durability:?}: {} records in {} commits ({:.1} records/commit)",
            stats.appended_total,
            stats.commits_total,
            stats.appended_total as f64 / stats.commits_total.max(1) as f64
        );
        rt.block_on(buffer.close()).unwrap();
    }
    group.finish();
}

/// Fill a fresh buffer with the backlog (not timed), then time draining it with `consume`.
async fn fill_and_drain<F, Fut>(consume: F, fills: &std::sync::Mutex<Vec<Duration>>) -> Duration
where
    F: Fn(Buffer) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(dir.path().join("buffer.db"), config(Durability::Normal))
        .await
        .unwrap();
    let filled = Instant::now();
    for start in (0..BACKLOG).step_by(BATCH) {
        buffer.append(batch(start)).await.unwrap();
    }
    fills.lock().unwrap().push(filled.elapsed());
    let start = Instant::now();
    let drained = consume(buffer.clone()).await;
    let elapsed = start.elapsed();
    assert_eq!(drained, BACKLOG.div_ceil(BATCH) * BATCH);
    buffer.close().await.unwrap();
    elapsed
}

fn drain(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("buffer_drain");
    group.throughput(Throughput::Elements(
        (BACKLOG.div_ceil(BATCH) * BATCH) as u64,
    ));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    let fills = std::sync::Mutex::new(Vec::new());
    group.bench_function("lease_ack_1m_backlog", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let fills = &fills;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += fill_and_drain(
                        |buffer| async move {
                            let mut drained = 0;
                            while let Some(lease) = buffer.lease(BATCH, 4 << 20).await.unwrap() {
                                drained += lease.records.len();
                                buffer.ack(lease.id).await.unwrap();
                            }
                            drained
                        },
                        fills,
                    )
                    .await;
                }
                total
            }
        })
    });
    group.bench_function("lease_encoded_ack_1m_backlog", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let fills = &fills;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += fill_and_drain(
                        |buffer| async move {
                            let mut drained = 0;
                            while let Some(lease) =
                                buffer.lease_encoded(BATCH, 4 << 20).await.unwrap()
                            {
                                drained += lease.records.len();
                                buffer.ack(lease.id).await.unwrap();
                            }
                            drained
                        },
                        fills,
                    )
                    .await;
                }
                total
            }
        })
    });
    group.finish();
    let fills = fills.lock().unwrap();
    if !fills.is_empty() {
        let mean = fills.iter().sum::<Duration>() / fills.len() as u32;
        eprintln!(
            "buffer_drain: filling each backlog by batched append (records built in the loop) took {mean:?} on average = {:.0} records/s",
            BACKLOG as f64 / mean.as_secs_f64()
        );
    }
}

criterion_group!(benches, append_batch, append_concurrent, drain);
criterion_main!(benches);

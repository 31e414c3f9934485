//! A quick performance run, for profiling (`perf record`) and for a first look without
//! criterion; the measured figures of record come from `cargo bench -p gateway-benches --bench
//! buffer`.
//!
//! ```text
//! cargo run --release -p gateway-buffer --example throughput -- [records] [rounds] [only]
//! ```
//!
//! `only` limits the run to one part: `raw`, `batch` (batched append and drain), `concurrent`.
//!
//! Prints, for the best of `rounds` rounds: batched append (1,024 records per call) against raw
//! prepared INSERTs of the same rows, 64 concurrent single-record appenders under `Normal` and
//! `Full`, and a lease+ack drain of the backlog.

use std::time::{Duration, Instant};

use gateway_buffer::{Buffer, BufferConfig, Durability};
use gateway_proto::{Body, Record};
use serde_json::json;

const BATCH: usize = 1024;

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

fn config(durability: Durability) -> BufferConfig {
    BufferConfig {
        durability,
        quota_bytes: 1 << 40,
        ..Default::default()
    }
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>10.0} records/s", n as f64 / d.as_secs_f64())
}

fn raw_baseline(dir: &std::path::Path, batches: &[Vec<Vec<u8>>]) -> Duration {
    let conn = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    for (k, v) in [
        ("locking_mode", "EXCLUSIVE"),
        ("auto_vacuum", "INCREMENTAL"),
        ("journal_mode", "WAL"),
        ("synchronous", "NORMAL"),
    ] {
        conn.pragma_update(None, k, v).unwrap();
    }
    conn.pragma_update(None, "cache_size", -16384).unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 4096)
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE records (seq INTEGER PRIMARY KEY, appended_ms INTEGER NOT NULL, data BLOB NOT NULL)",
    )
    .unwrap();
    let start = Instant::now();
    let mut seq = 1i64;
    for rows in batches {
        conn.execute_batch("BEGIN").unwrap();
        let mut stmt = conn
            .prepare_cached("INSERT INTO records (seq, appended_ms, data) VALUES (?1, ?2, ?3)")
            .unwrap();
        for data in rows {
            stmt.execute(rusqlite::params![seq, 0i64, data]).unwrap();
            seq += 1;
        }
        drop(stmt);
        conn.execute_batch("COMMIT").unwrap();
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let only = args.next().unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;
    let batches: Vec<Vec<Record>> = (0..total.div_ceil(BATCH))
        .map(|b| (b * BATCH..(b + 1) * BATCH).map(record).collect())
        .collect();
    let n = batches.len() * BATCH;
    let encoded: Vec<Vec<Vec<u8>>> = batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|r| {
                    let r = r.clone().with_id(gateway_proto::RecordId::new_v7());
                    prost::Message::encode_to_vec(&gateway_proto::pb::Record::from(&r))
                })
                .collect()
        })
        .collect();
    let bytes: usize = encoded.iter().flatten().map(Vec::len).sum();
    println!("{n} records of {} encoded bytes on average", bytes / n);

    let mut best = [Duration::MAX; 6];
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        if run("raw") {
            best[0] = best[0].min(raw_baseline(dir.path(), &encoded));
        }
        if run("batch") {
            let buffer = Buffer::open(dir.path().join("b.db"), config(Durability::Normal))
                .await
                .unwrap();
            let input = batches.clone();
            let start = Instant::now();
            for records in input {
                buffer.append(records).await.unwrap();
            }
            best[1] = best[1].min(start.elapsed());

            let start = Instant::now();
            let mut drained = 0;
            while let Some(lease) = buffer.lease(BATCH, 4 << 20).await.unwrap() {
                drained += lease.records.len();
                buffer.ack(lease.id).await.unwrap();
            }
            assert_eq!(drained, n);
            best[2] = best[2].min(start.elapsed());

            for records in batches.clone() {
                buffer.append(records).await.unwrap();
            }
            let start = Instant::now();
            let mut drained = 0;
            while let Some(lease) = buffer.lease_encoded(BATCH, 4 << 20).await.unwrap() {
                drained += lease.records.len();
                buffer.ack(lease.id).await.unwrap();
            }
            assert_eq!(drained, n);
            best[5] = best[5].min(start.elapsed());
            buffer.close().await.unwrap();
        }

        for (slot, durability) in [(3, Durability::Normal), (4, Durability::Full)] {
            if !run("concurrent") {
                continue;
            }
            let per_task = if durability == Durability::Full {
                200
            } else {
                n / 64
            };
            let buffer = Buffer::open(dir.path().join(format!("c{slot}.db")), config(durability))
                .await
                .unwrap();
            let inputs: Vec<Vec<Record>> = (0..64)
                .map(|t| (0..per_task).map(|i| record(t * per_task + i)).collect())
                .collect();
            let start = Instant::now();
            let tasks: Vec<_> = inputs
                .into_iter()
                .map(|records| {
                    let buffer = buffer.clone();
                    tokio::spawn(async move {
                        for r in records {
                            buffer.append(vec![r]).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let elapsed = start.elapsed();
            best[slot] = best[slot].min(elapsed.mul_f64(n as f64 / (per_task * 64) as f64));
            let stats = buffer.stats().await.unwrap();
            println!(
                "  {durability:?}: {:.1} records per commit",
                stats.appended_total as f64 / stats.commits_total as f64
            );
            buffer.close().await.unwrap();
        }
    }
    let mb = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "raw INSERT baseline       {}  {:>6.1} MB/s",
        rate(n, best[0]),
        mb(best[0])
    );
    println!(
        "batched append (Normal)   {}  {:>6.1} MB/s  = {:.2} x baseline",
        rate(n, best[1]),
        mb(best[1]),
        best[0].as_secs_f64() / best[1].as_secs_f64()
    );
    println!(
        "lease+ack drain           {}  = {:.2} x batched append",
        rate(n, best[2]),
        best[1].as_secs_f64() / best[2].as_secs_f64()
    );
    println!(
        "lease_encoded+ack drain   {}  = {:.2} x batched append",
        rate(n, best[5]),
        best[1].as_secs_f64() / best[5].as_secs_f64()
    );
    println!("64 tasks x 1 record Normal {}", rate(n, best[3]));
    println!("64 tasks x 1 record Full   {}", rate(n, best[4]));
}

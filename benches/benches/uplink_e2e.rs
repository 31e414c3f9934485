//! End to end over loopback: gateway buffer → uplink → `POST /v1/records` receiver → SQLite
//! record store, in records per second, and the buffer's own batched append rate measured in
//! the same run as the baseline (the uplink cannot drain faster than the buffer fills).
//!
//! Each iteration appends `RECORDS` fresh records (281-byte JSON bodies, v7 ids) to a new
//! buffer (not timed), then times an uplink draining it to the server until the buffer is
//! empty (`Uplink::flush`). The server's store grows across iterations like a real one.
//! Default uplink config: protobuf, gzip, 2,000-record batches, 2 in flight; a second run
//! without gzip (as on a LAN). The printed ratio uses the gzip run.
//! Run: `cargo bench -p gateway-benches --bench uplink_e2e`.

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_buffer::{Buffer, BufferConfig};
use gateway_proto::auth::{Principal, Role, StaticTokens};
use gateway_proto::{Body, Record};
use gateway_uplink::server::{
    RateLimitConfig, Receiver, ReceiverConfig, SqliteRecordStore, SqliteStoreConfig,
};
use gateway_uplink::{FlushOutcome, Uplink, UplinkConfig};
use tokio::time::Instant;

const RECORDS: usize = 100_000;
const APPEND_BATCH: usize = 1_000;

fn records(n: usize) -> Vec<Record> {
    let now = gateway_proto::clock::unix_ms(std::time::SystemTime::now());
    (0..n)
        .map(|i| {
            Record::new(
                "logs",
                "agent-7",
                now,
                Body::from(serde_json::json!({
                    "level": "info", "seq": i, "host": "pc-12",
                    "msg": "user logged in from 10.0.0.12 via ssh; session opened for user admin by (uid=0) ok",
                    "pad": "x".repeat(100),
                })),
            )
            .with_attribute("site", "hq")
        })
        .collect()
}

/// CPU time this process has used (user + system), from `/proc/self/stat`; zero where that
/// file does not exist. CPU per record does not depend on how much of the machine other
/// processes take, unlike records/s.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the
    // clock tick is 100 Hz on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn fill(buffer: &Buffer, n: usize) {
    let mut all = records(n);
    while !all.is_empty() {
        let rest = all.split_off(all.len().min(APPEND_BATCH));
        buffer
            .append(std::mem::replace(&mut all, rest))
            .await
            .unwrap();
    }
}

fn e2e(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteRecordStore::open(dir.path().join("server.db"), SqliteStoreConfig::default())
        .unwrap();
    let tokens =
        StaticTokens::new().with("gw-token", Principal::new("acme", "gw-1", Role::Gateway));
    let app = Receiver::new(store.clone(), Arc::new(tokens))
        .config(ReceiverConfig {
            rate_limit: RateLimitConfig::unlimited(),
            ..ReceiverConfig::default()
        })
        .into_router()
        .unwrap();
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    let rates: Arc<Mutex<(Vec<f64>, Vec<f64>)>> = Arc::default();
    let cpu_per_record: Arc<Mutex<(Vec<f64>, Vec<f64>)>> = Arc::default();
    let no_gzip_cpu: Arc<Mutex<Vec<f64>>> = Arc::default();

    let mut group = c.benchmark_group("uplink_e2e");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(20));

    group.bench_function("buffer_append_batched_baseline", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let rates = rates.clone();
            let cpu_per_record = cpu_per_record.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let buffer = Buffer::open(dir.path().join("b.db"), BufferConfig::default())
                        .await
                        .unwrap();
                    let started = Instant::now();
                    let cpu = process_cpu();
                    fill(&buffer, RECORDS).await;
                    let took = started.elapsed();
                    let cpu = process_cpu().saturating_sub(cpu);
                    cpu_per_record
                        .lock()
                        .unwrap()
                        .0
                        .push(cpu.as_secs_f64() * 1e6 / RECORDS as f64);
                    total += took;
                    rates
                        .lock()
                        .unwrap()
                        .0
                        .push(RECORDS as f64 / took.as_secs_f64());
                    buffer.close().await.unwrap();
                }
                total
            }
        });
    });

    for (name, gzip_min_bytes) in [
        ("buffer_to_uplink_to_receiver_to_sqlite", Some(1_024)),
        ("buffer_to_uplink_to_receiver_to_sqlite_no_gzip", None),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let rates = rates.clone();
                let cpu_per_record = cpu_per_record.clone();
                let no_gzip_cpu = no_gzip_cpu.clone();
                let url = url.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().unwrap();
                        let buffer = Buffer::open(dir.path().join("b.db"), BufferConfig::default())
                            .await
                            .unwrap();
                        fill(&buffer, RECORDS).await;
                        let started = Instant::now();
                        let cpu = process_cpu();
                        let config = UplinkConfig {
                            gzip_min_bytes,
                            ..UplinkConfig::new(url.clone(), "gw-token", "gw-1")
                        };
                        let uplink = Uplink::start(buffer.clone(), config).unwrap();
                        let outcome = uplink
                            .flush(Instant::now() + Duration::from_secs(120))
                            .await
                            .unwrap();
                        let took = started.elapsed();
                        let cpu = process_cpu().saturating_sub(cpu);
                        assert_eq!(outcome, FlushOutcome::Flushed);
                        let status = uplink.status();
                        let counters = status.counters;
                        // Every record answered for once. A batch whose answer was lost (a
                        // timeout) would come back as duplicates, never as a loss.
                        assert_eq!(
                            counters.records_accepted + counters.records_duplicate,
                            RECORDS as u64
                        );
                        if counters.records_duplicate > 0 {
                            eprintln!("uplink_e2e: a batch was re-sent: {status:?}");
                        }
                        uplink.shutdown(Instant::now()).await.unwrap();
                        total += took;
                        if gzip_min_bytes.is_some() {
                            rates
                                .lock()
                                .unwrap()
                                .1
                                .push(RECORDS as f64 / took.as_secs_f64());
                            cpu_per_record
                                .lock()
                                .unwrap()
                                .1
                                .push(cpu.as_secs_f64() * 1e6 / RECORDS as f64);
                        } else {
                            no_gzip_cpu
                                .lock()
                                .unwrap()
                                .push(cpu.as_secs_f64() * 1e6 / RECORDS as f64);
                        }
                        buffer.close().await.unwrap();
                    }
                    total
                }
            });
        });
    }
    group.finish();

    let (append_cpu, e2e_cpu) = cpu_per_record.lock().unwrap().clone();
    let (append, e2e) = rates.lock().unwrap().clone();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (append, e2e) = (median(append), median(e2e));
    eprintln!(
        "uplink_e2e: median buffer append {append:.0} records/s, median end to end (gzip) {e2e:.0} \
         records/s, ratio {:.2}; server store holds {} records",
        e2e / append,
        store.count_blocking("acme").unwrap()
    );
    let (append_cpu, e2e_cpu) = (median(append_cpu), median(e2e_cpu));
    let no_gzip_cpu = median(no_gzip_cpu.lock().unwrap().clone());
    eprintln!(
        "uplink_e2e: median CPU per record (whole process, both ends): buffer append \
         {append_cpu:.1} µs, end to end {e2e_cpu:.1} µs with gzip, {no_gzip_cpu:.1} µs without; \
         on 2 idle cores the end to end path could sustain at most {:.0} records/s",
        2e6 / e2e_cpu
    );
}

criterion_group!(benches, e2e);
criterion_main!(benches);

//! The whole path, as the example binaries assemble it: agents → gateway collector (HTTP, JSON)
//! → durable buffer → uplink (HTTP, protobuf) → server ingest → SQLite store, all on loopback
//! in one process on this machine's 2 cores.
//!
//! `cargo bench -p gateway-benches --bench e2e` (a harness bench: it prints its figures).
//!
//! 1. **Sustained**: agents offer `E2E_RATE` records/s (default 50,000) for `E2E_SECS` s
//!    (default 20) in batches of `E2E_BATCH` (500) from `E2E_SENDERS` (8) concurrent senders;
//!    reports the rate the gateway acknowledged, the rate the server stored, whether the buffer
//!    kept up, and the latency from the agent's send to the server's store (p50, p99, max; from
//!    each record's `timestamp_ms`, set when it is sent, and the store's `received_at_ms`).
//! 2. **Outage**: the server goes away for `E2E_OUTAGE_SECS` s (default 60) while agents keep
//!    sending at the same rate; then it comes back and the bench times the backlog's drain
//!    while the agents go on sending (down to half a second's worth of records), or, with
//!    `E2E_KEEP_SENDING=0`, after they stop (down to an empty buffer).
//!
//! The gateway runs its default uplink settings; `E2E_UPLINK_IN_FLIGHT`,
//! `E2E_UPLINK_CATCH_UP` (catch-up batches in flight) and `E2E_UPLINK_BATCH` (records per
//! batch) override them.
//!
//! Records are 281-byte JSON documents, 500 per request: the shape DESIGN.md's peer
//! measurements (Fluent Bit, NATS) used. Every stored record is read back and counted: the
//! bench fails if any acknowledged record is missing or stored twice.

// A harness bench: `main` is its entry point and prints the figures.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gateway_examples::config::TokenConfig;
use gateway_examples::gateway::{self, GatewayConfig, GatewayOptions};
use gateway_examples::server::{self, Server, ServerConfig, ServerOptions};
use gateway_proto::auth::Role;
use gateway_proto::clock::unix_ms;
use gateway_proto::{Batch, BatchAck, Body, Encoding, JsonText, Record, RecordId, WireMessage};
use gateway_uplink::server::ReadQuery;
use tokio::sync::Mutex;

const TENANT: &str = "bench";
const ADMIN: &str = "bench-admin";
const GATEWAY_ID: &str = "gw-bench";
const GATEWAY_TOKEN: &str = "bench-gateway";
const AGENT_TOKEN: &str = "bench-agent";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn token(token: &str, role: Role, subject: &str) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        tenant: Some(TENANT.into()),
        role,
        subject: subject.into(),
    }
}

fn server_options(listen: SocketAddr, dir: &std::path::Path) -> ServerOptions {
    let mut config = ServerConfig {
        tenant: TENANT.into(),
        tokens: vec![
            token(ADMIN, Role::Admin, "bench"),
            token(GATEWAY_TOKEN, Role::Gateway, GATEWAY_ID),
        ],
        ..ServerConfig::default()
    };
    // One gateway carries the whole load: no per-principal rate limit.
    config.receiver.rate_limit = gateway_uplink::server::RateLimitConfig::unlimited();
    config.store.max_read_limit = 10_000;
    ServerOptions {
        listen,
        data_dir: dir.join("server"),
        config,
    }
}

/// What the senders share.
struct Load {
    client: reqwest::Client,
    url: String,
    batch: usize,
    acknowledged: AtomicU64,
    refused_answers: AtomicU64,
    ids: Mutex<Vec<RecordId>>,
    stop: AtomicBool,
}

impl Load {
    /// One sender: paced batches until `stop`, each retried (same ids) until acknowledged.
    async fn sender(self: Arc<Self>, rate: f64, seq_base: u64) {
        let body = "x".repeat(180);
        let interval = Duration::from_secs_f64(self.batch as f64 / rate);
        let mut next = tokio::time::Instant::now();
        let mut seq = seq_base;
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until(next).await;
            next += interval;
            let now = unix_ms(std::time::SystemTime::now());
            let records: Vec<Record> = (0..self.batch)
                .map(|_| {
                    seq += 1;
                    // 281 bytes of JSON, like the peers' measurements.
                    let doc = format!(
                        r#"{{"seq":{seq},"level":"info","host":"pc-{:04}","msg":"{body}","pid":4242}}"#,
                        seq % 1000
                    );
                    Record::new(
                        "logs",
                        "bench-agent",
                        now,
                        Body::Json(JsonText::from_string(doc).expect("valid JSON")),
                    )
                    .with_id(RecordId::new_v7())
                })
                .collect();
            let batch = Batch::new("", records);
            let bytes = batch.encode(Encoding::Json);
            loop {
                let answer = self
                    .client
                    .post(&self.url)
                    .bearer_auth(AGENT_TOKEN)
                    .header("content-type", "application/json")
                    .body(bytes.clone())
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        let ack = BatchAck::from_json(&r.bytes().await.unwrap_or_default());
                        if let Ok(ack) = ack {
                            self.acknowledged.fetch_add(
                                u64::from(ack.accepted + ack.duplicates),
                                Ordering::Relaxed,
                            );
                            let mut ids = self.ids.lock().await;
                            ids.extend(batch.records.iter().filter_map(|r| r.id));
                        }
                        break;
                    }
                    Ok(r) => {
                        self.refused_answers.fetch_add(1, Ordering::Relaxed);
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
}

async fn start_load(
    url: String,
    rate: f64,
    senders: usize,
    batch: usize,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(senders)
            .build()
            .expect("http client"),
        url,
        batch,
        acknowledged: AtomicU64::new(0),
        refused_answers: AtomicU64::new(0),
        ids: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let tasks = (0..senders)
        .map(|i| tokio::spawn(load.clone().sender(rate / senders as f64, (i as u64) << 40)))
        .collect();
    (load, tasks)
}

async fn stop_load(load: &Load, tasks: Vec<tokio::task::JoinHandle<()>>) {
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
}

/// Wait until the gateway's buffer is empty; returns how long it took.
async fn wait_drained(gateway: &gateway::Gateway, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if gateway
            .buffer()
            .stats()
            .await
            .map(|s| s.records)
            .unwrap_or(1)
            == 0
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Read every stored record: (latencies in ms, ids stored, rows stored).
async fn read_back(server: &Server) -> (Vec<i64>, HashSet<RecordId>, u64) {
    let mut latencies = Vec::new();
    let mut ids = HashSet::new();
    let mut rows = 0;
    let mut after = 0;
    loop {
        let page = server
            .store()
            .read(
                TENANT,
                ReadQuery {
                    stream: None,
                    after,
                    limit: 10_000,
                },
            )
            .await
            .expect("read back");
        if page.records.is_empty() {
            return (latencies, ids, rows);
        }
        for stored in &page.records {
            rows += 1;
            latencies.push(stored.received_at_ms - stored.record.timestamp_ms);
            if let Some(id) = stored.record.id {
                ids.insert(id);
            }
        }
        after = page.next_after;
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let rate = env_u64("E2E_RATE", 50_000) as f64;
    let secs = env_u64("E2E_SECS", 20);
    let outage = env_u64("E2E_OUTAGE_SECS", 60);
    let senders = env_u64("E2E_SENDERS", 8) as usize;
    let batch = env_u64("E2E_BATCH", 500) as usize;
    let keep_sending = env_u64("E2E_KEEP_SENDING", 1) != 0;
    let dir = tempfile::tempdir().expect("temp dir");

    let server = server::start(server_options("127.0.0.1:0".parse().unwrap(), dir.path()))
        .await
        .expect("server");
    let server_addr = server.addr();
    let mut gateway_config = GatewayConfig {
        tenant: TENANT.into(),
        agent_tokens: vec![token(AGENT_TOKEN, Role::Agent, "*")],
        ..GatewayConfig::default()
    };
    // One site token carries the whole load: no rate limit worth the name.
    gateway_config.collector.requests_per_second = 1e9;
    gateway_config.collector.request_burst = 1e9;
    gateway_config.collector.records_per_second = 1e12;
    gateway_config.collector.record_burst = 1e12;
    gateway_config.control.session.backoff.cap_ms = 2_000;
    // The uplink's defaults unless asked otherwise (to see what batch size and concurrency do).
    if let Ok(v) = std::env::var("E2E_UPLINK_IN_FLIGHT") {
        gateway_config.uplink.in_flight = v.parse().expect("E2E_UPLINK_IN_FLIGHT: a number");
    }
    if let Ok(v) = std::env::var("E2E_UPLINK_CATCH_UP") {
        gateway_config.uplink.catch_up_in_flight =
            v.parse().expect("E2E_UPLINK_CATCH_UP: a number");
    }
    if let Ok(v) = std::env::var("E2E_UPLINK_BATCH") {
        gateway_config.uplink.batch.max_records = v.parse().expect("E2E_UPLINK_BATCH: a number");
    }
    let gateway = gateway::start(GatewayOptions {
        id: GATEWAY_ID.into(),
        token: GATEWAY_TOKEN.into(),
        server: server.url(),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("gateway"),
        config: gateway_config,
    })
    .await
    .expect("gateway");
    let collector = format!("{}/v1/records", gateway.url());
    println!(
        "e2e: {rate} records/s offered by {senders} senders in batches of {batch}, 281-byte JSON records"
    );

    // ------------------------------------------------------------------ sustained
    let started = Instant::now();
    let (load, tasks) = start_load(collector.clone(), rate, senders, batch).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop_load(&load, tasks).await;
    let produced_for = started.elapsed();
    let backlog_at_end = gateway
        .buffer()
        .stats()
        .await
        .map(|s| s.records)
        .unwrap_or(0);
    let drain = wait_drained(&gateway, Duration::from_secs(120)).await;
    let acknowledged = load.acknowledged.load(Ordering::Relaxed);
    let (mut latencies, stored_ids, rows) = read_back(&server).await;
    latencies.sort_unstable();
    let sent_ids: HashSet<RecordId> = load.ids.lock().await.iter().copied().collect();
    let missing = sent_ids.difference(&stored_ids).count();
    println!(
        "sustained: {secs} s · gateway acknowledged {:.0} records/s · server stored {:.0} records/s within the run (+{backlog_at_end} buffered at the end, drained in {:.1} s)",
        acknowledged as f64 / produced_for.as_secs_f64(),
        (rows - backlog_at_end.min(rows)) as f64 / produced_for.as_secs_f64(),
        drain.map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    println!(
        "latency agent send → server stored: p50 {} ms · p99 {} ms · max {} ms ({} records)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    println!(
        "exactly once: acknowledged {acknowledged}, stored rows {rows}, distinct {} , missing {missing}, refused answers {}",
        stored_ids.len(),
        load.refused_answers.load(Ordering::Relaxed)
    );
    assert_eq!(missing, 0, "acknowledged records are missing at the server");
    assert_eq!(rows as usize, stored_ids.len(), "records stored twice");

    // ------------------------------------------------------------------ outage
    if outage == 0 {
        return;
    }
    server.shutdown().await;
    let (load, tasks) = start_load(collector, rate, senders, batch).await;
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let server = server::start(server_options(server_addr, dir.path()))
        .await
        .expect("server restart");
    let backlog = gateway
        .buffer()
        .stats()
        .await
        .map(|s| s.records)
        .unwrap_or(0);
    let back_at = Instant::now();
    // By default agents keep sending at the same rate: the backlog drains while new records
    // arrive. `E2E_KEEP_SENDING=0` stops them when the server returns: the backlog alone.
    let mut load_tasks = Some(tasks);
    if !keep_sending && let Some(tasks) = load_tasks.take() {
        stop_load(&load, tasks).await;
    }
    let drained_at_depth = if keep_sending {
        (rate as u64 / 2).max(batch as u64 * 4)
    } else {
        0
    };
    let mut drained = None;
    while back_at.elapsed() < Duration::from_secs(300) {
        let depth = gateway
            .buffer()
            .stats()
            .await
            .map(|s| s.records)
            .unwrap_or(u64::MAX);
        if depth <= drained_at_depth {
            drained = Some(back_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(tasks) = load_tasks {
        stop_load(&load, tasks).await;
    }
    let offered_during_outage = load.acknowledged.load(Ordering::Relaxed);
    let _ = wait_drained(&gateway, Duration::from_secs(120)).await;
    println!(
        "outage: server away {:.0} s at {rate} records/s → backlog {backlog} records; drained in {} ({}); {} acknowledged by the gateway over the phase",
        back_at.duration_since(down_at).as_secs_f64(),
        drained.map_or("more than 300 s".to_string(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        )),
        if keep_sending {
            "agents still sending"
        } else {
            "agents stopped when the server returned"
        },
        offered_during_outage,
    );
    let (_, stored_ids, rows) = read_back(&server).await;
    let sent_ids: HashSet<RecordId> = load.ids.lock().await.iter().copied().collect();
    let missing = sent_ids.difference(&stored_ids).count();
    println!(
        "exactly once after the outage: stored rows {rows}, distinct {}, missing {missing}",
        stored_ids.len()
    );
    assert_eq!(missing, 0, "acknowledged records are missing at the server");
    assert_eq!(rows as usize, stored_ids.len(), "records stored twice");
    gateway.shutdown().await.ok();
    server.shutdown().await;
}

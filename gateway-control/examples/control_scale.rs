//! Scale of the control channel: 10,000 gateways on one server over loopback WebSockets.
//!
//! The server (a `gateway_control::server::Hub` behind axum, SQLite command queue) runs in
//! this process; the 10,000 gateway clients (`GatewayClient`, in-memory journals, commands
//! completed at once) run in a child process — this same executable re-run with
//! `CONTROL_SCALE_ROLE=clients` — because one process may hold at most 20,000 open files.
//!
//! Reported:
//! * server memory per idle connection: growth of this process's RSS from before the first
//!   connection to all connections established and idle, divided by the number of gateways
//!   (target ≤ 20 KiB);
//! * time from enqueueing one command for every gateway (one `enqueue_many` transaction) to
//!   all of them `succeeded` in the queue (target ≤ 5 s).
//!
//! `CONTROL_SCALE_GATEWAYS` changes the number of gateways (default 10,000).
//! Run: `cargo run --release -p gateway-control --example control_scale`, or as the bench
//! `cargo bench -p gateway-benches --bench control_scale` (which includes this file).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_control::CommandState;
use gateway_control::gateway::{
    GatewayClient, GatewayClientConfig, GatewayEvent, MemoryJournal, Outcome, default_tls_config,
};
use gateway_control::server::{
    CommandFilter, EventLog, EventLogConfig, Hub, HubConfig, NewCommand, QueueConfig,
    SqliteCommandQueue,
};
use gateway_proto::auth::{Authenticator, GatewayDirectory, Principal, Role};
use gateway_proto::clock::{Clock, SystemClock};

const ROLE: &str = "CONTROL_SCALE_ROLE";
const URL: &str = "CONTROL_SCALE_URL";
const COUNT: &str = "CONTROL_SCALE_GATEWAYS";

/// Token `tok-<gateway id>` stands for that gateway.
struct BenchTokens;

impl Authenticator for BenchTokens {
    fn authenticate(&self, token: &str) -> Option<Principal> {
        let gateway = token.strip_prefix("tok-")?;
        Some(Principal::new("bench", gateway, Role::Gateway))
    }
}

/// Every `gw-N` is provisioned in tenant `bench`.
impl GatewayDirectory for BenchTokens {
    fn tenant_of(&self, gateway_id: &str) -> Option<String> {
        gateway_id.starts_with("gw-").then(|| "bench".to_owned())
    }
}

fn gateway_count() -> usize {
    std::env::var(COUNT)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn main() {
    if std::env::var(ROLE).as_deref() == Ok("clients") {
        clients();
    } else {
        server();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The child process: `COUNT` gateways that complete every command at once.
fn clients() {
    let url = std::env::var(URL).expect("CONTROL_SCALE_URL");
    let count = gateway_count();
    runtime().block_on(async move {
        let tls = default_tls_config().expect("tls");
        let mut handles = Vec::with_capacity(count);
        let ids: Vec<usize> = (0..count).collect();
        for batch in ids.chunks(250) {
            let mut batch_handles = Vec::new();
            for i in batch {
                let mut config = GatewayClientConfig {
                    url: url.clone(),
                    token: format!("tok-gw-{i}"),
                    ..Default::default()
                };
                config.session.gateway_id = format!("gw-{i}");
                config.session.backoff.base_ms = 200;
                config.session.backoff.cap_ms = 5_000;
                let (handle, mut events) =
                    GatewayClient::spawn_with_tls(config, MemoryJournal::new(), tls.clone())
                        .expect("client");
                let runner = handle.clone();
                tokio::spawn(async move {
                    while let Some(event) = events.recv().await {
                        if let GatewayEvent::Command(command) = event {
                            let _ = runner
                                .report_outcome(command.id, Outcome::succeeded())
                                .await;
                        }
                    }
                });
                batch_handles.push(handle.clone());
                handles.push(handle);
            }
            for handle in batch_handles {
                let _ =
                    tokio::time::timeout(Duration::from_secs(120), handle.wait_established()).await;
            }
        }
        println!("connected {count}");
        // Stay connected until the parent kills this process.
        std::future::pending::<()>().await;
    });
}

fn server() {
    let count = gateway_count();
    runtime().block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let queue = SqliteCommandQueue::open(dir.path().join("queue.db"), QueueConfig::default())
            .expect("queue");
        let events = EventLog::in_memory(
            EventLogConfig {
                history: 10_000,
                channel_capacity: 4 * count + 1_024,
            },
            clock.clone(),
        )
        .expect("event log");
        let hub = Hub::builder(
            HubConfig::default(),
            Arc::new(queue),
            events.clone(),
            Arc::new(BenchTokens),
            clock,
        )
        .directory(Arc::new(BenchTokens))
        .build()
        .expect("hub");
        hub.spawn_timers();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = hub.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Fill the event log's history once, so its bounded growth is not counted per
        // connection, then take the baseline.
        for i in 0..10_000 {
            events.publish("bench.warmup", None, serde_json::json!({"gateway_id": format!("gw-{i}"), "epoch": i, "online": true, "transport": "web_socket", "reason": "session started"}));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = rss_kib("self");

        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .env(ROLE, "clients")
            .env(URL, format!("ws://{addr}/v1/control"))
            .env(COUNT, count.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the client process");
        let child_pid = child.id().to_string();
        let stdout = child.stdout.take().expect("child stdout");
        let connect_start = Instant::now();
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.starts_with("connected"))
        });
        while hub.connected().len() < count {
            assert!(
                connect_start.elapsed() < Duration::from_secs(600),
                "only {} of {count} gateways connected",
                hub.connected().len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let connect_time = connect_start.elapsed();
        assert!(ready.await.unwrap_or(false), "client process did not report");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_idle = rss_kib("self");
        let client_rss = rss_kib(&child_pid);
        let per_connection_kib = (rss_idle.saturating_sub(rss_before)) as f64 / count as f64;

        let mut live = events.subscribe(None).live;
        let commands: Vec<NewCommand> = (0..count)
            .map(|i| NewCommand::new(format!("gw-{i}"), "bench.noop"))
            .collect();
        let start = Instant::now();
        hub.enqueue_many(commands).expect("enqueue");
        let enqueued = start.elapsed();
        let mut succeeded = 0;
        let mut lagged = false;
        let (mut sent, mut received) = (0, 0);
        let (mut all_sent, mut all_received) = (None, None);
        while succeeded < count {
            match tokio::time::timeout(Duration::from_secs(120), live.recv()).await {
                Ok(Ok(event)) => {
                    if event.kind == "command.state" {
                        match event.data["to"].as_str() {
                            Some("succeeded") => succeeded += 1,
                            Some("sent") => sent += 1,
                            Some("received") => received += 1,
                            _ => {}
                        }
                        if sent == count && all_sent.is_none() {
                            all_sent = Some(start.elapsed());
                        }
                        if received == count && all_received.is_none() {
                            all_received = Some(start.elapsed());
                        }
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    lagged = true;
                    break;
                }
                _ => panic!("only {succeeded} of {count} commands succeeded within 120 s"),
            }
        }
        if lagged {
            // Fall back to polling the queue.
            loop {
                let done = hub
                    .commands(&CommandFilter {
                        state: Some(CommandState::Succeeded),
                        limit: count + 1,
                        ..CommandFilter::default()
                    })
                    .expect("list")
                    .len();
                if done >= count {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let all_succeeded = start.elapsed();
        let stored = hub
            .commands(&CommandFilter {
                state: Some(CommandState::Succeeded),
                limit: count + 1,
                ..CommandFilter::default()
            })
            .expect("list")
            .len();
        let _ = child.kill();
        let _ = child.wait();

        println!("control_scale: {count} gateways, server and clients in separate processes");
        println!("  connect all:                 {:>8.1} s", connect_time.as_secs_f64());
        println!("  server RSS before / idle:    {rss_before} KiB / {rss_idle} KiB");
        println!("  server memory per idle conn: {per_connection_kib:>8.1} KiB (target <= 20 KiB)");
        println!("  client process RSS:          {client_rss} KiB");
        println!("  enqueue {count} commands:      {:>8.3} s (one transaction)", enqueued.as_secs_f64());
        if let (Some(sent), Some(received)) = (all_sent, all_received) {
            println!(
                "  enqueue -> all sent / all received: {:.3} s / {:.3} s",
                sent.as_secs_f64(),
                received.as_secs_f64()
            );
        }
        println!(
            "  enqueue -> all succeeded:    {:>8.3} s (target <= 5 s), {stored} succeeded in the queue",
            all_succeeded.as_secs_f64()
        );
        assert_eq!(stored, count, "every command must end succeeded");
    });
}

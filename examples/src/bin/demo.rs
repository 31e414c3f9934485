//! `demo`: the whole system in one process, on temporary SQLite files, with no setup.
//!
//! A server, a gateway, a simulated Hikvision door controller and a few simulated agents. It
//! shows records flowing, a policy published and applied, a door opened through a command,
//! the server taken away while records pile up in the gateway's buffer and then the backlog
//! draining — and ends with `sent N, stored N, duplicates 0`, counted from the server's store.
//!
//! `cargo run --release -p gateway-examples --bin demo` (`--keep` leaves the server running).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gateway_devices::RegistryConfig;
use gateway_devices::simulator::{Simulator, SimulatorConfig};
use gateway_examples::agent_sim::{self, AgentSimConfig, Counters};
use gateway_examples::config::TokenConfig;
use gateway_examples::gateway::{self, GatewayConfig, GatewayOptions};
use gateway_examples::server::{ServerConfig, ServerOptions, ServerThread};
use gateway_examples::telemetry;
use gateway_proto::auth::Role;
use serde_json::{Value, json};

const TENANT: &str = "demo";
const ADMIN_TOKEN: &str = "demo-admin-token";
const GATEWAY_ID: &str = "gw-demo";
const GATEWAY_TOKEN: &str = "demo-gateway-token";
const AGENT_TOKEN: &str = "demo-agent-token";
const DOOR: &str = "front-door";

/// The agent gateway system, end to end, in one process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Records per second from all agents together.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds the server stays away.
    #[arg(long, default_value_t = 5)]
    outage: u64,
    /// Leave the server (and gateway) running at the end, with the address printed.
    #[arg(long)]
    keep: bool,
}

struct Demo {
    started: Instant,
    http: reqwest::Client,
}

impl Demo {
    fn say(&self, text: impl AsRef<str>) {
        println!(
            "[{:>5.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            text.as_ref()
        );
    }

    fn step(&self, title: &str) {
        println!();
        self.say(format!("── {title}"));
    }

    async fn operator(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, &url).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{url} answered {status}: {value}");
        }
        Ok(value)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Expected failures (the uplink during the outage) log at `warn`; keep the story readable.
    telemetry::init_logging("error");
    telemetry::install_crypto_provider();
    telemetry::prometheus();
    let args = Args::parse();
    let demo = Demo {
        started: Instant::now(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    println!("Agent gateway demo — data in {}", dir.path().display());

    // ------------------------------------------------------------------ start everything
    demo.step("starting a server, a gateway, a simulated door controller and agents");
    let mut server_options = ServerOptions {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("server"),
        config: ServerConfig {
            tenant: TENANT.into(),
            tokens: vec![
                token(ADMIN_TOKEN, Role::Admin, "demo-operator"),
                token(GATEWAY_TOKEN, Role::Gateway, GATEWAY_ID),
            ],
            ..ServerConfig::default()
        },
    };
    // Heartbeats every second so presence and status move at demo speed.
    server_options.config.hub.session.heartbeat_interval_ms = 1_000;
    let server = ServerThread::start(server_options.clone()).await?;
    let server_url = server.url();
    demo.say(format!("server listening on {server_url}"));

    let device = Simulator::start(SimulatorConfig::default()).await?;
    demo.say(format!(
        "Hikvision simulator ({DOOR}) at {}",
        device.base_url()
    ));

    let mut gateway_config = GatewayConfig {
        tenant: TENANT.into(),
        agent_tokens: vec![token(AGENT_TOKEN, Role::Agent, "*")],
        devices: RegistryConfig::from_json(
            &json!({"devices": {DOOR: {
                "kind": "hikvision-isapi",
                "settings": {
                    "base_url": device.base_url(),
                    "username": "admin",
                    "password": SimulatorConfig::DEFAULT_PASSWORD,
                    "events": {"start": "earliest"}
                }
            }}})
            .to_string(),
        )?,
        status_interval_ms: 1_000,
        ..GatewayConfig::default()
    };
    // Reconnect attempts at most 2 s apart, so the gateway notices the server's return fast.
    gateway_config.control.session.backoff.cap_ms = 2_000;
    let gateway = gateway::start(GatewayOptions {
        id: GATEWAY_ID.into(),
        token: GATEWAY_TOKEN.into(),
        server: server_url.clone(),
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("gateway"),
        config: gateway_config,
    })
    .await?;
    demo.say(format!(
        "gateway {GATEWAY_ID} serving agents on {}",
        gateway.url()
    ));
    wait_until(Duration::from_secs(10), || async {
        matches!(
            gateway.control_state(),
            gateway_control::ConnectionState::Established { .. }
        )
    })
    .await
    .context("the gateway did not connect to the server")?;
    demo.say("gateway connected to the server's control channel");

    // The agents run through every step below and stop at the end of the outage phase.
    let production = Duration::from_secs(8 + args.outage);
    let counters = Arc::new(Counters::default());
    let agents = tokio::spawn(agent_sim::run(
        AgentSimConfig {
            gateway: gateway.url(),
            token: AGENT_TOKEN.into(),
            agents: args.agents,
            rate: args.rate,
            duration: production,
            batch_size: 200,
            drain_timeout: Duration::from_secs(60),
            agent_prefix: "agent".into(),
            ..AgentSimConfig::default()
        },
        counters.clone(),
    ));

    // ------------------------------------------------------------------ records flowing
    demo.step(&format!(
        "records flowing: {} agents at {} records/s → gateway buffer → server",
        args.agents, args.rate
    ));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stored = stored_count(&demo, &server_url).await.unwrap_or(0);
        let buffered = gateway
            .buffer()
            .stats()
            .await
            .map(|s| s.records)
            .unwrap_or(0);
        demo.say(format!(
            "agents acknowledged {:>6} · in the gateway's buffer {:>5} · stored at the server {:>6}",
            counters.acknowledged.load(Ordering::Relaxed),
            buffered,
            stored
        ));
    }

    // ------------------------------------------------------------------ a policy
    demo.step("a policy published, rolled out and applied");
    let policy_url = format!("{server_url}/v1/policies/agents");
    let published = demo
        .operator(
            reqwest::Method::POST,
            policy_url.clone(),
            Some(json!({"document": {"log_level": "info", "upload_interval_s": 10}, "message": "first version"})),
        )
        .await?;
    demo.say(format!(
        "published policy `agents` v{} (checksum {}…)",
        published["version"],
        short(&published["checksum"])
    ));
    demo.operator(
        reqwest::Method::POST,
        format!("{policy_url}/assignments"),
        Some(json!({"target": {"tenant": TENANT}})),
    )
    .await?;
    demo.say(format!("assigned to every gateway of tenant `{TENANT}`"));
    wait_for_applied(&demo, &policy_url, 1).await?;
    let v2 = demo
        .operator(
            reqwest::Method::POST,
            policy_url.clone(),
            Some(json!({"document": {"log_level": "debug", "upload_interval_s": 10}, "message": "debug logging"})),
        )
        .await?;
    demo.say(format!(
        "published v{} (sent to the gateway as a JSON Patch)",
        v2["version"]
    ));
    wait_for_applied(&demo, &policy_url, 2).await?;
    let served = demo
        .http
        .get(format!("{}/v1/policy?name=agents", gateway.url()))
        .bearer_auth(AGENT_TOKEN)
        .send()
        .await?;
    let etag = served
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let document: Value = served.json().await.unwrap_or(Value::Null);
    demo.say(format!(
        "the gateway serves it to its agents: {document} (ETag {etag})"
    ));

    // ------------------------------------------------------------------ a door
    demo.step("a door opened through a command, followed on the event stream");
    let mut events = demo
        .http
        .get(format!("{server_url}/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    if !events.status().is_success() {
        bail!("GET /v1/events answered {}", events.status());
    }
    let command = demo
        .operator(
            reqwest::Method::POST,
            format!("{server_url}/v1/gateways/{GATEWAY_ID}/commands"),
            Some(json!({"kind": "device.door.open", "target": DOOR, "payload": {"door": 1}})),
        )
        .await?;
    let command_id = command["id"].as_str().unwrap_or_default().to_string();
    demo.say(format!(
        "operator issued device.door.open on {DOOR} → command {command_id}"
    ));
    follow_command(&demo, &mut events, &command_id).await?;
    drop(events);
    demo.say(format!(
        "the simulated controller reports door 1: {:?}",
        device.door_state(1)
    ));

    // ------------------------------------------------------------------ an outage
    demo.step(&format!("the server goes away for {} s", args.outage));
    server.kill().await;
    demo.say("server stopped");
    for _ in 0..args.outage {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stats = gateway.buffer().stats().await?;
        demo.say(format!(
            "buffered at the gateway: {:>6} records ({} KiB) · uplink {}",
            stats.records,
            stats.bytes / 1024,
            gateway.uplink().health()
        ));
    }
    let backlog = gateway.buffer().stats().await?.records;
    let server = ServerThread::start(ServerOptions {
        listen: server_addr(&server_url)?,
        ..server_options.clone()
    })
    .await?;
    let back_at = Instant::now();
    demo.say(format!(
        "server back on {} with the same data",
        server.url()
    ));
    let mut drained_in = None;
    while back_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let stats = gateway.buffer().stats().await?;
        if stats.records < args.rate as u64 / 2 && drained_in.is_none() {
            drained_in = Some(back_at.elapsed());
            break;
        }
    }
    match drained_in {
        Some(t) => demo.say(format!(
            "backlog of {backlog} records drained in {:.1} s (uplink {})",
            t.as_secs_f64(),
            gateway.uplink().health()
        )),
        None => demo.say(format!(
            "backlog of {backlog} records not drained after 60 s"
        )),
    }

    // ------------------------------------------------------------------ the count
    demo.step("counting");
    let summary = agents.await.context("the agents panicked")??;
    demo.say(format!("agents: {summary}"));
    let flushed = gateway
        .uplink()
        .flush(tokio::time::Instant::now() + Duration::from_secs(30))
        .await?;
    demo.say(format!("gateway uplink flush: {flushed:?}"));
    let stored = read_back(&demo, &server_url).await?;
    let sent = summary.acknowledged;
    let mut present = 0u64;
    let mut duplicates = 0u64;
    for id in &summary.acknowledged_ids {
        if let Some(&n) = stored.get(&id.to_string()) {
            present += 1;
            duplicates += n - 1;
        }
    }
    let device_records = stored.len() as u64 - present;
    demo.say(format!(
        "the server holds {} records: {present} from the agents, {device_records} device events",
        stored.values().sum::<u64>()
    ));
    println!();
    println!(
        "sent {sent}, stored {present}, duplicates {duplicates}{}",
        if sent == present && duplicates == 0 && summary.unacknowledged == 0 {
            " — every record exactly once"
        } else {
            " — MISMATCH"
        }
    );

    if args.keep {
        println!();
        println!(
            "The server keeps running at {} — explore the API (docs/API.md):",
            server.url()
        );
        println!(
            "  curl -H 'Authorization: Bearer {ADMIN_TOKEN}' {}/v1/gateways",
            server.url()
        );
        println!(
            "  curl -H 'Authorization: Bearer {ADMIN_TOKEN}' '{}/v1/records?limit=5'",
            server.url()
        );
        println!(
            "  curl -N -H 'Authorization: Bearer {ADMIN_TOKEN}' {}/v1/events",
            server.url()
        );
        println!("Gateway status: curl {}/v1/status", gateway.url());
        println!("Ctrl-C to stop.");
        gateway_examples::wait_for_signal().await;
    }
    gateway.shutdown().await?;
    server.kill().await;
    device.shutdown().await;
    if sent != present || duplicates != 0 || summary.unacknowledged != 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn token(token: &str, role: Role, subject: &str) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        tenant: Some(TENANT.into()),
        role,
        subject: subject.into(),
    }
}

fn short(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(12)
        .collect()
}

fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    Ok(url.trim_start_matches("http://").parse()?)
}

async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gave up after {limit:?}")
}

/// Poll the policy's rollout until the gateway reports `version` applied.
async fn wait_for_applied(demo: &Demo, policy_url: &str, version: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let rollout = demo
            .operator(reqwest::Method::GET, format!("{policy_url}/rollout"), None)
            .await?;
        let gateways = rollout["gateways"].as_array().cloned().unwrap_or_default();
        for g in &gateways {
            let reported = match g["reported_version"].as_u64() {
                Some(v) => format!("v{v}"),
                None => "nothing yet".into(),
            };
            let line = format!(
                "rollout: {} desired v{} · reports {reported} · {}",
                g["gateway_id"].as_str().unwrap_or("?"),
                g["desired_version"],
                g["state"].as_str().unwrap_or("?")
            );
            if line != last {
                demo.say(&line);
                last = line;
            }
            if g["state"] == "applied" && g["reported_version"] == version {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("policy version {version} was not applied within 15 s")
}

/// Print each `command.state` event of command `id` from the SSE stream until a terminal one.
async fn follow_command(
    demo: &Demo,
    events: &mut reqwest::Response,
    id: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending = String::new();
    let mut first_at: Option<i64> = None;
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .context("no event for 5 s")??
            .context("the event stream ended")?;
        pending.push_str(&String::from_utf8_lossy(&chunk));
        // SSE events end with a blank line; each has `event:` and `data:` lines.
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let kind = sse_field(&block, "event");
            let Some(data) = sse_field(&block, "data") else {
                continue;
            };
            if kind.as_deref() != Some("command.state") {
                continue;
            }
            let change: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if change["id"] != id {
                continue;
            }
            let at = change["at_ms"].as_i64().unwrap_or(0);
            let offset = at - *first_at.get_or_insert(at);
            let to = change["to"].as_str().unwrap_or("?");
            let detail = change["detail"].as_str().unwrap_or("");
            demo.say(format!("command.state {to:<11} (+{offset} ms) {detail}"));
            if matches!(
                to,
                "succeeded" | "failed" | "rejected" | "expired" | "timed_out" | "canceled"
            ) {
                return Ok(());
            }
        }
    }
    bail!("the command did not finish within 20 s")
}

fn sse_field(block: &str, name: &str) -> Option<String> {
    block
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.strip_prefix(' ').unwrap_or(v).to_string())
        .reduce(|a, b| a + "\n" + &b)
}

/// Records stored at the server for the demo tenant.
async fn stored_count(demo: &Demo, server_url: &str) -> anyhow::Result<u64> {
    Ok(read_back(demo, server_url).await?.values().sum())
}

/// Every record id stored at the server, with how many times it is stored.
async fn read_back(demo: &Demo, server_url: &str) -> anyhow::Result<HashMap<String, u64>> {
    let mut ids = HashMap::new();
    let mut after = 0u64;
    loop {
        let page = demo
            .operator(
                reqwest::Method::GET,
                format!("{server_url}/v1/records?after={after}&limit=1000"),
                None,
            )
            .await?;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return Ok(ids);
        }
        for r in &records {
            if let Some(id) = r["record"]["id"].as_str() {
                *ids.entry(id.to_string()).or_insert(0) += 1;
            }
            after = after.max(r["position"].as_u64().unwrap_or(after));
        }
    }
}

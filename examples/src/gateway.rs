//! The `gateway` assembled from the libraries: the collector API for agents, the durable
//! buffer, the uplink, the control channel with its command journal, the policy applier and
//! the device registry — on one axum listener.
//!
//! Wiring only. The command router (which library runs which command kind) and the status
//! snapshot are the glue the DESIGN asks the binaries to own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gateway_buffer::{Buffer, BufferConfig};
use gateway_control::gateway::agents::AGENT_COMMAND_PREFIX;
use gateway_control::gateway::{
    GatewayClient, GatewayClientConfig, GatewayHandle, JournalConfig, Outcome, SqliteJournal,
};
use gateway_control::{AgentService, AgentServiceConfig, SqliteAgentStore, agent_routes};
use gateway_control::{ConnectionState, GatewayEvent, GatewaySessionConfig};
use gateway_devices::{DeviceRegistry, EventCursor, RegistryConfig, hikvision::HikvisionFactory};
use gateway_policy::{
    AcceptAll, ApplierConfig, FileAppliedStore, PolicyApplier, PolicyReader, policy_router,
};
use gateway_proto::auth::{Authenticator, Role, bearer_token};
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{
    BufferPressure, Command, CommandAckState, ControlFrame, ErrorBody, ErrorCode, PolicyUpdate,
    StatusSnapshot, UplinkHealth,
};
use gateway_uplink::server::{BufferSink, BufferSinkConfig, Receiver, ReceiverConfig};
use gateway_uplink::{FlushOutcome, Uplink, UplinkConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, TokenConfig};
use crate::telemetry;

/// The gateway's configuration file (TOML). Every section has defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Tenant of the agent tokens (used for rate limiting and logs). Default `default`.
    pub tenant: String,
    /// Tokens agents present (`role = "agent"`, subject = agent id or `*` for any agent).
    pub agent_tokens: Vec<TokenConfig>,
    /// The durable buffer.
    pub buffer: BufferConfig,
    /// Upload settings (server URL, token and id come from the command line).
    pub uplink: UplinkConfig,
    /// Control-channel settings (URL, token and id come from the command line).
    pub control: GatewayClientConfig,
    /// Agent registry: heartbeat interval, limits.
    pub agents: AgentServiceConfig,
    /// Limits and rate limits of the collector's `POST /v1/records`.
    pub collector: CollectorConfig,
    /// Back-pressure answers of the collector.
    pub collector_sink: BufferSinkConfig,
    /// Policy verification (Ed25519 public key).
    pub policy: ApplierConfig,
    /// Name of the policy served to agents (`GET /v1/policy`, the checksum in their
    /// heartbeats). Default `agents`.
    pub agent_policy: String,
    /// Devices driven by this gateway.
    pub devices: RegistryConfig,
    /// How often device events are polled, ms. Default 2,000.
    pub device_poll_ms: u64,
    /// How often the status snapshot is refreshed, ms. Default 5,000.
    pub status_interval_ms: u64,
    /// How long a graceful shutdown may spend flushing the buffer, ms. Default 10,000.
    pub shutdown_flush_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tenant: "default".into(),
            agent_tokens: Vec::new(),
            buffer: BufferConfig::default(),
            uplink: UplinkConfig::default(),
            control: GatewayClientConfig::default(),
            agents: AgentServiceConfig::default(),
            collector: CollectorConfig::default(),
            collector_sink: BufferSinkConfig::default(),
            policy: ApplierConfig::default(),
            agent_policy: "agents".into(),
            devices: RegistryConfig::default(),
            device_poll_ms: 2_000,
            status_interval_ms: 5_000,
            shutdown_flush_ms: 10_000,
        }
    }
}

/// The collector's settings. Only agents may post; every field defaults on its own, so a
/// file that sets one keeps the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Size and validation limits of batches from agents.
    pub limits: gateway_proto::Limits,
    /// Requests per second per principal. A site-wide agent token is one principal for every
    /// agent of the site. Default 2,000.
    pub requests_per_second: f64,
    /// Burst of requests. Default 4,000.
    pub request_burst: f64,
    /// Records per second per principal. Default 200,000.
    pub records_per_second: f64,
    /// Burst of records. Default 400,000.
    pub record_burst: f64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            limits: gateway_proto::Limits::default(),
            requests_per_second: 2_000.0,
            request_burst: 4_000.0,
            records_per_second: 200_000.0,
            record_burst: 400_000.0,
        }
    }
}

impl CollectorConfig {
    /// The receiver configuration: agents only, these limits.
    pub fn receiver(&self) -> ReceiverConfig {
        use gateway_uplink::server::{BucketConfig, RateLimitConfig};
        ReceiverConfig {
            limits: self.limits.clone(),
            rate_limit: RateLimitConfig {
                requests: Some(BucketConfig {
                    per_second: self.requests_per_second,
                    burst: self.request_burst,
                }),
                records: Some(BucketConfig {
                    per_second: self.records_per_second,
                    burst: self.record_burst,
                }),
            },
            ingest_roles: vec![Role::Agent],
            ..ReceiverConfig::default()
        }
    }
}

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// This gateway's id (must match the identity of `token` on the server).
    pub id: String,
    /// Bearer token for the server (uplink and control channel).
    pub token: String,
    /// Base URL of the server, `http(s)://host:port`.
    pub server: String,
    /// Address of the collector API for agents.
    pub listen: SocketAddr,
    /// Directory of the buffer, journal, policies and device cursors.
    pub data_dir: PathBuf,
    /// The configuration.
    pub config: GatewayConfig,
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    parts: Arc<Parts>,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    _data_dir_lock: std::fs::File,
}

/// The pieces the tasks and handlers share.
struct Parts {
    id: String,
    buffer: Buffer,
    uplink: Uplink,
    control: GatewayHandle,
    agents: AgentService,
    applier: Mutex<PolicyApplier<FileAppliedStore>>,
    reader: PolicyReader,
    devices: DeviceRegistry,
    clock: Arc<dyn Clock>,
    started: Instant,
    data_dir: PathBuf,
    status: Mutex<StatusSnapshot>,
    accepting: AtomicBool,
    config: GatewayConfig,
}

impl Gateway {
    /// The collector's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The buffer.
    pub fn buffer(&self) -> &Buffer {
        &self.parts.buffer
    }

    /// The uplink.
    pub fn uplink(&self) -> &Uplink {
        &self.parts.uplink
    }

    /// The control channel's connection state.
    pub fn control_state(&self) -> ConnectionState {
        self.parts.control.state()
    }

    /// Graceful stop: refuse new records, flush the buffer within the configured deadline,
    /// close the control channel, and stop. What is not flushed stays in the buffer for the
    /// next start.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.parts.accepting.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.parts.config.shutdown_flush_ms);
        let flushed = self.parts.uplink.flush(deadline).await;
        tracing::info!(?flushed, "uplink flushed for shutdown");
        self.parts.control.close();
        for task in &self.background {
            task.abort();
        }
        let mut serve = self.serve;
        if tokio::time::timeout(Duration::from_secs(2), &mut serve)
            .await
            .is_err()
        {
            serve.abort();
        }
        Ok(())
    }
}

/// Open everything, connect to the server, start serving agents.
pub async fn start(options: GatewayOptions) -> anyhow::Result<Gateway> {
    let GatewayOptions {
        id,
        token,
        server,
        listen,
        data_dir,
        config,
    } = options;
    let data_dir_lock = crate::lock_data_dir(&data_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let agent_auth = config::authenticator(&config.agent_tokens, &config.tenant)?;

    let buffer = Buffer::open(data_dir.join("buffer.db"), config.buffer.clone())
        .await
        .context("opening the buffer")?;
    let uplink_config = UplinkConfig {
        server_url: server.clone(),
        token: token.clone(),
        gateway_id: id.clone(),
        ..config.uplink.clone()
    };
    let uplink = Uplink::start(buffer.clone(), uplink_config).context("starting the uplink")?;

    let (applier, report) = PolicyApplier::open(
        config.policy.clone(),
        FileAppliedStore::open(data_dir.join("policies")).context("opening the policy store")?,
        AcceptAll,
    )
    .context("loading the applied policies")?;
    for problem in &report.problems {
        tracing::warn!(?problem, "a stored policy did not load");
    }
    let reader = applier.reader();

    let devices = DeviceRegistry::builder()
        .with_factory(HikvisionFactory)
        .with_clock(clock.clone())
        .build(&config.devices)
        .context("building the device registry")?;

    let journal = SqliteJournal::open(data_dir.join("commands.db"), JournalConfig::default())
        .context("opening the command journal")?;
    let control_config = GatewayClientConfig {
        url: control_url(&server)?,
        token,
        session: GatewaySessionConfig {
            gateway_id: id.clone(),
            ..config.control.session.clone()
        },
        ..config.control.clone()
    };
    let (control, events) = GatewayClient::builder(control_config, journal)
        .applied_policies(applier.applied_policies())
        .spawn()
        .context("starting the control channel")?;

    let agent_policy = config.agent_policy.clone();
    let checksum_reader = reader.clone();
    let agents = AgentService::builder(id.clone())
        .config(config.agents.clone())
        .clock(clock.clone())
        .store(
            SqliteAgentStore::open(data_dir.join("agents.db"))
                .context("opening the agent store")?,
        )
        .policy_checksum(move || {
            checksum_reader
                .get(&agent_policy)
                .map(|p| p.checksum.clone())
        })
        .spawn()
        .context("starting the agent registry")?;
    let agent_reporter = agents.spawn_control_reporter(control.clone());

    let parts = Arc::new(Parts {
        id: id.clone(),
        buffer: buffer.clone(),
        uplink,
        control,
        agents: agents.clone(),
        applier: Mutex::new(applier),
        reader: reader.clone(),
        devices,
        clock,
        started: Instant::now(),
        data_dir: std::fs::canonicalize(&data_dir).unwrap_or_else(|_| data_dir.clone()),
        status: Mutex::new(initial_status()),
        accepting: AtomicBool::new(true),
        config: config.clone(),
    });

    let mut background = vec![
        tokio::spawn(control_loop(parts.clone(), events)),
        tokio::spawn(wake_uplink_on_reconnect(parts.clone())),
        tokio::spawn(status_loop(parts.clone())),
    ];
    background.extend(agent_reporter);
    for device_id in parts.devices.event_device_ids() {
        background.push(tokio::spawn(device_event_loop(
            parts.clone(),
            device_id,
            data_dir.join("device-cursors"),
        )));
    }

    let collector = Receiver::new(
        BufferSink::new(buffer, config.collector_sink.clone()),
        agent_auth.clone(),
    )
    .config(config.collector.receiver())
    .into_router()
    .context("building the collector")?;
    let policy = policy_router(reader).layer(middleware::from_fn_with_state(
        agent_auth.clone(),
        require_agent_token,
    ));
    let app = Router::new()
        .merge(collector.layer(middleware::from_fn_with_state(
            parts.clone(),
            refuse_while_stopping,
        )))
        .merge(agent_routes(agents, agent_auth))
        .merge(policy)
        .merge(
            Router::new()
                .route("/v1/status", get(status))
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/readyz", get(readyz))
                .route("/metrics", get(|| async { telemetry::render_metrics() }))
                .with_state(parts.clone()),
        );

    let app = crate::with_error_fallbacks(app);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(gateway = %id, %addr, server = %server, "gateway ready");
    Ok(Gateway {
        addr,
        parts,
        shutdown,
        serve,
        background,
        _data_dir_lock: data_dir_lock,
    })
}

/// `http://host` → `ws://host/v1/control`, `https://host` → `wss://host/v1/control`.
fn control_url(server: &str) -> anyhow::Result<String> {
    let base = server.trim_end_matches('/');
    let url = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/v1/control")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/v1/control")
    } else {
        anyhow::bail!("the server URL must start with http:// or https://, got {server:?}");
    };
    Ok(url)
}

// ------------------------------------------------------------------ commands and policies

/// Route what the control channel delivers: commands to the library that runs them, policy
/// updates to the applier.
async fn control_loop(parts: Arc<Parts>, mut events: gateway_control::gateway::GatewayEvents) {
    while let Some(event) = events.recv().await {
        match event {
            GatewayEvent::Command(command) => {
                let parts = parts.clone();
                tokio::spawn(async move {
                    let id = command.id;
                    if let Some(outcome) = run_command(&parts, command).await
                        && let Err(e) = parts.control.report_outcome(id, outcome).await
                    {
                        tracing::warn!(%id, error = %e, "could not report a command outcome");
                    }
                });
            }
            GatewayEvent::PolicyUpdate(update) => {
                let status = apply_policy(&parts, &update);
                if let Err(e) = parts.control.send(ControlFrame::PolicyStatus(status)).await {
                    tracing::warn!(error = %e, "could not send a policy status");
                }
            }
            GatewayEvent::Connected { .. } => {
                tracing::info!("control channel connected");
            }
            GatewayEvent::Disconnected { reason, .. } => {
                tracing::info!(?reason, "control channel disconnected");
            }
            GatewayEvent::ServerError(error) => {
                tracing::warn!(code = %error.code, message = %error.message, "server error frame");
            }
            GatewayEvent::ConnectFailed { reason } => {
                tracing::debug!(%reason, "control channel connection failed");
            }
            other => tracing::debug!(?other, "control event"),
        }
    }
}

fn apply_policy(parts: &Parts, update: &PolicyUpdate) -> gateway_proto::PolicyStatus {
    let now_ms = parts.clock.now_ms();
    let mut applier = parts.applier.lock().unwrap_or_else(|p| p.into_inner());
    let status = applier.apply(update, now_ms);
    let applied = applier.applied_policies();
    drop(applier);
    tracing::info!(
        policy = %status.name,
        version = status.version,
        state = ?status.state,
        reason = status.reason.as_deref().unwrap_or(""),
        "policy update handled"
    );
    if let Err(e) = parts.control.set_applied_policies(applied) {
        tracing::warn!(error = %e, "could not update the applied policies for the next hello");
    }
    status
}

/// Run one command; `None` when its outcome is reported later (an agent command completes
/// when the agent acknowledges it).
async fn run_command(parts: &Parts, command: Command) -> Option<Outcome> {
    let kind = command.kind.as_str();
    if gateway_devices::command::is_device_kind(kind) {
        let ack = parts.devices.execute_control(&command).await;
        return Some(outcome_of_ack(ack));
    }
    match kind {
        "flush" => {
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(command.execution_timeout_ms.unwrap_or(30_000));
            Some(match parts.uplink.flush(deadline).await {
                Ok(FlushOutcome::Flushed) => {
                    Outcome::succeeded().with_result(serde_json::json!({ "outcome": "flushed" }))
                }
                Ok(FlushOutcome::DeadlineReached { queued }) => Outcome::failed(format!(
                    "{queued} records still queued when the deadline passed"
                ))
                .with_result(
                    serde_json::json!({ "outcome": "deadline_reached", "queued": queued }),
                ),
                Err(e) => Outcome::failed(e.to_string()),
            })
        }
        "policy.apply" => Some(
            match serde_json::from_value::<PolicyUpdate>(command.payload) {
                Ok(update) => {
                    let status = apply_policy(parts, &update);
                    let result = serde_json::to_value(&status).unwrap_or_default();
                    let _ = parts
                        .control
                        .send(ControlFrame::PolicyStatus(status.clone()))
                        .await;
                    match status.state {
                        gateway_proto::PolicyState::Applied => {
                            Outcome::succeeded().with_result(result)
                        }
                        gateway_proto::PolicyState::Rejected => {
                            Outcome::failed(status.reason.unwrap_or_default()).with_result(result)
                        }
                    }
                }
                Err(e) => Outcome::rejected(format!("the payload is not a policy update: {e}")),
            },
        ),
        kind if kind.starts_with(AGENT_COMMAND_PREFIX) => {
            // Delivered on the agent's next heartbeat; the outcome is reported when the agent
            // acknowledges it (the service's control reporter).
            match parts.agents.deliver_control_command(&command) {
                Ok(()) => None,
                Err(e) => Some(Outcome::rejected(e.to_string())),
            }
        }
        other => Some(Outcome::rejected(format!(
            "this gateway does not know the command kind {other:?}"
        ))),
    }
}

fn outcome_of_ack(ack: gateway_proto::CommandAck) -> Outcome {
    let outcome = match ack.state {
        CommandAckState::Succeeded => Outcome::succeeded(),
        CommandAckState::Rejected => Outcome::rejected(ack.detail.clone().unwrap_or_default()),
        _ => Outcome::failed(ack.detail.clone().unwrap_or_default()),
    };
    match ack.result {
        Some(result) => outcome.with_result(result),
        None => outcome,
    }
}

/// A sign the server is back (the control channel reconnecting) wakes the uplink at once, so
/// a backlog does not wait out a long backoff.
async fn wake_uplink_on_reconnect(parts: Arc<Parts>) {
    let mut state = parts.control.watch_state();
    let mut was_up = false;
    while state.changed().await.is_ok() {
        let up = matches!(
            *state.borrow_and_update(),
            ConnectionState::Established { .. }
        );
        if up && !was_up {
            tracing::info!("control channel is up: waking the uplink");
            parts.uplink.wake();
        }
        was_up = up;
    }
}

// ------------------------------------------------------------------ devices

/// Poll one device's events into the buffer; the cursor is saved only after the records are
/// appended, so a restart neither repeats nor skips events.
async fn device_event_loop(parts: Arc<Parts>, device_id: String, cursor_dir: PathBuf) {
    let cursor_path = cursor_dir.join(format!("{device_id}.json"));
    let mut cursor: Option<EventCursor> = std::fs::read(&cursor_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let every = Duration::from_millis(parts.config.device_poll_ms.max(100));
    loop {
        match parts
            .devices
            .poll_events(&device_id, cursor.as_ref(), 200)
            .await
        {
            Ok(batch) => {
                let more = batch.more;
                if !batch.records.is_empty() {
                    let count = batch.records.len();
                    if let Err(e) = parts.buffer.append(batch.records).await {
                        tracing::warn!(device = %device_id, error = %e, "could not buffer device events");
                        tokio::time::sleep(every).await;
                        continue;
                    }
                    tracing::info!(device = %device_id, count, "device events buffered");
                }
                if let Some(next) = batch.cursor {
                    if let Err(e) = save_cursor(&cursor_path, &next) {
                        tracing::warn!(device = %device_id, error = %e, "could not save the event cursor");
                    }
                    cursor = Some(next);
                }
                if more {
                    continue;
                }
            }
            Err(e) => tracing::debug!(device = %device_id, error = %e, "event poll failed"),
        }
        tokio::time::sleep(every).await;
    }
}

fn save_cursor(path: &Path, cursor: &EventCursor) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cursor)?)?;
    std::fs::rename(tmp, path)
}

// ------------------------------------------------------------------ status

fn initial_status() -> StatusSnapshot {
    StatusSnapshot {
        cpu_percent: 0.0,
        memory_used_bytes: 0,
        memory_total_bytes: 0,
        disk_free_bytes: 0,
        disk_total_bytes: 0,
        buffer_records: 0,
        buffer_bytes: 0,
        buffer_pressure: BufferPressure::Normal,
        uplink_health: UplinkHealth::Healthy,
        connected_agents: 0,
        uptime_seconds: 0,
    }
}

/// Refresh the status snapshot (the heartbeat's payload and `GET /v1/status`).
async fn status_loop(parts: Arc<Parts>) {
    let mut system = sysinfo::System::new();
    let every = Duration::from_millis(parts.config.status_interval_ms.max(200));
    loop {
        system.refresh_cpu_usage();
        system.refresh_memory();
        let (disk_free, disk_total) = disk_of(&parts.data_dir);
        let stats = parts.buffer.stats().await.ok();
        let snapshot = StatusSnapshot {
            cpu_percent: f64::from(system.global_cpu_usage()) * system.cpus().len().max(1) as f64,
            memory_used_bytes: system.used_memory(),
            memory_total_bytes: system.total_memory(),
            disk_free_bytes: disk_free,
            disk_total_bytes: disk_total,
            buffer_records: stats.as_ref().map_or(0, |s| s.records),
            buffer_bytes: stats.as_ref().map_or(0, |s| s.bytes),
            buffer_pressure: parts.buffer.pressure(),
            uplink_health: parts.uplink.health(),
            connected_agents: parts.agents.online_count() as u32,
            uptime_seconds: parts.started.elapsed().as_secs(),
        };
        if let Err(e) = parts.control.set_status(snapshot.clone()) {
            tracing::debug!(error = %e, "could not update the heartbeat status");
        }
        *parts.status.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
        tokio::time::sleep(every).await;
    }
}

/// Free and total bytes of the disk holding `path` (the longest matching mount point).
fn disk_of(path: &Path) -> (u64, u64) {
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map_or((0, 0), |d| (d.available_space(), d.total_space()))
}

/// `GET /v1/status`: what this gateway is doing now.
async fn status(State(parts): State<Arc<Parts>>) -> Response {
    let snapshot = parts
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let buffer = parts.buffer.stats().await.ok();
    let uplink = parts.uplink.status();
    let policies: BTreeMap<String, serde_json::Value> = parts
        .reader
        .all()
        .iter()
        .map(|p| {
            let applied = p.applied();
            (
                applied.name.clone(),
                serde_json::json!({"version": applied.version, "checksum": applied.checksum}),
            )
        })
        .collect();
    let body = serde_json::json!({
        "gateway_id": parts.id,
        "control": match parts.control.state() {
            ConnectionState::Established { .. } => "connected",
            ConnectionState::Connecting | ConnectionState::Handshaking => "connecting",
            ConnectionState::Disconnected { .. } => "disconnected",
            _ => "closed",
        },
        "status": snapshot,
        "buffer": buffer,
        "uplink": uplink,
        "agents": parts.agents.agents(),
        "policies": policies,
        "devices": parts.devices.device_ids(),
    });
    axum::Json(body).into_response()
}

async fn readyz(State(parts): State<Arc<Parts>>) -> Response {
    if parts.accepting.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error_response(ErrorCode::Unavailable, "the gateway is shutting down")
    }
}

fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(code, message);
    let status = StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

/// During a graceful shutdown the collector refuses new records with 503.
async fn refuse_while_stopping(
    State(parts): State<Arc<Parts>>,
    request: Request,
    next: Next,
) -> Response {
    if parts.accepting.load(Ordering::SeqCst) {
        next.run(request).await
    } else {
        let mut response = error_response(ErrorCode::Unavailable, "the gateway is shutting down");
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, 5.into());
        response
    }
}

/// `GET /v1/policy` is for agents of this site: an agent token is required.
async fn require_agent_token(
    State(auth): State<Arc<dyn Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match token {
        None => error_response(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <token>",
        ),
        Some(token) => match auth.authenticate(token) {
            Some(p) if p.role == Role::Agent => next.run(request).await,
            _ => error_response(ErrorCode::Forbidden, "this token may not read policies"),
        },
    }
}

//! The `server` assembled from the libraries: ingest into the SQLite record store, the control
//! channel with its command queue and presence, policies with rollouts, the event stream, an
//! audit log of operator actions, health and metrics — on one axum listener.
//!
//! Wiring only: every behaviour lives in a library crate. The one piece of glue that must live
//! here is the bridge between the control hub and the policy service (the two crates do not
//! depend on each other).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gateway_control::server::{
    EventLog, EventLogConfig, Hub, HubConfig, QueueConfig, SqliteCommandQueue, event_routes,
};
use gateway_proto::auth::{Authenticator, Role, bearer_token};
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{ErrorBody, ErrorCode};
use gateway_uplink::server::{Receiver, ReceiverConfig, SqliteRecordStore, SqliteStoreConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, TokenConfig};
use crate::policy_bridge::{self, PolicyWiring};
use crate::telemetry;

/// The server's configuration file (TOML). Every section has defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Tenant of tokens that do not name one. Default `default`.
    pub tenant: String,
    /// Bearer tokens: operators (`admin`) and gateways (`gateway`, subject = gateway id).
    pub tokens: Vec<TokenConfig>,
    /// Control channel: heartbeat interval, limits, in-flight commands per gateway.
    pub hub: HubConfig,
    /// Command queue defaults (delivery TTL, execution timeout, redelivery).
    pub queue: QueueConfig,
    /// Event stream history.
    pub events: EventLogConfig,
    /// Ingest limits, rate limits and roles.
    pub receiver: ReceiverConfig,
    /// The record store.
    pub store: SqliteStoreConfig,
    /// Policy signing and default staging.
    pub policy: gateway_policy::PolicyServerConfig,
    /// How long a graceful shutdown waits for open requests, ms. Default 5,000.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tenant: "default".into(),
            tokens: Vec::new(),
            hub: HubConfig::default(),
            queue: QueueConfig::default(),
            events: EventLogConfig::default(),
            receiver: ReceiverConfig::default(),
            store: SqliteStoreConfig::default(),
            policy: gateway_policy::PolicyServerConfig::default(),
            shutdown_grace_ms: 5_000,
        }
    }
}

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Directory of the SQLite files (created if missing).
    pub data_dir: PathBuf,
    /// The configuration.
    pub config: ServerConfig,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    hub: Hub,
    store: SqliteRecordStore,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The control hub (commands, presence, events).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The record store.
    pub fn store(&self) -> &SqliteRecordStore {
        &self.store
    }

    /// Stop accepting, close the control sessions, let open requests finish within the grace
    /// period, stop the background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for gateway in self.hub.connected() {
            self.hub.disconnect(&gateway);
        }
        let mut serve = self.serve;
        if tokio::time::timeout(self.grace, &mut serve).await.is_err() {
            serve.abort();
        }
        for task in self.background {
            task.abort();
        }
    }

    /// Run until the serve task ends (it only ends on shutdown or a listener failure).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.serve)
            .await
            .context("the server task panicked")??;
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    events: EventLog,
    auth: Arc<dyn Authenticator>,
    ready: Arc<AtomicBool>,
}

/// Open the stores, build the routes, bind and start serving.
pub async fn start(options: ServerOptions) -> anyhow::Result<Server> {
    let ServerOptions {
        listen,
        data_dir,
        config,
    } = options;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let auth = config::authenticator(&config.tokens, &config.tenant);

    let store = SqliteRecordStore::open(data_dir.join("records.db"), config.store.clone())
        .context("opening the record store")?;
    let ingest = Receiver::new(store.clone(), auth.clone())
        .config(config.receiver.clone())
        .clock(clock.clone())
        .reader(store.clone())
        .into_router()
        .context("building the ingest receiver")?;

    let events = EventLog::open(
        data_dir.join("events.db"),
        config.events.clone(),
        clock.clone(),
    )
    .context("opening the event log")?;
    let queue = SqliteCommandQueue::open(data_dir.join("commands.db"), config.queue.clone())
        .context("opening the command queue")?;
    let hub = Hub::new(
        config.hub.clone(),
        Arc::new(queue),
        events.clone(),
        auth.clone(),
        clock.clone(),
    )
    .context("starting the control hub")?;
    let mut background = vec![hub.spawn_timers()];

    let policy = policy_bridge::start(PolicyWiring {
        db_path: data_dir.join("policies.db"),
        config: config.policy.clone(),
        hub: hub.clone(),
        events: events.clone(),
        auth: auth.clone(),
        clock: clock.clone(),
    })
    .await
    .context("starting the policy service")?;
    background.extend(policy.tasks);

    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        events: events.clone(),
        auth: auth.clone(),
        ready: ready.clone(),
    };
    // Policy actions are audited by the policy service itself (with failures too); command
    // actions by the audit layer, with the same entry shape.
    let operator = hub
        .operator_router()
        .layer(middleware::from_fn_with_state(state.clone(), audit_layer))
        .merge(policy.router);
    let own = Router::new()
        .route("/v1/audit", get(audit_log))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { telemetry::render_metrics() }))
        .with_state(state);
    let app = Router::new()
        .merge(ingest)
        .merge(hub.router())
        .merge(operator)
        .merge(event_routes(events, auth))
        .merge(own);
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
    ready.store(true, Ordering::SeqCst);
    tracing::info!(%addr, data_dir = %data_dir.display(), "server ready");
    Ok(Server {
        addr,
        hub,
        store,
        shutdown,
        serve,
        background,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error_response(ErrorCode::Unavailable, "the server is starting")
    }
}

fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(code, message);
    let status = StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

// ------------------------------------------------------------------ audit

/// Largest response body the audit layer copies into an audit entry.
const AUDIT_BODY_LIMIT: usize = 64 * 1024;

/// Every successful state-changing request (POST, PUT, PATCH, DELETE by an admin) to the
/// routes it wraps is written to the event log as an `audit` event: who, what, and what came
/// back — the shape of `gateway_policy::AuditEvent`.
async fn audit_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let actor = principal_of(request.headers(), state.auth.as_ref());
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let Some(actor) = actor.filter(|p| mutating && p.role == Role::Admin) else {
        return response;
    };
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, AUDIT_BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error_response(ErrorCode::Internal, "the answer was too large to audit");
        }
    };
    let result: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    state.events.publish(
        "audit",
        Some(&actor.tenant),
        serde_json::json!({
            "actor": actor.subject,
            "tenant": actor.tenant,
            "action": format!("{method} {path}"),
            "target": path,
            "result": "ok",
            "detail": result,
        }),
    );
    Response::from_parts(parts, Body::from(bytes))
}

fn principal_of(
    headers: &HeaderMap,
    auth: &dyn Authenticator,
) -> Option<gateway_proto::auth::Principal> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    auth.authenticate(bearer_token(value)?)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /v1/audit?after=&limit=`: the audit entries of the caller's tenant (admins only).
async fn audit_log(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return error_response(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <token>",
        );
    };
    let principal = value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .and_then(|t| state.auth.authenticate(t));
    let Some(principal) = principal.filter(|p| p.role == Role::Admin) else {
        return error_response(ErrorCode::Forbidden, "the audit log is for operators");
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries: Vec<_> = state
        .events
        .since(query.after, usize::MAX)
        .into_iter()
        .filter(|e| e.kind == "audit" && e.tenant.as_deref() == Some(principal.tenant.as_str()))
        .take(limit)
        .map(|e| serde_json::json!({"id": e.id, "at_ms": e.at_ms, "entry": e.data}))
        .collect();
    axum::Json(serde_json::json!({ "entries": entries })).into_response()
}

// ------------------------------------------------------------------ a server in its own runtime

/// A server running on its own thread and tokio runtime, so it can be taken away abruptly —
/// every task, socket and timer gone at once, as when its process dies — and started again
/// in the same process. The `demo` uses it for its outage; tests can too.
pub struct ServerThread {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Start a server on a new thread and wait until it listens.
    pub async fn start(options: ServerOptions) -> anyhow::Result<ServerThread> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("demo-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match start(options).await {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(server.addr()));
                            let _ = stop_rx.await;
                            // Dropped, not shut down: the runtime below goes away with it.
                            drop(server);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .context("spawning the server thread")?;
        let addr = ready_rx
            .await
            .context("the server thread ended before it was ready")??;
        Ok(ServerThread {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Take the server away at once: its runtime and every connection end.
    pub async fn kill(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

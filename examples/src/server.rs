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
use gateway_policy::{PolicyService, PolicySigner};
use gateway_proto::auth::{Authenticator, GatewayDirectory, Principal, Role, bearer_token};
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{ErrorBody, ErrorCode};
use gateway_uplink::server::{Receiver, ReceiverConfig, SqliteRecordStore, SqliteStoreConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{AuditEntry, AuditLog};
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
    /// Ingest limits, rate limits and roles. Only gateway tokens may post records by default.
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
            // Records reach the server through gateways; `ingest_roles` lets agents post too.
            receiver: ReceiverConfig {
                ingest_roles: vec![Role::Gateway],
                ..ReceiverConfig::default()
            },
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
    _data_dir_lock: std::fs::File,
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
    auth: Arc<dyn Authenticator>,
    ready: Arc<AtomicBool>,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
    policies: PolicyService,
    signer: Option<Arc<PolicySigner>>,
}

/// Open the stores, build the routes, bind and start serving.
pub async fn start(options: ServerOptions) -> anyhow::Result<Server> {
    let ServerOptions {
        listen,
        data_dir,
        config,
    } = options;
    let data_dir_lock = crate::lock_data_dir(&data_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The token table is both the authenticator and the directory of provisioned gateways.
    let tokens = Arc::new(config::tokens(&config.tokens, &config.tenant)?);
    let auth: Arc<dyn Authenticator> = tokens.clone();
    let directory: Arc<dyn GatewayDirectory> = tokens;
    let audit = AuditLog::open(&data_dir.join("audit.db"))?;
    let signer = config
        .policy
        .signing_key
        .as_deref()
        .map(PolicySigner::from_hex)
        .transpose()
        .context("policy.signing_key")?
        .map(Arc::new);

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
    let hub = Hub::builder(
        config.hub.clone(),
        Arc::new(queue),
        events.clone(),
        auth.clone(),
        clock.clone(),
    )
    .directory(directory.clone())
    .build()
    .context("starting the control hub")?;
    let mut background = vec![hub.spawn_timers()];

    let policy = policy_bridge::start(PolicyWiring {
        db_path: data_dir.join("policies.db"),
        config: config.policy.clone(),
        hub: hub.clone(),
        events: events.clone(),
        auth: auth.clone(),
        directory,
        clock: clock.clone(),
        audit: audit.clone(),
    })
    .await
    .context("starting the policy service")?;
    background.extend(policy.tasks);

    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        auth: auth.clone(),
        ready: ready.clone(),
        audit,
        clock: clock.clone(),
        policies: policy.service.clone(),
        signer,
    };
    // Policy actions are audited by the policy service itself (with failures too); command
    // actions by the audit layer, with the same entry shape. `policy.apply` commands carry a
    // version from the policy store, never an operator-made document.
    let operator = hub
        .operator_router()
        .layer(middleware::from_fn_with_state(
            state.clone(),
            policy_apply_from_store,
        ))
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
        _data_dir_lock: data_dir_lock,
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

/// Largest answer copied whole into an audit entry; a larger one is summarised.
const AUDIT_DETAIL_LIMIT: usize = 16 * 1024;

/// Every successful state-changing request (POST, PUT, PATCH, DELETE by an admin) to the
/// routes it wraps goes to the audit log: who, what, and what came back (the answer itself up
/// to 16 KiB). The answer reaches the operator unchanged whatever happens here.
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
    // Operator answers are bounded by the request limits; read the whole answer so it can be
    // passed on unchanged.
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "could not read an answer to audit it");
            return Response::from_parts(parts, Body::empty());
        }
    };
    let detail = if bytes.len() <= AUDIT_DETAIL_LIMIT {
        serde_json::from_slice(&bytes).unwrap_or_default()
    } else {
        let id = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("id").cloned());
        serde_json::json!({"id": id, "answer_bytes": bytes.len()})
    };
    let entry = AuditEntry {
        actor: actor.subject,
        tenant: actor.tenant,
        action: format!("{method} {path}"),
        target: serde_json::Value::String(path),
        result: "ok".into(),
        detail,
    };
    state.audit.record(state.clock.now_ms(), entry).await;
    Response::from_parts(parts, Body::from(bytes))
}

fn principal_of(headers: &HeaderMap, auth: &dyn Authenticator) -> Option<Principal> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    auth.authenticate(bearer_token(value)?)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<usize>,
}

/// `GET /v1/audit?after=&limit=`: the audit entries of the caller's tenant (admins only).
async fn audit_log(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
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
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => return error_response(ErrorCode::InvalidRequest, e.body_text()),
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let audit = state.audit.clone();
    let entries = tokio::task::spawn_blocking(move || {
        audit.list_blocking(&principal.tenant, query.after, limit)
    })
    .await;
    match entries {
        Ok(Ok(entries)) => axum::Json(serde_json::json!({ "entries": entries })).into_response(),
        Ok(Err(e)) => error_response(ErrorCode::Internal, format!("reading the audit log: {e:#}")),
        Err(e) => error_response(ErrorCode::Internal, format!("reading the audit log: {e}")),
    }
}

// ------------------------------------------------------------------ policy.apply

/// Largest command request the `policy.apply` check reads.
const COMMAND_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// `POST /v1/gateways/{id}/commands` with kind `policy.apply` names a stored policy version
/// (`{"name": "agents", "version": 3}`, the latest without `version`); the server replaces the
/// payload with that version's full, signed `policy_update`, so a gateway only ever applies
/// what the policy store holds for the operator's tenant. Other `policy.*` kinds are refused.
async fn policy_apply_from_store(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let is_enqueue = request.method() == Method::POST
        && request.uri().path().starts_with("/v1/gateways/")
        && request.uri().path().ends_with("/commands");
    if !is_enqueue {
        return next.run(request).await;
    }
    let Some(principal) = principal_of(request.headers(), state.auth.as_ref()) else {
        // The command route answers 401/403 itself.
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, COMMAND_BODY_LIMIT).await else {
        return error_response(
            ErrorCode::PayloadTooLarge,
            format!("a command request is at most {COMMAND_BODY_LIMIT} bytes"),
        );
    };
    let mut command: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        // Not JSON: the command route gives the documented answer.
        Err(_) => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
    };
    let kind = command["kind"].as_str().unwrap_or_default().to_string();
    if !kind.starts_with("policy.") {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    if kind != "policy.apply" {
        return error_response(
            ErrorCode::InvalidRequest,
            format!("unknown policy command {kind:?}: the only one is policy.apply"),
        );
    }
    let Some(name) = command["payload"]["name"].as_str().map(str::to_owned) else {
        return error_response(
            ErrorCode::InvalidRequest,
            "policy.apply takes {\"name\": <policy>, \"version\": <optional version>}",
        );
    };
    let version = command["payload"]["version"].as_u64();
    let policy = match state
        .policies
        .policy(&principal.tenant, &name, version)
        .await
    {
        Ok(policy) => policy,
        Err(e) => return error_response(e.code(), e.to_string()),
    };
    let update = policy.full_update(state.signer.as_deref());
    command["payload"] = serde_json::to_value(&update).unwrap_or_default();
    let bytes = serde_json::to_vec(&command).unwrap_or_default();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
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

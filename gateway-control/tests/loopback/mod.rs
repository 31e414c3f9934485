//! A real server on loopback for the integration tests: the hub's routes, the operator API
//! and the SSE stream behind axum, in a tokio runtime of its own (dropping the runtime is a
//! crash: every task and socket goes at once), plus raw WebSocket and HTTP clients.
//!
//! Two tenants: `acme` (gateways `gw-1`, `gw-2`, admin `admin-token`) and `globex` (gateway
//! `gw-3`, admin `globex-admin-token`). The token table is also the gateway directory.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use gateway_control::GatewayEvent;
use gateway_control::gateway::{
    GatewayClientConfig, GatewayEvents, GatewayHandle, Outcome, WireEncoding,
};
use gateway_control::server::{
    EventLog, EventLogConfig, Hub, HubConfig, QueueConfig, SqliteCommandQueue, event_routes,
};
use gateway_proto::auth::{Authenticator, GatewayDirectory, Principal, Role, StaticTokens};
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{ControlFrame, Encoding, ErrorCode, Hello, PROTOCOL_VERSION, WireMessage};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const TIMEOUT: Duration = Duration::from_secs(15);

pub fn tokens() -> Arc<StaticTokens> {
    Arc::new(
        StaticTokens::new()
            .with("gw-1-token", Principal::new("acme", "gw-1", Role::Gateway))
            .with("gw-2-token", Principal::new("acme", "gw-2", Role::Gateway))
            .with("admin-token", Principal::new("acme", "ops", Role::Admin))
            .with(
                "gw-3-token",
                Principal::new("globex", "gw-3", Role::Gateway),
            )
            .with(
                "globex-admin-token",
                Principal::new("globex", "ops", Role::Admin),
            ),
    )
}

/// Who authenticates tokens and which gateway directory the hub uses.
#[derive(Clone)]
pub struct Identity {
    pub auth: Arc<dyn Authenticator>,
    /// `None`: a hub without a directory ([`Hub::new`]).
    pub directory: Option<Arc<dyn GatewayDirectory>>,
}

impl Default for Identity {
    /// [`tokens`], as authenticator and directory.
    fn default() -> Self {
        let tokens = tokens();
        Identity {
            auth: tokens.clone(),
            directory: Some(tokens),
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub fn start(dir: &Path, addr: Option<SocketAddr>, config: HubConfig) -> TestServer {
        Self::start_with(dir, addr, config, Identity::default())
    }

    pub fn start_with(
        dir: &Path,
        addr: Option<SocketAddr>,
        config: HubConfig,
        identity: Identity,
    ) -> TestServer {
        let queue_path: PathBuf = dir.join("queue.db");
        // Built on a thread of its own: the tests run inside another runtime.
        std::thread::spawn(move || Self::start_here(queue_path, addr, config, identity))
            .join()
            .unwrap()
    }

    fn start_here(
        queue_path: PathBuf,
        addr: Option<SocketAddr>,
        config: HubConfig,
        identity: Identity,
    ) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (hub, addr) = runtime.block_on(async move {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let queue = SqliteCommandQueue::open(queue_path, QueueConfig::default()).unwrap();
            let events = EventLog::in_memory(EventLogConfig::default(), clock.clone()).unwrap();
            let Identity { auth, directory } = identity;
            let mut builder =
                Hub::builder(config, Arc::new(queue), events.clone(), auth.clone(), clock);
            if let Some(directory) = directory {
                builder = builder.directory(directory);
            }
            let hub = builder.build().unwrap();
            hub.spawn_timers();
            let app = hub
                .router()
                .merge(hub.operator_router())
                .merge(event_routes(events, auth));
            let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
            let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            (hub, addr)
        });
        TestServer {
            addr,
            hub,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/control", self.addr)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn crash(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

pub fn fast_hub() -> HubConfig {
    let mut config = HubConfig::default();
    config.session.heartbeat_interval_ms = 300;
    config
}

pub fn client_config(
    url: &str,
    gateway: &str,
    token: &str,
    encoding: WireEncoding,
) -> GatewayClientConfig {
    let mut config = GatewayClientConfig {
        url: url.into(),
        token: token.into(),
        encoding,
        ..Default::default()
    };
    config.session.gateway_id = gateway.into();
    config.session.backoff.base_ms = 100;
    config.session.backoff.cap_ms = 500;
    config.session.backoff.seed = Some(7);
    config.connect_timeout_ms = 2_000;
    config
}

pub async fn next_event(
    events: &mut GatewayEvents,
    pred: impl Fn(&GatewayEvent) -> bool,
) -> GatewayEvent {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let event = events.recv().await.expect("driver running");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .expect("event in time")
}

pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run_commands(handle: GatewayHandle, mut events: GatewayEvents) {
    while let Some(event) = events.recv().await {
        if let GatewayEvent::Command(command) = event {
            let outcome =
                Outcome::succeeded().with_result(serde_json::json!({"kind": command.kind}));
            handle.report_outcome(command.id, outcome).await.unwrap();
        }
    }
}

pub fn http_client() -> reqwest::Client {
    let tls = gateway_control::gateway::default_tls_config().unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .unwrap()
}

/// A client that opens a new connection per request: the server closes a connection whose
/// oversized body it refused without reading, so such requests must not share one.
pub fn unpooled_http_client() -> reqwest::Client {
    let tls = gateway_control::gateway::default_tls_config().unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn raw_connect(url: &str, token: &str, encoding: Encoding) -> RawWs {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.headers_mut().insert(
        "sec-websocket-protocol",
        encoding.subprotocol().parse().unwrap(),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        encoding.subprotocol()
    );
    ws
}

pub fn hello(gateway: &str) -> ControlFrame {
    ControlFrame::Hello(Hello {
        gateway_id: gateway.into(),
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: 1,
        capabilities: vec![],
        applied_policies: vec![],
        last_command_id: None,
        software: "raw-test".into(),
    })
}

pub async fn send(ws: &mut RawWs, frame: &ControlFrame, encoding: Encoding) {
    let message = match encoding {
        Encoding::Json => Message::text(String::from_utf8(frame.to_json()).unwrap()),
        Encoding::Protobuf => Message::binary(frame.to_protobuf()),
    };
    ws.send(message).await.unwrap();
}

pub async fn recv_message(ws: &mut RawWs) -> Message {
    tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("no error")
}

pub async fn recv(ws: &mut RawWs, encoding: Encoding) -> ControlFrame {
    loop {
        let bytes = match recv_message(ws).await {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        };
        return ControlFrame::decode(&bytes, encoding).unwrap();
    }
}

pub fn error_code(frame: &ControlFrame) -> ErrorCode {
    match frame {
        ControlFrame::Error(e) => e.code.clone(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

//! The agent API over real HTTP on loopback: both encodings, the auth rule, the documented
//! errors, presence, commands from enqueue to acknowledgement, registrations across a
//! restart, and an `agent.restart` from the server's command queue through the control
//! channel to an agent and back as `succeeded` / `delivered to agent`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_control::gateway::agents::{
    AGENT_COMMAND_PREFIX, AgentEvent, AgentService, AgentServiceConfig, DELIVERED_TO_AGENT,
    SqliteAgentStore, agent_routes,
};
use gateway_control::gateway::{
    GatewayClient, GatewayClientConfig, GatewayEvents, GatewayHandle, MemoryJournal, Outcome,
    WireEncoding,
};
use gateway_control::server::{
    EventLog, EventLogConfig, Hub, HubConfig, NewCommand, QueueConfig, SqliteCommandQueue,
};
use gateway_control::{CommandState, GatewayEvent};
use gateway_proto::auth::{Principal, Role, StaticTokens};
use gateway_proto::clock::{Clock, ManualClock, SystemClock};
use gateway_proto::{
    AgentCommand, AgentHeartbeatRequest, AgentHeartbeatResponse, CommandId, Encoding, ErrorBody,
    ErrorCode, RegisterAgentRequest, RegisterAgentResponse, WireMessage,
};
use tokio::sync::broadcast;

const TIMEOUT: Duration = Duration::from_secs(15);
const T0: i64 = 1_750_000_000_000;
const CHECKSUM: &str = "5f1b0c0e4e6f1d5b8a7c9e2d3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Protobuf];

fn tokens() -> Arc<StaticTokens> {
    Arc::new(
        StaticTokens::new()
            .with("a1-token", Principal::new("acme", "a1", Role::Agent))
            .with("site-token", Principal::new("acme", "*", Role::Agent))
            .with("globex-site", Principal::new("globex", "*", Role::Agent))
            .with("gw-1-token", Principal::new("acme", "gw-1", Role::Gateway))
            .with("admin-token", Principal::new("acme", "ops", Role::Admin)),
    )
}

/// An agent service served on a loopback port.
struct AgentGateway {
    base: String,
    service: AgentService,
    server: tokio::task::JoinHandle<()>,
}

impl AgentGateway {
    async fn start(clock: Arc<dyn Clock>, store: Option<SqliteAgentStore>) -> AgentGateway {
        let mut builder = AgentService::builder("gw-1")
            .config(AgentServiceConfig::default())
            .clock(clock)
            .policy_checksum(|| Some(CHECKSUM.to_owned()));
        if let Some(store) = store {
            builder = builder.store(store);
        }
        let service = builder.spawn().unwrap();
        let app = agent_routes(service.clone(), tokens());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        AgentGateway {
            base: format!("http://{addr}"),
            service,
            server,
        }
    }

    fn stop(self) {
        self.server.abort();
    }
}

/// A raw answer.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn error(&self, encoding: Encoding) -> ErrorBody {
        ErrorBody::decode(&self.body, encoding).unwrap_or_else(|e| {
            panic!(
                "status {} with an undecodable error body ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn assert_error(&self, status: u16, code: ErrorCode, encoding: Encoding) -> ErrorBody {
        let body = self.error(encoding);
        assert_eq!(
            (self.status, &body.error.code),
            (status, &code),
            "{}",
            body.error.message
        );
        assert_eq!(self.content_type, encoding.content_type());
        body
    }
}

struct Request<'a> {
    path: &'a str,
    token: Option<&'a str>,
    content_type: Option<&'a str>,
    content_encoding: Option<&'a str>,
    body: Vec<u8>,
}

impl<'a> Request<'a> {
    fn new(path: &'a str, token: &'a str, encoding: Encoding, body: Vec<u8>) -> Self {
        Request {
            path,
            token: Some(token),
            content_type: Some(encoding.content_type()),
            content_encoding: None,
            body,
        }
    }
}

/// A plain-HTTP client; the TLS config (ring) is only there because reqwest needs one.
fn http_client() -> reqwest::Client {
    let tls = gateway_control::gateway::default_tls_config().unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .unwrap()
}

async fn send(base: &str, request: Request<'_>) -> Answer {
    let client = http_client();
    let mut builder = client
        .post(format!("{base}{}", request.path))
        .body(request.body);
    if let Some(token) = request.token {
        builder = builder.bearer_auth(token);
    }
    if let Some(content_type) = request.content_type {
        builder = builder.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    if let Some(content_encoding) = request.content_encoding {
        builder = builder.header(reqwest::header::CONTENT_ENCODING, content_encoding);
    }
    let response = tokio::time::timeout(TIMEOUT, builder.send())
        .await
        .expect("answer in time")
        .expect("request sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.unwrap().to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

fn registration(agent_id: &str) -> RegisterAgentRequest {
    RegisterAgentRequest {
        agent_id: agent_id.into(),
        kind: "endpoint".into(),
        version: "2.1.0".into(),
        hostname: format!("{agent_id}.office"),
        capabilities: vec!["restart".into()],
        attributes: [("os".to_owned(), "linux".to_owned())].into(),
    }
}

fn heartbeat(agent_id: &str, seq: u64, acked: &[CommandId]) -> AgentHeartbeatRequest {
    AgentHeartbeatRequest {
        agent_id: agent_id.into(),
        seq,
        queued_records: 7,
        status: [("cpu".to_owned(), "12".to_owned())].into(),
        acked_commands: acked.to_vec(),
    }
}

async fn register(base: &str, token: &str, encoding: Encoding, agent_id: &str) -> Answer {
    let body = registration(agent_id).encode(encoding);
    send(
        base,
        Request::new("/v1/agents/register", token, encoding, body),
    )
    .await
}

async fn beat(
    base: &str,
    token: &str,
    encoding: Encoding,
    request: &AgentHeartbeatRequest,
) -> Answer {
    let body = request.encode(encoding);
    send(
        base,
        Request::new("/v1/agents/heartbeat", token, encoding, body),
    )
    .await
}

async fn beat_ok(
    base: &str,
    encoding: Encoding,
    request: &AgentHeartbeatRequest,
) -> AgentHeartbeatResponse {
    let answer = beat(base, "site-token", encoding, request).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    AgentHeartbeatResponse::decode(&answer.body, encoding).unwrap()
}

async fn next_event(events: &mut broadcast::Receiver<AgentEvent>) -> AgentEvent {
    tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("event in time")
        .expect("service running")
}

#[tokio::test]
async fn agents_register_and_heartbeat_in_both_encodings() {
    let gateway = AgentGateway::start(Arc::new(SystemClock), None).await;
    for (n, encoding) in ENCODINGS.into_iter().enumerate() {
        let agent = format!("agent-{n}");
        let answer = register(&gateway.base, "site-token", encoding, &agent).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            answer.content_type,
            encoding.content_type(),
            "answered like the request"
        );
        let registered = RegisterAgentResponse::decode(&answer.body, encoding).unwrap();
        assert_eq!(
            registered,
            RegisterAgentResponse {
                agent_id: agent.clone(),
                gateway_id: "gw-1".into(),
                heartbeat_interval_ms: 10_000,
                policy_checksum: Some(CHECKSUM.into()),
            }
        );

        let answer = beat(
            &gateway.base,
            "site-token",
            encoding,
            &heartbeat(&agent, 1, &[]),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.content_type, encoding.content_type());
        let beat_answer = AgentHeartbeatResponse::decode(&answer.body, encoding).unwrap();
        assert_eq!(beat_answer.heartbeat_interval_ms, 10_000);
        assert_eq!(beat_answer.policy_checksum.as_deref(), Some(CHECKSUM));
        assert!(beat_answer.commands.is_empty());

        let info = gateway.service.agent(&agent).unwrap();
        assert!(info.online);
        assert_eq!(info.hostname, format!("{agent}.office"));
        assert_eq!(info.tenant, "acme");
        assert_eq!((info.last_seq, info.queued_records), (Some(1), 7));
        assert_eq!(info.status.get("cpu").map(String::as_str), Some("12"));
    }
    assert_eq!(gateway.service.online_count(), 2);

    // Registering again (an agent restart) answers the same way.
    let answer = register(&gateway.base, "site-token", Encoding::Json, "agent-0").await;
    assert_eq!(answer.status, 200);
    assert_eq!(gateway.service.agents().len(), 2);

    // A gzip-compressed body is accepted.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&heartbeat("agent-0", 2, &[]).to_json())
        .unwrap();
    let mut request = Request::new(
        "/v1/agents/heartbeat",
        "site-token",
        Encoding::Json,
        gz.finish().unwrap(),
    );
    request.content_encoding = Some("gzip");
    let answer = send(&gateway.base, request).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(gateway.service.agent("agent-0").unwrap().last_seq, Some(2));
    gateway.stop();
}

#[tokio::test]
async fn the_auth_rule_gives_401_and_403_as_documented() {
    let gateway = AgentGateway::start(Arc::new(SystemClock), None).await;
    let base = gateway.base.as_str();
    for encoding in ENCODINGS {
        let body = registration("a1").encode(encoding);

        // No token: 401.
        let mut request = Request::new("/v1/agents/register", "", encoding, body.clone());
        request.token = None;
        send(base, request)
            .await
            .assert_error(401, ErrorCode::Unauthorized, encoding);

        // A token nobody issued, a gateway token, an admin token: 403.
        for token in ["guess", "gw-1-token", "admin-token"] {
            let request = Request::new("/v1/agents/register", token, encoding, body.clone());
            send(base, request)
                .await
                .assert_error(403, ErrorCode::Forbidden, encoding);
        }

        // An agent token acts as its own agent only.
        let answer = register(base, "a1-token", encoding, "a2").await;
        let refused = answer.assert_error(403, ErrorCode::Forbidden, encoding);
        assert!(
            refused.error.message.contains("a2"),
            "{}",
            refused.error.message
        );
        assert_eq!(register(base, "a1-token", encoding, "a1").await.status, 200);
        let answer = beat(base, "a1-token", encoding, &heartbeat("a1", 1, &[])).await;
        assert_eq!(answer.status, 200);
        let answer = beat(base, "a1-token", encoding, &heartbeat("a2", 1, &[])).await;
        answer.assert_error(403, ErrorCode::Forbidden, encoding);

        // A site token (subject `*`) acts as any agent of its tenant...
        assert_eq!(
            register(base, "site-token", encoding, "a2").await.status,
            200
        );
        // ...but an agent registered by one tenant is not another tenant's.
        register(base, "globex-site", encoding, "a1")
            .await
            .assert_error(403, ErrorCode::Forbidden, encoding);
        beat(base, "globex-site", encoding, &heartbeat("a1", 2, &[]))
            .await
            .assert_error(403, ErrorCode::Forbidden, encoding);
    }
    assert_eq!(gateway.service.agent("a1").unwrap().tenant, "acme");
    gateway.stop();
}

#[tokio::test]
async fn bad_bodies_and_unknown_agents_get_the_documented_errors() {
    let gateway = AgentGateway::start(Arc::new(SystemClock), None).await;
    let base = gateway.base.as_str();
    let json = Encoding::Json;

    // Broken JSON and broken protobuf: 400 malformed_body, in the request's encoding.
    for encoding in ENCODINGS {
        let request = Request::new(
            "/v1/agents/register",
            "site-token",
            encoding,
            b"{\"agent_id\": \xff\xff".to_vec(),
        );
        send(base, request)
            .await
            .assert_error(400, ErrorCode::MalformedBody, encoding);
    }
    // JSON missing a required field: 400.
    let request = Request::new(
        "/v1/agents/register",
        "site-token",
        json,
        br#"{"agent_id": "a1", "kind": "endpoint"}"#.to_vec(),
    );
    send(base, request)
        .await
        .assert_error(400, ErrorCode::MalformedBody, json);
    // Decodes, but breaks a rule (protobuf leaves the id empty): 400 invalid_request.
    let mut empty_id = registration("a1");
    empty_id.agent_id = String::new();
    let request = Request::new(
        "/v1/agents/register",
        "site-token",
        Encoding::Protobuf,
        empty_id.encode(Encoding::Protobuf),
    );
    let body =
        send(base, request)
            .await
            .assert_error(400, ErrorCode::InvalidRequest, Encoding::Protobuf);
    assert!(
        body.error.message.contains("agent_id"),
        "{}",
        body.error.message
    );

    // No Content-Type, an unknown one, an unknown Content-Encoding: 415.
    let mut request = Request::new(
        "/v1/agents/register",
        "site-token",
        json,
        registration("a1").to_json(),
    );
    request.content_type = None;
    send(base, request)
        .await
        .assert_error(415, ErrorCode::UnsupportedMediaType, json);
    let mut request = Request::new(
        "/v1/agents/register",
        "site-token",
        json,
        registration("a1").to_json(),
    );
    request.content_type = Some("text/plain");
    send(base, request)
        .await
        .assert_error(415, ErrorCode::UnsupportedMediaType, json);
    let mut request = Request::new(
        "/v1/agents/register",
        "site-token",
        json,
        registration("a1").to_json(),
    );
    request.content_encoding = Some("br");
    send(base, request)
        .await
        .assert_error(415, ErrorCode::UnsupportedMediaType, json);

    // Larger than max_request_bytes, plain or once decompressed: 413.
    let mut huge = registration("a1");
    huge.attributes.insert("blob".into(), "x".repeat(70 * 1024));
    let request = Request::new("/v1/agents/register", "site-token", json, huge.to_json());
    send(base, request)
        .await
        .assert_error(413, ErrorCode::PayloadTooLarge, json);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1024 * 1024]).unwrap();
    let mut request = Request::new(
        "/v1/agents/register",
        "site-token",
        json,
        gz.finish().unwrap(),
    );
    request.content_encoding = Some("gzip");
    send(base, request)
        .await
        .assert_error(413, ErrorCode::PayloadTooLarge, json);
    // A gzip header on bytes that are not gzip: 400.
    let mut request = Request::new(
        "/v1/agents/register",
        "site-token",
        json,
        registration("a1").to_json(),
    );
    request.content_encoding = Some("gzip");
    send(base, request)
        .await
        .assert_error(400, ErrorCode::MalformedBody, json);

    // A heartbeat from an agent that never registered: 404 not_found, in both encodings.
    for encoding in ENCODINGS {
        let body = beat(base, "site-token", encoding, &heartbeat("ghost", 1, &[]))
            .await
            .assert_error(404, ErrorCode::NotFound, encoding);
        assert!(
            body.error.message.contains("register"),
            "{}",
            body.error.message
        );
    }

    // None of it registered anything, and the server still answers.
    assert!(gateway.service.agents().is_empty());
    assert_eq!(register(base, "site-token", json, "a1").await.status, 200);
    gateway.stop();
}

#[tokio::test]
async fn presence_follows_heartbeats_with_the_one_and_a_half_interval_rule() {
    let clock = Arc::new(ManualClock::new(T0));
    let gateway = AgentGateway::start(clock.clone(), None).await;
    let mut events = gateway.service.subscribe();
    assert_eq!(
        register(&gateway.base, "site-token", Encoding::Json, "a1")
            .await
            .status,
        200
    );
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Registered {
            first_time: true,
            ..
        }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        AgentEvent::Online { .. }
    ));
    assert_eq!(gateway.service.online_count(), 1);

    // 15 s of silence (1.5 × 10 s) is still online; one more millisecond is not.
    clock.advance_ms(15_000);
    gateway.service.check_timers();
    assert!(gateway.service.agent("a1").unwrap().online);
    clock.advance_ms(1);
    gateway.service.check_timers();
    assert_eq!(
        next_event(&mut events).await,
        AgentEvent::Offline {
            agent_id: "a1".into(),
            at_ms: T0 + 15_001,
            last_seen_ms: T0
        }
    );
    assert_eq!(gateway.service.online_count(), 0);

    // The next heartbeat brings it back.
    beat_ok(&gateway.base, Encoding::Protobuf, &heartbeat("a1", 1, &[])).await;
    assert_eq!(
        next_event(&mut events).await,
        AgentEvent::Online {
            agent_id: "a1".into(),
            at_ms: T0 + 15_001
        }
    );
    assert_eq!(gateway.service.online_count(), 1);
    gateway.stop();
}

#[tokio::test]
async fn a_restart_command_is_repeated_until_the_agent_acknowledges_it() {
    let gateway = AgentGateway::start(Arc::new(SystemClock), None).await;
    let base = gateway.base.as_str();
    for (n, encoding) in ENCODINGS.into_iter().enumerate() {
        let agent = format!("a{n}");
        assert_eq!(
            register(base, "site-token", encoding, &agent).await.status,
            200
        );
        let mut events = gateway.service.subscribe();
        let restart = AgentCommand {
            id: CommandId::new_v7(),
            kind: "restart".into(),
            payload: serde_json::json!({"delay_s": 5}),
        };
        gateway
            .service
            .enqueue_command(&agent, restart.clone())
            .unwrap();

        // Every answer carries it until it is acknowledged.
        for seq in 1..=2 {
            let answer = beat_ok(base, encoding, &heartbeat(&agent, seq, &[])).await;
            assert_eq!(
                answer.commands,
                std::slice::from_ref(&restart),
                "heartbeat {seq}"
            );
        }
        assert!(events.try_recv().is_err(), "not acknowledged yet");

        let answer = beat_ok(base, encoding, &heartbeat(&agent, 3, &[restart.id])).await;
        assert!(answer.commands.is_empty());
        assert_eq!(
            next_event(&mut events).await,
            AgentEvent::CommandAcknowledged {
                agent_id: agent.clone(),
                command_id: restart.id
            }
        );
        // A repeated acknowledgement is not reported again.
        let answer = beat_ok(base, encoding, &heartbeat(&agent, 4, &[restart.id])).await;
        assert!(answer.commands.is_empty());
        assert!(events.try_recv().is_err());
    }
    // Commands for an agent that never registered are refused at once.
    let err = gateway
        .service
        .enqueue_command(
            "ghost",
            AgentCommand {
                id: CommandId::new_v7(),
                kind: "restart".into(),
                payload: serde_json::Value::Null,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, gateway_control::Error::UnknownAgent { .. }),
        "{err}"
    );
    gateway.stop();
}

#[tokio::test]
async fn a_restarted_gateway_still_knows_its_agents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agents.db");
    let gateway = AgentGateway::start(
        Arc::new(SystemClock),
        Some(SqliteAgentStore::open(&path).unwrap()),
    )
    .await;
    assert_eq!(
        register(&gateway.base, "site-token", Encoding::Json, "a1")
            .await
            .status,
        200
    );
    gateway.stop();

    let gateway = AgentGateway::start(
        Arc::new(SystemClock),
        Some(SqliteAgentStore::open(&path).unwrap()),
    )
    .await;
    assert!(
        !gateway.service.agent("a1").unwrap().online,
        "offline until heard from"
    );
    // The agent keeps heartbeating without registering again.
    beat_ok(&gateway.base, Encoding::Json, &heartbeat("a1", 1, &[])).await;
    assert_eq!(gateway.service.online_count(), 1);
    gateway.stop();
}

// ---------------------------------------------------------------- through the control channel

/// A control-channel server in its own runtime (the test runs in another one).
struct ControlServer {
    addr: SocketAddr,
    hub: Hub,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ControlServer {
    fn start(dir: &Path) -> ControlServer {
        let queue_path = dir.join("queue.db");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (hub, addr) = runtime.block_on(async move {
                let clock: Arc<dyn Clock> = Arc::new(SystemClock);
                let queue = SqliteCommandQueue::open(queue_path, QueueConfig::default()).unwrap();
                let events = EventLog::in_memory(EventLogConfig::default(), clock.clone()).unwrap();
                let tokens = tokens();
                let hub = Hub::builder(
                    HubConfig::default(),
                    Arc::new(queue),
                    events,
                    tokens.clone(),
                    clock,
                )
                .directory(tokens)
                .build()
                .unwrap();
                hub.spawn_timers();
                let app = hub.router();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(listener, app).await });
                (hub, addr)
            });
            ControlServer {
                addr,
                hub,
                runtime: Some(runtime),
            }
        })
        .join()
        .unwrap()
    }

    fn wait_for_state(&self, id: &CommandId, state: CommandState) -> Option<String> {
        let start = Instant::now();
        loop {
            let record = self.hub.command(id).unwrap().unwrap();
            if record.state == state {
                return record.detail;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "command still `{}` (detail {:?}), expected `{state}`",
                record.state,
                record.detail
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the gateway binary does with control-channel commands: `agent.*` go to the agents,
/// refused at once when they cannot be queued.
async fn route_commands(agents: AgentService, handle: GatewayHandle, mut events: GatewayEvents) {
    while let Some(event) = events.recv().await {
        if let GatewayEvent::Command(command) = event
            && command.kind.starts_with(AGENT_COMMAND_PREFIX)
            && let Err(e) = agents.deliver_control_command(&command)
        {
            handle
                .report_outcome(command.id, Outcome::rejected(e.to_string()))
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_from_the_server_is_delivered_on_the_next_heartbeat_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlServer::start(dir.path());
    let mut config = GatewayClientConfig {
        url: format!("ws://{}/v1/control", server.addr),
        token: "gw-1-token".into(),
        encoding: WireEncoding::Json,
        ..Default::default()
    };
    config.session.gateway_id = "gw-1".into();
    let (handle, events) = GatewayClient::spawn(config, MemoryJournal::new()).unwrap();
    tokio::time::timeout(TIMEOUT, handle.wait_established())
        .await
        .unwrap()
        .unwrap();

    let gateway = AgentGateway::start(Arc::new(SystemClock), None).await;
    gateway
        .service
        .spawn_control_reporter(handle.clone())
        .unwrap();
    tokio::spawn(route_commands(gateway.service.clone(), handle, events));
    assert_eq!(
        register(&gateway.base, "site-token", Encoding::Json, "a1")
            .await
            .status,
        200
    );

    // An operator restarts agent a1.
    let id = server
        .hub
        .enqueue(
            NewCommand::new("gw-1", "agent.restart")
                .target("a1")
                .payload(serde_json::json!({"reason": "upgrade"})),
        )
        .unwrap()
        .id;

    // The agent's heartbeats carry it once the gateway has it.
    let mut seq = 0;
    let start = Instant::now();
    let delivered = loop {
        seq += 1;
        let answer = beat_ok(&gateway.base, Encoding::Json, &heartbeat("a1", seq, &[])).await;
        if let Some(command) = answer.commands.first() {
            break command.clone();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the restart never reached the agent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        delivered,
        AgentCommand {
            id,
            kind: "restart".into(),
            payload: serde_json::json!({"reason": "upgrade"}),
        }
    );
    // Not finished on the server until the agent acknowledges it.
    let state = server.hub.command(&id).unwrap().unwrap().state;
    assert!(
        !state.is_terminal(),
        "already `{state}` before the agent acknowledged"
    );

    seq += 1;
    let answer = beat_ok(&gateway.base, Encoding::Json, &heartbeat("a1", seq, &[id])).await;
    assert!(answer.commands.is_empty());
    let detail =
        tokio::task::block_in_place(|| server.wait_for_state(&id, CommandState::Succeeded));
    assert_eq!(detail.as_deref(), Some(DELIVERED_TO_AGENT));

    // A restart for an agent this gateway does not know is rejected at once.
    let ghost = server
        .hub
        .enqueue(NewCommand::new("gw-1", "agent.restart").target("ghost"))
        .unwrap()
        .id;
    let detail =
        tokio::task::block_in_place(|| server.wait_for_state(&ghost, CommandState::Rejected));
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.contains("not registered")),
        "{detail:?}"
    );
    gateway.stop();
}

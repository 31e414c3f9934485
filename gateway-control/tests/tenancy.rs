//! Two tenants on one server: `acme` and `globex`. Gateway ids are unique across the server
//! and the gateway directory says whose each is; an operator or gateway of one tenant must
//! never reach the other's gateways, commands or events — over the sans-IO cores (the
//! in-memory [`Pair`]) and over real HTTP and WebSockets on loopback.

mod common;
mod loopback;

use std::sync::Arc;
use std::time::Duration;

use common::{GATEWAY, Pair, TENANT};
use gateway_control::gateway::Outcome;
use gateway_control::server::{
    CommandFilter, ConnectionEvent, ControlPlane, EventLog, EventLogConfig, NewCommand,
    SqliteCommandQueue,
};
use gateway_control::{CommandState, Error};
use gateway_proto::auth::{Authenticator, Principal, Role, StaticTokens};
use gateway_proto::clock::{Clock, ManualClock};
use gateway_proto::{
    CommandAck, CommandAckState, ControlFrame, Encoding, ErrorCode, Hello, SessionId,
};
use loopback::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ----- sans-IO -----

#[test]
fn the_plane_fills_in_and_checks_the_tenant_of_every_command() {
    let pair = Pair::default_pair();
    let record = pair
        .plane
        .enqueue(NewCommand::new(GATEWAY, "flush"))
        .unwrap();
    assert_eq!(
        record.tenant.as_deref(),
        Some(TENANT),
        "the gateway's tenant"
    );
    for command in [
        NewCommand::new(GATEWAY, "device.door.open").tenant("globex"),
        NewCommand::new("gw-9", "flush").tenant(TENANT),
        NewCommand::new("gw-unknown", "flush"),
    ] {
        let err = pair.plane.enqueue(command.clone()).unwrap_err();
        assert!(
            matches!(err, Error::UnknownGateway { .. }),
            "{command:?}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::NotFound);
    }
    // A fan-out is all or nothing.
    let err = pair
        .plane
        .enqueue_many(vec![
            NewCommand::new(GATEWAY, "flush"),
            NewCommand::new("gw-9", "flush").tenant(TENANT),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::UnknownGateway { .. }));
    let all = pair
        .plane
        .commands(&CommandFilter {
            limit: 100,
            ..CommandFilter::default()
        })
        .unwrap();
    assert_eq!(all.len(), 1, "nothing else was stored");
}

#[test]
fn without_a_directory_only_gateways_seen_under_the_tenant_are_known() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_750_000_000_000));
    let queue = SqliteCommandQueue::open_in_memory(Default::default()).unwrap();
    let events = EventLog::in_memory(EventLogConfig::default(), clock.clone()).unwrap();
    let plane = ControlPlane::new(Arc::new(queue), events, clock, 8, 1.5);
    let acme = Principal::new("acme", "gw-1", Role::Gateway);
    let globex = Principal::new("globex", "gw-1", Role::Gateway);
    let hello = |id: &str| Hello {
        gateway_id: id.into(),
        protocol_version: gateway_proto::PROTOCOL_VERSION,
        min_protocol_version: 1,
        capabilities: vec![],
        applied_policies: vec![],
        last_command_id: None,
        software: "t".into(),
    };

    // Not seen yet: refused, whoever asks.
    assert!(matches!(
        plane.enqueue(NewCommand::new("gw-1", "flush").tenant("acme")),
        Err(Error::UnknownGateway { .. })
    ));
    assert!(plane.admit(&globex).is_ok(), "an unseen id may connect");
    plane
        .session_started(&acme, &hello("gw-1"), SessionId::new_v7(), 1_000)
        .unwrap();
    // Now it is acme's, and stays acme's.
    assert!(matches!(
        plane.admit(&globex),
        Err(Error::GatewayNotAdmitted { .. })
    ));
    assert!(matches!(
        plane.session_started(&globex, &hello("gw-1"), SessionId::new_v7(), 1_000),
        Err(Error::GatewayNotAdmitted { .. })
    ));
    assert!(matches!(
        plane.enqueue(NewCommand::new("gw-1", "flush").tenant("globex")),
        Err(Error::UnknownGateway { .. })
    ));
    let record = plane.enqueue(NewCommand::new("gw-1", "flush")).unwrap();
    assert_eq!(record.tenant.as_deref(), Some("acme"));
    assert_eq!(plane.presence("gw-1").unwrap().tenant, "acme");
}

#[test]
fn a_gateway_whose_token_names_another_tenant_never_gets_a_session_or_a_command() {
    let mut pair = Pair::default_pair();
    pair.set_server_up(false);
    let id = pair
        .enqueue(NewCommand::new(GATEWAY, "device.door.open"))
        .id;
    // A token for gw-1 issued under globex, while the directory places gw-1 in acme.
    pair.principal = Principal::new("globex", GATEWAY, Role::Gateway);
    pair.set_server_up(true);
    pair.advance(ms(3_000));

    assert!(
        pair.server_received
            .iter()
            .any(|f| matches!(f, ControlFrame::Hello(_))),
        "the gateway tried"
    );
    assert!(
        !pair
            .server_events
            .iter()
            .any(|e| matches!(e, ConnectionEvent::Established { .. })),
        "{:?}",
        pair.server_events
    );
    assert!(!pair.gateway.is_established());
    assert!(
        pair.plane.presence(GATEWAY).is_none(),
        "presence never saw it"
    );
    assert!(pair.executions.is_empty());
    assert_eq!(pair.command(&id).state, CommandState::Queued);

    // The real gateway comes along: it gets the command.
    pair.principal = Principal::new(TENANT, GATEWAY, Role::Gateway);
    pair.auto_complete = Some(Outcome::succeeded());
    pair.advance(ms(5_000));
    assert_eq!(pair.command(&id).state, CommandState::Succeeded);
    assert_eq!(pair.plane.presence(GATEWAY).unwrap().tenant, TENANT);
}

#[test]
fn progress_and_ignored_acknowledgements_are_published_under_the_commands_tenant() {
    let mut pair = Pair::default_pair();
    pair.advance(ms(100));
    let id = pair
        .enqueue(NewCommand::new(GATEWAY, "scan").execution_timeout_ms(60_000))
        .id;
    pair.advance(ms(50));
    pair.gateway
        .report_progress(id, Some("10 %".into()))
        .unwrap();
    pair.advance(ms(50));
    pair.gateway
        .report_progress(id, Some("50 %".into()))
        .unwrap();
    pair.advance(ms(50));
    pair.plane.cancel(&id, true).unwrap();
    pair.complete(id, Outcome::succeeded());
    pair.advance(ms(50));

    let events = pair.events.since(0, usize::MAX);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["command.progress", "command.ack_ignored", "command.state"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    for event in &events {
        assert_eq!(
            event.tenant.as_deref(),
            Some(TENANT),
            "{} published without its tenant",
            event.kind
        );
    }
}

// ----- over HTTP and WebSockets -----

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("an ErrorBody");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn enqueue_as(
    http: &reqwest::Client,
    server: &TestServer,
    token: &str,
    gateway: &str,
    body: Value,
) -> reqwest::Response {
    http.post(format!("{}/v1/gateways/{gateway}/commands", server.http()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_command_see_or_cancel_another_tenants_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let http = http_client();
    let door = json!({"kind": "device.door.open", "target": "door-1", "payload": {"door": 1}});

    // globex names acme's gw-1: the same 404 as for a gateway nobody has.
    let (status, code, foreign) =
        error_of(enqueue_as(&http, &server, "globex-admin-token", "gw-1", door.clone()).await)
            .await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let (status, code, nobody) =
        error_of(enqueue_as(&http, &server, "globex-admin-token", "gw-404", door.clone()).await)
            .await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert_eq!(
        foreign.replace("gw-1", "ID"),
        nobody.replace("gw-404", "ID"),
        "the answer does not reveal that another tenant has gw-1"
    );
    assert!(!foreign.contains("acme"), "{foreign}");
    assert!(
        server
            .hub
            .commands(&CommandFilter::default())
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );

    // acme commands its own gateway.
    let response = enqueue_as(&http, &server, "admin-token", "gw-1", door).await;
    assert_eq!(response.status(), 201);
    let record: Value = response.json().await.unwrap();
    assert_eq!(record["tenant"], "acme");
    let id = record["id"].as_str().unwrap().to_owned();

    // globex cannot read, cancel or list it, nor see gw-1.
    for (method, path) in [
        ("GET", format!("/v1/commands/{id}")),
        ("POST", format!("/v1/commands/{id}/cancel")),
        ("POST", format!("/v1/commands/{id}/cancel?force=true")),
        ("GET", "/v1/gateways/gw-1".to_owned()),
    ] {
        let url = format!("{}{path}", server.http());
        let request = if method == "GET" {
            http.get(url)
        } else {
            http.post(url)
        };
        let response = request
            .bearer_auth("globex-admin-token")
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_of(response).await;
        assert_eq!(
            (status, code.as_str()),
            (404, "not_found"),
            "{method} {path}"
        );
    }
    let listed: Value = http
        .get(format!("{}/v1/commands?gateway_id=gw-1", server.http()))
        .bearer_auth("globex-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["commands"], json!([]));
    let state = server
        .hub
        .command(&id.parse().unwrap())
        .unwrap()
        .unwrap()
        .state;
    assert_eq!(
        state,
        CommandState::Queued,
        "globex's cancel changed nothing"
    );

    // acme sees it and can cancel it.
    let listed: Value = http
        .get(format!("{}/v1/commands", server.http()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["commands"].as_array().unwrap().len(), 1);
    let response = http
        .post(format!("{}/v1/commands/{id}/cancel", server.http()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_applies_the_tenant_before_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let http = http_client();
    for i in 0..2 {
        let response = enqueue_as(
            &http,
            &server,
            "admin-token",
            "gw-1",
            json!({"kind": format!("a{i}")}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    // globex's are newer: a limit applied before the tenant filter would leave acme nothing.
    for i in 0..3 {
        let response = enqueue_as(
            &http,
            &server,
            "globex-admin-token",
            "gw-3",
            json!({"kind": format!("b{i}")}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    let listed: Value = http
        .get(format!("{}/v1/commands?limit=2", server.http()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = listed["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["a1", "a0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_of_another_tenant_can_neither_fetch_nor_acknowledge_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let http = http_client();
    let record: Value = enqueue_as(
        &http,
        &server,
        "admin-token",
        "gw-1",
        json!({"kind": "reboot"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id: gateway_proto::CommandId = record["id"].as_str().unwrap().parse().unwrap();
    let ack = |state| CommandAck {
        id,
        state,
        detail: Some("done".into()),
        result: None,
    };

    // globex's gw-3 over the REST fallback.
    let response = http
        .post(format!("{}/v1/commands/{id}/ack", server.http()))
        .bearer_auth("gw-3-token")
        .json(&ack(CommandAckState::Succeeded))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let fetched: Value = http
        .get(format!("{}/v1/gateways/gw-3/commands", server.http()))
        .bearer_auth("gw-3-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["commands"], json!([]));

    // ... and over a WebSocket session.
    let mut ws = raw_connect(&server.url(), "gw-3-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-3"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    send(
        &mut ws,
        &ControlFrame::CommandAck(ack(CommandAckState::Succeeded)),
        Encoding::Json,
    )
    .await;
    assert_eq!(
        error_code(&recv(&mut ws, Encoding::Json).await),
        ErrorCode::NotFound
    );

    let record = server.hub.command(&id).unwrap().unwrap();
    assert_eq!(record.state, CommandState::Queued);
    assert!(server.hub.acks(&id).unwrap().is_empty(), "nothing recorded");

    // acme's gw-1 gets it.
    let fetched: Value = http
        .get(format!("{}/v1/gateways/gw-1/commands", server.http()))
        .bearer_auth("gw-1-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["commands"][0]["id"], id.to_string());
}

/// The directory places gw-1 in acme; a token says globex.
fn rogue_identity(directory: bool) -> Identity {
    let tokens = tokens();
    let auth: Arc<dyn Authenticator> = Arc::new(
        StaticTokens::new()
            .with("gw-1-token", Principal::new("acme", "gw-1", Role::Gateway))
            .with(
                "rogue-token",
                Principal::new("globex", "gw-1", Role::Gateway),
            )
            .with("admin-token", Principal::new("acme", "ops", Role::Admin))
            .with(
                "globex-admin-token",
                Principal::new("globex", "ops", Role::Admin),
            ),
    );
    Identity {
        auth,
        directory: directory.then_some(tokens as _),
    }
}

async fn expect_refused_handshake(server: &TestServer, token: &str) {
    let mut ws = raw_connect(&server.url(), token, Encoding::Json).await;
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    let frame = recv(&mut ws, Encoding::Json).await;
    let ControlFrame::Error(error) = frame else {
        panic!("expected an error frame, got {frame:?}")
    };
    assert_eq!(error.code, ErrorCode::Forbidden);
    assert!(!error.message.contains("acme"), "{}", error.message);
    match recv_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_tenant_disagrees_with_the_directory_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), None, fast_hub(), rogue_identity(true));
    let http = http_client();

    expect_refused_handshake(&server, "rogue-token").await;
    assert!(!server.hub.is_connected("gw-1"));
    assert!(server.hub.presence("gw-1").is_none());
    let response = http
        .post(format!("{}/v1/gateways/gw-1/heartbeat", server.http()))
        .bearer_auth("rogue-token")
        .json(&json!({"seq": 1, "status": gateway_control::gateway::empty_status()}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert!(server.hub.presence("gw-1").is_none(), "no presence either");

    // The real gw-1 connects; the rogue still cannot take its place or flip its tenant.
    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    let session = server.hub.session_of("gw-1").unwrap();
    expect_refused_handshake(&server, "rogue-token").await;
    assert_eq!(server.hub.session_of("gw-1"), Some(session));
    let presence = server.hub.presence("gw-1").unwrap();
    assert_eq!((presence.tenant.as_str(), presence.online), ("acme", true));

    // acme's command reaches acme's gw-1.
    let response = enqueue_as(
        &http,
        &server,
        "admin-token",
        "gw-1",
        json!({"kind": "flush"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert!(
        matches!(recv(&mut ws, Encoding::Json).await, ControlFrame::Command(c) if c.kind == "flush")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_directory_a_gateway_keeps_the_tenant_it_first_connected_under() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), None, fast_hub(), rogue_identity(false));
    let http = http_client();

    // Never seen: unknown, even to its own tenant.
    let (status, _, _) = error_of(
        enqueue_as(
            &http,
            &server,
            "admin-token",
            "gw-1",
            json!({"kind": "flush"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);

    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    expect_refused_handshake(&server, "rogue-token").await;
    assert_eq!(server.hub.presence("gw-1").unwrap().tenant, "acme");

    let (status, _, _) = error_of(
        enqueue_as(
            &http,
            &server,
            "globex-admin-token",
            "gw-1",
            json!({"kind": "flush"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let response = enqueue_as(
        &http,
        &server,
        "admin-token",
        "gw-1",
        json!({"kind": "flush"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert!(
        matches!(recv(&mut ws, Encoding::Json).await, ControlFrame::Command(c) if c.kind == "flush")
    );
}

/// SSE text until an event with `marker` in it arrives.
async fn sse_until(server: &TestServer, token: &str, marker: &str) -> String {
    let mut response = http_client()
        .get(format!("{}/v1/events", server.http()))
        .bearer_auth(token)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    tokio::time::timeout(TIMEOUT, async {
        while !text.contains(marker) {
            let chunk = response.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {marker} in {text}"));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operator_stream_shows_its_own_tenants_events_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());

    // acme's gw-1 reports progress twice, finishes, then repeats its outcome (ignored).
    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    let id = server
        .hub
        .enqueue(NewCommand::new("gw-1", "scan"))
        .unwrap()
        .id;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Command(_)
    ));
    for (state, detail) in [
        (CommandAckState::InProgress, "10 %"),
        (CommandAckState::InProgress, "secret-acme-progress"),
        (CommandAckState::Succeeded, "done"),
        (CommandAckState::Succeeded, "secret-acme-late"),
    ] {
        let ack = CommandAck {
            id,
            state,
            detail: Some(detail.into()),
            result: None,
        };
        send(&mut ws, &ControlFrame::CommandAck(ack), Encoding::Json).await;
    }
    let log = server.hub.events().clone();
    wait_for("the ignored acknowledgement", || {
        log.since(0, 1_000)
            .iter()
            .any(|e| e.kind == "command.ack_ignored")
    })
    .await;
    // A tenant-less event (a server-internal one), then one marker per tenant.
    server
        .hub
        .events()
        .publish("server.internal", None, json!({"secret": "internal"}));
    server.hub.events().publish(
        "test.marker",
        Some("globex"),
        json!({"marker": "globex-end"}),
    );
    server
        .hub
        .events()
        .publish("test.marker", Some("acme"), json!({"marker": "acme-end"}));

    let globex = sse_until(&server, "globex-admin-token", "globex-end").await;
    for leaked in ["command.", "gateway.", "secret", "acme-end", "gw-1"] {
        assert!(!globex.contains(leaked), "globex saw {leaked}: {globex}");
    }
    let acme = sse_until(&server, "admin-token", "acme-end").await;
    for seen in [
        "event: command.progress",
        "secret-acme-progress",
        "event: command.ack_ignored",
        "secret-acme-late",
        "event: gateway.online",
    ] {
        assert!(acme.contains(seen), "acme missed {seen}: {acme}");
    }
    assert!(
        !acme.contains("internal"),
        "a tenant-less event reached an operator: {acme}"
    );
    assert!(!acme.contains("globex-end"));
}

//! The drivers over real WebSockets and HTTP on loopback: a server in its own tokio runtime
//! (dropping the runtime is a crash: every task and socket goes at once), gateways on the
//! test's runtime.

mod loopback;

use std::time::{Duration, Instant};

use futures::SinkExt;
use gateway_control::gateway::{
    GatewayClient, MemoryJournal, Outcome, RestFallbackClient, RestPoller, SqliteJournal,
    WireEncoding,
};
use gateway_control::server::{HubConfig, HubEvent, NewCommand, Transport};
use gateway_control::{CloseReason, CommandState, ConnectionState, Error, GatewayEvent};
use gateway_proto::{
    ControlFrame, Encoding, ErrorCode, PolicyContent, PolicyState, PolicyStatus, PolicyUpdate,
};
use loopback::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_server_crash_and_gets_commands_issued_while_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let addr = server.addr;
    let journal = SqliteJournal::open(dir.path().join("journal.db"), Default::default()).unwrap();
    let (handle, events) = GatewayClient::spawn(
        client_config(&server.url(), "gw-1", "gw-1-token", WireEncoding::Json),
        journal,
    )
    .unwrap();
    let mut state = handle.watch_state();
    tokio::time::timeout(TIMEOUT, handle.wait_established())
        .await
        .unwrap()
        .unwrap();
    tokio::spawn(run_commands(handle.clone(), events));

    let first = server
        .hub
        .enqueue(NewCommand::new("gw-1", "flush"))
        .unwrap()
        .id;
    let hub = server.hub.clone();
    wait_for("first command", || {
        hub.command(&first).unwrap().unwrap().state == CommandState::Succeeded
    })
    .await;

    server.crash();
    tokio::time::timeout(
        TIMEOUT,
        state.wait_for(|s| !matches!(s, ConnectionState::Established { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    // While the gateway is cut off, the restarted server takes a command for it (the first
    // connect attempts after the crash are refused: nothing listens).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = TestServer::start(dir.path(), Some(addr), fast_hub());
    let second = server
        .hub
        .enqueue(NewCommand::new("gw-1", "door.open"))
        .unwrap()
        .id;
    // The control channel coming back is visible to whoever watches the state (the uplink).
    tokio::time::timeout(
        TIMEOUT,
        state.wait_for(|s| matches!(s, ConnectionState::Established { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let hub = server.hub.clone();
    wait_for("command issued while offline", || {
        hub.command(&second).unwrap().unwrap().state == CommandState::Succeeded
    })
    .await;
    let record = server.hub.command(&second).unwrap().unwrap();
    assert_eq!(
        record.result,
        Some(serde_json::json!({"kind": "door.open"}))
    );
    assert_eq!(
        server.hub.command(&first).unwrap().unwrap().state,
        CommandState::Succeeded,
        "the first command's state survived the crash"
    );
    handle.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_is_marked_offline_within_one_and_a_half_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let mut log = server.hub.events().subscribe(None).live;
    // A raw client: hello, then silence with the socket open.
    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    let welcome = recv(&mut ws, Encoding::Json).await;
    assert!(matches!(welcome, ControlFrame::Welcome(_)), "{welcome:?}");
    let online_at = Instant::now();
    let offline = tokio::time::timeout(TIMEOUT, async {
        loop {
            let event = log.recv().await.unwrap();
            if event.kind == "gateway.offline" {
                return event;
            }
        }
    })
    .await
    .unwrap();
    let elapsed = online_at.elapsed();
    let silent_ms =
        offline.data["at_ms"].as_i64().unwrap() - offline.data["last_seen_ms"].as_i64().unwrap();
    // Bound: 1.5 × 300 ms = 450 ms after the last sign of life (plus scheduling slack).
    assert!(
        silent_ms >= 450,
        "offline after only {silent_ms} ms of silence"
    );
    assert!(
        silent_ms <= 450 + 250,
        "offline only after {silent_ms} ms of silence"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(!server.hub.presence("gw-1").unwrap().online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_tokens_are_refused_with_an_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let (handle, mut events) = GatewayClient::spawn(
        client_config(&server.url(), "gw-1", "guessed", WireEncoding::Json),
        MemoryJournal::new(),
    )
    .unwrap();
    let failed = next_event(&mut events, |e| {
        matches!(e, GatewayEvent::ConnectFailed { .. })
    })
    .await;
    let GatewayEvent::ConnectFailed { reason } = failed else {
        unreachable!()
    };
    assert!(reason.contains("403"), "{reason}");
    assert!(!server.hub.is_connected("gw-1"));
    handle.close();

    let http = http_client();
    let response = http
        .get(format!("{}/v1/control", server.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // An operator token is not a gateway token.
    let response = http
        .get(format!("{}/v1/control", server.http()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // A gateway token without an upgrade.
    let response = http
        .get(format!("{}/v1/control", server.http()))
        .bearer_auth("gw-1-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_get_error_frames_and_the_connection_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());

    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    ws.send(Message::text("this is not json")).await.unwrap();
    assert_eq!(
        error_code(&recv(&mut ws, Encoding::Json).await),
        ErrorCode::MalformedFrame
    );
    ws.send(Message::text(r#"{"type":"teleport","to":"mars"}"#))
        .await
        .unwrap();
    assert_eq!(
        error_code(&recv(&mut ws, Encoding::Json).await),
        ErrorCode::UnknownFrame
    );
    send(
        &mut ws,
        &ControlFrame::Heartbeat(gateway_proto::Heartbeat {
            seq: 1,
            status: gateway_control::gateway::empty_status(),
        }),
        Encoding::Json,
    )
    .await;
    assert_eq!(
        error_code(&recv(&mut ws, Encoding::Json).await),
        ErrorCode::UnexpectedFrame
    );
    // Still up: the handshake works on the same connection.
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    ws.send(Message::text("{}")).await.unwrap();
    assert_eq!(
        error_code(&recv(&mut ws, Encoding::Json).await),
        ErrorCode::MalformedFrame
    );

    // The same over protobuf.
    let mut ws = raw_connect(&server.url(), "gw-2-token", Encoding::Protobuf).await;
    ws.send(Message::binary(vec![0xff, 0x01, 0x02]))
        .await
        .unwrap();
    let code = error_code(&recv(&mut ws, Encoding::Protobuf).await);
    assert!(
        matches!(code, ErrorCode::MalformedFrame | ErrorCode::UnknownFrame),
        "{code:?}"
    );
    send(&mut ws, &hello("gw-2"), Encoding::Protobuf).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Protobuf).await,
        ControlFrame::Welcome(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_another_gateway_gets_identity_mismatch_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-2"), Encoding::Json).await;
    assert_eq!(
        error_code(&recv(&mut ws, Encoding::Json).await),
        ErrorCode::IdentityMismatch
    );
    match recv_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(!server.hub.is_connected("gw-1"));
    assert!(!server.hub.is_connected("gw-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_exchange_policy_frames_through_the_hub_over_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let mut hub_events = server.hub.subscribe();
    let (handle, mut events) = GatewayClient::builder(
        client_config(&server.url(), "gw-1", "gw-1-token", WireEncoding::Protobuf),
        MemoryJournal::new(),
    )
    .applied_policies(vec![gateway_proto::AppliedPolicy {
        name: "collect".into(),
        version: 3,
        checksum: "b".repeat(64),
    }])
    .spawn()
    .unwrap();
    let established = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Ok(HubEvent::SessionEstablished { hello, .. }) = hub_events.recv().await {
                return hello;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(established.gateway_id, "gw-1");
    assert_eq!(established.applied_policies[0].version, 3);

    let update = PolicyUpdate {
        name: "collect".into(),
        version: 4,
        checksum: "c".repeat(64),
        content: PolicyContent::Full {
            document: serde_json::json!({"streams": ["logs"]}),
        },
        signature: None,
    };
    server
        .hub
        .send_frame("gw-1", ControlFrame::PolicyUpdate(update.clone()))
        .unwrap();
    let received = next_event(&mut events, |e| matches!(e, GatewayEvent::PolicyUpdate(_))).await;
    assert_eq!(received, GatewayEvent::PolicyUpdate(update));
    handle
        .send(ControlFrame::PolicyStatus(PolicyStatus {
            name: "collect".into(),
            version: 4,
            state: PolicyState::Applied,
            reason: None,
            code: None,
            running_version: Some(4),
        }))
        .await
        .unwrap();
    let frame = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Ok(HubEvent::Frame {
                gateway_id, frame, ..
            }) = hub_events.recv().await
            {
                return (gateway_id, frame);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(frame.0, "gw-1");
    assert!(matches!(&*frame.1, ControlFrame::PolicyStatus(s) if s.version == 4));
    // Frames the session owns cannot be pushed through the hub or the handle.
    let err = server
        .hub
        .send_frame(
            "gw-1",
            ControlFrame::Hello(match hello("gw-1") {
                ControlFrame::Hello(h) => h,
                _ => unreachable!(),
            }),
        )
        .unwrap_err();
    assert!(matches!(err, Error::FrameNotAllowed { .. }));
    assert!(matches!(
        server.hub.send_frame(
            "gw-9",
            ControlFrame::PolicyUpdate(PolicyUpdate {
                name: "x".into(),
                version: 1,
                checksum: "d".repeat(64),
                content: PolicyContent::Full {
                    document: serde_json::json!({})
                },
                signature: None,
            })
        ),
        Err(Error::NotConnected { .. })
    ));
    handle.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_fallback_carries_heartbeats_commands_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let tls = gateway_control::gateway::default_tls_config().unwrap();
    let client =
        RestFallbackClient::with_tls(server.http(), "gw-1", "gw-1-token", tls.clone()).unwrap();
    let journal =
        SqliteJournal::open(dir.path().join("rest-journal.db"), Default::default()).unwrap();
    let mut poller = RestPoller::new(client, journal).unwrap();
    assert!(poller.poll().await.unwrap().is_empty());
    let presence = server.hub.presence("gw-1").unwrap();
    assert!(presence.online);
    assert_eq!(presence.transport, Transport::Rest);
    assert_eq!(poller.interval(), Duration::from_millis(300));

    let id = server
        .hub
        .enqueue(NewCommand::new("gw-1", "flush"))
        .unwrap()
        .id;
    let commands = poller.poll().await.unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(
        server.hub.command(&id).unwrap().unwrap().state,
        CommandState::Received
    );
    // A second poll does not hand the command over again.
    assert!(poller.poll().await.unwrap().is_empty());
    poller
        .report_outcome(id, Outcome::failed("disk full"))
        .await
        .unwrap();
    let record = server.hub.command(&id).unwrap().unwrap();
    assert_eq!(record.state, CommandState::Failed);
    assert_eq!(record.detail.as_deref(), Some("disk full"));

    // Another gateway's token cannot speak for gw-1.
    let intruder = RestFallbackClient::with_tls(server.http(), "gw-1", "gw-2-token", tls).unwrap();
    match intruder.fetch_commands().await {
        Err(Error::Rejected { status, body }) => {
            assert_eq!(status, 403);
            assert_eq!(body.error.code, ErrorCode::IdentityMismatch);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_enqueue_over_http_and_follow_events_with_resumable_sse() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let http = http_client();
    let response = http
        .post(format!("{}/v1/gateways/gw-1/commands", server.http()))
        .bearer_auth("admin-token")
        .json(&serde_json::json!({"kind": "reboot", "priority": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let record: serde_json::Value = response.json().await.unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    let response = http
        .post(format!("{}/v1/commands/{id}/cancel", server.http()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .post(format!("{}/v1/commands/{id}/cancel", server.http()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409, "already canceled");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    // Another event from another component into the same log.
    let audit_id = server.hub.events().publish(
        "audit.login",
        Some("acme"),
        serde_json::json!({"who": "ops"}),
    );

    // Resume after the first event: the rest is replayed.
    let mut response = http
        .get(format!("{}/v1/events", server.http()))
        .bearer_auth("admin-token")
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    tokio::time::timeout(TIMEOUT, async {
        while !text.contains(&format!("id: {audit_id}")) {
            let chunk = response.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap();
    assert!(!text.contains("id: 1\n"), "event 1 is not replayed: {text}");
    assert!(text.contains("event: command.state"), "{text}");
    assert!(text.contains("\"to\":\"canceled\""), "{text}");
    assert!(text.contains("event: audit.login"), "{text}");

    let response = http
        .get(format!("{}/v1/events", server.http()))
        .bearer_auth("gw-1-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_supersedes_the_old_one_whose_late_close_keeps_the_gateway_online() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, HubConfig::default());
    let mut hub_events = server.hub.subscribe();
    let mut old = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut old, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut old, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    let (_, old_epoch) = server.hub.session_of("gw-1").unwrap();

    let mut new = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut new, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut new, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    // The old connection is closed by the server...
    loop {
        match recv_message(&mut old).await {
            Message::Close(_) => break,
            Message::Text(_) | Message::Binary(_) => continue,
            _ => continue,
        }
    }
    drop(old);
    // ...and its end does not take the gateway offline: the new epoch owns the presence.
    // Wait until the hub has processed the old session's end (presence is updated before
    // `SessionClosed` is published), so the check below cannot pass vacuously.
    let reason = tokio::time::timeout(TIMEOUT, async {
        loop {
            match hub_events.recv().await {
                Ok(HubEvent::SessionClosed { epoch, reason, .. }) if epoch == old_epoch => {
                    return reason;
                }
                Ok(_) => continue,
                Err(e) => panic!("hub events: {e}"),
            }
        }
    })
    .await
    .expect("the old session's end in time");
    assert_eq!(reason, CloseReason::Superseded);
    let (_, new_epoch) = server.hub.session_of("gw-1").unwrap();
    assert!(new_epoch > old_epoch);
    let presence = server.hub.presence("gw-1").unwrap();
    assert!(presence.online);
    assert_eq!(presence.epoch, new_epoch);
    assert!(
        server
            .hub
            .events()
            .since(0, 100)
            .iter()
            .all(|e| e.kind != "gateway.offline")
    );
    send(
        &mut new,
        &ControlFrame::Heartbeat(gateway_proto::Heartbeat {
            seq: 1,
            status: gateway_control::gateway::empty_status(),
        }),
        Encoding::Json,
    )
    .await;
    assert!(matches!(
        recv(&mut new, Encoding::Json).await,
        ControlFrame::HeartbeatAck(_)
    ));
}

/// `(status, content type, error code)` of an answer that must be an `ErrorBody`.
async fn error_body(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    (status, content_type, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_oversized_bodies_get_error_bodies_not_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, fast_hub());
    let http = unpooled_http_client();
    let id = server
        .hub
        .enqueue(NewCommand::new("gw-1", "flush"))
        .unwrap()
        .id;
    let base = server.http();
    let big = vec![b' '; 3 * 1024 * 1024]; // over axum's 2 MB default body limit
    let cases = [
        (
            http.get(format!("{base}/v1/commands?limit=abc"))
                .bearer_auth("admin-token"),
            400,
            "invalid_request",
        ),
        (
            http.get(format!("{base}/v1/commands?limit=-1"))
                .bearer_auth("admin-token"),
            400,
            "invalid_request",
        ),
        (
            http.post(format!("{base}/v1/commands/{id}/cancel?force=maybe"))
                .bearer_auth("admin-token"),
            400,
            "invalid_request",
        ),
        (
            http.get(format!("{base}/v1/events?after=-1"))
                .bearer_auth("admin-token"),
            400,
            "invalid_request",
        ),
        (
            http.get(format!("{base}/v1/events?after=x"))
                .bearer_auth("admin-token"),
            400,
            "invalid_request",
        ),
        (
            http.get(format!("{base}/v1/commands/not-a-uuid"))
                .bearer_auth("admin-token"),
            400,
            "invalid_request",
        ),
        (
            http.post(format!("{base}/v1/gateways/gw-1/commands"))
                .bearer_auth("admin-token")
                .body(big.clone()),
            413,
            "payload_too_large",
        ),
        (
            http.post(format!("{base}/v1/commands/{id}/ack"))
                .bearer_auth("gw-1-token")
                .body(big.clone()),
            413,
            "payload_too_large",
        ),
        (
            http.post(format!("{base}/v1/gateways/gw-1/heartbeat"))
                .bearer_auth("gw-1-token")
                .body(big),
            413,
            "payload_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url());
        // A server that refuses a body without reading it closes the connection; under load
        // the client can see that reset before the answer. Such a transport error is retried
        // (the answer itself is what is checked).
        let mut attempts = 0;
        let response = loop {
            attempts += 1;
            let again = request.try_clone().expect("a buffered body");
            match http.execute(again).await {
                Ok(response) => break response,
                Err(e) if attempts < 5 => eprintln!("{what}: {e}; retrying"),
                Err(e) => panic!("{what}: {e}"),
            }
        };
        let (got_status, content_type, got_code) = error_body(response).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{what}");
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
    }
    // The command is untouched by the refused cancel.
    assert_eq!(
        server.hub.command(&id).unwrap().unwrap().state,
        CommandState::Queued
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_larger_than_a_frame_is_refused_at_enqueue_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_hub();
    config.limits.max_frame_bytes = 4_096;
    let server = TestServer::start(dir.path(), None, config);
    let http = http_client();
    let enqueue = |blob: usize| {
        http.post(format!("{}/v1/gateways/gw-1/commands", server.http()))
            .bearer_auth("admin-token")
            .json(&serde_json::json!({"kind": "upload", "payload": {"blob": "x".repeat(blob)}}))
            .send()
    };
    let (status, _, code) = error_body(enqueue(4_096).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    assert_eq!(enqueue(3_000).await.unwrap().status(), 201);
    // The library call refuses it too.
    let err = server
        .hub
        .enqueue(
            NewCommand::new("gw-1", "upload")
                .payload(serde_json::json!({"blob": "x".repeat(5_000)})),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::CommandTooLarge { limit: 4_096, .. }),
        "{err}"
    );
    // So does a frame pushed past the queue.
    let err = server
        .hub
        .send_frame("gw-1", ControlFrame::PolicyUpdate(big_policy(5_000)))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
}

fn big_policy(bytes: usize) -> PolicyUpdate {
    PolicyUpdate {
        name: "big".into(),
        version: 1,
        checksum: "e".repeat(64),
        content: PolicyContent::Full {
            document: serde_json::json!({"blob": "x".repeat(bytes)}),
        },
        signature: None,
    }
}

/// A gateway that says hello and then never reads again; frames of 256 KiB pushed at it
/// until the hub gives up on the connection. Returns the reason the session closed.
async fn stall_a_gateway(config: HubConfig) -> CloseReason {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None, config);
    let mut hub_events = server.hub.subscribe();
    let mut ws = raw_connect(&server.url(), "gw-1-token", Encoding::Json).await;
    send(&mut ws, &hello("gw-1"), Encoding::Json).await;
    assert!(matches!(
        recv(&mut ws, Encoding::Json).await,
        ControlFrame::Welcome(_)
    ));
    let update = ControlFrame::PolicyUpdate(big_policy(256 * 1024));
    let start = Instant::now();
    let mut pushed = 0;
    // Loopback socket buffers hold a few MiB; 32 MiB is far more than they take.
    while pushed < 128 && server.hub.send_frame("gw-1", update.clone()).is_ok() {
        pushed += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reason = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Ok(HubEvent::SessionClosed { reason, .. }) = hub_events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the stalled connection was closed");
    assert!(start.elapsed() < TIMEOUT);
    assert!(!server.hub.is_connected("gw-1"));
    assert!(!server.hub.presence("gw-1").unwrap().online);
    drop(ws);
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_reading_overflows_its_queue_and_is_disconnected() {
    // 30 s heartbeats: silence plays no part; only the queue can give up here.
    let config = HubConfig {
        connection_queue_capacity: 4,
        write_timeout_ms: 600_000,
        ..HubConfig::default()
    };
    assert_eq!(stall_a_gateway(config).await, CloseReason::Backlogged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_not_written_within_the_write_timeout_closes_the_connection() {
    // The queue never fills here.
    let config = HubConfig {
        connection_queue_capacity: 100_000,
        write_timeout_ms: 500,
        ..HubConfig::default()
    };
    assert_eq!(stall_a_gateway(config).await, CloseReason::Backlogged);
}

//! End to end, real processes: `POST /v1/records` on the gateway and on the server answers a
//! missing token, a wrong token, a malformed body, an unknown content type and too-large
//! batches with the documented status and error code (docs/PROTOCOL.md §2 and §6), and both
//! processes keep serving afterwards.

mod common;

use std::time::Duration;

use common::{
    ADMIN_TOKEN, AGENT_TOKEN, GATEWAY_TOKEN, Gateway, Http, Server, assert_exactly_once,
    gateway_config, json_batch, server_config, temp_dir,
};
use gateway_proto::{Batch, BatchId, Encoding, WireMessage};
use serde_json::Value;

const JSON: &str = "application/json";

/// The default body limit of `POST /v1/records` (16 MiB, `gateway_proto::Limits`).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A well-formed JSON batch (no records, an unknown padding field receivers must ignore) of
/// `size` bytes: too large only because of its size.
fn padded_batch(size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"batch_id": "{}", "records": [], "pad": ""#,
        BatchId::new_v7()
    );
    let tail = "\"}";
    let mut body = head.into_bytes();
    body.resize(size - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), size);
    body
}

/// POST `body` over a plain socket, reading the answer while the body is still being written,
/// as curl does. The receivers refuse a `Content-Length` over the limit before reading the body
/// and then close the connection; a client that writes the whole body before it reads (reqwest
/// sometimes, Python's http.client always) gets a reset instead of the 413 — see the report in
/// the test below.
fn post_reading_while_writing(url: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (addr, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut writer = stream.try_clone().expect("cloning the socket");
    let sending = std::thread::spawn(move || {
        // Fails with a broken pipe once the receiver has answered and closed: expected.
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "reading the answer to a too-large body failed after {} bytes: {e}",
                answer.len()
            ),
        }
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= end + 4 + n) {
                break;
            }
        }
    }
    drop(stream);
    let _ = sending.join();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Every refusal the issue names, against one `/v1/records`; `token` is a valid ingest token
/// of that process.
async fn refusals(http: &Http, url: &str, token: &str) {
    let (valid, _) = json_batch(1, "e2e-refusals");

    let (status, body) = http.post_bytes(url, None, JSON, valid.clone()).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "unauthorized"),
        "{url} without a token: {body}"
    );

    let (status, body) = http
        .post_bytes(url, Some("not-a-token"), JSON, valid.clone())
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden"),
        "{url} with a wrong token: {body}"
    );

    let (status, body) = http
        .post_bytes(url, Some(ADMIN_TOKEN), JSON, valid.clone())
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden"),
        "{url} with a token of a role that may not ingest: {body}"
    );

    let (status, body) = http
        .post_bytes(url, Some(token), JSON, br#"{"batch_id": "#.to_vec())
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "malformed_body"),
        "{url} with broken JSON: {body}"
    );

    let (status, body) = http
        .post_bytes(url, Some(token), "text/plain", valid.clone())
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (415, "unsupported_media_type"),
        "{url} with text/plain: {body}"
    );

    // Exactly at the limit passes the size check (and is an empty batch); one byte more does not.
    let (status, body) = http
        .post_bytes(url, Some(token), JSON, padded_batch(MAX_BATCH_BYTES))
        .await;
    assert_eq!(
        status, 200,
        "{url} with a batch of exactly the limit: {body}"
    );
    let (over_url, over_token) = (url.to_string(), token.to_string());
    let (status, body) = tokio::task::spawn_blocking(move || {
        post_reading_while_writing(&over_url, &over_token, padded_batch(MAX_BATCH_BYTES + 1))
    })
    .await
    .expect("the raw post panicked");
    assert_eq!(
        (status, error_code(&body)),
        (413, "payload_too_large"),
        "{url} with a body over 16 MiB: {body}"
    );

    let (too_many, _) = json_batch(10_001, "e2e-refusals");
    let (status, body) = http.post_bytes(url, Some(token), JSON, too_many).await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "payload_too_large"),
        "{url} with 10,001 records: {body}"
    );
}

/// Post one valid record; its id.
async fn post_one(http: &Http, url: &str, token: &str) -> String {
    let (body, ids) = json_batch(1, "e2e-follow-up");
    let (status, ack) = http.post_bytes(url, Some(token), JSON, body).await;
    assert_eq!(
        status, 200,
        "{url}: a valid batch after the refusals: {ack}"
    );
    assert_eq!(ack["accepted"], 1, "{ack}");
    ids.into_iter().next().expect("one id")
}

/// `/healthz` and `/readyz` answer 200, and `/metrics` counted the refusals by code.
async fn assert_healthy(http: &Http, base: &str) {
    for path in ["/healthz", "/readyz"] {
        let response = http
            .client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{base}{path}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "{base}{path}");
    }
    let metrics = http
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("reading /metrics");
    let count = |code: &str| -> f64 {
        let series = format!("gateway_ingest_requests_total{{code=\"{code}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    for (code, at_least) in [
        ("unauthorized", 1.0),
        ("forbidden", 2.0),
        ("malformed_body", 1.0),
        ("unsupported_media_type", 1.0),
        ("payload_too_large", 2.0),
    ] {
        assert!(
            count(code) >= at_least,
            "{base}/metrics counts {} `{code}` refusals, expected at least {at_least}",
            count(code)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_errors_and_the_processes_keep_running() {
    let dir = temp_dir();
    let http = Http::new();
    let mut server = Server::start(dir.path(), &server_config("")).await;
    let mut gateway = Gateway::start(dir.path(), &server.url, &gateway_config("")).await;
    let gateway_records = format!("{}/v1/records", gateway.url);
    let server_records = format!("{}/v1/records", server.url);

    refusals(&http, &gateway_records, AGENT_TOKEN).await;
    refusals(&http, &server_records, GATEWAY_TOKEN).await;

    // Server only: a gateway token may post only its own gateway's batches…
    let (_, ids) = json_batch(1, "e2e-impostor");
    let now = gateway_proto::clock::unix_ms(std::time::SystemTime::now());
    let impostor = Batch::new(
        "gw-someone-else",
        vec![
            gateway_proto::Record::new(
                "logs",
                "e2e-impostor",
                now,
                gateway_proto::Body::Json(serde_json::json!({"n": 0}).into()),
            )
            .with_id(ids[0].parse().expect("a record id")),
        ],
    );
    let (status, body) = http
        .post_bytes(
            &server_records,
            Some(GATEWAY_TOKEN),
            JSON,
            impostor.encode(Encoding::Json),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "identity_mismatch"),
        "another gateway's batch: {body}"
    );
    // …and may not read records back.
    let (status, body) = http
        .get_json(&format!("{server_records}?after=0"), Some(GATEWAY_TOKEN))
        .await
        .expect("GET /v1/records");
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden"),
        "a gateway reading records: {body}"
    );
    let (status, body) = http
        .get_json(&format!("{server_records}?after=0"), None)
        .await
        .expect("GET /v1/records");
    assert_eq!(
        (status, error_code(&body)),
        (401, "unauthorized"),
        "reading without a token: {body}"
    );

    // Both processes still run and serve.
    assert!(server.proc.running(), "the server died");
    assert!(gateway.proc.running(), "the gateway died");
    assert_healthy(&http, &server.url).await;
    assert_healthy(&http, &gateway.url).await;
    let direct = post_one(&http, &server_records, GATEWAY_TOKEN).await;
    let via_gateway = post_one(&http, &gateway_records, AGENT_TOKEN).await;
    // A re-sent batch (same record id) is a duplicate at the server, not a second record.
    let (status, ack) = http
        .post_bytes(
            &server_records,
            Some(GATEWAY_TOKEN),
            JSON,
            Batch::new(
                "",
                vec![
                    gateway_proto::Record::new(
                        "logs",
                        "e2e-follow-up",
                        now,
                        gateway_proto::Body::Json(serde_json::json!({"again": true}).into()),
                    )
                    .with_id(direct.parse().expect("a record id")),
                ],
            )
            .encode(Encoding::Json),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        (ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "{ack}"
    );

    // Nothing refused was stored; the two accepted records are, once each.
    assert_exactly_once(
        &http,
        &server.url,
        &[direct, via_gateway],
        Duration::from_secs(20),
    )
    .await;
    assert!(server.proc.running() && gateway.proc.running());
}

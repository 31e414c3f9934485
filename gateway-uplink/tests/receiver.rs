//! The `POST /v1/records` receiver over real loopback HTTP: encodings, gzip, limits,
//! validation, auth, rate limits, idempotent storage, read-back, and the buffer sink.

mod common;

use std::io::Write as _;
use std::sync::Arc;

use common::*;
use gateway_buffer::{Buffer, BufferConfig};
use gateway_proto::auth::Role;
use gateway_proto::{Batch, BatchAck, Encoding, ErrorBody, ErrorCode, Limits, WireMessage};
use gateway_uplink::server::{
    BucketConfig, BufferSink, BufferSinkConfig, RateLimitConfig, Receiver, ReceiverConfig,
    RecordPage,
};
use reqwest::StatusCode;

trait JsonPage {
    async fn json_page(self) -> RecordPage;
}

impl JsonPage for reqwest::Response {
    async fn json_page(self) -> RecordPage {
        assert_eq!(self.status(), StatusCode::OK);
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

struct Posted {
    status: StatusCode,
    retry_after: Option<String>,
    content_type: String,
    body: Vec<u8>,
}

impl Posted {
    fn ack(&self) -> BatchAck {
        let enc = Encoding::from_content_type(&self.content_type).unwrap();
        BatchAck::decode(&self.body, enc).unwrap()
    }

    fn error(&self) -> ErrorBody {
        assert_eq!(self.content_type, "application/json");
        ErrorBody::from_json(&self.body).unwrap()
    }
}

async fn post_raw(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> Posted {
    let mut request = http_client()
        .post(format!("{url}/v1/records"))
        .header("content-type", content_type);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body).unwrap();
        request = request.header("content-encoding", "gzip");
        e.finish().unwrap()
    } else {
        body
    };
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let response = request.body(body).send().await.unwrap();
    Posted {
        status: response.status(),
        retry_after: response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        content_type: response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn post(url: &str, token: &str, batch: &Batch, encoding: Encoding, gzip: bool) -> Posted {
    let key = batch.batch_id.to_string();
    post_raw(
        url,
        Some(token),
        encoding.content_type(),
        gzip,
        batch.encode(encoding),
        &[("idempotency-key", key.as_str())],
    )
    .await
}

async fn server() -> (
    tempfile::TempDir,
    gateway_uplink::server::SqliteRecordStore,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let url = serve(receiver_router(&store)).await;
    (dir, store, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_encodings_with_and_without_gzip_store_and_dedup() {
    let (_dir, store, url) = server().await;
    let mut expected = 0;
    // 2,000 records gzip to more than 16 KiB: inflated on the blocking pool, not inline.
    for n in [20u32, 2_000] {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            for gzip in [false, true] {
                let batch = Batch::new("gw-1", (0..n as usize).map(record).collect());
                if n == 2_000 && gzip {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    e.write_all(&batch.encode(encoding)).unwrap();
                    assert!(e.finish().unwrap().len() > 16 * 1024);
                }
                let first = post(&url, GATEWAY_TOKEN, &batch, encoding, gzip).await;
                assert_eq!(first.status, StatusCode::OK, "{encoding:?} gzip={gzip}");
                assert_eq!(first.content_type, encoding.content_type());
                assert_eq!(
                    first.ack(),
                    BatchAck {
                        accepted: n,
                        duplicates: 0,
                        rejected: vec![]
                    }
                );
                // The same batch again: every record is a duplicate.
                let again = post(&url, GATEWAY_TOKEN, &batch, encoding, gzip).await;
                assert_eq!(again.ack().duplicates, n);
                assert_eq!(again.ack().accepted, 0);
                expected += n as usize;
            }
        }
    }
    let stored = stored_records(&store, TENANT);
    assert_eq!(stored.len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_header_chooses_the_answer_encoding() {
    let (_dir, _store, url) = server().await;
    let batch = Batch::new("gw-1", vec![record(0)]);
    let key = batch.batch_id.to_string();
    let answer = post_raw(
        &url,
        Some(GATEWAY_TOKEN),
        "application/json",
        false,
        batch.to_json(),
        &[
            ("accept", "application/x-protobuf"),
            ("idempotency-key", &key),
        ],
    )
    .await;
    assert_eq!(answer.content_type, "application/x-protobuf");
    assert_eq!(answer.ack().accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_rejected_one_by_one_and_missing_ids_assigned() {
    let (_dir, store, url) = server().await;
    let mut bad_stream = record(1);
    bad_stream.stream = "Not A Stream".into();
    let mut too_old = record(2);
    too_old.timestamp_ms = 5;
    let mut no_id = record(3);
    no_id.id = None;
    let batch = Batch::new("gw-1", vec![record(0), bad_stream, too_old, no_id]);
    let answer = post(&url, GATEWAY_TOKEN, &batch, Encoding::Json, false).await;
    assert_eq!(answer.status, StatusCode::OK);
    let ack = answer.ack();
    assert_eq!(ack.accepted, 2);
    let rejected: Vec<(u32, ErrorCode)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.code.clone()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, ErrorCode::InvalidStream),
            (2, ErrorCode::InvalidTimestamp)
        ]
    );
    let stored = stored_records(&store, TENANT);
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|r| r.id.is_some()));
    assert_eq!(stored[1].attributes, batch.records[3].attributes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_and_wrong_types_get_error_bodies() {
    let (_dir, _store, url) = server().await;
    let cases: Vec<(&str, Vec<u8>, bool, StatusCode, ErrorCode)> = vec![
        (
            "application/json",
            b"{not json".to_vec(),
            false,
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedBody,
        ),
        (
            "application/x-protobuf",
            vec![0xff, 0xff, 0xff],
            false,
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedBody,
        ),
        (
            "text/plain",
            b"hello".to_vec(),
            false,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
        ),
    ];
    for (content_type, body, gzip, status, code) in cases {
        let answer = post_raw(&url, Some(GATEWAY_TOKEN), content_type, gzip, body, &[]).await;
        assert_eq!(answer.status, status, "{content_type}");
        assert_eq!(answer.error().error.code, code);
    }
    // A gzip header on a body that is not gzip.
    let batch = Batch::new("gw-1", vec![record(0)]);
    let answer = post_raw(
        &url,
        Some(GATEWAY_TOKEN),
        "application/json",
        false,
        batch.to_json(),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().error.code, ErrorCode::MalformedBody);
    // An unknown content encoding.
    let answer = post_raw(
        &url,
        Some(GATEWAY_TOKEN),
        "application/json",
        false,
        batch.to_json(),
        &[("content-encoding", "br")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // An Idempotency-Key that is not the batch id.
    let answer = post_raw(
        &url,
        Some(GATEWAY_TOKEN),
        "application/json",
        false,
        batch.to_json(),
        &[("idempotency-key", "0190f5c2-7b1e-7cc0-8a4f-3f1b2c3d4e5f")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().error.code, ErrorCode::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_and_stop_gzip_bombs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let limits = Limits {
        max_batch_bytes: 64 * 1024,
        max_records_per_batch: 10,
        ..Limits::default()
    };
    let app = Receiver::new(store.clone(), Arc::new(tokens()))
        .config(ReceiverConfig {
            limits,
            rate_limit: RateLimitConfig::unlimited(),
            ..ReceiverConfig::default()
        })
        .into_router()
        .unwrap();
    let url = serve(app).await;

    let too_many = Batch::new("gw-1", (0..11).map(record).collect());
    let answer = post(&url, GATEWAY_TOKEN, &too_many, Encoding::Protobuf, false).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error().error.code, ErrorCode::PayloadTooLarge);

    let big = vec![b' '; 100 * 1024];
    let answer = post_raw(
        &url,
        Some(GATEWAY_TOKEN),
        "application/json",
        false,
        big.clone(),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    // 100 KiB of spaces gzip to a few hundred bytes: the compressed size is fine, the
    // inflated size is not.
    let answer = post_raw(
        &url,
        Some(GATEWAY_TOKEN),
        "application/json",
        true,
        big,
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error().error.code, ErrorCode::PayloadTooLarge);
    assert!(stored_records(&store, TENANT).is_empty());
}

/// POST `body` to `url`/v1/records with chunked transfer encoding over a plain TCP socket,
/// sending all of it before reading the answer; returns the answer's status line.
async fn chunked_post(url: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let addr = url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: Bearer {GATEWAY_TOKEN}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(64 * 1024) {
        socket
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("the receiver reads the body it refuses");
        socket
            .write_all(chunk)
            .await
            .expect("the receiver reads the body it refuses");
        socket.write_all(b"\r\n").await.unwrap();
    }
    socket.write_all(b"0\r\n\r\n").await.unwrap();
    let mut status = String::new();
    tokio::io::BufReader::new(socket)
        .read_line(&mut status)
        .await
        .expect("an answer, not a reset connection");
    status
}

/// A client still sending a body the receiver already refused gets the 413, not a reset
/// connection: bodies up to twice the limit are read to their end and thrown away. The
/// bodies are larger than loopback socket buffers, so an early close would be seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_still_gets_its_413_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let limit = 8 * 1024 * 1024;
    let app = Receiver::new(store.clone(), Arc::new(tokens()))
        .config(ReceiverConfig {
            limits: Limits {
                max_batch_bytes: limit,
                ..Limits::default()
            },
            rate_limit: RateLimitConfig::unlimited(),
            ..ReceiverConfig::default()
        })
        .into_router()
        .unwrap();
    let url = serve(app).await;
    let big = vec![b' '; limit + limit / 2];
    for round in 0..3 {
        // With a Content-Length (refused before reading) and streamed without one (refused
        // when the limit is crossed).
        let answer = post_raw(
            &url,
            Some(GATEWAY_TOKEN),
            "application/json",
            false,
            big.clone(),
            &[],
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "round {round}"
        );
        let streamed = chunked_post(&url, &big).await;
        assert!(
            streamed.starts_with("HTTP/1.1 413"),
            "round {round}: {streamed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_beyond_the_concurrency_limit_get_503_until_one_finishes() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let app = Receiver::new(store.clone(), Arc::new(tokens()))
        .config(ReceiverConfig {
            max_concurrent_batches: 1,
            rate_limit: RateLimitConfig::unlimited(),
            ..ReceiverConfig::default()
        })
        .into_router()
        .unwrap();
    let url = serve(app).await;
    let body = Batch::new("gw-1", vec![record(0)]).to_json();

    // A slow sender holds the only slot: headers and half of its body sent.
    let addr = url.trim_start_matches("http://");
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: Bearer {GATEWAY_TOKEN}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    slow.write_all(first).await.unwrap();

    let other = Batch::new("gw-1", vec![record(1)]);
    let mut busy = None;
    for _ in 0..100 {
        let answer = post(&url, GATEWAY_TOKEN, &other, Encoding::Json, false).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            busy = Some(answer);
            break;
        }
        // The slow request may not have reached the handler yet.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let busy = busy.expect("a second batch is refused while the slot is held");
    assert_eq!(busy.error().error.code, ErrorCode::Unavailable);
    assert_eq!(busy.retry_after.as_deref(), Some("1"));

    // The slow batch completes, and the slot is free again.
    slow.write_all(rest).await.unwrap();
    let mut status = String::new();
    tokio::io::BufReader::new(slow)
        .read_line(&mut status)
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let answer = post(&url, GATEWAY_TOKEN, &other, Encoding::Json, false).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(stored_records(&store, TENANT).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_roles() {
    let (_dir, store, url) = server().await;
    let batch = Batch::new("gw-1", vec![record(0)]);
    let body = batch.to_json();
    let none = post_raw(&url, None, "application/json", false, body.clone(), &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.error().error.code, ErrorCode::Unauthorized);

    let wrong = post_raw(
        &url,
        Some("guess"),
        "application/json",
        false,
        body.clone(),
        &[],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.error().error.code, ErrorCode::Forbidden);

    // Admins read, they do not upload (by default).
    let admin = post_raw(
        &url,
        Some(ADMIN_TOKEN),
        "application/json",
        false,
        body.clone(),
        &[],
    )
    .await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);

    // A gateway may only upload as itself.
    let other = post_raw(
        &url,
        Some("gw-2-token"),
        "application/json",
        false,
        body.clone(),
        &[],
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.error().error.code, ErrorCode::IdentityMismatch);

    // Agents send batches without a gateway id.
    let agent_batch = Batch::new("", vec![record(1)]);
    let agent = post(&url, "agent-token", &agent_batch, Encoding::Json, false).await;
    assert_eq!(agent.status, StatusCode::OK);
    assert_eq!(stored_records(&store, TENANT).len(), 1);
}

/// Every stored row of `tenant` as (record source, stored gateway id).
fn stored_sources(store: &gateway_uplink::server::SqliteRecordStore) -> Vec<(String, String)> {
    let query = gateway_uplink::server::ReadQuery {
        stream: None,
        after: 0,
        limit: 1_000,
    };
    let page = store.read_blocking(TENANT, &query).unwrap();
    page.records
        .into_iter()
        .map(|r| (r.record.source, r.gateway_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_not_the_body_say_who_sent_records() {
    let (_dir, store, url) = server().await;
    let mut other_agent = record(1);
    other_agent.source = "agent-8".into();

    // An agent token speaks for its own agent only: a record naming another agent is
    // rejected by itself, the rest of the batch is stored, and the gateway id the body
    // claims is not believed.
    let batch = Batch::new("gw-2", vec![record(0), other_agent.clone()]);
    let answer = post(&url, "agent-token", &batch, Encoding::Json, false).await;
    assert_eq!(answer.status, StatusCode::OK);
    let ack = answer.ack();
    assert_eq!(ack.accepted, 1);
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(ack.rejected[0].index, 1);
    assert_eq!(ack.rejected[0].code, ErrorCode::IdentityMismatch);
    assert!(
        ack.rejected[0].message.contains("agent-8"),
        "{:?}",
        ack.rejected
    );

    // A rejection for a bad record and for a foreign source come out once each, in order.
    let mut bad = record(2);
    bad.stream = String::new();
    let batch = Batch::new("", vec![bad, other_agent.clone(), record(3)]);
    let ack = post(&url, "agent-token", &batch, Encoding::Protobuf, false)
        .await
        .ack();
    assert_eq!(ack.accepted, 1);
    assert_eq!(
        ack.rejected
            .iter()
            .map(|r| (r.index, r.code.clone()))
            .collect::<Vec<_>>(),
        vec![
            (0, ErrorCode::InvalidStream),
            (1, ErrorCode::IdentityMismatch)
        ]
    );

    // A site-wide agent token may send any agent's records.
    let batch = Batch::new("", vec![other_agent]);
    let ack = post(&url, "site-agent-token", &batch, Encoding::Json, false)
        .await
        .ack();
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 0));

    // A gateway's records are stored under its own id, even when the body names none.
    let batch = Batch::new("", vec![record(4)]);
    let ack = post(&url, GATEWAY_TOKEN, &batch, Encoding::Json, false)
        .await
        .ack();
    assert_eq!(ack.accepted, 1);

    assert_eq!(
        stored_sources(&store),
        vec![
            ("agent-7".to_string(), String::new()),
            ("agent-7".to_string(), String::new()),
            ("agent-8".to_string(), String::new()),
            ("agent-7".to_string(), "gw-1".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_suppress_each_others_records() {
    let (_dir, store, url) = server().await;
    let batch = Batch::new("", vec![record(0), record(1)]);
    let a = post(&url, GATEWAY_TOKEN, &batch, Encoding::Protobuf, false).await;
    let b = post(
        &url,
        "other-tenant-token",
        &batch,
        Encoding::Protobuf,
        false,
    )
    .await;
    assert_eq!(a.ack().accepted, 2);
    assert_eq!(
        b.ack().accepted,
        2,
        "same ids, other tenant: stored, not duplicates"
    );
    assert_eq!(stored_records(&store, TENANT).len(), 2);
    assert_eq!(stored_records(&store, "globex").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let app = Receiver::new(store.clone(), Arc::new(tokens()))
        .config(ReceiverConfig {
            rate_limit: RateLimitConfig {
                requests: Some(BucketConfig {
                    per_second: 0.5,
                    burst: 2.0,
                }),
                records: None,
            },
            ..ReceiverConfig::default()
        })
        .into_router()
        .unwrap();
    let url = serve(app).await;
    for _ in 0..2 {
        let batch = Batch::new("gw-1", vec![record(0)]);
        assert_eq!(
            post(&url, GATEWAY_TOKEN, &batch, Encoding::Json, false)
                .await
                .status,
            StatusCode::OK
        );
    }
    let batch = Batch::new("gw-1", vec![record(0)]);
    let limited = post(&url, GATEWAY_TOKEN, &batch, Encoding::Json, false).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error().error.code, ErrorCode::RateLimited);
    let secs: u64 = limited.retry_after.unwrap().parse().unwrap();
    assert!((2..=3).contains(&secs), "{secs}");
    // Another principal has its own bucket.
    let batch = Batch::new("", vec![record(0)]);
    assert_eq!(
        post(&url, "agent-token", &batch, Encoding::Json, false)
            .await
            .status,
        StatusCode::OK
    );

    // A records bucket charges per record.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = open_store(dir2.path());
    let app = Receiver::new(store2, Arc::new(tokens()))
        .config(ReceiverConfig {
            rate_limit: RateLimitConfig {
                requests: None,
                records: Some(BucketConfig {
                    per_second: 10.0,
                    burst: 10.0,
                }),
            },
            ..ReceiverConfig::default()
        })
        .into_router()
        .unwrap();
    let url = serve(app).await;
    let batch = Batch::new("gw-1", (0..30).map(record).collect());
    assert_eq!(
        post(&url, GATEWAY_TOKEN, &batch, Encoding::Json, false)
            .await
            .status,
        StatusCode::OK
    );
    let batch = Batch::new("gw-1", vec![record(0)]);
    let limited = post(&url, GATEWAY_TOKEN, &batch, Encoding::Json, false).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // 20 records of debt at 10/s.
    let secs: u64 = limited.retry_after.unwrap().parse().unwrap();
    assert!((2..=3).contains(&secs), "{secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_back_by_stream_and_position_scoped_by_tenant() {
    let (_dir, _store, url) = server().await;
    let mut records: Vec<_> = (0..10).map(record).collect();
    for r in records.iter_mut().skip(5) {
        r.stream = "metrics".into();
    }
    let batch = Batch::new("gw-1", records.clone());
    assert_eq!(
        post(&url, GATEWAY_TOKEN, &batch, Encoding::Protobuf, true)
            .await
            .status,
        StatusCode::OK
    );

    let client = http_client();
    let get = |query: &'static str, token: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(format!("{url}/v1/records{query}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let page: RecordPage = get("?stream=metrics&after=0&limit=3", ADMIN_TOKEN)
        .await
        .json_page()
        .await;
    assert_eq!(
        page.records.iter().map(|r| r.position).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
    assert_eq!(page.records[0].record, records[5]);
    assert_eq!(page.records[0].gateway_id, "gw-1");
    assert_eq!(page.next_after, 8);
    let page: RecordPage = get("?stream=metrics&after=8&limit=3", ADMIN_TOKEN)
        .await
        .json_page()
        .await;
    assert_eq!(page.records.len(), 2);
    let page: RecordPage = get("?after=3", ADMIN_TOKEN).await.json_page().await;
    assert_eq!(page.records.len(), 7);
    // Another tenant's admin sees nothing of acme's.
    let page: RecordPage = get("", "other-admin-token").await.json_page().await;
    assert!(page.records.is_empty());
    // Gateways may not read; a bad query is a 400 with an error body.
    assert_eq!(get("", GATEWAY_TOKEN).await.status(), StatusCode::FORBIDDEN);
    let bad = get("?after=minus-one", ADMIN_TOKEN).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: ErrorBody = serde_json::from_slice(&bad.bytes().await.unwrap()).unwrap();
    assert_eq!(body.error.code, ErrorCode::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_sink_appends_and_pushes_back_when_critical() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(
        dir.path().join("buffer.db"),
        BufferConfig {
            quota_bytes: 40_000,
            ..BufferConfig::default()
        },
    )
    .await
    .unwrap();
    let app = Receiver::new(
        BufferSink::new(
            buffer.clone(),
            BufferSinkConfig {
                retry_after_ms: 7_000,
            },
        ),
        Arc::new(tokens()),
    )
    .config(ReceiverConfig {
        ingest_roles: vec![Role::Agent],
        rate_limit: RateLimitConfig::unlimited(),
        ..ReceiverConfig::default()
    })
    .into_router()
    .unwrap();
    let url = serve(app).await;

    // A batch larger than the whole quota can never fit: 413.
    let huge = Batch::new("", (0..200).map(record).collect());
    let answer = post(&url, "agent-token", &huge, Encoding::Protobuf, false).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );

    // Fill the buffer batch by batch until the receiver pushes back.
    let mut accepted = 0;
    let mut pushed_back = None;
    for _ in 0..100 {
        let batch = Batch::new("", (0..20).map(record).collect());
        let answer = post(&url, "agent-token", &batch, Encoding::Protobuf, false).await;
        if answer.status == StatusCode::OK {
            accepted += answer.ack().accepted as u64;
        } else {
            pushed_back = Some(answer);
            break;
        }
    }
    let answer = pushed_back.expect("the buffer never pushed back");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error().error.code, ErrorCode::BufferCritical);
    assert_eq!(answer.retry_after.as_deref(), Some("7"));
    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.records, accepted);
}

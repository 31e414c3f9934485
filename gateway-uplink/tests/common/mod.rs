//! Helpers shared by the integration tests: records, a loopback server, a fault-injecting
//! layer driven by a schedule, and a plain HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gateway_proto::auth::{Principal, Role, StaticTokens};
use gateway_proto::{Body as RecordBody, ErrorBody, ErrorCode, Record, RecordId, WireMessage};
use gateway_uplink::server::{
    RateLimitConfig, Receiver, ReceiverConfig, SqliteRecordStore, SqliteStoreConfig,
};

pub const GATEWAY_TOKEN: &str = "gw-1-token";
pub const ADMIN_TOKEN: &str = "admin-token";
pub const TENANT: &str = "acme";

pub fn now_ms() -> i64 {
    gateway_proto::clock::unix_ms(std::time::SystemTime::now())
}

/// A valid record with a v7 id and a ~200-byte body.
pub fn record(i: usize) -> Record {
    Record::new(
        "logs",
        "agent-7",
        now_ms(),
        RecordBody::from(serde_json::json!({"seq": i, "msg": "x".repeat(180)})),
    )
    .with_id(RecordId::new_v7())
    .with_attribute("host", "pc-12")
}

/// A valid record with a random (v4) id.
pub fn record_v4(i: usize) -> Record {
    let mut r = record(i);
    r.id = RecordId::from_uuid(uuid::Uuid::new_v4());
    r
}

pub fn tokens() -> StaticTokens {
    StaticTokens::new()
        .with(GATEWAY_TOKEN, Principal::new(TENANT, "gw-1", Role::Gateway))
        .with("gw-2-token", Principal::new(TENANT, "gw-2", Role::Gateway))
        .with(
            "other-tenant-token",
            Principal::new("globex", "gw-9", Role::Gateway),
        )
        .with(
            "agent-token",
            Principal::new(TENANT, "agent-7", Role::Agent),
        )
        .with(
            "site-agent-token",
            Principal::new(TENANT, gateway_proto::auth::ANY_AGENT, Role::Agent),
        )
        .with(ADMIN_TOKEN, Principal::new(TENANT, "ops", Role::Admin))
        .with(
            "other-admin-token",
            Principal::new("globex", "ops", Role::Admin),
        )
}

/// An HTTP client for tests: ring-only rustls, no roots (the tests talk plain HTTP).
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap()
}

/// Serve `app` on 127.0.0.1:0; returns the base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

pub fn open_store(dir: &std::path::Path) -> SqliteRecordStore {
    SqliteRecordStore::open(dir.join("server.db"), SqliteStoreConfig::default()).unwrap()
}

/// The server's receiver over `store`, no rate limits.
pub fn receiver_router(store: &SqliteRecordStore) -> Router {
    Receiver::new(store.clone(), Arc::new(tokens()))
        .config(ReceiverConfig {
            rate_limit: RateLimitConfig::unlimited(),
            ..ReceiverConfig::default()
        })
        .reader(store.clone())
        .into_router()
        .unwrap()
}

/// What the fault layer does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 without storing.
    ServerError,
    /// 503 + Retry-After (seconds) without storing.
    Unavailable(u64),
    /// 429 + Retry-After (seconds) without storing.
    RateLimited(u64),
    /// Never answer (longer than any client timeout), without storing.
    Hang,
    /// Break the connection without reading the request, without storing.
    DropConnection,
    /// Store the batch, then break the connection instead of answering.
    StoreThenDrop,
    /// Store the batch, then never answer.
    StoreThenHang,
    /// 413 without storing.
    TooLarge,
    /// 400 `invalid_request` without storing.
    BadRequest,
    /// 403 without storing.
    Forbidden,
}

impl Fault {
    pub const TRANSIENT: [Fault; 7] = [
        Fault::ServerError,
        Fault::Unavailable(0),
        Fault::RateLimited(0),
        Fault::Hang,
        Fault::DropConnection,
        Fault::StoreThenDrop,
        Fault::StoreThenHang,
    ];
}

/// The schedule of faults: one popped per `POST /v1/records`; empty means pass through.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    faults: Arc<Mutex<VecDeque<Fault>>>,
    pub posts: Arc<AtomicUsize>,
    pub faults_served: Arc<AtomicUsize>,
}

impl Schedule {
    pub fn new(faults: impl IntoIterator<Item = Fault>) -> Self {
        Schedule {
            faults: Arc::new(Mutex::new(faults.into_iter().collect())),
            ..Schedule::default()
        }
    }

    pub fn push(&self, fault: Fault) {
        self.faults.lock().unwrap().push_back(fault);
    }

    pub fn remaining(&self) -> usize {
        self.faults.lock().unwrap().len()
    }

    fn next(&self) -> Option<Fault> {
        self.faults.lock().unwrap().pop_front()
    }
}

/// A response body that fails at once: hyper aborts the connection instead of answering.
struct BrokenBody;

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other(
            "injected fault: connection dropped",
        ))))
    }
}

fn broken_connection() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Body::new(BrokenBody))
        .unwrap()
}

fn error(code: ErrorCode, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap();
    let body = ErrorBody::new(code, "injected fault");
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_json(),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

async fn hang() -> Response {
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    StatusCode::GATEWAY_TIMEOUT.into_response()
}

async fn inject(State(schedule): State<Schedule>, request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    schedule.posts.fetch_add(1, Ordering::SeqCst);
    let Some(fault) = schedule.next() else {
        return next.run(request).await;
    };
    schedule.faults_served.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::ServerError => error(ErrorCode::Internal, None),
        Fault::Unavailable(s) => error(ErrorCode::Unavailable, Some(s)),
        Fault::RateLimited(s) => error(ErrorCode::RateLimited, Some(s)),
        Fault::TooLarge => error(ErrorCode::PayloadTooLarge, None),
        Fault::BadRequest => error(ErrorCode::InvalidRequest, None),
        Fault::Forbidden => error(ErrorCode::Forbidden, None),
        Fault::Hang => hang().await,
        Fault::DropConnection => broken_connection(),
        Fault::StoreThenDrop => {
            let stored = next.run(request).await;
            assert_eq!(
                stored.status(),
                StatusCode::OK,
                "the real receiver refused the batch"
            );
            broken_connection()
        }
        Fault::StoreThenHang => {
            let stored = next.run(request).await;
            assert_eq!(
                stored.status(),
                StatusCode::OK,
                "the real receiver refused the batch"
            );
            hang().await
        }
    }
}

/// The real receiver over `store`, behind the fault layer.
pub async fn fault_server(store: &SqliteRecordStore, schedule: Schedule) -> String {
    let app = receiver_router(store).layer(middleware::from_fn_with_state(schedule, inject));
    serve(app).await
}

/// Every record a tenant has in the store, in position order.
pub fn stored_records(store: &SqliteRecordStore, tenant: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_blocking(
                tenant,
                &gateway_uplink::server::ReadQuery {
                    stream: None,
                    after,
                    limit: 1_000,
                },
            )
            .unwrap();
        if page.records.is_empty() {
            return out;
        }
        after = page.next_after;
        out.extend(page.records.into_iter().map(|r| r.record));
    }
}

//! The `POST /v1/records` receiver (and `GET /v1/records` when a reader is attached).
//!
//! # What a request goes through, in order
//!
//! 1. **Authentication**: `Authorization: Bearer <token>` through the [`Authenticator`]:
//!    none → 401 `unauthorized`; refused, or a role not in
//!    [`ReceiverConfig::ingest_roles`] → 403 `forbidden`.
//! 2. **Request rate** per principal (token bucket) → 429 `rate_limited` + `Retry-After`.
//! 3. **Sink admission** ([`RecordSink::admit`]): a critical buffer → 503 + `Retry-After`
//!    before the body is read; so is a request beyond
//!    [`ReceiverConfig::max_concurrent_batches`] (503 `unavailable`, `Retry-After: 1`).
//! 4. **Content negotiation**: `Content-Type` JSON or protobuf, `Content-Encoding` gzip or
//!    identity, else 415 `unsupported_media_type`.
//! 5. **Size**: the body, and the body after gunzip, at most `limits.max_batch_bytes`, else
//!    413 `payload_too_large` (a gzip bomb stops at the limit). Up to another
//!    `max_batch_bytes` of a refused body are read and thrown away first, so a client still
//!    sending hears the 413 rather than a reset connection.
//! 6. **Decoding and batch rules** ([`decode_batch`]): 400 `malformed_body` or
//!    `invalid_request`, 413 for too many records; a gateway may only send its own
//!    `gateway_id` (403 `identity_mismatch`); an `Idempotency-Key` must equal the batch id.
//! 7. **Record rules** ([`Limits::reject_invalid_records`]): bad records are listed in the
//!    `BatchAck` as rejections, the others go on. Records without an id get a UUIDv7. An
//!    agent token may only send records whose `source` is its own agent id (any id for a
//!    site-wide [`ANY_AGENT`](gateway_proto::auth::ANY_AGENT) token); others are rejected
//!    with `identity_mismatch`. The sink is told the gateway id of the credentials (a
//!    gateway's own id; empty for other roles), never the one the body names.
//! 8. **Record rate** per principal → 429 + `Retry-After`.
//! 9. **Sink**: 200 with the [`BatchAck`] (encoded as `Accept` asks, else like the request),
//!    or the sink's error (503 + `Retry-After`, 413, 500).
//!
//! Every error answer is a JSON [`ErrorBody`] with a stable code.

use std::io::Read as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use gateway_proto::auth::{Authenticator, Principal, Role, bearer_token};
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{
    BatchAck, BatchId, Encoding, ErrorBody, ErrorCode, HEADER_IDEMPOTENCY_KEY, Limits, Rejection,
    WireMessage, decode_batch,
};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};

use super::rate_limit::{KeyedBuckets, RateLimitConfig};
use super::sink::{IngestContext, RecordSink, SinkError};
use super::sqlite_store::{ReadQuery, RecordPage, SqliteRecordStore};
use crate::Error;

/// Settings of the receiver. `ReceiverConfig::default()` suits a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReceiverConfig {
    /// Size and validation limits (`gateway_proto::Limits::default()`).
    pub limits: Limits,
    /// Per-principal rate limits.
    pub rate_limit: RateLimitConfig,
    /// Roles allowed to post records. Default gateway and agent.
    pub ingest_roles: Vec<Role>,
    /// Roles allowed to read records back (`GET /v1/records`). Default admin.
    pub read_roles: Vec<Role>,
    /// Batches read, decoded and stored at once, across all callers. A request beyond it is
    /// answered 503 `unavailable` with `Retry-After: 1` before its body is read, which bounds
    /// the receiver's memory to about this many times `limits.max_batch_bytes`. Default 32.
    pub max_concurrent_batches: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            limits: Limits::default(),
            rate_limit: RateLimitConfig::default(),
            ingest_roles: vec![Role::Gateway, Role::Agent],
            read_roles: vec![Role::Admin],
            max_concurrent_batches: 32,
        }
    }
}

impl ReceiverConfig {
    /// Check the values, naming the parameter on error.
    pub fn validate(&self) -> Result<(), Error> {
        self.rate_limit.validate()?;
        if self.ingest_roles.is_empty() {
            return Err(Error::invalid(
                "ingest_roles",
                "no role could post records; list at least one",
            ));
        }
        if self.max_concurrent_batches == 0 {
            return Err(Error::invalid(
                "max_concurrent_batches",
                "must be at least 1",
            ));
        }
        if self.limits.max_batch_bytes == 0 || self.limits.max_records_per_batch == 0 {
            return Err(Error::invalid(
                "limits",
                "max_batch_bytes and max_records_per_batch must be at least 1",
            ));
        }
        Ok(())
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Reads stored records back for `GET /v1/records`, scoped by tenant.
pub trait RecordReader: Send + Sync + 'static {
    /// Records of `tenant` after `query.after`, by position.
    fn read<'a>(
        &'a self,
        tenant: &'a str,
        query: ReadQuery,
    ) -> BoxFuture<'a, Result<RecordPage, Error>>;
}

impl RecordReader for SqliteRecordStore {
    fn read<'a>(
        &'a self,
        tenant: &'a str,
        query: ReadQuery,
    ) -> BoxFuture<'a, Result<RecordPage, Error>> {
        Box::pin(SqliteRecordStore::read(self, tenant, query))
    }
}

/// Builds the axum [`Router`] for `/v1/records`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use gateway_proto::auth::{Principal, Role, StaticTokens};
/// use gateway_uplink::server::{Receiver, ReceiverConfig, SqliteRecordStore, SqliteStoreConfig};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteRecordStore::open(dir.path().join("records.db"), SqliteStoreConfig::default())?;
/// let tokens = StaticTokens::new()
///     .with("gw-token", Principal::new("acme", "gw-1", Role::Gateway))
///     .with("admin-token", Principal::new("acme", "ops", Role::Admin));
/// let app: axum::Router = Receiver::new(store.clone(), Arc::new(tokens))
///     .config(ReceiverConfig::default())
///     .reader(store)
///     .into_router()?;
/// // axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
pub struct Receiver<S> {
    sink: Arc<S>,
    authenticator: Arc<dyn Authenticator>,
    config: ReceiverConfig,
    clock: Arc<dyn Clock>,
    reader: Option<Arc<dyn RecordReader>>,
}

impl<S: RecordSink> Receiver<S> {
    /// A receiver storing into `sink`, authenticating with `authenticator`, with the
    /// default config and the system clock.
    pub fn new(sink: S, authenticator: Arc<dyn Authenticator>) -> Self {
        Receiver {
            sink: Arc::new(sink),
            authenticator,
            config: ReceiverConfig::default(),
            clock: Arc::new(SystemClock),
            reader: None,
        }
    }

    /// Use this config.
    pub fn config(mut self, config: ReceiverConfig) -> Self {
        self.config = config;
        self
    }

    /// Use this wall clock (record timestamp checks, `received_at_ms`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Serve `GET /v1/records?stream=&after=&limit=` from `reader`.
    pub fn reader(mut self, reader: impl RecordReader) -> Self {
        self.reader = Some(Arc::new(reader));
        self
    }

    /// The router: `POST /v1/records`, plus `GET /v1/records` with a reader. Fails when the
    /// config does not validate.
    pub fn into_router(self) -> Result<Router, Error> {
        self.config.validate()?;
        let rate = &self.config.rate_limit;
        let shared = Arc::new(Shared {
            batch_slots: tokio::sync::Semaphore::new(self.config.max_concurrent_batches),
            request_buckets: rate
                .requests
                .clone()
                .map(|c| Mutex::new(KeyedBuckets::new(c))),
            record_buckets: rate
                .records
                .clone()
                .map(|c| Mutex::new(KeyedBuckets::new(c))),
            sink: self.sink,
            authenticator: self.authenticator,
            config: self.config,
            clock: self.clock,
            reader: self.reader,
        });
        let route = post(post_records::<S>).get(get_records::<S>);
        Ok(Router::new().route("/v1/records", route).with_state(shared))
    }
}

type PrincipalKey = (String, String);

struct Shared<S> {
    sink: Arc<S>,
    authenticator: Arc<dyn Authenticator>,
    config: ReceiverConfig,
    clock: Arc<dyn Clock>,
    reader: Option<Arc<dyn RecordReader>>,
    request_buckets: Option<Mutex<KeyedBuckets<PrincipalKey>>>,
    record_buckets: Option<Mutex<KeyedBuckets<PrincipalKey>>>,
    /// One permit per batch being read, decoded or stored.
    batch_slots: tokio::sync::Semaphore,
}

/// An error answer: status from the code, JSON [`ErrorBody`], optional `Retry-After`.
#[derive(Debug)]
struct Refusal {
    body: ErrorBody,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl From<&gateway_proto::Error> for Refusal {
    fn from(e: &gateway_proto::Error) -> Self {
        Refusal {
            body: ErrorBody::from(e),
            retry_after: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.body.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        metrics::counter!("gateway_ingest_requests_total", "code" => self.body.error.code.as_str().to_owned())
            .increment(1);
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body.to_json(),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(after));
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_value(after: Duration) -> HeaderValue {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

fn authenticate(
    authenticator: &dyn Authenticator,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<Principal, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "send `Authorization: Bearer <token>`",
        ));
    };
    let token = value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
        Refusal::new(
            ErrorCode::Unauthorized,
            "the Authorization header must be `Bearer <token>`",
        )
    })?;
    let principal = authenticator
        .authenticate(token)
        .ok_or_else(|| Refusal::new(ErrorCode::Forbidden, "the token is not valid"))?;
    if !roles.contains(&principal.role) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            format!("the role `{}` may not do this", principal.role),
        ));
    }
    Ok(principal)
}

fn take_tokens(
    buckets: Option<&Mutex<KeyedBuckets<PrincipalKey>>>,
    principal: &Principal,
    cost: f64,
    what: &str,
) -> Result<(), Refusal> {
    let Some(buckets) = buckets else {
        return Ok(());
    };
    let key = (principal.tenant.clone(), principal.subject.clone());
    let now = tokio::time::Instant::now();
    let result = buckets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .try_take(&key, now, cost);
    result.map_err(|wait| {
        Refusal::new(
            ErrorCode::RateLimited,
            format!("too many {what} for `{}`; retry later", principal.subject),
        )
        .retry_after(wait)
    })
}

fn sink_refusal(e: SinkError) -> Refusal {
    match e {
        SinkError::Backpressure {
            code,
            message,
            retry_after,
        } => Refusal::new(code, message).retry_after(retry_after),
        SinkError::TooLarge { message } => Refusal::new(ErrorCode::PayloadTooLarge, message),
        SinkError::Unavailable {
            message,
            retry_after,
        } => {
            let r = Refusal::new(ErrorCode::Unavailable, message);
            match retry_after {
                Some(after) => r.retry_after(after),
                None => r,
            }
        }
        SinkError::Internal { message } => Refusal::new(ErrorCode::Internal, message),
    }
}

fn request_encoding(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnsupportedMediaType,
                "send a Content-Type: application/json or application/x-protobuf",
            )
        })?;
    Encoding::from_content_type(value).map_err(|e| Refusal::from(&e))
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, Refusal> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let value = value.to_str().unwrap_or("").trim();
    if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
        Ok(true)
    } else if value.is_empty() || value.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else {
        Err(Refusal::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Encoding `{value}` is not supported; use gzip or none"),
        ))
    }
}

/// The encoding of the answer: what `Accept` names first, else the request's.
fn response_encoding(headers: &HeaderMap, request: Encoding) -> Encoding {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return request;
    };
    accept
        .split(',')
        .find_map(|part| Encoding::from_content_type(part).ok())
        .unwrap_or(request)
}

fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        ErrorCode::PayloadTooLarge,
        format!("the batch is larger than the limit of {limit} bytes"),
    )
}

/// How long the receiver goes on reading a body it has refused as too large (see
/// [`discard_body`]).
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Read and throw away up to `budget` more bytes of a refused body, for at most
/// [`DISCARD_TIME`], before the 413 is answered. A client still sending its body when the
/// server answers and closes sees a reset connection instead of the answer — an uplink would
/// retry the same batch for ever instead of splitting it. Bodies beyond the budget are cut off.
async fn discard_body(mut body: Body, budget: usize) {
    let drain = async {
        let mut left = budget;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let Some(rest) = left.checked_sub(data.len()) else {
                    return;
                };
                left = rest;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

/// The body, at most `limit` bytes (after gunzip too). A body over the limit is discarded up
/// to another `limit` bytes so the client hears the 413.
async fn read_body(
    mut body: Body,
    gzip: bool,
    limit: usize,
    declared_len: Option<u64>,
) -> Result<Bytes, Refusal> {
    let mut raw =
        bytes::BytesMut::with_capacity(declared_len.unwrap_or(0).min(limit as u64) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Refusal::new(
                ErrorCode::MalformedBody,
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if raw.len() + data.len() > limit {
            discard_body(body, limit).await;
            return Err(too_large(limit));
        }
        raw.extend_from_slice(&data);
    }
    let raw = raw.freeze();
    if !gzip {
        return Ok(raw);
    }
    // Inflating up to `limit` bytes takes tens of milliseconds: on the blocking pool, not on
    // an async worker, above a small size.
    if raw.len() < INFLATE_INLINE_BYTES {
        return gunzip(&raw, limit);
    }
    tokio::task::spawn_blocking(move || gunzip(&raw, limit))
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Internal,
                format!("inflating the body failed: {e}"),
            )
        })?
}

/// Compressed bodies smaller than this are inflated on the async worker itself.
const INFLATE_INLINE_BYTES: usize = 16 * 1024;

fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, Refusal> {
    // Decompress at most limit + 1 bytes: one byte more than allowed proves it too large
    // without inflating a gzip bomb.
    let mut decoder = flate2::read::GzDecoder::new(raw).take(limit as u64 + 1);
    let mut plain = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    decoder.read_to_end(&mut plain).map_err(|e| {
        Refusal::new(
            ErrorCode::MalformedBody,
            format!("the body is not valid gzip: {e}"),
        )
    })?;
    if plain.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(plain))
}

async fn post_records<S: RecordSink>(
    State(shared): State<Arc<Shared<S>>>,
    request: Request,
) -> Response {
    match ingest(&shared, request).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn ingest<S: RecordSink>(shared: &Shared<S>, request: Request) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let limits = &shared.config.limits;
    let principal = authenticate(
        shared.authenticator.as_ref(),
        headers,
        &shared.config.ingest_roles,
    )?;
    take_tokens(shared.request_buckets.as_ref(), &principal, 1.0, "requests")?;
    shared.sink.admit().map_err(sink_refusal)?;
    let _slot = shared.batch_slots.try_acquire().map_err(|_| {
        metrics::counter!("gateway_ingest_requests_total", "code" => "busy").increment(1);
        Refusal::new(
            ErrorCode::Unavailable,
            format!(
                "the receiver is already handling {} batches; retry shortly",
                shared.config.max_concurrent_batches
            ),
        )
        .retry_after(Duration::from_secs(1))
    })?;
    let encoding = request_encoding(headers)?;
    let gzip = is_gzip(headers)?;
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = content_length
        && len > limits.max_batch_bytes as u64
    {
        // Read a body of up to twice the limit (as a streamed one would be) to its end.
        if len <= 2 * limits.max_batch_bytes as u64 {
            discard_body(body, len as usize).await;
        }
        return Err(too_large(limits.max_batch_bytes));
    }
    let bytes = read_body(body, gzip, limits.max_batch_bytes, content_length).await?;
    let mut batch = decode_batch(&bytes, encoding, limits).map_err(|e| Refusal::from(&e))?;
    if let Some(key) = headers.get(HEADER_IDEMPOTENCY_KEY) {
        let matches = key
            .to_str()
            .ok()
            .and_then(|k| k.trim().parse::<BatchId>().ok())
            .is_some_and(|k| k == batch.batch_id);
        if !matches {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "the Idempotency-Key header must equal the batch_id of the body",
            ));
        }
    }
    if principal.role == Role::Gateway
        && !batch.gateway_id.is_empty()
        && batch.gateway_id != principal.subject
    {
        return Err(Refusal::new(
            ErrorCode::IdentityMismatch,
            format!(
                "the batch names gateway `{}` but the credentials are those of `{}`",
                batch.gateway_id, principal.subject
            ),
        ));
    }
    let now_ms = shared.clock.now_ms();
    let rejected = merge_rejections(
        limits.reject_invalid_records(&batch, now_ms),
        foreign_sources(&principal, &batch),
    );
    let total = batch.records.len();
    let mut valid = Vec::with_capacity(total - rejected.len());
    // `rejected` is in index order: walk it alongside the records.
    let mut skip = 0;
    for (index, mut record) in std::mem::take(&mut batch.records).into_iter().enumerate() {
        if rejected
            .get(skip)
            .is_some_and(|r| r.index as usize == index)
        {
            skip += 1;
            continue;
        }
        record.ensure_id();
        valid.push(record);
    }
    take_tokens(
        shared.record_buckets.as_ref(),
        &principal,
        valid.len() as f64,
        "records",
    )?;
    let context = IngestContext {
        // Only what the credentials vouch for: a gateway's own id, never a name from the body.
        gateway_id: match principal.role {
            Role::Gateway => principal.subject.clone(),
            _ => String::new(),
        },
        principal,
        batch_id: batch.batch_id,
        received_at_ms: now_ms,
    };
    let valid_count = valid.len();
    let outcome = if valid.is_empty() {
        Default::default()
    } else {
        shared
            .sink
            .store(&context, valid)
            .await
            .map_err(sink_refusal)?
    };
    if (outcome.accepted + outcome.duplicates) as usize != valid_count {
        tracing::error!(
            accepted = outcome.accepted,
            duplicates = outcome.duplicates,
            handed = valid_count,
            "record sink miscounted a batch"
        );
        return Err(Refusal::new(
            ErrorCode::Internal,
            "the record sink reported a different number of records than it was given",
        ));
    }
    metrics::counter!("gateway_ingest_requests_total", "code" => "ok").increment(1);
    metrics::counter!("gateway_ingest_records_total", "outcome" => "accepted")
        .increment(u64::from(outcome.accepted));
    metrics::counter!("gateway_ingest_records_total", "outcome" => "duplicate")
        .increment(u64::from(outcome.duplicates));
    metrics::counter!("gateway_ingest_records_total", "outcome" => "rejected")
        .increment(rejected.len() as u64);
    let ack = BatchAck {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        rejected,
    };
    let answer = response_encoding(headers, encoding);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(answer.content_type()),
        )],
        ack.encode(answer),
    )
        .into_response())
}

/// Records an agent token may not send: those whose `source` names another agent (see
/// [`Principal::may_act_as_agent`]). A gateway forwards many agents' records, so its batches
/// are not checked here; other roles have no agent identity to check against.
fn foreign_sources(principal: &Principal, batch: &gateway_proto::Batch) -> Vec<Rejection> {
    if principal.role != Role::Agent {
        return Vec::new();
    }
    batch
        .records
        .iter()
        .enumerate()
        .filter(|(_, record)| !principal.may_act_as_agent(&record.source))
        .map(|(index, record)| Rejection {
            index: index as u32,
            code: ErrorCode::IdentityMismatch,
            message: format!(
                "source: the record names agent `{}` but the credentials are those of agent `{}`",
                record.source, principal.subject
            ),
        })
        .collect()
}

/// Both lists in index order, one rejection per record (the first list's when both name it).
fn merge_rejections(first: Vec<Rejection>, second: Vec<Rejection>) -> Vec<Rejection> {
    if second.is_empty() {
        return first;
    }
    let mut all: std::collections::BTreeMap<u32, Rejection> =
        second.into_iter().map(|r| (r.index, r)).collect();
    all.extend(first.into_iter().map(|r| (r.index, r)));
    all.into_values().collect()
}

/// Query of `GET /v1/records`.
#[derive(Debug, Deserialize)]
struct ReadParams {
    stream: Option<String>,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn get_records<S: RecordSink>(
    State(shared): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    query: Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Some(reader) = &shared.reader else {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                "this receiver does not serve stored records",
            ));
        };
        let principal = authenticate(
            shared.authenticator.as_ref(),
            &headers,
            &shared.config.read_roles,
        )?;
        let Query(params) = query
            .map_err(|e| Refusal::new(ErrorCode::InvalidRequest, format!("bad query: {e}")))?;
        if let Some(stream) = &params.stream {
            shared
                .config
                .limits
                .validate_stream(stream)
                .map_err(|e| Refusal::new(ErrorCode::InvalidRequest, e.to_string()))?;
        }
        let query = ReadQuery {
            stream: params.stream,
            after: params.after,
            limit: params.limit.unwrap_or(100),
        };
        let page = reader
            .read(&principal.tenant, query)
            .await
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        Ok(axum::Json(page).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

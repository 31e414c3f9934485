//! # gateway-uplink
//!
//! Both ends of `POST /v1/records`, so the client and the receiver can never drift apart:
//!
//! * **Client** — [`Uplink`] drains a [`gateway_buffer::Buffer`] to the server: it leases
//!   batches (by record count, bytes or a linger interval), encodes them (protobuf by default:
//!   the buffer's stored protobuf records are framed into the batch as they are, never decoded;
//!   JSON as an option), gzips large bodies, posts them with `Idempotency-Key` and a bearer
//!   token over reqwest + rustls (ring), and acks, releases or dead-letters each batch by the
//!   answer. Several batches are in flight at once (default 2).
//! * **Retry policy** — [`Backoff`], a sans-IO state machine: exponential backoff with full
//!   jitter (base 1 s, cap 60 s), `Retry-After` honoured on 429/503, no retry of a 4xx other
//!   than 408/429, optional max elapsed time, injectable RNG, time passed in.
//! * **Health** — [`HealthTracker`]: `healthy` / `degraded` / `down` with the last error,
//!   consecutive failures and last success, in [`UplinkStatus`] and in `gateway_uplink_*`
//!   metrics.
//! * **Receiver** (feature `server`) — [`server::Receiver`] builds an axum router for
//!   `POST /v1/records` (and `GET /v1/records` to read back) with auth, rate limits, limits,
//!   gzip and both encodings, storing through a [`server::RecordSink`]:
//!   [`server::SqliteRecordStore`] on the server (each record once per tenant) or
//!   [`server::BufferSink`] on a gateway.
//!
//! ## Guarantees
//!
//! * At-least-once on the wire, exactly-once in the server store: a batch whose answer was
//!   lost is sent again, and the store counts its records as duplicates.
//! * A record leaves the gateway's buffer only when the server answered for it: stored,
//!   duplicate, or rejected — and a rejected record is moved to the buffer's dead-letter
//!   table with the server's code and reason, never dropped silently.
//! * A sign the server is back ([`UplinkHandle::wake`]) ends the current backoff at once.
//!
//! ## Example: a gateway uploading to a server, both in one process
//!
//! ```
//! # #[cfg(not(feature = "server"))]
//! # fn main() {}
//! # #[cfg(feature = "server")]
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use gateway_buffer::{Buffer, BufferConfig};
//! use gateway_proto::auth::{Principal, Role, StaticTokens};
//! use gateway_proto::{Body, Record};
//! use gateway_uplink::server::{ReadQuery, Receiver, SqliteRecordStore, SqliteStoreConfig};
//! use gateway_uplink::{FlushOutcome, Uplink, UplinkConfig};
//!
//! let dir = tempfile::tempdir()?;
//! // The server: a SQLite store behind the receiver.
//! let store = SqliteRecordStore::open(dir.path().join("server.db"), SqliteStoreConfig::default())?;
//! let tokens = StaticTokens::new().with("gw-1-token", Principal::new("acme", "gw-1", Role::Gateway));
//! let app = Receiver::new(store.clone(), Arc::new(tokens)).into_router()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! // The gateway: a buffer drained by the uplink.
//! let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default()).await?;
//! let now = gateway_proto::clock::unix_ms(std::time::SystemTime::now());
//! buffer.append((0..100).map(|i| Record::new("logs", "agent-1", now, Body::from(serde_json::Value::from(i)))).collect()).await?;
//! let uplink = Uplink::start(buffer.clone(), UplinkConfig::new(url, "gw-1-token", "gw-1"))?;
//!
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
//! assert_eq!(uplink.flush(deadline).await?, FlushOutcome::Flushed);
//! let page = store.read("acme", ReadQuery { stream: None, after: 0, limit: 1000 }).await?;
//! assert_eq!(page.records.len(), 100);
//! uplink.shutdown(deadline).await?;
//! # Ok(()) }
//! ```
//!
//! ## Metrics
//!
//! Through the `metrics` facade (the binary installs an exporter):
//! `gateway_uplink_batches_total{outcome=acked|retried|dead_lettered|split}`,
//! `gateway_uplink_records_total{outcome=accepted|duplicate|dead_lettered}`,
//! `gateway_uplink_bytes_total`, `gateway_uplink_request_seconds{outcome=ok|failed}`
//! (histogram), `gateway_uplink_in_flight`, `gateway_uplink_health` (0 healthy, 1 degraded,
//! 2 down), `gateway_uplink_consecutive_failures`; on the receiver
//! `gateway_ingest_requests_total{code}` and `gateway_ingest_records_total{outcome}`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod health;
mod retry;
mod source;
mod transport;
mod uplink;

#[cfg(feature = "server")]
pub mod server;

pub use config::{BatchConfig, ProxyConfig, TlsConfig, UplinkConfig, WireEncoding};
pub use error::{BoxError, Error};
pub use health::{FailureKind, HealthConfig, HealthStatus, HealthTracker};
pub use retry::{Backoff, Failure, RetryDecision, RetryPolicy, StatusClass, classify_status};
pub use source::{RecordSource, SourceLease};
pub use uplink::{
    FlushOutcome, REGROW_AFTER_BATCHES, Uplink, UplinkBuilder, UplinkCounters, UplinkHandle,
    UplinkStatus,
};

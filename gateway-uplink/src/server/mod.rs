//! The receiving end of `POST /v1/records` (feature `server`).
//!
//! * [`Receiver`] builds the axum [`Router`](axum::Router): authentication through a
//!   [`gateway_proto::auth::Authenticator`], per-principal [rate limits](RateLimitConfig),
//!   JSON/protobuf negotiation, gzip, the limits of [`gateway_proto::Limits`], per-record
//!   validation, and error answers as [`gateway_proto::ErrorBody`].
//! * [`RecordSink`] is where accepted records go. Two ship: [`SqliteRecordStore`] for the
//!   server (each record once per tenant, read back by position) and [`BufferSink`] for a
//!   gateway's collector (into its [`gateway_buffer::Buffer`], 503 while it is critical).

mod buffer_sink;
mod dedup;
mod rate_limit;
mod receiver;
mod sink;
mod sqlite_store;

pub use buffer_sink::{BufferSink, BufferSinkConfig};
pub use rate_limit::{BucketConfig, KeyedBuckets, RateLimitConfig, TokenBucket};
pub use receiver::{Receiver, ReceiverConfig, RecordReader};
pub use sink::{IngestContext, RecordSink, SinkError, SinkOutcome};
pub use sqlite_store::{
    ReadQuery, RecordPage, SqliteRecordStore, SqliteStoreConfig, StoredRecord, Synchronous,
};

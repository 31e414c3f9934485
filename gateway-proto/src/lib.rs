//! # gateway-proto
//!
//! Every type that crosses a process boundary in the agent gateway system, defined once:
//! records and batches (`POST /v1/records`), the agent API, the HTTP error body, and the
//! control-channel frames — each with a JSON and a protobuf encoding that carry the same data.
//!
//! * Domain types are plain Rust: [`Record`], [`Batch`], [`BatchAck`], [`ControlFrame`], ...
//!   A record's JSON body is a [`JsonText`]: checked once where it enters, then carried as
//!   text, never parsed again on the way.
//! * [`WireMessage`] encodes and decodes them in either [`Encoding`]; decoding never panics and
//!   returns an [`Error`] naming the offending field.
//! * [`Limits`] holds every size limit and validation rule; [`decode_batch`] and
//!   [`decode_frame`] apply them in one call for receivers.
//! * The protobuf contract lives in `proto/gateway/v1/*.proto` (package `gateway.v1`); the
//!   generated prost types are in [`pb`]. `docs/PROTOCOL.md` in the repository documents every
//!   message, field, limit, status code and error code for implementers in other languages.
//! * [`auth`] holds the [`auth::Principal`] and [`auth::Authenticator`] every receiver shares;
//!   [`clock`] the wall-clock trait tests fake.
//!
//! ## Example: build a batch, encode it, decode it
//!
//! ```
//! use gateway_proto::{Batch, Body, Encoding, Limits, Record, RecordId, WireMessage, decode_batch};
//! use serde_json::json;
//!
//! let record = Record::new("logs", "agent-7", 1_732_363_200_000, Body::from(json!({"msg": "hi"})))
//!     .with_id(RecordId::new_v7())
//!     .with_attribute("host", "pc-12");
//! let batch = Batch::new("gw-1", vec![record]);
//!
//! for encoding in [Encoding::Json, Encoding::Protobuf] {
//!     let bytes = batch.encode(encoding);
//!     let decoded = decode_batch(&bytes, encoding, &Limits::default()).unwrap();
//!     assert_eq!(decoded, batch);
//! }
//!
//! // A receiver checks each record and reports the bad ones without refusing the batch.
//! let rejected = Limits::default().reject_invalid_records(&batch, 1_732_363_200_000);
//! assert!(rejected.is_empty());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod agent;
pub mod auth;
mod base64_serde;
pub mod clock;
mod code;
mod codec;
mod control;
mod error;
mod ids;
mod json_text;
mod limits;
pub mod pb;
mod record;
mod version;
mod wire;

pub use agent::{
    AgentCommand, AgentHeartbeatRequest, AgentHeartbeatResponse, RegisterAgentRequest,
    RegisterAgentResponse,
};
pub use code::ErrorCode;
pub use codec::{
    CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, Encoding, HEADER_IDEMPOTENCY_KEY, SUBPROTOCOL_JSON,
    SUBPROTOCOL_PROTOBUF, WireMessage, decode_batch, decode_frame,
};
pub use control::{
    AppliedPolicy, BufferPressure, Command, CommandAck, CommandAckState, ControlFrame, ErrorFrame,
    Heartbeat, HeartbeatAck, Hello, PolicyContent, PolicyState, PolicyStatus, PolicyUpdate,
    StatusSnapshot, UplinkHealth, Welcome,
};
pub use error::Error;
pub use ids::{BatchId, CommandId, RecordId, SessionId};
pub use json_text::JsonText;
pub use limits::{DEFAULT_MIN_TIMESTAMP_MS, Limits, is_checksum};
pub use record::{Batch, BatchAck, Body, ErrorBody, ErrorDetail, Record, Rejection};
pub use version::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, negotiate_version};
pub use wire::frame_protobuf_batch;

pub use bytes::Bytes;

//! Records, batches, batch acknowledgements and the HTTP error body.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{BatchId, ErrorCode, JsonText, RecordId};

/// One record produced by an agent or a device.
///
/// JSON form:
///
/// ```json
/// {"id": "0190f5c2-7b1e-7cc0-8a4f-3f1b2c3d4e5f", "stream": "logs", "source": "agent-7",
///  "timestamp_ms": 1732363200000, "attributes": {"host": "pc-12"},
///  "body": {"json": {"level": "info", "msg": "started"}}}
/// ```
///
/// `id` and `attributes` may be left out; `body` is either `{"json": <any JSON>}` or
/// `{"raw": "<base64>"}`. A JSON body is kept as its (compacted) text; see [`JsonText`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Record id; `None` until the first gateway that stores the record assigns a UUIDv7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RecordId>,
    /// Stream the record belongs to (`logs`, `metrics`, `devices`, `audit`, ...).
    pub stream: String,
    /// Uid of the agent or device that produced the record.
    pub source: String,
    /// Milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// Free-form string attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The payload.
    pub body: Body,
}

impl Record {
    /// A record without id or attributes.
    pub fn new(
        stream: impl Into<String>,
        source: impl Into<String>,
        timestamp_ms: i64,
        body: Body,
    ) -> Self {
        Record {
            id: None,
            stream: stream.into(),
            source: source.into(),
            timestamp_ms,
            attributes: BTreeMap::new(),
            body,
        }
    }

    /// Set the id (builder style).
    pub fn with_id(mut self, id: RecordId) -> Self {
        self.id = Some(id);
        self
    }

    /// Add one attribute (builder style).
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Append the protobuf encoding of the record (`gateway.v1.Record`) to `buf`: the bytes
    /// `pb::Record::from(&record)` encodes to, written from the record's fields without
    /// copying them first.
    pub fn encode_protobuf(&self, buf: &mut Vec<u8>) {
        crate::wire::write_record(self, buf);
    }

    /// Length in bytes of [`Record::encode_protobuf`]'s output.
    pub fn protobuf_len(&self) -> usize {
        crate::wire::record_len(self)
    }

    /// The record's id, assigning a fresh UUIDv7 first if it has none.
    pub fn ensure_id(&mut self) -> RecordId {
        *self.id.get_or_insert_with(RecordId::new_v7)
    }
}

/// The payload of a record.
///
/// A JSON body is a [`JsonText`]: checked once when it is built or decoded, then carried as
/// text through every hop (see there for what is checked and what happens to whitespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A JSON document, as text. In protobuf it travels as the same text.
    Json(JsonText),
    /// Opaque bytes. In JSON they travel as standard base64 with padding.
    Raw(#[serde(with = "crate::base64_serde")] Bytes),
}

impl Body {
    /// A JSON body holding the JSON form of `value` (any `Serialize` type, or a
    /// `serde_json::Value`). Fails when `value` does not serialise to JSON or nests deeper than
    /// 127 levels; see [`JsonText::from_serialize`].
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, crate::Error> {
        JsonText::from_serialize(value).map(Body::Json)
    }

    /// The JSON text, for a JSON body.
    pub fn as_json(&self) -> Option<&JsonText> {
        match self {
            Body::Json(text) => Some(text),
            Body::Raw(_) => None,
        }
    }

    /// The bytes, for a raw body.
    pub fn as_raw(&self) -> Option<&Bytes> {
        match self {
            Body::Json(_) => None,
            Body::Raw(bytes) => Some(bytes),
        }
    }

    /// Size of the body on the protobuf wire: the JSON text length or the byte count.
    pub fn wire_len(&self) -> usize {
        match self {
            Body::Json(text) => text.len(),
            Body::Raw(bytes) => bytes.len(),
        }
    }
}

impl From<JsonText> for Body {
    fn from(text: JsonText) -> Self {
        Body::Json(text)
    }
}

/// A JSON body holding `value`'s text (see [`JsonText::from_value`]).
impl From<serde_json::Value> for Body {
    fn from(value: serde_json::Value) -> Self {
        Body::Json(JsonText::from_value(&value))
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::Raw(bytes)
    }
}

/// A batch of records sent in one `POST /v1/records`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Batch id, also sent as the `Idempotency-Key` header.
    pub batch_id: BatchId,
    /// Id of the sending gateway; agents posting to a gateway's collector leave it empty.
    #[serde(default)]
    pub gateway_id: String,
    /// The records, in order.
    pub records: Vec<Record>,
}

impl Batch {
    /// A batch with a fresh UUIDv7 batch id.
    pub fn new(gateway_id: impl Into<String>, records: Vec<Record>) -> Self {
        Batch {
            batch_id: BatchId::new_v7(),
            gateway_id: gateway_id.into(),
            records,
        }
    }
}

/// Why one record of a batch was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Index of the record in the batch, from 0.
    pub index: u32,
    /// Stable code, e.g. `invalid_stream`.
    pub code: ErrorCode,
    /// Human-readable sentence.
    pub message: String,
}

/// The answer to a batch: `accepted + duplicates + rejected.len()` equals the batch's record count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Records stored for the first time.
    pub accepted: u32,
    /// Records already stored earlier (same tenant and id): not stored again.
    pub duplicates: u32,
    /// Records refused one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
}

/// The body of every HTTP error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: ErrorCode,
    /// Human-readable sentence.
    pub message: String,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }

    /// The HTTP status this body is sent with, from its code.
    pub fn http_status(&self) -> u16 {
        self.error.code.http_status()
    }
}

impl From<&crate::Error> for ErrorBody {
    fn from(e: &crate::Error) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

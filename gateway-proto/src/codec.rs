//! The two encodings and the functions that move every message across them.
//!
//! [`WireMessage`] is implemented for every top-level message. For the two messages that come
//! from untrusted peers in bulk there are limit-checking entry points: [`decode_batch`] and
//! [`decode_frame`] check the size before decoding and every rule after, so a receiver needs
//! one call.

use prost::Message as _;

use crate::{
    AgentHeartbeatRequest, AgentHeartbeatResponse, Batch, BatchAck, ControlFrame, Error, ErrorBody,
    Limits, RegisterAgentRequest, RegisterAgentResponse, pb,
};

/// `Content-Type` of the JSON encoding.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of the protobuf encoding.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// WebSocket subprotocol for JSON text frames (the default).
pub const SUBPROTOCOL_JSON: &str = "gateway.v1.json";
/// WebSocket subprotocol for protobuf binary frames.
pub const SUBPROTOCOL_PROTOBUF: &str = "gateway.v1.proto";
/// Header carrying the batch id of `POST /v1/records`.
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// One of the two encodings of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// JSON text, field names in snake_case.
    #[default]
    Json,
    /// Protobuf, package `gateway.v1`.
    Protobuf,
}

impl Encoding {
    /// The `Content-Type` value for HTTP bodies.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => CONTENT_TYPE_JSON,
            Encoding::Protobuf => CONTENT_TYPE_PROTOBUF,
        }
    }

    /// The WebSocket subprotocol for control frames.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::Protobuf => SUBPROTOCOL_PROTOBUF,
        }
    }

    /// The encoding of a `Content-Type` header value; parameters such as `; charset=utf-8`
    /// are ignored, case does not matter. `application/protobuf` is accepted too.
    pub fn from_content_type(value: &str) -> Result<Self, Error> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Ok(Encoding::Json)
        } else if essence.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF)
            || essence.eq_ignore_ascii_case("application/protobuf")
        {
            Ok(Encoding::Protobuf)
        } else {
            Err(Error::UnsupportedContentType {
                content_type: value.to_owned(),
            })
        }
    }

    /// The encoding of a WebSocket subprotocol name.
    pub fn from_subprotocol(value: &str) -> Result<Self, Error> {
        match value.trim() {
            SUBPROTOCOL_JSON => Ok(Encoding::Json),
            SUBPROTOCOL_PROTOBUF => Ok(Encoding::Protobuf),
            other => Err(Error::UnsupportedContentType {
                content_type: other.to_owned(),
            }),
        }
    }
}

/// A message with a JSON and a protobuf encoding.
///
/// Decoding never panics, whatever the bytes: it returns [`Error`].
pub trait WireMessage: Sized {
    /// Encode as JSON text.
    fn to_json(&self) -> Vec<u8>;
    /// Decode from JSON text.
    fn from_json(bytes: &[u8]) -> Result<Self, Error>;
    /// Encode as protobuf.
    fn to_protobuf(&self) -> Vec<u8>;
    /// Decode from protobuf, checking every structural rule.
    fn from_protobuf(bytes: &[u8]) -> Result<Self, Error>;

    /// Encode in `encoding`.
    fn encode(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            Encoding::Json => self.to_json(),
            Encoding::Protobuf => self.to_protobuf(),
        }
    }

    /// Decode from `encoding`.
    fn decode(bytes: &[u8], encoding: Encoding) -> Result<Self, Error> {
        match encoding {
            Encoding::Json => Self::from_json(bytes),
            Encoding::Protobuf => Self::from_protobuf(bytes),
        }
    }
}

macro_rules! wire_message {
    ($($domain:ty => $pb:ty),* $(,)?) => {$(
        impl WireMessage for $domain {
            fn to_json(&self) -> Vec<u8> {
                // The domain types hold only strings, numbers, maps and `Value`s with string
                // keys: serializing them cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }

            fn from_json(bytes: &[u8]) -> Result<Self, Error> {
                Ok(serde_json::from_slice(bytes)?)
            }

            fn to_protobuf(&self) -> Vec<u8> {
                <$pb>::from(self).encode_to_vec()
            }

            fn from_protobuf(bytes: &[u8]) -> Result<Self, Error> {
                <$pb>::decode(bytes)?.try_into()
            }
        }
    )*};
}

impl WireMessage for Batch {
    fn to_json(&self) -> Vec<u8> {
        // Strings, numbers, maps and JSON texts: serializing them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Written straight from the records (the same bytes as `pb::Batch::from(self)`).
    fn to_protobuf(&self) -> Vec<u8> {
        crate::wire::batch_to_vec(self)
    }

    fn from_protobuf(bytes: &[u8]) -> Result<Self, Error> {
        pb::Batch::decode(bytes)?.try_into()
    }
}

wire_message! {
    BatchAck => pb::BatchAck,
    ErrorBody => pb::ErrorBody,
    RegisterAgentRequest => pb::RegisterAgentRequest,
    RegisterAgentResponse => pb::RegisterAgentResponse,
    AgentHeartbeatRequest => pb::AgentHeartbeatRequest,
    AgentHeartbeatResponse => pb::AgentHeartbeatResponse,
}

impl WireMessage for ControlFrame {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Unknown `type` values give [`Error::UnknownFrameType`] (answer with an `error` frame of
    /// code `unknown_frame`); anything else that does not decode gives [`Error::Json`].
    fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        match value.get("type") {
            Some(serde_json::Value::String(t)) if !ControlFrame::TYPES.contains(&t.as_str()) => {
                return Err(Error::UnknownFrameType {
                    frame_type: t.clone(),
                });
            }
            Some(serde_json::Value::String(_)) => {}
            Some(_) => {
                return Err(Error::invalid(
                    "type",
                    crate::ErrorCode::MalformedFrame,
                    "the frame `type` must be a string",
                ));
            }
            None => return Err(Error::missing("type")),
        }
        Ok(serde_json::from_value(value)?)
    }

    fn to_protobuf(&self) -> Vec<u8> {
        pb::ControlFrame::from(self).encode_to_vec()
    }

    fn from_protobuf(bytes: &[u8]) -> Result<Self, Error> {
        pb::ControlFrame::decode(bytes)?.try_into()
    }
}

/// Decode a batch received from a peer: size limit, decoding, batch-level rules
/// ([`Limits::check_batch`]). Per-record rules are left to
/// [`Limits::reject_invalid_records`], so one bad record does not sink the whole batch.
///
/// `bytes` is the body after gzip decompression.
pub fn decode_batch(bytes: &[u8], encoding: Encoding, limits: &Limits) -> Result<Batch, Error> {
    limits.check_batch_size(bytes.len())?;
    let batch = Batch::decode(bytes, encoding)?;
    limits.check_batch(&batch)?;
    Ok(batch)
}

/// Decode a control frame received from a peer: size limit, decoding, and the frame rules of
/// [`Limits::validate_frame`].
pub fn decode_frame(
    bytes: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<ControlFrame, Error> {
    limits.check_frame_size(bytes.len())?;
    let frame = ControlFrame::decode(bytes, encoding)?;
    limits.validate_frame(&frame)?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_recognised_with_parameters_and_case() {
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8").unwrap(),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type("Application/X-Protobuf").unwrap(),
            Encoding::Protobuf
        );
        let err = Encoding::from_content_type("text/plain").unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::UnsupportedMediaType);
    }

    #[test]
    fn subprotocols_map_to_encodings() {
        for enc in [Encoding::Json, Encoding::Protobuf] {
            assert_eq!(Encoding::from_subprotocol(enc.subprotocol()).unwrap(), enc);
        }
        assert!(Encoding::from_subprotocol("gateway.v2.json").is_err());
    }
}

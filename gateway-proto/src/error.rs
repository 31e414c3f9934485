//! The crate's error type.

use crate::ErrorCode;

/// Everything that can go wrong while decoding, converting or validating a wire message.
///
/// Every variant names what was wrong precisely enough to fix the sender: the field path
/// (`records[3].stream`), the limit that was crossed, or the decoder's own message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not valid JSON for the expected message.
    #[error("malformed JSON: {message}")]
    Json {
        /// serde_json's description, with line and column.
        message: String,
    },
    /// The bytes are not a valid protobuf encoding of the expected message.
    #[error("malformed protobuf: {message}")]
    Protobuf {
        /// prost's description of the decoding failure.
        message: String,
    },
    /// A required field is absent (or, in protobuf, left at a value that means "unset").
    #[error("missing required field `{field}`")]
    MissingField {
        /// Path of the field, e.g. `records[2].body`.
        field: String,
    },
    /// A field is present but its value breaks a rule of the protocol or of the configured limits.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// Path of the field, e.g. `records[0].stream`.
        field: String,
        /// Stable code the receiver reports for this problem (e.g. `invalid_stream`).
        code: ErrorCode,
        /// Human-readable explanation, including the limit where one applies.
        reason: String,
    },
    /// An encoded message is larger than the configured limit; it was not decoded.
    #[error("{what} is {size} bytes, larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was measured (`batch`, `control frame`).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A batch holds more records than the configured limit.
    #[error("batch holds {count} records, more than the limit of {limit}")]
    TooManyRecords {
        /// Records in the batch.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A control frame of a type this version does not know (a newer peer, or garbage).
    #[error("unknown control frame type `{frame_type}`")]
    UnknownFrameType {
        /// The `type` value as received, or a description for protobuf.
        frame_type: String,
    },
    /// The peers share no protocol version.
    #[error(
        "no common protocol version: peer speaks {peer_min}..={peer_max}, we speak {our_min}..={our_max}"
    )]
    UnsupportedVersion {
        /// Lowest version the peer speaks.
        peer_min: u32,
        /// Highest version the peer speaks.
        peer_max: u32,
        /// Lowest version this crate speaks.
        our_min: u32,
        /// Highest version this crate speaks.
        our_max: u32,
    },
    /// A `Content-Type` or subprotocol this protocol does not define.
    #[error(
        "unsupported content type `{content_type}`: use application/json or application/x-protobuf"
    )]
    UnsupportedContentType {
        /// The value as received.
        content_type: String,
    },
}

impl Error {
    /// The stable code a receiver reports for this error (in an HTTP error body, a batch
    /// rejection or an `error` control frame).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Json { .. } | Error::Protobuf { .. } => ErrorCode::MalformedBody,
            Error::MissingField { .. } => ErrorCode::InvalidRequest,
            Error::InvalidField { code, .. } => code.clone(),
            Error::TooLarge { .. } | Error::TooManyRecords { .. } => ErrorCode::PayloadTooLarge,
            Error::UnknownFrameType { .. } => ErrorCode::UnknownFrame,
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedProtocolVersion,
            Error::UnsupportedContentType { .. } => ErrorCode::UnsupportedMediaType,
        }
    }

    /// Prefix the field path of a `MissingField` or `InvalidField` error with `parent`,
    /// so errors raised inside a nested message name the full path.
    pub(crate) fn within(self, parent: &str) -> Self {
        match self {
            Error::MissingField { field } => Error::MissingField {
                field: join_path(parent, &field),
            },
            Error::InvalidField {
                field,
                code,
                reason,
            } => Error::InvalidField {
                field: join_path(parent, &field),
                code,
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn missing(field: impl Into<String>) -> Self {
        Error::MissingField {
            field: field.into(),
        }
    }

    pub(crate) fn invalid(
        field: impl Into<String>,
        code: ErrorCode,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidField {
            field: field.into(),
            code,
            reason: reason.into(),
        }
    }
}

fn join_path(parent: &str, child: &str) -> String {
    if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json {
            message: e.to_string(),
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::Protobuf {
            message: e.to_string(),
        }
    }
}

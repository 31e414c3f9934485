//! Stable snake_case error codes shared by HTTP error bodies, batch rejections and
//! `error` control frames.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal => $status:literal, )*) => {
        /// A stable, machine-readable error code. On the wire it is a snake_case string.
        ///
        /// Codes this version does not know decode as [`ErrorCode::Other`], so a newer peer can
        /// add codes without breaking older ones. The HTTP status each code is sent with is
        /// [`ErrorCode::http_status`].
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version does not know, kept as received.
            Other(String),
        }

        impl ErrorCode {
            /// Every code this version knows, in declaration order.
            pub const KNOWN: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The snake_case text of the code.
            pub fn as_str(&self) -> &str {
                match self {
                    $( ErrorCode::$variant => $text, )*
                    ErrorCode::Other(s) => s,
                }
            }

            /// The HTTP status an answer carrying this code uses (500 for unknown codes).
            pub fn http_status(&self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $status, )*
                    ErrorCode::Other(_) => 500,
                }
            }

            /// Parse a code; unknown text becomes [`ErrorCode::Other`].
            pub fn parse(text: &str) -> ErrorCode {
                match text {
                    $( $text => ErrorCode::$variant, )*
                    other => ErrorCode::Other(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    // --- HTTP ---
    /// The body could not be decoded (broken JSON or protobuf, bad gzip).
    MalformedBody = "malformed_body" => 400,
    /// The request decoded but breaks a rule (a missing field, a bad query parameter).
    InvalidRequest = "invalid_request" => 400,
    /// No credentials were sent.
    Unauthorized = "unauthorized" => 401,
    /// The credentials are wrong or do not allow this action.
    Forbidden = "forbidden" => 403,
    /// The resource does not exist.
    NotFound = "not_found" => 404,
    /// The path exists but not with this HTTP method.
    MethodNotAllowed = "method_not_allowed" => 405,
    /// The request conflicts with the current state (for example a stale version).
    Conflict = "conflict" => 409,
    /// The body, a batch or a frame is larger than the limits allow.
    PayloadTooLarge = "payload_too_large" => 413,
    /// The `Content-Type` (or `Content-Encoding`) is not one this protocol defines.
    UnsupportedMediaType = "unsupported_media_type" => 415,
    /// Too many requests for this principal; retry after `Retry-After`.
    RateLimited = "rate_limited" => 429,
    /// An unexpected failure inside the receiver; retrying may help.
    Internal = "internal" => 500,
    /// The gateway's buffer is critically full; retry after `Retry-After`.
    BufferCritical = "buffer_critical" => 503,
    /// The service cannot take requests now (starting, shutting down, storage failing).
    Unavailable = "unavailable" => 503,
    // --- Record rejections (inside a 200 `BatchAck`) ---
    /// The record id is not a valid, non-nil UUID.
    InvalidId = "invalid_id" => 400,
    /// The stream name is empty, too long or uses characters outside `[a-z0-9._-]`.
    InvalidStream = "invalid_stream" => 400,
    /// The source is empty, too long or holds control characters.
    InvalidSource = "invalid_source" => 400,
    /// The timestamp is before the configured minimum or too far in the future.
    InvalidTimestamp = "invalid_timestamp" => 400,
    /// More attributes than the limit allows.
    TooManyAttributes = "too_many_attributes" => 400,
    /// An attribute key or value is empty or longer than the limit allows.
    InvalidAttribute = "invalid_attribute" => 400,
    /// The record body is larger than the limit allows.
    BodyTooLarge = "body_too_large" => 400,
    /// The body is missing or holds invalid JSON text.
    InvalidBody = "invalid_body" => 400,
    // --- Control channel ---
    /// A control frame of an unknown type.
    UnknownFrame = "unknown_frame" => 400,
    /// A control frame that could not be decoded or breaks a rule.
    MalformedFrame = "malformed_frame" => 400,
    /// A frame that is valid but not expected in the session's current state.
    UnexpectedFrame = "unexpected_frame" => 400,
    /// The gateway id in `hello` differs from the identity of the credentials.
    IdentityMismatch = "identity_mismatch" => 403,
    /// The peers share no protocol version.
    UnsupportedProtocolVersion = "unsupported_protocol_version" => 400,
    // --- Policies ---
    /// A policy patch whose base is not the running version; send the full document.
    BaseMismatch = "base_mismatch" => 409,
    /// A policy whose checksum does not match its document.
    ChecksumMismatch = "checksum_mismatch" => 400,
    /// A policy whose signature is missing or does not verify.
    BadSignature = "bad_signature" => 400,
    /// A policy version not newer than the running one.
    StaleVersion = "stale_version" => 409,
    /// The integrator's validator refused the policy document.
    ValidationFailed = "validation_failed" => 400,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ErrorCode {
    fn from(text: &str) -> Self {
        ErrorCode::parse(text)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_round_trips_through_its_text() {
        for code in ErrorCode::KNOWN {
            assert_eq!(&ErrorCode::parse(code.as_str()), code);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(&serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn unknown_codes_are_kept_as_received() {
        let code: ErrorCode = serde_json::from_str("\"brand_new_code\"").unwrap();
        assert_eq!(code, ErrorCode::Other("brand_new_code".into()));
        assert_eq!(code.as_str(), "brand_new_code");
        assert_eq!(code.http_status(), 500);
    }

    #[test]
    fn http_statuses_follow_the_contract() {
        assert_eq!(ErrorCode::MalformedBody.http_status(), 400);
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::UnsupportedMediaType.http_status(), 415);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::BufferCritical.http_status(), 503);
    }
}

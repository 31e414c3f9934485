//! UUID-backed identifiers. On the JSON wire each is the hyphenated UUID text; in protobuf,
//! the 16 big-endian bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::{Error, ErrorCode};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $code:expr) => {
        $(#[$doc])*
        ///
        /// Never nil: parsing and decoding refuse the all-zero UUID.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7) from the system clock.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wrap a UUID; `None` for the nil UUID.
            pub fn from_uuid(uuid: Uuid) -> Option<Self> {
                (!uuid.is_nil()).then_some(Self(uuid))
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The 16 big-endian bytes used by the protobuf encoding.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Decode the protobuf form: exactly 16 bytes, not all zero. `field` names the
            /// field in the error.
            pub(crate) fn from_wire(bytes: &[u8], field: &str) -> Result<Self, Error> {
                let uuid = Uuid::from_slice(bytes).map_err(|_| {
                    Error::invalid(
                        field,
                        $code,
                        format!("a UUID is 16 bytes, got {}", bytes.len()),
                    )
                })?;
                Self::from_uuid(uuid)
                    .ok_or_else(|| Error::invalid(field, $code, "the nil UUID is not a valid id"))
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                let uuid = Uuid::parse_str(s).map_err(|e| {
                    Error::invalid(stringify!($name), $code, format!("not a UUID: {e}"))
                })?;
                Self::from_uuid(uuid).ok_or_else(|| {
                    Error::invalid(stringify!($name), $code, "the nil UUID is not a valid id")
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// Id of a record. Agents should send UUIDv7 (time-ordered) ids; any other non-nil UUID
    /// is accepted. A retried record keeps its id: that is what makes it a duplicate.
    RecordId,
    ErrorCode::InvalidId
);
uuid_id!(
    /// Id of a batch; also sent as the `Idempotency-Key` header.
    BatchId,
    ErrorCode::InvalidRequest
);
uuid_id!(
    /// Id of a command. A redelivered command carries the same id.
    CommandId,
    ErrorCode::MalformedFrame
);
uuid_id!(
    /// Id of one control-channel session.
    SessionId,
    ErrorCode::MalformedFrame
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nil_and_malformed_ids_are_refused() {
        assert!(
            "00000000-0000-0000-0000-000000000000"
                .parse::<RecordId>()
                .is_err()
        );
        assert!("not-a-uuid".parse::<RecordId>().is_err());
        assert!(RecordId::from_wire(&[1; 15], "id").is_err());
        assert!(RecordId::from_wire(&[0; 16], "id").is_err());
        let err = RecordId::from_wire(&[1; 3], "records[2].id").unwrap_err();
        assert!(err.to_string().contains("records[2].id"), "{err}");
    }

    #[test]
    fn v7_ids_are_time_ordered_and_round_trip() {
        let a = RecordId::new_v7();
        let b = RecordId::new_v7();
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(a.to_string().parse::<RecordId>().unwrap(), a);
        assert_eq!(RecordId::from_wire(a.as_bytes(), "id").unwrap(), a);
    }
}

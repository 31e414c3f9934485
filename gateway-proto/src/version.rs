//! Protocol versions and how two peers agree on one.
//!
//! A version is one integer that grows when the wire contract changes incompatibly. Adding an
//! optional field or a new frame type does not change it: receivers ignore unknown JSON fields
//! and protobuf field numbers, and answer unknown frame types with an `error` frame.
//!
//! **Negotiation.** The gateway's `hello` carries the range it speaks
//! (`min_protocol_version ..= protocol_version`). The server picks the highest version inside
//! both ranges and returns it in `welcome.protocol_version`; when the ranges do not meet it
//! sends an `error` frame with code `unsupported_protocol_version` and closes the session.

use crate::Error;

/// Highest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Lowest protocol version this crate speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Pick the version for a session: the highest version both the peer
/// (`peer_min ..= peer_max`) and this crate speak.
///
/// ```
/// use gateway_proto::{negotiate_version, PROTOCOL_VERSION};
/// assert_eq!(negotiate_version(1, 5).unwrap(), PROTOCOL_VERSION);
/// assert!(negotiate_version(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3).is_err());
/// ```
pub fn negotiate_version(peer_min: u32, peer_max: u32) -> Result<u32, Error> {
    let chosen = peer_max.min(PROTOCOL_VERSION);
    if peer_min > peer_max || chosen < peer_min.max(MIN_PROTOCOL_VERSION) {
        return Err(Error::UnsupportedVersion {
            peer_min,
            peer_max,
            our_min: MIN_PROTOCOL_VERSION,
            our_max: PROTOCOL_VERSION,
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_common_version() {
        assert_eq!(negotiate_version(1, 1).unwrap(), 1);
        assert_eq!(negotiate_version(1, 9).unwrap(), PROTOCOL_VERSION);
    }

    #[test]
    fn disjoint_or_inverted_ranges_fail() {
        assert!(matches!(
            negotiate_version(2, 3),
            Err(Error::UnsupportedVersion { peer_min: 2, .. })
        ));
        assert!(negotiate_version(0, 0).is_err());
        assert!(negotiate_version(3, 1).is_err());
    }
}

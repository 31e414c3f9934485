//! Canonical JSON (RFC 8785, JCS) and the policy checksum over it.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The RFC 8785 canonical form of `document`, as UTF-8 bytes.
///
/// ```
/// let doc = serde_json::json!({"b": [1.0, 2e1], "a": "é"});
/// let bytes = gateway_policy::canonical_json(&doc).unwrap();
/// assert_eq!(bytes, "{\"a\":\"é\",\"b\":[1,20]}".as_bytes());
/// ```
pub fn canonical_json(document: &Value) -> Result<Vec<u8>> {
    serde_json_canonicalizer::to_vec(document).map_err(|e| Error::Canonical(e.to_string()))
}

/// Parse JSON text and return its RFC 8785 canonical form.
///
/// Duplicate member names keep the last value (RFC 8785 requires inputs without duplicates, so
/// such text has no canonical form of its own).
pub fn canonicalize_text(json_text: &str) -> Result<Vec<u8>> {
    let value: Value =
        serde_json::from_str(json_text).map_err(|e| Error::Canonical(e.to_string()))?;
    canonical_json(&value)
}

/// The policy checksum of `document`: lowercase hex SHA-256 of its canonical form.
///
///
/// The checksum of a document is the lowercase hex SHA-256 of its JCS form: object members sorted
/// by their UTF-16 code units, no whitespace, numbers in the ECMAScript shortest form, strings with
/// only the mandatory escapes. Key order and whitespace in the source text therefore never change
/// a checksum, and an agent written in another language computes the same one with any RFC 8785
/// implementation. Canonicalisation is done by the `serde_json_canonicalizer` crate, which passes
/// every vector of the RFC's reference suite (see `tests/conformance_jcs.rs`).
///
/// Numbers follow the RFC: they are IEEE-754 doubles, so `1`, `1.0` and `1e0` hash alike, and an
/// integer beyond 2^53 is rounded the way a JavaScript engine would.
///
/// ```
/// use serde_json::json;
/// let a = gateway_policy::checksum(&json!({"x": 1, "y": [true, null]})).unwrap();
/// let b = gateway_policy::checksum(&serde_json::from_str(r#"{ "y":[ true,null ], "x":1.0 }"#).unwrap()).unwrap();
/// assert_eq!(a, b);
/// assert!(gateway_proto::is_checksum(&a));
/// ```
pub fn checksum(document: &Value) -> Result<String> {
    Ok(checksum_of_canonical(&canonical_json(document)?))
}

/// Lowercase hex SHA-256 of bytes already in canonical form.
pub fn checksum_of_canonical(canonical: &[u8]) -> String {
    hex::encode(Sha256::digest(canonical))
}

/// Check that `document` hashes to `expected`; the error carries both checksums.
pub fn verify_checksum(document: &Value, expected: &str) -> Result<()> {
    let actual = checksum(document)?;
    if actual == expected {
        Ok(())
    } else {
        Err(Error::ChecksumMismatch {
            expected: expected.to_owned(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_object_hashes_to_the_sha256_of_braces() {
        // printf '{}' | sha256sum
        assert_eq!(
            checksum(&json!({})).unwrap(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn integers_and_equal_doubles_hash_alike() {
        assert_eq!(
            checksum(&json!({"n": 1})).unwrap(),
            checksum(&json!({"n": 1.0})).unwrap()
        );
        assert_ne!(
            checksum(&json!({"n": 1})).unwrap(),
            checksum(&json!({"n": 2})).unwrap()
        );
    }

    #[test]
    fn large_integers_round_like_ecmascript() {
        let bytes = canonicalize_text("[18446744073709551615, 9007199254740993]").unwrap();
        assert_eq!(bytes, b"[18446744073709552000,9007199254740992]");
    }

    #[test]
    fn verify_reports_both_checksums() {
        let doc = json!({"a": 1});
        let wrong = "0".repeat(64);
        match verify_checksum(&doc, &wrong) {
            Err(Error::ChecksumMismatch { expected, actual }) => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, checksum(&doc).unwrap());
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        verify_checksum(&doc, &checksum(&doc).unwrap()).unwrap();
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        assert!(matches!(
            canonicalize_text("{\"a\":"),
            Err(Error::Canonical(_))
        ));
    }
}

//! JSON Patch (RFC 6902) between policy documents: [`diff`] on the server, [`apply_patch`] and
//! [`apply_patch_verified`] on the gateway.
//!
//! Patches travel as plain JSON arrays (`serde_json::Value`), exactly as in
//! [`gateway_proto::PolicyContent::Patch`]. The RFC 6902 machinery is the `json-patch` crate; the
//! whole json-patch-tests suite passes against [`apply_patch`] (see `tests/conformance_json_patch.rs`).
//! Applying is all-or-nothing: on any failed operation the base document is left untouched and an
//! error is returned.

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result, checksum::verify_checksum};

/// A JSON Patch that turns `from` into `to`, as a JSON array of RFC 6902 operations.
///
/// Objects are compared member by member; arrays index by index (changed elements are
/// replaced, a longer or shorter tail is added or removed); any other change replaces the
/// value. An unchanged document gives an empty array.
///
/// ```
/// use serde_json::json;
/// let a = json!({"rules": [{"allow": "dns"}], "mode": "audit"});
/// let b = json!({"rules": [{"allow": "dns"}, {"deny": "smb"}], "mode": "enforce"});
/// let patch = gateway_policy::diff(&a, &b);
/// assert_eq!(gateway_policy::apply_patch(&a, &patch).unwrap(), b);
/// ```
pub fn diff(from: &Value, to: &Value) -> Value {
    let patch = json_patch::diff(from, to);
    // A `Patch` is a list of plain structs with string paths: serialising it cannot fail.
    serde_json::to_value(&patch).unwrap_or_else(|_| Value::Array(Vec::new()))
}

/// Apply the RFC 6902 `operations` to a copy of `base` and return the result.
///
/// Fails with [`Error::Patch`] when `operations` is not an array of valid operations or when
/// one of them does not apply; `base` is never modified.
pub fn apply_patch(base: &Value, operations: &Value) -> Result<Value> {
    let patch = json_patch::Patch::deserialize(operations)
        .map_err(|e| Error::Patch(format!("malformed patch: {e}")))?;
    let mut document = base.clone();
    json_patch::patch(&mut document, &patch).map_err(|e| Error::Patch(e.to_string()))?;
    Ok(document)
}

/// [`apply_patch`], then check the result against `expected_checksum`
/// ([`Error::ChecksumMismatch`] when it differs).
///
/// ```
/// use serde_json::json;
/// let a = json!({"mode": "audit"});
/// let b = json!({"mode": "enforce"});
/// let patch = gateway_policy::diff(&a, &b);
/// let sum = gateway_policy::checksum(&b).unwrap();
/// assert_eq!(gateway_policy::apply_patch_verified(&a, &patch, &sum).unwrap(), b);
/// assert!(gateway_policy::apply_patch_verified(&a, &json!([]), &sum).is_err());
/// ```
pub fn apply_patch_verified(
    base: &Value,
    operations: &Value,
    expected_checksum: &str,
) -> Result<Value> {
    let document = apply_patch(base, operations)?;
    verify_checksum(&document, expected_checksum)?;
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identical_documents_give_an_empty_patch() {
        let a = json!({"a": [1, 2, {"b": null}]});
        assert_eq!(diff(&a, &a), json!([]));
    }

    #[test]
    fn a_type_change_at_the_root_replaces_the_whole_document() {
        let a = json!([1, 2]);
        let b = json!({"x": 1});
        let patch = diff(&a, &b);
        assert_eq!(
            patch,
            json!([{"op": "replace", "path": "", "value": {"x": 1}}])
        );
        assert_eq!(apply_patch(&a, &patch).unwrap(), b);
    }

    #[test]
    fn a_failing_operation_leaves_the_base_untouched_and_says_why() {
        let base = json!({"a": 1});
        let ops = json!([
            {"op": "add", "path": "/b", "value": 2},
            {"op": "test", "path": "/a", "value": 5}
        ]);
        let err = apply_patch(&base, &ops).unwrap_err();
        assert!(matches!(err, Error::Patch(_)), "{err:?}");
        assert_eq!(base, json!({"a": 1}));
    }

    #[test]
    fn a_patch_that_is_not_an_array_is_malformed() {
        let err = apply_patch(&json!({}), &json!({"op": "add"})).unwrap_err();
        assert!(err.to_string().contains("malformed patch"), "{err}");
    }

    #[test]
    fn keys_needing_pointer_escapes_survive_diff_and_apply() {
        let a = json!({"a/b": 1, "c~d": {"": 2}});
        let b = json!({"a/b": 3, "c~d": {"": 4, "e/~f": 5}});
        assert_eq!(apply_patch(&a, &diff(&a, &b)).unwrap(), b);
    }
}

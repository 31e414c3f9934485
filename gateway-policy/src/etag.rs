//! HTTP caching for `GET /v1/policy`: the ETag of a policy is its checksum, and a request whose
//! `If-None-Match` names it gets `304 Not Modified`.
//!
//! The checksum changes exactly when the canonical document does, so it is a strong validator.
//! `If-None-Match` uses the weak comparison of RFC 9110 §13.1.2 (a `W/` prefix is ignored), accepts
//! `*` and comma-separated lists, and tolerates a bare unquoted checksum from sloppy clients.

/// The `ETag` header value for a policy with this checksum: the checksum in double quotes.
///
/// ```
/// assert_eq!(gateway_policy::etag("ab12"), "\"ab12\"");
/// ```
pub fn etag(checksum: &str) -> String {
    format!("\"{checksum}\"")
}

/// True when an `If-None-Match` header value matches the current checksum, i.e. when the answer
/// is `304 Not Modified`.
///
/// ```
/// use gateway_policy::if_none_match;
/// let sum = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// assert!(if_none_match(&format!("\"{sum}\""), sum));
/// assert!(if_none_match(&format!("\"old\", W/\"{sum}\""), sum));
/// assert!(if_none_match("*", sum));
/// assert!(!if_none_match("\"old\"", sum));
/// ```
pub fn if_none_match(header_value: &str, checksum: &str) -> bool {
    header_value.split(',').map(str::trim).any(|tag| {
        if tag == "*" {
            return true;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        let opaque = tag
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(tag);
        !opaque.is_empty() && opaque == checksum
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn the_etag_matches_itself() {
        assert!(if_none_match(&etag(SUM), SUM));
    }

    #[test]
    fn lists_weak_tags_and_bare_checksums_match() {
        assert!(if_none_match(&format!(" \"x\" ,\t\"{SUM}\""), SUM));
        assert!(if_none_match(&format!("W/\"{SUM}\""), SUM));
        assert!(if_none_match(SUM, SUM));
    }

    #[test]
    fn other_tags_empty_values_and_prefixes_do_not_match() {
        assert!(!if_none_match("", SUM));
        assert!(!if_none_match("\"\"", SUM));
        assert!(!if_none_match(&format!("\"{}\"", &SUM[..10]), SUM));
        assert!(!if_none_match("\"a\", \"b\"", SUM));
        assert!(!if_none_match(&etag(SUM), ""));
    }
}

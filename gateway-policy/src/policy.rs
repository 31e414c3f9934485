//! The policy model: a named, versioned, checksummed JSON document with its change record.

use gateway_proto::{PolicyContent, PolicyUpdate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, PolicySigner, Result, checksum};

/// Longest policy name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Check a policy name: 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._-]`, starting with a letter
/// or digit. Names become file names on the gateway, so nothing else is allowed.
///
/// ```
/// assert!(gateway_policy::validate_name("firewall.v2_main-site").is_ok());
/// assert!(gateway_policy::validate_name("../etc/passwd").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("a policy name must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("a policy name is at most 128 bytes")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("a policy name starts with a letter or a digit")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("a policy name uses only letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// One version of a policy, as the server stores it.
///
/// Versions start at 1 and only move forward per name; `checksum` is [`crate::checksum`] of
/// `document`. Every version records who made the change and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Policy name (see [`validate_name`]).
    pub name: String,
    /// Version number, from 1, increasing per name.
    pub version: u64,
    /// Lowercase hex SHA-256 of the RFC 8785 form of `document`.
    pub checksum: String,
    /// The policy document.
    pub document: Value,
    /// When this version was created, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Who made the change.
    pub author: String,
    /// Why the change was made.
    pub message: String,
}

impl Policy {
    /// A policy version with its checksum computed from `document`.
    pub fn new(
        name: impl Into<String>,
        version: u64,
        document: Value,
        created_at: i64,
        author: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<Policy> {
        let name = name.into();
        validate_name(&name)?;
        if version == 0 {
            return Err(Error::invalid("version", "policy versions start at 1"));
        }
        let checksum = checksum(&document)?;
        Ok(Policy {
            name,
            version,
            checksum,
            document,
            created_at,
            author: author.into(),
            message: message.into(),
        })
    }

    /// Check that `checksum` matches `document`.
    pub fn verify(&self) -> Result<()> {
        crate::verify_checksum(&self.document, &self.checksum)
    }

    /// This version without its document, as history listings show it.
    pub fn info(&self) -> PolicyVersionInfo {
        PolicyVersionInfo {
            name: self.name.clone(),
            version: self.version,
            checksum: self.checksum.clone(),
            created_at: self.created_at,
            author: self.author.clone(),
            message: self.message.clone(),
        }
    }

    /// A `policy_update` carrying this version's full document, signed when a signer is given.
    pub fn full_update(&self, signer: Option<&PolicySigner>) -> PolicyUpdate {
        PolicyUpdate {
            name: self.name.clone(),
            version: self.version,
            checksum: self.checksum.clone(),
            content: PolicyContent::Full {
                document: self.document.clone(),
            },
            signature: signer.map(|s| s.sign(&self.checksum)),
        }
    }
}

/// One entry of a policy's history: a [`Policy`] without its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionInfo {
    /// Policy name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Checksum of the version's document.
    pub checksum: String,
    /// When the version was created, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Who made the change.
    pub author: String,
    /// Why the change was made.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_the_file_safe_rule() {
        for good in ["a", "A1", "fw.main_site-2", &"x".repeat(128)] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn new_computes_the_checksum_and_refuses_version_zero() {
        let p = Policy::new("fw", 1, json!({"a": 1}), 5, "ops", "first").unwrap();
        assert_eq!(p.checksum, checksum(&json!({"a": 1})).unwrap());
        p.verify().unwrap();
        assert!(matches!(
            Policy::new("fw", 0, json!({}), 5, "ops", "x"),
            Err(Error::InvalidParameter {
                param_name: "version",
                ..
            })
        ));
    }

    #[test]
    fn verify_catches_an_edited_document() {
        let mut p = Policy::new("fw", 1, json!({"a": 1}), 5, "ops", "first").unwrap();
        p.document = json!({"a": 2});
        assert!(matches!(p.verify(), Err(Error::ChecksumMismatch { .. })));
    }

    #[test]
    fn full_update_is_unsigned_without_a_signer() {
        let p = Policy::new("fw", 3, json!([1]), 5, "ops", "x").unwrap();
        let u = p.full_update(None);
        assert_eq!((u.name.as_str(), u.version), ("fw", 3));
        assert_eq!(u.checksum, p.checksum);
        assert!(u.signature.is_none());
        assert_eq!(
            u.content,
            PolicyContent::Full {
                document: json!([1])
            }
        );
    }
}

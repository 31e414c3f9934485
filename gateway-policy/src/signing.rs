//! Ed25519 signatures over policy checksums.
//!
//! The server signs the checksum **text** (the 64 lowercase hex digits, as ASCII bytes) of each
//! version it sends; a gateway configured with the matching public key refuses updates whose
//! signature is missing or does not verify. Since the checksum covers the canonical document, the
//! signature covers the document too, whatever the transport did to its whitespace or key order.
//! Verification is strict (`verify_strict`: no small-order keys, canonical `S`).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use gateway_proto::Bytes;

use crate::{Error, Result};

/// The server's signing key.
///
/// ```
/// use gateway_policy::PolicySigner;
/// let signer = PolicySigner::from_bytes(&[7u8; 32]);
/// let checksum = gateway_policy::checksum(&serde_json::json!({"mode": "enforce"})).unwrap();
/// let signature = signer.sign(&checksum);
/// signer.verifier().verify(&checksum, Some(&signature)).unwrap();
/// ```
#[derive(Clone)]
pub struct PolicySigner {
    key: SigningKey,
}

impl PolicySigner {
    /// A signer from a 32-byte Ed25519 secret key (seed). Take it from a secure random source,
    /// e.g. `openssl rand -hex 32`.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        PolicySigner {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// A signer from the secret key as 64 hex digits.
    pub fn from_hex(secret_hex: &str) -> Result<Self> {
        let bytes = decode_key_hex(secret_hex.trim(), "secret key")?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The verifier for this signer's public key (what gateways are configured with).
    pub fn verifier(&self) -> PolicyVerifier {
        PolicyVerifier {
            key: self.key.verifying_key(),
        }
    }

    /// Sign a checksum; the 64-byte signature for [`gateway_proto::PolicyUpdate::signature`].
    pub fn sign(&self, checksum: &str) -> Bytes {
        let signature: Signature = self.key.sign(checksum.as_bytes());
        Bytes::copy_from_slice(&signature.to_bytes())
    }
}

impl std::fmt::Debug for PolicySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySigner")
            .field("public_key", &self.verifier().to_hex())
            .finish_non_exhaustive()
    }
}

/// The public key a gateway checks policy signatures with.
#[derive(Clone, PartialEq, Eq)]
pub struct PolicyVerifier {
    key: VerifyingKey,
}

impl PolicyVerifier {
    /// A verifier from a 32-byte Ed25519 public key.
    pub fn from_bytes(public: &[u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(public)
            .map_err(|e| Error::BadSignature(format!("not an Ed25519 public key: {e}")))?;
        if key.is_weak() {
            return Err(Error::BadSignature(
                "the public key is a small-order point and would accept forged signatures".into(),
            ));
        }
        Ok(PolicyVerifier { key })
    }

    /// A verifier from the public key as 64 hex digits.
    pub fn from_hex(public_hex: &str) -> Result<Self> {
        let bytes = decode_key_hex(public_hex.trim(), "public key")?;
        Self::from_bytes(&bytes)
    }

    /// The public key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Check `signature` over `checksum`. A missing signature is an error.
    pub fn verify(&self, checksum: &str, signature: Option<&[u8]>) -> Result<()> {
        let signature = signature.ok_or_else(|| {
            Error::BadSignature(
                "the policy is unsigned and this gateway requires signatures".into(),
            )
        })?;
        let signature = Signature::from_slice(signature).map_err(|_| {
            Error::BadSignature(format!(
                "an Ed25519 signature is 64 bytes, got {}",
                signature.len()
            ))
        })?;
        self.key
            .verify_strict(checksum.as_bytes(), &signature)
            .map_err(|_| {
                Error::BadSignature(
                    "the signature does not verify with the configured public key".into(),
                )
            })
    }
}

impl std::fmt::Debug for PolicyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PolicyVerifier")
            .field(&self.to_hex())
            .finish()
    }
}

fn decode_key_hex(text: &str, what: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text)
        .map_err(|e| Error::BadSignature(format!("the {what} is not hex: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        Error::BadSignature(format!(
            "an Ed25519 {what} is 32 bytes (64 hex digits), got {} bytes",
            bytes.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn a_signature_verifies_only_for_its_checksum_and_key() {
        let signer = PolicySigner::from_bytes(&[1; 32]);
        let sig = signer.sign(SUM);
        assert_eq!(sig.len(), 64);
        signer.verifier().verify(SUM, Some(&sig)).unwrap();

        let other_sum = "0".repeat(64);
        assert!(signer.verifier().verify(&other_sum, Some(&sig)).is_err());
        let stranger = PolicySigner::from_bytes(&[2; 32]).verifier();
        assert!(stranger.verify(SUM, Some(&sig)).is_err());
    }

    #[test]
    fn missing_short_and_flipped_signatures_are_refused() {
        let signer = PolicySigner::from_bytes(&[3; 32]);
        let verifier = signer.verifier();
        assert!(verifier.verify(SUM, None).is_err());
        assert!(verifier.verify(SUM, Some(&[0u8; 10])).is_err());
        let mut sig = signer.sign(SUM).to_vec();
        sig[10] ^= 1;
        assert!(verifier.verify(SUM, Some(&sig)).is_err());
    }

    #[test]
    fn keys_round_trip_through_hex_and_bad_hex_is_an_error() {
        let signer = PolicySigner::from_hex(&hex::encode([9u8; 32])).unwrap();
        let public = signer.verifier().to_hex();
        let verifier = PolicyVerifier::from_hex(&public).unwrap();
        verifier.verify(SUM, Some(&signer.sign(SUM))).unwrap();
        assert!(PolicyVerifier::from_hex("zz").is_err());
        assert!(PolicyVerifier::from_hex(&"ab".repeat(31)).is_err());
        assert!(!format!("{signer:?}").contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn small_order_public_keys_are_refused() {
        // The identity point: every signature with R = identity and S = 0 would verify under it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PolicyVerifier::from_bytes(&identity).is_err());
    }
}

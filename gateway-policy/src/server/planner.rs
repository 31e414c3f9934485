//! Building the `policy_update` a gateway needs: a patch against the version it runs when the
//! server still has that exact version, the full document otherwise, signed when a key is set,
//! and never a frame larger than gateways accept.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_proto::{AppliedPolicy, Bytes, ControlFrame, PolicyContent, PolicyUpdate, WireMessage};
use serde_json::Value;

use super::PolicyStore;
use crate::{Error, Policy, PolicySigner, Result, diff};

/// The size in bytes of the control frame carrying `update`: the larger of its JSON and protobuf
/// encodings, which is what a gateway compares with its
/// [`Limits::max_frame_bytes`](gateway_proto::Limits::max_frame_bytes) whichever encoding its
/// session uses.
///
/// ```
/// use gateway_policy::{Policy, build_update, update_frame_len};
/// let policy = Policy::new("fw", 1, serde_json::json!({"pad": "x".repeat(1000)}), 0, "ann", "").unwrap();
/// let len = update_frame_len(&build_update(&policy, None, None));
/// assert!(len > 1000 && len < 1200, "{len}");
/// ```
pub fn update_frame_len(update: &PolicyUpdate) -> usize {
    let frame = ControlFrame::PolicyUpdate(update.clone());
    frame.to_json().len().max(frame.to_protobuf().len())
}

/// The update that moves a gateway running `base` (if any) to `target`.
///
/// A patch is sent when `base` is an older version of the same policy and the patch is smaller
/// than the full document; otherwise the full document. `base` must be the version the gateway
/// runs *with the checksum it reported* — the caller checks that (see [`UpdatePlanner`]).
///
/// ```
/// use gateway_policy::{Policy, build_update};
/// use gateway_proto::PolicyContent;
/// let big: Vec<u32> = (0..100).collect();
/// let v1 = Policy::new("fw", 1, serde_json::json!({"mode": "audit", "ports": big}), 0, "ann", "v1").unwrap();
/// let v2 = Policy::new("fw", 2, serde_json::json!({"mode": "enforce", "ports": big}), 0, "ann", "v2").unwrap();
/// let update = build_update(&v2, Some(&v1), None);
/// assert!(matches!(update.content, PolicyContent::Patch { base_version: 1, .. }));
/// let update = build_update(&v2, None, None);
/// assert!(matches!(update.content, PolicyContent::Full { .. }));
/// ```
pub fn build_update(
    target: &Policy,
    base: Option<&Policy>,
    signer: Option<&PolicySigner>,
) -> PolicyUpdate {
    let signature = signer.map(|s| s.sign(&target.checksum));
    let patch = base.and_then(|b| patch_if_smaller(b, target));
    assemble(target, patch, signature)
}

fn patch_if_smaller(base: &Policy, target: &Policy) -> Option<(u64, Value)> {
    if base.name != target.name || base.version >= target.version {
        return None;
    }
    let operations = diff(&base.document, &target.document);
    let patch_len = serde_json::to_vec(&operations).map(|v| v.len()).ok()?;
    let full_len = serde_json::to_vec(&target.document).map(|v| v.len()).ok()?;
    (patch_len < full_len).then_some((base.version, operations))
}

fn assemble(
    target: &Policy,
    patch: Option<(u64, Value)>,
    signature: Option<Bytes>,
) -> PolicyUpdate {
    let content = match patch {
        Some((base_version, operations)) => PolicyContent::Patch {
            base_version,
            operations,
        },
        None => PolicyContent::Full {
            document: target.document.clone(),
        },
    };
    PolicyUpdate {
        name: target.name.clone(),
        version: target.version,
        checksum: target.checksum.clone(),
        content,
        signature,
    }
}

/// [`build_update`] with caches, for sending the same version to many gateways: each version is
/// read from the store, each (base, target) patch computed, each version signed and each frame's
/// size measured only once. Versions are immutable, so cached entries never go stale; the caches
/// are cleared when they pass [`UpdatePlanner::MAX_CACHED`] entries.
///
/// # Frame size
/// With a limit ([`with_max_frame_bytes`](Self::with_max_frame_bytes)) the planner never returns
/// an update whose frame ([`update_frame_len`]) exceeds it: a patch over the limit falls back to
/// the full document, and when the full document does not fit either
/// [`update_for`](Self::update_for) fails with [`Error::PolicyTooLarge`] (gateways refuse such a
/// frame and drop the session, so sending it would only make them reconnect in a loop).
#[derive(Debug)]
pub struct UpdatePlanner {
    signer: Option<PolicySigner>,
    max_frame_bytes: Option<usize>,
    versions: HashMap<(String, u64), Option<Arc<Policy>>>,
    signatures: HashMap<(String, u64), Bytes>,
    patches: HashMap<(String, u64, u64), Option<Value>>,
    /// Frame sizes by (name, version, patch base), for the limit check.
    frame_sizes: HashMap<(String, u64, Option<u64>), usize>,
}

impl UpdatePlanner {
    /// Entries per cache before it is cleared.
    pub const MAX_CACHED: usize = 1024;

    /// A planner signing with `signer`, if any, with no frame size limit.
    pub fn new(signer: Option<PolicySigner>) -> Self {
        UpdatePlanner {
            signer,
            max_frame_bytes: None,
            versions: HashMap::new(),
            signatures: HashMap::new(),
            patches: HashMap::new(),
            frame_sizes: HashMap::new(),
        }
    }

    /// Never plan a frame larger than `limit` bytes (see "Frame size" above).
    pub fn with_max_frame_bytes(mut self, limit: usize) -> Self {
        self.max_frame_bytes = Some(limit);
        self
    }

    /// The frame size limit, if any.
    pub fn max_frame_bytes(&self) -> Option<usize> {
        self.max_frame_bytes
    }

    /// The signer, if updates are signed.
    pub fn signer(&self) -> Option<&PolicySigner> {
        self.signer.as_ref()
    }

    /// Check that the full-document update of `document` as a new version of `name` fits the
    /// frame limit, before it is published: [`Error::PolicyTooLarge`] when it does not. The
    /// frame is measured with the largest version number and, when updates are signed, a
    /// signature, so the real frame is never larger.
    pub fn check_document(&self, name: &str, document: &Value) -> Result<()> {
        let Some(limit) = self.max_frame_bytes else {
            return Ok(());
        };
        let update = PolicyUpdate {
            name: name.to_owned(),
            version: u64::MAX,
            checksum: crate::checksum(document)?,
            content: PolicyContent::Full {
                document: document.clone(),
            },
            signature: self.signer.as_ref().map(|_| Bytes::from(vec![0; 64])),
        };
        let frame_bytes = update_frame_len(&update);
        if frame_bytes > limit {
            return Err(Error::PolicyTooLarge {
                name: name.to_owned(),
                frame_bytes,
                limit,
            });
        }
        Ok(())
    }

    /// A version of a policy, through the cache.
    pub fn policy(
        &mut self,
        store: &dyn PolicyStore,
        name: &str,
        version: u64,
    ) -> Result<Option<Arc<Policy>>> {
        let key = (name.to_owned(), version);
        if let Some(hit) = self.versions.get(&key) {
            return Ok(hit.clone());
        }
        let found = store.fetch(name, version)?.map(Arc::new);
        if self.versions.len() >= Self::MAX_CACHED {
            self.versions.clear();
        }
        // Only found versions are cached: a missing one may be published later.
        if found.is_some() {
            self.versions.insert(key, found.clone());
        }
        Ok(found)
    }

    /// The update that moves a gateway running `running` (as reported in its `hello` or last
    /// status) to `version` of `name`. A patch is used only when the store still has the running
    /// version with the checksum the gateway reported, `force_full` is false and its frame fits
    /// the limit; the full document otherwise, if its frame fits the limit, else
    /// [`Error::PolicyTooLarge`].
    pub fn update_for(
        &mut self,
        store: &dyn PolicyStore,
        name: &str,
        version: u64,
        running: Option<&AppliedPolicy>,
        force_full: bool,
    ) -> Result<PolicyUpdate> {
        let target =
            self.policy(store, name, version)?
                .ok_or_else(|| crate::Error::UnknownVersion {
                    name: name.to_owned(),
                    version,
                })?;
        let patch = match running {
            Some(r) if !force_full && r.name == name && r.version < version => {
                self.patch(store, &target, r)?
            }
            _ => None,
        };
        let signature = self.signature(&target);
        if patch.is_some() {
            let update = assemble(&target, patch, signature.clone());
            if self.fits(&update).is_ok() {
                return Ok(update);
            }
            tracing::debug!(policy = %name, version, "the patch frame is over the limit; trying the full document");
        }
        let update = assemble(&target, None, signature);
        self.fits(&update)?;
        Ok(update)
    }

    /// `Ok` when the update's frame is within the limit, through the size cache.
    fn fits(&mut self, update: &PolicyUpdate) -> Result<()> {
        let Some(limit) = self.max_frame_bytes else {
            return Ok(());
        };
        let base = match &update.content {
            PolicyContent::Patch { base_version, .. } => Some(*base_version),
            PolicyContent::Full { .. } => None,
        };
        let key = (update.name.clone(), update.version, base);
        let frame_bytes = match self.frame_sizes.get(&key) {
            Some(len) => *len,
            None => {
                let len = update_frame_len(update);
                if self.frame_sizes.len() >= Self::MAX_CACHED {
                    self.frame_sizes.clear();
                }
                self.frame_sizes.insert(key, len);
                len
            }
        };
        if frame_bytes > limit {
            return Err(Error::PolicyTooLarge {
                name: update.name.clone(),
                frame_bytes,
                limit,
            });
        }
        Ok(())
    }

    fn patch(
        &mut self,
        store: &dyn PolicyStore,
        target: &Policy,
        running: &AppliedPolicy,
    ) -> Result<Option<(u64, Value)>> {
        let Some(base) = self.policy(store, &target.name, running.version)? else {
            return Ok(None);
        };
        if base.checksum != running.checksum {
            return Ok(None);
        }
        let key = (target.name.clone(), base.version, target.version);
        if let Some(hit) = self.patches.get(&key) {
            return Ok(hit.clone().map(|ops| (base.version, ops)));
        }
        let patch = patch_if_smaller(&base, target);
        if self.patches.len() >= Self::MAX_CACHED {
            self.patches.clear();
        }
        self.patches
            .insert(key, patch.as_ref().map(|(_, ops)| ops.clone()));
        Ok(patch)
    }

    fn signature(&mut self, target: &Policy) -> Option<Bytes> {
        let signer = self.signer.as_ref()?;
        let key = (target.name.clone(), target.version);
        if let Some(sig) = self.signatures.get(&key) {
            return Some(sig.clone());
        }
        let sig = signer.sign(&target.checksum);
        if self.signatures.len() >= Self::MAX_CACHED {
            self.signatures.clear();
        }
        self.signatures.insert(key, sig.clone());
        Some(sig)
    }
}

#[cfg(test)]
mod tests {
    use gateway_proto::{Encoding, Limits, decode_frame};
    use serde_json::json;

    use super::*;
    use crate::SqlitePolicyStore;

    fn running(policy: &Policy) -> AppliedPolicy {
        AppliedPolicy {
            name: policy.name.clone(),
            version: policy.version,
            checksum: policy.checksum.clone(),
        }
    }

    #[test]
    fn the_frame_length_is_what_a_gateway_measures() {
        let policy = Policy::new("fw", 3, json!({"pad": "é".repeat(500)}), 0, "ann", "").unwrap();
        let signer = PolicySigner::from_bytes(&[3; 32]);
        let update = build_update(&policy, None, Some(&signer));
        let len = update_frame_len(&update);
        let frame = ControlFrame::PolicyUpdate(update);
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let bytes = frame.encode(encoding);
            assert!(bytes.len() <= len);
            let exact = Limits {
                max_frame_bytes: len,
                ..Limits::default()
            };
            decode_frame(&bytes, encoding, &exact).unwrap();
        }
        let one_less = Limits {
            max_frame_bytes: len - 1,
            ..Limits::default()
        };
        assert!(
            [Encoding::Json, Encoding::Protobuf]
                .iter()
                .any(|e| decode_frame(&frame.encode(*e), *e, &one_less).is_err()),
            "the larger encoding is exactly at the limit"
        );
    }

    #[test]
    fn a_patch_over_the_limit_falls_back_to_the_full_document_if_that_fits() {
        // Documents where the patch is a little smaller than the document, so the patch frame
        // (with its base version and operation fields) is larger than the full one.
        let store = SqlitePolicyStore::open_in_memory().unwrap();
        let found = (0..80).find_map(|k| {
            let name = format!("fw-{k}");
            let a = json!({"keep": "k".repeat(k), "b": "x".repeat(300)});
            let b = json!({"keep": "k".repeat(k), "b": "y".repeat(300)});
            let v1 = store
                .publish(&name, a, "ann", "", 0)
                .unwrap()
                .policy()
                .clone();
            let v2 = store
                .publish(&name, b, "ann", "", 0)
                .unwrap()
                .policy()
                .clone();
            let patch = build_update(&v2, Some(&v1), None);
            let full = build_update(&v2, None, None);
            let is_patch = matches!(patch.content, PolicyContent::Patch { .. });
            (is_patch && update_frame_len(&patch) > update_frame_len(&full))
                .then(|| (v1, v2, update_frame_len(&full)))
        });
        let (v1, v2, full_len) = found.expect("such documents exist");
        let mut planner = UpdatePlanner::new(None);
        let unlimited = planner
            .update_for(&store, &v2.name, 2, Some(&running(&v1)), false)
            .unwrap();
        assert!(matches!(unlimited.content, PolicyContent::Patch { .. }));

        let mut planner = UpdatePlanner::new(None).with_max_frame_bytes(full_len);
        let update = planner
            .update_for(&store, &v2.name, 2, Some(&running(&v1)), false)
            .unwrap();
        assert!(matches!(update.content, PolicyContent::Full { .. }));
        assert!(update_frame_len(&update) <= full_len);

        let mut planner = UpdatePlanner::new(None).with_max_frame_bytes(full_len - 1);
        match planner.update_for(&store, &v2.name, 2, Some(&running(&v1)), false) {
            Err(Error::PolicyTooLarge {
                frame_bytes, limit, ..
            }) => assert_eq!((frame_bytes, limit), (full_len, full_len - 1)),
            other => panic!("expected PolicyTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_document_is_checked_before_it_is_published() {
        let signer = PolicySigner::from_bytes(&[3; 32]);
        let planner = UpdatePlanner::new(Some(signer.clone())).with_max_frame_bytes(2000);
        planner
            .check_document("fw", &json!({"pad": "x".repeat(1500)}))
            .unwrap();
        let e = planner
            .check_document("fw", &json!({"pad": "x".repeat(2000)}))
            .unwrap_err();
        assert!(
            matches!(e, Error::PolicyTooLarge { limit: 2000, .. }),
            "{e}"
        );
        assert_eq!(e.code(), gateway_proto::ErrorCode::PayloadTooLarge);
        // The estimate is never below the real frame: the largest version, a signature.
        let store = SqlitePolicyStore::open_in_memory().unwrap();
        let mut doc_len = 1800;
        loop {
            let document = json!({"pad": "x".repeat(doc_len)});
            if planner.check_document("fw", &document).is_ok() {
                store.publish("fw", document, "ann", "", 0).unwrap();
                break;
            }
            doc_len -= 1;
        }
        let mut planner = UpdatePlanner::new(Some(signer)).with_max_frame_bytes(2000);
        let update = planner.update_for(&store, "fw", 1, None, false).unwrap();
        let len = update_frame_len(&update);
        assert!(len <= 2000 && len > 1950, "{len}");
        // Without a limit nothing is refused.
        UpdatePlanner::new(None)
            .check_document("fw", &json!({"pad": "x".repeat(2_000_000)}))
            .unwrap();
    }
}

//! Building the `policy_update` a gateway needs: a patch against the version it runs when the
//! server still has that exact version, the full document otherwise, signed when a key is set.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_proto::{AppliedPolicy, Bytes, PolicyContent, PolicyUpdate};
use serde_json::Value;

use super::PolicyStore;
use crate::{Policy, PolicySigner, Result, diff};

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
/// read from the store, each (base, target) patch computed and each version signed only once.
/// Versions are immutable, so cached entries never go stale; the caches are cleared when they
/// pass [`UpdatePlanner::MAX_CACHED`] entries.
#[derive(Debug)]
pub struct UpdatePlanner {
    signer: Option<PolicySigner>,
    versions: HashMap<(String, u64), Option<Arc<Policy>>>,
    signatures: HashMap<(String, u64), Bytes>,
    patches: HashMap<(String, u64, u64), Option<Value>>,
}

impl UpdatePlanner {
    /// Entries per cache before it is cleared.
    pub const MAX_CACHED: usize = 1024;

    /// A planner signing with `signer`, if any.
    pub fn new(signer: Option<PolicySigner>) -> Self {
        UpdatePlanner {
            signer,
            versions: HashMap::new(),
            signatures: HashMap::new(),
            patches: HashMap::new(),
        }
    }

    /// The signer, if updates are signed.
    pub fn signer(&self) -> Option<&PolicySigner> {
        self.signer.as_ref()
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
    /// version with the checksum the gateway reported and `force_full` is false.
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
        Ok(assemble(&target, patch, signature))
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

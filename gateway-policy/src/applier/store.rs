//! Where the gateway keeps the policies it applied.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result, validate_name, verify_checksum};

const SUFFIX: &str = ".policy.json";
const TMP_SUFFIX: &str = ".policy.json.tmp";

/// A policy as the gateway persists it: what was applied, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// Policy name.
    pub name: String,
    /// Version applied.
    pub version: u64,
    /// Checksum of `document`.
    pub checksum: String,
    /// The full document (patches are stored applied, never as patches).
    pub document: Value,
    /// The server's Ed25519 signature over the checksum, hex, when the update carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When it was applied, milliseconds since the Unix epoch.
    pub applied_at: i64,
}

/// Storage of applied policies behind a trait, so the applier can run on files, SQLite or memory.
///
/// Implementations must keep the invariant described on [`FileAppliedStore`]: a save is atomic
/// per name, so a crash leaves the previous or the new policy, never a mix.
pub trait AppliedPolicyStore: Send {
    /// Every stored policy. One damaged entry is one `Err` item (naming the file or row), never a
    /// reason to fail the whole load; the outer `Err` is for a store that cannot be read at all.
    fn load_all(&self) -> Result<Vec<Result<StoredPolicy>>>;

    /// Persist `policy`, replacing the stored one of the same name, atomically.
    fn save(&mut self, policy: &StoredPolicy) -> Result<()>;
}

/// The default store: one JSON file per policy in a directory, replaced by write-temp + fsync +
/// rename.
///
///
/// # Invariant
/// After a crash at any moment — power loss or `kill -9` in the middle of [`AppliedPolicyStore::save`]
/// — [`AppliedPolicyStore::load_all`] returns, for every name, either the policy saved before or the
/// one being saved, complete. Never a mix, never a truncated document.
///
/// # On-disk layout of [`FileAppliedStore`]
/// One directory, one file per policy name: `<name>.policy.json` holding a [`StoredPolicy`] as
/// JSON. Names are restricted to `[A-Za-z0-9._-]` ([`crate::validate_name`]), so they are safe
/// file names. A save writes `<name>.policy.json.tmp`, flushes it to disk (`fsync`), renames it over
/// the old file (atomic on POSIX file systems) and flushes the directory, so the rename itself is
/// durable. A crash before the rename leaves the old file and a stray `.tmp` that the next
/// [`FileAppliedStore::open`] deletes; a crash after it leaves the new file. Every file carries the
/// checksum of its document, which [`AppliedPolicyStore::load_all`] verifies, so even a file damaged
/// by the disk is detected rather than run.
#[derive(Debug)]
pub struct FileAppliedStore {
    dir: PathBuf,
}

impl FileAppliedStore {
    /// Open (creating if needed) the store in `dir`, deleting temp files a crash left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            if file_name(&path).is_some_and(|n| n.ends_with(TMP_SUFFIX)) {
                tracing::info!(path = %path.display(), "removing a policy file left half-written by a crash");
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(FileAppliedStore { dir })
    }

    /// The directory this store writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the policy `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// First half of a save: write and fsync the temp file, without touching the live one.
    /// [`StagedWrite::commit`] finishes it. Dropping the stage without committing leaves the old
    /// policy in place (the temp file is removed on the next [`FileAppliedStore::open`]).
    ///
    /// `save` is `stage` + `commit`; the two halves are public so crash tests can stop a process
    /// between them.
    pub fn stage(&self, policy: &StoredPolicy) -> Result<StagedWrite> {
        validate_name(&policy.name)?;
        let bytes = serde_json::to_vec(policy).map_err(|e| Error::Corrupt {
            what: format!("policy {:?}", policy.name),
            reason: format!("cannot encode: {e}"),
        })?;
        let tmp = self.dir.join(format!("{}{TMP_SUFFIX}", policy.name));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        file.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        Ok(StagedWrite {
            tmp,
            target: self.path_of(&policy.name),
            dir: self.dir.clone(),
        })
    }

    fn load_file(path: &Path, expected_name: &str) -> Result<StoredPolicy> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let corrupt = |reason: String| Error::Corrupt {
            what: path.display().to_string(),
            reason,
        };
        let policy: StoredPolicy = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("not a stored policy: {e}")))?;
        if policy.name != expected_name {
            return Err(corrupt(format!(
                "holds policy {:?}, its file name says {expected_name:?}",
                policy.name
            )));
        }
        verify_checksum(&policy.document, &policy.checksum).map_err(|e| corrupt(e.to_string()))?;
        Ok(policy)
    }
}

/// A written and flushed temp file waiting to replace the live policy file.
#[derive(Debug)]
#[must_use = "a staged write changes nothing until it is committed"]
pub struct StagedWrite {
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
}

impl StagedWrite {
    /// Second half of a save: rename the temp file over the live one and flush the directory.
    pub fn commit(self) -> Result<()> {
        fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        // Make the rename itself durable. Opening a directory for fsync works on Unix; elsewhere
        // the rename is as durable as the platform makes it.
        if let Ok(dir) = File::open(&self.dir) {
            dir.sync_all().map_err(|e| Error::io(&self.dir, e))?;
        }
        Ok(())
    }
}

impl AppliedPolicyStore for FileAppliedStore {
    fn load_all(&self) -> Result<Vec<Result<StoredPolicy>>> {
        let mut out = Vec::new();
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            paths.push(entry.map_err(|e| Error::io(&self.dir, e))?.path());
        }
        paths.sort();
        for path in paths {
            let Some(name) = file_name(&path).and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            out.push(Self::load_file(&path, name));
        }
        Ok(out)
    }

    fn save(&mut self, policy: &StoredPolicy) -> Result<()> {
        self.stage(policy)?.commit()
    }
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

/// An in-memory store for tests and for gateways that do not persist policies. Clones share the
/// same contents, so a test can "restart" an applier on the same store.
#[derive(Debug, Clone, Default)]
pub struct MemoryAppliedStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    policies: BTreeMap<String, StoredPolicy>,
    fail_saves: bool,
}

impl MemoryAppliedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every following save fail (as a full disk would) until called with `false`.
    pub fn set_fail_saves(&self, fail: bool) {
        self.lock().fail_saves = fail;
    }

    /// Put a policy in the store directly, bypassing the applier (to simulate what an older
    /// release persisted).
    pub fn insert(&self, policy: StoredPolicy) {
        self.lock().policies.insert(policy.name.clone(), policy);
    }

    /// The stored policy of this name.
    pub fn get(&self, name: &str) -> Option<StoredPolicy> {
        self.lock().policies.get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AppliedPolicyStore for MemoryAppliedStore {
    fn load_all(&self) -> Result<Vec<Result<StoredPolicy>>> {
        Ok(self.lock().policies.values().cloned().map(Ok).collect())
    }

    fn save(&mut self, policy: &StoredPolicy) -> Result<()> {
        let mut inner = self.lock();
        if inner.fail_saves {
            return Err(Error::io(
                "memory",
                std::io::Error::other("saves are set to fail"),
            ));
        }
        inner.policies.insert(policy.name.clone(), policy.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(name: &str, version: u64, doc: Value) -> StoredPolicy {
        StoredPolicy {
            name: name.into(),
            version,
            checksum: crate::checksum(&doc).unwrap(),
            document: doc,
            signature: None,
            applied_at: 1,
        }
    }

    #[test]
    fn save_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileAppliedStore::open(dir.path()).unwrap();
        store.save(&stored("fw", 1, json!({"a": 1}))).unwrap();
        store.save(&stored("fw", 2, json!({"a": 2}))).unwrap();
        store.save(&stored("dns", 7, json!([1]))).unwrap();
        let loaded: Vec<_> = store
            .load_all()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            loaded,
            vec![
                stored("dns", 7, json!([1])),
                stored("fw", 2, json!({"a": 2}))
            ]
        );
    }

    #[test]
    fn an_uncommitted_stage_leaves_the_old_policy_and_is_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileAppliedStore::open(dir.path()).unwrap();
        store.save(&stored("fw", 1, json!({"a": 1}))).unwrap();
        let staged = store.stage(&stored("fw", 2, json!({"a": 2}))).unwrap();
        drop(staged);
        let reopened = FileAppliedStore::open(dir.path()).unwrap();
        let loaded = reopened.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].as_ref().unwrap().version, 1);
        assert!(!dir.path().join("fw.policy.json.tmp").exists());
    }

    #[test]
    fn damaged_files_are_reported_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileAppliedStore::open(dir.path()).unwrap();
        store.save(&stored("good", 1, json!({"a": 1}))).unwrap();
        fs::write(store.path_of("trunc"), b"{\"name\":\"trunc\",\"vers").unwrap();
        let mut edited = stored("edited", 1, json!({"a": 1}));
        edited.document = json!({"a": 2});
        fs::write(
            store.path_of("edited"),
            serde_json::to_vec(&edited).unwrap(),
        )
        .unwrap();
        fs::write(
            store.path_of("renamed"),
            serde_json::to_vec(&stored("other", 1, json!(1))).unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join("README"), b"not a policy").unwrap();

        let loaded = store.load_all().unwrap();
        let ok: Vec<_> = loaded.iter().filter_map(|r| r.as_ref().ok()).collect();
        let bad: Vec<_> = loaded.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].name, "good");
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad.iter().all(|e| matches!(e, Error::Corrupt { .. })));
    }

    #[test]
    fn names_that_are_not_file_safe_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileAppliedStore::open(dir.path()).unwrap();
        let err = store.stage(&stored("../escape", 1, json!(1))).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }));
    }

    #[test]
    fn memory_store_can_be_told_to_fail() {
        let mut store = MemoryAppliedStore::new();
        store.set_fail_saves(true);
        assert!(store.save(&stored("a", 1, json!(1))).is_err());
        store.set_fail_saves(false);
        store.save(&stored("a", 1, json!(1))).unwrap();
        assert_eq!(store.get("a").unwrap().version, 1);
    }
}

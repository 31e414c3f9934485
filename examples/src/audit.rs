//! The server's audit log: who did what, kept in its own SQLite table (`audit.db`) so it is
//! never pruned with the event stream's history, and readable per tenant through
//! `GET /v1/audit`.
//!
//! Entries come from two places: the policy service reports its operator actions (failures
//! too), and the audit layer around the command routes records every successful command
//! enqueue or cancel. Both use the shape of `gateway_policy::AuditEvent`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The operator (the token's subject).
    pub actor: String,
    /// The operator's tenant.
    pub tenant: String,
    /// What was attempted, e.g. `publish` or `POST /v1/gateways/gw-1/commands`.
    pub action: String,
    /// What it was attempted on.
    pub target: Value,
    /// `ok`, or the error code it failed with.
    pub result: String,
    /// What came of it.
    pub detail: Value,
}

/// A stored entry with its id and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAuditEntry {
    /// Increasing id; pass as `after` to read on.
    pub id: i64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// The entry.
    pub entry: AuditEntry,
}

/// The audit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    conn: Arc<Mutex<Connection>>,
}

impl AuditLog {
    /// Open (or create) the log at `path`.
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
                 tenant TEXT NOT NULL, entry TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, id);",
        )
        .context("creating the audit table")?;
        Ok(AuditLog {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Append an entry (blocking: call from a blocking context or `record`).
    pub fn record_blocking(&self, at_ms: i64, entry: &AuditEntry) -> anyhow::Result<()> {
        let text = serde_json::to_string(entry)?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO audit (at_ms, tenant, entry) VALUES (?1, ?2, ?3)",
            params![at_ms, entry.tenant, text],
        )
        .context("writing an audit entry")?;
        Ok(())
    }

    /// Append an entry off the async workers; a failure is logged (the action itself already
    /// happened and must not be reported as failed).
    pub async fn record(&self, at_ms: i64, entry: AuditEntry) {
        let log = self.clone();
        let written = tokio::task::spawn_blocking(move || log.record_blocking(at_ms, &entry)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not write an audit entry"),
            Err(e) => tracing::error!(error = %e, "the audit writer panicked"),
        }
    }

    /// Entries of `tenant` after id `after`, oldest first, at most `limit`.
    pub fn list_blocking(
        &self,
        tenant: &str,
        after: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredAuditEntry>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = conn.prepare_cached(
            "SELECT id, at_ms, entry FROM audit WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = statement.query_map(params![tenant, after, limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, at_ms, text) = row?;
            let entry = serde_json::from_str(&text)
                .with_context(|| format!("audit entry {id} is damaged"))?;
            entries.push(StoredAuditEntry { id, at_ms, entry });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(tenant: &str, action: &str) -> AuditEntry {
        AuditEntry {
            actor: "ann".into(),
            tenant: tenant.into(),
            action: action.into(),
            target: json!("gw-1"),
            result: "ok".into(),
            detail: json!({}),
        }
    }

    #[test]
    fn entries_are_kept_per_tenant_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open(&path).unwrap();
        log.record_blocking(1, &entry("acme", "publish")).unwrap();
        log.record_blocking(2, &entry("globex", "publish")).unwrap();
        log.record_blocking(3, &entry("acme", "assign")).unwrap();
        drop(log);

        let log = AuditLog::open(&path).unwrap();
        let acme = log.list_blocking("acme", 0, 10).unwrap();
        let actions: Vec<_> = acme.iter().map(|e| e.entry.action.as_str()).collect();
        assert_eq!(actions, ["publish", "assign"]);
        let after_first = log.list_blocking("acme", acme[0].id, 10).unwrap();
        assert_eq!(after_first.len(), 1);
        assert_eq!(log.list_blocking("globex", 0, 10).unwrap().len(), 1);
        assert_eq!(log.list_blocking("acme", 0, 1).unwrap().len(), 1);
    }
}

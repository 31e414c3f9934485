//! [`PolicyStore`] on SQLite.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::Value;

use super::{
    Assignment, GatewayInfo, PolicyStore, PublishOutcome, RolloutId, RolloutRecord, Target,
};
use crate::{Error, Policy, PolicyVersionInfo, Result, checksum, validate_name};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS policy_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    document TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    author TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_assignments (
    policy TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    version INTEGER,
    assigned_at INTEGER NOT NULL,
    author TEXT NOT NULL,
    tenant TEXT,
    PRIMARY KEY (policy, target_kind, target_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_gateways (
    id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    groups TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_rollouts (
    id INTEGER PRIMARY KEY NOT NULL,
    policy TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    staging TEXT NOT NULL,
    aborted TEXT
);
CREATE TABLE IF NOT EXISTS policy_rollout_targets (
    rollout INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    released INTEGER NOT NULL,
    PRIMARY KEY (rollout, gateway)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_owners (
    name TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// The SQLite [`PolicyStore`]: one database file, WAL journal.
///
/// # Schema (`PRAGMA user_version = 1`)
/// * `policy_versions(name, version, checksum, document, created_at, author, message)`, primary
///   key `(name, version)`: one row per version, never updated. `document` is JSON text; its
///   checksum is verified on every read, so a damaged row is reported, never served.
/// * `policy_assignments(policy, target_kind, target_id, version, assigned_at, author, tenant)`,
///   primary key `(policy, target_kind, target_id)`; `version` is NULL for "follow the latest";
///   `tenant` is the tenant the assignment belongs to (added to older files by `ALTER TABLE`
///   on open, without a schema version change; their rows get the tenant of a tenant target,
///   the tenant prefix of a `tenant/group` group target, or the recorded tenant of a gateway
///   target, and an empty tenant, with a warning, when none can be told).
/// * `policy_gateways(id, tenant, groups)`: membership, `groups` a JSON array.
/// * `policy_rollouts(id, policy, version, started_at, staging, aborted)` and
///   `policy_rollout_targets(rollout, gateway, released)`: rollouts survive a restart, so a
///   staged rollout keeps its pace and an aborted one stays aborted.
/// * `policy_owners(name, tenant)`: which tenant owns a policy name (added without a schema
///   version change: `CREATE TABLE IF NOT EXISTS` adds it to older files, and older releases
///   ignore it).
///
/// Publishing runs in an `IMMEDIATE` transaction, so concurrent publishers (threads or processes
/// sharing the file) never hand out the same version.
#[derive(Debug)]
pub struct SqlitePolicyStore {
    conn: Mutex<Connection>,
}

impl SqlitePolicyStore {
    /// Open (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open(path.as_ref())?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// A private in-memory database (tests, benches, demos).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > 1 {
            return Err(Error::Corrupt {
                what: "policy database".into(),
                reason: format!(
                    "schema version {version} is newer than this release understands (1)"
                ),
            });
        }
        conn.execute_batch(SCHEMA)?;
        migrate_assignment_tenants(&conn)?;
        Ok(SqlitePolicyStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Files written before assignments carried a tenant: add the column and fill it in.
fn migrate_assignment_tenants(conn: &Connection) -> Result<()> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('policy_assignments') WHERE name = 'tenant'")?
        .exists([])?;
    if !has_column {
        conn.execute("ALTER TABLE policy_assignments ADD COLUMN tenant TEXT", [])?;
    }
    let legacy: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT policy, target_kind, target_id FROM policy_assignments WHERE tenant IS NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (policy, kind, id) in legacy {
        let tenant: Option<String> = match kind.as_str() {
            "tenant" => Some(id.clone()),
            // The service stores group `eu` of tenant `acme` as `acme/eu`.
            "group" => id.rsplit_once('/').map(|(tenant, _)| tenant.to_owned()),
            "gateway" => conn
                .query_row(
                    "SELECT tenant FROM policy_gateways WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?,
            _ => None,
        };
        let tenant = tenant.unwrap_or_else(|| {
            tracing::warn!(
                %policy, target_kind = %kind, target_id = %id,
                "an assignment from an older release names no tenant; it reaches no gateway until it is made again"
            );
            String::new()
        });
        conn.execute(
            "UPDATE policy_assignments SET tenant = ?4 WHERE policy = ?1 AND target_kind = ?2 AND target_id = ?3",
            params![policy, kind, id, tenant],
        )?;
    }
    Ok(())
}

fn to_i64(value: u64, what: &'static str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid(what, "must be below 2^63"))
}

const POLICY_COLUMNS: &str = "name, version, checksum, document, created_at, author, message";

fn read_policy(row: &Row<'_>) -> rusqlite::Result<(Policy, String)> {
    let version: i64 = row.get(1)?;
    let document_text: String = row.get(3)?;
    Ok((
        Policy {
            name: row.get(0)?,
            version: version as u64,
            checksum: row.get(2)?,
            document: Value::Null,
            created_at: row.get(4)?,
            author: row.get(5)?,
            message: row.get(6)?,
        },
        document_text,
    ))
}

/// Decode a row's document and check it against its checksum.
fn finish_policy((mut policy, text): (Policy, String)) -> Result<Policy> {
    let corrupt = |reason: String| Error::Corrupt {
        what: format!("policy {:?} version {}", policy.name, policy.version),
        reason,
    };
    let document: Value =
        serde_json::from_str(&text).map_err(|e| corrupt(format!("document is not JSON: {e}")))?;
    let actual = checksum(&document)?;
    if actual != policy.checksum {
        return Err(corrupt(format!(
            "document hashes to {actual}, the row says {}",
            policy.checksum
        )));
    }
    policy.document = document;
    Ok(policy)
}

impl PolicyStore for SqlitePolicyStore {
    fn publish(
        &self,
        name: &str,
        document: Value,
        author: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<PublishOutcome> {
        validate_name(name)?;
        let sum = checksum(&document)?;
        let text = serde_json::to_string(&document)
            .map_err(|e| Error::Canonical(format!("cannot encode the document: {e}")))?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let latest = tx
            .query_row(
                &format!(
                    "SELECT {POLICY_COLUMNS} FROM policy_versions WHERE name = ?1 ORDER BY version DESC LIMIT 1"
                ),
                params![name],
                read_policy,
            )
            .optional()?;
        if let Some((latest, latest_text)) = latest
            && latest.checksum == sum
        {
            drop(tx);
            let current = finish_policy((latest, latest_text))?;
            tracing::info!(policy = %name, version = current.version, "publish of an identical document: nothing created");
            metrics::counter!("gateway_policy_publishes_total", "result" => "unchanged")
                .increment(1);
            return Ok(PublishOutcome::Unchanged(current));
        }
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM policy_versions WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO policy_versions (name, version, checksum, document, created_at, author, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![name, next, sum, text, now_ms, author, message],
        )?;
        tx.commit()?;
        tracing::info!(policy = %name, version = next, checksum = %sum, %author, "policy version published");
        metrics::counter!("gateway_policy_publishes_total", "result" => "created").increment(1);
        Ok(PublishOutcome::Created(Policy {
            name: name.to_owned(),
            version: next as u64,
            checksum: sum,
            document,
            created_at: now_ms,
            author: author.to_owned(),
            message: message.to_owned(),
        }))
    }

    fn latest(&self, name: &str) -> Result<Option<Policy>> {
        let row = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {POLICY_COLUMNS} FROM policy_versions WHERE name = ?1 ORDER BY version DESC LIMIT 1"
                ),
                params![name],
                read_policy,
            )
            .optional()?;
        row.map(finish_policy).transpose()
    }

    fn fetch(&self, name: &str, version: u64) -> Result<Option<Policy>> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let row = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {POLICY_COLUMNS} FROM policy_versions WHERE name = ?1 AND version = ?2"
                ),
                params![name, version],
                read_policy,
            )
            .optional()?;
        row.map(finish_policy).transpose()
    }

    fn history(&self, name: &str) -> Result<Vec<PolicyVersionInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, version, checksum, created_at, author, message
             FROM policy_versions WHERE name = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![name], |row| {
            Ok(PolicyVersionInfo {
                name: row.get(0)?,
                version: row.get::<_, i64>(1)? as u64,
                checksum: row.get(2)?,
                created_at: row.get(3)?,
                author: row.get(4)?,
                message: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn latest_versions(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, MAX(version) FROM policy_versions GROUP BY name ORDER BY name",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_assignment(&self, a: &Assignment) -> Result<()> {
        validate_name(&a.policy)?;
        let version = a.version.map(|v| to_i64(v, "version")).transpose()?;
        self.conn().execute(
            "INSERT OR REPLACE INTO policy_assignments (policy, target_kind, target_id, version, assigned_at, author, tenant)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![a.policy, a.target.kind(), a.target.id(), version, a.assigned_at, a.author, a.tenant],
        )?;
        Ok(())
    }

    fn remove_assignment(&self, policy: &str, target: &Target) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM policy_assignments WHERE policy = ?1 AND target_kind = ?2 AND target_id = ?3",
            params![policy, target.kind(), target.id()],
        )?;
        Ok(n > 0)
    }

    fn assignments(&self) -> Result<Vec<Assignment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT policy, target_kind, target_id, version, assigned_at, author, tenant
             FROM policy_assignments ORDER BY policy, target_kind, target_id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (policy, kind, id, version, assigned_at, author, tenant) = row?;
            let target = Target::from_parts(&kind, id).ok_or_else(|| Error::Corrupt {
                what: format!("assignment of policy {policy:?}"),
                reason: format!("unknown target kind {kind:?}"),
            })?;
            out.push(Assignment {
                policy,
                tenant: tenant.unwrap_or_default(),
                target,
                version: version.map(|v| v as u64),
                assigned_at,
                author,
            });
        }
        Ok(out)
    }

    fn put_gateway(&self, gateway: &GatewayInfo) -> Result<()> {
        let groups = serde_json::to_string(&gateway.groups)
            .map_err(|e| Error::invalid("groups", e.to_string()))?;
        self.conn().execute(
            "INSERT OR REPLACE INTO policy_gateways (id, tenant, groups) VALUES (?1, ?2, ?3)",
            params![gateway.id, gateway.tenant, groups],
        )?;
        Ok(())
    }

    fn remove_gateway(&self, gateway_id: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM policy_gateways WHERE id = ?1",
            params![gateway_id],
        )?;
        Ok(n > 0)
    }

    fn gateways(&self) -> Result<Vec<GatewayInfo>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, tenant, groups FROM policy_gateways ORDER BY id")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, tenant, groups) = row?;
            let groups = serde_json::from_str(&groups).map_err(|e| Error::Corrupt {
                what: format!("gateway {id:?}"),
                reason: format!("groups are not a JSON array of strings: {e}"),
            })?;
            out.push(GatewayInfo { id, tenant, groups });
        }
        Ok(out)
    }

    fn insert_rollout(&self, rollout: &RolloutRecord) -> Result<()> {
        let staging = serde_json::to_string(&rollout.staging)
            .map_err(|e| Error::invalid("staging", e.to_string()))?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO policy_rollouts (id, policy, version, started_at, staging, aborted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_i64(rollout.id, "rollout")?,
                rollout.policy,
                to_i64(rollout.version, "version")?,
                rollout.started_at_ms,
                staging,
                rollout.aborted
            ],
        )?;
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO policy_rollout_targets (rollout, gateway, released) VALUES (?1, ?2, ?3)",
            )?;
            for (gateway, released) in &rollout.targets {
                insert.execute(params![rollout.id as i64, gateway, *released])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn mark_released(&self, rollout: RolloutId, gateways: &[&str]) -> Result<()> {
        let rollout = to_i64(rollout, "rollout")?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut update = tx.prepare(
                "UPDATE policy_rollout_targets SET released = 1 WHERE rollout = ?1 AND gateway = ?2",
            )?;
            for gateway in gateways {
                update.execute(params![rollout, gateway])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn set_rollout_aborted(&self, rollout: RolloutId, reason: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE policy_rollouts SET aborted = ?2 WHERE id = ?1",
            params![to_i64(rollout, "rollout")?, reason],
        )?;
        Ok(())
    }

    fn rollouts(&self) -> Result<Vec<RolloutRecord>> {
        let conn = self.conn();
        let mut headers = conn.prepare(
            "SELECT id, policy, version, started_at, staging, aborted FROM policy_rollouts ORDER BY id",
        )?;
        let rows = headers.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut targets = conn.prepare(
            "SELECT gateway, released FROM policy_rollout_targets WHERE rollout = ?1 ORDER BY gateway",
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, policy, version, started_at_ms, staging, aborted) = row?;
            let staging = serde_json::from_str(&staging).map_err(|e| Error::Corrupt {
                what: format!("rollout {id}"),
                reason: format!("staging is not valid: {e}"),
            })?;
            let list = targets
                .query_map(params![id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(RolloutRecord {
                id: id as u64,
                policy,
                version: version as u64,
                started_at_ms,
                staging,
                aborted,
                targets: list,
            });
        }
        Ok(out)
    }

    fn delete_rollouts(&self, rollouts: &[RolloutId]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for id in rollouts {
            let id = to_i64(*id, "rollout")?;
            tx.execute(
                "DELETE FROM policy_rollout_targets WHERE rollout = ?1",
                params![id],
            )?;
            tx.execute("DELETE FROM policy_rollouts WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_gateway_from_rollouts(&self, gateway_id: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM policy_rollout_targets WHERE gateway = ?1",
            params![gateway_id],
        )?;
        Ok(())
    }

    fn set_policy_owner(&self, name: &str, tenant: &str) -> Result<()> {
        validate_name(name)?;
        self.conn().execute(
            "INSERT OR REPLACE INTO policy_owners (name, tenant) VALUES (?1, ?2)",
            params![name, tenant],
        )?;
        Ok(())
    }

    fn policy_owners(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, tenant FROM policy_owners ORDER BY name")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> SqlitePolicyStore {
        SqlitePolicyStore::open_in_memory().unwrap()
    }

    #[test]
    fn versions_count_up_and_identical_publishes_create_nothing() {
        let s = store();
        let v1 = s
            .publish("fw", json!({"a": 1}), "ann", "first", 10)
            .unwrap();
        assert!(v1.created());
        assert_eq!(v1.policy().version, 1);
        // Same document, other key order and number spelling: same checksum, nothing created.
        let again = s
            .publish(
                "fw",
                serde_json::from_str(r#"{ "a" : 1.0 }"#).unwrap(),
                "bob",
                "again",
                11,
            )
            .unwrap();
        assert_eq!(again, PublishOutcome::Unchanged(v1.policy().clone()));
        let v2 = s
            .publish("fw", json!({"a": 2}), "bob", "second", 12)
            .unwrap();
        assert_eq!(v2.policy().version, 2);
        assert_eq!(s.history("fw").unwrap().len(), 2);
        assert_eq!(s.latest("fw").unwrap().unwrap(), *v2.policy());
        assert_eq!(s.fetch("fw", 1).unwrap().unwrap(), *v1.policy());
        assert_eq!(s.fetch("fw", 3).unwrap(), None);
        assert_eq!(s.latest_versions().unwrap(), vec![("fw".into(), 2)]);
    }

    #[test]
    fn rollback_publishes_the_old_document_as_a_new_version() {
        let s = store();
        s.publish("fw", json!({"mode": "audit"}), "ann", "v1", 1)
            .unwrap();
        s.publish("fw", json!({"mode": "enforce"}), "ann", "v2", 2)
            .unwrap();
        let back = s.rollback("fw", 1, "bob", "", 3).unwrap();
        let p = back.policy();
        assert!(back.created());
        assert_eq!(p.version, 3);
        assert_eq!(p.document, json!({"mode": "audit"}));
        assert_eq!(
            (p.author.as_str(), p.message.as_str()),
            ("bob", "rollback to version 1")
        );
        let history = s.history("fw").unwrap();
        assert_eq!(
            history.iter().map(|h| h.version).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(history[2].checksum, history[0].checksum);
        // Rolling back to what is already current creates nothing.
        assert!(!s.rollback("fw", 1, "bob", "again", 4).unwrap().created());
    }

    #[test]
    fn diff_between_versions_and_unknown_versions() {
        let s = store();
        s.publish("fw", json!({"a": 1}), "ann", "v1", 1).unwrap();
        s.publish("fw", json!({"a": 2, "b": 3}), "ann", "v2", 2)
            .unwrap();
        let patch = s.diff("fw", 1, 2).unwrap();
        assert_eq!(
            crate::apply_patch(&json!({"a": 1}), &patch).unwrap(),
            json!({"a": 2, "b": 3})
        );
        assert!(matches!(
            s.diff("fw", 1, 9),
            Err(Error::UnknownVersion { version: 9, .. })
        ));
        assert!(matches!(
            s.diff("nope", 1, 2),
            Err(Error::UnknownPolicy { .. })
        ));
        assert!(matches!(
            s.rollback("fw", 7, "a", "", 3),
            Err(Error::UnknownVersion { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused_before_touching_the_database() {
        let s = store();
        assert!(matches!(
            s.publish("../x", json!({}), "a", "m", 1),
            Err(Error::InvalidName { .. })
        ));
        assert!(s.latest_versions().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_row_is_reported_not_served() {
        let s = store();
        s.publish("fw", json!({"a": 1}), "ann", "v1", 1).unwrap();
        s.conn()
            .execute("UPDATE policy_versions SET document = '{\"a\":2}'", [])
            .unwrap();
        assert!(matches!(s.fetch("fw", 1), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn assignments_and_gateways_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.db");
        {
            let s = SqlitePolicyStore::open(&path).unwrap();
            s.put_assignment(&Assignment {
                policy: "fw".into(),
                tenant: "acme".into(),
                target: Target::Group("acme/eu".into()),
                version: Some(2),
                assigned_at: 5,
                author: "ann".into(),
            })
            .unwrap();
            s.put_assignment(&Assignment {
                policy: "fw".into(),
                tenant: "acme".into(),
                target: Target::Tenant("acme".into()),
                version: None,
                assigned_at: 6,
                author: "ann".into(),
            })
            .unwrap();
            s.put_gateway(&GatewayInfo::new("gw-1", "acme").with_group("eu"))
                .unwrap();
            s.publish("fw", json!({"a": 1}), "ann", "v1", 1).unwrap();
        }
        let s = SqlitePolicyStore::open(&path).unwrap();
        let assignments = s.assignments().unwrap();
        assert_eq!(assignments.len(), 2);
        assert!(assignments.iter().any(|a| a.version == Some(2)));
        assert!(assignments.iter().all(|a| a.tenant == "acme"));
        assert_eq!(
            s.gateways().unwrap(),
            vec![GatewayInfo::new("gw-1", "acme").with_group("eu")]
        );
        assert!(
            s.remove_assignment("fw", &Target::Group("acme/eu".into()))
                .unwrap()
        );
        assert!(
            !s.remove_assignment("fw", &Target::Group("acme/eu".into()))
                .unwrap()
        );
        assert!(s.remove_gateway("gw-1").unwrap());
        assert_eq!(s.latest("fw").unwrap().unwrap().version, 1);
    }

    #[test]
    fn rollouts_round_trip_with_release_and_abort() {
        use crate::{AbortRule, StagedRollout};
        let s = store();
        let record = RolloutRecord {
            id: 7,
            policy: "fw".into(),
            version: 3,
            started_at_ms: 100,
            staging: StagedRollout {
                max_per_minute: Some(5),
                abort: Some(AbortRule {
                    rejected_percent: 20.0,
                    min_reported: 3,
                }),
                ..Default::default()
            },
            aborted: None,
            targets: vec![
                ("gw-a".into(), false),
                ("gw-b".into(), false),
                ("gw-c".into(), true),
            ],
        };
        s.insert_rollout(&record).unwrap();
        s.insert_rollout(&RolloutRecord {
            id: 8,
            targets: vec![],
            ..record.clone()
        })
        .unwrap();
        s.mark_released(7, &["gw-b"]).unwrap();
        s.set_rollout_aborted(7, "too many rejections").unwrap();
        let loaded = s.rollouts().unwrap();
        assert_eq!(loaded.iter().map(|r| r.id).collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(
            loaded[0],
            RolloutRecord {
                aborted: Some("too many rejections".into()),
                targets: vec![
                    ("gw-a".into(), false),
                    ("gw-b".into(), true),
                    ("gw-c".into(), true)
                ],
                ..record
            }
        );
        // A gateway that changed tenant leaves every rollout.
        s.remove_gateway_from_rollouts("gw-b").unwrap();
        assert_eq!(
            s.rollouts().unwrap()[0].targets,
            vec![("gw-a".into(), false), ("gw-c".into(), true)]
        );
        s.delete_rollouts(&[7]).unwrap();
        assert_eq!(s.rollouts().unwrap().len(), 1);
    }

    #[test]
    fn assignments_of_an_older_file_get_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.db");
        {
            // The assignments table as releases before tenant-scoped assignments wrote it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE policy_assignments (
                    policy TEXT NOT NULL, target_kind TEXT NOT NULL, target_id TEXT NOT NULL,
                    version INTEGER, assigned_at INTEGER NOT NULL, author TEXT NOT NULL,
                    PRIMARY KEY (policy, target_kind, target_id)) WITHOUT ROWID;
                 CREATE TABLE policy_gateways (id TEXT PRIMARY KEY NOT NULL, tenant TEXT NOT NULL,
                    groups TEXT NOT NULL) WITHOUT ROWID;
                 INSERT INTO policy_gateways VALUES ('gw-1', 'globex', '[]');
                 INSERT INTO policy_assignments VALUES
                    ('fw', 'tenant', 'acme', NULL, 1, 'ann'),
                    ('fw', 'group', 'acme/eu', NULL, 1, 'ann'),
                    ('fw', 'gateway', 'gw-1', 2, 1, 'gus'),
                    ('fw', 'gateway', 'gw-gone', 2, 1, 'gus'),
                    ('fw', 'group', 'lab', NULL, 1, 'ops');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = SqlitePolicyStore::open(&path).unwrap();
        let tenants: Vec<(String, String)> = s
            .assignments()
            .unwrap()
            .into_iter()
            .map(|a| (a.target.id().to_owned(), a.tenant))
            .collect();
        assert_eq!(
            tenants,
            vec![
                ("gw-1".into(), "globex".into()),
                ("gw-gone".into(), String::new()),
                ("acme/eu".into(), "acme".into()),
                ("lab".into(), String::new()),
                ("acme".into(), "acme".into()),
            ]
        );
        // New assignments keep the tenant they are given, and reopening changes nothing.
        s.put_assignment(&Assignment {
            policy: "dns".into(),
            tenant: "acme".into(),
            target: Target::Group("acme/lab".into()),
            version: None,
            assigned_at: 2,
            author: "ann".into(),
        })
        .unwrap();
        drop(s);
        let s = SqlitePolicyStore::open(&path).unwrap();
        assert_eq!(s.assignments().unwrap()[0].tenant, "acme");
        assert_eq!(s.assignments().unwrap().len(), 6);
    }

    #[test]
    fn policy_owners_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.db");
        {
            let s = SqlitePolicyStore::open(&path).unwrap();
            assert!(s.policy_owners().unwrap().is_empty());
            s.set_policy_owner("fw", "acme").unwrap();
            s.set_policy_owner("dns", "globex").unwrap();
            assert!(matches!(
                s.set_policy_owner("../x", "acme"),
                Err(Error::InvalidName { .. })
            ));
        }
        let s = SqlitePolicyStore::open(&path).unwrap();
        assert_eq!(
            s.policy_owners().unwrap(),
            vec![
                ("dns".into(), "globex".into()),
                ("fw".into(), "acme".into())
            ]
        );
    }
}

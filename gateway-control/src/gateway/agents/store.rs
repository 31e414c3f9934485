//! Where registrations outlive the process: the [`AgentStore`] trait and its SQLite
//! implementation.
//!
//! Only registrations are stored (what an agent announced, its tenant, when it registered and
//! was last seen). Presence is not: after a restart every agent is offline until its next
//! heartbeat. Pending commands are not either, on purpose: a command the control channel
//! handed over is journaled by the gateway's command journal, which reports a command cut
//! short by a crash as `failed` and never runs it twice — storing the agent's copy would
//! deliver it after the server was told it failed.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, params};

use super::registry::AgentRegistration;
use crate::Error;

/// Durable storage of agent registrations. Calls are synchronous and short; the
/// [`AgentService`](super::AgentService) runs them on tokio's blocking pool.
pub trait AgentStore: Send + 'static {
    /// Every stored registration.
    fn load(&mut self) -> Result<Vec<AgentRegistration>, Error>;
    /// Insert or replace the registration of `registration.agent_id`.
    fn save(&mut self, registration: &AgentRegistration) -> Result<(), Error>;
    /// Forget an agent. Forgetting an unknown agent is not an error.
    fn delete(&mut self, agent_id: &str) -> Result<(), Error>;
}

/// [`AgentStore`] in a SQLite file (WAL, `synchronous=NORMAL`: a saved registration survives
/// a crash of the process).
///
/// ```
/// use gateway_control::gateway::agents::{AgentRegistration, AgentStore, SqliteAgentStore};
/// let dir = tempfile::tempdir().unwrap();
/// let mut store = SqliteAgentStore::open(dir.path().join("agents.db")).unwrap();
/// store.save(&AgentRegistration {
///     agent_id: "pc-12-agent".into(),
///     tenant: "acme".into(),
///     kind: "endpoint".into(),
///     version: "1.0.0".into(),
///     hostname: "pc-12".into(),
///     capabilities: vec![],
///     attributes: Default::default(),
///     registered_at_ms: 1_750_000_000_000,
///     last_seen_ms: 1_750_000_000_000,
/// }).unwrap();
/// drop(store);
/// let mut reopened = SqliteAgentStore::open(dir.path().join("agents.db")).unwrap();
/// assert_eq!(reopened.load().unwrap()[0].hostname, "pc-12");
/// ```
#[derive(Debug)]
pub struct SqliteAgentStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    agent_id         TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    version          TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    capabilities     TEXT NOT NULL,
    attributes       TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL
);
";

impl SqliteAgentStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(Error::agent_store)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )
        .map_err(Error::agent_store)?;
        Self::with_connection(conn)
    }

    /// A store in memory (tests, or a gateway that should forget its agents on restart).
    pub fn in_memory() -> Result<Self, Error> {
        Self::with_connection(Connection::open_in_memory().map_err(Error::agent_store)?)
    }

    fn with_connection(conn: Connection) -> Result<Self, Error> {
        conn.execute_batch(SCHEMA).map_err(Error::agent_store)?;
        Ok(SqliteAgentStore { conn })
    }
}

fn corrupt(reason: String) -> Error {
    Error::CorruptStore {
        what: "agent registry",
        reason,
    }
}

impl AgentStore for SqliteAgentStore {
    fn load(&mut self) -> Result<Vec<AgentRegistration>, Error> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT agent_id, tenant, kind, version, hostname, capabilities, attributes, \
                 registered_at_ms, last_seen_ms FROM agents ORDER BY agent_id",
            )
            .map_err(Error::agent_store)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    AgentRegistration {
                        agent_id: row.get(0)?,
                        tenant: row.get(1)?,
                        kind: row.get(2)?,
                        version: row.get(3)?,
                        hostname: row.get(4)?,
                        capabilities: Vec::new(),
                        attributes: BTreeMap::new(),
                        registered_at_ms: row.get(7)?,
                        last_seen_ms: row.get(8)?,
                    },
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                ))
            })
            .map_err(Error::agent_store)?;
        let mut all = Vec::new();
        for row in rows {
            let (mut registration, capabilities, attributes) = row.map_err(Error::agent_store)?;
            registration.capabilities = serde_json::from_str(&capabilities).map_err(|e| {
                corrupt(format!(
                    "capabilities of agent `{}`: {e}",
                    registration.agent_id
                ))
            })?;
            registration.attributes = serde_json::from_str(&attributes).map_err(|e| {
                corrupt(format!(
                    "attributes of agent `{}`: {e}",
                    registration.agent_id
                ))
            })?;
            all.push(registration);
        }
        Ok(all)
    }

    fn save(&mut self, r: &AgentRegistration) -> Result<(), Error> {
        // A Vec of strings and a string map always serialize.
        let capabilities = serde_json::to_string(&r.capabilities).unwrap_or_default();
        let attributes = serde_json::to_string(&r.attributes).unwrap_or_default();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO agents (agent_id, tenant, kind, version, hostname, \
                 capabilities, attributes, registered_at_ms, last_seen_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.agent_id,
                    r.tenant,
                    r.kind,
                    r.version,
                    r.hostname,
                    capabilities,
                    attributes,
                    r.registered_at_ms,
                    r.last_seen_ms
                ],
            )
            .map_err(Error::agent_store)?;
        Ok(())
    }

    fn delete(&mut self, agent_id: &str) -> Result<(), Error> {
        self.conn
            .execute("DELETE FROM agents WHERE agent_id = ?1", params![agent_id])
            .map_err(Error::agent_store)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str, at: i64) -> AgentRegistration {
        AgentRegistration {
            agent_id: id.into(),
            tenant: "acme".into(),
            kind: "endpoint".into(),
            version: "1.0".into(),
            hostname: format!("{id}.local"),
            capabilities: vec!["restart".into()],
            attributes: BTreeMap::from([("os".into(), "linux".into())]),
            registered_at_ms: at,
            last_seen_ms: at + 5,
        }
    }

    #[test]
    fn registrations_survive_reopening_replace_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.db");
        {
            let mut store = SqliteAgentStore::open(&path).unwrap();
            store.save(&registration("b", 1)).unwrap();
            store.save(&registration("a", 2)).unwrap();
            store.save(&registration("a", 3)).unwrap();
            store.delete("ghost").unwrap();
        }
        let mut store = SqliteAgentStore::open(&path).unwrap();
        let all = store.load().unwrap();
        assert_eq!(all, [registration("a", 3), registration("b", 1)]);
        store.delete("b").unwrap();
        assert_eq!(store.load().unwrap(), [registration("a", 3)]);
    }

    #[test]
    fn unreadable_rows_are_reported_as_corruption() {
        let mut store = SqliteAgentStore::in_memory().unwrap();
        store.save(&registration("a", 1)).unwrap();
        store
            .conn
            .execute("UPDATE agents SET attributes = 'not json'", [])
            .unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, Error::CorruptStore { .. }), "{err}");
        assert!(err.to_string().contains("attributes of agent `a`"), "{err}");
    }
}

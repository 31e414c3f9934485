//! The gateway's command journal: which commands it has taken, their outcomes, and which
//! outcomes the server may not have heard yet.
//!
//! # Guarantees
//!
//! * **At most once.** A command is written as `received` *before* the application sees it.
//!   A redelivery of a known id is never handed to the application again: it is answered from
//!   the journal ([`JournalEntry`]) — with the outcome once finished, with `received` while it
//!   runs (a redelivery is not progress, so it must not restart the server's step timer).
//! * **No outcome lost.** An outcome is written (with `ack_pending`) before its `command_ack`
//!   is queued; pending outcomes are re-sent after a reconnect or a restart.
//! * **Crash while running.** A command still `received`/`in_progress` when the journal is
//!   reopened was interrupted: the session finishes it as `failed` ("interrupted by a gateway
//!   restart") instead of running it again.
//!
//! [`SqliteJournal`] keeps this across restarts (WAL, `synchronous=FULL` by default: commands
//! are rare, durability matters more than speed). [`MemoryJournal`] is for tests and
//! simulations; it forgets everything when dropped.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use gateway_proto::{CommandAckState, CommandId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::Error;

/// A final outcome a gateway reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeState {
    /// Finished successfully.
    Succeeded,
    /// Ran and failed.
    Failed,
    /// Refused without running (unknown kind, bad payload, expired).
    Rejected,
}

impl OutcomeState {
    /// The matching wire state.
    pub fn ack_state(self) -> CommandAckState {
        match self {
            OutcomeState::Succeeded => CommandAckState::Succeeded,
            OutcomeState::Failed => CommandAckState::Failed,
            OutcomeState::Rejected => CommandAckState::Rejected,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "succeeded" => Some(OutcomeState::Succeeded),
            "failed" => Some(OutcomeState::Failed),
            "rejected" => Some(OutcomeState::Rejected),
            _ => None,
        }
    }
}

/// The outcome of a command: state, a human-readable detail and an optional structured result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Succeeded, failed or rejected.
    pub state: OutcomeState,
    /// Human-readable detail (an error text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Structured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Outcome {
    /// `succeeded` with no detail.
    pub fn succeeded() -> Self {
        Outcome {
            state: OutcomeState::Succeeded,
            detail: None,
            result: None,
        }
    }

    /// `failed` with a detail.
    pub fn failed(detail: impl Into<String>) -> Self {
        Outcome {
            state: OutcomeState::Failed,
            detail: Some(detail.into()),
            result: None,
        }
    }

    /// `rejected` with a detail.
    pub fn rejected(detail: impl Into<String>) -> Self {
        Outcome {
            state: OutcomeState::Rejected,
            detail: Some(detail.into()),
            result: None,
        }
    }

    /// The same outcome carrying a structured result.
    pub fn with_result(mut self, result: serde_json::Value) -> Self {
        self.result = Some(result);
        self
    }
}

/// What the journal knows about one command id.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalEntry {
    /// Handed to the application, no outcome yet. `last` is `received` or `in_progress`.
    Running {
        /// The last state reported to the server.
        last: CommandAckState,
    },
    /// Finished.
    Finished {
        /// The outcome.
        outcome: Outcome,
        /// True while the outcome has not been written to an established session.
        ack_pending: bool,
    },
}

/// Storage of the command journal; see the [module docs](self) for the guarantees an
/// implementation must keep. Every write must be durable when it returns.
pub trait CommandJournal: Send + 'static {
    /// What is known about `id`.
    fn get(&self, id: &CommandId) -> Result<Option<JournalEntry>, Error>;
    /// Record a new command as `received`. Called before the application sees it.
    fn record_received(&mut self, id: &CommandId, kind: &str) -> Result<(), Error>;
    /// Record that a running command reported progress.
    fn record_progress(&mut self, id: &CommandId) -> Result<(), Error>;
    /// Record the final outcome of a command, with its acknowledgement pending.
    fn record_outcome(&mut self, id: &CommandId, outcome: &Outcome) -> Result<(), Error>;
    /// Record that the outcome's acknowledgement was written to an established session.
    fn mark_ack_sent(&mut self, id: &CommandId) -> Result<(), Error>;
    /// Outcomes whose acknowledgement is pending, in the order they were recorded.
    fn pending_acks(&self) -> Result<Vec<(CommandId, Outcome)>, Error>;
    /// Commands without an outcome (after a restart: interrupted ones).
    fn running(&self) -> Result<Vec<CommandId>, Error>;
    /// The most recently received command id.
    fn last_command_id(&self) -> Result<Option<CommandId>, Error>;
}

impl CommandJournal for Box<dyn CommandJournal> {
    fn get(&self, id: &CommandId) -> Result<Option<JournalEntry>, Error> {
        (**self).get(id)
    }
    fn record_received(&mut self, id: &CommandId, kind: &str) -> Result<(), Error> {
        (**self).record_received(id, kind)
    }
    fn record_progress(&mut self, id: &CommandId) -> Result<(), Error> {
        (**self).record_progress(id)
    }
    fn record_outcome(&mut self, id: &CommandId, outcome: &Outcome) -> Result<(), Error> {
        (**self).record_outcome(id, outcome)
    }
    fn mark_ack_sent(&mut self, id: &CommandId) -> Result<(), Error> {
        (**self).mark_ack_sent(id)
    }
    fn pending_acks(&self) -> Result<Vec<(CommandId, Outcome)>, Error> {
        (**self).pending_acks()
    }
    fn running(&self) -> Result<Vec<CommandId>, Error> {
        (**self).running()
    }
    fn last_command_id(&self) -> Result<Option<CommandId>, Error> {
        (**self).last_command_id()
    }
}

/// Settings of [`SqliteJournal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JournalConfig {
    /// Finished, acknowledged entries kept for answering redeliveries; older ones are pruned.
    /// Must exceed the number of commands the server may redeliver. Default 100,000.
    pub max_entries: u64,
    /// `synchronous=FULL` (survives power loss) instead of `NORMAL` (survives a process
    /// crash). Default true.
    pub fsync_every_write: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_entries: 100_000,
            fsync_every_write: true,
        }
    }
}

/// The SQLite command journal. See the [module docs](self).
#[derive(Debug)]
pub struct SqliteJournal {
    conn: Connection,
    config: JournalConfig,
    writes_since_prune: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL,
    detail       TEXT,
    result       TEXT,
    ack_pending  INTEGER NOT NULL DEFAULT 0,
    finished_seq INTEGER
);
CREATE INDEX IF NOT EXISTS journal_pending ON journal(finished_seq) WHERE ack_pending = 1;
CREATE INDEX IF NOT EXISTS journal_running ON journal(seq) WHERE finished_seq IS NULL;
";

impl SqliteJournal {
    /// Open (or create) the journal at `path`.
    pub fn open(path: impl AsRef<Path>, config: JournalConfig) -> Result<Self, Error> {
        if config.max_entries == 0 {
            return Err(Error::InvalidConfig {
                param: "journal.max_entries",
                reason: "must be at least 1".into(),
            });
        }
        let conn = Connection::open(path).map_err(Error::journal)?;
        let sync = if config.fsync_every_write {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000;"
        ))
        .map_err(Error::journal)?;
        conn.execute_batch(SCHEMA).map_err(Error::journal)?;
        let mut journal = SqliteJournal {
            conn,
            config,
            writes_since_prune: 0,
        };
        journal.prune()?;
        Ok(journal)
    }

    /// Delete the oldest finished, acknowledged entries beyond `max_entries`.
    pub fn prune(&mut self) -> Result<u64, Error> {
        self.writes_since_prune = 0;
        let deleted = self
            .conn
            .execute(
                "DELETE FROM journal WHERE ack_pending = 0 AND finished_seq IS NOT NULL AND seq <= \
                 (SELECT MAX(seq) FROM journal) - ?1",
                params![self.config.max_entries as i64],
            )
            .map_err(Error::journal)?;
        Ok(deleted as u64)
    }

    fn after_write(&mut self) -> Result<(), Error> {
        self.writes_since_prune += 1;
        if self.writes_since_prune >= 1_000 {
            self.prune()?;
        }
        Ok(())
    }
}

fn parse_id(bytes: Vec<u8>) -> Result<CommandId, Error> {
    uuid::Uuid::from_slice(&bytes)
        .ok()
        .and_then(CommandId::from_uuid)
        .ok_or_else(|| Error::CorruptStore {
            what: "command journal",
            reason: format!("a command id of {} bytes", bytes.len()),
        })
}

fn parse_outcome(
    state: &str,
    detail: Option<String>,
    result: Option<String>,
) -> Result<Option<Outcome>, Error> {
    let Some(state) = OutcomeState::parse(state) else {
        return Ok(None);
    };
    let result = match result {
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|e| Error::CorruptStore {
                what: "command journal",
                reason: format!("a stored result is not JSON: {e}"),
            })?,
        ),
        None => None,
    };
    Ok(Some(Outcome {
        state,
        detail,
        result,
    }))
}

impl CommandJournal for SqliteJournal {
    fn get(&self, id: &CommandId) -> Result<Option<JournalEntry>, Error> {
        let row = self
            .conn
            .query_row(
                "SELECT state, detail, result, ack_pending FROM journal WHERE id = ?1",
                params![id.as_bytes().as_slice()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(Error::journal)?;
        let Some((state, detail, result, ack_pending)) = row else {
            return Ok(None);
        };
        if let Some(outcome) = parse_outcome(&state, detail, result)? {
            return Ok(Some(JournalEntry::Finished {
                outcome,
                ack_pending,
            }));
        }
        let last = match state.as_str() {
            "in_progress" => CommandAckState::InProgress,
            _ => CommandAckState::Received,
        };
        Ok(Some(JournalEntry::Running { last }))
    }

    fn record_received(&mut self, id: &CommandId, kind: &str) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO journal (id, kind, state) VALUES (?1, ?2, 'received')",
                params![id.as_bytes().as_slice(), kind],
            )
            .map_err(Error::journal)?;
        self.after_write()
    }

    fn record_progress(&mut self, id: &CommandId) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE journal SET state = 'in_progress' WHERE id = ?1 AND finished_seq IS NULL",
                params![id.as_bytes().as_slice()],
            )
            .map_err(Error::journal)?;
        Ok(())
    }

    fn record_outcome(&mut self, id: &CommandId, outcome: &Outcome) -> Result<(), Error> {
        let state = outcome.state.ack_state().as_str();
        let result = outcome.result.as_ref().map(|v| v.to_string());
        let changed = self
            .conn
            .execute(
                "UPDATE journal SET state = ?2, detail = ?3, result = ?4, ack_pending = 1, \
                 finished_seq = (SELECT COALESCE(MAX(finished_seq), 0) + 1 FROM journal) \
                 WHERE id = ?1 AND finished_seq IS NULL",
                params![id.as_bytes().as_slice(), state, outcome.detail, result],
            )
            .map_err(Error::journal)?;
        if changed == 0 {
            // Unknown ids (e.g. a command rejected before it was recorded) get a row of
            // their own so a redelivery is answered the same way.
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO journal (id, kind, state, detail, result, ack_pending, finished_seq) \
                     VALUES (?1, '', ?2, ?3, ?4, 1, (SELECT COALESCE(MAX(finished_seq), 0) + 1 FROM journal))",
                    params![id.as_bytes().as_slice(), state, outcome.detail, result],
                )
                .map_err(Error::journal)?;
        }
        self.after_write()
    }

    fn mark_ack_sent(&mut self, id: &CommandId) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE journal SET ack_pending = 0 WHERE id = ?1",
                params![id.as_bytes().as_slice()],
            )
            .map_err(Error::journal)?;
        Ok(())
    }

    fn pending_acks(&self) -> Result<Vec<(CommandId, Outcome)>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, state, detail, result FROM journal WHERE ack_pending = 1 ORDER BY finished_seq",
            )
            .map_err(Error::journal)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(Error::journal)?;
        let mut pending = Vec::new();
        for row in rows {
            let (id, state, detail, result) = row.map_err(Error::journal)?;
            let id = parse_id(id)?;
            let outcome =
                parse_outcome(&state, detail, result)?.ok_or_else(|| Error::CorruptStore {
                    what: "command journal",
                    reason: format!("pending acknowledgement of {id} has no outcome (`{state}`)"),
                })?;
            pending.push((id, outcome));
        }
        Ok(pending)
    }

    fn running(&self) -> Result<Vec<CommandId>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM journal WHERE finished_seq IS NULL ORDER BY seq")
            .map_err(Error::journal)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(Error::journal)?;
        rows.map(|r| r.map_err(Error::journal).and_then(parse_id))
            .collect()
    }

    fn last_command_id(&self) -> Result<Option<CommandId>, Error> {
        let id: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT id FROM journal WHERE kind <> '' ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(Error::journal)?;
        id.map(parse_id).transpose()
    }
}

/// An in-memory journal for tests and simulations: it forgets everything when dropped, so it
/// gives no guarantee across restarts. Keeps at most `max_entries` finished entries.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    entries: HashMap<CommandId, JournalEntry>,
    received_order: VecDeque<CommandId>,
    pending: Vec<CommandId>,
    max_entries: usize,
}

impl MemoryJournal {
    /// An empty journal keeping up to 100,000 entries.
    pub fn new() -> Self {
        MemoryJournal {
            max_entries: 100_000,
            ..Default::default()
        }
    }
}

impl CommandJournal for MemoryJournal {
    fn get(&self, id: &CommandId) -> Result<Option<JournalEntry>, Error> {
        Ok(self.entries.get(id).cloned())
    }

    fn record_received(&mut self, id: &CommandId, _kind: &str) -> Result<(), Error> {
        if !self.entries.contains_key(id) {
            self.entries.insert(
                *id,
                JournalEntry::Running {
                    last: CommandAckState::Received,
                },
            );
            self.received_order.push_back(*id);
            while self.received_order.len() > self.max_entries.max(1) {
                let Some(old) = self.received_order.front().copied() else {
                    break;
                };
                let removable = matches!(
                    self.entries.get(&old),
                    Some(JournalEntry::Finished {
                        ack_pending: false,
                        ..
                    })
                );
                if !removable {
                    break;
                }
                self.received_order.pop_front();
                self.entries.remove(&old);
            }
        }
        Ok(())
    }

    fn record_progress(&mut self, id: &CommandId) -> Result<(), Error> {
        if let Some(JournalEntry::Running { last }) = self.entries.get_mut(id) {
            *last = CommandAckState::InProgress;
        }
        Ok(())
    }

    fn record_outcome(&mut self, id: &CommandId, outcome: &Outcome) -> Result<(), Error> {
        if matches!(self.entries.get(id), Some(JournalEntry::Finished { .. })) {
            return Ok(());
        }
        if !self.entries.contains_key(id) {
            self.received_order.push_back(*id);
        }
        self.entries.insert(
            *id,
            JournalEntry::Finished {
                outcome: outcome.clone(),
                ack_pending: true,
            },
        );
        self.pending.push(*id);
        Ok(())
    }

    fn mark_ack_sent(&mut self, id: &CommandId) -> Result<(), Error> {
        if let Some(JournalEntry::Finished { ack_pending, .. }) = self.entries.get_mut(id) {
            *ack_pending = false;
        }
        self.pending.retain(|p| p != id);
        Ok(())
    }

    fn pending_acks(&self) -> Result<Vec<(CommandId, Outcome)>, Error> {
        Ok(self
            .pending
            .iter()
            .filter_map(|id| match self.entries.get(id) {
                Some(JournalEntry::Finished { outcome, .. }) => Some((*id, outcome.clone())),
                _ => None,
            })
            .collect())
    }

    fn running(&self) -> Result<Vec<CommandId>, Error> {
        Ok(self
            .received_order
            .iter()
            .filter(|id| matches!(self.entries.get(id), Some(JournalEntry::Running { .. })))
            .copied()
            .collect())
    }

    fn last_command_id(&self) -> Result<Option<CommandId>, Error> {
        Ok(self.received_order.back().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(journal: &mut dyn CommandJournal) {
        let a = CommandId::new_v7();
        let b = CommandId::new_v7();
        assert_eq!(journal.get(&a).unwrap(), None);
        journal.record_received(&a, "flush").unwrap();
        journal.record_received(&b, "reboot").unwrap();
        assert_eq!(
            journal.get(&a).unwrap(),
            Some(JournalEntry::Running {
                last: CommandAckState::Received
            })
        );
        journal.record_progress(&a).unwrap();
        assert_eq!(
            journal.get(&a).unwrap(),
            Some(JournalEntry::Running {
                last: CommandAckState::InProgress
            })
        );
        assert_eq!(journal.running().unwrap(), vec![a, b]);
        assert_eq!(journal.last_command_id().unwrap(), Some(b));

        let done = Outcome::succeeded().with_result(serde_json::json!({"n": 1}));
        journal
            .record_outcome(&b, &Outcome::failed("door jammed"))
            .unwrap();
        journal.record_outcome(&a, &done).unwrap();
        // A second outcome for the same id changes nothing.
        journal
            .record_outcome(&a, &Outcome::failed("late"))
            .unwrap();
        let pending = journal.pending_acks().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(
            pending[0].0, b,
            "pending acks keep the order outcomes came in"
        );
        assert_eq!(pending[1], (a, done.clone()));
        journal.mark_ack_sent(&b).unwrap();
        assert_eq!(journal.pending_acks().unwrap(), vec![(a, done.clone())]);
        assert_eq!(
            journal.get(&a).unwrap(),
            Some(JournalEntry::Finished {
                outcome: done,
                ack_pending: true
            })
        );
        assert!(journal.running().unwrap().is_empty());
    }

    #[test]
    fn memory_journal_keeps_the_contract() {
        exercise(&mut MemoryJournal::new());
    }

    #[test]
    fn sqlite_journal_keeps_the_contract_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let running = CommandId::new_v7();
        {
            let mut journal = SqliteJournal::open(&path, JournalConfig::default()).unwrap();
            exercise(&mut journal);
            journal.record_received(&running, "long").unwrap();
        }
        let journal = SqliteJournal::open(&path, JournalConfig::default()).unwrap();
        assert_eq!(journal.running().unwrap(), vec![running]);
        let pending = journal.pending_acks().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1.result, Some(serde_json::json!({"n": 1})));
    }

    #[test]
    fn pruning_keeps_pending_and_running_entries() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            max_entries: 2,
            fsync_every_write: false,
        };
        let mut journal = SqliteJournal::open(dir.path().join("j.db"), config).unwrap();
        let ids: Vec<CommandId> = (0..6).map(|_| CommandId::new_v7()).collect();
        for id in &ids {
            journal.record_received(id, "k").unwrap();
            journal.record_outcome(id, &Outcome::succeeded()).unwrap();
        }
        // Only the first three acks were sent; the rest stay pending.
        for id in &ids[..3] {
            journal.mark_ack_sent(id).unwrap();
        }
        journal.prune().unwrap();
        assert_eq!(
            journal.get(&ids[0]).unwrap(),
            None,
            "old acknowledged entry pruned"
        );
        for id in &ids[3..] {
            assert!(journal.get(id).unwrap().is_some(), "pending entry kept");
        }
    }

    #[test]
    fn zero_max_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteJournal::open(
            dir.path().join("j.db"),
            JournalConfig {
                max_entries: 0,
                fsync_every_write: true,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("journal.max_entries"), "{err}");
    }
}

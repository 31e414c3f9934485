//! The event log behind the server's SSE stream (`GET /v1/events`).
//!
//! Every event gets an id one higher than the last. The log keeps the newest `history`
//! events in memory (and, when opened on a file, in SQLite, so ids keep increasing and history
//! survives a restart), and broadcasts each new event to live subscribers. A subscriber that
//! reconnects with `Last-Event-ID: n` first gets the retained events after `n`, then the live
//! ones — without a gap or a duplicate, because subscribing snapshots the history and joins
//! the broadcast under the same lock publishing takes.
//!
//! This crate publishes `command.state`, `command.progress`, `command.ack_ignored`,
//! `gateway.online` and `gateway.offline`, each under the tenant of its command or gateway;
//! other components publish their own kinds (policy rollouts, audit) with
//! [`EventLog::publish`].
//!
//! # Tenants
//!
//! Every event names the tenant it belongs to, and the operator stream
//! ([`super::event_routes`]) shows an operator only their own tenant's events. An event
//! published with tenant `None` reaches **no operator**: it is for in-process subscribers
//! ([`EventLog::subscribe`], [`EventLog::since`]) only. Publish anything an operator should
//! see under its tenant — there is no "everyone" tenant, so a forgotten tenant can never leak
//! one tenant's data to another.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gateway_proto::clock::Clock;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::Error;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Increasing id (the SSE `id:` field).
    pub id: u64,
    /// What happened, dotted (the SSE `event:` field), e.g. `command.state`.
    pub kind: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Tenant the event belongs to. `None`: a server-internal event, shown to no operator on
    /// the SSE stream (see the [module docs](self)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The payload (the SSE `data:` field is this, as JSON).
    pub data: serde_json::Value,
}

/// Settings of an [`EventLog`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventLogConfig {
    /// Events kept for resuming subscribers. Default 10,000.
    pub history: usize,
    /// Live events a slow subscriber may fall behind before it is cut off (it then resumes
    /// with `Last-Event-ID`). Default 4,096.
    pub channel_capacity: usize,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        EventLogConfig {
            history: 10_000,
            channel_capacity: 4_096,
        }
    }
}

/// A subscription: retained events after the requested id, then the live receiver.
#[derive(Debug)]
pub struct Subscription {
    /// Events after the requested id that were retained, oldest first.
    pub backlog: Vec<Arc<LoggedEvent>>,
    /// Events published after the backlog.
    pub live: broadcast::Receiver<Arc<LoggedEvent>>,
    /// True when some events after the requested id are no longer retained.
    pub truncated: bool,
}

struct LogState {
    next_id: u64,
    history: VecDeque<Arc<LoggedEvent>>,
    store: Option<Connection>,
    writes_since_prune: u64,
}

struct Inner {
    state: Mutex<LogState>,
    live: broadcast::Sender<Arc<LoggedEvent>>,
    clock: Arc<dyn Clock>,
    config: EventLogConfig,
}

/// The event log; see the [module docs](self). Cheap to clone (shared).
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("last_id", &self.last_id())
            .finish_non_exhaustive()
    }
}

fn validate(config: &EventLogConfig) -> Result<(), Error> {
    if config.history == 0 {
        return Err(Error::InvalidConfig {
            param: "events.history",
            reason: "must be at least 1".into(),
        });
    }
    if config.channel_capacity == 0 {
        return Err(Error::InvalidConfig {
            param: "events.channel_capacity",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

impl EventLog {
    /// A log kept in memory only: ids restart at 1 with the process.
    pub fn in_memory(config: EventLogConfig, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        validate(&config)?;
        Ok(Self::build(config, clock, 1, VecDeque::new(), None))
    }

    /// A log persisted in SQLite at `path`: ids continue after a restart and the retained
    /// history is reloaded.
    pub fn open(
        path: impl AsRef<Path>,
        config: EventLogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        validate(&config)?;
        let conn = Connection::open(path).map_err(Error::event_log)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY, kind TEXT NOT NULL, at_ms INTEGER NOT NULL,
                 tenant TEXT, data TEXT NOT NULL);",
        )
        .map_err(Error::event_log)?;
        let mut history = VecDeque::new();
        {
            let mut stmt = conn
                .prepare(
                    "SELECT id, kind, at_ms, tenant, data FROM events ORDER BY id DESC LIMIT ?1",
                )
                .map_err(Error::event_log)?;
            let rows = stmt
                .query_map(params![config.history as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(Error::event_log)?;
            for row in rows {
                let (id, kind, at_ms, tenant, data) = row.map_err(Error::event_log)?;
                let data = serde_json::from_str(&data).map_err(|e| Error::CorruptStore {
                    what: "event log",
                    reason: format!("event {id}: {e}"),
                })?;
                history.push_front(Arc::new(LoggedEvent {
                    id: id as u64,
                    kind,
                    at_ms,
                    tenant,
                    data,
                }));
            }
        }
        let max_id: Option<i64> = conn
            .query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
            .map_err(Error::event_log)?;
        let next_id = max_id.map_or(1, |m| m as u64 + 1);
        Ok(Self::build(config, clock, next_id, history, Some(conn)))
    }

    fn build(
        config: EventLogConfig,
        clock: Arc<dyn Clock>,
        next_id: u64,
        history: VecDeque<Arc<LoggedEvent>>,
        store: Option<Connection>,
    ) -> Self {
        let (live, _) = broadcast::channel(config.channel_capacity);
        EventLog {
            inner: Arc::new(Inner {
                state: Mutex::new(LogState {
                    next_id,
                    history,
                    store,
                    writes_since_prune: 0,
                }),
                live,
                clock,
                config,
            }),
        }
    }

    /// Publish an event under `tenant` (only that tenant's operators see it on the SSE
    /// stream; `None`: no operator does); returns its id. Persisting failures are logged,
    /// never returned: the event still reaches live subscribers.
    pub fn publish(&self, kind: &str, tenant: Option<&str>, data: serde_json::Value) -> u64 {
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let event = Arc::new(LoggedEvent {
            id: state.next_id,
            kind: kind.to_owned(),
            at_ms: self.inner.clock.now_ms(),
            tenant: tenant.map(str::to_owned),
            data,
        });
        state.next_id += 1;
        let history = self.inner.config.history;
        if let Some(store) = &state.store {
            let written = store.execute(
                "INSERT INTO events (id, kind, at_ms, tenant, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    event.id as i64,
                    event.kind,
                    event.at_ms,
                    event.tenant,
                    event.data.to_string()
                ],
            );
            if let Err(e) = written {
                tracing::error!(error = %e, "could not persist event {}", event.id);
            }
            state.writes_since_prune += 1;
            if state.writes_since_prune >= 1_000 {
                state.writes_since_prune = 0;
                if let Some(store) = &state.store
                    && let Err(e) = store.execute(
                        "DELETE FROM events WHERE id <= ?1",
                        params![event.id as i64 - history as i64],
                    )
                {
                    tracing::warn!(error = %e, "could not prune the event log");
                }
            }
        }
        state.history.push_back(event.clone());
        while state.history.len() > history {
            state.history.pop_front();
        }
        let id = event.id;
        // No subscribers is fine.
        let _ = self.inner.live.send(event);
        metrics::counter!("gateway_control_events_published_total").increment(1);
        id
    }

    /// Subscribe to events after `after` (`None`: only new ones).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.inner.live.subscribe();
        let (backlog, truncated) = match after {
            None => (Vec::new(), false),
            Some(after) => {
                let oldest = state.history.front().map(|e| e.id);
                let truncated = oldest.is_some_and(|oldest| after.saturating_add(1) < oldest)
                    || (oldest.is_none() && after.saturating_add(1) < state.next_id);
                let backlog = state
                    .history
                    .iter()
                    .filter(|e| e.id > after)
                    .cloned()
                    .collect();
                (backlog, truncated)
            }
        };
        Subscription {
            backlog,
            live,
            truncated,
        }
    }

    /// Retained events after `after`, at most `limit`, oldest first.
    pub fn since(&self, after: u64, limit: usize) -> Vec<Arc<LoggedEvent>> {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .history
            .iter()
            .filter(|e| e.id > after)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The id of the last published event (0 when none).
    pub fn last_id(&self) -> u64 {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state.next_id - 1
    }

    /// The clock the log stamps events with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::clock::ManualClock;
    use serde_json::json;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(ManualClock::new(1_000))
    }

    #[test]
    fn ids_increase_and_resuming_replays_only_later_events() {
        let log = EventLog::in_memory(EventLogConfig::default(), clock()).unwrap();
        let a = log.publish("x", None, json!(1));
        let b = log.publish("x", Some("acme"), json!(2));
        assert_eq!((a, b), (1, 2));
        let mut sub = log.subscribe(Some(a));
        assert_eq!(sub.backlog.len(), 1);
        assert_eq!(sub.backlog[0].id, b);
        assert!(!sub.truncated);
        let c = log.publish("y", None, json!(3));
        assert_eq!(sub.live.try_recv().unwrap().id, c);
    }

    #[test]
    fn a_bounded_history_reports_truncation() {
        let config = EventLogConfig {
            history: 3,
            channel_capacity: 8,
        };
        let log = EventLog::in_memory(config, clock()).unwrap();
        for i in 0..10 {
            log.publish("x", None, json!(i));
        }
        let sub = log.subscribe(Some(2));
        assert!(sub.truncated);
        assert_eq!(
            sub.backlog.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert!(!log.subscribe(Some(7)).truncated);
    }

    #[test]
    fn a_persistent_log_continues_its_ids_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let log = EventLog::open(&path, EventLogConfig::default(), clock()).unwrap();
            log.publish("a", None, json!({"n": 1}));
            log.publish("b", None, json!({"n": 2}));
        }
        let log = EventLog::open(&path, EventLogConfig::default(), clock()).unwrap();
        assert_eq!(log.last_id(), 2);
        assert_eq!(log.publish("c", None, json!(null)), 3);
        let replay = log.subscribe(Some(0)).backlog;
        assert_eq!(replay.len(), 3);
        assert_eq!(replay[1].data, json!({"n": 2}));
    }
}

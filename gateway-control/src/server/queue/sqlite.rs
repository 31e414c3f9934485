//! [`SqliteCommandQueue`]: the default [`CommandQueue`], one SQLite file (WAL).

use std::path::Path;
use std::sync::Mutex;

use gateway_proto::{CommandAck, CommandAckState, CommandId, Limits};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{
    AckOutcome, AckRecord, CommandFilter, CommandQueue, CommandRecord, Delivery, NewCommand,
    QueueConfig, QueueOp, QueueOutput, Resend, StateChange, Sweep,
};
use crate::{CommandState, Error};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS commands (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   BLOB NOT NULL UNIQUE,
    gateway_id           TEXT NOT NULL,
    tenant               TEXT,
    kind                 TEXT NOT NULL,
    payload              TEXT NOT NULL,
    target               TEXT,
    priority             INTEGER NOT NULL,
    state                TEXT NOT NULL,
    created_ms           INTEGER NOT NULL,
    updated_ms           INTEGER NOT NULL,
    delivery_deadline_ms INTEGER NOT NULL,
    execution_timeout_ms INTEGER NOT NULL,
    redeliver_at_ms      INTEGER,
    step_deadline_ms     INTEGER,
    timer_ms             INTEGER,
    attempts             INTEGER NOT NULL DEFAULT 0,
    detail               TEXT,
    result               TEXT
);
CREATE INDEX IF NOT EXISTS commands_queued
    ON commands(gateway_id, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS commands_unfinished
    ON commands(gateway_id, seq) WHERE state IN ('sent', 'received', 'in_progress');
CREATE INDEX IF NOT EXISTS commands_timer ON commands(timer_ms) WHERE timer_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS commands_by_gateway ON commands(gateway_id, seq);
CREATE TABLE IF NOT EXISTS command_acks (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id BLOB NOT NULL,
    at_ms      INTEGER NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT,
    result     TEXT,
    applied    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS command_acks_by_command ON command_acks(command_id, seq);
";

const COLUMNS: &str = "id, gateway_id, tenant, kind, payload, target, priority, state, created_ms, \
    updated_ms, delivery_deadline_ms, execution_timeout_ms, step_deadline_ms, attempts, detail, \
    result, redeliver_at_ms";

/// The SQLite command queue. See the [module docs](super) for its guarantees.
///
/// One connection behind a mutex: every call is one short transaction.
#[derive(Debug)]
pub struct SqliteCommandQueue {
    conn: Mutex<Connection>,
    config: QueueConfig,
    limits: Limits,
}

/// A row plus the private redelivery time.
struct Row2 {
    record: CommandRecord,
    redeliver_at_ms: Option<i64>,
}

fn corrupt(reason: String) -> Error {
    Error::CorruptStore {
        what: "command queue",
        reason,
    }
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<(Vec<u8>, [Option<String>; 3], RowRest)> {
    Ok((
        row.get(0)?,
        [row.get(4)?, row.get(7)?, row.get(15)?],
        RowRest {
            gateway_id: row.get(1)?,
            tenant: row.get(2)?,
            kind: row.get(3)?,
            target: row.get(5)?,
            priority: row.get(6)?,
            created_ms: row.get(8)?,
            updated_ms: row.get(9)?,
            delivery_deadline_ms: row.get(10)?,
            execution_timeout_ms: row.get(11)?,
            step_deadline_ms: row.get(12)?,
            attempts: row.get(13)?,
            detail: row.get(14)?,
            redeliver_at_ms: row.get(16)?,
        },
    ))
}

struct RowRest {
    gateway_id: String,
    tenant: Option<String>,
    kind: String,
    target: Option<String>,
    priority: i32,
    created_ms: i64,
    updated_ms: i64,
    delivery_deadline_ms: i64,
    execution_timeout_ms: i64,
    step_deadline_ms: Option<i64>,
    attempts: u32,
    detail: Option<String>,
    redeliver_at_ms: Option<i64>,
}

fn to_record(raw: (Vec<u8>, [Option<String>; 3], RowRest)) -> Result<Row2, Error> {
    let (id, [payload, state, result], rest) = raw;
    let id = uuid::Uuid::from_slice(&id)
        .ok()
        .and_then(CommandId::from_uuid)
        .ok_or_else(|| corrupt(format!("a command id of {} bytes", id.len())))?;
    let json = |text: Option<String>| -> Result<Option<serde_json::Value>, Error> {
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt(format!("command {id}: stored JSON is unreadable: {e}")))
    };
    let state: CommandState = state
        .unwrap_or_default()
        .parse()
        .map_err(|e| corrupt(format!("command {id}: {e}")))?;
    Ok(Row2 {
        record: CommandRecord {
            id,
            gateway_id: rest.gateway_id,
            tenant: rest.tenant,
            kind: rest.kind,
            payload: json(payload)?.unwrap_or(serde_json::Value::Null),
            target: rest.target,
            priority: rest.priority,
            state,
            created_ms: rest.created_ms,
            updated_ms: rest.updated_ms,
            delivery_deadline_ms: rest.delivery_deadline_ms,
            execution_timeout_ms: u64::try_from(rest.execution_timeout_ms).unwrap_or(0),
            step_deadline_ms: rest.step_deadline_ms,
            attempts: rest.attempts,
            detail: rest.detail,
            result: json(result)?,
        },
        redeliver_at_ms: rest.redeliver_at_ms,
    })
}

fn select_many(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Row2>, Error> {
    let mut stmt = tx.prepare_cached(sql).map_err(Error::queue)?;
    let rows = stmt.query_map(params, read_row).map_err(Error::queue)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(to_record(row.map_err(Error::queue)?)?);
    }
    Ok(out)
}

fn select_one(tx: &Connection, id: &CommandId) -> Result<Option<Row2>, Error> {
    let raw = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM commands WHERE id = ?1"))
        .map_err(Error::queue)?
        .query_row(params![id.as_bytes().as_slice()], read_row)
        .optional()
        .map_err(Error::queue)?;
    raw.map(to_record).transpose()
}

/// Write a new state with its timers. `timer_ms` is recomputed from the state.
struct Update<'a> {
    id: &'a CommandId,
    state: CommandState,
    now_ms: i64,
    redeliver_at_ms: Option<i64>,
    step_deadline_ms: Option<i64>,
    delivery_deadline_ms: i64,
    attempts_delta: u32,
    detail: Option<&'a str>,
    result: Option<&'a serde_json::Value>,
}

/// The earliest of two optional instants.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn timer_for(state: CommandState, u: &Update<'_>) -> Option<i64> {
    match state {
        CommandState::Queued => Some(u.delivery_deadline_ms),
        CommandState::Sent => earliest(u.redeliver_at_ms, Some(u.delivery_deadline_ms)),
        // The step deadline, or the time to ask again for an outcome that may have been lost.
        CommandState::Received | CommandState::InProgress => {
            earliest(u.redeliver_at_ms, u.step_deadline_ms)
        }
        _ => None,
    }
}

fn write(tx: &Transaction<'_>, u: Update<'_>) -> Result<(), Error> {
    let timer = timer_for(u.state, &u);
    tx.prepare_cached(
        "UPDATE commands SET state = ?2, updated_ms = ?3, redeliver_at_ms = ?4, \
         step_deadline_ms = ?5, timer_ms = ?6, attempts = attempts + ?7, \
         detail = COALESCE(?8, detail), result = COALESCE(?9, result) WHERE id = ?1",
    )
    .map_err(Error::queue)?
    .execute(params![
        u.id.as_bytes().as_slice(),
        u.state.as_str(),
        u.now_ms,
        u.redeliver_at_ms,
        u.step_deadline_ms,
        timer,
        u.attempts_delta,
        u.detail,
        u.result.map(|v| v.to_string()),
    ])
    .map_err(Error::queue)?;
    Ok(())
}

fn change(
    record: &CommandRecord,
    to: CommandState,
    now_ms: i64,
    detail: Option<String>,
) -> StateChange {
    StateChange {
        id: record.id,
        gateway_id: record.gateway_id.clone(),
        tenant: record.tenant.clone(),
        from: Some(record.state),
        to,
        at_ms: now_ms,
        detail,
    }
}

impl SqliteCommandQueue {
    /// Open (or create) the queue at `path`. Timers stored by a previous run stay armed.
    pub fn open(path: impl AsRef<Path>, config: QueueConfig) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(Error::queue)?;
        Self::with_connection(conn, config)
    }

    /// A queue in memory (tests, demos): nothing survives the process.
    pub fn open_in_memory(config: QueueConfig) -> Result<Self, Error> {
        let conn = Connection::open_in_memory().map_err(Error::queue)?;
        Self::with_connection(conn, config)
    }

    fn with_connection(conn: Connection, config: QueueConfig) -> Result<Self, Error> {
        config.validate()?;
        let sync = if config.fsync_every_write {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000;"
        ))
        .map_err(Error::queue)?;
        conn.execute_batch(SCHEMA).map_err(Error::queue)?;
        Ok(SqliteCommandQueue {
            conn: Mutex::new(conn),
            config,
            limits: Limits::default(),
        })
    }

    /// The config.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    fn with_tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(Error::queue)?;
        let out = f(&tx)?;
        tx.commit().map_err(Error::queue)?;
        Ok(out)
    }

    fn insert(
        &self,
        tx: &Transaction<'_>,
        command: NewCommand,
        now_ms: i64,
    ) -> Result<CommandRecord, Error> {
        command.validate(&self.limits, now_ms)?;
        let id = CommandId::new_v7();
        let ttl = i64::try_from(self.config.default_delivery_ttl_ms).unwrap_or(i64::MAX);
        let deadline = command
            .delivery_deadline_ms
            .unwrap_or(now_ms.saturating_add(ttl));
        let timeout = command
            .execution_timeout_ms
            .unwrap_or(self.config.default_execution_timeout_ms)
            .min(i64::MAX as u64 / 2);
        tx.prepare_cached(
            "INSERT INTO commands (id, gateway_id, tenant, kind, payload, target, priority, state, \
             created_ms, updated_ms, delivery_deadline_ms, execution_timeout_ms, timer_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8, ?9, ?10, ?9)",
        )
        .map_err(Error::queue)?
        .execute(params![
            id.as_bytes().as_slice(),
            command.gateway_id,
            command.tenant,
            command.kind,
            command.payload.to_string(),
            command.target,
            command.priority,
            now_ms,
            deadline,
            timeout as i64,
        ])
        .map_err(Error::queue)?;
        Ok(CommandRecord {
            id,
            gateway_id: command.gateway_id,
            tenant: command.tenant,
            kind: command.kind,
            payload: command.payload,
            target: command.target,
            priority: command.priority,
            state: CommandState::Queued,
            created_ms: now_ms,
            updated_ms: now_ms,
            delivery_deadline_ms: deadline,
            execution_timeout_ms: timeout,
            step_deadline_ms: None,
            attempts: 0,
            detail: None,
            result: None,
        })
    }

    fn redeliver_at(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.config.redeliver_after_ms as i64)
    }

    fn deliver_in(
        &self,
        tx: &Transaction<'_>,
        gateway_id: &str,
        tenant: &str,
        now_ms: i64,
        max_in_flight: usize,
        resend: Resend,
    ) -> Result<Delivery, Error> {
        let mut delivery = Delivery::default();
        let unfinished = select_many(
            tx,
            &format!(
                "SELECT {COLUMNS} FROM commands WHERE gateway_id = ?1 AND tenant = ?2 \
                     AND state IN ('sent', 'received', 'in_progress') ORDER BY priority DESC, seq"
            ),
            params![gateway_id, tenant],
        )?;
        if resend != Resend::Nothing {
            for row in &unfinished {
                let r = &row.record;
                if resend == Resend::Sent && r.state != CommandState::Sent {
                    continue;
                }
                if r.state == CommandState::Sent && now_ms >= r.delivery_deadline_ms {
                    continue; // the sweep expires it
                }
                // Sent again now: the next redelivery (or question about the outcome) waits
                // a full interval.
                write(
                    tx,
                    Update {
                        id: &r.id,
                        state: r.state,
                        now_ms,
                        redeliver_at_ms: Some(self.redeliver_at(now_ms)),
                        step_deadline_ms: r.step_deadline_ms,
                        delivery_deadline_ms: r.delivery_deadline_ms,
                        attempts_delta: 1,
                        detail: None,
                        result: None,
                    },
                )?;
                delivery.commands.push(r.to_command());
            }
        }
        let room = max_in_flight.saturating_sub(unfinished.len());
        if room == 0 {
            return Ok(delivery);
        }
        let queued = select_many(
            tx,
            &format!(
                "SELECT {COLUMNS} FROM commands WHERE gateway_id = ?1 AND tenant = ?2 \
                     AND state = 'queued' AND delivery_deadline_ms > ?3 \
                     ORDER BY priority DESC, seq LIMIT ?4"
            ),
            params![gateway_id, tenant, now_ms, room as i64],
        )?;
        for row in queued {
            let r = row.record;
            write(
                tx,
                Update {
                    id: &r.id,
                    state: CommandState::Sent,
                    now_ms,
                    redeliver_at_ms: Some(self.redeliver_at(now_ms)),
                    step_deadline_ms: None,
                    delivery_deadline_ms: r.delivery_deadline_ms,
                    attempts_delta: 1,
                    detail: None,
                    result: None,
                },
            )?;
            delivery.commands.push(r.to_command());
            delivery
                .changes
                .push(change(&r, CommandState::Sent, now_ms, None));
        }
        Ok(delivery)
    }

    fn ack_in(
        &self,
        tx: &Transaction<'_>,
        gateway_id: &str,
        tenant: &str,
        ack: &CommandAck,
        now_ms: i64,
    ) -> Result<AckOutcome, Error> {
        let r = select_owned(tx, gateway_id, tenant, &ack.id)?;
        let reported = CommandState::from(ack.state);
        let forward = !r.state.is_terminal() && reported.rank() > r.state.rank();
        let progress = !r.state.is_terminal()
            && r.state == CommandState::InProgress
            && reported == CommandState::InProgress;
        let applied = forward || progress;
        tx.prepare_cached(
            "INSERT INTO command_acks (command_id, at_ms, state, detail, result, applied) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(Error::queue)?
        .execute(params![
            ack.id.as_bytes().as_slice(),
            now_ms,
            ack.state.as_str(),
            ack.detail,
            ack.result.as_ref().map(|v| v.to_string()),
            applied,
        ])
        .map_err(Error::queue)?;
        if !applied {
            return Ok(AckOutcome {
                tenant: r.tenant,
                state: r.state,
                applied: false,
                change: None,
                progress: false,
            });
        }
        // Still running: the step timer restarts, and so does the time after which the
        // server asks again in case the outcome is lost on the way.
        let (step_deadline, redeliver_at) = match reported {
            CommandState::Received | CommandState::InProgress => (
                Some(now_ms.saturating_add(r.execution_timeout_ms.min(i64::MAX as u64 / 2) as i64)),
                Some(self.redeliver_at(now_ms)),
            ),
            _ => (None, None),
        };
        write(
            tx,
            Update {
                id: &r.id,
                state: reported,
                now_ms,
                redeliver_at_ms: redeliver_at,
                step_deadline_ms: step_deadline,
                delivery_deadline_ms: r.delivery_deadline_ms,
                attempts_delta: 0,
                detail: ack.detail.as_deref(),
                result: ack.result.as_ref(),
            },
        )?;
        Ok(AckOutcome {
            state: reported,
            applied: true,
            change: forward.then(|| change(&r, reported, now_ms, ack.detail.clone())),
            progress,
            tenant: r.tenant,
        })
    }

    fn refuse_in(
        &self,
        tx: &Transaction<'_>,
        gateway_id: &str,
        tenant: &str,
        id: &CommandId,
        detail: &str,
        now_ms: i64,
    ) -> Result<Option<StateChange>, Error> {
        let r = select_owned(tx, gateway_id, tenant, id)?;
        if r.state.is_terminal() {
            return Ok(None);
        }
        write(
            tx,
            Update {
                id,
                state: CommandState::Rejected,
                now_ms,
                redeliver_at_ms: None,
                step_deadline_ms: None,
                delivery_deadline_ms: r.delivery_deadline_ms,
                attempts_delta: 0,
                detail: Some(detail),
                result: None,
            },
        )?;
        Ok(Some(change(
            &r,
            CommandState::Rejected,
            now_ms,
            Some(detail.to_owned()),
        )))
    }
}

/// The command `id` if it belongs to `gateway_id` of `tenant`. Another tenant's command is
/// reported unknown (its existence is not revealed); another gateway's of the same tenant is
/// [`Error::WrongGateway`].
fn select_owned(
    tx: &Transaction<'_>,
    gateway_id: &str,
    tenant: &str,
    id: &CommandId,
) -> Result<CommandRecord, Error> {
    let r = select_one(tx, id)?
        .map(|row| row.record)
        .filter(|r| r.tenant.as_deref() == Some(tenant))
        .ok_or(Error::UnknownCommand { id: *id })?;
    if r.gateway_id != gateway_id {
        return Err(Error::WrongGateway {
            id: *id,
            gateway_id: gateway_id.to_owned(),
        });
    }
    Ok(r)
}

impl CommandQueue for SqliteCommandQueue {
    fn enqueue(&self, command: NewCommand, now_ms: i64) -> Result<CommandRecord, Error> {
        self.with_tx(|tx| self.insert(tx, command, now_ms))
    }

    fn enqueue_many(
        &self,
        commands: Vec<NewCommand>,
        now_ms: i64,
    ) -> Result<Vec<CommandRecord>, Error> {
        self.with_tx(|tx| {
            commands
                .into_iter()
                .map(|c| self.insert(tx, c, now_ms))
                .collect()
        })
    }

    fn take_for_delivery(
        &self,
        gateway_id: &str,
        tenant: &str,
        now_ms: i64,
        max_in_flight: usize,
        resend: Resend,
    ) -> Result<Delivery, Error> {
        self.with_tx(|tx| self.deliver_in(tx, gateway_id, tenant, now_ms, max_in_flight, resend))
    }

    fn record_ack(
        &self,
        gateway_id: &str,
        tenant: &str,
        ack: &CommandAck,
        now_ms: i64,
    ) -> Result<AckOutcome, Error> {
        self.with_tx(|tx| self.ack_in(tx, gateway_id, tenant, ack, now_ms))
    }

    fn refuse(
        &self,
        gateway_id: &str,
        tenant: &str,
        id: &CommandId,
        detail: &str,
        now_ms: i64,
    ) -> Result<Option<StateChange>, Error> {
        self.with_tx(|tx| self.refuse_in(tx, gateway_id, tenant, id, detail, now_ms))
    }

    fn apply(
        &self,
        ops: Vec<QueueOp>,
        now_ms: i64,
    ) -> Result<Vec<Result<QueueOutput, Error>>, Error> {
        self.with_tx(|tx| {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let result = match op {
                    QueueOp::Deliver {
                        gateway_id,
                        tenant,
                        max_in_flight,
                        resend,
                    } => self
                        .deliver_in(tx, &gateway_id, &tenant, now_ms, max_in_flight, resend)
                        .map(QueueOutput::Delivered),
                    QueueOp::Ack {
                        gateway_id,
                        tenant,
                        ack,
                        max_in_flight,
                    } => self
                        .ack_in(tx, &gateway_id, &tenant, &ack, now_ms)
                        .and_then(|outcome| {
                            let next = if outcome.applied && outcome.state.is_terminal() {
                                self.deliver_in(
                                    tx,
                                    &gateway_id,
                                    &tenant,
                                    now_ms,
                                    max_in_flight,
                                    Resend::Nothing,
                                )?
                            } else {
                                Delivery::default()
                            };
                            Ok(QueueOutput::Acked { outcome, next })
                        }),
                    QueueOp::Refuse {
                        gateway_id,
                        tenant,
                        id,
                        detail,
                        max_in_flight,
                    } => self
                        .refuse_in(tx, &gateway_id, &tenant, &id, &detail, now_ms)
                        .and_then(|change| {
                            let next = self.deliver_in(
                                tx,
                                &gateway_id,
                                &tenant,
                                now_ms,
                                max_in_flight,
                                Resend::Nothing,
                            )?;
                            Ok(QueueOutput::Refused { change, next })
                        }),
                };
                // A storage failure rolls the whole batch back; refusals (unknown command,
                // wrong gateway) happen before any write and only concern their own op.
                if let Err(e) = &result
                    && matches!(e, Error::Storage { .. } | Error::CorruptStore { .. })
                {
                    return Err(result.err().unwrap_or(Error::DriverStopped));
                }
                out.push(result);
            }
            Ok(out)
        })
    }

    fn cancel(&self, id: &CommandId, force: bool, now_ms: i64) -> Result<StateChange, Error> {
        self.with_tx(|tx| {
            let r = select_one(tx, id)?
                .ok_or(Error::UnknownCommand { id: *id })?
                .record;
            if r.state.is_terminal() {
                return Err(Error::CommandFinished {
                    id: *id,
                    state: r.state,
                });
            }
            let plain = matches!(r.state, CommandState::Queued | CommandState::Sent);
            if !plain && !force {
                return Err(Error::CancelRequiresForce {
                    id: *id,
                    state: r.state,
                });
            }
            let detail = match r.state {
                CommandState::Queued => "canceled before delivery".to_owned(),
                CommandState::Sent => "canceled before the gateway confirmed it; a gateway that \
                    already got the frame may still run it"
                    .to_owned(),
                state => format!(
                    "canceled with force while `{state}`; the gateway may still run it and must recover on its own"
                ),
            };
            write(
                tx,
                Update {
                    id,
                    state: CommandState::Canceled,
                    now_ms,
                    redeliver_at_ms: None,
                    step_deadline_ms: None,
                    delivery_deadline_ms: r.delivery_deadline_ms,
                    attempts_delta: 0,
                    detail: Some(&detail),
                    result: None,
                },
            )?;
            Ok(change(&r, CommandState::Canceled, now_ms, Some(detail)))
        })
    }

    fn get(&self, id: &CommandId) -> Result<Option<CommandRecord>, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(select_one(&conn, id)?.map(|row| row.record))
    }

    fn list(&self, filter: &CommandFilter) -> Result<Vec<CommandRecord>, Error> {
        self.with_tx(|tx| {
            let rows = select_many(
                tx,
                &format!(
                    "SELECT {COLUMNS} FROM commands WHERE (?1 IS NULL OR gateway_id = ?1) \
                     AND (?2 IS NULL OR state = ?2) AND (?4 IS NULL OR tenant = ?4) \
                     ORDER BY seq DESC LIMIT ?3"
                ),
                params![
                    filter.gateway_id,
                    filter.state.map(|s| s.as_str()),
                    filter.limit.min(i64::MAX as usize) as i64,
                    filter.tenant,
                ],
            )?;
            Ok(rows.into_iter().map(|r| r.record).collect())
        })
    }

    fn acks(&self, id: &CommandId) -> Result<Vec<AckRecord>, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT at_ms, state, detail, result, applied FROM command_acks \
                 WHERE command_id = ?1 ORDER BY seq",
            )
            .map_err(Error::queue)?;
        let rows = stmt
            .query_map(params![id.as_bytes().as_slice()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })
            .map_err(Error::queue)?;
        let mut out = Vec::new();
        for row in rows {
            let (at_ms, state, detail, result, applied) = row.map_err(Error::queue)?;
            let state = match state.as_str() {
                "received" => CommandAckState::Received,
                "in_progress" => CommandAckState::InProgress,
                "succeeded" => CommandAckState::Succeeded,
                "failed" => CommandAckState::Failed,
                "rejected" => CommandAckState::Rejected,
                other => return Err(corrupt(format!("acknowledgement state `{other}`"))),
            };
            let result = result
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| corrupt(format!("acknowledgement result: {e}")))?;
            out.push(AckRecord {
                command_id: *id,
                at_ms,
                state,
                detail,
                result,
                applied,
            });
        }
        Ok(out)
    }

    fn sweep(&self, now_ms: i64) -> Result<Sweep, Error> {
        self.with_tx(|tx| {
            let due = select_many(
                tx,
                &format!("SELECT {COLUMNS} FROM commands WHERE timer_ms IS NOT NULL AND timer_ms <= ?1 ORDER BY timer_ms"),
                params![now_ms],
            )?;
            let mut sweep = Sweep::default();
            for row in due {
                let r = &row.record;
                let (to, detail) = match r.state {
                    CommandState::Queued | CommandState::Sent if now_ms >= r.delivery_deadline_ms => (
                        CommandState::Expired,
                        format!("not received before its delivery deadline ({})", r.delivery_deadline_ms),
                    ),
                    CommandState::Received | CommandState::InProgress
                        if r.step_deadline_ms.is_none_or(|step| now_ms >= step) =>
                    {
                        (
                            CommandState::TimedOut,
                            format!(
                                "no outcome within its execution timeout of {} ms",
                                r.execution_timeout_ms
                            ),
                        )
                    }
                    CommandState::Sent | CommandState::Received | CommandState::InProgress => {
                        // Redelivery due: `received` did not come, or the outcome did not (it
                        // may have been lost on a link that stayed up, or the server may have
                        // failed to store it). The gateway's journal answers a command it
                        // knows with its outcome, or `received` while it still runs.
                        let next = self.redeliver_at(now_ms);
                        write(
                            tx,
                            Update {
                                id: &r.id,
                                state: r.state,
                                now_ms,
                                redeliver_at_ms: Some(next),
                                step_deadline_ms: r.step_deadline_ms,
                                delivery_deadline_ms: r.delivery_deadline_ms,
                                attempts_delta: 1,
                                detail: None,
                                result: None,
                            },
                        )?;
                        sweep.redeliver.push(row.record);
                        continue;
                    }
                    // Queued before its deadline (timer moved by a clock change) or terminal:
                    // nothing to fire; re-arm the right timer.
                    _ => {
                        write(
                            tx,
                            Update {
                                id: &r.id,
                                state: r.state,
                                now_ms: r.updated_ms,
                                redeliver_at_ms: row.redeliver_at_ms,
                                step_deadline_ms: r.step_deadline_ms,
                                delivery_deadline_ms: r.delivery_deadline_ms,
                                attempts_delta: 0,
                                detail: None,
                                result: None,
                            },
                        )?;
                        continue;
                    }
                };
                write(
                    tx,
                    Update {
                        id: &r.id,
                        state: to,
                        now_ms,
                        redeliver_at_ms: None,
                        step_deadline_ms: None,
                        delivery_deadline_ms: r.delivery_deadline_ms,
                        attempts_delta: 0,
                        detail: Some(&detail),
                        result: None,
                    },
                )?;
                sweep.changes.push(change(r, to, now_ms, Some(detail)));
            }
            Ok(sweep)
        })
    }

    fn next_timer_ms(&self) -> Result<Option<i64>, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached("SELECT MIN(timer_ms) FROM commands WHERE timer_ms IS NOT NULL")
            .map_err(Error::queue)?
            .query_row([], |r| r.get(0))
            .map_err(Error::queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::queue::QueueOp;
    use proptest::prelude::*;

    const NOW: i64 = 1_750_000_000_000;
    const T: &str = "acme";

    fn cmd(gateway_id: &str, kind: &str) -> NewCommand {
        NewCommand::new(gateway_id, kind).tenant(T)
    }

    fn queue() -> SqliteCommandQueue {
        SqliteCommandQueue::open_in_memory(QueueConfig {
            redeliver_after_ms: 1_000,
            ..QueueConfig::default()
        })
        .unwrap()
    }

    fn ack(id: CommandId, state: CommandAckState) -> CommandAck {
        CommandAck {
            id,
            state,
            detail: None,
            result: None,
        }
    }

    #[test]
    fn enqueue_validates_and_stores_defaults() {
        let q = queue();
        let err = q
            .enqueue(cmd("gw", "x").delivery_deadline_ms(NOW - 1), NOW)
            .unwrap_err();
        assert!(err.to_string().contains("delivery_deadline_ms"), "{err}");
        assert!(q.enqueue(cmd("", "x"), NOW).is_err());
        let r = q.enqueue(cmd("gw", "x"), NOW).unwrap();
        assert_eq!(r.delivery_deadline_ms, NOW + 24 * 3_600_000);
        assert_eq!(q.get(&r.id).unwrap().unwrap(), r);
        assert_eq!(q.next_timer_ms().unwrap(), Some(r.delivery_deadline_ms));
    }

    #[test]
    fn acks_only_move_forward_and_are_all_recorded() {
        let q = queue();
        let id = q.enqueue(cmd("gw", "x"), NOW).unwrap().id;
        q.take_for_delivery("gw", T, NOW, 8, Resend::Nothing)
            .unwrap();
        let o = q
            .record_ack("gw", T, &ack(id, CommandAckState::InProgress), NOW + 1)
            .unwrap();
        assert_eq!(o.state, CommandState::InProgress);
        // `received` after `in_progress` is stale.
        let o = q
            .record_ack("gw", T, &ack(id, CommandAckState::Received), NOW + 2)
            .unwrap();
        assert!(!o.applied);
        assert_eq!(o.state, CommandState::InProgress);
        let o = q
            .record_ack("gw", T, &ack(id, CommandAckState::Failed), NOW + 3)
            .unwrap();
        assert_eq!(o.change.unwrap().to, CommandState::Failed);
        let o = q
            .record_ack("gw", T, &ack(id, CommandAckState::Succeeded), NOW + 4)
            .unwrap();
        assert!(!o.applied);
        assert_eq!(q.get(&id).unwrap().unwrap().state, CommandState::Failed);
        let applied: Vec<bool> = q.acks(&id).unwrap().iter().map(|a| a.applied).collect();
        assert_eq!(applied, [true, false, true, false]);
        assert!(matches!(
            q.record_ack("other", T, &ack(id, CommandAckState::Succeeded), NOW),
            Err(Error::WrongGateway { .. })
        ));
        assert!(matches!(
            q.record_ack(
                "gw",
                T,
                &ack(CommandId::new_v7(), CommandAckState::Succeeded),
                NOW
            ),
            Err(Error::UnknownCommand { .. })
        ));
    }

    #[test]
    fn sweeps_redeliver_expire_and_time_out() {
        let q = queue();
        let sent = q
            .enqueue(cmd("gw", "a").delivery_deadline_ms(NOW + 5_000), NOW)
            .unwrap()
            .id;
        q.take_for_delivery("gw", T, NOW, 8, Resend::Nothing)
            .unwrap();
        let running = q
            .enqueue(cmd("gw2", "b").execution_timeout_ms(3_000), NOW)
            .unwrap()
            .id;
        q.take_for_delivery("gw2", T, NOW, 8, Resend::Nothing)
            .unwrap();
        q.record_ack("gw2", T, &ack(running, CommandAckState::Received), NOW)
            .unwrap();

        assert_eq!(
            q.next_timer_ms().unwrap(),
            Some(NOW + 1_000),
            "redelivery first"
        );
        // Both go again: `sent` lacks its `received`, `running` its outcome.
        let sweep = q.sweep(NOW + 1_000).unwrap();
        let mut again: Vec<CommandId> = sweep.redeliver.iter().map(|r| r.id).collect();
        again.sort();
        let mut expected = vec![sent, running];
        expected.sort();
        assert_eq!(again, expected);
        assert!(sweep.changes.is_empty());
        let record = q.get(&running).unwrap().unwrap();
        assert_eq!(record.state, CommandState::Received);
        assert_eq!(
            record.step_deadline_ms,
            Some(NOW + 3_000),
            "asking again does not restart the step timer"
        );
        let sweep = q.sweep(NOW + 3_000).unwrap();
        assert_eq!(sweep.changes.len(), 1);
        assert_eq!(sweep.changes[0].id, running);
        assert_eq!(sweep.changes[0].to, CommandState::TimedOut);
        let again: Vec<CommandId> = sweep.redeliver.iter().map(|r| r.id).collect();
        assert_eq!(
            again,
            [sent],
            "a timed-out command is not asked about again"
        );
        let sweep = q.sweep(NOW + 5_000).unwrap();
        assert_eq!(sweep.changes[0].to, CommandState::Expired);
        assert_eq!(sweep.changes[0].id, sent);
        assert_eq!(q.next_timer_ms().unwrap(), None);
    }

    #[test]
    fn each_acknowledgement_of_a_running_command_postpones_the_next_question() {
        let q = queue();
        let id = q
            .enqueue(cmd("gw", "x").execution_timeout_ms(10_000), NOW)
            .unwrap()
            .id;
        q.take_for_delivery("gw", T, NOW, 8, Resend::Nothing)
            .unwrap();
        q.record_ack("gw", T, &ack(id, CommandAckState::Received), NOW)
            .unwrap();
        assert_eq!(q.next_timer_ms().unwrap(), Some(NOW + 1_000));
        q.record_ack("gw", T, &ack(id, CommandAckState::InProgress), NOW + 800)
            .unwrap();
        assert_eq!(q.next_timer_ms().unwrap(), Some(NOW + 1_800));
        assert!(q.sweep(NOW + 1_799).unwrap().redeliver.is_empty());
        assert_eq!(q.sweep(NOW + 1_800).unwrap().redeliver[0].id, id);
        // Finished: no timer is left.
        q.record_ack("gw", T, &ack(id, CommandAckState::Succeeded), NOW + 1_900)
            .unwrap();
        assert_eq!(q.next_timer_ms().unwrap(), None);
    }

    #[test]
    fn a_batch_runs_in_order_and_isolates_refusals() {
        let q = queue();
        let a = q.enqueue(cmd("gw", "a"), NOW).unwrap().id;
        let b = q.enqueue(cmd("gw", "b"), NOW).unwrap().id;
        let ops = vec![
            QueueOp::Deliver {
                gateway_id: "gw".into(),
                tenant: T.into(),
                max_in_flight: 1,
                resend: Resend::Nothing,
            },
            QueueOp::Ack {
                gateway_id: "gw".into(),
                tenant: T.into(),
                ack: ack(CommandId::new_v7(), CommandAckState::Succeeded),
                max_in_flight: 1,
            },
            QueueOp::Ack {
                gateway_id: "gw".into(),
                tenant: T.into(),
                ack: ack(a, CommandAckState::Succeeded),
                max_in_flight: 1,
            },
        ];
        let out = q.apply(ops, NOW).unwrap();
        match &out[0] {
            Ok(QueueOutput::Delivered(d)) => assert_eq!(d.commands[0].id, a),
            other => panic!("{other:?}"),
        }
        assert!(matches!(out[1], Err(Error::UnknownCommand { .. })));
        match &out[2] {
            Ok(QueueOutput::Acked { outcome, next }) => {
                assert_eq!(outcome.state, CommandState::Succeeded);
                assert_eq!(next.commands[0].id, b, "the window moved on to b");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delivery_and_acknowledgements_never_cross_tenants() {
        let q = queue();
        // A command stored for `gw` under another tenant (inconsistent data, or an id that
        // moved tenants): the acme gateway `gw` must never get it, nor finish it.
        let foreign = q
            .enqueue(
                NewCommand::new("gw", "device.door.open").tenant("globex"),
                NOW,
            )
            .unwrap()
            .id;
        let legacy = q.enqueue(NewCommand::new("gw", "x"), NOW).unwrap().id;
        let own = q.enqueue(cmd("gw", "flush"), NOW).unwrap().id;
        let delivery = q
            .take_for_delivery("gw", T, NOW, 8, Resend::Unfinished)
            .unwrap();
        let ids: Vec<CommandId> = delivery.commands.iter().map(|c| c.id).collect();
        assert_eq!(ids, [own], "only acme's command goes to acme's gateway");
        assert_eq!(
            q.get(&foreign).unwrap().unwrap().state,
            CommandState::Queued
        );
        assert_eq!(q.get(&legacy).unwrap().unwrap().state, CommandState::Queued);

        // globex's gateway `gw` (were there one) gets globex's command only.
        let delivery = q
            .take_for_delivery("gw", "globex", NOW, 8, Resend::Nothing)
            .unwrap();
        assert_eq!(delivery.commands.len(), 1);
        assert_eq!(delivery.commands[0].id, foreign);

        // Acknowledgements from another tenant's gateway are refused as unknown and leave
        // no trace; the owner's still work.
        for (id, tenant) in [(foreign, T), (own, "globex")] {
            assert!(matches!(
                q.record_ack("gw", tenant, &ack(id, CommandAckState::Succeeded), NOW),
                Err(Error::UnknownCommand { .. })
            ));
            assert!(q.acks(&id).unwrap().is_empty());
        }
        let outcome = q
            .record_ack("gw", T, &ack(own, CommandAckState::Succeeded), NOW)
            .unwrap();
        assert_eq!(outcome.tenant.as_deref(), Some(T));
        assert_eq!(q.get(&own).unwrap().unwrap().state, CommandState::Succeeded);
        assert_eq!(q.get(&foreign).unwrap().unwrap().state, CommandState::Sent);
    }

    #[test]
    fn listing_filters_by_tenant_before_the_limit() {
        let q = queue();
        for i in 0..3 {
            q.enqueue(cmd("gw-a", &format!("a{i}")), NOW).unwrap();
        }
        for i in 0..5 {
            q.enqueue(
                NewCommand::new("gw-b", format!("b{i}")).tenant("globex"),
                NOW,
            )
            .unwrap();
        }
        let filter = CommandFilter {
            tenant: Some(T.into()),
            limit: 2,
            ..CommandFilter::default()
        };
        let kinds: Vec<String> = q
            .list(&filter)
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(kinds, ["a2", "a1"], "newest two of acme, not none");
        let all = q
            .list(&CommandFilter {
                limit: 100,
                ..CommandFilter::default()
            })
            .unwrap();
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn a_sent_command_cancels_plainly_and_a_late_received_does_not_revive_it() {
        let q = queue();
        let id = q.enqueue(cmd("gw", "x"), NOW).unwrap().id;
        q.take_for_delivery("gw", T, NOW, 8, Resend::Nothing)
            .unwrap();
        let change = q.cancel(&id, false, NOW + 1).unwrap();
        assert_eq!(change.from, Some(CommandState::Sent));
        assert_eq!(change.to, CommandState::Canceled);
        assert!(change.detail.unwrap().contains("may still run it"));
        let outcome = q
            .record_ack("gw", T, &ack(id, CommandAckState::Received), NOW + 2)
            .unwrap();
        assert!(!outcome.applied);
        assert_eq!(outcome.state, CommandState::Canceled);
        assert_eq!(q.get(&id).unwrap().unwrap().state, CommandState::Canceled);
        let acks = q.acks(&id).unwrap();
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].state, CommandAckState::Received);
        assert!(!acks[0].applied);
        assert_eq!(
            q.next_timer_ms().unwrap(),
            None,
            "no redelivery of a canceled command"
        );

        // `received` still needs force.
        let id = q.enqueue(cmd("gw", "y"), NOW).unwrap().id;
        q.take_for_delivery("gw", T, NOW, 8, Resend::Nothing)
            .unwrap();
        q.record_ack("gw", T, &ack(id, CommandAckState::Received), NOW)
            .unwrap();
        assert!(matches!(
            q.cancel(&id, false, NOW),
            Err(Error::CancelRequiresForce { .. })
        ));
        assert_eq!(q.cancel(&id, true, NOW).unwrap().to, CommandState::Canceled);
    }

    #[test]
    fn a_refused_command_is_rejected_with_its_detail_and_frees_the_window() {
        let q = queue();
        let big = q.enqueue(cmd("gw", "big"), NOW).unwrap().id;
        let next = q.enqueue(cmd("gw", "next"), NOW).unwrap().id;
        let delivery = q
            .take_for_delivery("gw", T, NOW, 1, Resend::Nothing)
            .unwrap();
        assert_eq!(delivery.commands[0].id, big);
        let out = q
            .apply(
                vec![QueueOp::Refuse {
                    gateway_id: "gw".into(),
                    tenant: T.into(),
                    id: big,
                    detail: "too large".into(),
                    max_in_flight: 1,
                }],
                NOW + 1,
            )
            .unwrap();
        match &out[0] {
            Ok(QueueOutput::Refused { change, next: more }) => {
                let change = change.as_ref().expect("a change");
                assert_eq!(change.to, CommandState::Rejected);
                assert_eq!(change.tenant.as_deref(), Some(T));
                assert_eq!(more.commands[0].id, next, "the window moved on");
            }
            other => panic!("{other:?}"),
        }
        let record = q.get(&big).unwrap().unwrap();
        assert_eq!(record.state, CommandState::Rejected);
        assert_eq!(record.detail.as_deref(), Some("too large"));
        // Refusing again, or from another tenant, changes nothing.
        assert_eq!(q.refuse("gw", T, &big, "again", NOW + 2).unwrap(), None);
        assert!(matches!(
            q.refuse("gw", "globex", &next, "x", NOW + 2),
            Err(Error::UnknownCommand { .. })
        ));
    }

    #[test]
    fn timers_and_states_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let id = {
            let q = SqliteCommandQueue::open(&path, QueueConfig::default()).unwrap();
            let id = q
                .enqueue(cmd("gw", "x").execution_timeout_ms(2_000), NOW)
                .unwrap()
                .id;
            q.take_for_delivery("gw", T, NOW, 8, Resend::Nothing)
                .unwrap();
            q.record_ack("gw", T, &ack(id, CommandAckState::Received), NOW)
                .unwrap();
            id
        };
        let q = SqliteCommandQueue::open(&path, QueueConfig::default()).unwrap();
        assert_eq!(q.get(&id).unwrap().unwrap().state, CommandState::Received);
        assert_eq!(q.next_timer_ms().unwrap(), Some(NOW + 2_000));
        assert_eq!(
            q.sweep(NOW + 2_000).unwrap().changes[0].to,
            CommandState::TimedOut
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Deliver,
        Ack(u8),
        Sweep(i64),
        Cancel(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Deliver),
            (0..5u8).prop_map(Step::Ack),
            (0..20_000i64).prop_map(Step::Sweep),
            any::<bool>().prop_map(Step::Cancel),
        ]
    }

    proptest! {
        /// Whatever arrives in whatever order, a command's rank never decreases and a terminal
        /// state never changes.
        #[test]
        fn states_never_move_backwards(steps in proptest::collection::vec(step(), 1..30)) {
            let q = queue();
            let id = q
                .enqueue(
                    cmd("gw", "x")
                        .delivery_deadline_ms(NOW + 10_000)
                        .execution_timeout_ms(5_000),
                    NOW,
                )
                .unwrap()
                .id;
            let mut now = NOW;
            let mut last = CommandState::Queued;
            for step in steps {
                match step {
                    Step::Deliver => {
                        q.take_for_delivery("gw", T, now, 4, Resend::Unfinished).unwrap();
                    }
                    Step::Ack(n) => {
                        let state = [
                            CommandAckState::Received,
                            CommandAckState::InProgress,
                            CommandAckState::Succeeded,
                            CommandAckState::Failed,
                            CommandAckState::Rejected,
                        ][n as usize];
                        q.record_ack("gw", T, &ack(id, state), now).unwrap();
                    }
                    Step::Sweep(dt) => {
                        now += dt;
                        q.sweep(now).unwrap();
                    }
                    Step::Cancel(force) => {
                        let _ = q.cancel(&id, force, now);
                    }
                }
                let state = q.get(&id).unwrap().unwrap().state;
                prop_assert!(state.rank() >= last.rank(), "{last:?} -> {state:?}");
                if last.is_terminal() {
                    prop_assert_eq!(state, last);
                }
                last = state;
            }
        }
    }
}

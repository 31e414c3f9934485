//! The synchronous core: one SQLite connection, the lease book and the counters, driven by
//! the writer thread. Every method runs on that thread; nothing here blocks on anything but
//! SQLite.
//!
//! Write operations (`append`, `ack`, `dead_letter`, `purge_dead_letters`, `evict_expired`) run
//! inside a transaction opened with [`Store::begin`]; several of them share one transaction (group
//! commit). Each checks everything that can refuse it *before* it changes anything, so a refused
//! operation ([`Failure::Refused`]) leaves the transaction usable for the others. A storage
//! failure ([`Failure::Storage`]) poisons the transaction: the writer rolls the whole group back
//! with [`Store::rollback`] — which also undoes the in-memory changes through an undo log — and
//! replays each operation in a transaction of its own, so only the operation that hit the
//! problem reports it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_proto::BufferPressure;
use gateway_proto::clock::Clock;
use rusqlite::{Connection, params};
use tokio::sync::watch;

use crate::codec::decode_record;
use crate::leases::{LeaseBook, LiveLease, Slot};
use crate::telemetry;
use crate::{BufferConfig, BufferStats, Error, LeaseId, StoredDeadLetter};

mod lease;
mod write;

/// Free pages given back to the file system per maintenance pass while records remain. Each
/// page given back moves a live page from the end of the file into a free one, on the writer
/// thread: bigger steps slowed a drain under load by ~20 % (4,096 pages per second, measured
/// with the e2e bench). Once the queue is empty everything free goes back at once.
const VACUUM_STEP_PAGES: i64 = 512;

/// Give space back once this many pages are free (and at least a quarter of the file).
const VACUUM_MIN_FREE_PAGES: i64 = 256;

/// Dead-letter code for stored records that no longer decode.
pub(crate) const UNDECODABLE_CODE: &str = "undecodable_record";

/// A lease as the writer hands it out: the stored bytes, decoded by the caller.
#[derive(Debug)]
pub(crate) struct RawLease {
    pub(crate) id: LeaseId,
    /// The stored records back to back.
    pub(crate) data: Vec<u8>,
    /// End offset of each record in `data`.
    pub(crate) ends: Vec<usize>,
    pub(crate) bytes: u64,
    pub(crate) expires_at_ms: i64,
}

impl RawLease {
    /// The stored records in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let slice = &self.data[start..end];
            start = end;
            slice
        })
    }
}

/// Why a write operation did not happen.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Refused before anything changed; the transaction is still good.
    Refused(Error),
    /// SQLite failed; the transaction must be rolled back.
    Storage(Error),
}

/// Counters that change with writes; `Copy`, so a transaction can snapshot them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counts {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) next_seq: i64,
    pub(crate) dead_letters: u64,
    pub(crate) appended_total: u64,
    pub(crate) appended_bytes_total: u64,
    pub(crate) acked_total: u64,
    pub(crate) evicted_age_total: u64,
    pub(crate) evicted_quota_total: u64,
    pub(crate) dead_lettered_total: u64,
    pub(crate) dead_letters_dropped_total: u64,
    pub(crate) undecodable_total: u64,
    pub(crate) commits_total: u64,
}

/// In-memory changes a rollback must undo (the counters are restored from a snapshot).
#[derive(Debug)]
enum Undo {
    /// A lease was removed from the book.
    Lease(LeaseId, LiveLease),
    /// A returned record was taken out of the book.
    Returned(Slot),
}

/// The watch channels the async handles read.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    pub(crate) pressure: Arc<watch::Sender<BufferPressure>>,
    pub(crate) appended: Arc<watch::Sender<u64>>,
    pub(crate) available: Arc<watch::Sender<u64>>,
}

impl Signals {
    pub(crate) fn new() -> Self {
        Signals {
            pressure: Arc::new(watch::channel(BufferPressure::Normal).0),
            appended: Arc::new(watch::channel(0).0),
            available: Arc::new(watch::channel(0).0),
        }
    }
}

/// The synchronous buffer.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
    config: BufferConfig,
    clock: Arc<dyn Clock>,
    book: LeaseBook,
    counts: Counts,
    signals: Signals,
    /// Counts at `begin`; `Some` while a transaction is open.
    snapshot: Option<Counts>,
    undo: Vec<Undo>,
}

impl Store {
    /// Open the file and load the counters.
    pub(crate) fn open(
        path: &Path,
        config: BufferConfig,
        clock: Arc<dyn Clock>,
        signals: Signals,
    ) -> Result<Store, Error> {
        let opened = crate::schema::open(path, &config, clock.now_ms())?;
        let conn = opened.conn;
        let (records, bytes, max_seq, dead_letters) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM records),
                        (SELECT coalesce(sum(length(data)), 0) FROM records),
                        (SELECT coalesce(max(seq), 0) FROM records),
                        (SELECT count(*) FROM dead_letters)",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .map_err(|e| Error::sqlite(path, "loading the queue counters", e))?;
        let counts = Counts {
            records: records as u64,
            bytes: bytes as u64,
            next_seq: max_seq + 1,
            dead_letters: dead_letters as u64,
            ..Counts::default()
        };
        tracing::info!(
            path = %path.display(),
            created = opened.created,
            generation = opened.generation,
            records,
            bytes,
            "opened buffer"
        );
        let store = Store {
            conn,
            path: path.to_path_buf(),
            config,
            clock,
            book: LeaseBook::new(opened.generation),
            counts,
            signals,
            snapshot: None,
            undo: Vec::new(),
        };
        store.publish_levels();
        Ok(store)
    }

    /// The clock's now.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Next lease expiry, to time the writer's sleep.
    pub(crate) fn next_expiry_ms(&self) -> Option<i64> {
        self.book.next_expiry()
    }

    fn sql(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| Error::sqlite(&self.path, context, e)
    }

    fn storage(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> Failure + '_ {
        move |e| Failure::Storage(Error::sqlite(&self.path, context, e))
    }

    // ------------------------------------------------------------------ transactions

    /// Open a transaction for a group of write operations.
    pub(crate) fn begin(&mut self) -> Result<(), Error> {
        debug_assert!(self.snapshot.is_none());
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
            .map_err(self.sql("starting a transaction"))?;
        self.snapshot = Some(self.counts);
        self.undo.clear();
        Ok(())
    }

    /// Commit the open transaction; on failure everything is rolled back.
    pub(crate) fn commit(&mut self) -> Result<(), Error> {
        let before = self.snapshot.expect("commit without begin");
        // Cached statements: parsing BEGIN and COMMIT again for every group costs microseconds.
        let committed = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]));
        if let Err(e) = committed {
            let error = Error::sqlite(&self.path, "committing", e);
            self.rollback();
            return Err(error);
        }
        self.snapshot = None;
        self.undo.clear();
        self.counts.commits_total += 1;
        self.published_commit(&before);
        Ok(())
    }

    /// Roll the open transaction back and undo its in-memory changes.
    pub(crate) fn rollback(&mut self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rollback failed");
        }
        if let Some(snapshot) = self.snapshot.take() {
            self.counts = snapshot;
        }
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Lease(id, lease) => self.book.restore(id, lease),
                Undo::Returned(slot) => self.book.restore_returned(slot),
            }
        }
    }

    // ------------------------------------------------------------------ reads

    /// Dead letters, oldest first.
    pub(crate) fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT record, code, reason, at_ms FROM dead_letters ORDER BY id LIMIT ?1",
            )
            .map_err(self.sql("reading dead letters"))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(self.sql("reading dead letters"))?;
        let mut out = Vec::new();
        for row in rows {
            let (data, code, reason, at_ms) = row.map_err(self.sql("reading dead letters"))?;
            let record = match decode_record(&data) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e.0, "skipping a dead letter that does not decode");
                    continue;
                }
            };
            out.push(StoredDeadLetter {
                record,
                code,
                reason,
                at_ms,
            });
        }
        Ok(out)
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Result<BufferStats, Error> {
        let now = self.now_ms();
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT appended_ms FROM records ORDER BY seq LIMIT 1")
            .and_then(|mut s| {
                let mut rows = s.query([])?;
                rows.next()?.map(|r| r.get(0)).transpose()
            })
            .map_err(self.sql("reading stats"))?;
        let c = self.counts;
        Ok(BufferStats {
            records: c.records,
            bytes: c.bytes,
            leased_records: self.book.leased_records(),
            leased_bytes: self.book.leased_bytes(),
            leases: self.book.live_leases() as u64,
            oldest_age_ms: oldest.map(|t| now.saturating_sub(t).max(0)),
            file_bytes: self.file_bytes(),
            quota_bytes: self.config.quota_bytes,
            pressure: self.pressure(),
            appended_total: c.appended_total,
            acked_total: c.acked_total,
            evicted_age_total: c.evicted_age_total,
            evicted_quota_total: c.evicted_quota_total,
            dead_lettered_total: c.dead_lettered_total,
            dead_letters: c.dead_letters,
            dead_letters_dropped_total: c.dead_letters_dropped_total,
            undecodable_total: c.undecodable_total,
            commits_total: c.commits_total,
        })
    }

    /// Database file plus WAL, in bytes.
    pub(crate) fn file_bytes(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        len(&self.path) + len(Path::new(&wal))
    }

    /// Pressure from the bytes in the queue.
    pub(crate) fn pressure(&self) -> BufferPressure {
        let fill = self.counts.bytes as f64 / self.config.quota_bytes as f64;
        if fill >= self.config.critical_threshold {
            BufferPressure::Critical
        } else if fill >= self.config.warning_threshold {
            BufferPressure::Warning
        } else {
            BufferPressure::Normal
        }
    }

    // ------------------------------------------------------------------ maintenance

    /// Give free pages back to the file system: all of them once the queue is empty, a bounded
    /// step otherwise. Runs outside any transaction.
    pub(crate) fn vacuum(&mut self) -> Result<(), Error> {
        let free: i64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))
            .map_err(self.sql("checking free space"))?;
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .map_err(self.sql("checking free space"))?;
        if free < VACUUM_MIN_FREE_PAGES || free * 4 < pages {
            return Ok(());
        }
        let step = if self.counts.records == 0 {
            free
        } else {
            free.min(VACUUM_STEP_PAGES)
        };
        // The pragma frees pages as it is stepped: run it to completion.
        self.conn
            .prepare(&format!("PRAGMA incremental_vacuum({step})"))
            .and_then(|mut stmt| {
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .map_err(self.sql("giving space back"))?;
        // In WAL mode the file shrinks when the checkpoint applies the truncation.
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(self.sql("checkpointing"))?;
        tracing::debug!(pages = step, "gave free pages back to the file system");
        telemetry::file_bytes(self.file_bytes());
        Ok(())
    }

    /// Close the connection, checkpointing the WAL into the database file.
    pub(crate) fn close(self) -> Result<(), Error> {
        let path = self.path.clone();
        self.conn
            .close()
            .map_err(|(_, e)| Error::sqlite(&path, "closing", e))?;
        tracing::info!(path = %path.display(), "closed buffer");
        Ok(())
    }

    // ------------------------------------------------------------------ publishing

    /// After a commit: metrics, logs and watches for what changed since `before`.
    fn published_commit(&self, before: &Counts) {
        let after = &self.counts;
        let appended = after.appended_total - before.appended_total;
        let age = after.evicted_age_total - before.evicted_age_total;
        let quota = after.evicted_quota_total - before.evicted_quota_total;
        let dropped = after.dead_letters_dropped_total - before.dead_letters_dropped_total;
        if age > 0 {
            tracing::warn!(
                records = age,
                retention_ms = self.config.retention_ms(),
                "evicted records older than the retention"
            );
        }
        if quota > 0 {
            tracing::warn!(
                records = quota,
                quota_bytes = self.config.quota_bytes,
                "evicted the oldest records to stay under the quota (overflow = drop_oldest)"
            );
        }
        if dropped > 0 {
            tracing::warn!(
                dead_letters = dropped,
                max = self.config.max_dead_letters,
                "dropped the oldest dead letters"
            );
        }
        telemetry::committed(before, after);
        if appended > 0 {
            let total = after.appended_total;
            self.signals.appended.send_replace(total);
            self.publish_available();
        }
        self.publish_levels();
    }

    fn publish_available(&self) {
        self.signals.available.send_modify(|n| *n += 1);
    }

    /// Update the pressure watch (only when the level changes) and the gauges.
    fn publish_levels(&self) {
        let level = self.pressure();
        let changed = self.signals.pressure.send_if_modified(|current| {
            if *current == level {
                false
            } else {
                *current = level;
                true
            }
        });
        if changed {
            tracing::info!(pressure = %level, bytes = self.counts.bytes, quota_bytes = self.config.quota_bytes, "buffer pressure changed");
        }
        telemetry::levels(
            &self.counts,
            self.book.leased_records(),
            self.book.leased_bytes(),
            level,
        );
    }
}

/// Delete the rows of `slots` (ascending by seq), one range statement per run of consecutive
/// sequence numbers.
fn delete_slots(conn: &Connection, slots: &[Slot]) -> rusqlite::Result<()> {
    let mut delete = conn.prepare_cached("DELETE FROM records WHERE seq >= ?1 AND seq <= ?2")?;
    let mut i = 0;
    while i < slots.len() {
        let start = slots[i].seq;
        let mut end = start;
        i += 1;
        while i < slots.len() && slots[i].seq == end + 1 {
            end += 1;
            i += 1;
        }
        delete.execute(params![start, end])?;
    }
    Ok(())
}

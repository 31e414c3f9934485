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
use std::sync::mpsc::Receiver;

use gateway_proto::BufferPressure;
use gateway_proto::clock::Clock;
use rusqlite::{Connection, params};
use tokio::sync::watch;

use crate::codec::{EncodedBatch, decode_record};

use crate::leases::{LeaseBook, LiveLease, Slot};
use crate::telemetry;
use crate::writer::Chunk;
use crate::{
    BufferConfig, BufferStats, DeadLetter, Error, EvictionReason, LeaseId, OverflowPolicy,
    StoredDeadLetter,
};

/// Rows read per query while scanning for eviction.
const EVICTION_SCAN_ROWS: i64 = 1024;

/// Free pages given back to the file system per maintenance pass while records remain.
const VACUUM_STEP_PAGES: i64 = 4096;

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

    // ------------------------------------------------------------------ write operations

    /// Store an encoded batch (inside a transaction), evicting first if the policy says so.
    pub(crate) fn append(&mut self, batch: &EncodedBatch, now_ms: i64) -> Result<(), Failure> {
        let needed = batch.bytes();
        if let Some(excess) = self.quota_excess(needed)? {
            self.evict_oldest(EvictionReason::Quota, |freed, _| freed >= excess)?;
        }
        let mut seq = self.counts.next_seq;
        insert_rows(&self.conn, batch, &mut seq, now_ms).map_err(self.storage("appending"))?;
        self.appended(batch, seq);
        Ok(())
    }

    /// Store a streamed append (inside a transaction): insert each chunk as it arrives while the
    /// caller encodes the next, inside a savepoint so a refusal at the end (quota) undoes only
    /// this append. Whatever happens, every chunk ends up in `batch`, so a replay can append it
    /// whole; an abandoned stream leaves `batch` empty.
    pub(crate) fn append_streamed(
        &mut self,
        batch: &mut EncodedBatch,
        rest: Receiver<Chunk>,
        now_ms: i64,
    ) -> Result<(), Failure> {
        let mut seq = self.counts.next_seq;
        let inserted = self
            .conn
            .execute_batch("SAVEPOINT streamed_append")
            .and_then(|()| insert_rows(&self.conn, batch, &mut seq, now_ms));
        if let Err(e) = inserted {
            collect_chunks(batch, &rest);
            return Err(Failure::Storage(Error::sqlite(&self.path, "appending", e)));
        }
        let complete = loop {
            match rest.recv() {
                Ok(Chunk::Records(chunk)) => {
                    if let Err(e) = insert_rows(&self.conn, &chunk, &mut seq, now_ms) {
                        batch.extend(chunk);
                        collect_chunks(batch, &rest);
                        return Err(Failure::Storage(Error::sqlite(&self.path, "appending", e)));
                    }
                    batch.extend(chunk);
                }
                Ok(Chunk::Done) => break true,
                Err(_) => break false,
            }
        };
        let refusal = if complete {
            match self.quota_excess(batch.bytes()) {
                Ok(None) => None,
                Ok(Some(excess)) => {
                    // Feasible: older unleased records cover the excess, so eviction stops
                    // before it reaches the rows just inserted.
                    self.evict_oldest(EvictionReason::Quota, |freed, _| freed >= excess)?;
                    None
                }
                Err(refused) => Some(refused),
            }
        } else {
            *batch = EncodedBatch::default();
            Some(Failure::Refused(Error::Closed))
        };
        let end = match refusal {
            None => "RELEASE streamed_append",
            Some(_) => "ROLLBACK TO streamed_append; RELEASE streamed_append",
        };
        self.conn
            .execute_batch(end)
            .map_err(self.storage("appending"))?;
        match refusal {
            Some(refused) => Err(refused),
            None => {
                self.appended(batch, seq);
                Ok(())
            }
        }
    }

    /// `None` if `needed` more bytes fit under the quota; `Some(excess)` if evicting that many
    /// bytes of unleased records makes them fit (policy `DropOldest`); a refusal otherwise.
    fn quota_excess(&self, needed: u64) -> Result<Option<u64>, Failure> {
        let quota = self.config.quota_bytes;
        if self.counts.bytes + needed <= quota {
            return Ok(None);
        }
        let unevictable = match self.config.overflow {
            OverflowPolicy::RejectNewest => self.counts.bytes,
            OverflowPolicy::DropOldest => self.book.leased_bytes(),
        };
        if needed > quota || unevictable + needed > quota {
            return Err(Failure::Refused(Error::QuotaExceeded {
                needed,
                used: self.counts.bytes,
                quota,
                unevictable,
            }));
        }
        Ok(Some(self.counts.bytes + needed - quota))
    }

    /// Count an appended batch whose rows end before `next_seq`.
    fn appended(&mut self, batch: &EncodedBatch, next_seq: i64) {
        let n = batch.len() as u64;
        self.counts.next_seq = next_seq;
        self.counts.records += n;
        self.counts.bytes += batch.bytes();
        self.counts.appended_total += n;
        self.counts.appended_bytes_total += batch.bytes();
    }

    /// Remove a lease's records (inside a transaction).
    pub(crate) fn ack(&mut self, id: LeaseId) -> Result<(), Failure> {
        let lease = self
            .book
            .remove(id)
            .ok_or(Failure::Refused(Error::LeaseNotFound { lease: id }))?;
        let n = lease.slots.len() as u64;
        let bytes = lease.bytes;
        let result = delete_slots(&self.conn, &lease.slots);
        self.undo.push(Undo::Lease(id, lease));
        result.map_err(self.storage("acking"))?;
        self.counts.records -= n;
        self.counts.bytes -= bytes;
        self.counts.acked_total += n;
        Ok(())
    }

    /// Move the listed records of a lease to the dead letters and remove the rest (inside a
    /// transaction).
    pub(crate) fn dead_letter(
        &mut self,
        id: LeaseId,
        rejected: &[DeadLetter],
        now_ms: i64,
    ) -> Result<(), Failure> {
        // Peek without removing: a refusal must not change anything.
        let Some(lease_len) = self.book.get(id).map(|l| l.slots.len()) else {
            return Err(Failure::Refused(Error::LeaseNotFound { lease: id }));
        };
        let mut seen = vec![false; lease_len];
        for letter in rejected {
            match seen.get_mut(letter.index) {
                None => {
                    return Err(Failure::Refused(Error::InvalidArgument {
                        param: "rejected",
                        reason: format!(
                            "index {} is out of range for a lease of {lease_len} records",
                            letter.index
                        ),
                    }));
                }
                Some(true) => {
                    return Err(Failure::Refused(Error::InvalidArgument {
                        param: "rejected",
                        reason: format!("index {} is listed twice", letter.index),
                    }));
                }
                Some(flag) => *flag = true,
            }
        }
        let Some(lease) = self.book.remove(id) else {
            return Err(Failure::Refused(Error::LeaseNotFound { lease: id }));
        };
        let result = (|| {
            let mut copy = self.conn.prepare_cached(
                "INSERT INTO dead_letters (record, code, reason, at_ms)
                 SELECT data, ?2, ?3, ?4 FROM records WHERE seq = ?1",
            )?;
            for letter in rejected {
                let slot = lease.slots[letter.index];
                copy.execute(params![slot.seq, letter.code, letter.reason, now_ms])?;
            }
            delete_slots(&self.conn, &lease.slots)
        })();
        let n = lease.slots.len() as u64;
        let bytes = lease.bytes;
        self.undo.push(Undo::Lease(id, lease));
        result.map_err(self.storage("dead-lettering"))?;
        let dead = rejected.len() as u64;
        self.counts.records -= n;
        self.counts.bytes -= bytes;
        self.counts.acked_total += n - dead;
        self.counts.dead_lettered_total += dead;
        self.counts.dead_letters += dead;
        self.trim_dead_letters()
    }

    /// Delete the oldest dead letters beyond `max_dead_letters` (inside a transaction).
    fn trim_dead_letters(&mut self) -> Result<(), Failure> {
        let excess = self
            .counts
            .dead_letters
            .saturating_sub(self.config.max_dead_letters);
        if excess == 0 {
            return Ok(());
        }
        let deleted = self
            .conn
            .execute(
                "DELETE FROM dead_letters WHERE id IN
                 (SELECT id FROM dead_letters ORDER BY id LIMIT ?1)",
                [i64::try_from(excess).unwrap_or(i64::MAX)],
            )
            .map_err(self.storage("trimming dead letters"))? as u64;
        self.counts.dead_letters -= deleted;
        self.counts.dead_letters_dropped_total += deleted;
        Ok(())
    }

    /// Delete every dead letter (inside a transaction); how many there were.
    pub(crate) fn purge_dead_letters(&mut self) -> Result<u64, Failure> {
        let deleted = self
            .conn
            .execute("DELETE FROM dead_letters", [])
            .map_err(self.storage("purging dead letters"))? as u64;
        self.counts.dead_letters = 0;
        Ok(deleted)
    }

    /// Evict records at least `retention` old that are not leased (inside a transaction).
    pub(crate) fn evict_expired(&mut self, now_ms: i64) -> Result<u64, Failure> {
        let cutoff = now_ms.saturating_sub(self.config.retention_ms());
        self.evict_oldest(EvictionReason::Age, |_, slot| slot.appended_ms > cutoff)
    }

    /// Evict unleased records oldest first until `done(freed_bytes, next_candidate)` says stop
    /// or none are left. Candidates: returned records, then rows after the lease cursor.
    fn evict_oldest(
        &mut self,
        reason: EvictionReason,
        done: impl Fn(u64, &Slot) -> bool,
    ) -> Result<u64, Failure> {
        let mut freed = 0u64;
        let mut evicted = 0u64;
        let mut doomed: Vec<Slot> = Vec::new();
        // Returned records are all older than the rows after the cursor.
        while let Some(slot) = self.book.first_returned() {
            if done(freed, &slot) {
                return self.finish_eviction(reason, doomed, freed, evicted);
            }
            self.book.take_returned(slot.seq);
            self.undo.push(Undo::Returned(slot));
            doomed.push(slot);
            freed += slot.size;
            evicted += 1;
        }
        let mut after = self.book.cursor();
        'scan: loop {
            let batch = scan_rows(&self.conn, after, EVICTION_SCAN_ROWS)
                .map_err(self.storage("scanning for eviction"))?;
            if batch.is_empty() {
                break;
            }
            for slot in &batch {
                if done(freed, slot) {
                    break 'scan;
                }
                doomed.push(*slot);
                freed += slot.size;
                evicted += 1;
                after = slot.seq;
            }
            if (batch.len() as i64) < EVICTION_SCAN_ROWS {
                break;
            }
        }
        self.finish_eviction(reason, doomed, freed, evicted)
    }

    fn finish_eviction(
        &mut self,
        reason: EvictionReason,
        mut doomed: Vec<Slot>,
        freed: u64,
        evicted: u64,
    ) -> Result<u64, Failure> {
        doomed.sort_unstable_by_key(|s| s.seq);
        delete_slots(&self.conn, &doomed).map_err(self.storage("evicting"))?;
        self.counts.records -= evicted;
        self.counts.bytes -= freed;
        match reason {
            EvictionReason::Age => self.counts.evicted_age_total += evicted,
            EvictionReason::Quota => self.counts.evicted_quota_total += evicted,
        }
        Ok(evicted)
    }

    // ------------------------------------------------------------------ leases

    /// Return expired leases to the queue.
    pub(crate) fn expire_leases(&mut self, now_ms: i64) {
        let expired = self.book.expire(now_ms);
        if expired.is_empty() {
            return;
        }
        let records: usize = expired.iter().map(|(_, n)| n).sum();
        tracing::warn!(
            leases = expired.len(),
            records,
            "leases expired; their records return to the queue"
        );
        telemetry::leases_expired(expired.len() as u64);
        self.publish_available();
        self.publish_levels();
    }

    /// Lease the oldest records nobody holds, as stored (the caller decodes them, off this
    /// thread).
    pub(crate) fn lease(
        &mut self,
        max_records: usize,
        max_bytes: u64,
        now_ms: i64,
    ) -> Result<Option<RawLease>, Error> {
        let mut slots: Vec<Slot> = Vec::new();
        let mut data = Vec::new();
        let mut ends = Vec::new();
        let mut bytes = 0u64;
        let mut full = false;
        let fits = |bytes: u64, size: u64, taken: usize| taken == 0 || bytes + size <= max_bytes;

        // 1. Records that came back from released or expired leases, oldest first.
        let returned: Vec<Slot> = self.book.returned().copied().collect();
        if !returned.is_empty() {
            let mut read = self
                .conn
                .prepare_cached("SELECT data FROM records WHERE seq = ?1")
                .map_err(self.sql("leasing"))?;
            for slot in returned {
                if slots.len() >= max_records || !fits(bytes, slot.size, slots.len()) {
                    full = true;
                    break;
                }
                read.query_row([slot.seq], |r| {
                    data.extend_from_slice(r.get_ref(0)?.as_blob()?);
                    Ok(())
                })
                .map_err(|e| Error::sqlite(&self.path, "leasing", e))?;
                ends.push(data.len());
                bytes += slot.size;
                slots.push(slot);
            }
        }

        // 2. Rows after the cursor, which nobody has seen since open.
        if !full && slots.len() < max_records {
            let mut read = self
                .conn
                .prepare_cached(
                    "SELECT seq, appended_ms, data FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(self.sql("leasing"))?;
            let limit = i64::try_from(max_records - slots.len()).unwrap_or(i64::MAX);
            let mut rows = read
                .query(params![self.book.cursor(), limit])
                .map_err(self.sql("leasing"))?;
            while let Some(row) = rows.next().map_err(self.sql("leasing"))? {
                let blob = row
                    .get_ref(2)
                    .and_then(|v| v.as_blob().map_err(rusqlite::Error::from))
                    .map_err(self.sql("leasing"))?;
                let slot = Slot {
                    seq: row.get(0).map_err(self.sql("leasing"))?,
                    size: blob.len() as u64,
                    appended_ms: row.get(1).map_err(self.sql("leasing"))?,
                };
                if !fits(bytes, slot.size, slots.len()) {
                    break;
                }
                data.extend_from_slice(blob);
                ends.push(data.len());
                bytes += slot.size;
                slots.push(slot);
            }
        }
        if slots.is_empty() {
            return Ok(None);
        }
        let expires_at_ms = now_ms.saturating_add(self.config.lease_timeout_ms());
        let id = self.book.grant(slots, expires_at_ms);
        self.publish_levels();
        Ok(Some(RawLease {
            id,
            data,
            ends,
            bytes,
            expires_at_ms,
        }))
    }

    /// Move records of a lease that no longer decode (by index in the lease) to the dead
    /// letters, so they stop blocking the queue; the rest of the lease stays live.
    pub(crate) fn quarantine(
        &mut self,
        id: LeaseId,
        bad: &[(usize, String)],
        now_ms: i64,
    ) -> Result<(), Error> {
        let Some(lease) = self.book.get(id) else {
            return Err(Error::LeaseNotFound { lease: id });
        };
        let mut doomed = Vec::with_capacity(bad.len());
        for (index, _) in bad {
            let Some(slot) = lease.slots.get(*index) else {
                return Err(Error::InvalidArgument {
                    param: "index",
                    reason: format!("{index} is out of range for lease {id}"),
                });
            };
            doomed.push(*slot);
        }
        self.begin()?;
        let result = (|| {
            let mut copy = self.conn.prepare_cached(
                "INSERT INTO dead_letters (record, code, reason, at_ms)
                 SELECT data, ?2, ?3, ?4 FROM records WHERE seq = ?1",
            )?;
            for (slot, (_, reason)) in doomed.iter().zip(bad) {
                tracing::error!(seq = slot.seq, %reason, "stored record does not decode; moving it to the dead letters");
                copy.execute(params![slot.seq, UNDECODABLE_CODE, reason, now_ms])?;
            }
            let mut sorted = doomed.clone();
            sorted.sort_unstable_by_key(|s| s.seq);
            delete_slots(&self.conn, &sorted)
        })();
        if let Err(e) = result {
            self.rollback();
            return Err(Error::sqlite(&self.path, "quarantining", e));
        }
        let n = doomed.len() as u64;
        self.counts.records -= n;
        self.counts.bytes -= doomed.iter().map(|s| s.size).sum::<u64>();
        self.counts.dead_letters += n;
        self.counts.undecodable_total += n;
        if let Err(Failure::Refused(e) | Failure::Storage(e)) = self.trim_dead_letters() {
            self.rollback();
            return Err(e);
        }
        self.commit()?;
        let indices: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        self.book.detach(id, &indices);
        self.publish_levels();
        Ok(())
    }

    /// Return a lease's records to the queue.
    pub(crate) fn release(&mut self, id: LeaseId) -> Result<(), Error> {
        self.book
            .release(id)
            .ok_or(Error::LeaseNotFound { lease: id })?;
        self.publish_available();
        self.publish_levels();
        Ok(())
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

/// Insert the rows of `batch`, numbering them from `*seq`.
fn insert_rows(
    conn: &Connection,
    batch: &EncodedBatch,
    seq: &mut i64,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let mut insert =
        conn.prepare_cached("INSERT INTO records (seq, appended_ms, data) VALUES (?1, ?2, ?3)")?;
    for data in batch.iter() {
        insert.execute(params![*seq, now_ms, data])?;
        *seq += 1;
    }
    Ok(())
}

/// Take the rest of a stream into `batch`; an abandoned stream empties it.
fn collect_chunks(batch: &mut EncodedBatch, rest: &Receiver<Chunk>) {
    loop {
        match rest.recv() {
            Ok(Chunk::Records(chunk)) => batch.extend(chunk),
            Ok(Chunk::Done) => return,
            Err(_) => {
                *batch = EncodedBatch::default();
                return;
            }
        }
    }
}

/// Read up to `limit` rows after `after` as slots.
fn scan_rows(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Vec<Slot>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, appended_ms, length(data) FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok(Slot {
            seq: r.get(0)?,
            appended_ms: r.get(1)?,
            size: r.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
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

//! The write operations, run inside a group's transaction.

use std::sync::mpsc::Receiver;

use rusqlite::{Connection, params};

use super::{Failure, Store, Undo, delete_slots};
use crate::codec::EncodedBatch;
use crate::leases::Slot;
use crate::writer::Chunk;
use crate::{DeadLetter, Error, EvictionReason, LeaseId, OverflowPolicy};

/// Rows read per query while scanning for eviction.
const EVICTION_SCAN_ROWS: i64 = 1024;

impl Store {
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
    pub(super) fn trim_dead_letters(&mut self) -> Result<(), Failure> {
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

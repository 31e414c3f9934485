//! Leases: handing records out, returning them, quarantining the ones that no longer decode.

use rusqlite::{OptionalExtension, params};

use super::{Failure, RawLease, Store, UNDECODABLE_CODE, delete_slots};
use crate::leases::Slot;
use crate::telemetry;
use crate::{Error, LeaseId};

impl Store {
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
                let found = read
                    .query_row([slot.seq], |r| {
                        data.extend_from_slice(r.get_ref(0)?.as_blob()?);
                        Ok(())
                    })
                    .optional()
                    .map_err(|e| Error::sqlite(&self.path, "leasing", e))?;
                if found.is_none() {
                    // Cannot happen while the book and the table agree; if they ever do not,
                    // forget the slot instead of failing every lease from now on.
                    tracing::error!(seq = slot.seq, "returned record is missing from the table");
                    self.book.take_returned(slot.seq);
                    continue;
                }
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
}

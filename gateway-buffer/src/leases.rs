//! Lease bookkeeping: which stored records are handed out, to whom, until when. Pure in-memory
//! state with time passed in; the store combines it with the database.
//!
//! Invariant, with `cursor` the highest sequence number ever handed out since open: every record
//! row with `seq <= cursor` is either in exactly one live lease or in `returned` (released or
//! expired, waiting to be leased again); every row with `seq > cursor` is in no lease. So "oldest
//! records not leased" is `returned` in order, then the rows after `cursor` — no per-row flag on
//! disk, and a restart (which starts with an empty book and `cursor = 0`) returns every lease by
//! construction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::LeaseId;

/// One stored record as the book sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Row key in `records`.
    pub(crate) seq: i64,
    /// Encoded bytes.
    pub(crate) size: u64,
    /// When it was appended (ms, buffer clock).
    pub(crate) appended_ms: i64,
}

/// A lease that has not been acked, released or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveLease {
    /// The leased records, ascending by `seq`.
    pub(crate) slots: Vec<Slot>,
    /// Sum of the slots' sizes.
    pub(crate) bytes: u64,
    /// Expiry (ms, buffer clock).
    pub(crate) expires_at_ms: i64,
}

/// All lease state of one open buffer.
#[derive(Debug)]
pub(crate) struct LeaseBook {
    generation: u64,
    next_number: u64,
    cursor: i64,
    returned: BTreeMap<i64, Slot>,
    live: HashMap<LeaseId, LiveLease>,
    by_expiry: BTreeSet<(i64, LeaseId)>,
    leased_records: u64,
    leased_bytes: u64,
}

impl LeaseBook {
    /// An empty book for the open numbered `generation`.
    pub(crate) fn new(generation: u64) -> Self {
        LeaseBook {
            generation,
            next_number: 1,
            cursor: 0,
            returned: BTreeMap::new(),
            live: HashMap::new(),
            by_expiry: BTreeSet::new(),
            leased_records: 0,
            leased_bytes: 0,
        }
    }

    /// Highest sequence number handed out since open.
    pub(crate) fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Records under live leases.
    pub(crate) fn leased_records(&self) -> u64 {
        self.leased_records
    }

    /// Bytes under live leases.
    pub(crate) fn leased_bytes(&self) -> u64 {
        self.leased_bytes
    }

    /// Number of live leases.
    pub(crate) fn live_leases(&self) -> usize {
        self.live.len()
    }

    /// Released or expired records waiting to be leased again, oldest first.
    pub(crate) fn returned(&self) -> impl Iterator<Item = &Slot> {
        self.returned.values()
    }

    /// The oldest returned record.
    pub(crate) fn first_returned(&self) -> Option<Slot> {
        self.returned.values().next().copied()
    }

    /// Remove a returned record (it is being evicted or quarantined).
    pub(crate) fn take_returned(&mut self, seq: i64) -> Option<Slot> {
        self.returned.remove(&seq)
    }

    /// Put a returned record back (undo of `take_returned`).
    pub(crate) fn restore_returned(&mut self, slot: Slot) {
        self.returned.insert(slot.seq, slot);
    }

    /// Hand out `slots` (taken from `returned` or from the rows after the cursor, ascending) as
    /// a new lease expiring at `expires_at_ms`.
    pub(crate) fn grant(&mut self, slots: Vec<Slot>, expires_at_ms: i64) -> LeaseId {
        let id = LeaseId {
            generation: self.generation,
            number: self.next_number,
        };
        self.next_number += 1;
        let mut bytes = 0;
        for slot in &slots {
            self.returned.remove(&slot.seq);
            self.cursor = self.cursor.max(slot.seq);
            bytes += slot.size;
        }
        self.leased_records += slots.len() as u64;
        self.leased_bytes += bytes;
        self.by_expiry.insert((expires_at_ms, id));
        self.live.insert(
            id,
            LiveLease {
                slots,
                bytes,
                expires_at_ms,
            },
        );
        id
    }

    /// A live lease.
    pub(crate) fn get(&self, id: LeaseId) -> Option<&LiveLease> {
        self.live.get(&id)
    }

    /// Take a live lease out of the book (ack, dead-letter). Its records are gone from the
    /// queue once the caller deletes them.
    pub(crate) fn remove(&mut self, id: LeaseId) -> Option<LiveLease> {
        let lease = self.live.remove(&id)?;
        self.by_expiry.remove(&(lease.expires_at_ms, id));
        self.leased_records -= lease.slots.len() as u64;
        self.leased_bytes -= lease.bytes;
        Some(lease)
    }

    /// Take the records at `indices` out of a live lease (they left the queue); the rest stay
    /// leased.
    pub(crate) fn detach(&mut self, id: LeaseId, indices: &[usize]) {
        let Some(lease) = self.live.get_mut(&id) else {
            return;
        };
        let mut index = 0;
        lease.slots.retain(|slot| {
            let keep = !indices.contains(&index);
            index += 1;
            if !keep {
                lease.bytes -= slot.size;
                self.leased_records -= 1;
                self.leased_bytes -= slot.size;
            }
            keep
        });
    }

    /// Put back a lease taken by `remove` (undo).
    pub(crate) fn restore(&mut self, id: LeaseId, lease: LiveLease) {
        self.leased_records += lease.slots.len() as u64;
        self.leased_bytes += lease.bytes;
        self.by_expiry.insert((lease.expires_at_ms, id));
        self.live.insert(id, lease);
    }

    /// Return a lease's records to the queue. `None` if the lease is not live.
    pub(crate) fn release(&mut self, id: LeaseId) -> Option<usize> {
        let lease = self.remove(id)?;
        let n = lease.slots.len();
        for slot in lease.slots {
            self.returned.insert(slot.seq, slot);
        }
        Some(n)
    }

    /// Return every lease whose expiry is at or before `now_ms`; the expired ids and their
    /// record counts.
    pub(crate) fn expire(&mut self, now_ms: i64) -> Vec<(LeaseId, usize)> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.by_expiry.first() {
            if at > now_ms {
                break;
            }
            if let Some(n) = self.release(id) {
                expired.push((id, n));
            }
        }
        expired
    }

    /// The earliest expiry of a live lease.
    pub(crate) fn next_expiry(&self) -> Option<i64> {
        self.by_expiry.first().map(|&(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(seq: i64) -> Slot {
        Slot {
            seq,
            size: 10,
            appended_ms: 0,
        }
    }

    #[test]
    fn release_and_expiry_return_records_oldest_first() {
        let mut book = LeaseBook::new(3);
        let a = book.grant(vec![slot(1), slot(2)], 100);
        let b = book.grant(vec![slot(3)], 50);
        assert_eq!(a.generation, 3);
        assert_ne!(a, b);
        assert_eq!(book.cursor(), 3);
        assert_eq!((book.leased_records(), book.leased_bytes()), (3, 30));
        assert_eq!(book.next_expiry(), Some(50));

        assert_eq!(book.expire(49), vec![]);
        assert_eq!(book.expire(50), vec![(b, 1)]);
        assert_eq!(book.release(a), Some(2));
        assert_eq!(book.release(a), None);
        let seqs: Vec<i64> = book.returned().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!((book.leased_records(), book.leased_bytes()), (0, 0));
        assert_eq!(book.cursor(), 3, "the cursor never moves back");
    }

    #[test]
    fn detach_drops_records_from_a_live_lease() {
        let mut book = LeaseBook::new(1);
        let a = book.grant(vec![slot(1), slot(2), slot(3)], 10);
        book.detach(a, &[0, 2]);
        assert_eq!(book.get(a).unwrap().slots, vec![slot(2)]);
        assert_eq!((book.leased_records(), book.leased_bytes()), (1, 10));
        book.release(a);
        assert_eq!(book.returned().count(), 1);
    }

    #[test]
    fn remove_and_restore_are_inverse() {
        let mut book = LeaseBook::new(1);
        let a = book.grant(vec![slot(5)], 10);
        let lease = book.remove(a).unwrap();
        assert_eq!(book.live_leases(), 0);
        assert!(book.remove(a).is_none());
        book.restore(a, lease);
        assert_eq!(book.live_leases(), 1);
        assert_eq!(book.next_expiry(), Some(10));
        assert_eq!(book.expire(10), vec![(a, 1)]);
    }

    #[test]
    fn granting_returned_records_takes_them_out_of_returned() {
        let mut book = LeaseBook::new(1);
        let a = book.grant(vec![slot(1), slot(2)], 10);
        book.release(a);
        let b = book.grant(vec![slot(1)], 20);
        assert_eq!(book.first_returned(), Some(slot(2)));
        assert_eq!(book.take_returned(2), Some(slot(2)));
        assert_eq!(book.first_returned(), None);
        book.restore_returned(slot(2));
        assert_eq!(book.release(b), Some(1));
        assert_eq!(book.returned().count(), 2);
    }
}

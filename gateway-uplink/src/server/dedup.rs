//! The store's dedup index: "has this tenant stored this record id?", as a small log-structured
//! merge tree inside the SQLite file.
//!
//! # Why not a unique index
//!
//! A B-tree index on `(tenant, id)` dirties one random leaf page per insert once it outgrows
//! a transaction's worth of pages, and every commit writes those pages to the WAL; with
//! random (UUIDv4) ids that collapses to a tenth of plain appends or less, and worse as the
//! table grows. Ordering the key by record timestamp does not save it: agents' clocks differ,
//! so one batch lands on as many places in the tree as it has agents (measured: no better
//! than the plain index). See `BENCHMARKS.md`.
//!
//! # Structure
//!
//! * **Memtable** — the keys of records stored since the last flush, in a `HashSet`. Not
//!   persisted separately: the records table is its log. On open it is rebuilt from the
//!   records past each tenant's `flushed_position`.
//! * **Runs** — immutable sorted tables `dedup_run_<n> (k BLOB PRIMARY KEY) WITHOUT ROWID`,
//!   each with a Bloom filter (10 bits per key, 7 probes, ~1 % false positives) stored beside
//!   it in `dedup_runs` and held in memory. A flush writes the memtable's keys in key order —
//!   pure appends, like time-ordered ids.
//!   The flush itself is spread over the following ingest transactions (the frozen memtable
//!   answers lookups until its run is complete), so no request stalls on it.
//! * **Merges** — when `fan_in` runs share a level they are merged into one run of the next
//!   level, a slice at a time within the ingest transactions (about two keys copied per key
//!   stored), so there is no stall and no second writer. Sources stay authoritative until the
//!   merged run is complete; the swap is one transaction.
//!
//! A lookup checks the memtable, then each run whose Bloom filter may hold the key (a probe of
//! its B-tree). A new key costs a hash insert plus, amortized, one sequential write per level.
//!
//! # Invariants
//!
//! * A key is in exactly one place that lookups consult: the memtable, the memtable being
//!   flushed, or one live run (a run under construction is not consulted until it is live,
//!   and then its sources are retired in the same transaction).
//! * A tenant's `flushed_position` only moves when the run holding those keys is live, so a
//!   reopen rebuilds every key not yet in a live run.
//! * Every change to runs and flush positions happens in the ingest transaction; a
//!   transaction that fails leaves the in-memory state stale, so the store reloads it from
//!   the file (`DedupIndex::open`).
//! * A run table without a `dedup_runs` row is an unfinished merge: dropped on open.

use std::collections::{HashSet, VecDeque};

use gateway_proto::RecordId;
use rusqlite::{Connection, OptionalExtension, params};

use crate::Error;

/// `tenant_key` (8 bytes, big-endian) followed by the record id's 16 bytes.
pub(crate) type Key = [u8; 24];

pub(crate) fn key(tenant_key: i64, id: &RecordId) -> Key {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&tenant_key.to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

/// Tunables (see `SqliteStoreConfig`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DedupConfig {
    pub(crate) memtable_keys: usize,
    pub(crate) fan_in: usize,
    pub(crate) merge_min_step: usize,
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dedup_runs (
    run_id INTEGER PRIMARY KEY,
    level INTEGER NOT NULL,
    keys INTEGER NOT NULL,
    bloom BLOB NOT NULL
);
";

const BITS_PER_KEY: u64 = 10;
const PROBES: u64 = 7;
/// Keys copied per merge step and per stored record.
const MERGE_KEYS_PER_RECORD: usize = 2;
const READ_CHUNK: i64 = 1_024;

/// A Bloom filter over keys.
#[derive(Debug, Clone)]
struct Bloom {
    bits: Vec<u64>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer: spreads time-ordered ids as well as random ones.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hashes(k: &Key) -> (u64, u64) {
    let a = u64::from_le_bytes(k[0..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(k[8..16].try_into().unwrap_or_default());
    let c = u64::from_le_bytes(k[16..24].try_into().unwrap_or_default());
    let h1 = mix(a ^ mix(b ^ mix(c)));
    let h2 = mix(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1;
    (h1, h2)
}

impl Bloom {
    fn with_capacity(keys: u64) -> Self {
        let words = (keys.max(1) * BITS_PER_KEY).div_ceil(64) as usize;
        Bloom {
            bits: vec![0; words],
        }
    }

    fn positions(&self, k: &Key) -> impl Iterator<Item = usize> + use<> {
        let (h1, h2) = hashes(k);
        let n = self.bits.len() as u64 * 64;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % n) as usize)
    }

    fn insert(&mut self, k: &Key) {
        for p in self.positions(k) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    fn may_contain(&self, k: &Key) -> bool {
        self.positions(k)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
            return None;
        }
        Some(Bloom {
            bits: bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
        })
    }
}

#[derive(Debug)]
struct Run {
    id: i64,
    level: u32,
    keys: u64,
    bloom: Bloom,
}

fn table(run_id: i64) -> String {
    format!("dedup_run_{run_id}")
}

/// Keys per `INSERT` statement: one statement per key spends most of its time in SQLite's
/// per-statement overhead.
const INSERT_ROWS: usize = 128;

/// Append sorted `keys` to a run table, `INSERT_ROWS` per statement.
fn insert_keys(conn: &Connection, run_id: i64, keys: &[Key]) -> Result<(), Error> {
    for chunk in keys.chunks(INSERT_ROWS) {
        let placeholders = vec!["(?)"; chunk.len()].join(",");
        let mut insert = conn
            .prepare_cached(&format!(
                "INSERT INTO {} (k) VALUES {placeholders}",
                table(run_id)
            ))
            .map_err(db("writing a dedup run"))?;
        insert
            .execute(rusqlite::params_from_iter(chunk.iter().map(|k| &k[..])))
            .map_err(db("writing a dedup run"))?;
    }
    Ok(())
}

/// A merge in progress: `sources` (live runs) into the new table of `target`.
#[derive(Debug)]
struct Merge {
    target: i64,
    level: u32,
    sources: Vec<i64>,
    /// Keys fetched from each source but not yet copied, and whether the source has more.
    buffers: Vec<(VecDeque<Key>, bool)>,
    /// Last key fetched from each source (the next fetch starts after it).
    fetched: Vec<Option<Key>>,
    bloom: Bloom,
    copied: u64,
}

/// A frozen memtable being written to the run table `run_id` in key order.
#[derive(Debug)]
struct Flush {
    run_id: i64,
    keys: Vec<Key>,
    written: usize,
    set: HashSet<Key>,
    bloom: Bloom,
    /// Each tenant's last position when the memtable was frozen: its `flushed_position` once
    /// the run is complete.
    positions: Vec<(i64, i64)>,
}

/// The dedup index of one store. Lives with the writer connection.
#[derive(Debug)]
pub(crate) struct DedupIndex {
    config: DedupConfig,
    memtable: HashSet<Key>,
    /// A full memtable being written out as a run, a slice per transaction.
    flushing: Option<Flush>,
    /// Live runs, newest first.
    runs: Vec<Run>,
    merge: Option<Merge>,
}

fn db(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    Error::store(operation)
}

impl DedupIndex {
    /// Load the runs and rebuild the memtable from the file.
    pub(crate) fn open(conn: &Connection, config: DedupConfig) -> Result<Self, Error> {
        let mut runs = Vec::new();
        {
            let mut stmt = conn
                .prepare("SELECT run_id, level, keys, bloom FROM dedup_runs ORDER BY run_id DESC")
                .map_err(db("loading dedup runs"))?;
            let mut rows = stmt.query([]).map_err(db("loading dedup runs"))?;
            while let Some(row) = rows.next().map_err(db("loading dedup runs"))? {
                let id: i64 = row.get(0).map_err(db("loading dedup runs"))?;
                let blob: Vec<u8> = row.get(3).map_err(db("loading dedup runs"))?;
                let bloom = Bloom::from_bytes(&blob).ok_or(Error::CorruptRecord {
                    position: 0,
                    reason: format!("dedup run {id} has a damaged Bloom filter"),
                })?;
                runs.push(Run {
                    id,
                    level: row.get(1).map_err(db("loading dedup runs"))?,
                    keys: row.get::<_, i64>(2).map_err(db("loading dedup runs"))? as u64,
                    bloom,
                });
            }
        }
        // Unfinished merges: run tables without a row.
        let orphans: Vec<String> = {
            let mut stmt = conn
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'dedup_run_[0-9]*'
                     AND CAST(substr(name, 11) AS INTEGER) NOT IN (SELECT run_id FROM dedup_runs)",
                )
                .map_err(db("finding unfinished merges"))?;
            stmt.query_map([], |row| row.get(0))
                .map_err(db("finding unfinished merges"))?
                .collect::<Result<_, _>>()
                .map_err(db("finding unfinished merges"))?
        };
        for name in orphans {
            conn.execute_batch(&format!("DROP TABLE \"{name}\""))
                .map_err(db("dropping an unfinished merge"))?;
        }
        let mut memtable = HashSet::new();
        {
            let mut stmt = conn
                .prepare(
                    "SELECT r.tenant_key, r.id FROM tenants t JOIN records r
                     ON r.rowid > (t.tenant_key << 40) | t.flushed_position
                     AND r.rowid < (t.tenant_key + 1) << 40",
                )
                .map_err(db("rebuilding the dedup memtable"))?;
            let mut rows = stmt
                .query([])
                .map_err(db("rebuilding the dedup memtable"))?;
            while let Some(row) = rows.next().map_err(db("rebuilding the dedup memtable"))? {
                let tenant: i64 = row.get(0).map_err(db("rebuilding the dedup memtable"))?;
                let id: Vec<u8> = row.get(1).map_err(db("rebuilding the dedup memtable"))?;
                let mut k = [0u8; 24];
                k[..8].copy_from_slice(&tenant.to_be_bytes());
                if id.len() == 16 {
                    k[8..].copy_from_slice(&id);
                    memtable.insert(k);
                }
            }
        }
        Ok(DedupIndex {
            config,
            memtable,
            runs,
            merge: None,
            flushing: None,
        })
    }

    /// True when `k` was stored before (or earlier in this transaction).
    pub(crate) fn contains(&self, conn: &Connection, k: &Key) -> Result<bool, Error> {
        if self.memtable.contains(k) || self.flushing.as_ref().is_some_and(|f| f.set.contains(k)) {
            return Ok(true);
        }
        for run in &self.runs {
            if run.bloom.may_contain(k) {
                let found = conn
                    .prepare_cached(&format!("SELECT 1 FROM {} WHERE k = ?1", table(run.id)))
                    .and_then(|mut s| s.query_row([&k[..]], |_| Ok(())).optional())
                    .map_err(db("probing a dedup run"))?;
                if found.is_some() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Remember a stored key (in the transaction that stores its record).
    pub(crate) fn insert(&mut self, k: Key) {
        self.memtable.insert(k);
    }

    /// Keys held in memory (the memtable and a memtable being flushed).
    pub(crate) fn memtable_len(&self) -> usize {
        self.memtable.len() + self.flushing.as_ref().map_or(0, |f| f.set.len())
    }

    /// Live runs (for tests and stats).
    pub(crate) fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Housekeeping at the end of an ingest transaction that stored `stored` records: freeze
    /// a full memtable, write a slice of a flush or of a merge (about two keys per record
    /// stored, at least `merge_min_step`, so no transaction stalls on a whole run). Call after
    /// the tenants' `next_position` is updated, before commit.
    pub(crate) fn after_batch(&mut self, conn: &Connection, stored: usize) -> Result<(), Error> {
        let budget = (stored * MERGE_KEYS_PER_RECORD).max(self.config.merge_min_step);
        if self.flushing.is_none() && self.memtable.len() >= self.config.memtable_keys {
            self.freeze(conn)?;
        }
        if self.flushing.is_some() {
            self.flush_step(conn, budget)?;
        }
        if self.merge.is_none() {
            self.plan_merge(conn)?;
        }
        if self.merge.is_some() {
            self.merge_step(conn, budget)?;
        }
        Ok(())
    }

    fn new_run_id(conn: &Connection) -> Result<i64, Error> {
        // A counter in the file, so a dropped table's name is never reused.
        let id: i64 = conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'next_run_id'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("allocating a dedup run"))?
            .unwrap_or(1);
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES ('next_run_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [id + 1],
        )
        .map_err(db("allocating a dedup run"))?;
        Ok(id)
    }

    /// Freeze the memtable: its keys go to a new run table over the next transactions.
    fn freeze(&mut self, conn: &Connection) -> Result<(), Error> {
        let run_id = Self::new_run_id(conn)?;
        conn.execute_batch(&format!(
            "CREATE TABLE {} (k BLOB PRIMARY KEY) WITHOUT ROWID",
            table(run_id)
        ))
        .map_err(db("creating a dedup run"))?;
        let positions = conn
            .prepare("SELECT tenant_key, next_position - 1 FROM tenants")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<(i64, i64)>, _>>()
            })
            .map_err(db("freezing the dedup memtable"))?;
        let set = std::mem::take(&mut self.memtable);
        let mut keys: Vec<Key> = set.iter().copied().collect();
        keys.sort_unstable();
        self.flushing = Some(Flush {
            run_id,
            bloom: Bloom::with_capacity(keys.len() as u64),
            keys,
            written: 0,
            set,
            positions,
        });
        Ok(())
    }

    /// Write up to `budget` keys of the frozen memtable; complete the run when all are in.
    fn flush_step(&mut self, conn: &Connection, budget: usize) -> Result<(), Error> {
        let Some(flush) = self.flushing.as_mut() else {
            return Ok(());
        };
        let end = (flush.written + budget).min(flush.keys.len());
        let slice = &flush.keys[flush.written..end];
        insert_keys(conn, flush.run_id, slice)?;
        for k in slice {
            flush.bloom.insert(k);
        }
        flush.written = end;
        if end < flush.keys.len() {
            return Ok(());
        }
        conn.execute(
            "INSERT INTO dedup_runs (run_id, level, keys, bloom) VALUES (?1, 0, ?2, ?3)",
            params![
                flush.run_id,
                flush.keys.len() as i64,
                flush.bloom.to_bytes()
            ],
        )
        .map_err(db("recording a dedup run"))?;
        for (tenant_key, position) in &flush.positions {
            conn.execute(
                "UPDATE tenants SET flushed_position = ?1 WHERE tenant_key = ?2",
                params![position, tenant_key],
            )
            .map_err(db("recording the dedup flush"))?;
        }
        let Some(flush) = self.flushing.take() else {
            return Ok(());
        };
        self.runs.insert(
            0,
            Run {
                id: flush.run_id,
                level: 0,
                keys: flush.keys.len() as u64,
                bloom: flush.bloom,
            },
        );
        Ok(())
    }

    /// Start merging the oldest `fan_in` runs of the lowest level that has that many.
    fn plan_merge(&mut self, conn: &Connection) -> Result<(), Error> {
        let fan_in = self.config.fan_in;
        let mut levels: Vec<u32> = self.runs.iter().map(|r| r.level).collect();
        levels.sort_unstable();
        levels.dedup();
        let Some(level) = levels
            .into_iter()
            .find(|l| self.runs.iter().filter(|r| r.level == *l).count() >= fan_in)
        else {
            return Ok(());
        };
        // Oldest first: `runs` is newest first.
        let sources: Vec<&Run> = self
            .runs
            .iter()
            .rev()
            .filter(|r| r.level == level)
            .take(fan_in)
            .collect();
        let keys: u64 = sources.iter().map(|r| r.keys).sum();
        let source_ids: Vec<i64> = sources.iter().map(|r| r.id).collect();
        let target = Self::new_run_id(conn)?;
        conn.execute_batch(&format!(
            "CREATE TABLE {} (k BLOB PRIMARY KEY) WITHOUT ROWID",
            table(target)
        ))
        .map_err(db("creating a merged dedup run"))?;
        self.merge = Some(Merge {
            target,
            level: level + 1,
            buffers: source_ids.iter().map(|_| (VecDeque::new(), true)).collect(),
            fetched: vec![None; source_ids.len()],
            sources: source_ids,
            bloom: Bloom::with_capacity(keys),
            copied: 0,
        });
        Ok(())
    }

    /// Copy up to `budget` keys of the merge in key order; finish it when every source is
    /// drained.
    fn merge_step(&mut self, conn: &Connection, budget: usize) -> Result<(), Error> {
        let Some(merge) = self.merge.as_mut() else {
            return Ok(());
        };
        let mut out: Vec<Key> = Vec::with_capacity(budget.min(1 << 16));
        for _ in 0..budget {
            // Refill empty buffers that still have keys.
            for i in 0..merge.sources.len() {
                let (buffer, more) = &mut merge.buffers[i];
                if buffer.is_empty() && *more {
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT k FROM {} WHERE k > ?1 ORDER BY k LIMIT ?2",
                            table(merge.sources[i])
                        ))
                        .map_err(db("merging dedup runs"))?;
                    let after = merge.fetched[i].map(|k| k.to_vec()).unwrap_or_default();
                    let rows = stmt
                        .query_map(params![after, READ_CHUNK], |r| r.get::<_, Vec<u8>>(0))
                        .map_err(db("merging dedup runs"))?;
                    for row in rows {
                        let bytes = row.map_err(db("merging dedup runs"))?;
                        if let Ok(k) = <Key>::try_from(bytes.as_slice()) {
                            buffer.push_back(k);
                        }
                    }
                    *more = buffer.len() as i64 == READ_CHUNK;
                    merge.fetched[i] = buffer.back().copied().or(merge.fetched[i]);
                }
            }
            let next = merge
                .buffers
                .iter()
                .enumerate()
                .filter_map(|(i, (b, _))| b.front().map(|k| (i, *k)))
                .min_by_key(|(_, k)| *k);
            let Some((i, k)) = next else {
                break;
            };
            merge.buffers[i].0.pop_front();
            out.push(k);
        }
        insert_keys(conn, merge.target, &out)?;
        for k in &out {
            merge.bloom.insert(k);
        }
        merge.copied += out.len() as u64;
        let done = merge.buffers.iter().all(|(b, more)| b.is_empty() && !more);
        if done {
            self.finish_merge(conn)?;
        }
        Ok(())
    }

    fn finish_merge(&mut self, conn: &Connection) -> Result<(), Error> {
        let Some(merge) = self.merge.take() else {
            return Ok(());
        };
        conn.execute(
            "INSERT INTO dedup_runs (run_id, level, keys, bloom) VALUES (?1, ?2, ?3, ?4)",
            params![
                merge.target,
                merge.level,
                merge.copied as i64,
                merge.bloom.to_bytes()
            ],
        )
        .map_err(db("recording a merged dedup run"))?;
        for source in &merge.sources {
            conn.execute("DELETE FROM dedup_runs WHERE run_id = ?1", [source])
                .map_err(db("retiring a merged dedup run"))?;
            conn.execute_batch(&format!("DROP TABLE {}", table(*source)))
                .map_err(db("retiring a merged dedup run"))?;
        }
        self.runs.retain(|r| !merge.sources.contains(&r.id));
        // Newest first by id: the merged run holds older keys than any level-0 run, but the
        // order only affects which Bloom filter is asked first.
        self.runs.push(Run {
            id: merge.target,
            level: merge.level,
            keys: merge.copied,
            bloom: merge.bloom,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut bloom = Bloom::with_capacity(10_000);
        let keys: Vec<Key> = (0..10_000u64)
            .map(|i| {
                key(
                    1,
                    &RecordId::from_uuid(uuid::Uuid::from_u128(u128::from(i) + 1)).unwrap(),
                )
            })
            .collect();
        for k in &keys {
            bloom.insert(k);
        }
        assert!(keys.iter().all(|k| bloom.may_contain(k)));
        let false_positives = (0..10_000u64)
            .map(|i| {
                key(
                    2,
                    &RecordId::from_uuid(uuid::Uuid::from_u128(u128::from(i) + 1)).unwrap(),
                )
            })
            .filter(|k| bloom.may_contain(k))
            .count();
        assert!(
            false_positives < 300,
            "{false_positives} false positives in 10,000"
        );
        let copy = Bloom::from_bytes(&bloom.to_bytes()).unwrap();
        assert!(keys.iter().all(|k| copy.may_contain(k)));
    }
}

//! The SQLite record store against an in-memory model: random batches of fresh, repeated and
//! cross-tenant ids, reopens, and reads. Dedup limits are shrunk so flushes and merges (and
//! reopens in the middle of a merge) happen every few operations.

use std::collections::{HashMap, HashSet};

use gateway_proto::auth::{Principal, Role};
use gateway_proto::{BatchId, Body, Record, RecordId};
use gateway_uplink::server::{IngestContext, ReadQuery, SqliteRecordStore, SqliteStoreConfig};
use proptest::prelude::*;

fn config() -> SqliteStoreConfig {
    SqliteStoreConfig {
        dedup_memtable_keys: 5,
        dedup_fan_in: 2,
        dedup_merge_min_step: 3,
        max_read_limit: 7,
        ..SqliteStoreConfig::default()
    }
}

fn context(tenant: &str) -> IngestContext {
    IngestContext {
        principal: Principal::new(tenant, "gw-1", Role::Gateway),
        batch_id: BatchId::new_v7(),
        gateway_id: "gw-1".into(),
        received_at_ms: 1_750_000_000_000,
    }
}

/// Record number `n` of the id space: the same `n` always has the same id.
fn record(n: u16, stream: &str) -> Record {
    let id = uuid::Uuid::from_u128(0x4000_0000_0000_4000_8000_0000_0000_0000 | u128::from(n) << 20);
    Record::new(
        stream,
        "agent",
        1_750_000_000_000,
        Body::from(serde_json::Value::from(n)),
    )
    .with_id(RecordId::from_uuid(id).unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        tenant: usize,
        ids: Vec<(u16, bool)>,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..2, prop::collection::vec((0u16..60, any::<bool>()), 0..9))
            .prop_map(|(tenant, ids)| Op::Store { tenant, ids }),
        1 => Just(Op::Reopen),
    ]
}

const TENANTS: [&str; 2] = ["acme", "globex"];

fn read_all(store: &SqliteRecordStore, tenant: &str, stream: Option<&str>) -> Vec<(u64, RecordId)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_blocking(
                tenant,
                &ReadQuery {
                    stream: stream.map(str::to_owned),
                    after,
                    limit: 1_000,
                },
            )
            .unwrap();
        assert!(page.records.len() <= 7, "max_read_limit is honoured");
        if page.records.is_empty() {
            return out;
        }
        after = page.next_after;
        out.extend(
            page.records
                .iter()
                .map(|r| (r.position, r.record.id.unwrap())),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_model_across_flushes_merges_and_reopens(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut store = SqliteRecordStore::open(&path, config()).unwrap();
        // Model: per tenant, the ids in stored order with their stream.
        let mut model: HashMap<&str, Vec<(RecordId, &str)>> = HashMap::new();
        for op in ops {
            match op {
                Op::Reopen => {
                    drop(store);
                    store = SqliteRecordStore::open(&path, config()).unwrap();
                }
                Op::Store { tenant, ids } => {
                    let tenant = TENANTS[tenant];
                    let records: Vec<Record> = ids
                        .iter()
                        .map(|(n, metrics)| record(*n, if *metrics { "metrics" } else { "logs" }))
                        .collect();
                    let stored = model.entry(tenant).or_default();
                    let mut seen: HashSet<RecordId> = stored.iter().map(|(id, _)| *id).collect();
                    let mut expected = (0u32, 0u32);
                    for r in &records {
                        if seen.insert(r.id.unwrap()) {
                            expected.0 += 1;
                            stored.push((r.id.unwrap(), if r.stream == "metrics" { "metrics" } else { "logs" }));
                        } else {
                            expected.1 += 1;
                        }
                    }
                    let outcome = store.store_records_blocking(&context(tenant), &records).unwrap();
                    prop_assert_eq!((outcome.accepted, outcome.duplicates), expected);
                }
            }
            for tenant in TENANTS {
                let want: Vec<(u64, RecordId)> = model
                    .get(tenant)
                    .map(|v| v.iter().enumerate().map(|(i, (id, _))| (i as u64 + 1, *id)).collect())
                    .unwrap_or_default();
                prop_assert_eq!(read_all(&store, tenant, None), want.clone());
                let want_metrics: Vec<(u64, RecordId)> = model
                    .get(tenant)
                    .map(|v| {
                        v.iter()
                            .enumerate()
                            .filter(|(_, (_, s))| *s == "metrics")
                            .map(|(i, (id, _))| (i as u64 + 1, *id))
                            .collect()
                    })
                    .unwrap_or_default();
                prop_assert_eq!(read_all(&store, tenant, Some("metrics")), want_metrics);
                prop_assert_eq!(store.count_blocking(tenant).unwrap(), want.len() as u64);
            }
        }
        let (memtable, runs) = store.dedup_stats();
        // The memtable freezes at 5 keys (+ up to one batch of 8); while the frozen one is
        // written out (at least 2 keys per stored record) the new one grows by at most half of
        // it plus one batch.
        prop_assert!(memtable <= 30, "memtable {memtable}");
        // Merges keep the number of runs logarithmic: at most fan_in - 1 per level plus
        // the ones being merged.
        prop_assert!(runs <= 8, "{runs} runs");
    }
}

#[test]
fn duplicates_are_found_after_many_flushes_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteRecordStore::open(&path, config()).unwrap();
    let records: Vec<Record> = (0..500).map(|n| record(n, "logs")).collect();
    for chunk in records.chunks(7) {
        let outcome = store
            .store_records_blocking(&context("acme"), chunk)
            .unwrap();
        assert_eq!(outcome.accepted as usize, chunk.len());
    }
    let (_, runs) = store.dedup_stats();
    assert!(runs >= 2, "flushes happened: {runs} runs");
    drop(store);
    let store = SqliteRecordStore::open(&path, config()).unwrap();
    for chunk in records.chunks(50) {
        let outcome = store
            .store_records_blocking(&context("acme"), chunk)
            .unwrap();
        assert_eq!(
            (outcome.accepted, outcome.duplicates),
            (0, chunk.len() as u32)
        );
    }
    // Same ids, other tenant: all new.
    let outcome = store
        .store_records_blocking(&context("globex"), &records)
        .unwrap();
    assert_eq!(outcome.accepted, 500);
    assert_eq!(store.count_blocking("acme").unwrap(), 500);
}

#[test]
fn a_stream_read_is_an_index_range_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let _store = SqliteRecordStore::open(&path, SqliteStoreConfig::default()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT rowid, gateway_id, received_at_ms, record FROM records
             WHERE stream = ?1 AND rowid > ?2 AND rowid <= ?3 ORDER BY rowid LIMIT ?4",
        )
        .unwrap()
        .query_map(rusqlite::params!["logs", 0, 100, 10], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join(" | ");
    assert!(
        plan.contains("records_by_stream") && plan.contains("rowid>? AND rowid<?"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "no sort needed: {plan}");
}

//! Model-based test: random sequences of append / lease / ack / release / dead-letter / clock
//! advance (lease expiry) / maintenance (retention) / close-and-reopen run against the real
//! buffer on a real file and against a simple in-memory model, compared after every step: no
//! record lost, none in two live leases, leases hand out exactly the records the model says,
//! counts, bytes, totals and pressure agree.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway_buffer::{Buffer, BufferConfig, DeadLetter, Error, Lease, LeaseId, OverflowPolicy};
use gateway_proto::clock::ManualClock;
use gateway_proto::{BufferPressure, RecordId, pb};
use proptest::prelude::*;

const LEASE_TIMEOUT_MS: i64 = 10_000;
const RETENTION_MS: i64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    /// Append raw records with these body lengths.
    Append(Vec<usize>),
    Lease {
        max_records: usize,
        max_bytes: u64,
    },
    /// Ack the n-th lease ever handed out (live or not).
    Ack(usize),
    Release(usize),
    /// Dead-letter the records of the n-th lease whose bit is set in the mask.
    DeadLetter(usize, u8),
    Advance(i64),
    Maintenance,
    Reopen,
    CheckContents,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(0usize..300, 0..6).prop_map(Op::Append),
        // Large appends stream to the writer in chunks.
        1 => (513usize..1300, 0usize..40).prop_map(|(n, len)| Op::Append(vec![len; n])),
        4 => (1usize..6, prop_oneof![Just(u64::MAX), 1u64..1200])
            .prop_map(|(max_records, max_bytes)| Op::Lease { max_records, max_bytes }),
        3 => (0usize..12).prop_map(Op::Ack),
        2 => (0usize..12).prop_map(Op::Release),
        1 => (0usize..12, any::<u8>()).prop_map(|(l, m)| Op::DeadLetter(l, m)),
        2 => prop_oneof![0i64..3_000, 5_000i64..40_000].prop_map(Op::Advance),
        1 => Just(Op::Maintenance),
        1 => Just(Op::Reopen),
        1 => Just(Op::CheckContents),
    ]
}

#[derive(Debug, Clone)]
struct MRecord {
    id: RecordId,
    size: u64,
    appended_ms: i64,
    /// Index into `Model::leases` of the live lease holding it.
    leased_by: Option<usize>,
}

#[derive(Debug)]
struct MLease {
    id: LeaseId,
    /// Keys into `Model::queue`.
    records: Vec<u64>,
    expires_at_ms: i64,
    live: bool,
}

#[derive(Debug, Default)]
struct Model {
    quota: u64,
    overflow: Option<OverflowPolicy>,
    /// Append order → record.
    queue: BTreeMap<u64, MRecord>,
    next_key: u64,
    leases: Vec<MLease>,
    appended: u64,
    acked: u64,
    evicted_age: u64,
    evicted_quota: u64,
    dead_letters: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.queue.values().map(|r| r.size).sum()
    }

    fn leased(&self) -> (u64, u64) {
        let leased = self.queue.values().filter(|r| r.leased_by.is_some());
        leased.fold((0, 0), |(n, b), r| (n + 1, b + r.size))
    }

    fn expire(&mut self, now: i64) {
        for (index, lease) in self.leases.iter_mut().enumerate() {
            if lease.live && lease.expires_at_ms <= now {
                lease.live = false;
                for key in &lease.records {
                    let record = self.queue.get_mut(key).unwrap();
                    assert_eq!(record.leased_by, Some(index));
                    record.leased_by = None;
                }
            }
        }
    }

    /// Evict unleased records oldest first while `evict` says so.
    fn evict_while(&mut self, mut evict: impl FnMut(&MRecord) -> bool) -> u64 {
        let keys: Vec<u64> = self
            .queue
            .iter()
            .filter(|(_, r)| r.leased_by.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut n = 0;
        for key in keys {
            if !evict(&self.queue[&key]) {
                break;
            }
            self.queue.remove(&key);
            n += 1;
        }
        n
    }

    fn remove_lease(&mut self, index: usize) -> Vec<MRecord> {
        let lease = &mut self.leases[index];
        lease.live = false;
        lease
            .records
            .iter()
            .map(|k| self.queue.remove(k).unwrap())
            .collect()
    }

    fn pressure(&self) -> BufferPressure {
        let fill = self.bytes() as f64 / self.quota as f64;
        if fill >= 0.95 {
            BufferPressure::Critical
        } else if fill >= 0.80 {
            BufferPressure::Warning
        } else {
            BufferPressure::Normal
        }
    }
}

fn encoded_size(record: &gateway_proto::Record) -> u64 {
    let with_id = record.clone().with_id(RecordId::new_v7());
    prost::Message::encoded_len(&pb::Record::from(&with_id)) as u64
}

async fn open(path: &Path, config: &BufferConfig, clock: &ManualClock) -> Buffer {
    Buffer::open_with_clock(path, config.clone(), Arc::new(clock.clone()))
        .await
        .unwrap()
}

async fn check_stats(buffer: &Buffer, model: &Model, step: usize) {
    let stats = buffer.stats().await.unwrap();
    let (leased_records, leased_bytes) = model.leased();
    let live = model.leases.iter().filter(|l| l.live).count() as u64;
    assert_eq!(
        stats.records,
        model.queue.len() as u64,
        "step {step}: records"
    );
    assert_eq!(stats.bytes, model.bytes(), "step {step}: bytes");
    assert_eq!(stats.leased_records, leased_records, "step {step}: leased");
    assert_eq!(
        stats.leased_bytes, leased_bytes,
        "step {step}: leased bytes"
    );
    assert_eq!(stats.leases, live, "step {step}: live leases");
    assert_eq!(
        stats.appended_total, model.appended,
        "step {step}: appended"
    );
    assert_eq!(stats.acked_total, model.acked, "step {step}: acked");
    assert_eq!(
        stats.evicted_age_total, model.evicted_age,
        "step {step}: age"
    );
    assert_eq!(
        stats.evicted_quota_total, model.evicted_quota,
        "step {step}: quota"
    );
    assert_eq!(stats.dead_letters, model.dead_letters, "step {step}: dead");
    assert_eq!(stats.pressure, model.pressure(), "step {step}: pressure");
    assert_eq!(
        buffer.pressure(),
        model.pressure(),
        "step {step}: pressure()"
    );
}

async fn run(ops: Vec<Op>, quota_records: u64, overflow: OverflowPolicy) {
    let (_dir, path) = temp_path();
    let unit = encoded_size(&raw_record(150));
    let config = BufferConfig {
        quota_bytes: quota_records * unit,
        overflow,
        lease_timeout: Duration::from_millis(LEASE_TIMEOUT_MS as u64),
        retention: Duration::from_millis(RETENTION_MS as u64),
        maintenance_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let clock = ManualClock::new(T0);
    let mut buffer = open(&path, &config, &clock).await;
    let mut model = Model {
        quota: config.quota_bytes,
        overflow: Some(overflow),
        ..Default::default()
    };

    for (step, op) in ops.into_iter().enumerate() {
        let now = clock.now();
        model.expire(now);
        match op {
            Op::Append(lengths) => {
                let records: Vec<_> = lengths.iter().map(|&l| raw_record(l)).collect();
                let sizes: Vec<u64> = records.iter().map(encoded_size).collect();
                let need: u64 = sizes.iter().sum();
                let result = buffer.append(records).await;
                let bytes = model.bytes();
                let fits = bytes + need <= model.quota;
                let (_, leased_bytes) = model.leased();
                let expect_ok = fits
                    || (model.overflow == Some(OverflowPolicy::DropOldest)
                        && need <= model.quota
                        && leased_bytes + need <= model.quota);
                match result {
                    Ok(receipt) => {
                        assert!(expect_ok, "step {step}: append should have been refused");
                        assert_eq!(receipt.bytes, need);
                        if !fits {
                            let mut excess = bytes + need - model.quota;
                            let n = model.evict_while(|r| {
                                if excess == 0 {
                                    return false;
                                }
                                excess = excess.saturating_sub(r.size);
                                true
                            });
                            model.evicted_quota += n;
                        }
                        for (id, size) in receipt.ids.into_iter().zip(sizes) {
                            model.queue.insert(
                                model.next_key,
                                MRecord {
                                    id,
                                    size,
                                    appended_ms: now,
                                    leased_by: None,
                                },
                            );
                            model.next_key += 1;
                        }
                        model.appended += lengths.len() as u64;
                    }
                    Err(Error::QuotaExceeded { .. }) => {
                        assert!(!expect_ok, "step {step}: append should have fitted")
                    }
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            Op::Lease {
                max_records,
                max_bytes,
            } => {
                let lease = buffer.lease(max_records, max_bytes).await.unwrap();
                let mut expected = Vec::new();
                let mut bytes = 0;
                for (key, record) in &model.queue {
                    if record.leased_by.is_some() {
                        continue;
                    }
                    if expected.len() == max_records
                        || (!expected.is_empty() && bytes + record.size > max_bytes)
                    {
                        break;
                    }
                    bytes += record.size;
                    expected.push(*key);
                }
                match lease {
                    None => assert!(expected.is_empty(), "step {step}: expected a lease"),
                    Some(Lease {
                        id,
                        records,
                        bytes: got_bytes,
                        expires_at_ms,
                    }) => {
                        let want: Vec<RecordId> =
                            expected.iter().map(|k| model.queue[k].id).collect();
                        assert_eq!(ids(&records), want, "step {step}: leased records");
                        assert_eq!(got_bytes, bytes);
                        assert_eq!(expires_at_ms, now + LEASE_TIMEOUT_MS);
                        let index = model.leases.len();
                        for key in &expected {
                            model.queue.get_mut(key).unwrap().leased_by = Some(index);
                        }
                        model.leases.push(MLease {
                            id,
                            records: expected,
                            expires_at_ms,
                            live: true,
                        });
                    }
                }
            }
            Op::Ack(n) | Op::Release(n) | Op::DeadLetter(n, _) if n >= model.leases.len() => {}
            Op::Ack(n) => {
                let result = buffer.ack(model.leases[n].id).await;
                if model.leases[n].live {
                    result.unwrap();
                    model.acked += model.remove_lease(n).len() as u64;
                } else {
                    assert!(
                        matches!(result, Err(Error::LeaseNotFound { .. })),
                        "step {step}"
                    );
                }
            }
            Op::Release(n) => {
                let result = buffer.release(model.leases[n].id).await;
                if model.leases[n].live {
                    result.unwrap();
                    model.leases[n].live = false;
                    for key in model.leases[n].records.clone() {
                        model.queue.get_mut(&key).unwrap().leased_by = None;
                    }
                } else {
                    assert!(
                        matches!(result, Err(Error::LeaseNotFound { .. })),
                        "step {step}"
                    );
                }
            }
            Op::DeadLetter(n, mask) => {
                let count = model.leases[n].records.len();
                let rejected: Vec<DeadLetter> = (0..count.min(8))
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|index| DeadLetter {
                        index,
                        code: "invalid".into(),
                        reason: format!("step {step}"),
                    })
                    .collect();
                let k = rejected.len() as u64;
                let result = buffer.dead_letter(model.leases[n].id, rejected).await;
                if model.leases[n].live {
                    result.unwrap();
                    let removed = model.remove_lease(n).len() as u64;
                    model.acked += removed - k;
                    model.dead_letters += k;
                } else {
                    assert!(
                        matches!(result, Err(Error::LeaseNotFound { .. })),
                        "step {step}"
                    );
                }
            }
            Op::Advance(ms) => clock.advance_ms(ms),
            Op::Maintenance => {
                buffer.run_maintenance().await.unwrap();
                let cutoff = now - RETENTION_MS;
                model.evicted_age += model.evict_while(|r| r.appended_ms <= cutoff);
            }
            Op::Reopen => {
                buffer.close().await.unwrap();
                buffer = open(&path, &config, &clock).await;
                for lease in &mut model.leases {
                    lease.live = false;
                }
                for record in model.queue.values_mut() {
                    record.leased_by = None;
                }
                model.appended = 0;
                model.acked = 0;
                model.evicted_age = 0;
                model.evicted_quota = 0;
            }
            Op::CheckContents => {
                let unleased: Vec<RecordId> = model
                    .queue
                    .values()
                    .filter(|r| r.leased_by.is_none())
                    .map(|r| r.id)
                    .collect();
                assert_eq!(all_ids(&buffer).await, unleased, "step {step}: contents");
            }
        }
        // The buffer expires leases on its next request, which is the stats call below.
        model.expire(clock.now());
        check_stats(&buffer, &model, step).await;
    }

    // Finally every record the model holds is in the file, in order, after a reopen.
    buffer.close().await.unwrap();
    let buffer = open(&path, &config, &clock).await;
    let all: Vec<RecordId> = model.queue.values().map(|r| r.id).collect();
    assert_eq!(all_ids(&buffer).await, all);
    buffer.close().await.unwrap();
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for ManualClock {
    fn now(&self) -> i64 {
        gateway_proto::clock::Clock::now_ms(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/model.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn buffer_matches_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        quota_records in prop_oneof![Just(1_000_000u64), 4u64..40],
        drop_oldest in any::<bool>(),
    ) {
        let overflow = if drop_oldest { OverflowPolicy::DropOldest } else { OverflowPolicy::RejectNewest };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(ops, quota_records, overflow));
    }
}

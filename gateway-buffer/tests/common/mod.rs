//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_buffer::{Buffer, BufferConfig};
use gateway_proto::clock::ManualClock;
use gateway_proto::{Body, Bytes, Record, RecordId};
use serde_json::json;

/// 2024-11-23T12:00:00Z.
pub const T0: i64 = 1_732_363_200_000;

/// A JSON record whose body carries `n`.
pub fn record(n: u64) -> Record {
    Record::new(
        "logs",
        "agent-1",
        T0,
        Body::from(json!({"n": n, "msg": "hello"})),
    )
}

/// A raw record of exactly `len` body bytes.
pub fn raw_record(len: usize) -> Record {
    Record::new(
        "logs",
        "agent-1",
        T0,
        Body::Raw(Bytes::from(vec![7u8; len])),
    )
}

/// A temp dir and a buffer path inside it.
pub fn temp_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.db");
    (dir, path)
}

/// Open with a manual clock at `T0`.
pub async fn open_manual(path: &Path, config: BufferConfig) -> (Buffer, ManualClock) {
    let clock = ManualClock::new(T0);
    let buffer = Buffer::open_with_clock(path, config, Arc::new(clock.clone()))
        .await
        .unwrap();
    (buffer, clock)
}

/// Ids of records.
pub fn ids(records: &[Record]) -> Vec<RecordId> {
    records
        .iter()
        .map(|r| r.id.expect("leased records carry ids"))
        .collect()
}

/// Every record in the queue, in order, by leasing everything and releasing it again.
pub async fn all_ids(buffer: &Buffer) -> Vec<RecordId> {
    match buffer.lease(usize::MAX, u64::MAX).await.unwrap() {
        None => Vec::new(),
        Some(lease) => {
            let out = ids(&lease.records);
            buffer.release(lease.id).await.unwrap();
            out
        }
    }
}

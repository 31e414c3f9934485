//! Quota, overflow policies, pressure levels, retention (with injected time), a full file
//! (`max_file_bytes` → SQLITE_FULL) and space given back to the file system.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use gateway_buffer::{Buffer, BufferConfig, Error, OverflowPolicy};
use gateway_proto::{BufferPressure, RecordId};

/// Encoded size of `raw_record(100)`, measured through a real append.
async fn unit_size() -> u64 {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let bytes = buffer.append(vec![raw_record(100)]).await.unwrap().bytes;
    buffer.close().await.unwrap();
    bytes
}

fn quota_of(units: u64, unit: u64, overflow: OverflowPolicy) -> BufferConfig {
    BufferConfig {
        quota_bytes: units * unit,
        overflow,
        ..Default::default()
    }
}

#[tokio::test]
async fn pressure_moves_through_the_levels_and_is_watchable() {
    let unit = unit_size().await;
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, quota_of(20, unit, OverflowPolicy::RejectNewest))
        .await
        .unwrap();
    let mut watch = buffer.subscribe_pressure();
    assert_eq!(buffer.pressure(), BufferPressure::Normal);

    buffer
        .append((0..15).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    assert_eq!(buffer.pressure(), BufferPressure::Normal, "75 %");
    assert!(!watch.has_changed().unwrap());

    buffer.append(vec![raw_record(100)]).await.unwrap();
    assert_eq!(buffer.pressure(), BufferPressure::Warning, "80 %");
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), BufferPressure::Warning);

    buffer
        .append((0..3).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    assert_eq!(*watch.borrow_and_update(), BufferPressure::Critical, "95 %");
    assert_eq!(
        buffer.stats().await.unwrap().pressure,
        BufferPressure::Critical
    );

    // Draining brings it back down.
    let lease = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    assert_eq!(
        buffer.pressure(),
        BufferPressure::Critical,
        "leased still counts"
    );
    buffer.ack(lease.id).await.unwrap();
    watch.changed().await.unwrap();
    assert_eq!(*watch.borrow_and_update(), BufferPressure::Normal);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn custom_thresholds_apply() {
    let unit = unit_size().await;
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        warning_threshold: 0.5,
        critical_threshold: 0.6,
        ..quota_of(10, unit, OverflowPolicy::RejectNewest)
    };
    let buffer = Buffer::open(&path, config).await.unwrap();
    buffer
        .append((0..5).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    assert_eq!(buffer.pressure(), BufferPressure::Warning);
    buffer.append(vec![raw_record(100)]).await.unwrap();
    assert_eq!(buffer.pressure(), BufferPressure::Critical);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn reject_newest_refuses_at_the_quota_and_keeps_everything() {
    let unit = unit_size().await;
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, quota_of(10, unit, OverflowPolicy::RejectNewest))
        .await
        .unwrap();
    let kept = buffer
        .append((0..9).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    match buffer.append(vec![raw_record(100), raw_record(100)]).await {
        Err(Error::QuotaExceeded {
            needed,
            used,
            quota,
            ..
        }) => assert_eq!((needed, used, quota), (2 * unit, 9 * unit, 10 * unit)),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    // Exactly at the quota is fine.
    let last = buffer.append(vec![raw_record(100)]).await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.bytes), (10, 10 * unit));
    assert_eq!(stats.evicted_quota_total, 0);
    let mut expected = kept.ids.clone();
    expected.extend(last.ids);
    assert_eq!(all_ids(&buffer).await, expected);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn drop_oldest_evicts_unleased_records_oldest_first_and_counts_them() {
    let unit = unit_size().await;
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, quota_of(10, unit, OverflowPolicy::DropOldest))
        .await
        .unwrap();
    let first = buffer
        .append((0..10).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    // Lease the three oldest: they must survive eviction.
    let held = buffer.lease(3, u64::MAX).await.unwrap().unwrap();
    // Four more records: the four oldest unleased ones make room.
    let more = buffer
        .append((0..4).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.evicted_quota_total, 4);
    assert_eq!((stats.records, stats.bytes), (10, 10 * unit));

    buffer.release(held.id).await.unwrap();
    let mut expected = first.ids[0..3].to_vec();
    expected.extend(&first.ids[7..10]);
    expected.extend(&more.ids);
    assert_eq!(all_ids(&buffer).await, expected);

    // Now returned records are the oldest unleased ones: they go first.
    buffer.append(vec![raw_record(100)]).await.unwrap();
    let ids = all_ids(&buffer).await;
    assert_eq!(ids[0], first.ids[1]);
    assert_eq!(buffer.stats().await.unwrap().evicted_quota_total, 5);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn drop_oldest_cannot_evict_leased_records_nor_fit_an_oversized_append() {
    let unit = unit_size().await;
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, quota_of(4, unit, OverflowPolicy::DropOldest))
        .await
        .unwrap();
    assert!(matches!(
        buffer
            .append((0..5).map(|_| raw_record(100)).collect())
            .await,
        Err(Error::QuotaExceeded { .. })
    ));
    buffer
        .append((0..4).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    let lease = buffer.lease(3, u64::MAX).await.unwrap().unwrap();
    match buffer.append(vec![raw_record(100), raw_record(100)]).await {
        Err(Error::QuotaExceeded { unevictable, .. }) => assert_eq!(unevictable, 3 * unit),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(buffer.stats().await.unwrap().evicted_quota_total, 0);
    buffer.append(vec![raw_record(100)]).await.unwrap();
    assert_eq!(buffer.stats().await.unwrap().evicted_quota_total, 1);
    buffer.ack(lease.id).await.unwrap();
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn retention_evicts_by_age_on_the_injected_clock() {
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        retention: Duration::from_secs(7 * 86_400),
        lease_timeout: Duration::from_secs(30 * 86_400),
        ..Default::default()
    };
    let (buffer, clock) = open_manual(&path, config).await;
    let old = buffer.append(vec![record(1), record(2)]).await.unwrap();
    clock.advance_ms(86_400_000);
    let newer = buffer.append(vec![record(3)]).await.unwrap();
    // The oldest record is leased: it must not be evicted while the lease lives.
    let lease = buffer.lease(1, u64::MAX).await.unwrap().unwrap();
    assert_eq!(
        buffer.stats().await.unwrap().oldest_age_ms,
        Some(86_400_000)
    );

    clock.set_ms(T0 + 7 * 86_400_000 - 1);
    buffer.run_maintenance().await.unwrap();
    assert_eq!(buffer.stats().await.unwrap().evicted_age_total, 0);

    clock.set_ms(T0 + 7 * 86_400_000);
    buffer.run_maintenance().await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.evicted_age_total, 1, "only the unleased old record");
    assert_eq!(stats.records, 2);

    buffer.release(lease.id).await.unwrap();
    buffer.run_maintenance().await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.evicted_age_total, 2);
    assert_eq!(all_ids(&buffer).await, newer.ids);
    assert!(!all_ids(&buffer).await.contains(&old.ids[0]));

    clock.set_ms(T0 + 8 * 86_400_000);
    buffer.run_maintenance().await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.evicted_age_total), (0, 3));
    assert_eq!(stats.oldest_age_ms, None);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn retention_runs_by_itself_on_the_maintenance_interval() {
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        retention: Duration::from_secs(60),
        maintenance_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let (buffer, clock) = open_manual(&path, config).await;
    buffer.append(vec![record(1)]).await.unwrap();
    clock.advance_ms(61_000);
    let mut waited = 0;
    while buffer.stats().await.unwrap().records > 0 {
        assert!(waited < 500, "maintenance did not run within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(buffer.stats().await.unwrap().evicted_age_total, 1);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn a_full_file_is_a_typed_error_and_the_buffer_recovers() {
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        max_file_bytes: Some(512 * 1024),
        ..Default::default()
    };
    let buffer = Buffer::open(&path, config.clone()).await.unwrap();
    let mut stored: Vec<RecordId> = Vec::new();
    let mut full = false;
    for _ in 0..200 {
        match buffer
            .append((0..8).map(|_| raw_record(1000)).collect())
            .await
        {
            Ok(r) => stored.extend(r.ids),
            Err(Error::DiskFull { path: p }) => {
                assert_eq!(p, path);
                full = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(full, "512 KiB cannot hold 1.6 MB of records");
    let stats = buffer.stats().await.unwrap();
    assert_eq!(
        stats.records,
        stored.len() as u64,
        "the failed append left nothing"
    );
    assert_eq!(all_ids(&buffer).await, stored);

    // Small appends from many tasks at once: one oversized append hits the wall, the others
    // still fit if they land in the same group (the group is replayed one by one).
    let lease = buffer.lease(24, u64::MAX).await.unwrap().unwrap();
    buffer.ack(lease.id).await.unwrap();
    stored.drain(..24);
    let huge = buffer.append((0..400).map(|_| raw_record(1000)).collect());
    let small = buffer.append(vec![raw_record(10)]);
    let (huge, small) = tokio::join!(huge, small);
    assert!(matches!(huge, Err(Error::DiskFull { .. })), "{huge:?}");
    stored.extend(small.unwrap().ids);

    // Space returns inside the file when records are acked: appends work again.
    let again = buffer
        .append((0..8).map(|_| raw_record(1000)).collect())
        .await
        .unwrap();
    stored.extend(again.ids);
    assert_eq!(all_ids(&buffer).await, stored);
    buffer.close().await.unwrap();

    // And a bigger limit on reopen lifts it.
    let bigger = BufferConfig {
        max_file_bytes: Some(4 * 1024 * 1024),
        ..config
    };
    let buffer = Buffer::open(&path, bigger).await.unwrap();
    buffer
        .append((0..200).map(|_| raw_record(1000)).collect())
        .await
        .unwrap();
    assert_eq!(
        buffer.stats().await.unwrap().records,
        stored.len() as u64 + 200
    );
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn a_partly_drained_queue_gives_some_space_back_and_keeps_its_records() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let mut kept = Vec::new();
    for _ in 0..10 {
        kept = buffer
            .append((0..1000).map(|_| raw_record(1000)).collect())
            .await
            .unwrap()
            .ids;
    }
    let full = buffer.stats().await.unwrap().file_bytes;
    for _ in 0..9 {
        let lease = buffer.lease(1000, u64::MAX).await.unwrap().unwrap();
        buffer.ack(lease.id).await.unwrap();
    }
    buffer.run_maintenance().await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert!(
        stats.file_bytes < full,
        "some space goes back while records remain: {full} -> {}",
        stats.file_bytes
    );
    assert_eq!(stats.records, 1000);
    let ids: HashSet<_> = all_ids(&buffer).await.into_iter().collect();
    assert_eq!(ids, kept.into_iter().collect::<HashSet<_>>());
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn draining_gives_space_back_to_the_file_system() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    for _ in 0..10 {
        buffer
            .append((0..1000).map(|_| raw_record(1000)).collect())
            .await
            .unwrap();
    }
    let full = buffer.stats().await.unwrap().file_bytes;
    assert!(full > 10_000_000, "{full}");
    while let Some(lease) = buffer.lease(1000, u64::MAX).await.unwrap() {
        buffer.ack(lease.id).await.unwrap();
    }
    buffer.run_maintenance().await.unwrap();
    let drained = buffer.stats().await.unwrap().file_bytes;
    assert!(
        drained < full / 10,
        "file should shrink after draining: {full} -> {drained}"
    );
    let ids: HashSet<_> = all_ids(&buffer).await.into_iter().collect();
    assert!(ids.is_empty());
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn large_appends_stream_and_stay_all_or_nothing() {
    let unit = unit_size().await;
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, quota_of(3000, unit, OverflowPolicy::RejectNewest))
        .await
        .unwrap();
    let receipt = buffer
        .append((0..2000).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    assert_eq!(receipt.ids.len(), 2000);
    assert!(receipt.ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(receipt.bytes, 2000 * unit);
    // A streamed append over the quota is refused whole, after it was streamed.
    assert!(matches!(
        buffer
            .append((0..1001).map(|_| raw_record(100)).collect())
            .await,
        Err(Error::QuotaExceeded { .. })
    ));
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.bytes), (2000, 2000 * unit));
    assert_eq!(all_ids(&buffer).await, receipt.ids);
    buffer.close().await.unwrap();

    // Under drop_oldest the same append evicts the oldest to fit.
    let buffer = Buffer::open(&path, quota_of(3000, unit, OverflowPolicy::DropOldest))
        .await
        .unwrap();
    let more = buffer
        .append((0..1001).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.evicted_quota_total), (3000, 1));
    let ids = all_ids(&buffer).await;
    assert_eq!(ids[..1999], receipt.ids[1..]);
    assert_eq!(ids[1999..], more.ids[..]);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn a_streamed_append_that_fills_the_file_leaves_nothing_behind() {
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        max_file_bytes: Some(1024 * 1024),
        ..Default::default()
    };
    let buffer = Buffer::open(&path, config).await.unwrap();
    let kept = buffer
        .append((0..100).map(|_| raw_record(1000)).collect())
        .await
        .unwrap();
    let result = buffer
        .append((0..3000).map(|_| raw_record(1000)).collect())
        .await;
    assert!(matches!(result, Err(Error::DiskFull { .. })), "{result:?}");
    assert_eq!(buffer.stats().await.unwrap().records, 100);
    assert_eq!(all_ids(&buffer).await, kept.ids);
    buffer.append(vec![raw_record(1000)]).await.unwrap();
    buffer.close().await.unwrap();
}

//! Append, lease, ack, release, expiry, dead letters and reopen on a real SQLite file.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use gateway_buffer::{Buffer, BufferConfig, DeadLetter, Error};
use gateway_proto::RecordId;

#[tokio::test]
async fn append_assigns_v7_ids_and_keeps_given_ones() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let given = RecordId::new_v7();
    let receipt = buffer
        .append(vec![record(1), record(2).with_id(given), record(3)])
        .await
        .unwrap();
    assert_eq!(receipt.ids.len(), 3);
    assert_eq!(receipt.ids[1], given);
    for id in [receipt.ids[0], receipt.ids[2]] {
        assert_eq!(id.as_uuid().get_version_num(), 7);
    }
    assert!(receipt.bytes > 0);

    let lease = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    assert_eq!(ids(&lease.records), receipt.ids);
    assert_eq!(lease.bytes, receipt.bytes);
    assert_eq!(lease.records[1], record(2).with_id(given));
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn empty_append_and_empty_queue() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let receipt = buffer.append(vec![]).await.unwrap();
    assert!(receipt.ids.is_empty());
    assert!(buffer.lease(10, 1000).await.unwrap().is_none());
    assert!(matches!(
        buffer.lease(0, 1000).await,
        Err(Error::InvalidArgument {
            param: "max_records",
            ..
        })
    ));
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn leases_respect_limits_but_always_hold_one_record() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let receipt = buffer
        .append((0..10).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    let size = receipt.bytes / 10;

    let a = buffer.lease(3, u64::MAX).await.unwrap().unwrap();
    assert_eq!(ids(&a.records), receipt.ids[0..3]);
    let b = buffer.lease(100, size * 2 + 1).await.unwrap().unwrap();
    assert_eq!(ids(&b.records), receipt.ids[3..5], "byte limit");
    let c = buffer.lease(100, 1).await.unwrap().unwrap();
    assert_eq!(
        ids(&c.records),
        receipt.ids[5..6],
        "one record even over max_bytes"
    );
    let d = buffer.lease(100, u64::MAX).await.unwrap().unwrap();
    assert_eq!(ids(&d.records), receipt.ids[6..10]);
    assert!(buffer.lease(100, u64::MAX).await.unwrap().is_none());

    let stats = buffer.stats().await.unwrap();
    assert_eq!(
        (stats.records, stats.leased_records, stats.leases),
        (10, 10, 4)
    );
    assert_eq!(stats.leased_bytes, receipt.bytes);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn ack_removes_release_returns_in_order_ahead_of_newer_records() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let first = buffer.append((0..4).map(record).collect()).await.unwrap();
    let a = buffer.lease(2, u64::MAX).await.unwrap().unwrap();
    let b = buffer.lease(2, u64::MAX).await.unwrap().unwrap();
    let later = buffer.append(vec![record(9)]).await.unwrap();

    buffer.ack(b.id).await.unwrap();
    assert!(matches!(
        buffer.ack(b.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    buffer.release(a.id).await.unwrap();
    assert!(matches!(
        buffer.release(a.id).await,
        Err(Error::LeaseNotFound { .. })
    ));

    let again = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    let mut expected = first.ids[0..2].to_vec();
    expected.extend(&later.ids);
    assert_eq!(ids(&again.records), expected);
    buffer.ack(again.id).await.unwrap();

    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.records, 0);
    assert_eq!(stats.bytes, 0);
    assert_eq!(stats.appended_total, 5);
    assert_eq!(stats.acked_total, 5);
    assert_eq!(stats.oldest_age_ms, None);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn expired_leases_return_by_themselves_and_cannot_be_acked() {
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        lease_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let (buffer, clock) = open_manual(&path, config).await;
    let receipt = buffer.append((0..3).map(record).collect()).await.unwrap();
    let lease = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    assert_eq!(lease.expires_at_ms, T0 + 30_000);
    let available = buffer.subscribe_available();

    clock.advance_ms(29_999);
    assert!(buffer.lease(10, u64::MAX).await.unwrap().is_none());
    assert!(!available.has_changed().unwrap());
    clock.advance_ms(1);
    let again = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    assert!(available.has_changed().unwrap(), "expiry signals new work");
    assert_eq!(ids(&again.records), receipt.ids);
    assert!(matches!(
        buffer.ack(lease.id).await,
        Err(Error::LeaseNotFound { lease: l }) if l == lease.id
    ));
    buffer.ack(again.id).await.unwrap();
    assert_eq!(buffer.stats().await.unwrap().records, 0);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn reopening_returns_every_lease_and_keeps_everything_unacked() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let receipt = buffer.append((0..6).map(record).collect()).await.unwrap();
    let acked = buffer.lease(2, u64::MAX).await.unwrap().unwrap();
    buffer.ack(acked.id).await.unwrap();
    let held = buffer.lease(2, u64::MAX).await.unwrap().unwrap();
    buffer.close().await.unwrap();

    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    assert!(matches!(
        buffer.ack(held.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    assert_eq!(all_ids(&buffer).await, receipt.ids[2..6]);
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.leased_records), (4, 0));
    assert_eq!(stats.appended_total, 0, "totals count since open");
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    match Buffer::open(&path, BufferConfig::default()).await {
        Err(Error::Locked { path: p }) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    buffer.close().await.unwrap();
    Buffer::open(&path, BufferConfig::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
}

#[tokio::test]
async fn close_makes_every_clone_answer_closed() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let clone = buffer.clone();
    buffer.close().await.unwrap();
    assert!(matches!(
        clone.append(vec![record(1)]).await,
        Err(Error::Closed)
    ));
    assert!(matches!(clone.stats().await, Err(Error::Closed)));
}

#[tokio::test]
async fn dropping_every_handle_shuts_the_writer_down() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let receipt = buffer.append(vec![record(1)]).await.unwrap();
    drop(buffer);
    // The writer releases the file shortly after the last handle is gone.
    let mut reopened = None;
    for _ in 0..200 {
        match Buffer::open(&path, BufferConfig::default()).await {
            Ok(b) => {
                reopened = Some(b);
                break;
            }
            Err(Error::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let buffer = reopened.expect("the file is released after the last drop");
    assert_eq!(all_ids(&buffer).await, receipt.ids);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_atomic_with_the_ack_and_readable() {
    let (_dir, path) = temp_path();
    let (buffer, _clock) = open_manual(&path, BufferConfig::default()).await;
    let receipt = buffer.append((0..4).map(record).collect()).await.unwrap();
    let lease = buffer.lease(10, u64::MAX).await.unwrap().unwrap();

    let bad = |index| DeadLetter {
        index,
        code: "invalid_stream".into(),
        reason: format!("record {index} is bad"),
    };
    assert!(matches!(
        buffer.dead_letter(lease.id, vec![bad(4)]).await,
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        buffer.dead_letter(lease.id, vec![bad(1), bad(1)]).await,
        Err(Error::InvalidArgument { .. })
    ));
    // The refusals changed nothing: the lease is still live.
    assert_eq!(buffer.stats().await.unwrap().leased_records, 4);

    buffer
        .dead_letter(lease.id, vec![bad(3), bad(1)])
        .await
        .unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.records, 0);
    assert_eq!(stats.acked_total, 2);
    assert_eq!(stats.dead_lettered_total, 2);
    assert_eq!(stats.dead_letters, 2);

    let letters = buffer.dead_letters(10).await.unwrap();
    let got: HashSet<RecordId> = letters.iter().map(|d| d.record.id.unwrap()).collect();
    assert_eq!(got, HashSet::from([receipt.ids[1], receipt.ids[3]]));
    assert!(
        letters
            .iter()
            .all(|d| d.code == "invalid_stream" && d.at_ms == T0)
    );
    assert_eq!(buffer.dead_letters(1).await.unwrap().len(), 1);

    assert_eq!(buffer.purge_dead_letters().await.unwrap(), 2);
    assert_eq!(buffer.stats().await.unwrap().dead_letters, 0);
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn dead_letters_beyond_the_cap_drop_the_oldest() {
    let (_dir, path) = temp_path();
    let config = BufferConfig {
        max_dead_letters: 3,
        ..Default::default()
    };
    let buffer = Buffer::open(&path, config).await.unwrap();
    let receipt = buffer.append((0..5).map(record).collect()).await.unwrap();
    let lease = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    let all = (0..5)
        .map(|index| DeadLetter {
            index,
            code: "c".into(),
            reason: "r".into(),
        })
        .collect();
    buffer.dead_letter(lease.id, all).await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!(
        (stats.dead_letters, stats.dead_letters_dropped_total),
        (3, 2)
    );
    let kept: Vec<RecordId> = buffer
        .dead_letters(10)
        .await
        .unwrap()
        .iter()
        .map(|d| d.record.id.unwrap())
        .collect();
    assert_eq!(kept, receipt.ids[2..5]);
    buffer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_consumers_never_share_a_live_record() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let mut appended = HashSet::new();
    for chunk in 0..20 {
        let receipt = buffer
            .append((0..50).map(|i| record(chunk * 50 + i)).collect())
            .await
            .unwrap();
        appended.extend(receipt.ids);
    }
    let mut consumers = Vec::new();
    for c in 0..8u64 {
        let buffer = buffer.clone();
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut round = 0u64;
            while let Some(lease) = buffer.lease(7, u64::MAX).await.unwrap() {
                round += 1;
                // Every third lease is released and must come back to someone.
                if (round + c).is_multiple_of(3) {
                    buffer.release(lease.id).await.unwrap();
                } else {
                    got.extend(ids(&lease.records));
                    buffer.ack(lease.id).await.unwrap();
                }
            }
            got
        }));
    }
    let mut delivered = Vec::new();
    for consumer in consumers {
        delivered.extend(consumer.await.unwrap());
    }
    let unique: HashSet<RecordId> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "a record was acked twice");
    assert_eq!(unique, appended);
    assert_eq!(buffer.stats().await.unwrap().records, 0);
    buffer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_wake_watchers() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let mut appended = buffer.subscribe_appended();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let buffer = buffer.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                buffer.append(vec![record(t * 100 + i)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    appended.changed().await.unwrap();
    assert_eq!(*appended.borrow_and_update(), 1280);
    let stats = buffer.stats().await.unwrap();
    assert_eq!(stats.records, 1280);
    assert!(
        stats.commits_total < 1280,
        "64 concurrent appenders should share commits, got {} commits",
        stats.commits_total
    );
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn encoded_leases_hand_out_the_stored_protobuf() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let records: Vec<_> = (0..5).map(record).collect();
    let receipt = buffer.append(records.clone()).await.unwrap();
    let lease = buffer.lease_encoded(3, u64::MAX).await.unwrap().unwrap();
    assert_eq!(lease.records.len(), 3);
    assert_eq!(
        lease.bytes,
        lease.records.iter().map(|r| r.len() as u64).sum::<u64>()
    );
    for (i, bytes) in lease.records.iter().enumerate() {
        let message = <gateway_proto::pb::Record as prost::Message>::decode(&bytes[..]).unwrap();
        let decoded = gateway_proto::Record::try_from(message).unwrap();
        assert_eq!(decoded, records[i].clone().with_id(receipt.ids[i]));
    }
    // The same lease machinery: the rest goes to the next consumer, release returns these.
    let rest = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    assert_eq!(ids(&rest.records), receipt.ids[3..]);
    buffer.release(lease.id).await.unwrap();
    buffer.ack(rest.id).await.unwrap();
    assert_eq!(all_ids(&buffer).await, receipt.ids[..3]);
    buffer.close().await.unwrap();
}

#[test]
fn the_handle_is_a_cheap_shareable_clone() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Buffer>();
    fn sendable<T: Send + 'static>() {}
    sendable::<gateway_buffer::Lease>();
    sendable::<Error>();
}

//! The uplink end to end: a real `gateway_buffer::Buffer` drained over loopback HTTP into
//! the real receiver and SQLite store, behind a fault-injecting layer driven by a schedule.
//!
//! Timeouts and backoffs are shrunk to milliseconds so every fault costs little; the
//! assertions are about what ends up where (store, buffer, dead letters), not about timing,
//! except where the timing is the contract (`Retry-After`, wake, shutdown deadline).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use gateway_buffer::{Buffer, BufferConfig};
use gateway_proto::{Record, RecordId, UplinkHealth};
use gateway_uplink::server::SqliteRecordStore;
use gateway_uplink::{
    BatchConfig, FlushOutcome, HealthConfig, RetryPolicy, Uplink, UplinkConfig, WireEncoding,
};
use proptest::prelude::*;
use tokio::time::Instant;

struct Rig {
    _dir: tempfile::TempDir,
    store: SqliteRecordStore,
    schedule: Schedule,
    url: String,
    buffer: Buffer,
}

async fn rig(faults: impl IntoIterator<Item = Fault>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let schedule = Schedule::new(faults);
    let url = fault_server(&store, schedule.clone()).await;
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    Rig {
        _dir: dir,
        store,
        schedule,
        url,
        buffer,
    }
}

/// Millisecond-scale timeouts and backoff so faults are cheap.
fn fast_config(url: &str) -> UplinkConfig {
    UplinkConfig {
        batch: BatchConfig {
            max_records: 25,
            linger_ms: 0,
            ..BatchConfig::default()
        },
        connect_timeout_ms: 500,
        request_timeout_ms: 400,
        retry: RetryPolicy {
            base_ms: 5,
            cap_ms: 40,
            ..RetryPolicy::default()
        },
        idle_poll_ms: 50,
        ..UplinkConfig::new(url, GATEWAY_TOKEN, "gw-1")
    }
}

async fn append(buffer: &Buffer, records: Vec<Record>) -> Vec<RecordId> {
    buffer.append(records).await.unwrap().ids
}

fn in_seconds(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

/// Every appended id is in the store exactly once, and nothing else is.
fn assert_exactly_once(store: &SqliteRecordStore, ids: &[RecordId]) {
    let stored = stored_records(store, TENANT);
    let stored_ids: Vec<RecordId> = stored.iter().map(|r| r.id.unwrap()).collect();
    let unique: HashSet<RecordId> = stored_ids.iter().copied().collect();
    assert_eq!(unique.len(), stored_ids.len(), "a record was stored twice");
    assert_eq!(unique, ids.iter().copied().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_then_every_record_exactly_once() {
    let rig = rig(Fault::TRANSIENT).await;
    let ids = append(&rig.buffer, (0..200).map(record).collect()).await;
    let uplink = Uplink::start(rig.buffer.clone(), fast_config(&rig.url)).unwrap();
    assert_eq!(
        uplink.flush(in_seconds(30)).await.unwrap(),
        FlushOutcome::Flushed
    );
    assert_eq!(rig.schedule.remaining(), 0, "every fault was served");
    assert_exactly_once(&rig.store, &ids);
    let status = uplink.status();
    assert_eq!(status.health.health, UplinkHealth::Healthy);
    // The two store-then-fail faults stored a batch whose answer was lost: re-sent, counted
    // as duplicates by the server, not stored again.
    // Each record was answered for once in the end: stored then, or stored earlier.
    assert!(status.counters.records_duplicate > 0, "{status:?}");
    assert_eq!(
        status.counters.records_accepted + status.counters.records_duplicate,
        200
    );
    assert!(status.counters.batches_retried >= Fault::TRANSIENT.len() as u64);
    assert_eq!(rig.buffer.stats().await.unwrap().records, 0);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

fn fault_strategy() -> impl Strategy<Value = Fault> {
    prop::sample::select(Fault::TRANSIENT.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Whatever the faults and their order, once they stop the store holds every record once.
    #[test]
    fn random_fault_schedules_end_with_every_record_exactly_once(
        faults in prop::collection::vec(fault_strategy(), 0..10),
        in_flight in 1usize..=3,
        records in 20usize..80,
        batch in 5usize..30,
        json in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let fault_count = faults.len();
            let rig = rig(faults).await;
            let ids = append(&rig.buffer, (0..records).map(record).collect()).await;
            let config = UplinkConfig {
                in_flight,
                batch: BatchConfig { max_records: batch, linger_ms: 0, ..BatchConfig::default() },
                encoding: if json { WireEncoding::Json } else { WireEncoding::Protobuf },
                ..fast_config(&rig.url)
            };
            let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
            let outcome = uplink.flush(in_seconds(60)).await.unwrap();
            assert_eq!(outcome, FlushOutcome::Flushed);
            assert_eq!(rig.schedule.faults_served.load(Ordering::SeqCst), fault_count);
            assert_exactly_once(&rig.store, &ids);
            uplink.shutdown(in_seconds(5)).await.unwrap();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_without_gzip_and_protobuf_with_gzip_both_deliver() {
    for (encoding, gzip_min_bytes) in [
        (WireEncoding::Json, None),
        (WireEncoding::Protobuf, Some(0)),
    ] {
        let rig = rig([]).await;
        let ids = append(&rig.buffer, (0..60).map(record).collect()).await;
        let config = UplinkConfig {
            encoding,
            gzip_min_bytes,
            ..fast_config(&rig.url)
        };
        let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
        assert_eq!(
            uplink.flush(in_seconds(10)).await.unwrap(),
            FlushOutcome::Flushed
        );
        assert_exactly_once(&rig.store, &ids);
        // Records read back equal what was appended, field for field.
        let stored = stored_records(&rig.store, TENANT);
        assert_eq!(
            stored[0].attributes.get("host").map(String::as_str),
            Some("pc-12")
        );
        uplink.shutdown(in_seconds(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_collects_appends_into_one_batch() {
    let rig = rig([]).await;
    let config = UplinkConfig {
        in_flight: 1,
        batch: BatchConfig {
            max_records: 1_000,
            linger_ms: 300,
            ..BatchConfig::default()
        },
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.extend(append(&rig.buffer, vec![record(i)]).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait for the delivery without flush (flush would cut the linger short).
    let deadline = in_seconds(10);
    while uplink.status().counters.records_accepted < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = uplink.status();
    assert_eq!(status.counters.records_accepted, 5);
    assert_eq!(
        status.counters.batches_acked, 1,
        "five appends, one lingered batch"
    );
    assert_exactly_once(&rig.store, &ids);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let rig = rig([Fault::Unavailable(1)]).await;
    let ids = append(&rig.buffer, (0..10).map(record).collect()).await;
    let started = Instant::now();
    let config = UplinkConfig {
        in_flight: 1,
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    assert_eq!(
        uplink.flush(in_seconds(10)).await.unwrap(),
        FlushOutcome::Flushed
    );
    // The backoff alone would have retried within 5 ms; the server asked for 1 s.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_exactly_once(&rig.store, &ids);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_skips_the_backoff() {
    let rig = rig([Fault::Unavailable(120)]).await;
    let ids = append(&rig.buffer, (0..10).map(record).collect()).await;
    let config = UplinkConfig {
        in_flight: 1,
        retry: RetryPolicy::default(),
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    let handle = uplink.handle();
    let deadline = in_seconds(10);
    while rig.schedule.faults_served.load(Ordering::SeqCst) == 0
        || uplink.status().retry_in_ms.is_none()
    {
        assert!(Instant::now() < deadline, "the first attempt never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = uplink.status();
    assert!(status.retry_in_ms.unwrap() > 100_000, "{status:?}");
    assert_eq!(status.health.health, UplinkHealth::Degraded);
    // Nothing moves while the backoff runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.schedule.posts.load(Ordering::SeqCst), 1);
    let woken = Instant::now();
    handle.wake();
    while uplink.status().counters.records_accepted < 10 {
        assert!(
            woken.elapsed() < Duration::from_secs(5),
            "wake did not end the backoff"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_exactly_once(&rig.store, &ids);
    assert_eq!(uplink.health(), UplinkHealth::Healthy);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_goes_degraded_down_and_back_to_healthy() {
    let rig = rig([
        Fault::ServerError,
        Fault::Unavailable(1),
        Fault::Unavailable(1),
    ])
    .await;
    let ids = append(&rig.buffer, (0..10).map(record).collect()).await;
    let config = UplinkConfig {
        in_flight: 1,
        health: HealthConfig {
            down_after_failures: 3,
        },
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    let mut health = uplink.handle().subscribe_health();
    let recorder = tokio::spawn(async move {
        let mut seen = vec![*health.borrow_and_update()];
        while health.changed().await.is_ok() {
            let h = *health.borrow_and_update();
            seen.push(h);
            if h == UplinkHealth::Healthy {
                break;
            }
        }
        seen
    });
    assert_eq!(
        uplink.flush(in_seconds(20)).await.unwrap(),
        FlushOutcome::Flushed
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), recorder)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        vec![
            UplinkHealth::Healthy,
            UplinkHealth::Degraded,
            UplinkHealth::Down,
            UplinkHealth::Healthy
        ]
    );
    let status = uplink.status();
    assert_eq!(status.health.consecutive_failures, 0);
    assert!(status.health.last_success_ms.is_some());
    assert!(
        status.health.last_error.as_deref().unwrap().contains("503"),
        "{status:?}"
    );
    assert_exactly_once(&rig.store, &ids);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_and_refused_batches_are_dead_lettered_with_reasons() {
    let rig = rig([]).await;
    let mut records: Vec<Record> = (0..10).map(record).collect();
    records[3].stream = "Bad Stream".into();
    records[7].timestamp_ms = 42;
    let ids = append(&rig.buffer, records).await;
    let config = UplinkConfig {
        in_flight: 1,
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    assert_eq!(
        uplink.flush(in_seconds(10)).await.unwrap(),
        FlushOutcome::Flushed
    );
    let good: Vec<RecordId> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 7)
        .map(|(_, id)| *id)
        .collect();
    assert_exactly_once(&rig.store, &good);
    let letters = rig.buffer.dead_letters(100).await.unwrap();
    let mut got: Vec<(RecordId, String)> = letters
        .iter()
        .map(|l| (l.record.id.unwrap(), l.code.clone()))
        .collect();
    got.sort();
    let mut want = vec![
        (ids[3], "invalid_stream".to_owned()),
        (ids[7], "invalid_timestamp".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(letters.iter().all(|l| !l.reason.is_empty()));

    // A batch the server refuses whole (400) goes to the dead letters with the server's code.
    rig.schedule.push(Fault::BadRequest);
    let refused = append(&rig.buffer, (0..5).map(record).collect()).await;
    assert_eq!(
        uplink.flush(in_seconds(10)).await.unwrap(),
        FlushOutcome::Flushed
    );
    let letters = rig.buffer.dead_letters(100).await.unwrap();
    let refused_letters: Vec<_> = letters
        .iter()
        .filter(|l| refused.contains(&l.record.id.unwrap()))
        .collect();
    assert_eq!(refused_letters.len(), 5);
    assert!(refused_letters.iter().all(|l| l.code == "invalid_request"));
    assert!(
        refused_letters[0].reason.contains("400"),
        "{}",
        refused_letters[0].reason
    );
    let counters = uplink.status().counters;
    assert_eq!(counters.records_dead_lettered, 7);
    assert_eq!(counters.batches_dead_lettered, 1);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_in_a_batch_of_several_leases_reach_the_right_records() {
    // One batch of three leases (the linger fills it): the server's indexes are
    // into the whole batch, and each must land on the record it names, in both encodings
    // (protobuf frames the stored records as they are, JSON decodes them).
    for encoding in [WireEncoding::Protobuf, WireEncoding::Json] {
        let rig = rig([]).await;
        let config = UplinkConfig {
            in_flight: 1,
            encoding,
            batch: BatchConfig {
                max_records: 12,
                linger_ms: 30_000,
                ..BatchConfig::default()
            },
            ..fast_config(&rig.url)
        };
        let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
        let mut ids = Vec::new();
        for lease in 0..3 {
            let mut records: Vec<Record> = (0..4).map(|i| record(lease * 4 + i)).collect();
            match lease {
                1 => records[1].stream = "Bad Stream".into(),
                2 => records[2].timestamp_ms = 42,
                _ => {}
            }
            ids.extend(append(&rig.buffer, records).await);
            // Let the worker lease these four before the next append, so each append is a
            // lease of its own (the third fills the batch, which then goes out).
            let deadline = in_seconds(10);
            while lease < 2
                && rig.buffer.stats().await.unwrap().leased_records < 4 * (lease as u64 + 1)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // The group is sent when it holds 12 records; wait for it without flush (flush
        // would cut the linger short).
        let deadline = in_seconds(10);
        while uplink.status().counters.batches_acked == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counters = uplink.status().counters;
        assert_eq!(
            counters.batches_acked, 1,
            "{encoding:?}: one batch of three leases"
        );
        assert_eq!(counters.records_dead_lettered, 2, "{encoding:?}");
        let mut got: Vec<(RecordId, String)> = rig
            .buffer
            .dead_letters(100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.record.id.unwrap(), l.code))
            .collect();
        got.sort();
        let mut want = vec![
            (ids[5], "invalid_stream".to_owned()),
            (ids[10], "invalid_timestamp".to_owned()),
        ];
        want.sort();
        assert_eq!(got, want, "{encoding:?}");
        let good: Vec<RecordId> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 5 && *i != 10)
            .map(|(_, id)| *id)
            .collect();
        assert_exactly_once(&rig.store, &good);
        assert_eq!(rig.buffer.stats().await.unwrap().records, 0, "{encoding:?}");
        uplink.shutdown(in_seconds(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_halves_the_batch_instead_of_dead_lettering() {
    let rig = rig([Fault::TooLarge]).await;
    let ids = append(&rig.buffer, (0..40).map(record).collect()).await;
    let config = UplinkConfig {
        in_flight: 1,
        batch: BatchConfig {
            max_records: 40,
            linger_ms: 0,
            ..BatchConfig::default()
        },
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    assert_eq!(
        uplink.flush(in_seconds(10)).await.unwrap(),
        FlushOutcome::Flushed
    );
    assert_exactly_once(&rig.store, &ids);
    let status = uplink.status();
    assert_eq!(status.batch_max_records, 20);
    assert_eq!(status.counters.records_dead_lettered, 0);
    // Halved by records and by bytes: two or three batches, depending on record sizes.
    assert!(status.counters.batches_acked >= 2, "{status:?}");

    // Once enough batches in a row are accepted, the size grows back to the configured one.
    let before = status.counters.batches_acked;
    let mut ids = ids;
    ids.extend(append(&rig.buffer, (40..1_400).map(record).collect()).await);
    assert_eq!(
        uplink.flush(in_seconds(20)).await.unwrap(),
        FlushOutcome::Flushed
    );
    assert_exactly_once(&rig.store, &ids);
    let status = uplink.status();
    assert_eq!(status.batch_max_records, 40, "{status:?}");
    // At most 20 records a batch until REGROW_AFTER_BATCHES were acked, 40 after that (had it
    // grown back at once, 34 batches would have carried the 1,360 records).
    let regrow = u64::from(gateway_uplink::REGROW_AFTER_BATCHES);
    let at_least = regrow + (1_360 - regrow * 20).div_ceil(40);
    let acked = status.counters.batches_acked - before;
    assert!(
        acked >= at_least,
        "{acked} batches, expected at least {at_least}"
    );
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_keep_the_records_and_report_down() {
    let rig = rig([]).await;
    append(&rig.buffer, (0..10).map(record).collect()).await;
    let config = UplinkConfig {
        token: "revoked".into(),
        in_flight: 1,
        retry: RetryPolicy::default(),
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    let deadline = in_seconds(10);
    while uplink.health() != UplinkHealth::Down {
        assert!(Instant::now() < deadline, "never reported down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = uplink.status();
    assert!(
        status.health.last_error.as_deref().unwrap().contains("403"),
        "{status:?}"
    );
    // Blocked: retried at the cap (60 s), not dead-lettered.
    assert!(status.retry_in_ms.unwrap() > 50_000, "{status:?}");
    let stats = rig.buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.dead_letters), (10, 0));
    assert!(stored_records(&rig.store, TENANT).is_empty());
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

/// The receiver behind a layer that holds every request 50 ms and records the most requests
/// it ever held at once.
async fn slow_counting_server(store: &SqliteRecordStore) -> (String, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (n, m) = (now.clone(), most.clone());
    let app = receiver_router(store).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (now, most) = (n.clone(), m.clone());
            async move {
                let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(held, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let response = next.run(request).await;
                now.fetch_sub(1, Ordering::SeqCst);
                response
            }
        },
    ));
    (serve(app).await, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_sent_by_the_catch_up_workers_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (url, most) = slow_counting_server(&store).await;
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    let config = UplinkConfig {
        in_flight: 1,
        catch_up_in_flight: 3,
        batch: BatchConfig {
            max_records: 10,
            linger_ms: 0,
            ..BatchConfig::default()
        },
        ..fast_config(&url)
    };
    let uplink = Uplink::start(buffer.clone(), config).unwrap();

    // Steady traffic, one record at a time: one batch in flight.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.extend(append(&buffer, vec![record(i)]).await);
        assert_eq!(
            uplink.flush(in_seconds(10)).await.unwrap(),
            FlushOutcome::Flushed
        );
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "steady traffic used one batch"
    );

    // A backlog of 30 batches: the catch-up workers join.
    ids.extend(append(&buffer, (5..305).map(record).collect()).await);
    assert_eq!(
        uplink.flush(in_seconds(20)).await.unwrap(),
        FlushOutcome::Flushed
    );
    assert_exactly_once(&store, &ids);
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "the backlog used 3 batches in flight"
    );
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_not_read_and_the_records_stay() {
    // A "server" that answers every batch with 200 and 20 MiB of JSON whitespace.
    let app = axum::Router::new().route(
        "/v1/records",
        axum::routing::post(|| async { vec![b' '; 20 * 1024 * 1024] }),
    );
    let url = serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    append(&buffer, (0..5).map(record).collect()).await;
    let uplink = Uplink::start(buffer.clone(), fast_config(&url)).unwrap();
    let deadline = in_seconds(10);
    loop {
        let status = uplink.status();
        if let Some(error) = status.health.last_error.as_deref() {
            assert!(error.contains("bytes"), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no failure reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = uplink.status();
    assert_eq!(status.counters.batches_acked, 0, "{status:?}");
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.dead_letters), (5, 0));
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_stops_at_its_deadline_when_the_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    append(&buffer, (0..30).map(record).collect()).await;
    let uplink = Uplink::start(
        buffer.clone(),
        fast_config(&format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let started = Instant::now();
    let outcome = uplink
        .flush(Instant::now() + Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(outcome, FlushOutcome::DeadlineReached { queued: 30 });
    assert!(started.elapsed() < Duration::from_secs(2));
    let status = uplink.status();
    assert_ne!(status.health.health, UplinkHealth::Healthy);
    assert!(status.health.consecutive_failures >= 1);
    uplink.shutdown(in_seconds(5)).await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.leased_records), (30, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_its_deadline_then_releases_batches_in_flight() {
    let rig = rig([Fault::Hang, Fault::Hang, Fault::Hang]).await;
    append(&rig.buffer, (0..30).map(record).collect()).await;
    let config = UplinkConfig {
        request_timeout_ms: 20_000,
        batch: BatchConfig {
            max_records: 10,
            linger_ms: 0,
            ..BatchConfig::default()
        },
        ..fast_config(&rig.url)
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    let deadline = in_seconds(10);
    while uplink.status().in_flight < 2 {
        assert!(Instant::now() < deadline, "batches never went in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let status = uplink
        .shutdown(Instant::now() + Duration::from_millis(300))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(status.in_flight, 0);
    let stats = rig.buffer.stats().await.unwrap();
    assert_eq!(
        (stats.records, stats.leased_records),
        (30, 0),
        "everything released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_shutdown_does_not_wait_for_the_deadline() {
    let rig = rig([]).await;
    let ids = append(&rig.buffer, (0..30).map(record).collect()).await;
    let uplink = Uplink::start(rig.buffer.clone(), fast_config(&rig.url)).unwrap();
    assert_eq!(
        uplink.flush(in_seconds(10)).await.unwrap(),
        FlushOutcome::Flushed
    );
    let handle = uplink.handle();
    let started = Instant::now();
    uplink.shutdown(in_seconds(30)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        handle.flush(in_seconds(1)).await,
        Err(gateway_uplink::Error::ShutDown)
    ));
    assert_exactly_once(&rig.store, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_proxy_carries_the_requests() {
    // The fault server doubles as an HTTP proxy: a proxied request arrives in absolute form
    // (`POST http://ingest.invalid/v1/records`) and axum routes it by its path. The server URL
    // itself does not resolve, so delivery proves the proxy was used.
    let rig = rig([]).await;
    let ids = append(&rig.buffer, (0..20).map(record).collect()).await;
    let config = UplinkConfig {
        proxy: gateway_uplink::ProxyConfig {
            from_env: false,
            url: Some(rig.url.clone()),
        },
        ..fast_config("http://ingest.invalid")
    };
    let uplink = Uplink::start(rig.buffer.clone(), config).unwrap();
    assert_eq!(
        uplink.flush(in_seconds(10)).await.unwrap(),
        FlushOutcome::Flushed
    );
    assert_exactly_once(&rig.store, &ids);
    assert!(rig.schedule.posts.load(Ordering::SeqCst) >= 1);
    uplink.shutdown(in_seconds(5)).await.unwrap();
}

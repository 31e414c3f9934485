//! The `gateway_uplink_*` and `gateway_ingest_*` metrics, read from a debugging recorder
//! installed for this test binary (one process, one global recorder).

mod common;

use std::time::Duration;

use common::*;
use gateway_buffer::{Buffer, BufferConfig};
use gateway_uplink::{FlushOutcome, RetryPolicy, Uplink, UplinkConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;

fn value<'a>(
    snapshot: &'a [(metrics_util::CompositeKey, DebugValue)],
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(key, _)| {
            let key = key.key();
            key.name() == name
                && label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v))
        })
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_and_receiver_report_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let schedule = Schedule::new([Fault::ServerError]);
    let url = fault_server(&store, schedule).await;
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    buffer.append((0..40).map(record).collect()).await.unwrap();
    let config = UplinkConfig {
        in_flight: 1,
        retry: RetryPolicy {
            base_ms: 5,
            cap_ms: 20,
            ..RetryPolicy::default()
        },
        ..UplinkConfig::new(url, GATEWAY_TOKEN, "gw-1")
    };
    let uplink = Uplink::start(buffer.clone(), config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(uplink.flush(deadline).await.unwrap(), FlushOutcome::Flushed);
    uplink.shutdown(deadline).await.unwrap();

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();
    let counter = |name: &str, label: Option<(&str, &str)>| match value(&snapshot, name, label) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {label:?}: {other:?}"),
    };
    assert_eq!(
        counter(
            "gateway_uplink_records_total",
            Some(("outcome", "accepted"))
        ),
        40
    );
    assert!(counter("gateway_uplink_batches_total", Some(("outcome", "acked"))) >= 1);
    assert_eq!(
        counter("gateway_uplink_batches_total", Some(("outcome", "retried"))),
        1
    );
    assert!(counter("gateway_uplink_bytes_total", None) > 0);
    assert_eq!(
        counter(
            "gateway_ingest_records_total",
            Some(("outcome", "accepted"))
        ),
        40
    );
    match value(
        &snapshot,
        "gateway_uplink_request_seconds",
        Some(("outcome", "ok")),
    ) {
        Some(DebugValue::Histogram(samples)) => assert!(!samples.is_empty()),
        other => panic!("latency histogram: {other:?}"),
    }
    match value(&snapshot, "gateway_uplink_health", None) {
        Some(DebugValue::Gauge(h)) => assert_eq!(h.0, 0.0, "healthy at the end"),
        other => panic!("health gauge: {other:?}"),
    }
}

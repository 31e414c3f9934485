//! The buffer reports through the `metrics` facade. This binary installs a global debugging
//! recorder, so it holds a single test.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use gateway_buffer::{BufferConfig, OverflowPolicy};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn appends_acks_evictions_and_levels_are_reported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let (_dir, path) = temp_path();
    let unit = {
        let (_d, p) = temp_path();
        let (b, _) = open_manual(&p, BufferConfig::default()).await;
        let bytes = b.append(vec![raw_record(100)]).await.unwrap().bytes;
        b.close().await.unwrap();
        bytes
    };
    let config = BufferConfig {
        quota_bytes: 10 * unit,
        overflow: OverflowPolicy::DropOldest,
        retention: Duration::from_secs(60),
        ..Default::default()
    };
    let (buffer, clock) = open_manual(&path, config).await;
    buffer
        .append((0..10).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    buffer
        .append((0..2).map(|_| raw_record(100)).collect())
        .await
        .unwrap();
    let lease = buffer.lease(3, u64::MAX).await.unwrap().unwrap();
    buffer.ack(lease.id).await.unwrap();
    clock.advance_ms(60_000);
    buffer.run_maintenance().await.unwrap();
    let stats = buffer.stats().await.unwrap();
    buffer.close().await.unwrap();

    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut gauges: HashMap<String, f64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut name = key.name().to_string();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        match value {
            DebugValue::Counter(n) => *counters.entry(name).or_default() += n,
            DebugValue::Gauge(v) => {
                gauges.insert(name, v.into_inner());
            }
            DebugValue::Histogram(v) => *histograms.entry(name).or_default() += v.len(),
        }
    }
    // The first buffer (for `unit`) appended one record too.
    assert_eq!(counters["gateway_buffer_appended_records_total"], 13);
    assert_eq!(counters["gateway_buffer_appended_bytes_total"], 13 * unit);
    assert_eq!(counters["gateway_buffer_acked_records_total"], 3);
    assert_eq!(
        counters["gateway_buffer_evicted_records_total{reason=quota}"],
        2
    );
    assert_eq!(
        counters["gateway_buffer_evicted_records_total{reason=age}"],
        7
    );
    assert_eq!(stats.evicted_age_total, 7);
    assert!(counters["gateway_buffer_commits_total"] >= 4);
    assert_eq!(gauges["gateway_buffer_records"], 0.0);
    assert_eq!(gauges["gateway_buffer_bytes"], 0.0);
    assert_eq!(gauges["gateway_buffer_pressure"], 0.0);
    assert!(histograms["gateway_buffer_commit_records"] >= 3);
    assert!(histograms["gateway_buffer_commit_seconds"] >= 3);
}

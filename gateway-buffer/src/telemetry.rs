//! Metrics through the `metrics` facade. Every name starts with `gateway_buffer_`; the crate
//! docs list them all.

use gateway_proto::BufferPressure;
use metrics::{counter, gauge, histogram};

use crate::Error;
use crate::store::Counts;

/// Counters for everything a commit changed.
pub(crate) fn committed(before: &Counts, after: &Counts) {
    let delta = |f: fn(&Counts) -> u64| f(after) - f(before);
    let add = |name: &'static str, n: u64| {
        if n > 0 {
            counter!(name).increment(n);
        }
    };
    add(
        "gateway_buffer_appended_records_total",
        delta(|c| c.appended_total),
    );
    add(
        "gateway_buffer_appended_bytes_total",
        delta(|c| c.appended_bytes_total),
    );
    add(
        "gateway_buffer_acked_records_total",
        delta(|c| c.acked_total),
    );
    add(
        "gateway_buffer_dead_lettered_records_total",
        delta(|c| c.dead_lettered_total),
    );
    add(
        "gateway_buffer_dead_letters_dropped_total",
        delta(|c| c.dead_letters_dropped_total),
    );
    add(
        "gateway_buffer_undecodable_records_total",
        delta(|c| c.undecodable_total),
    );
    let age = delta(|c| c.evicted_age_total);
    if age > 0 {
        counter!("gateway_buffer_evicted_records_total", "reason" => "age").increment(age);
    }
    let quota = delta(|c| c.evicted_quota_total);
    if quota > 0 {
        counter!("gateway_buffer_evicted_records_total", "reason" => "quota").increment(quota);
    }
    counter!("gateway_buffer_commits_total").increment(1);
}

/// One group commit's size and duration.
pub(crate) fn group(records: u64, seconds: f64) {
    histogram!("gateway_buffer_commit_records").record(records as f64);
    histogram!("gateway_buffer_commit_seconds").record(seconds);
}

/// Gauges of the queue's levels.
pub(crate) fn levels(
    counts: &Counts,
    leased_records: u64,
    leased_bytes: u64,
    pressure: BufferPressure,
) {
    gauge!("gateway_buffer_records").set(counts.records as f64);
    gauge!("gateway_buffer_bytes").set(counts.bytes as f64);
    gauge!("gateway_buffer_leased_records").set(leased_records as f64);
    gauge!("gateway_buffer_leased_bytes").set(leased_bytes as f64);
    gauge!("gateway_buffer_dead_letters").set(counts.dead_letters as f64);
    gauge!("gateway_buffer_pressure").set(match pressure {
        BufferPressure::Normal => 0.0,
        BufferPressure::Warning => 1.0,
        BufferPressure::Critical => 2.0,
    });
}

/// Size of the file on disk.
pub(crate) fn file_bytes(bytes: u64) {
    gauge!("gateway_buffer_file_bytes").set(bytes as f64);
}

/// Leases that expired.
pub(crate) fn leases_expired(n: u64) {
    counter!("gateway_buffer_leases_expired_total").increment(n);
}

/// A write that failed.
pub(crate) fn write_failed(error: &Error) {
    let kind = match error {
        Error::DiskFull { .. } => "disk_full",
        Error::QuotaExceeded { .. } => "quota_exceeded",
        Error::LeaseNotFound { .. } | Error::InvalidArgument { .. } | Error::Closed => return,
        _ => "storage",
    };
    counter!("gateway_buffer_errors_total", "kind" => kind).increment(1);
}

//! Encode and decode of a 1,000-record batch in both encodings.
//!
//! `cargo bench -p gateway-benches --bench proto_codec`. Throughput is reported in bytes of the
//! encoded batch; records/s is 1,000 divided by the time per iteration.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_proto::{
    Batch, Body, Bytes, Encoding, Limits, Record, RecordId, WireMessage, decode_batch,
};
use serde_json::json;

/// 1,000 records shaped like agent traffic: two thirds JSON bodies of ~200 bytes with a few
/// attributes, one third raw bodies of 200 bytes.
fn thousand_records() -> Batch {
    let records = (0..1000)
        .map(|i| {
            let body = if i % 3 == 2 {
                Body::Raw(Bytes::from(vec![(i % 251) as u8; 200]))
            } else {
                Body::from(json!({
                    "level": "info",
                    "msg": format!("user session {i} refreshed its token after 3600 s of activity"),
                    "pid": 4000 + i,
                    "tags": ["auth", "session"],
                    "latency_ms": 12.5,
                }))
            };
            Record::new("logs", "agent-pc-12", 1_732_363_200_000 + i as i64, body)
                .with_id(RecordId::new_v7())
                .with_attribute("host", "pc-12")
                .with_attribute("site", "lisbon")
        })
        .collect();
    Batch::new("gw-lisbon-01", records)
}

fn codec(c: &mut Criterion) {
    let batch = thousand_records();
    let limits = Limits::default();
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let encoded = batch.encode(encoding);
        let mut group = c.benchmark_group(format!("proto_codec/{encoding:?}"));
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function("encode_1000", |b| {
            b.iter(|| black_box(black_box(&batch).encode(encoding)))
        });
        group.bench_function("decode_1000", |b| {
            b.iter(|| black_box(decode_batch(black_box(&encoded), encoding, &limits).unwrap()))
        });
        group.finish();
        println!(
            "proto_codec/{encoding:?}: 1,000-record batch is {} bytes encoded",
            encoded.len()
        );
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);

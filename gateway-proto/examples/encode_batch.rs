//! Build a batch of three records, encode it as JSON and as protobuf, decode both, and show
//! what a receiver answers. Run with `cargo run -p gateway-proto --example encode_batch`.

use gateway_proto::{
    Batch, BatchAck, Body, Bytes, Encoding, Limits, Record, RecordId, WireMessage, decode_batch,
};
use serde_json::json;

fn main() -> Result<(), gateway_proto::Error> {
    let now_ms = 1_732_363_200_000;
    let records = vec![
        Record::new(
            "logs",
            "agent-7",
            now_ms,
            Body::from(json!({"level": "info", "msg": "agent started"})),
        )
        .with_id(RecordId::new_v7()),
        Record::new(
            "devices",
            "agent-7",
            now_ms + 1,
            Body::Raw(Bytes::from_static(b"\x01\x02\x03")),
        )
        .with_id(RecordId::new_v7()),
        Record::new(
            "metrics",
            "agent-7",
            now_ms + 2,
            Body::from(json!({"cpu": 12.5})),
        )
        .with_id(RecordId::new_v7())
        .with_attribute("host", "pc-12"),
        // A record that breaks a rule: stream names are lowercase.
        Record::new("Bad Stream", "agent-7", now_ms + 3, Body::from(json!(null))),
    ];
    let batch = Batch::new("gw-1", records);
    let limits = Limits::default();

    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let bytes = batch.encode(encoding);
        let decoded = decode_batch(&bytes, encoding, &limits)?;
        assert_eq!(decoded, batch);
        println!(
            "{:<8} {:>5} bytes  ({})",
            format!("{encoding:?}"),
            bytes.len(),
            encoding.content_type()
        );
    }
    println!(
        "\nJSON body of POST /v1/records:\n{}",
        String::from_utf8_lossy(&batch.to_json())
    );

    let rejected = limits.reject_invalid_records(&batch, now_ms);
    let ack = BatchAck {
        accepted: (batch.records.len() - rejected.len()) as u32,
        duplicates: 0,
        rejected,
    };
    println!(
        "\nA receiver answers 200 with:\n{}",
        String::from_utf8_lossy(&ack.to_json())
    );
    Ok(())
}

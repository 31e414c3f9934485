//! Request bodies from stored records: a protobuf `gateway.v1.Batch` framed around records
//! that are already protobuf, without decoding them.

use gateway_proto::{BatchId, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// `gateway.v1.Batch` field numbers.
const BATCH_ID: u32 = 1;
const GATEWAY_ID: u32 = 2;
const RECORDS: u32 = 3;

fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_field(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// The protobuf encoding of the batch `{batch_id, gateway_id, records}` where each record is
/// already the encoding of a `gateway.v1.Record`: byte for byte what prost writes for the
/// decoded batch (fields in number order, an empty `gateway_id` left out, each record as a
/// length-delimited field 3).
pub(crate) fn protobuf_batch(batch_id: &BatchId, gateway_id: &str, records: &[Bytes]) -> Vec<u8> {
    let id = batch_id.as_bytes();
    let mut len = field_len(BATCH_ID, id.len());
    if !gateway_id.is_empty() {
        len += field_len(GATEWAY_ID, gateway_id.len());
    }
    len += records
        .iter()
        .map(|r| field_len(RECORDS, r.len()))
        .sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    put_field(BATCH_ID, id, &mut buf);
    if !gateway_id.is_empty() {
        put_field(GATEWAY_ID, gateway_id.as_bytes(), &mut buf);
    }
    for record in records {
        put_field(RECORDS, record, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::{Batch, Body, Record, RecordId, WireMessage, pb};
    use proptest::prelude::*;
    use prost::Message as _;

    fn record(i: usize, body_len: usize) -> Record {
        Record::new(
            "logs",
            "agent-7",
            1_732_363_200_000 + i as i64,
            Body::from(serde_json::json!({"seq": i, "msg": "x".repeat(body_len)})),
        )
        .with_id(RecordId::new_v7())
        .with_attribute("host", "pc-12")
    }

    fn framed_equals_prost(batch: &Batch) {
        let encoded: Vec<Bytes> = batch
            .records
            .iter()
            .map(|r| Bytes::from(pb::Record::from(r).encode_to_vec()))
            .collect();
        let ours = protobuf_batch(&batch.batch_id, &batch.gateway_id, &encoded);
        assert_eq!(ours, batch.to_protobuf());
        assert_eq!(Batch::from_protobuf(&ours).unwrap(), *batch);
    }

    #[test]
    fn framing_matches_prost_with_and_without_gateway_id_and_records() {
        framed_equals_prost(&Batch::new("gw-1", vec![]));
        framed_equals_prost(&Batch::new("", vec![record(0, 10)]));
        // Record lengths across the one- to three-byte varint boundaries.
        let sizes = [0, 80, 100, 120, 16_300, 16_400, 70_000];
        let records = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| record(i, n))
            .collect();
        framed_equals_prost(&Batch::new("gw-lisbon-01", records));
    }

    proptest! {
        #[test]
        fn framing_matches_prost(
            gateway_id in ".{0,20}",
            sizes in proptest::collection::vec(0usize..300, 0..20),
        ) {
            let records = sizes.iter().enumerate().map(|(i, &n)| record(i, n)).collect();
            framed_equals_prost(&Batch::new(gateway_id, records));
        }
    }
}

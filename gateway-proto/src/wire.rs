//! Protobuf encoding of records and batches straight from the domain types.
//!
//! `pb::Record::from(&record)` clones every string and map of the record before prost encodes
//! it; for the messages that carry records in bulk that copy was most of the encoding cost.
//! These functions write the same bytes from borrowed fields (tests hold them to prost's
//! output, byte for byte): fields in number order, proto3 defaults (empty strings, zero, an
//! absent id) left out.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::{Batch, BatchId, Body, Record};

fn len_delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_len_delimited(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// A string or bytes field, left out when empty (proto3).
fn optional_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len_delimited_len(tag, len)
    }
}

fn put_optional(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    if !value.is_empty() {
        put_len_delimited(tag, value, buf);
    }
}

/// Length of one `map<string, string>` entry message (without its own key and length).
fn map_entry_len(key: &str, value: &str) -> usize {
    optional_len(1, key.len()) + optional_len(2, value.len())
}

/// Length of the `gateway.v1.Record` encoding of `record`.
pub(crate) fn record_len(record: &Record) -> usize {
    let mut len = record
        .id
        .map_or(0, |id| len_delimited_len(1, id.as_bytes().len()));
    len += optional_len(2, record.stream.len());
    len += optional_len(3, record.source.len());
    if record.timestamp_ms != 0 {
        len += key_len(4) + encoded_len_varint(record.timestamp_ms as u64);
    }
    len += record
        .attributes
        .iter()
        .map(|(k, v)| len_delimited_len(5, map_entry_len(k, v)))
        .sum::<usize>();
    len + match &record.body {
        // A oneof member is written even when empty.
        Body::Json(text) => len_delimited_len(6, text.len()),
        Body::Raw(bytes) => len_delimited_len(7, bytes.len()),
    }
}

/// Append the `gateway.v1.Record` encoding of `record` to `buf`.
pub(crate) fn write_record(record: &Record, buf: &mut Vec<u8>) {
    if let Some(id) = &record.id {
        put_len_delimited(1, id.as_bytes(), buf);
    }
    put_optional(2, record.stream.as_bytes(), buf);
    put_optional(3, record.source.as_bytes(), buf);
    if record.timestamp_ms != 0 {
        encode_key(4, WireType::Varint, buf);
        // int64 on the wire: two's complement as a 64-bit varint.
        encode_varint(record.timestamp_ms as u64, buf);
    }
    for (key, value) in &record.attributes {
        encode_key(5, WireType::LengthDelimited, buf);
        encode_varint(map_entry_len(key, value) as u64, buf);
        put_optional(1, key.as_bytes(), buf);
        put_optional(2, value.as_bytes(), buf);
    }
    match &record.body {
        Body::Json(text) => put_len_delimited(6, text.as_str().as_bytes(), buf),
        Body::Raw(bytes) => put_len_delimited(7, bytes, buf),
    }
}

/// The `gateway.v1.Batch` encoding of the batch `{batch_id, gateway_id, records}` where each
/// record is already the protobuf encoding of a `gateway.v1.Record` (as a buffer stores them):
/// byte for byte what prost writes for the decoded batch, without decoding the records.
///
/// ```
/// use gateway_proto::{Batch, BatchId, Body, Record, WireMessage, frame_protobuf_batch};
///
/// let record = Record::new("logs", "agent-7", 1_732_363_200_000, Body::Raw(vec![1, 2].into()));
/// let mut stored = Vec::new();
/// record.encode_protobuf(&mut stored);
/// let batch_id = BatchId::new_v7();
/// let framed = frame_protobuf_batch(&batch_id, "gw-1", &[stored]);
/// let decoded = Batch::from_protobuf(&framed).unwrap();
/// assert_eq!((decoded.batch_id, decoded.records), (batch_id, vec![record]));
/// ```
pub fn frame_protobuf_batch<R: AsRef<[u8]>>(
    batch_id: &BatchId,
    gateway_id: &str,
    records: &[R],
) -> Vec<u8> {
    let capacity = len_delimited_len(1, 16)
        + optional_len(2, gateway_id.len())
        + records
            .iter()
            .map(|r| len_delimited_len(3, r.as_ref().len()))
            .sum::<usize>();
    let mut buf = Vec::with_capacity(capacity);
    put_len_delimited(1, batch_id.as_bytes(), &mut buf);
    put_optional(2, gateway_id.as_bytes(), &mut buf);
    for record in records {
        put_len_delimited(3, record.as_ref(), &mut buf);
    }
    buf
}

/// The `gateway.v1.Batch` encoding of `batch`.
pub(crate) fn batch_to_vec(batch: &Batch) -> Vec<u8> {
    let lens: Vec<usize> = batch.records.iter().map(record_len).collect();
    let capacity = len_delimited_len(1, 16)
        + optional_len(2, batch.gateway_id.len())
        + lens
            .iter()
            .map(|&len| len_delimited_len(3, len))
            .sum::<usize>();
    let mut buf = Vec::with_capacity(capacity);
    put_len_delimited(1, batch.batch_id.as_bytes(), &mut buf);
    put_optional(2, batch.gateway_id.as_bytes(), &mut buf);
    for (record, len) in batch.records.iter().zip(lens) {
        encode_key(3, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        write_record(record, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bytes, JsonText, RecordId, WireMessage, pb};
    use proptest::prelude::*;
    use prost::Message as _;

    fn same_as_prost(record: &Record) {
        let mut ours = Vec::new();
        write_record(record, &mut ours);
        assert_eq!(ours, pb::Record::from(record).encode_to_vec(), "{record:?}");
        assert_eq!(record_len(record), ours.len());
        assert_eq!(record.protobuf_len(), ours.len());
    }

    fn same_batch_as_prost(batch: &Batch) {
        let theirs = pb::Batch::from(batch).encode_to_vec();
        assert_eq!(batch_to_vec(batch), theirs);
        assert_eq!(batch.to_protobuf(), theirs);
        let stored: Vec<Vec<u8>> = batch
            .records
            .iter()
            .map(|r| pb::Record::from(r).encode_to_vec())
            .collect();
        assert_eq!(
            frame_protobuf_batch(&batch.batch_id, &batch.gateway_id, &stored),
            theirs
        );
    }

    #[test]
    fn edge_cases_match_prost() {
        let mut r = Record::new("", "", 0, Body::Raw(Bytes::new()));
        same_as_prost(&r);
        r = r.with_id(RecordId::new_v7());
        same_as_prost(&r);
        let r = Record::new(
            "logs",
            "a",
            -5,
            Body::from(serde_json::json!({"k": [1, null]})),
        )
        .with_attribute("", "")
        .with_attribute("k", "")
        .with_attribute("", "v")
        .with_attribute("host", "pc-12");
        same_as_prost(&r);
        for len in [0, 100, 125, 126, 127, 128, 16_381, 16_382, 16_383, 70_000] {
            let text = JsonText::from_value(&serde_json::json!("x".repeat(len)));
            same_as_prost(&Record::new("s", "a", i64::MIN, Body::Json(text)));
        }
        let batch = |gateway_id: &str, records| Batch {
            batch_id: BatchId::new_v7(),
            gateway_id: gateway_id.into(),
            records,
        };
        same_batch_as_prost(&batch("", vec![]));
        same_batch_as_prost(&batch(
            "gw-1",
            vec![r.clone(), Record::new("", "", 0, Body::Raw(Bytes::new()))],
        ));
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(1u128..),
            ".{0,12}",
            ".{0,12}",
            any::<i64>(),
            proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300)
                    .prop_map(|b| Body::Raw(Bytes::from(b))),
                (any::<i64>(), ".{0,200}")
                    .prop_map(|(n, s)| Body::from(serde_json::json!({"n": n, "s": s}))),
            ],
        )
            .prop_map(
                |(id, stream, source, timestamp_ms, attributes, body)| Record {
                    id: id.and_then(|v| RecordId::from_uuid(uuid::Uuid::from_u128(v))),
                    stream,
                    source,
                    timestamp_ms,
                    attributes,
                    body,
                },
            )
    }

    proptest! {
        #[test]
        fn records_and_batches_match_prost(
            records in proptest::collection::vec(arb_record(), 0..8),
            gateway_id in ".{0,12}",
        ) {
            for record in &records {
                same_as_prost(record);
            }
            same_batch_as_prost(&Batch { batch_id: BatchId::new_v7(), gateway_id, records });
        }
    }
}

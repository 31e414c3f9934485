//! Records at rest: the protobuf encoding of `gateway.v1.Record` (`gateway_proto::pb::Record`).
//!
//! Encoding is gateway-proto's [`Record::encode_protobuf`]: the protobuf wire format written
//! straight from a borrowed record, byte for byte what `prost` produces for
//! `pb::Record::from(&record)` (tests here and in gateway-proto hold it to that), without
//! cloning strings and maps first: the append path is the hot path. Decoding reads the fields
//! in place with the same rules as `prost` and gateway-proto's validating `TryFrom` (a proptest
//! holds it to that), so whatever a newer release adds to the message (new fields are skipped)
//! still reads.

use std::time::{SystemTime, UNIX_EPOCH};

use gateway_proto::{Body, JsonText, Record, RecordId};
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use rand::Rng;

/// Records encoded back to back in one allocation, with their ids.
#[derive(Debug, Default)]
pub(crate) struct EncodedBatch {
    /// The encoded records, concatenated.
    pub(crate) data: Vec<u8>,
    /// End offset of each record in `data`.
    pub(crate) ends: Vec<usize>,
    /// The id of each record.
    pub(crate) ids: Vec<RecordId>,
}

impl EncodedBatch {
    /// Encode `records`, assigning a UUIDv7 to each record without an id.
    #[cfg(test)]
    pub(crate) fn encode(records: &mut [Record]) -> Self {
        Encoder::default().encode(records)
    }

    /// Append the records of `other` (a later chunk of the same append).
    pub(crate) fn extend(&mut self, other: EncodedBatch) {
        let offset = self.data.len();
        self.data.extend_from_slice(&other.data);
        self.ends.extend(other.ends.iter().map(|end| end + offset));
        self.ids.extend(other.ids);
    }

    /// The encoded records in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let slice = &self.data[start..end];
            start = end;
            slice
        })
    }

    /// Total encoded bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.data.len() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Encodes the records of one append, possibly in several chunks.
#[derive(Default)]
pub(crate) struct Encoder {
    fresh: Option<V7Ids>,
}

impl Encoder {
    /// Encode `records`, assigning a UUIDv7 to each record without an id.
    pub(crate) fn encode(&mut self, records: &mut [Record]) -> EncodedBatch {
        let mut batch = EncodedBatch {
            // ~200 bytes a record keeps a 512-record batch under glibc's 128 KiB mmap threshold.
            data: Vec::with_capacity(records.len() * 200),
            ends: Vec::with_capacity(records.len()),
            ids: Vec::with_capacity(records.len()),
        };
        for record in records.iter_mut() {
            let id = *record
                .id
                .get_or_insert_with(|| self.fresh.get_or_insert_with(V7Ids::new).next());
            batch.ids.push(id);
            record.encode_protobuf(&mut batch.data);
            batch.ends.push(batch.data.len());
        }
        batch
    }
}

/// UUIDv7 ids for one batch: one clock read and one draw from the thread-local CSPRNG per
/// batch instead of a `getrandom` system call per id (`Uuid::now_v7`), which dominated small
/// appends. Layout per RFC 9562: 48-bit Unix milliseconds, 12 random bits (`rand_a`) shared by
/// the batch, and 62 bits (`rand_b`) that start at a random value below 2^61 and count up, so
/// the ids of a batch are unique and ascending.
struct V7Ids {
    millis: u64,
    rand_a: [u8; 2],
    next_b: u64,
}

impl V7Ids {
    fn new() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut rng = rand::rng();
        V7Ids {
            millis,
            rand_a: rng.random(),
            next_b: rng.random::<u64>() >> 3,
        }
    }

    fn next(&mut self) -> RecordId {
        let mut bytes = [0u8; 10];
        bytes[..2].copy_from_slice(&self.rand_a);
        bytes[2..].copy_from_slice(&self.next_b.to_be_bytes());
        self.next_b += 1;
        let uuid = uuid::Builder::from_unix_timestamp_millis(self.millis, &bytes).into_uuid();
        // A v7 UUID has version bits set, so it is never nil.
        RecordId::from_uuid(uuid).unwrap_or_else(RecordId::new_v7)
    }
}

/// Why a stored record could not be read back.
#[derive(Debug)]
pub(crate) struct DecodeError(pub(crate) String);

/// Decode one stored record straight from its protobuf bytes — what `pb::Record::decode` and
/// gateway-proto's `TryFrom` do together (a proptest holds it to that on arbitrary bytes),
/// without the intermediate message: the JSON body is checked in place, the id read in place.
/// Unknown fields are skipped, so records written by a newer release still read. Stored records
/// always carry an id.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut buf = bytes;
    let mut id: &[u8] = &[];
    let mut stream = String::new();
    let mut source = String::new();
    let mut timestamp_ms = 0i64;
    let mut attributes = std::collections::BTreeMap::new();
    let mut body: Option<RawBody<'_>> = None;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(protobuf)?;
        let expected = match tag {
            1..=3 | 5..=7 => Some(WireType::LengthDelimited),
            4 => Some(WireType::Varint),
            _ => None,
        };
        match expected {
            None => {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(protobuf)?;
                continue;
            }
            Some(expected) if expected != wire_type => {
                return Err(DecodeError(format!(
                    "protobuf: field {tag} has wire type {wire_type:?}, expected {expected:?}"
                )));
            }
            Some(_) => {}
        }
        match tag {
            1 => id = take_len(&mut buf)?,
            2 => stream = take_str(&mut buf)?.to_owned(),
            3 => source = take_str(&mut buf)?.to_owned(),
            4 => timestamp_ms = decode_varint(&mut buf).map_err(protobuf)? as i64,
            5 => {
                let (key, value) = map_entry(take_len(&mut buf)?)?;
                attributes.insert(key, value);
            }
            6 => body = Some(RawBody::Json(take_str(&mut buf)?)),
            _ => body = Some(RawBody::Raw(take_len(&mut buf)?)),
        }
    }
    if id.is_empty() {
        return Err(DecodeError("stored record has no id".into()));
    }
    let id = uuid::Uuid::from_slice(id)
        .ok()
        .and_then(RecordId::from_uuid)
        .ok_or_else(|| {
            DecodeError(format!(
                "id: not a non-nil 16-byte UUID ({} bytes)",
                id.len()
            ))
        })?;
    let body = match body {
        Some(RawBody::Json(text)) => {
            Body::Json(JsonText::parse(text).map_err(|e| DecodeError(e.to_string()))?)
        }
        Some(RawBody::Raw(bytes)) => Body::Raw(gateway_proto::Bytes::copy_from_slice(bytes)),
        None => return Err(DecodeError("body: missing".into())),
    };
    Ok(Record {
        id: Some(id),
        stream,
        source,
        timestamp_ms,
        attributes,
        body,
    })
}

enum RawBody<'a> {
    Json(&'a str),
    Raw(&'a [u8]),
}

fn protobuf(e: prost::DecodeError) -> DecodeError {
    DecodeError(format!("protobuf: {e}"))
}

fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = decode_varint(buf).map_err(protobuf)?;
    if len > buf.len() as u64 {
        return Err(DecodeError("protobuf: buffer underflow".into()));
    }
    let (value, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(value)
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(take_len(buf)?).map_err(|_| {
        DecodeError("protobuf: invalid string value: data is not UTF-8 encoded".into())
    })
}

/// One `map<string, string>` entry.
fn map_entry(mut entry: &[u8]) -> Result<(String, String), DecodeError> {
    let (mut key, mut value) = ("", "");
    while !entry.is_empty() {
        let (tag, wire_type) = decode_key(&mut entry).map_err(protobuf)?;
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => key = take_str(&mut entry)?,
            (2, WireType::LengthDelimited) => value = take_str(&mut entry)?,
            (1 | 2, other) => {
                return Err(DecodeError(format!(
                    "protobuf: map entry field {tag} has wire type {other:?}"
                )));
            }
            _ => skip_field(wire_type, tag, &mut entry, DecodeContext::default())
                .map_err(protobuf)?,
        }
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::Bytes;
    use gateway_proto::pb;
    use proptest::prelude::*;
    use prost::Message;
    use serde_json::json;

    fn same_as_prost(record: &Record) {
        let mut ours = Vec::new();
        record.encode_protobuf(&mut ours);
        let theirs = pb::Record::from(record).encode_to_vec();
        assert_eq!(ours, theirs, "{record:?}");
    }

    #[test]
    fn matches_prost_on_edge_cases() {
        let mut r = Record::new("", "", 0, Body::Raw(Bytes::new()));
        same_as_prost(&r);
        r = r.with_id(RecordId::new_v7());
        same_as_prost(&r);
        let r = Record::new("logs", "a", -5, Body::from(json!({"k": [1, "two", null]})))
            .with_attribute("", "")
            .with_attribute("k", "")
            .with_attribute("", "v")
            .with_attribute("host", "pc-12");
        same_as_prost(&r);
    }

    #[test]
    fn json_bodies_of_every_length_prefix_match_prost() {
        for len in [
            0, 1, 100, 125, 126, 127, 128, 200, 16_380, 16_381, 16_382, 16_383, 16_384, 70_000,
        ] {
            let r = Record::new("s", "a", 1, Body::from(json!("x".repeat(len))));
            same_as_prost(&r);
        }
    }

    #[test]
    fn encode_assigns_ids_and_decodes_back() {
        let mut records = vec![
            Record::new("logs", "a", 1, Body::from(json!({"m": 1}))),
            Record::new("logs", "a", 2, Body::Raw(Bytes::from_static(b"\x00\x01")))
                .with_id(RecordId::new_v7()),
        ];
        let kept = records[1].id;
        let batch = EncodedBatch::encode(&mut records);
        assert_eq!(batch.ids.len(), 2);
        assert_eq!(Some(batch.ids[1]), kept);
        let decoded: Vec<Record> = batch.iter().map(|b| decode_record(b).unwrap()).collect();
        assert_eq!(decoded, records);
        assert_eq!(
            batch.bytes(),
            batch.iter().map(|b| b.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn chunks_extend_into_one_batch() {
        let mut records: Vec<Record> = (0..5)
            .map(|i| Record::new("s", "a", i, Body::from(json!(i))))
            .collect();
        let mut encoder = Encoder::default();
        let (head, tail) = records.split_at_mut(2);
        let mut batch = encoder.encode(head);
        batch.extend(encoder.encode(tail));
        assert_eq!(batch.len(), 5);
        assert!(batch.ids.windows(2).all(|w| w[0] < w[1]), "one id sequence");
        let decoded: Vec<Record> = batch.iter().map(|b| decode_record(b).unwrap()).collect();
        assert_eq!(decoded, records);
    }

    #[test]
    fn batch_ids_are_v7_unique_ascending_and_near_now() {
        let mut ids = V7Ids::new();
        let batch: Vec<RecordId> = (0..1000).map(|_| ids.next()).collect();
        assert!(batch.windows(2).all(|w| w[0] < w[1]));
        for id in &batch {
            assert_eq!(id.as_uuid().get_version_num(), 7);
            assert_eq!(id.as_uuid().get_variant(), uuid::Variant::RFC4122);
        }
        let (secs, _) = batch[0].as_uuid().get_timestamp().unwrap().to_unix();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) < 5);
        // Two batches in the same millisecond still differ.
        assert_ne!(V7Ids::new().next(), V7Ids::new().next());
    }

    #[test]
    fn decode_refuses_garbage_and_id_less_records() {
        assert!(decode_record(b"\xff\xff\xff").is_err());
        let mut bytes = Vec::new();
        Record::new("s", "a", 1, Body::Raw(Bytes::new())).encode_protobuf(&mut bytes);
        assert!(decode_record(&bytes).is_err());
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(any::<u128>().prop_filter("non-nil", |v| *v != 0)),
            ".{0,12}",
            ".{0,12}",
            any::<i64>(),
            proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64)
                    .prop_map(|b| Body::Raw(Bytes::from(b))),
                (any::<i64>(), ".{0,16}").prop_map(|(n, s)| Body::from(json!({"n": n, "s": s}))),
            ],
        )
            .prop_map(|(id, stream, source, ts, attributes, body)| Record {
                id: id.and_then(|v| RecordId::from_uuid(uuid::Uuid::from_u128(v))),
                stream,
                source,
                timestamp_ms: ts,
                attributes,
                body,
            })
    }

    /// The reference: prost's message, then gateway-proto's validation.
    fn decode_via_prost(bytes: &[u8]) -> Option<Record> {
        let record = Record::try_from(pb::Record::decode(bytes).ok()?).ok()?;
        record.id.is_some().then_some(record)
    }

    fn arb_encoded() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Real records, then damaged.
            (arb_record(), any::<usize>(), any::<u8>(), any::<bool>()).prop_map(
                |(r, at, byte, damage)| {
                    let mut bytes = pb::Record::from(&r).encode_to_vec();
                    if damage && !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                    bytes
                }
            ),
            // Real records with an unknown field appended (a newer release's record).
            (
                arb_record(),
                8u32..200,
                proptest::collection::vec(any::<u8>(), 0..8)
            )
                .prop_map(|(r, tag, extra)| {
                    let mut bytes = pb::Record::from(&r).encode_to_vec();
                    prost::encoding::bytes::encode(tag, &extra, &mut bytes);
                    bytes
                }),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #[test]
        fn decoding_agrees_with_prost_on_any_bytes(bytes in arb_encoded()) {
            let ours = decode_record(&bytes).ok();
            prop_assert_eq!(ours, decode_via_prost(&bytes));
        }

        #[test]
        fn encoding_equals_prost_and_round_trips(record in arb_record()) {
            same_as_prost(&record);
            if record.id.is_some() {
                let mut bytes = Vec::new();
                record.encode_protobuf(&mut bytes);
                prop_assert_eq!(decode_record(&bytes).unwrap(), record);
            }
        }
    }
}

//! Every validation rule, broken on purpose: the error must name the field and carry the
//! documented code.

use gateway_proto::*;
use prost::Message;
use serde_json::json;

const NOW: i64 = 1_732_363_200_000;

fn good_record() -> Record {
    Record::new("logs", "agent-1", NOW, Body::from(json!({"ok": true}))).with_id(RecordId::new_v7())
}

#[track_caller]
fn assert_invalid(result: Result<(), Error>, field: &str, code: ErrorCode) {
    match result {
        Err(Error::InvalidField {
            field: f, code: c, ..
        }) => {
            assert_eq!(f, field, "wrong field named");
            assert_eq!(c, code, "wrong code");
        }
        other => panic!("expected InvalidField {field} / {code}, got {other:?}"),
    }
}

fn check(record: Record) -> Result<(), Error> {
    Limits::default().validate_record(&record, NOW)
}

#[test]
fn a_good_record_passes() {
    check(good_record()).unwrap();
}

#[test]
fn stream_rules() {
    let code = ErrorCode::InvalidStream;
    for bad in [
        "",
        "Logs",
        "logs!",
        "-logs",
        "lo gs",
        "métricas",
        &"a".repeat(65),
    ] {
        let mut r = good_record();
        r.stream = bad.to_string();
        assert_invalid(check(r), "stream", code.clone());
    }
    for good in ["a", "logs", "app.audit-v2_x", "0metrics", &"a".repeat(64)] {
        let mut r = good_record();
        r.stream = good.to_string();
        check(r).unwrap();
    }
}

#[test]
fn source_rules() {
    for bad in ["".to_string(), "x".repeat(129), "agent\n1".to_string()] {
        let mut r = good_record();
        r.source = bad;
        assert_invalid(check(r), "source", ErrorCode::InvalidSource);
    }
}

#[test]
fn timestamp_rules() {
    let limits = Limits::default();
    let mut r = good_record();
    r.timestamp_ms = limits.min_timestamp_ms - 1;
    assert_invalid(
        check(r.clone()),
        "timestamp_ms",
        ErrorCode::InvalidTimestamp,
    );
    r.timestamp_ms = limits.min_timestamp_ms;
    check(r.clone()).unwrap();
    r.timestamp_ms = NOW + limits.max_future_skew_ms + 1;
    assert_invalid(
        check(r.clone()),
        "timestamp_ms",
        ErrorCode::InvalidTimestamp,
    );
    r.timestamp_ms = NOW + limits.max_future_skew_ms;
    check(r).unwrap();
}

#[test]
fn attribute_rules() {
    let limits = Limits::default();
    let mut r = good_record();
    for i in 0..=limits.max_attributes {
        r.attributes.insert(format!("k{i}"), "v".into());
    }
    assert_invalid(check(r), "attributes", ErrorCode::TooManyAttributes);

    let r = good_record().with_attribute("", "v");
    assert_invalid(check(r), "attributes[\"\"]", ErrorCode::InvalidAttribute);

    let long_key = "k".repeat(limits.max_attribute_key_len + 1);
    let r = good_record().with_attribute(long_key.clone(), "v");
    assert_invalid(
        check(r),
        &format!("attributes[{long_key:?}]"),
        ErrorCode::InvalidAttribute,
    );

    let r = good_record().with_attribute("k", "v".repeat(limits.max_attribute_value_len + 1));
    assert_invalid(check(r), "attributes[\"k\"]", ErrorCode::InvalidAttribute);
}

#[test]
fn body_size_rules() {
    let limits = Limits {
        max_body_bytes: 16,
        ..Limits::default()
    };
    let raw = |n| Record::new("logs", "a", NOW, Body::Raw(Bytes::from(vec![0; n])));
    limits.validate_record(&raw(16), NOW).unwrap();
    assert_invalid(
        limits.validate_record(&raw(17), NOW),
        "body",
        ErrorCode::BodyTooLarge,
    );
    // JSON bodies count their JSON text: `"0123456789abcdef"` is 18 bytes.
    let json = Record::new("logs", "a", NOW, Body::from(json!("0123456789abcdef")));
    assert_invalid(
        limits.validate_record(&json, NOW),
        "body",
        ErrorCode::BodyTooLarge,
    );
}

#[test]
fn batch_rules() {
    let limits = Limits {
        max_records_per_batch: 2,
        max_batch_bytes: 200,
        ..Limits::default()
    };
    let batch = Batch::new("gw-1", vec![good_record(), good_record(), good_record()]);
    let err = limits.check_batch(&batch).unwrap_err();
    assert!(
        matches!(err, Error::TooManyRecords { count: 3, limit: 2 }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);

    let bytes = batch.encode(Encoding::Json);
    let err = decode_batch(&bytes, Encoding::Json, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "batch",
                limit: 200,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code().http_status(), 413);

    let mut batch = Batch::new("gw\u{7}", vec![]);
    assert_invalid(
        limits.check_batch(&batch),
        "gateway_id",
        ErrorCode::InvalidRequest,
    );
    batch.gateway_id = String::new(); // agents leave it empty
    limits.check_batch(&batch).unwrap();
}

#[test]
fn bad_records_are_rejected_one_by_one() {
    let mut bad = good_record();
    bad.stream = "BAD".into();
    let batch = Batch::new("gw", vec![good_record(), bad, good_record()]);
    let rejected = Limits::default().reject_invalid_records(&batch, NOW);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].index, 1);
    assert_eq!(rejected[0].code, ErrorCode::InvalidStream);
    assert!(rejected[0].message.contains("stream"));
}

// ------------------------------------------------------------------ frames

fn hello() -> Hello {
    Hello {
        gateway_id: "gw-1".into(),
        protocol_version: 1,
        min_protocol_version: 1,
        capabilities: vec![],
        applied_policies: vec![],
        last_command_id: None,
        software: "test".into(),
    }
}

fn frame_check(frame: ControlFrame) -> Result<(), Error> {
    Limits::default().validate_frame(&frame)
}

#[test]
fn hello_rules() {
    let code = ErrorCode::MalformedFrame;
    frame_check(ControlFrame::Hello(hello())).unwrap();
    let mut h = hello();
    h.gateway_id = String::new();
    assert_invalid(
        frame_check(ControlFrame::Hello(h)),
        "hello.gateway_id",
        code.clone(),
    );
    let mut h = hello();
    h.min_protocol_version = 2;
    assert_invalid(
        frame_check(ControlFrame::Hello(h)),
        "hello.min_protocol_version",
        code.clone(),
    );
    let mut h = hello();
    h.min_protocol_version = 0;
    assert_invalid(
        frame_check(ControlFrame::Hello(h)),
        "hello.min_protocol_version",
        code.clone(),
    );
    let mut h = hello();
    h.applied_policies.push(AppliedPolicy {
        name: "p".into(),
        version: 1,
        checksum: "ABC".into(),
    });
    assert_invalid(
        frame_check(ControlFrame::Hello(h)),
        "hello.applied_policies[0].checksum",
        code,
    );
}

#[test]
fn welcome_rules() {
    let w = Welcome {
        session_id: SessionId::new_v7(),
        protocol_version: 1,
        heartbeat_interval_ms: 0,
        server_time_ms: NOW,
    };
    assert_invalid(
        frame_check(ControlFrame::Welcome(w.clone())),
        "welcome.heartbeat_interval_ms",
        ErrorCode::MalformedFrame,
    );
    let w = Welcome {
        heartbeat_interval_ms: 1000,
        protocol_version: 0,
        ..w
    };
    assert_invalid(
        frame_check(ControlFrame::Welcome(w)),
        "welcome.protocol_version",
        ErrorCode::MalformedFrame,
    );
}

#[test]
fn command_and_policy_rules() {
    let code = ErrorCode::MalformedFrame;
    let command = Command {
        id: CommandId::new_v7(),
        kind: String::new(),
        payload: json!(null),
        priority: 0,
        delivery_deadline_ms: None,
        execution_timeout_ms: None,
        target: None,
    };
    assert_invalid(
        frame_check(ControlFrame::Command(command)),
        "command.kind",
        code.clone(),
    );

    let update = PolicyUpdate {
        name: "collection".into(),
        version: 2,
        checksum: "0".repeat(64),
        content: PolicyContent::Full {
            document: json!({}),
        },
        signature: None,
    };
    frame_check(ControlFrame::PolicyUpdate(update.clone())).unwrap();
    let bad_sum = PolicyUpdate {
        checksum: "0".repeat(63),
        ..update.clone()
    };
    assert_invalid(
        frame_check(ControlFrame::PolicyUpdate(bad_sum)),
        "policy_update.checksum",
        code.clone(),
    );
    let bad_patch = PolicyUpdate {
        content: PolicyContent::Patch {
            base_version: 1,
            operations: json!({"op": "add"}),
        },
        ..update.clone()
    };
    assert_invalid(
        frame_check(ControlFrame::PolicyUpdate(bad_patch)),
        "policy_update.content.patch.operations",
        code.clone(),
    );
    let bad_sig = PolicyUpdate {
        signature: Some(Bytes::from(vec![1; 63])),
        ..update.clone()
    };
    assert_invalid(
        frame_check(ControlFrame::PolicyUpdate(bad_sig)),
        "policy_update.signature",
        code.clone(),
    );
    let no_name = PolicyUpdate {
        name: String::new(),
        ..update
    };
    assert_invalid(
        frame_check(ControlFrame::PolicyUpdate(no_name)),
        "policy_update.name",
        code.clone(),
    );
    let status = PolicyStatus {
        name: String::new(),
        version: 1,
        state: PolicyState::Applied,
        reason: None,
        code: None,
        running_version: Some(1),
    };
    assert_invalid(
        frame_check(ControlFrame::PolicyStatus(status)),
        "policy_status.name",
        code,
    );
}

#[test]
fn frames_over_the_size_limit_are_not_decoded() {
    let limits = Limits {
        max_frame_bytes: 32,
        ..Limits::default()
    };
    let bytes = ControlFrame::Hello(hello()).encode(Encoding::Json);
    let err = decode_frame(&bytes, Encoding::Json, &limits).unwrap_err();
    assert!(matches!(
        err,
        Error::TooLarge {
            what: "control frame",
            limit: 32,
            ..
        }
    ));
}

// ------------------------------------------------------------------ structural rules

#[test]
fn protobuf_structure_errors_name_the_field() {
    let record = |id: &[u8], body| pb::Record {
        id: Bytes::copy_from_slice(id),
        stream: "logs".into(),
        source: "a".into(),
        timestamp_ms: NOW,
        attributes: Default::default(),
        body,
    };
    let batch = |records| pb::Batch {
        batch_id: Bytes::copy_from_slice(BatchId::new_v7().as_bytes()),
        gateway_id: "gw".into(),
        records,
    };
    let good_body = Some(pb::record::Body::Json("{}".into()));
    let decode = |b: pb::Batch| Batch::from_protobuf(&b.encode_to_vec()).unwrap_err();

    let err = decode(batch(vec![
        record(&[], good_body.clone()),
        record(&[], None),
    ]));
    assert_eq!(
        err,
        Error::MissingField {
            field: "records[1].body".into()
        }
    );

    let err = decode(batch(vec![record(&[7; 5], good_body.clone())]));
    assert!(
        matches!(&err, Error::InvalidField { field, code: ErrorCode::InvalidId, .. } if field == "records[0].id"),
        "{err:?}"
    );

    let err = decode(batch(vec![record(&[0; 16], good_body)]));
    assert!(
        matches!(&err, Error::InvalidField { field, .. } if field == "records[0].id"),
        "{err:?}"
    );

    let err = decode(batch(vec![record(
        &[],
        Some(pb::record::Body::Json("{nope".into())),
    )]));
    assert!(
        matches!(&err, Error::InvalidField { field, code: ErrorCode::InvalidBody, .. } if field == "records[0].body.json"),
        "{err:?}"
    );

    let mut no_id = batch(vec![]);
    no_id.batch_id = Bytes::new();
    assert_eq!(
        decode(no_id),
        Error::MissingField {
            field: "batch_id".into()
        }
    );
}

#[test]
fn protobuf_enum_errors_name_the_field() {
    let frame = |state| pb::ControlFrame {
        frame: Some(pb::control_frame::Frame::CommandAck(pb::CommandAck {
            id: Bytes::copy_from_slice(CommandId::new_v7().as_bytes()),
            state,
            detail: None,
            result_json: None,
        })),
    };
    let err = ControlFrame::from_protobuf(&frame(0).encode_to_vec()).unwrap_err();
    assert_eq!(
        err,
        Error::MissingField {
            field: "command_ack.state".into()
        }
    );
    let err = ControlFrame::from_protobuf(&frame(99).encode_to_vec()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidField { field, .. } if field == "command_ack.state"),
        "{err:?}"
    );

    let heartbeat = pb::ControlFrame {
        frame: Some(pb::control_frame::Frame::Heartbeat(pb::Heartbeat {
            seq: 1,
            status: None,
        })),
    };
    let err = ControlFrame::from_protobuf(&heartbeat.encode_to_vec()).unwrap_err();
    assert_eq!(
        err,
        Error::MissingField {
            field: "heartbeat.status".into()
        }
    );
}

#[test]
fn unknown_frames_are_recognised_as_such() {
    let err = ControlFrame::from_json(br#"{"type": "telemetry", "x": 1}"#).unwrap_err();
    assert!(matches!(&err, Error::UnknownFrameType { frame_type } if frame_type == "telemetry"));
    assert_eq!(err.code(), ErrorCode::UnknownFrame);
    assert_eq!(ErrorFrame::from(&err).code, ErrorCode::UnknownFrame);

    // A protobuf frame from a newer peer: an unknown oneof field number decodes to no frame.
    let newer = [0x52, 0x00]; // field 10, length-delimited, empty
    let err = ControlFrame::from_protobuf(&newer).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownFrame);

    let err = ControlFrame::from_json(br#"{"seq": 1}"#).unwrap_err();
    assert_eq!(
        err,
        Error::MissingField {
            field: "type".into()
        }
    );
    let err = ControlFrame::from_json(br#"{"type": 7}"#).unwrap_err();
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    let err = ControlFrame::from_json(br#"{"type": "heartbeat", "seq": "x"}"#).unwrap_err();
    assert_eq!(ErrorFrame::from(&err).code, ErrorCode::MalformedFrame);
}

#[test]
fn json_ignores_unknown_fields_for_forward_compatibility() {
    let frame = ControlFrame::from_json(
        br#"{"type": "heartbeat_ack", "seq": 3, "server_time_ms": 5, "added_in_v1_1": true}"#,
    )
    .unwrap();
    assert_eq!(
        frame,
        ControlFrame::HeartbeatAck(HeartbeatAck {
            seq: 3,
            server_time_ms: 5
        })
    );
}

#[test]
fn error_bodies_map_errors_to_status_and_code() {
    let err = Encoding::from_content_type("text/csv").unwrap_err();
    let body = ErrorBody::from(&err);
    assert_eq!(body.http_status(), 415);
    assert_eq!(
        serde_json::to_value(&body).unwrap()["error"]["code"],
        "unsupported_media_type"
    );
}

//! Golden vectors in `testdata/`: for the batch and for every control frame type, a JSON file and
//! a protobuf file holding the same message. Other implementations test themselves against these
//! files; this test checks that both files decode, that they agree with each other, and that this
//! crate still encodes the same message to the same data.
//!
//! Regenerate after a deliberate contract change with
//! `GATEWAY_PROTO_REGENERATE_GOLDEN=1 cargo test -p gateway-proto --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gateway_proto::*;
use serde_json::json;

fn uuid(n: u128) -> uuid::Uuid {
    // Fixed UUIDv7-shaped ids so the files never change between runs.
    uuid::Uuid::from_u128(0x0193_5a1e_8c00_7000_8000_0000_0000_0000 | n)
}

fn golden_batch() -> Batch {
    Batch {
        batch_id: BatchId::from_uuid(uuid(0xb)).unwrap(),
        gateway_id: "gw-lisbon-01".into(),
        records: vec![
            Record {
                id: RecordId::from_uuid(uuid(1)),
                stream: "logs".into(),
                source: "agent-pc-12".into(),
                timestamp_ms: 1_732_363_200_000,
                attributes: BTreeMap::new(),
                body: Body::from(json!({"level": "info", "msg": "agent started", "pid": 4242})),
            },
            Record {
                id: RecordId::from_uuid(uuid(2)),
                stream: "devices".into(),
                source: "printer-scan".into(),
                timestamp_ms: 1_732_363_200_250,
                attributes: BTreeMap::new(),
                body: Body::Raw(Bytes::from_static(b"\x00\x01binary\xff")),
            },
            Record {
                id: RecordId::from_uuid(uuid(3)),
                stream: "metrics".into(),
                source: "agent-pc-12".into(),
                timestamp_ms: 1_732_363_201_000,
                attributes: BTreeMap::from([
                    ("host".to_string(), "pc-12".to_string()),
                    ("site".to_string(), "lisbon".to_string()),
                ]),
                body: Body::from(json!({"cpu": 12.5, "mem_mb": 2048})),
            },
            Record {
                id: None,
                stream: "audit".into(),
                source: "agent-pc-12".into(),
                timestamp_ms: 1_732_363_202_000,
                attributes: BTreeMap::new(),
                body: Body::from(json!(["login", {"user": "ana"}])),
            },
        ],
    }
}

fn golden_frames() -> Vec<ControlFrame> {
    let status = StatusSnapshot {
        cpu_percent: 37.5,
        memory_used_bytes: 734_003_200,
        memory_total_bytes: 4_294_967_296,
        disk_free_bytes: 52_428_800_000,
        disk_total_bytes: 128_000_000_000,
        buffer_records: 1200,
        buffer_bytes: 240_000,
        buffer_pressure: BufferPressure::Normal,
        uplink_health: UplinkHealth::Healthy,
        connected_agents: 3,
        uptime_seconds: 86_400,
    };
    vec![
        ControlFrame::Hello(Hello {
            gateway_id: "gw-lisbon-01".into(),
            protocol_version: 1,
            min_protocol_version: 1,
            capabilities: vec!["policy.patch".into(), "device.hikvision".into()],
            applied_policies: vec![AppliedPolicy {
                name: "collection".into(),
                version: 3,
                checksum: "7c6a61c68ef8b9b6b061b28c348bc1ed7921cb53c8d38c0f6f7b8b4ee1c0a1d2".into(),
            }],
            last_command_id: CommandId::from_uuid(uuid(0xc0)),
            software: "gateway/0.1.0".into(),
        }),
        ControlFrame::Welcome(Welcome {
            session_id: SessionId::from_uuid(uuid(0x5e)).unwrap(),
            protocol_version: 1,
            heartbeat_interval_ms: 15_000,
            server_time_ms: 1_732_363_200_000,
        }),
        ControlFrame::Heartbeat(Heartbeat { seq: 42, status }),
        ControlFrame::HeartbeatAck(HeartbeatAck {
            seq: 42,
            server_time_ms: 1_732_363_215_000,
        }),
        ControlFrame::Command(Command {
            id: CommandId::from_uuid(uuid(0xc1)).unwrap(),
            kind: "device.door".into(),
            payload: json!({"device_id": "door-1", "door": 1, "action": "open"}),
            priority: 5,
            delivery_deadline_ms: Some(1_732_363_500_000),
            execution_timeout_ms: Some(30_000),
            target: Some("door-1".into()),
        }),
        ControlFrame::CommandAck(CommandAck {
            id: CommandId::from_uuid(uuid(0xc1)).unwrap(),
            state: CommandAckState::Failed,
            detail: Some("device answered statusCode 3 deviceError".into()),
            result: Some(json!({"status_code": 3, "sub_status_code": "deviceError"})),
        }),
        ControlFrame::PolicyUpdate(PolicyUpdate {
            name: "collection".into(),
            version: 4,
            checksum: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
            content: PolicyContent::Patch {
                base_version: 3,
                operations: json!([{"op": "replace", "path": "/interval_s", "value": 30}]),
            },
            signature: Some(Bytes::from(vec![0x5a; 64])),
        }),
        ControlFrame::PolicyStatus(PolicyStatus {
            name: "collection".into(),
            version: 4,
            state: PolicyState::Rejected,
            reason: Some("patch base 3 is not the running version 2".into()),
            code: Some(ErrorCode::BaseMismatch),
            running_version: Some(2),
        }),
        ControlFrame::Error(ErrorFrame::new(
            ErrorCode::UnknownFrame,
            "unknown control frame type `telemetry`",
        )),
    ]
}

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn regenerate() -> bool {
    std::env::var_os("GATEWAY_PROTO_REGENERATE_GOLDEN").is_some()
}

/// Check (or, when regenerating, write) one golden pair.
fn check_pair<T>(stem: &str, expected: &T, decode: impl Fn(&[u8], Encoding) -> Result<T, Error>)
where
    T: WireMessage + PartialEq + std::fmt::Debug + serde::Serialize,
{
    let json_path = testdata().join(format!("{stem}.json"));
    let pb_path = testdata().join(format!("{stem}.pb"));
    if regenerate() {
        let pretty = serde_json::to_string_pretty(expected).unwrap() + "\n";
        std::fs::write(&json_path, pretty).unwrap();
        std::fs::write(&pb_path, expected.to_protobuf()).unwrap();
    }
    let json_bytes =
        std::fs::read(&json_path).unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
    let pb_bytes = std::fs::read(&pb_path).unwrap_or_else(|e| panic!("{}: {e}", pb_path.display()));

    let from_json = decode(&json_bytes, Encoding::Json)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", json_path.display()));
    let from_pb = decode(&pb_bytes, Encoding::Protobuf)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", pb_path.display()));
    assert_eq!(
        from_json, from_pb,
        "{stem}: the JSON and protobuf files disagree"
    );
    assert_eq!(
        &from_json, expected,
        "{stem}: the files hold another message"
    );

    // This crate still encodes the message to the same data.
    assert_eq!(
        expected.to_protobuf(),
        pb_bytes,
        "{stem}.pb: encoding changed"
    );
    let ours: serde_json::Value = serde_json::from_slice(&expected.to_json()).unwrap();
    let theirs: serde_json::Value = serde_json::from_slice(&json_bytes).unwrap();
    assert_eq!(ours, theirs, "{stem}.json: encoding changed");
}

#[test]
fn batch_pair_agrees() {
    let batch = golden_batch();
    assert!(batch.records.len() >= 3);
    check_pair("batch", &batch, |bytes, enc| {
        decode_batch(bytes, enc, &Limits::default())
    });
}

#[test]
fn every_frame_type_has_an_agreeing_pair() {
    let frames = golden_frames();
    let covered: Vec<_> = frames.iter().map(ControlFrame::frame_type).collect();
    assert_eq!(
        covered,
        ControlFrame::TYPES,
        "a frame type has no golden vector"
    );
    for frame in &frames {
        check_pair(
            &format!("frame-{}", frame.frame_type()),
            frame,
            |bytes, enc| decode_frame(bytes, enc, &Limits::default()),
        );
    }
}

#[test]
fn golden_json_files_use_the_documented_shape() {
    // Spot checks of the JSON contract an implementer reads in docs/PROTOCOL.md.
    let hb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata().join("frame-heartbeat.json")).unwrap())
            .unwrap();
    assert_eq!(hb["type"], "heartbeat");
    assert_eq!(hb["status"]["buffer_pressure"], "normal");
    let batch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata().join("batch.json")).unwrap()).unwrap();
    assert!(batch["records"][0]["body"]["json"].is_object());
    assert_eq!(batch["records"][1]["body"]["raw"], "AAFiaW5hcnn/");
    assert!(batch["records"][3].get("id").is_none());
}

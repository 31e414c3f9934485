//! Property tests: every message survives domain → JSON → domain and domain → protobuf →
//! domain unchanged, and no decoder panics on arbitrary or mutated input.

use std::collections::BTreeMap;

use gateway_proto::*;
use proptest::prelude::*;
use serde_json::Value;

// ------------------------------------------------------------------ strategies

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn uuid_strategy() -> impl Strategy<Value = uuid::Uuid> {
    (1u128..).prop_map(uuid::Uuid::from_u128)
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(".{0,10}", ".{0,16}", 0..4)
}

fn record() -> impl Strategy<Value = Record> {
    (
        prop::option::of(uuid_strategy()),
        "[a-z0-9][a-z0-9._-]{0,10}",
        ".{0,16}",
        any::<i64>(),
        string_map(),
        prop_oneof![
            json_value().prop_map(Body::from),
            // Texts as agents write them: pretty or compact, keys in any order.
            (json_value(), any::<bool>()).prop_map(|(v, pretty)| {
                let text = if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    serde_json::to_string(&v).unwrap()
                };
                Body::Json(JsonText::parse(&text).unwrap())
            }),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|v| Body::Raw(Bytes::from(v))),
        ],
    )
        .prop_map(
            |(id, stream, source, timestamp_ms, attributes, body)| Record {
                id: id.and_then(RecordId::from_uuid),
                stream,
                source,
                timestamp_ms,
                attributes,
                body,
            },
        )
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        uuid_strategy(),
        ".{0,12}",
        prop::collection::vec(record(), 0..6),
    )
        .prop_map(|(id, gateway_id, records)| Batch {
            batch_id: BatchId::from_uuid(id).unwrap(),
            gateway_id,
            records,
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        prop::sample::select(ErrorCode::KNOWN.to_vec()),
        "[a-z_]{1,12}".prop_map(|s| ErrorCode::parse(&s)),
    ]
}

fn batch_ack() -> impl Strategy<Value = BatchAck> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(
            (any::<u32>(), error_code(), ".{0,20}").prop_map(|(index, code, message)| Rejection {
                index,
                code,
                message,
            }),
            0..4,
        ),
    )
        .prop_map(|(accepted, duplicates, rejected)| BatchAck {
            accepted,
            duplicates,
            rejected,
        })
}

fn status() -> impl Strategy<Value = StatusSnapshot> {
    (
        (0.0f64..10_000.0, any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        prop::sample::select(vec![
            BufferPressure::Normal,
            BufferPressure::Warning,
            BufferPressure::Critical,
        ]),
        prop::sample::select(vec![
            UplinkHealth::Healthy,
            UplinkHealth::Degraded,
            UplinkHealth::Down,
        ]),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |((cpu, mu, mt, df), (dt, br, bb), buffer_pressure, uplink_health, ca, up)| {
                StatusSnapshot {
                    cpu_percent: cpu,
                    memory_used_bytes: mu,
                    memory_total_bytes: mt,
                    disk_free_bytes: df,
                    disk_total_bytes: dt,
                    buffer_records: br,
                    buffer_bytes: bb,
                    buffer_pressure,
                    uplink_health,
                    connected_agents: ca,
                    uptime_seconds: up,
                }
            },
        )
}

fn command_id() -> impl Strategy<Value = CommandId> {
    uuid_strategy().prop_map(|u| CommandId::from_uuid(u).unwrap())
}

fn frame() -> impl Strategy<Value = ControlFrame> {
    let hello = (
        ".{0,12}",
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(".{0,8}", 0..3),
        prop::collection::vec(
            (".{0,8}", any::<u64>(), "[0-9a-f]{64}").prop_map(|(name, version, checksum)| {
                AppliedPolicy {
                    name,
                    version,
                    checksum,
                }
            }),
            0..3,
        ),
        prop::option::of(command_id()),
        ".{0,12}",
    )
        .prop_map(
            |(gateway_id, pv, mpv, capabilities, applied_policies, last, software)| {
                ControlFrame::Hello(Hello {
                    gateway_id,
                    protocol_version: pv,
                    min_protocol_version: mpv,
                    capabilities,
                    applied_policies,
                    last_command_id: last,
                    software,
                })
            },
        );
    let welcome =
        (uuid_strategy(), any::<u32>(), any::<u64>(), any::<i64>()).prop_map(|(sid, pv, hb, t)| {
            ControlFrame::Welcome(Welcome {
                session_id: SessionId::from_uuid(sid).unwrap(),
                protocol_version: pv,
                heartbeat_interval_ms: hb,
                server_time_ms: t,
            })
        });
    let heartbeat = (any::<u64>(), status())
        .prop_map(|(seq, status)| ControlFrame::Heartbeat(Heartbeat { seq, status }));
    let heartbeat_ack = (any::<u64>(), any::<i64>()).prop_map(|(seq, t)| {
        ControlFrame::HeartbeatAck(HeartbeatAck {
            seq,
            server_time_ms: t,
        })
    });
    let command = (
        command_id(),
        ".{0,12}",
        json_value(),
        any::<i32>(),
        prop::option::of(any::<i64>()),
        prop::option::of(any::<u64>()),
        prop::option::of(".{0,8}"),
    )
        .prop_map(|(id, kind, payload, priority, dd, et, target)| {
            ControlFrame::Command(Command {
                id,
                kind,
                payload,
                priority,
                delivery_deadline_ms: dd,
                execution_timeout_ms: et,
                target,
            })
        });
    let command_ack = (
        command_id(),
        prop::sample::select(vec![
            CommandAckState::Received,
            CommandAckState::InProgress,
            CommandAckState::Succeeded,
            CommandAckState::Failed,
            CommandAckState::Rejected,
        ]),
        prop::option::of(".{0,16}"),
        prop::option::of(json_value()),
    )
        .prop_map(|(id, state, detail, result)| {
            ControlFrame::CommandAck(CommandAck {
                id,
                state,
                detail,
                result,
            })
        });
    let content = prop_oneof![
        json_value().prop_map(|document| PolicyContent::Full { document }),
        (any::<u64>(), json_value()).prop_map(|(base_version, operations)| {
            PolicyContent::Patch {
                base_version,
                operations,
            }
        }),
    ];
    let policy_update = (
        ".{0,8}",
        any::<u64>(),
        "[0-9a-f]{64}",
        content,
        prop::option::of(prop::collection::vec(any::<u8>(), 0..70)),
    )
        .prop_map(|(name, version, checksum, content, signature)| {
            ControlFrame::PolicyUpdate(PolicyUpdate {
                name,
                version,
                checksum,
                content,
                signature: signature.map(Bytes::from),
            })
        });
    let policy_status = (
        ".{0,8}",
        any::<u64>(),
        prop::sample::select(vec![PolicyState::Applied, PolicyState::Rejected]),
        prop::option::of(".{0,16}"),
        prop::option::of(error_code()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(name, version, state, reason, code, running_version)| {
            ControlFrame::PolicyStatus(PolicyStatus {
                name,
                version,
                state,
                reason,
                code,
                running_version,
            })
        });
    let error = (error_code(), ".{0,20}")
        .prop_map(|(code, message)| ControlFrame::Error(ErrorFrame { code, message }));
    prop_oneof![
        hello,
        welcome,
        heartbeat,
        heartbeat_ack,
        command,
        command_ack,
        policy_update,
        policy_status,
        error
    ]
}

fn register_request() -> impl Strategy<Value = RegisterAgentRequest> {
    (
        ".{0,10}",
        ".{0,10}",
        ".{0,10}",
        ".{0,10}",
        prop::collection::vec(".{0,8}", 0..3),
        string_map(),
    )
        .prop_map(
            |(agent_id, kind, version, hostname, capabilities, attributes)| RegisterAgentRequest {
                agent_id,
                kind,
                version,
                hostname,
                capabilities,
                attributes,
            },
        )
}

fn register_response() -> impl Strategy<Value = RegisterAgentResponse> {
    (
        ".{0,10}",
        ".{0,10}",
        any::<u64>(),
        prop::option::of("[0-9a-f]{64}"),
    )
        .prop_map(
            |(agent_id, gateway_id, heartbeat_interval_ms, policy_checksum)| {
                RegisterAgentResponse {
                    agent_id,
                    gateway_id,
                    heartbeat_interval_ms,
                    policy_checksum,
                }
            },
        )
}

fn heartbeat_request() -> impl Strategy<Value = AgentHeartbeatRequest> {
    (
        ".{0,10}",
        any::<u64>(),
        any::<u64>(),
        string_map(),
        prop::collection::vec(command_id(), 0..3),
    )
        .prop_map(|(agent_id, seq, queued_records, status, acked_commands)| {
            AgentHeartbeatRequest {
                agent_id,
                seq,
                queued_records,
                status,
                acked_commands,
            }
        })
}

fn heartbeat_response() -> impl Strategy<Value = AgentHeartbeatResponse> {
    (
        any::<u64>(),
        prop::option::of("[0-9a-f]{64}"),
        prop::collection::vec(
            (command_id(), ".{0,8}", json_value()).prop_map(|(id, kind, payload)| AgentCommand {
                id,
                kind,
                payload,
            }),
            0..3,
        ),
    )
        .prop_map(|(heartbeat_interval_ms, policy_checksum, commands)| {
            AgentHeartbeatResponse {
                heartbeat_interval_ms,
                policy_checksum,
                commands,
            }
        })
}

fn error_body() -> impl Strategy<Value = ErrorBody> {
    (error_code(), ".{0,20}").prop_map(|(code, message)| ErrorBody::new(code, message))
}

// ------------------------------------------------------------------ round trips

/// `cases` cases; failures are saved in `proptest-regressions/roundtrip.txt` and replayed first.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/roundtrip.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

fn assert_round_trips<T: WireMessage + PartialEq + std::fmt::Debug>(value: &T) {
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let bytes = value.encode(encoding);
        let back = T::decode(&bytes, encoding)
            .unwrap_or_else(|e| panic!("{encoding:?} round trip failed: {e}\n{value:?}"));
        assert_eq!(&back, value, "{encoding:?} round trip changed the value");
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn batches_round_trip(b in batch()) { assert_round_trips(&b); }

    #[test]
    fn batch_acks_round_trip(a in batch_ack()) { assert_round_trips(&a); }

    #[test]
    fn control_frames_round_trip(f in frame()) { assert_round_trips(&f); }

    #[test]
    fn agent_messages_round_trip(
        rq in register_request(),
        rs in register_response(),
        hq in heartbeat_request(),
        hs in heartbeat_response(),
    ) {
        assert_round_trips(&rq);
        assert_round_trips(&rs);
        assert_round_trips(&hq);
        assert_round_trips(&hs);
    }

    #[test]
    fn error_bodies_round_trip(e in error_body()) { assert_round_trips(&e); }

    #[test]
    fn json_text_means_what_the_value_means(v in json_value()) {
        // Pretty or compact, a body's text compacts to the value's own compact text and
        // parses back to the value.
        let compact = serde_json::to_string(&v).unwrap();
        let pretty = JsonText::parse(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
        prop_assert_eq!(pretty.as_str(), compact.as_str());
        prop_assert_eq!(pretty.to_value().unwrap(), v.clone());
        prop_assert_eq!(JsonText::from_value(&v), pretty);
    }

    #[test]
    fn json_text_accepts_what_a_value_accepts(text in r#"[ \[\]{}:,"a0-9.eE+\-tru\\]{0,16}"#) {
        let value = serde_json::from_str::<Value>(&text);
        let ours = JsonText::parse(&text);
        prop_assert_eq!(ours.is_ok(), value.is_ok(), "{:?}", text);
        if let (Ok(ours), Ok(value)) = (ours, value) {
            prop_assert_eq!(ours.to_value().unwrap(), value);
        }
    }
}

// ------------------------------------------------------------------ hostile input

/// Decode `bytes` as every message type in both encodings; only `Ok` or `Err` may come back.
fn decode_everything(bytes: &[u8]) {
    let limits = Limits::default();
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let _ = decode_batch(bytes, encoding, &limits);
        let _ = decode_frame(bytes, encoding, &limits);
        let _ = BatchAck::decode(bytes, encoding);
        let _ = ErrorBody::decode(bytes, encoding);
        let _ = RegisterAgentRequest::decode(bytes, encoding);
        let _ = RegisterAgentResponse::decode(bytes, encoding);
        let _ = AgentHeartbeatRequest::decode(bytes, encoding);
        let _ = AgentHeartbeatResponse::decode(bytes, encoding);
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic(
        b in batch(),
        f in frame(),
        json in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoding = if json { Encoding::Json } else { Encoding::Protobuf };
        for mut bytes in [b.encode(encoding), f.encode(encoding)] {
            if bytes.is_empty() { continue; }
            for (at, value) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= value;
            }
            decode_everything(&bytes);
            bytes.truncate(cut.index(bytes.len()));
            decode_everything(&bytes);
        }
    }

    #[test]
    fn valid_records_pass_validation_after_a_round_trip(r in record()) {
        // A record that passes the rules still passes them after crossing the wire.
        let limits = Limits { min_timestamp_ms: i64::MIN, max_future_skew_ms: 0, ..Limits::default() };
        let valid = limits.validate_record(&r, i64::MAX).is_ok();
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let batch = Batch::new("gw", vec![r.clone()]);
            let back = Batch::decode(&batch.encode(encoding), encoding).unwrap();
            prop_assert_eq!(limits.validate_record(&back.records[0], i64::MAX).is_ok(), valid);
        }
    }
}

#[test]
fn a_null_result_is_not_confused_with_no_result() {
    // Found by `control_frames_round_trip`: `"result": null` once decoded as `None`.
    for result in [None, Some(Value::Null), Some(serde_json::json!({"ok": 1}))] {
        assert_round_trips(&ControlFrame::CommandAck(CommandAck {
            id: CommandId::new_v7(),
            state: CommandAckState::Succeeded,
            detail: None,
            result,
        }));
    }
}

//! Whatever a device answers, the adapter returns a value or an error and never panics.
//!
//! Parsers get arbitrary bytes and mutated captures (the shared samples when present, our own
//! fixtures always); the adapter gets arbitrary answers from the simulator over loopback.
#![cfg(feature = "simulator")]

mod common;

use gateway_devices::digest::{DigestAuthorization, DigestChallenge, parse_challenges};
use gateway_devices::hikvision::acs::{parse_acs_event_item, parse_search_page};
use gateway_devices::hikvision::isapi::{
    parse_device_info, parse_door_capabilities, parse_remote_control_door, parse_response_status,
    parse_time, parse_user_check,
};
use gateway_devices::hikvision::xml;
use gateway_devices::simulator::{Reply, SimulatorConfig};
use gateway_devices::time::{parse_datetime, parse_posix_tz};
use gateway_devices::{DeviceAdapter, DeviceCommand, DeviceRequest, DoorAction, EventSource};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Our own fixtures, so the mutation tests run even without the shared samples.
const FIXTURES: &[&str] = &[
    r#"<?xml version="1.0" encoding="UTF-8"?><DeviceInfo version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><deviceName>x</deviceName><model>DS-K1</model><serialNumber>S1</serialNumber><firmwareVersion>V1</firmwareVersion><firmwareReleasedDate>build 1</firmwareReleasedDate><deviceType>ACS</deviceType></DeviceInfo>"#,
    r#"<Time version="1.0" xmlns="urn:psialliance-org"><timeMode>NTP</timeMode><localTime>2024-02-29T23:59:59-03:30</localTime><timeZone>NST+3:30:00DST01:00:00,M3.2.0/2:00:00,M11.1.0/2:00:00</timeZone></Time>"#,
    r#"<ResponseStatus version="1.0" xmlns="http://www.hikvision.com/ver20/XMLSchema"><requestURL>/a</requestURL><statusCode>4</statusCode><statusString>Invalid Operation</statusString><subStatusCode>invalidOperation</subStatusCode></ResponseStatus>"#,
    r#"{"statusCode":6,"statusString":"Invalid Content","subStatusCode":"badJsonContent","errorCode":1610612737,"errorMsg":"startTime"}"#,
    r#"<RemoteControlDoor version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><doorNo min="1" max="4"/><cmd opt="open,close"/></RemoteControlDoor>"#,
    r#"<userCheck><statusValue>401</statusValue><statusString>Unauthorized</statusString><lockStatus>lock</lockStatus><unlockTime>1790</unlockTime><retryLoginTime>0</retryLoginTime></userCheck>"#,
    r#"{"AcsEvent":{"responseStatusStrg":"MORE","numOfMatches":1,"totalMatches":9,"searchID":"s","InfoList":[{"major":5,"minor":22,"time":"2024-01-01T00:00:00+00:00","serialNo":7,"doorNo":1}]}}"#,
    r#"Digest realm="IP Camera(C2183)", qop="auth", nonce="4e54", opaque="", algorithm="MD5", stale="TRUE", Basic realm="x""#,
];

/// Run every parser on one input. Returns how many accepted it (to check some do).
fn parse_everything(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    let mut accepted = 0;
    accepted += usize::from(xml::parse(&text).is_ok());
    accepted += usize::from(parse_device_info(&text).is_ok());
    accepted += usize::from(parse_time(&text).is_ok());
    accepted += usize::from(parse_response_status(bytes).is_ok());
    accepted += usize::from(parse_door_capabilities(&text).is_ok());
    accepted += usize::from(parse_user_check(&text).is_ok());
    accepted += usize::from(parse_remote_control_door(&text).is_ok());
    accepted += usize::from(parse_search_page(bytes, "AcsEvent", "InfoList").is_ok());
    accepted += usize::from(parse_search_page(bytes, "CardInfoSearch", "CardInfo").is_ok());
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        accepted += usize::from(parse_acs_event_item(&value).is_ok());
        accepted += usize::from(DeviceCommand::parse("device.door", &value).is_ok());
        accepted +=
            usize::from(DeviceRequest::from_control("device.command", None, &value).is_ok());
    }
    let challenges = parse_challenges(&text);
    accepted += usize::from(DigestChallenge::first_in(&challenges).is_some());
    accepted += usize::from(DigestAuthorization::parse(&text).is_some());
    accepted += usize::from(parse_datetime(&text).is_some());
    accepted += usize::from(parse_posix_tz(&text).is_some());
    accepted
}

fn corpus() -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = FIXTURES.iter().map(|f| f.as_bytes().to_vec()).collect();
    if let Some(dir) = common::samples_dir() {
        for name in common::samples_with(&dir, "", "") {
            if name != "README.md" {
                corpus.push(std::fs::read(dir.join(name)).unwrap());
            }
        }
    }
    corpus
}

#[test]
fn the_unmutated_corpus_is_accepted() {
    // A baseline for the mutation test: the originals do parse (the HTTP header capture is
    // mutation material only).
    for input in corpus().into_iter().filter(|i| !i.starts_with(b"HTTP/1.1")) {
        assert!(
            parse_everything(&input) > 0,
            "{}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop::sample::select(vec![
        b"<".to_vec(),
        b">".to_vec(),
        b"</a>".to_vec(),
        b"&amp;".to_vec(),
        b"&#xFFFFFF;".to_vec(),
        b"\"".to_vec(),
        b"{".to_vec(),
        b"]".to_vec(),
        b"\xff\xfe".to_vec(),
        b"=\"".to_vec(),
        b"-99999999999999999999".to_vec(),
        b"<![CDATA[".to_vec(),
        "é".as_bytes().to_vec(),
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![tokens, prop::collection::vec(any::<u8>(), 1..8)]
        )
            .prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..60).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    let i = i % bytes.len();
                    bytes[i] ^= b | 1;
                }
            }
            Mutation::Insert(i, t) => {
                let i = i % (bytes.len() + 1);
                bytes.splice(i..i, t.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(bytes.len());
                if i < end {
                    bytes.drain(i..end);
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let i = i % len;
                let end = (i + n).min(bytes.len());
                if i < end {
                    let copy = bytes[i..end].to_vec();
                    bytes.splice(end..end, copy);
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in "\\PC{0,300}") {
        parse_everything(text.as_bytes());
    }

    #[test]
    fn parsers_never_panic_on_mutated_captures(
        index in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let corpus = corpus();
        let original = corpus[index.index(corpus.len())].clone();
        parse_everything(&apply(original, &mutations));
    }

    #[test]
    fn arbitrary_json_payloads_give_a_command_or_a_typed_error(
        value in arbitrary_json(),
        kind in prop::sample::select(gateway_devices::command::KINDS.to_vec()),
    ) {
        match DeviceRequest::from_control(kind, Some("d1"), &value) {
            Ok(request) => prop_assert_eq!(request.device_id, "d1"),
            Err(e) => prop_assert!(e.is_rejection(), "{e}"),
        }
    }
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..10).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec!["open", "alwaysOpen", "door", "info", "x", ""])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["door", "action", "command", "device_id", "extra"])
                    .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Arbitrary device answers: a status, a content type, a body that is random, a mutated
/// capture, or well-formed JSON/XML of the wrong shape; sometimes a random challenge header.
fn answer() -> impl Strategy<Value = Reply> {
    let status = prop::sample::select(vec![
        200u16, 200, 200, 201, 204, 400, 401, 403, 404, 500, 503,
    ]);
    let content_type =
        prop::sample::select(vec!["application/xml", "application/json", "text/html", ""]);
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(mutation(), 0..4)
        )
            .prop_map(|(i, m)| {
                let corpus: Vec<Vec<u8>> = FIXTURES.iter().map(|f| f.as_bytes().to_vec()).collect();
                apply(corpus[i.index(corpus.len())].clone(), &m)
            }),
        arbitrary_json().prop_map(|v| v.to_string().into_bytes()),
    ];
    let challenge = prop::option::of(prop_oneof![
        "\\PC{0,80}",
        Just(r#"Digest realm="r", nonce="n", qop="auth-int""#.to_string()),
        Just(r#"Digest realm="r", nonce="", stale=TRUE"#.to_string()),
        Just(r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#.to_string()),
    ]);
    (status, content_type, body, challenge).prop_map(|(status, ct, body, challenge)| {
        let reply = Reply::raw(status, ct, body);
        match challenge {
            Some(c) => reply.with_header("WWW-Authenticate", c),
            None => reply,
        }
    })
}

#[test]
fn the_adapter_never_panics_on_arbitrary_answers() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let simulator = runtime
        .block_on(gateway_devices::simulator::Simulator::start(
            SimulatorConfig::default(),
        ))
        .unwrap();
    // No auth backoff, so every case reaches the simulator even after a random 401.
    let mut config = common::config_for(&simulator);
    config.auth_failure_backoff_ms = 0;
    let adapter = gateway_devices::hikvision::HikvisionAdapter::new("fuzz", config).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let commands = [
        DeviceCommand::Info,
        DeviceCommand::Time,
        DeviceCommand::Reboot,
        DeviceCommand::Door {
            door: 1,
            action: DoorAction::Open,
        },
    ];
    runner
        .run(&(answer(), 0usize..5), |(reply, which)| {
            runtime.block_on(async {
                simulator.answer_raw_next(1, reply.clone());
                match which {
                    0..=3 => {
                        let result = adapter.execute(&commands[which]).await;
                        // A document command succeeds only on a readable document.
                        if which == 0 && result.is_ok() {
                            let text = String::from_utf8_lossy(&reply.body);
                            prop_assert!(parse_device_info(&text).is_ok() || reply.status == 401);
                        }
                        if let Err(e) = result {
                            prop_assert!(!e.to_string().is_empty());
                        }
                    }
                    _ => {
                        let result = adapter.poll_events(None, 10).await;
                        if result.is_ok() && reply.status != 401 {
                            prop_assert!(
                                parse_search_page(&reply.body, "AcsEvent", "InfoList").is_ok()
                            );
                        }
                    }
                }
                // Leave no queued answer for the next case.
                simulator.clear_faults();
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(async {
        // The simulator and a fresh adapter still work afterwards.
        let fresh = gateway_devices::hikvision::HikvisionAdapter::new(
            "fresh",
            common::config_for(&simulator),
        )
        .unwrap();
        fresh.execute(&DeviceCommand::Info).await.unwrap();
        simulator.shutdown().await;
    });
}

fn shuffle<T>(mut items: Vec<T>, seed: &[usize]) -> Vec<T> {
    for (i, s) in seed.iter().enumerate() {
        let len = items.len();
        if len > 1 {
            items.swap(i % len, s % len);
        }
    }
    items
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    /// Challenges as devices word them: any parameter order, quoted or bare tokens, flags in any
    /// case, realms with parentheses, spaces, commas and escaped quotes, a Basic challenge after.
    #[test]
    fn challenge_headers_are_read_in_any_wording(
        realm in "[A-Za-z0-9 (),.\"\\\\-]{1,24}",
        nonce in "[0-9a-f:]{4,40}",
        opaque in prop::option::of("[A-Za-z0-9]{0,8}"),
        quote_algorithm in any::<bool>(),
        algorithm in prop::option::of(prop::sample::select(vec!["MD5", "md5", "SHA-256", "MD5-sess"])),
        stale in prop::sample::select(vec!["FALSE", "false", "TRUE", "True", "true"]),
        quote_stale in any::<bool>(),
        with_domain in any::<bool>(),
        order in prop::collection::vec(any::<usize>(), 0..8),
        basic_after in any::<bool>(),
    ) {
        let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        let mut params = vec![
            format!("realm={}", quoted(&realm)),
            format!("nonce={}", quoted(&nonce)),
            "qop=\"auth\"".to_string(),
            if quote_stale { format!("stale=\"{stale}\"") } else { format!("stale={stale}") },
        ];
        if let Some(o) = &opaque {
            params.push(format!("opaque={}", quoted(o)));
        }
        if let Some(a) = algorithm {
            params.push(if quote_algorithm { format!("algorithm=\"{a}\"") } else { format!("algorithm={a}") });
        }
        if with_domain {
            params.push("domain=\"::\"".to_string());
        }
        let mut header = format!("Digest {}", shuffle(params, &order).join(", "));
        if basic_after {
            header.push_str(&format!(", Basic realm={}", quoted(&realm)));
        }
        let challenges = parse_challenges(&header);
        prop_assert_eq!(challenges.len(), if basic_after { 2 } else { 1 });
        let digest = DigestChallenge::first_in(&challenges).expect("answerable");
        prop_assert_eq!(&digest.realm, &realm);
        prop_assert_eq!(&digest.nonce, &nonce);
        prop_assert_eq!(digest.opaque.as_deref(), opaque.as_deref());
        prop_assert_eq!(digest.stale, stale.eq_ignore_ascii_case("true"));
        prop_assert!(digest.qop_auth);
        prop_assert_eq!(digest.algorithm_named, algorithm.is_some());
    }

    #[test]
    fn device_times_round_trip(ms in -2_000_000_000_000i64..4_000_000_000_000, offset_min in -720i32..840) {
        let offset = offset_min * 60;
        let text = gateway_devices::time::format_datetime(ms, offset);
        let parsed = parse_datetime(&text).expect("own format parses");
        prop_assert_eq!(parsed.unix_ms, ms - ms.rem_euclid(1000));
        prop_assert_eq!(parsed.utc_offset_secs, Some(offset));
    }
}

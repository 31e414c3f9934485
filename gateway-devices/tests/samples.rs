//! Every captured sample in `../shared/isapi-samples/`, read in place: the parsers take each
//! one, and the simulator serves each one to the adapter over loopback.
#![cfg(feature = "simulator")]

mod common;

use std::collections::BTreeSet;

use common::{pair, sample, samples_dir, samples_with};
use gateway_devices::digest::{DigestChallenge, parse_challenges};
use gateway_devices::hikvision::acs::{SearchStatus, parse_search_page};
use gateway_devices::hikvision::isapi::{
    parse_device_info, parse_door_capabilities, parse_response_status, parse_time, parse_user_check,
};
use gateway_devices::simulator::{ChallengeStyle, Reply, SimulatorConfig};
use gateway_devices::{DeviceAdapter, DeviceCommand, DoorAction, Error, EventSource};

/// Files this suite covers; a new sample without a test fails `every_sample_is_covered`.
const COVERED: &[&str] = &[
    "README.md",
    "acsEvent-garden-gate.headers.txt",
    "acsEvent-garden-gate.json",
    "cardInfoSearch-nomatch-garden-gate.json",
    "cardInfoSearch-ok-garden-gate.json",
    "deviceInfo-DS-2CD2386G2-IU.xml",
    "deviceInfo-DS-7608NXI-I2-8P-S.xml",
    "deviceInfo-DS-K1A340FWX.xml",
    "deviceInfo-DS-K1T341AM.xml",
    "remoteControlDoor-capabilities-DS-K1T673DX-BR.xml",
    "responseStatus-badXmlContent.xml",
    "responseStatus-deviceError.xml",
    "responseStatus-invalidOperation-DS-7616NXI-K2.xml",
    "responseStatus-methodNotAllowed-DS-7608NI-E2.xml",
    "responseStatus-ok-garden-gate.json",
    "responseStatus-remoteControlDoor-ok-DS-K1T673DX-BR.xml",
    "time-hikvision-com.xml",
    "time-isapi-org.xml",
    "time-std-cgi-nvr.xml",
    "userCheck-401-ERI-K104-P4.xml",
    "www-authenticate.txt",
];

#[test]
fn every_sample_is_covered() {
    let Some(dir) = samples_dir() else { return };
    let present: BTreeSet<String> = samples_with(&dir, "", "").into_iter().collect();
    let covered: BTreeSet<String> = COVERED.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = present.difference(&covered).collect();
    assert!(missing.is_empty(), "samples without a test: {missing:?}");
}

/// (file, model, firmware, device type, serial prefix)
const DEVICE_INFOS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "deviceInfo-DS-2CD2386G2-IU.xml",
        "DS-2CD2386G2-IU",
        "V5.7.18 build 240826",
        "IPCamera",
        "DS-2CD2386G2-IU",
    ),
    (
        "deviceInfo-DS-7608NXI-I2-8P-S.xml",
        "DS-7608NXI-I2/8P/S",
        "V4.62.210 build 230612",
        "NVR",
        "DS-7608NXI",
    ),
    (
        "deviceInfo-DS-K1A340FWX.xml",
        "DS-K1A340FWX",
        "V1.2.7 build 240102",
        "ACS",
        "DS-K1A340FWX2024",
    ),
    (
        "deviceInfo-DS-K1T341AM.xml",
        "DS-K1T341AM",
        "V3.2.30 build 220210",
        "ACS",
        "DS-K1T341",
    ),
];

#[test]
fn device_info_samples_parse() {
    let Some(dir) = samples_dir() else { return };
    assert_eq!(
        samples_with(&dir, "deviceInfo-", ".xml").len(),
        DEVICE_INFOS.len()
    );
    for (file, model, firmware, device_type, serial) in DEVICE_INFOS {
        let info = parse_device_info(&sample(&dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(info.model, *model, "{file}");
        assert_eq!(info.firmware(), *firmware, "{file}");
        assert_eq!(info.device_type.as_deref(), Some(*device_type), "{file}");
        assert!(
            info.serial_number
                .as_deref()
                .unwrap_or("")
                .starts_with(serial),
            "{file}"
        );
    }
    let terminal = parse_device_info(&sample(&dir, "deviceInfo-DS-K1T341AM.xml")).unwrap();
    assert_eq!(
        terminal.other.get("electroLockNum").map(String::as_str),
        Some("1")
    );
    // Empty optional elements are absent, not empty strings.
    let attendance = parse_device_info(&sample(&dir, "deviceInfo-DS-K1A340FWX.xml")).unwrap();
    assert!(!attendance.other.contains_key("customizedInfo"));
    assert!(!attendance.other.contains_key("bootReleasedDate"));
}

#[tokio::test]
async fn simulator_serves_each_device_info_sample_to_the_adapter() {
    let Some(dir) = samples_dir() else { return };
    for (file, model, firmware, device_type, _) in DEVICE_INFOS {
        let (simulator, adapter) = pair(SimulatorConfig {
            device_info_xml: Some(sample(&dir, file)),
            ..SimulatorConfig::default()
        })
        .await;
        let description = adapter
            .describe()
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(description.vendor, "hikvision");
        assert_eq!(description.model, *model);
        assert_eq!(description.firmware, *firmware);
        assert_eq!(
            description
                .details
                .get("device_type")
                .and_then(|v| v.as_str()),
            Some(*device_type)
        );
        assert_eq!(
            description.capabilities.contains(&"door".to_string()),
            *device_type == "ACS",
            "{file}"
        );
        simulator.shutdown().await;
    }
}

#[tokio::test]
async fn time_samples_parse_and_are_served() {
    let Some(dir) = samples_dir() else { return };
    let files = samples_with(&dir, "time-", ".xml");
    assert_eq!(files.len(), 3);
    for file in &files {
        let text = sample(&dir, file);
        let time = parse_time(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(time.time_mode.as_deref(), Some("manual"));
        let parsed = time.parsed.expect("localTime parses");
        assert_eq!(parsed.utc_offset_secs, Some(4 * 3600), "{file}");
        // `CST-4:00:00` is UTC+4: the POSIX sign is inverted.
        assert_eq!(
            time.posix_time_zone.as_ref().map(|tz| tz.utc_offset_secs),
            Some(4 * 3600)
        );

        let (simulator, adapter) = pair(SimulatorConfig {
            time_xml: Some(text),
            ..SimulatorConfig::default()
        })
        .await;
        let outcome = adapter.execute(&DeviceCommand::Time).await.unwrap();
        assert_eq!(outcome.data["utc_offset_secs"], 4 * 3600);
        assert_eq!(outcome.data["time_zone_utc_offset_secs"], 4 * 3600);
        assert_eq!(outcome.data["unix_ms"], parsed.unix_ms);
        simulator.shutdown().await;
    }
    let nvr = parse_time(&sample(&dir, "time-std-cgi-nvr.xml")).unwrap();
    // 1970-01-02T03:04:05+04:00 is 1970-01-01T23:04:05Z.
    assert_eq!(nvr.parsed.unwrap().unix_ms, 83_045_000);
}

/// (file, HTTP status it comes with, statusCode, subStatusCode, message)
const ERROR_STATUSES: &[(&str, u16, &str, &str, &str)] = &[
    (
        "responseStatus-badXmlContent.xml",
        400,
        "6",
        "badXmlContent",
        "Invalid XML Content",
    ),
    (
        "responseStatus-deviceError.xml",
        500,
        "3",
        "deviceError",
        "Device Error",
    ),
    (
        "responseStatus-invalidOperation-DS-7616NXI-K2.xml",
        403,
        "4",
        "invalidOperation",
        "Invalid Operation",
    ),
    (
        "responseStatus-methodNotAllowed-DS-7608NI-E2.xml",
        403,
        "4",
        "methodNotAllowed",
        "Invalid Operation",
    ),
];

#[tokio::test]
async fn error_status_samples_map_to_device_errors() {
    let Some(dir) = samples_dir() else { return };
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    for (file, http, code, sub, message) in ERROR_STATUSES {
        let text = sample(&dir, file);
        let status =
            parse_response_status(text.as_bytes()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            status.status_code.map(|c| c.to_string()).as_deref(),
            Some(*code)
        );
        // Served with its HTTP status, and also with 200: statusCode decides.
        for served_with in [*http, 200] {
            simulator.fail_next(1, Reply::raw(served_with, "application/xml", text.clone()));
            let err = adapter
                .execute(&DeviceCommand::Door {
                    door: 1,
                    action: DoorAction::Close,
                })
                .await
                .expect_err(file);
            let Error::Device(device) = err else {
                panic!("{file}: {err:?}")
            };
            assert_eq!(device.http_status, Some(served_with));
            assert_eq!(device.code.as_deref(), Some(*code), "{file}");
            assert_eq!(device.sub_code.as_deref(), Some(*sub), "{file}");
            assert_eq!(device.message, *message, "{file}");
        }
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn success_status_samples_are_successes() {
    let Some(dir) = samples_dir() else { return };
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    for (file, content_type) in [
        (
            "responseStatus-remoteControlDoor-ok-DS-K1T673DX-BR.xml",
            "application/xml",
        ),
        ("responseStatus-ok-garden-gate.json", "application/json"),
    ] {
        let text = sample(&dir, file);
        let status = parse_response_status(text.as_bytes()).unwrap();
        assert!(status.is_ok(), "{file}");
        simulator.fail_next(1, Reply::raw(200, content_type, text));
        let outcome = adapter
            .execute(&DeviceCommand::Door {
                door: 1,
                action: DoorAction::Open,
            })
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(outcome.data["status"]["status_code"], 1);
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn door_capabilities_sample_limits_doors_and_commands() {
    let Some(dir) = samples_dir() else { return };
    let text = sample(&dir, "remoteControlDoor-capabilities-DS-K1T673DX-BR.xml");
    let caps = parse_door_capabilities(&text).unwrap();
    assert_eq!((caps.door_min, caps.door_max), (Some(1), Some(2)));
    assert_eq!(
        caps.commands.as_deref(),
        Some(&["open", "close", "alwaysOpen", "alwaysClose"].map(String::from)[..])
    );
    let (simulator, adapter) = pair(SimulatorConfig {
        door_capabilities_xml: Some(text),
        doors: 2,
        ..SimulatorConfig::default()
    })
    .await;
    let err = adapter
        .validate(&DeviceCommand::Door {
            door: 3,
            action: DoorAction::Open,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidPayload { ref field, .. } if field == "door"),
        "{err}"
    );
    adapter
        .validate(&DeviceCommand::Door {
            door: 2,
            action: DoorAction::AlwaysClose,
        })
        .await
        .unwrap();
    simulator.shutdown().await;
}

#[tokio::test]
async fn user_check_sample_is_the_401_body() {
    let Some(dir) = samples_dir() else { return };
    let text = sample(&dir, "userCheck-401-ERI-K104-P4.xml");
    let check = parse_user_check(&text).unwrap();
    assert_eq!(check.status_value, Some(401));
    assert_eq!(check.lockout(), None);
    let (simulator, mut config) = {
        let (simulator, _) = pair(SimulatorConfig {
            unauthorized_body: Some(text),
            ..SimulatorConfig::default()
        })
        .await;
        let config = common::config_for(&simulator);
        (simulator, config)
    };
    config.password = "wrong".into();
    let adapter = gateway_devices::hikvision::HikvisionAdapter::new("d", config).unwrap();
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Auth { lockout: None, .. }), "{err}");
    simulator.shutdown().await;
}

#[tokio::test]
async fn acs_event_sample_is_parsed_served_and_polled() {
    let Some(dir) = samples_dir() else { return };
    let text = sample(&dir, "acsEvent-garden-gate.json");
    let page = parse_search_page(text.as_bytes(), "AcsEvent", "InfoList").unwrap();
    assert_eq!(page.status, SearchStatus::Ok);
    assert_eq!(page.items.len(), 6);
    assert_eq!(page.total_matches, Some(6));

    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    assert_eq!(simulator.load_acs_events_json(&text).unwrap(), 6);
    let batch = adapter.poll_events(None, 100).await.unwrap();
    assert_eq!(batch.records.len(), 6);
    assert!(!batch.more);
    let first = &batch.records[0];
    assert_eq!(first.attributes["serial_no"], "42970");
    assert_eq!(first.attributes["employee_no"], "100054");
    assert_eq!(first.attributes["event"], "card_authenticated");
    // 2023-06-09T19:05:47+07:00
    assert_eq!(first.timestamp_ms, 1_686_312_347_000);
    let serials: Vec<&str> = batch
        .records
        .iter()
        .map(|r| r.attributes["serial_no"].as_str())
        .collect();
    assert_eq!(
        serials,
        ["42970", "42976", "42980", "42984", "42987", "42991"]
    );
    // The item is kept whole, every field as sent.
    let gateway_proto::Body::Json(json) = &first.body else {
        panic!("json body")
    };
    let body = json.to_value().unwrap();
    assert_eq!(body["currentVerifyMode"], "cardOrFaceOrFp");

    // The sample verbatim as the device's answer.
    simulator.answer_raw_next(1, Reply::raw(200, "application/json", text));
    let again = adapter.poll_events(None, 100).await.unwrap();
    assert_eq!(again.records, batch.records);
    simulator.shutdown().await;
}

#[tokio::test]
async fn simulator_answers_with_the_sample_headers() {
    let Some(dir) = samples_dir() else { return };
    let headers = sample(&dir, "acsEvent-garden-gate.headers.txt");
    let expected = |name: &str| {
        headers
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in the headers sample"))
            .to_string()
    };
    let (simulator, _) = pair(SimulatorConfig::default()).await;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(
            gateway_devices::tls::client_config(&Default::default()).unwrap(),
        )
        .no_proxy()
        .build()
        .unwrap();
    let url = format!(
        "{}/ISAPI/AccessControl/AcsEvent?format=json",
        simulator.base_url()
    );
    let first = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(first.status(), 401);
    let challenge = first.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let mut session = gateway_devices::digest::DigestSession::new(
        DigestChallenge::first_in(&parse_challenges(&challenge)).unwrap(),
    );
    let auth = session.authorize(
        "POST",
        "/ISAPI/AccessControl/AcsEvent?format=json",
        "admin",
        SimulatorConfig::DEFAULT_PASSWORD,
        "abc",
    );
    let body = r#"{"AcsEventCond":{"searchID":"1","searchResultPosition":0,"maxResults":30,"major":0,"minor":0}}"#;
    let answer = client
        .post(&url)
        .header("authorization", auth)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["content-type"],
        expected("Content-Type").as_str()
    );
    assert_eq!(answer.headers()["server"], expected("Server").as_str());
    simulator.shutdown().await;
}

#[tokio::test]
async fn card_search_samples_share_the_search_envelope() {
    let Some(dir) = samples_dir() else { return };
    let no_match = sample(&dir, "cardInfoSearch-nomatch-garden-gate.json");
    let page = parse_search_page(no_match.as_bytes(), "CardInfoSearch", "CardInfo").unwrap();
    assert_eq!(page.status, SearchStatus::NoMatch);
    assert!(page.items.is_empty(), "NO MATCH has no list");
    let ok = sample(&dir, "cardInfoSearch-ok-garden-gate.json");
    let page = parse_search_page(ok.as_bytes(), "CardInfoSearch", "CardInfo").unwrap();
    assert_eq!(page.status, SearchStatus::Ok);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0]["cardType"], "normalCard");

    // Served verbatim where an AcsEvent answer is expected, they are a protocol error, not a
    // panic and not an empty success.
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    for text in [no_match, ok] {
        simulator.answer_raw_next(1, Reply::raw(200, "application/json", text));
        let err = adapter.poll_events(None, 10).await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }
    simulator.shutdown().await;
}

/// The `WWW-Authenticate:` values of the captures.
fn captured_challenges(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn every_captured_challenge_is_parsed_and_answered_end_to_end() {
    let Some(dir) = samples_dir() else { return };
    let challenges = captured_challenges(&sample(&dir, "www-authenticate.txt"));
    assert_eq!(challenges.len(), 5, "A, B, C and the two RTSP lines of D");
    for header in &challenges {
        let parsed = parse_challenges(header);
        let digest = DigestChallenge::first_in(&parsed).unwrap_or_else(|| panic!("{header}"));
        assert!(!digest.stale, "stale=\"FALSE\" is not stale: {header}");
        assert!(!digest.realm.is_empty());
        if header.contains(", Basic ") {
            assert!(parsed.iter().any(|c| c.is("Basic")), "{header}");
        }
        // The simulator sends exactly this header; the adapter answers it.
        let (simulator, adapter) = pair(SimulatorConfig {
            challenge_style: ChallengeStyle::Verbatim(header.clone()),
            ..SimulatorConfig::default()
        })
        .await;
        let info = adapter.execute(&DeviceCommand::Info).await;
        assert!(info.is_ok(), "{header}: {info:?}");
        let stats = simulator.stats();
        assert_eq!(stats.failed_logins, 0, "{header}");
        assert_eq!(
            stats.unauthorized, 1,
            "one challenge, then authenticated: {header}"
        );
        simulator.shutdown().await;
    }
}

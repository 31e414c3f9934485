//! Every Hikvision command against the simulator, and the mapping of device errors.
#![cfg(feature = "simulator")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config_for, pair};
use gateway_devices::hikvision::{HikvisionAdapter, HikvisionConfig};
use gateway_devices::simulator::{DoorState, Reply, Simulator, SimulatorConfig, SimulatorTls};
use gateway_devices::{
    CommandState, DeviceAdapter, DeviceCommand, DeviceLimits, DeviceRegistry, DoorAction, Error,
    EventSource, RegistryConfig,
};
use gateway_proto::clock::ManualClock;

fn door(door: u32, action: DoorAction) -> DeviceCommand {
    DeviceCommand::Door { door, action }
}

#[tokio::test]
async fn door_actions_change_the_door_and_log_events() {
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    let cases = [
        (DoorAction::AlwaysOpen, DoorState::AlwaysOpen),
        (DoorAction::Close, DoorState::Closed),
        (DoorAction::AlwaysClose, DoorState::AlwaysClosed),
        (DoorAction::Open, DoorState::Open),
    ];
    for (action, state) in cases {
        let outcome = adapter.execute(&door(2, action)).await.unwrap();
        assert_eq!(outcome.summary, format!("door 2: {action}"));
        assert_eq!(outcome.data["door"], 2);
        assert_eq!(simulator.door_state(2), Some(state));
        assert_eq!(simulator.door_state(1), Some(DoorState::Closed));
    }
    // Each door command is a remote-operation event (major 3, minor 1024..1027).
    let minors: Vec<i64> = simulator
        .events()
        .iter()
        .map(|e| e["minor"].as_i64().unwrap())
        .collect();
    assert_eq!(minors, [1026, 1025, 1027, 1024]);
    // The request carried the ISAPI namespace (the simulator parsed it; the path is right).
    assert!(simulator.requests().iter().any(|r| r.method == "PUT"
        && r.path == "/ISAPI/AccessControl/RemoteControl/door/2"
        && r.status == 200));
    simulator.shutdown().await;
}

#[tokio::test]
async fn an_open_door_closes_by_itself() {
    let (simulator, adapter) = pair(SimulatorConfig {
        door_open_ms: 0,
        ..SimulatorConfig::default()
    })
    .await;
    adapter.execute(&door(1, DoorAction::Open)).await.unwrap();
    assert_eq!(simulator.door_state(1), Some(DoorState::Closed));
    simulator.shutdown().await;
}

#[tokio::test]
async fn door_numbers_and_actions_are_checked_against_the_capabilities() {
    let (simulator, adapter) = pair(SimulatorConfig {
        doors: 2,
        door_commands: vec!["open".into(), "close".into()],
        ..SimulatorConfig::default()
    })
    .await;
    let err = adapter
        .validate(&door(3, DoorAction::Open))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidPayload { field, .. } if field == "door"),
        "{err}"
    );
    assert!(err.to_string().contains("1 to 2"), "{err}");
    let err = adapter
        .validate(&door(1, DoorAction::AlwaysOpen))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidPayload { field, .. } if field == "action"),
        "{err}"
    );
    adapter.validate(&door(2, DoorAction::Close)).await.unwrap();
    // The capabilities were read once.
    let capability_reads = simulator
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/door/capabilities") && r.status == 200)
        .count();
    assert_eq!(capability_reads, 1);
    simulator.shutdown().await;
}

#[tokio::test]
async fn without_capabilities_the_device_decides() {
    let (simulator, adapter) = pair(SimulatorConfig {
        door_capabilities: false,
        ..SimulatorConfig::default()
    })
    .await;
    adapter.validate(&door(9, DoorAction::Open)).await.unwrap();
    let err = adapter
        .execute(&door(9, DoorAction::Open))
        .await
        .unwrap_err();
    let Error::Device(device) = err else {
        panic!("{err:?}")
    };
    assert_eq!(device.http_status, Some(400));
    assert_eq!(device.sub_code.as_deref(), Some("badParameters"));
    simulator.shutdown().await;
}

#[tokio::test]
async fn device_info_and_time() {
    let device_clock = ManualClock::new(1_780_000_000_000);
    let gateway_clock = ManualClock::new(1_780_000_000_000 - 5_000);
    let simulator = Simulator::bind(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorConfig::default(),
        Arc::new(device_clock),
    )
    .await
    .unwrap();
    let adapter =
        HikvisionAdapter::with_clock("d1", config_for(&simulator), Arc::new(gateway_clock))
            .unwrap();
    let info = adapter.execute(&DeviceCommand::Info).await.unwrap();
    assert_eq!(info.data["model"], "DS-K1T341AM-SIM");
    assert_eq!(info.data["firmware"], "V3.2.30 build 220210");
    assert_eq!(
        info.data["serial"],
        SimulatorConfig::default().serial_number
    );
    assert!(
        info.data["capabilities"]
            .as_array()
            .unwrap()
            .contains(&"door".into())
    );
    let time = adapter.execute(&DeviceCommand::Time).await.unwrap();
    assert_eq!(time.data["unix_ms"], 1_780_000_000_000i64);
    assert_eq!(time.data["utc_offset_secs"], 14_400);
    assert_eq!(time.data["time_zone"], "CST-4:00:00");
    assert_eq!(time.data["time_zone_utc_offset_secs"], 14_400);
    assert_eq!(time.data["clock_skew_ms"], 5_000, "the device is 5 s ahead");
    simulator.shutdown().await;
}

#[tokio::test]
async fn reboot_takes_the_device_off_the_network_for_a_while() {
    let (simulator, adapter) = pair(SimulatorConfig {
        reboot_downtime_ms: 60_000,
        ..SimulatorConfig::default()
    })
    .await;
    let outcome = adapter.execute(&DeviceCommand::Reboot).await.unwrap();
    assert_eq!(outcome.data["status"]["status_code"], 1);
    assert_eq!(simulator.stats().reboots, 1);
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    simulator.shutdown().await;
}

#[tokio::test]
async fn idempotent_commands_bridge_a_reboot_through_retries() {
    let (simulator, adapter) = pair(SimulatorConfig {
        reboot_downtime_ms: 150,
        ..SimulatorConfig::default()
    })
    .await;
    let registry = DeviceRegistry::builder()
        .with_adapter(
            "d1",
            "hikvision-isapi",
            Arc::new(adapter),
            DeviceLimits {
                max_retries: 4,
                retry_backoff_ms: 100,
                ..DeviceLimits::default()
            },
        )
        .build(&RegistryConfig::default())
        .unwrap();
    let reboot = registry.execute("d1", DeviceCommand::Reboot).await.unwrap();
    assert_eq!(reboot.state, CommandState::Succeeded);
    let info = registry.execute("d1", DeviceCommand::Info).await.unwrap();
    assert_eq!(info.state, CommandState::Succeeded, "{:?}", info.failure);
    assert!(info.attempts > 1, "the first attempt hit the outage");
    simulator.shutdown().await;
}

#[tokio::test]
async fn device_error_answers_keep_the_device_words() {
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    let cases = [
        (
            Reply::device_busy(),
            503,
            "2",
            "deviceBusy",
            "Device Busy",
            true,
        ),
        (
            Reply::device_error(),
            500,
            "3",
            "deviceError",
            "Device Error",
            false,
        ),
        (
            Reply::invalid_operation(),
            403,
            "4",
            "invalidOperation",
            "Invalid Operation",
            false,
        ),
        (
            Reply::bad_json_content("startTime"),
            400,
            "6",
            "badJsonContent",
            "startTime",
            false,
        ),
        (
            Reply::response_status(200, 7, "Reboot Required", "rebootRequired"),
            200,
            "7",
            "rebootRequired",
            "Reboot Required",
            false,
        ),
    ];
    let commands = [
        DeviceCommand::Info,
        DeviceCommand::Time,
        DeviceCommand::Reboot,
        door(1, DoorAction::Close),
    ];
    for (reply, http, code, sub, message, retryable) in cases {
        for command in &commands {
            simulator.fail_next(1, reply.clone());
            let err = adapter.execute(command).await.unwrap_err();
            assert_eq!(err.is_retryable(), retryable, "{err}");
            let Error::Device(device) = err else {
                panic!("{command:?}: {err:?}")
            };
            assert_eq!(device.http_status, Some(http), "{command:?}");
            assert_eq!(device.code.as_deref(), Some(code), "{command:?}");
            assert_eq!(device.sub_code.as_deref(), Some(sub), "{command:?}");
            assert_eq!(device.message, message, "{command:?}");
        }
        simulator.fail_next(1, reply.clone());
        let err = adapter.poll_events(None, 10).await.unwrap_err();
        assert_eq!(
            err.device_error().and_then(|d| d.code.as_deref()),
            Some(code)
        );
    }
    // Answers without a ResponseStatus fall back on the HTTP status and body.
    simulator.fail_next(1, Reply::raw(500, "text/html", "<html>oops</html>"));
    let err = adapter.execute(&DeviceCommand::Reboot).await.unwrap_err();
    let Error::Device(device) = err else { panic!() };
    assert_eq!(device.http_status, Some(500));
    assert!(device.message.contains("oops"), "{}", device.message);
    // A 2xx without a readable body is a success for commands...
    simulator.fail_next(1, Reply::raw(200, "text/plain", ""));
    adapter.execute(&DeviceCommand::Reboot).await.unwrap();
    // ... but not for documents.
    simulator.fail_next(1, Reply::raw(200, "text/plain", "hello"));
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    simulator.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_and_slow_answers() {
    let (simulator, _) = pair(SimulatorConfig::default()).await;
    let mut config = config_for(&simulator);
    // Generous against a loaded machine; the slow answer below takes far longer.
    config.request_timeout_ms = 1_000;
    let adapter = HikvisionAdapter::new("d1", config).unwrap();
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    simulator.drop_next(1);
    let err = adapter
        .execute(&door(1, DoorAction::Open))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert_eq!(simulator.stats().dropped, 1);
    assert_eq!(simulator.door_state(1), Some(DoorState::Closed));
    simulator.set_latency(Duration::from_secs(30));
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    simulator.set_latency(Duration::ZERO);
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    simulator.shutdown().await;
}

#[tokio::test]
async fn custom_commands_are_not_offered_by_this_adapter() {
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    let registry = DeviceRegistry::builder()
        .with_adapter(
            "d1",
            "hikvision-isapi",
            Arc::new(adapter),
            DeviceLimits::default(),
        )
        .build(&RegistryConfig::default())
        .unwrap();
    let command = DeviceCommand::parse("device.custom.snapshot", &serde_json::json!({})).unwrap();
    let err = registry.execute("d1", command).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedCommand { .. }), "{err}");
    assert!(
        err.to_string().contains("info, time, reboot, door"),
        "{err}"
    );
    assert_eq!(
        simulator.stats().requests,
        0,
        "refused before anything was sent"
    );
    simulator.shutdown().await;
}

/// A CA and a certificate for `localhost` signed by it.
fn test_pki() -> (String, SimulatorTls) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gateway-devices test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (
        ca.pem(),
        SimulatorTls {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        },
    )
}

#[tokio::test]
async fn https_with_a_custom_ca_or_the_dangerous_flag() {
    let (ca_pem, tls) = test_pki();
    let simulator = Simulator::start(SimulatorConfig {
        tls: Some(tls),
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    assert!(simulator.base_url().starts_with("https://"));
    let base = config_for(&simulator);

    // The device's CA is unknown: refused.
    let adapter = HikvisionAdapter::new("d1", base.clone()).unwrap();
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // The CA as a file.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let mut with_file: HikvisionConfig = base.clone();
    with_file.tls.ca_cert_file = Some(ca_file);
    HikvisionAdapter::new("d1", with_file)
        .unwrap()
        .execute(&DeviceCommand::Info)
        .await
        .unwrap();

    // The CA inline.
    let mut inline = base.clone();
    inline.tls.ca_cert_pem = Some(ca_pem);
    HikvisionAdapter::new("d1", inline)
        .unwrap()
        .execute(&DeviceCommand::Info)
        .await
        .unwrap();

    // No verification at all.
    let mut dangerous = base;
    dangerous.tls.dangerous_accept_invalid_certs = true;
    HikvisionAdapter::new("d1", dangerous)
        .unwrap()
        .execute(&DeviceCommand::Info)
        .await
        .unwrap();
    simulator.shutdown().await;
}

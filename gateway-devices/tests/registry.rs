//! The registry: configuration errors, typed refusals before sending, the one-in-flight rule,
//! timeouts, idempotent-only retries and the published lifecycle.
#![cfg(feature = "simulator")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use gateway_devices::hikvision::HikvisionFactory;
use gateway_devices::simulator::{Simulator, SimulatorConfig};
use gateway_devices::{
    CommandSpec, CommandState, DeviceAdapter, DeviceCommand, DeviceDescription, DeviceError,
    DeviceLimits, DeviceOutcome, DeviceRegistry, DeviceRequest, DoorAction, Error, ExecuteOptions,
    Health, RegistryConfig, async_trait,
};
use gateway_proto::clock::ManualClock;
use gateway_proto::{Command, CommandAckState, CommandId};
use serde_json::json;

/// A scripted device: each `execute` takes `work` of (virtual) time, tracks concurrency, and
/// fails with the scripted errors first.
#[derive(Default)]
struct ScriptedDevice {
    work: Duration,
    failures: std::sync::Mutex<Vec<Error>>,
    calls: AtomicU32,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl ScriptedDevice {
    fn new(work: Duration) -> Self {
        ScriptedDevice {
            work,
            ..ScriptedDevice::default()
        }
    }

    fn failing_first(self, errors: Vec<Error>) -> Self {
        *self.failures.lock().unwrap() = errors;
        self
    }
}

#[async_trait]
impl DeviceAdapter for ScriptedDevice {
    async fn describe(&self) -> Result<DeviceDescription, Error> {
        Ok(DeviceDescription::new("acme", "scripted", "1", "1.0"))
    }

    fn commands(&self) -> Vec<CommandSpec> {
        vec![
            CommandSpec::new("info", true),
            CommandSpec::new("reboot", false),
            CommandSpec::new("door", true),
        ]
    }

    async fn validate(&self, command: &DeviceCommand) -> Result<(), Error> {
        match command {
            DeviceCommand::Door { door, .. } if *door > 4 => Err(Error::InvalidPayload {
                command: "door".into(),
                field: "door".into(),
                reason: "this device has doors 1 to 4".into(),
            }),
            _ => Ok(()),
        }
    }

    async fn execute(&self, command: &DeviceCommand) -> Result<DeviceOutcome, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.work).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let failure = {
            let mut failures = self.failures.lock().unwrap();
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        match failure {
            Some(error) => Err(error),
            None => Ok(DeviceOutcome::new(
                format!("{} done", command.name()),
                json!({"ok": true}),
            )),
        }
    }

    async fn health(&self) -> Health {
        Health::healthy("scripted")
    }
}

fn registry_with(device: Arc<ScriptedDevice>, limits: DeviceLimits) -> DeviceRegistry {
    DeviceRegistry::builder()
        .with_clock(Arc::new(ManualClock::new(1_000)))
        .with_adapter("d1", "scripted", device, limits)
        .build(&RegistryConfig::default())
        .unwrap()
}

fn transport() -> Error {
    Error::Transport {
        message: "connection reset".into(),
    }
}

#[test]
fn configuration_errors_name_the_parameter() {
    let cases = [
        (
            json!({"devices": {"d1": {"kind": "acme", "settings": {}}}}),
            "devices.d1.kind",
        ),
        (
            json!({"devices": {"d1": {"kind": "hikvision-isapi", "settings": {"base_url": "http://x", "username": "a", "pasword": "b"}}}}),
            "devices.d1.settings",
        ),
        (
            json!({"devices": {"d1": {"kind": "hikvision-isapi", "settings": {"base_url": "x", "username": "a", "password": "b"}}}}),
            "devices.d1.settings.base_url",
        ),
        (
            json!({"devices": {"d1": {"kind": "hikvision-isapi", "settings": {"base_url": "http://x", "username": "a", "password": "b", "tls": {"ca_cert_pem": "junk"}}}}}),
            "devices.d1.settings.tls.ca_cert_pem",
        ),
        (
            json!({"devices": {"d1": {"kind": "hikvision-isapi", "limits": {"max_in_flight": 0}, "settings": {}}}}),
            "devices.d1.limits.max_in_flight",
        ),
        (
            json!({"devices": {"bad id": {"kind": "hikvision-isapi", "settings": {}}}}),
            "devices.bad id",
        ),
    ];
    for (config, param) in cases {
        let config: RegistryConfig = serde_json::from_value(config).unwrap();
        let err = DeviceRegistry::builder()
            .with_factory(HikvisionFactory)
            .build(&config)
            .unwrap_err();
        match &err {
            Error::InvalidConfig { param: p, .. } => assert_eq!(p, param, "{err}"),
            other => panic!("expected InvalidConfig for {param}, got {other:?}"),
        }
    }
    let err = RegistryConfig::from_json(r#"{"devices": {"d1": {"kind": "x", "limitz": {}}}}"#)
        .unwrap_err();
    assert!(err.to_string().contains("limitz"), "{err}");

    // The same id in configuration and in code.
    let config: RegistryConfig = serde_json::from_value(json!({"devices": {"d1": {
        "kind": "hikvision-isapi",
        "settings": {"base_url": "http://127.0.0.1:9", "username": "a", "password": "b"}}}}))
    .unwrap();
    let err = DeviceRegistry::builder()
        .with_factory(HikvisionFactory)
        .with_adapter(
            "d1",
            "scripted",
            Arc::new(ScriptedDevice::new(Duration::ZERO)),
            DeviceLimits::default(),
        )
        .build(&config)
        .unwrap_err();
    assert!(err.to_string().contains("used twice"), "{err}");
}

#[tokio::test]
async fn a_registry_from_configuration_drives_the_simulator() {
    let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let config = RegistryConfig::from_json(
        &json!({"devices": {
            "front-door": {
                "kind": "hikvision-isapi",
                "limits": {"command_timeout_ms": 5000},
                "settings": {
                    "base_url": simulator.base_url(),
                    "username": "admin",
                    "password": SimulatorConfig::DEFAULT_PASSWORD,
                    "events": {"start": "earliest"}
                }
            }
        }})
        .to_string(),
    )
    .unwrap();
    let registry = DeviceRegistry::builder()
        .with_factory(HikvisionFactory)
        .build(&config)
        .unwrap();
    assert_eq!(registry.device_ids(), ["front-door"]);
    assert_eq!(registry.kind("front-door").unwrap(), "hikvision-isapi");
    assert_eq!(registry.event_device_ids(), ["front-door"]);
    let command = Command {
        id: CommandId::new_v7(),
        kind: "device.door.always_open".into(),
        payload: json!({"door": 1}),
        priority: 0,
        delivery_deadline_ms: None,
        execution_timeout_ms: Some(3_000),
        target: Some("front-door".into()),
    };
    let ack = registry.execute_control(&command).await;
    assert_eq!(ack.state, CommandAckState::Succeeded, "{ack:?}");
    assert_eq!(ack.id, command.id);
    assert_eq!(ack.detail.as_deref(), Some("door 1: always_open"));
    assert_eq!(ack.result.unwrap()["door"], 1);
    assert_eq!(
        simulator.door_state(1),
        Some(gateway_devices::simulator::DoorState::AlwaysOpen)
    );
    let health = registry.health_all().await;
    assert_eq!(
        health["front-door"].state,
        gateway_devices::HealthState::Healthy
    );
    let description = registry.describe("front-door").await.unwrap();
    assert_eq!(description.model, "DS-K1T341AM-SIM");
    simulator.shutdown().await;
}

#[tokio::test]
async fn refusals_happen_before_anything_is_sent() {
    let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let config = RegistryConfig::from_json(
        &json!({"devices": {"gate": {"kind": "hikvision-isapi", "settings": {
            "base_url": simulator.base_url(), "username": "admin",
            "password": SimulatorConfig::DEFAULT_PASSWORD}}}})
        .to_string(),
    )
    .unwrap();
    let registry = DeviceRegistry::builder()
        .with_factory(HikvisionFactory)
        .build(&config)
        .unwrap();
    let mut reports = registry.subscribe();

    let err = registry
        .execute("nope", DeviceCommand::Info)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownDevice { .. }), "{err}");
    let err = registry
        .execute(
            "gate",
            DeviceCommand::Door {
                door: 7,
                action: DoorAction::Open,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPayload { .. }), "{err}");
    assert!(err.is_rejection());
    // Only the capabilities were read; no door command reached the device.
    assert!(simulator.requests().iter().all(|r| r.method == "GET"));
    assert!(
        reports.try_recv().is_err(),
        "refused commands have no lifecycle"
    );

    // The control-channel form of the same refusals.
    let ack = |kind: &str, target: Option<&str>, payload: serde_json::Value| Command {
        id: CommandId::new_v7(),
        kind: kind.into(),
        payload,
        priority: 0,
        delivery_deadline_ms: None,
        execution_timeout_ms: None,
        target: target.map(String::from),
    };
    for command in [
        ack("device.explode", Some("gate"), json!({})),
        ack("device.info", Some("nope"), json!({})),
        ack("device.door.open", Some("gate"), json!({"door": 0})),
        ack(
            "device.door.open",
            Some("gate"),
            json!({"door": 1, "extra": 1}),
        ),
        ack("device.door.open", None, json!({"door": 1})),
        Command {
            delivery_deadline_ms: Some(1),
            ..ack("device.info", Some("gate"), json!({}))
        },
    ] {
        let result = registry.execute_control(&command).await;
        assert_eq!(result.state, CommandAckState::Rejected, "{command:?}");
        assert!(result.detail.is_some());
    }
    assert!(simulator.requests().iter().all(|r| r.method == "GET"));
    simulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn one_command_in_flight_by_default() {
    let device = Arc::new(ScriptedDevice::new(Duration::from_secs(1)));
    let registry = Arc::new(registry_with(device.clone(), DeviceLimits::default()));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            registry.execute("d1", DeviceCommand::Info).await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().state, CommandState::Succeeded);
    }
    assert_eq!(device.max_running.load(Ordering::SeqCst), 1);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "one after the other"
    );

    let device = Arc::new(ScriptedDevice::new(Duration::from_secs(1)));
    let registry = Arc::new(registry_with(
        device.clone(),
        DeviceLimits {
            max_in_flight: 2,
            ..DeviceLimits::default()
        },
    ));
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.execute("d1", DeviceCommand::Info).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(device.max_running.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn one_command_in_flight_at_the_simulator() {
    let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let adapter =
        gateway_devices::hikvision::HikvisionAdapter::new("d1", common::config_for(&simulator))
            .unwrap();
    // Authenticate once, then make every answer slow.
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    simulator.set_latency(Duration::from_millis(50));
    let registry = Arc::new(
        DeviceRegistry::builder()
            .with_adapter(
                "d1",
                "hikvision-isapi",
                Arc::new(adapter),
                DeviceLimits::default(),
            )
            .build(&RegistryConfig::default())
            .unwrap(),
    );
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.execute("d1", DeviceCommand::Time).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().state, CommandState::Succeeded);
    }
    assert_eq!(simulator.stats().max_concurrent, 1);
    simulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_refused() {
    let device = Arc::new(ScriptedDevice::new(Duration::from_secs(1)));
    let registry = Arc::new(registry_with(
        device.clone(),
        DeviceLimits {
            max_queued: 2,
            ..DeviceLimits::default()
        },
    ));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            registry.execute("d1", DeviceCommand::Info).await
        }));
        tokio::task::yield_now().await;
    }
    // One runs, two wait: the fourth is refused.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = registry
        .execute("d1", DeviceCommand::Info)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { queued: 2, .. }), "{err}");
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(device.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn timeouts_end_in_timed_out_and_only_idempotent_commands_retry() {
    let device = Arc::new(ScriptedDevice::new(Duration::from_secs(60)));
    let limits = DeviceLimits {
        command_timeout_ms: 1_000,
        max_retries: 2,
        retry_backoff_ms: 100,
        ..DeviceLimits::default()
    };
    let registry = registry_with(device.clone(), limits);
    let started = tokio::time::Instant::now();
    let report = registry.execute("d1", DeviceCommand::Info).await.unwrap();
    assert_eq!(report.state, CommandState::TimedOut);
    assert_eq!(report.attempts, 3);
    // Three attempts of 1 s and back-offs of 100 ms and 200 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(3_300));
    assert!(report.failure.unwrap().message.contains("1000 ms"));

    let report = registry.execute("d1", DeviceCommand::Reboot).await.unwrap();
    assert_eq!(report.state, CommandState::TimedOut);
    assert_eq!(report.attempts, 1, "reboot is not idempotent");

    let report = registry
        .execute(
            "d1",
            DeviceCommand::Door {
                door: 1,
                action: DoorAction::Open,
            },
        )
        .await
        .unwrap();
    assert_eq!(report.attempts, 1, "door open is never retried");

    // A per-command timeout overrides the device's.
    let report = registry
        .execute_with(
            DeviceRequest::new("d1", DeviceCommand::Reboot),
            ExecuteOptions {
                timeout: Some(Duration::from_millis(10)),
                ..ExecuteOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.state, CommandState::TimedOut);
    assert!(report.failure.unwrap().message.contains("10 ms"));
}

#[tokio::test(start_paused = true)]
async fn waiting_too_long_for_the_slot_times_out_unsent() {
    let device = Arc::new(ScriptedDevice::new(Duration::from_secs(5)));
    let registry = Arc::new(registry_with(
        device.clone(),
        DeviceLimits {
            command_timeout_ms: 10_000,
            ..DeviceLimits::default()
        },
    ));
    let first = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.execute("d1", DeviceCommand::Reboot).await })
    };
    tokio::task::yield_now().await;
    let report = registry
        .execute_with(
            DeviceRequest::new("d1", DeviceCommand::Info),
            ExecuteOptions {
                timeout: Some(Duration::from_secs(1)),
                ..ExecuteOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.state, CommandState::TimedOut);
    assert_eq!(report.sent_at_ms, None);
    assert_eq!(report.attempts, 0);
    assert!(report.failure.unwrap().message.contains("not sent"));
    assert_eq!(first.await.unwrap().unwrap().state, CommandState::Succeeded);
    assert_eq!(device.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_follow_idempotency_and_error_kind() {
    let limits = DeviceLimits {
        max_retries: 2,
        retry_backoff_ms: 10,
        ..DeviceLimits::default()
    };
    let busy = || {
        Error::Device(DeviceError {
            http_status: Some(503),
            code: Some("2".into()),
            sub_code: Some("deviceBusy".into()),
            message: "Device Busy".into(),
        })
    };
    let refused = || {
        Error::Device(DeviceError {
            http_status: Some(403),
            code: Some("4".into()),
            sub_code: Some("invalidOperation".into()),
            message: "Invalid Operation".into(),
        })
    };
    // (command, scripted failures, expected state, expected attempts)
    let door = |action| DeviceCommand::Door { door: 1, action };
    let cases = [
        (
            DeviceCommand::Info,
            vec![transport(), busy()],
            CommandState::Succeeded,
            3,
        ),
        (
            DeviceCommand::Info,
            vec![transport(), transport(), transport()],
            CommandState::Failed,
            3,
        ),
        (
            DeviceCommand::Info,
            vec![refused()],
            CommandState::Failed,
            1,
        ),
        (
            DeviceCommand::Reboot,
            vec![transport()],
            CommandState::Failed,
            1,
        ),
        (
            door(DoorAction::Open),
            vec![transport()],
            CommandState::Failed,
            1,
        ),
        (
            door(DoorAction::Close),
            vec![transport()],
            CommandState::Succeeded,
            2,
        ),
        (
            door(DoorAction::AlwaysOpen),
            vec![busy()],
            CommandState::Succeeded,
            2,
        ),
    ];
    for (command, failures, state, attempts) in cases {
        let device =
            Arc::new(ScriptedDevice::new(Duration::from_millis(1)).failing_first(failures));
        let registry = registry_with(device.clone(), limits.clone());
        let report = registry.execute("d1", command.clone()).await.unwrap();
        assert_eq!(report.state, state, "{command:?}");
        assert_eq!(report.attempts, attempts, "{command:?}");
        assert_eq!(device.calls.load(Ordering::SeqCst), attempts, "{command:?}");
    }
    // The device's own words are kept in the failure.
    let device = Arc::new(ScriptedDevice::new(Duration::ZERO).failing_first(vec![refused()]));
    let report = registry_with(device, limits)
        .execute("d1", DeviceCommand::Info)
        .await
        .unwrap();
    let failure = report.failure.unwrap();
    assert_eq!(failure.device_error.unwrap().message, "Invalid Operation");
    assert!(failure.message.contains("Invalid Operation"));
}

#[tokio::test(start_paused = true)]
async fn every_transition_is_published_with_timestamps() {
    let clock = ManualClock::new(1_000);
    let device =
        Arc::new(ScriptedDevice::new(Duration::from_millis(5)).failing_first(vec![transport()]));
    let registry = DeviceRegistry::builder()
        .with_clock(Arc::new(clock.clone()))
        .with_adapter(
            "d1",
            "scripted",
            device,
            DeviceLimits {
                retry_backoff_ms: 1,
                ..DeviceLimits::default()
            },
        )
        .build(&RegistryConfig::default())
        .unwrap();
    let mut reports = registry.subscribe();
    let id = CommandId::new_v7();
    let report = registry
        .execute_with(
            DeviceRequest::new("d1", DeviceCommand::Info),
            ExecuteOptions {
                id: Some(id),
                ..ExecuteOptions::default()
            },
        )
        .await
        .unwrap();
    let mut states = Vec::new();
    while let Ok(r) = reports.try_recv() {
        assert_eq!(r.id, id);
        states.push((r.state, r.attempts));
    }
    assert_eq!(
        states,
        [
            (CommandState::Pending, 0),
            (CommandState::Sent, 1),
            (CommandState::Sent, 2),
            (CommandState::Succeeded, 2)
        ]
    );
    assert_eq!(report.pending_at_ms, 1_000);
    assert_eq!(report.sent_at_ms, Some(1_000));
    assert_eq!(report.finished_at_ms, Some(1_000));
    let ack = report.to_ack();
    assert_eq!(ack.state, CommandAckState::Succeeded);
    assert_eq!(ack.result, Some(json!({"ok": true})));
}

#[tokio::test]
async fn devices_without_an_event_source_say_so() {
    let registry = registry_with(
        Arc::new(ScriptedDevice::new(Duration::ZERO)),
        DeviceLimits::default(),
    );
    assert!(registry.event_device_ids().is_empty());
    let err = registry.poll_events("d1", None, 10).await.unwrap_err();
    assert!(matches!(err, Error::NoEventSource { .. }), "{err}");
    let err = registry.poll_events("zz", None, 10).await.unwrap_err();
    assert!(matches!(err, Error::UnknownDevice { .. }), "{err}");
}

//! The `gateway_devices_*` metrics are emitted where the crate docs say.
#![cfg(feature = "simulator")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use gateway_devices::simulator::{Simulator, SimulatorConfig};
use gateway_devices::{DeviceCommand, DeviceLimits, DeviceRegistry, RegistryConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// `name{label=value,...}` → value, labels sorted.
fn snapshot(recorder: &DebuggingRecorder) -> HashMap<String, DebugValue> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(values: &HashMap<String, DebugValue>, key: &str) -> u64 {
    match values.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!(
            "{key}: {other:?}; have {:?}",
            values.keys().collect::<Vec<_>>()
        ),
    }
}

#[test]
fn commands_requests_auth_failures_and_events_are_counted() {
    let recorder = DebuggingRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
            simulator.push_card_event("1", "A", "c");
            let mut wrong = common::config_for(&simulator);
            wrong.password = "nope".into();
            let registry = DeviceRegistry::builder()
                .with_adapter(
                    "good",
                    "hikvision-isapi",
                    Arc::new(
                        gateway_devices::hikvision::HikvisionAdapter::new(
                            "good",
                            common::config_for(&simulator),
                        )
                        .unwrap(),
                    ),
                    DeviceLimits::default(),
                )
                .with_adapter(
                    "bad",
                    "hikvision-isapi",
                    Arc::new(
                        gateway_devices::hikvision::HikvisionAdapter::new("bad", wrong).unwrap(),
                    ),
                    DeviceLimits::default(),
                )
                .build(&RegistryConfig::default())
                .unwrap();
            registry.execute("good", DeviceCommand::Info).await.unwrap();
            registry.execute("bad", DeviceCommand::Info).await.unwrap();
            registry
                .execute("nope", DeviceCommand::Info)
                .await
                .unwrap_err();
            registry.poll_events("good", None, 10).await.unwrap();
            simulator.shutdown().await;
        })
    });
    let values = snapshot(&recorder);
    assert_eq!(
        counter(
            &values,
            "gateway_devices_commands_total{command=info,device=good,state=succeeded}"
        ),
        1
    );
    assert_eq!(
        counter(
            &values,
            "gateway_devices_commands_total{command=info,device=bad,state=failed}"
        ),
        1
    );
    assert_eq!(
        counter(
            &values,
            "gateway_devices_commands_rejected_total{reason=unknown_device}"
        ),
        1
    );
    assert_eq!(
        counter(&values, "gateway_devices_auth_failures_total{device=bad}"),
        1
    );
    assert_eq!(
        counter(
            &values,
            "gateway_devices_http_requests_total{device=good,status=401}"
        ),
        1
    );
    assert_eq!(
        counter(
            &values,
            "gateway_devices_http_requests_total{device=good,status=200}"
        ),
        2
    );
    assert_eq!(
        counter(&values, "gateway_devices_events_total{device=good}"),
        1
    );
    assert_eq!(
        counter(
            &values,
            "gateway_devices_event_polls_total{device=good,result=ok}"
        ),
        1
    );
    assert!(
        values.contains_key("gateway_devices_command_duration_seconds{command=info,device=good}")
    );
    assert!(matches!(
        values.get("gateway_devices_commands_in_flight{device=good}"),
        Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0
    ));
}

//! Run a simulated Hikvision access controller, drive it through a registry built from JSON
//! configuration, and read its events — what a gateway binary does, in one file.
//!
//! ```text
//! cargo run -p gateway-devices --example isapi_demo
//! ```

use std::error::Error;

use gateway_devices::hikvision::HikvisionFactory;
use gateway_devices::simulator::{Reply, Simulator, SimulatorConfig};
use gateway_devices::{DeviceRegistry, RegistryConfig};
use gateway_proto::{Command, CommandId};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let simulator = Simulator::start(SimulatorConfig::default()).await?;
    println!("simulated device at {}", simulator.base_url());

    let config = RegistryConfig::from_json(
        &json!({"devices": {"front-door": {
            "kind": "hikvision-isapi",
            "limits": {"max_in_flight": 1, "command_timeout_ms": 5000, "max_retries": 2},
            "settings": {
                "base_url": simulator.base_url(),
                "username": "admin",
                "password": SimulatorConfig::DEFAULT_PASSWORD,
                "events": {"start": "earliest", "page_size": 30}
            }
        }}})
        .to_string(),
    )?;
    let registry = DeviceRegistry::builder()
        .with_factory(HikvisionFactory)
        .build(&config)?;

    let mut lifecycle = registry.subscribe();
    tokio::spawn(async move {
        while let Ok(report) = lifecycle.recv().await {
            println!(
                "  [{}] {} {} attempt {}",
                report.device_id,
                report.command.name(),
                report.state,
                report.attempts
            );
        }
    });

    let commands = [
        ("device.info", json!({})),
        ("device.time", json!({})),
        ("device.door.open", json!({"door": 1})),
        (
            "device.command",
            json!({"command": "door", "door": 2, "action": "always_close"}),
        ),
        ("device.door.open", json!({"door": 9})),
    ];
    for (kind, payload) in commands {
        let command = Command {
            id: CommandId::new_v7(),
            kind: kind.into(),
            payload,
            priority: 0,
            delivery_deadline_ms: None,
            execution_timeout_ms: None,
            target: Some("front-door".into()),
        };
        let ack = registry.execute_control(&command).await;
        println!("{kind}: {} — {}", ack.state, ack.detail.unwrap_or_default());
    }

    // A device error, in the device's words.
    simulator.fail_next(1, Reply::invalid_operation());
    let report = registry
        .execute("front-door", gateway_devices::DeviceCommand::Reboot)
        .await?;
    println!(
        "reboot: {} — {:?}",
        report.state,
        report.failure.map(|f| f.message)
    );

    simulator.push_card_event("100054", "Ada", "card-1");
    let batch = registry.poll_events("front-door", None, 100).await?;
    for record in &batch.records {
        println!("event {} {:?}", record.timestamp_ms, record.attributes);
    }
    println!(
        "cursor to persist: {:?}",
        batch.cursor.map(|c| c.to_string())
    );
    simulator.shutdown().await;
    Ok(())
}

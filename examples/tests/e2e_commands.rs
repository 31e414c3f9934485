//! End to end, real processes: device commands through the `server` and the `gateway` to a
//! simulated Hikvision door controller (running in the test process — the one mock, standing
//! in for the physical device). A command issued while the gateway is down runs once when it
//! returns; a command the server redelivers — while it runs, and after the gateway was killed
//! right after running it with the server away — is not run a second time.

mod common;

use std::time::Duration;

use common::{
    AgentSim, GATEWAY_ID, Gateway, Http, Server, eventually, gateway_config, server_config,
    temp_dir,
};
use gateway_devices::simulator::{Simulator, SimulatorConfig};
use serde_json::{Value, json};

const DOOR: &str = "front-door";
const DOOR_PATH: &str = "/ISAPI/AccessControl/RemoteControl/door/1";
/// The server sends a `received` command again after this long without an outcome.
const REDELIVER_AFTER_MS: u64 = 500;

fn server_toml() -> String {
    server_config(&format!(
        "[queue]\nredeliver_after_ms = {REDELIVER_AFTER_MS}\n"
    ))
}

/// The gateway drives the simulator as device `front-door` (no event polling, so the
/// simulator's request log holds only what commands did).
fn gateway_toml(device: &Simulator) -> String {
    gateway_config(&format!(
        r#"[devices.devices.{DOOR}]
kind = "hikvision-isapi"

[devices.devices.{DOOR}.settings]
base_url = "{}"
username = "admin"
password = "{}"

[devices.devices.{DOOR}.settings.events]
enabled = false

[agents.registry]
heartbeat_interval_ms = 500
"#,
        device.base_url(),
        SimulatorConfig::DEFAULT_PASSWORD
    ))
}

/// Door-open requests the device carried out (authenticated and answered 200).
fn door_opens(device: &Simulator) -> usize {
    device
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with(DOOR_PATH) && r.status == 200)
        .count()
}

async fn open_door(http: &Http, server_url: &str) -> String {
    let (status, command) = http
        .admin_post(
            &format!("{server_url}/v1/gateways/{GATEWAY_ID}/commands"),
            &json!({"kind": "device.door.open", "target": DOOR, "payload": {"door": 1}}),
        )
        .await;
    assert_eq!(status, 201, "issuing the command: {command}");
    command["id"].as_str().expect("a command id").to_string()
}

async fn command(http: &Http, server_url: &str, id: &str) -> Value {
    http.admin_get(&format!("{server_url}/v1/commands/{id}"))
        .await
}

/// Wait until the command reaches one of `states`; its `{command, acks}` view.
async fn wait_state(
    http: &Http,
    server_url: &str,
    id: &str,
    states: &[&str],
    limit: Duration,
) -> Value {
    eventually(
        &format!("command {id} to reach {states:?}"),
        limit,
        || async {
            let view = command(http, server_url, id).await;
            let state = view["command"]["state"].as_str()?.to_string();
            states.contains(&state.as_str()).then_some(view)
        },
    )
    .await
}

/// Wait until `GET /v1/gateways` shows the gateway `online` (or not); its entry.
async fn presence(http: &Http, server_url: &str, online: bool) -> Value {
    let url = format!("{server_url}/v1/gateways");
    eventually(
        &format!("{GATEWAY_ID} online = {online} in GET /v1/gateways"),
        Duration::from_secs(10),
        || async {
            let list = http.admin_get(&url).await;
            let entry = list["gateways"]
                .as_array()?
                .iter()
                .find(|g| g["gateway_id"] == GATEWAY_ID)?
                .clone();
            let status_ok = !online || entry["last_status"].is_object();
            (entry["online"] == online && status_ok).then_some(entry)
        },
    )
    .await
}

const TERMINAL: &[&str] = &[
    "succeeded",
    "failed",
    "rejected",
    "expired",
    "timed_out",
    "canceled",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_issued_while_the_gateway_is_down_runs_once_when_it_returns() {
    let dir = temp_dir();
    let http = Http::new();
    let device = Simulator::start(SimulatorConfig::default())
        .await
        .expect("starting the simulator");
    let server = Server::start(dir.path(), &server_toml()).await;
    let mut gateway = Gateway::start(dir.path(), &server.url, &gateway_toml(&device)).await;
    gateway.wait_connected(&http).await;
    gateway.kill();
    // The server notices at once (the connection closed) and shows it offline.
    presence(&http, &server.url, false).await;

    let id = open_door(&http, &server.url).await;
    let view = command(&http, &server.url, &id).await;
    assert_eq!(view["command"]["state"], "queued", "{view}");
    assert_eq!(door_opens(&device), 0);

    gateway.restart().await;
    let view = wait_state(&http, &server.url, &id, TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(view["command"]["state"], "succeeded", "{view}");
    let back = presence(&http, &server.url, true).await;
    assert!(
        back["last_status"]["buffer_pressure"].is_string(),
        "no status snapshot from the gateway's heartbeats: {back}"
    );
    assert_eq!(door_opens(&device), 1, "requests: {:?}", device.requests());
    let acks: Vec<&str> = view["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .filter_map(|a| a["state"].as_str())
        .collect();
    assert!(
        acks.contains(&"received") && acks.contains(&"succeeded"),
        "acks: {acks:?}"
    );

    // Redelivery windows pass; the door is not opened again.
    tokio::time::sleep(Duration::from_millis(4 * REDELIVER_AFTER_MS)).await;
    assert_eq!(door_opens(&device), 1);
    assert_eq!(
        command(&http, &server.url, &id).await["command"]["state"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_is_not_run_twice_even_across_a_sigkill_after_it_ran() {
    let dir = temp_dir();
    let http = Http::new();
    let device = Simulator::start(SimulatorConfig::default())
        .await
        .expect("starting the simulator");
    let mut server = Server::start(dir.path(), &server_toml()).await;
    let mut gateway = Gateway::start(dir.path(), &server.url, &gateway_toml(&device)).await;
    gateway.wait_connected(&http).await;

    // The device answers slowly, so the command is still running when the server's redelivery
    // timer fires: the server sends it again, the gateway's journal answers `received`.
    device.set_latency(Duration::from_secs(2));
    let id = open_door(&http, &server.url).await;
    let view = eventually(
        "a redelivery while the command runs",
        Duration::from_secs(20),
        || async {
            let view = command(&http, &server.url, &id).await;
            (view["command"]["attempts"].as_u64()? >= 2).then_some(view)
        },
    )
    .await;
    assert_eq!(view["command"]["state"], "received", "{view}");
    assert_eq!(
        door_opens(&device),
        0,
        "the door opened before the test could stop the server"
    );

    // Take the server away while the device works, so the outcome cannot reach it; kill the
    // gateway as soon as the device has opened the door.
    server.kill();
    eventually(
        "the device to open the door",
        Duration::from_secs(20),
        || async { (door_opens(&device) == 1).then_some(()) },
    )
    .await;
    gateway.kill();
    device.clear_faults();

    // Both come back. The server still has the command `received` and sends it again; the
    // gateway answers from its journal — the stored outcome, or `failed` (interrupted) if the
    // kill came before the outcome was written — and never opens the door again.
    server.restart().await;
    gateway.restart().await;
    let view = wait_state(&http, &server.url, &id, TERMINAL, Duration::from_secs(30)).await;
    let state = view["command"]["state"].as_str().unwrap_or("");
    let detail = view["command"]["detail"].as_str().unwrap_or("");
    assert!(
        state == "succeeded" || (state == "failed" && detail.contains("interrupted")),
        "{view}"
    );
    tokio::time::sleep(Duration::from_millis(4 * REDELIVER_AFTER_MS)).await;
    assert_eq!(door_opens(&device), 1, "requests: {:?}", device.requests());
    let view = command(&http, &server.url, &id).await;
    assert_eq!(
        view["command"]["state"], state,
        "the state moved after it was final: {view}"
    );
    eprintln!(
        "command ended {state} after {} deliveries; acks: {}",
        view["command"]["attempts"], view["acks"]
    );
}

/// The gateway's other command kinds: `flush` runs on the uplink, `agent.*` goes to the agent
/// in its next heartbeat answer and succeeds when the agent acknowledges it, and a kind it
/// does not know is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_agent_and_unknown_commands() {
    let dir = temp_dir();
    let http = Http::new();
    let device = Simulator::start(SimulatorConfig::default())
        .await
        .expect("starting the simulator");
    let server = Server::start(dir.path(), &server_toml()).await;
    let gateway = Gateway::start(dir.path(), &server.url, &gateway_toml(&device)).await;
    gateway.wait_connected(&http).await;
    let sim = AgentSim::start(dir.path(), &gateway.url, 1, 20, 4.0, 10.0);

    let issue = |kind: &'static str, target: Option<&'static str>| {
        let http = http.clone();
        let url = format!("{}/v1/gateways/{GATEWAY_ID}/commands", server.url);
        async move {
            let (status, command) = http
                .admin_post(&url, &json!({"kind": kind, "target": target}))
                .await;
            assert_eq!(status, 201, "issuing {kind}: {command}");
            command["id"].as_str().expect("a command id").to_string()
        }
    };
    let flush = issue("flush", None).await;
    let unknown = issue("self.destruct", None).await;
    // agent-sim registers its agent before it starts posting; wait until the gateway knows it.
    eventually(
        "the simulated agent to register",
        Duration::from_secs(20),
        || async {
            let status = gateway.status(&http).await;
            let agents = status["agents"].as_array()?.clone();
            agents
                .iter()
                .any(|a| a["agent_id"] == "sim-agent-0")
                .then_some(())
        },
    )
    .await;
    let restart = issue("agent.restart", Some("sim-agent-0")).await;

    for (id, expected) in [
        (&flush, "succeeded"),
        (&unknown, "rejected"),
        (&restart, "succeeded"),
    ] {
        let view = wait_state(&http, &server.url, id, TERMINAL, Duration::from_secs(20)).await;
        assert_eq!(view["command"]["state"], expected, "{view}");
    }
    let outcome = sim.finish(Duration::from_secs(30)).await;
    assert!(outcome.status.success(), "{outcome:?}");
    assert_eq!(door_opens(&device), 0, "no command here touches the door");
}

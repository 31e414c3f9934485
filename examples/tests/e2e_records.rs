//! End to end, real processes: records from `agent-sim` through the `gateway` to the `server`
//! arrive exactly once — in a quiet run, across a SIGKILL of the gateway, across a SIGKILL of
//! the server — and a SIGTERM makes the gateway flush its buffer before it exits 0.

mod common;

use std::time::Duration;

use common::{
    AgentSim, Gateway, Http, Server, assert_exactly_once, eventually, gateway_config,
    gateway_config_with, server_config, stored_ids, temp_dir, wait_stored_at_least,
};

/// A quiet run: every id agent-sim got acknowledged is stored at the server exactly once, and
/// the server holds nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_agents_arrive_exactly_once() {
    let dir = temp_dir();
    let http = Http::new();
    let server = Server::start(dir.path(), &server_config("")).await;
    let gateway = Gateway::start(dir.path(), &server.url, &gateway_config("")).await;

    let sim = AgentSim::start(dir.path(), &gateway.url, 4, 2_000, 3.0, 30.0);
    let outcome = sim.finish(Duration::from_secs(60)).await;
    assert!(outcome.status.success(), "agent-sim failed: {outcome:?}");
    assert!(
        outcome.sent >= 3_000,
        "agent-sim sent only {} records",
        outcome.sent
    );
    assert_eq!(outcome.acknowledged, outcome.sent, "{outcome:?}");
    assert_eq!(outcome.refused, 0, "{outcome:?}");
    assert_eq!(outcome.unacknowledged, 0, "{outcome:?}");
    assert_eq!(outcome.ids.len() as u64, outcome.acknowledged);

    assert_exactly_once(&http, &server.url, &outcome.ids, Duration::from_secs(30)).await;
}

/// The gateway is SIGKILLed while agents post and started again on the same port with the
/// same data: agents retry through the outage, and every record acknowledged to them —
/// before the kill (then only in the gateway's buffer) or after — is stored exactly once.
///
/// The uplink lingers up to a second before sending a partial batch, so at the kill the buffer
/// holds hundreds of acknowledged records the server has not confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkill_mid_load_keeps_exactly_once() {
    let dir = temp_dir();
    let http = Http::new();
    let server = Server::start(dir.path(), &server_config("")).await;
    let config = gateway_config("[uplink.batch]\nmax_records = 5000\nlinger_ms = 1000\n");
    let mut gateway = Gateway::start(dir.path(), &server.url, &config).await;

    let sim = AgentSim::start(dir.path(), &gateway.url, 4, 2_000, 6.0, 45.0);
    wait_stored_at_least(&http, &server.url, 1_000, Duration::from_secs(20)).await;
    let buffered = eventually(
        "a backlog in the gateway's buffer",
        Duration::from_secs(10),
        || async {
            let status = gateway.status(&http).await;
            let records = status["buffer"]["records"].as_u64().unwrap_or(0);
            (records >= 300).then_some(records)
        },
    )
    .await;
    gateway.kill();
    eprintln!("killed the gateway with {buffered} records in its buffer");
    // Down for a second, while the agents keep producing and retrying.
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway.restart().await;

    let outcome = sim.finish(Duration::from_secs(90)).await;
    assert!(outcome.status.success(), "agent-sim failed: {outcome:?}");
    assert_eq!(outcome.unacknowledged, 0, "{outcome:?}");
    assert_eq!(outcome.refused, 0, "{outcome:?}");
    assert!(
        outcome.retries > 0,
        "the agents never had to retry, so the kill did not hit the load: {outcome:?}"
    );
    assert_eq!(outcome.ids.len() as u64, outcome.acknowledged);
    assert_eq!(outcome.acknowledged, outcome.sent);

    assert_exactly_once(&http, &server.url, &outcome.ids, Duration::from_secs(30)).await;
}

/// The server is SIGKILLed while agents post and started again on the same port with the same
/// data: the gateway buffers meanwhile, then drains, and every acknowledged record is stored
/// exactly once (a batch whose answer the kill swallowed is sent again; the server keeps one
/// copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sigkill_mid_load_keeps_exactly_once() {
    let dir = temp_dir();
    let http = Http::new();
    let mut server = Server::start(dir.path(), &server_config("")).await;
    let gateway = Gateway::start(dir.path(), &server.url, &gateway_config("")).await;

    let sim = AgentSim::start(dir.path(), &gateway.url, 4, 2_000, 6.0, 45.0);
    wait_stored_at_least(&http, &server.url, 1_000, Duration::from_secs(20)).await;
    server.kill();
    // While the server is away the records pile up in the gateway's buffer.
    let piled = eventually(
        "records to pile up in the gateway's buffer",
        Duration::from_secs(10),
        || async {
            let status = gateway.status(&http).await;
            let records = status["buffer"]["records"].as_u64().unwrap_or(0);
            (records >= 1_000).then_some(records)
        },
    )
    .await;
    server.restart().await;

    let outcome = sim.finish(Duration::from_secs(90)).await;
    assert!(outcome.status.success(), "agent-sim failed: {outcome:?}");
    assert_eq!(outcome.unacknowledged, 0, "{outcome:?}");
    assert_eq!(outcome.refused, 0, "{outcome:?}");
    assert_eq!(outcome.ids.len() as u64, outcome.acknowledged);
    assert!(outcome.acknowledged > piled);

    assert_exactly_once(&http, &server.url, &outcome.ids, Duration::from_secs(30)).await;
    let status = gateway.status(&http).await;
    assert_eq!(
        status["buffer"]["records"], 0,
        "the backlog did not drain: {status}"
    );
}

/// SIGTERM: the gateway stops accepting, pushes what it buffered to the server, and exits 0.
/// The uplink is set to linger 20 s before sending a partial batch, so when the signal comes
/// every record is still in the gateway's buffer and only the shutdown flush can deliver it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_flushes_the_buffer_and_exits_0() {
    let dir = temp_dir();
    let http = Http::new();
    let server = Server::start(dir.path(), &server_config("")).await;
    let config = gateway_config("[uplink.batch]\nmax_records = 10000\nlinger_ms = 20000\n");
    let mut gateway = Gateway::start(dir.path(), &server.url, &config).await;

    let sim = AgentSim::start(dir.path(), &gateway.url, 2, 1_000, 2.0, 20.0);
    let outcome = sim.finish(Duration::from_secs(60)).await;
    assert!(outcome.status.success(), "agent-sim failed: {outcome:?}");
    assert!(outcome.acknowledged >= 1_000, "{outcome:?}");
    assert_eq!(outcome.ids.len() as u64, outcome.acknowledged);

    let status = gateway.status(&http).await;
    assert_eq!(
        status["buffer"]["records"].as_u64(),
        Some(outcome.acknowledged),
        "the buffer should hold every record before the signal: {status}"
    );
    assert!(
        stored_ids(&http, &server.url).await.is_empty(),
        "the uplink sent a batch before the flush; the test no longer shows the flush"
    );

    gateway.proc.terminate();
    let exit = gateway.proc.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "the gateway exited with {exit}");
    // The gateway is gone: whatever is at the server now was flushed before it exited.
    assert_exactly_once(&http, &server.url, &outcome.ids, Duration::ZERO).await;

    // Nothing is left to send again after a restart.
    gateway.restart().await;
    let status = gateway.status(&http).await;
    assert_eq!(status["buffer"]["records"], 0, "{status}");
}

/// SIGTERM while the server is away: the flush cannot finish, so the gateway gives up at its
/// deadline (`shutdown_flush_ms`), still exits 0, and keeps the records for its next start,
/// which delivers them exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_without_a_server_keeps_the_buffer_for_the_next_start() {
    let dir = temp_dir();
    let http = Http::new();
    let mut server = Server::start(dir.path(), &server_config("")).await;
    let config = gateway_config_with("shutdown_flush_ms = 1500", "");
    let mut gateway = Gateway::start(dir.path(), &server.url, &config).await;
    server.kill();

    let sim = AgentSim::start(dir.path(), &gateway.url, 2, 1_000, 1.5, 20.0);
    let outcome = sim.finish(Duration::from_secs(60)).await;
    assert!(outcome.status.success(), "agent-sim failed: {outcome:?}");
    assert!(outcome.acknowledged >= 750, "{outcome:?}");

    let signalled = std::time::Instant::now();
    gateway.proc.terminate();
    let exit = gateway.proc.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    assert!(exit.success(), "the gateway exited with {exit}");
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(8),
        "a flush that cannot finish should end at its 1.5 s deadline; the exit took {took:?}"
    );

    server.restart().await;
    gateway.restart().await;
    assert_exactly_once(&http, &server.url, &outcome.ids, Duration::from_secs(30)).await;
}

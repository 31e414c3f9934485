//! The example binaries' wiring, shared so the `demo` can run the `server`, the `gateway` and
//! simulated agents in one process exactly as the separate binaries run them.
//!
//! * [`server`] — `server`: ingest, control hub, commands, policies, events, audit.
//! * [`gateway`] — `gateway`: collector API, buffer, uplink, control client, policy applier,
//!   devices.
//! * [`agent_sim`] — `agent-sim`: simulated agents posting records.
//! * [`config`], [`telemetry`] — configuration files and process-wide logging/metrics.
//!
//! Everything an integrator would reuse lives in the library crates; this crate only connects
//! them.

#![forbid(unsafe_code)]

pub mod agent_sim;
pub mod config;
pub mod gateway;
mod policy_bridge;
pub mod server;
pub mod telemetry;

/// Resolve on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

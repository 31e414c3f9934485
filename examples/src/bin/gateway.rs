//! `gateway`: collects records from agents, buffers them durably, uploads them to the server
//! exactly once, and runs the server's commands and policies. See `docs/RUNNING.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use gateway_examples::config;
use gateway_examples::gateway::{self, GatewayConfig, GatewayOptions};
use gateway_examples::telemetry;

/// The agent gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// This gateway's id (the server checks it against the token).
    #[arg(long)]
    id: String,
    /// Bearer token for the server.
    #[arg(long, env = "GATEWAY_TOKEN")]
    token: String,
    /// Base URL of the server, e.g. `https://server.example:8080`.
    #[arg(long)]
    server: String,
    /// Address of the collector API for agents.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory of the buffer, journal and policies.
    #[arg(long)]
    data_dir: PathBuf,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging("info");
    telemetry::install_crypto_provider();
    telemetry::prometheus();
    let args = Args::parse();
    let config: GatewayConfig = config::load(args.config.as_deref())?;
    let gateway = gateway::start(GatewayOptions {
        id: args.id,
        token: args.token,
        server: args.server,
        listen: args.listen,
        data_dir: args.data_dir,
        config,
    })
    .await?;
    println!("listening on {}", gateway.url());
    gateway_examples::wait_for_signal().await;
    tracing::info!("stopping: flushing the buffer");
    gateway.shutdown().await?;
    Ok(())
}

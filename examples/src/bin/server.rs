//! `server`: ingest, control channel, commands, policies, events and audit for a fleet of
//! gateways. See `docs/RUNNING.md` for a walk-through and `docs/API.md` for the API.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use gateway_examples::config::{self, TokenConfig};
use gateway_examples::server::{self, ServerConfig, ServerOptions};
use gateway_examples::telemetry;
use gateway_proto::auth::Role;

/// The agent gateway server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the SQLite files.
    #[arg(long)]
    data_dir: PathBuf,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// An operator token (tenant from the config file's `tenant`).
    #[arg(long, env = "GATEWAY_SERVER_ADMIN_TOKEN")]
    admin_token: Vec<String>,
    /// A gateway token, `ID=TOKEN`; repeat for more gateways.
    #[arg(long, value_parser = config::parse_id_token)]
    gateway_token: Vec<(String, String)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging("info");
    telemetry::install_crypto_provider();
    telemetry::prometheus();
    let args = Args::parse();
    let mut config: ServerConfig = config::load(args.config.as_deref())?;
    for token in args.admin_token {
        config.tokens.push(TokenConfig {
            token,
            tenant: None,
            role: Role::Admin,
            subject: "admin".into(),
        });
    }
    for (id, token) in args.gateway_token {
        config.tokens.push(TokenConfig {
            token,
            tenant: None,
            role: Role::Gateway,
            subject: id,
        });
    }
    let server = server::start(ServerOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        config,
    })
    .await?;
    println!("listening on {}", server.url());
    gateway_examples::wait_for_signal().await;
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}

//! `agent-sim`: N simulated agents that register with a gateway, heartbeat, and post records
//! at R records/s in total for S seconds, then print what happened.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use gateway_examples::agent_sim::{self, AgentSimConfig, Counters};
use gateway_examples::telemetry;
use gateway_proto::Encoding;

/// Simulated agents posting records to a gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Base URL of the gateway's collector.
    #[arg(long)]
    gateway: String,
    /// Number of agents.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Records per second, all agents together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds to produce records.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Agent token.
    #[arg(long, env = "AGENT_TOKEN", default_value = "agent-token")]
    token: String,
    /// Records per request, at most.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Body encoding.
    #[arg(long, value_enum, default_value_t = Wire::Json)]
    encoding: Wire,
    /// Seconds to keep retrying unacknowledged records after the run.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// Prefix of the agent ids.
    #[arg(long, default_value = "sim-agent")]
    agent_prefix: String,
    /// Write the id of every acknowledged record to this file, one per line.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Wire {
    Json,
    Protobuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging("warn");
    telemetry::install_crypto_provider();
    let args = Args::parse();
    let config = AgentSimConfig {
        gateway: args.gateway,
        token: args.token,
        agents: args.agents,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration.max(0.0)),
        batch_size: args.batch_size,
        encoding: match args.encoding {
            Wire::Json => Encoding::Json,
            Wire::Protobuf => Encoding::Protobuf,
        },
        drain_timeout: Duration::from_secs_f64(args.drain_timeout.max(0.0)),
        agent_prefix: args.agent_prefix,
    };
    let expected = (config.rate * config.duration.as_secs_f64()) as u64;
    let counters = Arc::new(Counters::default());
    let progress = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(expected.max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} acknowledged {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let bar_counters = counters.clone();
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                ticker_bar.set_position(bar_counters.acknowledged.load(Ordering::Relaxed));
                ticker_bar.set_message(format!(
                    "(sent {}, refused {}, retries {})",
                    bar_counters.sent.load(Ordering::Relaxed),
                    bar_counters.refused.load(Ordering::Relaxed),
                    bar_counters.retries.load(Ordering::Relaxed),
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (bar, ticker)
    });
    let summary = agent_sim::run(config, counters).await?;
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.set_position(summary.acknowledged);
        bar.finish();
    }
    if let Some(path) = args.ids_out {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for id in &summary.acknowledged_ids {
            writeln!(file, "{id}")?;
        }
        file.flush()?;
    }
    println!("{summary}");
    if summary.unacknowledged > 0 {
        std::process::exit(1);
    }
    Ok(())
}

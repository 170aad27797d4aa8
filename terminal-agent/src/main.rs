use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edubrain_agent::{PublishProgress, load_config, province, write_registry};
use tokio_util::sync::CancellationToken;

/// edubrain terminal agent and province simulator.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a province's terminals and publish their events over MQTT.
    Simulate {
        /// TOML config (see deploy/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Only write the registry CSV of the configured province.
    Registry {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Simulate { config } => {
            let config = load_config(config.as_deref())?;
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                s.cancel();
            });
            let summary = edubrain_agent::run(config, Arc::new(PublishProgress::default()), shutdown).await?;
            println!("{} terminals published {} events, {} acknowledged", summary.terminals, summary.created, summary.acked);
        }
        Command::Registry { config, out } => {
            let config = load_config(config.as_deref())?;
            write_registry(&province::build(&config.province), &out).with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}

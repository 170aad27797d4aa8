use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edubrain_agent::{PublishProgress, load_config, province, write_registry};

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
    edubrain_process::init_logging("info");
    match Cli::parse().command {
        Command::Simulate { config } => {
            let config = load_config(config.as_deref())?;
            let shutdown = edubrain_process::shutdown_on_signals();
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

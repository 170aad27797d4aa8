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
    /// Run one classroom terminal: the local ingest interface classroom software posts events
    /// to, the durable outbox, and the MQTT connection to the city's edge.
    Serve {
        /// TOML config (see deploy/terminal.toml); EDUBRAIN_AGENT_* variables override it.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the broker logins of the configured province (every terminal, one edge per city)
    /// as `user:password` lines, for `mosquitto_passwd -U`.
    Passwords {
        #[arg(long)]
        config: Option<PathBuf>,
        /// File holding the hub's provisioning secret.
        #[arg(long)]
        secret_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
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
        Command::Serve { config } => {
            let config = edubrain_agent::terminal::TerminalConfig::load(&config)?;
            let shutdown = edubrain_process::shutdown_on_signals();
            let terminal = edubrain_agent::terminal::start(config, shutdown).await?;
            eprintln!("local ingest on http://{}/v1/events", terminal.addr);
            let acked = terminal.wait().await?;
            eprintln!("stopped; the edge acknowledged {acked} events this run");
        }
        Command::Passwords { config, secret_file, out } => {
            let config = load_config(config.as_deref())?;
            let secret = std::fs::read_to_string(&secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
            let users = edubrain_agent::broker_users(&province::build(&config.province), secret.trim_end());
            let lines: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
            std::fs::write(&out, lines).with_context(|| format!("writing {}", out.display()))?;
            println!("{} logins written to {}; hash them with: mosquitto_passwd -U {}", users.len(), out.display(), out.display());
        }
        Command::Registry { config, out } => {
            let config = load_config(config.as_deref())?;
            write_registry(&province::build(&config.province), &out).with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}

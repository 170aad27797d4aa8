use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edubrain_cloud::CloudConfig;
use edubrain_cloud::analytics::gaps::{GapReport, Scope};

/// edubrain cloud: warehouse ingest, analytics and API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Consume Kafka into the warehouse and serve the API.
    Serve {
        /// TOML config (see deploy/cloud.toml); EDUBRAIN_CLOUD_* variables override it.
        #[arg(long)]
        config: PathBuf,
    },
    /// Gap analysis from a registry file alone (CSV or Parquet with the standard columns).
    Gaps {
        #[arg(long)]
        registry: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Optional TOML config whose [thresholds] override the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    edubrain_process::init_logging("info");
    match Cli::parse().command {
        Command::Serve { config } => {
            let config = CloudConfig::load(&config)?;
            let shutdown = edubrain_process::shutdown_on_signals();
            edubrain_cloud::run(config, shutdown).await?;
        }
        Command::Gaps { registry, format, config } => {
            let thresholds = match config {
                Some(p) => CloudConfig::load(&p)?.thresholds,
                None => Default::default(),
            };
            let schools = edubrain_cloud::registry::load(&registry).with_context(|| format!("reading registry {}", registry.display()))?;
            let report = GapReport::build(&schools, &Scope::ALL, &thresholds);
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Table => print!("{}", report.to_table()),
            }
        }
    }
    Ok(())
}

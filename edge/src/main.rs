use std::path::PathBuf;

use clap::Parser;
use edubrain_edge::EdgeConfig;

/// edubrain city edge: MQTT in, validated and deduplicated events out to Kafka.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config (see deploy/edge-c01.toml); EDUBRAIN_EDGE_* variables override it.
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    edubrain_process::init_logging("info");
    let config = EdgeConfig::load(&Cli::parse().config)?;
    let shutdown = edubrain_process::shutdown_on_signals();
    edubrain_edge::run(config, shutdown).await?;
    Ok(())
}

use std::path::PathBuf;

use clap::Parser;
use edubrain_edge::EdgeConfig;
use tokio_util::sync::CancellationToken;

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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = EdgeConfig::load(&Cli::parse().config)?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    edubrain_edge::run(config, shutdown).await?;
    Ok(())
}

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edubrain_edge::EdgeConfig;
use edubrain_edge::status::{EdgeStatus, parse_exposition};

/// edubrain city edge: MQTT in, validated and deduplicated events out to Kafka.
#[derive(Parser)]
#[command(version, subcommand_negates_reqs = true)]
struct Cli {
    /// TOML config (see deploy/edge-c01.toml); EDUBRAIN_EDGE_* variables override it. Runs the
    /// edge when no subcommand is given.
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// A running edge's state: MQTT session, terminals heard, WAL fill and the records Kafka has
    /// not confirmed (its lag), what it accepted, rejected and dropped.
    Status {
        /// The edge's HTTP address (http_listen in its config).
        #[arg(long, default_value = "http://127.0.0.1:9101")]
        url: String,
        /// Print again every this many seconds until Ctrl-C.
        #[arg(long)]
        watch: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Status { url, watch }) => loop {
            let metrics = format!("{}/metrics", url.trim_end_matches('/'));
            let text = reqwest::get(&metrics)
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("reading {metrics}"))?
                .text()
                .await
                .with_context(|| format!("reading {metrics}"))?;
            let status = parse_exposition(&text).and_then(|s| EdgeStatus::from_samples(&s)).map_err(anyhow::Error::msg)?;
            print!("{}", status.render());
            let Some(secs) = watch else { return Ok(()) };
            tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            println!();
        },
        None => {
            edubrain_process::init_logging("info");
            let config = EdgeConfig::load(&cli.config.expect("clap requires --config without a subcommand"))?;
            let shutdown = edubrain_process::shutdown_on_signals();
            edubrain_edge::run(config, shutdown).await?;
            Ok(())
        }
    }
}

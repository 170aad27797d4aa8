use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edubrain_edge::EdgeConfig;
use edubrain_edge::replay::{self, ReplayOptions, ReplayProgress};
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
    /// Sends the dead-lettered events of this edge's city that today's rules accept to the
    /// events topic (after a fix to what refused them), with a progress bar. Needs --config.
    /// Idempotent: what an earlier replay delivered is skipped.
    Replay {
        /// Only events the edge received at or after this instant (RFC 3339) …
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// … and before this one.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events refused by this rule (repeatable; e.g. range, schema_version).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Judge and count only; produce nothing.
        #[arg(long)]
        dry_run: bool,
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
        Some(Command::Replay { from, to, rules, dry_run }) => {
            edubrain_process::init_logging("warn");
            let path = cli.config.context("replay needs --config <edge.toml> (before `replay`): it reads the edge's Kafka settings")?;
            let config = EdgeConfig::load(&path)?;
            let options = ReplayOptions { from, to, rules: rules.into_iter().collect(), dry_run };
            let shutdown = edubrain_process::shutdown_on_signals();
            let mut bar = edubrain_process::progress::OperatorProgress::new("replay");
            let mut report = |p: &ReplayProgress| {
                let message = format!(
                    "{} replayed, {} still refused, {} already replayed",
                    p.replayed,
                    p.still_rejected.values().sum::<u64>(),
                    p.already_replayed
                );
                bar.update(p.position, p.total, "dead letters", &message);
            };
            let result = replay::run(&config, &options, shutdown, &mut report).await;
            bar.finish();
            let p = result?;
            let verb = if dry_run { "would replay" } else { "replayed" };
            println!(
                "replay of {}'s dead letters: {} read; {verb} {} to {}; {} already replayed; {} not selected; still refused {:?}; not this edge's to replay {:?}",
                config.city,
                p.position,
                p.replayed,
                config.kafka.events_topic,
                p.already_replayed,
                p.not_selected,
                p.still_rejected,
                p.not_replayable
            );
            Ok(())
        }
        None => {
            edubrain_process::init_logging("info");
            let config = EdgeConfig::load(&cli.config.expect("clap requires --config without a subcommand"))?;
            let shutdown = edubrain_process::shutdown_on_signals();
            edubrain_edge::run(config, shutdown).await?;
            Ok(())
        }
    }
}

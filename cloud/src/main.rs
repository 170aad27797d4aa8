use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edubrain_cloud::CloudConfig;
use edubrain_cloud::access::{self, Role};
use edubrain_cloud::analytics::gaps::{GapReport, Scope};
use edubrain_cloud::backfill;

// See the workspace Cargo.toml: glibc malloc was ~15% of the analytics suite's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Suggest k zones for a county's schools from a registry file (each zone with strong and
    /// weak schools; the zones' core indicators as close as the search gets).
    ZonePartition {
        #[arg(long)]
        registry: PathBuf,
        #[arg(long)]
        county: String,
        #[arg(long)]
        k: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Optional TOML config whose [zone_targets] partition_max_spread overrides 0.15.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Offline evaluation of the recommendations on a warehouse: train on the days before the
    /// last `--holdout-days`, test on those; hit-rate@k and NDCG@k against a popularity baseline.
    EvaluateRecommendations {
        /// Warehouse root (the directory holding `events/`).
        #[arg(long)]
        warehouse: PathBuf,
        #[arg(long)]
        registry: PathBuf,
        #[arg(long, default_value_t = 14)]
        holdout_days: u64,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Optional TOML config whose [recommendation] weights are used.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a time range into the warehouse again, adding only the events it does not hold:
    /// from Kafka (records timestamped in the range, up to what live ingest has committed) or
    /// from exported `*.jsonl` files (events timed in the range). Safe beside a serving cloud
    /// and safe to repeat. Shows a progress bar, and prints the counts at the end.
    Backfill {
        /// TOML config of the cloud (its warehouse, Kafka and time zone).
        #[arg(long)]
        config: PathBuf,
        /// Start of the range: RFC 3339 (`2026-11-02T08:00:00+08:00`) or a local date (`2026-11-02`).
        #[arg(long)]
        from: String,
        /// End of the range (excluded), as `--from`.
        #[arg(long)]
        to: String,
        /// Read `*.jsonl` files of this directory instead of Kafka.
        #[arg(long)]
        files: Option<PathBuf>,
    },
    /// Print a new random API token and the `[[access.principals]]` entry that grants it.
    Token {
        /// Who the token is for (logs and audit).
        #[arg(long)]
        name: String,
        /// province, city or alliance.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The city or alliance id (not for the province).
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Province,
    City,
    Alliance,
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
        Command::ZonePartition { registry, county, k, format, config } => {
            let target = match config {
                Some(p) => CloudConfig::load(&p)?.zone_targets.partition_max_spread,
                None => edubrain_cloud::config::ZoneTargets::default().partition_max_spread,
            };
            let schools = edubrain_cloud::registry::load(&registry).with_context(|| format!("reading registry {}", registry.display()))?;
            let p = edubrain_cloud::analytics::partition::suggest(&schools, &county, k, target)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&p)?),
                Format::Table => {
                    println!(
                        "{:<16} {:>7} {:>7}  {:>18} {:>17} {:>20}  schools",
                        "zone", "schools", "pupils", "senior_title_share", "funding_per_pupil", "key_teachers_per_100"
                    );
                    for z in &p.zones {
                        let v = |k: &str| z.indicators.get(k).copied().unwrap_or_default();
                        println!(
                            "{:<16} {:>7} {:>7}  {:>18.3} {:>17.0} {:>20.2}  {} (strong: {}; weak: {})",
                            z.zone,
                            z.schools.len(),
                            z.pupils,
                            v("senior_title_share"),
                            v("funding_per_pupil"),
                            v("key_teachers_per_100"),
                            z.schools.join(" "),
                            z.strong.join(" "),
                            z.weak.join(" ")
                        );
                    }
                    let spread: Vec<String> = p.spread.iter().map(|(k, v)| format!("{k} {:.1}%", 100.0 * v)).collect();
                    println!(
                        "spread (max−min)/mean: {}; largest {:.1}% (draft {:.1}%, {} swaps); target {:.0}%: {}",
                        spread.join(", "),
                        100.0 * p.max_spread,
                        100.0 * p.initial_max_spread,
                        p.swaps,
                        100.0 * p.target_spread,
                        if p.meets { "met" } else { "NOT met" }
                    );
                }
            }
        }
        Command::EvaluateRecommendations { warehouse, registry, holdout_days, k, config } => {
            let weights = match config {
                Some(p) => CloudConfig::load(&p)?.recommendation,
                None => Default::default(),
            };
            let schools = edubrain_cloud::registry::load(&registry).with_context(|| format!("reading registry {}", registry.display()))?;
            let w = edubrain_cloud::Warehouse::open(&warehouse, schools, 4 << 30).await?;
            let last = w.last_day().await?.with_context(|| format!("no events in {}", warehouse.display()))?;
            let cutoff = last - chrono::Days::new(holdout_days.saturating_sub(1));
            let report = edubrain_cloud::analytics::evaluation::evaluate(&w, cutoff, &weights, k).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Backfill { config, from, to, files } => {
            let config = CloudConfig::load(&config)?;
            let zone = chrono::FixedOffset::east_opt(config.thresholds.utc_offset_hours * 3600).context("utc_offset_hours out of range")?;
            let range = backfill::TimeRange::new(parse_instant(&from, zone)?, parse_instant(&to, zone)?)?;
            let source = files.map_or(backfill::Source::Kafka, backfill::Source::Files);
            let shutdown = edubrain_process::shutdown_on_signals();
            let report = run_backfill(&config, range, &source, shutdown).await?;
            println!(
                "backfill {} .. {}: {} {} read of {}; {} events written in {} files; {} already in the warehouse; {} outside the range; {} invalid; {} records of the range left to live ingest",
                range.from,
                range.to,
                report.position,
                report.unit,
                report.total,
                report.events_written,
                report.files_written,
                report.already_present,
                report.outside_range,
                report.invalid,
                report.left_to_ingest
            );
        }
        Command::Token { name, role, scope } => {
            let role = match (role, scope) {
                (RoleArg::Province, None) => Role::Province,
                (RoleArg::City, Some(c)) => Role::City(c),
                (RoleArg::Alliance, Some(a)) => Role::Alliance(a),
                (RoleArg::Province, Some(_)) => anyhow::bail!("--role province takes no --scope"),
                (_, None) => anyhow::bail!("--role city and --role alliance need --scope <id>"),
            };
            let token = access::new_token();
            let mut config = access::AccessConfig::default();
            config.add(&name, role, &token);
            access::AccessControl::new(&config)?; // checks the scope id
            eprintln!("token (give it to {name}; it is not stored anywhere): {token}");
            println!("[[access.principals]]\n{}", toml::to_string(&config.principals[0])?);
        }
    }
    Ok(())
}

/// An instant from RFC 3339, or the start of a local date in the warehouse's time zone.
fn parse_instant(text: &str, zone: chrono::FixedOffset) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("{text:?} is neither RFC 3339 (2026-11-02T08:00:00+08:00) nor a date (2026-11-02)"))?;
    let local = date.and_hms_opt(0, 0, 0).expect("midnight").and_local_timezone(zone).single().context("no such local time")?;
    Ok(local.with_timezone(&chrono::Utc))
}

/// Runs a backfill with a progress bar on stderr (a line every 5 s instead when stderr is not a
/// terminal, e.g. under systemd or in CI logs).
async fn run_backfill(
    config: &CloudConfig,
    range: backfill::TimeRange,
    source: &backfill::Source,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<backfill::BackfillProgress> {
    let mut bar = edubrain_process::progress::OperatorProgress::new("backfill");
    let mut report = |p: &backfill::BackfillProgress| {
        let message = format!("{} written, {} already present, {} invalid", p.events_written, p.already_present, p.invalid);
        bar.update(p.position, p.total, p.unit, &message);
    };
    let result = backfill::run(config, range, source, shutdown, &mut report).await;
    bar.finish();
    Ok(result?)
}

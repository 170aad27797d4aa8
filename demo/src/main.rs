use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use edubrain_agent::ProvinceSpec;
use edubrain_brokers::Storage;
use edubrain_demo::DemoConfig;

/// Runs the whole edubrain pipeline on this machine with a simulated province.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    cities: u32,
    #[arg(long, default_value_t = 2)]
    alliances_per_city: u32,
    #[arg(long, default_value_t = 10)]
    schools_per_alliance: u32,
    #[arg(long, default_value_t = 10)]
    classrooms_per_school: u32,
    #[arg(long, default_value_t = 5)]
    school_days: u32,
    /// Wall-clock seconds the simulated school week takes.
    #[arg(long, default_value_t = 75.0)]
    wall_seconds: f64,
    /// Working directory for brokers and the warehouse (cleared at start).
    #[arg(long, default_value = ".demo")]
    work_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Kafka (Tansu) storage. sqlite: durable, what Kafka promises (records it acknowledged
    /// survive a broker crash). memory: lost when the broker stops, for comparison (on 2 cores
    /// the default week took 80 s of wall time with it and 82 s with sqlite).
    #[arg(long, value_enum, default_value_t = KafkaStorage::Sqlite)]
    kafka_storage: KafkaStorage,
    /// Stop after the summary instead of serving the API until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum KafkaStorage {
    Memory,
    Sqlite,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    edubrain_process::init_logging("warn");
    let cli = Cli::parse();
    let shutdown = edubrain_process::shutdown_on_signals();
    edubrain_demo::run(
        DemoConfig {
            province: ProvinceSpec {
                seed: cli.seed,
                cities: cli.cities,
                alliances_per_city: cli.alliances_per_city,
                schools_per_alliance: cli.schools_per_alliance,
                classrooms_per_school: cli.classrooms_per_school,
            },
            school_days: cli.school_days,
            wall_seconds: cli.wall_seconds,
            work_dir: cli.work_dir,
            cloud_http: cli.http,
            kafka_storage: match cli.kafka_storage {
                KafkaStorage::Memory => Storage::Memory,
                KafkaStorage::Sqlite => Storage::Sqlite,
            },
            serve: !cli.exit,
        },
        shutdown,
    )
    .await
}

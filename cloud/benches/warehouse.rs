//! Warehouse benchmark: simulated events into Parquet, then the analytics suite, then the same
//! SQL in DuckDB on the same files, in one invocation.
//!
//! 1. Ingest: the simulator's events are encoded as the JSON Kafka values the cloud consumes;
//!    the timed part is what the cloud's ingest does with them: decode, Arrow batches per
//!    (date, city) and their presence rows, Parquet (zstd) written to a temporary name, fsynced
//!    and renamed (two files per partition: events and presence). Reports
//!    events/s of wall time and per CPU-second (the bench is one thread: per core). Baseline:
//!    DuckDB (one thread) turns the first `EDUBRAIN_BENCH_INGEST_BASELINE_EVENTS` (default
//!    1,000,000) of the same JSON values into Parquet (`benches/duckdb_ingest.py`); the ratio
//!    of the two rates on those events says how far the per-core figure is this machine's and
//!    how far the code's.
//! 2. Freshness, consumer to queryable: events arrive at `EDUBRAIN_BENCH_ARRIVAL_RATE`
//!    (default 50,000/s); the ingest flushes every second or at 100,000 events, as configured by
//!    default; an event waits for its flush and then for the flush's real write time, measured
//!    for every flush here. (Edge and Kafka latency come before this; the edge bench measures
//!    them.)
//! 3. The analytics suite (utilisation by every grouping, zone monitoring, the summary,
//!    recommendations for every school, gaps and zone partitions from the registry), run
//!    `REPEATS` times; the SQL of one run is replayed by `benches/duckdb_suite.py` with DuckDB
//!    (2 threads, as DataFusion has here, over the same `events` and `presence` files), which
//!    also checks every query's row count against DataFusion's and reads the files with
//!    pyarrow. The ratio is DataFusion time / DuckDB time.
//!    Before the suite the files are compacted as the cloud's maintenance does
//!    (`EDUBRAIN_BENCH_COMPACT=0` skips it).
//!
//! Run: `scripts/bench warehouse`, or `cargo bench --profile dev --workspace --bench
//! warehouse` with `EDUBRAIN_BENCH_PYTHON` pointing at a python with duckdb and pyarrow.
//! `EDUBRAIN_BENCH_WAREHOUSE_EVENTS` sets the count (default 5,000,000; the 100M fits
//! on disk at about 25 bytes an event). `EDUBRAIN_BENCH_DIR` keeps the warehouse in that
//! directory; a later run with the same count reuses it and only runs the suites (to compare
//! query settings, e.g. `DATAFUSION_*` variables, on the same files).
//! `EDUBRAIN_BENCH_FILE_LISTING_TTL_MS` sets `[query] file_listing_ttl_ms` (0: every query
//! lists the files).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chrono::{Datelike, NaiveDate, Weekday};
use edubrain_agent::province::{self, ProvinceSpec};
use edubrain_agent::simulate::{SimulationSpec, local_offset, simulate};
use edubrain_cloud::Warehouse;
use edubrain_cloud::analytics::gaps::{GapReport, Scope};
use edubrain_cloud::analytics::utilisation::{GroupBy, utilisation};
use edubrain_cloud::analytics::{DateRange, partition, recommend, zones};
use edubrain_cloud::batch::StoredEvent;
use edubrain_cloud::config::{QueryLimits, RecommendationWeights, Thresholds, ZoneTargets};
use edubrain_schemas::Event;

// The cloud binary's allocator (cloud/src/main.rs), so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 3;
const FLUSH_MAX_EVENTS: f64 = 100_000.0;
const FLUSH_INTERVAL_S: f64 = 1.0;

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// CPU seconds of this process (user + system) and its peak RSS in bytes.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    (ticks / 100.0, hwm_kb * 1024)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs one of this bench's Python baselines (`benches/{script}`) and returns the JSON object it
/// prints.
fn run_python(python: &Path, script: &str, args: &[&OsStr]) -> serde_json::Value {
    let run = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/bench installs duckdb and pyarrow)", python.display()));
    assert!(run.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(&run.stdout).unwrap()
}

/// Events/s per CPU-second of DuckDB turning `sample` (JSON lines) into Parquet
/// (`benches/duckdb_ingest.py`), checked to have kept all `events`.
fn duckdb_ingest(python: &Path, sample: &Path, out: &Path, events: usize) -> f64 {
    let report = run_python(python, "duckdb_ingest.py", &[sample.as_ref(), out.as_ref()]);
    let _ = std::fs::remove_file(out);
    assert_eq!(report["events"].as_u64(), Some(events as u64), "DuckDB wrote every sampled event");
    events as f64 / report["cpu_s"].as_f64().unwrap()
}

/// Seconds of the suite's parts that are not SQL: scoring every school's recommendations, the
/// registry's gap report, the zone partitions.
#[derive(Debug, Default, Clone, Copy)]
struct RustSide {
    recommend_s: f64,
    gaps_s: f64,
    partitions_s: f64,
}

async fn suite(w: &Warehouse, schools: &[edubrain_schemas::School]) -> RustSide {
    let (t, zt, weights) = (Thresholds::default(), ZoneTargets::default(), RecommendationWeights::default());
    let all = DateRange::default();
    for by in GroupBy::ALL {
        utilisation(w, by, all, &t).await.unwrap();
    }
    zones::load(w, all, &zt).await.unwrap();
    edubrain_cloud::api::summary_json(w, &t, all).await.unwrap();
    let inputs = recommend::load_inputs(w, all).await.unwrap();
    let start = Instant::now();
    for s in schools {
        recommend::recommend(&inputs, &s.school_id, &weights, 10);
    }
    let recommend_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    GapReport::build(schools, &Scope::ALL, &t);
    let gaps_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut counties: Vec<&str> = schools.iter().map(|s| s.county.as_str()).collect();
    counties.dedup();
    for c in counties {
        let _ = partition::suggest(schools, c, 2, zt.partition_max_spread);
    }
    RustSide { recommend_s, gaps_s, partitions_s: start.elapsed().as_secs_f64() }
}

fn main() {
    let target = env_num("EDUBRAIN_BENCH_WAREHOUSE_EVENTS", 5_000_000.0) as u64;
    let arrival_rate = env_num("EDUBRAIN_BENCH_ARRIVAL_RATE", 50_000.0);
    let python = std::env::var("EDUBRAIN_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/edubrain/tools/bench-venv/bin/python"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("EDUBRAIN_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let dir = dir.as_path();
    let root = dir.join("warehouse");
    // Written once the warehouse of this count is complete (ingested and compacted).
    let complete = dir.join(format!("complete-{target}.json"));
    let reused: Option<serde_json::Value> = std::fs::read(&complete).ok().map(|b| serde_json::from_slice(&b).unwrap());
    // 8 cities × 4 alliances × 10 schools × 10 rooms: about 250,000 events a school day.
    let province = province::build(&ProvinceSpec {
        seed: 2026,
        cities: 8,
        alliances_per_city: 4,
        schools_per_alliance: 10,
        classrooms_per_school: 10,
    });
    let registry = dir.join("registry.csv");
    edubrain_agent::write_registry(&province, &registry).unwrap();

    // 1 + 2: ingest, flush by flush, as the consumer would at `arrival_rate`.
    let flush_events = (arrival_rate * FLUSH_INTERVAL_S).clamp(1.0, FLUSH_MAX_EVENTS) as usize;
    let fill_s = flush_events as f64 / arrival_rate;
    let (mut total, mut files, mut bytes, mut seq) = (0u64, 0u64, 0u64, 0u64);
    let (mut ingest_wall, mut ingest_cpu, mut simulate_wall) = (0.0, 0.0, 0.0);
    let mut freshness = Vec::new();
    // The first flushes' events, as JSON lines, for the DuckDB ingest baseline (whole flushes
    // of at least this many events), and what ingesting them cost here.
    let sample_target = env_num("EDUBRAIN_BENCH_INGEST_BASELINE_EVENTS", 1_000_000.0).min(target as f64) as usize;
    let sample_path = dir.join("ingest-sample.ndjson");
    let mut sample = std::io::BufWriter::new(std::fs::File::create(&sample_path).unwrap());
    let (mut sampled, mut sample_cpu) = (0usize, 0.0);
    let mut day = NaiveDate::from_ymd_opt(2025, 9, 1).unwrap();
    let mut days = 0;
    println!(
        "==> warehouse bench: {target} events, flush every {flush_events} events (arrival {arrival_rate:.0}/s), into {}",
        root.display()
    );
    if reused.is_none() {
        // A run that stopped half-way leaves files behind; start from nothing.
        let _ = std::fs::remove_dir_all(&root);
    }
    while reused.is_none() && total < target {
        let t = Instant::now();
        let events = simulate(&province, &SimulationSpec { first_day: day, school_days: 1, heartbeat_minutes: 10, seed: days });
        let take = ((target - total) as usize).min(events.len());
        let payloads: Vec<Vec<u8>> = events[..take].iter().map(Event::to_json).collect();
        drop(events);
        simulate_wall += t.elapsed().as_secs_f64();
        for chunk in payloads.chunks(flush_events) {
            let in_sample = sampled < sample_target;
            if in_sample {
                for payload in chunk {
                    sample.write_all(payload).unwrap();
                    sample.write_all(b"\n").unwrap();
                }
            }
            let (cpu0, _) = usage();
            let t = Instant::now();
            let stored: Vec<StoredEvent> = chunk
                .iter()
                .map(|b| {
                    let event = Event::from_json(b).expect("the simulator's events decode");
                    StoredEvent { received_time: event.header.event_time, event, clock_flag: None }
                })
                .collect();
            let (f, b) = edubrain_cloud::sink::write_events(&root, &format!("part-{seq:016x}.parquet"), &stored, local_offset()).unwrap();
            let write_s = t.elapsed().as_secs_f64();
            ingest_wall += write_s;
            let cpu = usage().0 - cpu0;
            ingest_cpu += cpu;
            if in_sample {
                (sampled, sample_cpu) = (sampled + chunk.len(), sample_cpu + cpu);
            }
            (files, bytes, seq) = (files + f, bytes + b, seq + 1);
            // Arrivals spread evenly over the fill time: the k-th of 20 waits (1 - k/20) of it.
            let fill = fill_s * chunk.len() as f64 / flush_events as f64;
            freshness.extend((0..20).map(|k| fill * (1.0 - k as f64 / 20.0) + write_s));
        }
        total += take as u64;
        days += 1;
        day = day.succ_opt().unwrap();
        while matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            day = day.succ_opt().unwrap();
        }
        if days % 20 == 0 {
            println!("    {total} events, {days} school days, {:.0} events/s", total as f64 / ingest_wall);
        }
    }
    freshness.sort_by(f64::total_cmp);
    let per_core = total as f64 / ingest_cpu;
    sample.into_inner().unwrap().sync_all().unwrap();
    let ingest_baseline = (sampled > 0).then(|| duckdb_ingest(&python, &sample_path, &dir.join("ingest-sample.parquet"), sampled));
    let _ = std::fs::remove_file(&sample_path);

    // Compaction, as ingest runs it (here all at once, before the suite; the run with
    // EDUBRAIN_BENCH_COMPACT=0 shows the suite on the files as ingest left them).
    let compact = env_num("EDUBRAIN_BENCH_COMPACT", 1.0) > 0.0;
    let mut files_before = files;
    let mut compact_s = 0.0;
    if let Some(r) = &reused {
        let n = |k: &str| r[k].as_u64().unwrap();
        (total, days, files_before, files, bytes) = (n("events"), n("school_days"), n("files_before"), n("files"), n("bytes"));
        println!("==> reusing the warehouse in {} ({total} events, {files} files): ingest not measured", root.display());
    } else if compact {
        let t = Instant::now();
        let cfg = edubrain_cloud::maintenance::MaintenanceConfig { compact_min_files: 2, ..Default::default() };
        loop {
            // Each run merges up to max_merge_bytes per partition; repeat until nothing is left.
            let r = edubrain_cloud::maintenance::run(&root, &cfg, day, std::time::Duration::ZERO).unwrap();
            files -= r.files_merged;
            files += r.partitions_compacted;
            if r.partitions_compacted == 0 {
                break;
            }
        }
        compact_s = t.elapsed().as_secs_f64();
    }
    if reused.is_none() {
        let summary = serde_json::json!({"events": total, "school_days": days, "files_before": files_before, "files": files, "bytes": bytes, "compacted": compact});
        std::fs::write(&complete, summary.to_string()).unwrap();
    }

    // 3: the analytics suite, DataFusion then DuckDB.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let schools = edubrain_cloud::registry::load(&registry).unwrap();
    let limits = QueryLimits {
        memory_limit_bytes: 8 << 30,
        file_listing_ttl_ms: env_num("EDUBRAIN_BENCH_FILE_LISTING_TTL_MS", QueryLimits::default().file_listing_ttl_ms as f64) as u64,
        ..QueryLimits::default()
    };
    println!("\nFile listings kept for {} ms between queries (EDUBRAIN_BENCH_FILE_LISTING_TTL_MS)", limits.file_listing_ttl_ms);
    let (w, log) = rt.block_on(Warehouse::open_with_limits(&root, schools.clone(), &limits)).unwrap().with_query_log();
    let (mut df_runs, mut rust_side) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        let t = Instant::now();
        rust_side.push(rt.block_on(suite(&w, &schools)));
        df_runs.push(t.elapsed().as_secs_f64());
    }
    // Every run issues the same queries; DuckDB replays the first run's.
    let (queries, df_sql_runs): (Vec<(String, usize)>, Vec<f64>) = {
        let all = log.lock().unwrap();
        let per_run = all.len() / REPEATS;
        let sql_time = all.chunks(per_run).map(|run| run.iter().map(|q| q.2).sum()).collect();
        (all[..per_run].iter().map(|(q, rows, _)| (q.clone(), *rows)).collect(), sql_time)
    };
    let queries_path = dir.join("queries.json");
    std::fs::write(&queries_path, serde_json::to_vec(&queries).unwrap()).unwrap();
    let repeats = REPEATS.to_string();
    let duck = run_python(&python, "duckdb_suite.py", &[root.as_ref(), registry.as_ref(), queries_path.as_ref(), repeats.as_ref()]);
    let duck_runs: Vec<f64> = duck["runs_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (_, peak_rss) = usage();

    let (df, df_sql, dk) = (median(df_runs.clone()), median(df_sql_runs.clone()), median(duck_runs.clone()));
    println!("\nIngest (decode, Arrow, Parquet zstd, fsync, rename), one thread:");
    println!(
        "  events                {total} over {days} school days, {files_before} files, {:.1} MB ({:.1} bytes/event)",
        bytes as f64 / 1e6,
        bytes as f64 / total as f64
    );
    if reused.is_none() {
        println!("  events/s (wall)       {:.0}", total as f64 / ingest_wall);
        println!("  events/s per core     {per_core:.0}   (target >= 300,000: {})", if per_core >= 300_000.0 { "met" } else { "NOT met" });
        if let Some(duck) = ingest_baseline {
            let ours = sampled as f64 / sample_cpu;
            println!(
                "  baseline, the first {sampled} events: here {ours:.0}/s per core; DuckDB (read_ndjson to one Parquet zstd file, \
                 no validation or partitioning) {duck:.0}/s per core; ratio {:.2}x DuckDB's rate",
                ours / duck
            );
        }
        println!("  (simulating them took {simulate_wall:.1} s, not counted)");
        let (p50, p99) = (percentile(&freshness, 0.5), percentile(&freshness, 0.99));
        println!("Freshness, consumer to queryable, at {arrival_rate:.0} events/s:");
        println!(
            "  p50 {p50:.2} s   p99 {p99:.2} s   (target p99 <= 5 s: {}; ingest {} the arrival rate)",
            if p99 <= 5.0 { "met" } else { "NOT met" },
            if per_core >= arrival_rate { "keeps up with" } else { "does NOT keep up with" }
        );
    } else {
        println!("  reused from {}: ingest and freshness not measured in this run", complete.display());
    }
    if reused.is_some() {
        println!("Files as a previous run left them: {files}");
    } else if compact {
        println!("Compaction: {files_before} files into {files} in {compact_s:.1} s");
    } else {
        println!("No compaction (EDUBRAIN_BENCH_COMPACT=0): {files} files");
    }
    println!("Analytics suite ({} queries), median of {REPEATS}:", queries.len());
    println!("  whole suite (SQL + scoring, gaps, partitions in Rust)  {df:.2} s   runs {df_runs:.2?}");
    let part = |f: fn(&RustSide) -> f64| median(rust_side.iter().map(f).collect());
    println!(
        "  of which in Rust: recommendations for {} schools {:.2} s, gap report {:.2} s, zone partitions {:.2} s",
        schools.len(),
        part(|r| r.recommend_s),
        part(|r| r.gaps_s),
        part(|r| r.partitions_s)
    );
    println!("  its SQL in DataFusion  {df_sql:.2} s   runs {df_sql_runs:.2?}");
    println!("  the same SQL in DuckDB {dk:.2} s   runs {duck_runs:.2?}");
    println!(
        "  ratio DataFusion/DuckDB {:.2}x on the SQL   (target <= 1.0x: {})",
        df_sql / dk,
        if df_sql <= dk { "met" } else { "NOT met" }
    );
    // Per query: DataFusion's fastest of its runs against DuckDB's fastest run, the queries
    // that cost the most beyond DuckDB first.
    let query_s: Vec<f64> = duck["query_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let df_query_s: Vec<f64> = {
        let all = log.lock().unwrap();
        (0..queries.len()).map(|i| all.iter().skip(i).step_by(queries.len()).map(|q| q.2).fold(f64::INFINITY, f64::min)).collect()
    };
    let mut excess: Vec<usize> = (0..queries.len()).collect();
    excess.sort_by(|&a, &b| (df_query_s[b] - query_s[b]).total_cmp(&(df_query_s[a] - query_s[a])));
    let shown = env_num("EDUBRAIN_BENCH_SHOW_QUERIES", 5.0) as usize;
    println!("  the {shown} queries furthest behind DuckDB (DataFusion s, DuckDB s, ratio):");
    for &i in excess.iter().take(shown) {
        println!(
            "    {:.3} {:.3} {:>5.2}x  {}",
            df_query_s[i],
            query_s[i],
            df_query_s[i] / query_s[i],
            queries[i].0.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(100).collect::<String>()
        );
    }
    println!(
        "Files read back: pyarrow {} rows, DuckDB {} rows; row-count mismatches with DataFusion: {}",
        duck["pyarrow_rows"], duck["duckdb_rows"], duck["row_count_mismatches"]
    );
    println!("Peak RSS of the bench process: {:.0} MB", peak_rss as f64 / 1e6);
    assert_eq!(duck["pyarrow_rows"].as_u64(), Some(total), "pyarrow reads every event");
    assert_eq!(duck["duckdb_rows"].as_u64(), Some(total), "DuckDB reads every event");
}

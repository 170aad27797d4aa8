//! A Flight SQL stream keeps the files it listed: while a BI client reads a result slowly,
//! compaction may not swap the files under it (the stream's lease, `StreamLeases`); once the
//! stream ends, it may. A client that stops reading altogether holds the lease only up to the
//! query's time limit, and then gets DEADLINE_EXCEEDED, not a silently short result.
//!
//! The client is ADBC's Flight SQL driver from PyPI (`flight_sql_client.py`, op `slow_read`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use chrono::NaiveDate;
use edubrain_agent::province::{self, ProvinceSpec};
use edubrain_agent::simulate::{SimulationSpec, local_offset, simulate};
use edubrain_cloud::access::{AccessConfig, Role};
use edubrain_cloud::batch::StoredEvent;
use edubrain_cloud::config::{FlightSqlConfig, QueryLimits};
use edubrain_cloud::maintenance::{MaintenanceConfig, run as maintain};
use edubrain_cloud::{CloudMetrics, Warehouse};
use serde_json::{Value, json};

const TOKEN: &str = "t-province-stream";
const FILES: usize = 40;
const TIME_LIMIT_MS: u64 = 6_000;
/// Each event 16 times over: far more than the client's and gRPC's buffers hold, so a client
/// that pauses really holds the stream up.
const TIMES: usize = 16;
const SQL: &str = "SELECT e.* FROM events e CROSS JOIN generate_series(1, 16) AS t";

/// Runs the ADBC client on one `slow_read` case; returns its answer once it reads the first
/// batch (the sender is told) and when it is done.
fn slow_read(uri: &str, sql: &str, pause_secs: f64, first_batch: std::sync::mpsc::Sender<()>) -> Value {
    let case = json!([{ "uri": uri, "auth": { "bearer": TOKEN }, "op": "slow_read", "sql": sql, "pause": pause_secs }]);
    let (mut child, script) = common::adbc_client(&case, Stdio::piped());
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line == "first batch read" {
                let _ = first_batch.send(());
            } else {
                eprintln!("client: {line}");
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed: {}", out.status);
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    answers.into_iter().next().unwrap()
}

/// Starts [`slow_read`] of [`SQL`] on the blocking pool and returns once the client has read its
/// first batch; the handle gives its answer.
async fn start_slow_read(uri: &str, pause_secs: f64) -> tokio::task::JoinHandle<Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    let uri = uri.to_string();
    let client = tokio::task::spawn_blocking(move || slow_read(&uri, SQL, pause_secs, tx));
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60))).await.unwrap().expect("the client read a first batch");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_off_compaction_until_it_ends_or_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("warehouse");
    // One city's school day, in 40 small files: a stream of many batches over many files.
    let p = province::build(&ProvinceSpec { seed: 3, cities: 1, alliances_per_city: 1, schools_per_alliance: 4, classrooms_per_school: 3 });
    let events = simulate(
        &p,
        &SimulationSpec { first_day: NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(), school_days: 1, heartbeat_minutes: 1, seed: 3 },
    );
    let total = events.len();
    let stored: Vec<StoredEvent> =
        events.into_iter().map(|event| StoredEvent { received_time: event.header.event_time, event, clock_flag: None }).collect();
    for (i, chunk) in stored.chunks(total.div_ceil(FILES)).enumerate() {
        edubrain_cloud::sink::write_events(&root, &format!("part-{i:03}.parquet"), chunk, local_offset()).unwrap();
    }

    let warehouse = Warehouse::open(&root, Vec::new(), 1 << 30).await.unwrap();
    let metrics = CloudMetrics::new();
    let mut access = AccessConfig::default();
    access.add("dc", Role::Province, TOKEN);
    let state = common::app_state(warehouse.clone(), &access, QueryLimits::default(), &dir.path().join("audit"), &metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("grpc://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let limits = FlightSqlConfig { listen: None, max_rows: 1_000_000, timeout_ms: TIME_LIMIT_MS };
    tokio::spawn(edubrain_cloud::flight::serve(state, limits, listener, shutdown.clone()));
    let leases = warehouse.stream_leases().clone();
    let compaction = MaintenanceConfig { compact_min_files: 3, ..MaintenanceConfig::default() };
    let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();

    // A client that pauses 1.5 s after its first batch: the stream holds its lease throughout,
    // so maintenance may not swap; every row arrives.
    let client = start_slow_read(&uri, 1.5).await;
    assert!(leases.try_exclusive().is_none(), "the open stream holds its lease: compaction must wait");
    let answer = client.await.unwrap();
    eprintln!("slow client: {answer}");
    assert_eq!(answer["ok"], json!(true), "{answer}");
    assert_eq!(answer["rows"].as_u64(), Some((total * TIMES) as u64), "{answer}");
    let batches = answer["batches"].as_u64().unwrap();
    assert!(batches > 10, "a stream of many batches: {batches}");
    // The cross join emits one 16-row batch per event; the server coalesces them rather than
    // sending thousands of tiny Flight messages.
    assert!(batches < (total / 100) as u64, "small batches are coalesced: {batches} for {} rows", total * TIMES);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let swap = leases.try_exclusive().expect("the stream ended: its lease is released");
    let report = maintain(&root, &compaction, today, Duration::ZERO).unwrap();
    drop(swap);
    assert!(report.files_merged >= FILES as u64 / 2, "compaction ran once the stream ended: {report:?}");
    let n = warehouse.query_json("SELECT COUNT(*) AS n FROM events").await.unwrap()[0]["n"].as_u64();
    assert_eq!(n, Some(total as u64));

    // A client that stops reading for longer than the time limit: its lease goes at the limit,
    // and its stream ends with an error, never as a short result.
    let client = start_slow_read(&uri, 10.0).await;
    assert!(leases.try_exclusive().is_none(), "the stream holds its lease while it is within its time limit");
    tokio::time::sleep(Duration::from_millis(TIME_LIMIT_MS + 1_500)).await;
    assert!(leases.try_exclusive().is_some(), "past the time limit the stalled stream gave up its lease");
    let answer = client.await.unwrap();
    eprintln!("stalled client: {answer}");
    assert_eq!(answer["ok"], json!(false), "a short result must not look complete: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("time limit"), "{answer}");
    shutdown.cancel();
}

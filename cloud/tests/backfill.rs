//! Backfill beside a serving cloud, through a real Kafka-protocol broker (Tansu): two waves of
//! events are ingested, a day's files and a city's files are then lost, and backfill brings them
//! back, from Kafka for the second wave's time range and from exported JSON lines for the first
//! wave's day, while the cloud keeps ingesting and compacting. Every event ends up in the
//! warehouse exactly once; running a backfill again adds nothing; the CLI prints the counts.

mod kafka_events;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use edubrain_cloud::backfill::{self, BackfillProgress, Source, TimeRange};
use edubrain_cloud::{CloudConfig, Warehouse};
use edubrain_schemas::event::{BandwidthSampled, EventBody};
use edubrain_schemas::{Event, Header, SCHEMA_VERSION, School};
use tokio_util::sync::CancellationToken;

const WAVE: u128 = 1_000;

/// Wave 0 happened on 16 November, wave 1 on 17 November (local school days); even events in
/// city c01, odd ones in c02.
fn event(n: u128) -> Event {
    let wave = (n / WAVE) as u32;
    Event {
        header: Header {
            event_id: uuid::Uuid::from_u128(0xbacf_0000_0000 + n),
            schema_version: SCHEMA_VERSION,
            city: if n.is_multiple_of(2) { "c01" } else { "c02" }.into(),
            school: format!("s{}", n % 7),
            classroom: format!("r{}", n % 13),
            terminal: format!("t{}", n % 13),
            event_time: Utc.with_ymd_and_hms(2026, 11, 16 + wave, 1, 0, 0).unwrap() + chrono::Duration::seconds((n % WAVE) as i64),
        },
        body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: n as f64, up_kbps: 1.0 }),
    }
}

async fn ids_in(root: &Path) -> (u64, BTreeSet<String>) {
    let w = Warehouse::open(root, Vec::<School>::new(), 1 << 30).await.unwrap();
    let rows = w.query_json("SELECT event_id FROM events").await.unwrap();
    let ids: BTreeSet<String> = rows.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect();
    (rows.len() as u64, ids)
}

fn ids(range: std::ops::Range<u128>, keep: impl Fn(u128) -> bool) -> BTreeSet<String> {
    range.filter(|n| keep(*n)).map(|n| event(n).header.event_id.to_string()).collect()
}

async fn backfill(config: &CloudConfig, range: TimeRange, source: &Source) -> BackfillProgress {
    let mut reports = 0;
    let p = backfill::run(config, range, source, CancellationToken::new(), &mut |_| reports += 1).await.unwrap();
    assert!(reports >= 1, "progress was never reported");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_files_come_back_from_kafka_and_exports_exactly_once_beside_a_serving_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = edubrain_brokers::Tansu::start(&dir.path().join("tansu"), edubrain_brokers::Storage::Memory).unwrap();
    let producer = kafka_events::events_topic(&tansu.bootstrap(), 3).await;
    let produce = |wave: u128| {
        let producer = producer.clone();
        async move { kafka_events::produce(&producer, (wave * WAVE..(wave + 1) * WAVE).map(event)).await }
    };

    // A serving cloud with small flushes and eager compaction, so maintenance runs throughout.
    let root = dir.path().join("warehouse");
    let config_path = dir.path().join("cloud.toml");
    kafka_events::write_cloud_config(&config_path, &root, &tansu.bootstrap(), 100, 2, 0);
    let config = CloudConfig::load(&config_path).unwrap();
    let shutdown = CancellationToken::new();
    let cloud = edubrain_cloud::start(config.clone(), shutdown.clone()).await.unwrap();

    produce(0).await;
    // Kafka timestamps are produce times: wave 1's records all come after this instant.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let between = Utc::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    produce(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = *cloud.progress.borrow();
        if p.events_written >= 2 * WAVE as u64 && p.lag == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ingest did not catch up: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let everything = ids(0..2 * WAVE, |_| true);
    assert_eq!(ids_in(&root).await, (2 * WAVE as u64, everything.clone()));

    // Lost: all of 17 November (wave 1), and city c01 of 16 November (half of wave 0).
    std::fs::remove_dir_all(root.join("events/date=2026-11-17")).unwrap();
    std::fs::remove_dir_all(root.join("events/date=2026-11-16/city=c01")).unwrap();
    let left = ids(0..WAVE, |n| n % 2 == 1);
    assert_eq!(ids_in(&root).await.1, left);

    // From Kafka, the range of wave 1's records: exactly the lost wave comes back.
    let wave1 = TimeRange::new(between, Utc::now()).unwrap();
    let p = backfill(&config, wave1, &Source::Kafka).await;
    println!("backfill from Kafka: {p:?}");
    assert_eq!((p.unit, p.total, p.position), ("records", WAVE as u64, WAVE as u64));
    assert_eq!((p.events_written, p.already_present, p.outside_range, p.invalid, p.left_to_ingest), (WAVE as u64, 0, 0, 0, 0));
    let (rows, now) = ids_in(&root).await;
    assert_eq!(now, left.union(&ids(WAVE..2 * WAVE, |_| true)).cloned().collect());
    assert_eq!(rows, now.len() as u64, "an event twice");

    // Again: nothing to add.
    let again = backfill(&config, wave1, &Source::Kafka).await;
    assert_eq!((again.events_written, again.already_present), (0, WAVE as u64));

    // From an export of 16 November (local time): wave 0 as JSON lines in two files, plus a
    // line that is not an event and an event of another day.
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let lines = |r: std::ops::Range<u128>| r.map(|n| String::from_utf8(event(n).to_json()).unwrap() + "\n").collect::<String>();
    std::fs::write(export.join("a.jsonl"), lines(0..WAVE / 2) + "{\"type\": \"not an event\"}\n").unwrap();
    std::fs::write(export.join("b.jsonl"), lines(WAVE / 2..WAVE) + &lines(WAVE..WAVE + 1)).unwrap();
    let zone = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    let local = |d: u32| -> DateTime<Utc> { zone.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap().with_timezone(&Utc) };
    let day = TimeRange::new(local(16), local(17)).unwrap();
    let p = backfill(&config, day, &Source::Files(export.clone())).await;
    println!("backfill from files: {p:?}");
    assert_eq!(p.unit, "bytes");
    assert_eq!(p.position, p.total);
    assert_eq!((p.events_written, p.already_present, p.outside_range, p.invalid), (WAVE as u64 / 2, WAVE as u64 / 2, 1, 1));
    assert_eq!(ids_in(&root).await, (2 * WAVE as u64, everything.clone()));

    // The operator's command, beside the serving cloud: the same export adds nothing now.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edubrain-cloud"))
        .args(["backfill", "--config"])
        .arg(&config_path)
        .args(["--from", "2026-11-16", "--to", "2026-11-17", "--files"])
        .arg(&export)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0 events written in 0 files; 1000 already in the warehouse; 1 outside the range; 1 invalid"), "{stdout}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_edubrain-cloud"))
        .args(["backfill", "--config"])
        .arg(&config_path)
        .args(["--from", "yesterday", "--to", "2026-11-17"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("\"yesterday\" is neither RFC 3339"));

    // Ingest and compaction went on throughout; still every event exactly once.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(ids_in(&root).await, (2 * WAVE as u64, everything));
    shutdown.cancel();
    cloud.wait().await.unwrap();
}

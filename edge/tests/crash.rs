//! The edge process is killed with SIGKILL at random moments while terminals publish (three
//! times; `EDUBRAIN_FAULT_SEED` replays a run, the seed is printed), and once its WAL is left
//! with a torn tail (a half-written frame, what a crash mid-append leaves). Every event the
//! terminals created still reaches the warehouse exactly once: the broker kept what the edge had
//! not acknowledged, the edge's WAL replayed what it had acknowledged but Kafka had not
//! confirmed, the terminals' outboxes resent what no ack came for, and repeats are dropped by
//! `event_id` at the edge and in the cloud.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, Pacing, ProvinceSpec, PublishProgress, broker_users, province, simulate};
use edubrain_brokers::{KillOnDrop, Mosquitto, Storage, Tansu};
use edubrain_cloud::CloudConfig;
use edubrain_schemas::identity::derived_password;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

fn spawn_edge(config: &std::path::Path, mqtt_port: u16, kafka: &str, log: &std::path::Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_edubrain-edge"))
            .arg("--config")
            .arg(config)
            .env("EDUBRAIN_EDGE_MQTT_PORT", mqtt_port.to_string())
            .env("EDUBRAIN_EDGE_KAFKA_BROKERS", kafka)
            .env("EDUBRAIN_EDGE_HTTP_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Appends the start of a frame whose declared length runs past the end of the newest segment.
fn append_torn_frame(wal: &std::path::Path) {
    let newest = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .expect("the edge has a WAL segment");
    let mut torn = 300u32.to_le_bytes().to_vec(); // length
    torn.extend_from_slice(&[0xab; 4]); // crc
    torn.extend_from_slice(&[0x01; 8]); // seq
    torn.extend_from_slice(b"{\"event_id\":"); // 12 of the 300 payload bytes
    std::fs::OpenOptions::new().append(true).open(&newest).unwrap().write_all(&torn).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_kill_9_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 5, cities: 1, alliances_per_city: 1, schools_per_alliance: 5, classrooms_per_school: 4 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let registry = dir.path().join("registry.csv");
    edubrain_agent::write_registry(&p, &registry).unwrap();
    let sim = edubrain_agent::SimulationSpec::one_day(NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(), 5);
    let events = simulate::simulate(&p, &sim);
    let ids: BTreeSet<String> = events.iter().map(|e| e.header.event_id.to_string()).collect();

    let shutdown = CancellationToken::new();
    let mut cloud_config = CloudConfig::on_loopback(dir.path().join("warehouse"), Some(registry), &tansu.bootstrap());
    cloud_config.ingest.flush_interval_ms = 200;
    let cloud = edubrain_cloud::start(cloud_config, shutdown.clone()).await.unwrap();

    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "city = \"c01\"\n[wal]\ndir = {:?}\n[mqtt]\nusername = \"edge-c01\"\npassword = {:?}\n",
            dir.path().join("edge-wal"),
            derived_password(DEMO_PROVISIONING_SECRET.as_bytes(), "edge-c01")
        ),
    )
    .unwrap();
    let log = dir.path().join("edge.log");
    let edge = spawn_edge(&config, mosquitto.port, &tansu.bootstrap(), &log);
    // The first start creates the persistent session; wait until it is subscribed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("edge subscribed") {
        assert!(tokio::time::Instant::now() < deadline, "edge did not connect: {}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Publish the school day (07:30-18:00) over 5 seconds of wall time; bookings made on
    // earlier days go out at once.
    let day_start = edubrain_agent::local_time(sim.first_day, 7, 30);
    let span = (edubrain_agent::local_time(sim.first_day, 18, 0) - day_start).num_seconds() as f64;
    let pacing = Pacing { sim_start: day_start, wall_start: tokio::time::Instant::now(), speed: span / 5.0 };
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    let progress = Arc::new(PublishProgress::default());
    let publisher = {
        let (events, progress, shutdown, dir) = (events.clone(), progress.clone(), shutdown.clone(), dir.path().to_path_buf());
        tokio::spawn(async move {
            let outbox = dir.join("outbox");
            edubrain_agent::publish_all_durable(&target, events, pacing, &outbox, &Default::default(), progress, shutdown).await
        })
    };

    // First kill mid-stream: 30% of the day published and some of it already delivered. Then
    // two more, each after a random uptime, each down for a random while.
    let seed: u64 = std::env::var("EDUBRAIN_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() as u64);
    eprintln!("EDUBRAIN_FAULT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rx = cloud.progress.clone();
    while progress.published() < events.len() as u64 * 3 / 10 || rx.borrow_and_update().events_written == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut edge = edge;
    let mut published_at_kills = Vec::new();
    for kill in 0..3 {
        if kill > 0 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        }
        drop(edge); // SIGKILL
        published_at_kills.push(progress.published());
        if kill == 1 {
            append_torn_frame(&dir.path().join("edge-wal"));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await; // terminals keep publishing
        edge = spawn_edge(&config, mosquitto.port, &tansu.bootstrap(), &log);
    }
    let published_at_kill = published_at_kills[0];

    let summary = publisher.await.unwrap().unwrap();
    assert_eq!(summary.acked, summary.created);
    assert!(
        published_at_kill > 0 && published_at_kill < summary.created,
        "the kill happened mid-stream ({published_at_kill} of {})",
        summary.created
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rx.borrow_and_update().events_written < summary.created {
        assert!(tokio::time::Instant::now() < deadline, "warehouse holds {} of {}", rx.borrow().events_written, summary.created);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let any straggling redelivery arrive, then check nothing is missing or doubled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = cloud.warehouse.query_json("SELECT event_id, COUNT(*) AS n FROM events GROUP BY event_id").await.unwrap();
    assert!(rows.iter().all(|r| r["n"] == 1), "an event is in the warehouse twice");
    let stored: BTreeSet<String> = rows.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored.len(), ids.len(), "missing {:?}", ids.difference(&stored).take(5).collect::<Vec<_>>());
    assert_eq!(stored, ids);
    eprintln!(
        "created {}, published at the kills {published_at_kills:?}, in the warehouse {}, redelivered duplicates dropped by the cloud {}",
        summary.created,
        stored.len(),
        cloud.metrics.events_duplicate.get()
    );

    // SIGTERM (what systemd and Kubernetes send) drains and exits cleanly.
    let status = Command::new("kill").args(["-TERM", &edge.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = edge.0.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "edge ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "edge exited with {exit}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("SIGTERM"));
    assert!(log.contains("torn_tail=true"), "the torn frame was found and set aside at the restart");
    shutdown.cancel();
    cloud.wait().await.unwrap();
}

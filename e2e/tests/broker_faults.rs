//! Broker faults under load, through real processes. Tansu runs on its durable (sqlite) engine.
//! Terminals keep publishing through their outboxes the whole time; when the fault heals, the
//! WAL drains, the cloud catches up, and every event created is in the warehouse exactly once.
//!
//! - Kafka killed (SIGKILL) for 60 s (override with `EDUBRAIN_FAULT_OUTAGE_SECS`), shorter than
//!   the producer's `message.timeout.ms`: the edge keeps acknowledging from its WAL and
//!   librdkafka retries on its own;
//! - Kafka killed for longer than `message.timeout.ms` (set to 3 s here): deliveries fail and
//!   the edge ships again from the oldest unconfirmed WAL record;
//! - Kafka frozen (SIGSTOP) past librdkafka's request timeout: connections stay open and
//!   nothing answers, the hang a dead network path or a stuck disk gives;
//! - the MQTT broker killed (SIGKILL) and restarted: messages it had acknowledged to terminals
//!   but not yet delivered to the edge are gone from it, and the terminals' outboxes resend them;
//! - a duplicate storm: the MQTT broker killed three times in a row, so every terminal
//!   reconnects and resends everything unacknowledged each time; dedup keeps each event once.
//!
//! The first of these found that a failed offset commit during the outage ended the cloud's
//! ingest for good; commits are now retried (cloud/src/ingest.rs).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, Pacing, ProvinceSpec, PublishProgress, broker_users, province, simulate};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_cloud::CloudConfig;
use edubrain_edge::EdgeConfig;
use tokio_util::sync::CancellationToken;

struct Counts {
    created: u64,
    acked_by_edge: u64,
    in_warehouse: u64,
    edge_replays: u64,
    edge_duplicates: u64,
    cloud_duplicates: u64,
    cloud_commit_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KafkaKilled,
    KafkaFrozen,
    MqttKilled,
    /// Three MQTT kills a second apart.
    MqttFlapping,
}

async fn outage(fault: Fault, outage: Duration, message_timeout_ms: Option<u64>) -> Counts {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 21, cities: 1, alliances_per_city: 1, schools_per_alliance: 4, classrooms_per_school: 3 };
    let p = province::build(&spec);
    let mut mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let mut tansu = Tansu::start(&dir.path().join("tansu"), Storage::Sqlite).unwrap();
    let registry = dir.path().join("registry.csv");
    edubrain_agent::write_registry(&p, &registry).unwrap();
    let sim = edubrain_agent::SimulationSpec::one_day(NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(), 21);
    let events = simulate::simulate(&p, &sim);
    let ids: BTreeSet<String> = events.iter().map(|e| e.header.event_id.to_string()).collect();

    let shutdown = CancellationToken::new();
    let mut edge_config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.login_with(DEMO_PROVISIONING_SECRET);
    if let Some(ms) = message_timeout_ms {
        edge_config.kafka.producer.insert("message.timeout.ms".into(), ms.to_string());
    }
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.unwrap();
    let mut cloud_config = CloudConfig::on_loopback(dir.path().join("warehouse"), Some(registry), &tansu.bootstrap());
    cloud_config.ingest.flush_interval_ms = 200;
    // Compaction runs every second through the fault: merging files must not lose or double
    // an event either.
    cloud_config.maintenance.compact_min_files = 3;
    cloud_config.maintenance.interval_secs = 1;
    let cloud = edubrain_cloud::start(cloud_config, shutdown.clone()).await.unwrap();
    while edge.metrics.mqtt_subscribed.get() != 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The school day over 20 s of wall time, so the outage falls in the middle of the load.
    let day_start = edubrain_agent::local_time(sim.first_day, 7, 30);
    let span = (edubrain_agent::local_time(sim.first_day, 18, 0) - day_start).num_seconds() as f64;
    let pacing = Pacing { sim_start: day_start, wall_start: tokio::time::Instant::now(), speed: span / 20.0 };
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    let progress = Arc::new(PublishProgress::default());
    let publisher = {
        let (events, progress, shutdown, outbox) = (events.clone(), progress.clone(), shutdown.clone(), dir.path().join("outbox"));
        tokio::spawn(async move {
            edubrain_agent::publish_all_durable(&target, events, pacing, &outbox, &Default::default(), progress, shutdown).await
        })
    };

    let mut rx = cloud.progress.clone();
    while progress.published() < events.len() as u64 / 4 || rx.borrow_and_update().events_written == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_before = progress.acked();
    let mqtt_errors_before = edge.metrics.mqtt_connection_errors.get();
    match fault {
        Fault::KafkaKilled => tansu.kill9(),
        Fault::KafkaFrozen => tansu.freeze().unwrap(),
        Fault::MqttKilled => mosquitto.kill9(),
        Fault::MqttFlapping => {
            for _ in 0..2 {
                mosquitto.kill9();
                tokio::time::sleep(outage).await;
                mosquitto.restart().unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            mosquitto.kill9();
        }
    }
    tokio::time::sleep(outage).await;
    let acked_during = progress.acked() - acked_before;
    if matches!(fault, Fault::MqttKilled | Fault::MqttFlapping) {
        assert!(edge.metrics.mqtt_connection_errors.get() > mqtt_errors_before, "the edge saw the broker go");
    } else {
        assert!(acked_during > 0, "the edge kept acknowledging from its WAL while Kafka was down");
        assert!(edge.metrics.wal_unconfirmed_records.get() > 0, "the WAL held what Kafka could not take");
    }
    match fault {
        Fault::KafkaKilled => tansu.restart().unwrap(),
        Fault::KafkaFrozen => tansu.thaw().unwrap(),
        Fault::MqttKilled | Fault::MqttFlapping => mosquitto.restart().unwrap(),
    }

    let summary = publisher.await.unwrap().unwrap();
    assert_eq!(summary.acked, summary.created, "every event was acknowledged by the edge");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rx.borrow_and_update().events_written < summary.created {
        assert!(
            tokio::time::Instant::now() < deadline,
            "warehouse holds {} of {}; edge:\n{}\ncloud:\n{}",
            rx.borrow().events_written,
            summary.created,
            edge.metrics.render(),
            cloud.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while edge.metrics.wal_unconfirmed_records.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "WAL did not drain: {}", edge.metrics.wal_unconfirmed_records.get());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = cloud.warehouse.query_json("SELECT event_id, COUNT(*) AS n FROM events GROUP BY event_id").await.unwrap();
    assert!(rows.iter().all(|r| r["n"] == 1), "an event is in the warehouse twice");
    let stored: BTreeSet<String> = rows.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored.len(), ids.len(), "missing {:?}", ids.difference(&stored).take(5).collect::<Vec<_>>());
    assert_eq!(stored, ids);
    assert!(cloud.metrics.maintenance_files_merged.get() > 0, "compaction ran during the test");
    assert_eq!(cloud.metrics.maintenance_errors.get(), 0);
    let counts = Counts {
        created: summary.created,
        acked_by_edge: summary.acked,
        in_warehouse: stored.len() as u64,
        edge_replays: edge.metrics.kafka_replays.get(),
        edge_duplicates: edge.metrics.events_duplicate.get(),
        cloud_duplicates: cloud.metrics.events_duplicate.get(),
        cloud_commit_errors: cloud.metrics.commit_errors.get(),
    };
    eprintln!(
        "{fault:?} for {outage:?}: created {}, acked by the edge {} ({acked_during} during the outage), in the warehouse {}, edge replays {}, duplicates dropped by the edge {} and the cloud {}, cloud offset commits retried {}, files merged by compaction {}",
        counts.created,
        counts.acked_by_edge,
        counts.in_warehouse,
        counts.edge_replays,
        counts.edge_duplicates,
        counts.cloud_duplicates,
        counts.cloud_commit_errors,
        cloud.metrics.maintenance_files_merged.get()
    );
    shutdown.cancel();
    edge.wait().await.unwrap();
    cloud.wait().await.unwrap();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_killed_for_a_minute_loses_nothing() {
    let secs = std::env::var("EDUBRAIN_FAULT_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let c = outage(Fault::KafkaKilled, Duration::from_secs(secs), None).await;
    assert_eq!(c.in_warehouse, c.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_beyond_message_timeout_is_replayed_from_the_wal() {
    let c = outage(Fault::KafkaKilled, Duration::from_secs(12), Some(3000)).await;
    assert_eq!(c.in_warehouse, c.created);
    assert!(c.edge_replays > 0, "deliveries failed and were shipped again from the WAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_frozen_past_the_request_timeout_loses_nothing() {
    // librdkafka's request.timeout.ms is 30 s by default: requests to the frozen broker time out
    // and are retried on the same (idempotent) producer; the cloud's commits fail and are retried.
    let c = outage(Fault::KafkaFrozen, Duration::from_secs(35), None).await;
    assert_eq!(c.in_warehouse, c.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_killed_loses_nothing() {
    let c = outage(Fault::MqttKilled, Duration::from_secs(5), None).await;
    assert_eq!(c.in_warehouse, c.created);
    assert_eq!(c.acked_by_edge, c.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_storm_of_forced_reconnects_keeps_each_event_once() {
    let c = outage(Fault::MqttFlapping, Duration::from_secs(2), None).await;
    assert_eq!(c.in_warehouse, c.created);
    assert_eq!(c.acked_by_edge, c.created);
}

/// An edge (re)started while Kafka is down still takes its city's events: after a short wait
/// for the brokers it opens for business, acknowledges into its WAL, and creates the topics and
/// ships the WAL once Kafka is back. Before, it waited at start-up for Kafka and acknowledged
/// nothing meanwhile, leaving the whole city's events in the terminals' outboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_started_while_kafka_is_down_acknowledges_into_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 8, cities: 1, alliances_per_city: 1, schools_per_alliance: 2, classrooms_per_school: 2 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let mut tansu = Tansu::start(&dir.path().join("tansu"), Storage::Sqlite).unwrap();
    tansu.kill9();
    let sim = edubrain_agent::SimulationSpec::one_day(NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(), 8);
    let events = simulate::simulate(&p, &sim);
    let ids: BTreeSet<String> = events.iter().map(|e| e.header.event_id.to_string()).collect();

    let shutdown = CancellationToken::new();
    let mut edge_config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.login_with(DEMO_PROVISIONING_SECRET);
    let started = tokio::time::Instant::now();
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.expect("the edge starts without Kafka");
    let startup = started.elapsed();
    edubrain_e2e::wait_subscribed(&edge).await;
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    let pacing = Pacing { sim_start: chrono::Utc::now(), wall_start: tokio::time::Instant::now(), speed: f64::INFINITY };
    let summary = edubrain_agent::publish_all_durable(
        &target,
        events.clone(),
        pacing,
        &dir.path().join("outbox"),
        &Default::default(),
        Arc::new(PublishProgress::default()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(summary.acked, summary.created, "every event acknowledged with Kafka down");
    let held = edge.metrics.wal_unconfirmed_records.get();
    assert!(held >= summary.created as i64, "the WAL holds them: {held}");

    tansu.restart().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while edge.metrics.wal_unconfirmed_records.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the WAL did not drain: {}", edge.metrics.wal_unconfirmed_records.get());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_kafka: Vec<String> = edubrain_e2e::read_to_end(&tansu.bootstrap(), edubrain_schemas::topics::KAFKA_EVENTS_TOPIC)
        .await
        .iter()
        .map(|(payload, _)| serde_json::from_slice::<serde_json::Value>(payload).unwrap()["event_id"].as_str().unwrap().to_string())
        .collect();
    eprintln!(
        "edge started without Kafka in {startup:?}; {} events acknowledged into the WAL ({held} records held); Kafka back: {} in Kafka",
        summary.created,
        in_kafka.len()
    );
    assert_eq!(in_kafka.len(), ids.len(), "each event once");
    assert_eq!(in_kafka.into_iter().collect::<BTreeSet<_>>(), ids);
    shutdown.cancel();
    edge.wait().await.unwrap();
}

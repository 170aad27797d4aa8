//! Keepalives never starve under load, and a full WAL stops acknowledgements without dropping
//! anything, through real Mosquitto, Tansu, edge and terminal processes' code.
//!
//! Every MQTT client here (the edge and each terminal) has a 1 s keepalive, so Mosquitto drops
//! any of them it hears nothing from for 1.5 s. A school day of events (a heartbeat a minute
//! from every classroom) is published over 20 s; a third of the way in, Kafka is frozen
//! (SIGSTOP) for 8 s. The edge's WAL is small (512 KiB), so it fills: the edge stops
//! acknowledging new events to the broker and to the terminals, the terminals stop getting acks
//! and hold their events in their outboxes, and the broker's queue for the edge grows. Through
//! all of that each client must keep its session alive, which only holds if its MQTT event loop
//! is polled whatever the rest of it waits for (edge: `poll_mqtt`; terminal: the poller task of
//! `publisher::send_outbox`). Then Kafka is thawed, and every event created reaches Kafka once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::NaiveDate;
use edubrain_agent::{
    DEMO_PROVISIONING_SECRET, MqttTarget, Pacing, ProvinceSpec, PublishProgress, SimulationSpec, broker_users, province, simulate,
};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_edge::EdgeConfig;
use edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEEPALIVE_SECS: u64 = 1;
const FROZEN: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_while_a_full_wal_stops_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 33, cities: 1, alliances_per_city: 1, schools_per_alliance: 4, classrooms_per_school: 3 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let day = NaiveDate::from_ymd_opt(2026, 11, 16).unwrap();
    let events = simulate::simulate(&p, &SimulationSpec { first_day: day, school_days: 1, heartbeat_minutes: 1, seed: 33 });
    let ids: BTreeSet<uuid::Uuid> = events.iter().map(|e| e.header.event_id).collect();

    let shutdown = CancellationToken::new();
    let mut edge_config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.login_with(DEMO_PROVISIONING_SECRET);
    edge_config.mqtt.keepalive_secs = KEEPALIVE_SECS;
    // The broker's own limit (deploy/mosquitto): a record then fits a 128 KiB segment.
    edge_config.mqtt.max_packet_bytes = 64 * 1024;
    edge_config.wal.segment_bytes = 128 * 1024;
    edge_config.wal.max_bytes = 512 * 1024;
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.unwrap();
    edubrain_e2e::wait_subscribed(&edge).await;

    let day_start = edubrain_agent::local_time(day, 7, 30);
    let span = (edubrain_agent::local_time(day, 18, 0) - day_start).num_seconds() as f64;
    let pacing = Pacing { sim_start: day_start, wall_start: Instant::now(), speed: span / 20.0 };
    let mut target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    target.keepalive_secs = KEEPALIVE_SECS;
    let progress = Arc::new(PublishProgress::default());
    let publisher = {
        let (events, progress, shutdown, outbox) = (events.clone(), progress.clone(), shutdown.clone(), dir.path().join("outbox"));
        tokio::spawn(async move {
            edubrain_agent::publish_all_durable(&target, events, pacing, &outbox, &Default::default(), progress, shutdown).await
        })
    };

    tokio::time::sleep(Duration::from_secs(6)).await;
    let connections = progress.connections.load(Ordering::Relaxed);
    assert!(connections >= 12, "every terminal connected: {connections}");
    tansu.freeze().unwrap();
    // Sample while Kafka is frozen: how long the WAL was full, and the longest stretch in which
    // the terminals got no acknowledgement at all.
    let (mut full_for, mut no_acks_for, mut longest_without_acks) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut acked = progress.acked();
    let step = Duration::from_millis(100);
    let frozen_at = Instant::now();
    while frozen_at.elapsed() < FROZEN {
        tokio::time::sleep(step).await;
        if edge.metrics.wal_full.get() == 1 {
            full_for += step;
        }
        let now = progress.acked();
        no_acks_for = if now == acked { no_acks_for + step } else { Duration::ZERO };
        longest_without_acks = longest_without_acks.max(no_acks_for);
        acked = now;
    }
    tansu.thaw().unwrap();

    let summary = publisher.await.unwrap().unwrap();
    assert_eq!(summary.acked, summary.created, "every event was acknowledged in the end");
    let deadline = Instant::now() + Duration::from_secs(60);
    while edge.metrics.wal_unconfirmed_records.get() != 0 {
        assert!(Instant::now() < deadline, "the WAL did not drain: {}", edge.metrics.wal_unconfirmed_records.get());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_kafka: Vec<uuid::Uuid> = edubrain_e2e::read_to_end(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC)
        .await
        .iter()
        .map(|(payload, _)| serde_json::from_slice::<serde_json::Value>(payload).unwrap()["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let unique: BTreeSet<uuid::Uuid> = in_kafka.iter().copied().collect();

    let log = std::fs::read_to_string(mosquitto.dir.join("mosquitto.log")).unwrap();
    let timeouts: Vec<&str> = log.lines().filter(|l| l.contains("exceeded timeout")).collect();
    let (reconnects, edge_errors) = (progress.reconnects.load(Ordering::Relaxed), edge.metrics.mqtt_connection_errors.get());
    eprintln!(
        "{} events from 12 terminals over 20 s, Kafka frozen {FROZEN:?}: WAL full for {full_for:?} ({} waits), terminals without any ack \
         for up to {longest_without_acks:?}, {} resent by terminals, {} duplicates dropped by the edge; keepalive {KEEPALIVE_SECS} s: \
         {} broker keepalive timeouts, {reconnects} terminal reconnects, {edge_errors} edge connection errors; in Kafka {} ({} distinct)",
        summary.created,
        edge.metrics.wal_full_waits.get(),
        progress.resent.load(Ordering::Relaxed),
        edge.metrics.events_duplicate.get(),
        timeouts.len(),
        in_kafka.len(),
        unique.len()
    );
    // The stress happened: the WAL filled and acknowledgements stopped for several keepalives.
    assert!(edge.metrics.wal_full_waits.get() >= 1 && full_for >= Duration::from_secs(3), "the WAL was full for {full_for:?}");
    assert!(longest_without_acks >= Duration::from_secs(3 * KEEPALIVE_SECS), "acks stopped for only {longest_without_acks:?}");
    // No session starved.
    assert!(timeouts.is_empty(), "Mosquitto dropped clients for silence:\n{}", timeouts.join("\n"));
    assert_eq!(reconnects, 0, "a terminal lost its connection");
    assert_eq!(edge_errors, 0, "the edge lost its connection");
    // Nothing lost, nothing doubled.
    assert_eq!(unique, ids, "missing {:?}", ids.difference(&unique).take(5).collect::<Vec<_>>());
    assert_eq!(in_kafka.len(), ids.len(), "an event is in Kafka twice");

    shutdown.cancel();
    edge.wait().await.unwrap();
}

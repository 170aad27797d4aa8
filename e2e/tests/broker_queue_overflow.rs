//! The edge is offline while terminals publish far past the broker's queue limit for the edge's
//! session. Mosquitto acknowledges every publish to the terminals (PUBACK) and then drops what
//! does not fit in the queue: exactly the loss the issue names. The terminals' outboxes still
//! hold every event (no edge ack came), resend them, and when the edge is back every event
//! arrives exactly once.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use edubrain_agent::outbox::OutboxConfig;
use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, Pacing, ProvinceSpec, PublishProgress, broker_users, province, simulate};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_edge::EdgeConfig;
use edubrain_edge::metrics::total;
use tokio_util::sync::CancellationToken;

/// In messages. Terminals publishing a backlog pack up to 64 events per message, so the day's
/// 560 events are a dozen or so messages: the limit is set under that.
const QUEUE_LIMIT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_outlast_a_broker_that_drops_past_its_queue_limit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 8, cities: 1, alliances_per_city: 1, schools_per_alliance: 2, classrooms_per_school: 3 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start_with(
        &dir.path().join("mosquitto"),
        &broker_users(&p, DEMO_PROVISIONING_SECRET),
        &format!("max_queued_messages {QUEUE_LIMIT}"),
    )
    .unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let sim = edubrain_agent::SimulationSpec::one_day(NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(), 8);
    let events = simulate::simulate(&p, &sim);
    let created = events.len() as u64;

    // The edge starts once, so the broker holds a persistent session (and a queue) for it.
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    config.login_with(DEMO_PROVISIONING_SECRET);
    let first_stop = CancellationToken::new();
    let edge = edubrain_edge::start(config.clone(), first_stop.clone()).await.unwrap();
    while edge.metrics.mqtt_subscribed.get() != 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first_stop.cancel();
    edge.wait().await.unwrap();

    // Everything is published while the edge is away.
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    let pacing = Pacing { sim_start: chrono::Utc::now(), wall_start: tokio::time::Instant::now(), speed: f64::INFINITY };
    let progress = Arc::new(PublishProgress::default());
    let shutdown = CancellationToken::new();
    let outbox = OutboxConfig { resend_after_ms: 2_000, ..OutboxConfig::default() };
    let publisher = {
        let (events, progress, shutdown, root) = (events.clone(), progress.clone(), shutdown.clone(), dir.path().join("outbox"));
        tokio::spawn(async move { edubrain_agent::publish_all_durable(&target, events, pacing, &root, &outbox, progress, shutdown).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while progress.published() < created {
        assert!(tokio::time::Instant::now() < deadline, "published {} of {created}", progress.published());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = std::fs::read_to_string(dir.path().join("mosquitto/mosquitto.log")).unwrap();
    assert!(log.contains("dropped"), "the broker dropped messages past its queue limit:\n{log}");
    assert_eq!(progress.acked(), 0, "no edge, no acks");

    // The edge comes back: it gets the queued messages, the outboxes resend the rest.
    let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(90), publisher).await.expect("every event acknowledged").unwrap().unwrap();
    assert_eq!(summary.acked, created);
    let accepted = total(&edge.metrics.events_accepted);
    let duplicates = edge.metrics.events_duplicate.get();
    eprintln!(
        "created {created} with the edge away and a queue of {QUEUE_LIMIT}; accepted once each {accepted}, resends dropped as duplicates {duplicates}, resent by terminals {}",
        progress.resent.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(accepted, created, "every event reached the edge exactly once");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while edge.metrics.kafka_delivered.with_label_values(&[edubrain_schemas::topics::KAFKA_EVENTS_TOPIC]).get() < created {
        assert!(tokio::time::Instant::now() < deadline, "Kafka did not confirm every event:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    edge.wait().await.unwrap();
}

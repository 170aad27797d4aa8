//! A noisy terminal is rate-limited without hurting the others, and without losing anything:
//! through the real broker, one terminal floods the edge while five quiet ones send their
//! usual few events. The quiet ones are acknowledged at once and never deferred; the noisy one
//! is deferred (its events stay in its outbox and are resent after the edge's delay) until all
//! of its events are in, each exactly once. The edge's windowed rollups (1 s windows here) account
//! for every accepted event: each is in exactly one classroom window or counted late.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use edubrain_agent::outbox::{Outbox, OutboxConfig};
use edubrain_agent::publisher::publish_terminal_durable;
use edubrain_agent::{MqttTarget, Pacing, PublishProgress};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_edge::EdgeConfig;
use edubrain_edge::metrics::total;
use edubrain_schemas::event::BandwidthSampled;
use edubrain_schemas::identity::terminal_username;
use edubrain_schemas::topics::TerminalTopic;
use edubrain_schemas::{Event, EventBody, Header, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "rate-limit-test-secret";
const NOISY_EVENTS: usize = 1_200;
const QUIET_EVENTS: usize = 40;

fn terminal(i: usize) -> TerminalTopic {
    TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: format!("c01-s1-r{i}"), terminal: format!("c01-s1-r{i}-t") }
}

fn events(t: &TerminalTopic, n: usize) -> Vec<Event> {
    let now = Utc::now();
    (0..n)
        .map(|i| Event {
            header: Header {
                event_id: uuid::Uuid::new_v4(),
                schema_version: SCHEMA_VERSION,
                city: t.city.clone(),
                school: t.school.clone(),
                classroom: t.classroom.clone(),
                terminal: t.terminal.clone(),
                event_time: now - chrono::Duration::milliseconds((n - i) as i64),
            },
            body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: i as f64, up_kbps: 1.0 }),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_terminal_is_deferred_and_the_quiet_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let terminals: Vec<TerminalTopic> = (0..6).map(terminal).collect();
    let users = edubrain_e2e::hub_logins(SECRET, terminals.iter().map(terminal_username).chain(["edge-c01".to_string()]));
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    config.login_with(SECRET);
    config.rate_limit.events_per_second = 200.0;
    config.rate_limit.burst = 200;
    config.rollup.window_secs = 1;
    config.rollup.allowed_lateness_secs = 1;
    let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
    while edge.metrics.mqtt_subscribed.get() != 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let target = Arc::new(MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(SECRET));
    let pacing = Pacing { sim_start: Utc::now(), wall_start: tokio::time::Instant::now(), speed: f64::INFINITY };
    let started = tokio::time::Instant::now();
    let mut runs = Vec::new();
    for (i, t) in terminals.iter().enumerate() {
        let n = if i == 0 { NOISY_EVENTS } else { QUIET_EVENTS };
        let (target, t, shutdown) = (target.clone(), t.clone(), shutdown.clone());
        let outbox = Outbox::open(&dir.path().join(format!("outbox-{i}")), &OutboxConfig::default()).unwrap();
        let progress = Arc::new(PublishProgress::default());
        let p = progress.clone();
        let task = tokio::spawn(async move {
            let acked = publish_terminal_durable(&target, &t, &events(&t, n), pacing, outbox, p, shutdown).await.unwrap();
            (acked, started.elapsed())
        });
        runs.push((n, progress, task));
    }
    let mut finished = Vec::new();
    for (n, progress, task) in runs {
        let (acked, took) = tokio::time::timeout(Duration::from_secs(90), task).await.expect("terminal finished").unwrap();
        assert_eq!(acked, n as u64, "every event acknowledged by the edge");
        finished.push((took, progress.deferred.load(std::sync::atomic::Ordering::Relaxed)));
    }
    let (noisy_took, noisy_deferred) = finished[0];
    let quiet_slowest = finished[1..].iter().map(|(t, _)| *t).max().unwrap();
    eprintln!(
        "noisy: {NOISY_EVENTS} events in {noisy_took:?}, {noisy_deferred} deferrals; quiet: {QUIET_EVENTS} events each, slowest done in {quiet_slowest:?}; edge throttled {}",
        edge.metrics.events_throttled.get()
    );
    for (i, (_, deferred)) in finished.iter().enumerate().skip(1) {
        assert_eq!(*deferred, 0, "quiet terminal {i} was never deferred");
    }
    assert!(noisy_deferred > 0 && edge.metrics.events_throttled.get() >= noisy_deferred);
    // 1,200 events at 200/s after a burst of 200 take at least 5 s; the quiet ones never wait.
    assert!(noisy_took >= Duration::from_secs(4), "the limit held: {noisy_took:?}");
    assert!(quiet_slowest < noisy_took / 2, "quiet terminals finished long before the noisy one");

    // Exactly once into Kafka: every event accepted once, none twice, nothing dead-lettered.
    let expected = (NOISY_EVENTS + 5 * QUIET_EVENTS) as u64;
    assert_eq!(total(&edge.metrics.events_accepted), expected);
    assert_eq!(total(&edge.metrics.events_rejected), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while edge.metrics.kafka_delivered.with_label_values(&[edubrain_schemas::topics::KAFKA_EVENTS_TOPIC]).get() < expected {
        assert!(tokio::time::Instant::now() < deadline, "Kafka did not confirm every event:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every window has closed 2 s after the last event; wait until Kafka has them all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rollups_topic = edubrain_schemas::topics::KAFKA_ROLLUPS_TOPIC;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let windows = loop {
        let emitted = edge.metrics.rollup_windows_emitted.get();
        if emitted > 0 && edge.metrics.kafka_delivered.with_label_values(&[rollups_topic]).get() == emitted {
            break emitted;
        }
        assert!(tokio::time::Instant::now() < deadline, "rollups not delivered:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let records = edubrain_e2e::read_topic(&tansu.bootstrap(), rollups_topic, windows as usize).await;
    let rollups: Vec<serde_json::Value> = records.iter().map(|(v, _)| serde_json::from_slice(v).unwrap()).collect();
    let in_windows: u64 = rollups.iter().filter(|r| r["device_id"].is_null()).map(|r| r["events"].as_u64().unwrap()).sum();
    let late = edge.metrics.rollup_late_events.get();
    eprintln!("rollups: {windows} windows hold {in_windows} events, {late} arrived after their window closed");
    assert_eq!(in_windows + late, expected, "each accepted event is in one classroom window or counted late");
    assert!(rollups.iter().all(|r| r["city"] == "c01" && r["window_end"].is_string()));

    shutdown.cancel();
    edge.wait().await.unwrap();
}

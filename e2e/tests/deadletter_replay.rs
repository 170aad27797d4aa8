//! `edubrain-edge replay`, the real binary against real brokers: a running edge dead-letters
//! what it refuses (bad JSON, a value out of range, the same event id with other content); two
//! valid events sit in the dead-letter topic as an older edge refused them (a schema version it
//! did not know yet), and one of another city. The replay sends exactly the two to the events
//! topic with their original receipt time and where they came from; `--dry-run` produces
//! nothing; a second run skips what the first delivered; `--rule` selects by rule.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use edubrain_agent::MqttTarget;
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_e2e::{read_to_end, wait_subscribed, workspace_binary};
use edubrain_edge::EdgeConfig;
use edubrain_schemas::event::{BandwidthSampled, EventBody};
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::topics::{KAFKA_DEADLETTER_TOPIC, KAFKA_EVENTS_TOPIC, TerminalTopic};
use edubrain_schemas::{Event, Header, SCHEMA_VERSION};
use rdkafka::ClientConfig;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "replay-test-secret";

fn event(n: u128, down_kbps: f64) -> Vec<u8> {
    let event = Event {
        header: Header {
            event_id: uuid::Uuid::from_u128(0x7e9_0000 + n),
            schema_version: SCHEMA_VERSION,
            city: "c01".into(),
            school: "c01-s1".into(),
            classroom: "c01-s1-r1".into(),
            terminal: "c01-s1-r1-t".into(),
            // Fixed, so the same call gives the same bytes.
            event_time: chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 20, 8, 0, 0).unwrap(),
        },
        body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps, up_kbps: 1.0 }),
    };
    serde_json::to_vec(&event).unwrap()
}

/// Runs `edubrain-edge --config <config> replay <args>` and returns its summary line.
fn replay(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(workspace_binary("edubrain-edge")).arg("--config").arg(config).arg("replay").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "replay {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    println!("replay {args:?}: {stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_todays_rules_accept_are_replayed_once() {
    let dir = tempfile::tempdir().unwrap();
    let terminal =
        TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: "c01-s1-r1-t".into() };
    let login = terminal_username(&terminal);
    let users = vec![
        (login.clone(), derived_password(SECRET.as_bytes(), &login)),
        ("edge-c01".into(), derived_password(SECRET.as_bytes(), "edge-c01")),
    ];
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let wal = dir.path().join("edge-wal");
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &wal);
    config.login_with(SECRET);
    let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
    wait_subscribed(&edge).await;

    // What the live edge refuses, next to one event it accepts.
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(SECRET);
    let accepted = event(1, 10.0);
    let conflict = event(1, 99.0);
    let payloads = vec![accepted.clone(), b"{not json".to_vec(), event(2, -1.0), conflict];
    edubrain_agent::publisher::publish_raw(&target, &login, &terminal.events_topic(), payloads).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rejected = || {
        ["json_syntax", "range", "event_id_conflict"]
            .iter()
            .map(|r| edge.metrics.events_rejected.with_label_values(&[r]).get())
            .sum::<u64>()
    };
    while rejected() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Refused by an older edge: two valid events of this city (received an hour ago), one of
    // another city's edge.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", tansu.bootstrap()).create().unwrap();
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).timestamp_millis().to_string();
    let older_edge = [(3, "c01"), (4, "c01"), (5, "c02")];
    let events_topic = terminal.events_topic();
    for (n, city) in older_edge {
        let payload = event(n, 20.0);
        let headers = [
            ("edubrain.rule", "schema_version"),
            ("edubrain.field", "schema_version"),
            ("edubrain.reason", "unsupported schema_version"),
            ("edubrain.mqtt_topic", events_topic.as_str()),
            ("edubrain.edge_city", city),
            ("edubrain.received_ms", an_hour_ago.as_str()),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(KafkaHeader { key: k, value: Some(v.as_bytes()) }));
        producer
            .send(FutureRecord::to(KAFKA_DEADLETTER_TOPIC).key(city).payload(&payload).headers(headers), Duration::from_secs(10))
            .await
            .unwrap();
    }
    let events_before = read_to_end(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC).await;
    assert_eq!(events_before.len(), 1, "only the accepted event is in the events topic");
    assert_eq!(read_to_end(&tansu.bootstrap(), KAFKA_DEADLETTER_TOPIC).await.len(), 6);

    // The replay reads the edge's own config file (its Kafka settings and WAL directory).
    let config_file = dir.path().join("edge.toml");
    std::fs::write(&config_file, format!("city = \"c01\"\n[wal]\ndir = {:?}\n[kafka]\nbrokers = {:?}\n", wal, tansu.bootstrap())).unwrap();

    let dry = replay(&config_file, &["--dry-run"]);
    assert!(dry.contains("6 read; would replay 2 "), "{dry}");
    assert_eq!(read_to_end(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC).await.len(), 1, "--dry-run produced");

    let only_range = replay(&config_file, &["--rule", "range"]);
    assert!(
        only_range.contains("replayed 0 ") && only_range.contains("5 not selected") && only_range.contains("{\"range\": 1}"),
        "{only_range}"
    );

    let first = replay(&config_file, &[]);
    assert!(first.contains("6 read; replayed 2 "), "{first}");
    assert!(first.contains("still refused {\"json_syntax\": 1, \"range\": 1}"), "{first}");
    assert!(first.contains("{\"event_id_conflict\": 1, \"other_city\": 1}"), "{first}");
    let events = read_to_end(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC).await;
    assert_eq!(events.len(), 3, "the accepted event and the two replayed ones");
    let replayed: BTreeMap<Vec<u8>, BTreeMap<String, String>> = events.into_iter().filter(|(payload, _)| *payload != accepted).collect();
    assert_eq!(replayed.keys().cloned().collect::<Vec<_>>().len(), 2);
    for (payload, headers) in &replayed {
        assert!(*payload == event(3, 20.0) || *payload == event(4, 20.0), "{}", String::from_utf8_lossy(payload));
        assert_eq!(headers["edubrain.received_ms"], an_hour_ago, "the original receipt time");
        assert_eq!(headers["edubrain.replayed_rule"], "schema_version");
        assert!(headers["edubrain.replayed_from"].starts_with(&format!("{KAFKA_DEADLETTER_TOPIC}/")), "{headers:?}");
        assert_eq!(headers["edubrain.edge_city"], "c01");
    }

    let again = replay(&config_file, &[]);
    assert!(again.contains("replayed 0 ") && again.contains("2 already replayed"), "{again}");
    assert_eq!(read_to_end(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC).await.len(), 3, "a second replay produced again");

    let later = replay(&config_file, &["--from", &chrono::Utc::now().to_rfc3339()]);
    assert!(later.contains("6 not selected"), "{later}");

    shutdown.cancel();
    edge.wait().await.unwrap();
}

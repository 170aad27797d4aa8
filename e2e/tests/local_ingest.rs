//! Classroom software posts events to a real terminal agent (`edubrain-agent serve`'s
//! `terminal::start`) over HTTP; they go through its outbox, the real broker (with the device's
//! own password and the ACL) and the edge into Kafka. Bad events in the same request are
//! refused by name and kept locally; raw student ids never reach disk or the network; a device
//! clock a day ahead is kept and flagged.

use std::time::Duration;

use edubrain_agent::MqttTarget;
use edubrain_agent::outbox::OutboxConfig;
use edubrain_agent::terminal::{Identity, TerminalConfig};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_e2e::read_topic;
use edubrain_edge::EdgeConfig;
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::pseudonym::pseudonymise;
use edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "local-ingest-test-secret";
const RAW_STUDENT: &str = "S-2026-0042";

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classroom_software_posts_events_through_the_outbox_to_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: "c01-s1-r1-t".into() };
    let user = terminal_username(&identity.topic());
    let device_password = derived_password(SECRET.as_bytes(), &user);
    let users = vec![(user.clone(), device_password.clone()), ("edge-c01".to_string(), derived_password(SECRET.as_bytes(), "edge-c01"))];
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let mut edge_config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.login_with(SECRET);
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.unwrap();

    // The device holds its own password and its alliance's key, not the hub's secret.
    std::fs::write(dir.path().join("password"), format!("{device_password}\n")).unwrap();
    std::fs::write(dir.path().join("alliance.key"), "alliance-a1-key\n").unwrap();
    let state_dir = dir.path().join("agent");
    let config = TerminalConfig {
        identity,
        mqtt: MqttTarget::new("127.0.0.1", mosquitto.port),
        mqtt_password_file: Some(dir.path().join("password")),
        listen: "127.0.0.1:0".into(),
        state_dir: state_dir.clone(),
        alliance_key_file: dir.path().join("alliance.key"),
        outbox: OutboxConfig::default(),
    };
    let terminal = edubrain_agent::terminal::start(config, shutdown.clone()).await.unwrap();
    let url = format!("http://{}/v1/events", terminal.addr);
    let http = reqwest::Client::new();

    let now = chrono::Utc::now();
    let ahead = now + chrono::Duration::hours(30);
    let batch = json!([
        {"type": "lesson_ended", "event_time": now, "payload": {"lesson_id": "l1", "duration_s": 2400.0}},
        {"type": "assessment_recorded", "event_time": now, "payload": {"assessment_id": "q1", "subject": "math", "grade": 5,
            "student_id": RAW_STUDENT, "score": 88.0, "max_score": 100.0}},
        {"type": "assessment_recorded", "event_time": now, "payload": {"assessment_id": "q1", "subject": "math", "grade": 5,
            "student_id": RAW_STUDENT, "score": 130.0, "max_score": 100.0}},
        {"type": "lesson_ended", "event_time": now, "payload": {"lesson_id": "l1", "duration_s": 60.0, "student_name": "张三"}},
        {"type": "bandwidth_sampled", "event_time": ahead, "payload": {"down_kbps": 100.0, "up_kbps": 10.0}},
    ]);
    let resp = http.post(&url).json(&batch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 207, "some accepted, some rejected");
    let body: Value = resp.json().await.unwrap();
    let statuses: Vec<&str> = body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "accepted", "rejected", "rejected", "accepted"]);
    assert_eq!((body["results"][2]["field"].as_str(), body["results"][2]["rule"].as_str()), (Some("payload.score"), Some("range")));
    assert_eq!(body["results"][3]["field"], "payload.student_name");

    let not_json = http.post(&url).body("{\"type\": ").header("content-type", "application/json").send().await.unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert!(not_json.text().await.unwrap().contains("not JSON"));

    // Through the broker and the edge into Kafka; the outbox empties on the edge's acks.
    let records = read_topic(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC, 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while terminal.progress.acked() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the edge acknowledged {} of 3", terminal.progress.acked());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pseudonym = pseudonymise(b"alliance-a1-key", RAW_STUDENT);
    let all: Vec<u8> = records.iter().flat_map(|(v, _)| v.clone()).collect();
    assert!(!contains(&all, RAW_STUDENT), "a raw student id reached Kafka");
    assert!(contains(&all, &pseudonym), "the assessment carries the alliance pseudonym");
    let flagged: Vec<_> = records.iter().filter_map(|(_, h)| h.get("edubrain.clock_flag")).collect();
    assert_eq!(flagged, ["device_clock_ahead"], "the clock a day ahead is kept and flagged");

    // Rejected events are kept on the device, pseudonymised; no file holds the raw id.
    let rejected = std::fs::read_to_string(state_dir.join("rejected.jsonl")).unwrap();
    assert_eq!(rejected.lines().count(), 2);
    assert!(rejected.contains("\"rule\":\"range\"") && rejected.contains(&pseudonym));
    assert!(!contains(&all_bytes(&state_dir), RAW_STUDENT), "a raw student id reached the device's disk");
    let health: Value = http.get(format!("http://{}/healthz", terminal.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!((health["accepted_total"].as_u64(), health["rejected_total"].as_u64()), (Some(3), Some(2)));
    assert_eq!(health["outbox_pending_events"], 0);

    shutdown.cancel();
    assert_eq!(terminal.wait().await.unwrap(), 3);
    edge.wait().await.unwrap();
}

//! The terminal agent process (`edubrain-agent serve`) is killed with SIGKILL right after it
//! accepted events from classroom software and before any edge acknowledged them; started
//! again, it sends every one of them, and each reaches the edge exactly once.

use std::process::{Command, Stdio};
use std::time::Duration;

use edubrain_brokers::{KillOnDrop, Mosquitto, Storage, Tansu};
use edubrain_edge::EdgeConfig;
use edubrain_edge::metrics::total;
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::topics::TerminalTopic;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "terminal-kill-test-secret";
const EVENTS: usize = 300;

/// Starts the agent and returns it with the address its log announces.
async fn spawn_agent(config: &std::path::Path, log: &std::path::Path) -> (KillOnDrop, String) {
    let before = std::fs::read_to_string(log).unwrap_or_default().len();
    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_edubrain-agent"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text[before..].split("local ingest on http://").nth(1) {
            return (child, rest.split('/').next().unwrap().to_string());
        }
        assert!(tokio::time::Instant::now() < deadline, "agent did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_before_a_kill_9_are_sent_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let me = TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: "c01-s1-r1-t".into() };
    let user = terminal_username(&me);
    let users = vec![
        (user.clone(), derived_password(SECRET.as_bytes(), &user)),
        ("edge-c01".into(), derived_password(SECRET.as_bytes(), "edge-c01")),
    ];
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    std::fs::write(dir.path().join("password"), derived_password(SECRET.as_bytes(), &user)).unwrap();
    std::fs::write(dir.path().join("alliance.key"), "a1-key").unwrap();
    let config = dir.path().join("terminal.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\nalliance_key_file = {:?}\nmqtt_password_file = {:?}\n\
             [identity]\ncity = \"c01\"\nschool = \"c01-s1\"\nclassroom = \"c01-s1-r1\"\nterminal = \"c01-s1-r1-t\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            dir.path().join("state"),
            dir.path().join("alliance.key"),
            dir.path().join("password"),
            mosquitto.port
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");

    // No edge yet: nothing can be acknowledged, so everything accepted sits in the outbox.
    let (agent, addr) = spawn_agent(&config, &log).await;
    let now = chrono::Utc::now();
    let batch: Vec<_> = (0..EVENTS)
        .map(|i| json!({"type": "bandwidth_sampled", "event_time": now, "payload": {"down_kbps": i as f64, "up_kbps": 1.0}}))
        .collect();
    let resp = reqwest::Client::new().post(format!("http://{addr}/v1/events")).json(&batch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    drop(agent); // SIGKILL, with every event unacknowledged

    let shutdown = CancellationToken::new();
    let mut edge_config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.login_with(SECRET);
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(total(&edge.metrics.events_accepted), 0, "the broker held none of them for the edge: only the outbox has them");
    let (_agent, addr) = spawn_agent(&config, &log).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let health: serde_json::Value = reqwest::get(format!("http://{addr}/healthz")).await.unwrap().json().await.unwrap();
        if health["outbox_pending_events"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = total(&edge.metrics.events_accepted);
    eprintln!(
        "accepted by the agent {EVENTS}, agent killed, restarted: accepted by the edge {accepted}, duplicates {}",
        edge.metrics.events_duplicate.get()
    );
    assert_eq!(accepted, EVENTS as u64, "every event the agent accepted reached the edge exactly once");
    shutdown.cancel();
    edge.wait().await.unwrap();
}

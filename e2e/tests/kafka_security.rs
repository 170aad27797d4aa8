//! Kafka over TLS with SASL/SCRAM-SHA-512 logins, through real processes: Tansu requiring
//! SASL (`--authentication`; the logins made with `tansu user create`) behind socat's TLS,
//! which requires a client certificate from the province's CA. Tansu 0.6 cannot serve TLS
//! itself (its `--cert` and `--key` refuse each other), so the TLS endpoint is a terminator in
//! front of it, as a load balancer would be; librdkafka's TLS and SCRAM are real on both ends.
//!
//! Classroom software posts events to a terminal agent; the edge ships them to Kafka with its
//! own login and the cloud reads them into the warehouse with its own. Then an edge with one
//! thing wrong (password, user, the broker's CA, no client certificate) fails at start-up with
//! an error naming what was refused, and no error or log holds a password.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edubrain_agent::MqttTarget;
use edubrain_agent::outbox::OutboxConfig;
use edubrain_agent::terminal::{Identity, TerminalConfig};
use edubrain_brokers::{Mosquitto, Pki, Storage, Tansu, TlsTerminator, free_port};
use edubrain_cloud::CloudConfig;
use edubrain_e2e::wait_subscribed;
use edubrain_edge::EdgeConfig;
use edubrain_process::kafka_security::{KafkaSasl, KafkaTls, SaslMechanism};
use edubrain_schemas::identity::{derived_password, terminal_username};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "kafka-security-test-secret";
const EDGE_KAFKA_PASSWORD: &str = "edge-c01 kafka password 7f3a";
const CLOUD_KAFKA_PASSWORD: &str = "cloud kafka password 91bd";

fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{content}\n")).unwrap();
    path
}

fn scram(username: &str, password_file: PathBuf) -> KafkaSasl {
    KafkaSasl { mechanism: SaslMechanism::ScramSha512, username: username.into(), password_file }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_cloud_reach_kafka_only_with_tls_and_their_own_logins() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();

    // Kafka: logins first (Tansu's client cannot log in), then SASL required, behind TLS.
    let mut tansu = Tansu::start(&dir.path().join("tansu"), Storage::Sqlite).unwrap();
    tansu.create_scram_user("edge-c01", EDGE_KAFKA_PASSWORD).unwrap();
    tansu.create_scram_user("edubrain-cloud", CLOUD_KAFKA_PASSWORD).unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "province Kafka CA").unwrap();
    let tls_port = free_port();
    tansu.require_sasl(Some(tls_port)).unwrap();
    let terminator = TlsTerminator::start(dir.path(), tls_port, tansu.port, &pki).unwrap();
    let client_tls = |file: &str, cn: &str| {
        let (cert, key) = pki.issue(file, cn, false).unwrap();
        KafkaTls { ca_file: pki.ca.clone(), cert_file: Some(cert), key_file: Some(key) }
    };

    // MQTT as everywhere else: the terminal's and the edge's broker logins.
    let identity = Identity { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: "c01-s1-r1-t".into() };
    let user = terminal_username(&identity.topic());
    let device_password = derived_password(SECRET.as_bytes(), &user);
    let users = vec![(user.clone(), device_password.clone()), ("edge-c01".to_string(), derived_password(SECRET.as_bytes(), "edge-c01"))];
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let shutdown = CancellationToken::new();

    let edge_config = |wal: &str, tls: Option<KafkaTls>, sasl: Option<KafkaSasl>| {
        let mut c = EdgeConfig::on_loopback("c01", mosquitto.port, &terminator.bootstrap(), &dir.path().join(wal));
        c.login_with(SECRET);
        c.kafka.tls = tls;
        c.kafka.sasl = sasl;
        c.check().unwrap();
        c
    };
    let edge_tls = client_tls("edge-kafka", "edge-c01");
    let edge_password = secret_file(&secrets, "edge-kafka-password", EDGE_KAFKA_PASSWORD);
    let edge = edubrain_edge::start(
        edge_config("edge-wal", Some(edge_tls.clone()), Some(scram("edge-c01", edge_password.clone()))),
        shutdown.clone(),
    )
    .await
    .unwrap();
    wait_subscribed(&edge).await;

    // Classroom software posts three events to its terminal agent.
    std::fs::write(dir.path().join("password"), format!("{device_password}\n")).unwrap();
    std::fs::write(dir.path().join("alliance.key"), "alliance-a1-key\n").unwrap();
    let terminal = edubrain_agent::terminal::start(
        TerminalConfig {
            identity,
            mqtt: MqttTarget::new("127.0.0.1", mosquitto.port),
            mqtt_password_file: Some(dir.path().join("password")),
            listen: "127.0.0.1:0".into(),
            state_dir: dir.path().join("agent"),
            alliance_key_file: dir.path().join("alliance.key"),
            outbox: OutboxConfig::default(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let now = chrono::Utc::now();
    let batch = json!([
        {"type": "lesson_ended", "event_time": now, "payload": {"lesson_id": "l1", "duration_s": 2400.0}},
        {"type": "lesson_ended", "event_time": now, "payload": {"lesson_id": "l2", "duration_s": 2400.0}},
        {"type": "bandwidth_sampled", "event_time": now, "payload": {"down_kbps": 100.0, "up_kbps": 10.0}},
    ]);
    let resp = reqwest::Client::new().post(format!("http://{}/v1/events", terminal.addr)).json(&batch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap());

    // The cloud reads them over TLS with its own login and certificate.
    let mut cloud_config = CloudConfig::on_loopback(dir.path().join("warehouse"), None, &terminator.bootstrap());
    cloud_config.kafka.tls = Some(client_tls("cloud-kafka", "edubrain-cloud"));
    cloud_config.kafka.sasl = Some(scram("edubrain-cloud", secret_file(&secrets, "cloud-kafka-password", CLOUD_KAFKA_PASSWORD)));
    let cloud = edubrain_cloud::start(cloud_config, shutdown.clone()).await.unwrap();
    let mut progress = cloud.progress.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while progress.borrow().events_written < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 3 events in the warehouse; the edge delivered {}",
            progress.borrow().events_written,
            edge.metrics.render()
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), progress.changed()).await;
    }
    let rows = cloud.warehouse.query_json("SELECT COUNT(*) AS n FROM events WHERE terminal = 'c01-s1-r1-t'").await.unwrap();
    assert_eq!(rows[0]["n"], 3, "{rows:?}");
    println!("3 events: terminal -> edge -> Kafka (TLS, SCRAM-SHA-512 as edge-c01) -> cloud (TLS, SCRAM-SHA-512 as edubrain-cloud)");

    // One thing wrong at a time: the edge refuses to start and says what was refused.
    let stranger = Pki::new(&dir.path().join("stranger"), "somebody else's CA").unwrap();
    let guess = secret_file(&secrets, "guess", "guess");
    let no_client_cert = KafkaTls { ca_file: pki.ca.clone(), cert_file: None, key_file: None };
    let unknown_broker = KafkaTls { ca_file: stranger.ca.clone(), ..edge_tls.clone() };
    let cases = [
        ("a wrong password", Some(edge_tls.clone()), Some(scram("edge-c01", guess.clone())), "Authentication"),
        ("an unknown user", Some(edge_tls.clone()), Some(scram("edge-c99", edge_password.clone())), "Authentication"),
        (
            "a CA that did not sign the broker's certificate",
            Some(unknown_broker),
            Some(scram("edge-c01", edge_password.clone())),
            "certificate verify failed",
        ),
        ("no client certificate", Some(no_client_cert), Some(scram("edge-c01", edge_password.clone())), "SSL"),
    ];
    for (n, (what, tls, sasl, expected)) in cases.into_iter().enumerate() {
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            edubrain_edge::start(edge_config(&format!("refused-wal-{n}"), tls, sasl), shutdown.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the edge neither started nor failed within 60 s"));
        let Err(error) = outcome else { panic!("{what}: the edge started") };
        let error = error.to_string();
        println!("{what}: refused after {:.1?}: {error}", started.elapsed());
        assert!(error.contains(expected), "{what}: {error}");
        assert!(!error.contains(EDGE_KAFKA_PASSWORD) && !error.contains("guess\n"), "{what}: the error shows a password: {error}");
    }

    shutdown.cancel();
    assert_eq!(terminal.wait().await.unwrap(), 3);
    edge.wait().await.unwrap();
    cloud.wait().await.unwrap();
    for log in [dir.path().join("tansu/tansu.log"), dir.path().join("socat.log")] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains(EDGE_KAFKA_PASSWORD) && !text.contains(CLOUD_KAFKA_PASSWORD), "{} shows a password", log.display());
    }
}

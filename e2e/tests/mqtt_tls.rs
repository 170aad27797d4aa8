//! MQTT over TLS with client certificates, through a real Mosquitto running
//! `deploy/mosquitto/tls.conf`: a terminal agent and the edge log in with certificates signed by
//! the hub's CA (no passwords), the terminal's events reach Kafka and its outbox empties on the
//! edge's acks. A client without a certificate, with one from another CA, or with a certificate
//! that does not match the broker is refused at the handshake; a terminal's certificate is its
//! identity, so it cannot publish as another classroom (the ACL drops it, nothing reaches Kafka).

use std::time::Duration;

use edubrain_agent::MqttTarget;
use edubrain_agent::outbox::OutboxConfig;
use edubrain_agent::terminal::{Identity, TerminalConfig};
use edubrain_brokers::{Mosquitto, Pki, Storage, Tansu};
use edubrain_e2e::{connack, read_topic, wait_subscribed};
use edubrain_edge::EdgeConfig;
use edubrain_process::mqtt_tls::MqttTls;
use edubrain_schemas::identity::terminal_username;
use edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn identity(terminal: &str) -> Identity {
    Identity { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: terminal.into() }
}

/// Connects with `tls` and returns the CONNACK's code, or the connection error's text.
async fn connect(port: u16, client_id: &str, tls: &MqttTls) -> Result<rumqttc::ConnectReturnCode, String> {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_transport(tls.transport().map_err(|e| e.to_string())?);
    connack(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_and_edges_log_in_with_certificates_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "c01 hub CA").unwrap();
    // The password file holds one login nobody here uses (mosquitto_passwd refuses an empty one).
    let unused = vec![("edge-c02".to_string(), "a password nobody sends".to_string())];
    let (mosquitto, tls_port) = Mosquitto::start_tls(&dir.path().join("mosquitto"), &unused, &pki).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();

    let client_tls = |file: &str, cn: &str| {
        let (cert, key) = pki.issue(file, cn, false).unwrap();
        MqttTls { ca_file: pki.ca.clone(), cert_file: Some(cert), key_file: Some(key) }
    };
    let mut edge_config = EdgeConfig::on_loopback("c01", tls_port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.mqtt.tls = Some(client_tls("edge", "edge-c01"));
    edge_config.check().unwrap();
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.unwrap();
    wait_subscribed(&edge).await;

    // A terminal agent whose certificate names it; classroom software posts two events.
    let me = identity("c01-s1-r1-t1");
    let my_login = terminal_username(&me.topic());
    std::fs::write(dir.path().join("alliance.key"), "alliance-a1-key\n").unwrap();
    let mut target = MqttTarget::new("127.0.0.1", tls_port);
    target.tls = Some(client_tls("terminal", &my_login));
    let config = TerminalConfig {
        identity: me.clone(),
        mqtt: target,
        mqtt_password_file: None,
        listen: "127.0.0.1:0".into(),
        state_dir: dir.path().join("agent"),
        alliance_key_file: dir.path().join("alliance.key"),
        outbox: OutboxConfig::default(),
    };
    let terminal = edubrain_agent::terminal::start(config, shutdown.clone()).await.unwrap();
    let now = chrono::Utc::now();
    let batch = json!([
        {"type": "lesson_ended", "event_time": now, "payload": {"lesson_id": "l1", "duration_s": 2400.0}},
        {"type": "bandwidth_sampled", "event_time": now, "payload": {"down_kbps": 100.0, "up_kbps": 10.0}},
    ]);
    let resp = reqwest::Client::new().post(format!("http://{}/v1/events", terminal.addr)).json(&batch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap());
    let records = read_topic(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while terminal.progress.acked() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the edge acknowledged {} of 2 over TLS", terminal.progress.acked());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (value, _) in &records {
        let v: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(v["terminal"], "c01-s1-r1-t1", "{v}");
    }

    // Refused at the handshake: no certificate, another CA's certificate, the right certificate
    // with a CA file that does not know the broker.
    let no_cert = MqttTls { ca_file: pki.ca.clone(), cert_file: None, key_file: None };
    let stranger_pki = Pki::new(&dir.path().join("stranger"), "somebody else's CA").unwrap();
    let (cert, key) = stranger_pki.issue("stranger", &my_login, false).unwrap();
    let stranger = MqttTls { ca_file: pki.ca.clone(), cert_file: Some(cert), key_file: Some(key) };
    let wrong_ca = MqttTls { ca_file: stranger_pki.ca.clone(), ..client_tls("terminal2", &my_login) };
    for (what, tls) in [("no client certificate", &no_cert), ("another CA's certificate", &stranger), ("an unknown broker", &wrong_ca)] {
        let outcome = connect(tls_port, "c01/c01-s1/c01-s1-r1/intruder", tls).await;
        assert!(outcome.as_ref().is_err_and(|e| e.contains("Tls") || e.contains("Io")), "{what}: {outcome:?}");
    }
    // The plain listener without a password: refused too.
    let mut plain = rumqttc::MqttOptions::new(my_login.clone(), "127.0.0.1", mosquitto.port);
    plain.set_credentials(my_login.clone(), "guess");
    let refused = connack(plain).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("NotAuthorized") || e.contains("BadUserNamePassword")), "{refused:?}");
    // The edge counts these refusals from the broker's log lines: at least the two handshakes
    // the broker failed itself (the third, the client refusing the broker, may show as one too)
    // and the bad password.
    let refusals = |reason: &str| edge.metrics.mqtt_broker_disconnects.with_label_values(&[reason]).get();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refusals("tls_error") < 2 || refusals("not_authorised") < 1 {
        assert!(tokio::time::Instant::now() < deadline, "TLS refusals not counted; edge metrics:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("broker refusals counted by the edge: tls_error {}, not_authorised {}", refusals("tls_error"), refusals("not_authorised"));

    // A valid certificate of terminal t1 publishing on t2's topic: the broker's ACL drops it;
    // the edge never sees it, nothing more reaches Kafka.
    let other = identity("c01-s1-r1-t2");
    // The two events above were one message or two (a terminal packs what is queued together).
    let received_before = edge.metrics.messages_received.get();
    let mut as_t1 = MqttTarget::new("127.0.0.1", tls_port);
    as_t1.tls = Some(client_tls("terminal3", &my_login));
    let forged = json!({"event_id": uuid::Uuid::new_v4(), "type": "lesson_ended", "event_time": now, "city": "c01", "school": "c01-s1",
        "classroom": "c01-s1-r1", "terminal": "c01-s1-r1-t2", "payload": {"lesson_id": "l9", "duration_s": 60.0}});
    edubrain_agent::publisher::publish_raw(&as_t1, &my_login, &other.topic().events_topic(), vec![forged.to_string().into_bytes()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(edge.metrics.messages_received.get(), received_before, "the forged message reached the edge");

    shutdown.cancel();
    assert_eq!(terminal.wait().await.unwrap(), 2);
    edge.wait().await.unwrap();
}

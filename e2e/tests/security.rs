//! Identity and isolation through the real broker with the committed ACL
//! (`deploy/mosquitto/acl`): a terminal can only publish on its own classroom's topic and read
//! its own acks; bad credentials are refused; nobody can take over another client's session; a
//! payload claiming another identity on the right topic is dead-lettered by the edge. Nothing a
//! refused client sends reaches Kafka. The broker's own refusals (a publish or a subscription
//! the ACL plugin refused, a bad login, a session closed by a second login) are counted by the
//! edge and audited on the Kafka audit topic.

use std::time::Duration;

use edubrain_agent::MqttTarget;
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_edge::EdgeConfig;
use edubrain_schemas::event::BandwidthSampled;
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::topics::TerminalTopic;
use edubrain_schemas::{EventBody, Header, SCHEMA_VERSION};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event as MqttEvent, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "security-test-secret";

fn terminal(room: &str) -> TerminalTopic {
    TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: room.into(), terminal: format!("{room}-t") }
}

fn login(user: &str, password: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(user, "127.0.0.1", port);
    opts.set_credentials(user, password).set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(opts, 16)
}

/// Polls until `stop` returns Some or `secs` pass; returns what it returned.
async fn poll_until<T>(
    el: &mut rumqttc::EventLoop,
    secs: u64,
    mut stop: impl FnMut(&Result<MqttEvent, ConnectionError>) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let ev = match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => return None,
            Ok(ev) => ev,
        };
        if let Some(t) = stop(&ev) {
            return Some(t);
        }
        if ev.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_speak_only_for_their_own_classroom() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (terminal("c01-s1-r1"), terminal("c01-s1-r2"));
    let users = edubrain_e2e::hub_logins(SECRET, [terminal_username(&a), terminal_username(&b), "edge-c01".into(), "edge-c09".into()]);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    config.login_with(SECRET);
    let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while edge.metrics.mqtt_subscribed.get() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "edge did not subscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(SECRET);

    // Terminal B tries to listen on the wildcard of the whole hub: refused (it may read only its
    // own acks), and it still receives nothing below.
    let (b_client, mut b_loop) =
        login(&terminal_username(&b), &derived_password(SECRET.as_bytes(), &terminal_username(&b)), mosquitto.port);
    b_client.subscribe("edubrain/#", QoS::AtLeastOnce).await.unwrap();
    let granted = poll_until(&mut b_loop, 10, |ev| match ev {
        Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("SUBACK");
    assert_eq!(granted, vec![SubscribeReasonCode::Failure], "a wildcard subscription over other classrooms was granted");

    // 1. A publishes on B's topic: the broker drops it (it still PUBACKs under MQTT 3.1.1).
    edubrain_agent::publisher::publish_raw(&target, &terminal_username(&a), &b.events_topic(), vec![b"{\"spoof\":1}".to_vec()])
        .await
        .unwrap();
    // 2. A publishes on its own topic a payload that claims B's classroom: the edge dead-letters it.
    let claim_b = edubrain_schemas::Event {
        header: Header {
            event_id: uuid::Uuid::from_u128(0x5ec),
            schema_version: SCHEMA_VERSION,
            city: b.city.clone(),
            school: b.school.clone(),
            classroom: b.classroom.clone(),
            terminal: b.terminal.clone(),
            event_time: chrono::Utc::now(),
        },
        body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 1.0, up_kbps: 1.0 }),
    };
    edubrain_agent::publisher::publish_raw(&target, &terminal_username(&a), &a.events_topic(), vec![claim_b.to_json()]).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while edubrain_edge::metrics::total(&edge.metrics.events_rejected) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the identity mismatch was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(edge.metrics.messages_received.get(), 1, "the spoofed publish on B's topic never reached the edge");
    assert_eq!(edubrain_edge::metrics::total(&edge.metrics.events_accepted), 0, "nothing refused is produced as an event");
    assert_eq!(
        edge.metrics.events_rejected.with_label_values(&["identity_matches_topic"]).get(),
        1,
        "rejected by rule identity_matches_topic; edge metrics:\n{}",
        edge.metrics.render()
    );
    // B saw neither A's events nor anyone's but its own acks.
    let leaked = poll_until(&mut b_loop, 2, |ev| match ev {
        Ok(MqttEvent::Incoming(Packet::Publish(p))) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(leaked, None, "a wildcard subscription leaked another client's message");

    // 3. Bad credentials are refused at CONNECT.
    let (_c, mut bad) = login(&terminal_username(&a), "not-the-password", mosquitto.port);
    let refused = poll_until(&mut bad, 10, |ev| match ev {
        Err(ConnectionError::ConnectionRefused(code)) => Some(*code),
        _ => None,
    })
    .await;
    assert!(matches!(refused, Some(ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword)), "got {refused:?}");

    // 4. Client-id takeover: A connects with B's username as its client id. The broker uses the
    //    username as client id, so B's session is untouched.
    let mut opts = MqttOptions::new(terminal_username(&b), "127.0.0.1", mosquitto.port);
    opts.set_credentials(terminal_username(&a), derived_password(SECRET.as_bytes(), &terminal_username(&a)));
    let (_thief, mut thief_loop) = AsyncClient::new(opts, 16);
    poll_until(&mut thief_loop, 10, |ev| matches!(ev, Ok(MqttEvent::Incoming(Packet::ConnAck(_)))).then_some(())).await.expect("CONNACK");
    let b_dropped = poll_until(&mut b_loop, 2, |ev| ev.is_err().then_some(())).await;
    assert_eq!(b_dropped, None, "B was disconnected by a client reusing its client id");

    // 5. A's login used a second time (someone holding A's credentials): the broker closes the
    //    older connection, the only takeover `use_username_as_clientid` leaves.
    let (_again, mut again_loop) =
        login(&terminal_username(&a), &derived_password(SECRET.as_bytes(), &terminal_username(&a)), mosquitto.port);
    poll_until(&mut again_loop, 10, |ev| matches!(ev, Ok(MqttEvent::Incoming(Packet::ConnAck(_)))).then_some(())).await.expect("CONNACK");
    let thief_dropped = poll_until(&mut thief_loop, 5, |ev| ev.is_err().then_some(())).await;
    assert_eq!(thief_dropped, Some(()), "the older connection of A's login was not closed");

    // 6. The broker's own refusals, which no message shows (the wildcard subscription, 1, 3 and
    //    5), are counted by the edge from the broker's log lines and kept as audit records in
    //    Kafka.
    let refusals = |reason: &str| edge.metrics.mqtt_broker_disconnects.with_label_values(&[reason]).get();
    let denials = |action: &str| edge.metrics.mqtt_broker_acl_denials.with_label_values(&[action]).get();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refusals("not_authorised") < 1 || refusals("session_taken_over") < 1 || denials("publish") < 1 || denials("subscribe") < 1 {
        assert!(tokio::time::Instant::now() < deadline, "broker refusals not counted; edge metrics:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = edubrain_e2e::read_topic(&tansu.bootstrap(), edubrain_schemas::topics::KAFKA_AUDIT_TOPIC, 4).await;
    let audit: Vec<serde_json::Value> = audit.iter().map(|(v, _)| serde_json::from_slice(v).unwrap()).collect();
    println!("audit records: {audit:#?}");
    assert_eq!(audit[0]["reason"], "acl_denied_subscribe", "{audit:?}");
    assert_eq!(audit[0]["client"], terminal_username(&b));
    assert_eq!(audit[0]["topic"], "edubrain/#");
    assert_eq!(audit[1]["reason"], "acl_denied_publish", "{audit:?}");
    assert_eq!(audit[1]["client"], terminal_username(&a));
    assert_eq!(audit[1]["topic"], b.events_topic().as_str());
    assert_eq!(audit[2]["reason"], "not_authorised", "{audit:?}");
    assert_eq!(audit[2]["client"], serde_json::Value::Null, "the broker does not name a refused login");
    assert_eq!(audit[3]["reason"], "session_taken_over", "{audit:?}");
    assert_eq!(audit[3]["client"], terminal_username(&a));
    assert!(audit.iter().all(|r| r["edge_city"] == "c01" && r["source"] == "mqtt_broker"), "{audit:?}");
    assert_eq!(refusals("not_authorised"), 1, "one bad login, counted once");
    assert_eq!((denials("publish"), denials("subscribe")), (1, 1), "one refused publish and one refused subscription, each counted once");

    // 7. An edge whose login has no stanza in the ACL (a city the hub does not serve) is refused
    //    both subscriptions: it says so (mqtt_subscribed stays 0), and the broker's log shows
    //    the refusals to the edges that do read it.
    let mut stray = EdgeConfig::on_loopback("c09", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-c09-wal"));
    stray.login_with(SECRET);
    let stray = edubrain_edge::start(stray, shutdown.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while denials("subscribe") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stray edge's refused subscriptions were not counted; edge metrics:\n{}",
            edge.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while stray.metrics.mqtt_subscriptions_refused.get() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stray edge did not see its subscriptions refused; its metrics:\n{}",
            stray.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stray.metrics.mqtt_connected.get(), 1, "the stray edge's login is valid");
    assert_eq!(stray.metrics.mqtt_subscribed.get(), 0, "an edge the ACL gives nothing must not report itself subscribed");
    assert_eq!(edge.metrics.messages_received.get(), 1, "log lines are not counted as terminal messages");

    shutdown.cancel();
    edge.wait().await.unwrap();
    stray.wait().await.unwrap();
}

/// A terminal that keeps publishing where it may not, and someone who keeps guessing a password:
/// every refusal is counted, but each (reason, client) gets only `refusal_audit.per_client`
/// audit records a window and one summary record for the rest, so the audit topic and the
/// edge's WAL do not grow with the attacker's packet rate. Another client's refusal in the
/// middle of the flood is still audited on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_are_audited_in_summary() {
    const FLOOD: u64 = 60;
    const PER_CLIENT: u64 = 3;
    const BAD_LOGINS: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (terminal("c01-s1-r1"), terminal("c01-s1-r2"));
    let users = edubrain_e2e::hub_logins(SECRET, [terminal_username(&a), terminal_username(&b), "edge-c01".into()]);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    config.login_with(SECRET);
    config.refusal_audit.per_client = PER_CLIENT as u32;
    config.refusal_audit.window_secs = 2;
    let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
    edubrain_e2e::wait_subscribed(&edge).await;
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(SECRET);

    // A floods B's topic; then B publishes once on A's; then a password guesser tries A's login.
    let spoof: Vec<Vec<u8>> = (0..FLOOD).map(|i| format!("{{\"spoof\":{i}}}").into_bytes()).collect();
    edubrain_agent::publisher::publish_raw(&target, &terminal_username(&a), &b.events_topic(), spoof).await.unwrap();
    edubrain_agent::publisher::publish_raw(&target, &terminal_username(&b), &a.events_topic(), vec![b"{}".to_vec()]).await.unwrap();
    for _ in 0..BAD_LOGINS {
        let (_c, mut bad) = login(&terminal_username(&a), "guess", mosquitto.port);
        let refused = poll_until(&mut bad, 10, |ev| match ev {
            Err(ConnectionError::ConnectionRefused(code)) => Some(*code),
            _ => None,
        })
        .await;
        assert!(refused.is_some(), "a bad password was not refused");
    }

    // Every refusal counted.
    let denials = || edge.metrics.mqtt_broker_acl_denials.with_label_values(&["publish"]).get();
    let bad_logins = || edge.metrics.mqtt_broker_disconnects.with_label_values(&["not_authorised"]).get();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while denials() < FLOOD + 1 || bad_logins() < BAD_LOGINS {
        assert!(tokio::time::Instant::now() < deadline, "refusals not counted; edge metrics:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summarised = |reason: &str| edge.metrics.mqtt_broker_refusals_summarised.with_label_values(&[reason]).get();
    assert_eq!(summarised("acl_denied_publish"), FLOOD - PER_CLIENT, "A's refusals past its limit; B's one is its own record");
    assert_eq!(summarised("not_authorised"), BAD_LOGINS - PER_CLIENT);

    // The audit topic: PER_CLIENT records of A, B's one, PER_CLIENT bad logins, and summaries
    // that account for the rest, once the 2 s windows have ended.
    let mut audit: Vec<serde_json::Value> = Vec::new();
    let summed = |audit: &[serde_json::Value], reason: &str| -> u64 {
        audit.iter().filter(|r| r["reason"] == reason).filter_map(|r| r["summarised"].as_u64()).sum()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while summed(&audit, "acl_denied_publish") < FLOOD - PER_CLIENT || summed(&audit, "not_authorised") < BAD_LOGINS - PER_CLIENT {
        assert!(tokio::time::Instant::now() < deadline, "summaries missing from the audit topic: {audit:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let records = edubrain_e2e::read_to_end(&tansu.bootstrap(), edubrain_schemas::topics::KAFKA_AUDIT_TOPIC).await;
        audit = records.iter().map(|(v, _)| serde_json::from_slice(v).unwrap()).collect();
    }
    println!("audit records: {audit:#?}");
    let of = |reason: &str, client: serde_json::Value, summary: bool| -> Vec<&serde_json::Value> {
        audit.iter().filter(|r| r["reason"] == reason && r["client"] == client && r.get("summarised").is_some() == summary).collect()
    };
    let (a_name, b_name) = (serde_json::Value::from(terminal_username(&a)), serde_json::Value::from(terminal_username(&b)));
    let a_records = of("acl_denied_publish", a_name.clone(), false);
    assert_eq!(a_records.len() as u64, PER_CLIENT, "A's records one by one: {a_records:#?}");
    assert!(a_records.iter().all(|r| r["topic"] == b.events_topic().as_str()));
    let b_records = of("acl_denied_publish", b_name, false);
    assert_eq!(b_records.len(), 1, "B's refusal in the middle of A's flood is audited on its own");
    assert_eq!(b_records[0]["topic"], a.events_topic().as_str());
    let a_summaries = of("acl_denied_publish", a_name, true);
    assert!((1..=3).contains(&a_summaries.len()), "one summary per 2 s window of A's flood: {a_summaries:#?}");
    assert!(a_summaries.iter().all(|s| s["last_topic"] == b.events_topic().as_str() && s["source"] == "mqtt_broker"));
    assert_eq!(of("not_authorised", serde_json::Value::Null, false).len() as u64, PER_CLIENT);
    assert_eq!(summed(&audit, "acl_denied_publish"), FLOOD - PER_CLIENT, "each refusal in exactly one summary");
    assert_eq!(summed(&audit, "not_authorised"), BAD_LOGINS - PER_CLIENT);
    assert!(audit.len() < 20, "{} audit records for {} refusals", audit.len(), FLOOD + 1 + BAD_LOGINS);
    assert_eq!(edubrain_edge::metrics::total(&edge.metrics.events_accepted), 0, "nothing refused is produced as an event");
    shutdown.cancel();
    edge.wait().await.unwrap();

    // An edge that stops ends its open windows: their summaries go to the WAL, not away with
    // the process. With an hour-long window, only stopping can have written this one.
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    config.login_with(SECRET);
    config.refusal_audit.per_client = PER_CLIENT as u32;
    config.refusal_audit.window_secs = 3600;
    let restart = |config: EdgeConfig| async move {
        let shutdown = CancellationToken::new();
        let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
        edubrain_e2e::wait_subscribed(&edge).await;
        (edge, shutdown)
    };
    let (edge, shutdown) = restart(config.clone()).await;
    let spoof: Vec<Vec<u8>> = (0..10).map(|i| format!("{{\"again\":{i}}}").into_bytes()).collect();
    edubrain_agent::publisher::publish_raw(&target, &terminal_username(&a), &b.events_topic(), spoof).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while edge.metrics.mqtt_broker_refusals_summarised.with_label_values(&["acl_denied_publish"]).get() < 10 - PER_CLIENT {
        assert!(tokio::time::Instant::now() < deadline, "the second flood was not counted; edge metrics:\n{}", edge.metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    edge.wait().await.unwrap();
    // Started again on the same WAL, the edge ships whatever the stopping one had not.
    let (edge, shutdown) = restart(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let records = edubrain_e2e::read_to_end(&tansu.bootstrap(), edubrain_schemas::topics::KAFKA_AUDIT_TOPIC).await;
        let audit: Vec<serde_json::Value> = records.iter().map(|(v, _)| serde_json::from_slice(v).unwrap()).collect();
        if summed(&audit, "acl_denied_publish") == FLOOD - PER_CLIENT + 10 - PER_CLIENT {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stopping edge's summary is not in the audit topic: {audit:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shutdown.cancel();
    edge.wait().await.unwrap();
}

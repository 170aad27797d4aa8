//! A terminal with a backlog packs it into one MQTT message as JSON Lines
//! (`edubrain_schemas::message`). Through the real brokers: each line is its own event, so in
//! one message good events reach Kafka byte for byte, a bad one is dead-lettered with its
//! position and the good ones beside it still go through, a duplicate line is acknowledged and
//! not produced twice, and the terminal gets one ack naming every event it can name.

use std::collections::BTreeSet;
use std::time::Duration;

use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_schemas::ack::EdgeAck;
use edubrain_schemas::event::BandwidthSampled;
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::message::Packing;
use edubrain_schemas::topics::{KAFKA_DEADLETTER_TOPIC, KAFKA_EVENTS_TOPIC, TerminalTopic};
use edubrain_schemas::{Event, EventBody, Header, SCHEMA_VERSION};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "packed-messages-secret";

fn sample(id: u128, t: &TerminalTopic) -> Event {
    Event {
        header: Header {
            event_id: Uuid::from_u128(id),
            schema_version: SCHEMA_VERSION,
            city: t.city.clone(),
            school: t.school.clone(),
            classroom: t.classroom.clone(),
            terminal: t.terminal.clone(),
            event_time: chrono::Utc::now(),
        },
        body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: id as f64, up_kbps: 1.0 }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_line_of_a_packed_message_is_its_own_event() {
    let dir = tempfile::tempdir().unwrap();
    let me = TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: "c01-s1-r1".into(), terminal: "c01-s1-r1-t".into() };
    let other = TerminalTopic { classroom: "c01-s1-r2".into(), terminal: "c01-s1-r2-t".into(), ..me.clone() };
    let users = edubrain_e2e::hub_logins(SECRET, [terminal_username(&me), "edge-c01".to_string()]);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let edge = edubrain_e2e::start_edges(&["c01"], mosquitto.port, &tansu.bootstrap(), dir.path(), SECRET, &shutdown).await.remove(0);

    let (good_1, good_2) = (sample(1, &me).to_json(), sample(2, &me).to_json());
    let claims_other = sample(3, &other).to_json();
    let unreadable = br#"{"event_id": not json}"#.to_vec();
    let lines = [&good_1, &claims_other, &unreadable, &good_2, &good_1];
    let message = Packing::join(lines.iter().map(|l| l.as_slice()));

    // The terminal's own login both reads its acks and publishes (the broker uses the username
    // as client id, so a second connection would close the first).
    let user = terminal_username(&me);
    let mut opts = MqttOptions::new(&user, "127.0.0.1", mosquitto.port);
    opts.set_credentials(&user, derived_password(SECRET.as_bytes(), &user)).set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client.subscribe(me.acks_topic(), QoS::AtLeastOnce).await.unwrap();
    let mut published = false;
    let ack = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) if !published => {
                    published = true;
                    client.publish(me.events_topic(), QoS::AtLeastOnce, false, message.clone()).await.unwrap();
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => return EdgeAck::from_json(&p.payload).unwrap(),
                Ok(_) => {}
                Err(e) => panic!("terminal connection: {e}"),
            }
        }
    })
    .await
    .expect("an ack within 30 s");

    // One ack for the message: the good events and the duplicate are durable, the mismatch is
    // rejected with its position; the unreadable line has no id to name.
    let durable: BTreeSet<Uuid> = ack.durable.iter().copied().collect();
    assert_eq!(durable, BTreeSet::from([Uuid::from_u128(1), Uuid::from_u128(2)]), "{ack:?}");
    assert_eq!(ack.durable.len(), 3, "the duplicate line is acknowledged too: {ack:?}");
    assert_eq!(ack.rejected.len(), 1, "{ack:?}");
    assert_eq!(ack.rejected[0].event_id, Uuid::from_u128(3));
    assert_eq!(ack.rejected[0].rule, "identity_matches_topic");
    assert!(ack.rejected[0].reason.ends_with("(event 2 of 5 in the message)"), "{}", ack.rejected[0].reason);

    // Kafka: the two good events, each exactly the bytes of its line, once.
    let produced = edubrain_e2e::read_topic(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC, 2).await;
    let produced: BTreeSet<Vec<u8>> = produced.into_iter().map(|(v, _)| v).collect();
    assert_eq!(produced, BTreeSet::from([good_1.clone(), good_2.clone()]));
    // Both bad lines dead-lettered as received, each reason naming its place in the message.
    let dead = edubrain_e2e::read_topic(&tansu.bootstrap(), KAFKA_DEADLETTER_TOPIC, 2).await;
    let dead: Vec<(Vec<u8>, String)> = dead.into_iter().map(|(v, h)| (v, h["edubrain.reason"].clone())).collect();
    assert!(dead.iter().any(|(v, r)| *v == claims_other && r.ends_with("(event 2 of 5 in the message)")), "{dead:?}");
    assert!(dead.iter().any(|(v, r)| *v == unreadable && r.ends_with("(event 3 of 5 in the message)")), "{dead:?}");

    // Nothing more arrives: the duplicate was not produced again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = edubrain_e2e::read_to_end(&tansu.bootstrap(), KAFKA_EVENTS_TOPIC).await;
    assert_eq!(all.len(), 2, "each event once");
    let m = &edge.metrics;
    assert_eq!(m.messages_received.get(), 1);
    assert_eq!(edubrain_edge::metrics::total(&m.events_accepted), 2);
    assert_eq!(m.events_duplicate.get(), 1);
    assert_eq!(edubrain_edge::metrics::total(&m.events_rejected), 2);
    assert_eq!(m.message_events.get_sample_count(), 1);
    assert_eq!(m.message_events.get_sample_sum(), 5.0);

    shutdown.cancel();
    edge.wait().await.unwrap();
}

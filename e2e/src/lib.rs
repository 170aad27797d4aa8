//! Test-only crate: the end-to-end tests live in `tests/`; this holds what several share.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edubrain_edge::{EdgeConfig, RunningEdge};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The hub's logins for `users`, each with the password derived from the provisioning
/// `secret`: the (login, password) pairs `edubrain_brokers::Mosquitto::start` takes.
pub fn hub_logins(secret: &str, users: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    users
        .into_iter()
        .map(|u| {
            let password = edubrain_schemas::identity::derived_password(secret.as_bytes(), &u);
            (u, password)
        })
        .collect()
}

/// Starts an edge per city on the test brokers (logins from the demo's provisioning secret,
/// WALs under `dir/edge-{city}`) and waits until each holds its MQTT subscription, so nothing
/// published afterwards can miss it.
pub async fn start_edges(
    cities: &[&str],
    mqtt_port: u16,
    kafka: &str,
    dir: &Path,
    secret: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Vec<RunningEdge> {
    let mut edges = Vec::new();
    for city in cities {
        let mut c = EdgeConfig::on_loopback(city, mqtt_port, kafka, &dir.join(format!("edge-{city}")));
        c.login_with(secret);
        edges.push(edubrain_edge::start(c, shutdown.clone()).await.unwrap());
    }
    for e in &edges {
        wait_subscribed(e).await;
    }
    edges
}

/// Waits (up to 20 s) until `edge` holds its MQTT subscription.
pub async fn wait_subscribed(edge: &RunningEdge) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while edge.metrics.mqtt_subscribed.get() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the edge did not subscribe within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects with `options` to a broker that is listening and returns the CONNACK's code, or
/// the connection error (a refused login, a failed TLS handshake) as text.
pub async fn connack(options: rumqttc::MqttOptions) -> Result<rumqttc::ConnectReturnCode, String> {
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => return Ok(ack.code),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{e:?}")),
            Err(_) => return Err("no CONNACK within 10 s".into()),
        }
    }
}

/// A consumer assigned every partition of `topic` from the beginning (never committing), and
/// the partitions; with `eof`, the end of each partition is reported as `PartitionEOF`.
fn reader(brokers: &str, topic: &str, eof: bool) -> (StreamConsumer, std::collections::BTreeSet<i32>) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "e2e-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", eof.to_string())
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
    let mut tpl = TopicPartitionList::new();
    let partitions: std::collections::BTreeSet<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    (consumer, partitions)
}

/// Creates `topic` with one partition.
pub async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = admin.create_topics(&[NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &options).await.unwrap();
    assert!(created.iter().all(Result::is_ok), "creating {topic}: {created:?}");
}

/// Produces `n` records to `topic` with the idempotent producer, all enqueued before the first
/// delivery is awaited (so they are batched): record `i` has key `k{i}`, value `value(i)` and
/// two headers as edubrain's records carry, `edubrain.received_ms` = `i` and
/// `edubrain.edge_city` = `c01`. Returns once Kafka has confirmed every one.
pub async fn produce_with_headers(brokers: &str, topic: &str, n: u64, value: impl Fn(u64) -> Vec<u8>) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("linger.ms", "5").create().unwrap();
    let deliveries: Vec<_> = (0..n)
        .map(|i| {
            let (key, value, received) = (format!("k{i}"), value(i), i.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header { key: "edubrain.received_ms", value: Some(&received) })
                .insert(Header { key: "edubrain.edge_city", value: Some("c01") });
            producer.send_result(FutureRecord::to(topic).key(&key).payload(&value).headers(headers)).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Reads `n` records of `topic` from the beginning: (value, headers).
pub async fn read_topic(brokers: &str, topic: &str, n: usize) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let (consumer, _) = reader(brokers, topic, false);
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records of {topic} arrived", out.len()))
            .unwrap();
        out.push((msg.payload().unwrap_or_default().to_vec(), headers_of(&msg)));
    }
    out
}

/// Every record of `topic` from the beginning to its end now: (value, headers).
pub async fn read_to_end(brokers: &str, topic: &str) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let (consumer, mut pending) = reader(brokers, topic, true);
    let mut out = Vec::new();
    while !pending.is_empty() {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: partitions {pending:?} not read to the end within 30 s"));
        match msg {
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                pending.remove(&p);
            }
            Err(e) => panic!("reading {topic}: {e}"),
            Ok(msg) => out.push((msg.payload().unwrap_or_default().to_vec(), headers_of(&msg))),
        }
    }
    out
}

fn headers_of(msg: &impl Message) -> BTreeMap<String, String> {
    msg.headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
        .unwrap_or_default()
}

/// A binary the workspace built beside the running test (cargo builds every member's binaries
/// for `cargo test --workspace`).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(path.is_file(), "{} not built: run the tests with --workspace", path.display());
    path
}

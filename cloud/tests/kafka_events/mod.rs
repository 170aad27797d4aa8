//! Events produced straight into the events topic of a real Kafka-protocol broker, as the
//! edges would, for the cloud's ingest tests (kill -9, backfill), and the cloud config they run.

use std::path::Path;
use std::time::Duration;

use edubrain_schemas::Event;
use edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Creates the events topic with `partitions` and returns a producer for it.
pub async fn events_topic(bootstrap: &str, partitions: i32) -> FutureProducer {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    admin.create_topics(&[NewTopic::new(KAFKA_EVENTS_TOPIC, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create().unwrap()
}

/// Produces `events` keyed by classroom (as the edges key them) and waits for every ack.
pub async fn produce(producer: &FutureProducer, events: impl Iterator<Item = Event>) {
    let sends = events.map(|e| {
        let (key, payload) = (e.header.classroom.clone(), e.to_json());
        let producer = producer.clone();
        async move { producer.send(FutureRecord::to(KAFKA_EVENTS_TOPIC).key(&key).payload(&payload), Duration::from_secs(30)).await }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
}

/// Writes a cloud config at `path`: its warehouse at `root`, Kafka at `bootstrap`, the API on a
/// free port, flushes of `flush_max_events` (or every 50 ms), compaction once a partition has
/// `compact_min_files` small files, at most every `interval_secs`.
pub fn write_cloud_config(
    path: &Path,
    root: &Path,
    bootstrap: &str,
    flush_max_events: usize,
    compact_min_files: usize,
    interval_secs: u64,
) {
    let toml = format!(
        "warehouse_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n[kafka]\nbrokers = {bootstrap:?}\n\
         [ingest]\nflush_max_events = {flush_max_events}\nflush_interval_ms = 50\n\
         [maintenance]\ncompact_min_files = {compact_min_files}\ninterval_secs = {interval_secs}\n",
        root.display().to_string()
    );
    std::fs::write(path, toml).unwrap();
}

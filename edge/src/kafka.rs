//! Kafka side of the edge: topic creation at start-up (Tansu does not auto-create topics) and
//! the idempotent, `acks=all` producer.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

use crate::EdgeError;
use crate::config::KafkaConfig;

/// Creates each topic unless it exists. Retries while the broker is still starting.
pub async fn ensure_topics(brokers: &str, topics: &[(&str, i32)], replication: i32) -> Result<(), EdgeError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| EdgeError::Kafka(format!("admin client for {brokers}: {e}")))?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(replication))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut last = String::new();
    for attempt in 0..30 {
        match admin.create_topics(&new, &opts).await {
            Ok(results) => {
                let mut pending = false;
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => {
                            last = format!("creating topic {name}: {code}");
                            pending = true;
                        }
                    }
                }
                if !pending {
                    return Ok(());
                }
            }
            Err(e) => last = format!("create_topics on {brokers}: {e}"),
        }
        tracing::debug!(attempt, error = %last, "topics not ready yet");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(EdgeError::Kafka(last))
}

/// The producer: idempotent (no duplicates or reordering from librdkafka's own retries) and
/// `acks=all` (a record is confirmed only once every in-sync replica has it).
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, EdgeError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "300000");
    for (k, v) in &config.producer {
        c.set(k, v);
    }
    c.create().map_err(|e| EdgeError::Kafka(format!("producer for {}: {e}", config.brokers)))
}

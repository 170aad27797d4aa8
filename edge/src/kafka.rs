//! Kafka side of the edge: topic creation (Tansu does not auto-create topics) and the
//! idempotent, `acks=all` producer, both over the configured TLS and SASL.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, FutureProducer, Producer};

use crate::EdgeError;
use crate::config::KafkaConfig;

/// `bootstrap.servers` and the security settings every client of the edge shares.
pub(crate) fn client_config(config: &KafkaConfig) -> Result<ClientConfig, EdgeError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    let security = edubrain_process::kafka_security::client_properties(config.tls.as_ref(), config.sasl.as_ref())
        .map_err(|e| EdgeError::Config(e.to_string()))?;
    for (key, value) in security {
        c.set(key, value);
    }
    Ok(c)
}

/// Remembers the last client-level error librdkafka reported (they are otherwise only logged),
/// so start-up can stop at once, naming the cause, when the brokers refuse the edge's
/// credentials or its TLS handshake instead of retrying into a timeout.
#[derive(Default)]
struct StartupContext {
    refused: Mutex<Option<String>>,
}

/// Only connects; it never sends a message, so it has no deliveries to hear of.
impl rdkafka::producer::ProducerContext for StartupContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl ClientContext for StartupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        let refused_login = error.rdkafka_error_code().is_some_and(|code| {
            matches!(code, RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL)
        });
        // Under TLS 1.3 a server that requires a client certificate refuses one only after the
        // handshake, with an alert: librdkafka reports it as a transport error naming the alert.
        let refused_handshake = reason.contains("SSL") && reason.contains("alert");
        if refused_login || refused_handshake {
            *self.refused.lock().expect("refusal lock") = Some(format!("{error}: {reason}"));
        }
    }
}

/// The topics the edge produces to: (name, partitions), and their replication factor.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub names: Vec<(String, i32)>,
    pub replication: i32,
}

impl Topics {
    pub fn of(config: &KafkaConfig) -> Self {
        let names = vec![
            (config.events_topic.clone(), config.partitions),
            (config.deadletter_topic.clone(), config.partitions.clamp(1, 3)),
            (config.rollups_topic.clone(), config.partitions.clamp(1, 3)),
            (config.audit_topic.clone(), 1),
        ];
        Topics { names, replication: config.replication }
    }
}

/// Whether the topics exist, or the brokers could not be reached within the patience given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicsReady {
    Yes,
    Unreachable(String),
}

/// Creates each topic unless it exists, retrying while the brokers are unreachable or still
/// starting, for `patience` (`None`: until they answer). A refused login or TLS handshake is an
/// error at once ([`EdgeError::KafkaRefused`]): retrying cannot fix it.
pub(crate) async fn ensure_topics(config: &KafkaConfig, topics: &Topics, patience: Option<Duration>) -> Result<TopicsReady, EdgeError> {
    let started = tokio::time::Instant::now();
    let brokers = &config.brokers;
    let admin: AdminClient<DefaultClientContext> =
        client_config(config)?.create().map_err(|e| EdgeError::Kafka(format!("admin client for {brokers}: {e}")))?;
    // An admin client never polls its main queue, so its context never hears of a refused
    // login; a producer with the same settings connects too, and is polled here for exactly that.
    let probe: BaseProducer<StartupContext> = client_config(config)?
        .create_with_context(StartupContext::default())
        .map_err(|e| EdgeError::Kafka(format!("probe client for {brokers}: {e}")))?;
    let new: Vec<NewTopic<'_>> =
        topics.names.iter().map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(topics.replication))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))).request_timeout(Some(Duration::from_secs(10)));
    let refused = || {
        probe.poll(Duration::ZERO);
        let refusal = probe.context().refused.lock().expect("refusal lock").take();
        refusal.map(|r| EdgeError::KafkaRefused(format!("{brokers} refused the edge's {}: {r}", credentials(config))))
    };
    let mut last = String::new();
    let mut pause = Duration::from_millis(500);
    for attempt in 0u64.. {
        // A refused login or handshake surfaces in the context long before the request times
        // out, so it is watched while the request waits.
        let request = admin.create_topics(&new, &opts);
        tokio::pin!(request);
        let outcome = loop {
            tokio::select! {
                outcome = &mut request => break outcome,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(refusal) = refused() {
                        return Err(refusal);
                    }
                    // A request to brokers that are down waits for its own timeout; patience
                    // ends sooner.
                    if patience.is_some_and(|p| started.elapsed() >= p) {
                        let waited = if last.is_empty() { "no answer yet".to_string() } else { last };
                        return Ok(TopicsReady::Unreachable(format!("{brokers}: {waited} after {:?}", started.elapsed())));
                    }
                }
            }
        };
        match outcome {
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
                    return Ok(TopicsReady::Yes);
                }
            }
            Err(e) => last = format!("create_topics on {brokers}: {e}"),
        }
        if let Some(refusal) = refused() {
            return Err(refusal);
        }
        if patience.is_some_and(|p| started.elapsed() >= p) {
            return Ok(TopicsReady::Unreachable(last));
        }
        tracing::debug!(attempt, error = %last, "topics not ready yet");
        tokio::time::sleep(pause).await;
        // Waiting for a broker that is down: try less often, up to every 5 s.
        if patience.is_none() {
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
    Err(EdgeError::Kafka(format!("gave up creating topics: {last}")))
}

/// The producer's settings: idempotent (no duplicates or reordering from librdkafka's own
/// retries) and `acks=all` (a record is confirmed only once every in-sync replica has it), then
/// the configured extra properties.
pub(crate) fn producer_config(config: &KafkaConfig) -> Result<ClientConfig, EdgeError> {
    let mut c = client_config(config)?;
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "300000");
    for (k, v) in &config.producer {
        c.set(k, v);
    }
    Ok(c)
}

/// A producer with [`producer_config`]'s settings whose deliveries are awaited one by one (the
/// dead-letter replay; the shipper has its own, see `ship`).
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, EdgeError> {
    producer_config(config)?.create().map_err(|e| EdgeError::Kafka(format!("producer for {}: {e}", config.brokers)))
}

/// What the edge presented to the brokers, for errors: the login and the transport, never the
/// password.
fn credentials(config: &KafkaConfig) -> String {
    let transport = if config.tls.is_some() { "TLS" } else { "plaintext" };
    match &config.sasl {
        Some(sasl) => format!("SASL {} login as {:?} over {transport}", sasl.mechanism.as_str(), sasl.username),
        None => format!("{transport} connection"),
    }
}

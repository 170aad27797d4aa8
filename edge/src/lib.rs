//! edubrain edge: one per city. Terminals publish over MQTT; the edge validates, deduplicates
//! and produces to Kafka, and acknowledges each MQTT message only after Kafka confirmed it.
//!
//! - [`config`]: TOML + env configuration.
//! - [`classify`]: the pure core: accept / duplicate / reject (with field and rule) per message.
//! - [`kafka`]: topic creation and the idempotent `acks=all` producer.
//! - [`metrics`]: Prometheus metrics; [`http`]: `/metrics` and `/healthz`.
//! - [`start`] / [`run`]: wire it together.
//!
//! Delivery guarantee: the edge's MQTT session is persistent and acks are manual. A message is
//! acknowledged to the broker only after its Kafka delivery report (or, for a duplicate, after
//! every message received before it), in receive order. If the edge dies, the broker redelivers
//! what was not acknowledged; the dedup window and the cloud's `event_id` uniqueness absorb the
//! redelivery.

pub mod classify;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::Utc;
use edubrain_schemas::ValidationPolicy;
use edubrain_schemas::dedup::DedupWindow;
use edubrain_schemas::topics::city_subscription;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use classify::{Outcome, Rejection, classify};
pub use config::EdgeConfig;
pub use metrics::EdgeMetrics;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("config: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("http listener {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A started edge.
pub struct RunningEdge {
    pub http_addr: SocketAddr,
    pub metrics: EdgeMetrics,
    task: tokio::task::JoinHandle<Result<(), EdgeError>>,
}

impl RunningEdge {
    /// Waits until the edge has stopped (after `shutdown` is cancelled, or on a fatal error).
    pub async fn wait(self) -> Result<(), EdgeError> {
        self.task.await.map_err(|e| EdgeError::Mqtt(format!("edge task panicked: {e}")))?
    }
}

/// Runs the edge until `shutdown` is cancelled.
pub async fn run(config: EdgeConfig, shutdown: CancellationToken) -> Result<(), EdgeError> {
    start(config, shutdown).await?.wait().await
}

/// Creates the Kafka topics, binds the HTTP listener and starts pumping MQTT into Kafka.
pub async fn start(config: EdgeConfig, shutdown: CancellationToken) -> Result<RunningEdge, EdgeError> {
    config.check()?;
    let metrics = EdgeMetrics::new(&config.city);
    kafka::ensure_topics(
        &config.kafka.brokers,
        &[(&config.kafka.events_topic, config.kafka.partitions), (&config.kafka.deadletter_topic, config.kafka.partitions.clamp(1, 3))],
        config.kafka.replication,
    )
    .await?;
    let producer = kafka::producer(&config.kafka)?;
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .map_err(|e| EdgeError::Http { addr: config.http_listen.clone(), source: e })?;
    let http_addr = listener.local_addr().map_err(|e| EdgeError::Http { addr: config.http_listen.clone(), source: e })?;
    tokio::spawn(http::serve(listener, metrics.clone(), shutdown.clone()));
    tracing::info!(city = %config.city, %http_addr, mqtt = %format!("{}:{}", config.mqtt.host, config.mqtt.port), kafka = %config.kafka.brokers, "edge started");
    let task = tokio::spawn(pump(config, producer, metrics.clone(), shutdown));
    Ok(RunningEdge { http_addr, metrics, task })
}

/// A message waiting for its Kafka confirmation before it may be acknowledged.
type Pending = Pin<Box<dyn Future<Output = Publish> + Send>>;

async fn pump(config: EdgeConfig, producer: FutureProducer, metrics: EdgeMetrics, shutdown: CancellationToken) -> Result<(), EdgeError> {
    let mut opts = MqttOptions::new(config.client_id(), config.mqtt.host.clone(), config.mqtt.port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(config.mqtt.keepalive_secs))
        .set_max_packet_size(config.mqtt.max_packet_bytes, config.mqtt.max_packet_bytes);
    if let (Some(u), Some(p)) = (&config.mqtt.username, &config.mqtt.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, eventloop) = AsyncClient::new(opts, 4096);
    // Unbounded on purpose: the broker's in-flight window for this client bounds it, and a
    // bounded channel here could block the event loop that must keep sending our acks.
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let loop_stop = CancellationToken::new();
    let poller =
        tokio::spawn(poll_mqtt(eventloop, client.clone(), city_subscription(&config.city), tx, metrics.clone(), loop_stop.clone()));

    let policy = ValidationPolicy { max_clock_ahead: chrono::Duration::hours(config.max_clock_ahead_hours), ..ValidationPolicy::default() };
    let mut dedup = DedupWindow::new(config.dedup_capacity);
    let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            Some(publish) = inflight.next(), if !inflight.is_empty() => {
                metrics.inflight_events.dec();
                if let Err(e) = client.ack(&publish).await {
                    tracing::warn!(error = %e, "could not queue MQTT ack; the broker will redeliver");
                }
            }
            msg = rx.recv(), if !stopping => match msg {
                Some(publish) => {
                    let pending = handle(&config, &producer, &metrics, &policy, &mut dedup, publish).await;
                    metrics.inflight_events.inc();
                    inflight.push_back(pending);
                }
                None => stopping = true,
            },
            _ = shutdown.cancelled(), if !stopping => {
                tracing::info!(inflight = inflight.len(), "edge stopping: draining Kafka deliveries");
                stopping = true;
            }
        }
        if stopping && inflight.is_empty() {
            break;
        }
    }
    // Give the event loop a moment to send the last acks, then leave cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.try_disconnect();
    loop_stop.cancel();
    let _ = poller.await;
    Ok(())
}

async fn poll_mqtt(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filter: String,
    tx: mpsc::UnboundedSender<Publish>,
    metrics: EdgeMetrics,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    // The processor is gone (shutting down); unacked messages stay with the broker.
                    metrics.mqtt_connected.set(0);
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                metrics.mqtt_subscribed.set(1);
                tracing::info!(%filter, "edge subscribed");
            }
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                backoff = Duration::from_millis(100);
                tracing::info!(session_present = ack.session_present, %filter, "edge connected to MQTT");
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "could not subscribe");
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.set(0);
                metrics.mqtt_subscribed.set(0);
                metrics.mqtt_connection_errors.inc();
                tracing::warn!(error = %e, "MQTT connection error; reconnecting in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Classifies one message and starts its delivery; the returned future resolves (to the
/// message, for acking) once Kafka has confirmed it.
async fn handle(
    config: &EdgeConfig,
    producer: &FutureProducer,
    metrics: &EdgeMetrics,
    policy: &ValidationPolicy,
    dedup: &mut DedupWindow,
    publish: Publish,
) -> Pending {
    metrics.messages_received.inc();
    metrics.received_bytes.inc_by(publish.payload.len() as u64);
    let received = Utc::now();
    let started = Instant::now();
    let received_ms = received.timestamp_millis().to_string();
    match classify(&config.city, &publish.topic, &publish.payload, received, policy, dedup) {
        Outcome::Accept { event } => {
            let event_type = event.event_type().as_str();
            metrics.events_accepted.with_label_values(&[event_type]).inc();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "edubrain.received_ms", value: Some(received_ms.as_str()) })
                .insert(Header { key: "edubrain.edge_city", value: Some(config.city.as_str()) });
            let out = Outgoing { topic: config.kafka.events_topic.clone(), key: event.header.classroom.clone(), headers };
            deliver(producer.clone(), out, publish, metrics.clone(), started).await
        }
        Outcome::Duplicate => {
            metrics.events_duplicate.inc();
            Box::pin(std::future::ready(publish))
        }
        Outcome::Reject(r) => {
            metrics.events_rejected.with_label_values(&[r.rule]).inc();
            tracing::warn!(topic = %publish.topic, field = %r.field, rule = r.rule, reason = %r.reason, "event rejected to dead-letter");
            // The raw bytes are kept exactly as received; the context travels in headers.
            let headers = OwnedHeaders::new()
                .insert(Header { key: "edubrain.rule", value: Some(r.rule) })
                .insert(Header { key: "edubrain.field", value: Some(r.field.as_str()) })
                .insert(Header { key: "edubrain.reason", value: Some(r.reason.as_str()) })
                .insert(Header { key: "edubrain.mqtt_topic", value: Some(publish.topic.as_str()) })
                .insert(Header { key: "edubrain.edge_city", value: Some(config.city.as_str()) })
                .insert(Header { key: "edubrain.received_ms", value: Some(received_ms.as_str()) });
            let out = Outgoing { topic: config.kafka.deadletter_topic.clone(), key: config.city.clone(), headers };
            deliver(producer.clone(), out, publish, metrics.clone(), started).await
        }
    }
}

struct Outgoing {
    topic: String,
    key: String,
    headers: OwnedHeaders,
}

/// Enqueues now (so librdkafka sees records in receive order) and returns a future that
/// resolves when the record is confirmed. A failed delivery is produced again until it lands:
/// the message is never acknowledged to MQTT before that.
async fn deliver(producer: FutureProducer, out: Outgoing, publish: Publish, metrics: EdgeMetrics, started: Instant) -> Pending {
    let first = enqueue(&producer, &out, &publish).await;
    Box::pin(async move {
        let mut pending = first;
        loop {
            match pending.await {
                Ok(Ok(_)) => {
                    metrics.kafka_delivered.with_label_values(&[out.topic.as_str()]).inc();
                    metrics.delivery_latency.observe(started.elapsed().as_secs_f64());
                    return publish;
                }
                Ok(Err((e, _))) => {
                    metrics.kafka_delivery_errors.inc();
                    tracing::warn!(error = %e, topic = %out.topic, "Kafka delivery failed; producing again");
                }
                Err(_) => {
                    metrics.kafka_delivery_errors.inc();
                    tracing::warn!(topic = %out.topic, "Kafka delivery report lost; producing again");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            pending = enqueue(&producer, &out, &publish).await;
        }
    })
}

async fn enqueue(producer: &FutureProducer, out: &Outgoing, publish: &Publish) -> DeliveryFuture {
    loop {
        let record = FutureRecord::to(&out.topic).key(&out.key).payload(&publish.payload[..]).headers(out.headers.clone());
        match producer.send_result(record) {
            Ok(f) => return f,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // Backpressure: stop taking MQTT messages until librdkafka drains.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => {
                tracing::error!(error = %e, topic = %out.topic, "could not enqueue record; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

//! Publishes terminals' events over MQTT QoS 1, one connection per terminal (its identity),
//! paced to simulated time. Counts every publish and every PUBACK so callers can show progress
//! and check nothing is left unacknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use edubrain_schemas::Event;
use edubrain_schemas::topics::TerminalTopic;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AgentError;

/// Where the terminals connect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
}

/// Maps simulated time onto wall time.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub sim_start: DateTime<Utc>,
    pub wall_start: Instant,
    /// Simulated seconds per wall second; `f64::INFINITY` publishes as fast as the broker takes.
    pub speed: f64,
}

impl Pacing {
    fn due(&self, t: DateTime<Utc>) -> Instant {
        if !self.speed.is_finite() {
            return self.wall_start;
        }
        let sim = (t - self.sim_start).num_milliseconds().max(0) as f64 / 1000.0;
        self.wall_start + Duration::from_secs_f64(sim / self.speed)
    }
}

/// Shared counters, readable while publishing runs.
#[derive(Debug, Default)]
pub struct PublishProgress {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connections: AtomicU64,
    pub reconnects: AtomicU64,
}

impl PublishProgress {
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
}

/// Publishes one terminal's events (already in time order) and waits for every PUBACK.
pub async fn publish_terminal(
    target: &MqttTarget,
    topic: &TerminalTopic,
    events: &[Event],
    pacing: Pacing,
    progress: Arc<PublishProgress>,
    shutdown: CancellationToken,
) -> Result<u64, AgentError> {
    let mut opts = MqttOptions::new(topic.terminal.clone(), target.host.clone(), target.port);
    opts.set_keep_alive(Duration::from_secs(20));
    opts.set_clean_session(true);
    opts.set_inflight(64);
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let topic_name = topic.events_topic();
    let total = events.len() as u64;

    // The event loop must be polled continuously (keepalives, acks) while we publish.
    let loop_progress = progress.clone();
    let loop_shutdown = shutdown.clone();
    let poller = tokio::spawn(async move {
        let mut acked = 0u64;
        let mut backoff = Duration::from_millis(100);
        while acked < total {
            let ev = tokio::select! {
                _ = loop_shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    loop_progress.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    loop_progress.connections.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc reconnects on the next poll and resends unacknowledged publishes.
                    tracing::debug!(error = %e, "terminal connection error; reconnecting");
                    loop_progress.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = loop_shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        acked
    });

    for event in events {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(pacing.due(event.header.event_time)) => {}
        }
        client
            .publish(topic_name.as_str(), QoS::AtLeastOnce, false, event.to_json())
            .await
            .map_err(|e| AgentError::Mqtt(format!("publish on {topic_name}: {e}")))?;
        progress.published.fetch_add(1, Ordering::Relaxed);
    }
    let acked = poller.await.map_err(|e| AgentError::Mqtt(format!("event loop of {}: {e}", topic.terminal)))?;
    let _ = client.try_disconnect();
    Ok(acked)
}

/// Publishes arbitrary payloads on one topic as client `client_id` (QoS 1) and waits for their
/// PUBACKs. For classroom software that is not a full agent, and for tests of bad input.
pub async fn publish_raw(target: &MqttTarget, client_id: &str, topic: &str, payloads: Vec<Vec<u8>>) -> Result<(), AgentError> {
    let mut opts = MqttOptions::new(client_id, target.host.clone(), target.port);
    opts.set_keep_alive(Duration::from_secs(20)).set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let total = payloads.len();
    let sender = {
        let client = client.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            for p in payloads {
                client.publish(topic.as_str(), QoS::AtLeastOnce, false, p).await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked < total {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Err(AgentError::Mqtt(format!("{acked}/{total} PUBACKs on {topic} within 30s"))),
            Ok(Ok(MqttEvent::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(AgentError::Mqtt(format!("raw publish on {topic}: {e}"))),
        }
    }
    sender.await.map_err(|e| AgentError::Mqtt(e.to_string()))?.map_err(|e| AgentError::Mqtt(e.to_string()))?;
    let _ = client.try_disconnect();
    Ok(())
}

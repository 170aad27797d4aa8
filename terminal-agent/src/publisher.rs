//! Publishes terminals' events over MQTT QoS 1, one connection per terminal (its identity),
//! paced to simulated time. Counts every publish and every PUBACK so callers can show progress
//! and check nothing is left unacknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use edubrain_schemas::Event;
use edubrain_schemas::ack::EdgeAck;
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::message::Packing;
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
    /// The hub's provisioning secret: each terminal logs in with its username and the
    /// password derived from it ([`edubrain_schemas::identity`]). None: anonymous.
    #[serde(default)]
    pub provisioning_secret: Option<String>,
    /// This device's own password (a real terminal's, read from a file); wins over the secret.
    #[serde(skip)]
    pub password: Option<String>,
    /// TLS to the broker's TLS listener, with this device's client certificate (whose common
    /// name is its login); see `edubrain_process::mqtt_tls`.
    #[serde(default)]
    pub tls: Option<edubrain_process::mqtt_tls::MqttTls>,
    /// MQTT keepalive: the broker drops a terminal it hears nothing from for 1.5 times this.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// Events a terminal with a backlog packs into one MQTT message (JSON Lines, see
    /// [`edubrain_schemas::message`]), up to [`PACK_MAX_BYTES`]; 1 sends one event per message.
    /// A terminal that is keeping up has one event at a time to send and sends it at once.
    #[serde(default = "default_pack_max_events")]
    pub pack_max_events: usize,
}

fn default_keepalive_secs() -> u64 {
    20
}

fn default_pack_max_events() -> usize {
    64
}

/// The most payload bytes packed into one message: under the broker's 64 KiB message limit
/// (`deploy/mosquitto/edubrain.conf`) with room to spare.
pub const PACK_MAX_BYTES: usize = 48 * 1024;

impl MqttTarget {
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            provisioning_secret: None,
            password: None,
            tls: None,
            keepalive_secs: default_keepalive_secs(),
            pack_max_events: default_pack_max_events(),
        }
    }

    /// How this terminal packs a backlog into messages.
    pub fn packing(&self) -> Packing {
        Packing { max_events: self.pack_max_events.max(1), max_bytes: PACK_MAX_BYTES }
    }

    pub fn with_secret(mut self, secret: &str) -> Self {
        self.provisioning_secret = Some(secret.into());
        self
    }

    /// MQTT options of a terminal: its identity as username and client id, QoS 1 window,
    /// packets up to the broker's 64 KiB limit.
    fn terminal_options(&self, topic: &TerminalTopic) -> Result<MqttOptions, AgentError> {
        let mut opts = self.options(&terminal_username(topic))?;
        opts.set_keep_alive(Duration::from_secs(self.keepalive_secs))
            .set_clean_session(true)
            .set_inflight(64)
            .set_max_packet_size(64 * 1024, 64 * 1024);
        Ok(opts)
    }

    /// MQTT options for a client logging in as `username` (also its client id); over TLS when
    /// configured (a certificate or file that cannot be used is an error naming it).
    fn options(&self, username: &str) -> Result<MqttOptions, AgentError> {
        let mut opts = MqttOptions::new(username, self.host.clone(), self.port);
        if let Some(password) = &self.password {
            opts.set_credentials(username, password.clone());
        } else if let Some(secret) = &self.provisioning_secret {
            opts.set_credentials(username, derived_password(secret.as_bytes(), username));
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(tls.transport().map_err(|e| AgentError::Mqtt(e.to_string()))?);
        }
        Ok(opts)
    }
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
    /// Events the edge refused (dead-lettered), as told by its acks.
    pub rejected: AtomicU64,
    /// Unacknowledged events sent again.
    pub resent: AtomicU64,
    /// Events the edge deferred (rate limit); each is resent after the edge's delay.
    pub deferred: AtomicU64,
    /// Times a terminal's outbox was full and it waited.
    pub outbox_full: AtomicU64,
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
    let opts = target.terminal_options(topic)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let topic_name = topic.events_topic();
    let total = events.len() as u64;
    // Events per message, in publish order: a PUBACK acknowledges the events of its message.
    let (packed_tx, mut packed_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();

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
                    let n = packed_rx.try_recv().unwrap_or(1);
                    acked += n;
                    loop_progress.acked.fetch_add(n, Ordering::Relaxed);
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

    let packing = target.packing();
    let mut next = 0usize;
    while next < events.len() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(pacing.due(events[next].header.event_time)) => {}
        }
        // Everything due by now goes out packed, as a terminal with a backlog sends it.
        let now = Instant::now();
        let due = events[next..].iter().take_while(|e| pacing.due(e.header.event_time) <= now).count().max(1);
        let json: Vec<Vec<u8>> = events[next..next + due].iter().map(Event::to_json).collect();
        let mut rest = &json[..];
        while !rest.is_empty() {
            let n = packing.take(rest.iter().map(Vec::len));
            let (pack, tail) = rest.split_at(n);
            let _ = packed_tx.send(n as u64);
            client
                .publish(topic_name.as_str(), QoS::AtLeastOnce, false, Packing::join(pack.iter().map(Vec::as_slice)))
                .await
                .map_err(|e| AgentError::Mqtt(format!("publish on {topic_name}: {e}")))?;
            progress.published.fetch_add(n as u64, Ordering::Relaxed);
            rest = tail;
        }
        next += due;
    }
    let acked = poller.await.map_err(|e| AgentError::Mqtt(format!("event loop of {}: {e}", topic.terminal)))?;
    let _ = client.try_disconnect();
    Ok(acked)
}

/// Publishes arbitrary payloads on one topic as `username` (QoS 1) and waits for their
/// PUBACKs. For tests of bad input and of the broker's ACL.
pub async fn publish_raw(target: &MqttTarget, username: &str, topic: &str, payloads: Vec<Vec<u8>>) -> Result<(), AgentError> {
    let mut opts = target.options(username)?;
    opts.set_keep_alive(Duration::from_secs(target.keepalive_secs)).set_max_packet_size(1024 * 1024, 1024 * 1024);
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

/// What the loop that polls a terminal's MQTT connection tells the terminal.
enum FromBroker {
    Connected,
    Ack(Vec<u8>),
}

/// A factor in [0.5, 1): std's per-instance random hasher keys are the randomness, so no RNG
/// needs seeding for this.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher().finish();
    0.5 + (h >> 11) as f64 / (1u64 << 53) as f64 * 0.5
}

/// How often unacknowledged events are checked for a resend.
const RESEND_CHECK: Duration = Duration::from_millis(500);

/// Publishes one terminal's events through its durable outbox: each event is fsynced to the
/// outbox when it is created (at its simulated time), then published; it leaves the outbox only
/// when the edge's ack says it is in the edge's WAL, and is resent until then. Returns when
/// every event was created and acknowledged by the edge, or at shutdown (what is left stays in
/// the outbox for the next run).
pub async fn publish_terminal_durable(
    target: &MqttTarget,
    topic: &TerminalTopic,
    events: &[Event],
    pacing: Pacing,
    outbox: crate::outbox::Outbox,
    progress: Arc<PublishProgress>,
    shutdown: CancellationToken,
) -> Result<u64, AgentError> {
    let outbox = Arc::new(std::sync::Mutex::new(outbox));
    let (fresh_tx, fresh_rx) = tokio::sync::mpsc::unbounded_channel();
    let create = async {
        let mut next = 0usize;
        let mut full_logged = false;
        while next < events.len() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(pacing.due(events[next].header.event_time)) => {}
            }
            let now = Instant::now();
            let mut batch = Vec::new();
            while let Some(e) = events.get(next).filter(|e| pacing.due(e.header.event_time) <= now) {
                batch.push((e.header.event_id, e.to_json()));
                next += 1;
            }
            let n = batch.len();
            let pushed = push_to_outbox(&outbox, batch).await?;
            let written = pushed.written;
            if pushed.taken < n {
                // Full: keep the refused events (the simulator's classroom waits) and retry.
                next -= n - pushed.taken;
                progress.outbox_full.fetch_add(1, Ordering::Relaxed);
                if !full_logged {
                    tracing::warn!(error = %outbox.lock().expect("outbox lock").full_error(), "outbox full; waiting for acks");
                    full_logged = true;
                }
                tokio::time::sleep(RESEND_CHECK).await;
            } else {
                full_logged = false;
            }
            progress.published.fetch_add(written.len() as u64, Ordering::Relaxed);
            let _ = fresh_tx.send(written);
        }
        drop(fresh_tx);
        Ok::<_, AgentError>(())
    };
    let send = send_outbox(target, topic, outbox.clone(), fresh_rx, progress.clone(), shutdown.clone());
    let ((), acked) = tokio::try_join!(create, send)?;
    Ok(acked)
}

/// Writes `batch` to the outbox (one fsync) off the async threads; returns what it took
/// (less than given when the outbox is full).
pub async fn push_to_outbox(
    outbox: &Arc<std::sync::Mutex<crate::outbox::Outbox>>,
    batch: Vec<(uuid::Uuid, Vec<u8>)>,
) -> Result<crate::outbox::Pushed, AgentError> {
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || ob.lock().expect("outbox lock").push(batch))
        .await
        .map_err(|e| AgentError::Outbox(format!("outbox write panicked: {e}")))?
}

/// Sends a terminal's outbox to its edge over one MQTT connection and applies the edge's acks:
/// events handed in on `fresh` (already durable in `outbox`) go out at once, unacknowledged
/// ones again after the resend timeout or a reconnect, deferred ones after the edge's delay.
/// Returns how many events the edge acknowledged once `fresh` is closed and the outbox is
/// empty, or at shutdown.
pub async fn send_outbox(
    target: &MqttTarget,
    topic: &TerminalTopic,
    outbox: Arc<std::sync::Mutex<crate::outbox::Outbox>>,
    mut fresh: tokio::sync::mpsc::UnboundedReceiver<Vec<crate::outbox::OutboxEvent>>,
    progress: Arc<PublishProgress>,
    shutdown: CancellationToken,
) -> Result<u64, AgentError> {
    let opts = target.terminal_options(topic)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let events_topic = topic.events_topic();
    let acks_topic = topic.acks_topic();

    // The event loop is polled continuously (keepalives, acks) whatever the publisher does.
    let (to_terminal, mut from_broker) = tokio::sync::mpsc::unbounded_channel();
    let poller = {
        let (client, acks_topic, progress, stop) = (client.clone(), acks_topic.clone(), progress.clone(), shutdown.child_token());
        let stop_guard = stop.clone();
        let handle = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == acks_topic => {
                        let _ = to_terminal.send(FromBroker::Ack(p.payload.to_vec()));
                    }
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        progress.connections.fetch_add(1, Ordering::Relaxed);
                        backoff = Duration::from_millis(100);
                        if let Err(e) = client.try_subscribe(acks_topic.clone(), QoS::AtMostOnce) {
                            tracing::warn!(error = %e, "could not subscribe to the acks topic");
                        }
                        let _ = to_terminal.send(FromBroker::Connected);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "terminal connection error; reconnecting");
                        progress.reconnects.fetch_add(1, Ordering::Relaxed);
                        // Full jitter, so a hub's terminals do not all come back at once.
                        let wait = backoff.mul_f64(jitter());
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        (handle, stop_guard)
    };

    // Publishes `items`, packed (see [`Packing`]), and marks them sent. Never waits on the
    // client: events of a message the full request queue refuses stay due and go out with the
    // next resend tick (marking them sent would park them for the whole resend timeout, which
    // the rate-limit test caught).
    let packing = target.packing();
    let send = |items: Vec<crate::outbox::OutboxEvent>| {
        let mut sent = Vec::with_capacity(items.len());
        let mut rest = &items[..];
        while !rest.is_empty() {
            let n = packing.take(rest.iter().map(|(_, p)| p.len()));
            let (pack, tail) = rest.split_at(n);
            let payload = Packing::join(pack.iter().map(|(_, p)| p.as_slice()));
            if client.try_publish(events_topic.as_str(), QoS::AtLeastOnce, false, payload).is_err() {
                break;
            }
            sent.extend(pack.iter().map(|(id, _)| *id));
            rest = tail;
        }
        let n = sent.len() as u64;
        outbox.lock().expect("outbox lock").mark_sent(sent, Instant::now().into_std());
        n
    };

    let mut acked = 0u64;
    let mut connected = false;
    let mut fresh_open = true;
    let mut resend = tokio::time::interval(RESEND_CHECK);
    let result = loop {
        if !fresh_open && outbox.lock().expect("outbox lock").is_empty() {
            break Ok(acked);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(acked),
            batch = fresh.recv(), if fresh_open => match batch {
                None => fresh_open = false,
                Some(written) => if connected {
                    let unsent = outbox.lock().expect("outbox lock").unsent(written);
                    send(unsent);
                },
            },
            Some(msg) = from_broker.recv() => match msg {
                FromBroker::Connected => {
                    connected = true;
                    // A new session holds none of the old in-flight messages: all are due.
                    outbox.lock().expect("outbox lock").reset_sent();
                    resend.reset_immediately();
                }
                FromBroker::Ack(bytes) => match EdgeAck::from_json(&bytes) {
                    Ok(ack) => {
                        let ob = outbox.clone();
                        let now = Instant::now().into_std();
                        let outcome = tokio::task::spawn_blocking(move || ob.lock().expect("outbox lock").ack(&ack, now))
                            .await
                            .map_err(|e| AgentError::Outbox(format!("outbox ack panicked: {e}")))??;
                        let n = (outcome.durable + outcome.rejected) as u64;
                        acked += n;
                        progress.acked.fetch_add(n, Ordering::Relaxed);
                        progress.rejected.fetch_add(outcome.rejected as u64, Ordering::Relaxed);
                        progress.deferred.fetch_add(outcome.deferred as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, topic = %acks_topic, "unreadable ack from the edge; ignored"),
                },
            },
            _ = resend.tick(), if connected => {
                let due = outbox.lock().expect("outbox lock").due(Instant::now().into_std(), 256);
                let sent = send(due);
                if sent > 0 {
                    progress.resent.fetch_add(sent, Ordering::Relaxed);
                }
            }
        }
    };
    poller.1.cancel();
    let _ = poller.0.await;
    let _ = client.try_disconnect();
    result
}

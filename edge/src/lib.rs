//! edubrain edge: one per city. Terminals publish over MQTT; the edge validates, deduplicates,
//! writes each event to its write-ahead log, acknowledges it, and ships the log to Kafka.
//!
//! - [`config`]: TOML + env configuration.
//! - [`classify`]: the pure core: accept / duplicate / reject (with field and rule) per event (a message carries one, or several as JSON Lines).
//! - [`record`]: what one WAL record holds (Kafka topic, key, headers, the raw payload).
//! - [`rollup`]: per-window events and in-use minutes per classroom and device, to their topic.
//! - [`throttle`]: per-terminal token buckets; over-budget events are deferred, not dropped.
//! - [`broker_log`]: the MQTT broker's own refusals (bad logins, failed TLS handshakes,
//!   session takeovers), read from its log lines, counted and audited to Kafka.
//! - [`refusal_audit`]: per-client limit on those audit records; the rest in one summary.
//! - [`ship`]: WAL → Kafka (idempotent, `acks=all`), confirming records back to the WAL.
//! - [`kafka`]: topic creation and the producer.
//! - [`metrics`]: Prometheus metrics; [`http`]: `/metrics` and `/healthz`.
//! - [`status`]: the operator's `edubrain-edge status`, read from a running edge's `/metrics`.
//! - [`replay`]: the operator's `edubrain-edge replay`: dead letters today's rules accept, to
//!   the events topic.
//! - [`start`] / [`run`]: wire it together.
//!
//! Delivery guarantee. The edge's MQTT session is persistent and acks are manual. Messages are
//! classified in batches; each batch is appended to the WAL and fsynced once (group commit);
//! only then are its messages acknowledged to the broker (PUBACK, in receive order) and to their
//! terminals (an [`edubrain_schemas::ack::EdgeAck`] on the terminal's acks topic, which is what
//! lets a terminal delete an event from its outbox). A WAL record is deleted only after Kafka's
//! delivery report. After a crash the broker redelivers what was not acknowledged, and the WAL
//! replays what Kafka did not confirm; `event_id` dedup (here and in the cloud) absorbs repeats.
//! When the WAL is full the edge stops taking messages: nothing is acknowledged, so the broker
//! and the terminals keep the events until Kafka catches up.

pub mod broker_log;
pub mod classify;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod record;
pub mod refusal_audit;
pub mod replay;
pub mod rollup;
mod ship;
pub mod status;
pub mod throttle;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use edubrain_schemas::ack::{EdgeAck, RejectedEvent, peek_event_id};
use edubrain_schemas::dedup::DedupWindow;
use edubrain_schemas::topics::{TerminalTopic, city_subscription};
use edubrain_schemas::{EventType, ValidationPolicy};
use edubrain_wal::Wal;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use classify::{Outcome, Rejection, classify, classify_from};
pub use config::EdgeConfig;
pub use metrics::EdgeMetrics;

use record::{Destination, WalRecord, WalRecordRef};
use refusal_audit::RefusalAudit;
use rollup::{Observed, Rollups};
use ship::{Committed, Shipper};
use throttle::TerminalRateLimiter;

/// How long start-up waits for the Kafka brokers to answer before it goes on without them.
const STARTUP_KAFKA_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("config: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(String),
    /// The brokers refused the edge's login or TLS handshake: fatal, retrying cannot help.
    #[error("kafka: {0}")]
    KafkaRefused(String),
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("WAL: {0}")]
    Wal(String),
    #[error("http listener {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<edubrain_wal::WalError> for EdgeError {
    fn from(e: edubrain_wal::WalError) -> Self {
        EdgeError::Wal(e.to_string())
    }
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

/// Upper bound of a WAL record's size beyond the bytes it was made from. An audit record is the
/// largest: its JSON may escape every byte of its cut line (see [`broker_log`]).
const RECORD_OVERHEAD: usize = 8192;
/// Upper bound of an event's WAL record beyond the event's bytes: a dead letter's headers, whose
/// three free-text values are cut to [`MAX_HEADER_VALUE`] (checked in `record`'s tests).
pub(crate) const EVENT_RECORD_OVERHEAD: usize = 4096;
/// Header values (reasons, topics) are cut to this many bytes in the WAL and in Kafka.
pub(crate) const MAX_HEADER_VALUE: usize = 1024;

/// A message from the broker, with what the WAL must have room for before it is taken.
struct Incoming {
    publish: Publish,
    /// The most events it can carry: one more than its line breaks (see
    /// [`edubrain_schemas::message`]). An upper bound, counted once without parsing.
    events_at_most: usize,
}

impl Incoming {
    fn new(publish: Publish) -> Self {
        let events_at_most = 1 + memchr::memchr_iter(b'\n', &publish.payload).count();
        Self { publish, events_at_most }
    }

    /// WAL bytes the message may need: its payload, plus a record's overhead for each event it
    /// can carry.
    fn wal_bytes_needed(&self) -> usize {
        self.publish.payload.len() + RECORD_OVERHEAD + (self.events_at_most - 1) * EVENT_RECORD_OVERHEAD
    }
}

/// What the events of one message share.
struct MessageContext<'a> {
    topic: &'a str,
    /// The sender, from the topic.
    identity: &'a Result<TerminalTopic, Rejection>,
    /// When the edge received the message: the `edubrain.received_ms` header of its records.
    received_ms: String,
    now: chrono::DateTime<Utc>,
}

/// Where an event stands in its message, for its rejection reason.
#[derive(Debug, Clone, Copy)]
struct Position {
    index: usize,
    of: usize,
}

/// Opens the WAL (replaying what Kafka did not confirm), creates the Kafka topics, binds the
/// HTTP listener and starts pumping MQTT into the WAL and the WAL into Kafka.
pub async fn start(config: EdgeConfig, shutdown: CancellationToken) -> Result<RunningEdge, EdgeError> {
    config.check()?;
    let metrics = EdgeMetrics::new(&config.city);
    let wal_dir = config.wal.dir.clone().expect("checked: wal.dir is set");
    let options = config.wal.options(config.mqtt.max_packet_bytes);
    let open_dir = wal_dir.clone();
    let (wal, recovered) = tokio::task::spawn_blocking(move || Wal::open(&open_dir, options))
        .await
        .map_err(|e| EdgeError::Wal(format!("opening the WAL panicked: {e}")))??;
    metrics.wal_damaged_bytes.inc_by(recovered.damage.iter().map(|d| d.bytes).sum());
    metrics.wal_replayed_records.inc_by(recovered.records.len() as u64);
    metrics.wal_capacity_bytes.set(wal.max_bytes() as i64);
    // Events the WAL still holds are known: a redelivery of one of them is a duplicate.
    let mut dedup = DedupWindow::new(config.dedup_capacity);
    for (seq, bytes) in &recovered.records {
        let r = WalRecordRef::parse(bytes).map_err(|e| EdgeError::Wal(format!("record {seq} in {}: {e}", wal_dir.display())))?;
        if let Some(id) = r.event_id {
            dedup.observe(id, edubrain_schemas::dedup::fingerprint(r.payload));
        }
    }
    let ship_from = recovered.records.first().map(|(s, _)| *s).unwrap_or(wal.next_seq());
    if !recovered.records.is_empty() {
        tracing::info!(records = recovered.records.len(), from = ship_from, "replaying WAL records Kafka has not confirmed");
    }
    drop(recovered);

    // A refused login stops the edge here, naming the cause. Brokers that are merely down do
    // not: the edge starts taking events into its WAL, and the shipper creates the topics when
    // the brokers are back (terminals should not have to hold a city's events because Kafka
    // was away when the edge restarted).
    let topics = kafka::Topics::of(&config.kafka);
    let topics_pending = match kafka::ensure_topics(&config.kafka, &topics, Some(STARTUP_KAFKA_PATIENCE)).await? {
        kafka::TopicsReady::Yes => None,
        kafka::TopicsReady::Unreachable(last) => {
            tracing::warn!(brokers = %config.kafka.brokers, error = %last, "Kafka is unreachable: taking events into the WAL; the topics are created and the WAL shipped when it is back");
            Some(topics)
        }
    };
    let producer = ship::ship_producer(&config.kafka)?;
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .map_err(|e| EdgeError::Http { addr: config.http_listen.clone(), source: e })?;
    let http_addr = listener.local_addr().map_err(|e| EdgeError::Http { addr: config.http_listen.clone(), source: e })?;
    tokio::spawn(http::serve(listener, metrics.clone(), shutdown.clone()));
    tracing::info!(city = %config.city, %http_addr, mqtt = %format!("{}:{}", config.mqtt.host, config.mqtt.port), kafka = %config.kafka.brokers,
        wal = %wal_dir.display(), "edge started");

    // One group commit's records per item (up to `wal.max_batch`): 8 bound the records held here.
    let (hot_tx, hot_rx) = mpsc::channel::<Vec<Committed>>(8);
    let (committed_tx, committed_rx) = watch::channel(wal.next_seq());
    let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
    let ship_stop = CancellationToken::new();
    let shipper = Shipper {
        kafka: config.kafka.clone(),
        producer,
        reader: Some(edubrain_wal::WalReader::new(&wal_dir, options.max_record_bytes, 1 << 20)),
        wal_dir,
        metrics: metrics.clone(),
        start: ship_from,
        topics_pending,
        delivered: Destination::ALL.map(|d| metrics.kafka_delivered.with_label_values(&[config.kafka.topic(d)])),
    };
    let shipper = tokio::spawn(shipper.run(hot_rx, committed_rx, confirm_tx, ship_stop.clone(), Duration::from_secs(10)));
    let policy = config.validation_policy();
    let limiter = TerminalRateLimiter::new(config.rate_limit.limit());
    let rollups = Rollups::new(config.rollup.windows(), Utc::now());
    let refusal_audit = RefusalAudit::new(config.refusal_audit.limits());
    let pump = Pump {
        config,
        metrics: metrics.clone(),
        policy,
        dedup,
        limiter,
        accepted: EventType::ALL.iter().map(|t| metrics.events_accepted.with_label_values(&[t.as_str()])).collect(),
        rollups,
        refusal_audit,
        window_records_pending: Vec::new(),
        wal: Some(wal),
        hot: hot_tx,
        committed: committed_tx,
    };
    let task = tokio::spawn(pump.run(confirm_rx, shipper, ship_stop, shutdown));
    Ok(RunningEdge { http_addr, metrics, task })
}

/// One classified message, waiting for its batch's group commit before it is acknowledged.
struct Classified {
    publish: Publish,
    /// Where its terminal reads acks (`None`: the topic names no terminal, or a broker log line).
    acks_topic: Option<String>,
    /// One per event the message carries, in order.
    events: Vec<ClassifiedEvent>,
    received: Instant,
}

/// What becomes of one event: a WAL record (events or dead-letter topic) and an ack to its
/// terminal, either of which may be absent (a duplicate writes nothing; an unreadable event id
/// cannot be acknowledged).
struct ClassifiedEvent {
    record: Option<Vec<u8>>,
    ack: Option<TerminalAck>,
}

enum TerminalAck {
    Durable(uuid::Uuid),
    Rejected(RejectedEvent),
    /// Over the terminal's rate limit: not taken; resend after the delay.
    Deferred(uuid::Uuid, Duration),
}

/// MQTT → classify → WAL (group commit) → acks. Owns the WAL; the shipper reports confirmations.
struct Pump {
    config: EdgeConfig,
    metrics: EdgeMetrics,
    policy: ValidationPolicy,
    dedup: DedupWindow,
    limiter: TerminalRateLimiter,
    /// `events_accepted_total` per event type, indexed by `EventType as usize`.
    accepted: Vec<prometheus::IntCounter>,
    rollups: Rollups,
    refusal_audit: RefusalAudit,
    /// Closed rollups and refusal summaries waiting for WAL room.
    window_records_pending: Vec<Vec<u8>>,
    /// `None` only while a blocking WAL call holds it.
    wal: Option<Wal>,
    hot: mpsc::Sender<Vec<Committed>>,
    committed: watch::Sender<u64>,
}

impl Pump {
    async fn run(
        mut self,
        mut confirm_rx: mpsc::UnboundedReceiver<Vec<u64>>,
        shipper: tokio::task::JoinHandle<Result<(), EdgeError>>,
        ship_stop: CancellationToken,
        shutdown: CancellationToken,
    ) -> Result<(), EdgeError> {
        let mut opts = MqttOptions::new(self.config.client_id(), self.config.mqtt.host.clone(), self.config.mqtt.port);
        opts.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(self.config.mqtt.keepalive_secs))
            // Refused by the client before it allocates for a larger packet.
            .set_max_packet_size(self.config.mqtt.max_packet_bytes, self.config.mqtt.max_packet_bytes);
        if let (Some(u), Some(p)) = (&self.config.mqtt.username, &self.config.mqtt.password) {
            opts.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.config.mqtt.tls {
            opts.set_transport(tls.transport().map_err(|e| EdgeError::Config(e.to_string()))?);
        }
        let (client, eventloop) = AsyncClient::new(opts, 8192);
        // Unbounded on purpose: the broker's in-flight window for this client bounds it, and a
        // bounded channel here could block the event loop that must keep sending our acks.
        let (tx, mut rx) = mpsc::unbounded_channel::<Incoming>();
        let loop_stop = CancellationToken::new();
        let mut filters = vec![rumqttc::SubscribeFilter::new(city_subscription(&self.config.city), QoS::AtLeastOnce)];
        if self.config.mqtt.broker_log {
            // QoS 0: the broker does not queue its log for an edge that is away, and a line
            // lost in a reconnect is a count off by one, not an event lost.
            filters.push(rumqttc::SubscribeFilter::new(broker_log::BROKER_LOG_FILTER.into(), QoS::AtMostOnce));
        }
        let poller = tokio::spawn(poll_mqtt(eventloop, client.clone(), filters, tx, self.metrics.clone(), loop_stop.clone()));

        let mut backlog: VecDeque<Incoming> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut full_since: Option<Instant> = None;
        let mut result = Ok(());
        let mut shipper = Some(shipper);
        loop {
            let full = !backlog.is_empty() && !self.has_room_for(backlog.front().expect("non-empty"));
            if full != full_since.is_some() {
                self.metrics.wal_full.set(i64::from(full));
                if full {
                    self.metrics.wal_full_waits.inc();
                    let wal = self.wal.as_ref().expect("wal");
                    tracing::warn!(
                        bytes = wal.disk_bytes(),
                        capacity = wal.max_bytes(),
                        unconfirmed = wal.unconfirmed(),
                        "WAL full: not acknowledging new events until Kafka confirms older ones"
                    );
                    full_since = Some(Instant::now());
                } else if let Some(t) = full_since.take() {
                    tracing::info!(after = ?t.elapsed(), "WAL has room again; acknowledging");
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(confirmed) = confirm_rx.recv() => {
                    let wal = self.wal.as_mut().expect("wal");
                    confirmed.into_iter().for_each(|seq| wal.confirm(seq));
                    while let Ok(confirmed) = confirm_rx.try_recv() {
                        confirmed.into_iter().for_each(|seq| wal.confirm(seq));
                    }
                    if full {
                        self.truncate().await?;
                    }
                }
                msg = rx.recv(), if !full => {
                    let Some(first) = msg else { break };
                    // Up to a group commit's worth of events (`wal.max_batch`), so memory
                    // follows events, not messages (a packed message carries up to 64).
                    let mut events = first.events_at_most;
                    backlog.push_back(first);
                    while events < self.config.wal.max_batch {
                        match rx.try_recv() {
                            Ok(m) => {
                                events += m.events_at_most;
                                backlog.push_back(m);
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.process(&mut backlog, &client).await {
                        result = Err(e);
                        break;
                    }
                }
                _ = tick.tick() => {
                    if !backlog.is_empty() && !full && let Err(e) = self.process(&mut backlog, &client).await {
                        result = Err(e);
                        break;
                    }
                    self.truncate().await?;
                    let active = self.limiter.forget_unheard(Instant::now(), Duration::from_secs(self.config.terminal_active_secs));
                    self.metrics.terminals_active.set(active as i64);
                    if !full && let Err(e) = self.emit_windows(false).await {
                        result = Err(e);
                        break;
                    }
                }
                res = async { shipper.as_mut().expect("shipper").await }, if shipper.is_some() => {
                    shipper = None;
                    // The shipper only ends early on an error it cannot retry (a corrupt record).
                    result = match res {
                        Ok(Ok(())) => Err(EdgeError::Kafka("the Kafka shipper stopped unexpectedly".into())),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(EdgeError::Kafka(format!("the Kafka shipper panicked: {e}"))),
                    };
                    break;
                }
            }
        }
        tracing::info!(unacknowledged = backlog.len(), "edge stopping: messages not yet in the WAL stay with the broker");
        // The refusal windows still open end now, so their summaries are in the WAL (shipped
        // below or at the next start) rather than lost with this process.
        if result.is_ok()
            && let Err(e) = self.emit_windows(true).await
        {
            result = Err(e);
        }
        // Let the event loop send the last acks, then leave cleanly.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = client.try_disconnect();
        loop_stop.cancel();
        let _ = poller.await;
        // Stop the shipper (it drains what it can) and record its last confirmations.
        let Pump { hot, committed, mut wal, .. } = self;
        drop((hot, committed));
        ship_stop.cancel();
        if let Some(s) = shipper {
            match s.await {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                _ => {}
            }
        }
        if let Some(wal) = wal.as_mut() {
            while let Ok(confirmed) = confirm_rx.try_recv() {
                confirmed.into_iter().for_each(|seq| wal.confirm(seq));
            }
            wal.truncate()?;
            tracing::info!(unconfirmed = wal.unconfirmed(), "edge stopped; unconfirmed WAL records are shipped at the next start");
        }
        result
    }

    fn has_room_for(&self, m: &Incoming) -> bool {
        self.wal.as_ref().expect("wal").has_room_for(m.wal_bytes_needed())
    }

    /// Classifies as much of `backlog` as fits in the WAL, commits it as one batch, then
    /// acknowledges the batch to the broker and to the terminals and hands it to the shipper.
    async fn process(&mut self, backlog: &mut VecDeque<Incoming>, client: &AsyncClient) -> Result<(), EdgeError> {
        let mut budget = {
            let wal = self.wal.as_ref().expect("wal");
            wal.max_bytes().saturating_sub(wal.disk_bytes()) as usize
        };
        let mut batch = Vec::new();
        let mut events = 0;
        while events < self.config.wal.max_batch {
            let Some(front) = backlog.front() else { break };
            let need = front.wal_bytes_needed();
            if need > budget {
                break;
            }
            budget -= need;
            events += front.events_at_most;
            let m = backlog.pop_front().expect("front exists");
            batch.push(self.classify(m.publish));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let records: Vec<Option<Vec<u8>>> = batch.iter_mut().flat_map(|c| c.events.iter_mut().map(|e| e.record.take())).collect();
        // A failed write or fsync is fatal: nothing in this batch was acknowledged, so the broker
        // redelivers it; carrying on could acknowledge what is not on disk.
        let mut written = self.write_wal(records).await?.into_iter();
        self.metrics.wal_commit_events.observe(batch.iter().map(|c| c.events.len()).sum::<usize>() as f64);

        let mut acks: BTreeMap<String, EdgeAck> = BTreeMap::new();
        let mut hot = Vec::with_capacity(written.len());
        for c in batch {
            if let Err(e) = client.ack(&c.publish).await {
                tracing::warn!(error = %e, "could not queue MQTT ack; the broker will redeliver");
            }
            for event in c.events {
                if let Some((seq, bytes)) = written.next().expect("one slot per event") {
                    hot.push((seq, bytes, Some(c.received)));
                }
                let (Some(topic), Some(ack)) = (&c.acks_topic, event.ack) else { continue };
                let entry = match acks.get_mut(topic) {
                    Some(entry) => entry,
                    None => acks.entry(topic.clone()).or_default(),
                };
                match ack {
                    TerminalAck::Durable(id) => entry.durable.push(id),
                    TerminalAck::Rejected(r) => entry.rejected.push(r),
                    TerminalAck::Deferred(id, after) => {
                        entry.deferred.push(id);
                        entry.retry_after_ms = entry.retry_after_ms.max(after.as_millis() as u64);
                    }
                }
            }
        }
        // Full channel: the shipper reads these records from disk instead.
        let _ = self.hot.try_send(hot);
        self.committed.send_replace(self.wal.as_ref().expect("wal").next_seq());
        // QoS 0: a lost ack costs a resend, which the dedup window answers with another ack;
        // QoS 1 would double the broker's per-message work for nothing.
        for (topic, ack) in acks {
            for part in ack.chunks(edubrain_schemas::ack::MAX_IDS_PER_ACK) {
                if client.publish(topic.clone(), QoS::AtMostOnce, false, part.to_json()).await.is_ok() {
                    self.metrics.terminal_acks_published.inc();
                }
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// Classifies every event of one message (one, or several as JSON Lines; see
    /// [`edubrain_schemas::message`]). The events share the message's topic, so its identity
    /// is parsed once; each is then rate-limited, checked, deduplicated and dead-lettered on
    /// its own, so one bad event does not hold back the good ones beside it.
    fn classify(&mut self, publish: Publish) -> Classified {
        if broker_log::is_broker_log(&publish.topic) {
            return self.audit_broker_line(publish);
        }
        self.metrics.messages_received.inc();
        self.metrics.received_bytes.inc_by(publish.payload.len() as u64);
        let received = Instant::now();
        let now = Utc::now();
        let identity = TerminalTopic::parse(&publish.topic).map_err(Rejection::from);
        let acks_topic = identity.as_ref().ok().map(TerminalTopic::acks_topic);
        let lines = edubrain_schemas::message::events_in(&publish.payload);
        self.metrics.message_events.observe(lines.len() as f64);
        // The terminal's budget, taken for the whole message at once: the first `admitted`
        // events are in it.
        let (admitted, retry_after) = match identity {
            Ok(_) => self.limiter.admit_up_to(&publish.topic, received, lines.len()),
            Err(_) => (lines.len(), None),
        };
        let context = MessageContext { topic: &publish.topic, identity: &identity, received_ms: now.timestamp_millis().to_string(), now };
        let events = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let over_budget = if i < admitted { None } else { retry_after };
                self.classify_event(&context, line, Position { index: i, of: lines.len() }, over_budget)
            })
            .collect();
        Classified { acks_topic, events, received, publish }
    }

    fn classify_event(&mut self, m: &MessageContext<'_>, payload: &[u8], at: Position, over_budget: Option<Duration>) -> ClassifiedEvent {
        // Over its terminal's budget: deferred when the event id can be read to say so. An
        // unreadable event goes on to classification (and the dead-letter topic).
        if let Some(after) = over_budget
            && let Some(id) = peek_event_id(payload)
        {
            self.metrics.events_throttled.inc();
            return ClassifiedEvent { record: None, ack: Some(TerminalAck::Deferred(id, after)) };
        }
        let city = &self.config.city;
        let outcome = match m.identity {
            Ok(identity) => classify_from(city, identity, payload, m.now, &self.policy, &mut self.dedup),
            Err(r) => Outcome::Reject(r.clone()),
        };
        match outcome {
            Outcome::Accept { event, clock } => {
                self.accepted[event.event_type() as usize].inc();
                // A wrong device clock would put the event in the wrong window: not in rollups.
                if clock.is_none() && self.rollups.observe(&event) == Observed::Late {
                    self.metrics.rollup_late_events.inc();
                }
                let mut headers = [("edubrain.received_ms", m.received_ms.as_str()), ("edubrain.edge_city", city), ("", "")];
                let mut header_count = 2;
                if let Some(flag) = clock {
                    self.metrics.events_clock_flagged.with_label_values(&[flag.as_str()]).inc();
                    headers[2] = ("edubrain.clock_flag", flag.as_str());
                    header_count = 3;
                }
                let record = record::encode(
                    Destination::Events,
                    Some(event.header.event_id.as_u128()),
                    &event.header.classroom,
                    &headers[..header_count],
                    payload,
                );
                ClassifiedEvent { record: Some(record), ack: Some(TerminalAck::Durable(event.header.event_id)) }
            }
            // A duplicate passed the same checks as its first copy: its topic is valid.
            Outcome::Duplicate { event_id } => {
                self.metrics.events_duplicate.inc();
                ClassifiedEvent { record: None, ack: Some(TerminalAck::Durable(event_id)) }
            }
            Outcome::Reject(mut r) => {
                if at.of > 1 {
                    r.reason = format!("{} (event {} of {} in the message)", r.reason, at.index + 1, at.of);
                }
                self.metrics.events_rejected.with_label_values(&[r.rule]).inc();
                tracing::warn!(topic = %m.topic, field = %r.field, rule = r.rule, reason = %r.reason, "event rejected to dead-letter");
                // Acknowledged only when both the sender (its topic) and the event id are readable.
                let ack = peek_event_id(payload)
                    .filter(|_| m.identity.is_ok())
                    .map(|id| TerminalAck::Rejected(RejectedEvent { event_id: id, rule: r.rule.into(), reason: r.reason.clone() }));
                // The raw bytes are kept exactly as received; the context travels in headers.
                let headers = [
                    ("edubrain.rule", r.rule),
                    ("edubrain.field", record::cut(&r.field, MAX_HEADER_VALUE)),
                    ("edubrain.reason", record::cut(&r.reason, MAX_HEADER_VALUE)),
                    ("edubrain.mqtt_topic", record::cut(m.topic, MAX_HEADER_VALUE)),
                    ("edubrain.edge_city", city),
                    ("edubrain.received_ms", m.received_ms.as_str()),
                ];
                let record = record::encode(Destination::DeadLetter, None, city, &headers, payload);
                ClassifiedEvent { record: Some(record), ack }
            }
        }
    }

    /// Counts a broker log line that records a refusal and keeps it as an audit record, or
    /// counts it in its client's summary past `refusal_audit.per_client`; any other line is only
    /// acknowledged (a no-op at QoS 0).
    fn audit_broker_line(&mut self, publish: Publish) -> Classified {
        let received = Instant::now();
        let text = String::from_utf8_lossy(&publish.payload);
        let record = broker_log::parse(&text).and_then(|(refusal, client, broker_time)| {
            let topic = match refusal {
                broker_log::Refusal::Disconnect(r) => {
                    self.metrics.mqtt_broker_disconnects.with_label_values(&[r.as_str()]).inc();
                    None
                }
                broker_log::Refusal::AclDenied { action, topic } => {
                    self.metrics.mqtt_broker_acl_denials.with_label_values(&[action.as_str()]).inc();
                    Some(topic)
                }
            };
            let reason = refusal.reason();
            // Cut before they key a window, so a window's memory is bounded too.
            let client = client.map(|c| record::cut(c, broker_log::MAX_CLIENT_BYTES));
            let topic = topic.map(|t| record::cut(t, broker_log::MAX_LINE_BYTES));
            let received_ms = Utc::now().timestamp_millis();
            if self.refusal_audit.admit(reason, client, topic, received_ms) == refusal_audit::Verdict::Summarised {
                self.metrics.mqtt_broker_refusals_summarised.with_label_values(&[reason]).inc();
                return None;
            }
            tracing::warn!(reason, client = client.unwrap_or("<unknown>"), line = %text.trim_end(), "the MQTT broker refused a client");
            let audit = broker_log::BrokerAudit {
                source: "mqtt_broker",
                reason,
                client,
                topic,
                broker_time,
                edge_city: &self.config.city,
                received_ms,
                line: record::cut(text.trim_end(), broker_log::MAX_LINE_BYTES),
            };
            Some(self.audit_record(reason, received_ms, None, serde_json::to_vec(&audit).expect("audit records serialise")))
        });
        drop(text); // it borrows `publish`, which moves next
        Classified { publish, acks_topic: None, events: vec![ClassifiedEvent { record, ack: None }], received }
    }

    /// A record for the audit topic, keyed by the city, with the refusal's reason, the receipt
    /// time and, for a summary, how many refusals it stands for, in headers.
    fn audit_record(&self, reason: &str, received_ms: i64, summarised: Option<u64>, payload: Vec<u8>) -> Vec<u8> {
        let mut headers = vec![
            ("edubrain.reason", reason.to_string()),
            ("edubrain.edge_city", self.config.city.clone()),
            ("edubrain.received_ms", received_ms.to_string()),
        ];
        headers.extend(summarised.map(|n| ("edubrain.summarised", n.to_string())));
        WalRecord { destination: Destination::Audit, event_id: None, key: self.config.city.clone(), headers, payload }.encode()
    }

    /// Closes the rollup windows and the refusal-audit windows that are due (`stopping`: every
    /// refusal-audit window) and writes their records to the WAL, which ships them to their
    /// topics like any other record. Kept for the next tick while the WAL is full.
    async fn emit_windows(&mut self, stopping: bool) -> Result<(), EdgeError> {
        let now = Utc::now();
        let closed = self.rollups.close(now);
        self.metrics.rollup_open_sessions.set(self.rollups.open_sessions() as i64);
        for r in &closed {
            let record = WalRecord {
                destination: Destination::Rollups,
                event_id: None,
                key: r.classroom.clone(),
                headers: vec![("edubrain.edge_city", self.config.city.clone())],
                payload: serde_json::to_vec(r).expect("rollups serialise"),
            };
            self.window_records_pending.push(record.encode());
        }
        self.metrics.rollup_windows_emitted.inc_by(closed.len() as u64);
        let received_ms = now.timestamp_millis();
        for summary in self.refusal_audit.close(if stopping { i64::MAX } else { received_ms }) {
            tracing::warn!(
                reason = summary.reason,
                client = summary.client.as_deref().unwrap_or(if summary.other_clients { "<other clients>" } else { "<unknown>" }),
                summarised = summary.summarised,
                "the MQTT broker kept refusing a client: refusals past refusal_audit.per_client audited in one summary record"
            );
            let payload = serde_json::to_vec(&refusal_audit::SummaryRecord::new(&summary, &self.config.city, received_ms))
                .expect("audit records serialise");
            let record = self.audit_record(summary.reason, received_ms, Some(summary.summarised), payload);
            self.window_records_pending.push(record);
        }
        let wal = self.wal.as_ref().expect("wal");
        let room = self.window_records_pending.iter().all(|r| wal.has_room_for(r.len())) && !self.window_records_pending.is_empty();
        if !room {
            if stopping && !self.window_records_pending.is_empty() {
                tracing::warn!(
                    records = self.window_records_pending.len(),
                    "WAL full while stopping: closed rollups and refusal summaries not written"
                );
            }
            return Ok(());
        }
        let records = std::mem::take(&mut self.window_records_pending).into_iter().map(Some).collect();
        let written = self.write_wal(records).await?.into_iter().flatten().map(|(seq, bytes)| (seq, bytes, None)).collect();
        let _ = self.hot.try_send(written);
        self.committed.send_replace(self.wal.as_ref().expect("wal").next_seq());
        Ok(())
    }

    /// Appends `records` (`None`: nothing to write for that slot) and commits them with one
    /// fsync, off the async threads. Returns each written record's sequence number and bytes.
    async fn write_wal(&mut self, records: Vec<Option<Vec<u8>>>) -> Result<Vec<Option<(u64, Vec<u8>)>>, EdgeError> {
        let mut wal = self.wal.take().expect("wal");
        let (wal, written, took) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let written = (|| {
                let mut out = Vec::with_capacity(records.len());
                for r in records {
                    out.push(match r {
                        Some(bytes) => Some((wal.append(&bytes)?, bytes)),
                        None => None,
                    });
                }
                wal.commit()?;
                Ok::<_, edubrain_wal::WalError>(out)
            })();
            (wal, written, started.elapsed())
        })
        .await
        .map_err(|e| EdgeError::Wal(format!("WAL commit panicked: {e}")))?;
        self.wal = Some(wal);
        let written = written?;
        self.metrics.wal_fsync_duration.observe(took.as_secs_f64());
        Ok(written)
    }

    async fn truncate(&mut self) -> Result<(), EdgeError> {
        let mut wal = self.wal.take().expect("wal");
        let (wal, r) = tokio::task::spawn_blocking(move || {
            let r = wal.truncate();
            (wal, r)
        })
        .await
        .map_err(|e| EdgeError::Wal(format!("WAL truncation panicked: {e}")))?;
        self.wal = Some(wal);
        r?;
        self.update_gauges();
        Ok(())
    }

    fn update_gauges(&self) {
        let wal = self.wal.as_ref().expect("wal");
        self.metrics.wal_bytes.set(wal.disk_bytes() as i64);
        self.metrics.wal_unconfirmed_records.set(wal.unconfirmed() as i64);
    }
}

async fn poll_mqtt(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: Vec<rumqttc::SubscribeFilter>,
    tx: mpsc::UnboundedSender<Incoming>,
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
                if tx.send(Incoming::new(p)).is_err() {
                    // The processor is gone (shutting down); unacked messages stay with the broker.
                    metrics.mqtt_connected.set(0);
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                // The hub's ACL refuses a subscription it would deliver nothing on (an edge whose
                // login has no stanza for its city): say which, and do not claim the city.
                let refused: Vec<&str> = filters
                    .iter()
                    .zip(&ack.return_codes)
                    .filter(|(_, code)| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    .map(|(f, _)| f.path.as_str())
                    .collect();
                metrics.mqtt_subscriptions_refused.inc_by(refused.len() as u64);
                if refused.is_empty() {
                    metrics.mqtt_subscribed.set(1);
                    tracing::info!(filters = ?filters.iter().map(|f| &f.path).collect::<Vec<_>>(), "edge subscribed");
                } else {
                    // The city's events are the first filter; without them the edge is idle.
                    metrics.mqtt_subscribed.set(i64::from(!refused.contains(&filters[0].path.as_str())));
                    tracing::error!(
                        ?refused,
                        "the MQTT broker refused the edge's subscription (see the edge's stanza in deploy/mosquitto/acl)"
                    );
                }
            }
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                backoff = Duration::from_millis(100);
                tracing::info!(session_present = ack.session_present, "edge connected to MQTT");
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
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

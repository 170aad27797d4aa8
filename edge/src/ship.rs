//! Ships committed WAL records to Kafka, in WAL order, and reports each confirmed sequence
//! number back so the WAL can delete it.
//!
//! The WAL on disk is the source of truth. Records usually arrive through a bounded in-memory
//! channel straight from the writer (no re-read); when that channel overflowed, or after a
//! restart or a failed delivery, the shipper reads the WAL files instead, one segment at a time,
//! so memory stays bounded however long Kafka is away.
//!
//! After a delivery fails (librdkafka gave up after `message.timeout.ms`), the shipper waits
//! for everything in flight, recreates the producer if librdkafka reports a fatal error, and
//! ships again from the oldest unconfirmed record: order within a classroom is kept, and
//! records Kafka already had are dropped by `event_id` downstream.
//!
//! Delivery reports. librdkafka's polling thread hands each report to [`ShipContext`], which
//! only appends `(sequence number, outcome)` to a shared list and wakes the shipper; the
//! shipper takes the whole list at once. (rdkafka's `FutureProducer` allocated a oneshot
//! channel and a boxed future per record and woke a task per report: about a tenth of the
//! edge's CPU at full load.)

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edubrain_wal::{Outstanding, WalReader};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::metrics::EdgeMetrics;
use crate::record::{Destination, WalRecordRef};
use crate::{EdgeError, kafka};

/// A committed record handed over by the writer: sequence number, encoded record, and when
/// its message was received (for the latency histogram). The writer sends one group commit's
/// records at a time, in sequence order.
pub(crate) type Committed = (u64, Vec<u8>, Option<Instant>);

/// Records enqueued in librdkafka and not yet confirmed, at most: about half a second of a
/// busy hub's events, enough to keep Kafka's pipeline full while bounding the edge's memory
/// when terminals deliver faster than Kafka confirms.
const MAX_IN_FLIGHT: usize = 20_000;

/// One delivery report: the record's sequence number and librdkafka's verdict.
type Report = (u64, Result<(), String>);

/// The shipper's producer context: collects delivery reports for the shipper to take in bulk.
#[derive(Default)]
pub(crate) struct ShipContext {
    reports: Mutex<Vec<Report>>,
    ready: Notify,
}

impl ClientContext for ShipContext {}

impl ProducerContext for ShipContext {
    /// The record's WAL sequence number (a `usize` travels through librdkafka without a box).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.reports.lock().expect("delivery reports lock").push((seq as u64, outcome));
        self.ready.notify_one();
    }
}

pub(crate) type ShipProducer = ThreadedProducer<ShipContext>;

pub(crate) fn ship_producer(config: &KafkaConfig) -> Result<ShipProducer, EdgeError> {
    kafka::producer_config(config)?
        .create_with_context(ShipContext::default())
        .map_err(|e| EdgeError::Kafka(format!("producer for {}: {e}", config.brokers)))
}

/// What the shipper remembers of a record in flight, by sequence number.
struct InFlight {
    /// Sequence number of `meta[0]`.
    base: u64,
    /// Topic and receipt time of each record from `base` on.
    meta: VecDeque<(Destination, Option<Instant>)>,
    /// Those not yet confirmed.
    unconfirmed: Outstanding,
    /// Enqueued in the current producer and not yet reported on, successfully or not.
    awaiting_report: usize,
}

impl InFlight {
    fn new() -> Self {
        Self { base: 0, meta: VecDeque::new(), unconfirmed: Outstanding::new(), awaiting_report: 0 }
    }

    fn push(&mut self, seq: u64, destination: Destination, received: Option<Instant>) {
        if self.meta.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.meta.len() as u64, "records are shipped in sequence order");
        self.meta.push_back((destination, received));
        self.unconfirmed.insert(seq);
        self.awaiting_report += 1;
    }

    fn meta(&self, seq: u64) -> Option<(Destination, Option<Instant>)> {
        self.meta.get(seq.checked_sub(self.base)? as usize).copied()
    }

    /// Forgets the metadata of records below the oldest unconfirmed one.
    fn trim(&mut self) {
        let keep_from = self.unconfirmed.first().unwrap_or(self.base + self.meta.len() as u64);
        while self.base < keep_from && self.meta.pop_front().is_some() {
            self.base += 1;
        }
    }

    fn clear(&mut self) {
        self.meta.clear();
        self.unconfirmed.clear();
        self.awaiting_report = 0;
    }
}

pub(crate) struct Shipper {
    pub kafka: KafkaConfig,
    pub producer: ShipProducer,
    pub wal_dir: PathBuf,
    /// Reads what the writer's channel did not carry (`None` only while a read holds it).
    pub reader: Option<WalReader>,
    pub metrics: EdgeMetrics,
    /// First sequence number to ship (the oldest unconfirmed record at start-up).
    pub start: u64,
    /// Topics to create before shipping, when the brokers were unreachable at start-up.
    pub topics_pending: Option<kafka::Topics>,
    /// `kafka_delivered_total` of each [`Destination`], in its order, resolved once rather
    /// than per delivery.
    pub delivered: [prometheus::IntCounter; Destination::ALL.len()],
}

impl Shipper {
    /// Runs until `stop` is cancelled and everything committed is confirmed (or `drain_for` has
    /// passed since the stop; what is left stays in the WAL for the next start).
    pub async fn run(
        mut self,
        mut hot: mpsc::Receiver<Vec<Committed>>,
        mut committed: watch::Receiver<u64>,
        confirm: mpsc::UnboundedSender<Vec<u64>>,
        stop: CancellationToken,
        drain_for: Duration,
    ) -> Result<(), EdgeError> {
        if let Some(topics) = self.topics_pending.take() {
            tokio::select! {
                ready = kafka::ensure_topics(&self.kafka, &topics, None) => {
                    ready?;
                    tracing::info!(brokers = %self.kafka.brokers, "Kafka is back: topics ready, shipping the WAL");
                }
                // Everything committed stays in the WAL for the next start.
                _ = stop.cancelled() => return Ok(()),
            }
        }
        let mut cursor = self.start;
        let mut in_flight = InFlight::new();
        // Records from the writer not shipped yet, oldest first (possibly ahead of `cursor` after
        // the channel overflowed: then the gap is read from disk first).
        let mut queued: VecDeque<Committed> = VecDeque::new();
        let mut failed = false;
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let mut writer_gone = false;
        let mut replay_backoff = Duration::from_millis(500);
        loop {
            if failed && in_flight.awaiting_report == 0 {
                self.metrics.kafka_replays.inc();
                // Wait before trying again (the broker is likely still away), then start from a
                // new producer: after timed-out deliveries an idempotent producer's sequence
                // state cannot be trusted (librdkafka needs an epoch bump not every broker
                // offers), and a fresh producer id makes the replay independent of it.
                tokio::select! {
                    _ = tokio::time::sleep(replay_backoff) => {}
                    _ = stop.cancelled(), if stop_deadline.is_none() => {}
                }
                replay_backoff = (replay_backoff * 2).min(Duration::from_secs(10));
                if let Some((code, reason)) = self.producer.client().fatal_error() {
                    tracing::error!(%code, %reason, "Kafka producer hit a fatal error");
                }
                let old = std::mem::replace(&mut self.producer, ship_producer(&self.kafka)?);
                // Dropping a producer can block while librdkafka tears down.
                tokio::task::spawn_blocking(move || drop(old));
                let from = in_flight.unconfirmed.first().unwrap_or(cursor);
                tracing::warn!(from, up_to = cursor, "shipping again from the oldest unconfirmed WAL record with a new producer");
                cursor = from;
                in_flight.clear();
                queued.clear();
                failed = false;
            }
            let end = *committed.borrow();
            if !failed && cursor < end && in_flight.awaiting_report < MAX_IN_FLIGHT {
                while let Ok(batch) = hot.try_recv() {
                    queued.extend(batch);
                }
                while queued.front().is_some_and(|r| r.0 < cursor) {
                    queued.pop_front();
                }
                let batch: Vec<Committed> = if queued.front().is_some_and(|r| r.0 == cursor) {
                    let mut n = 1;
                    while n < queued.len().min(1024) && queued[n].0 == cursor + n as u64 {
                        n += 1;
                    }
                    queued.drain(..n).collect()
                } else {
                    // Not from the writer (a restart, a replay, or its channel overflowed).
                    self.read_disk(cursor).await?
                };
                for (seq, bytes, received) in batch {
                    if seq < cursor || seq >= end {
                        continue;
                    }
                    let record = match WalRecordRef::parse(&bytes) {
                        Ok(r) => r,
                        Err(e) => {
                            // Checksummed, so this is a bug or a foreign file, not a disk error:
                            // confirming it would hide it, so stop loudly.
                            return Err(EdgeError::Wal(format!("WAL record {seq} in {}: {e}", self.wal_dir.display())));
                        }
                    };
                    self.enqueue(seq, &record).await;
                    in_flight.push(seq, record.destination, received);
                    cursor = seq + 1;
                }
                continue;
            }
            if stop.is_cancelled() || writer_gone {
                let deadline = *stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + drain_for);
                if (cursor >= end && in_flight.awaiting_report == 0) || tokio::time::Instant::now() >= deadline {
                    if in_flight.awaiting_report > 0 || cursor < end {
                        tracing::warn!(
                            unconfirmed = in_flight.unconfirmed.len(),
                            "stopping with records unconfirmed; they stay in the WAL"
                        );
                    }
                    return Ok(());
                }
            }
            tokio::select! {
                _ = self.producer.context().ready.notified(), if in_flight.awaiting_report > 0 => {
                    let reports = std::mem::take(&mut *self.producer.context().reports.lock().expect("delivery reports lock"));
                    let confirmed = self.take_reports(reports, &mut in_flight, &mut failed);
                    if !confirmed.is_empty() {
                        replay_backoff = Duration::from_millis(500);
                        let _ = confirm.send(confirmed);
                    }
                }
                changed = committed.changed(), if !writer_gone => writer_gone = changed.is_err(),
                _ = stop.cancelled(), if stop_deadline.is_none() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)), if stop_deadline.is_some() || failed || writer_gone => {}
            }
        }
    }

    /// Books a list of delivery reports; returns the sequence numbers Kafka confirmed.
    fn take_reports(&self, reports: Vec<Report>, in_flight: &mut InFlight, failed: &mut bool) -> Vec<u64> {
        let mut confirmed = Vec::with_capacity(reports.len());
        let mut delivered = [0u64; Destination::ALL.len()];
        for (seq, outcome) in reports {
            in_flight.awaiting_report = in_flight.awaiting_report.saturating_sub(1);
            match outcome {
                Ok(()) => {
                    if !in_flight.unconfirmed.remove(seq) {
                        continue;
                    }
                    if let Some((destination, received)) = in_flight.meta(seq) {
                        delivered[destination as usize] += 1;
                        if let Some(t) = received {
                            self.metrics.delivery_latency.observe(t.elapsed().as_secs_f64());
                        }
                    }
                    confirmed.push(seq);
                }
                Err(e) => {
                    self.metrics.kafka_delivery_errors.inc();
                    if !*failed {
                        tracing::warn!(seq, error = %e, "Kafka delivery failed; will ship again from the oldest unconfirmed record");
                    }
                    *failed = true;
                }
            }
        }
        for (counter, n) in self.delivered.iter().zip(delivered) {
            counter.inc_by(n);
        }
        in_flight.trim();
        confirmed
    }

    async fn read_disk(&mut self, from: u64) -> Result<Vec<Committed>, EdgeError> {
        let mut reader = self.reader.take().expect("the WAL reader is back after each read");
        let (reader, records) = tokio::task::spawn_blocking(move || {
            let records = reader.read(from);
            (reader, records)
        })
        .await
        .map_err(|e| EdgeError::Wal(format!("WAL reader panicked: {e}")))?;
        self.reader = Some(reader);
        Ok(records?.into_iter().map(|(s, b)| (s, b, None)).collect())
    }

    /// Enqueues one record in librdkafka, waiting while its queue is full; its delivery report
    /// comes through the producer's [`ShipContext`].
    async fn enqueue(&self, seq: u64, record: &WalRecordRef<'_>) {
        let topic = self.kafka.topic(record.destination);
        // librdkafka copies key, payload and headers at send: nothing here outlives the call.
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers().len());
            for (name, value) in record.headers() {
                headers = headers.insert(Header { key: name, value: Some(*value) });
            }
            let r = BaseRecord::with_opaque_to(topic, seq as usize).key(record.key).payload(record.payload).headers(headers);
            match self.producer.send(r) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, %topic, seq, "could not enqueue record; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

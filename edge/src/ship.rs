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

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::metrics::EdgeMetrics;
use crate::record::{Destination, WalRecordRef};
use crate::{EdgeError, kafka};

/// A committed record handed over by the writer: sequence number, encoded record, and when
/// its message was received (for the latency histogram).
pub(crate) type Committed = (u64, Arc<Vec<u8>>, Option<Instant>);

/// Records enqueued in librdkafka and not yet confirmed, at most: about half a second of a
/// busy hub's events, enough to keep Kafka's pipeline full while bounding the edge's memory
/// when terminals deliver faster than Kafka confirms.
const MAX_IN_FLIGHT: usize = 20_000;

pub(crate) struct Shipper {
    pub kafka: KafkaConfig,
    pub producer: FutureProducer,
    pub wal_dir: PathBuf,
    pub max_record_bytes: u32,
    pub metrics: EdgeMetrics,
    /// First sequence number to ship (the oldest unconfirmed record at start-up).
    pub start: u64,
    /// Topics to create before shipping, when the brokers were unreachable at start-up.
    pub topics_pending: Option<kafka::Topics>,
    /// `kafka_delivered_total` of each [`Destination`], in its order, resolved once rather
    /// than per delivery.
    pub delivered: [prometheus::IntCounter; Destination::ALL.len()],
}

type Delivery = futures::future::BoxFuture<'static, (u64, Option<Instant>, Result<(), String>)>;

impl Shipper {
    /// Runs until `stop` is cancelled and everything committed is confirmed (or `drain_for` has
    /// passed since the stop; what is left stays in the WAL for the next start).
    pub async fn run(
        mut self,
        mut hot: mpsc::Receiver<Committed>,
        mut committed: watch::Receiver<u64>,
        confirm: mpsc::UnboundedSender<u64>,
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
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut unconfirmed: BTreeSet<u64> = BTreeSet::new();
        let mut stash: Option<Committed> = None;
        let mut failed = false;
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let mut writer_gone = false;
        let mut replay_backoff = Duration::from_millis(500);
        loop {
            if failed && in_flight.is_empty() {
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
                let old = std::mem::replace(&mut self.producer, kafka::producer(&self.kafka)?);
                // Dropping a producer can block while librdkafka tears down.
                tokio::task::spawn_blocking(move || drop(old));
                let from = unconfirmed.first().copied().unwrap_or(cursor);
                tracing::warn!(from, up_to = cursor, "shipping again from the oldest unconfirmed WAL record with a new producer");
                cursor = from;
                unconfirmed.clear();
                stash = None;
                failed = false;
            }
            let end = *committed.borrow();
            if !failed && cursor < end && in_flight.len() < MAX_IN_FLIGHT {
                let batch = match self.next_hot(&mut hot, &mut stash, cursor) {
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < 1024 {
                            match self.next_hot(&mut hot, &mut stash, cursor + batch.len() as u64) {
                                Some(r) => batch.push(r),
                                None => break,
                            }
                        }
                        batch
                    }
                    None => self.read_disk(cursor).await?,
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
                    let delivery = self.enqueue(seq, record, received).await;
                    in_flight.push(delivery);
                    unconfirmed.insert(seq);
                    cursor = seq + 1;
                }
                continue;
            }
            if stop.is_cancelled() || writer_gone {
                let deadline = *stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + drain_for);
                if (cursor >= end && in_flight.is_empty()) || tokio::time::Instant::now() >= deadline {
                    if !in_flight.is_empty() || cursor < end {
                        tracing::warn!(unconfirmed = unconfirmed.len(), "stopping with records unconfirmed; they stay in the WAL");
                    }
                    return Ok(());
                }
            }
            tokio::select! {
                Some((seq, received, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                    Ok(()) => {
                        replay_backoff = Duration::from_millis(500);
                        unconfirmed.remove(&seq);
                        if let Some(t) = received {
                            self.metrics.delivery_latency.observe(t.elapsed().as_secs_f64());
                        }
                        let _ = confirm.send(seq);
                    }
                    Err(e) => {
                        self.metrics.kafka_delivery_errors.inc();
                        if !failed {
                            tracing::warn!(seq, error = %e, "Kafka delivery failed; will ship again from the oldest unconfirmed record");
                        }
                        failed = true;
                    }
                },
                changed = committed.changed(), if !writer_gone => writer_gone = changed.is_err(),
                _ = stop.cancelled(), if stop_deadline.is_none() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)), if stop_deadline.is_some() || failed || writer_gone => {}
            }
        }
    }

    /// The record at `seq` from the writer's channel, if it is there (older ones are skipped;
    /// a newer one means the channel overflowed, so it waits in `stash` and disk is read).
    fn next_hot(&self, hot: &mut mpsc::Receiver<Committed>, stash: &mut Option<Committed>, seq: u64) -> Option<Committed> {
        loop {
            let item = stash.take().or_else(|| hot.try_recv().ok())?;
            if item.0 < seq {
                continue;
            }
            if item.0 == seq {
                return Some(item);
            }
            *stash = Some(item);
            return None;
        }
    }

    async fn read_disk(&self, from: u64) -> Result<Vec<Committed>, EdgeError> {
        let dir = self.wal_dir.clone();
        let max = self.max_record_bytes;
        let records = tokio::task::spawn_blocking(move || edubrain_wal::read_from(&dir, from, max))
            .await
            .map_err(|e| EdgeError::Wal(format!("WAL reader panicked: {e}")))??;
        Ok(records.into_iter().map(|(s, b)| (s, Arc::new(b), None)).collect())
    }

    /// Enqueues one record in librdkafka (waiting while its queue is full) and returns the
    /// future of its delivery report.
    async fn enqueue(&self, seq: u64, record: WalRecordRef<'_>, received: Option<Instant>) -> Delivery {
        let topic = self.kafka.topic(record.destination);
        // librdkafka copies key, payload and headers at send: nothing here outlives the call.
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header { key: name, value: Some(*value) });
            }
            let r = FutureRecord::to(topic).key(record.key).payload(record.payload).headers(headers);
            match self.producer.send_result(r) {
                Ok(delivery) => {
                    let delivered = self.delivered[record.destination as usize].clone();
                    return Box::pin(async move {
                        let result = match delivery.await {
                            Ok(Ok(_)) => {
                                delivered.inc();
                                Ok(())
                            }
                            Ok(Err((e, _))) => Err(e.to_string()),
                            Err(_) => Err("delivery report lost (producer dropped)".to_string()),
                        };
                        (seq, received, result)
                    });
                }
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

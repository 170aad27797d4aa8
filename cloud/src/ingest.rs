//! Kafka -> Arrow -> Parquet. Offsets are committed only after every file of a flush is durable
//! (see [`crate::sink`]), so a crash re-reads and rewrites rather than losing events. Poison
//! records go to the `quarantine` table with topic, partition, offset and reason, and the
//! consumer moves on. A commit that fails (broker away) is retried; it never stops ingest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use edubrain_schemas::dedup::{DedupWindow, Seen, UNKNOWN_CONTENT, fingerprint};
use edubrain_schemas::validate::ClockFlag;
use edubrain_schemas::{Event, SchemaError, ValidationPolicy, validate};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::CloudError;
use crate::batch::StoredEvent;
use crate::config::CloudConfig;
use crate::metrics::CloudMetrics;
use crate::sink::{write_events, write_parquet_atomic};

/// Progress of ingest, for callers that wait for the warehouse to catch up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestProgress {
    pub events_written: u64,
    pub quarantined: u64,
    /// Records in Kafka beyond the committed offsets, as of the last flush.
    pub lag: i64,
}

struct Quarantined {
    topic: String,
    partition: i32,
    offset: i64,
    rule: &'static str,
    reason: String,
    raw: String,
}

/// The settings of the cloud's consumers: its group, offsets only ever committed by hand, and
/// the configured TLS and SASL.
pub(crate) fn consumer_config(config: &CloudConfig) -> Result<ClientConfig, CloudError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let security = edubrain_process::kafka_security::client_properties(config.kafka.tls.as_ref(), config.kafka.sasl.as_ref())
        .map_err(|e| CloudError::Config(e.to_string()))?;
    for (key, value) in security {
        c.set(key, value);
    }
    Ok(c)
}

fn consumer(config: &CloudConfig) -> Result<StreamConsumer, CloudError> {
    consumer_config(config)?.create().map_err(|e| CloudError::Kafka(format!("consumer for {}: {e}", config.kafka.brokers)))
}

/// Waits until `topic` exists and returns its partition ids; `None` if shut down first.
async fn partitions(consumer: &StreamConsumer, topic: &str, shutdown: &CancellationToken) -> Option<Vec<i32>> {
    loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic)
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                {
                    return Some(t.partitions().iter().map(|p| p.id()).collect());
                }
            }
            Err(e) => tracing::debug!(error = %e, "metadata not available yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Consumes until `shutdown`, writing Parquet under `root/events` and `root/quarantine`.
pub async fn run(
    config: CloudConfig,
    root: PathBuf,
    metrics: CloudMetrics,
    leases: crate::warehouse::StreamLeases,
    progress: watch::Sender<IngestProgress>,
    shutdown: CancellationToken,
) -> Result<(), CloudError> {
    let consumer = Arc::new(consumer(&config)?);
    let topic = config.kafka.events_topic.clone();
    let Some(parts) = partitions(&consumer, &topic, &shutdown).await else {
        tracing::info!(%topic, "stopped before the topic existed; nothing consumed");
        return Ok(());
    };
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        // Offset::Stored resumes from the group's committed offset (earliest if none).
        tpl.add_partition_offset(&topic, *p, Offset::Stored).map_err(|e| CloudError::Kafka(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| CloudError::Kafka(format!("assign {topic}: {e}")))?;
    tracing::info!(%topic, partitions = parts.len(), "cloud ingest consuming");
    let committed: Arc<Mutex<BTreeMap<i32, i64>>> = Arc::default();
    if let Ok(c) = consumer.committed(Duration::from_secs(10)) {
        let mut map = committed.lock().expect("lag lock");
        for e in c.elements_for_topic(&topic) {
            if let Offset::Offset(o) = e.offset() {
                map.insert(e.partition(), o);
            }
        }
    }
    spawn_lag_probe(consumer.clone(), topic.clone(), parts.clone(), committed.clone(), metrics.consumer_lag.clone(), shutdown.clone());

    let offset = FixedOffset::east_opt(config.thresholds.utc_offset_hours * 3600)
        .ok_or_else(|| CloudError::Config("utc_offset_hours out of range".into()))?;
    let policy = ValidationPolicy { max_clock_ahead: chrono::Duration::hours(24), ..ValidationPolicy::default() };
    let mut seen = DedupWindow::new(config.ingest.dedup_capacity);
    // A crash after a flush's files were renamed into place but before its offsets were
    // committed leaves events that are durable and will be consumed again, in batches whose
    // boundaries (and so file names) may differ this time. The newest files hold them: their
    // ids go into the window first, so those copies are dropped as duplicates.
    let recent = recent_event_ids(&root, config.ingest.dedup_capacity)?;
    tracing::info!(ids = recent.len(), "dedup window seeded from the newest Parquet files");
    for id in recent.into_iter().rev() {
        seen.observe(id, UNKNOWN_CONTENT);
    }
    let mut buffer: Vec<StoredEvent> = Vec::new();
    let mut poison: Vec<Quarantined> = Vec::new();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut first_buffered: Option<tokio::time::Instant> = None;
    let interval = Duration::from_millis(config.ingest.flush_interval_ms);
    let mut state = IngestProgress::default();
    let mut report = tokio::time::interval(Duration::from_millis(500));
    let mut last_maintenance = std::time::Instant::now();
    // Maintenance runs here, between flushes and only with every offset committed (see
    // `maintenance`): ingest is the one writer, and no replay can rewrite a merged file.
    let mut maintain = |next_offsets: &BTreeMap<i32, i64>| {
        if !next_offsets.is_empty() || last_maintenance.elapsed() < Duration::from_secs(config.maintenance.interval_secs) {
            return;
        }
        // A stream that is reading listed files must not see them swapped: wait for a flush
        // with no stream open (`StreamLeases`).
        let Some(_swapping) = leases.try_exclusive() else {
            metrics.maintenance_deferred.inc();
            tracing::debug!("warehouse maintenance deferred: a streaming query is reading");
            return;
        };
        last_maintenance = std::time::Instant::now();
        let today = Utc::now().with_timezone(&offset).date_naive();
        match crate::maintenance::run(&root, &config.maintenance, today, crate::maintenance::GRACE) {
            Ok(r) => {
                metrics.maintenance_files_merged.inc_by(r.files_merged);
                metrics.maintenance_partitions_compacted.inc_by(r.partitions_compacted);
                metrics.maintenance_partitions_expired.inc_by(r.partitions_expired);
                if r.skipped_for_backfill {
                    tracing::info!("warehouse maintenance skipped: a backfill is writing");
                }
                if r.partitions_compacted
                    + r.partitions_expired
                    + r.temp_files_removed
                    + r.presence_files_written
                    + r.presence_files_removed
                    > 0
                {
                    tracing::info!(
                        compacted = r.partitions_compacted,
                        merged = r.files_merged,
                        expired = r.partitions_expired,
                        half_written_removed = r.temp_files_removed,
                        presence_written = r.presence_files_written,
                        presence_removed = r.presence_files_removed,
                        "warehouse maintenance"
                    );
                }
            }
            Err(e) => {
                metrics.maintenance_errors.inc();
                tracing::warn!(error = %e, "warehouse maintenance failed; retrying at the next interval");
            }
        }
    };

    loop {
        let deadline = first_buffered.map(|t| t + interval);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                flush(&consumer, &root, &topic, offset, &mut buffer, &mut poison, &mut next_offsets, &committed, &metrics, &mut state)?;
                first_buffered = None;
                let _ = progress.send(state);
                maintain(&next_offsets);
            }
            _ = report.tick() => {
                state.lag = metrics.consumer_lag.get();
                if first_buffered.is_none() && !next_offsets.is_empty() {
                    // Nothing buffered but offsets left uncommitted by a failed commit: retry it.
                    flush(&consumer, &root, &topic, offset, &mut buffer, &mut poison, &mut next_offsets, &committed, &metrics, &mut state)?;
                }
                if first_buffered.is_none() {
                    maintain(&next_offsets);
                }
                let _ = progress.send(state);
            }
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consume error");
                        continue;
                    }
                };
                metrics.records_consumed.inc();
                next_offsets.insert(msg.partition(), msg.offset() + 1);
                let payload = msg.payload().unwrap_or_default();
                let received = received_time(&msg).unwrap_or_else(Utc::now);
                let checked = check_record(&msg, received, &policy);
                let checked = checked.and_then(|(event, clock_flag)| match seen.observe(event.header.event_id.as_u128(), fingerprint(payload)) {
                    Seen::New => Ok(Some(StoredEvent { event, received_time: received, clock_flag })),
                    Seen::Duplicate => Ok(None),
                    Seen::Conflict => Err(SchemaError::Invalid {
                        field: "event_id".into(),
                        rule: "event_id_conflict",
                        message: format!("event_id {} was already stored with different content", event.header.event_id),
                    }),
                });
                match checked {
                    Ok(Some(stored)) => buffer.push(stored),
                    Ok(None) => metrics.events_duplicate.inc(),
                    Err(e) => {
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "poison record quarantined");
                        metrics.records_quarantined.with_label_values(&[e.rule()]).inc();
                        poison.push(Quarantined {
                            topic: topic.clone(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                            rule: e.rule(),
                            reason: e.to_string(),
                            raw: String::from_utf8_lossy(payload).into_owned(),
                        });
                    }
                }
                if first_buffered.is_none() {
                    first_buffered = Some(tokio::time::Instant::now());
                }
                if buffer.len() >= config.ingest.flush_max_events {
                    flush(&consumer, &root, &topic, offset, &mut buffer, &mut poison, &mut next_offsets, &committed, &metrics, &mut state)?;
                    first_buffered = None;
                    let _ = progress.send(state);
                    maintain(&next_offsets);
                }
            }
        }
    }
    flush(&consumer, &root, &topic, offset, &mut buffer, &mut poison, &mut next_offsets, &committed, &metrics, &mut state)?;
    let _ = progress.send(state);
    Ok(())
}

/// Decodes and validates a record of the events topic; the clock flag is the edge's verdict
/// when the record carries one (it judged the clock against its own policy), else ours.
pub(crate) fn check_record(
    msg: &rdkafka::message::BorrowedMessage<'_>,
    received: DateTime<Utc>,
    policy: &ValidationPolicy,
) -> Result<(Event, Option<ClockFlag>), SchemaError> {
    let event = Event::from_json(msg.payload().unwrap_or_default())?;
    let flag = validate(&event, received, policy)?;
    Ok((event, edge_clock_flag(msg).unwrap_or(flag)))
}

/// The edge's `edubrain.clock_flag` header: `Some(None)` when the header is absent but the
/// received time is (the edge found the clock plausible), `None` for records without edge headers.
fn edge_clock_flag(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Option<ClockFlag>> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == "edubrain.received_ms")?;
    Some(headers.iter().find(|h| h.key == "edubrain.clock_flag").and_then(|h| ClockFlag::parse(std::str::from_utf8(h.value?).ok()?)))
}

pub(crate) fn received_time(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<DateTime<Utc>> {
    let headers = msg.headers()?;
    let h = headers.iter().find(|h| h.key == "edubrain.received_ms")?;
    let ms: i64 = std::str::from_utf8(h.value?).ok()?.parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

/// Measures consumer lag (high watermark minus committed offset, summed over partitions) into
/// the `lag` gauge, on a thread of its own every 2 seconds: the broker round trips never delay
/// consuming.
fn spawn_lag_probe(
    consumer: Arc<StreamConsumer>,
    topic: String,
    parts: Vec<i32>,
    committed: Arc<Mutex<BTreeMap<i32, i64>>>,
    lag: prometheus::IntGauge,
    shutdown: CancellationToken,
) {
    std::thread::spawn(move || {
        while !shutdown.is_cancelled() {
            let mut total = 0;
            let mut known = true;
            for p in &parts {
                match consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5)) {
                    Ok((low, high)) => {
                        let done = committed.lock().expect("lag lock").get(p).copied().unwrap_or(low);
                        total += (high - done).max(0);
                    }
                    Err(_) => known = false,
                }
            }
            if known {
                lag.set(total);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

/// Parquet files under `dir` (recursively), with their modification times.
pub(crate) fn parquet_files(dir: &Path) -> Result<Vec<(std::time::SystemTime, PathBuf)>, CloudError> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let entry = entry.map_err(CloudError::io(&dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(CloudError::io(&path))?;
            if meta.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push((meta.modified().map_err(CloudError::io(&path))?, path));
            }
        }
    }
    Ok(files)
}

/// The event ids of one Parquet file of the warehouse, read from its `event_id` column alone.
pub(crate) fn file_event_ids(path: &Path) -> Result<Vec<u128>, CloudError> {
    let err = |message: String| CloudError::Parquet { path: path.display().to_string(), message };
    let batch = crate::sink::read_parquet(path, Some(&["event_id"]))?;
    let column = batch.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| err("event_id is not a string column".into()))?;
    column.iter().flatten().map(|id| Ok(uuid::Uuid::parse_str(id).map_err(|e| err(format!("event_id {id:?}: {e}")))?.as_u128())).collect()
}

/// Event ids of the newest Parquet files under `root/events` (by modification time), newest
/// file first, until `capacity` ids are read.
pub fn recent_event_ids(root: &Path, capacity: usize) -> Result<Vec<u128>, CloudError> {
    let mut files = parquet_files(&root.join("events"))?;
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut ids = Vec::new();
    for (_, path) in files {
        if ids.len() >= capacity {
            break;
        }
        ids.extend(file_event_ids(&path)?);
    }
    ids.truncate(capacity);
    Ok(ids)
}

/// 64-bit FNV-1a: a stable file name from the offsets a flush covers (and, in maintenance,
/// from the names of the files a merge replaces).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[allow(clippy::too_many_arguments)]
fn flush(
    consumer: &StreamConsumer,
    root: &Path,
    topic: &str,
    offset: FixedOffset,
    buffer: &mut Vec<StoredEvent>,
    poison: &mut Vec<Quarantined>,
    next_offsets: &mut BTreeMap<i32, i64>,
    committed: &Mutex<BTreeMap<i32, i64>>,
    metrics: &CloudMetrics,
    state: &mut IngestProgress,
) -> Result<(), CloudError> {
    if next_offsets.is_empty() {
        return Ok(());
    }
    let timer = metrics.flush_duration.start_timer();
    // Deterministic names: the same offsets re-read after a crash overwrite the same file.
    let tag = fnv1a(format!("{next_offsets:?}").as_bytes());
    let events = std::mem::take(buffer);
    let received: Vec<DateTime<Utc>> = events.iter().map(|e| e.received_time).collect();
    let n = events.len() as u64;
    let (files, bytes) = write_events(root, &format!("part-{tag:016x}.parquet"), &events, offset)?;
    metrics.files_written.inc_by(files);
    metrics.bytes_written.inc_by(bytes);
    if !poison.is_empty() {
        let batch = quarantine_batch(poison)?;
        let (_, bytes) = write_parquet_atomic(&root.join("quarantine"), &format!("part-{tag:016x}.parquet"), &batch)?;
        metrics.bytes_written.inc_by(bytes);
        state.quarantined += poison.len() as u64;
        poison.clear();
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next_offsets.iter() {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o)).map_err(|e| CloudError::Kafka(e.to_string()))?;
    }
    // The files are durable whatever happens to the commit. A failed commit (the broker is away)
    // keeps the offsets and is retried; returning the error would end ingest for good, which the
    // Kafka outage test found: the warehouse stopped at the last flush before the outage.
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            committed.lock().expect("lag lock").extend(next_offsets.iter().map(|(p, o)| (*p, *o)));
            next_offsets.clear();
        }
        Err(e) => {
            metrics.commit_errors.inc();
            tracing::warn!(error = %e, offsets = ?next_offsets, "offset commit failed after the Parquet files were durable; retrying");
        }
    }
    let now = Utc::now();
    for r in received {
        metrics.freshness.observe((now - r).num_milliseconds().max(0) as f64 / 1000.0);
    }
    metrics.events_written.inc_by(n);
    state.events_written += n;
    timer.observe_duration();
    Ok(())
}

/// Schema of the quarantine table.
pub fn quarantine_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("quarantined_time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ]))
}

fn quarantine_batch(rows: &[Quarantined]) -> Result<RecordBatch, CloudError> {
    let now = Utc::now().timestamp_millis();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.topic.as_str()))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.partition))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.rule))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.reason.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.raw.as_str()))),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|_| now)).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(quarantine_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, TimeZone, Utc};

    use super::*;
    use crate::batch::tests::stored;

    #[test]
    fn recent_event_ids_come_from_the_newest_files_first_up_to_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc.with_ymd_and_hms(2026, 11, 16, 2, 0, 0).unwrap();
        let cst = FixedOffset::east_opt(8 * 3600).unwrap();
        assert!(recent_event_ids(dir.path(), 10).unwrap().is_empty(), "no warehouse yet");
        write_events(dir.path(), "part-a.parquet", &(1..=3).map(|id| stored(id, t, t, None)).collect::<Vec<_>>(), cst).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_events(dir.path(), "part-b.parquet", &(4..=5).map(|id| stored(id, t, t, None)).collect::<Vec<_>>(), cst).unwrap();
        assert_eq!(recent_event_ids(dir.path(), 10).unwrap(), vec![4, 5, 1, 2, 3]);
        assert_eq!(recent_event_ids(dir.path(), 3).unwrap(), vec![4, 5, 1], "the newest file first, then cut at the capacity");
    }
}

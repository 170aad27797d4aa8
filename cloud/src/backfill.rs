//! Backfill: read a time range into the warehouse again, from Kafka or from exported files,
//! adding only the events it does not already hold, with progress.
//!
//! For when files were lost (a disk, a mistaken delete, a retention setting undone) or events
//! arrive from elsewhere (an export of another system, a dead edge's records). The warehouse
//! holds each `event_id` once: backfill reads the ids of every partition it writes into before
//! writing, skips those it finds, and names its files uniquely per run, so running it twice, or
//! again after a crash, adds nothing twice.
//!
//! - From Kafka: the records whose timestamps lie in `[from, to)`, up to the offsets the live
//!   ingest has committed (beyond them, live ingest is still to read them; they are counted as
//!   left to it). Nothing is committed: the live consumer group's offsets are not touched.
//! - From files: every `*.jsonl` file of a directory, one event per line (the wire JSON), whose
//!   event time lies in `[from, to)`.
//!
//! Records that do not decode or validate are counted as invalid (from Kafka, live ingest has
//! quarantined them already) and never written. A backfill can run beside a serving cloud: it
//! holds the warehouse's [`WriterLock`], so the cloud's maintenance waits, and its files appear
//! atomically like ingest's. Retention still applies: a day older than `retention_days` is
//! deleted again by the next maintenance run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use edubrain_schemas::{Event, ValidationPolicy, validate};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::CloudError;
use crate::batch::{PartitionKey, StoredEvent};
use crate::config::CloudConfig;
use crate::ingest::{check_record, consumer_config, file_event_ids, parquet_files, received_time};
use crate::maintenance::WriterLock;
use crate::sink::write_events;

/// The half-open range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl TimeRange {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, CloudError> {
        if from >= to {
            return Err(CloudError::Config(format!("backfill range: from {from} is not before to {to}")));
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }
}

/// Where the events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Kafka,
    /// A directory of `*.jsonl` files.
    Files(PathBuf),
}

/// What a partition of the events topic holds for the range, and what backfill reads of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    /// First offset at or after `from`.
    pub start: i64,
    /// Backfill reads `[start, end)`: up to the first offset at or after `to`, and never past the
    /// live ingest's committed offset.
    pub end: i64,
    /// Records of the range past the committed offset, left to live ingest.
    pub left_to_ingest: i64,
}

/// Offsets of one partition as the broker reports them; `None`: no record at or after that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub at_from: Option<i64>,
    pub at_to: Option<i64>,
    pub high_watermark: i64,
    /// The live consumer group's committed offset; `None`: it never committed.
    pub committed: Option<i64>,
}

/// The plan of one partition (pure: the broker's answers in, the range to read out).
///
/// Brokers differ where a time lies past the last record: Kafka answers "none", Tansu 0.6 an
/// offset before the range start; both mean the range runs to the newest record. Tansu's high
/// watermark also lags (it is the last batch's first offset + 1), so the newest record is taken
/// as the larger of the watermark and the committed offset. Reading past the range costs time,
/// never correctness: each record's timestamp is checked against the range as it is read.
pub fn plan_partition(partition: i32, o: PartitionOffsets) -> PartitionPlan {
    let start = o.at_from.unwrap_or(o.high_watermark);
    let newest = o.high_watermark.max(o.committed.unwrap_or(0));
    let range_end = o.at_to.filter(|&end| end >= start).unwrap_or(newest).max(start);
    let committed = o.committed.unwrap_or(start).max(start);
    let end = range_end.min(committed);
    PartitionPlan { partition, start, end, left_to_ingest: range_end - end }
}

/// Where a backfill is, and what it found so far; the final one is its report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    /// `records` (Kafka) or `bytes` (files).
    pub unit: &'static str,
    pub position: u64,
    pub total: u64,
    pub events_written: u64,
    /// Events the warehouse already held (or that occurred twice in the source).
    pub already_present: u64,
    /// Records outside the range (a Kafka partition's timestamps are not strictly ordered; a
    /// file holds other days).
    pub outside_range: u64,
    pub invalid: u64,
    pub files_written: u64,
    /// Kafka records of the range that live ingest has not consumed yet (not read here).
    pub left_to_ingest: u64,
    pub partitions: Vec<PartitionPlan>,
}

/// The ids each warehouse partition holds, read when backfill first writes into it.
struct Present {
    root: PathBuf,
    ids: HashMap<String, HashSet<u128>>,
}

impl Present {
    /// True if the event was not there yet (and is now counted as there).
    fn insert(&mut self, key: &PartitionKey, id: u128) -> Result<bool, CloudError> {
        let dir = key.dir();
        if !self.ids.contains_key(&dir) {
            let mut set = HashSet::new();
            for (_, file) in parquet_files(&self.root.join("events").join(&dir))? {
                set.extend(file_event_ids(&file)?);
            }
            self.ids.insert(dir.clone(), set);
        }
        Ok(self.ids.get_mut(&dir).expect("inserted above").insert(id))
    }
}

/// Buffers new events and writes them in files named for this run.
struct Writer {
    root: PathBuf,
    offset: FixedOffset,
    run: uuid::Uuid,
    flushes: u64,
    buffer: Vec<StoredEvent>,
    max: usize,
    present: Present,
}

impl Writer {
    fn add(&mut self, stored: StoredEvent, progress: &mut BackfillProgress) -> Result<(), CloudError> {
        let key = PartitionKey::of(&stored, self.offset);
        if self.present.insert(&key, stored.event.header.event_id.as_u128())? {
            self.buffer.push(stored);
            if self.buffer.len() >= self.max {
                self.flush(progress)?;
            }
        } else {
            progress.already_present += 1;
        }
        Ok(())
    }

    fn flush(&mut self, progress: &mut BackfillProgress) -> Result<(), CloudError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.buffer);
        let n = events.len() as u64;
        let name = format!("backfill-{}-{:06}.parquet", self.run.simple(), self.flushes);
        self.flushes += 1;
        let (files, _) = write_events(&self.root, &name, &events, self.offset)?;
        progress.files_written += files;
        progress.events_written += n;
        Ok(())
    }
}

/// Runs a backfill into `config.warehouse_dir`; `report` is called with the progress at least
/// every 200 ms of work and once at the end.
pub async fn run(
    config: &CloudConfig,
    range: TimeRange,
    source: &Source,
    shutdown: CancellationToken,
    report: &mut dyn FnMut(&BackfillProgress),
) -> Result<BackfillProgress, CloudError> {
    let root = &config.warehouse_dir;
    let _lock = WriterLock::acquire(root, Duration::from_secs(120)).await?;
    let offset = FixedOffset::east_opt(config.thresholds.utc_offset_hours * 3600)
        .ok_or_else(|| CloudError::Config("utc_offset_hours out of range".into()))?;
    let mut writer = Writer {
        root: root.clone(),
        offset,
        run: uuid::Uuid::new_v4(),
        flushes: 0,
        buffer: Vec::new(),
        max: config.ingest.flush_max_events.max(1),
        present: Present { root: root.clone(), ids: HashMap::new() },
    };
    let policy = ValidationPolicy { max_clock_ahead: chrono::Duration::hours(24), ..ValidationPolicy::default() };
    let mut progress = match source {
        Source::Kafka => from_kafka(config, range, &policy, &mut writer, shutdown, report).await?,
        Source::Files(dir) => from_files(dir, range, &policy, &mut writer, &shutdown, report)?,
    };
    writer.flush(&mut progress)?;
    report(&progress);
    Ok(progress)
}

/// Calls `report` when 200 ms have passed since it last did.
struct Ticker(Instant);

impl Ticker {
    fn tick(&mut self, progress: &BackfillProgress, report: &mut dyn FnMut(&BackfillProgress)) {
        if self.0.elapsed() >= Duration::from_millis(200) {
            self.0 = Instant::now();
            report(progress);
        }
    }
}

async fn from_kafka(
    config: &CloudConfig,
    range: TimeRange,
    policy: &ValidationPolicy,
    writer: &mut Writer,
    shutdown: CancellationToken,
    report: &mut dyn FnMut(&BackfillProgress),
) -> Result<BackfillProgress, CloudError> {
    let topic = config.kafka.events_topic.as_str();
    let kafka = |what: &str| {
        let what = what.to_string();
        move |e: rdkafka::error::KafkaError| CloudError::Kafka(format!("{what}: {e}"))
    };
    // The live group's id, to read its committed offsets; this consumer never commits. Partition
    // EOF events end a partition whose last offsets are gaps.
    let consumer: StreamConsumer = consumer_config(config)?
        .set("enable.partition.eof", "true")
        .create()
        .map_err(kafka(&format!("consumer for {}", config.kafka.brokers)))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(kafka(&format!("metadata of {topic}")))?;
    let parts: Vec<i32> =
        metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    if parts.is_empty() {
        return Err(CloudError::Kafka(format!("topic {topic} has no partitions at {}", config.kafka.brokers)));
    }
    let at = |t: DateTime<Utc>| -> Result<BTreeMap<i32, Option<i64>>, CloudError> {
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Offset(t.timestamp_millis())).map_err(kafka("offsets"))?;
        }
        let found = consumer.offsets_for_times(tpl, timeout).map_err(kafka(&format!("offsets of {topic} at {t}")))?;
        Ok(found.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None })).collect())
    };
    let (at_from, at_to) = (at(range.from)?, at(range.to)?);
    let mut committed_tpl = TopicPartitionList::new();
    for p in &parts {
        committed_tpl.add_partition(topic, *p);
    }
    let committed: BTreeMap<i32, Option<i64>> = consumer
        .committed_offsets(committed_tpl, timeout)
        .map_err(kafka("committed offsets"))?
        .elements()
        .iter()
        .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
        .collect();
    let mut progress = BackfillProgress { unit: "records", ..BackfillProgress::default() };
    for p in &parts {
        let (_, high) = consumer.fetch_watermarks(topic, *p, timeout).map_err(kafka(&format!("watermarks of {topic}/{p}")))?;
        let plan = plan_partition(
            *p,
            PartitionOffsets {
                at_from: at_from.get(p).copied().flatten(),
                at_to: at_to.get(p).copied().flatten(),
                high_watermark: high,
                committed: committed.get(p).copied().flatten(),
            },
        );
        progress.total += (plan.end - plan.start) as u64;
        progress.left_to_ingest += plan.left_to_ingest as u64;
        progress.partitions.push(plan);
    }
    tracing::info!(plans = ?progress.partitions, total = progress.total, "backfill from Kafka planned");
    report(&progress);
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for plan in progress.partitions.iter().filter(|p| p.end > p.start) {
        tpl.add_partition_offset(topic, plan.partition, Offset::Offset(plan.start)).map_err(kafka("assign"))?;
        pending.insert(plan.partition, plan.end);
    }
    if pending.is_empty() {
        return Ok(progress);
    }
    consumer.assign(&tpl).map_err(kafka(&format!("assign {topic}")))?;
    let mut ticker = Ticker(Instant::now());
    while !pending.is_empty() {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Err(CloudError::Query(format!("backfill interrupted at {} of {} records; run it again to finish", progress.position, progress.total))),
            m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()) => m,
        };
        let msg = match msg {
            Err(_) => return Err(CloudError::Kafka(format!("no record from {topic} for 30 s; still to read: {pending:?}"))),
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consume error during backfill");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        let Some(end) = pending.get(&msg.partition()).copied() else { continue };
        if msg.offset() >= end {
            pending.remove(&msg.partition());
            continue;
        }
        progress.position += 1;
        if msg.offset() + 1 >= end {
            pending.remove(&msg.partition());
        }
        let stamp = msg.timestamp().to_millis().and_then(DateTime::<Utc>::from_timestamp_millis);
        if stamp.is_some_and(|t| !range.contains(t)) {
            progress.outside_range += 1;
            continue;
        }
        let received = received_time(&msg).or(stamp).unwrap_or_else(Utc::now);
        match check_record(&msg, received, policy) {
            Ok((event, clock_flag)) => writer.add(StoredEvent { event, received_time: received, clock_flag }, &mut progress)?,
            Err(_) => progress.invalid += 1,
        }
        ticker.tick(&progress, report);
    }
    Ok(progress)
}

fn from_files(
    dir: &Path,
    range: TimeRange,
    policy: &ValidationPolicy,
    writer: &mut Writer,
    shutdown: &CancellationToken,
    report: &mut dyn FnMut(&BackfillProgress),
) -> Result<BackfillProgress, CloudError> {
    use std::io::BufRead;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(CloudError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CloudError::Config(format!("{}: no *.jsonl files to backfill from", dir.display())));
    }
    let mut progress = BackfillProgress { unit: "bytes", ..BackfillProgress::default() };
    for f in &files {
        progress.total += std::fs::metadata(f).map_err(CloudError::io(f))?.len();
    }
    report(&progress);
    let mut ticker = Ticker(Instant::now());
    let now = Utc::now();
    for file in &files {
        let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(CloudError::io(file))?);
        for (n, line) in reader.split(b'\n').enumerate() {
            if shutdown.is_cancelled() {
                return Err(CloudError::Query(format!(
                    "backfill interrupted in {} line {}; run it again to finish",
                    file.display(),
                    n + 1
                )));
            }
            let line = line.map_err(CloudError::io(file))?;
            progress.position += line.len() as u64 + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let checked = Event::from_json(&line).and_then(|e| validate(&e, now, policy).map(|flag| (e, flag)));
            match checked {
                Ok((event, _)) if !range.contains(event.header.event_time) => progress.outside_range += 1,
                Ok((event, clock_flag)) => writer.add(StoredEvent { event, received_time: now, clock_flag }, &mut progress)?,
                Err(e) => {
                    tracing::warn!(file = %file.display(), line = n + 1, error = %e, "invalid event not backfilled");
                    progress.invalid += 1;
                }
            }
            ticker.tick(&progress, report);
        }
    }
    progress.position = progress.total;
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(at_from: Option<i64>, at_to: Option<i64>, high: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets { at_from, at_to, high_watermark: high, committed }
    }

    #[test]
    fn a_partition_is_read_from_the_range_start_to_its_end_or_the_committed_offset() {
        // The whole range consumed by live ingest.
        assert_eq!(
            plan_partition(0, offsets(Some(10), Some(50), 100, Some(80))),
            PartitionPlan { partition: 0, start: 10, end: 50, left_to_ingest: 0 }
        );
        // Live ingest is inside the range: the rest is left to it.
        assert_eq!(
            plan_partition(1, offsets(Some(10), Some(50), 100, Some(30))),
            PartitionPlan { partition: 1, start: 10, end: 30, left_to_ingest: 20 }
        );
        // No record at or after `to`: the range runs to the high watermark.
        assert_eq!(
            plan_partition(2, offsets(Some(10), None, 100, Some(100))),
            PartitionPlan { partition: 2, start: 10, end: 100, left_to_ingest: 0 }
        );
        // Tansu: "0" for a time past the last record, and a high watermark behind the committed
        // offset (seen: 155 with 308 committed).
        assert_eq!(
            plan_partition(6, offsets(Some(154), Some(0), 155, Some(308))),
            PartitionPlan { partition: 6, start: 154, end: 308, left_to_ingest: 0 }
        );
        // No record at or after `from`: nothing.
        assert_eq!(
            plan_partition(3, offsets(None, None, 100, Some(100))),
            PartitionPlan { partition: 3, start: 100, end: 100, left_to_ingest: 0 }
        );
        // The group never committed: live ingest has read nothing; all of it is left to it.
        assert_eq!(
            plan_partition(4, offsets(Some(0), Some(40), 100, None)),
            PartitionPlan { partition: 4, start: 0, end: 0, left_to_ingest: 40 }
        );
        // Committed before the range starts.
        assert_eq!(
            plan_partition(5, offsets(Some(10), Some(50), 100, Some(5))),
            PartitionPlan { partition: 5, start: 10, end: 10, left_to_ingest: 40 }
        );
    }

    #[test]
    fn a_range_is_half_open_and_must_not_be_empty() {
        let t = |h: i64| DateTime::<Utc>::from_timestamp(h * 3600, 0).unwrap();
        let r = TimeRange::new(t(1), t(2)).unwrap();
        assert!(r.contains(t(1)) && !r.contains(t(2)));
        assert!(TimeRange::new(t(2), t(2)).unwrap_err().to_string().contains("is not before"));
    }
}

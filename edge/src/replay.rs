//! `edubrain-edge replay`: dead-lettered events that today's rules accept go to the events
//! topic, for the operator who fixed what refused them (an edge upgraded past a rule that was
//! too strict, a schema version it did not know yet).
//!
//! The dead-letter topic keeps every refused message byte for byte with its context in headers
//! (rule, MQTT topic, receiving city and time). Replay reads it from the start to its end and
//! judges each record of this edge's city again ([`reconsider`], pure): the same checks as a
//! live message, at the time the edge first received it. What passes is produced to the events
//! topic with the headers a live acceptance writes, plus where it came from. Never replayed:
//! another city's records, and `event_id_conflict` (the id was accepted with other content, so
//! a replay would put a second version of the event in Kafka).
//!
//! Replay is idempotent per edge: each dead-letter offset it delivered is appended to
//! `<wal.dir>/deadletter-replayed` (fsynced) after Kafka's delivery report, and skipped by
//! later runs. The dead-letter topic itself is never changed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use edubrain_schemas::ValidationPolicy;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::EdgeError;
use crate::classify::{Rejection, check};
use crate::config::EdgeConfig;

/// Rules whose records are never replayed, whatever today's checks say.
const NEVER_REPLAYED: [&str; 1] = ["event_id_conflict"];

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only records the edge received at or after this instant …
    pub from: Option<DateTime<Utc>>,
    /// … and before this one.
    pub to: Option<DateTime<Utc>>,
    /// Only records refused by these rules (all when empty).
    pub rules: BTreeSet<String>,
    /// Judge and count, produce nothing.
    pub dry_run: bool,
}

/// The verdict on one dead-letter record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Today's rules accept it: produce `payload` to the events topic under `key` with `headers`.
    Replay { key: String, headers: Vec<(&'static str, String)>, payload: Vec<u8> },
    /// Today's rules still refuse it.
    StillRejected(Rejection),
    /// Not this edge's to replay (the reason is a bounded name).
    NotReplayable(&'static str),
}

/// Judges one dead-letter record (`header` looks its headers up) as the edge of `city` would
/// judge the message today, at the time it first received it.
pub fn reconsider(city: &str, header: impl Fn(&str) -> Option<String>, payload: &[u8], policy: &ValidationPolicy) -> Verdict {
    if header("edubrain.edge_city").as_deref() != Some(city) {
        return Verdict::NotReplayable("other_city");
    }
    if header("edubrain.rule").is_some_and(|rule| NEVER_REPLAYED.contains(&rule.as_str())) {
        return Verdict::NotReplayable("event_id_conflict");
    }
    let Some(topic) = header("edubrain.mqtt_topic") else { return Verdict::NotReplayable("no_mqtt_topic") };
    let Some(received) = received_at(&header) else {
        return Verdict::NotReplayable("no_received_time");
    };
    match check(city, &topic, payload, received, policy) {
        Ok((event, clock)) => {
            let mut headers =
                vec![("edubrain.received_ms", received.timestamp_millis().to_string()), ("edubrain.edge_city", city.to_string())];
            if let Some(flag) = clock {
                headers.push(("edubrain.clock_flag", flag.as_str().to_string()));
            }
            headers.push(("edubrain.replayed_rule", header("edubrain.rule").unwrap_or_default()));
            Verdict::Replay { key: event.header.classroom, headers, payload: payload.to_vec() }
        }
        Err(rejection) => Verdict::StillRejected(rejection),
    }
}

/// When the edge first received the message (its `edubrain.received_ms` header).
fn received_at(header: &impl Fn(&str) -> Option<String>) -> Option<DateTime<Utc>> {
    header("edubrain.received_ms").and_then(|ms| ms.parse::<i64>().ok()).and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// Where a replay is, for a progress bar, and its final counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Records in the dead-letter topic when the replay started.
    pub total: u64,
    /// Records read so far.
    pub position: u64,
    /// Produced to the events topic (with `dry_run`: would have been).
    pub replayed: u64,
    /// Delivered by an earlier replay of this edge.
    pub already_replayed: u64,
    /// Outside the time range or the rules asked for.
    pub not_selected: u64,
    /// Refused again, by rule.
    pub still_rejected: BTreeMap<String, u64>,
    /// Not this edge's to replay, by reason.
    pub not_replayable: BTreeMap<String, u64>,
}

/// The offsets an earlier replay delivered, one `partition offset` line each.
struct ReplayLog {
    path: PathBuf,
    done: HashSet<(i32, i64)>,
}

impl ReplayLog {
    fn open(wal_dir: &Path) -> Result<Self, EdgeError> {
        let path = wal_dir.join("deadletter-replayed");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(EdgeError::Wal(format!("{}: {e}", path.display()))),
        };
        let mut done = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let parsed = line.split_once(' ').and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)));
            // A torn last line (a crash mid-append) is ignored: that record is replayed again,
            // which the cloud's event_id dedup absorbs.
            match parsed {
                Some(entry) => {
                    done.insert(entry);
                }
                None if n + 1 == text.lines().count() => {}
                None => return Err(EdgeError::Wal(format!("{} line {}: {line:?} is not `partition offset`", path.display(), n + 1))),
            }
        }
        Ok(Self { path, done })
    }

    fn append(&mut self, delivered: &[(i32, i64)]) -> Result<(), EdgeError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let err = |e: std::io::Error| EdgeError::Wal(format!("{}: {e}", self.path.display()));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(err)?;
        let mut text = String::new();
        for (p, o) in delivered {
            text.push_str(&format!("{p} {o}\n"));
        }
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        self.done.extend(delivered.iter().copied());
        Ok(())
    }
}

/// Deliveries awaited together, then recorded in the replay log in one fsync.
const DELIVERY_BATCH: usize = 500;

/// Replays this edge's dead-letter records that today's rules accept; `report` sees the
/// progress at least every 200 ms.
pub async fn run(
    config: &EdgeConfig,
    options: &ReplayOptions,
    shutdown: CancellationToken,
    report: &mut dyn FnMut(&ReplayProgress),
) -> Result<ReplayProgress, EdgeError> {
    let wal_dir = config.wal.dir.as_deref().ok_or_else(|| EdgeError::Config("wal.dir is not set".into()))?;
    let mut log = ReplayLog::open(wal_dir)?;
    let policy = config.validation_policy();
    let topic = config.kafka.deadletter_topic.as_str();
    let kafka = |what: String| move |e: rdkafka::error::KafkaError| EdgeError::Kafka(format!("{what}: {e}"));
    // A group id is required to consume; nothing is ever committed under it.
    let consumer: StreamConsumer = crate::kafka::client_config(&config.kafka)?
        .set("group.id", format!("edubrain-edge-replay-{}", config.city))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(kafka(format!("consumer for {}", config.kafka.brokers)))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(kafka(format!("metadata of {topic}")))?;
    let partitions: Vec<i32> =
        metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    if partitions.is_empty() {
        return Err(EdgeError::Kafka(format!("topic {topic} has no partitions at {}", config.kafka.brokers)));
    }
    let mut progress = ReplayProgress::default();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout).map_err(kafka(format!("watermarks of {topic}/{p}")))?;
        progress.total += (high - low).max(0) as u64;
        tpl.add_partition_offset(topic, *p, Offset::Beginning).map_err(kafka("assign".into()))?;
    }
    consumer.assign(&tpl).map_err(kafka(format!("assign {topic}")))?;
    report(&progress);

    let producer = if options.dry_run { None } else { Some(crate::kafka::producer(&config.kafka)?) };
    let mut in_flight = Vec::new();
    let mut pending: BTreeSet<i32> = partitions.iter().copied().collect();
    let mut last_report = std::time::Instant::now();
    while !pending.is_empty() {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => {
                return Err(EdgeError::Kafka(format!("replay interrupted at {} of {} records; run it again to go on", progress.position, progress.total)));
            }
            m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()) => m,
        };
        let msg = match msg {
            Err(_) => {
                return Err(EdgeError::Kafka(format!("no record from {topic} for 30 s; partitions not read to the end: {pending:?}")));
            }
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consume error during replay");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        progress.position += 1;
        let (partition, offset) = (msg.partition(), msg.offset());
        let headers: BTreeMap<String, String> = msg
            .headers()
            .map(|h| h.iter().filter_map(|h| Some((h.key.to_string(), String::from_utf8(h.value?.to_vec()).ok()?))).collect())
            .unwrap_or_default();
        let header = |name: &str| headers.get(name).cloned();
        let in_range = received_at(&header).is_none_or(|t| options.from.is_none_or(|from| t >= from) && options.to.is_none_or(|to| t < to));
        let rule_selected = options.rules.is_empty() || header("edubrain.rule").is_some_and(|r| options.rules.contains(&r));
        if !in_range || !rule_selected {
            progress.not_selected += 1;
        } else if log.done.contains(&(partition, offset)) {
            progress.already_replayed += 1;
        } else {
            match reconsider(&config.city, header, msg.payload().unwrap_or_default(), &policy) {
                Verdict::NotReplayable(why) => *progress.not_replayable.entry(why.to_string()).or_default() += 1,
                Verdict::StillRejected(r) => *progress.still_rejected.entry(r.rule.to_string()).or_default() += 1,
                Verdict::Replay { key, headers, payload } => {
                    progress.replayed += 1;
                    if let Some(producer) = &producer {
                        let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len() + 1);
                        for (name, value) in &headers {
                            kafka_headers = kafka_headers.insert(Header { key: name, value: Some(value.as_bytes()) });
                        }
                        let from = format!("{topic}/{partition}/{offset}");
                        kafka_headers = kafka_headers.insert(Header { key: "edubrain.replayed_from", value: Some(from.as_bytes()) });
                        let record = FutureRecord::to(&config.kafka.events_topic).key(&key).payload(&payload).headers(kafka_headers);
                        let delivery =
                            producer.send_result(record).map_err(|(e, _)| EdgeError::Kafka(format!("producing a replayed event: {e}")))?;
                        in_flight.push(((partition, offset), delivery));
                    }
                }
            }
        }
        if in_flight.len() >= DELIVERY_BATCH {
            confirm(&mut in_flight, &mut log).await?;
        }
        if last_report.elapsed() >= Duration::from_millis(200) {
            last_report = std::time::Instant::now();
            report(&progress);
        }
    }
    confirm(&mut in_flight, &mut log).await?;
    report(&progress);
    Ok(progress)
}

type Delivery = rdkafka::producer::DeliveryFuture;

/// Awaits every delivery report in `in_flight`, then records the delivered offsets.
async fn confirm(in_flight: &mut Vec<((i32, i64), Delivery)>, log: &mut ReplayLog) -> Result<(), EdgeError> {
    let mut delivered = Vec::with_capacity(in_flight.len());
    let mut failure = None;
    for (at, delivery) in in_flight.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => delivered.push(at),
            Ok(Err((e, _))) => {
                failure = Some(format!("the replayed event from dead-letter offset {}/{} was not delivered: {e}", at.0, at.1))
            }
            Err(_) => failure = Some(format!("the producer went away before delivering dead-letter offset {}/{}", at.0, at.1)),
        }
    }
    // What was delivered is recorded even when something else failed, so a rerun skips it.
    log.append(&delivered)?;
    failure.map_or(Ok(()), |f| Err(EdgeError::Kafka(f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edubrain_schemas::event::{BandwidthSampled, EventBody};
    use edubrain_schemas::{Event, Header as EventHeader, SCHEMA_VERSION};

    const TOPIC: &str = "edubrain/v1/c01/s1/r1/t1/events";

    fn payload(down_kbps: f64) -> Vec<u8> {
        let event = Event {
            header: EventHeader {
                event_id: uuid::Uuid::from_u128(9),
                schema_version: SCHEMA_VERSION,
                city: "c01".into(),
                school: "s1".into(),
                classroom: "r1".into(),
                terminal: "t1".into(),
                event_time: Utc.with_ymd_and_hms(2026, 11, 16, 1, 0, 0).unwrap(),
            },
            body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps, up_kbps: 1.0 }),
        };
        serde_json::to_vec(&event).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name: &str| map.get(name).cloned()
    }

    /// 2026-11-16T01:00:30Z, half a minute after the event.
    const RECEIVED_MS: &str = "1794790830000";

    fn dead_letter(rule: &str) -> Vec<(&'static str, String)> {
        vec![
            ("edubrain.rule", rule.to_string()),
            ("edubrain.mqtt_topic", TOPIC.to_string()),
            ("edubrain.edge_city", "c01".to_string()),
            ("edubrain.received_ms", RECEIVED_MS.to_string()),
        ]
    }

    fn judge(pairs: &[(&'static str, String)], payload: &[u8]) -> Verdict {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        reconsider("c01", headers(&pairs), payload, &ValidationPolicy::default())
    }

    #[test]
    fn what_todays_rules_accept_is_replayed_with_the_original_receipt_time() {
        let Verdict::Replay { key, headers, payload: replayed } = judge(&dead_letter("schema_version"), &payload(5.0)) else {
            panic!("a valid event was not replayed")
        };
        assert_eq!(key, "r1");
        assert_eq!(replayed, payload(5.0), "the bytes travel unchanged");
        assert!(headers.contains(&("edubrain.received_ms", RECEIVED_MS.to_string())));
        assert!(headers.contains(&("edubrain.edge_city", "c01".to_string())));
        assert!(headers.contains(&("edubrain.replayed_rule", "schema_version".to_string())));
        assert!(!headers.iter().any(|(k, _)| *k == "edubrain.clock_flag"), "the clock was right when it was received");
    }

    #[test]
    fn what_they_still_refuse_and_what_is_not_ours_stays() {
        match judge(&dead_letter("range"), &payload(-1.0)) {
            Verdict::StillRejected(r) => assert_eq!(r.field, "payload.down_kbps"),
            other => panic!("{other:?}"),
        }
        match judge(&dead_letter("json_syntax"), b"{not json") {
            Verdict::StillRejected(r) => assert_eq!(r.rule, "json_syntax"),
            other => panic!("{other:?}"),
        }
        assert_eq!(judge(&dead_letter("event_id_conflict"), &payload(5.0)), Verdict::NotReplayable("event_id_conflict"));
        let mut other_city = dead_letter("range");
        other_city[2].1 = "c02".into();
        assert_eq!(judge(&other_city, &payload(5.0)), Verdict::NotReplayable("other_city"));
        let no_topic: Vec<_> = dead_letter("range").into_iter().filter(|(k, _)| *k != "edubrain.mqtt_topic").collect();
        assert_eq!(judge(&no_topic, &payload(5.0)), Verdict::NotReplayable("no_mqtt_topic"));
        // Another classroom's topic: the identity check refuses it again.
        let mut forged = dead_letter("identity_matches_topic");
        forged[1].1 = "edubrain/v1/c01/s1/r2/t9/events".into();
        assert!(matches!(judge(&forged, &payload(5.0)), Verdict::StillRejected(r) if r.rule == "identity_matches_topic"));
    }

    #[test]
    fn the_replay_log_survives_a_torn_last_line_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ReplayLog::open(dir.path()).unwrap();
        log.append(&[(0, 3), (2, 7)]).unwrap();
        std::fs::OpenOptions::new().append(true).open(dir.path().join("deadletter-replayed")).unwrap().write_all(b"1 4").unwrap();
        let reopened = ReplayLog::open(dir.path()).unwrap();
        assert_eq!(reopened.done, HashSet::from([(0, 3), (2, 7), (1, 4)]));
        std::fs::write(dir.path().join("deadletter-replayed"), "0 3\n1 x\n1 4\n").unwrap();
        let error = ReplayLog::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("line 2"), "{error}");
        std::fs::write(dir.path().join("deadletter-replayed"), "0 3\n1 4\n2 ").unwrap();
        assert_eq!(ReplayLog::open(dir.path()).unwrap().done.len(), 2, "a torn last line is ignored");
    }
}

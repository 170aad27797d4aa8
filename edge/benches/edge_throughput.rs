//! Edge benchmark: the same events, through the same real brokers, in the same invocation,
//! via (1) the edge process and (2) the bare bridge users write by hand
//! (`mosquitto_sub -q 1 | python confluent-kafka producer`, `benches/bare_bridge.py`).
//!
//! 1. Throughput: every terminal publishes its backlog of a simulated school day at once; each
//!    pipeline is timed from the first publish until Kafka has confirmed every event to it (the
//!    edge's `kafka_delivered_total`, the bridge's delivery callbacks), so nothing but the
//!    pipeline and the brokers runs meanwhile. Prints events/s, CPU seconds per event of each
//!    pipeline's processes and their peak RSS, with ratios; then a consumer checks that Kafka
//!    holds exactly the events (not timed).
//! 2. Latency: as many fresh events published at a steady `EDUBRAIN_BENCH_LATENCY_RATE`
//!    (default 50,000 events/s, the sustained target) once every terminal is connected:
//!    the MQTT hop (due time to the edge's receipt, from each record's `edubrain.received_ms`)
//!    and the edge's receipt-to-Kafka-ack percentiles over that run, from its
//!    `kafka_delivery_latency_seconds` histogram (interpolated within buckets).
//! 3. Soak (`EDUBRAIN_BENCH_SOAK_ROUNDS=R`): R more backlogs of fresh events through the same
//!    edge, back to back: sustained events/s and the edge's RSS after each round.
//!
//! Run: `cargo bench --profile dev --workspace --bench edge_throughput` (the workspace's
//! one profile; the edge and schemas crates are optimised in it) after `scripts/ensure-tools`,
//! with `EDUBRAIN_BENCH_PYTHON` pointing at a python with confluent-kafka; default
//! `~/.cache/edubrain/tools/bench-venv/bin/python`). `EDUBRAIN_BENCH_EVENTS` sets the count,
//! `EDUBRAIN_BENCH_PACK` the events per MQTT message (both pipelines get the same messages; the
//! bridge, like the edge, produces one Kafka record per line).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, Pacing, ProvinceSpec, broker_users, province, simulate};
use edubrain_brokers::{KillOnDrop, Mosquitto, Storage, Tansu, free_port};
use edubrain_schemas::identity::derived_password;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

mod support;
use support::{drop_session, http_get, metric_sum, spawn_edge, usage};

struct Run {
    secs: f64,
    cpu: f64,
    rss: u64,
}

/// Events per MQTT message: every terminal publishes its whole backlog at once, so it packs
/// `EDUBRAIN_BENCH_PACK` events (default the terminals' default, 64) per message; 1 gives the
/// one-event-per-message load of earlier runs.
fn pack_max_events() -> usize {
    std::env::var("EDUBRAIN_BENCH_PACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| MqttTarget::new("127.0.0.1", 0).pack_max_events)
}

/// Publishes `events` from one connection per terminal, `speed` simulated seconds per wall
/// second (infinite: every terminal's whole backlog at once) from `wall_start` on, until the
/// edge acked every one.
async fn publish_from(events: &[edubrain_schemas::Event], port: u16, speed: f64, wall_start: tokio::time::Instant) {
    let mut target = MqttTarget::new("127.0.0.1", port).with_secret(DEMO_PROVISIONING_SECRET);
    target.pack_max_events = pack_max_events();
    let sim_start = events.iter().map(|e| e.header.event_time).min().expect("events");
    let pacing = Pacing { sim_start, wall_start, speed };
    let summary =
        edubrain_agent::publish_all(&target, events.to_vec(), pacing, Default::default(), CancellationToken::new()).await.expect("publish");
    assert_eq!(summary.acked, summary.created);
}

async fn publish(events: &[edubrain_schemas::Event], port: u16, speed: f64) {
    publish_from(events, port, speed, tokio::time::Instant::now()).await
}

/// Reads `topic` from the beginning and returns how many records it holds once no more come
/// for 3 s (Tansu's watermarks trail by up to a batch per partition, so records are counted).
/// Not timed: it checks what the timed part claimed.
fn count_records(brokers: &str, topic: &str, expected: i64) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", format!("bench-{topic}")).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (mut have, mut last) = (0i64, Instant::now());
    while last.elapsed() < Duration::from_secs(if have >= expected { 3 } else { 30 }) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
            have += 1;
            last = Instant::now();
        }
    }
    have
}

/// Waits until `delivered()` reaches `n`, sampling the peak RSS of `pids` every 100 ms; returns
/// the peak. Reports progress every 10 s.
fn wait_delivered(what: &str, n: u64, pids: &[u32], mut delivered: impl FnMut() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut peak, mut last_report) = (0u64, Instant::now());
    loop {
        let have = delivered();
        peak = peak.max(pids.iter().map(|p| usage(*p).1).sum());
        if have >= n {
            return peak;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  {what}: Kafka confirmed {have} of {n}");
            last_report = Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: Kafka confirmed {have} of {n} within 600 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The edge's `kafka_delivered_total` for the events topic.
fn edge_delivered(http: &str) -> u64 {
    metric_sum(&http_get(http, "/metrics"), "edubrain_edge_kafka_delivered_total{", Some("topic=\"edubrain.events.v1\"")) as u64
}

/// The delivery-latency histogram's cumulative buckets: (upper bound, count).
fn latency_buckets(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with("edubrain_edge_kafka_delivery_latency_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of the observations between two scrapes of the histogram, interpolated
/// linearly within its bucket (as Prometheus's `histogram_quantile` does).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after.iter().map(|(le, c)| (*le, c - before.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1))).collect();
    let total = counts.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, c) in &counts {
        if c >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            return lower.0 + (le - lower.0) * (rank - lower.1) / (c - lower.1).max(f64::MIN_POSITIVE);
        }
        lower = (le, c);
    }
    f64::NAN
}

#[tokio::main]
async fn main() {
    let n_target: usize = std::env::var("EDUBRAIN_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(150_000);
    let python = std::env::var("EDUBRAIN_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/edubrain/tools/bench-venv/bin/python"));
    let dir = tempfile::tempdir().unwrap();
    // A realistic mix: one city's simulated school days, as many as it takes to reach the count.
    let p =
        province::build(&ProvinceSpec { seed: 1, cities: 1, alliances_per_city: 2, schools_per_alliance: 10, classrooms_per_school: 10 });
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let brokers = tansu.bootstrap();
    let edge_password = derived_password(DEMO_PROVISIONING_SECRET.as_bytes(), "edge-c01");
    let mut days = 1;
    let events = loop {
        let sim = edubrain_agent::SimulationSpec {
            first_day: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            school_days: days,
            heartbeat_minutes: 15,
            seed: 1,
        };
        let ev = simulate::simulate(&p, &sim);
        if ev.len() >= n_target || days >= 20 {
            break ev;
        }
        days += 1;
    };
    let n = events.len() as i64;
    let bytes: usize = events.iter().map(|e| e.to_json().len()).sum();
    println!(
        "edge benchmark: {n} events ({:.0} bytes average) from {} terminals, up to {} per MQTT message, Mosquitto + Tansu (memory) on loopback",
        bytes as f64 / n as f64,
        p.classrooms().count(),
        pack_max_events()
    );

    // 1. The edge process.
    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            // The rate limit is a policy, not a capacity: raised so the soak's back-to-back
            // backlogs are never deferred (this publisher has no outbox to resend them from).
            "city = \"c01\"\n[wal]\ndir = {:?}\n[mqtt]\nusername = \"edge-c01\"\npassword = {edge_password:?}\n\
             [rate_limit]\nevents_per_second = 100000.0\nburst = 1000000\n",
            dir.path().join("edge-wal")
        ),
    )
    .unwrap();
    let edge = spawn_edge(&config, mosquitto.port, &brokers, &http, "warn");
    let pid = edge.id();
    let cpu0 = usage(pid).0;
    let start = Instant::now();
    let publisher = tokio::spawn({
        let events = events.clone();
        let port = mosquitto.port;
        async move { publish(&events, port, f64::INFINITY).await }
    });
    let http2 = http.clone();
    let peak = tokio::task::spawn_blocking(move || wait_delivered("edge", n as u64, &[pid], || edge_delivered(&http2))).await.unwrap();
    let edge_run = Run { secs: start.elapsed().as_secs_f64(), cpu: usage(pid).0 - cpu0, rss: peak };
    publisher.await.unwrap();
    let topic = edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
    let in_kafka = count_records(&brokers, topic, n);
    assert_eq!(in_kafka, n, "the edge's events in Kafka, each exactly once");
    let latency = latency_run(&p, days, mosquitto.port, &http, &brokers).await;
    soak(&p, days, n, mosquitto.port, &http, pid).await;
    drop(edge);
    // A killed edge leaves its persistent session subscribed; the broker would keep queueing the
    // bridge phase's events for it. A clean-session connect with its client id removes it.
    drop_session(mosquitto.port, "edge-c01", &edge_password);

    // 2. The bare bridge: mosquitto_sub -q 1 | python confluent-kafka.
    let bridge_topic = "bench.bridge";
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    admin.create_topics(&[NewTopic::new(bridge_topic, 6, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    let mut sub_child = Command::new("mosquitto_sub")
        .args([
            "-q",
            "1",
            "-c",
            // The ACL lets only the city's edge read its events; the bridge stands in for it
            // (the broker uses the username as client id; mosquitto_sub -c still wants one).
            "-i",
            "edge-c01",
            "-u",
            "edge-c01",
            "-P",
            &edge_password,
            "-h",
            "127.0.0.1",
            "-p",
            &mosquitto.port.to_string(),
            "-t",
            "edubrain/v1/c01/+/+/+/events",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    let mut py_child = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/bare_bridge.py"))
        .args([&brokers, bridge_topic])
        .stdin(sub_child.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with confluent-kafka (set EDUBRAIN_BENCH_PYTHON)");
    // The bridge prints its count of Kafka delivery confirmations whenever it changes.
    let bridge_delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::spawn({
        let (stdout, count) = (py_child.stdout.take().unwrap(), bridge_delivered.clone());
        move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = line.trim().parse() {
                    count.store(v, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let py = KillOnDrop(py_child);
    let sub = KillOnDrop(sub_child);
    std::thread::sleep(Duration::from_secs(2));
    let pids = [sub.id(), py.id()];
    let cpu0: f64 = pids.iter().map(|p| usage(*p).0).sum();
    let start = Instant::now();
    let publisher = tokio::spawn({
        let events = events.clone();
        let port = mosquitto.port;
        async move { publish(&events, port, f64::INFINITY).await }
    });
    let peak = tokio::task::spawn_blocking(move || {
        wait_delivered("bare bridge", n as u64, &pids, || bridge_delivered.load(std::sync::atomic::Ordering::Relaxed))
    })
    .await
    .unwrap();
    let bridge_run = Run { secs: start.elapsed().as_secs_f64(), cpu: pids.iter().map(|p| usage(*p).0).sum::<f64>() - cpu0, rss: peak };
    publisher.await.unwrap();
    drop((sub, py));
    let bridge_in_kafka = count_records(&brokers, bridge_topic, n);

    let per_event = |r: &Run| r.cpu / n as f64 * 1e6;
    println!("{:<12} {:>10} {:>14} {:>16} {:>12}", "pipeline", "seconds", "events/s", "cpu µs/event", "peak RSS MB");
    for (name, r) in [("edge", &edge_run), ("bare bridge", &bridge_run)] {
        println!("{name:<12} {:>10.2} {:>14.0} {:>16.1} {:>12.1}", r.secs, n as f64 / r.secs, per_event(r), r.rss as f64 / 1e6);
    }
    println!("records in Kafka afterwards: edge {in_kafka}, bare bridge {bridge_in_kafka} (of {n})");
    println!(
        "edge latency at {:.0} events/s ({} events published evenly, done in {:.1} s): due to received by the edge p50 {:.0} ms, p99 {:.0} ms; \
         received to Kafka ack p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms; publish to Kafka ack p99 at most {:.0} ms (the sum; target <= 100 ms)",
        latency.rate,
        latency.events,
        latency.secs,
        latency.hop_p50_ms,
        latency.hop_p99_ms,
        latency.p50 * 1e3,
        latency.p99 * 1e3,
        latency.p999 * 1e3,
        latency.hop_p99_ms + latency.p99 * 1e3
    );
    println!(
        "ratios edge/bridge: throughput {:.2}x, CPU per event {:.2}x (target <= 1.0x), peak RSS {:.2}x",
        (n as f64 / edge_run.secs) / (n as f64 / bridge_run.secs),
        per_event(&edge_run) / per_event(&bridge_run),
        edge_run.rss as f64 / bridge_run.rss as f64
    );
}

struct Latency {
    events: usize,
    rate: f64,
    secs: f64,
    /// Due to received by the edge (the MQTT hop, with the publisher's own lateness).
    hop_p50_ms: f64,
    hop_p99_ms: f64,
    /// Received by the edge to Kafka's ack, seconds.
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Phase 2: as many fresh events as phase 1 (another simulation seed, so none is a duplicate),
/// in their order, each terminal publishing at its own pace at `EDUBRAIN_BENCH_LATENCY_RATE`
/// events/s in all (default 50,000), evenly: a terminal packs what is due when it gets to
/// publish, as the agent does. Their `event_time`s are moved onto that schedule (into a window
/// of their own, after every simulated day), so each record says when it was due, and its
/// `edubrain.received_ms` header when the edge received it: the MQTT hop. The edge's
/// delivery-latency histogram over exactly this run gives receipt to Kafka ack.
async fn latency_run(p: &edubrain_agent::Province, days: u32, port: u16, http: &str, brokers: &str) -> Latency {
    let rate: f64 = std::env::var("EDUBRAIN_BENCH_LATENCY_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000.0);
    let sim = edubrain_agent::SimulationSpec {
        first_day: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
        school_days: days,
        heartbeat_minutes: 15,
        seed: 1_000,
    };
    let mut events = simulate::simulate(p, &sim);
    events.sort_by_key(|e| e.header.event_time);
    let schedule_start = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
    for (i, e) in events.iter_mut().enumerate() {
        e.header.event_time = schedule_start + chrono::Duration::microseconds((i as f64 / rate * 1e6) as i64);
    }
    let (before, delivered0) = (latency_buckets(&http_get(http, "/metrics")), edge_delivered(http));
    // The schedule starts once every terminal had time to connect (a city's terminals are
    // connected long before a lesson starts; 200 logins at once take the broker most of a second).
    let lead = Duration::from_secs(3);
    let wall_start_ms = chrono::Utc::now().timestamp_millis() + lead.as_millis() as i64;
    let start = tokio::time::Instant::now() + lead;
    let t = start.into_std();
    publish_from(&events, port, 1.0, start).await;
    let http2 = http.to_string();
    let n = events.len() as u64;
    tokio::task::spawn_blocking(move || wait_delivered("latency run", delivered0 + n, &[], || edge_delivered(&http2))).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let after = latency_buckets(&http_get(http, "/metrics"));
    // Due (the schedule, from the wall clock at its start) to received by the edge, in ms.
    let mut hop: Vec<f64> = received_headers(brokers, edubrain_schemas::topics::KAFKA_EVENTS_TOPIC, schedule_start, events.len())
        .into_iter()
        .map(|(event_time, received_ms)| (received_ms - (wall_start_ms + (event_time - schedule_start).num_milliseconds())) as f64)
        .collect();
    hop.sort_by(f64::total_cmp);
    let pick = |q: f64| hop[((hop.len() - 1) as f64 * q).round() as usize];
    Latency {
        events: events.len(),
        rate,
        secs,
        hop_p50_ms: pick(0.5),
        hop_p99_ms: pick(0.99),
        p50: quantile(&before, &after, 0.5),
        p99: quantile(&before, &after, 0.99),
        p999: quantile(&before, &after, 0.999),
    }
}

/// (event_time, `edubrain.received_ms`) of the `expected` records of `topic` whose event time
/// is at or after `since`.
fn received_headers(
    brokers: &str,
    topic: &str,
    since: chrono::DateTime<chrono::Utc>,
    expected: usize,
) -> Vec<(chrono::DateTime<chrono::Utc>, i64)> {
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "bench-latency").create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (mut out, started) = (Vec::with_capacity(expected), Instant::now());
    while out.len() < expected {
        assert!(started.elapsed() < Duration::from_secs(120), "found {} of the latency run's {expected} records", out.len());
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let event = edubrain_schemas::Event::from_json(m.payload().unwrap_or_default()).expect("events in Kafka decode");
        if event.header.event_time < since {
            continue;
        }
        let received = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "edubrain.received_ms"))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok());
        out.push((event.header.event_time, received.expect("every record carries edubrain.received_ms")));
    }
    out
}

/// Phase 3, the long run (`EDUBRAIN_BENCH_SOAK_ROUNDS=R`, default 0): R more backlogs of fresh
/// events (a new simulation seed each, so none is a duplicate) through the same edge, each
/// timed from its first publish to Kafka's last confirmation (simulating the next round is not
/// timed), with the edge's resident memory after each, to show it stays flat.
async fn soak(p: &edubrain_agent::Province, days: u32, n: i64, port: u16, http: &str, pid: u32) {
    let rounds: u64 = std::env::var("EDUBRAIN_BENCH_SOAK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if rounds == 0 {
        return;
    }
    let rss_mb = |pid: u32| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb: f64 =
            status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
        kb / 1024.0
    };
    println!("soak: {rounds} more rounds of about {n} fresh events through the same edge, back to back");
    let (mut events_total, mut busy) = (0usize, 0.0);
    let mut samples = Vec::new();
    for round in 1..=rounds {
        let sim = edubrain_agent::SimulationSpec {
            first_day: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            school_days: days,
            heartbeat_minutes: 15,
            seed: 1 + round,
        };
        let events = simulate::simulate(p, &sim);
        let target = edge_delivered(http) + events.len() as u64;
        let t = Instant::now();
        publish(&events, port, f64::INFINITY).await;
        while edge_delivered(http) < target {
            assert!(t.elapsed() < Duration::from_secs(600), "soak round {round} not delivered within 600 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        (events_total, busy) = (events_total + events.len(), busy + secs);
        let rss = rss_mb(pid);
        samples.push(rss);
        println!(
            "  round {round}: {} events in {secs:.2} s ({:.0} events/s), edge RSS {rss:.1} MB",
            events.len(),
            events.len() as f64 / secs
        );
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let max = samples.iter().cloned().fold(0.0, f64::max);
    println!(
        "soak: {events_total} events in {busy:.1} s of publishing ({:.0} events/s sustained, target >= 50,000), edge RSS after round 1 {first:.1} MB, after the last {last:.1} MB, max {max:.1} MB",
        events_total as f64 / busy
    );
}

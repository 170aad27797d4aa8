//! Edge benchmark: the same events, through the same real brokers, in the same invocation,
//! via (1) the edge process and (2) the bare bridge users write by hand
//! (`mosquitto_sub -q 1 | python confluent-kafka producer`, `benches/bare_bridge.py`).
//! Prints events/s, the edge's receipt-to-Kafka-ack latency percentiles (histogram buckets),
//! CPU seconds per event of each pipeline's processes, and their peak RSS, with ratios.
//!
//! Run: `cargo bench --profile dev -p edubrain-edge --bench edge_throughput` (the workspace's
//! one profile; the edge and schemas crates are optimised in it) after `scripts/ensure-tools`,
//! with `EDUBRAIN_BENCH_PYTHON` pointing at a python with confluent-kafka; default
//! `~/.cache/edubrain/tools/bench-venv/bin/python`). `EDUBRAIN_BENCH_EVENTS` sets the count.

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

/// CPU seconds (user + system) and peak RSS (bytes) of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15 (1-based) → indices 11, 12.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm_kb * 1024)
}

struct Run {
    secs: f64,
    cpu: f64,
    rss: u64,
}

async fn publish(events: &[edubrain_schemas::Event], port: u16) {
    let target = MqttTarget::new("127.0.0.1", port).with_secret(DEMO_PROVISIONING_SECRET);
    let pacing = Pacing { sim_start: events[0].header.event_time, wall_start: tokio::time::Instant::now(), speed: f64::INFINITY };
    let summary =
        edubrain_agent::publish_all(&target, events.to_vec(), pacing, Default::default(), CancellationToken::new()).await.expect("publish");
    assert_eq!(summary.acked, summary.created);
}

/// Consumes `topic` from the beginning until `n` records have arrived (Tansu's watermarks
/// trail by up to a batch per partition, so records are counted, not watermarks), sampling the
/// processes' peak RSS; reports progress, with the edge's counters when `edge_http` is given.
fn wait_for(brokers: &str, topic: &str, n: i64, pids: &[u32], peak: &mut u64, edge_http: Option<&str>) {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", format!("bench-{topic}")).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut have, mut last_sample, mut last_report) = (0i64, Instant::now(), Instant::now());
    while have < n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
            have += 1;
        }
        if last_sample.elapsed() > Duration::from_millis(250) {
            *peak = (*peak).max(pids.iter().map(|p| usage(*p).1).sum());
            last_sample = Instant::now();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  {topic}: {have} of {n} records");
            if let Some(addr) = edge_http {
                for l in http_get(addr, "/metrics")
                    .lines()
                    .filter(|l| l.starts_with("edubrain_edge_kafka_delivered") || l.starts_with("edubrain_edge_inflight"))
                {
                    eprintln!("    {l}");
                }
            }
            last_report = Instant::now();
        }
        assert!(Instant::now() < deadline, "{topic} did not reach {n} records ({have})");
    }
}

fn percentile_from_metrics(metrics: &str, q: f64) -> String {
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("edubrain_edge_kafka_delivery_latency_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets.iter().find(|(_, c)| *c >= q * total).map_or("?".into(), |(le, _)| format!("<= {le} s"))
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
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
        "edge benchmark: {n} events ({:.0} bytes average) from {} terminals, Mosquitto + Tansu (memory) on loopback",
        bytes as f64 / n as f64,
        p.classrooms().count()
    );

    // 1. The edge process.
    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "city = \"c01\"\n[wal]\ndir = {:?}\n[mqtt]\nusername = \"edge-c01\"\npassword = {edge_password:?}\n",
            dir.path().join("edge-wal")
        ),
    )
    .unwrap();
    let edge = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_edubrain-edge"))
            .arg("--config")
            .arg(&config)
            .env("EDUBRAIN_EDGE_MQTT_PORT", mosquitto.port.to_string())
            .env("EDUBRAIN_EDGE_KAFKA_BROKERS", &brokers)
            .env("EDUBRAIN_EDGE_HTTP_LISTEN", &http)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // /healthz answers 200 once the edge is connected and subscribed.
    while !(http_get_ok(&http) && http_get(&http, "/healthz").starts_with("HTTP/1.1 200")) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu0 = usage(edge.id()).0;
    let start = Instant::now();
    let mut peak: u64 = 0;
    let publisher = tokio::spawn({
        let events = events.clone();
        let port = mosquitto.port;
        async move { publish(&events, port).await }
    });
    let topic = edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
    let pid = edge.id();
    let brokers2 = brokers.clone();
    let http2 = http.clone();
    peak = tokio::task::spawn_blocking(move || {
        wait_for(&brokers2, topic, n, &[pid], &mut peak, Some(&http2));
        peak
    })
    .await
    .unwrap();
    let edge_run = Run { secs: start.elapsed().as_secs_f64(), cpu: usage(edge.id()).0 - cpu0, rss: peak };
    publisher.await.unwrap();
    let metrics = http_get(&http, "/metrics");
    let (p50, p99) = (percentile_from_metrics(&metrics, 0.5), percentile_from_metrics(&metrics, 0.99));
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
    let py = KillOnDrop(
        Command::new(&python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/bare_bridge.py"))
            .args([&brokers, bridge_topic])
            .stdin(sub_child.stdout.take().unwrap())
            .spawn()
            .expect("python with confluent-kafka (set EDUBRAIN_BENCH_PYTHON)"),
    );
    let sub = KillOnDrop(sub_child);
    std::thread::sleep(Duration::from_secs(2));
    let pids = [sub.id(), py.id()];
    let cpu0: f64 = pids.iter().map(|p| usage(*p).0).sum();
    let start = Instant::now();
    let publisher = tokio::spawn({
        let events = events.clone();
        let port = mosquitto.port;
        async move { publish(&events, port).await }
    });
    let brokers2 = brokers.clone();
    let mut peak = 0;
    peak = tokio::task::spawn_blocking(move || {
        wait_for(&brokers2, bridge_topic, n, &pids, &mut peak, None);
        peak
    })
    .await
    .unwrap();
    let bridge_run = Run { secs: start.elapsed().as_secs_f64(), cpu: pids.iter().map(|p| usage(*p).0).sum::<f64>() - cpu0, rss: peak };
    publisher.await.unwrap();
    drop((sub, py));

    let per_event = |r: &Run| r.cpu / n as f64 * 1e6;
    println!("{:<12} {:>10} {:>14} {:>16} {:>12}", "pipeline", "seconds", "events/s", "cpu µs/event", "peak RSS MB");
    for (name, r) in [("edge", &edge_run), ("bare bridge", &bridge_run)] {
        println!("{name:<12} {:>10.2} {:>14.0} {:>16.1} {:>12.1}", r.secs, n as f64 / r.secs, per_event(r), r.rss as f64 / 1e6);
    }
    println!("edge receipt-to-Kafka-ack latency: p50 {p50}, p99 {p99} (edge histogram buckets)");
    println!(
        "ratios edge/bridge: throughput {:.2}x, CPU per event {:.2}x (target <= 1.0x), peak RSS {:.2}x",
        (n as f64 / edge_run.secs) / (n as f64 / bridge_run.secs),
        per_event(&edge_run) / per_event(&bridge_run),
        edge_run.rss as f64 / bridge_run.rss as f64
    );
}

/// Connects as `user` (its client id, under `use_username_as_clientid`) with a clean session
/// and leaves: the broker discards the session.
fn drop_session(port: u16, user: &str, password: &str) {
    let status = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", user, "-P", password, "-t", "bench/none", "-E"])
        .status()
        .expect("mosquitto_sub");
    assert!(status.success(), "could not clear the session of {user}");
}

fn http_get_ok(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

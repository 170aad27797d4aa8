//! Edge benchmark: the same events, through the same real brokers, in the same invocation,
//! via (1) the edge process and (2) the bare bridge users write by hand
//! (`mosquitto_sub -q 1 | python confluent-kafka producer`, `benches/bare_bridge.py`).
//! Prints events/s, the edge's receipt-to-Kafka-ack latency percentiles (histogram buckets),
//! CPU seconds per event of each pipeline's processes, and their peak RSS, with ratios.
//!
//! Run: `cargo bench --profile dev --workspace --bench edge_throughput` (the workspace's
//! one profile; the edge and schemas crates are optimised in it) after `scripts/ensure-tools`,
//! with `EDUBRAIN_BENCH_PYTHON` pointing at a python with confluent-kafka; default
//! `~/.cache/edubrain/tools/bench-venv/bin/python`). `EDUBRAIN_BENCH_EVENTS` sets the count,
//! `EDUBRAIN_BENCH_PACK` the events per MQTT message (both pipelines get the same messages; the
//! bridge, like the edge, produces one Kafka record per line), `EDUBRAIN_BENCH_SOAK_ROUNDS` the
//! rounds of the long run after the measured one (edge RSS after each).

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

/// Events per MQTT message: every terminal publishes its whole backlog at once, so it packs
/// `EDUBRAIN_BENCH_PACK` events (default the terminals' default, 64) per message; 1 gives the
/// one-event-per-message load of earlier runs.
fn pack_max_events() -> usize {
    std::env::var("EDUBRAIN_BENCH_PACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| MqttTarget::new("127.0.0.1", 0).pack_max_events)
}

async fn publish(events: &[edubrain_schemas::Event], port: u16) {
    let mut target = MqttTarget::new("127.0.0.1", port).with_secret(DEMO_PROVISIONING_SECRET);
    target.pack_max_events = pack_max_events();
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
    soak(&p, days, n, mosquitto.port, &http, edge.id()).await;
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

/// The long run (`EDUBRAIN_BENCH_SOAK_ROUNDS=R`, default 0): R more rounds of fresh events
/// (a new simulation seed each, so none is a duplicate) through the same edge, printing its
/// resident memory after each, to show it stays flat. Rounds are counted by the edge's own
/// Kafka delivery confirmations.
async fn soak(p: &edubrain_agent::Province, days: u32, n: i64, port: u16, http: &str, pid: u32) {
    let rounds: u64 = std::env::var("EDUBRAIN_BENCH_SOAK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if rounds == 0 {
        return;
    }
    let delivered = |http: &str| -> f64 {
        http_get(http, "/metrics")
            .lines()
            .filter(|l| l.starts_with("edubrain_edge_kafka_delivered_total{") && l.contains("topic=\"edubrain.events.v1\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let rss_mb = |pid: u32| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb: f64 =
            status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
        kb / 1024.0
    };
    println!("soak: {rounds} more rounds of about {n} fresh events through the same edge");
    let started = Instant::now();
    let mut total = n as f64;
    let mut samples = Vec::new();
    let mut last_round = Instant::now();
    for round in 1..=rounds {
        let sim = edubrain_agent::SimulationSpec {
            first_day: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            school_days: days,
            heartbeat_minutes: 15,
            seed: 1 + round,
        };
        let events = simulate::simulate(p, &sim);
        total += events.len() as f64;
        // A terminal sustains its rate limit, not more: over it, the edge defers events, which
        // only a terminal with an outbox resends (this publisher has none). So a round starts
        // no sooner than the busiest terminal's bucket has refilled from the last one.
        let mut per_terminal = std::collections::HashMap::<&str, f64>::new();
        for e in &events {
            *per_terminal.entry(e.header.terminal.as_str()).or_default() += 1.0;
        }
        let per_terminal = per_terminal.into_values().fold(0.0, f64::max);
        let refill = Duration::from_secs_f64(per_terminal / edubrain_edge::config::RateLimitConfig::default().events_per_second);
        if let Some(wait) = refill.checked_sub(last_round.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        last_round = Instant::now();
        let t = Instant::now();
        publish(&events, port).await;
        while delivered(http) < total {
            assert!(t.elapsed() < Duration::from_secs(600), "soak round {round} not delivered within 600 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rss = rss_mb(pid);
        samples.push(rss);
        println!(
            "  round {round}: {} events in {:.1} s ({:.0} events/s), edge RSS {rss:.1} MB, {:.0} s elapsed",
            events.len(),
            t.elapsed().as_secs_f64(),
            events.len() as f64 / t.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let max = samples.iter().cloned().fold(0.0, f64::max);
    println!("soak: {total:.0} events, edge RSS after round 1 {first:.1} MB, after the last {last:.1} MB, max {max:.1} MB");
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

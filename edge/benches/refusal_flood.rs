//! What a terminal flooding another classroom's topic costs the edge, with the refusal audit's
//! per-client limit (`[refusal_audit]`, default 10 records per client a minute) and without it
//! (one audit record per refusal, the edge before the limit), in the same invocation on the
//! same brokers.
//!
//! One terminal login publishes `EDUBRAIN_BENCH_REFUSALS` (default 20,000) QoS 1 messages on
//! another classroom's events topic. The hub's ACL plugin refuses and logs each; the edge
//! reads the log lines (`$SYS/broker/log/+`), counts each refusal and audits it. Each variant
//! runs `EDUBRAIN_BENCH_ROUNDS` times (default 2), alternating, each with a fresh edge process,
//! timed from the first publish until the edge has counted every refusal. Prints per variant:
//! refusals/s, the edge's and the broker's CPU µs per refusal, the audit records Kafka
//! confirmed, and the edge's CPU ratio.
//!
//! Run: `scripts/bench refusals` (or `cargo bench --profile dev --workspace --bench
//! refusal_flood` after `scripts/ensure-tools`).

use std::time::{Duration, Instant};

use edubrain_agent::MqttTarget;
use edubrain_brokers::{Mosquitto, Storage, Tansu, free_port};
use edubrain_schemas::identity::{derived_password, terminal_username};
use edubrain_schemas::topics::TerminalTopic;

mod support;
use support::{drop_session, http_get, metric_sum, spawn_edge, usage};

const SECRET: &str = "refusal-flood-secret";

struct Round {
    secs: f64,
    edge_cpu: f64,
    broker_cpu: f64,
    audit_records: u64,
}

fn counted(http: &str) -> u64 {
    metric_sum(&http_get(http, "/metrics"), "edubrain_edge_mqtt_broker_acl_denials_total{", Some("action=\"publish\"")) as u64
}

fn audit_delivered(http: &str) -> u64 {
    metric_sum(&http_get(http, "/metrics"), "edubrain_edge_kafka_delivered_total{", Some("topic=\"edubrain.audit.v1\"")) as u64
}

async fn round(
    per_client: Option<u32>,
    n: u64,
    dir: &std::path::Path,
    mosquitto: &Mosquitto,
    brokers: &str,
    flooder: &TerminalTopic,
    victim: &TerminalTopic,
) -> Round {
    let edge_password = derived_password(SECRET.as_bytes(), "edge-c01");
    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.join("edge.toml");
    let limit = per_client.map_or(format!("per_client = {}", u32::MAX), |p| format!("per_client = {p}"));
    std::fs::write(
        &config,
        format!(
            "city = \"c01\"\n[wal]\ndir = {:?}\n[mqtt]\nusername = \"edge-c01\"\npassword = {edge_password:?}\n[refusal_audit]\n{limit}\n",
            dir.join("edge-wal")
        ),
    )
    .unwrap();
    let edge = spawn_edge(&config, mosquitto.port, brokers, &http, "error");
    let (pid, broker) = (edge.id(), mosquitto.pid());
    let (edge0, broker0, audit0) = (usage(pid).0, usage(broker).0, audit_delivered(&http));
    let start = Instant::now();
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(SECRET);
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("{{\"spoof\":{i}}}").into_bytes()).collect();
    let publisher = tokio::spawn({
        let (user, topic) = (terminal_username(flooder), victim.events_topic());
        async move { edubrain_agent::publisher::publish_raw(&target, &user, &topic, payloads).await }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    while counted(&http) < n {
        assert!(Instant::now() < deadline, "the edge counted {} of {n} refusals within 300 s", counted(&http));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    // Everything the edge wrote for them is confirmed by Kafka before its CPU is read.
    let mut audit = audit_delivered(&http) - audit0;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = audit_delivered(&http) - audit0;
        if now != audit {
            (audit, last) = (now, Instant::now());
        }
    }
    let r = Round { secs, edge_cpu: usage(pid).0 - edge0, broker_cpu: usage(broker).0 - broker0, audit_records: audit };
    publisher.await.unwrap().expect("the flood was published (the broker PUBACKs refused publishes under MQTT 3.1.1)");
    drop(edge);
    drop_session(mosquitto.port, "edge-c01", &edge_password);
    r
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("EDUBRAIN_BENCH_REFUSALS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rounds: usize = std::env::var("EDUBRAIN_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let room = |r: &str| TerminalTopic { city: "c01".into(), school: "c01-s1".into(), classroom: r.into(), terminal: format!("{r}-t") };
    let (flooder, victim) = (room("c01-s1-r1"), room("c01-s1-r2"));
    let users: Vec<(String, String)> = [terminal_username(&flooder), terminal_username(&victim), "edge-c01".into()]
        .into_iter()
        .map(|u| {
            let p = derived_password(SECRET.as_bytes(), &u);
            (u, p)
        })
        .collect();
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    println!(
        "refusal flood: one terminal publishes {n} QoS 1 messages on another classroom's topic, {rounds} rounds per variant, \
         Mosquitto (ACL plugin) + Tansu (memory) on loopback"
    );
    let variants = [("one audit record per refusal", None), ("[refusal_audit] defaults (10 a client a minute)", Some(10))];
    let mut results: Vec<Vec<Round>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, per_client)) in variants.iter().enumerate() {
            results[i].push(round(*per_client, n, dir.path(), &mosquitto, &tansu.bootstrap(), &flooder, &victim).await);
        }
    }
    println!("| variant | refusals/s | edge CPU µs/refusal | broker CPU µs/refusal | audit records confirmed by Kafka |");
    println!("|---|---|---|---|---|");
    let mut edge_us = Vec::new();
    for ((name, _), rs) in variants.iter().zip(&results) {
        let us = |cpu: f64| cpu / n as f64 * 1e6;
        let list = |f: &dyn Fn(&Round) -> String| rs.iter().map(f).collect::<Vec<_>>().join(" / ");
        println!(
            "| {name} | {} | {} | {} | {} |",
            list(&|r| format!("{:.0}", n as f64 / r.secs)),
            list(&|r| format!("{:.1}", us(r.edge_cpu))),
            list(&|r| format!("{:.1}", us(r.broker_cpu))),
            list(&|r| r.audit_records.to_string()),
        );
        edge_us.push(rs.iter().map(|r| us(r.edge_cpu)).sum::<f64>() / rs.len() as f64);
    }
    println!(
        "edge CPU per refusal, limited / one record each: {:.2}x (means of {rounds} rounds; the limited edge's summary record \
         is written when its 60 s window ends, after the run)",
        edge_us[1] / edge_us[0]
    );
}

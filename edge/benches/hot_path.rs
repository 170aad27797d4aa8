//! Per-event cost of each pure stage of the edge's hot path, in-process, on a simulated city's
//! week (about 79k events): decode, fingerprint, classify (decode + topic + identity + validate +
//! dedup), rollup, rate limit. Where the edge's CPU goes besides MQTT, the WAL and Kafka, which
//! `edge_throughput` measures end to end. `cargo bench --profile dev --workspace --bench hot_path`.
//! The rollup figure overstates the edge's: here no window closes, so its state only grows.
use std::time::Instant;

use chrono::Utc;
use edubrain_edge::classify::{Outcome, classify};
use edubrain_edge::rollup::{RollupConfig, Rollups};
use edubrain_edge::throttle::{RateLimit, TerminalRateLimiter};
use edubrain_schemas::dedup::{DedupWindow, fingerprint};
use edubrain_schemas::topics::TerminalTopic;
use edubrain_schemas::{Event, ValidationPolicy};

fn main() {
    let spec =
        edubrain_agent::ProvinceSpec { seed: 1, cities: 1, alliances_per_city: 2, schools_per_alliance: 10, classrooms_per_school: 10 };
    let p = edubrain_agent::province::build(&spec);
    let sim = edubrain_agent::SimulationSpec {
        first_day: chrono::NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(),
        school_days: 5,
        heartbeat_minutes: 15,
        seed: 1,
    };
    let events = edubrain_agent::simulate::simulate(&p, &sim);
    let msgs: Vec<(String, Vec<u8>)> = events.iter().map(|e| (TerminalTopic::from_header(&e.header).events_topic(), e.to_json())).collect();
    let n = msgs.len() as f64;
    let now = Utc::now();
    let policy = ValidationPolicy::default();
    let t = Instant::now();
    for (_, b) in &msgs {
        std::hint::black_box(Event::from_json(b).unwrap());
    }
    println!("decode      {:>8.0} ns/event ({} events)", t.elapsed().as_nanos() as f64 / n, msgs.len());
    let t = Instant::now();
    for (_, b) in &msgs {
        std::hint::black_box(fingerprint(b));
    }
    println!("fingerprint {:>8.0} ns/event", t.elapsed().as_nanos() as f64 / n);
    let mut d = DedupWindow::new(1_000_000);
    let t = Instant::now();
    let mut accepted = Vec::new();
    for (topic, b) in &msgs {
        if let Outcome::Accept { event, .. } = classify("c01", topic, b, now, &policy, &mut d) {
            accepted.push(event)
        }
    }
    println!("classify    {:>8.0} ns/event", t.elapsed().as_nanos() as f64 / n);
    let mut r = Rollups::new(
        RollupConfig { window: chrono::Duration::minutes(5), allowed_lateness: chrono::Duration::minutes(10) },
        now - chrono::Duration::days(30),
    );
    let t = Instant::now();
    for e in &accepted {
        std::hint::black_box(r.observe(e));
    }
    println!("rollup      {:>8.0} ns/event", t.elapsed().as_nanos() as f64 / n);
    let mut l = TerminalRateLimiter::new(RateLimit { per_second: 200.0, burst: 2000.0 });
    let t = Instant::now();
    let i0 = Instant::now();
    for (topic, _) in &msgs {
        std::hint::black_box(l.admit(topic, i0));
    }
    println!("throttle    {:>8.0} ns/event", t.elapsed().as_nanos() as f64 / n);
}

//! What Tansu's missing header index costs a consumer: a topic of `EDUBRAIN_BENCH_TANSU_RECORDS`
//! (default 10,000) 400-byte records with two headers each, as edubrain's records carry, read
//! from the beginning on Tansu's sqlite engine as Tansu ships it (the index dropped) and with
//! the index `edubrain_brokers::Tansu` adds. The two alternate, `EDUBRAIN_BENCH_ROUNDS`
//! (default 2) times each, in one invocation on fresh brokers; a read not finished within
//! `EDUBRAIN_BENCH_TANSU_DEADLINE_SECS` (default 120) is reported with what had arrived.

use std::time::{Duration, Instant};

use edubrain_brokers::{Storage, Tansu};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "backlog";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Read {
    produce_s: f64,
    records: u64,
    read_s: f64,
}

async fn run(indexed: bool, n: u64, deadline: Duration) -> Read {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Sqlite).unwrap();
    if !indexed {
        tansu.sqlite("DROP INDEX edubrain_header_record").unwrap();
    }
    edubrain_e2e::create_topic(&tansu.bootstrap(), TOPIC).await;
    let started = Instant::now();
    edubrain_e2e::produce_with_headers(&tansu.bootstrap(), TOPIC, n, |_| vec![b'x'; 400]).await;
    let produce_s = started.elapsed().as_secs_f64();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(TOPIC, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    let until = tokio::time::Instant::now() + deadline;
    let mut records = 0;
    while records < n {
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(_)) => records += 1,
            Ok(Err(e)) => panic!("reading {TOPIC}: {e}"),
            Err(_) => break,
        }
    }
    Read { produce_s, records, read_s: started.elapsed().as_secs_f64() }
}

fn main() {
    let n = env_num("EDUBRAIN_BENCH_TANSU_RECORDS", 10_000);
    let rounds = env_num("EDUBRAIN_BENCH_ROUNDS", 2);
    let deadline = Duration::from_secs(env_num("EDUBRAIN_BENCH_TANSU_DEADLINE_SECS", 120));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("==> Tansu sqlite: {n} records with 2 headers each, read from the beginning; {rounds} rounds");
    let mut rates = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for indexed in [false, true] {
            let r = rt.block_on(run(indexed, n, deadline));
            let name = if indexed { "with the header index" } else { "as Tansu ships it" };
            let rate = r.records as f64 / r.read_s;
            let finished = if r.records == n { String::new() } else { format!("   NOT finished within {deadline:?}") };
            println!(
                "  round {round}, {name:22} produced in {:6.1} s; read {:>7} records in {:6.1} s = {rate:>8.0} records/s{finished}",
                r.produce_s, r.records, r.read_s
            );
            rates[usize::from(indexed)].push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (without, with) = (mean(&rates[0]), mean(&rates[1]));
    if without > 0.0 {
        println!(
            "Read rate with the index over without it: {:.1}x ({with:.0} / {without:.0} records/s, means of {rounds})",
            with / without
        );
    } else {
        println!("Read rate with the index: {with:.0} records/s; without it no record arrived within {deadline:?}");
    }
}

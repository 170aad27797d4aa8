//! Everything killed and restarted in random order, while classroom software keeps handing
//! events to its terminal agents. Every component is a real process, killed with SIGKILL:
//! Mosquitto, Tansu (durable sqlite engine), the edge, the cloud and two terminal agents
//! (`edubrain-agent serve`). Three rounds: a random uptime, then every component killed in a
//! random order (random gaps), a random while with everything down, then all started again in
//! another random order, so each layer comes back before and after the ones it depends on.
//! `EDUBRAIN_FAULT_SEED` replays a run; the seed is printed.
//!
//! The classroom software retries a batch, with the same event ids, until its agent answers
//! 202 (the events are then durable in the agent's outbox). At the end every accepted event is
//! in the warehouse exactly once: a batch whose 202 was lost to a kill is sent twice, and the
//! repeat is dropped by `event_id`.
//!
//! It was opt-in until 2026-12-07: in about one run in six (seed 11492670734922709477
//! reproduces it) the cloud stopped receiving after the last restart, and a restarted cloud
//! did too, every request to Tansu waiting behind a fetch it never answered. The cause was
//! Tansu's sqlite engine looking up each fetched record's headers in an unindexed table (see
//! `edubrain_brokers::Tansu`): a cloud catching up on a backlog made each fetch take longer
//! than librdkafka's request timeout, and the retries queued behind it. With the index that
//! seed passes, in about 35 s. Tansu's log is `tansu/tansu.log` under the test's directory;
//! `EDUBRAIN_TANSU_LOG=debug` makes it talk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edubrain_brokers::{KillOnDrop, Mosquitto, Storage, Tansu, free_port};
use edubrain_cloud::Warehouse;
use edubrain_e2e::workspace_binary;
use edubrain_schemas::School;
use edubrain_schemas::identity::{derived_password, edge_username, terminal_username};
use edubrain_schemas::topics::TerminalTopic;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "restart-everything-secret";
const ROUNDS: usize = 3;
const BATCH: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Mosquitto,
    Kafka,
    Edge,
    Cloud,
    Agent(usize),
}

fn terminals() -> Vec<TerminalTopic> {
    (1..=2)
        .map(|s| TerminalTopic {
            city: "c01".into(),
            school: format!("c01-s{s}"),
            classroom: format!("c01-s{s}-r1"),
            terminal: format!("c01-s{s}-r1-t"),
        })
        .collect()
}

fn spawn(binary: &str, args: &[&str], config: &Path, env: &[(&str, String)], log: &Path) -> KillOnDrop {
    let mut cmd = Command::new(workspace_binary(binary));
    cmd.args(args).arg("--config").arg(config).env("RUST_LOG", "info").stdout(Stdio::null());
    cmd.stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    KillOnDrop(cmd.spawn().unwrap())
}

/// The processes, each startable and killable.
struct Stack {
    dir: PathBuf,
    mosquitto: Mosquitto,
    tansu: Tansu,
    edge: Option<KillOnDrop>,
    cloud: Option<KillOnDrop>,
    agents: Vec<Option<KillOnDrop>>,
    agent_ports: Vec<u16>,
}

impl Stack {
    fn start(&mut self, part: Part) {
        match part {
            // `restart` starts the broker again on its port and data, and waits until it listens.
            Part::Mosquitto => tokio::task::block_in_place(|| self.mosquitto.restart().unwrap()),
            Part::Kafka => tokio::task::block_in_place(|| self.tansu.restart().unwrap()),
            Part::Edge => {
                let env = [
                    ("EDUBRAIN_EDGE_MQTT_PORT", self.mosquitto.port.to_string()),
                    ("EDUBRAIN_EDGE_KAFKA_BROKERS", self.tansu.bootstrap()),
                    ("EDUBRAIN_EDGE_HTTP_LISTEN", "127.0.0.1:0".to_string()),
                ];
                self.edge = Some(spawn("edubrain-edge", &[], &self.dir.join("edge.toml"), &env, &self.dir.join("edge.log")));
            }
            Part::Cloud => {
                self.cloud = Some(spawn("edubrain-cloud", &["serve"], &self.dir.join("cloud.toml"), &[], &self.dir.join("cloud.log")));
            }
            Part::Agent(i) => {
                let config = self.dir.join(format!("agent{i}.toml"));
                self.agents[i] = Some(spawn("edubrain-agent", &["serve"], &config, &[], &self.dir.join(format!("agent{i}.log"))));
            }
        }
    }

    fn kill(&mut self, part: Part) {
        match part {
            Part::Mosquitto => self.mosquitto.kill9(),
            Part::Kafka => self.tansu.kill9(),
            // KillOnDrop sends SIGKILL and reaps the process.
            Part::Edge => drop(self.edge.take()),
            Part::Cloud => drop(self.cloud.take()),
            Part::Agent(i) => drop(self.agents[i].take()),
        }
    }

    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::Mosquitto, Part::Kafka, Part::Edge, Part::Cloud];
        parts.extend((0..self.agents.len()).map(Part::Agent));
        parts
    }
}

/// Classroom software in front of agent `port`: batches of fresh events, each batch retried
/// with the same ids until the agent answers 202. Returns every id it had accepted.
async fn classroom(port: u16, stop: CancellationToken) -> (BTreeSet<uuid::Uuid>, u64) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (mut accepted, mut retries) = (BTreeSet::new(), 0u64);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let batch: Vec<(uuid::Uuid, serde_json::Value)> = (0..BATCH)
            .map(|_| {
                n += 1;
                let id = uuid::Uuid::new_v4();
                let event = json!({
                    "event_id": id,
                    "type": "bandwidth_sampled",
                    "event_time": chrono::Utc::now(),
                    "payload": {"down_kbps": n as f64, "up_kbps": 1.0}
                });
                (id, event)
            })
            .collect();
        let body: Vec<&serde_json::Value> = batch.iter().map(|(_, e)| e).collect();
        loop {
            match http.post(format!("http://127.0.0.1:{port}/v1/events")).json(&body).send().await {
                Ok(r) if r.status().as_u16() == 202 => break,
                Ok(r) => panic!("agent on {port} answered {}: {}", r.status(), r.text().await.unwrap_or_default()),
                // The agent is down (or was killed mid-request): the same batch again.
                Err(_) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        accepted.extend(batch.iter().map(|(id, _)| *id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (accepted, retries)
}

/// (rows, distinct ids, the ids) as a fresh reader of the warehouse's files sees them.
async fn read_back(root: &Path) -> (u64, u64, BTreeSet<uuid::Uuid>) {
    let w = Warehouse::open(root, Vec::<School>::new(), 1 << 30).await.unwrap();
    let Ok(ids) = w.query_json("SELECT event_id FROM events").await else { return (0, 0, BTreeSet::new()) };
    let set: BTreeSet<uuid::Uuid> = ids.iter().map(|r| r["event_id"].as_str().unwrap().parse().unwrap()).collect();
    (ids.len() as u64, set.len() as u64, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_killed_and_restarted_in_random_order_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("EDUBRAIN_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("EDUBRAIN_FAULT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();

    let terminals = terminals();
    let edge_user = edge_username("c01");
    let users = edubrain_e2e::hub_logins(SECRET, terminals.iter().map(terminal_username).chain([edge_user.clone()]));
    let mosquitto = Mosquitto::start(&root.join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&root.join("tansu"), Storage::Sqlite).unwrap();

    std::fs::write(
        root.join("edge.toml"),
        format!(
            "city = \"c01\"\n[wal]\ndir = {:?}\n[mqtt]\nusername = {edge_user:?}\npassword = {:?}\n",
            root.join("edge-wal"),
            derived_password(SECRET.as_bytes(), &edge_user)
        ),
    )
    .unwrap();
    let warehouse = root.join("warehouse");
    std::fs::write(
        root.join("cloud.toml"),
        format!(
            "warehouse_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n[kafka]\nbrokers = {:?}\n[ingest]\nflush_interval_ms = 200\n\
             [maintenance]\ncompact_min_files = 3\ninterval_secs = 1\n",
            warehouse.display().to_string(),
            tansu.bootstrap()
        ),
    )
    .unwrap();
    std::fs::write(root.join("alliance.key"), "a1-key").unwrap();
    let mut agent_ports = Vec::new();
    for (i, t) in terminals.iter().enumerate() {
        let port = free_port();
        let password = root.join(format!("agent{i}.password"));
        std::fs::write(&password, derived_password(SECRET.as_bytes(), &terminal_username(t))).unwrap();
        std::fs::write(
            root.join(format!("agent{i}.toml")),
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\nalliance_key_file = {:?}\nmqtt_password_file = {:?}\n\
                 [identity]\ncity = {:?}\nschool = {:?}\nclassroom = {:?}\nterminal = {:?}\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[outbox]\nresend_after_ms = 3000\n",
                root.join(format!("agent{i}-state")),
                root.join("alliance.key"),
                password,
                t.city,
                t.school,
                t.classroom,
                t.terminal,
                mosquitto.port
            ),
        )
        .unwrap();
        agent_ports.push(port);
    }
    let mut stack = Stack { dir: root.clone(), mosquitto, tansu, edge: None, cloud: None, agents: vec![None, None], agent_ports };
    for part in [Part::Edge, Part::Cloud, Part::Agent(0), Part::Agent(1)] {
        stack.start(part);
    }

    let stop = CancellationToken::new();
    let feeders: Vec<_> = stack.agent_ports.iter().map(|port| tokio::spawn(classroom(*port, stop.clone()))).collect();

    for round in 1..=ROUNDS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        let mut kill_order = stack.parts();
        kill_order.shuffle(&mut rng);
        for part in &kill_order {
            stack.kill(*part);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        }
        let down = Duration::from_millis(rng.random_range(500..2500));
        tokio::time::sleep(down).await;
        let mut start_order = stack.parts();
        start_order.shuffle(&mut rng);
        for part in &start_order {
            stack.start(*part);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        }
        eprintln!("round {round}: killed {kill_order:?}, all down {down:?}, started {start_order:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let (mut accepted, mut retries) = (BTreeSet::new(), 0);
    for f in feeders {
        let (ids, r) = f.await.unwrap();
        accepted.extend(ids);
        retries += r;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (rows, distinct, stored) = loop {
        let (rows, distinct, stored) = read_back(&warehouse).await;
        assert_eq!(rows, distinct, "an event is in the warehouse twice (seed {seed})");
        if stored.len() >= accepted.len() && accepted.is_subset(&stored) {
            break (rows, distinct, stored);
        }
        if tokio::time::Instant::now() > deadline {
            let tail = |name: &str| {
                let log = std::fs::read_to_string(root.join(name)).unwrap_or_default();
                log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            panic!(
                "after 120 s the warehouse holds {} of {} accepted events (seed {seed}); missing e.g. {:?}\nedge:\n{}\ncloud:\n{}\nagent0:\n{}\ntansu:\n{}",
                accepted.intersection(&stored).count(),
                accepted.len(),
                accepted.difference(&stored).take(3).collect::<Vec<_>>(),
                tail("edge.log"),
                tail("cloud.log"),
                tail("agent0.log"),
                tail("tansu/tansu.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let edge_log = std::fs::read_to_string(root.join("edge.log")).unwrap();
    // Each agent start logs how many events its outbox still held from before the kill.
    let held_at_restarts: u64 = (0..2)
        .flat_map(|i| {
            let log = std::fs::read_to_string(root.join(format!("agent{i}.log"))).unwrap();
            log.lines()
                .filter(|l| l.contains("terminal agent started"))
                .filter_map(|l| l.split("pending=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    eprintln!(
        "{ROUNDS} rounds: accepted by the agents {} (POSTs retried {retries}), in the warehouse {rows} rows, {distinct} distinct; \
         edge starts {}, events found in an agent's outbox when it started again {held_at_restarts}",
        accepted.len(),
        edge_log.matches("edge subscribed").count(),
    );
    assert_eq!(stored, accepted, "the warehouse holds exactly the accepted events (seed {seed})");
    assert!(accepted.len() > 500, "the classrooms kept producing: {}", accepted.len());
}

//! edubrain terminal agent: the classroom side of the pipeline.
//!
//! - [`province`]: builds a realistic province (registry, classrooms, teachers, resources) from a seed.
//! - [`simulate`]: pure simulation of a school week's events, time and seed passed in.
//! - [`outbox`]: the durable outbox; events leave it only when the edge acks them.
//! - [`publisher`]: sends a terminal's outbox over MQTT QoS 1 and applies the edge's acks;
//!   paces simulated events to wall time.
//! - [`local_ingest`]: the HTTP interface real classroom software posts events to (validated,
//!   student ids pseudonymised, into the outbox).
//! - [`terminal`]: one real terminal (the `serve` command): local ingest + outbox + sender.
//! - [`run`]: simulate a province and publish every terminal's events (the `simulate` command).

pub mod local_ingest;
pub mod outbox;
pub mod province;
pub mod publisher;
pub mod simulate;
pub mod terminal;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use edubrain_schemas::Event;
use edubrain_schemas::topics::TerminalTopic;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use province::{Province, ProvinceSpec};
pub use publisher::{MqttTarget, Pacing, PublishProgress};
pub use simulate::SimulationSpec;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry: {0}")]
    Registry(#[from] edubrain_schemas::SchemaError),
    #[error(
        "outbox {dir} is full: {disk_bytes} of {max_bytes} bytes hold events the edge has not acknowledged; new events are refused until it does"
    )]
    OutboxFull { dir: String, disk_bytes: u64, max_bytes: u64 },
    #[error("outbox: {0}")]
    Outbox(String),
    #[error("config {path}: {message}")]
    Config { path: String, message: String },
}

/// Configuration of a simulation run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    pub mqtt: MqttTarget,
    pub province: ProvinceSpec,
    /// First simulated school day; default: the Monday of last week.
    pub first_day: Option<NaiveDate>,
    pub school_days: u32,
    pub heartbeat_minutes: u32,
    /// Simulated seconds per wall second (0 = as fast as possible).
    pub speed: f64,
    /// Where to write the registry CSV the simulation used.
    pub registry_out: Option<PathBuf>,
    /// Root of the terminals' durable outboxes (one directory per terminal). Without it events
    /// are only as safe as the broker's PUBACK; the agent says so at start.
    pub outbox_dir: Option<PathBuf>,
    pub outbox: outbox::OutboxConfig,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            mqtt: MqttTarget::new("127.0.0.1", 1883),
            province: ProvinceSpec::default(),
            first_day: None,
            school_days: 5,
            heartbeat_minutes: 15,
            speed: 0.0,
            registry_out: None,
            outbox_dir: None,
            outbox: outbox::OutboxConfig::default(),
        }
    }
}

impl SimulatorConfig {
    pub fn simulation_spec(&self, today: NaiveDate) -> SimulationSpec {
        SimulationSpec {
            first_day: self.first_day.unwrap_or_else(|| simulate::last_school_week(today)),
            school_days: self.school_days,
            heartbeat_minutes: self.heartbeat_minutes,
            seed: self.province.seed,
        }
    }
}

/// Events grouped per terminal, each group in time order.
pub fn by_terminal(events: Vec<Event>) -> BTreeMap<String, (TerminalTopic, Vec<Event>)> {
    let mut out: BTreeMap<String, (TerminalTopic, Vec<Event>)> = BTreeMap::new();
    for e in events {
        out.entry(e.header.terminal.clone()).or_insert_with(|| (TerminalTopic::from_header(&e.header), Vec::new())).1.push(e);
    }
    out
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub terminals: usize,
    pub created: u64,
    pub acked: u64,
}

/// Publishes `events` from one MQTT connection per terminal, concurrently; returns when the
/// broker acknowledged (PUBACK) every event. Only as safe as the broker: for the benchmark's
/// bare-bridge baseline and for brokers without an edubrain edge.
pub async fn publish_all(
    target: &MqttTarget,
    events: Vec<Event>,
    pacing: Pacing,
    progress: Arc<PublishProgress>,
    shutdown: CancellationToken,
) -> Result<RunSummary, AgentError> {
    publish_per_terminal(events, |_, topic, evs| {
        let (target, progress, shutdown) = (target.clone(), progress.clone(), shutdown.clone());
        Ok(async move { publisher::publish_terminal(&target, &topic, &evs, pacing, progress, shutdown).await })
    })
    .await
}

/// Publishes `events` from one MQTT connection per terminal, concurrently, each through its
/// durable outbox under `outbox_root/{terminal}`; returns when the edge acknowledged every event.
pub async fn publish_all_durable(
    target: &MqttTarget,
    events: Vec<Event>,
    pacing: Pacing,
    outbox_root: &std::path::Path,
    outbox_config: &outbox::OutboxConfig,
    progress: Arc<PublishProgress>,
    shutdown: CancellationToken,
) -> Result<RunSummary, AgentError> {
    publish_per_terminal(events, |terminal, topic, evs| {
        let outbox = outbox::Outbox::open(&outbox_root.join(terminal), outbox_config)?;
        let (target, progress, shutdown) = (target.clone(), progress.clone(), shutdown.clone());
        Ok(async move { publisher::publish_terminal_durable(&target, &topic, &evs, pacing, outbox, progress, shutdown).await })
    })
    .await
}

/// Groups `events` per terminal, runs `publish(terminal, topic, its events)` for each
/// concurrently, and sums what they report acknowledged.
async fn publish_per_terminal<F, Fut>(events: Vec<Event>, mut publish: F) -> Result<RunSummary, AgentError>
where
    F: FnMut(&str, TerminalTopic, Vec<Event>) -> Result<Fut, AgentError>,
    Fut: std::future::Future<Output = Result<u64, AgentError>> + Send + 'static,
{
    let created = events.len() as u64;
    let groups = by_terminal(events);
    let terminals = groups.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (terminal, (topic, evs)) in groups {
        tasks.spawn(publish(&terminal, topic, evs)?);
    }
    let mut acked = 0;
    while let Some(res) = tasks.join_next().await {
        acked += res.map_err(|e| AgentError::Mqtt(format!("terminal task: {e}")))??;
    }
    Ok(RunSummary { terminals, created, acked })
}

/// Builds the province, writes its registry, simulates and publishes.
pub async fn run(config: SimulatorConfig, progress: Arc<PublishProgress>, shutdown: CancellationToken) -> Result<RunSummary, AgentError> {
    let province = province::build(&config.province);
    if let Some(path) = &config.registry_out {
        write_registry(&province, path)?;
    }
    let spec = config.simulation_spec(Utc::now().date_naive());
    let events = simulate::simulate(&province, &spec);
    let sim_start = simulate::local_offset()
        .from_local_datetime(&spec.first_day.and_hms_opt(7, 30, 0).expect("valid"))
        .single()
        .expect("fixed offset")
        .with_timezone(&Utc);
    let speed = if config.speed <= 0.0 { f64::INFINITY } else { config.speed };
    let pacing = Pacing { sim_start, wall_start: tokio::time::Instant::now(), speed };
    match &config.outbox_dir {
        Some(root) => publish_all_durable(&config.mqtt, events, pacing, root, &config.outbox, progress, shutdown).await,
        None => {
            tracing::warn!("no outbox_dir configured: events are only as safe as the broker's PUBACK");
            publish_all(&config.mqtt, events, pacing, progress, shutdown).await
        }
    }
}

/// A provisioning secret for demos and tests only; real hubs keep theirs in a secret file.
pub const DEMO_PROVISIONING_SECRET: &str = "edubrain-demo-only-provisioning-secret";

/// The broker logins of a province: every terminal and one edge per city, with passwords
/// derived from `secret` (what a hub writes into Mosquitto's password file).
pub fn broker_users(province: &Province, secret: &str) -> Vec<(String, String)> {
    use edubrain_schemas::identity::{derived_password, edge_username, terminal_username};
    let mut users = Vec::new();
    let mut cities = std::collections::BTreeSet::new();
    for school in &province.schools {
        for room in &school.classrooms {
            let t = TerminalTopic {
                city: room.city.clone(),
                school: room.school.clone(),
                classroom: room.id.clone(),
                terminal: room.terminal.clone(),
            };
            let name = terminal_username(&t);
            users.push((name.clone(), derived_password(secret.as_bytes(), &name)));
            cities.insert(room.city.clone());
        }
    }
    for city in cities {
        let name = edge_username(&city);
        users.push((name.clone(), derived_password(secret.as_bytes(), &name)));
    }
    users
}

/// Writes the province's registry CSV (creating parent directories).
pub fn write_registry(province: &Province, path: &std::path::Path) -> Result<(), AgentError> {
    let io = |e: std::io::Error| AgentError::Io { path: path.display().to_string(), source: e };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::File::create(path).map_err(io)?;
    edubrain_schemas::registry::write_csv(&province.registry, std::io::BufWriter::new(file))?;
    Ok(())
}

/// Loads a simulator config: TOML file (if any), then `EDUBRAIN_AGENT_MQTT_HOST/PORT` and
/// `EDUBRAIN_AGENT_PROVISIONING_SECRET_FILE` overrides.
pub fn load_config(path: Option<&std::path::Path>) -> Result<SimulatorConfig, AgentError> {
    let mut config: SimulatorConfig = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| AgentError::Io { path: p.display().to_string(), source: e })?;
            toml_from_str(&text).map_err(|message| AgentError::Config { path: p.display().to_string(), message })?
        }
        None => SimulatorConfig::default(),
    };
    if let Ok(h) = std::env::var("EDUBRAIN_AGENT_MQTT_HOST") {
        config.mqtt.host = h;
    }
    if let Ok(f) = std::env::var("EDUBRAIN_AGENT_PROVISIONING_SECRET_FILE") {
        let secret = std::fs::read_to_string(&f).map_err(|e| AgentError::Io { path: f.clone(), source: e })?;
        config.mqtt.provisioning_secret = Some(secret.trim_end().to_string());
    }
    if let Ok(p) = std::env::var("EDUBRAIN_AGENT_MQTT_PORT") {
        config.mqtt.port = p
            .parse()
            .map_err(|_| AgentError::Config { path: "EDUBRAIN_AGENT_MQTT_PORT".into(), message: format!("{p:?} is not a port") })?;
    }
    Ok(config)
}

fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// UTC instant of a local (UTC+8) school-day time; used by tests and the demo.
pub fn local_time(day: NaiveDate, h: u32, m: u32) -> chrono::DateTime<Utc> {
    simulate::local_offset().from_local_datetime(&day.and_hms_opt(h, m, 0).expect("valid")).single().expect("fixed").with_timezone(&Utc)
}

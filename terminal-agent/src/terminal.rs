//! One real terminal: the agent on a classroom device (the `serve` command). Classroom software
//! posts events to the local ingest interface ([`crate::local_ingest`]); they are written to the
//! durable outbox and sent to the city's edge over MQTT, and leave the outbox when the edge
//! acknowledges them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edubrain_schemas::ValidationPolicy;
use edubrain_schemas::topics::TerminalTopic;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::local_ingest::LocalIngest;
use crate::outbox::{Outbox, OutboxConfig};
use crate::publisher::{MqttTarget, PublishProgress, send_outbox};
use crate::{AgentError, toml_from_str};

/// The terminal's identity, as provisioned (its MQTT username is derived from it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub city: String,
    pub school: String,
    pub classroom: String,
    pub terminal: String,
}

impl Identity {
    pub fn topic(&self) -> TerminalTopic {
        TerminalTopic {
            city: self.city.clone(),
            school: self.school.clone(),
            classroom: self.classroom.clone(),
            terminal: self.terminal.clone(),
        }
    }
}

/// Configuration of `edubrain-agent serve` (see `deploy/terminal.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalConfig {
    pub identity: Identity,
    pub mqtt: MqttTarget,
    /// This device's MQTT password (provisioned per device). Without it, the password is
    /// derived from `mqtt.provisioning_secret` (demos and tests only).
    #[serde(default)]
    pub mqtt_password_file: Option<PathBuf>,
    /// The local ingest interface. Loopback by default: only software on this device posts.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Holds `outbox/` and `rejected.jsonl`.
    pub state_dir: PathBuf,
    /// The alliance's pseudonymisation key (bytes of the file, trailing newline removed).
    pub alliance_key_file: PathBuf,
    #[serde(default)]
    pub outbox: OutboxConfig,
}

fn default_listen() -> String {
    "127.0.0.1:8731".into()
}

impl TerminalConfig {
    /// Reads the TOML file, then `EDUBRAIN_AGENT_MQTT_HOST`, `_MQTT_PORT`, `_MQTT_PASSWORD_FILE`,
    /// `_ALLIANCE_KEY_FILE`, `_LISTEN` and `_STATE_DIR` overrides.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`TerminalConfig::load`] with the environment `get`.
    pub fn load_with_env(path: &Path, get: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Io { path: path.display().to_string(), source: e })?;
        let mut c: TerminalConfig =
            toml_from_str(&text).map_err(|message| AgentError::Config { path: path.display().to_string(), message })?;
        c.apply_env(get)?;
        Ok(c)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), AgentError> {
        if let Some(v) = get("EDUBRAIN_AGENT_MQTT_HOST") {
            self.mqtt.host = v;
        }
        if let Some(v) = get("EDUBRAIN_AGENT_MQTT_PORT") {
            self.mqtt.port = v
                .parse()
                .map_err(|_| AgentError::Config { path: "EDUBRAIN_AGENT_MQTT_PORT".into(), message: format!("{v:?} is not a port") })?;
        }
        if let Some(v) = get("EDUBRAIN_AGENT_MQTT_PASSWORD_FILE") {
            self.mqtt_password_file = Some(v.into());
        }
        if let Some(v) = get("EDUBRAIN_AGENT_ALLIANCE_KEY_FILE") {
            self.alliance_key_file = v.into();
        }
        if let Some(v) = get("EDUBRAIN_AGENT_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("EDUBRAIN_AGENT_STATE_DIR") {
            self.state_dir = v.into();
        }
        Ok(())
    }
}

/// A started terminal.
pub struct RunningTerminal {
    /// Where the local ingest interface listens.
    pub addr: SocketAddr,
    pub progress: Arc<PublishProgress>,
    pub ingest: Arc<LocalIngest>,
    task: tokio::task::JoinHandle<Result<u64, AgentError>>,
}

impl RunningTerminal {
    /// Waits for the terminal to stop (after shutdown); returns how many events the edge acked.
    pub async fn wait(self) -> Result<u64, AgentError> {
        self.task.await.map_err(|e| AgentError::Mqtt(format!("terminal task: {e}")))?
    }
}

fn read_secret(path: &Path) -> Result<Vec<u8>, AgentError> {
    let mut bytes = std::fs::read(path).map_err(|e| AgentError::Io { path: path.display().to_string(), source: e })?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(AgentError::Config { path: path.display().to_string(), message: "the file is empty".into() });
    }
    Ok(bytes)
}

/// Opens the outbox, starts the local ingest interface and the MQTT sender.
pub async fn start(config: TerminalConfig, shutdown: CancellationToken) -> Result<RunningTerminal, AgentError> {
    let topic = config.identity.topic();
    for (field, value) in [("city", &topic.city), ("school", &topic.school), ("classroom", &topic.classroom), ("terminal", &topic.terminal)]
    {
        edubrain_schemas::validate::check_id(field, value)
            .map_err(|e| AgentError::Config { path: format!("identity.{field}"), message: e.to_string() })?;
    }
    let alliance_key = read_secret(&config.alliance_key_file)?;
    let mut target = config.mqtt.clone();
    if let Some(f) = &config.mqtt_password_file {
        target.password = Some(String::from_utf8_lossy(&read_secret(f)?).into_owned());
    }
    let outbox_dir = config.state_dir.join("outbox");
    let outbox = Arc::new(std::sync::Mutex::new(Outbox::open(&outbox_dir, &config.outbox)?));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| AgentError::Io { path: format!("listen {}", config.listen), source: e })?;
    let addr = listener.local_addr().map_err(|e| AgentError::Io { path: config.listen.clone(), source: e })?;
    let (fresh_tx, fresh_rx) = tokio::sync::mpsc::unbounded_channel();
    let ingest = Arc::new(LocalIngest {
        identity: topic.clone(),
        alliance_key,
        policy: ValidationPolicy::default(),
        outbox: outbox.clone(),
        fresh: fresh_tx,
        rejected_path: config.state_dir.join("rejected.jsonl"),
        counters: Default::default(),
    });
    let pending = outbox.lock().expect("outbox lock").len();
    tracing::info!(%addr, terminal = %edubrain_schemas::identity::terminal_username(&topic), pending, outbox = %outbox_dir.display(), "terminal agent started");
    tokio::spawn(crate::local_ingest::serve(listener, ingest.clone(), shutdown.clone()));
    let progress = Arc::new(PublishProgress::default());
    let task = {
        let progress = progress.clone();
        tokio::spawn(async move { send_outbox(&target, &topic, outbox, fresh_rx, progress, shutdown).await })
    };
    Ok(RunningTerminal { addr, progress, ingest, task })
}

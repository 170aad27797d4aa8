//! Edge configuration: a TOML file (see `deploy/edge-*.toml`), then `EDUBRAIN_EDGE_*` env
//! overrides. Unknown keys are errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edubrain_process::kafka_security::{self, KafkaSasl, KafkaTls};
use serde::Deserialize;

use crate::EdgeError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The one city this edge serves; events of any other city are refused.
    pub city: String,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub rollup: RollupConfig,
    #[serde(default)]
    pub refusal_audit: RefusalAuditConfig,
    /// Address of `/metrics` and `/healthz`; port 0 picks a free port.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// How many recent event ids the dedup window remembers.
    #[serde(default = "default_dedup_capacity")]
    pub dedup_capacity: usize,
    /// Device clocks further ahead than this are flagged (the event is kept with both times).
    #[serde(default = "default_max_clock_ahead_hours")]
    pub max_clock_ahead_hours: i64,
    /// A terminal heard from (any message, heartbeats included) within this many seconds counts
    /// in `edubrain_edge_terminals_active`, the gauge behind the "terminals disconnected" alert.
    #[serde(default = "default_terminal_active_secs")]
    pub terminal_active_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Stable, so the broker keeps the edge's session (and queues QoS 1 events) across restarts.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Largest packet accepted. Deliberately small: an event is a few hundred bytes, and the
    /// broker's `message_size_limit` (deploy/mosquitto) refuses larger ones before they get here.
    pub max_packet_bytes: usize,
    pub keepalive_secs: u64,
    /// TLS to the broker's TLS listener with the edge's client certificate (common name
    /// `edge-{city}`); see `edubrain_process::mqtt_tls`.
    pub tls: Option<edubrain_process::mqtt_tls::MqttTls>,
    /// Read the broker's log lines (`$SYS/broker/log/+`, which `log_dest topic` and the ACL in
    /// deploy/mosquitto provide) to count and audit the broker's own refusals; see
    /// [`crate::broker_log`]. Without that broker setup the edge simply receives none.
    pub broker_log: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            max_packet_bytes: 256 * 1024,
            keepalive_secs: 15,
            tls: None,
            broker_log: true,
        }
    }
}

/// The write-ahead log: an event is acknowledged (to MQTT and to its terminal) only once it is
/// fsynced here, and deleted only after Kafka confirmed it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Required: there is no safe default place for acknowledged data.
    pub dir: Option<PathBuf>,
    pub segment_bytes: u64,
    /// Capacity. When full, the edge stops acknowledging (terminals and the broker keep the
    /// events) until Kafka confirmations free a segment.
    pub max_bytes: u64,
    /// Most events written per group commit (one fsync).
    pub max_batch: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self { dir: None, segment_bytes: 16 << 20, max_bytes: 1 << 30, max_batch: 2048 }
    }
}

impl WalConfig {
    pub fn options(&self, max_record_bytes: usize) -> edubrain_wal::WalOptions {
        // A record is the MQTT payload plus its Kafka key and headers.
        edubrain_wal::WalOptions {
            segment_bytes: self.segment_bytes,
            max_bytes: self.max_bytes,
            max_record_bytes: (max_record_bytes + 4096).min(u32::MAX as usize) as u32,
        }
    }
}

/// Windowed rollups (see the `rollup` module): tumbling windows of event time, closed
/// `allowed_lateness_secs` after their end by the edge's clock.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    pub window_secs: u32,
    pub allowed_lateness_secs: u32,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self { window_secs: 300, allowed_lateness_secs: 600 }
    }
}

impl RollupConfig {
    pub fn windows(&self) -> crate::rollup::RollupConfig {
        crate::rollup::RollupConfig {
            window: chrono::Duration::seconds(i64::from(self.window_secs)),
            allowed_lateness: chrono::Duration::seconds(i64::from(self.allowed_lateness_secs)),
        }
    }
}

/// How many of the broker's refusals are audited one by one (see the `refusal_audit` module):
/// `per_client` records per reason and client per `window_secs`, then one summary record with
/// the number past that. Every refusal is still counted in the metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefusalAuditConfig {
    pub per_client: u32,
    pub window_secs: u32,
    /// Clients with a window of their own; refusals of further ones share one per reason.
    pub max_clients: usize,
}

impl Default for RefusalAuditConfig {
    fn default() -> Self {
        Self { per_client: 10, window_secs: 60, max_clients: 4096 }
    }
}

impl RefusalAuditConfig {
    pub fn limits(&self) -> crate::refusal_audit::Limits {
        crate::refusal_audit::Limits {
            per_client: self.per_client,
            window_ms: i64::from(self.window_secs) * 1000,
            max_clients: self.max_clients,
        }
    }
}

/// Per-terminal budget. A classroom terminal sends a few events a second; the burst lets one
/// that was offline for a while empty its outbox quickly, the rate keeps a looping one from
/// crowding out its city. Events over budget are deferred (the terminal resends), never dropped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub events_per_second: f64,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { events_per_second: 200.0, burst: 2000 }
    }
}

impl RateLimitConfig {
    pub fn limit(&self) -> crate::throttle::RateLimit {
        crate::throttle::RateLimit { per_second: self.events_per_second, burst: f64::from(self.burst) }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub events_topic: String,
    pub deadletter_topic: String,
    pub rollups_topic: String,
    /// The MQTT broker's refusals (bad logins, failed TLS handshakes, session takeovers).
    pub audit_topic: String,
    /// Used when the edge creates the topics at start-up.
    pub partitions: i32,
    pub replication: i32,
    /// Extra librdkafka producer properties (e.g. `linger.ms`); cannot weaken `acks` or
    /// idempotence, which the edge always sets, nor the security settings below.
    pub producer: BTreeMap<String, String>,
    /// `[kafka.tls]`: TLS to the brokers (CA, optional client certificate).
    pub tls: Option<KafkaTls>,
    /// `[kafka.sasl]`: the edge's Kafka login (SCRAM-SHA-512 by preference).
    pub sasl: Option<KafkaSasl>,
}

impl KafkaConfig {
    /// The topic a WAL record of `destination` is produced to.
    pub fn topic(&self, destination: crate::record::Destination) -> &str {
        use crate::record::Destination;
        match destination {
            Destination::Events => &self.events_topic,
            Destination::DeadLetter => &self.deadletter_topic,
            Destination::Rollups => &self.rollups_topic,
            Destination::Audit => &self.audit_topic,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            events_topic: edubrain_schemas::topics::KAFKA_EVENTS_TOPIC.into(),
            deadletter_topic: edubrain_schemas::topics::KAFKA_DEADLETTER_TOPIC.into(),
            rollups_topic: edubrain_schemas::topics::KAFKA_ROLLUPS_TOPIC.into(),
            audit_topic: edubrain_schemas::topics::KAFKA_AUDIT_TOPIC.into(),
            partitions: 6,
            replication: 1,
            producer: BTreeMap::new(),
            tls: None,
            sasl: None,
        }
    }
}

fn default_http_listen() -> String {
    "127.0.0.1:9101".into()
}
fn default_dedup_capacity() -> usize {
    1_000_000
}
fn default_max_clock_ahead_hours() -> i64 {
    24
}
fn default_terminal_active_secs() -> u64 {
    600
}

impl EdgeConfig {
    /// A config for `city` with every other setting at its default.
    pub fn for_city(city: &str) -> Self {
        toml::from_str(&format!("city = {city:?}")).expect("defaults are valid")
    }

    /// An edge for `city` with its brokers on this machine, its WAL in `wal_dir` and its HTTP
    /// endpoint on a free loopback port (the demo and the tests).
    pub fn on_loopback(city: &str, mqtt_port: u16, kafka_brokers: &str, wal_dir: &Path) -> Self {
        let mut c = Self::for_city(city);
        c.wal.dir = Some(wal_dir.to_path_buf());
        c.mqtt.port = mqtt_port;
        c.kafka.brokers = kafka_brokers.into();
        c.http_listen = "127.0.0.1:0".into();
        c
    }

    /// Logs in as `edge-{city}` with the password derived from the hub's provisioning secret.
    pub fn login_with(&mut self, provisioning_secret: &str) {
        let user = edubrain_schemas::identity::edge_username(&self.city);
        self.mqtt.password = Some(edubrain_schemas::identity::derived_password(provisioning_secret.as_bytes(), &user));
        self.mqtt.username = Some(user);
    }

    /// What the edge flags about device clocks (`max_clock_ahead_hours`).
    pub fn validation_policy(&self) -> edubrain_schemas::ValidationPolicy {
        edubrain_schemas::ValidationPolicy {
            max_clock_ahead: chrono::Duration::hours(self.max_clock_ahead_hours),
            ..edubrain_schemas::ValidationPolicy::default()
        }
    }

    /// Reads a TOML file, then applies env overrides.
    pub fn load(path: &Path) -> Result<Self, EdgeError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`EdgeConfig::load`] with the environment `get` (deploy files' tests use the environment
    /// their compose service, pod or unit sets).
    pub fn load_with_env(path: &Path, get: impl Fn(&str) -> Option<String>) -> Result<Self, EdgeError> {
        let text = std::fs::read_to_string(path).map_err(|e| EdgeError::Config(format!("{}: {e}", path.display())))?;
        let mut config: EdgeConfig = toml::from_str(&text).map_err(|e| EdgeError::Config(format!("{}: {e}", path.display())))?;
        config.apply_env(get)?;
        config.check()?;
        Ok(config)
    }

    /// Overrides from `EDUBRAIN_EDGE_CITY`, `_MQTT_HOST`, `_MQTT_PORT`, `_KAFKA_BROKERS`,
    /// `_HTTP_LISTEN`, `_WAL_DIR`, `_MQTT_USERNAME`, `_MQTT_PASSWORD_FILE`,
    /// `_KAFKA_SASL_PASSWORD_FILE`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), EdgeError> {
        if let Some(v) = get("EDUBRAIN_EDGE_CITY") {
            self.city = v;
        }
        if let Some(v) = get("EDUBRAIN_EDGE_MQTT_HOST") {
            self.mqtt.host = v;
        }
        if let Some(v) = get("EDUBRAIN_EDGE_MQTT_PORT") {
            self.mqtt.port = v.parse().map_err(|_| EdgeError::Config(format!("EDUBRAIN_EDGE_MQTT_PORT={v:?} is not a port")))?;
        }
        if let Some(v) = get("EDUBRAIN_EDGE_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = get("EDUBRAIN_EDGE_HTTP_LISTEN") {
            self.http_listen = v;
        }
        if let Some(v) = get("EDUBRAIN_EDGE_WAL_DIR") {
            self.wal.dir = Some(v.into());
        }
        if let Some(v) = get("EDUBRAIN_EDGE_MQTT_USERNAME") {
            self.mqtt.username = Some(v);
        }
        if let Some(v) = get("EDUBRAIN_EDGE_KAFKA_SASL_PASSWORD_FILE") {
            let sasl = self.kafka.sasl.as_mut().ok_or_else(|| {
                EdgeError::Config("EDUBRAIN_EDGE_KAFKA_SASL_PASSWORD_FILE is set but the config has no [kafka.sasl] section".into())
            })?;
            sasl.password_file = v.into();
        }
        if let Some(v) = get("EDUBRAIN_EDGE_MQTT_PASSWORD_FILE") {
            let pw = std::fs::read_to_string(&v).map_err(|e| EdgeError::Config(format!("EDUBRAIN_EDGE_MQTT_PASSWORD_FILE {v}: {e}")))?;
            self.mqtt.password = Some(pw.trim_end().to_string());
        }
        Ok(())
    }

    pub fn check(&self) -> Result<(), EdgeError> {
        edubrain_schemas::validate::check_id("city", &self.city).map_err(|e| EdgeError::Config(e.to_string()))?;
        if let Some(tls) = &self.mqtt.tls {
            tls.client_config().map_err(|e| EdgeError::Config(e.to_string()))?;
        }
        for key in ["acks", "enable.idempotence", "bootstrap.servers"].iter().chain(kafka_security::SECURITY_PROPERTIES) {
            if self.kafka.producer.contains_key(*key) {
                return Err(EdgeError::Config(format!("kafka.producer.{key} is set by the edge itself and cannot be overridden")));
            }
        }
        kafka_security::client_properties(self.kafka.tls.as_ref(), self.kafka.sasl.as_ref())
            .map_err(|e| EdgeError::Config(e.to_string()))?;
        if self.wal.dir.is_none() {
            return Err(EdgeError::Config(
                "wal.dir is not set: the edge acknowledges events only once they are in its write-ahead log, so it needs a directory"
                    .into(),
            ));
        }
        if self.wal.max_batch == 0 {
            return Err(EdgeError::Config("wal.max_batch must be at least 1".into()));
        }
        let r = &self.rate_limit;
        if !(r.events_per_second.is_finite() && r.events_per_second > 0.0) || r.burst == 0 {
            return Err(EdgeError::Config(format!(
                "rate_limit.events_per_second = {} and rate_limit.burst = {} must both be positive",
                r.events_per_second, r.burst
            )));
        }
        if self.rollup.window_secs == 0 {
            return Err(EdgeError::Config("rollup.window_secs must be at least 1".into()));
        }
        if self.refusal_audit.window_secs == 0 || self.refusal_audit.max_clients == 0 {
            return Err(EdgeError::Config(format!(
                "refusal_audit.window_secs = {} and refusal_audit.max_clients = {} must both be at least 1",
                self.refusal_audit.window_secs, self.refusal_audit.max_clients
            )));
        }
        if self.mqtt.max_packet_bytes < 1024 {
            return Err(EdgeError::Config(format!("mqtt.max_packet_bytes = {} is too small for one event", self.mqtt.max_packet_bytes)));
        }
        Ok(())
    }

    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| format!("edubrain-edge-{}", self.city))
    }
}

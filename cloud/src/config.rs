//! Cloud configuration: TOML file (see `deploy/cloud.toml`), then `EDUBRAIN_CLOUD_*` env
//! overrides. The plans' targets are named thresholds here with `domain.md`'s defaults.

use std::path::{Path, PathBuf};

use edubrain_process::kafka_security::{self, KafkaSasl, KafkaTls};
use serde::Deserialize;

use crate::CloudError;
use crate::access::AccessConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    pub kafka: KafkaConfig,
    /// Root of the Parquet warehouse (`events/date=…/city=…/part-….parquet`).
    pub warehouse_dir: PathBuf,
    /// School registry, CSV or Parquet with the standard columns, for every date …
    pub registry: Option<PathBuf>,
    /// … or one per school year: `"2025-2026" = "registry-2025.csv"` (see `registry`).
    pub registries: std::collections::BTreeMap<String, PathBuf>,
    /// Address of the API, `/metrics` and `/healthz`; port 0 picks a free port.
    pub http_listen: String,
    pub ingest: IngestConfig,
    pub thresholds: Thresholds,
    pub recommendation: RecommendationWeights,
    /// Zone-monitoring targets (the zone plan's seed indicators).
    pub zone_targets: ZoneTargets,
    /// Who may call the API (bearer tokens, by SHA-256).
    pub access: AccessConfig,
    /// Limits of every API query, and of the SQL endpoint.
    pub query: QueryLimits,
    /// The headline gauges on `/metrics`.
    pub headline: HeadlineConfig,
    /// Compaction and retention of the Parquet files.
    pub maintenance: crate::maintenance::MaintenanceConfig,
    /// Where the audit log goes.
    pub audit: AuditConfig,
    /// Arrow Flight SQL for BI tools (off unless `listen` is set).
    pub flight_sql: FlightSqlConfig,
}

/// `[flight_sql]`: the warehouse over Arrow Flight SQL, with the API's principals and roles.
/// Its limits are wider than the SQL endpoint's: BI tools extract whole tables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlightSqlConfig {
    /// gRPC address (e.g. `0.0.0.0:50051`); port 0 picks a free port; unset: not served.
    pub listen: Option<String>,
    /// A result with more rows ends in a `RESOURCE_EXHAUSTED` error naming this limit.
    pub max_rows: usize,
    /// A query still running (or still being read) after this long ends in `DEADLINE_EXCEEDED`.
    pub timeout_ms: u64,
}

impl Default for FlightSqlConfig {
    fn default() -> Self {
        Self { listen: None, max_rows: 1_000_000, timeout_ms: 300_000 }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Directory of the daily `audit-YYYY-MM-DD.jsonl` files (default: `<warehouse_dir>/audit`).
    pub dir: Option<PathBuf>,
    /// Day files older than this many days are deleted (0: keep every day).
    pub retention_days: u32,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            warehouse_dir: PathBuf::from("warehouse"),
            registry: None,
            registries: Default::default(),
            http_listen: "127.0.0.1:8080".into(),
            ingest: IngestConfig::default(),
            thresholds: Thresholds::default(),
            recommendation: RecommendationWeights::default(),
            zone_targets: ZoneTargets::default(),
            access: AccessConfig::default(),
            query: QueryLimits::default(),
            headline: HeadlineConfig::default(),
            maintenance: Default::default(),
            audit: AuditConfig::default(),
            flight_sql: FlightSqlConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub events_topic: String,
    /// `[kafka.tls]`: TLS to the brokers (CA, optional client certificate).
    pub tls: Option<KafkaTls>,
    /// `[kafka.sasl]`: the cloud's Kafka login (SCRAM-SHA-512 by preference).
    pub sasl: Option<KafkaSasl>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "edubrain-cloud".into(),
            events_topic: edubrain_schemas::topics::KAFKA_EVENTS_TOPIC.into(),
            tls: None,
            sasl: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A Parquet file is written when this many events are buffered …
    pub flush_max_events: usize,
    /// … or when the oldest buffered event has waited this long (bounds freshness).
    pub flush_interval_ms: u64,
    /// Recent event ids remembered to drop redeliveries.
    pub dedup_capacity: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { flush_max_events: 100_000, flush_interval_ms: 1000, dedup_capacity: 2_000_000 }
    }
}

/// Targets and limits from the plans and the national balance standard (`domain.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Shared equipment/facility utilisation target (plans: >= 70%).
    pub utilisation_target: f64,
    /// Idle-rate target (plans: 40% -> 15%).
    pub idle_rate_target: f64,
    /// Live-lesson interruption rate target (plans: 8.7% -> 1.2%).
    pub live_interruption_target: f64,
    /// Booking no-show rate above which a facility's bookings are flagged.
    pub booking_no_show_limit: f64,
    /// Course-resource sharing rate target (plans: 85% alliance, 90% zone).
    pub resource_sharing_target: f64,
    /// Resource upload pass rate target (plans: 65% -> 92%).
    pub upload_pass_rate_target: f64,
    /// CV limit per indicator for primary schools (national standard 2017: 0.50).
    pub cv_primary: f64,
    /// CV limit per indicator for junior-high schools (national standard 2017: 0.45).
    pub cv_junior: f64,
    /// Per-pupil funding CV limit across an alliance's schools (plans: 0.15).
    pub funding_cv_alliance: f64,
    /// Urban-rural gap in senior-title teacher share, percentage points (plans: <= 8).
    pub senior_title_gap_pp: f64,
    /// Teaching-quality difference coefficient (CV of schools' mean assessment scores) inside a
    /// zone (zone plan: 0.45 -> 0.30).
    pub teaching_quality_cv_zone: f64,
    /// Timetable hours per school day (8 periods of 45 minutes).
    pub timetable_hours_per_day: f64,
    /// Timetable periods per school day (idle rate counts periods without equipment use).
    pub timetable_periods_per_day: f64,
    /// Province time zone offset from UTC in hours (local school days).
    pub utc_offset_hours: i32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            utilisation_target: 0.70,
            idle_rate_target: 0.15,
            live_interruption_target: 0.012,
            booking_no_show_limit: 0.10,
            resource_sharing_target: 0.85,
            upload_pass_rate_target: 0.92,
            cv_primary: 0.50,
            cv_junior: 0.45,
            funding_cv_alliance: 0.15,
            senior_title_gap_pp: 8.0,
            teaching_quality_cv_zone: 0.30,
            timetable_hours_per_day: 6.0,
            timetable_periods_per_day: 8.0,
            utc_offset_hours: 8,
        }
    }
}

/// Zone monitoring targets (zone plan, `domain.md`), per zone per semester unless said.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneTargets {
    /// Teaching-research activities held in the zone per semester (>= 12).
    pub research_activities_per_semester: f64,
    /// Share of the zone's schools that took part in its activities (>= 85%).
    pub inter_school_participation: f64,
    /// Resource uploads per school per semester (>= 20).
    pub uploads_per_school_per_semester: f64,
    /// Resource visits per school per month (>= 500).
    pub visits_per_school_per_month: f64,
    /// Downloads per visit (>= 60%).
    pub download_rate: f64,
    /// Months in a row below the all-zone average of visits per school that raise an alert (2).
    pub below_average_months: usize,
    /// Most the zones' core indicators may differ, (max − min) / mean (plan: 15%).
    pub partition_max_spread: f64,
}

impl Default for ZoneTargets {
    fn default() -> Self {
        Self {
            research_activities_per_semester: 12.0,
            inter_school_participation: 0.85,
            uploads_per_school_per_semester: 20.0,
            visits_per_school_per_month: 500.0,
            download_rate: 0.60,
            below_average_months: 2,
            partition_max_spread: 0.15,
        }
    }
}

/// Limits of API queries. The SQL endpoint is read-only (no DDL, DML or statements) and runs
/// in the caller's scoped session (see `access`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// A SQL endpoint query is cancelled after this long.
    pub sql_timeout_ms: u64,
    /// At most this many rows are returned (the answer says when it was truncated).
    pub sql_max_rows: usize,
    /// Memory all queries of one role's session may hold at once.
    pub memory_limit_bytes: usize,
    /// Parquet footers kept between queries, for every session: about 64 KB a file here, so
    /// the default holds ~8,000 files (~230M events).
    pub file_metadata_cache_bytes: usize,
    /// Per-file column statistics kept between queries: about 16 KB a file.
    pub file_statistics_cache_bytes: usize,
    /// How long a table's file listing is reused (0: every query lists the files again).
    /// Files this process writes, merges or deletes are seen by the next query at once; this
    /// bounds only how late files written by another process (a backfill) show.
    pub file_listing_ttl_ms: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            sql_timeout_ms: 10_000,
            sql_max_rows: 10_000,
            memory_limit_bytes: 2 << 30,
            file_metadata_cache_bytes: 512 << 20,
            file_statistics_cache_bytes: 128 << 20,
            file_listing_ttl_ms: 5_000,
        }
    }
}

/// Headline indicators exported as Prometheus gauges per alliance and zone (labels come from
/// the registry, so their number is bounded by it).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadlineConfig {
    /// How often the gauges are recomputed.
    pub refresh_secs: u64,
    /// The days (ending with the newest day in the warehouse) they summarise.
    pub window_days: u32,
}

impl Default for HeadlineConfig {
    fn default() -> Self {
        Self { refresh_secs: 60, window_days: 30 }
    }
}

/// Weights of the parts of a recommendation score (they are reported with every score).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendationWeights {
    pub gap: f64,
    pub quality: f64,
    pub reuse: f64,
    pub proximity: f64,
}

impl Default for RecommendationWeights {
    fn default() -> Self {
        Self { gap: 0.35, quality: 0.25, reuse: 0.15, proximity: 0.25 }
    }
}

impl CloudConfig {
    /// A cloud with its warehouse in `warehouse_dir`, Kafka on this machine and its API on a
    /// free loopback port (the demo and the tests).
    pub fn on_loopback(warehouse_dir: PathBuf, registry: Option<PathBuf>, kafka_brokers: &str) -> Self {
        let mut c = CloudConfig { warehouse_dir, registry, http_listen: "127.0.0.1:0".into(), ..CloudConfig::default() };
        c.kafka.brokers = kafka_brokers.into();
        c
    }

    /// Reads a TOML file, then applies env overrides.
    pub fn load(path: &Path) -> Result<Self, CloudError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`CloudConfig::load`] with the environment `get`.
    pub fn load_with_env(path: &Path, get: impl Fn(&str) -> Option<String>) -> Result<Self, CloudError> {
        let text = std::fs::read_to_string(path).map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))?;
        let mut c: CloudConfig = toml::from_str(&text).map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))?;
        c.apply_env(get)?;
        // Every file the Kafka security settings name is read now, so a wrong path fails here.
        kafka_security::client_properties(c.kafka.tls.as_ref(), c.kafka.sasl.as_ref()).map_err(|e| CloudError::Config(e.to_string()))?;
        Ok(c)
    }

    /// Overrides from `EDUBRAIN_CLOUD_KAFKA_BROKERS`, `_KAFKA_SASL_PASSWORD_FILE`,
    /// `_WAREHOUSE_DIR`, `_REGISTRY`, `_HTTP_LISTEN`, `_FLIGHT_SQL_LISTEN`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), CloudError> {
        if let Some(v) = get("EDUBRAIN_CLOUD_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = get("EDUBRAIN_CLOUD_KAFKA_SASL_PASSWORD_FILE") {
            let sasl = self.kafka.sasl.as_mut().ok_or_else(|| {
                CloudError::Config("EDUBRAIN_CLOUD_KAFKA_SASL_PASSWORD_FILE is set but the config has no [kafka.sasl] section".into())
            })?;
            sasl.password_file = v.into();
        }
        if let Some(v) = get("EDUBRAIN_CLOUD_WAREHOUSE_DIR") {
            self.warehouse_dir = v.into();
        }
        if let Some(v) = get("EDUBRAIN_CLOUD_REGISTRY") {
            self.registry = Some(v.into());
        }
        if let Some(v) = get("EDUBRAIN_CLOUD_HTTP_LISTEN") {
            self.http_listen = v;
        }
        if let Some(v) = get("EDUBRAIN_CLOUD_FLIGHT_SQL_LISTEN") {
            self.flight_sql.listen = Some(v);
        }
        Ok(())
    }
}

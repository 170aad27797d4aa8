//! Prometheus metrics of the cloud: `edubrain_cloud_<subsystem>_<what>_<unit>`, bounded labels.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct CloudMetrics {
    registry: Registry,
    pub records_consumed: IntCounter,
    pub events_written: IntCounter,
    pub events_duplicate: IntCounter,
    pub records_quarantined: IntCounterVec,
    pub files_written: IntCounter,
    pub bytes_written: IntCounter,
    pub flush_duration: Histogram,
    pub freshness: Histogram,
    pub consumer_lag: IntGauge,
    pub commit_errors: IntCounter,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub api_denied: IntCounterVec,
    /// Headline indicators per `level` (alliance or zone) and `group` (its id from the registry).
    pub headline_utilisation: GaugeVec,
    pub headline_idle: GaugeVec,
    pub headline_live_interruption: GaugeVec,
    pub headline_resource_sharing: GaugeVec,
    pub headline_gaps_over_threshold: GaugeVec,
    pub headline_zone_visits_per_school: GaugeVec,
    pub headline_zone_alerts: GaugeVec,
    /// Students' elective enrolments in another school's courses / all, per alliance and zone.
    pub headline_cross_school_electives: GaugeVec,
    /// CV of schools' mean assessment scores inside each zone, per school level (primary, junior).
    pub headline_zone_teaching_quality_cv: GaugeVec,
    /// The configured target of each headline ratio, with `bound` min or max, so alert rules
    /// compare against the thresholds the cloud computes with instead of a copy of them.
    pub headline_target: GaugeVec,
    pub headline_refreshed: Gauge,
    pub headline_refresh_errors: IntCounter,
    pub maintenance_files_merged: IntCounter,
    pub maintenance_partitions_compacted: IntCounter,
    pub maintenance_partitions_expired: IntCounter,
    pub maintenance_errors: IntCounter,
    /// Maintenance runs put off because a streaming (Flight SQL) query was reading.
    pub maintenance_deferred: IntCounter,
    pub audit_records: IntCounterVec,
    pub audit_write_errors: IntCounter,
}

impl CloudMetrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("edubrain_cloud".into()), None).expect("valid registry");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        let secs = |name: &str, help: &str, buckets: Vec<f64>| HistogramOpts::new(name, help).buckets(buckets);
        Self {
            records_consumed: reg!(IntCounter::new("ingest_records_consumed_total", "Kafka records consumed")),
            events_written: reg!(IntCounter::new("ingest_events_written_total", "Events made durable in Parquet")),
            events_duplicate: reg!(IntCounter::new("ingest_events_duplicate_total", "Redelivered events dropped by event_id")),
            records_quarantined: reg!(IntCounterVec::new(
                Opts::new("ingest_records_quarantined_total", "Poison records kept in the quarantine table, by rule"),
                &["rule"]
            )),
            files_written: reg!(IntCounter::new("ingest_files_written_total", "Parquet files written")),
            bytes_written: reg!(IntCounter::new("ingest_written_bytes_total", "Parquet bytes written")),
            flush_duration: reg!(Histogram::with_opts(secs(
                "ingest_flush_duration_seconds",
                "Time to write, fsync and commit one flush",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
            ))),
            freshness: reg!(Histogram::with_opts(secs(
                "ingest_freshness_seconds",
                "Edge receipt to queryable in the warehouse",
                vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]
            ))),
            consumer_lag: reg!(IntGauge::new("ingest_consumer_lag_records", "Records in Kafka not yet committed by the warehouse")),
            commit_errors: reg!(IntCounter::new(
                "ingest_commit_errors_total",
                "Offset commits that failed after their Parquet files were durable (retried)"
            )),
            api_requests: reg!(IntCounterVec::new(
                Opts::new("api_requests_total", "API requests by endpoint and status class"),
                &["endpoint", "status"]
            )),
            api_duration: reg!(HistogramVec::new(
                secs("api_request_duration_seconds", "API request duration", vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["endpoint"]
            )),
            api_denied: reg!(IntCounterVec::new(
                Opts::new("api_denied_total", "API requests refused (missing or unknown token, foreign school), by reason"),
                &["reason"]
            )),
            headline_utilisation: reg!(GaugeVec::new(
                Opts::new("headline_utilisation_ratio", "Equipment utilisation (in-use / timetable hours) over the headline window"),
                &["level", "group"]
            )),
            headline_idle: reg!(GaugeVec::new(
                Opts::new("headline_idle_ratio", "Share of timetable periods without equipment use over the headline window"),
                &["level", "group"]
            )),
            headline_live_interruption: reg!(GaugeVec::new(
                Opts::new("headline_live_interruption_ratio", "Live streams interrupted / started over the headline window"),
                &["level", "group"]
            )),
            headline_resource_sharing: reg!(GaugeVec::new(
                Opts::new("headline_resource_sharing_ratio", "Resources used by another school / resources, over the headline window"),
                &["level", "group"]
            )),
            headline_gaps_over_threshold: reg!(GaugeVec::new(
                Opts::new("headline_gap_indicators_over_threshold", "Registry indicators whose enrolment-weighted CV is above its limit"),
                &["level", "group"]
            )),
            headline_zone_visits_per_school: reg!(GaugeVec::new(
                Opts::new("headline_zone_resource_visits_per_school", "Resource visits per school in the newest month with data"),
                &["zone"]
            )),
            headline_zone_alerts: reg!(GaugeVec::new(
                Opts::new("headline_zone_alerts", "Zone-monitoring alerts of the newest month and semester"),
                &["zone"]
            )),
            headline_cross_school_electives: reg!(GaugeVec::new(
                Opts::new(
                    "headline_cross_school_elective_ratio",
                    "Students' elective enrolments in another school's courses / all their enrolments, over the headline window"
                ),
                &["level", "group"]
            )),
            headline_zone_teaching_quality_cv: reg!(GaugeVec::new(
                Opts::new(
                    "headline_zone_teaching_quality_cv",
                    "Enrolment-weighted CV of the zone's schools' mean assessment scores (teaching-quality difference coefficient), over the headline window"
                ),
                &["zone", "school_level"]
            )),
            headline_target: reg!(GaugeVec::new(
                Opts::new(
                    "headline_target_ratio",
                    "Configured target of a headline ratio; bound says whether it is a floor (min) or a ceiling (max)"
                ),
                &["indicator", "bound"]
            )),
            headline_refreshed: reg!(Gauge::new(
                "headline_refresh_timestamp_seconds",
                "When the headline gauges were last computed (Unix time)"
            )),
            headline_refresh_errors: reg!(IntCounter::new("headline_refresh_errors_total", "Failed recomputations of the headline gauges")),
            maintenance_files_merged: reg!(IntCounter::new("maintenance_files_merged_total", "Small Parquet files merged by compaction")),
            maintenance_partitions_compacted: reg!(IntCounter::new(
                "maintenance_partitions_compacted_total",
                "Partitions whose small files were merged and swapped in"
            )),
            maintenance_partitions_expired: reg!(IntCounter::new("maintenance_partitions_expired_total", "Days removed by retention")),
            maintenance_errors: reg!(IntCounter::new("maintenance_errors_total", "Failed maintenance runs (retried at the next interval)")),
            maintenance_deferred: reg!(IntCounter::new(
                "maintenance_deferred_total",
                "Maintenance runs put off to a later flush because a streaming query was reading the files"
            )),
            audit_records: reg!(IntCounterVec::new(
                Opts::new("audit_records_total", "Audit records written and fsynced, by action (request, sql, denied)"),
                &["action"]
            )),
            audit_write_errors: reg!(IntCounter::new("audit_write_errors_total", "Audit batches that could not be written")),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for CloudMetrics {
    fn default() -> Self {
        Self::new()
    }
}

//! Prometheus metrics of the edge. Names follow `edubrain_edge_<subsystem>_<what>_<unit>`;
//! labels are bounded (event type, rejection rule, topic), never terminal or student ids.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct EdgeMetrics {
    registry: Registry,
    pub messages_received: IntCounter,
    pub received_bytes: IntCounter,
    pub events_accepted: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub events_clock_flagged: IntCounterVec,
    pub events_throttled: IntCounter,
    pub rollup_windows_emitted: IntCounter,
    pub rollup_late_events: IntCounter,
    pub rollup_open_sessions: IntGauge,
    pub kafka_delivered: IntCounterVec,
    pub kafka_delivery_errors: IntCounter,
    pub wal_bytes: IntGauge,
    pub wal_capacity_bytes: IntGauge,
    pub wal_unconfirmed_records: IntGauge,
    pub wal_full: IntGauge,
    pub wal_full_waits: IntCounter,
    pub wal_fsync_duration: Histogram,
    pub wal_commit_events: Histogram,
    pub message_events: Histogram,
    pub wal_replayed_records: IntCounter,
    pub wal_damaged_bytes: IntCounter,
    pub kafka_replays: IntCounter,
    pub terminal_acks_published: IntCounter,
    pub mqtt_connected: IntGauge,
    pub mqtt_subscribed: IntGauge,
    pub mqtt_subscriptions_refused: IntCounter,
    pub mqtt_connection_errors: IntCounter,
    pub mqtt_broker_disconnects: IntCounterVec,
    pub mqtt_broker_acl_denials: IntCounterVec,
    pub mqtt_broker_refusals_summarised: IntCounterVec,
    pub terminals_active: IntGauge,
    pub delivery_latency: Histogram,
}

impl EdgeMetrics {
    pub fn new(city: &str) -> Self {
        // The city is a constant label: one edge serves one city, so the label set stays bounded.
        let registry = Registry::new_custom(Some("edubrain_edge".into()), Some([("city".to_string(), city.to_string())].into()))
            .expect("valid registry");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let seconds = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let delivery_latency = histogram(
            "kafka_delivery_latency_seconds",
            "Time from MQTT receipt to Kafka delivery report (acks=all), for records shipped from this process's own WAL writes",
            seconds.clone(),
        );
        Self {
            messages_received: counter("mqtt_messages_received_total", "MQTT messages received from terminals"),
            received_bytes: counter("mqtt_received_bytes_total", "Payload bytes received from terminals"),
            events_accepted: counter_vec("events_accepted_total", "Valid, new events produced to Kafka", &["event_type"]),
            events_rejected: counter_vec("events_rejected_total", "Events sent to the dead-letter topic, by rule", &["rule"]),
            events_duplicate: counter("events_duplicate_total", "Resent or redelivered events dropped by the dedup window"),
            rollup_windows_emitted: counter(
                "rollup_windows_emitted_total",
                "Closed rollup windows (per classroom and per device) written for the rollups topic",
            ),
            rollup_late_events: counter(
                "rollup_late_events_total",
                "Accepted events whose rollup window had already closed (they are in the events topic, not in a rollup)",
            ),
            rollup_open_sessions: gauge("rollup_open_sessions", "Equipment sessions started and not yet ended, accruing in-use time"),
            events_throttled: counter(
                "events_throttled_total",
                "Events deferred because their terminal was over its rate limit (the terminal resends them)",
            ),
            events_clock_flagged: counter_vec(
                "events_clock_flagged_total",
                "Accepted events whose device clock was implausible (kept with both times), by flag",
                &["flag"],
            ),
            kafka_delivered: counter_vec("kafka_delivered_total", "Records confirmed by Kafka (acks=all)", &["topic"]),
            kafka_delivery_errors: counter("kafka_delivery_errors_total", "Failed deliveries (retried until they succeed)"),
            wal_bytes: gauge("wal_bytes", "Bytes of WAL segments on disk"),
            wal_capacity_bytes: gauge("wal_capacity_bytes", "WAL capacity; at this size the edge stops acknowledging"),
            wal_unconfirmed_records: gauge("wal_unconfirmed_records", "Records in the WAL not yet confirmed by Kafka"),
            wal_full: gauge("wal_full", "1 while the WAL is full and the edge has stopped acknowledging new events"),
            wal_full_waits: counter("wal_full_waits_total", "Times the edge stopped acknowledging because its WAL was full"),
            wal_fsync_duration: histogram("wal_fsync_duration_seconds", "Duration of one WAL group commit (write + fdatasync)", seconds),
            wal_commit_events: histogram(
                "wal_commit_events",
                "Events per WAL group commit",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0],
            ),
            message_events: histogram(
                "mqtt_message_events",
                "Events per MQTT message from terminals (a terminal with a backlog packs it as JSON Lines)",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            wal_replayed_records: counter("wal_replayed_records_total", "Unconfirmed WAL records found at start-up and shipped again"),
            wal_damaged_bytes: counter(
                "wal_damaged_bytes_total",
                "WAL bytes that failed their checksum at start-up (saved under damaged/)",
            ),
            kafka_replays: counter(
                "kafka_replays_total",
                "Times shipping restarted from the oldest unconfirmed WAL record after a delivery failure",
            ),
            terminal_acks_published: counter("terminal_acks_published_total", "Application-level acks published to terminals"),
            mqtt_connected: gauge("mqtt_connected", "1 while the edge's MQTT session is up"),
            mqtt_subscribed: gauge(
                "mqtt_subscribed",
                "1 once the broker acknowledged the city subscription (SUBACK) on the current connection",
            ),
            mqtt_subscriptions_refused: counter(
                "mqtt_subscriptions_refused_total",
                "Subscriptions of this edge the MQTT broker refused (SUBACK failure): its login lacks a stanza in the hub's ACL",
            ),
            mqtt_connection_errors: counter("mqtt_connection_errors_total", "MQTT connection errors (each followed by a reconnect)"),
            // Every label value from the start, so a rate() over a fresh edge is 0, not absent.
            mqtt_broker_disconnects: with_values(
                counter_vec(
                    "mqtt_broker_disconnects_total",
                    "Clients the MQTT broker refused or disconnected, by reason, read from its log (each also an audit record)",
                    &["reason"],
                ),
                crate::broker_log::DisconnectReason::ALL.map(|r| r.as_str()),
            ),
            mqtt_broker_acl_denials: with_values(
                counter_vec(
                    "mqtt_broker_acl_denials_total",
                    "Publishes and subscriptions the MQTT broker's ACL refused, by action, read from its log (each also an audit record)",
                    &["action"],
                ),
                crate::broker_log::AclAction::ALL.map(|a| a.as_str()),
            ),
            mqtt_broker_refusals_summarised: with_values(
                counter_vec(
                    "mqtt_broker_refusals_summarised_total",
                    "Broker refusals past refusal_audit.per_client in a window, by reason: counted above and audited in one summary record per client and window, not one by one",
                    &["reason"],
                ),
                crate::broker_log::all_reasons(),
            ),
            terminals_active: gauge(
                "terminals_active",
                "Terminals heard from (events or heartbeats) within terminal_active_secs; a sudden fall means classrooms lost their link",
            ),
            delivery_latency,
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

/// `c` with a series for each of `values` of its one label, at 0.
fn with_values<'a>(c: IntCounterVec, values: impl IntoIterator<Item = &'a str>) -> IntCounterVec {
    for v in values {
        c.with_label_values(&[v]);
    }
    c
}

/// The sum of a counter vector over all its label values.
pub fn total(c: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    c.collect().iter().flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value() as u64)).sum()
}

//! `edubrain-edge status`: what an operator at a city hub asks first, read from a running edge's
//! `/metrics`: is its MQTT session up, how many terminals it hears, how full its WAL is and how
//! much of it Kafka has not confirmed yet (the edge's lag), what it accepted, refused and
//! dropped. Pure: the exposition text in, a summary out; the HTTP call is in `main.rs`.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One sample of the Prometheus text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format (comments skipped; label values unescaped). A line that
/// is not a sample is an error naming it.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(bad("no value")),
        };
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(body) => parse_labels(body).map_err(bad)?,
            None => (BTreeMap::new(), rest),
        };
        let value = rest.split_whitespace().next().ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

/// `a="x",b="y"}` (after the `{`): the labels, and what follows the `}`.
fn parse_labels(body: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find("=\"").ok_or("label without a quoted value")?;
        let key = rest[..eq].to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((i, '"')) => break eq + 2 + i + 1,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        labels.insert(key, value);
        rest = &rest[end..];
    }
}

/// An edge's state as its operator reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeStatus {
    pub city: String,
    pub mqtt_connected: bool,
    pub mqtt_subscribed: bool,
    pub mqtt_reconnects: u64,
    /// Clients the broker refused or disconnected, by reason (only reasons seen).
    pub broker_refusals: BTreeMap<String, u64>,
    /// Publishes and subscriptions the hub's ACL refused, by action (only actions seen).
    pub acl_denials: BTreeMap<String, u64>,
    /// Of those refusals, how many are audited in summary records rather than one by one.
    pub refusals_summarised: u64,
    pub terminals_active: u64,
    pub wal_bytes: u64,
    pub wal_capacity_bytes: u64,
    pub wal_full: bool,
    /// Records Kafka has not confirmed yet: the edge's lag.
    pub unshipped_records: u64,
    pub received: u64,
    pub accepted: BTreeMap<String, u64>,
    pub rejected: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub throttled: u64,
    pub delivered: BTreeMap<String, u64>,
    pub delivery_errors: u64,
    pub replays: u64,
}

impl EdgeStatus {
    /// From an edge's samples (`edubrain_edge_*`).
    pub fn from_samples(samples: &[Sample]) -> Result<Self, String> {
        let mut s = EdgeStatus::default();
        let mut seen = false;
        for m in samples {
            let Some(name) = m.name.strip_prefix("edubrain_edge_") else { continue };
            seen = true;
            if let Some(city) = m.labels.get("city") {
                s.city = city.clone();
            }
            let n = m.value.max(0.0) as u64;
            let label = |k: &str| m.labels.get(k).cloned().unwrap_or_default();
            match name {
                "mqtt_connected" => s.mqtt_connected = m.value >= 1.0,
                "mqtt_subscribed" => s.mqtt_subscribed = m.value >= 1.0,
                "mqtt_connection_errors_total" => s.mqtt_reconnects = n,
                "mqtt_broker_disconnects_total" if n > 0 => *s.broker_refusals.entry(label("reason")).or_default() += n,
                "mqtt_broker_acl_denials_total" if n > 0 => *s.acl_denials.entry(label("action")).or_default() += n,
                "mqtt_broker_refusals_summarised_total" => s.refusals_summarised += n,
                "terminals_active" => s.terminals_active = n,
                "wal_bytes" => s.wal_bytes = n,
                "wal_capacity_bytes" => s.wal_capacity_bytes = n,
                "wal_full" => s.wal_full = m.value >= 1.0,
                "wal_unconfirmed_records" => s.unshipped_records = n,
                "mqtt_messages_received_total" => s.received = n,
                "events_accepted_total" if n > 0 => *s.accepted.entry(label("event_type")).or_default() += n,
                "events_rejected_total" => *s.rejected.entry(label("rule")).or_default() += n,
                "events_duplicate_total" => s.duplicates = n,
                "events_throttled_total" => s.throttled = n,
                "kafka_delivered_total" => *s.delivered.entry(label("topic")).or_default() += n,
                "kafka_delivery_errors_total" => s.delivery_errors = n,
                "kafka_replays_total" => s.replays = n,
                _ => {}
            }
        }
        if seen { Ok(s) } else { Err("no edubrain_edge_* metrics: is this an edge's /metrics?".into()) }
    }

    /// A few aligned lines for a terminal.
    pub fn render(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "NO" };
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() { "none".to_string() } else { m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ") }
        };
        let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let pct = if self.wal_capacity_bytes > 0 { 100.0 * self.wal_bytes as f64 / self.wal_capacity_bytes as f64 } else { 0.0 };
        let mut out = String::new();
        let _ = writeln!(out, "edge of {}", if self.city.is_empty() { "?" } else { &self.city });
        let _ = writeln!(
            out,
            "  mqtt        connected {}, subscribed {}, {} reconnects",
            yes_no(self.mqtt_connected),
            yes_no(self.mqtt_subscribed),
            self.mqtt_reconnects
        );
        let _ = writeln!(
            out,
            "  broker      {} clients refused or disconnected ({}); {} refused by the ACL ({}); on the audit topic, {}",
            total(&self.broker_refusals),
            list(&self.broker_refusals),
            total(&self.acl_denials),
            list(&self.acl_denials),
            match self.refusals_summarised {
                0 => "each as its own record".to_string(),
                n => format!("{n} of them in summary records (clients past refusal_audit.per_client)"),
            }
        );
        let _ = writeln!(out, "  terminals   {} active", self.terminals_active);
        let _ = writeln!(
            out,
            "  wal         {} of {} ({pct:.1}%){}; {} records not yet confirmed by Kafka",
            bytes(self.wal_bytes),
            bytes(self.wal_capacity_bytes),
            if self.wal_full { ", FULL: not acknowledging" } else { "" },
            self.unshipped_records
        );
        let _ = writeln!(out, "  received    {} messages", self.received);
        let _ = writeln!(out, "  accepted    {} ({})", total(&self.accepted), list(&self.accepted));
        let _ = writeln!(out, "  rejected    {} ({})", total(&self.rejected), list(&self.rejected));
        let _ = writeln!(out, "  dropped     {} duplicates; {} deferred by the rate limit", self.duplicates, self.throttled);
        let _ = writeln!(
            out,
            "  kafka       {} delivered ({}); {} delivery errors, {} replays from the WAL",
            total(&self.delivered),
            list(&self.delivered),
            self.delivery_errors,
            self.replays
        );
        out
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EdgeMetrics;

    #[test]
    fn a_real_edges_exposition_reads_back_as_its_status() {
        let m = EdgeMetrics::new("c01");
        m.mqtt_connected.set(1);
        m.mqtt_subscribed.set(1);
        m.terminals_active.set(412);
        m.wal_bytes.set(3 << 20);
        m.wal_capacity_bytes.set(1 << 30);
        m.wal_unconfirmed_records.set(3201);
        m.messages_received.inc_by(1010);
        m.events_accepted.with_label_values(&["heartbeat"]).inc_by(900);
        m.events_accepted.with_label_values(&["lesson_started"]).inc_by(100);
        m.events_rejected.with_label_values(&["utf8"]).inc();
        m.events_rejected.with_label_values(&["range"]).inc_by(2);
        m.events_duplicate.inc_by(7);
        m.kafka_delivered.with_label_values(&["edubrain.events.v1"]).inc_by(997);
        m.mqtt_broker_disconnects.with_label_values(&["not_authorised"]).inc_by(4);
        m.mqtt_broker_acl_denials.with_label_values(&["publish"]).inc_by(2);
        m.mqtt_broker_refusals_summarised.with_label_values(&["not_authorised"]).inc_by(1);
        let status = EdgeStatus::from_samples(&parse_exposition(&m.render()).unwrap()).unwrap();
        assert_eq!(status.city, "c01");
        assert!(status.mqtt_connected && status.mqtt_subscribed && !status.wal_full);
        assert_eq!((status.terminals_active, status.unshipped_records, status.duplicates), (412, 3201, 7));
        assert_eq!(status.accepted.values().sum::<u64>(), 1000);
        assert_eq!(status.rejected, BTreeMap::from([("range".into(), 2), ("utf8".into(), 1)]));
        let text = status.render();
        assert!(text.contains("3.0 MiB of 1.0 GiB (0.3%); 3201 records not yet confirmed by Kafka"), "{text}");
        assert!(text.contains("rejected    3 (range 2, utf8 1)"), "{text}");
        assert!(
            text.contains(
                "broker      4 clients refused or disconnected (not_authorised 4); 2 refused by the ACL (publish 2); on the audit topic, 1 of them in summary records"
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_unescaped_and_bad_lines_named() {
        let s = parse_exposition("# HELP x y\nx{a=\"q\\\"uote\",b=\"back\\\\slash\"} 2.5\ny 1e3\nz{le=\"+Inf\"} +Inf\n").unwrap();
        assert_eq!(s[0].labels["a"], "q\"uote");
        assert_eq!(s[0].labels["b"], "back\\slash");
        assert_eq!((s[0].value, s[1].value), (2.5, 1000.0));
        assert_eq!(s[2].value, f64::INFINITY);
        assert!(parse_exposition("x{a=\"1\" 2").unwrap_err().contains("line 1"));
        assert!(parse_exposition("x abc").unwrap_err().contains("not a number"));
        assert!(EdgeStatus::from_samples(&parse_exposition("up 1").unwrap()).unwrap_err().contains("edubrain_edge_"));
    }
}

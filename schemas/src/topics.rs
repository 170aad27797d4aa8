//! Topic scheme shared by terminals, edges and the cloud (documented in schemas/README.md).
//!
//! MQTT: `edubrain/v1/{city}/{school}/{classroom}/{terminal}/events`, QoS 1. The ids in the topic
//! are the publisher's identity; the edge checks the payload against them.
//! Kafka: one events topic keyed by classroom (a classroom's events stay in order), one
//! dead-letter topic keyed by city.

use crate::SchemaError;
use crate::event::Header;
use crate::validate::check_id;

pub const MQTT_PREFIX: &str = "edubrain/v1";
pub const KAFKA_EVENTS_TOPIC: &str = "edubrain.events.v1";
pub const KAFKA_DEADLETTER_TOPIC: &str = "edubrain.deadletter.v1";
/// Per-window rollups of each classroom and device (see the edge's `rollup` module).
pub const KAFKA_ROLLUPS_TOPIC: &str = "edubrain.rollups.v1";
/// Security audit records of the city hubs (the MQTT broker's refusals, as each edge reads them).
pub const KAFKA_AUDIT_TOPIC: &str = "edubrain.audit.v1";

/// The identity a terminal publishes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalTopic {
    pub city: String,
    pub school: String,
    pub classroom: String,
    pub terminal: String,
}

impl TerminalTopic {
    pub fn from_header(h: &Header) -> Self {
        Self { city: h.city.clone(), school: h.school.clone(), classroom: h.classroom.clone(), terminal: h.terminal.clone() }
    }

    /// The topic a terminal publishes its events on.
    pub fn events_topic(&self) -> String {
        format!("{MQTT_PREFIX}/{}/{}/{}/{}/events", self.city, self.school, self.classroom, self.terminal)
    }

    /// The topic the edge acknowledges this terminal's events on (see [`crate::ack`]).
    pub fn acks_topic(&self) -> String {
        format!("{MQTT_PREFIX}/{}/{}/{}/{}/acks", self.city, self.school, self.classroom, self.terminal)
    }

    /// Parses an events topic; errors say which segment is wrong.
    pub fn parse(topic: &str) -> Result<Self, SchemaError> {
        let bad = |message: String| SchemaError::Invalid { field: "mqtt_topic".into(), rule: "topic_scheme", message };
        let rest = topic
            .strip_prefix(MQTT_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| bad(format!("topic {topic:?} does not start with {MQTT_PREFIX}/")))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [city, school, classroom, terminal, "events"] = parts.as_slice() else {
            return Err(bad(format!("topic {topic:?} is not {MQTT_PREFIX}/city/school/classroom/terminal/events")));
        };
        for (field, v) in [("city", city), ("school", school), ("classroom", classroom), ("terminal", terminal)] {
            check_id(field, v).map_err(|e| bad(format!("topic segment {e}")))?;
        }
        Ok(Self { city: city.to_string(), school: school.to_string(), classroom: classroom.to_string(), terminal: terminal.to_string() })
    }

    /// Rejects an event whose header claims another identity than the topic it came on.
    pub fn check_matches(&self, h: &Header) -> Result<(), SchemaError> {
        for (field, topic_value, payload_value) in [
            ("city", &self.city, &h.city),
            ("school", &self.school, &h.school),
            ("classroom", &self.classroom, &h.classroom),
            ("terminal", &self.terminal, &h.terminal),
        ] {
            if topic_value != payload_value {
                return Err(SchemaError::Invalid {
                    field: field.into(),
                    rule: "identity_matches_topic",
                    message: format!("payload says {payload_value:?} but it was published on the topic of {topic_value:?}"),
                });
            }
        }
        Ok(())
    }
}

/// The subscription filter an edge uses for its city.
pub fn city_subscription(city: &str) -> String {
    format!("{MQTT_PREFIX}/{city}/+/+/+/events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_segments() {
        let t = TerminalTopic { city: "c01".into(), school: "c01-s001".into(), classroom: "r1".into(), terminal: "t1".into() };
        assert_eq!(TerminalTopic::parse(&t.events_topic()).unwrap(), t);
        let err = TerminalTopic::parse("edubrain/v1/c01/s/r/t").unwrap_err().to_string();
        assert!(err.contains("is not edubrain/v1/city"), "{err}");
        let err = TerminalTopic::parse("edubrain/v1/c01/s#/r/t/events").unwrap_err().to_string();
        assert!(err.contains("school"), "{err}");
    }
}

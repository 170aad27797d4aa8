//! The edge's pure core: what to do with one event of an MQTT message. No I/O; the clock is passed in.

use chrono::{DateTime, Utc};
use edubrain_schemas::dedup::{DedupWindow, Seen, fingerprint};
use edubrain_schemas::topics::TerminalTopic;
use edubrain_schemas::validate::ClockFlag;
use edubrain_schemas::{Event, SchemaError, ValidationPolicy, validate};

/// Why a message goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub field: String,
    /// Bounded rule name (a metric label).
    pub rule: &'static str,
    pub reason: String,
}

impl From<SchemaError> for Rejection {
    fn from(e: SchemaError) -> Self {
        Rejection { field: e.field().to_string(), rule: e.rule(), reason: e.to_string() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Valid and new: produce to the events topic, keyed by classroom. A wrong device clock
    /// is flagged, not rejected: the event still happened.
    Accept { event: Box<Event>, clock: Option<ClockFlag> },
    /// Seen before (resend or redelivery): acknowledge, do not produce again.
    Duplicate { event_id: uuid::Uuid },
    /// Produce the raw bytes to the dead-letter topic with the reason.
    Reject(Rejection),
}

/// Decides the fate of one event received on `topic` by the edge of `city`.
pub fn classify(
    city: &str,
    topic: &str,
    payload: &[u8],
    now: DateTime<Utc>,
    policy: &ValidationPolicy,
    dedup: &mut DedupWindow,
) -> Outcome {
    match TerminalTopic::parse(topic) {
        Ok(identity) => classify_from(city, &identity, payload, now, policy, dedup),
        Err(e) => Outcome::Reject(e.into()),
    }
}

/// [`classify`] for a sender whose topic is already parsed (the events of one message share it).
pub fn classify_from(
    city: &str,
    identity: &TerminalTopic,
    payload: &[u8],
    now: DateTime<Utc>,
    policy: &ValidationPolicy,
    dedup: &mut DedupWindow,
) -> Outcome {
    match check_from(city, identity, payload, now, policy) {
        Ok((event, clock)) => match dedup.observe(event.header.event_id.as_u128(), fingerprint(payload)) {
            Seen::New => Outcome::Accept { event: Box::new(event), clock },
            Seen::Duplicate => Outcome::Duplicate { event_id: event.header.event_id },
            Seen::Conflict => Outcome::Reject(Rejection {
                field: "event_id".into(),
                rule: "event_id_conflict",
                reason: format!(
                    "event_id {} was already accepted with different content; a resend must repeat the original bytes",
                    event.header.event_id
                ),
            }),
        },
        Err(r) => Outcome::Reject(r),
    }
}

/// The checks of [`classify`] without the dedup window (also what a dead-letter replay runs).
pub(crate) fn check(
    city: &str,
    topic: &str,
    payload: &[u8],
    now: DateTime<Utc>,
    policy: &ValidationPolicy,
) -> Result<(Event, Option<ClockFlag>), Rejection> {
    check_from(city, &TerminalTopic::parse(topic)?, payload, now, policy)
}

fn check_from(
    city: &str,
    identity: &TerminalTopic,
    payload: &[u8],
    now: DateTime<Utc>,
    policy: &ValidationPolicy,
) -> Result<(Event, Option<ClockFlag>), Rejection> {
    if identity.city != city {
        return Err(Rejection {
            field: "mqtt_topic".into(),
            rule: "edge_city",
            reason: format!("this edge serves city {city:?}, not {:?}", identity.city),
        });
    }
    let event = Event::from_json(payload)?;
    identity.check_matches(&event.header)?;
    let clock = validate(&event, now, policy)?;
    Ok((event, clock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use edubrain_schemas::event::{BandwidthSampled, EventBody};
    use edubrain_schemas::{Header, SCHEMA_VERSION};

    fn event(city: &str) -> Event {
        Event {
            header: Header {
                event_id: uuid::Uuid::from_u128(7),
                schema_version: SCHEMA_VERSION,
                city: city.into(),
                school: "s1".into(),
                classroom: "r1".into(),
                terminal: "t1".into(),
                event_time: Utc.with_ymd_and_hms(2026, 9, 7, 1, 0, 0).unwrap(),
            },
            body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 1.0, up_kbps: 1.0 }),
        }
    }

    fn run(city: &str, topic: &str, payload: &[u8], dedup: &mut DedupWindow) -> Outcome {
        classify(city, topic, payload, Utc.with_ymd_and_hms(2026, 9, 7, 2, 0, 0).unwrap(), &ValidationPolicy::default(), dedup)
    }

    const TOPIC: &str = "edubrain/v1/c01/s1/r1/t1/events";

    #[test]
    fn accepts_once_then_reports_duplicates() {
        let mut d = DedupWindow::new(10);
        let e = event("c01");
        assert!(matches!(run("c01", TOPIC, &e.to_json(), &mut d), Outcome::Accept { .. }));
        assert_eq!(run("c01", TOPIC, &e.to_json(), &mut d), Outcome::Duplicate { event_id: e.header.event_id });
    }

    #[test]
    fn refuses_other_cities_and_identity_mismatches() {
        let mut d = DedupWindow::new(10);
        let Outcome::Reject(r) = run("c02", TOPIC, &event("c01").to_json(), &mut d) else { panic!() };
        assert_eq!(r.rule, "edge_city");
        let Outcome::Reject(r) = run("c01", "edubrain/v1/c01/s1/r1/t9/events", &event("c01").to_json(), &mut d) else { panic!() };
        assert_eq!((r.rule, r.field.as_str()), ("identity_matches_topic", "terminal"));
        let Outcome::Reject(r) = run("c01", TOPIC, b"not json", &mut d) else { panic!() };
        assert_eq!(r.rule, "json_syntax");
        assert!(d.is_empty(), "rejected events never enter the dedup window");
    }

    #[test]
    fn the_same_id_with_other_content_is_dead_lettered_not_dropped() {
        let mut d = DedupWindow::new(10);
        let first = event("c01");
        let mut second = first.clone();
        second.body = EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 2.0, up_kbps: 1.0 });
        assert!(matches!(run("c01", TOPIC, &first.to_json(), &mut d), Outcome::Accept { clock: None, .. }));
        let Outcome::Reject(r) = run("c01", TOPIC, &second.to_json(), &mut d) else { panic!() };
        assert_eq!((r.field.as_str(), r.rule), ("event_id", "event_id_conflict"));
        assert_eq!(run("c01", TOPIC, &first.to_json(), &mut d), Outcome::Duplicate { event_id: first.header.event_id });
    }

    #[test]
    fn wrong_device_clocks_are_accepted_and_flagged() {
        let mut d = DedupWindow::new(10);
        let mut e = event("c01");
        e.header.event_time = Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 7).unwrap();
        let Outcome::Accept { clock, .. } = run("c01", TOPIC, &e.to_json(), &mut d) else { panic!() };
        assert_eq!(clock, Some(ClockFlag::DeviceClockUnset));
        e.header.event_id = uuid::Uuid::from_u128(8);
        e.header.event_time = Utc.with_ymd_and_hms(2026, 9, 8, 2, 0, 1).unwrap(); // a day and a second ahead
        let Outcome::Accept { clock, .. } = run("c01", TOPIC, &e.to_json(), &mut d) else { panic!() };
        assert_eq!(clock, Some(ClockFlag::DeviceClockAhead));
    }
}

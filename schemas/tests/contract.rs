//! The wire contract: round trips, and every kind of bad input rejected with its field and rule.

use chrono::{DateTime, Duration, TimeZone, Utc};
use edubrain_schemas::event::*;
use edubrain_schemas::json_schema;
use edubrain_schemas::validate::ClockFlag;
use edubrain_schemas::{SchemaError, ValidationPolicy, validate};
use uuid::Uuid;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 8, 2, 0, 0).unwrap()
}

fn header() -> Header {
    Header {
        event_id: Uuid::from_u128(0x1234),
        schema_version: 1,
        city: "c01".into(),
        school: "c01-s001".into(),
        classroom: "c01-s001-r01".into(),
        terminal: "t-c01-s001-r01".into(),
        event_time: Utc.with_ymd_and_hms(2026, 9, 8, 0, 5, 0).unwrap(),
    }
}

fn lesson() -> Event {
    Event {
        header: header(),
        body: EventBody::LessonStarted(LessonStarted {
            lesson_id: "l1".into(),
            subject: "math".into(),
            grade: 3,
            teacher_id: "c01-s001-t01".into(),
            dual_teacher: true,
            receiving_schools: vec!["c01-s007".into()],
            scheduled_minutes: 40,
        }),
    }
}

/// Re-encodes `event` with `edit` applied to its JSON, then decodes and validates.
fn check_edited(event: &Event, edit: impl FnOnce(&mut serde_json::Value)) -> Result<Event, SchemaError> {
    let mut v: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
    edit(&mut v);
    let e = Event::from_json(&serde_json::to_vec(&v).unwrap())?;
    validate(&e, now(), &ValidationPolicy::default())?;
    Ok(e)
}

fn assert_rejected(r: Result<Event, SchemaError>, field: &str, rule: &str) {
    let err = r.expect_err("must be rejected");
    assert_eq!((err.field(), err.rule()), (field, rule), "{err}");
}

#[test]
fn wire_format_round_trips_and_has_the_documented_shape() {
    let e = lesson();
    let json: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
    assert_eq!(json["type"], "lesson_started");
    assert_eq!(json["payload"]["receiving_schools"][0], "c01-s007");
    assert_eq!(json["event_id"], "00000000-0000-0000-0000-000000001234");
    assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
}

#[test]
fn event_time_with_an_offset_is_stored_as_utc() {
    let e = check_edited(&lesson(), |v| v["event_time"] = "2026-09-08T08:05:00+08:00".into()).unwrap();
    assert_eq!(e.header.event_time, header().event_time);
}

#[test]
fn every_type_has_a_unique_tag_and_an_xapi_verb() {
    let mut tags: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), EventType::ALL.len());
    for t in EventType::ALL {
        assert_eq!(EventType::parse(t.as_str()), Some(*t));
        assert!(t.xapi_verb().starts_with("http"), "{t:?}");
    }
}

#[test]
fn structural_errors_name_the_field() {
    assert_rejected(check_edited(&lesson(), |v| v["payload"]["student_name"] = "张三".into()), "payload.student_name", "no_unknown_fields");
    assert_rejected(
        check_edited(&lesson(), |v| {
            v["payload"].as_object_mut().unwrap().remove("subject");
        }),
        "payload.subject",
        "required",
    );
    assert_rejected(check_edited(&lesson(), |v| v["payload"]["grade"] = "three".into()), "payload", "type");
    assert_rejected(check_edited(&lesson(), |v| v["type"] = "lesson_paused".into()), "type", "known_type");
    assert_rejected(check_edited(&lesson(), |v| v["event_id"] = "42".into()), "event_id", "uuid");
    assert_rejected(check_edited(&lesson(), |v| v["event_time"] = "yesterday".into()), "event_time", "rfc3339");
    assert_rejected(check_edited(&lesson(), |v| v["schema_version"] = 2.into()), "schema_version", "supported_version");
    assert_rejected(
        check_edited(&lesson(), |v| {
            v.as_object_mut().unwrap().remove("school");
        }),
        "school",
        "required",
    );
    assert_rejected(check_edited(&lesson(), |v| v["extra"] = 1.into()), "extra", "no_unknown_fields");
    // Found by fuzzing: keys that are empty or hold backticks are still named.
    assert_rejected(check_edited(&lesson(), |v| v[""] = 1.into()), "\"\"", "no_unknown_fields");
    assert_rejected(check_edited(&lesson(), |v| v["a`, b"] = 1.into()), "a`, b", "no_unknown_fields");
    assert_rejected(check_edited(&lesson(), |v| v["payload"]["x`y"] = 1.into()), "payload.x`y", "no_unknown_fields");
}

#[test]
fn bytes_that_are_not_json_or_not_utf8_are_rejected() {
    let err = Event::from_json(b"{\"event_id\": ").unwrap_err();
    assert_eq!(err.rule(), "json_syntax", "{err}");
    let err = Event::from_json(&[0xff, 0xfe, b'{']).unwrap_err();
    assert_eq!(err.rule(), "utf8", "{err}");
}

#[test]
fn implausible_device_clocks_are_kept_and_flagged_not_rejected() {
    let policy = ValidationPolicy::default();
    let flag_of = |time: String| {
        let e = check_edited(&lesson(), |v| v["event_time"] = time.into()).expect("a wrong clock does not make an event invalid");
        validate(&e, now(), &policy).unwrap()
    };
    assert_eq!(flag_of("1970-01-01T00:00:00Z".into()), Some(ClockFlag::DeviceClockUnset));
    assert_eq!(flag_of((now() + Duration::hours(25)).to_rfc3339()), Some(ClockFlag::DeviceClockAhead));
    assert_eq!(flag_of((now() + Duration::hours(23)).to_rfc3339()), None);
    assert_eq!(flag_of(header().event_time.to_rfc3339()), None);
    for f in [ClockFlag::DeviceClockUnset, ClockFlag::DeviceClockAhead] {
        assert_eq!(ClockFlag::parse(f.as_str()), Some(f));
    }
}

#[test]
fn rule_violations_name_the_field_and_rule() {
    assert_rejected(
        check_edited(&lesson(), |v| v["payload"]["receiving_schools"] = serde_json::json!([])),
        "payload.receiving_schools",
        "dual_teacher_receivers",
    );
    assert_rejected(check_edited(&lesson(), |v| v["school"] = "c01/s001".into()), "school", "id_format");

    let attendance = Event {
        header: header(),
        body: EventBody::AttendanceRecorded(AttendanceRecorded { lesson_id: "l1".into(), present: 41, enrolled: 40 }),
    };
    assert_rejected(check_edited(&attendance, |_| {}), "payload.present", "present_le_enrolled");

    let rated = Event {
        header: header(),
        body: EventBody::ResourceRated(ResourceRated {
            resource_id: "r1".into(),
            resource_kind: ResourceKind::MicroLesson,
            subject: "math".into(),
            owner_school: "c01-s002".into(),
            teacher_id: "t".into(),
            rating: 6.0,
        }),
    };
    assert_rejected(check_edited(&rated, |_| {}), "payload.rating", "range");

    let assessment = Event {
        header: header(),
        body: EventBody::AssessmentRecorded(AssessmentRecorded {
            assessment_id: "a1".into(),
            subject: "math".into(),
            grade: 3,
            student_pseudonym: "c01-s001-stu-0042".into(),
            score: 80.0,
            max_score: 100.0,
        }),
    };
    assert_rejected(check_edited(&assessment, |_| {}), "payload.student_pseudonym", "pseudonymised");
}

#[test]
fn committed_json_schemas_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    for (name, text) in json_schema::documents() {
        let path = dir.join(name);
        if std::env::var_os("EDUBRAIN_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} drifted from the Rust types; regenerate with EDUBRAIN_BLESS=1 cargo test -p edubrain-schemas",
            path.display()
        );
    }
}

//! Property tests of the wire contract: every valid event round-trips and validates, and every
//! kind of damage to a valid event is rejected with the field and rule that name the damage.
//! (Fuzzing in `fuzz/` looks for panics on arbitrary bytes; this checks the *reasons*.)

use chrono::{DateTime, TimeZone, Utc};
use edubrain_schemas::event::EventType;
use edubrain_schemas::{Event, ValidationPolicy, validate};
use proptest::prelude::*;
use serde_json::{Value, json};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()
}

const PSEUDONYM: &str = "5f0c6e8e3b1d4a7c9e2f0a1b3c5d7e9f11223344556677889900aabbccddeeff";
const ENVELOPE: [&str; 9] = ["event_id", "schema_version", "type", "city", "school", "classroom", "terminal", "event_time", "payload"];
const ID_FIELDS: [&str; 4] = ["city", "school", "classroom", "terminal"];

/// One valid payload per event type; numbers inside their ranges.
fn payload(kind: EventType, x: f64) -> Value {
    use EventType::*;
    let res = json!({"resource_id":"res-1","resource_kind":"micro_lesson","subject":"math","owner_school":"c01-s002","teacher_id":"t-9"});
    let booking = json!({"booking_id":"b1","facility_id":"lab-1","facility_kind":"lab","booking_school":"c01-s003"});
    match kind {
        DeviceHeartbeat => json!({"device_id":"d1","device_kind":"projector","uptime_s": (x * 1e6) as u64}),
        EquipmentSessionStarted => json!({"device_id":"d1","equipment":"vr","session_id":"s1"}),
        EquipmentSessionEnded => json!({"device_id":"d1","equipment":"vr","session_id":"s1","duration_s": x * 86_400.0}),
        FacilityBookingCreated => {
            let mut b = booking;
            b["slot_start"] = "2026-11-23T08:00:00Z".into();
            b["slot_end"] = "2026-11-23T09:00:00Z".into();
            b
        }
        FacilityBookingCheckedIn | FacilityBookingNoShow => booking,
        LiveStreamStarted => json!({"stream_id":"st1","lesson_id":"l1"}),
        LiveStreamStopped => json!({"stream_id":"st1","duration_s": x * 3600.0}),
        LiveStreamInterrupted => json!({"stream_id":"st1","outage_s": x * 60.0}),
        LessonStarted => json!({"lesson_id":"l1","subject":"math","grade": 1 + (x * 8.0) as u8,"teacher_id":"t1",
            "dual_teacher":true,"receiving_schools":["c01-s007"],"scheduled_minutes":40}),
        LessonEnded => json!({"lesson_id":"l1","duration_s": x * 2400.0}),
        AttendanceRecorded => json!({"lesson_id":"l1","present": (x * 40.0) as u32,"enrolled":40}),
        ResourceViewed | ResourceDownloaded => res,
        ResourceUploaded => {
            let mut r = res;
            r["passed_review"] = true.into();
            r
        }
        ResourceRated => {
            let mut r = res;
            r["rating"] = (1.0 + 4.0 * x).into();
            r
        }
        ResearchActivityParticipated => json!({"activity_id":"a1","zone":"z1","teacher_id":"t1","role":"speaker","cross_discipline":false}),
        ElectiveEnrolled => json!({"course_id":"co1","provider_school":"c01-s004","student_pseudonym":PSEUDONYM}),
        AssessmentRecorded => json!({"assessment_id":"as1","subject":"math","grade":5,"student_pseudonym":PSEUDONYM,
            "score": 100.0 * x,"max_score":100.0}),
        BandwidthSampled => json!({"down_kbps": x * 1e5,"up_kbps": x * 1e4}),
    }
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

prop_compose! {
    fn valid_event()(
        kind in prop::sample::select(EventType::ALL),
        x in 0.0f64..=1.0,
        event_id in any::<u128>(),
        ids in [id(), id(), id(), id()],
        secs in Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap().timestamp()..=now().timestamp(),
        offset_h in -12i32..=14,
    ) -> Value {
        let offset = chrono::FixedOffset::east_opt(offset_h * 3600).unwrap();
        let time = Utc.timestamp_opt(secs, 0).unwrap().with_timezone(&offset).to_rfc3339();
        json!({
            "event_id": uuid::Uuid::from_u128(event_id).to_string(), "schema_version": 1, "type": kind.as_str(),
            "city": ids[0], "school": ids[1], "classroom": ids[2], "terminal": ids[3], "event_time": time,
            "payload": payload(kind, x),
        })
    }
}

/// One kind of damage, with the field and rule its rejection must name.
#[derive(Debug, Clone)]
enum Mutation {
    DropEnvelopeField(prop::sample::Index),
    UnknownEnvelopeField(String),
    UnknownPayloadField(String),
    DropPayloadField(prop::sample::Index),
    BadId(prop::sample::Index, String),
    BadEventId(String),
    BadEventTime(String),
    BadVersion(u32),
    UnknownType(String),
    WrongPayloadType(prop::sample::Index),
    InvalidUtf8(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn bad_id() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[A-Za-z0-9]{65,80}", "[A-Za-z0-9]{0,10}[/#+ 中\u{0}\"'][A-Za-z0-9]{0,10}",]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::DropEnvelopeField),
        "[a-z_]{1,20}".prop_map(Mutation::UnknownEnvelopeField),
        "[a-z_]{1,20}".prop_map(Mutation::UnknownPayloadField),
        any::<prop::sample::Index>().prop_map(Mutation::DropPayloadField),
        (any::<prop::sample::Index>(), bad_id()).prop_map(|(i, s)| Mutation::BadId(i, s)),
        "[g-z ]{0,40}".prop_map(Mutation::BadEventId),
        "[a-z ]{0,20}".prop_map(Mutation::BadEventTime),
        prop_oneof![Just(0u32), 2u32..].prop_map(Mutation::BadVersion),
        "[a-z_]{1,30}".prop_map(Mutation::UnknownType),
        any::<prop::sample::Index>().prop_map(Mutation::WrongPayloadType),
        (any::<prop::sample::Index>(), 0x80u8..=0xff).prop_map(|(i, b)| Mutation::InvalidUtf8(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

/// Applies `m` to `event`; returns the bytes and the expected (field, rule), or `None` when the
/// mutation happens not to damage this event (an "unknown" name that is in fact known).
fn apply(mut event: Value, m: &Mutation) -> Option<(Vec<u8>, String, &'static str)> {
    let payload_keys: Vec<String> = event["payload"].as_object().unwrap().keys().cloned().collect();
    let (field, rule) = match m {
        Mutation::DropEnvelopeField(i) => {
            let name = *i.get(&ENVELOPE);
            event.as_object_mut().unwrap().remove(name);
            (name.to_string(), "required")
        }
        Mutation::UnknownEnvelopeField(name) => {
            if ENVELOPE.contains(&name.as_str()) {
                return None;
            }
            event[name.as_str()] = 1.into();
            (name.clone(), "no_unknown_fields")
        }
        Mutation::UnknownPayloadField(name) => {
            if payload_keys.contains(name) || name == "receiving_schools" {
                return None;
            }
            event["payload"][name.as_str()] = "张三".into();
            (format!("payload.{name}"), "no_unknown_fields")
        }
        Mutation::DropPayloadField(i) => {
            // receiving_schools defaults to empty, so dropping it is no damage to the shape.
            let required: Vec<&String> = payload_keys.iter().filter(|k| *k != "receiving_schools").collect();
            if required.is_empty() {
                return None;
            }
            let name = i.get(&required).to_string();
            event["payload"].as_object_mut().unwrap().remove(&name);
            (format!("payload.{name}"), "required")
        }
        Mutation::BadId(i, bad) => {
            let name = *i.get(&ID_FIELDS);
            event[name] = bad.clone().into();
            (name.to_string(), "id_format")
        }
        Mutation::BadEventId(s) => {
            event["event_id"] = s.clone().into();
            ("event_id".into(), "uuid")
        }
        Mutation::BadEventTime(s) => {
            event["event_time"] = s.clone().into();
            ("event_time".into(), "rfc3339")
        }
        Mutation::BadVersion(v) => {
            event["schema_version"] = (*v).into();
            ("schema_version".into(), "supported_version")
        }
        Mutation::UnknownType(t) => {
            if EventType::parse(t).is_some() {
                return None;
            }
            event["type"] = t.clone().into();
            ("type".into(), "known_type")
        }
        Mutation::WrongPayloadType(i) => {
            // A string where every payload field holds a number, a bool, a list or an enum
            // of other strings; ids and subjects are free strings, so pick a non-string field.
            let typed: Vec<&String> = payload_keys.iter().filter(|k| !event["payload"][k.as_str()].is_string()).collect();
            if typed.is_empty() {
                return None;
            }
            let name = i.get(&typed).to_string();
            event["payload"][name.as_str()] = json!({"nested": [1, 2]});
            ("payload".into(), "type")
        }
        Mutation::InvalidUtf8(i, b) => {
            let mut bytes = serde_json::to_vec(&event).unwrap();
            let at = i.index(bytes.len());
            bytes.insert(at, *b);
            return Some((bytes, "$".into(), "utf8"));
        }
        Mutation::Truncate(i) => {
            let mut bytes = serde_json::to_vec(&event).unwrap();
            bytes.truncate(i.index(bytes.len()));
            return Some((bytes, "$".into(), "json_syntax"));
        }
    };
    Some((serde_json::to_vec(&event).unwrap(), field, rule))
}

fn check(bytes: &[u8]) -> Result<Event, edubrain_schemas::SchemaError> {
    let e = Event::from_json(bytes)?;
    validate(&e, now(), &ValidationPolicy::default())?;
    Ok(e)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn valid_events_validate_and_round_trip(event in valid_event()) {
        let bytes = serde_json::to_vec(&event).unwrap();
        let decoded = check(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\n{event}")))?;
        prop_assert_eq!(Event::from_json(&decoded.to_json()).unwrap(), decoded.clone());
        prop_assert_eq!(decoded.header.event_id.to_string(), event["event_id"].as_str().unwrap());
        // Re-encoding normalises the time to UTC and nothing else.
        let mut again: Value = serde_json::from_slice(&decoded.to_json()).unwrap();
        again["event_time"] = event["event_time"].clone();
        prop_assert_eq!(again, event);
    }

    #[test]
    fn each_mutation_is_rejected_with_its_field_and_rule(event in valid_event(), m in mutation()) {
        let Some((bytes, field, rule)) = apply(event, &m) else { return Ok(()) };
        let err = match check(&bytes) {
            Ok(e) => return Err(TestCaseError::fail(format!("{m:?} was accepted: {e:?}"))),
            Err(err) => err,
        };
        prop_assert_eq!((err.field(), err.rule()), (field.as_str(), rule), "{:?}: {}", m, err);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 10_000, 1_000_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for bytes in [
            deep.clone(),
            format!(r#"{{"event_id":{deep}}}"#),
            format!(
                r#"{{"event_id":"00000000-0000-0000-0000-000000000001","schema_version":1,"type":"bandwidth_sampled","city":"c","school":"s","classroom":"r","terminal":"t","event_time":"2026-11-22T00:00:00Z","payload":{deep}}}"#
            ),
        ] {
            let err = Event::from_json(bytes.as_bytes()).expect_err("nested arrays are not an event");
            assert!(["json_syntax", "type"].contains(&err.rule()), "depth {depth}: {err}");
        }
    }
}

#[test]
fn oversized_strings_are_rejected_by_rule_not_by_allocation_failure() {
    let mut event = json!({"event_id": "00000000-0000-0000-0000-000000000001", "schema_version": 1, "type": "lesson_ended",
        "city": "c", "school": "s", "classroom": "r", "terminal": "t", "event_time": "2026-11-22T00:00:00Z",
        "payload": payload(EventType::LessonEnded, 0.5)});
    event["payload"]["lesson_id"] = "x".repeat(1 << 20).into();
    let err = check(&serde_json::to_vec(&event).unwrap()).unwrap_err();
    assert_eq!((err.field(), err.rule()), ("payload.lesson_id", "id_format"));
}

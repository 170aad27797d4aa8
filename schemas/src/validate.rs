//! Validation rules beyond decoding: identifier formats, value ranges and the privacy rules
//! (student ids must arrive pseudonymised), plus the clock check that flags, rather than
//! rejects, events from devices whose clock is wrong. Pure: the caller passes `now`.

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::SchemaError;
use crate::event::{Event, EventBody};

/// Limits that depend on deployment rather than on the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationPolicy {
    /// Events whose device clock is further ahead of the receiver's clock are flagged.
    pub max_clock_ahead: Duration,
    /// Events before this instant are flagged (a device whose clock was never set reports 1970).
    pub oldest_event_time: DateTime<Utc>,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self { max_clock_ahead: Duration::hours(24), oldest_event_time: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap() }
    }
}

/// The longest session, lesson or stream a classroom can report.
const MAX_DURATION_S: f64 = 24.0 * 3600.0;
const MAX_ID_LEN: usize = 64;

fn reject(field: &str, rule: &'static str, message: String) -> SchemaError {
    SchemaError::Invalid { field: field.to_string(), rule, message }
}

/// An id is 1-64 characters of `[A-Za-z0-9_.-]`: safe in MQTT topics, file paths and SQL.
pub fn check_id(field: &str, value: &str) -> Result<(), SchemaError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok { Ok(()) } else { Err(reject(field, "id_format", format!("{value:?} is not 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-]"))) }
}

fn check_range(field: &str, value: f64, min: f64, max: f64) -> Result<(), SchemaError> {
    if value.is_finite() && value >= min && value <= max {
        Ok(())
    } else {
        Err(reject(field, "range", format!("{value} is outside [{min}, {max}]")))
    }
}

fn check_pseudonym(field: &str, value: &str) -> Result<(), SchemaError> {
    if value.len() == 64 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(reject(field, "pseudonymised", "must be the 64-hex-digit HMAC pseudonym of the student id, never the raw id".into()))
    }
}

/// What is wrong with a device's clock, judged against the receiver's clock.
///
/// A wrong clock does not make an event invalid: the lesson still happened. Such an event is
/// kept with both times (the device's `event_time` and the edge's `received_time`) and this
/// flag, and the warehouse files it under the day it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockFlag {
    /// Before [`ValidationPolicy::oldest_event_time`]: the clock was never set (1970) or reset.
    DeviceClockUnset,
    /// More than [`ValidationPolicy::max_clock_ahead`] ahead of the receiver.
    DeviceClockAhead,
}

impl ClockFlag {
    /// The flag as stored in the warehouse and sent in the `edubrain.clock_flag` Kafka header.
    pub fn as_str(self) -> &'static str {
        match self {
            ClockFlag::DeviceClockUnset => "device_clock_unset",
            ClockFlag::DeviceClockAhead => "device_clock_ahead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ClockFlag::DeviceClockUnset, ClockFlag::DeviceClockAhead].into_iter().find(|f| f.as_str() == s)
    }
}

/// Flags an implausible device clock; `None` when `event_time` is plausible at `now`.
pub fn clock_flag(event_time: DateTime<Utc>, now: DateTime<Utc>, policy: &ValidationPolicy) -> Option<ClockFlag> {
    if event_time < policy.oldest_event_time {
        Some(ClockFlag::DeviceClockUnset)
    } else if event_time > now + policy.max_clock_ahead {
        Some(ClockFlag::DeviceClockAhead)
    } else {
        None
    }
}

/// Checks every rule of the contract on a decoded event and flags an implausible clock.
pub fn validate(event: &Event, now: DateTime<Utc>, policy: &ValidationPolicy) -> Result<Option<ClockFlag>, SchemaError> {
    let h = &event.header;
    check_id("city", &h.city)?;
    check_id("school", &h.school)?;
    check_id("classroom", &h.classroom)?;
    check_id("terminal", &h.terminal)?;
    validate_body(&event.body)?;
    Ok(clock_flag(h.event_time, now, policy))
}

fn validate_body(body: &EventBody) -> Result<(), SchemaError> {
    use EventBody::*;
    match body {
        DeviceHeartbeat(p) => check_id("payload.device_id", &p.device_id),
        EquipmentSessionStarted(p) => {
            check_id("payload.device_id", &p.device_id)?;
            check_id("payload.session_id", &p.session_id)
        }
        EquipmentSessionEnded(p) => {
            check_id("payload.device_id", &p.device_id)?;
            check_id("payload.session_id", &p.session_id)?;
            check_range("payload.duration_s", p.duration_s, 0.0, MAX_DURATION_S)
        }
        FacilityBookingCreated(p) => {
            check_id("payload.booking_id", &p.booking_id)?;
            check_id("payload.facility_id", &p.facility_id)?;
            check_id("payload.booking_school", &p.booking_school)?;
            if p.slot_end <= p.slot_start {
                return Err(reject(
                    "payload.slot_end",
                    "after_start",
                    format!("slot_end {} is not after slot_start {}", p.slot_end, p.slot_start),
                ));
            }
            Ok(())
        }
        FacilityBookingCheckedIn(p) | FacilityBookingNoShow(p) => {
            check_id("payload.booking_id", &p.booking_id)?;
            check_id("payload.facility_id", &p.facility_id)?;
            check_id("payload.booking_school", &p.booking_school)
        }
        LiveStreamStarted(p) => {
            check_id("payload.stream_id", &p.stream_id)?;
            check_id("payload.lesson_id", &p.lesson_id)
        }
        LiveStreamStopped(p) => {
            check_id("payload.stream_id", &p.stream_id)?;
            check_range("payload.duration_s", p.duration_s, 0.0, MAX_DURATION_S)
        }
        LiveStreamInterrupted(p) => {
            check_id("payload.stream_id", &p.stream_id)?;
            check_range("payload.outage_s", p.outage_s, 0.0, MAX_DURATION_S)
        }
        LessonStarted(p) => {
            check_id("payload.lesson_id", &p.lesson_id)?;
            check_id("payload.subject", &p.subject)?;
            check_id("payload.teacher_id", &p.teacher_id)?;
            check_range("payload.grade", f64::from(p.grade), 1.0, 9.0)?;
            check_range("payload.scheduled_minutes", f64::from(p.scheduled_minutes), 1.0, 240.0)?;
            match (p.dual_teacher, p.receiving_schools.is_empty()) {
                (true, true) => Err(reject(
                    "payload.receiving_schools",
                    "dual_teacher_receivers",
                    "a dual-teacher lesson must name at least one receiving school".into(),
                )),
                (false, false) => Err(reject(
                    "payload.receiving_schools",
                    "dual_teacher_receivers",
                    "only a dual-teacher lesson has receiving schools".into(),
                )),
                _ => p.receiving_schools.iter().try_for_each(|s| check_id("payload.receiving_schools", s)),
            }
        }
        LessonEnded(p) => {
            check_id("payload.lesson_id", &p.lesson_id)?;
            check_range("payload.duration_s", p.duration_s, 0.0, MAX_DURATION_S)
        }
        AttendanceRecorded(p) => {
            check_id("payload.lesson_id", &p.lesson_id)?;
            check_range("payload.enrolled", f64::from(p.enrolled), 1.0, 500.0)?;
            if p.present > p.enrolled {
                return Err(reject(
                    "payload.present",
                    "present_le_enrolled",
                    format!("present {} exceeds enrolled {}", p.present, p.enrolled),
                ));
            }
            Ok(())
        }
        ResourceViewed(p) | ResourceDownloaded(p) => {
            check_id("payload.resource_id", &p.resource_id)?;
            check_id("payload.subject", &p.subject)?;
            check_id("payload.owner_school", &p.owner_school)?;
            check_id("payload.teacher_id", &p.teacher_id)
        }
        ResourceUploaded(p) => {
            check_id("payload.resource_id", &p.resource_id)?;
            check_id("payload.subject", &p.subject)?;
            check_id("payload.owner_school", &p.owner_school)?;
            check_id("payload.teacher_id", &p.teacher_id)
        }
        ResourceRated(p) => {
            check_id("payload.resource_id", &p.resource_id)?;
            check_id("payload.subject", &p.subject)?;
            check_id("payload.owner_school", &p.owner_school)?;
            check_id("payload.teacher_id", &p.teacher_id)?;
            check_range("payload.rating", p.rating, 1.0, 5.0)
        }
        ResearchActivityParticipated(p) => {
            check_id("payload.activity_id", &p.activity_id)?;
            check_id("payload.zone", &p.zone)?;
            check_id("payload.teacher_id", &p.teacher_id)
        }
        ElectiveEnrolled(p) => {
            check_id("payload.course_id", &p.course_id)?;
            check_id("payload.provider_school", &p.provider_school)?;
            check_pseudonym("payload.student_pseudonym", &p.student_pseudonym)
        }
        AssessmentRecorded(p) => {
            check_id("payload.assessment_id", &p.assessment_id)?;
            check_id("payload.subject", &p.subject)?;
            check_range("payload.grade", f64::from(p.grade), 1.0, 9.0)?;
            check_pseudonym("payload.student_pseudonym", &p.student_pseudonym)?;
            check_range("payload.max_score", p.max_score, f64::MIN_POSITIVE, 1000.0)?;
            check_range("payload.score", p.score, 0.0, p.max_score)
        }
        BandwidthSampled(p) => {
            check_range("payload.down_kbps", p.down_kbps, 0.0, 10_000_000.0)?;
            check_range("payload.up_kbps", p.up_kbps, 0.0, 10_000_000.0)
        }
    }
}

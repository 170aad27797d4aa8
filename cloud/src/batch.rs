//! Events to Arrow: the pure part of ingest. One [`RecordBatch`] per (local date, city)
//! partition, in the column order of [`event_file_schema`], and beside it the partition's
//! classroom presence ([`presence_file_schema`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, TimestampMillisecondBuilder, UInt8Builder,
    UInt32Builder, UInt64Builder,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use edubrain_schemas::validate::ClockFlag;
use edubrain_schemas::warehouse::{event_file_schema, presence_file_schema};
use edubrain_schemas::{Event, EventBody, EventType};

/// An event as the warehouse stores it: what the terminal said plus when the edge got it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event: Event,
    pub received_time: DateTime<Utc>,
    /// Set when the device clock was implausible; the event is then filed by `received_time`.
    pub clock_flag: Option<ClockFlag>,
}

impl StoredEvent {
    /// The time the warehouse files the event under: the device's clock when plausible, else
    /// the edge's receipt time (a 1970 clock must not put a lesson into 1970's partition).
    pub fn effective_time(&self) -> DateTime<Utc> {
        match self.clock_flag {
            None => self.event.header.event_time,
            Some(_) => self.received_time,
        }
    }
}

/// Hive partition of an event: local school day and city.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    pub date: String,
    pub city: String,
}

impl PartitionKey {
    pub fn of(e: &StoredEvent, offset: FixedOffset) -> Self {
        Self::new(local_date(e, offset), &e.event.header.city)
    }

    fn new(date: NaiveDate, city: &str) -> Self {
        Self { date: date.format("%Y-%m-%d").to_string(), city: city.to_string() }
    }

    /// `date=…/city=…`, relative to the table root.
    pub fn dir(&self) -> String {
        format!("date={}/city={}", self.date, self.city)
    }
}

/// The local school day an event is filed under.
fn local_date(e: &StoredEvent, offset: FixedOffset) -> NaiveDate {
    e.effective_time().with_timezone(&offset).date_naive()
}

/// Groups events by partition, keeping arrival order inside each.
///
/// Events are grouped by reference, under a key of the day and a borrowed city; the key's
/// strings are made once per partition. Formatting a date string per event and moving each
/// event into its partition's vector took a fifth of the ingest's CPU (`perf`, warehouse bench).
pub fn partition(events: &[StoredEvent], offset: FixedOffset) -> BTreeMap<PartitionKey, Vec<&StoredEvent>> {
    let mut groups: BTreeMap<(NaiveDate, &str), Vec<&StoredEvent>> = BTreeMap::new();
    for e in events {
        groups.entry((local_date(e, offset), e.event.header.city.as_str())).or_default().push(e);
    }
    groups.into_iter().map(|((date, city), events)| (PartitionKey::new(date, city), events)).collect()
}

#[derive(Default)]
struct Columns {
    event_id: StringBuilder,
    schema_version: UInt32Builder,
    event_type: StringBuilder,
    school: StringBuilder,
    classroom: StringBuilder,
    terminal: StringBuilder,
    event_time: TimestampMillisecondBuilder,
    received_time: TimestampMillisecondBuilder,
    clock_flag: StringBuilder,
    device_id: StringBuilder,
    device_kind: StringBuilder,
    uptime_s: UInt64Builder,
    equipment: StringBuilder,
    session_id: StringBuilder,
    duration_s: Float64Builder,
    booking_id: StringBuilder,
    facility_id: StringBuilder,
    facility_kind: StringBuilder,
    booking_school: StringBuilder,
    slot_start: TimestampMillisecondBuilder,
    slot_end: TimestampMillisecondBuilder,
    stream_id: StringBuilder,
    outage_s: Float64Builder,
    lesson_id: StringBuilder,
    subject: StringBuilder,
    grade: UInt8Builder,
    teacher_id: StringBuilder,
    dual_teacher: BooleanBuilder,
    receiving_schools: ListBuilder<StringBuilder>,
    scheduled_minutes: UInt32Builder,
    present: UInt32Builder,
    enrolled: UInt32Builder,
    resource_id: StringBuilder,
    resource_kind: StringBuilder,
    owner_school: StringBuilder,
    passed_review: BooleanBuilder,
    rating: Float64Builder,
    activity_id: StringBuilder,
    zone: StringBuilder,
    role: StringBuilder,
    cross_discipline: BooleanBuilder,
    course_id: StringBuilder,
    provider_school: StringBuilder,
    student_pseudonym: StringBuilder,
    assessment_id: StringBuilder,
    score: Float64Builder,
    max_score: Float64Builder,
    down_kbps: Float64Builder,
    up_kbps: Float64Builder,
}

/// Fields of the payload, each `None` unless the event type has it.
#[derive(Default)]
struct Row<'a> {
    device_id: Option<&'a str>,
    device_kind: Option<&'static str>,
    uptime_s: Option<u64>,
    equipment: Option<&'static str>,
    session_id: Option<&'a str>,
    duration_s: Option<f64>,
    booking_id: Option<&'a str>,
    facility_id: Option<&'a str>,
    facility_kind: Option<&'static str>,
    booking_school: Option<&'a str>,
    slot_start: Option<i64>,
    slot_end: Option<i64>,
    stream_id: Option<&'a str>,
    outage_s: Option<f64>,
    lesson_id: Option<&'a str>,
    subject: Option<&'a str>,
    grade: Option<u8>,
    teacher_id: Option<&'a str>,
    dual_teacher: Option<bool>,
    receiving_schools: Option<&'a [String]>,
    scheduled_minutes: Option<u32>,
    present: Option<u32>,
    enrolled: Option<u32>,
    resource_id: Option<&'a str>,
    resource_kind: Option<&'static str>,
    owner_school: Option<&'a str>,
    passed_review: Option<bool>,
    rating: Option<f64>,
    activity_id: Option<&'a str>,
    zone: Option<&'a str>,
    role: Option<&'static str>,
    cross_discipline: Option<bool>,
    course_id: Option<&'a str>,
    provider_school: Option<&'a str>,
    student_pseudonym: Option<&'a str>,
    assessment_id: Option<&'a str>,
    score: Option<f64>,
    max_score: Option<f64>,
    down_kbps: Option<f64>,
    up_kbps: Option<f64>,
}

fn row(body: &EventBody) -> Row<'_> {
    use EventBody::*;
    match body {
        DeviceHeartbeat(p) => {
            Row { device_id: Some(&p.device_id), device_kind: Some(p.device_kind.as_str()), uptime_s: Some(p.uptime_s), ..Row::default() }
        }
        EquipmentSessionStarted(p) => {
            Row { device_id: Some(&p.device_id), equipment: Some(p.equipment.as_str()), session_id: Some(&p.session_id), ..Row::default() }
        }
        EquipmentSessionEnded(p) => Row {
            device_id: Some(&p.device_id),
            equipment: Some(p.equipment.as_str()),
            session_id: Some(&p.session_id),
            duration_s: Some(p.duration_s),
            ..Row::default()
        },
        FacilityBookingCreated(p) => Row {
            booking_id: Some(&p.booking_id),
            facility_id: Some(&p.facility_id),
            facility_kind: Some(p.facility_kind.as_str()),
            booking_school: Some(&p.booking_school),
            slot_start: Some(p.slot_start.timestamp_millis()),
            slot_end: Some(p.slot_end.timestamp_millis()),
            ..Row::default()
        },
        FacilityBookingCheckedIn(p) | FacilityBookingNoShow(p) => Row {
            booking_id: Some(&p.booking_id),
            facility_id: Some(&p.facility_id),
            facility_kind: Some(p.facility_kind.as_str()),
            booking_school: Some(&p.booking_school),
            ..Row::default()
        },
        LiveStreamStarted(p) => Row { stream_id: Some(&p.stream_id), lesson_id: Some(&p.lesson_id), ..Row::default() },
        LiveStreamStopped(p) => Row { stream_id: Some(&p.stream_id), duration_s: Some(p.duration_s), ..Row::default() },
        LiveStreamInterrupted(p) => Row { stream_id: Some(&p.stream_id), outage_s: Some(p.outage_s), ..Row::default() },
        LessonStarted(p) => Row {
            lesson_id: Some(&p.lesson_id),
            subject: Some(&p.subject),
            grade: Some(p.grade),
            teacher_id: Some(&p.teacher_id),
            dual_teacher: Some(p.dual_teacher),
            receiving_schools: Some(&p.receiving_schools),
            scheduled_minutes: Some(p.scheduled_minutes),
            ..Row::default()
        },
        LessonEnded(p) => Row { lesson_id: Some(&p.lesson_id), duration_s: Some(p.duration_s), ..Row::default() },
        AttendanceRecorded(p) => {
            Row { lesson_id: Some(&p.lesson_id), present: Some(p.present), enrolled: Some(p.enrolled), ..Row::default() }
        }
        ResourceViewed(p) | ResourceDownloaded(p) => Row {
            resource_id: Some(&p.resource_id),
            resource_kind: Some(p.resource_kind.as_str()),
            subject: Some(&p.subject),
            owner_school: Some(&p.owner_school),
            teacher_id: Some(&p.teacher_id),
            ..Row::default()
        },
        ResourceUploaded(p) => Row {
            resource_id: Some(&p.resource_id),
            resource_kind: Some(p.resource_kind.as_str()),
            subject: Some(&p.subject),
            owner_school: Some(&p.owner_school),
            teacher_id: Some(&p.teacher_id),
            passed_review: Some(p.passed_review),
            ..Row::default()
        },
        ResourceRated(p) => Row {
            resource_id: Some(&p.resource_id),
            resource_kind: Some(p.resource_kind.as_str()),
            subject: Some(&p.subject),
            owner_school: Some(&p.owner_school),
            teacher_id: Some(&p.teacher_id),
            rating: Some(p.rating),
            ..Row::default()
        },
        ResearchActivityParticipated(p) => Row {
            activity_id: Some(&p.activity_id),
            zone: Some(&p.zone),
            teacher_id: Some(&p.teacher_id),
            role: Some(p.role.as_str()),
            cross_discipline: Some(p.cross_discipline),
            ..Row::default()
        },
        ElectiveEnrolled(p) => Row {
            course_id: Some(&p.course_id),
            provider_school: Some(&p.provider_school),
            student_pseudonym: Some(&p.student_pseudonym),
            ..Row::default()
        },
        AssessmentRecorded(p) => Row {
            assessment_id: Some(&p.assessment_id),
            subject: Some(&p.subject),
            grade: Some(p.grade),
            student_pseudonym: Some(&p.student_pseudonym),
            score: Some(p.score),
            max_score: Some(p.max_score),
            ..Row::default()
        },
        BandwidthSampled(p) => Row { down_kbps: Some(p.down_kbps), up_kbps: Some(p.up_kbps), ..Row::default() },
    }
}

/// Builds one batch of the events file schema.
pub fn build_batch<'a>(events: impl IntoIterator<Item = &'a StoredEvent>) -> Result<RecordBatch, ArrowError> {
    let mut c = Columns::default();
    for s in events {
        let h = &s.event.header;
        c.event_id.append_value(h.event_id.to_string());
        c.schema_version.append_value(h.schema_version);
        c.event_type.append_value(s.event.event_type().as_str());
        c.school.append_value(&h.school);
        c.classroom.append_value(&h.classroom);
        c.terminal.append_value(&h.terminal);
        c.event_time.append_value(h.event_time.timestamp_millis());
        c.received_time.append_value(s.received_time.timestamp_millis());
        c.clock_flag.append_option(s.clock_flag.map(ClockFlag::as_str));
        let r = row(&s.event.body);
        c.device_id.append_option(r.device_id);
        c.device_kind.append_option(r.device_kind);
        c.uptime_s.append_option(r.uptime_s);
        c.equipment.append_option(r.equipment);
        c.session_id.append_option(r.session_id);
        c.duration_s.append_option(r.duration_s);
        c.booking_id.append_option(r.booking_id);
        c.facility_id.append_option(r.facility_id);
        c.facility_kind.append_option(r.facility_kind);
        c.booking_school.append_option(r.booking_school);
        c.slot_start.append_option(r.slot_start);
        c.slot_end.append_option(r.slot_end);
        c.stream_id.append_option(r.stream_id);
        c.outage_s.append_option(r.outage_s);
        c.lesson_id.append_option(r.lesson_id);
        c.subject.append_option(r.subject);
        c.grade.append_option(r.grade);
        c.teacher_id.append_option(r.teacher_id);
        c.dual_teacher.append_option(r.dual_teacher);
        match r.receiving_schools {
            Some(list) => {
                for s in list {
                    c.receiving_schools.values().append_value(s);
                }
                c.receiving_schools.append(true);
            }
            None => c.receiving_schools.append(false),
        }
        c.scheduled_minutes.append_option(r.scheduled_minutes);
        c.present.append_option(r.present);
        c.enrolled.append_option(r.enrolled);
        c.resource_id.append_option(r.resource_id);
        c.resource_kind.append_option(r.resource_kind);
        c.owner_school.append_option(r.owner_school);
        c.passed_review.append_option(r.passed_review);
        c.rating.append_option(r.rating);
        c.activity_id.append_option(r.activity_id);
        c.zone.append_option(r.zone);
        c.role.append_option(r.role);
        c.cross_discipline.append_option(r.cross_discipline);
        c.course_id.append_option(r.course_id);
        c.provider_school.append_option(r.provider_school);
        c.student_pseudonym.append_option(r.student_pseudonym);
        c.assessment_id.append_option(r.assessment_id);
        c.score.append_option(r.score);
        c.max_score.append_option(r.max_score);
        c.down_kbps.append_option(r.down_kbps);
        c.up_kbps.append_option(r.up_kbps);
    }
    let utc = |b: &mut TimestampMillisecondBuilder| -> ArrayRef { Arc::new(b.finish().with_timezone("UTC")) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(c.event_id.finish()),
        Arc::new(c.schema_version.finish()),
        Arc::new(c.event_type.finish()),
        Arc::new(c.school.finish()),
        Arc::new(c.classroom.finish()),
        Arc::new(c.terminal.finish()),
        utc(&mut c.event_time),
        utc(&mut c.received_time),
        Arc::new(c.clock_flag.finish()),
        Arc::new(c.device_id.finish()),
        Arc::new(c.device_kind.finish()),
        Arc::new(c.uptime_s.finish()),
        Arc::new(c.equipment.finish()),
        Arc::new(c.session_id.finish()),
        Arc::new(c.duration_s.finish()),
        Arc::new(c.booking_id.finish()),
        Arc::new(c.facility_id.finish()),
        Arc::new(c.facility_kind.finish()),
        Arc::new(c.booking_school.finish()),
        utc(&mut c.slot_start),
        utc(&mut c.slot_end),
        Arc::new(c.stream_id.finish()),
        Arc::new(c.outage_s.finish()),
        Arc::new(c.lesson_id.finish()),
        Arc::new(c.subject.finish()),
        Arc::new(c.grade.finish()),
        Arc::new(c.teacher_id.finish()),
        Arc::new(c.dual_teacher.finish()),
        Arc::new(c.receiving_schools.finish()),
        Arc::new(c.scheduled_minutes.finish()),
        Arc::new(c.present.finish()),
        Arc::new(c.enrolled.finish()),
        Arc::new(c.resource_id.finish()),
        Arc::new(c.resource_kind.finish()),
        Arc::new(c.owner_school.finish()),
        Arc::new(c.passed_review.finish()),
        Arc::new(c.rating.finish()),
        Arc::new(c.activity_id.finish()),
        Arc::new(c.zone.finish()),
        Arc::new(c.role.finish()),
        Arc::new(c.cross_discipline.finish()),
        Arc::new(c.course_id.finish()),
        Arc::new(c.provider_school.finish()),
        Arc::new(c.student_pseudonym.finish()),
        Arc::new(c.assessment_id.finish()),
        Arc::new(c.score.finish()),
        Arc::new(c.max_score.finish()),
        Arc::new(c.down_kbps.finish()),
        Arc::new(c.up_kbps.finish()),
    ];
    RecordBatch::try_new(event_file_schema(), columns)
}

/// The presence rows of some events: each (school, classroom) that sent a heartbeat, once,
/// sorted.
pub fn build_presence<'a>(events: impl IntoIterator<Item = &'a StoredEvent>) -> Result<RecordBatch, ArrowError> {
    let rooms = events
        .into_iter()
        .filter(|s| matches!(s.event.body, EventBody::DeviceHeartbeat(_)))
        .map(|s| (s.event.header.school.as_str(), s.event.header.classroom.as_str()))
        .collect();
    presence_batch(rooms)
}

/// The presence rows of a batch of the events file schema (a file written before presence was,
/// or one compaction merged): the same rows [`build_presence`] gives for its events.
pub fn presence_of_events_batch(events: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let column = |name: &str| {
        events
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| ArrowError::SchemaError(format!("an events batch without a string column {name:?}")))
    };
    let (types, schools, rooms) = (column("event_type")?, column("school")?, column("classroom")?);
    let heartbeat = EventType::DeviceHeartbeat.as_str();
    let rooms = (0..events.num_rows()).filter(|&i| types.value(i) == heartbeat).map(|i| (schools.value(i), rooms.value(i))).collect();
    presence_batch(rooms)
}

fn presence_batch(rooms: BTreeSet<(&str, &str)>) -> Result<RecordBatch, ArrowError> {
    let (mut school, mut classroom) = (StringBuilder::new(), StringBuilder::new());
    for (s, c) in rooms {
        school.append_value(s);
        classroom.append_value(c);
    }
    RecordBatch::try_new(presence_file_schema(), vec![Arc::new(school.finish()), Arc::new(classroom.finish())])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use datafusion::arrow::array::{Array, StringArray};
    use edubrain_schemas::Header;
    use edubrain_schemas::event::BandwidthSampled;

    pub(crate) fn stored(id: u128, event_time: DateTime<Utc>, received: DateTime<Utc>, clock_flag: Option<ClockFlag>) -> StoredEvent {
        StoredEvent {
            event: Event {
                header: Header {
                    event_id: uuid::Uuid::from_u128(id),
                    schema_version: 1,
                    city: "c01".into(),
                    school: "s1".into(),
                    classroom: "r1".into(),
                    terminal: "t1".into(),
                    event_time,
                },
                body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 1.0, up_kbps: 2.0 }),
            },
            received_time: received,
            clock_flag,
        }
    }

    fn heartbeat(id: u128, school: &str, classroom: &str) -> StoredEvent {
        use edubrain_schemas::event::{DeviceHeartbeat, DeviceKind};
        let mut s =
            stored(id, Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0).unwrap(), Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 1).unwrap(), None);
        s.event.header.school = school.into();
        s.event.header.classroom = classroom.into();
        s.event.body =
            EventBody::DeviceHeartbeat(DeviceHeartbeat { device_id: "d1".into(), device_kind: DeviceKind::ClassroomTerminal, uptime_s: 1 });
        s
    }

    fn rows(batch: &RecordBatch) -> Vec<(String, String)> {
        let (s, c) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        (0..batch.num_rows()).map(|i| (s.value(i).to_string(), c.value(i).to_string())).collect()
    }

    #[test]
    fn presence_is_each_room_with_a_heartbeat_once_from_events_or_from_their_file() {
        let mut quiet =
            stored(9, Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap(), Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap(), None);
        quiet.event.header.classroom = "r9".into(); // sends bandwidth samples, never a heartbeat
        let events = vec![
            heartbeat(1, "s2", "s2-r1"),
            heartbeat(2, "s1", "s1-r2"),
            quiet,
            heartbeat(3, "s2", "s2-r1"),
            heartbeat(4, "s1", "s1-r1"),
            heartbeat(5, "s1", "s1-r2"),
        ];
        let want: Vec<(String, String)> =
            [("s1", "s1-r1"), ("s1", "s1-r2"), ("s2", "s2-r1")].iter().map(|(s, c)| (s.to_string(), c.to_string())).collect();
        let presence = build_presence(&events).unwrap();
        assert_eq!(presence.schema(), presence_file_schema());
        assert_eq!(rows(&presence), want);
        assert_eq!(rows(&presence_of_events_batch(&build_batch(&events).unwrap()).unwrap()), want, "the same rows from the events' file");
        assert_eq!(build_presence(&events[2..3]).unwrap().num_rows(), 0, "no heartbeat, no presence");
        let wrong = RecordBatch::try_new(presence_file_schema(), presence.columns().to_vec()).unwrap();
        let err = presence_of_events_batch(&wrong).unwrap_err().to_string();
        assert!(err.contains("event_type"), "{err}");
    }

    #[test]
    fn partitions_by_local_school_day_and_files_bad_clocks_under_the_day_received() {
        let beijing = FixedOffset::east_opt(8 * 3600).unwrap();
        let received = Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0).unwrap();
        let events = vec![
            // 23:30 UTC on the 22nd is 07:30 on the 23rd in the province.
            stored(1, Utc.with_ymd_and_hms(2026, 11, 22, 23, 30, 0).unwrap(), received, None),
            stored(2, Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(), received, Some(ClockFlag::DeviceClockUnset)),
            stored(3, Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap(), received, None),
        ];
        let parts = partition(&events, beijing);
        let dirs: Vec<String> = parts.keys().map(PartitionKey::dir).collect();
        assert_eq!(dirs, ["date=2026-11-21/city=c01", "date=2026-11-23/city=c01"]);
        let day = &parts[&PartitionKey { date: "2026-11-23".into(), city: "c01".into() }];
        assert_eq!(day.iter().map(|e| e.event.header.event_id.as_u128()).collect::<Vec<_>>(), [1, 2], "arrival order kept");

        let batch = build_batch(day.iter().copied()).unwrap();
        assert_eq!(batch.schema(), event_file_schema());
        let flags = batch.column_by_name("clock_flag").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert!(flags.is_null(0));
        assert_eq!(flags.value(1), "device_clock_unset");
        let times = batch
            .column_by_name("event_time")
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(times.value(1), 0, "the device's own time is kept as it said");
    }
}

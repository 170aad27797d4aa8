//! The versioned event envelope and its typed payloads.
//!
//! Wire format (JSON, one object per MQTT message):
//!
//! ```json
//! {"event_id":"6f1c…","schema_version":1,"type":"lesson_started",
//!  "city":"c01","school":"c01-s001","classroom":"c01-s001-r01","terminal":"t-c01-s001-r01",
//!  "event_time":"2026-09-07T08:00:00+08:00","payload":{…}}
//! ```
//!
//! Decoding is two-phase so that every error names the field it is about: the envelope is read
//! with the payload kept as raw JSON, then the payload is decoded with the struct its `type`
//! selects. Every struct denies unknown fields, so a `student_name` smuggled into a payload is
//! rejected rather than stored.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::SchemaError;

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Who and where an event is about, and when the device says it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Unique per event; created once on the terminal and kept across every resend.
    pub event_id: Uuid,
    /// Version of this contract the event was written against.
    pub schema_version: u32,
    /// City (edge) id, e.g. `c01`.
    pub city: String,
    /// School id from the registry, e.g. `c01-s001`.
    pub school: String,
    /// Classroom, lab, library or recording room id.
    pub classroom: String,
    /// The terminal agent that produced the event.
    pub terminal: String,
    /// Device clock at the moment the event happened (RFC 3339, any offset; stored as UTC).
    pub event_time: DateTime<Utc>,
}

/// One event: header plus typed body.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Event {
    #[serde(flatten)]
    pub header: Header,
    #[serde(flatten)]
    pub body: EventBody,
}

macro_rules! event_types {
    ($( $(#[$doc:meta])* $variant:ident($payload:ident) => $tag:literal, $verb:literal; )*) => {
        /// The typed payload of an event, tagged by `type` on the wire.
        #[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
        #[serde(tag = "type", content = "payload")]
        pub enum EventBody {
            $( $(#[$doc])* #[serde(rename = $tag)] $variant($payload), )*
        }

        /// The kind of an event, without its payload.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $( $variant, )* }

        impl EventType {
            /// Every event type, in contract order.
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant, )* ];

            /// The `type` string on the wire and in the warehouse.
            pub fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $tag, )* }
            }

            /// The xAPI verb IRI this event maps onto (see schemas/README.md).
            pub fn xapi_verb(self) -> &'static str {
                match self { $( EventType::$variant => $verb, )* }
            }

            /// Parses a wire `type` string.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $( $tag => Some(EventType::$variant), )* _ => None }
            }
        }

        impl EventBody {
            pub fn event_type(&self) -> EventType {
                match self { $( EventBody::$variant(_) => EventType::$variant, )* }
            }

            fn decode(kind: EventType, raw: &str) -> Result<Self, serde_json::Error> {
                match kind { $( EventType::$variant => serde_json::from_str(raw).map(EventBody::$variant), )* }
            }
        }
    };
}

event_types! {
    /// Device power-on or periodic liveness.
    DeviceHeartbeat(DeviceHeartbeat) => "device_heartbeat", "http://adlnet.gov/expapi/verbs/experienced";
    /// An equipment usage session began (projector, whiteboard, lab station, VR, camera).
    EquipmentSessionStarted(EquipmentSessionStarted) => "equipment_session_started", "http://adlnet.gov/expapi/verbs/initialized";
    /// An equipment usage session ended.
    EquipmentSessionEnded(EquipmentSessionEnded) => "equipment_session_ended", "http://adlnet.gov/expapi/verbs/terminated";
    /// A shared facility (lab, library, sports venue) was booked online.
    FacilityBookingCreated(FacilityBooking) => "facility_booking_created", "http://adlnet.gov/expapi/verbs/registered";
    /// The booking school showed up.
    FacilityBookingCheckedIn(FacilityBookingOutcome) => "facility_booking_checked_in", "http://adlnet.gov/expapi/verbs/attended";
    /// The booking school did not show up.
    FacilityBookingNoShow(FacilityBookingOutcome) => "facility_booking_no_show", "http://adlnet.gov/expapi/verbs/abandoned";
    /// A remote-lesson live stream started.
    LiveStreamStarted(LiveStreamStarted) => "live_stream_started", "http://adlnet.gov/expapi/verbs/launched";
    /// A live stream ended normally.
    LiveStreamStopped(LiveStreamStopped) => "live_stream_stopped", "http://adlnet.gov/expapi/verbs/terminated";
    /// A live stream was interrupted (network, device).
    LiveStreamInterrupted(LiveStreamInterrupted) => "live_stream_interrupted", "http://adlnet.gov/expapi/verbs/suspended";
    /// A lesson began in this classroom.
    LessonStarted(LessonStarted) => "lesson_started", "http://adlnet.gov/expapi/verbs/initialized";
    /// A lesson ended.
    LessonEnded(LessonEnded) => "lesson_ended", "http://adlnet.gov/expapi/verbs/completed";
    /// Head count for a lesson.
    AttendanceRecorded(AttendanceRecorded) => "attendance_recorded", "http://adlnet.gov/expapi/verbs/attended";
    /// A teaching resource was viewed.
    ResourceViewed(ResourceUse) => "resource_viewed", "http://id.tincanapi.com/verb/viewed";
    /// A teaching resource was downloaded.
    ResourceDownloaded(ResourceUse) => "resource_downloaded", "http://id.tincanapi.com/verb/downloaded";
    /// A teaching resource was uploaded to the shared pool.
    ResourceUploaded(ResourceUploaded) => "resource_uploaded", "http://adlnet.gov/expapi/verbs/shared";
    /// A teaching resource was rated.
    ResourceRated(ResourceRated) => "resource_rated", "http://id.tincanapi.com/verb/rated";
    /// A teacher took part in a zone teaching-research activity.
    ResearchActivityParticipated(ResearchActivityParticipated) => "research_activity_participated", "http://adlnet.gov/expapi/verbs/attended";
    /// A student enrolled in another school's elective (course supermarket).
    ElectiveEnrolled(ElectiveEnrolled) => "elective_enrolled", "http://adlnet.gov/expapi/verbs/registered";
    /// An assessment result (student id pseudonymised on the terminal).
    AssessmentRecorded(AssessmentRecorded) => "assessment_recorded", "http://adlnet.gov/expapi/verbs/scored";
    /// A network bandwidth sample from the classroom.
    BandwidthSampled(BandwidthSampled) => "bandwidth_sampled", "http://adlnet.gov/expapi/verbs/experienced";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    ClassroomTerminal,
    Projector,
    InteractiveWhiteboard,
    LabStation,
    Vr,
    RecordingCamera,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::ClassroomTerminal => "classroom_terminal",
            DeviceKind::Projector => "projector",
            DeviceKind::InteractiveWhiteboard => "interactive_whiteboard",
            DeviceKind::LabStation => "lab_station",
            DeviceKind::Vr => "vr",
            DeviceKind::RecordingCamera => "recording_camera",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Equipment {
    Projector,
    InteractiveWhiteboard,
    LabStation,
    Vr,
    RecordingCamera,
}

impl Equipment {
    pub fn as_str(self) -> &'static str {
        match self {
            Equipment::Projector => "projector",
            Equipment::InteractiveWhiteboard => "interactive_whiteboard",
            Equipment::LabStation => "lab_station",
            Equipment::Vr => "vr",
            Equipment::RecordingCamera => "recording_camera",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FacilityKind {
    Lab,
    Library,
    SportsVenue,
}

impl FacilityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FacilityKind::Lab => "lab",
            FacilityKind::Library => "library",
            FacilityKind::SportsVenue => "sports_venue",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Lesson,
    LessonDesign,
    MicroLesson,
    Courseware,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Lesson => "lesson",
            ResourceKind::LessonDesign => "lesson_design",
            ResourceKind::MicroLesson => "micro_lesson",
            ResourceKind::Courseware => "courseware",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResearchRole {
    Host,
    Speaker,
    Participant,
    Observer,
}

impl ResearchRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ResearchRole::Host => "host",
            ResearchRole::Speaker => "speaker",
            ResearchRole::Participant => "participant",
            ResearchRole::Observer => "observer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceHeartbeat {
    pub device_id: String,
    pub device_kind: DeviceKind,
    /// Seconds since the device booted.
    pub uptime_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EquipmentSessionStarted {
    pub device_id: String,
    pub equipment: Equipment,
    /// Pairs the start with its end.
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EquipmentSessionEnded {
    pub device_id: String,
    pub equipment: Equipment,
    pub session_id: String,
    /// In-use seconds of the session.
    pub duration_s: f64,
}

/// A booking of a shared facility. The event comes from the facility's own terminal, so the
/// envelope's `school` owns the facility and `booking_school` is who booked it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FacilityBooking {
    pub booking_id: String,
    pub facility_id: String,
    pub facility_kind: FacilityKind,
    pub booking_school: String,
    pub slot_start: DateTime<Utc>,
    pub slot_end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FacilityBookingOutcome {
    pub booking_id: String,
    pub facility_id: String,
    pub facility_kind: FacilityKind,
    pub booking_school: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveStreamStarted {
    pub stream_id: String,
    pub lesson_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveStreamStopped {
    pub stream_id: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveStreamInterrupted {
    pub stream_id: String,
    /// How long the picture was lost.
    pub outage_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LessonStarted {
    pub lesson_id: String,
    pub subject: String,
    /// 1-9 (primary 1-6, junior 7-9).
    pub grade: u8,
    pub teacher_id: String,
    /// A dual-teacher (双师课堂) lesson broadcast from this classroom to remote classrooms.
    pub dual_teacher: bool,
    /// Schools receiving the broadcast; empty unless `dual_teacher`.
    #[serde(default)]
    pub receiving_schools: Vec<String>,
    pub scheduled_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LessonEnded {
    pub lesson_id: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttendanceRecorded {
    pub lesson_id: String,
    pub present: u32,
    pub enrolled: u32,
}

/// A view or download of a shared resource owned by `owner_school`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceUse {
    pub resource_id: String,
    pub resource_kind: ResourceKind,
    pub subject: String,
    pub owner_school: String,
    pub teacher_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceUploaded {
    pub resource_id: String,
    pub resource_kind: ResourceKind,
    pub subject: String,
    pub owner_school: String,
    pub teacher_id: String,
    /// Whether the upload passed the quality review (upload pass rate).
    pub passed_review: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRated {
    pub resource_id: String,
    pub resource_kind: ResourceKind,
    pub subject: String,
    pub owner_school: String,
    pub teacher_id: String,
    /// 1 to 5.
    pub rating: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearchActivityParticipated {
    pub activity_id: String,
    pub zone: String,
    pub teacher_id: String,
    pub role: ResearchRole,
    pub cross_discipline: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElectiveEnrolled {
    pub course_id: String,
    pub provider_school: String,
    /// HMAC pseudonym of the student id (64 hex chars), never the raw id.
    pub student_pseudonym: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssessmentRecorded {
    pub assessment_id: String,
    pub subject: String,
    pub grade: u8,
    /// HMAC pseudonym of the student id (64 hex chars), never the raw id.
    pub student_pseudonym: String,
    pub score: f64,
    pub max_score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BandwidthSampled {
    pub down_kbps: f64,
    pub up_kbps: f64,
}

/// The envelope as it arrives, before the payload is typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    schema_version: u32,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    city: String,
    school: String,
    classroom: String,
    terminal: String,
    #[serde(borrow)]
    event_time: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

impl Event {
    /// Decodes one wire event. Errors name the field (`payload.rating`, `event_time`, …).
    pub fn from_json(bytes: &[u8]) -> Result<Event, SchemaError> {
        let text = std::str::from_utf8(bytes).map_err(|e| SchemaError::Decode {
            field: "$".into(),
            rule: "utf8",
            message: format!("payload is not valid UTF-8: {e}"),
        })?;
        let raw: RawEvent<'_> = serde_json::from_str(text).map_err(|e| envelope_error(&e))?;
        if raw.schema_version == 0 || raw.schema_version > SCHEMA_VERSION {
            return Err(SchemaError::Decode {
                field: "schema_version".into(),
                rule: "supported_version",
                message: format!("schema_version {} is not supported (this build reads 1..={SCHEMA_VERSION})", raw.schema_version),
            });
        }
        let event_id = Uuid::parse_str(&raw.event_id).map_err(|e| SchemaError::Decode {
            field: "event_id".into(),
            rule: "uuid",
            message: format!("event_id {:?} is not a UUID: {e}", raw.event_id),
        })?;
        let event_time = DateTime::parse_from_rfc3339(&raw.event_time)
            .map_err(|e| SchemaError::Decode {
                field: "event_time".into(),
                rule: "rfc3339",
                message: format!("event_time {:?} is not an RFC 3339 timestamp: {e}", raw.event_time),
            })?
            .with_timezone(&Utc);
        let kind = EventType::parse(&raw.event_type).ok_or_else(|| SchemaError::Decode {
            field: "type".into(),
            rule: "known_type",
            message: format!("unknown event type {:?}", raw.event_type),
        })?;
        let body = EventBody::decode(kind, raw.payload.get()).map_err(|e| SchemaError::Decode {
            field: match serde_field(&e) {
                Some(f) => format!("payload.{f}"),
                None => "payload".into(),
            },
            rule: serde_rule(&e),
            message: format!("{} payload: {e}", kind.as_str()),
        })?;
        Ok(Event {
            header: Header {
                event_id,
                schema_version: raw.schema_version,
                city: raw.city,
                school: raw.school,
                classroom: raw.classroom,
                terminal: raw.terminal,
                event_time,
            },
            body,
        })
    }

    /// Encodes the wire form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialise: no maps with non-string keys")
    }

    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }
}

fn envelope_error(e: &serde_json::Error) -> SchemaError {
    SchemaError::Decode { field: serde_field(e).unwrap_or_else(|| "$".into()), rule: serde_rule(e), message: format!("envelope: {e}") }
}

/// Pulls the field name out of serde's "missing field `x`" / "unknown field `x`, expected …"
/// messages, so the rejection names the field even for structural errors. A sender's unknown
/// key may itself hold backticks or be empty (both found by fuzzing): it is read up to serde's
/// own "`, expected", and the empty key is named `""`.
fn serde_field(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    let start = msg.find('`')? + 1;
    let end = match msg[start..].find("`, expected") {
        Some(i) if msg.starts_with("unknown field") => start + i,
        _ => start + msg[start..].find('`')?,
    };
    let name = &msg[start..end];
    Some(if name.is_empty() { "\"\"".into() } else { name.to_string() })
}

fn serde_rule(e: &serde_json::Error) -> &'static str {
    let msg = e.to_string();
    if msg.starts_with("missing field") {
        "required"
    } else if msg.starts_with("unknown field") {
        "no_unknown_fields"
    } else if e.is_syntax() || e.is_eof() {
        "json_syntax"
    } else {
        "type"
    }
}

//! School-week simulation: the events every terminal of a [`Province`] emits over some school
//! days. Pure and deterministic: the province, the first day and a seed in, events out.
//!
//! Behaviour differs the way `domain.md` describes: vigorous (strong, urban) schools use their
//! equipment more, upload more and better resources, score higher; rural receivers of
//! dual-teacher lessons see more stream interruptions (bandwidth); weaker schools view and book
//! what strong schools share.

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, TimeZone, Utc, Weekday};
use edubrain_schemas::event::*;
use edubrain_schemas::pseudonym::pseudonymise;
use edubrain_schemas::{Event, EventBody, Header, Locale, SCHEMA_VERSION};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::province::{Classroom, Province, Resource, SUBJECTS, SimSchool};

/// The province's local time: China Standard Time, UTC+8, no daylight saving.
pub fn local_offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

/// Lesson periods (local start times); 8 periods of 45 minutes = 6 timetable hours a day.
pub const PERIODS: [(u32, u32); 8] = [(8, 0), (8, 55), (9, 50), (10, 45), (14, 0), (14, 55), (15, 50), (16, 45)];
pub const LESSON_MINUTES: u32 = 45;

#[derive(Debug, Clone, PartialEq)]
pub struct SimulationSpec {
    /// First simulated school day (local date); weekends are skipped.
    pub first_day: NaiveDate,
    pub school_days: u32,
    /// Minutes between device heartbeats.
    pub heartbeat_minutes: u32,
    pub seed: u64,
}

impl SimulationSpec {
    /// One school day with a heartbeat every 10 minutes: the small, realistic load the fault
    /// tests run under.
    pub fn one_day(first_day: NaiveDate, seed: u64) -> Self {
        Self { first_day, school_days: 1, heartbeat_minutes: 10, seed }
    }
}

/// The Monday of the week before `today`: the demo replays "last school week".
pub fn last_school_week(today: NaiveDate) -> NaiveDate {
    today - Duration::days(today.weekday().num_days_from_monday() as i64 + 7)
}

struct Sim<'a> {
    province: &'a Province,
    rng: StdRng,
    /// Draws for own-school elective enrolments, added later: a stream of their own, so that
    /// every other simulated event (and every evaluation run on them) stayed as it was.
    own_electives_rng: StdRng,
    events: Vec<Event>,
    /// Resources teachers can find, each with its owner school (looked up once, when it joins
    /// the pool: a lookup per candidate per view was most of a large simulation's time).
    pool: Vec<(Resource, Option<&'a SimSchool>)>,
}

impl Sim<'_> {
    fn emit(&mut self, room: &Classroom, at: DateTime<FixedOffset>, body: EventBody) {
        let event_id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        self.emit_as(event_id, room, at, body);
    }

    fn emit_as(&mut self, event_id: uuid::Uuid, room: &Classroom, at: DateTime<FixedOffset>, body: EventBody) {
        self.events.push(Event {
            header: Header {
                event_id,
                schema_version: SCHEMA_VERSION,
                city: room.city.clone(),
                school: room.school.clone(),
                classroom: room.id.clone(),
                terminal: room.terminal.clone(),
                event_time: at.with_timezone(&Utc),
            },
            body,
        });
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn id(&mut self, prefix: &str) -> String {
        format!("{prefix}-{:08x}", self.rng.random::<u32>())
    }
}

fn at(day: NaiveDate, h: u32, m: u32) -> DateTime<FixedOffset> {
    local_offset().from_local_datetime(&day.and_hms_opt(h, m, 0).expect("valid time")).single().expect("fixed offset")
}

/// Simulates `spec.school_days` school days; events come out sorted by event time.
pub fn simulate(province: &Province, spec: &SimulationSpec) -> Vec<Event> {
    let mut sim = Sim {
        province,
        rng: StdRng::seed_from_u64(spec.seed ^ 0x5eed),
        own_electives_rng: StdRng::seed_from_u64(spec.seed ^ 0xe1ec),
        events: Vec::new(),
        pool: province.resources.iter().map(|r| (r.clone(), province.school(&r.owner_school))).collect(),
    };
    let mut day = spec.first_day;
    let mut done = 0;
    while done < spec.school_days {
        if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            simulate_day(&mut sim, day, spec);
            done += 1;
        }
        day = day.succ_opt().expect("date in range");
    }
    let mut events = sim.events;
    events.sort_by_key(|e| e.header.event_time);
    events
}

fn simulate_day(sim: &mut Sim<'_>, day: NaiveDate, spec: &SimulationSpec) {
    let province = sim.province;
    for school in &province.schools {
        for room in &school.classrooms {
            device_day(sim, school, room, day, spec.heartbeat_minutes);
            lessons(sim, school, room, day);
        }
        bookings(sim, school, day);
        dual_teacher(sim, school, day);
        resources(sim, school, day);
        if day.weekday() == Weekday::Mon {
            electives(sim, school, day);
        }
        if day.weekday() == Weekday::Fri {
            assessments(sim, school, day);
        }
    }
    if day.weekday() == Weekday::Wed {
        research_activities(sim, day);
    }
}

fn device_day(sim: &mut Sim<'_>, school: &SimSchool, room: &Classroom, day: NaiveDate, every: u32) {
    let start = at(day, 7, 40) + Duration::minutes(sim.rng.random_range(0..10));
    let end = at(day, 17, 40);
    let mut t = start;
    while t < end {
        let uptime = (t - start).num_seconds() as u64;
        let body = EventBody::DeviceHeartbeat(DeviceHeartbeat {
            device_id: room.terminal.clone(),
            device_kind: DeviceKind::ClassroomTerminal,
            uptime_s: uptime,
        });
        sim.emit(room, t, body);
        if t.minute_of_day() % 60 < every as i64 {
            let (down, up) = match school.locale {
                Locale::Urban => (100_000.0, 40_000.0),
                Locale::Town => (30_000.0, 10_000.0),
                Locale::Rural => (8_000.0, 2_000.0),
            };
            let f = sim.rng.random_range(0.6..1.1);
            sim.emit(room, t, EventBody::BandwidthSampled(BandwidthSampled { down_kbps: down * f, up_kbps: up * f }));
        }
        t += Duration::minutes(every as i64);
    }
}

trait MinuteOfDay {
    fn minute_of_day(&self) -> i64;
}
impl MinuteOfDay for DateTime<FixedOffset> {
    fn minute_of_day(&self) -> i64 {
        use chrono::Timelike;
        (self.hour() * 60 + self.minute()) as i64
    }
}

fn lessons(sim: &mut Sim<'_>, school: &SimSchool, room: &Classroom, day: NaiveDate) {
    if room.shared_lab || room.recording_room {
        return; // labs are used through bookings, recording rooms through broadcasts
    }
    for (p, (h, m)) in PERIODS.iter().enumerate() {
        if !sim.chance(0.88) {
            continue;
        }
        let start = at(day, *h, *m);
        let lesson_id = format!("{}-{}-p{}", room.id, day.format("%Y%m%d"), p + 1);
        let teacher = school.teachers[sim.rng.random_range(0..school.teachers.len())].clone();
        let subject = SUBJECTS[sim.rng.random_range(0..SUBJECTS.len())].to_string();
        sim.emit(
            room,
            start,
            EventBody::LessonStarted(LessonStarted {
                lesson_id: lesson_id.clone(),
                subject,
                grade: room.grade,
                teacher_id: teacher,
                dual_teacher: false,
                receiving_schools: vec![],
                scheduled_minutes: LESSON_MINUTES,
            }),
        );
        let enrolled = if school.locale == Locale::Rural { sim.rng.random_range(18..32) } else { sim.rng.random_range(38..50) };
        let present = enrolled - sim.rng.random_range(0..3).min(enrolled);
        sim.emit(
            room,
            start + Duration::minutes(3),
            EventBody::AttendanceRecorded(AttendanceRecorded { lesson_id: lesson_id.clone(), present, enrolled }),
        );
        // Equipment use: the utilisation gap between vigorous and weak schools comes from here.
        if sim.chance(school.vigour * 0.95) {
            let minutes = sim_minutes(sim, 25, 42);
            equipment_session(sim, room, start + Duration::minutes(2), minutes);
        }
        let len = LESSON_MINUTES as i64 * 60 + sim.rng.random_range(-120..60);
        sim.emit(room, start + Duration::seconds(len), EventBody::LessonEnded(LessonEnded { lesson_id, duration_s: len as f64 }));
    }
}

fn sim_minutes(sim: &mut Sim<'_>, lo: i64, hi: i64) -> i64 {
    sim.rng.random_range(lo..=hi)
}

fn equipment_session(sim: &mut Sim<'_>, room: &Classroom, start: DateTime<FixedOffset>, minutes: i64) {
    let session_id = sim.id("ses");
    sim.emit(
        room,
        start,
        EventBody::EquipmentSessionStarted(EquipmentSessionStarted {
            device_id: room.device_id.clone(),
            equipment: room.equipment,
            session_id: session_id.clone(),
        }),
    );
    let secs = minutes * 60 + sim.rng.random_range(0..60);
    sim.emit(
        room,
        start + Duration::seconds(secs),
        EventBody::EquipmentSessionEnded(EquipmentSessionEnded {
            device_id: room.device_id.clone(),
            equipment: room.equipment,
            session_id,
            duration_s: secs as f64,
        }),
    );
}

/// The school's own lab: its own classes use it, and schools of the alliance book it online.
fn bookings(sim: &mut Sim<'_>, school: &SimSchool, day: NaiveDate) {
    let province = sim.province;
    let Some(lab) = school.classrooms.iter().find(|c| c.shared_lab) else { return };
    let partners: Vec<&SimSchool> = province.schools.iter().filter(|s| s.alliance == school.alliance && s.id != school.id).collect();
    for (h, m) in PERIODS {
        let start = at(day, h, m);
        // Own use of the lab.
        if sim.chance(0.35 * school.vigour) {
            let minutes = sim_minutes(sim, 30, 43);
            equipment_session(sim, lab, start + Duration::minutes(2), minutes);
            continue;
        }
        // Booked by a partner school; strong schools' labs are in demand.
        if partners.is_empty() || !sim.chance(if school.strong { 0.45 } else { 0.15 }) {
            continue;
        }
        let partner = partners[sim.rng.random_range(0..partners.len())];
        let booking_id = sim.id("bk");
        let created = start - Duration::hours(sim.rng.random_range(20..70));
        sim.emit(
            lab,
            created,
            EventBody::FacilityBookingCreated(FacilityBooking {
                booking_id: booking_id.clone(),
                facility_id: lab.id.clone(),
                facility_kind: FacilityKind::Lab,
                booking_school: partner.id.clone(),
                slot_start: start.with_timezone(&Utc),
                slot_end: (start + Duration::minutes(LESSON_MINUTES as i64)).with_timezone(&Utc),
            }),
        );
        let no_show = if partner.locale == Locale::Rural { 0.22 } else { 0.08 };
        let outcome = FacilityBookingOutcome {
            booking_id,
            facility_id: lab.id.clone(),
            facility_kind: FacilityKind::Lab,
            booking_school: partner.id.clone(),
        };
        if sim.chance(no_show) {
            sim.emit(lab, start + Duration::minutes(15), EventBody::FacilityBookingNoShow(outcome));
        } else {
            sim.emit(lab, start, EventBody::FacilityBookingCheckedIn(outcome));
            let minutes = sim_minutes(sim, 30, 42);
            equipment_session(sim, lab, start + Duration::minutes(3), minutes);
        }
    }
}

/// Strong schools broadcast dual-teacher lessons from their recording room to rural and town
/// schools of their alliance; rural bandwidth interrupts more streams.
fn dual_teacher(sim: &mut Sim<'_>, school: &SimSchool, day: NaiveDate) {
    let province = sim.province;
    let Some(room) = school.classrooms.iter().find(|c| c.recording_room) else { return };
    let receivers: Vec<&SimSchool> =
        province.schools.iter().filter(|s| s.alliance == school.alliance && !s.strong && s.locale != Locale::Urban).collect();
    if receivers.is_empty() {
        return;
    }
    for p in [1usize, 3, 5, 6] {
        let (h, m) = PERIODS[p];
        let start = at(day, h, m);
        let n = sim.rng.random_range(2..=3.min(receivers.len()).max(2)).min(receivers.len());
        let first = sim.rng.random_range(0..receivers.len());
        let chosen: Vec<&SimSchool> = (0..n).map(|i| receivers[(first + i) % receivers.len()]).collect();
        let lesson_id = format!("{}-{}-dt{p}", room.id, day.format("%Y%m%d"));
        let stream_id = format!("st-{lesson_id}");
        let subject = SUBJECTS[sim.rng.random_range(0..4)].into();
        sim.emit(
            room,
            start,
            EventBody::LessonStarted(LessonStarted {
                lesson_id: lesson_id.clone(),
                subject,
                grade: room.grade,
                teacher_id: school.teachers[0].clone(),
                dual_teacher: true,
                receiving_schools: chosen.iter().map(|s| s.id.clone()).collect(),
                scheduled_minutes: LESSON_MINUTES,
            }),
        );
        sim.emit(
            room,
            start,
            EventBody::LiveStreamStarted(LiveStreamStarted { stream_id: stream_id.clone(), lesson_id: lesson_id.clone() }),
        );
        equipment_session(sim, room, start, LESSON_MINUTES as i64 - 1);
        let rural = chosen.iter().filter(|s| s.locale == Locale::Rural).count() as f64 / chosen.len() as f64;
        if sim.chance(0.03 + 0.12 * rural) {
            let outage = sim.rng.random_range(5.0..180.0);
            let when = start + Duration::minutes(sim.rng.random_range(5..40));
            sim.emit(
                room,
                when,
                EventBody::LiveStreamInterrupted(LiveStreamInterrupted { stream_id: stream_id.clone(), outage_s: outage }),
            );
        }
        let secs = LESSON_MINUTES as f64 * 60.0;
        sim.emit(
            room,
            start + Duration::minutes(LESSON_MINUTES as i64),
            EventBody::LiveStreamStopped(LiveStreamStopped { stream_id, duration_s: secs }),
        );
        sim.emit(
            room,
            start + Duration::minutes(LESSON_MINUTES as i64),
            EventBody::LessonEnded(LessonEnded { lesson_id, duration_s: secs }),
        );
    }
}

fn resources<'a>(sim: &mut Sim<'a>, school: &'a SimSchool, day: NaiveDate) {
    use edubrain_schemas::event::ResourceKind::*;
    let province = sim.province;
    let office = &school.classrooms[school.classrooms.len() - 1];
    // Uploads: vigorous schools share more; the plan's upload pass rate today is about 65%.
    let uploads = (school.vigour * 3.0 * sim.rng.random_range(0.5..1.5)).round() as u32;
    for _ in 0..uploads {
        let teacher = school.teachers[sim.rng.random_range(0..school.teachers.len())].clone();
        let kinds = [Lesson, LessonDesign, MicroLesson, Courseware];
        let r = Resource {
            id: sim.id(&format!("{}-res", school.id)),
            owner_school: school.id.clone(),
            subject: SUBJECTS[sim.rng.random_range(0..SUBJECTS.len())].into(),
            kind: kinds[sim.rng.random_range(0..kinds.len())],
            quality: (school.vigour * sim.rng.random_range(0.7..1.1)).clamp(0.05, 1.0),
        };
        let passed = sim.chance(0.45 + 0.3 * school.vigour);
        let t = at(day, 12, 0) + Duration::minutes(sim.rng.random_range(0..90));
        sim.emit(
            office,
            t,
            EventBody::ResourceUploaded(ResourceUploaded {
                resource_id: r.id.clone(),
                resource_kind: r.kind,
                subject: r.subject.clone(),
                owner_school: r.owner_school.clone(),
                teacher_id: teacher,
                passed_review: passed,
            }),
        );
        if passed {
            sim.pool.push((r, Some(school)));
        }
    }
    // Views: teachers look for material, preferring good resources near them.
    let views = 4 + (6.0 * (1.0 - school.vigour)).round() as u32;
    for _ in 0..views {
        let pick = pick_resource(sim, school);
        let Some(r) = pick else { continue };
        let teacher = school.teachers[sim.rng.random_range(0..school.teachers.len())].clone();
        let use_ = ResourceUse {
            resource_id: r.id.clone(),
            resource_kind: r.kind,
            subject: r.subject.clone(),
            owner_school: r.owner_school.clone(),
            teacher_id: teacher,
        };
        let t = at(day, 12, 0) + Duration::minutes(sim.rng.random_range(0..110));
        sim.emit(office, t, EventBody::ResourceViewed(use_.clone()));
        if sim.chance(0.3 + 0.5 * r.quality) {
            sim.emit(office, t + Duration::minutes(1), EventBody::ResourceDownloaded(use_.clone()));
            if sim.chance(0.35) {
                let rating = (1.0 + 4.0 * r.quality + sim.rng.random_range(-0.6..0.6)).clamp(1.0, 5.0);
                let rating = (rating * 2.0).round() / 2.0;
                let ResourceUse { resource_id, resource_kind, subject, owner_school, teacher_id } = use_;
                sim.emit(
                    office,
                    t + Duration::minutes(20),
                    EventBody::ResourceRated(ResourceRated { resource_id, resource_kind, subject, owner_school, teacher_id, rating }),
                );
            }
        }
    }
    let _ = province;
}

fn pick_resource(sim: &mut Sim<'_>, school: &SimSchool) -> Option<Resource> {
    let weights: Vec<f64> = sim
        .pool
        .iter()
        .map(|(r, owner)| {
            let near = match owner {
                Some(o) if o.id == school.id => 1.0,
                Some(o) if o.zone == school.zone => 2.0,
                Some(o) if o.alliance == school.alliance => 2.5,
                Some(o) if o.county == school.county => 0.8,
                _ => 0.3,
            };
            near * (0.2 + r.quality * r.quality)
        })
        .collect();
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = sim.rng.random_range(0.0..total);
    for ((r, _), w) in sim.pool.iter().zip(&weights) {
        if x < *w {
            return Some(r.clone());
        }
        x -= w;
    }
    sim.pool.last().map(|(r, _)| r.clone())
}

/// Monday enrolments in the course supermarket (课程超市): every school's students enrol in its
/// own electives (vigorous schools offer more), and students of the weaker schools of an
/// alliance also in the electives of its strong school.
fn electives(sim: &mut Sim<'_>, school: &SimSchool, day: NaiveDate) {
    let province = sim.province;
    let key = province.alliance_key(&school.alliance);
    let room = &school.classrooms[school.classrooms.len() - 1];
    let enrol = |sim: &mut Sim<'_>, provider: &str, minute: i64| {
        let rng = if provider == school.id { &mut sim.own_electives_rng } else { &mut sim.rng };
        let raw_student = format!("{}-stu{:04}", school.id, rng.random_range(0..2000));
        let course_id = format!("{provider}-elective{}", rng.random_range(1..=6));
        let event_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        sim.emit_as(
            event_id,
            room,
            at(day, 16, 0) + Duration::minutes(minute),
            EventBody::ElectiveEnrolled(ElectiveEnrolled {
                course_id,
                provider_school: provider.to_string(),
                student_pseudonym: pseudonymise(&key, &raw_student),
            }),
        );
    };
    let provider = province.schools.iter().find(|s| s.alliance == school.alliance && s.strong).filter(|_| !school.strong);
    let cross = match provider {
        Some(provider) => {
            let n = sim.rng.random_range(1..=4);
            for i in 0..n {
                enrol(sim, &provider.id, i);
            }
            n
        }
        None => 0,
    };
    let own = 1 + (5.0 * school.vigour).round() as i64;
    for i in 0..own {
        enrol(sim, &school.id, cross + i);
    }
}

fn assessments(sim: &mut Sim<'_>, school: &SimSchool, day: NaiveDate) {
    let key = sim.province.alliance_key(&school.alliance);
    for room in school.classrooms.iter().filter(|c| !c.shared_lab && !c.recording_room) {
        let subject = SUBJECTS[sim.rng.random_range(0..3)];
        let assessment_id = format!("{}-{}-quiz", room.id, day.format("%Y%m%d"));
        for s in 0..8 {
            // Raw ids exist only here, on the terminal; the event carries the pseudonym.
            let raw_student = format!("{}-stu{s:02}", room.id);
            let mean = 55.0 + 30.0 * school.vigour;
            let score: f64 = (mean + sim.rng.random_range(-18.0..18.0)).clamp(0.0, 100.0).round();
            let t = at(day, 15, 0) + Duration::seconds(s * 7);
            sim.emit(
                room,
                t,
                EventBody::AssessmentRecorded(AssessmentRecorded {
                    assessment_id: assessment_id.clone(),
                    subject: subject.into(),
                    grade: room.grade,
                    student_pseudonym: pseudonymise(&key, &raw_student),
                    score,
                    max_score: 100.0,
                }),
            );
        }
    }
}

fn research_activities(sim: &mut Sim<'_>, day: NaiveDate) {
    let province = sim.province;
    let mut zones: Vec<&str> = province.schools.iter().map(|s| s.zone.as_str()).collect();
    zones.sort();
    zones.dedup();
    for zone in zones {
        let activity_id = format!("{zone}-{}-act", day.format("%Y%m%d"));
        let cross = sim.chance(0.4);
        for (i, school) in province.schools.iter().filter(|s| s.zone == zone).enumerate() {
            if !sim.chance(0.5 + 0.45 * school.vigour) {
                continue;
            }
            let room = &school.classrooms[school.classrooms.len() - 1];
            let teachers = 1 + sim.rng.random_range(0..3);
            for t in 0..teachers {
                let role = if i == 0 && t == 0 {
                    ResearchRole::Host
                } else if t == 0 {
                    ResearchRole::Speaker
                } else {
                    ResearchRole::Participant
                };
                sim.emit(
                    room,
                    at(day, 14, 30),
                    EventBody::ResearchActivityParticipated(ResearchActivityParticipated {
                        activity_id: activity_id.clone(),
                        zone: zone.into(),
                        teacher_id: school.teachers[t].clone(),
                        role,
                        cross_discipline: cross,
                    }),
                );
            }
        }
    }
}

/// For analytics tests: the id-less essentials of an event stream.
pub fn count_by_type(events: &[Event]) -> std::collections::BTreeMap<&'static str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in events {
        *m.entry(e.event_type().as_str()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::province::{ProvinceSpec, build};
    use edubrain_schemas::{ValidationPolicy, validate};

    fn week() -> (Province, Vec<Event>) {
        let p = build(&ProvinceSpec { cities: 1, alliances_per_city: 1, schools_per_alliance: 6, classrooms_per_school: 4, seed: 3 });
        let spec =
            SimulationSpec { first_day: NaiveDate::from_ymd_opt(2026, 9, 7).unwrap(), school_days: 5, heartbeat_minutes: 15, seed: 3 };
        let events = simulate(&p, &spec);
        (p, events)
    }

    #[test]
    fn every_simulated_event_is_valid_and_every_type_occurs() {
        let (_, events) = week();
        let now = Utc.with_ymd_and_hms(2026, 9, 12, 0, 0, 0).unwrap();
        for e in &events {
            let back = Event::from_json(&e.to_json()).unwrap();
            let clock = validate(&back, now, &ValidationPolicy::default()).unwrap_or_else(|err| panic!("{err}: {e:?}"));
            assert_eq!(clock, None, "simulated clocks are right: {e:?}");
            assert_eq!(e.header.event_id.get_version_num(), 4);
        }
        let counts = count_by_type(&events);
        for t in EventType::ALL {
            assert!(counts.contains_key(t.as_str()), "no {} events in a simulated week: {counts:?}", t.as_str());
        }
        let mut ids: Vec<_> = events.iter().map(|e| e.header.event_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len(), "event ids are unique");
    }

    #[test]
    fn deterministic_and_time_ordered() {
        let (_, a) = week();
        let (_, b) = week();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].header.event_time <= w[1].header.event_time));
    }

    #[test]
    fn strong_schools_use_their_equipment_more_than_rural_ones() {
        let (p, events) = week();
        let use_per_room = |pred: &dyn Fn(&SimSchool) -> bool| {
            let schools: Vec<&SimSchool> = p.schools.iter().filter(|s| pred(s)).collect();
            let rooms: usize = schools.iter().map(|s| s.classrooms.len()).sum();
            let secs: f64 = events
                .iter()
                .filter(|e| schools.iter().any(|s| s.id == e.header.school))
                .filter_map(|e| match &e.body {
                    EventBody::EquipmentSessionEnded(x) => Some(x.duration_s),
                    _ => None,
                })
                .sum();
            secs / rooms as f64
        };
        let strong = use_per_room(&|s| s.strong);
        let rural = use_per_room(&|s| s.locale == Locale::Rural);
        assert!(strong > 1.5 * rural, "strong {strong} vs rural {rural}");
    }

    #[test]
    fn last_school_week_is_a_monday_in_the_past() {
        let d = last_school_week(NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 11, 16).unwrap());
        let d = last_school_week(NaiveDate::from_ymd_opt(2026, 11, 29).unwrap());
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 11, 16).unwrap());
    }
}

//! The spine, end to end through real processes: terminal agents publish over MQTT to a real
//! Mosquitto, the edge produces to a real Tansu, the cloud writes Parquet and answers queries.
//! The province is small and hand-built so every analytic has a hand-computed expected value.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use edubrain_agent::{MqttTarget, Pacing, PublishProgress};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_cloud::CloudConfig;
use edubrain_cloud::analytics::DateRange;
use edubrain_cloud::analytics::gaps::{GapReport, Scope};
use edubrain_cloud::analytics::utilisation::{GroupBy, UtilisationRow, utilisation};
use edubrain_e2e::read_topic;
use edubrain_edge::EdgeConfig;
use edubrain_schemas::event::*;
use edubrain_schemas::identity::terminal_username;
use edubrain_schemas::topics::{KAFKA_DEADLETTER_TOPIC, TerminalTopic};
use edubrain_schemas::{Event, EventBody, Header, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const REGISTRY: &str = "\
school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong
c01-sa,城区第一小学,c01,c01-k1,c01-a1,c01-z1,urban,primary,100,10,10,2,1,4,600,500,300000,3,1200000,true
c01-sb,乡第二小学,c01,c01-k1,c01-a1,c01-z1,rural,primary,300,20,10,6,3,3,1800,1500,900000,9,3600000,false
";

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 9, d).unwrap()
}

fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    edubrain_agent::local_time(day(d), h, m)
}

struct Room {
    school: &'static str,
    id: &'static str,
}

const RA1: Room = Room { school: "c01-sa", id: "c01-sa-r1" };
const RA2: Room = Room { school: "c01-sa", id: "c01-sa-r2" };
const RB1: Room = Room { school: "c01-sb", id: "c01-sb-r1" };

fn ev(n: &mut u128, room: &Room, t: DateTime<Utc>, body: EventBody) -> Event {
    *n += 1;
    Event {
        header: Header {
            event_id: Uuid::from_u128(0xe2e0_0000_0000 + *n),
            schema_version: SCHEMA_VERSION,
            city: "c01".into(),
            school: room.school.into(),
            classroom: room.id.into(),
            terminal: format!("t-{}", room.id),
            event_time: t,
        },
        body,
    }
}

fn heartbeat(room: &Room) -> EventBody {
    EventBody::DeviceHeartbeat(DeviceHeartbeat {
        device_id: format!("t-{}", room.id),
        device_kind: DeviceKind::ClassroomTerminal,
        uptime_s: 60,
    })
}

fn session_end(room: &Room, secs: f64) -> EventBody {
    EventBody::EquipmentSessionEnded(EquipmentSessionEnded {
        device_id: format!("{}-d1", room.id),
        equipment: Equipment::Projector,
        session_id: format!("s{secs}"),
        duration_s: secs,
    })
}

fn outcome(id: &str) -> FacilityBookingOutcome {
    FacilityBookingOutcome {
        booking_id: id.into(),
        facility_id: RA1.id.into(),
        facility_kind: FacilityKind::Lab,
        booking_school: "c01-sb".into(),
    }
}

fn upload(id: &str, passed: bool) -> EventBody {
    EventBody::ResourceUploaded(ResourceUploaded {
        resource_id: id.into(),
        resource_kind: ResourceKind::MicroLesson,
        subject: "math".into(),
        owner_school: "c01-sa".into(),
        teacher_id: "c01-sa-t1".into(),
        passed_review: passed,
    })
}

fn assessment(student: &str, score: f64) -> EventBody {
    EventBody::AssessmentRecorded(AssessmentRecorded {
        assessment_id: "quiz1".into(),
        subject: "math".into(),
        grade: 3,
        student_pseudonym: edubrain_schemas::pseudonym::pseudonymise(b"c01-a1-key", student),
        score,
        max_score: 100.0,
    })
}

/// The hand-computed province's events. Expected values are derived in the test below.
fn province_events() -> Vec<Event> {
    let mut n = 0;
    let mut v = vec![
        // Room A1: on two days (12 timetable hours), 3 h of projector use on the first.
        ev(&mut n, &RA1, at(7, 8, 0), heartbeat(&RA1)),
        ev(&mut n, &RA1, at(8, 8, 0), heartbeat(&RA1)),
        ev(&mut n, &RA1, at(7, 12, 0), session_end(&RA1, 3.0 * 3600.0)),
        // Room A2: on one day (6 h), 1.5 h + 1.5 h of use.
        ev(&mut n, &RA2, at(7, 8, 0), heartbeat(&RA2)),
        ev(&mut n, &RA2, at(7, 10, 0), session_end(&RA2, 5400.0)),
        ev(&mut n, &RA2, at(7, 16, 0), session_end(&RA2, 5400.0)),
        // Room B1: on one day (6 h), 0.6 h of use.
        ev(&mut n, &RB1, at(7, 8, 0), heartbeat(&RB1)),
        ev(&mut n, &RB1, at(7, 9, 0), session_end(&RB1, 2160.0)),
    ];
    // A's lab: 3 check-ins and 1 no-show.
    for (i, shows) in [true, true, true, false].into_iter().enumerate() {
        let o = outcome(&format!("bk{i}"));
        v.push(ev(
            &mut n,
            &RA1,
            at(7, 14, i as u32),
            if shows { EventBody::FacilityBookingCheckedIn(o) } else { EventBody::FacilityBookingNoShow(o) },
        ));
    }
    // A broadcasts two dual-teacher streams; one is interrupted.
    for s in ["st1", "st2"] {
        v.push(ev(
            &mut n,
            &RA2,
            at(8, 9, 0),
            EventBody::LiveStreamStarted(LiveStreamStarted { stream_id: s.into(), lesson_id: format!("l-{s}") }),
        ));
    }
    v.push(ev(
        &mut n,
        &RA2,
        at(8, 9, 10),
        EventBody::LiveStreamInterrupted(LiveStreamInterrupted { stream_id: "st1".into(), outage_s: 30.0 }),
    ));
    // A uploads r1 (passes review), r2 (fails), r3 (passes); B views r1.
    v.push(ev(&mut n, &RA1, at(8, 12, 0), upload("r1", true)));
    v.push(ev(&mut n, &RA1, at(8, 12, 1), upload("r2", false)));
    v.push(ev(&mut n, &RA1, at(8, 12, 2), upload("r3", true)));
    v.push(ev(
        &mut n,
        &RB1,
        at(8, 12, 30),
        EventBody::ResourceViewed(ResourceUse {
            resource_id: "r1".into(),
            resource_kind: ResourceKind::MicroLesson,
            subject: "math".into(),
            owner_school: "c01-sa".into(),
            teacher_id: "c01-sb-t1".into(),
        }),
    ));
    // The course supermarket: B's students enrol twice in A's elective and once in B's own; one
    // of A's in A's own.
    for (room, provider, student, minute) in
        [(&RB1, "c01-sa", "b-1", 0), (&RB1, "c01-sa", "b-2", 1), (&RB1, "c01-sb", "b-3", 2), (&RA1, "c01-sa", "a-1", 0)]
    {
        v.push(ev(
            &mut n,
            room,
            at(8, 16, minute),
            EventBody::ElectiveEnrolled(ElectiveEnrolled {
                course_id: format!("{provider}-elective1"),
                provider_school: provider.into(),
                student_pseudonym: edubrain_schemas::pseudonym::pseudonymise(b"c01-a1-key", student),
            }),
        ));
    }
    // Math: A scores 80, 80; B scores 60, 60.
    v.push(ev(&mut n, &RA1, at(8, 15, 0), assessment("a-1", 80.0)));
    v.push(ev(&mut n, &RA1, at(8, 15, 1), assessment("a-2", 80.0)));
    v.push(ev(&mut n, &RB1, at(8, 15, 0), assessment("b-1", 60.0)));
    v.push(ev(&mut n, &RB1, at(8, 15, 1), assessment("b-2", 60.0)));
    v.sort_by_key(|e| e.header.event_time);
    v
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// The provisioning secret of this test's hub (terminal and edge passwords derive from it).
const SECRET: &str = "spine-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_warehouse_exactly_once_and_analytics_match_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let events = province_events();
    let terminals: BTreeSet<String> = events.iter().map(|e| terminal_username(&TerminalTopic::from_header(&e.header))).collect();
    let users = edubrain_e2e::hub_logins(SECRET, terminals.into_iter().chain(["edge-c01".to_string()]));
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &users).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let registry = dir.path().join("registry.csv");
    std::fs::write(&registry, REGISTRY).unwrap();
    let shutdown = CancellationToken::new();

    let mut edge_config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("edge-wal"));
    edge_config.login_with(SECRET);
    let edge = edubrain_edge::start(edge_config, shutdown.clone()).await.unwrap();

    let mut cloud_config = CloudConfig::on_loopback(dir.path().join("warehouse"), Some(registry), &tansu.bootstrap());
    cloud_config.ingest.flush_interval_ms = 200;
    let token = edubrain_cloud::access::new_token();
    cloud_config.access.add("spine-test", edubrain_cloud::access::Role::Province, &token);
    let cloud = edubrain_cloud::start(cloud_config.clone(), shutdown.clone()).await.unwrap();
    wait_for("the edge to subscribe", 30, || edge.metrics.mqtt_subscribed.get() == 1).await;

    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(SECRET);
    let progress = Arc::new(PublishProgress::default());
    let pacing = Pacing { sim_start: events[0].header.event_time, wall_start: tokio::time::Instant::now(), speed: f64::INFINITY };
    let summary = edubrain_agent::publish_all_durable(
        &target,
        events.clone(),
        pacing,
        &dir.path().join("outbox"),
        &Default::default(),
        progress.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!((summary.created, summary.acked), (events.len() as u64, events.len() as u64));

    // A resend of an event (a terminal that reconnected) and two bad messages on A1's topic.
    let a1_topic = TerminalTopic::from_header(&events[0].header).events_topic();
    let resend = events.iter().find(|e| e.header.classroom == RA1.id).unwrap().to_json();
    let mut foreign = events[0].clone();
    foreign.header.event_id = Uuid::from_u128(0xbad);
    foreign.header.classroom = "c01-sb-r1".into(); // claims another classroom than its topic
    edubrain_agent::publisher::publish_raw(
        &target,
        &terminal_username(&TerminalTopic::from_header(&events[0].header)),
        &a1_topic,
        vec![resend, b"{\"event_id\": \"not-a-uuid\"".to_vec(), foreign.to_json()],
    )
    .await
    .unwrap();

    let expected = events.len() as u64;
    let mut progress_rx = cloud.progress.clone();
    wait_for("the warehouse to hold every event", 60, || progress_rx.borrow_and_update().events_written >= expected).await;
    wait_for("the dead-letter deliveries", 30, || edubrain_edge::metrics::total(&edge.metrics.events_rejected) == 2).await;
    assert_eq!(edge.metrics.events_duplicate.get(), 1, "the resend is dropped at the edge");

    // Exactly once: the warehouse ids are the published ids, each once.
    let wh = &cloud.warehouse;
    let rows = wh.query_json("SELECT event_id, COUNT(*) AS n FROM events GROUP BY event_id").await.unwrap();
    assert!(rows.iter().all(|r| r["n"] == 1), "an event is in the warehouse twice");
    let stored: BTreeSet<String> = rows.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect();
    let published: BTreeSet<String> = events.iter().map(|e| e.header.event_id.to_string()).collect();
    assert_eq!(stored, published);

    // Dead letters: raw bytes kept, with the rule and the field.
    let dlq = read_topic(&tansu.bootstrap(), KAFKA_DEADLETTER_TOPIC, 2).await;
    let rules: BTreeSet<(String, String)> = dlq.iter().map(|(_, h)| (h["edubrain.rule"].clone(), h["edubrain.field"].clone())).collect();
    assert_eq!(
        rules,
        BTreeSet::from([("json_syntax".to_string(), "$".to_string()), ("identity_matches_topic".to_string(), "classroom".to_string())])
    );
    assert!(dlq.iter().any(|(raw, _)| raw == b"{\"event_id\": \"not-a-uuid\""), "the raw bytes are kept as received");

    // Utilisation (timetable 6 h and 8 periods a day). A: (3 + 3) h in use over (2 + 1)
    // room-days = 6/18; idle: 3 sessions in 24 periods → 1 − 3/24 = 0.875. B: 0.6/6 = 0.1,
    // idle 1 − 1/8 = 0.875. Alliance: 6.6/24 = 0.275.
    let t = &cloud_config.thresholds;
    let by_school = utilisation(wh, GroupBy::School, DateRange::default(), t).await.unwrap();
    let a = by_school.iter().find(|r| r.group == "c01-sa").unwrap();
    let b = by_school.iter().find(|r| r.group == "c01-sb").unwrap();
    assert!(close(a.utilisation.value, 1.0 / 3.0) && close(a.idle_rate.value, 0.875), "{a:?}");
    assert!(close(b.utilisation.value, 0.1) && close(b.idle_rate.value, 0.875), "{b:?}");
    assert!(close(a.booking_no_show_rate.value, 0.25), "{a:?}");
    assert!(close(a.live_interruption_rate.value, 0.5), "{a:?}");
    assert!(close(a.resource_sharing_rate.value, 1.0 / 3.0), "r1 of r1..r3 was used by another school: {a:?}");
    assert!(close(a.upload_pass_rate.value, 2.0 / 3.0), "{a:?}");
    assert_eq!(a.utilisation.meets, Some(false));
    // Cross-school electives: B 2 of 3, A 0 of 1, the alliance 2 of 4.
    let electives = |r: &UtilisationRow| r.cross_school_electives.clone().map(|e| (e.cross_school, e.enrolments, e.share));
    assert_eq!(electives(b), Some((2, 3, Some(2.0 / 3.0))), "{b:?}");
    assert_eq!(electives(a), Some((0, 1, Some(0.0))), "{a:?}");
    let alliance = utilisation(wh, GroupBy::Alliance, DateRange::default(), t).await.unwrap();
    assert!(close(alliance[0].utilisation.value, 6.6 / 24.0), "{alliance:?}");
    assert_eq!(electives(&alliance[0]), Some((2, 4, Some(0.5))), "{alliance:?}");
    let rooms = utilisation(wh, GroupBy::Classroom, DateRange::default(), t).await.unwrap();
    assert!(rooms.iter().all(|r| r.cross_school_electives.is_none()), "an enrolment belongs to a school, not a room");
    // A date range that excludes 7 September leaves only A1's second day.
    let later = utilisation(wh, GroupBy::School, DateRange { from: Some(day(8)), to: None }, t).await.unwrap();
    assert!(close(later.iter().find(|r| r.group == "c01-sa").unwrap().utilisation.value, 0.0));

    // Gaps from the registry: qualified teachers per 100 pupils 10/100 vs 10/300 → CV 0.57735
    // (over the 0.50 primary limit); senior titles 40% urban vs 15% rural = 25 pp.
    let gaps = GapReport::build(wh.schools(), &[Scope::County], t);
    let q = gaps.cv.iter().find(|r| r.indicator == "qualified_teachers_per_100").unwrap();
    assert!((q.cv - 0.577_350_269).abs() < 1e-6 && !q.meets, "{q:?}");
    let key = gaps.cv.iter().find(|r| r.indicator == "key_teachers_per_100").unwrap();
    assert!(key.cv.abs() < 1e-12, "2/100 and 6/300 are the same ratio: {key:?}");
    assert!((gaps.senior_title[0].gap_pp - 25.0).abs() < 1e-9, "{:?}", gaps.senior_title);

    // Recommendations for B: r1 already used, r2 failed review, so only r3:
    // gap: province math mean 0.7, B 0.6 → shortfall 1/7, gap = (1/7)/0.25 = 4/7;
    // quality: no ratings → prior 3/5 → 0.5; reuse 0; same zone → 1.
    // score = 0.35·4/7 + 0.25·0.5 + 0.15·0 + 0.25·1 = 0.575.
    let http = format!("http://{}", cloud.http_addr);
    let client = reqwest::Client::new();
    let get = |url: String| client.get(url).bearer_auth(&token).send();
    let recs: serde_json::Value = get(format!("{http}/api/v1/recommendations?school=c01-sb")).await.unwrap().json().await.unwrap();
    let list = recs["recommendations"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{recs}");
    assert_eq!(list[0]["resource_id"], "r3");
    assert!((list[0]["score"].as_f64().unwrap() - 0.575).abs() < 1e-9, "{recs}");

    // The HTTP API serves the same numbers, rejects bad input by name, and metrics are exposed.
    let api: serde_json::Value = get(format!("{http}/api/v1/utilisation?by=school")).await.unwrap().json().await.unwrap();
    let api_a = api.as_array().unwrap().iter().find(|r| r["group"] == "c01-sa").unwrap();
    assert!((api_a["utilisation"]["value"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let bad = get(format!("{http}/api/v1/utilisation?by=school;DROP")).await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("by=\"school;DROP\" is not one of"), "{body}");
    let bad = get(format!("{http}/api/v1/utilisation?from=2026-13-01")).await.unwrap();
    assert_eq!(bad.status(), 400);

    // Gaps from events. Teaching quality: A's mean score 80 (100 pupils), B's 60 (300 pupils):
    // weighted mean 65, S² = 0.25·15² + 0.75·5² = 75, CV = √75/65 = 0.1332, inside the zone
    // limit 0.30. Resource visits: A 0, B 1 over 100 and 300 pupils: mean 1/400 per pupil.
    let usage: serde_json::Value = get(format!("{http}/api/v1/gaps/usage?scope=zone")).await.unwrap().json().await.unwrap();
    let row = |name: &str| {
        usage["cv"].as_array().unwrap().iter().find(|r| r["indicator"] == name).cloned().unwrap_or_else(|| panic!("{name}: {usage}"))
    };
    let quality = row("teaching_quality");
    assert!((quality["cv"].as_f64().unwrap() - 75f64.sqrt() / 65.0).abs() < 1e-9, "{quality}");
    assert_eq!((quality["limit"].as_f64(), quality["meets"].as_bool()), (Some(0.30), Some(true)), "{quality}");
    assert!((row("resource_visits_per_pupil")["mean"].as_f64().unwrap() - 1.0 / 400.0).abs() < 1e-12, "{usage}");
    let edge_metrics = reqwest::get(format!("http://{}/metrics", edge.http_addr)).await.unwrap().text().await.unwrap();
    let rejected = edge_metrics.lines().find(|l| {
        l.starts_with("edubrain_edge_events_rejected_total{") && l.contains("rule=\"json_syntax\"") && l.contains("city=\"c01\"")
    });
    assert!(rejected.is_some_and(|l| l.ends_with(" 1")), "{edge_metrics}");
    assert_eq!(reqwest::get(format!("http://{}/healthz", edge.http_addr)).await.unwrap().status(), 200);
    let cloud_metrics = reqwest::get(format!("{http}/metrics")).await.unwrap().text().await.unwrap();
    assert!(cloud_metrics.contains(&format!("edubrain_cloud_ingest_events_written_total {expected}")), "{cloud_metrics}");

    shutdown.cancel();
    edge.wait().await.unwrap();
    cloud.wait().await.unwrap();
}

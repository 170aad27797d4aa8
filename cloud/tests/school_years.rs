//! A registry per school year: events meet the registry version of their own date, in the
//! analytics and in what each role may see.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use edubrain_agent::province::{self, ProvinceSpec};
use edubrain_agent::simulate::{SimulationSpec, local_offset, simulate};
use edubrain_cloud::Warehouse;
use edubrain_cloud::access::Role;
use edubrain_cloud::analytics::DateRange;
use edubrain_cloud::analytics::utilisation::{GroupBy, utilisation};
use edubrain_cloud::batch::StoredEvent;
use edubrain_cloud::config::Thresholds;
use edubrain_cloud::registry::{Registry, SchoolYear};

#[tokio::test]
async fn a_school_that_changes_alliance_counts_with_the_alliance_of_each_day() {
    let dir = tempfile::tempdir().unwrap();
    let province =
        province::build(&ProvinceSpec { seed: 3, cities: 1, alliances_per_city: 2, schools_per_alliance: 3, classrooms_per_school: 2 });
    let old = province.registry.clone();
    let mover = old.iter().find(|s| !s.strong).unwrap().school_id.clone();
    let (from, to) = {
        let mut alliances: Vec<String> = old.iter().map(|s| s.alliance.clone()).collect();
        alliances.sort();
        alliances.dedup();
        let from = old.iter().find(|s| s.school_id == mover).unwrap().alliance.clone();
        let to = alliances.into_iter().find(|a| *a != from).unwrap();
        (from, to)
    };
    let mut new = old.clone();
    for s in new.iter_mut().filter(|s| s.school_id == mover) {
        s.alliance = to.clone();
    }
    let registry = Registry::by_year(BTreeMap::from([(SchoolYear(2025), old), (SchoolYear(2026), new)])).unwrap();

    // Monday 31 August (school year 2025-2026) and Tuesday 1 September (2026-2027). The
    // simulator also makes a few events with skewed device clocks, dated days earlier.
    let events = simulate(
        &province,
        &SimulationSpec { first_day: NaiveDate::from_ymd_opt(2026, 8, 31).unwrap(), school_days: 2, heartbeat_minutes: 30, seed: 1 },
    );
    let stored: Vec<StoredEvent> =
        events.into_iter().map(|event| StoredEvent { received_time: event.header.event_time, event, clock_flag: None }).collect();
    let root = dir.path().join("warehouse");
    edubrain_cloud::sink::write_events(&root, "part-0.parquet", &stored, local_offset()).unwrap();
    let w = Warehouse::open(&root, registry, 1 << 30).await.unwrap();

    let rows = w
        .query_json(&format!(
            "SELECT e.date, s.alliance, s.school_year, COUNT(*) AS n FROM events e \
             JOIN school_dim s ON e.school = s.school_id AND e.registry_from = s.registry_from \
             WHERE e.school = '{mover}' AND e.date >= '2026-08-31' GROUP BY e.date, s.alliance, s.school_year ORDER BY e.date"
        ))
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r["date"].as_str().unwrap().into(), r["alliance"].as_str().unwrap().into(), r["school_year"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        got,
        [
            ("2026-08-31".to_string(), from.clone(), "2025-2026".to_string()),
            ("2026-09-01".to_string(), to.clone(), "2026-2027".to_string())
        ]
    );

    // The old alliance sees the mover's August day only; the new one its September day only.
    for (alliance, day) in [(&from, "2026-08-31"), (&to, "2026-09-01")] {
        let scoped = w.scoped(&Role::Alliance(alliance.clone())).await.unwrap();
        let days = scoped
            .query_json(&format!("SELECT DISTINCT date FROM events WHERE school = '{mover}' AND date >= '2026-08-31'"))
            .await
            .unwrap();
        assert_eq!(days.len(), 1, "{alliance}: {days:?}");
        assert_eq!(days[0]["date"], day);
    }

    // Utilisation per alliance: each day's classrooms counted under that day's alliance. The
    // mover's rooms appear in both alliances' counts; all rooms of the day add up either way.
    let t = Thresholds::default();
    let day = |d: u32| {
        let date = NaiveDate::from_ymd_opt(2026, if d == 31 { 8 } else { 9 }, d).unwrap();
        DateRange { from: Some(date), to: Some(date) }
    };
    let rooms = |rows: &[edubrain_cloud::analytics::utilisation::UtilisationRow], a: &str| {
        rows.iter().find(|r| r.group == a).map(|r| r.classrooms).unwrap_or(0)
    };
    let aug = utilisation(&w, GroupBy::Alliance, day(31), &t).await.unwrap();
    let sep = utilisation(&w, GroupBy::Alliance, day(1), &t).await.unwrap();
    let mover_rooms = province.school(&mover).unwrap().classrooms.len() as u64;
    assert_eq!(rooms(&sep, &to), rooms(&aug, &to) + mover_rooms, "aug {aug:?}\nsep {sep:?}");
    assert_eq!(rooms(&sep, &from) + mover_rooms, rooms(&aug, &from));
    // Both days in one query: each (room, day) under its own day's version, so the mover's
    // rooms count in both alliances and every room-day's timetable hours once.
    let both = utilisation(&w, GroupBy::Alliance, DateRange { from: day(31).from, to: day(1).to }, &t).await.unwrap();
    assert_eq!(rooms(&both, &to), rooms(&sep, &to), "both {both:?}");
    assert_eq!(rooms(&both, &from), rooms(&aug, &from));
    let hours = |rows: &[edubrain_cloud::analytics::utilisation::UtilisationRow]| rows.iter().map(|r| r.timetable_hours).sum::<f64>();
    assert_eq!(hours(&both), hours(&aug) + hours(&sep));
    // Registry-only analytics use the newest version unless asked.
    assert_eq!(w.schools().iter().find(|s| s.school_id == mover).unwrap().alliance, to);
    assert_eq!(w.registry().year(SchoolYear(2025)).unwrap().iter().find(|s| s.school_id == mover).unwrap().alliance, from);
}

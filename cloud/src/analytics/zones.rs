//! Zone monitoring: the zone plan's seed indicators per zone per month and per semester, each
//! against its target, with alerts.
//!
//! Definitions (a zone's schools are the registry's schools with that `zone`):
//! - resource visits per school (month) = `resource_viewed` events of the zone's schools / schools;
//! - download rate = `resource_downloaded` / `resource_viewed` events of the zone's schools;
//! - research activities (semester) = distinct `activity_id`s of the zone's activities
//!   (`research_activity_participated.zone`);
//! - inter-school participation (semester) = share of the zone's schools with at least one
//!   teacher in one of the zone's activities;
//! - uploads per school (semester) = `resource_uploaded` events of the zone's schools / schools.
//!
//! Semesters follow the Chinese school year: `YYYY-autumn` is September to January (August is
//! counted with it), `YYYY-spring` February to July. Periods are local school days.
//!
//! Alerts: every indicator that misses its target, and the plan's example rule: a zone whose
//! visits per school are below the all-zone average (all visits / all schools of the zones the
//! caller sees) for `below_average_months` consecutive months.
//!
//! The plan's other seed indicators (problems solved, activity satisfaction, outcomes and their
//! conversion) are carried by no event yet; the report lists them as unmeasured rather than
//! inventing them.
//!
//! [`monitor`] is pure; [`load`] gathers its inputs from the warehouse.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Months, NaiveDate};
use serde::Serialize;

use super::DateRange;
use crate::CloudError;
use crate::config::ZoneTargets;
use crate::warehouse::Warehouse;

/// Resource events of one zone's schools in one month.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZoneUsage {
    pub zone: String,
    /// `YYYY-MM`.
    pub month: String,
    pub visits: u64,
    pub downloads: u64,
    pub uploads: u64,
}

/// One school taking part in one activity of a zone, in a month.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Participation {
    /// The activity's zone.
    pub zone: String,
    pub month: String,
    pub activity_id: String,
    pub school: String,
}

/// A value against its target (higher is better for every zone indicator).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measure {
    pub value: Option<f64>,
    pub target: f64,
    pub meets: Option<bool>,
}

impl Measure {
    fn new(value: Option<f64>, target: f64) -> Self {
        Measure { value, target, meets: value.map(|v| v >= target) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneMonth {
    pub zone: String,
    pub month: String,
    pub schools: usize,
    pub visits_per_school: Measure,
    pub download_rate: Measure,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneSemester {
    pub zone: String,
    pub semester: String,
    pub schools: usize,
    pub research_activities: Measure,
    pub inter_school_participation: Measure,
    pub uploads_per_school: Measure,
    pub download_rate: Measure,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneAlert {
    pub zone: String,
    /// The month or semester the alert is about.
    pub period: String,
    pub indicator: &'static str,
    /// `below_target` or `below_all_zone_average`.
    pub rule: &'static str,
    pub value: f64,
    /// The target, or the all-zone average for `below_all_zone_average`.
    pub threshold: f64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneReport {
    pub months: Vec<ZoneMonth>,
    pub semesters: Vec<ZoneSemester>,
    /// All visits / all schools of the zones in the report, per month.
    pub all_zone_visits_per_school: BTreeMap<String, f64>,
    pub alerts: Vec<ZoneAlert>,
    pub targets: ZoneTargets,
    pub unmeasured: Vec<&'static str>,
}

/// The plan's seed indicators no event carries yet.
pub const UNMEASURED: [&str; 4] = ["problems_solved", "activity_satisfaction", "outcomes", "outcome_conversion"];

/// The semester a `YYYY-MM` month belongs to, or `None` if it is not a month.
pub fn semester_of(month: &str) -> Option<String> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    match m {
        1 => Some(format!("{}-autumn", y - 1)),
        2..=7 => Some(format!("{y}-spring")),
        8..=12 => Some(format!("{y}-autumn")),
        _ => None,
    }
}

/// Every month from the first to the last of `months`, so a month without events is a zero
/// rather than a gap that would break a "consecutive months" rule.
fn calendar_months<'a>(months: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let parse = |m: &str| NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").ok();
    let parsed: BTreeSet<NaiveDate> = months.into_iter().filter_map(parse).collect();
    let (Some(&first), Some(&last)) = (parsed.first(), parsed.last()) else { return Vec::new() };
    let mut out = Vec::new();
    let mut m = first;
    while m <= last {
        out.push(format!("{:04}-{:02}", m.year(), m.month()));
        m = m + Months::new(1);
    }
    out
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

/// Computes the monitoring report. `zone_schools` maps each zone to its schools (from the
/// registry); zones of events that are not in it are ignored.
pub fn monitor(
    zone_schools: &BTreeMap<String, BTreeSet<String>>,
    usage: &[ZoneUsage],
    participation: &[Participation],
    t: &ZoneTargets,
) -> ZoneReport {
    let months = calendar_months(usage.iter().map(|u| u.month.as_str()).chain(participation.iter().map(|p| p.month.as_str())));
    let mut by_zone_month: BTreeMap<(&str, &str), (u64, u64, u64)> = BTreeMap::new();
    for u in usage {
        let e = by_zone_month.entry((u.zone.as_str(), u.month.as_str())).or_default();
        e.0 += u.visits;
        e.1 += u.downloads;
        e.2 += u.uploads;
    }
    let get = |zone: &str, month: &str| by_zone_month.get(&(zone, month)).copied().unwrap_or_default();
    let total_schools: usize = zone_schools.values().map(BTreeSet::len).sum();

    // All-zone average per month, and the monthly rows.
    let mut all_zone = BTreeMap::new();
    for m in &months {
        let visits: u64 = zone_schools.keys().map(|z| get(z, m).0).sum();
        if let Some(avg) = ratio(visits as f64, total_schools as f64) {
            all_zone.insert(m.clone(), avg);
        }
    }
    let mut month_rows = Vec::new();
    for (zone, schools) in zone_schools {
        for m in &months {
            let (visits, downloads, _) = get(zone, m);
            month_rows.push(ZoneMonth {
                zone: zone.clone(),
                month: m.clone(),
                schools: schools.len(),
                visits_per_school: Measure::new(ratio(visits as f64, schools.len() as f64), t.visits_per_school_per_month),
                download_rate: Measure::new(ratio(downloads as f64, visits as f64), t.download_rate),
            });
        }
    }

    // Semesters: sums of their months; activities and participating schools as sets, so an
    // activity spanning two months counts once.
    let mut semesters: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for m in &months {
        if let Some(s) = semester_of(m) {
            semesters.entry(s).or_default().push(m);
        }
    }
    let mut semester_rows = Vec::new();
    for (zone, schools) in zone_schools {
        for (semester, ms) in &semesters {
            let (visits, downloads, uploads) = ms.iter().map(|m| get(zone, m)).fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
            let in_period = |p: &&Participation| p.zone == *zone && ms.contains(&p.month.as_str());
            let activities: BTreeSet<&str> = participation.iter().filter(in_period).map(|p| p.activity_id.as_str()).collect();
            let taking_part: BTreeSet<&str> =
                participation.iter().filter(in_period).map(|p| p.school.as_str()).filter(|s| schools.contains(*s)).collect();
            semester_rows.push(ZoneSemester {
                zone: zone.clone(),
                semester: semester.clone(),
                schools: schools.len(),
                research_activities: Measure::new(Some(activities.len() as f64), t.research_activities_per_semester),
                inter_school_participation: Measure::new(
                    ratio(taking_part.len() as f64, schools.len() as f64),
                    t.inter_school_participation,
                ),
                uploads_per_school: Measure::new(ratio(uploads as f64, schools.len() as f64), t.uploads_per_school_per_semester),
                download_rate: Measure::new(ratio(downloads as f64, visits as f64), t.download_rate),
            });
        }
    }

    let mut alerts = Vec::new();
    let mut below = |zone: &str, period: &str, indicator: &'static str, m: &Measure| {
        if let (Some(false), Some(v)) = (m.meets, m.value) {
            alerts.push(ZoneAlert {
                zone: zone.into(),
                period: period.into(),
                indicator,
                rule: "below_target",
                value: v,
                threshold: m.target,
                message: format!("zone {zone} {period}: {indicator} {v:.3} is below its target {}", m.target),
            });
        }
    };
    for r in &month_rows {
        below(&r.zone, &r.month, "visits_per_school", &r.visits_per_school);
        below(&r.zone, &r.month, "download_rate", &r.download_rate);
    }
    for r in &semester_rows {
        below(&r.zone, &r.semester, "research_activities", &r.research_activities);
        below(&r.zone, &r.semester, "inter_school_participation", &r.inter_school_participation);
        below(&r.zone, &r.semester, "uploads_per_school", &r.uploads_per_school);
        below(&r.zone, &r.semester, "download_rate", &r.download_rate);
    }
    // Month rows are grouped by zone, in calendar order within a zone.
    let need = t.below_average_months.max(1);
    for rows in month_rows.chunk_by(|a, b| a.zone == b.zone) {
        let mut streak = 0;
        for r in rows {
            let (Some(v), Some(&avg)) = (r.visits_per_school.value, all_zone.get(&r.month)) else {
                streak = 0;
                continue;
            };
            streak = if v < avg { streak + 1 } else { 0 };
            if streak >= need {
                alerts.push(ZoneAlert {
                    zone: r.zone.clone(),
                    period: r.month.clone(),
                    indicator: "visits_per_school",
                    rule: "below_all_zone_average",
                    value: v,
                    threshold: avg,
                    message: format!(
                        "zone {} {}: visits per school {v:.1} below the all-zone average {avg:.1} for {streak} months in a row",
                        r.zone, r.month
                    ),
                });
            }
        }
    }
    ZoneReport {
        months: month_rows,
        semesters: semester_rows,
        all_zone_visits_per_school: all_zone,
        alerts,
        targets: t.clone(),
        unmeasured: UNMEASURED.to_vec(),
    }
}

/// The report over `range`, from the warehouse `w` (already scoped to the caller).
pub async fn load(w: &Warehouse, range: DateRange, t: &ZoneTargets) -> Result<ZoneReport, CloudError> {
    let mut zone_schools: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in w.schools() {
        zone_schools.entry(s.zone.clone()).or_default().insert(s.school_id.clone());
    }
    let r = range.predicate();
    let str_of =
        |row: &serde_json::Map<String, serde_json::Value>, k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let num = |row: &serde_json::Map<String, serde_json::Value>, k: &str| row.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let usage = w
        .query_json(&format!(
            "SELECT s.zone AS zone, substr(e.date, 1, 7) AS month, \
                    SUM(CASE WHEN e.event_type = 'resource_viewed' THEN 1 ELSE 0 END) AS visits, \
                    SUM(CASE WHEN e.event_type = 'resource_downloaded' THEN 1 ELSE 0 END) AS downloads, \
                    SUM(CASE WHEN e.event_type = 'resource_uploaded' THEN 1 ELSE 0 END) AS uploads \
             FROM events e JOIN school_dim s ON e.school = s.school_id AND e.registry_from = s.registry_from \
             WHERE e.event_type IN ('resource_viewed', 'resource_downloaded', 'resource_uploaded'){r} \
             GROUP BY s.zone, substr(e.date, 1, 7)"
        ))
        .await?
        .iter()
        .map(|row| ZoneUsage {
            zone: str_of(row, "zone"),
            month: str_of(row, "month"),
            visits: num(row, "visits"),
            downloads: num(row, "downloads"),
            uploads: num(row, "uploads"),
        })
        .collect::<Vec<_>>();
    let participation = w
        .query_json(&format!(
            "SELECT DISTINCT zone, substr(date, 1, 7) AS month, activity_id, school FROM events \
             WHERE event_type = 'research_activity_participated'{r}"
        ))
        .await?
        .iter()
        .map(|row| Participation {
            zone: str_of(row, "zone"),
            month: str_of(row, "month"),
            activity_id: str_of(row, "activity_id"),
            school: str_of(row, "school"),
        })
        .collect::<Vec<_>>();
    Ok(monitor(&zone_schools, &usage, &participation, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones() -> BTreeMap<String, BTreeSet<String>> {
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
        BTreeMap::from([("z1".to_string(), set(&["a", "b"])), ("z2".to_string(), set(&["c", "d", "e", "f"]))])
    }

    fn usage(zone: &str, month: &str, visits: u64, downloads: u64, uploads: u64) -> ZoneUsage {
        ZoneUsage { zone: zone.into(), month: month.into(), visits, downloads, uploads }
    }

    fn part(zone: &str, month: &str, activity: &str, school: &str) -> Participation {
        Participation { zone: zone.into(), month: month.into(), activity_id: activity.into(), school: school.into() }
    }

    #[test]
    fn semesters_follow_the_school_year() {
        assert_eq!(semester_of("2026-01").as_deref(), Some("2025-autumn"));
        assert_eq!(semester_of("2026-02").as_deref(), Some("2026-spring"));
        assert_eq!(semester_of("2026-07").as_deref(), Some("2026-spring"));
        assert_eq!(semester_of("2026-09").as_deref(), Some("2026-autumn"));
        assert_eq!(semester_of("2026-13"), None);
        assert_eq!(semester_of("x"), None);
    }

    #[test]
    fn hand_computed_month_and_semester_rows() {
        let u = [usage("z1", "2026-09", 1200, 600, 10), usage("z2", "2026-09", 1600, 1200, 40), usage("z1", "2026-10", 900, 300, 30)];
        let p = [part("z1", "2026-09", "act1", "a"), part("z1", "2026-10", "act1", "a"), part("z1", "2026-10", "act2", "c")];
        let r = monitor(&zones(), &u, &p, &ZoneTargets::default());
        // All-zone average in September: (1200 + 1600) / 6 schools.
        assert!((r.all_zone_visits_per_school["2026-09"] - 2800.0 / 6.0).abs() < 1e-9);
        let z1_sep = r.months.iter().find(|m| m.zone == "z1" && m.month == "2026-09").unwrap();
        assert_eq!(z1_sep.visits_per_school.value, Some(600.0));
        assert_eq!(z1_sep.visits_per_school.meets, Some(true));
        assert_eq!(z1_sep.download_rate.value, Some(0.5));
        // z2 had no events in October: zero visits, no download rate.
        let z2_oct = r.months.iter().find(|m| m.zone == "z2" && m.month == "2026-10").unwrap();
        assert_eq!(z2_oct.visits_per_school.value, Some(0.0));
        assert_eq!(z2_oct.download_rate.value, None);
        let z1 = r.semesters.iter().find(|s| s.zone == "z1").unwrap();
        assert_eq!(z1.semester, "2026-autumn");
        // act1 spans two months and counts once; act2 is z1's too, but school c is z2's.
        assert_eq!(z1.research_activities.value, Some(2.0));
        assert_eq!(z1.inter_school_participation.value, Some(0.5));
        assert_eq!(z1.uploads_per_school.value, Some(20.0));
        assert_eq!(z1.uploads_per_school.meets, Some(true));
        assert!((z1.download_rate.value.unwrap() - 900.0 / 2100.0).abs() < 1e-12);
        assert_eq!(r.unmeasured, UNMEASURED);
    }

    #[test]
    fn two_months_below_the_all_zone_average_raise_the_plans_alert() {
        // z2's schools visit less than z1's in Sept and Oct, and more in Nov.
        let u = [
            usage("z1", "2026-09", 2000, 0, 0),
            usage("z2", "2026-09", 2000, 0, 0),
            usage("z1", "2026-10", 2000, 0, 0),
            usage("z2", "2026-10", 2000, 0, 0),
            usage("z1", "2026-11", 1000, 0, 0),
            usage("z2", "2026-11", 4000, 0, 0),
        ];
        let r = monitor(&zones(), &u, &[], &ZoneTargets::default());
        let avg: Vec<_> = r.alerts.iter().filter(|a| a.rule == "below_all_zone_average").collect();
        assert_eq!(avg.len(), 1, "{avg:?}");
        assert_eq!((avg[0].zone.as_str(), avg[0].period.as_str()), ("z2", "2026-10"));
        assert!((avg[0].value - 500.0).abs() < 1e-9 && (avg[0].threshold - 4000.0 / 6.0).abs() < 1e-9);
        // z1 in November: 500 per school meets the target (>= 500), and is below the average
        // for one month only: no alert.
        assert!(!r.alerts.iter().any(|a| a.zone == "z1" && a.period == "2026-11" && a.indicator == "visits_per_school"));
        // A month in which a zone has no events at all counts as zero visits.
        let u = [usage("z1", "2026-09", 10, 0, 0), usage("z2", "2026-09", 1000, 0, 0), usage("z2", "2026-10", 1000, 0, 0)];
        let r = monitor(&zones(), &u, &[], &ZoneTargets::default());
        assert!(r.alerts.iter().any(|a| a.zone == "z1" && a.period == "2026-10" && a.rule == "below_all_zone_average"));
    }

    #[test]
    fn below_target_alerts_name_zone_period_and_indicator() {
        let r = monitor(&zones(), &[usage("z1", "2026-03", 100, 10, 2)], &[], &ZoneTargets::default());
        let names: BTreeSet<_> = r.alerts.iter().filter(|a| a.zone == "z1").map(|a| (a.period.as_str(), a.indicator)).collect();
        for expected in [
            ("2026-03", "visits_per_school"),
            ("2026-03", "download_rate"),
            ("2026-spring", "research_activities"),
            ("2026-spring", "inter_school_participation"),
            ("2026-spring", "uploads_per_school"),
        ] {
            assert!(names.contains(&expected), "missing {expected:?} in {names:?}");
        }
        let a = r.alerts.iter().find(|a| a.indicator == "uploads_per_school").unwrap();
        assert_eq!(a.message, "zone z1 2026-spring: uploads_per_school 1.000 is below its target 20");
    }

    #[test]
    fn no_data_no_rows() {
        let r = monitor(&zones(), &[], &[], &ZoneTargets::default());
        assert!(r.months.is_empty() && r.semesters.is_empty() && r.alerts.is_empty());
    }
}

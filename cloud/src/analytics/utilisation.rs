//! Utilisation and sharing rates from events.
//!
//! Definitions (each classroom terminal stands for the equipment of its room):
//! - utilisation = equipment in-use hours / timetable hours, where timetable hours = school days
//!   the room's terminal was on (heartbeats) × `timetable_hours_per_day`;
//! - idle rate = share of timetable periods without an equipment session: 1 − sessions /
//!   (school days × `timetable_periods_per_day`), floored at 0;
//! - booking no-show rate = no-shows / (check-ins + no-shows), by the facility's school;
//! - live interruption rate = streams with at least one interruption / streams started;
//! - resource sharing rate = share of a group's resources used (viewed or downloaded) by at
//!   least one school other than the owner;
//! - upload pass rate = uploads that passed review / uploads;
//! - cross-school elective share = a group's students' elective enrolments in another school's
//!   courses (the course supermarket, 课程超市) / all their elective enrolments. The plans set no
//!   figure for it, so it is reported without a target.
//!
//! Events are grouped by the registry version of their own date (`registry_from`), so a school
//! that moved to another alliance or zone counts with the one it belonged to at the time.

use std::collections::BTreeMap;

use serde::Serialize;

use super::DateRange;
use crate::CloudError;
use crate::config::Thresholds;
use crate::warehouse::Warehouse;

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One row per device (the equipment of a room, by `device_id`): utilisation and idle rate.
    Device,
    /// One row per classroom: utilisation and idle rate.
    Classroom,
    School,
    Alliance,
    Zone,
    County,
    City,
}

impl GroupBy {
    pub const ALL: [GroupBy; 7] =
        [GroupBy::Device, GroupBy::Classroom, GroupBy::School, GroupBy::Alliance, GroupBy::Zone, GroupBy::County, GroupBy::City];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Device => "device",
            GroupBy::Classroom => "classroom",
            GroupBy::School => "school",
            GroupBy::Alliance => "alliance",
            GroupBy::Zone => "zone",
            GroupBy::County => "county",
            GroupBy::City => "city",
        }
    }

    /// Below the school: rates that belong to a school (bookings, streams, sharing, uploads)
    /// are not split further.
    fn below_school(self) -> bool {
        matches!(self, GroupBy::Device | GroupBy::Classroom)
    }

    /// Column of `school_dim` (a fixed identifier, never user text).
    fn column(self) -> &'static str {
        match self {
            GroupBy::Device | GroupBy::Classroom | GroupBy::School => "school_id",
            GroupBy::Alliance => "alliance",
            GroupBy::Zone => "zone",
            GroupBy::County => "county",
            GroupBy::City => "city",
        }
    }
}

/// A rate with its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    pub value: Option<f64>,
    pub target: f64,
    /// Whether higher is better for this rate (utilisation) or lower (idle, no-show).
    pub higher_is_better: bool,
    pub meets: Option<bool>,
}

impl Rate {
    fn new(value: Option<f64>, target: f64, higher_is_better: bool) -> Self {
        let meets = value.map(|v| if higher_is_better { v >= target } else { v <= target });
        Rate { value, target, higher_is_better, meets }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtilisationRow {
    pub group_by: GroupBy,
    pub group: String,
    /// The school of a classroom or device (absent for groups of schools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub school: Option<String>,
    pub classrooms: u64,
    pub in_use_hours: f64,
    pub timetable_hours: f64,
    pub utilisation: Rate,
    pub idle_rate: Rate,
    pub booking_no_show_rate: Rate,
    pub live_interruption_rate: Rate,
    pub resource_sharing_rate: Rate,
    pub upload_pass_rate: Rate,
    /// Absent below the school: an enrolment belongs to the school, not to a room.
    pub cross_school_electives: Option<ElectiveShare>,
}

/// Elective enrolments of a group's students, and the share of them in another school's courses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ElectiveShare {
    /// `cross_school / enrolments`; `None` without enrolments.
    pub share: Option<f64>,
    pub cross_school: u64,
    pub enrolments: u64,
}

impl ElectiveShare {
    fn new(cross_school: u64, enrolments: u64) -> Self {
        let share = (enrolments > 0).then(|| cross_school as f64 / enrolments as f64);
        ElectiveShare { share, cross_school, enrolments }
    }
}

type Metric = BTreeMap<String, Vec<Option<f64>>>;

async fn metric(w: &Warehouse, sql: &str, cols: usize) -> Result<Metric, CloudError> {
    Ok(metric_with_school(w, sql, cols).await?.into_iter().map(|(g, (_, v))| (g, v)).collect())
}

/// Rows of `group_id`, optional `school_id` and `v0..`.
async fn metric_with_school(
    w: &Warehouse,
    sql: &str,
    cols: usize,
) -> Result<BTreeMap<String, (Option<String>, Vec<Option<f64>>)>, CloudError> {
    let mut out = BTreeMap::new();
    for row in w.query_json(sql).await? {
        let group = row.get("group_id").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let school = row.get("school_id").and_then(|v| v.as_str()).map(str::to_string);
        let vals = (0..cols).map(|i| row.get(&format!("v{i}")).and_then(|v| v.as_f64())).collect();
        out.insert(group, (school, vals));
    }
    Ok(out)
}

/// The `days` CTE: per room and registry version, the school days its terminal was on (days
/// with a heartbeat). They come from the `presence` table, each room's heartbeat days as ingest
/// wrote them beside the events, not from the heartbeats themselves (60% of all events, and
/// scanning them was most of these queries' time). A room-day can be in several presence
/// files (one per events file that holds its heartbeats), hence the DISTINCT. Each room-day
/// gets its day's `registry_from` after the DISTINCT: the version is a function of the day.
fn room_days_cte(w: &Warehouse, r: &str) -> String {
    let version = w.registry().registry_from_sql("date");
    format!(
        "days AS (SELECT school, classroom, {version} AS registry_from, COUNT(*) AS school_days \
                  FROM (SELECT DISTINCT school, classroom, date FROM presence WHERE TRUE{r}) \
                  GROUP BY school, classroom, {version})"
    )
}

/// Utilisation and idle rate per classroom or per device: a device's timetable is its room's
/// (the days the room's terminal was on), its use its own sessions.
async fn usage_below_school(
    w: &Warehouse,
    by: GroupBy,
    r: &str,
    hours: f64,
    periods: f64,
) -> Result<BTreeMap<String, (Option<String>, Vec<Option<f64>>)>, CloudError> {
    // A device is known from its sessions, so only devices used at least once have a row.
    let unit_key = if by == GroupBy::Device { "u.device_id" } else { "d.classroom" };
    let used_key = if by == GroupBy::Device { ", device_id" } else { "" };
    let device_filter = if by == GroupBy::Device { " AND device_id IS NOT NULL" } else { "" };
    let join = if by == GroupBy::Device { "JOIN" } else { "LEFT JOIN" };
    let days = room_days_cte(w, r);
    metric_with_school(
        w,
        &format!(
            "WITH {days}, \
                  used AS (SELECT school, classroom, registry_from{used_key}, SUM(duration_s) AS in_use_s, COUNT(*) AS sessions FROM events \
                           WHERE event_type = 'equipment_session_ended'{device_filter}{r} GROUP BY school, classroom, registry_from{used_key}) \
             SELECT {unit_key} AS group_id, MIN(d.school) AS school_id, CAST(COUNT(DISTINCT d.classroom) AS DOUBLE) AS v0, \
                    SUM(COALESCE(u.in_use_s, 0)) / 3600.0 AS v1, \
                    CAST(SUM(d.school_days) AS DOUBLE) * {hours} AS v2, \
                    1.0 - SUM(LEAST(CAST(COALESCE(u.sessions, 0) AS DOUBLE), d.school_days * {periods})) / (SUM(d.school_days) * {periods}) AS v3 \
             FROM days d {join} used u ON d.school = u.school AND d.classroom = u.classroom AND d.registry_from = u.registry_from \
             JOIN school_dim s ON d.school = s.school_id AND d.registry_from = s.registry_from \
             GROUP BY {unit_key}"
        ),
        4,
    )
    .await
}

/// Utilisation report for every group of `by`, over `range`.
pub async fn utilisation(w: &Warehouse, by: GroupBy, range: DateRange, t: &Thresholds) -> Result<Vec<UtilisationRow>, CloudError> {
    let g = by.column();
    let r = range.predicate();
    let hours = t.timetable_hours_per_day;
    let periods = t.timetable_periods_per_day;
    if by.below_school() {
        let none = |target, higher| Rate::new(None, target, higher);
        return Ok(usage_below_school(w, by, &r, hours, periods)
            .await?
            .into_iter()
            .map(|(group, (school, u))| {
                let (in_use, timetable) = (u[1].unwrap_or(0.0), u[2].unwrap_or(0.0));
                UtilisationRow {
                    group_by: by,
                    group,
                    school,
                    classrooms: u[0].unwrap_or(0.0) as u64,
                    in_use_hours: in_use,
                    timetable_hours: timetable,
                    utilisation: Rate::new((timetable > 0.0).then(|| in_use / timetable), t.utilisation_target, true),
                    idle_rate: Rate::new(u[3], t.idle_rate_target, false),
                    booking_no_show_rate: none(t.booking_no_show_limit, false),
                    live_interruption_rate: none(t.live_interruption_target, false),
                    resource_sharing_rate: none(t.resource_sharing_target, true),
                    upload_pass_rate: none(t.upload_pass_rate_target, true),
                    cross_school_electives: None,
                }
            })
            .collect());
    }
    let days = room_days_cte(w, &r);
    let usage = metric(
        w,
        &format!(
            "WITH {days}, \
                  used AS (SELECT school, classroom, registry_from, SUM(duration_s) AS in_use_s, COUNT(*) AS sessions FROM events \
                           WHERE event_type = 'equipment_session_ended'{r} GROUP BY school, classroom, registry_from), \
                  rooms AS (SELECT d.school, d.classroom, d.registry_from, d.school_days, COALESCE(u.in_use_s, 0) AS in_use_s, \
                                   LEAST(CAST(COALESCE(u.sessions, 0) AS DOUBLE), d.school_days * {periods}) AS used_periods \
                           FROM days d LEFT JOIN used u \
                             ON d.school = u.school AND d.classroom = u.classroom AND d.registry_from = u.registry_from) \
             SELECT s.{g} AS group_id, CAST(COUNT(DISTINCT concat(rooms.school, '/', rooms.classroom)) AS DOUBLE) AS v0, \
                    SUM(in_use_s) / 3600.0 AS v1, \
                    CAST(SUM(school_days) AS DOUBLE) * {hours} AS v2, \
                    1.0 - SUM(used_periods) / (SUM(school_days) * {periods}) AS v3 \
             FROM rooms JOIN school_dim s ON rooms.school = s.school_id AND rooms.registry_from = s.registry_from GROUP BY s.{g}"
        ),
        4,
    )
    .await?;
    let no_show = metric(
        w,
        &format!(
            "SELECT s.{g} AS group_id, \
                    CAST(SUM(CASE WHEN event_type = 'facility_booking_no_show' THEN 1 ELSE 0 END) AS DOUBLE) / COUNT(*) AS v0 \
             FROM events e JOIN school_dim s ON e.school = s.school_id AND e.registry_from = s.registry_from \
             WHERE event_type IN ('facility_booking_no_show', 'facility_booking_checked_in'){r} GROUP BY s.{g}"
        ),
        1,
    )
    .await?;
    let interruptions = metric(
        w,
        &format!(
            "WITH streams AS (SELECT school, stream_id, MAX(CASE WHEN event_type = 'live_stream_interrupted' THEN 1 ELSE 0 END) AS interrupted, \
                                     MAX(CASE WHEN event_type = 'live_stream_started' THEN 1 ELSE 0 END) AS started, \
                                     MIN(registry_from) AS registry_from \
                              FROM events WHERE stream_id IS NOT NULL{r} GROUP BY school, stream_id) \
             SELECT s.{g} AS group_id, CAST(SUM(interrupted) AS DOUBLE) / SUM(started) AS v0 \
             FROM streams JOIN school_dim s ON streams.school = s.school_id AND streams.registry_from = s.registry_from \
             WHERE started = 1 GROUP BY s.{g}"
        ),
        1,
    )
    .await?;
    let sharing = metric(
        w,
        &format!(
            "WITH res AS (SELECT resource_id, MIN(owner_school) AS owner, MIN(registry_from) AS registry_from, \
                                 MAX(CASE WHEN event_type IN ('resource_viewed', 'resource_downloaded') AND school <> owner_school THEN 1 ELSE 0 END) AS shared \
                          FROM events WHERE resource_id IS NOT NULL{r} GROUP BY resource_id) \
             SELECT s.{g} AS group_id, CAST(SUM(shared) AS DOUBLE) / COUNT(*) AS v0 \
             FROM res JOIN school_dim s ON res.owner = s.school_id AND res.registry_from = s.registry_from GROUP BY s.{g}"
        ),
        1,
    )
    .await?;
    let uploads = metric(
        w,
        &format!(
            "SELECT s.{g} AS group_id, CAST(SUM(CASE WHEN passed_review THEN 1 ELSE 0 END) AS DOUBLE) / COUNT(*) AS v0 \
             FROM events e JOIN school_dim s ON e.school = s.school_id AND e.registry_from = s.registry_from \
             WHERE event_type = 'resource_uploaded'{r} GROUP BY s.{g}"
        ),
        1,
    )
    .await?;
    // The enrolment happens in the student's own school (`school`), for a course of `provider_school`.
    let electives = metric(
        w,
        &format!(
            "SELECT s.{g} AS group_id, CAST(SUM(CASE WHEN provider_school <> school THEN 1 ELSE 0 END) AS DOUBLE) AS v0, \
                    CAST(COUNT(*) AS DOUBLE) AS v1 \
             FROM events e JOIN school_dim s ON e.school = s.school_id AND e.registry_from = s.registry_from \
             WHERE event_type = 'elective_enrolled'{r} GROUP BY s.{g}"
        ),
        2,
    )
    .await?;
    let one = |m: &Metric, k: &str| m.get(k).and_then(|v| v[0]);
    let count = |m: &Metric, k: &str, i: usize| m.get(k).and_then(|v| v[i]).unwrap_or(0.0) as u64;
    let mut rows = Vec::new();
    for (group, u) in &usage {
        let (in_use, timetable) = (u[1].unwrap_or(0.0), u[2].unwrap_or(0.0));
        rows.push(UtilisationRow {
            group_by: by,
            group: group.clone(),
            school: None,
            classrooms: u[0].unwrap_or(0.0) as u64,
            in_use_hours: in_use,
            timetable_hours: timetable,
            utilisation: Rate::new((timetable > 0.0).then(|| in_use / timetable), t.utilisation_target, true),
            idle_rate: Rate::new(u[3], t.idle_rate_target, false),
            booking_no_show_rate: Rate::new(one(&no_show, group), t.booking_no_show_limit, false),
            live_interruption_rate: Rate::new(one(&interruptions, group), t.live_interruption_target, false),
            resource_sharing_rate: Rate::new(one(&sharing, group), t.resource_sharing_target, true),
            upload_pass_rate: Rate::new(one(&uploads, group), t.upload_pass_rate_target, true),
            cross_school_electives: Some(ElectiveShare::new(count(&electives, group, 0), count(&electives, group, 1))),
        });
    }
    Ok(rows)
}

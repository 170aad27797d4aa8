//! Gap analysis from indicators derived from events (usage), beside the registry's in [`gaps`]:
//! the same enrolment-weighted CV (per scope and level), Gini and Theil T with its exact
//! between/within split by locale and by alliance, over what schools *do* rather than what they
//! *have*. Each school's value X_i comes from its events over a date range; its weight P_i is its
//! enrolment in the registry version asked for, as the national standard weighs the registry's
//! indicators. The indicators:
//!
//! - `utilisation`: equipment in-use hours / timetable hours (as [`utilisation`] defines them);
//! - `resource_visits_per_pupil`: resource views and downloads made in the school, per pupil;
//! - `cross_school_electives_per_100`: enrolments of the school's students in another school's
//!   electives, per 100 pupils;
//! - `teaching_quality`: the mean assessment score as a percentage of the maximum. Its CV
//!   inside a zone is the zone plan's teaching-quality difference coefficient, limited by
//!   `thresholds.teaching_quality_cv_zone` (plan: 0.45 today, 0.30 the target).
//!
//! A through-school's counts are shared between its levels' registry rows by enrolment. A
//! school counts for an indicator when its events define it: heartbeats (a timetable) for the
//! first three, where no visits or enrolments then mean 0, not unknown; assessments for the last.
//! The computation ([`UsageGapReport::build`]) is pure; [`load`] runs the SQL.
//!
//! [`gaps`]: super::gaps
//! [`utilisation`]: super::utilisation

use std::collections::{BTreeMap, BTreeSet};

use edubrain_schemas::{Level, School};
use serde::Serialize;

use super::DateRange;
use super::gaps::{EquityRow, Scope, equity_row, weighted_cv};
use super::utilisation::{GroupBy, utilisation};
use crate::CloudError;
use crate::config::Thresholds;
use crate::warehouse::Warehouse;

/// An indicator derived from events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageIndicator {
    Utilisation,
    ResourceVisitsPerPupil,
    CrossSchoolElectivesPer100,
    TeachingQuality,
}

impl UsageIndicator {
    pub const ALL: [UsageIndicator; 4] = [
        UsageIndicator::Utilisation,
        UsageIndicator::ResourceVisitsPerPupil,
        UsageIndicator::CrossSchoolElectivesPer100,
        UsageIndicator::TeachingQuality,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UsageIndicator::Utilisation => "utilisation",
            UsageIndicator::ResourceVisitsPerPupil => "resource_visits_per_pupil",
            UsageIndicator::CrossSchoolElectivesPer100 => "cross_school_electives_per_100",
            UsageIndicator::TeachingQuality => "teaching_quality",
        }
    }

    /// Whether the school's value is a count per pupil (R_i is the count) or a level already
    /// (R_i = X_i · P_i, so that R_i / P_i gives the level back).
    fn per_pupil_scale(self) -> Option<f64> {
        match self {
            UsageIndicator::ResourceVisitsPerPupil => Some(1.0),
            UsageIndicator::CrossSchoolElectivesPer100 => Some(100.0),
            UsageIndicator::Utilisation | UsageIndicator::TeachingQuality => None,
        }
    }

    /// The plans' limit on this indicator's CV within a group of `scope`, where they set one.
    fn limit(self, scope: Scope, t: &Thresholds) -> Option<f64> {
        (self == UsageIndicator::TeachingQuality && scope == Scope::Zone).then_some(t.teaching_quality_cv_zone)
    }
}

/// Each indicator's value per school id: a count for per-pupil indicators, else the level.
pub type UsageValues = BTreeMap<UsageIndicator, BTreeMap<String, f64>>;

/// One indicator's CV across the schools of one group, with the plans' limit where there is one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageCvRow {
    pub scope: Scope,
    pub group: String,
    pub level: Level,
    pub indicator: &'static str,
    pub schools: usize,
    pub pupils: u64,
    /// Enrolment-weighted mean of the indicator.
    pub mean: f64,
    pub cv: f64,
    pub limit: Option<f64>,
    pub meets: Option<bool>,
}

/// The gap report over event-derived indicators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageGapReport {
    /// Schools of the registry with a value for at least one indicator.
    pub schools: usize,
    pub cv: Vec<UsageCvRow>,
    /// Province-wide Gini and Theil per indicator and level.
    pub equity: Vec<EquityRow>,
}

impl UsageGapReport {
    /// Joins `values` with the registry `schools` (schools without a registry row are left out:
    /// they have no enrolment to weigh them by) and computes every CV and equity row.
    pub fn build(schools: &[School], values: &UsageValues, scopes: &[Scope], t: &Thresholds) -> Self {
        // A through-school has a registry row per level, and its events are the whole school's:
        // its counts are shared between its rows by enrolment.
        let mut pupils_of: BTreeMap<&str, f64> = BTreeMap::new();
        for s in schools {
            *pupils_of.entry(s.school_id.as_str()).or_default() += s.enrolment as f64;
        }
        // R_i of a registry row with a value and pupils.
        let resource = |ind: UsageIndicator, s: &School| -> Option<f64> {
            let v = *values.get(&ind)?.get(&s.school_id)?;
            let all = pupils_of.get(s.school_id.as_str()).copied().unwrap_or_default();
            (s.enrolment > 0).then(|| match ind.per_pupil_scale() {
                Some(_) => v * s.enrolment as f64 / all,
                None => v * s.enrolment as f64,
            })
        };
        let mut cv = Vec::new();
        for scope in scopes {
            let mut groups: BTreeMap<(&str, Level), Vec<&School>> = BTreeMap::new();
            for s in schools {
                groups.entry((scope.key(s), s.level)).or_default().push(s);
            }
            for ((group, level), members) in &groups {
                for ind in UsageIndicator::ALL {
                    let rows: Vec<(f64, f64)> = members.iter().filter_map(|s| Some((resource(ind, s)?, s.enrolment as f64))).collect();
                    let scale = ind.per_pupil_scale().unwrap_or(1.0);
                    let Some(value) = weighted_cv(&rows, scale) else { continue };
                    let pupils: f64 = rows.iter().map(|(_, p)| p).sum();
                    let limit = ind.limit(*scope, t);
                    cv.push(UsageCvRow {
                        scope: *scope,
                        group: group.to_string(),
                        level: *level,
                        indicator: ind.name(),
                        schools: rows.len(),
                        pupils: pupils as u64,
                        mean: scale * rows.iter().map(|(r, _)| r).sum::<f64>() / pupils,
                        cv: value,
                        limit,
                        meets: limit.map(|l| value <= l),
                    });
                }
            }
        }
        let mut equity = Vec::new();
        for level in [Level::Primary, Level::Junior] {
            for ind in UsageIndicator::ALL {
                let members: Vec<(&School, f64)> =
                    schools.iter().filter(|s| s.level == level).filter_map(|s| Some((s, resource(ind, s)?))).collect();
                equity.extend(equity_row(level, ind.name(), &members));
            }
        }
        // A through-school has a row per level: count schools, not rows.
        let with_values: BTreeSet<&str> = schools
            .iter()
            .filter(|s| UsageIndicator::ALL.iter().any(|i| resource(*i, s).is_some()))
            .map(|s| s.school_id.as_str())
            .collect();
        UsageGapReport { schools: with_values.len(), cv, equity }
    }
}

/// Each school's indicator values over `range`.
pub async fn load(w: &Warehouse, range: DateRange, t: &Thresholds) -> Result<UsageValues, CloudError> {
    let mut values = UsageValues::new();
    let by_school = utilisation(w, GroupBy::School, range, t).await?;
    // Schools with a timetable (heartbeats in the range): no visits or enrolments there are 0.
    for row in &by_school {
        let mut set = |ind: UsageIndicator, v: f64| values.entry(ind).or_default().insert(row.group.clone(), v);
        if let Some(u) = row.utilisation.value {
            set(UsageIndicator::Utilisation, u);
        }
        set(UsageIndicator::ResourceVisitsPerPupil, 0.0);
        set(UsageIndicator::CrossSchoolElectivesPer100, row.cross_school_electives.as_ref().map_or(0, |e| e.cross_school) as f64);
    }
    let visits = per_school(
        w,
        &format!(
            "SELECT school, CAST(COUNT(*) AS DOUBLE) AS v FROM events \
             WHERE event_type IN ('resource_viewed', 'resource_downloaded'){} GROUP BY school",
            range.predicate()
        ),
    )
    .await?;
    let with_timetable = values.entry(UsageIndicator::ResourceVisitsPerPupil).or_default();
    for (school, v) in visits {
        if let Some(slot) = with_timetable.get_mut(&school) {
            *slot = v;
        }
    }
    values.extend(teaching_quality(w, range).await?);
    Ok(values)
}

/// Teaching quality alone (one query): what the headline gauges need, without the rest.
pub async fn teaching_quality(w: &Warehouse, range: DateRange) -> Result<UsageValues, CloudError> {
    let quality = per_school(
        w,
        &format!(
            "SELECT school, AVG(100.0 * score / max_score) AS v FROM events \
             WHERE event_type = 'assessment_recorded' AND max_score > 0{} GROUP BY school",
            range.predicate()
        ),
    )
    .await?;
    Ok(UsageValues::from([(UsageIndicator::TeachingQuality, quality)]))
}

/// `v` per `school` from `sql`.
async fn per_school(w: &Warehouse, sql: &str) -> Result<BTreeMap<String, f64>, CloudError> {
    let mut out = BTreeMap::new();
    for row in w.query_json(sql).await? {
        if let (Some(school), Some(v)) = (row.get("school").and_then(|v| v.as_str()), row.get("v").and_then(|v| v.as_f64())) {
            out.insert(school.to_string(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use edubrain_schemas::Locale;

    use super::*;

    fn school(id: &str, zone: &str, locale: Locale, enrolment: u32) -> School {
        let csv = format!(
            "school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong\n\
             {id},x,c01,k1,a1,{zone},{},primary,{enrolment},50,48,6,5,16,6000,8000,2400000,20,9600000,false\n",
            locale.as_str()
        );
        edubrain_schemas::registry::read_csv(csv.as_bytes()).unwrap().remove(0)
    }

    fn values(rows: &[(UsageIndicator, &str, f64)]) -> UsageValues {
        let mut v = UsageValues::new();
        for (ind, s, x) in rows {
            v.entry(*ind).or_default().insert(s.to_string(), *x);
        }
        v
    }

    #[test]
    fn teaching_quality_cv_of_a_hand_computed_zone() {
        // A: 100 pupils, mean score 80%; B: 300 pupils, 60%. Weighted mean 0.25·80 + 0.75·60 = 65;
        // S² = 0.25·15² + 0.75·5² = 75; CV = √75 / 65 = 0.13323, within the zone limit 0.30.
        let schools = [school("a", "z1", Locale::Urban, 100), school("b", "z1", Locale::Rural, 300)];
        let v = values(&[(UsageIndicator::TeachingQuality, "a", 80.0), (UsageIndicator::TeachingQuality, "b", 60.0)]);
        let report = UsageGapReport::build(&schools, &v, &[Scope::Zone, Scope::Alliance], &Thresholds::default());
        let zone = report.cv.iter().find(|r| r.scope == Scope::Zone).unwrap();
        assert_eq!((zone.indicator, zone.schools, zone.pupils), ("teaching_quality", 2, 400));
        assert!((zone.mean - 65.0).abs() < 1e-9 && (zone.cv - 75f64.sqrt() / 65.0).abs() < 1e-12, "{zone:?}");
        assert_eq!((zone.limit, zone.meets), (Some(0.30), Some(true)));
        // The plan limits the coefficient inside a zone only.
        let alliance = report.cv.iter().find(|r| r.scope == Scope::Alliance).unwrap();
        assert_eq!((alliance.limit, alliance.meets), (None, None));
        assert_eq!(report.schools, 2);
        // Both schools are in one zone and one alliance but differ in locale: all of Theil's
        // inequality lies between the locales.
        let e = &report.equity[0];
        assert!((e.by_locale.between_share - 1.0).abs() < 1e-12 && e.by_alliance.between.abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn counts_are_per_pupil_and_a_school_without_a_value_is_left_out() {
        // Visits 50 / 100 pupils = 0.5 and 150 / 300 = 0.5: no gap. C has no value and no weight.
        let schools = [school("a", "z1", Locale::Urban, 100), school("b", "z1", Locale::Rural, 300), school("c", "z1", Locale::Rural, 500)];
        let v = values(&[(UsageIndicator::ResourceVisitsPerPupil, "a", 50.0), (UsageIndicator::ResourceVisitsPerPupil, "b", 150.0)]);
        let report = UsageGapReport::build(&schools, &v, &[Scope::Zone], &Thresholds::default());
        let row = &report.cv[0];
        assert_eq!((row.indicator, row.schools, row.pupils), ("resource_visits_per_pupil", 2, 400));
        assert!(row.cv.abs() < 1e-12 && (row.mean - 0.5).abs() < 1e-12, "{row:?}");
        assert_eq!((row.limit, row.meets), (None, None));
        assert_eq!(report.schools, 2);
    }

    #[test]
    fn a_through_schools_counts_are_shared_between_its_levels_by_enrolment() {
        // T has 100 primary and 300 junior pupils and 40 visits: 10 count for its primary row,
        // 30 for its junior row, 0.1 per pupil each; P (primary, 100 pupils) 10 visits, J (junior,
        // 300 pupils) 30: no gap at either level.
        let mut junior = school("t", "z1", Locale::Urban, 300);
        junior.level = Level::Junior;
        let mut j = school("j", "z1", Locale::Urban, 300);
        j.level = Level::Junior;
        let schools = [school("t", "z1", Locale::Urban, 100), junior, school("p", "z1", Locale::Rural, 100), j];
        let visits = UsageIndicator::ResourceVisitsPerPupil;
        let v = values(&[(visits, "t", 40.0), (visits, "p", 10.0), (visits, "j", 30.0)]);
        let report = UsageGapReport::build(&schools, &v, &[Scope::Zone], &Thresholds::default());
        assert_eq!(report.cv.len(), 2, "{report:?}");
        for row in &report.cv {
            assert!(row.cv.abs() < 1e-12 && (row.mean - 0.1).abs() < 1e-12, "{row:?}");
        }
        assert_eq!(report.schools, 3, "t counts once");
    }

    #[test]
    fn cross_school_electives_are_per_100_pupils_and_levels_are_weighted_by_enrolment() {
        // Electives 3 / 100 pupils = 3 per 100, 3 / 300 = 1 per 100: weighted mean 100·6/400 = 1.5.
        // Utilisation 0.6 and 0.2 weighted 1:3 → 0.3.
        let schools = [school("a", "z1", Locale::Urban, 100), school("b", "z1", Locale::Rural, 300)];
        let v = values(&[
            (UsageIndicator::CrossSchoolElectivesPer100, "a", 3.0),
            (UsageIndicator::CrossSchoolElectivesPer100, "b", 3.0),
            (UsageIndicator::Utilisation, "a", 0.6),
            (UsageIndicator::Utilisation, "b", 0.2),
        ]);
        let report = UsageGapReport::build(&schools, &v, &[Scope::Zone], &Thresholds::default());
        let mean = |name: &str| report.cv.iter().find(|r| r.indicator == name).unwrap().mean;
        assert!((mean("cross_school_electives_per_100") - 1.5).abs() < 1e-12);
        assert!((mean("utilisation") - 0.3).abs() < 1e-12);
    }
}

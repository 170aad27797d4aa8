//! Gap analysis from the registry (pure). The national standard for county-level balanced
//! compulsory education (2017) judges balance by the enrolment-weighted coefficient of
//! variation across schools of seven per-pupil indicators, primary and junior separately:
//!
//! ```text
//! N = Σ P_i        X_i = R_i / P_i (×100 for per-100-pupil indicators)
//! X̄ = Σ R_i / N    S = sqrt( Σ (P_i/N)(X_i − X̄)² )      CV = S / X̄
//! ```
//!
//! Plus the plans' own gap measures: per-pupil funding CV across an alliance, and the
//! urban-rural gap in senior-title teacher share; and the equity-research measures, the
//! enrolment-weighted Gini and the Theil T index with its exact decomposition into between-group
//! and within-group parts (`T = Σ_g y_g ln(y_g/p_g) + Σ_g y_g T_g`, y = resource share,
//! p = pupil share), by locale and by alliance.

use std::collections::BTreeMap;

use edubrain_schemas::{Level, Locale, School};
use serde::Serialize;

use crate::config::Thresholds;

/// One of the seven standard indicators (plus funding, which the alliance plan adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    QualifiedTeachersPer100,
    KeyTeachersPer100,
    PeArtTeachersPer100,
    FloorAreaPerPupil,
    SportsAreaPerPupil,
    EquipmentValuePerPupil,
    MultimediaClassroomsPer100,
    FundingPerPupil,
}

impl Indicator {
    /// The seven indicators of the national standard.
    pub const STANDARD: [Indicator; 7] = [
        Indicator::QualifiedTeachersPer100,
        Indicator::KeyTeachersPer100,
        Indicator::PeArtTeachersPer100,
        Indicator::FloorAreaPerPupil,
        Indicator::SportsAreaPerPupil,
        Indicator::EquipmentValuePerPupil,
        Indicator::MultimediaClassroomsPer100,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Indicator::QualifiedTeachersPer100 => "qualified_teachers_per_100",
            Indicator::KeyTeachersPer100 => "key_teachers_per_100",
            Indicator::PeArtTeachersPer100 => "pe_art_teachers_per_100",
            Indicator::FloorAreaPerPupil => "floor_area_m2_per_pupil",
            Indicator::SportsAreaPerPupil => "sports_area_m2_per_pupil",
            Indicator::EquipmentValuePerPupil => "equipment_value_yuan_per_pupil",
            Indicator::MultimediaClassroomsPer100 => "multimedia_classrooms_per_100",
            Indicator::FundingPerPupil => "funding_yuan_per_pupil",
        }
    }

    /// The school's resource total R_i for this indicator.
    pub fn resource(self, s: &School) -> f64 {
        match self {
            Indicator::QualifiedTeachersPer100 => s.teachers_qualified as f64,
            Indicator::KeyTeachersPer100 => s.key_teachers as f64,
            Indicator::PeArtTeachersPer100 => s.pe_art_teachers as f64,
            Indicator::FloorAreaPerPupil => s.floor_area_m2,
            Indicator::SportsAreaPerPupil => s.sports_area_m2,
            Indicator::EquipmentValuePerPupil => s.equipment_value_yuan,
            Indicator::MultimediaClassroomsPer100 => s.multimedia_classrooms as f64,
            Indicator::FundingPerPupil => s.funding_yuan,
        }
    }

    pub fn scale(self) -> f64 {
        match self {
            Indicator::QualifiedTeachersPer100
            | Indicator::KeyTeachersPer100
            | Indicator::PeArtTeachersPer100
            | Indicator::MultimediaClassroomsPer100 => 100.0,
            _ => 1.0,
        }
    }
}

/// Enrolment-weighted CV of (resource, pupils) pairs. `None` with fewer than two schools, no
/// pupils, or a zero mean (CV undefined).
pub fn weighted_cv(rows: &[(f64, f64)], scale: f64) -> Option<f64> {
    if rows.len() < 2 {
        return None;
    }
    let n: f64 = rows.iter().map(|(_, p)| p).sum();
    if n <= 0.0 {
        return None;
    }
    let mean = scale * rows.iter().map(|(r, _)| r).sum::<f64>() / n;
    if mean <= 0.0 {
        return None;
    }
    let var: f64 = rows.iter().map(|(r, p)| (p / n) * (scale * r / p - mean).powi(2)).sum();
    Some(var.sqrt() / mean)
}

/// Enrolment-weighted Gini of per-pupil resource X_i = R_i/P_i:
/// `G = Σ_i Σ_j P_i P_j |X_i − X_j| / (2 N² X̄)`. In [0, 1); `None` as for [`weighted_cv`].
pub fn weighted_gini(rows: &[(f64, f64)]) -> Option<f64> {
    if rows.len() < 2 {
        return None;
    }
    let n: f64 = rows.iter().map(|(_, p)| p).sum();
    let total: f64 = rows.iter().map(|(r, _)| r).sum();
    if n <= 0.0 || total <= 0.0 {
        return None;
    }
    let mean = total / n;
    // Sorted by X, Σ_i Σ_j P_i P_j |X_i − X_j| = 2 Σ_i P_i X_i (P_<i − P_>i) (O(n log n)).
    let mut xs: Vec<(f64, f64)> = rows.iter().filter(|(_, p)| *p > 0.0).map(|(r, p)| (r / p, *p)).collect();
    xs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut below = 0.0;
    let mut sum = 0.0;
    for (x, p) in &xs {
        let above = n - below - p;
        sum += 2.0 * p * x * (below - above);
        below += p;
    }
    Some(sum / (2.0 * n * n * mean))
}

/// Theil T of resources over pupils: `Σ y_i ln(y_i / p_i)` with y, p the schools' shares of
/// resource and pupils. 0 for perfect equality; `y ln y` → 0 as y → 0.
pub fn theil_t(rows: &[(f64, f64)]) -> Option<f64> {
    let n: f64 = rows.iter().map(|(_, p)| p).sum();
    let total: f64 = rows.iter().map(|(r, _)| r).sum();
    if rows.is_empty() || n <= 0.0 || total <= 0.0 {
        return None;
    }
    Some(
        rows.iter()
            .filter(|(r, p)| *r > 0.0 && *p > 0.0)
            .map(|(r, p)| {
                let (y, s) = (r / total, p / n);
                y * (y / s).ln()
            })
            .sum(),
    )
}

/// Theil T split exactly into between-group and within-group parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheilSplit {
    pub total: f64,
    pub between: f64,
    pub within: f64,
    /// Share of the total inequality that lies between the groups.
    pub between_share: f64,
}

/// Decomposes Theil T over `(group, resource, pupils)` rows.
pub fn theil_decomposition(rows: &[(&str, f64, f64)]) -> Option<TheilSplit> {
    let flat: Vec<(f64, f64)> = rows.iter().map(|(_, r, p)| (*r, *p)).collect();
    let total = theil_t(&flat)?;
    let (n, sum_r): (f64, f64) = (flat.iter().map(|x| x.1).sum(), flat.iter().map(|x| x.0).sum());
    let mut groups: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (g, r, p) in rows {
        groups.entry(g).or_default().push((*r, *p));
    }
    let (mut between, mut within) = (0.0, 0.0);
    for members in groups.values() {
        let (gr, gp): (f64, f64) = (members.iter().map(|x| x.0).sum(), members.iter().map(|x| x.1).sum());
        let (y, s) = (gr / sum_r, gp / n);
        if y > 0.0 && s > 0.0 {
            between += y * (y / s).ln();
            within += y * theil_t(members).unwrap_or(0.0);
        }
    }
    Some(TheilSplit { total, between, within, between_share: if total > 0.0 { between / total } else { 0.0 } })
}

/// Equity of one indicator over the whole province, per level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EquityRow {
    pub level: Level,
    pub indicator: &'static str,
    pub schools: usize,
    pub gini: f64,
    /// Theil T over all schools of the level (equal to either split's `total`).
    pub theil: f64,
    /// Theil split by locale (urban / town / rural).
    pub by_locale: TheilSplit,
    /// Theil split by alliance.
    pub by_alliance: TheilSplit,
}

/// Gini and Theil (with decompositions) of every indicator, per level.
pub fn equity_table(schools: &[School]) -> Vec<EquityRow> {
    let mut out = Vec::new();
    for level in [Level::Primary, Level::Junior] {
        let members: Vec<&School> = schools.iter().filter(|s| s.level == level).collect();
        for ind in Indicator::STANDARD.into_iter().chain([Indicator::FundingPerPupil]) {
            let rows: Vec<(&School, f64)> = members.iter().map(|s| (*s, ind.resource(s))).collect();
            out.extend(equity_row(level, ind.name(), &rows));
        }
    }
    out
}

/// Gini and Theil, split by locale and by alliance, of one indicator over `members` (each school
/// with its resource total R_i; its enrolment is P_i). `None` where they are undefined.
pub fn equity_row(level: Level, indicator: &'static str, members: &[(&School, f64)]) -> Option<EquityRow> {
    let rows: Vec<(f64, f64)> = members.iter().map(|(s, r)| (*r, s.enrolment as f64)).collect();
    let by =
        |key: fn(&School) -> &str| -> Vec<(&str, f64, f64)> { members.iter().map(|(s, r)| (key(s), *r, s.enrolment as f64)).collect() };
    let gini = weighted_gini(&rows)?;
    let by_locale = theil_decomposition(&by(|s| s.locale.as_str()))?;
    let by_alliance = theil_decomposition(&by(|s| s.alliance.as_str()))?;
    Some(EquityRow { level, indicator, schools: members.len(), gini, theil: by_locale.total, by_locale, by_alliance })
}

/// How schools are grouped for a CV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Province,
    City,
    County,
    Alliance,
    Zone,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Province, Scope::City, Scope::County, Scope::Alliance, Scope::Zone];

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Province => "province",
            Scope::City => "city",
            Scope::County => "county",
            Scope::Alliance => "alliance",
            Scope::Zone => "zone",
        }
    }

    pub fn key(self, s: &School) -> &str {
        match self {
            Scope::Province => "all",
            Scope::City => &s.city,
            Scope::County => &s.county,
            Scope::Alliance => &s.alliance,
            Scope::Zone => &s.zone,
        }
    }
}

/// One CV against its threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CvRow {
    pub scope: Scope,
    pub group: String,
    pub level: Level,
    pub indicator: &'static str,
    pub schools: usize,
    pub pupils: u64,
    /// Enrolment-weighted mean of the indicator.
    pub mean: f64,
    pub cv: f64,
    pub threshold: f64,
    pub meets: bool,
}

/// CV of every standard indicator (and funding per pupil) for every group of `scope`, per level.
pub fn cv_table(schools: &[School], scope: Scope, t: &Thresholds) -> Vec<CvRow> {
    let mut groups: BTreeMap<(&str, Level), Vec<&School>> = BTreeMap::new();
    for s in schools {
        groups.entry((scope.key(s), s.level)).or_default().push(s);
    }
    let mut out = Vec::new();
    for ((group, level), members) in groups {
        let pupils: f64 = members.iter().map(|s| s.enrolment as f64).sum();
        for ind in Indicator::STANDARD.into_iter().chain([Indicator::FundingPerPupil]) {
            let rows: Vec<(f64, f64)> = members.iter().map(|s| (ind.resource(s), s.enrolment as f64)).collect();
            let Some(cv) = weighted_cv(&rows, ind.scale()) else { continue };
            let threshold = match (ind, level) {
                (Indicator::FundingPerPupil, _) => t.funding_cv_alliance,
                (_, Level::Primary) => t.cv_primary,
                (_, Level::Junior) => t.cv_junior,
            };
            out.push(CvRow {
                scope,
                group: group.to_string(),
                level,
                indicator: ind.name(),
                schools: members.len(),
                pupils: pupils as u64,
                mean: ind.scale() * rows.iter().map(|(r, _)| r).sum::<f64>() / pupils,
                cv,
                threshold,
                meets: cv <= threshold,
            });
        }
    }
    out
}

/// Urban-rural gap in the share of senior-title teachers for one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeniorTitleGap {
    pub scope: Scope,
    pub group: String,
    pub urban_share: f64,
    pub rural_share: f64,
    /// (urban − rural) in percentage points.
    pub gap_pp: f64,
    pub threshold_pp: f64,
    pub meets: bool,
}

/// Senior-title share urban vs rural (town schools count with neither), per group of `scope`.
pub fn senior_title_gaps(schools: &[School], scope: Scope, t: &Thresholds) -> Vec<SeniorTitleGap> {
    let mut groups: BTreeMap<&str, [(f64, f64); 2]> = BTreeMap::new();
    for s in schools {
        let slot = match s.locale {
            Locale::Urban => 0,
            Locale::Rural => 1,
            Locale::Town => continue,
        };
        let g = groups.entry(scope.key(s)).or_default();
        g[slot].0 += s.senior_title_teachers as f64;
        g[slot].1 += s.teachers_total as f64;
    }
    groups
        .into_iter()
        .filter(|(_, g)| g[0].1 > 0.0 && g[1].1 > 0.0)
        .map(|(group, g)| {
            let (u, r) = (g[0].0 / g[0].1, g[1].0 / g[1].1);
            let gap_pp = 100.0 * (u - r);
            SeniorTitleGap {
                scope,
                group: group.to_string(),
                urban_share: u,
                rural_share: r,
                gap_pp,
                threshold_pp: t.senior_title_gap_pp,
                meets: gap_pp <= t.senior_title_gap_pp,
            }
        })
        .collect()
}

/// The whole registry-only gap report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapReport {
    pub schools: usize,
    pub cv: Vec<CvRow>,
    pub senior_title: Vec<SeniorTitleGap>,
    /// Province-wide Gini and Theil per indicator and level.
    pub equity: Vec<EquityRow>,
}

impl GapReport {
    pub fn build(schools: &[School], scopes: &[Scope], t: &Thresholds) -> Self {
        let mut ids: Vec<&str> = schools.iter().map(|s| s.school_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        GapReport {
            schools: ids.len(),
            cv: scopes.iter().flat_map(|s| cv_table(schools, *s, t)).collect(),
            senior_title: scopes.iter().flat_map(|s| senior_title_gaps(schools, *s, t)).collect(),
            equity: equity_table(schools),
        }
    }

    /// The rows furthest over their thresholds, worst first.
    pub fn largest_gaps(&self, n: usize) -> Vec<&CvRow> {
        let mut rows: Vec<&CvRow> = self.cv.iter().collect();
        rows.sort_by(|a, b| (b.cv / b.threshold).total_cmp(&(a.cv / a.threshold)));
        rows.truncate(n);
        rows
    }

    /// A plain-text table for terminals.
    pub fn to_table(&self) -> String {
        let mut out = format!("{} schools\n\nCoefficient of variation (enrolment-weighted)\n", self.schools);
        out += &format!(
            "{:<9} {:<12} {:<8} {:<32} {:>7} {:>12} {:>7} {:>6}  {}\n",
            "scope", "group", "level", "indicator", "schools", "mean", "cv", "limit", "status"
        );
        for r in &self.cv {
            out += &format!(
                "{:<9} {:<12} {:<8} {:<32} {:>7} {:>12.2} {:>7.3} {:>6.2}  {}\n",
                r.scope.name(),
                r.group,
                r.level.as_str(),
                r.indicator,
                r.schools,
                r.mean,
                r.cv,
                r.threshold,
                if r.meets { "ok" } else { "OVER" }
            );
        }
        out += "\nUrban-rural gap in senior-title teacher share\n";
        out += &format!("{:<9} {:<12} {:>8} {:>8} {:>8} {:>6}  {}\n", "scope", "group", "urban", "rural", "gap_pp", "limit", "status");
        for g in &self.senior_title {
            out += &format!(
                "{:<9} {:<12} {:>7.1}% {:>7.1}% {:>8.1} {:>6.1}  {}\n",
                g.scope.name(),
                g.group,
                100.0 * g.urban_share,
                100.0 * g.rural_share,
                g.gap_pp,
                g.threshold_pp,
                if g.meets { "ok" } else { "OVER" }
            );
        }
        out += "\nEquity (province-wide): enrolment-weighted Gini, Theil T and its share between groups\n";
        out += &equity_table_text(self.equity.iter());
        out
    }
}

/// Equity rows as a plain-text table with a header line.
pub fn equity_table_text<'a>(rows: impl IntoIterator<Item = &'a EquityRow>) -> String {
    let mut out =
        format!("{:<8} {:<32} {:>6} {:>8} {:>15} {:>17}\n", "level", "indicator", "gini", "theil", "between_locale", "between_alliance");
    for e in rows {
        out += &format!(
            "{:<8} {:<32} {:>6.3} {:>8.4} {:>14.0}% {:>16.0}%\n",
            e.level.as_str(),
            e.indicator,
            e.gini,
            e.theil,
            100.0 * e.by_locale.between_share,
            100.0 * e.by_alliance.between_share
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cv_of_a_hand_computed_example() {
        // Two schools: 10 teachers / 100 pupils and 30 teachers / 300 pupils: equal per-100
        // ratios, CV 0.
        assert_eq!(weighted_cv(&[(10.0, 100.0), (30.0, 300.0)], 100.0), Some(0.0));
        // 10/100 (X=10) and 10/300 (X=3.333): N=400, X̄=100*20/400=5,
        // S² = 0.25*(10-5)² + 0.75*(3.333-5)² = 6.25 + 2.0833 = 8.3333, S = 2.88675, CV = 0.57735.
        let cv = weighted_cv(&[(10.0, 100.0), (10.0, 300.0)], 100.0).unwrap();
        assert!((cv - 0.577_350).abs() < 1e-6, "{cv}");
    }

    #[test]
    fn cv_is_undefined_for_one_school_or_zero_mean() {
        assert_eq!(weighted_cv(&[(1.0, 10.0)], 1.0), None);
        assert_eq!(weighted_cv(&[(0.0, 10.0), (0.0, 20.0)], 1.0), None);
    }

    #[test]
    fn gini_and_theil_of_hand_computed_examples() {
        // Equal per-pupil resources: no inequality.
        assert_eq!(weighted_gini(&[(10.0, 100.0), (30.0, 300.0)]), Some(0.0));
        assert!(theil_t(&[(10.0, 100.0), (30.0, 300.0)]).unwrap().abs() < 1e-15);
        // X = 0.1 (P 100) and 0.0333 (P 300): N = 400, X̄ = 0.05;
        // ΣΣ P_i P_j |ΔX| = 2·100·300·0.0667 = 4000; G = 4000 / (2·400²·0.05) = 0.25.
        assert!((weighted_gini(&[(10.0, 100.0), (10.0, 300.0)]).unwrap() - 0.25).abs() < 1e-12);
        // y = (0.5, 0.5), p = (0.25, 0.75): T = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3).
        let t = theil_t(&[(10.0, 100.0), (10.0, 300.0)]).unwrap();
        assert!((t - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-12, "{t}");
        // Two groups that are internally equal: all inequality is between them.
        let d = theil_decomposition(&[("u", 10.0, 100.0), ("u", 20.0, 200.0), ("r", 10.0, 300.0)]).unwrap();
        assert!(d.within.abs() < 1e-12 && (d.between - d.total).abs() < 1e-12 && (d.between_share - 1.0).abs() < 1e-12);
    }

    use proptest::prelude::*;

    fn schools() -> impl Strategy<Value = Vec<(f64, f64)>> {
        proptest::collection::vec((0.0f64..1e6, 1.0f64..5000.0), 2..40)
    }

    proptest! {
        #[test]
        fn cv_is_invariant_to_scaling_every_schools_resource(rows in schools(), k in 1e-3f64..1e3) {
            let scaled: Vec<_> = rows.iter().map(|(r, p)| (r * k, *p)).collect();
            match (weighted_cv(&rows, 1.0), weighted_cv(&scaled, 1.0)) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-9 * a.max(1.0)),
                (a, b) => prop_assert_eq!(a.is_some(), b.is_some()),
            }
        }

        #[test]
        fn gini_is_in_unit_interval(rows in schools()) {
            if let Some(g) = weighted_gini(&rows) {
                prop_assert!((0.0..1.0).contains(&g) || g.abs() < 1e-12, "gini {}", g);
            }
        }

        #[test]
        fn theil_between_plus_within_is_total(rows in schools(), groups in proptest::collection::vec(0usize..4, 40)) {
            let names = ["urban", "town", "rural", "other"];
            let tagged: Vec<(&str, f64, f64)> = rows.iter().zip(&groups).map(|((r, p), g)| (names[*g], *r, *p)).collect();
            if let Some(d) = theil_decomposition(&tagged) {
                prop_assert!((d.between + d.within - d.total).abs() <= 1e-9 * d.total.max(1.0), "{:?}", d);
                prop_assert!(d.total >= -1e-12 && d.between >= -1e-12 && d.within >= -1e-12);
            }
        }
    }
}

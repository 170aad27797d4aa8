//! Resource recommendation: for a school, rank resources owned elsewhere by how well they close
//! the school's gaps, and say why. The warehouse computes aggregates; scoring is pure.
//!
//! score = Σ wᵢ · partᵢ / Σ wᵢ over the parts
//! - gap: the school's shortfall in the resource's subject (mean assessment score relative to the
//!   province mean for that subject; a 25% shortfall or worse counts fully);
//! - quality: Bayesian mean rating (prior 3/5 with weight 3), scaled to 0..1;
//! - reuse: distinct other schools that downloaded it, relative to the most reused resource;
//! - proximity: same zone 1, same alliance 0.75, same county 0.5, same city 0.25, else 0.
//!
//! Novelty: resources the school already viewed or downloaded are never recommended.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::DateRange;
use crate::CloudError;
use crate::config::RecommendationWeights;
use crate::warehouse::Warehouse;

/// Where a school sits, for proximity.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub city: String,
    pub county: String,
    pub alliance: String,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStats {
    pub resource_id: String,
    pub owner_school: String,
    pub subject: String,
    pub kind: String,
    pub rating_sum: f64,
    pub ratings: u64,
    pub reuse_schools: u64,
}

/// Everything scoring needs, already aggregated.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub places: HashMap<String, Place>,
    pub resources: Vec<ResourceStats>,
    /// Per school, the resources it already used. Keyed by school first so that scoring a
    /// school's candidates looks them up by reference, without building a key per candidate.
    pub used: HashMap<String, HashSet<String>>,
    /// Per school, its mean relative score (0..1) per subject.
    pub school_subject_score: HashMap<String, HashMap<String, f64>>,
    /// Mean relative score per subject over the province.
    pub subject_score: HashMap<String, f64>,
}

impl Inputs {
    /// Whether `school` already viewed or downloaded `resource`.
    pub fn has_used(&self, school: &str, resource: &str) -> bool {
        self.used.get(school).is_some_and(|used| used.contains(resource))
    }

    pub fn mark_used(&mut self, school: &str, resource: &str) {
        self.used.entry(school.to_string()).or_default().insert(resource.to_string());
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreParts {
    pub gap: f64,
    pub quality: f64,
    pub reuse: f64,
    pub proximity: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub resource_id: String,
    pub owner_school: String,
    pub subject: String,
    pub kind: String,
    pub score: f64,
    pub parts: ScoreParts,
    pub why: String,
}

pub fn proximity(a: &Place, b: &Place) -> (f64, &'static str) {
    if a.zone == b.zone {
        (1.0, "same zone")
    } else if a.alliance == b.alliance {
        (0.75, "same alliance")
    } else if a.county == b.county {
        (0.5, "same county")
    } else if a.city == b.city {
        (0.25, "same city")
    } else {
        (0.0, "other city")
    }
}

/// A candidate's score before it becomes a [`Recommendation`].
struct Scored<'a> {
    resource: &'a ResourceStats,
    score: f64,
    parts: ScoreParts,
    shortfall: f64,
    mean_rating: f64,
    near: &'static str,
}

impl Scored<'_> {
    /// Best first; equal scores by resource id, so the order is total and repeatable.
    fn best_first(a: &Self, b: &Self) -> std::cmp::Ordering {
        b.score.total_cmp(&a.score).then_with(|| a.resource.resource_id.cmp(&b.resource.resource_id))
    }

    fn into_recommendation(self) -> Recommendation {
        let r = self.resource;
        let why = format!(
            "{}; rated {:.1}/5 by {}; reused by {} other school(s); {}",
            if self.shortfall > 0.0 {
                format!("closes a {:.0}% {} gap", 100.0 * self.shortfall, r.subject)
            } else {
                format!("no {} gap measured", r.subject)
            },
            self.mean_rating,
            r.ratings,
            r.reuse_schools,
            self.near
        );
        Recommendation {
            resource_id: r.resource_id.clone(),
            owner_school: r.owner_school.clone(),
            subject: r.subject.clone(),
            kind: r.kind.clone(),
            score: self.score,
            parts: self.parts,
            why,
        }
    }
}

/// Ranks resources for `school`, best first, at most `limit`.
///
/// Every candidate is scored without allocating; only the `limit` best are turned into
/// recommendations, with their ids cloned and their explanation written. A school has
/// thousands of candidates, and building each one's strings was most of the time of
/// recommending for every school (3.5 s of the 10M benchmark's suite).
pub fn recommend(inputs: &Inputs, school: &str, w: &RecommendationWeights, limit: usize) -> Vec<Recommendation> {
    let Some(here) = inputs.places.get(school) else { return Vec::new() };
    let max_reuse = inputs.resources.iter().map(|r| r.reuse_schools).max().unwrap_or(0).max(1) as f64;
    let total_w = (w.gap + w.quality + w.reuse + w.proximity).max(f64::MIN_POSITIVE);
    let used = inputs.used.get(school);
    let my_scores = inputs.school_subject_score.get(school);
    let mut scored: Vec<Scored> = inputs
        .resources
        .iter()
        .filter(|r| r.owner_school != school && !used.is_some_and(|used| used.contains(&r.resource_id)))
        .filter_map(|r| {
            let there = inputs.places.get(&r.owner_school)?;
            let (prox, near) = proximity(here, there);
            let province = inputs.subject_score.get(&r.subject).copied();
            let mine = my_scores.and_then(|scores| scores.get(&r.subject)).copied();
            let shortfall = match (province, mine) {
                (Some(p), Some(m)) if p > 0.0 => ((p - m) / p).max(0.0),
                _ => 0.0,
            };
            let gap = (shortfall / 0.25).min(1.0);
            let mean_rating = (r.rating_sum + 3.0 * 3.0) / (r.ratings as f64 + 3.0);
            let quality = ((mean_rating - 1.0) / 4.0).clamp(0.0, 1.0);
            let reuse = r.reuse_schools as f64 / max_reuse;
            let score = (w.gap * gap + w.quality * quality + w.reuse * reuse + w.proximity * prox) / total_w;
            Some(Scored { resource: r, score, parts: ScoreParts { gap, quality, reuse, proximity: prox }, shortfall, mean_rating, near })
        })
        .collect();
    if scored.len() > limit {
        scored.select_nth_unstable_by(limit, Scored::best_first);
        scored.truncate(limit);
    }
    scored.sort_by(Scored::best_first);
    scored.into_iter().map(Scored::into_recommendation).collect()
}

/// Aggregates the scoring inputs from the warehouse over `range`.
pub async fn load_inputs(wh: &Warehouse, range: DateRange) -> Result<Inputs, CloudError> {
    let r = range.predicate();
    let mut inputs = Inputs::default();
    for s in wh.schools() {
        inputs.places.insert(
            s.school_id.clone(),
            Place { city: s.city.clone(), county: s.county.clone(), alliance: s.alliance.clone(), zone: s.zone.clone() },
        );
    }
    let str_of =
        |row: &serde_json::Map<String, serde_json::Value>, k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let num_of = |row: &serde_json::Map<String, serde_json::Value>, k: &str| row.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    // Reuse (other schools that downloaded it) is counted in its own aggregate over distinct
    // (resource, school) pairs: as a COUNT(DISTINCT ...) beside the other aggregates DataFusion
    // kept a set per group, 4x DuckDB's time on the same query.
    let rows = wh
        .query_json(&format!(
            "WITH stats AS (SELECT resource_id, MIN(owner_school) AS owner_school, MIN(subject) AS subject, MIN(resource_kind) AS kind, \
                                   COALESCE(SUM(rating), 0) AS rating_sum, COUNT(rating) AS ratings, \
                                   MAX(CASE WHEN passed_review = false THEN 1 ELSE 0 END) AS failed_review \
                            FROM events WHERE resource_id IS NOT NULL{r} GROUP BY resource_id), \
                  reuse AS (SELECT resource_id, COUNT(*) AS reuse_schools \
                            FROM (SELECT DISTINCT resource_id, school FROM events \
                                  WHERE event_type = 'resource_downloaded' AND school <> owner_school AND resource_id IS NOT NULL{r}) \
                            GROUP BY resource_id) \
             SELECT stats.resource_id, owner_school, subject, kind, rating_sum, ratings, failed_review, \
                    COALESCE(reuse.reuse_schools, 0) AS reuse_schools \
             FROM stats LEFT JOIN reuse ON stats.resource_id = reuse.resource_id"
        ))
        .await?;
    for row in rows {
        if num_of(&row, "failed_review") > 0.0 {
            continue; // never recommend what failed the quality review
        }
        inputs.resources.push(ResourceStats {
            resource_id: str_of(&row, "resource_id"),
            owner_school: str_of(&row, "owner_school"),
            subject: str_of(&row, "subject"),
            kind: str_of(&row, "kind"),
            rating_sum: num_of(&row, "rating_sum"),
            ratings: num_of(&row, "ratings") as u64,
            reuse_schools: num_of(&row, "reuse_schools") as u64,
        });
    }
    inputs.resources.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
    for row in wh
        .query_json(&format!(
            "SELECT DISTINCT school, resource_id FROM events WHERE event_type IN ('resource_viewed', 'resource_downloaded'){r}"
        ))
        .await?
    {
        inputs.mark_used(&str_of(&row, "school"), &str_of(&row, "resource_id"));
    }
    let mut by_subject: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for row in wh
        .query_json(&format!(
            "SELECT school, subject, SUM(score / max_score) AS total, COUNT(*) AS n FROM events \
             WHERE event_type = 'assessment_recorded'{r} GROUP BY school, subject"
        ))
        .await?
    {
        let (total, n) = (num_of(&row, "total"), num_of(&row, "n"));
        let subject = str_of(&row, "subject");
        inputs.school_subject_score.entry(str_of(&row, "school")).or_default().insert(subject.clone(), total / n);
        let e = by_subject.entry(subject).or_default();
        e.0 += total;
        e.1 += n;
    }
    inputs.subject_score = by_subject.into_iter().map(|(s, (t, n))| (s, t / n)).collect();
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(zone: &str, alliance: &str) -> Place {
        Place { city: "c".into(), county: "k".into(), alliance: alliance.into(), zone: zone.into() }
    }

    fn res(id: &str, owner: &str, rating_sum: f64, ratings: u64, reuse: u64) -> ResourceStats {
        ResourceStats {
            resource_id: id.into(),
            owner_school: owner.into(),
            subject: "math".into(),
            kind: "lesson".into(),
            rating_sum,
            ratings,
            reuse_schools: reuse,
        }
    }

    #[test]
    fn hand_computed_score_and_novelty() {
        let mut i = Inputs::default();
        i.places.insert("weak".into(), place("z1", "a1"));
        i.places.insert("strong".into(), place("z1", "a1"));
        i.places.insert("far".into(), Place { city: "c2".into(), county: "k2".into(), alliance: "a9".into(), zone: "z9".into() });
        i.resources = vec![
            res("r1", "strong", 10.0, 2, 4),
            res("r2", "far", 10.0, 2, 4),
            res("r3", "strong", 0.0, 0, 0),
            res("own", "weak", 5.0, 1, 1),
        ];
        i.mark_used("weak", "r3");
        i.subject_score.insert("math".into(), 0.8);
        i.school_subject_score.insert("weak".into(), HashMap::from([("math".into(), 0.7)]));
        let w = RecommendationWeights::default();
        let recs = recommend(&i, "weak", &w, 10);
        let ids: Vec<_> = recs.iter().map(|r| r.resource_id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"], "own and already-used resources are excluded");
        // r1: shortfall (0.8-0.7)/0.8 = 0.125 → gap 0.5; mean rating (10+9)/5 = 3.8 → quality 0.7;
        // reuse 4/4 = 1; proximity 1. score = 0.35*0.5 + 0.25*0.7 + 0.15*1 + 0.25*1 = 0.75.
        let r1 = &recs[0];
        assert!((r1.parts.gap - 0.5).abs() < 1e-12 && (r1.parts.quality - 0.7).abs() < 1e-12);
        assert!((r1.score - 0.75).abs() < 1e-12, "{}", r1.score);
        assert!(r1.why.contains("closes a 13% math gap") && r1.why.contains("same zone"), "{}", r1.why); // 12.5000000000001%
        // r2 differs only in proximity (another city: 0): 0.75 - 0.25 = 0.5.
        assert!((recs[1].score - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_best_k_are_the_head_of_the_whole_ranking_ties_by_id() {
        let mut i = Inputs::default();
        i.places.insert("weak".into(), place("z1", "a1"));
        i.places.insert("near".into(), place("z1", "a2"));
        i.places.insert("far".into(), place("z2", "a3"));
        // 40 resources in 8 distinct scores (ratings and reuse cycle), so many tie.
        i.resources = (0..40)
            .map(|n| {
                res(&format!("r{n:02}"), if n % 3 == 0 { "far" } else { "near" }, (n % 4) as f64 * 5.0, (n % 4) as u64 * 2, (n % 2) as u64)
            })
            .collect();
        let w = RecommendationWeights::default();
        let all = recommend(&i, "weak", &w, usize::MAX);
        assert_eq!(all.len(), 40);
        for pair in all.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(a.score > b.score || (a.score == b.score && a.resource_id < b.resource_id), "{a:?} before {b:?}");
        }
        assert!(all.windows(2).any(|p| p[0].score == p[1].score), "the case has ties");
        for k in 0..=41 {
            assert_eq!(recommend(&i, "weak", &w, k), all[..k.min(all.len())], "k = {k}");
        }
    }
}

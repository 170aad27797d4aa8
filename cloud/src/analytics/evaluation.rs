//! Offline evaluation of the recommendations against a popularity baseline.
//!
//! The warehouse's usage is split at `cutoff`: the recommender and the baseline see only the
//! events before it (training); what each school viewed or downloaded from the cutoff on, and
//! had not used before, is the truth it should have been offered (the same novelty rule both
//! lists follow). For every school with at least one such resource:
//! - hit-rate@k = share of schools with at least one truth resource in their top k;
//! - NDCG@k = DCG / ideal DCG with binary relevance, DCG = Σ_{rank r ≤ k, relevant} 1/log2(r+1);
//! - recall@k = truth resources in the top k / truth resources (mean over schools).
//!
//! The baseline ranks every resource the school may be offered (not its own, not already used,
//! not failed review) by the number of other schools that downloaded it, as a "most popular in
//! the province" list would.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::Serialize;

use super::DateRange;
use super::recommend::{Inputs, load_inputs, recommend};
use crate::CloudError;
use crate::config::RecommendationWeights;
use crate::warehouse::Warehouse;

/// Ranking quality of one recommender.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankingMetrics {
    pub hit_rate: f64,
    pub ndcg: f64,
    pub recall: f64,
    pub schools: usize,
}

/// The popularity baseline's list for `school`.
pub fn popularity(inputs: &Inputs, school: &str, k: usize) -> Vec<String> {
    let mut candidates: Vec<_> =
        inputs.resources.iter().filter(|r| r.owner_school != school && !inputs.has_used(school, &r.resource_id)).collect();
    candidates.sort_by(|a, b| b.reuse_schools.cmp(&a.reuse_schools).then_with(|| a.resource_id.cmp(&b.resource_id)));
    candidates.into_iter().take(k).map(|r| r.resource_id.clone()).collect()
}

/// Hit rate, NDCG and recall at `k` of `lists` against `truth` (schools without truth are
/// skipped; a school without a list counts as a miss).
pub fn rank_metrics(lists: &BTreeMap<String, Vec<String>>, truth: &BTreeMap<String, BTreeSet<String>>, k: usize) -> RankingMetrics {
    let (mut hits, mut ndcg, mut recall, mut n) = (0.0, 0.0, 0.0, 0usize);
    for (school, relevant) in truth {
        if relevant.is_empty() {
            continue;
        }
        n += 1;
        let list = lists.get(school).map(Vec::as_slice).unwrap_or_default();
        let top = &list[..list.len().min(k)];
        let found: Vec<usize> = top.iter().enumerate().filter(|(_, r)| relevant.contains(*r)).map(|(i, _)| i).collect();
        if !found.is_empty() {
            hits += 1.0;
        }
        let dcg: f64 = found.iter().map(|&i| 1.0 / ((i + 2) as f64).log2()).sum();
        let ideal: f64 = (0..relevant.len().min(k)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
        ndcg += dcg / ideal;
        recall += found.len() as f64 / relevant.len() as f64;
    }
    let mean = |x: f64| if n > 0 { x / n as f64 } else { 0.0 };
    RankingMetrics { hit_rate: mean(hits), ndcg: mean(ndcg), recall: mean(recall), schools: n }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationReport {
    pub k: usize,
    pub cutoff: NaiveDate,
    /// Schools with at least one new resource used after the cutoff.
    pub schools_evaluated: usize,
    /// New (school, resource) uses after the cutoff.
    pub truth_pairs: usize,
    pub recommender: RankingMetrics,
    pub popularity: RankingMetrics,
    /// recommender / popularity (`None` when the baseline scores 0).
    pub hit_rate_ratio: Option<f64>,
    pub ndcg_ratio: Option<f64>,
    pub weights: RecommendationWeights,
}

/// Evaluates on the warehouse `w`: trains on days before `cutoff`, tests on `cutoff` and later.
pub async fn evaluate(w: &Warehouse, cutoff: NaiveDate, weights: &RecommendationWeights, k: usize) -> Result<EvaluationReport, CloudError> {
    let train = DateRange { from: None, to: cutoff.pred_opt() };
    let inputs = load_inputs(w, train).await?;
    let test = DateRange { from: Some(cutoff), to: None };
    let mut truth: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let offerable: BTreeSet<&str> = inputs.resources.iter().map(|r| r.resource_id.as_str()).collect();
    for row in w
        .query_json(&format!(
            "SELECT DISTINCT school, resource_id, owner_school FROM events \
             WHERE event_type IN ('resource_viewed', 'resource_downloaded'){}",
            test.predicate()
        ))
        .await?
    {
        let get = |k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (school, resource) = (get("school"), get("resource_id"));
        // New uses of resources owned elsewhere; a resource first uploaded after the cutoff
        // could not have been offered by either list, so it is not counted against them.
        if get("owner_school") != school && offerable.contains(resource.as_str()) && !inputs.has_used(&school, &resource) {
            truth.entry(school).or_default().insert(resource);
        }
    }
    let mut ours = BTreeMap::new();
    let mut baseline = BTreeMap::new();
    for school in truth.keys() {
        ours.insert(school.clone(), recommend(&inputs, school, weights, k).into_iter().map(|r| r.resource_id).collect());
        baseline.insert(school.clone(), popularity(&inputs, school, k));
    }
    let recommender = rank_metrics(&ours, &truth, k);
    let popularity = rank_metrics(&baseline, &truth, k);
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    Ok(EvaluationReport {
        k,
        cutoff,
        schools_evaluated: recommender.schools,
        truth_pairs: truth.values().map(BTreeSet::len).sum(),
        hit_rate_ratio: ratio(recommender.hit_rate, popularity.hit_rate),
        ndcg_ratio: ratio(recommender.ndcg, popularity.ndcg),
        recommender,
        popularity,
        weights: weights.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn list(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_by_hand() {
        let truth = BTreeMap::from([("a".to_string(), set(&["r1", "r2"])), ("b".to_string(), set(&["r9"])), ("c".to_string(), set(&[]))]);
        // a: r1 at rank 2 → DCG 1/log2(3); ideal for 2 relevant: 1 + 1/log2(3). b: no hit.
        let lists = BTreeMap::from([("a".to_string(), list(&["r5", "r1", "r7"])), ("b".to_string(), list(&["r1"]))]);
        let m = rank_metrics(&lists, &truth, 10);
        assert_eq!(m.schools, 2);
        assert_eq!(m.hit_rate, 0.5);
        let a_ndcg = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((m.ndcg - a_ndcg / 2.0).abs() < 1e-12, "{m:?}");
        assert!((m.recall - 0.25).abs() < 1e-12);
        // Cut at k = 1: a's hit at rank 2 no longer counts.
        assert_eq!(rank_metrics(&lists, &truth, 1).hit_rate, 0.0);
        // A perfect list scores 1.
        let perfect = BTreeMap::from([("a".to_string(), list(&["r2", "r1"])), ("b".to_string(), list(&["r9"]))]);
        let m = rank_metrics(&perfect, &truth, 10);
        assert!((m.ndcg - 1.0).abs() < 1e-12 && m.hit_rate == 1.0 && (m.recall - 1.0).abs() < 1e-12);
    }
}

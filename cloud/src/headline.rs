//! Headline indicators as Prometheus gauges, per alliance and zone, recomputed every
//! `headline.refresh_secs` over the newest `headline.window_days` days in the warehouse (the
//! newest day with data, not the wall clock, so a backfilled or replayed warehouse still shows
//! its numbers). Label values are the registry's alliance and zone ids: a bounded set.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prometheus::GaugeVec;
use prometheus::core::Collector;

use tokio_util::sync::CancellationToken;

use crate::CloudError;
use crate::analytics::DateRange;
use crate::analytics::gaps::{Scope, cv_table};
use crate::analytics::usage_gaps::{self, UsageGapReport, UsageIndicator};
use crate::analytics::utilisation::{GroupBy, utilisation as utilisation_rows};
use crate::analytics::zones;
use crate::config::{HeadlineConfig, Thresholds, ZoneTargets};
use crate::metrics::CloudMetrics;
use crate::warehouse::Warehouse;

/// The new values of one labelled gauge: (label values in the gauge's order, value).
type Series = Vec<(Vec<String>, f64)>;

/// Recomputes every headline gauge once. Everything is computed before any gauge changes, and
/// each gauge then gets its new series set before the series that vanished are removed, so a
/// scrape never sees a gauge emptied half-way (which would resolve and re-fire its alerts).
pub async fn refresh(w: &Warehouse, t: &Thresholds, zt: &ZoneTargets, h: &HeadlineConfig, m: &CloudMetrics) -> Result<(), CloudError> {
    let targets: Series = [
        ("utilisation", "min", t.utilisation_target),
        ("idle", "max", t.idle_rate_target),
        ("live_interruption", "max", t.live_interruption_target),
        ("resource_sharing", "min", t.resource_sharing_target),
        ("teaching_quality_cv", "max", t.teaching_quality_cv_zone),
    ]
    .into_iter()
    .map(|(indicator, bound, target)| (vec![indicator.to_string(), bound.to_string()], target))
    .collect();
    let last = w.last_day().await?;

    let mut gaps_over = Series::new();
    for (scope, level) in [(Scope::Alliance, "alliance"), (Scope::Zone, "zone")] {
        let mut over = std::collections::BTreeMap::<String, u32>::new();
        for row in cv_table(w.schools(), scope, t) {
            *over.entry(row.group).or_default() += u32::from(!row.meets);
        }
        gaps_over.extend(over.into_iter().map(|(group, n)| (vec![level.to_string(), group], f64::from(n))));
    }
    let (mut utilisation, mut idle, mut interruption, mut sharing) = (Series::new(), Series::new(), Series::new(), Series::new());
    let (mut visits, mut alerts) = (Series::new(), std::collections::BTreeMap::<String, f64>::new());
    let (mut electives, mut quality) = (Series::new(), Series::new());
    if let Some(last) = last {
        let range = DateRange { from: last.checked_sub_days(chrono::Days::new(h.window_days.saturating_sub(1) as u64)), to: Some(last) };
        for (by, level) in [(GroupBy::Alliance, "alliance"), (GroupBy::Zone, "zone")] {
            for row in utilisation_rows(w, by, range, t).await? {
                let labels = vec![level.to_string(), row.group.clone()];
                for (series, rate) in [
                    (&mut utilisation, &row.utilisation),
                    (&mut idle, &row.idle_rate),
                    (&mut interruption, &row.live_interruption_rate),
                    (&mut sharing, &row.resource_sharing_rate),
                ] {
                    if let Some(v) = rate.value {
                        series.push((labels.clone(), v));
                    }
                }
                if let Some(share) = row.cross_school_electives.and_then(|e| e.share) {
                    electives.push((labels, share));
                }
            }
        }
        // Only the teaching-quality CV is a gauge: its one query, not the whole usage report's.
        let values = usage_gaps::teaching_quality(w, range).await?;
        for row in UsageGapReport::build(w.schools(), &values, &[Scope::Zone], t).cv {
            if row.indicator == UsageIndicator::TeachingQuality.name() {
                quality.push((vec![row.group, row.level.as_str().to_string()], row.cv));
            }
        }
        let report = zones::load(w, range, zt).await?;
        let newest_month = report.months.iter().map(|r| r.month.clone()).max();
        let newest_semester = report.semesters.iter().map(|r| r.semester.clone()).max();
        for r in report.months.iter().filter(|r| Some(&r.month) == newest_month.as_ref()) {
            if let Some(v) = r.visits_per_school.value {
                visits.push((vec![r.zone.clone()], v));
            }
            alerts.insert(r.zone.clone(), 0.0);
        }
        for a in report.alerts.iter().filter(|a| Some(&a.period) == newest_month.as_ref() || Some(&a.period) == newest_semester.as_ref()) {
            *alerts.entry(a.zone.clone()).or_default() += 1.0;
        }
    }

    replace(&m.headline_target, targets);
    replace(&m.headline_gaps_over_threshold, gaps_over);
    replace(&m.headline_utilisation, utilisation);
    replace(&m.headline_idle, idle);
    replace(&m.headline_live_interruption, interruption);
    replace(&m.headline_resource_sharing, sharing);
    replace(&m.headline_zone_visits_per_school, visits);
    replace(&m.headline_cross_school_electives, electives);
    replace(&m.headline_zone_teaching_quality_cv, quality);
    replace(&m.headline_zone_alerts, alerts.into_iter().map(|(zone, n)| (vec![zone], n)).collect());
    m.headline_refreshed.set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(())
}

/// Sets `gauge` to exactly `series`: new values first, then the label sets no longer present
/// are removed.
fn replace(gauge: &GaugeVec, series: Series) {
    let mut keep = HashSet::new();
    for (labels, value) in &series {
        let values: Vec<&str> = labels.iter().map(String::as_str).collect();
        gauge.with_label_values(&values).set(*value);
        keep.insert(labels.clone());
    }
    let names: Vec<String> = gauge.desc().first().map(|d| d.variable_labels.clone()).unwrap_or_default();
    for family in gauge.collect() {
        for metric in family.get_metric() {
            let pairs: HashMap<&str, &str> = metric.get_label().iter().map(|p| (p.name(), p.value())).collect();
            let labels: Vec<String> = names.iter().map(|n| pairs.get(n.as_str()).copied().unwrap_or_default().to_string()).collect();
            if !keep.contains(&labels) {
                let _ = gauge.remove(&pairs);
            }
        }
    }
}

/// Refreshes the gauges until `shutdown`; a failed refresh is logged and counted, and the
/// next one tried on schedule.
pub async fn run(w: Warehouse, t: Thresholds, zt: ZoneTargets, h: HeadlineConfig, m: CloudMetrics, shutdown: CancellationToken) {
    let every = Duration::from_secs(h.refresh_secs.max(1));
    loop {
        if let Err(e) = refresh(&w, &t, &zt, &h, &m).await {
            m.headline_refresh_errors.inc();
            tracing::warn!(error = %e, "headline gauges not refreshed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn series(g: &GaugeVec) -> Vec<(Vec<String>, f64)> {
        let mut out: Vec<_> = g
            .collect()
            .iter()
            .flat_map(|f| {
                f.get_metric().iter().map(|m| (m.get_label().iter().map(|p| p.value().to_string()).collect(), m.get_gauge().get_value()))
            })
            .collect();
        out.sort_by(|a: &(Vec<String>, f64), b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn replace_sets_new_values_and_removes_only_vanished_series() {
        let g = GaugeVec::new(Opts::new("g", "test"), &["level", "group"]).unwrap();
        let s = |l: &str, gr: &str, v: f64| (vec![l.to_string(), gr.to_string()], v);
        replace(&g, vec![s("alliance", "a1", 0.5), s("alliance", "a2", 0.25), s("zone", "z1", 0.1)]);
        assert_eq!(series(&g).len(), 3);
        replace(&g, vec![s("alliance", "a1", 0.75), s("zone", "z1", 0.1)]);
        // Labels come back sorted by name: group, then level.
        let got = series(&g);
        assert_eq!(got, vec![(vec!["a1".into(), "alliance".into()], 0.75), (vec!["z1".into(), "zone".into()], 0.1)]);
        replace(&g, vec![]);
        assert!(series(&g).is_empty());
    }
}

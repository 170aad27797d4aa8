//! Headline indicators as Prometheus gauges, per alliance and zone, recomputed every
//! `headline.refresh_secs` over the newest `headline.window_days` days in the warehouse (the
//! newest day with data, not the wall clock, so a backfilled or replayed warehouse still shows
//! its numbers). Label values are the registry's alliance and zone ids: a bounded set.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::CloudError;
use crate::analytics::DateRange;
use crate::analytics::gaps::{Scope, cv_table};
use crate::analytics::utilisation::{GroupBy, utilisation};
use crate::analytics::zones;
use crate::config::{HeadlineConfig, Thresholds, ZoneTargets};
use crate::metrics::CloudMetrics;
use crate::warehouse::Warehouse;

/// Recomputes every headline gauge once.
pub async fn refresh(w: &Warehouse, t: &Thresholds, zt: &ZoneTargets, h: &HeadlineConfig, m: &CloudMetrics) -> Result<(), CloudError> {
    let last = w.last_day().await?;
    for g in [&m.headline_utilisation, &m.headline_idle, &m.headline_live_interruption, &m.headline_resource_sharing] {
        g.reset();
    }
    m.headline_zone_visits_per_school.reset();
    m.headline_zone_alerts.reset();
    m.headline_gaps_over_threshold.reset();

    for (scope, level) in [(Scope::Alliance, "alliance"), (Scope::Zone, "zone")] {
        let mut over = std::collections::BTreeMap::<String, u32>::new();
        for row in cv_table(w.schools(), scope, t) {
            *over.entry(row.group).or_default() += u32::from(!row.meets);
        }
        for (group, n) in over {
            m.headline_gaps_over_threshold.with_label_values(&[level, &group]).set(n as f64);
        }
    }
    if let Some(last) = last {
        let range = DateRange { from: last.checked_sub_days(chrono::Days::new(h.window_days.saturating_sub(1) as u64)), to: Some(last) };
        for (by, level) in [(GroupBy::Alliance, "alliance"), (GroupBy::Zone, "zone")] {
            for row in utilisation(w, by, range, t).await? {
                let labels = [level, row.group.as_str()];
                for (gauge, rate) in [
                    (&m.headline_utilisation, &row.utilisation),
                    (&m.headline_idle, &row.idle_rate),
                    (&m.headline_live_interruption, &row.live_interruption_rate),
                    (&m.headline_resource_sharing, &row.resource_sharing_rate),
                ] {
                    if let Some(v) = rate.value {
                        gauge.with_label_values(&labels).set(v);
                    }
                }
            }
        }
        let report = zones::load(w, range, zt).await?;
        let newest_month = report.months.iter().map(|r| r.month.clone()).max();
        let newest_semester = report.semesters.iter().map(|r| r.semester.clone()).max();
        for r in report.months.iter().filter(|r| Some(&r.month) == newest_month.as_ref()) {
            if let Some(v) = r.visits_per_school.value {
                m.headline_zone_visits_per_school.with_label_values(&[&r.zone]).set(v);
            }
            m.headline_zone_alerts.with_label_values(&[&r.zone]).set(0.0);
        }
        for a in report.alerts.iter().filter(|a| Some(&a.period) == newest_month.as_ref() || Some(&a.period) == newest_semester.as_ref()) {
            m.headline_zone_alerts.with_label_values(&[&a.zone]).inc();
        }
    }
    m.headline_refreshed.set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(())
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

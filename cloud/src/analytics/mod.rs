//! The education analytics (documented in the README's "Analytics" section).
//!
//! - [`gaps`]: registry-only gap analysis (pure): enrolment-weighted CV, senior-title gaps.
//! - [`usage_gaps`]: the same CV, Gini and Theil over indicators derived from events (pure
//!   core, SQL loader), with the zone plan's teaching-quality limit.
//! - [`utilisation`]: utilisation, idle, no-show, interruption, sharing and upload-pass rates
//!   from events, per school / alliance / zone / county / city, each against its target; and
//!   the cross-school elective share.
//! - [`recommend`]: resource recommendations with the parts of their score (pure scoring over
//!   aggregates the warehouse computes).
//! - [`evaluation`]: offline hit-rate@k / NDCG@k of the recommendations vs a popularity baseline.
//! - [`partition`]: zone partition suggestion for a county (pure).
//! - [`zones`]: zone monitoring per month and semester with alerts (pure core, SQL loader).

pub mod evaluation;
pub mod gaps;
pub mod partition;
pub mod recommend;
pub mod usage_gaps;
pub mod utilisation;
pub mod zones;

use chrono::NaiveDate;

/// An inclusive range of local school days; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateRange {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl DateRange {
    /// SQL predicate on the `date` partition column (dates are formatted by us: no injection).
    pub fn predicate(&self) -> String {
        let mut p = String::new();
        if let Some(f) = self.from {
            p += &format!(" AND date >= '{}'", f.format("%Y-%m-%d"));
        }
        if let Some(t) = self.to {
            p += &format!(" AND date <= '{}'", t.format("%Y-%m-%d"));
        }
        p
    }
}

//! The HTTP API (JSON): summary, utilisation, gaps, recommendations; plus `/metrics` and
//! `/healthz`. Query parameters are parsed into typed values (dates, known group names, ids
//! checked against the id rule) before they reach SQL, so none can inject.

use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::CloudError;
use crate::analytics::gaps::{GapReport, Scope};
use crate::analytics::utilisation::{GroupBy, utilisation};
use crate::analytics::{DateRange, recommend};
use crate::config::{RecommendationWeights, Thresholds};
use crate::ingest::IngestProgress;
use crate::metrics::CloudMetrics;
use crate::warehouse::Warehouse;

#[derive(Clone)]
pub struct AppState {
    pub warehouse: Warehouse,
    pub thresholds: Thresholds,
    pub weights: RecommendationWeights,
    pub metrics: CloudMetrics,
    pub progress: watch::Receiver<IngestProgress>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/utilisation", get(utilisation_endpoint))
        .route("/api/v1/gaps", get(gaps))
        .route("/api/v1/recommendations", get(recommendations))
        .with_state(state)
}

/// An API error: status plus a message naming the bad input.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<CloudError> for ApiError {
    fn from(e: CloudError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn bad(msg: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeParams {
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
    scope: Option<String>,
    school: Option<String>,
    limit: Option<usize>,
}

impl RangeParams {
    fn range(&self) -> Result<DateRange, ApiError> {
        let parse = |name: &str, v: &Option<String>| -> Result<Option<NaiveDate>, ApiError> {
            v.as_deref()
                .map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad(format!("{name}={s:?} is not a date (YYYY-MM-DD)"))))
                .transpose()
        };
        Ok(DateRange { from: parse("from", &self.from)?, to: parse("to", &self.to)? })
    }
}

async fn timed<T: serde::Serialize>(state: &AppState, endpoint: &'static str, f: impl Future<Output = Result<T, ApiError>>) -> Response {
    let start = Instant::now();
    let result = f.await;
    state.metrics.api_duration.with_label_values(&[endpoint]).observe(start.elapsed().as_secs_f64());
    let response = match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    let class = format!("{}xx", response.status().as_u16() / 100);
    state.metrics.api_requests.with_label_values(&[endpoint, &class]).inc();
    response
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let p = *s.progress.borrow();
    axum::Json(json!({ "status": "ok", "events_written": p.events_written, "quarantined": p.quarantined, "consumer_lag": p.lag }))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

async fn utilisation_endpoint(State(s): State<AppState>, Query(q): Query<RangeParams>) -> Response {
    timed(&s, "utilisation", async {
        let by = match q.by.as_deref() {
            None => GroupBy::Alliance,
            Some(b) => GroupBy::parse(b).ok_or_else(|| bad(format!("by={b:?} is not one of school, alliance, zone, county, city")))?,
        };
        Ok(utilisation(&s.warehouse, by, q.range()?, &s.thresholds).await?)
    })
    .await
}

async fn gaps(State(s): State<AppState>, Query(q): Query<RangeParams>) -> Response {
    timed(&s, "gaps", async {
        let scopes = match q.scope.as_deref() {
            None => Scope::ALL.to_vec(),
            Some(x) => {
                vec![Scope::parse(x).ok_or_else(|| bad(format!("scope={x:?} is not one of province, city, county, alliance, zone")))?]
            }
        };
        Ok(GapReport::build(s.warehouse.schools(), &scopes, &s.thresholds))
    })
    .await
}

async fn recommendations(State(s): State<AppState>, Query(q): Query<RangeParams>) -> Response {
    timed(&s, "recommendations", async {
        let school = q.school.clone().ok_or_else(|| bad("school is required".into()))?;
        edubrain_schemas::validate::check_id("school", &school).map_err(|e| bad(e.to_string()))?;
        if !s.warehouse.schools().iter().any(|x| x.school_id == school) {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("school {school:?} is not in the registry")));
        }
        let inputs = recommend::load_inputs(&s.warehouse, q.range()?).await?;
        let recs = recommend::recommend(&inputs, &school, &s.weights, q.limit.unwrap_or(10).min(100));
        Ok(json!({ "school": school, "weights": s.weights, "recommendations": recs }))
    })
    .await
}

/// The headline numbers: event counts, utilisation per alliance, the largest gaps.
pub async fn summary_json(w: &Warehouse, t: &Thresholds, range: DateRange) -> Result<serde_json::Value, CloudError> {
    let r = range.predicate();
    let counts = w
        .query_json(&format!("SELECT event_type, COUNT(*) AS events FROM events WHERE true{r} GROUP BY event_type ORDER BY event_type"))
        .await?;
    let span = w.query_json(&format!("SELECT MIN(date) AS first_day, MAX(date) AS last_day, COUNT(*) AS events, COUNT(DISTINCT school) AS schools FROM events WHERE true{r}")).await?;
    let by_alliance = utilisation(w, GroupBy::Alliance, range, t).await?;
    let gaps = GapReport::build(w.schools(), &[Scope::County, Scope::Alliance, Scope::Zone], t);
    let over: Vec<_> = gaps.largest_gaps(10).into_iter().filter(|g| !g.meets).cloned().collect();
    Ok(json!({
        "events": span.first(),
        "events_by_type": counts,
        "utilisation_by_alliance": by_alliance,
        "largest_gaps": over,
        "senior_title_gaps": gaps.senior_title,
        "thresholds": t,
    }))
}

async fn summary(State(s): State<AppState>, Query(q): Query<RangeParams>) -> Response {
    timed(&s, "summary", async { Ok(summary_json(&s.warehouse, &s.thresholds, q.range()?).await?) }).await
}

//! The HTTP API, described by `cloud/openapi.json` (served at `/api/v1/openapi.json`):
//! summary, utilisation, gaps (from the registry, and from events at `/gaps/usage`), recommendations, zone monitoring, zone partition suggestions and
//! a read-only SQL endpoint,
//! each as JSON or (`format=csv`) CSV; plus `/metrics` and `/healthz`, and the web dashboard
//! (`/`, static files from `cloud/web/` built into the binary) that calls these endpoints with
//! the user's token.
//!
//! Every `/api/v1` data endpoint needs a bearer token ([`crate::access`]); it then runs on the
//! caller's scoped warehouse, which holds only the rows its role may see. Query parameters are
//! parsed into typed values (dates, known group names, ids checked against the id rule) before
//! they reach SQL, so none can inject.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Extension, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use crate::CloudError;
use crate::access::{AccessControl, Denial, Principal, Role};
use crate::analytics::gaps::{GapReport, Scope};
use crate::analytics::usage_gaps::{self, UsageGapReport};
use crate::analytics::utilisation::{GroupBy, utilisation};
use crate::analytics::{DateRange, partition, recommend, zones};
use crate::audit::{AuditAction, AuditLog, AuditRecord};
use crate::config::{QueryLimits, RecommendationWeights, Thresholds, ZoneTargets};
use crate::ingest::IngestProgress;
use crate::metrics::CloudMetrics;
use crate::registry::SchoolYear;
use crate::warehouse::{Warehouse, batches_to_json, retry_after_swap};

/// The OpenAPI description of this API (kept beside the code; a test checks they agree).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The web dashboard: one page, its script and its style sheet. Built in, so the binary is the
/// whole deployment; no data is in them (the script fetches it with the user's token).
const WEB_INDEX: &str = include_str!("../web/index.html");
const WEB_SCRIPT: &str = include_str!("../web/app.js");
const WEB_STYLE: &str = include_str!("../web/style.css");
/// Only this origin's script and style, no inline code, no framing, no referrer leaking ids.
const WEB_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

#[derive(Clone)]
pub struct AppState {
    /// The province's warehouse; callers get [`AppState::warehouse_for`] their role.
    pub warehouse: Warehouse,
    pub thresholds: Thresholds,
    pub weights: RecommendationWeights,
    pub zone_targets: ZoneTargets,
    pub limits: QueryLimits,
    pub access: Arc<AccessControl>,
    pub metrics: CloudMetrics,
    pub progress: watch::Receiver<IngestProgress>,
    /// Scoped warehouses, one per role that has called (bounded by the configured principals).
    pub scoped: Arc<Mutex<HashMap<Role, Warehouse>>>,
    pub audit: AuditLog,
}

impl AppState {
    /// The warehouse as `role` sees it.
    pub async fn warehouse_for(&self, role: &Role) -> Result<Warehouse, CloudError> {
        let mut cache = self.scoped.lock().await;
        if let Some(w) = cache.get(role) {
            return Ok(w.clone());
        }
        let w = self.warehouse.scoped(role).await?;
        cache.insert(role.clone(), w.clone());
        Ok(w)
    }
}

pub fn router(state: AppState) -> Router {
    let data = Router::new()
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/utilisation", get(utilisation_endpoint))
        .route("/api/v1/gaps", get(gaps))
        .route("/api/v1/gaps/usage", get(usage_gaps_endpoint))
        .route("/api/v1/recommendations", get(recommendations))
        .route("/api/v1/zones", get(zones_endpoint))
        .route("/api/v1/zone-partition", get(zone_partition))
        .route("/api/v1/sql", post(sql))
        .route("/api/v1/whoami", get(whoami))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/", get(|| web(WEB_INDEX, "text/html; charset=utf-8")))
        .route("/ui/app.js", get(|| web(WEB_SCRIPT, "text/javascript; charset=utf-8")))
        .route("/ui/style.css", get(|| web(WEB_STYLE, "text/css; charset=utf-8")))
        .merge(data)
        .with_state(state)
}

/// Refuses requests without a known bearer token (401, counted, logged and audited with the
/// client's address), hands the caller's [`Principal`] to the handlers, and audits each
/// answered request with its status and duration.
async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let client = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.to_string());
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match s.access.authenticate(authorization) {
        Ok(p) => {
            let p = p.clone();
            req.extensions_mut().insert(p.clone());
            let started = Instant::now();
            let response = next.run(req).await;
            let mut r = AuditRecord::new(AuditAction::Request, target);
            r.principal = Some(p.name);
            r.role = Some(p.role.to_string());
            r.client = client;
            r.status = Some(response.status().as_u16());
            r.secs = Some(started.elapsed().as_secs_f64());
            s.audit.record(r).await;
            response
        }
        Err(denial) => {
            deny(&s, denial, None, client, target).await;
            let mut r =
                ApiError(StatusCode::UNAUTHORIZED, format!("{}: send Authorization: Bearer <token>", denial.as_str())).into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// Counts, logs and audits a refusal.
pub(crate) async fn deny(s: &AppState, denial: Denial, principal: Option<&Principal>, client: Option<String>, target: String) {
    s.metrics.api_denied.with_label_values(&[denial.as_str()]).inc();
    let name = principal.map_or("-", |p| p.name.as_str());
    tracing::warn!(target: "edubrain_cloud::audit", reason = denial.as_str(), principal = name, target, "API request refused");
    let mut r = AuditRecord::new(AuditAction::Denied, target);
    r.principal = principal.map(|p| p.name.clone());
    r.role = principal.map(|p| p.role.to_string());
    r.client = client;
    r.reason = Some(denial.as_str().to_string());
    s.audit.record(r).await;
}

/// An API error: status plus a message naming the bad input.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

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

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some(x) => Err(bad(format!("format={x:?} is not one of json, csv"))),
        }
    }
}

/// Query parameters; a value that does not parse is a 400 whose JSON message names it.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| Params(q)).map_err(|e| bad(e.body_text()))
    }
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
    format: Option<String>,
    county: Option<String>,
    k: Option<usize>,
    school_year: Option<String>,
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

    fn format(&self) -> Result<Format, ApiError> {
        Format::parse(self.format.as_deref())
    }

    /// The groupings of a gap report: `scope`, else all of them.
    fn scopes(&self) -> Result<Vec<Scope>, ApiError> {
        match self.scope.as_deref() {
            None => Ok(Scope::ALL.to_vec()),
            Some(x) => {
                Ok(vec![Scope::parse(x).ok_or_else(|| bad(format!("scope={x:?} is not one of province, city, county, alliance, zone")))?])
            }
        }
    }

    /// The registry version registry-only analytics use: `school_year`, else the newest.
    fn schools<'w>(&self, w: &'w Warehouse) -> Result<&'w [edubrain_schemas::School], ApiError> {
        match self.school_year.as_deref() {
            None => Ok(w.schools()),
            Some(y) => {
                let year = SchoolYear::parse(y).map_err(|_| bad(format!("school_year={y:?} is not of the form 2025-2026")))?;
                w.registry().year(year).ok_or_else(|| {
                    ApiError(StatusCode::NOT_FOUND, format!("school_year={y:?}: the registry has {:?}", w.registry().school_years()))
                })
            }
        }
    }
}

/// Runs a handler's body, times and counts it, and writes its answer as JSON, or as CSV of the
/// array at `csv_rows` (a JSON pointer; "" for the answer itself).
async fn timed(
    state: &AppState,
    endpoint: &'static str,
    format: Result<Format, ApiError>,
    csv_rows: &str,
    f: impl Future<Output = Result<Value, ApiError>>,
) -> Response {
    let start = Instant::now();
    let result = match format {
        Ok(format) => f.await.and_then(|v| encode(format, v, csv_rows)),
        Err(e) => Err(e),
    };
    state.metrics.api_duration.with_label_values(&[endpoint]).observe(start.elapsed().as_secs_f64());
    let response = result.unwrap_or_else(|e| e.into_response());
    let class = format!("{}xx", response.status().as_u16() / 100);
    state.metrics.api_requests.with_label_values(&[endpoint, &class]).inc();
    response
}

fn encode(format: Format, v: Value, csv_rows: &str) -> Result<Response, ApiError> {
    match format {
        Format::Json => Ok(axum::Json(v).into_response()),
        Format::Csv => {
            let rows = v.pointer(csv_rows).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let text = json_rows_to_csv(rows).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("csv: {e}")))?;
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response())
        }
    }
}

/// JSON objects to CSV: nested objects become `parent.child` columns, arrays are written as
/// JSON text, nulls and missing keys as empty cells. Columns appear in first-seen order, which
/// within an object is alphabetical (serde_json's maps are sorted).
pub fn json_rows_to_csv(rows: &[Value]) -> Result<String, csv::Error> {
    fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            Value::Null => out.push((prefix.to_string(), String::new())),
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let flat: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            flatten("", r, &mut out);
            out
        })
        .collect();
    let mut columns: Vec<&str> = Vec::new();
    for row in &flat {
        for (k, _) in row {
            if !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    if columns.is_empty() {
        return Ok(String::new());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&columns)?;
    for row in &flat {
        let cells: HashMap<&str, &str> = row.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        w.write_record(columns.iter().map(|c| cells.get(c).copied().unwrap_or("")))?;
    }
    let bytes = w.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
    Ok(String::from_utf8(bytes).expect("the CSV is built from UTF-8 strings"))
}

fn to_value(v: impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("json: {e}")))
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let p = *s.progress.borrow();
    axum::Json(json!({ "status": "ok", "events_written": p.events_written, "quarantined": p.quarantined, "consumer_lag": p.lag }))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

async fn web(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, WEB_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn whoami(State(s): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    timed(&s, "whoami", Ok(Format::Json), "", async {
        let w = s.warehouse_for(&p.role).await?;
        Ok(json!({ "name": p.name, "role": p.role, "schools": w.schools().iter().map(|s| &s.school_id).collect::<std::collections::BTreeSet<_>>() }))
    })
    .await
}

async fn utilisation_endpoint(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "utilisation", q.format(), "", async {
        let by = match q.by.as_deref() {
            None => GroupBy::Alliance,
            Some(b) => GroupBy::parse(b)
                .ok_or_else(|| bad(format!("by={b:?} is not one of device, classroom, school, alliance, zone, county, city")))?,
        };
        let w = s.warehouse_for(&p.role).await?;
        to_value(utilisation(&w, by, q.range()?, &s.thresholds).await?)
    })
    .await
}

async fn gaps(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "gaps", q.format(), "/cv", async {
        let scopes = q.scopes()?;
        let w = s.warehouse_for(&p.role).await?;
        to_value(GapReport::build(q.schools(&w)?, &scopes, &s.thresholds))
    })
    .await
}

async fn usage_gaps_endpoint(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "usage_gaps", q.format(), "/cv", async {
        let scopes = q.scopes()?;
        let w = s.warehouse_for(&p.role).await?;
        let values = usage_gaps::load(&w, q.range()?, &s.thresholds).await?;
        to_value(UsageGapReport::build(q.schools(&w)?, &values, &scopes, &s.thresholds))
    })
    .await
}

async fn recommendations(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "recommendations", q.format(), "/recommendations", async {
        let school = q.school.clone().ok_or_else(|| bad("school is required".into()))?;
        edubrain_schemas::validate::check_id("school", &school).map_err(|e| bad(e.to_string()))?;
        let w = s.warehouse_for(&p.role).await?;
        if !w.schools().iter().any(|x| x.school_id == school) {
            // The same answer whether the school is foreign or unknown: a role learns nothing
            // about schools it may not see. A foreign one is still counted and audited.
            if s.warehouse.schools().iter().any(|x| x.school_id == school) {
                deny(&s, Denial::ForeignSchool, Some(&p), None, format!("/api/v1/recommendations?school={school}")).await;
            }
            return Err(ApiError(StatusCode::NOT_FOUND, format!("school {school:?} is not in the registry you can see")));
        }
        let inputs = recommend::load_inputs(&w, q.range()?).await?;
        let recs = recommend::recommend(&inputs, &school, &s.weights, q.limit.unwrap_or(10).min(100));
        Ok(json!({ "school": school, "weights": s.weights, "recommendations": recs }))
    })
    .await
}

async fn zones_endpoint(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "zones", q.format(), "/alerts", async {
        let w = s.warehouse_for(&p.role).await?;
        to_value(zones::load(&w, q.range()?, &s.zone_targets).await?)
    })
    .await
}

async fn zone_partition(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "zone_partition", q.format(), "/zones", async {
        let county = q.county.clone().ok_or_else(|| bad("county is required".into()))?;
        edubrain_schemas::validate::check_id("county", &county).map_err(|e| bad(e.to_string()))?;
        let k = q.k.ok_or_else(|| bad("k (the number of zones) is required".into()))?;
        let w = s.warehouse_for(&p.role).await?;
        match partition::suggest(q.schools(&w)?, &county, k, s.zone_targets.partition_max_spread) {
            Ok(suggestion) => to_value(suggestion),
            Err(e @ partition::PartitionError::UnknownCounty(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
            Err(e) => Err(bad(e.to_string())),
        }
    })
    .await
}

/// The headline numbers: event counts, utilisation per alliance, the largest gaps.
pub async fn summary_json(w: &Warehouse, t: &Thresholds, range: DateRange) -> Result<Value, CloudError> {
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

async fn summary(State(s): State<AppState>, Extension(p): Extension<Principal>, Params(q): Params<RangeParams>) -> Response {
    timed(&s, "summary", q.format(), "/utilisation_by_alliance", async {
        let w = s.warehouse_for(&p.role).await?;
        Ok(summary_json(&w, &s.thresholds, q.range()?).await?)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: String,
    /// Fewer rows than the configured maximum (never more).
    max_rows: Option<usize>,
}

/// The read-only SQL endpoint: one query, in the caller's scoped session, with no DDL, DML or
/// statements, cancelled after the time limit, cut at the row limit.
async fn sql(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Params(q): Params<SqlParams>,
    body: Result<axum::Json<SqlRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    timed(&s, "sql", Format::parse(q.format.as_deref()), "/rows", async {
        let axum::Json(req) = body.map_err(|e| bad(format!("body: {e} (expected {{\"sql\": \"SELECT …\"}})")))?;
        let w = s.warehouse_for(&p.role).await?;
        let max_rows = req.max_rows.unwrap_or(s.limits.sql_max_rows).min(s.limits.sql_max_rows);
        let started = Instant::now();
        let answer = run_sql(&w, &req.sql, s.limits.sql_timeout_ms, max_rows).await;
        tracing::info!(target: "edubrain_cloud::audit", principal = %p.name, role = %p.role, ok = answer.is_ok(), sql = %req.sql, "sql query");
        let mut r = AuditRecord::new(AuditAction::Sql, "/api/v1/sql");
        r.principal = Some(p.name.clone());
        r.role = Some(p.role.to_string());
        r.sql = Some(req.sql.clone());
        r.ok = Some(answer.is_ok());
        r.secs = Some(started.elapsed().as_secs_f64());
        s.audit.record(r).await;
        answer
    })
    .await
}

fn query_error(e: DataFusionError) -> ApiError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(m) => {
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("query needs more memory than its limit: {m}"))
        }
        _ => bad(format!("sql: {e}")),
    }
}

/// Plans and runs read-only `sql`, keeping at most `max_rows`: (columns, batches, rows, truncated).
async fn collect_rows(w: &Warehouse, sql: &str, max_rows: usize) -> Result<(Vec<String>, Vec<RecordBatch>, usize, bool), DataFusionError> {
    let df = w.plan_read_only(sql).await?;
    let columns: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut stream = df.execute_stream().await?;
    let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if rows + batch.num_rows() > max_rows {
            batches.push(batch.slice(0, max_rows - rows));
            rows = max_rows;
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    Ok((columns, batches, rows, truncated))
}

/// Runs one read-only query on `w` with the limits; the answer lists the columns, the rows
/// (at most `max_rows`) and whether more were cut.
pub async fn run_sql(w: &Warehouse, sql: &str, timeout_ms: u64, max_rows: usize) -> Result<Value, ApiError> {
    let started = Instant::now();
    let (w, sql) = (w.clone(), sql.to_string());
    // Its own task, so the time limit fires even while the query keeps a worker busy, and the
    // query is aborted (at its next yield) when it does.
    let work = async move {
        // The answer is sent only once complete, so a query racing compaction can run again.
        retry_after_swap(|| collect_rows(&w, &sql, max_rows)).await.map_err(query_error)
    };
    let mut task = tokio::spawn(work);
    let (columns, batches, rows, truncated) = match tokio::time::timeout(Duration::from_millis(timeout_ms), &mut task).await {
        Ok(joined) => joined.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("query task: {e}")))??,
        Err(_) => {
            task.abort();
            return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("query exceeded its time limit of {timeout_ms} ms")));
        }
    };
    let data = batches_to_json(&batches)?;
    Ok(json!({
        "columns": columns,
        "rows": data,
        "row_count": rows,
        "truncated": truncated,
        "max_rows": max_rows,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_flattens_nested_objects_and_keeps_column_order() {
        let rows = vec![
            json!({"group": "a1", "utilisation": {"value": 0.5, "meets": false}, "tags": ["x"]}),
            json!({"group": "a,2", "utilisation": {"value": null, "meets": null}, "extra": 3}),
        ];
        assert_eq!(
            json_rows_to_csv(&rows).unwrap(),
            "group,tags,utilisation.meets,utilisation.value,extra\na1,\"[\"\"x\"\"]\",false,0.5,\n\"a,2\",,,,3\n"
        );
        assert_eq!(json_rows_to_csv(&[]).unwrap(), "");
    }

    #[test]
    fn format_is_json_or_csv() {
        assert_eq!(Format::parse(None).unwrap(), Format::Json);
        assert_eq!(Format::parse(Some("csv")).unwrap(), Format::Csv);
        assert!(Format::parse(Some("xml")).unwrap_err().1.contains("format=\"xml\""));
    }
}

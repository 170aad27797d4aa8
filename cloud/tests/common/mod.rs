//! The API fixture shared by the cloud's HTTP and Flight SQL tests: a real HTTP server and a
//! real Flight SQL server over a Parquet warehouse of simulated events (two cities, four
//! alliances, twelve schools, three school days), with a token per role.

#![allow(dead_code)] // each test file uses its own part of it

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use chrono::NaiveDate;
use edubrain_agent::province::{self, ProvinceSpec};
use edubrain_agent::simulate::{SimulationSpec, local_offset, simulate};
use edubrain_cloud::access::{AccessConfig, AccessControl, Role};
use edubrain_cloud::api::{AppState, router};
use edubrain_cloud::audit::AuditLog;
use edubrain_cloud::batch::StoredEvent;
use edubrain_cloud::config::{FlightSqlConfig, QueryLimits, RecommendationWeights, Thresholds, ZoneTargets};
use edubrain_cloud::{CloudMetrics, Warehouse};
use edubrain_schemas::School;
use serde_json::{Value, json};

/// The API's state over `warehouse` with default analytics settings, the given principals and
/// query limits, and an audit log in `audit_dir` whose writer lives as long as the process.
pub fn app_state(
    warehouse: Warehouse,
    access: &AccessConfig,
    limits: QueryLimits,
    audit_dir: &std::path::Path,
    metrics: &CloudMetrics,
) -> AppState {
    let (tx, progress) = tokio::sync::watch::channel(Default::default());
    // No backfill runs here; the sender stays so the progress channel stays open.
    std::mem::forget(tx);
    AppState {
        warehouse,
        thresholds: Thresholds::default(),
        weights: RecommendationWeights::default(),
        zone_targets: ZoneTargets::default(),
        limits,
        access: Arc::new(AccessControl::new(access).unwrap()),
        metrics: metrics.clone(),
        progress,
        scoped: Default::default(),
        audit: AuditLog::start(audit_dir, metrics.clone()).unwrap().0,
    }
}

/// Starts ADBC's Flight SQL client (`flight_sql_client.py`, in the test venv) with `cases` on
/// its stdin and its stdout piped; returns it and the script's path.
pub fn adbc_client(cases: &Value, stderr: std::process::Stdio) -> (std::process::Child, &'static str) {
    let python = edubrain_brokers::test_python().unwrap_or_else(|e| panic!("{e}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flight_sql_client.py");
    let mut child = std::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    serde_json::to_writer(child.stdin.take().unwrap(), cases).unwrap();
    (child, script)
}

pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub base: String,
    /// The Flight SQL server, as `grpc://127.0.0.1:port`.
    pub flight: String,
    pub schools: Vec<School>,
    /// Events per school id, as written to the warehouse.
    pub events_per_school: BTreeMap<String, u64>,
    /// (role, token); the last role is an alliance that does not exist.
    pub principals: Vec<(Role, String)>,
    pub metrics: CloudMetrics,
    pub warehouse: Warehouse,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn token(&self, role: &Role) -> &str {
        &self.principals.iter().find(|(r, _)| r == role).unwrap().1
    }

    pub fn visible(&self, role: &Role) -> Visible {
        let seen: Vec<&School> = self.schools.iter().filter(|s| role.sees(s)).collect();
        let set = |f: fn(&School) -> &str| seen.iter().map(|s| f(s).to_string()).collect::<BTreeSet<_>>();
        Visible {
            schools: set(|s| &s.school_id),
            alliances: set(|s| &s.alliance),
            zones: set(|s| &s.zone),
            counties: set(|s| &s.county),
            cities: set(|s| &s.city),
        }
    }

    pub fn get(&self, token: Option<&str>, path_and_query: &str) -> (u16, Value, String) {
        self.rt.block_on(async {
            let mut req = reqwest::Client::new().get(format!("{}{path_and_query}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            let text = resp.text().await.unwrap();
            let json = if ctype.starts_with("application/json") { serde_json::from_str(&text).unwrap() } else { Value::String(text) };
            (status, json, ctype)
        })
    }

    pub fn sql(&self, token: &str, sql: &str, max_rows: Option<usize>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut body = json!({ "sql": sql });
            if let Some(m) = max_rows {
                body["max_rows"] = json!(m);
            }
            let resp =
                reqwest::Client::new().post(format!("{}/api/v1/sql", self.base)).bearer_auth(token).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json().await.unwrap())
        })
    }
}

#[derive(Debug)]
pub struct Visible {
    pub schools: BTreeSet<String>,
    pub alliances: BTreeSet<String>,
    pub zones: BTreeSet<String>,
    pub counties: BTreeSet<String>,
    pub cities: BTreeSet<String>,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProvinceSpec { seed: 7, cities: 2, alliances_per_city: 2, schools_per_alliance: 3, classrooms_per_school: 2 };
        let province = province::build(&spec);
        let registry = dir.path().join("registry.csv");
        edubrain_agent::write_registry(&province, &registry).unwrap();
        let schools = edubrain_cloud::registry::load(&registry).unwrap();
        // Two school days in one month and two in the next, so zone months have neighbours: the
        // second pair is a Friday (assessments) and a Monday (elective enrolments).
        let mut events = Vec::new();
        for (day, seed) in [(NaiveDate::from_ymd_opt(2026, 9, 29).unwrap(), 1), (NaiveDate::from_ymd_opt(2026, 10, 9).unwrap(), 2)] {
            let spec = SimulationSpec { first_day: day, school_days: 2, heartbeat_minutes: 30, seed };
            events.extend(simulate(&province, &spec));
        }
        let mut events_per_school = BTreeMap::new();
        for e in &events {
            *events_per_school.entry(e.header.school.clone()).or_insert(0u64) += 1;
        }
        let stored: Vec<StoredEvent> =
            events.into_iter().map(|event| StoredEvent { received_time: event.header.event_time, event, clock_flag: None }).collect();
        let root = dir.path().join("warehouse");
        edubrain_cloud::sink::write_events(&root, "part-0.parquet", &stored, local_offset()).unwrap();

        let mut principals: Vec<(Role, String)> = vec![(Role::Province, "t-province".into())];
        for c in schools.iter().map(|s| s.city.clone()).collect::<BTreeSet<_>>() {
            principals.push((Role::City(c.clone()), format!("t-city-{c}")));
        }
        for a in schools.iter().map(|s| s.alliance.clone()).collect::<BTreeSet<_>>() {
            principals.push((Role::Alliance(a.clone()), format!("t-alliance-{a}")));
        }
        principals.push((Role::Alliance("no-such-alliance".into()), "t-nobody".into()));
        let mut access = AccessConfig::default();
        for (i, (role, token)) in principals.iter().enumerate() {
            access.add(&format!("p{i}"), role.clone(), token);
        }

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let metrics = CloudMetrics::new();
        let warehouse = rt.block_on(Warehouse::open(&root, schools.clone(), 1 << 30)).unwrap();
        let (base, flight) = rt.block_on(async {
            let warehouse = warehouse.clone();
            let limits = QueryLimits { sql_timeout_ms: 2_000, sql_max_rows: 1_000, ..QueryLimits::default() };
            let state = app_state(warehouse, &access, limits, &dir.path().join("audit"), &metrics);
            let flight_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let flight = format!("grpc://{}", flight_listener.local_addr().unwrap());
            // Small limits, so the test can reach them.
            let flight_limits = FlightSqlConfig { listen: None, max_rows: 5_000, timeout_ms: 5_000 };
            let never = tokio_util::sync::CancellationToken::new();
            tokio::spawn(edubrain_cloud::flight::serve(state.clone(), flight_limits, flight_listener, never));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("http://{addr}"), flight)
        });
        Fixture { rt, base, flight, schools, events_per_school, principals, metrics, warehouse, dir }
    })
}

//! The API's access control, SQL endpoint, CSV answers and OpenAPI description, against a real
//! HTTP server over a Parquet warehouse of simulated events (no Kafka needed: the files are
//! written the way ingest writes them).
//!
//! The property tests check, for random roles, endpoints, parameters and SQL, that no answer
//! holds a row of a school the role may not see, that `COUNT(*)` over `events` is exactly the
//! role's share, and that no parameter string gets past its parser into SQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Visible, fixture};
use edubrain_cloud::CloudMetrics;
use edubrain_cloud::access::Role;
use edubrain_cloud::audit::AuditAction;
use edubrain_cloud::config::{Thresholds, ZoneTargets};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Asserts every row-owning identifier in an endpoint's answer is one `v` may see.
fn assert_only_visible(endpoint: &str, answer: &Value, v: &Visible) {
    let check = |set: &BTreeSet<String>, what: &str, id: &str| {
        assert!(set.contains(id), "{endpoint}: {what} {id:?} is not visible to the role ({v:?})");
    };
    let rows = |p: &str| answer.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default();
    match endpoint {
        "utilisation" | "summary" => {
            let list = if endpoint == "summary" { rows("/utilisation_by_alliance") } else { answer.as_array().cloned().unwrap() };
            for r in list {
                let (by, group) = (r["group_by"].as_str().unwrap(), r["group"].as_str().unwrap());
                if by == "device" || by == "classroom" {
                    check(&v.schools, "school of a device or classroom", r["school"].as_str().unwrap());
                    continue;
                }
                let set = match by {
                    "school" => &v.schools,
                    "alliance" => &v.alliances,
                    "zone" => &v.zones,
                    "county" => &v.counties,
                    _ => &v.cities,
                };
                check(set, by, group);
            }
        }
        "gaps" | "gaps/usage" => {
            for r in rows("/cv").into_iter().chain(rows("/senior_title")) {
                let group = r["group"].as_str().unwrap();
                match r["scope"].as_str().unwrap() {
                    "alliance" => check(&v.alliances, "alliance", group),
                    "zone" => check(&v.zones, "zone", group),
                    "county" => check(&v.counties, "county", group),
                    "city" => check(&v.cities, "city", group),
                    _ => {}
                }
            }
            let schools = answer["schools"].as_u64().unwrap() as usize;
            assert!(schools <= v.schools.len(), "gaps counted {schools} schools, the role sees {}", v.schools.len());
        }
        "zones" => {
            for r in rows("/months").into_iter().chain(rows("/semesters")).chain(rows("/alerts")) {
                check(&v.zones, "zone", r["zone"].as_str().unwrap());
            }
        }
        "sql" => {
            for r in rows("/rows") {
                for col in ["school", "school_id"] {
                    if let Some(id) = r.get(col).and_then(Value::as_str) {
                        check(&v.schools, col, id);
                    }
                }
                if let Some(c) = r.get("city").and_then(Value::as_str) {
                    check(&v.cities, "city", c);
                }
            }
        }
        "zone-partition" => {
            if answer.get("error").is_none() {
                for z in rows("/zones") {
                    for id in z["schools"].as_array().unwrap() {
                        check(&v.schools, "school", id.as_str().unwrap());
                    }
                }
            }
        }
        "recommendations" => {}
        other => panic!("unknown endpoint {other}"),
    }
}

const SQL: &[&str] = &[
    "SELECT school, COUNT(*) AS n FROM events GROUP BY school",
    "SELECT DISTINCT school, city FROM events",
    "SELECT * FROM school_dim",
    "SELECT school_id, city FROM schools",
    "SELECT e.school FROM events e JOIN school_dim s ON e.school = s.school_id WHERE s.city <> 'c01'",
    "SELECT school FROM events WHERE school NOT IN (SELECT school_id FROM school_dim) OR 1 = 1 LIMIT 50",
    "SELECT school FROM events UNION SELECT owner_school AS school FROM events WHERE false",
    "SELECT school, classroom, date FROM presence",
];

fn any_role() -> impl Strategy<Value = Role> {
    let roles: Vec<Role> = fixture().principals.iter().map(|(r, _)| r.clone()).collect();
    proptest::sample::select(roles)
}

/// Strings a caller might put in a parameter: valid values, foreign ids, SQL fragments, junk.
fn param_text() -> impl Strategy<Value = String> {
    let f = fixture();
    let ids: Vec<String> = f.schools.iter().map(|s| s.school_id.clone()).collect();
    prop_oneof![
        proptest::sample::select(ids),
        proptest::sample::select(vec![
            "school".to_string(),
            "alliance".into(),
            "zone".into(),
            "county".into(),
            "city".into(),
            "province".into(),
            "2026-09-29".into(),
            "2025-2026".into(),
            "1".into(),
            "csv".into(),
            "json".into(),
            "' OR '1'='1".into(),
            "x' UNION SELECT school FROM events --".into(),
            "school_id FROM schools; --".into(),
            "2026-09-29' OR date > '".into(),
            "c01-s01) OR (1=1".into(),
        ]),
        "\\PC{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_role_ever_sees_a_foreign_row(role in any_role(), endpoint in 0usize..8, by in 0usize..7, sql in 0usize..SQL.len(), pick in any::<prop::sample::Index>()) {
        let f = fixture();
        let (token, v) = (f.token(&role), f.visible(&role));
        let groups = ["school", "alliance", "zone", "county", "city", "classroom", "device"];
        let (name, status, answer) = match endpoint {
            0 => { let (s, a, _) = f.get(Some(token), &format!("/api/v1/utilisation?by={}", groups[by])); ("utilisation", s, a) }
            1 => { let (s, a, _) = f.get(Some(token), &format!("/api/v1/gaps?scope={}", ["province", "city", "county", "alliance", "zone"][by % 5])); ("gaps", s, a) }
            2 => { let (s, a, _) = f.get(Some(token), "/api/v1/zones"); ("zones", s, a) }
            3 => { let (s, a, _) = f.get(Some(token), "/api/v1/summary"); ("summary", s, a) }
            4 => {
                let school = pick.get(&f.schools).school_id.clone();
                let (s, a, _) = f.get(Some(token), &format!("/api/v1/recommendations?school={school}"));
                prop_assert_eq!(s, if v.schools.contains(&school) { 200 } else { 404 }, "{}", a);
                ("recommendations", s, a)
            }
            5 => {
                let county = pick.get(&f.schools).county.clone();
                let (s, a, _) = f.get(Some(token), &format!("/api/v1/zone-partition?county={county}&k=1"));
                prop_assert!(if v.counties.contains(&county) { s == 200 || s == 400 } else { s == 404 }, "{} {}", s, a);
                ("zone-partition", s, a)
            }
            6 => { let (s, a, _) = f.get(Some(token), &format!("/api/v1/gaps/usage?scope={}", ["province", "city", "county", "alliance", "zone"][by % 5])); ("gaps/usage", s, a) }
            _ => { let (s, a) = f.sql(token, SQL[sql], None); ("sql", s, a) }
        };
        if (name == "recommendations" || name == "zone-partition") && status == 404 {
            return Ok(());
        }
        // A role may see fewer than 3 schools of a county: too few for even one zone.
        if name == "zone-partition" && status == 400 && answer["error"].as_str().unwrap_or_default().contains("at least 3 schools per zone") {
            return Ok(());
        }
        prop_assert_eq!(status, 200, "{} as {}: {}", name, role, answer);
        assert_only_visible(name, &answer, &v);
    }

    #[test]
    fn count_of_events_is_exactly_the_roles_share(role in any_role()) {
        let f = fixture();
        let v = f.visible(&role);
        let expected: u64 = match role {
            Role::Province => f.events_per_school.values().sum(),
            _ => f.events_per_school.iter().filter(|(s, _)| v.schools.contains(*s)).map(|(_, n)| n).sum(),
        };
        let (status, answer) = f.sql(f.token(&role), "SELECT COUNT(*) AS n FROM events", None);
        prop_assert_eq!(status, 200);
        prop_assert_eq!(answer["rows"][0]["n"].as_u64(), Some(expected), "{}", role);
    }

    #[test]
    fn parameter_strings_never_reach_sql(role in any_role(), endpoint in 0usize..7, param in 0usize..10, text in param_text()) {
        let f = fixture();
        let (token, v) = (f.token(&role), f.visible(&role));
        let name = ["utilisation", "gaps", "zones", "summary", "recommendations", "zone-partition", "gaps/usage"][endpoint];
        let key = ["by", "scope", "school", "from", "to", "format", "limit", "county", "k", "school_year"][param];
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/{name}", f.base)).unwrap();
        url.query_pairs_mut().append_pair(key, &text);
        if name == "recommendations" && key != "school" {
            url.query_pairs_mut().append_pair("school", &f.schools[0].school_id);
        }
        if name == "zone-partition" {
            for (k, v) in [("county", f.schools[0].county.as_str()), ("k", "1")] {
                if key != k {
                    url.query_pairs_mut().append_pair(k, v);
                }
            }
        }
        let (status, answer, ctype) = f.get(Some(token), &url.as_str()[f.base.len()..]);
        // A bad value is named in a 400; anything else is an ordinary answer. Never a 500.
        prop_assert!(matches!(status, 200 | 400 | 404), "{} {}={:?}: {} {}", name, key, text, status, answer);
        if status == 400 {
            let msg = answer["error"].as_str().unwrap_or_default();
            // (Too few visible schools for a zone is a 400 about the county, not the parameter.)
            prop_assert!(
                msg.contains(key) || msg.contains("Failed to deserialize") || msg.contains("at least 3 schools per zone"),
                "400 without naming {}: {}", key, msg
            );
        }
        if status == 200 && ctype.starts_with("application/json") {
            assert_only_visible(name, &answer, &v);
        }
    }
}

#[test]
fn requests_without_a_known_token_are_refused_and_counted() {
    let f = fixture();
    let before = |reason: &str| f.metrics.api_denied.with_label_values(&[reason]).get();
    let (missing, unknown) = (before("missing_token"), before("unknown_token"));
    for path in
        ["/api/v1/summary", "/api/v1/utilisation", "/api/v1/gaps", "/api/v1/zones", "/api/v1/whoami", "/api/v1/recommendations?school=x"]
    {
        let (status, answer, _) = f.get(None, path);
        assert_eq!(status, 401, "{path}: {answer}");
        assert!(answer["error"].as_str().unwrap().starts_with("missing_token"), "{answer}");
        assert_eq!(f.get(Some("not-a-token"), path).0, 401);
    }
    assert_eq!(before("missing_token") - missing, 6);
    assert_eq!(before("unknown_token") - unknown, 6);
    // Health, metrics and the API description stay open.
    assert_eq!(f.get(None, "/healthz").0, 200);
    assert_eq!(f.get(None, "/metrics").0, 200);
    assert_eq!(f.get(None, "/api/v1/openapi.json").0, 200);
}

#[test]
fn foreign_school_is_not_found_and_audited() {
    let f = fixture();
    let city = Role::City(f.schools[0].city.clone());
    let foreign = f.schools.iter().find(|s| !city.sees(s)).unwrap();
    let before = f.metrics.api_denied.with_label_values(&["foreign_school"]).get();
    let (status, answer, _) = f.get(Some(f.token(&city)), &format!("/api/v1/recommendations?school={}", foreign.school_id));
    assert_eq!(status, 404, "{answer}");
    // Same message as for a school that does not exist at all.
    let (_, unknown, _) = f.get(Some(f.token(&city)), "/api/v1/recommendations?school=zz-nowhere");
    assert_eq!(
        answer["error"].as_str().unwrap().replace(&foreign.school_id, "ID"),
        unknown["error"].as_str().unwrap().replace("zz-nowhere", "ID")
    );
    assert_eq!(f.metrics.api_denied.with_label_values(&["foreign_school"]).get(), before + 1);
}

/// Every data request, SQL query and refusal is in the audit log with who, what and how it
/// ended; no token ever is.
#[test]
fn the_audit_log_records_requests_sql_and_refusals_never_tokens() {
    let f = fixture();
    let city = Role::City(f.schools[0].city.clone());
    let foreign = f.schools.iter().find(|s| !city.sees(s)).unwrap();
    let token = f.token(&city).to_string();
    assert_eq!(f.get(Some(&token), "/api/v1/utilisation?by=alliance").0, 200);
    assert_eq!(f.get(Some(&token), "/api/v1/utilisation?by=galaxy").0, 400);
    assert_eq!(f.get(Some(&token), &format!("/api/v1/recommendations?school={}", foreign.school_id)).0, 404);
    assert_eq!(f.get(Some("guessed-token"), "/api/v1/summary").0, 401);
    assert_eq!(f.get(None, "/api/v1/zones").0, 401);
    assert_eq!(f.sql(&token, "SELECT COUNT(*) AS n FROM events", None).0, 200);
    assert_eq!(f.sql(&token, "DROP TABLE events", None).0, 400);

    let dir = f.dir.path().join("audit");
    let day = chrono::Utc::now().date_naive();
    // 5 answered requests (3 GETs, 2 SQL), 2 SQL texts, 3 refusals (a foreign school, an unknown
    // token, no token).
    let wanted = 10;
    let records = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = edubrain_cloud::audit::read_day(&dir, day).unwrap_or_default();
            if r.len() >= wanted || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assert_eq!(records.len(), wanted, "{records:#?}");
    let principal = f.principals.iter().position(|(r, _)| *r == city).map(|i| format!("p{i}")).unwrap();
    let find = |action: AuditAction, target: &str| {
        records.iter().find(|r| r.action == action && r.target == target).unwrap_or_else(|| panic!("no {action:?} {target}: {records:#?}"))
    };
    let ok = find(AuditAction::Request, "/api/v1/utilisation?by=alliance");
    assert_eq!((ok.principal.as_deref(), ok.status), (Some(principal.as_str()), Some(200)));
    assert_eq!(ok.role.as_deref(), Some(city.to_string().as_str()));
    assert!(ok.client.as_deref().is_some_and(|c| c.starts_with("127.0.0.1:")), "{ok:?}");
    assert_eq!(find(AuditAction::Request, "/api/v1/utilisation?by=galaxy").status, Some(400));
    let foreign_target = format!("/api/v1/recommendations?school={}", foreign.school_id);
    assert_eq!(find(AuditAction::Denied, &foreign_target).reason.as_deref(), Some("foreign_school"));
    assert_eq!(find(AuditAction::Request, &foreign_target).status, Some(404));
    let failed_login = find(AuditAction::Denied, "/api/v1/summary");
    assert_eq!((failed_login.reason.as_deref(), failed_login.principal.as_deref()), (Some("unknown_token"), None));
    assert!(failed_login.client.is_some());
    assert_eq!(find(AuditAction::Denied, "/api/v1/zones").reason.as_deref(), Some("missing_token"));
    let sql: Vec<_> = records.iter().filter(|r| r.action == AuditAction::Sql).collect();
    assert_eq!(sql.len(), 2, "{sql:#?}");
    assert_eq!((sql[0].sql.as_deref(), sql[0].ok), (Some("SELECT COUNT(*) AS n FROM events"), Some(true)));
    assert_eq!((sql[1].sql.as_deref(), sql[1].ok), (Some("DROP TABLE events"), Some(false)));
    assert_eq!(records.iter().filter(|r| r.action == AuditAction::Request && r.target == "/api/v1/sql").count(), 2);
    let text = std::fs::read_to_string(edubrain_cloud::audit::file_for(&dir, day)).unwrap();
    for (_, t) in &f.principals {
        assert!(!text.contains(t.as_str()), "a token is in the audit log");
    }
    assert!(!text.contains("guessed-token"));
}

#[test]
fn sql_endpoint_is_read_only_and_limited() {
    let f = fixture();
    let token = f.token(&Role::Province);
    let dir = f.dir.path().join("warehouse/events");
    for (sql, needle) in [
        (format!("CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '{}'", dir.display()), "DDL"),
        ("CREATE TABLE t AS SELECT 1".to_string(), "DDL"),
        ("DROP TABLE events".to_string(), "DDL"),
        ("INSERT INTO events SELECT * FROM events".to_string(), "DML"),
        ("COPY (SELECT * FROM events) TO '/tmp/edubrain-leak.csv'".to_string(), "DML"),
        ("SET datafusion.execution.batch_size = 1".to_string(), "Statement"),
        ("SELECT * FROM information_schema.tables".to_string(), "information_schema"),
        ("SELEC 1".to_string(), "sql"),
    ] {
        let (status, answer) = f.sql(token, &sql, None);
        assert_eq!(status, 400, "{sql}: {answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{sql}: {msg}");
    }
    assert!(!std::path::Path::new("/tmp/edubrain-leak.csv").exists());

    let (status, answer) = f.sql(token, "SELECT event_id FROM events", Some(5));
    assert_eq!(status, 200);
    assert_eq!(
        (answer["row_count"].as_u64(), answer["truncated"].as_bool(), answer["rows"].as_array().unwrap().len()),
        (Some(5), Some(true), 5)
    );
    // max_rows may only lower the server's limit (1,000 here).
    let (_, answer) = f.sql(token, "SELECT event_id FROM events", Some(1_000_000));
    assert_eq!((answer["row_count"].as_u64(), answer["max_rows"].as_u64()), (Some(1_000), Some(1_000)));
    let (_, answer) = f.sql(token, "SELECT COUNT(*) AS n FROM school_dim", None);
    assert_eq!((answer["truncated"].as_bool(), answer["columns"].clone()), (Some(false), json!(["n"])));

    // A query that would run for hours is cut at the time limit (2 s here).
    let started = std::time::Instant::now();
    let (status, answer) =
        f.sql(token, "SELECT COUNT(*) FROM events a, events b, events c WHERE a.uptime_s + b.uptime_s > c.uptime_s", None);
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("time limit of 2000 ms"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    // … and stops burning CPU once cut: this process uses well under a core in the next second.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = cpu_seconds();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = cpu_seconds() - before;
    assert!(used < 0.5, "the cancelled query still ran: {used:.2} CPU s in 1 s");
}

/// CPU seconds this process has used (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

#[test]
fn csv_answers_are_tables() {
    let f = fixture();
    let token = f.token(&Role::Province);
    let (status, body, ctype) = f.get(Some(token), "/api/v1/utilisation?by=alliance&format=csv");
    assert_eq!((status, ctype.as_str()), (200, "text/csv; charset=utf-8"));
    let text = body.as_str().unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert!(header.iter().any(|h| h == "utilisation.value"), "{header:?}");
    let alliances: BTreeSet<String> = f.schools.iter().map(|s| s.alliance.clone()).collect();
    assert_eq!(reader.records().count(), alliances.len(), "{text}");
    let (status, body, _) = f.get(Some(token), "/api/v1/gaps?scope=alliance&format=csv");
    assert_eq!(status, 200);
    let header = body.as_str().unwrap().lines().next().unwrap().split(',').collect::<BTreeSet<_>>();
    let expected = BTreeSet::from(["scope", "group", "level", "indicator", "schools", "pupils", "mean", "cv", "threshold", "meets"]);
    assert_eq!(header, expected, "{body}");
    let (status, answer, _) = f.get(Some(token), "/api/v1/gaps?format=xml");
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("format=\"xml\""));
}

#[test]
fn whoami_names_the_role_and_its_schools() {
    let f = fixture();
    let alliance = Role::Alliance(f.schools[0].alliance.clone());
    let (status, answer, _) = f.get(Some(f.token(&alliance)), "/api/v1/whoami");
    assert_eq!(status, 200);
    assert_eq!(answer["role"], json!({"role": "alliance", "scope": f.schools[0].alliance}));
    let expected: Vec<String> = f.visible(&alliance).schools.into_iter().collect();
    assert_eq!(answer["schools"], json!(expected));
}

/// Every operation in `cloud/openapi.json` answers as documented: a documented status, the
/// schema's required fields, and CSV where the operation offers it.
#[test]
fn openapi_describes_every_operation() {
    let f = fixture();
    let token = f.token(&Role::Province);
    let doc: Value = serde_json::from_str(edubrain_cloud::api::OPENAPI).unwrap();
    let (_, served, _) = f.get(None, "/api/v1/openapi.json");
    assert_eq!(served, doc);
    let school = &f.schools[0].school_id;
    let county = {
        let mut per_county: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in &f.schools {
            per_county.entry(&s.county).or_default().insert(&s.school_id);
        }
        per_county.into_iter().max_by_key(|(_, s)| s.len()).unwrap().0.to_string()
    };
    let query = |path: &str| match path {
        "/api/v1/recommendations" => format!("?school={school}"),
        "/api/v1/zone-partition" => format!("?county={county}&k=1"),
        _ => String::new(),
    };
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let (status, answer) = match method.as_str() {
                "get" => {
                    let (s, a, _) = f.get(Some(token), &format!("{path}{}", query(path)));
                    (s, a)
                }
                "post" => f.sql(token, "SELECT school, COUNT(*) AS n FROM events GROUP BY school", None),
                m => panic!("{path}: undocumented method {m}"),
            };
            let response = &op["responses"][status.to_string()];
            assert!(response.is_object(), "{method} {path}: status {status} is not documented: {answer}");
            assert_eq!(status, 200, "{method} {path}: {answer}");
            checked += 1;
            let Some(schema) = response.pointer("/content/application~1json/schema") else { continue };
            let schema = match schema.get("$ref").and_then(Value::as_str) {
                Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
                None => schema,
            };
            let items = if schema["type"] == "array" { answer.as_array().unwrap().first().cloned() } else { Some(answer.clone()) };
            let (required, item) = if schema["type"] == "array" {
                let item_schema = &schema["items"];
                let item_schema = match item_schema.get("$ref").and_then(Value::as_str) {
                    Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
                    None => item_schema,
                };
                (item_schema["required"].clone(), items)
            } else {
                (schema["required"].clone(), items)
            };
            if let (Some(required), Some(item)) = (required.as_array(), item) {
                for field in required {
                    assert!(item.get(field.as_str().unwrap()).is_some(), "{method} {path}: required field {field} missing in {item}");
                }
            }
            if response.pointer("/content/text~1csv").is_some() && method == "get" {
                let q = query(path);
                let sep = if q.is_empty() { "?" } else { "&" };
                let (s, body, ctype) = f.get(Some(token), &format!("{path}{q}{sep}format=csv"));
                assert_eq!((s, ctype.as_str()), (200, "text/csv; charset=utf-8"), "{path}: {body}");
            }
        }
    }
    assert_eq!(checked, 12, "operations checked");
}

/// The headline gauges carry the API's numbers, labelled only by registry alliances and zones.
#[test]
fn headline_gauges_match_the_api() {
    let f = fixture();
    let m = CloudMetrics::new();
    let config = edubrain_cloud::config::HeadlineConfig::default();
    f.rt.block_on(edubrain_cloud::headline::refresh(&f.warehouse, &Thresholds::default(), &ZoneTargets::default(), &config, &m)).unwrap();
    let text = m.render();
    let gauge = |name: &str, labels: &str| -> Option<f64> {
        let prefix = format!("edubrain_cloud_{name}{{{labels}}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(|v| v.parse().unwrap())
    };
    let (_, api, _) = f.get(Some(f.token(&Role::Province)), "/api/v1/utilisation?by=alliance");
    let rows = api.as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let labels = format!("group=\"{}\",level=\"alliance\"", row["group"].as_str().unwrap());
        let want = row["utilisation"]["value"].as_f64().unwrap();
        let got = gauge("headline_utilisation_ratio", &labels).unwrap_or_else(|| panic!("no gauge for {labels}:\n{text}"));
        assert!((got - want).abs() < 1e-9, "{labels}: gauge {got}, API {want}");
        // The fixture's Monday has enrolments in every alliance.
        {
            let want = row["cross_school_electives"]["share"].as_f64().unwrap_or_else(|| panic!("no electives: {row}"));
            let got = gauge("headline_cross_school_elective_ratio", &labels).unwrap_or_else(|| panic!("no elective gauge for {labels}"));
            assert!((got - want).abs() < 1e-9, "{labels}: gauge {got}, API {want}");
        }
    }
    // The fixture's days all lie in the headline window, so the zone teaching-quality CVs are
    // the API's over all days.
    let (_, usage, _) = f.get(Some(f.token(&Role::Province)), "/api/v1/gaps/usage?scope=zone");
    let quality: Vec<&Value> = usage["cv"].as_array().unwrap().iter().filter(|r| r["indicator"] == "teaching_quality").collect();
    assert!(!quality.is_empty(), "{usage}");
    for row in quality {
        let labels = format!("school_level=\"{}\",zone=\"{}\"", row["level"].as_str().unwrap(), row["group"].as_str().unwrap());
        let got = gauge("headline_zone_teaching_quality_cv", &labels).unwrap_or_else(|| panic!("no gauge for {labels}:\n{text}"));
        assert!((got - row["cv"].as_f64().unwrap()).abs() < 1e-9, "{labels}: gauge {got}, API {row}");
    }
    let v = f.visible(&Role::Province);
    for line in text.lines().filter(|l| l.starts_with("edubrain_cloud_headline_") && l.contains('{')) {
        let labels = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
        for pair in labels.split(',') {
            let (k, val) = pair.split_once('=').unwrap();
            let val = val.trim_matches('"');
            match k {
                "group" => assert!(v.alliances.contains(val) || v.zones.contains(val), "{line}"),
                "zone" => assert!(v.zones.contains(val), "{line}"),
                "level" => assert!(val == "alliance" || val == "zone", "{line}"),
                "indicator" => {
                    assert!(
                        ["utilisation", "idle", "live_interruption", "resource_sharing", "teaching_quality_cv"].contains(&val),
                        "{line}"
                    )
                }
                "school_level" => assert!(val == "primary" || val == "junior", "{line}"),
                "bound" => assert!(val == "min" || val == "max", "{line}"),
                other => panic!("unexpected label {other} in {line}"),
            }
        }
    }
    for zone in &v.zones {
        assert!(gauge("headline_zone_alerts", &format!("zone=\"{zone}\"")).is_some(), "no alert gauge for {zone}:\n{text}");
    }
    // The targets the alert rules compare with are the configured thresholds.
    let t = Thresholds::default();
    assert_eq!(gauge("headline_target_ratio", "bound=\"min\",indicator=\"utilisation\""), Some(t.utilisation_target));
    assert_eq!(gauge("headline_target_ratio", "bound=\"max\",indicator=\"idle\""), Some(t.idle_rate_target));
    assert_eq!(gauge("headline_target_ratio", "bound=\"max\",indicator=\"teaching_quality_cv\""), Some(t.teaching_quality_cv_zone));
    assert!(gauge("headline_refresh_timestamp_seconds", "").is_none()); // unlabelled: no braces
    assert!(text.lines().any(|l| l.starts_with("edubrain_cloud_headline_refresh_timestamp_seconds ") && !l.ends_with(" 0")));
}

/// Utilisation per classroom and per device adds up to its school's: in-use hours summed over a
/// school's classrooms (and over its devices) and timetable hours over its classrooms are the
/// school row's, and each row's utilisation is its own in-use / timetable hours.
#[test]
fn classroom_and_device_utilisation_add_up_to_their_schools() {
    let f = fixture();
    let token = f.token(&Role::Province);
    let get = |by: &str| {
        let (status, rows, _) = f.get(Some(token), &format!("/api/v1/utilisation?by={by}"));
        assert_eq!(status, 200, "{rows}");
        rows.as_array().unwrap().clone()
    };
    let (schools, classrooms, devices) = (get("school"), get("classroom"), get("device"));
    assert!(classrooms.len() > schools.len() && !devices.is_empty(), "{} classrooms, {} devices", classrooms.len(), devices.len());
    let num = |r: &Value, k: &str| r[k].as_f64().unwrap();
    for school in &schools {
        let id = school["group"].as_str().unwrap();
        let of = |rows: &[Value]| rows.iter().filter(|r| r["school"] == id).cloned().collect::<Vec<_>>();
        let (rooms, devs) = (of(&classrooms), of(&devices));
        let sum = |rows: &[Value], k: &str| rows.iter().map(|r| num(r, k)).sum::<f64>();
        assert!((sum(&rooms, "in_use_hours") - num(school, "in_use_hours")).abs() < 1e-6, "{id}: classrooms' in-use hours");
        assert!((sum(&rooms, "timetable_hours") - num(school, "timetable_hours")).abs() < 1e-6, "{id}: classrooms' timetable hours");
        assert!((sum(&devs, "in_use_hours") - num(school, "in_use_hours")).abs() < 1e-6, "{id}: devices' in-use hours");
        assert_eq!(rooms.len() as u64, school["classrooms"].as_u64().unwrap(), "{id}: one row per classroom");
    }
    for r in classrooms.iter().chain(&devices) {
        let expected = num(r, "in_use_hours") / num(r, "timetable_hours");
        assert!((r["utilisation"]["value"].as_f64().unwrap() - expected).abs() < 1e-9, "{r}");
        assert!(r["booking_no_show_rate"]["value"].is_null(), "a school's rate on a {} row", r["group_by"]);
    }
}

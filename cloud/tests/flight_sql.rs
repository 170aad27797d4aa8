//! Arrow Flight SQL as a BI tool sees it: ADBC's Flight SQL driver from PyPI (Go, over gRPC)
//! against the cloud's Flight SQL server on the shared API fixture's warehouse. The driver runs
//! in `flight_sql_client.py`; this test makes its cases and checks what came back.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::fixture;
use edubrain_cloud::access::Role;
use edubrain_cloud::audit::AuditAction;
use serde_json::{Value, json};

/// 10^10 row pairs through a nested-loop join: runs far past the fixture's 5 s limit.
const ENDLESS: &str = "SELECT COUNT(*) AS n FROM generate_series(1, 100000) a, generate_series(1, 100000) b WHERE a.value + b.value < 0";
const COUNT_BY_SCHOOL: &str = "SELECT school, COUNT(*) AS n FROM events GROUP BY school ORDER BY school";

/// Runs the ADBC client on `cases` and returns one answer per case.
fn adbc(cases: &[Value]) -> Vec<Value> {
    let (child, script) = common::adbc_client(&json!(cases), Stdio::inherit());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed: {}", out.status);
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers.len(), cases.len());
    answers
}

fn bearer(token: &str) -> Value {
    json!({ "bearer": token })
}

fn ok<'a>(answer: &'a Value, what: &str) -> &'a Value {
    assert_eq!(answer["ok"], json!(true), "{what}: {answer}");
    answer
}

fn error<'a>(answer: &'a Value, what: &str) -> &'a str {
    assert_eq!(answer["ok"], json!(false), "{what} should fail: {answer}");
    answer["error"].as_str().unwrap()
}

/// Every role reads exactly its own schools' events, through statements and prepared
/// statements, and the warehouse's types arrive as Arrow types.
#[test]
fn bi_tools_query_their_own_rows_as_arrow() {
    let f = fixture();
    let uri = &f.flight;
    let mut cases = Vec::new();
    for (_, token) in &f.principals {
        cases.push(json!({ "uri": uri, "auth": bearer(token), "op": "query", "sql": COUNT_BY_SCHOOL }));
    }
    for (_, token) in &f.principals {
        cases.push(json!({ "uri": uri, "auth": bearer(token), "op": "prepared", "sql": "SELECT COUNT(*) AS n FROM events" }));
    }
    let province = f.token(&Role::Province);
    let sample = "SELECT * FROM events ORDER BY event_id LIMIT 3";
    cases.push(json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": sample }));
    let answers = adbc(&cases);
    let n = f.principals.len();

    for (i, (role, _)) in f.principals.iter().enumerate() {
        let visible = f.visible(role).schools;
        let expected: BTreeMap<String, u64> =
            f.events_per_school.iter().filter(|(s, _)| visible.contains(*s)).map(|(s, n)| (s.clone(), *n)).collect();
        let got: BTreeMap<String, u64> = ok(&answers[i], &format!("{role} count by school"))["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["school"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, expected, "{role}: Flight SQL rows differ from its schools' events");
        let total = ok(&answers[n + i], &format!("{role} prepared count"))["rows"][0]["n"].as_u64().unwrap();
        assert_eq!(total, expected.values().sum::<u64>(), "{role}: prepared statement count");
    }
    assert!(answers[..n].iter().filter(|a| !a["rows"].as_array().unwrap().is_empty()).count() >= n - 1);

    // The same columns, in the same order, as the HTTP SQL endpoint answers with; times and
    // numbers stay typed.
    let arrow = ok(&answers[2 * n], "sample rows");
    let columns: Vec<&str> = arrow["schema"].as_array().unwrap().iter().map(|c| c[0].as_str().unwrap()).collect();
    let (status, http) = f.sql(province, sample, None);
    assert_eq!(status, 200, "{http}");
    let http_columns: Vec<&str> = http["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(columns, http_columns);
    let types: BTreeMap<&str, &str> =
        arrow["schema"].as_array().unwrap().iter().map(|c| (c[0].as_str().unwrap(), c[1].as_str().unwrap())).collect();
    assert!(types["event_time"].starts_with("timestamp"), "{types:?}");
    assert_eq!(arrow["rows"].as_array().unwrap().len(), 3);
    let ids: Vec<&str> = arrow["rows"].as_array().unwrap().iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    let http_ids: Vec<&str> = http["rows"].as_array().unwrap().iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, http_ids);
}

/// Catalog browsing (what a BI tool shows in its table tree), server info, and table schemas.
#[test]
fn bi_tools_browse_tables_and_server_info() {
    let f = fixture();
    let uri = &f.flight;
    let alliance = Role::Alliance(f.schools[0].alliance.clone());
    let token = f.token(&alliance);
    let answers = adbc(&[
        json!({ "uri": uri, "auth": bearer(token), "op": "objects" }),
        json!({ "uri": uri, "auth": bearer(token), "op": "info" }),
        json!({ "uri": uri, "auth": bearer(token), "op": "table_schema", "table": "events" }),
        json!({ "uri": uri, "auth": bearer(token), "op": "query", "sql": "SELECT * FROM events LIMIT 0" }),
    ]);
    let tables: Vec<String> = ok(&answers[0], "get_objects")["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}.{}.{} {}", t[0].as_str().unwrap(), t[1].as_str().unwrap(), t[2].as_str().unwrap(), t[3].as_str().unwrap()))
        .collect();
    for wanted in ["datafusion.public.events VIEW", "datafusion.public.school_dim VIEW", "datafusion.public.schools TABLE"] {
        assert!(tables.contains(&wanted.to_string()), "{wanted} not in {tables:?}");
    }
    let info = &ok(&answers[1], "get_info")["info"];
    assert_eq!(info["vendor_name"], json!("edubrain-cloud"), "{info}");
    assert_eq!(info["vendor_version"], json!(env!("CARGO_PKG_VERSION")), "{info}");
    let schema = &ok(&answers[2], "table schema")["schema"];
    assert_eq!(schema, &ok(&answers[3], "empty result")["schema"], "table schema differs from a query's");
}

/// Logins, refusals, read-only SQL and the row limit; and each is in the audit log and the
/// request counter.
#[test]
fn flight_sql_refuses_strangers_and_writes_and_audits_what_it_ran() {
    let f = fixture();
    let uri = &f.flight;
    let province = f.token(&Role::Province);
    let city = Role::City(f.schools[0].city.clone());
    let city_principal = f.principals.iter().position(|(r, _)| *r == city).map(|i| format!("p{i}")).unwrap();
    let city_token = f.token(&city);
    let count = "SELECT COUNT(*) AS n FROM events";
    let answers = adbc(&[
        json!({ "uri": uri, "auth": { "user": city_principal, "password": city_token }, "op": "query", "sql": count }),
        json!({ "uri": uri, "auth": { "user": city_principal, "password": "guessed" }, "op": "query", "sql": count }),
        json!({ "uri": uri, "auth": { "user": "p0", "password": city_token }, "op": "query", "sql": count }),
        json!({ "uri": uri, "auth": bearer("guessed-token"), "op": "query", "sql": count }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": "DROP TABLE events" }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": "CREATE TABLE copy AS SELECT * FROM events" }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": "SELECT value FROM generate_series(1, 6000)" }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": "SELECT value FROM generate_series(1, 5000)" }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": "SELECT nonsense FROM events" }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": count }),
        json!({ "uri": uri, "auth": bearer(province), "op": "query", "sql": ENDLESS }),
    ]);
    let city_total: u64 = f.events_per_school.iter().filter(|(s, _)| f.visible(&city).schools.contains(*s)).map(|(_, n)| n).sum();
    assert_eq!(ok(&answers[0], "basic login")["rows"][0]["n"].as_u64(), Some(city_total));
    for (i, what) in [(1, "wrong password"), (2, "another principal's name"), (3, "unknown bearer token")] {
        let e = error(&answers[i], what);
        assert!(e.contains("unknown_token") && e.to_lowercase().contains("unauthenticated"), "{what}: {e}");
    }
    for i in [4, 5] {
        let e = error(&answers[i], "DDL");
        assert!(e.contains("not supported") || e.contains("DDL"), "{e}");
    }
    let e = error(&answers[6], "6,000 rows");
    assert!(e.contains("more than 5000 rows") && e.contains("max_rows"), "{e}");
    assert_eq!(ok(&answers[7], "5,000 rows")["rows"].as_array().unwrap().len(), 5000);
    assert!(error(&answers[8], "unknown column").contains("nonsense"));
    let all: u64 = f.events_per_school.values().sum();
    assert_eq!(ok(&answers[9], "events still there")["rows"][0]["n"].as_u64(), Some(all));
    let e = error(&answers[10], "a query past the time limit");
    assert!(e.contains("time limit of 5000 ms") && e.to_lowercase().contains("deadline"), "{e}");
    let took = answers[10]["seconds"].as_f64().unwrap();
    assert!((5.0..30.0).contains(&took), "the time limit ended the query after {took} s");

    // The audit log: who ran what and whether it ran; the failed logins with no principal.
    let dir = f.dir.path().join("audit");
    let day = chrono::Utc::now().date_naive();
    let records = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = edubrain_cloud::audit::read_day(&dir, day).unwrap_or_default();
            let sql = r.iter().filter(|r| r.action == AuditAction::Sql && r.target == "flight-sql").count();
            if sql >= 6 || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let ran = |sql: &str| {
        records
            .iter()
            .filter(|r| r.action == AuditAction::Sql && r.target == "flight-sql" && r.sql.as_deref() == Some(sql))
            .map(|r| (r.principal.clone().unwrap_or_default(), r.ok))
            .collect::<Vec<_>>()
    };
    assert!(ran(count).contains(&(city_principal.clone(), Some(true))), "{records:#?}");
    assert_eq!(ran("SELECT value FROM generate_series(1, 6000)"), vec![("p0".to_string(), Some(false))]);
    assert_eq!(ran("SELECT value FROM generate_series(1, 5000)"), vec![("p0".to_string(), Some(true))]);
    assert_eq!(ran(ENDLESS), vec![("p0".to_string(), Some(false))]);
    let refusals = records.iter().filter(|r| r.action == AuditAction::Denied && r.target.starts_with("flight-sql")).count();
    assert!(refusals >= 3, "{records:#?}");
    let text = std::fs::read_to_string(edubrain_cloud::audit::file_for(&dir, day)).unwrap();
    assert!(!text.contains(city_token) && !text.contains(province) && !text.contains("guessed-token"), "a token is in the audit log");

    let metrics = f.metrics.render();
    assert!(metrics.contains("edubrain_cloud_api_requests_total{endpoint=\"flight_sql\",status=\"2xx\"}"), "{metrics}");
    assert!(metrics.contains("edubrain_cloud_api_requests_total{endpoint=\"flight_sql\",status=\"4xx\"}"), "{metrics}");
}

//! A real Prometheus, configured with `deploy/prometheus/` as deployed, scrapes a running
//! pipeline (real Mosquitto and Tansu, an edge per city, the cloud) after a simulated school
//! day: every target is up, every alert rule evaluates without error on metrics the components
//! really expose, the plan-target rules match the cloud's own gauges, and every query of the
//! Grafana dashboards in `deploy/grafana/` runs and names only exposed metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, ProvinceSpec, PublishProgress, SimulatorConfig, broker_users, province};
use edubrain_brokers::{Mosquitto, Prometheus, ScrapeTargets, Storage, Tansu};
use edubrain_cloud::CloudConfig;
use edubrain_schemas::event::{BandwidthSampled, EventBody};
use edubrain_schemas::topics::{KAFKA_EVENTS_TOPIC, TerminalTopic};
use edubrain_schemas::{Event, Header, SCHEMA_VERSION};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Metric names in a PromQL expression: identifiers that are not functions, keywords, label
/// names or strings. Good enough for our rules and panels, which name metrics `edubrain_*`,
/// `up` and `ALERTS`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("edubrain_") || word == "up" || word == "ALERTS" {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"sum by (city) (rate(edubrain_edge_events_rejected_total{rule="edubrain_x"}[5m])) / up{job="a"} and on() hour() < 8"#,
    );
    assert_eq!(names, BTreeSet::from(["edubrain_edge_events_rejected_total".to_string(), "up".to_string()]));
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = self.http.get(format!("{}{path}", self.base)).query(query).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} {query:?}: {status}, not JSON ({e}): {text}"));
        assert!(status.is_success() && body["status"] == "success", "{path} {query:?}: {status} {body}");
        body["data"].clone()
    }

    async fn metric_names(&self) -> BTreeSet<String> {
        self.get("/api/v1/label/__name__/values", &[]).await.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }
}

/// Waits until `check` returns `Some`, up to `secs`, then panics with the last `why`.
async fn eventually<T>(secs: u64, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(t) => return t,
            Err(why) if tokio::time::Instant::now() > deadline => panic!("after {secs}s: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 3, "provincial overview, city edge operations, zone monitoring");
    out
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// A panel query as Prometheus would get it from Grafana: every variable at "All".
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$city", ".*").replace("$zone", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_component_and_every_rule_and_panel_uses_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 5, cities: 2, alliances_per_city: 2, schools_per_alliance: 3, classrooms_per_school: 2 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let registry = dir.path().join("registry.csv");
    edubrain_agent::write_registry(&p, &registry).unwrap();

    let edges =
        edubrain_e2e::start_edges(&["c01", "c02"], mosquitto.port, &tansu.bootstrap(), dir.path(), DEMO_PROVISIONING_SECRET, &shutdown)
            .await;
    let mut cloud_config = CloudConfig::on_loopback(dir.path().join("warehouse"), Some(registry.clone()), &tansu.bootstrap());
    cloud_config.ingest.flush_interval_ms = 200;
    cloud_config.headline.refresh_secs = 1;
    let cloud = edubrain_cloud::start(cloud_config, shutdown.clone()).await.unwrap();

    // A school week, plus what makes the labelled series the rules and panels use exist: a
    // message the edge dead-letters, a device clock in 1971 (kept, flagged) and a poison record
    // written straight to Kafka (quarantined by the cloud).
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    let config = SimulatorConfig {
        mqtt: target.clone(),
        province: spec.clone(),
        first_day: NaiveDate::from_ymd_opt(2026, 11, 16),
        // Monday to Friday: electives are enrolled on Mondays and assessments held on Fridays,
        // and the gauges the rules and panels read need both.
        school_days: 5,
        heartbeat_minutes: 30,
        speed: 0.0,
        registry_out: None,
        outbox_dir: Some(dir.path().join("outbox")),
        outbox: Default::default(),
    };
    let summary = edubrain_agent::run(config, Arc::new(PublishProgress::default()), shutdown.clone()).await.unwrap();
    assert_eq!(summary.acked, summary.created);
    let room = &p.schools[0].classrooms[0];
    let topic =
        TerminalTopic { city: room.city.clone(), school: room.school.clone(), classroom: room.id.clone(), terminal: room.terminal.clone() };
    let old_clock = Event {
        header: Header {
            event_id: uuid::Uuid::new_v4(),
            schema_version: SCHEMA_VERSION,
            city: room.city.clone(),
            school: room.school.clone(),
            classroom: room.id.clone(),
            terminal: room.terminal.clone(),
            event_time: Utc.with_ymd_and_hms(1971, 1, 1, 0, 0, 0).unwrap(),
        },
        body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 100.0, up_kbps: 10.0 }),
    };
    edubrain_agent::publisher::publish_raw(
        &target,
        &edubrain_schemas::identity::terminal_username(&topic),
        &topic.events_topic(),
        vec![b"{\"not\": \"an event\"}".to_vec(), old_clock.to_json()],
    )
    .await
    .unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", tansu.bootstrap()).create().unwrap();
    producer.send(FutureRecord::to(KAFKA_EVENTS_TOPIC).key("x").payload("poison"), Duration::from_secs(10)).await.unwrap();
    let expected_rows = summary.created + 1;
    let mut rx = cloud.progress.clone();
    eventually(60, async || {
        let written = rx.borrow_and_update().events_written;
        if written >= expected_rows { Ok(()) } else { Err(format!("warehouse has {written} of {expected_rows}")) }
    })
    .await;

    let targets = ScrapeTargets { edges: edges.iter().map(|e| e.http_addr).collect(), cloud: cloud.http_addr };
    let prometheus = Prometheus::start(&dir.path().join("prometheus"), &Prometheus::deployed_config(&targets, "1s").unwrap()).unwrap();
    let api = Api { http: reqwest::Client::new(), base: prometheus.url() };

    // Every target is up.
    let expected_targets: BTreeSet<SocketAddr> = targets.edges.iter().copied().chain([targets.cloud]).collect();
    eventually(30, async || {
        let data = api.get("/api/v1/targets", &[]).await;
        let up: BTreeMap<String, String> = data["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["labels"]["instance"].as_str().unwrap().to_string(), t["health"].as_str().unwrap().to_string()))
            .collect();
        let want: BTreeMap<String, String> = expected_targets.iter().map(|a| (a.to_string(), "up".to_string())).collect();
        if up == want { Ok(()) } else { Err(format!("targets {up:?}, want {want:?}")) }
    })
    .await;

    // The headline gauges (labelled per alliance and zone) are in Prometheus.
    let utilisation = eventually(30, async || {
        let data = api.get("/api/v1/query", &[("query", r#"edubrain_cloud_headline_utilisation_ratio{level="alliance"}"#)]).await;
        let rows: BTreeMap<String, f64> = data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"]["group"].as_str().unwrap().to_string(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect();
        if rows.len() == 4 { Ok(rows) } else { Err(format!("utilisation per alliance: {rows:?}")) }
    })
    .await;

    // Every rule has been evaluated since then, without error, and names only exposed metrics.
    let names = api.metric_names().await;
    let after = Utc::now();
    let rules = eventually(30, async || {
        let data = api.get("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = data["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect();
        let stale: Vec<&str> = rules
            .iter()
            .filter(|r| chrono::DateTime::parse_from_rfc3339(r["lastEvaluation"].as_str().unwrap()).is_ok_and(|t| t < after))
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        if stale.is_empty() { Ok(rules) } else { Err(format!("not evaluated since the gauges arrived: {stale:?}")) }
    })
    .await;
    assert_eq!(rules.len(), 22, "every rule of deploy/prometheus/alerts.yml is loaded");
    for rule in &rules {
        let (name, query) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
        assert_eq!(rule["health"], "ok", "{name}: {rule}");
        let used = metric_names(query);
        assert!(!used.is_empty(), "{name} names no metric: {query}");
        for metric in &used {
            assert!(names.contains(metric), "rule {name} uses {metric}, which no component exposes: {query}");
        }
    }

    // The plan-target rules compare each alliance with the cloud's configured target: every
    // alliance below 70% utilisation (and only those) has a pending alert; nothing pages.
    let alerts = api.get("/api/v1/alerts", &[]).await;
    let alerts = alerts["alerts"].as_array().unwrap();
    let below: BTreeSet<&str> = utilisation.iter().filter(|(_, v)| **v < 0.70).map(|(g, _)| g.as_str()).collect();
    assert!(!below.is_empty(), "the simulated province uses its equipment about a third of the time: {utilisation:?}");
    let alerted: BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == "UtilisationBelowTarget" && a["labels"]["level"] == "alliance")
        .map(|a| a["labels"]["group"].as_str().unwrap())
        .collect();
    assert_eq!(alerted, below, "{alerts:?}");
    // FreshnessSlow is left out: the whole day arrives at once, and on a loaded CI machine its
    // p99 may pass 5 s; the alert then rightly goes pending.
    let paging: Vec<&Value> =
        alerts.iter().filter(|a| a["labels"]["severity"] == "page" && a["labels"]["alertname"] != "FreshnessSlow").collect();
    assert!(paging.is_empty(), "a healthy pipeline pages nobody: {paging:?}");

    // Every dashboard panel: its query runs, names only exposed metrics, and uses the
    // dashboard's datasource variable; panel ids are unique within a dashboard.
    let names = api.metric_names().await;
    let mut queries = 0;
    for (path, dashboard) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{file}: duplicate panel id in {title}");
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{file}: {title}");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{file}: {title} has no queries"));
            assert!(!targets.is_empty(), "{file}: {title} has no queries");
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                let data = api.get("/api/v1/query", &[("query", &as_sent(expr))]).await;
                assert!(data["result"].is_array(), "{file}: {title}: {expr} gave {data}");
                for metric in metric_names(expr).iter().filter(|m| *m != "ALERTS") {
                    assert!(names.contains(metric), "{file}: panel {title:?} uses {metric}, which no component exposes");
                }
                queries += 1;
            }
        }
        // Template variables list real label values.
        for var in dashboard["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
            let def = var["definition"].as_str().unwrap();
            let inner = def.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')')).unwrap();
            let (metric, label) = inner.split_once(", ").unwrap();
            let values = api.get(&format!("/api/v1/label/{label}/values"), &[("match[]", metric)]).await;
            assert!(!values.as_array().unwrap().is_empty(), "{file}: variable {def} lists nothing");
        }
    }
    assert!(queries > 40, "{queries} panel queries checked");

    shutdown.cancel();
    for e in edges {
        e.wait().await.unwrap();
    }
    cloud.wait().await.unwrap();
}

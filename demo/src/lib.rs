//! The whole pipeline on one machine, for the README's first command: real Mosquitto and Tansu
//! brokers, an edge per city, the cloud, and a simulated province publishing a school week.
//!
//! - [`DemoConfig`]: size of the province and how long the week takes in wall time.
//! - [`run`]: starts everything, shows progress, waits until the warehouse holds every accepted
//!   event, prints a summary and where to look.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, Pacing, ProvinceSpec, PublishProgress, province, simulate};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_cloud::CloudConfig;
use edubrain_cloud::access::Role;
use edubrain_cloud::analytics::DateRange;
use edubrain_edge::EdgeConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub province: ProvinceSpec,
    pub school_days: u32,
    /// Wall-clock seconds the simulated week should take.
    pub wall_seconds: f64,
    pub work_dir: PathBuf,
    pub cloud_http: String,
    /// Tansu's storage engine: durable sqlite or fast memory.
    pub kafka_storage: Storage,
    /// Keep serving the API after the summary until Ctrl-C.
    pub serve: bool,
}

/// A school-week's events of a province whose event count the demo prints in its summary.
pub async fn run(config: DemoConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if config.work_dir.exists() {
        std::fs::remove_dir_all(&config.work_dir).with_context(|| format!("clearing {}", config.work_dir.display()))?;
    }
    let dir = std::fs::canonicalize({
        std::fs::create_dir_all(&config.work_dir)?;
        &config.work_dir
    })?;
    println!("==> starting brokers (Mosquitto, Tansu with {:?} storage) under {}", config.kafka_storage, dir.display());
    let province = province::build(&config.province);
    let mosquitto = Mosquitto::start(&dir.join("mosquitto"), &edubrain_agent::broker_users(&province, DEMO_PROVISIONING_SECRET))?;
    let tansu = Tansu::start(&dir.join("tansu"), config.kafka_storage)?;
    println!("    mqtt://127.0.0.1:{}   kafka 127.0.0.1:{}", mosquitto.port, tansu.port);

    let registry_path = dir.join("registry.csv");
    edubrain_agent::write_registry(&province, &registry_path)?;
    let cities: Vec<String> = {
        let mut c: Vec<String> = province.schools.iter().map(|s| s.city.clone()).collect();
        c.dedup();
        c
    };

    let mut cloud_config = CloudConfig::on_loopback(dir.join("warehouse"), Some(registry_path.clone()), &tansu.bootstrap());
    cloud_config.http_listen = config.cloud_http.clone();
    // BI tools connect over Arrow Flight SQL; a free port, printed below.
    cloud_config.flight_sql.listen = Some("127.0.0.1:0".into());
    // API tokens for the demo's callers: the province, and the operator of the first city
    // (who sees only that city's schools). Kept in files only the user can read.
    let mut token_files: Vec<(std::path::PathBuf, String)> = Vec::new();
    for (name, role) in [("province", Role::Province), ("city", Role::City(cities[0].clone()))] {
        let token = edubrain_cloud::access::new_token();
        cloud_config.access.add(&format!("demo-{name}"), role, &token);
        let path = dir.join(format!("{name}.token"));
        std::fs::write(&path, &token).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        token_files.push((path, token));
    }
    let mut edges = Vec::new();
    for city in &cities {
        let mut c = EdgeConfig::on_loopback(city, mosquitto.port, &tansu.bootstrap(), &dir.join(format!("edge-{city}")));
        c.login_with(DEMO_PROVISIONING_SECRET);
        let edge = edubrain_edge::start(c, shutdown.clone()).await.with_context(|| format!("starting the edge of {city}"))?;
        println!("==> edge {city}: metrics http://{}/metrics", edge.http_addr);
        edges.push(edge);
    }
    let cloud = edubrain_cloud::start(cloud_config.clone(), shutdown.clone()).await.context("starting the cloud")?;
    // Terminals publish into brand-new edge sessions: nothing may be sent before the broker
    // acknowledged each edge's subscription, or it would have no subscriber to be queued for.
    let subscribed_by = tokio::time::Instant::now() + Duration::from_secs(30);
    while edges.iter().any(|e| e.metrics.mqtt_subscribed.get() != 1) {
        if tokio::time::Instant::now() > subscribed_by {
            bail!("an edge did not subscribe to MQTT within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("==> cloud: API http://{}", cloud.http_addr);
    // Prometheus with the deployed config and alert rules, scraping this pipeline.
    let scrape = edubrain_brokers::ScrapeTargets { edges: edges.iter().map(|e| e.http_addr).collect(), cloud: cloud.http_addr };
    let prometheus =
        edubrain_brokers::Prometheus::start(&dir.join("prometheus"), &edubrain_brokers::Prometheus::deployed_config(&scrape, "5s")?)?;
    println!("==> prometheus: {} (alerts: {}/alerts)", prometheus.url(), prometheus.url());

    let spec =
        edubrain_agent::SimulatorConfig { school_days: config.school_days, ..Default::default() }.simulation_spec(Utc::now().date_naive());
    let events = simulate::simulate(&province, &spec);
    let (Some(first), Some(last)) = (events.first(), events.last()) else { bail!("the simulation produced no events") };
    let span = (last.header.event_time - first.header.event_time).num_seconds().max(1) as f64;
    let total = events.len() as u64;
    println!(
        "==> simulating {} schools, {} classrooms, {} school days from {} ({} events), at {:.0}x real time",
        province.schools.len(),
        province.classrooms().count(),
        spec.school_days,
        spec.first_day,
        total,
        span / config.wall_seconds
    );
    let progress = Arc::new(PublishProgress::default());
    let pacing = Pacing { sim_start: first.header.event_time, wall_start: tokio::time::Instant::now(), speed: span / config.wall_seconds };
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    // A misbehaving classroom app: its bad events must reach the dead-letter topic, not vanish.
    let bad_room = &province.schools[0].classrooms[0];
    let bad_topic = edubrain_schemas::topics::TerminalTopic {
        city: bad_room.city.clone(),
        school: bad_room.school.clone(),
        classroom: bad_room.id.clone(),
        terminal: bad_room.terminal.clone(),
    };
    edubrain_agent::publisher::publish_raw(
        &target,
        &edubrain_schemas::identity::terminal_username(&bad_topic),
        &bad_topic.events_topic(),
        vec![b"{\"not\": \"an event\"}".to_vec(), b"\xff\xfe garbage".to_vec()],
    )
    .await?;
    let publisher = {
        let (target, progress, shutdown) = (target.clone(), progress.clone(), shutdown.clone());
        let outbox = dir.join("outbox");
        tokio::spawn(async move {
            edubrain_agent::publish_all_durable(&target, events, pacing, &outbox, &Default::default(), progress, shutdown).await
        })
    };

    let accepted = |edges: &[edubrain_edge::RunningEdge]| -> (u64, u64, u64) {
        let mut a = (0, 0, 0);
        for e in edges {
            let m = &e.metrics;
            a.0 += edubrain_edge::metrics::total(&m.events_accepted);
            a.1 += edubrain_edge::metrics::total(&m.events_rejected);
            a.2 += m.events_duplicate.get();
        }
        a
    };
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    let publish_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(config.wall_seconds * 2.0 + 120.0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tick.tick() => {}
        }
        let (acc, rej, dup) = accepted(&edges);
        let written = cloud.progress.borrow().events_written;
        println!(
            "    published {:>8}/{total}  acked {:>8}  edge accepted {:>8} rejected {rej} duplicate {dup}  warehouse {:>8}  lag {}",
            progress.published(),
            progress.acked(),
            acc,
            written,
            cloud.progress.borrow().lag
        );
        if publisher.is_finished() && written >= acc && acc >= total {
            break;
        }
        if tokio::time::Instant::now() > publish_deadline {
            bail!("the pipeline did not catch up in time: {written} of {total} events in the warehouse");
        }
    }
    let summary = publisher.await??;
    let (acc, rej, dup) = accepted(&edges);
    println!(
        "==> done in {:.0}s: {} terminals created {} events; edges accepted {acc}, dead-lettered {rej}, dropped {dup} duplicates; warehouse holds {}",
        started.elapsed().as_secs_f64(),
        summary.terminals,
        summary.created,
        cloud.progress.borrow().events_written
    );
    print_summary(&cloud, &cloud_config, &province).await?;
    println!("\nWhere to look:");
    let api = format!("http://{}", cloud.http_addr);
    println!("  {api}/#token={}   # the web dashboard, as the province (open in a browser)", token_files[0].1);
    let auth = format!("-H \"Authorization: Bearer $(cat {})\"", token_files[0].0.display());
    let city_auth = format!("-H \"Authorization: Bearer $(cat {})\"", token_files[1].0.display());
    println!("  curl -s {auth} {api}/api/v1/summary");
    println!("  curl -s {auth} '{api}/api/v1/utilisation?by=school&format=csv'");
    println!("  curl -s {auth} '{api}/api/v1/gaps?scope=alliance'");
    println!("  curl -s {auth} '{api}/api/v1/zones'");
    println!(
        "  curl -s {auth} '{api}/api/v1/recommendations?school={}'",
        province.schools.last().map(|s| s.id.clone()).unwrap_or_default()
    );
    println!(
        "  curl -s {city_auth} {api}/api/v1/sql -d '{{\"sql\": \"SELECT school, COUNT(*) AS events FROM events GROUP BY school\"}}' -H 'content-type: application/json'   # a city operator: its own schools only"
    );
    println!("  curl -s {api}/api/v1/openapi.json   # the API description");
    if let Some(flight) = cloud.flight_sql_addr {
        println!("  grpc://{flight}   # Arrow Flight SQL for BI tools (ADBC/JDBC), header authorization: Bearer <the province token>");
    }
    println!(
        "  curl -s {api}/metrics        # cloud metrics; edges: {}",
        edges.iter().map(|e| format!("http://{}/metrics", e.http_addr)).collect::<Vec<_>>().join(" ")
    );
    println!("  {}/alerts   # Prometheus with deploy/prometheus/alerts.yml; dashboards for Grafana in deploy/grafana/", prometheus.url());
    println!("  cargo run -p edubrain-cloud -- gaps --registry {}", registry_path.display());
    println!("  Parquet files: {}/warehouse/events/date=*/city=*/", dir.display());
    if config.serve {
        println!("\nServing until Ctrl-C.");
        shutdown.cancelled().await;
    } else {
        shutdown.cancel();
    }
    for e in edges {
        e.wait().await?;
    }
    cloud.wait().await?;
    Ok(())
}

async fn print_summary(
    cloud: &edubrain_cloud::RunningCloud,
    config: &CloudConfig,
    province: &edubrain_agent::Province,
) -> anyhow::Result<()> {
    use edubrain_cloud::analytics::gaps::{GapReport, Scope};
    use edubrain_cloud::analytics::utilisation::{GroupBy, utilisation};
    let t = &config.thresholds;
    println!(
        "\nUtilisation by alliance (target >= {:.0}%; idle target <= {:.0}%)",
        100.0 * t.utilisation_target,
        100.0 * t.idle_rate_target
    );
    println!("  {:<10} {:>10} {:>10} {:>9} {:>14} {:>12}", "alliance", "utilised", "idle", "no-show", "interruptions", "sharing");
    let pct = |r: &edubrain_cloud::analytics::utilisation::Rate| r.value.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    for row in utilisation(&cloud.warehouse, GroupBy::Alliance, DateRange::default(), t).await? {
        println!(
            "  {:<10} {:>10} {:>10} {:>9} {:>14} {:>12}",
            row.group,
            pct(&row.utilisation),
            pct(&row.idle_rate),
            pct(&row.booking_no_show_rate),
            pct(&row.live_interruption_rate),
            pct(&row.resource_sharing_rate)
        );
    }
    let report = GapReport::build(cloud.warehouse.schools(), &[Scope::County, Scope::Alliance, Scope::Zone], t);
    println!("\nLargest gaps (enrolment-weighted CV against its limit)");
    for g in report.largest_gaps(6) {
        println!(
            "  {:<8} {:<10} {:<8} {:<32} cv {:.3} (limit {:.2}) {}",
            g.scope.name(),
            g.group,
            g.level.as_str(),
            g.indicator,
            g.cv,
            g.threshold,
            if g.meets { "ok" } else { "OVER" }
        );
    }
    for g in report.senior_title.iter().filter(|g| g.scope == Scope::Alliance) {
        println!(
            "  senior-title share {}: urban {:.0}% vs rural {:.0}% = {:.1} pp (limit {:.0})",
            g.group,
            100.0 * g.urban_share,
            100.0 * g.rural_share,
            g.gap_pp,
            g.threshold_pp
        );
    }
    println!("\nEquity (province-wide Theil T; share of it lying between urban, town and rural schools)");
    let mut equity: Vec<_> = report.equity.iter().collect();
    equity.sort_by(|a, b| b.by_locale.between_share.total_cmp(&a.by_locale.between_share));
    print!("{}", edubrain_cloud::analytics::gaps::equity_table_text(equity.into_iter().take(4)));
    if let Some(weak) = province.schools.iter().filter(|s| !s.strong).min_by(|a, b| a.vigour.total_cmp(&b.vigour)) {
        let inputs = edubrain_cloud::analytics::recommend::load_inputs(&cloud.warehouse, DateRange::default()).await?;
        println!("\nTop recommendations for {} ({}, {:?})", weak.id, weak.zone, weak.locale);
        for r in edubrain_cloud::analytics::recommend::recommend(&inputs, &weak.id, &config.recommendation, 3) {
            println!("  {:.3} {} ({} {}, from {}): {}", r.score, r.resource_id, r.kind, r.subject, r.owner_school, r.why);
        }
    }
    let zones = edubrain_cloud::analytics::zones::load(&cloud.warehouse, DateRange::default(), &config.zone_targets).await?;
    println!(
        "\nZone monitoring: {} alerts over {} zone-months (one week of data: monthly and semester targets are far off)",
        zones.alerts.len(),
        zones.months.len()
    );
    for a in zones
        .alerts
        .iter()
        .filter(|a| a.rule == "below_all_zone_average")
        .chain(zones.alerts.iter().filter(|a| a.rule != "below_all_zone_average"))
        .take(4)
    {
        println!("  {}", a.message);
    }
    if let Some(county) = province.schools.first().map(|s| s.county.clone()) {
        match edubrain_cloud::analytics::partition::suggest(cloud.warehouse.schools(), &county, 2, config.zone_targets.partition_max_spread)
        {
            Ok(p) => println!(
                "\nZone partition for county {county} into 2 zones: largest spread of core indicators {:.1}% (draft {:.1}%), target {:.0}%: {}",
                100.0 * p.max_spread,
                100.0 * p.initial_max_spread,
                100.0 * p.target_spread,
                if p.meets { "met" } else { "not met" }
            ),
            Err(e) => println!("\nZone partition for county {county}: {e}"),
        }
    }
    Ok(())
}

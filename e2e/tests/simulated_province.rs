//! A simulated province (both cities, one school day) through real Mosquitto and Tansu: every
//! event the simulator created is in the warehouse exactly once, and the registry it wrote is
//! the one the cloud loads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use edubrain_agent::{
    DEMO_PROVISIONING_SECRET, MqttTarget, ProvinceSpec, PublishProgress, SimulatorConfig, broker_users, province, simulate,
};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_cloud::CloudConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_event_arrives_once_across_two_cities() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 11, cities: 2, alliances_per_city: 1, schools_per_alliance: 4, classrooms_per_school: 3 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let registry = dir.path().join("registry.csv");
    let config = SimulatorConfig {
        mqtt: MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET),
        province: spec.clone(),
        first_day: NaiveDate::from_ymd_opt(2026, 11, 16),
        school_days: 1,
        heartbeat_minutes: 30,
        speed: 0.0,
        registry_out: Some(registry.clone()),
        outbox_dir: Some(dir.path().join("outbox")),
        outbox: Default::default(),
    };
    edubrain_agent::write_registry(&p, &registry).unwrap();

    let edges =
        edubrain_e2e::start_edges(&["c01", "c02"], mosquitto.port, &tansu.bootstrap(), dir.path(), DEMO_PROVISIONING_SECRET, &shutdown)
            .await;
    let mut cloud_config = CloudConfig::on_loopback(dir.path().join("warehouse"), Some(registry.clone()), &tansu.bootstrap());
    cloud_config.ingest.flush_interval_ms = 200;
    let cloud = edubrain_cloud::start(cloud_config, shutdown.clone()).await.unwrap();

    let summary = edubrain_agent::run(config.clone(), Arc::new(PublishProgress::default()), shutdown.clone()).await.unwrap();
    assert_eq!(summary.terminals, 24);
    assert_eq!(summary.acked, summary.created);

    let mut rx = cloud.progress.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rx.borrow_and_update().events_written < summary.created {
        assert!(tokio::time::Instant::now() < deadline, "warehouse has {} of {}", rx.borrow().events_written, summary.created);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The warehouse holds exactly the simulated events: same ids, each once.
    let expected: BTreeSet<String> = simulate::simulate(&p, &config.simulation_spec(NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()))
        .iter()
        .map(|e| e.header.event_id.to_string())
        .collect();
    assert_eq!(expected.len() as u64, summary.created);
    let rows = cloud.warehouse.query_json("SELECT event_id, COUNT(*) AS n FROM events GROUP BY event_id").await.unwrap();
    assert!(rows.iter().all(|r| r["n"] == 1));
    let stored: BTreeSet<String> = rows.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored, expected);
    // Each city's edge took exactly its own city's events.
    for (edge, city) in edges.iter().zip(["c01", "c02"]) {
        let rows = cloud.warehouse.query_json(&format!("SELECT COUNT(*) AS n FROM events WHERE city = '{city}'")).await.unwrap();
        assert_eq!(rows[0]["n"].as_u64().unwrap(), edubrain_edge::metrics::total(&edge.metrics.events_accepted), "{city}");
    }
    // The registry the simulator wrote is the one the cloud serves.
    assert_eq!(cloud.warehouse.schools(), p.registry.as_slice());

    shutdown.cancel();
    for e in edges {
        e.wait().await.unwrap();
    }
    cloud.wait().await.unwrap();
}

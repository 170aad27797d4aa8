//! `edubrain-edge status` against a running edge on real brokers: the operator sees the
//! session up, the terminals it heard, its WAL and what it accepted and refused; an address
//! that is not an edge gets an error naming it.

use std::process::Command;
use std::time::Duration;

use edubrain_agent::{DEMO_PROVISIONING_SECRET, MqttTarget, ProvinceSpec, broker_users, province};
use edubrain_brokers::{Mosquitto, Storage, Tansu};
use edubrain_edge::EdgeConfig;
use edubrain_schemas::topics::TerminalTopic;
use tokio_util::sync::CancellationToken;

fn status(url: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edubrain-edge")).args(["status", "--url", url]).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_running_edge_as_its_operator_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ProvinceSpec { seed: 3, cities: 1, alliances_per_city: 1, schools_per_alliance: 1, classrooms_per_school: 1 };
    let p = province::build(&spec);
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), &broker_users(&p, DEMO_PROVISIONING_SECRET)).unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let shutdown = CancellationToken::new();
    let mut config = EdgeConfig::on_loopback("c01", mosquitto.port, &tansu.bootstrap(), &dir.path().join("wal"));
    config.login_with(DEMO_PROVISIONING_SECRET);
    let edge = edubrain_edge::start(config, shutdown.clone()).await.unwrap();
    while edge.metrics.mqtt_subscribed.get() != 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One terminal sends a message the edge refuses.
    let room = &p.schools[0].classrooms[0];
    let topic =
        TerminalTopic { city: room.city.clone(), school: room.school.clone(), classroom: room.id.clone(), terminal: room.terminal.clone() };
    let target = MqttTarget::new("127.0.0.1", mosquitto.port).with_secret(DEMO_PROVISIONING_SECRET);
    edubrain_agent::publisher::publish_raw(
        &target,
        &edubrain_schemas::identity::terminal_username(&topic),
        &topic.events_topic(),
        vec![b"{}".to_vec()],
    )
    .await
    .unwrap();
    // The terminal counts as active from the edge's next tick (200 ms).
    while edubrain_edge::metrics::total(&edge.metrics.events_rejected) != 1 || edge.metrics.terminals_active.get() != 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("http://{}", edge.http_addr);
    let (ok, out, err) = tokio::task::spawn_blocking(move || status(&url)).await.unwrap();
    assert!(ok, "{err}");
    println!("{out}");
    assert!(out.starts_with("edge of c01\n"), "{out}");
    for line in [
        "mqtt        connected yes, subscribed yes, 0 reconnects",
        "terminals   1 active",
        "received    1 messages",
        "accepted    0 (none)",
    ] {
        assert!(out.contains(line), "{line:?} not in\n{out}");
    }
    assert!(out.contains("rejected    1 ("), "{out}");
    assert!(out.contains("records not yet confirmed by Kafka"), "{out}");

    // Not an edge: Mosquitto's port does not speak HTTP.
    let url = format!("http://127.0.0.1:{}", mosquitto.port);
    let (ok, _, err) = tokio::task::spawn_blocking(move || status(&url)).await.unwrap();
    assert!(!ok && err.contains("/metrics"), "{err}");

    shutdown.cancel();
    edge.wait().await.unwrap();
}

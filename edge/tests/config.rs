//! The example configs in deploy/ load, so they never rot; bad configs fail by name.

use std::path::Path;

use edubrain_edge::EdgeConfig;

fn deploy(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

#[test]
fn deploy_edge_configs_load() {
    for (file, city) in [("edge-c01.toml", "c01"), ("edge-c02.toml", "c02")] {
        let c = EdgeConfig::load(&deploy(file)).unwrap();
        assert_eq!(c.city, city);
        assert_eq!(c.client_id(), format!("edubrain-edge-{city}"));
        // The files spell out the defaults, so what they say is what an edge does without them.
        let defaults = EdgeConfig::for_city(city);
        assert_eq!((&c.rate_limit, &c.rollup), (&defaults.rate_limit, &defaults.rollup));
        assert_eq!(c.refusal_audit, defaults.refusal_audit);
        assert_eq!(c.kafka.rollups_topic, defaults.kafka.rollups_topic);
    }
}

#[test]
fn env_overrides_the_file() {
    let mut c = EdgeConfig::for_city("c01");
    c.apply_env(|k| match k {
        "EDUBRAIN_EDGE_MQTT_PORT" => Some("1999".into()),
        "EDUBRAIN_EDGE_KAFKA_BROKERS" => Some("k:1".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((c.mqtt.port, c.kafka.brokers.as_str()), (1999, "k:1"));
    let err = c.apply_env(|k| (k == "EDUBRAIN_EDGE_MQTT_PORT").then(|| "x".into())).unwrap_err();
    assert!(err.to_string().contains("EDUBRAIN_EDGE_MQTT_PORT"), "{err}");
}

#[test]
fn unknown_keys_and_unsafe_overrides_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.toml");
    std::fs::write(&p, "city = \"c01\"\nmqtt_port = 1\n").unwrap();
    assert!(EdgeConfig::load(&p).unwrap_err().to_string().contains("mqtt_port"));
    std::fs::write(&p, "city = \"c01\"\n[kafka.producer]\nacks = \"1\"\n").unwrap();
    assert!(EdgeConfig::load(&p).unwrap_err().to_string().contains("acks"));
}

#[test]
fn a_rate_limit_that_admits_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.toml");
    std::fs::write(&p, "city = \"c01\"\n[wal]\ndir = \"/tmp/w\"\n[rate_limit]\nevents_per_second = 0.0\n").unwrap();
    let err = EdgeConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("rate_limit.events_per_second"), "{err}");
}

#[test]
fn a_refusal_audit_window_of_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.toml");
    std::fs::write(&p, "city = \"c01\"\n[wal]\ndir = \"/tmp/w\"\n[refusal_audit]\nwindow_secs = 0\n").unwrap();
    let err = EdgeConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("refusal_audit.window_secs = 0"), "{err}");
    std::fs::write(&p, "city = \"c01\"\n[wal]\ndir = \"/tmp/w\"\n[refusal_audit]\nper_client = 0\n").unwrap();
    assert_eq!(EdgeConfig::load(&p).unwrap().refusal_audit.per_client, 0, "0: every refusal only in summaries");
}

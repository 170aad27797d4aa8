//! deploy/agent.toml loads and describes the demo province.

use std::path::Path;

#[test]
fn deploy_agent_config_loads() {
    let c = edubrain_agent::load_config(Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml"))).unwrap();
    assert_eq!(c.province, edubrain_agent::ProvinceSpec::default());
    assert_eq!(c.school_days, 5);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.toml");
    std::fs::write(&p, "[province]\nschools = 3\n").unwrap();
    let err = edubrain_agent::load_config(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("schools"), "{err}");
}

#[test]
fn deploy_terminal_config_loads() {
    let c = edubrain_agent::terminal::TerminalConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/terminal.toml")).unwrap();
    assert_eq!(c.identity.topic().events_topic(), "edubrain/v1/c01/c01-s001/c01-s001-r01/t-c01-s001-r01/events");
    assert_eq!(c.listen, "127.0.0.1:8731");
    assert_eq!(c.outbox, edubrain_agent::outbox::OutboxConfig::default());
}

//! What the edge's benchmarks share: process usage from /proc, the edge's /metrics over plain
//! HTTP, and clearing a persistent MQTT session.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use edubrain_brokers::KillOnDrop;

/// CPU seconds (user + system) and peak RSS (bytes) of a process, from /proc.
pub fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15 (1-based) → indices 11, 12.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm_kb * 1024)
}

pub fn metric_sum(metrics: &str, prefix: &str, containing: Option<&str>) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && containing.is_none_or(|c| l.contains(c)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Connects as `user` (its client id, under `use_username_as_clientid`) with a clean session
/// and leaves: the broker discards the session. It subscribes (`-E` exits on the SUBACK) to a
/// classroom that does not exist, within what the ACL lets an edge read.
pub fn drop_session(port: u16, user: &str, password: &str) {
    let status = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", user, "-P", password, "-t", "edubrain/v1/c01/none/none/none/events", "-E"])
        .status()
        .expect("mosquitto_sub");
    assert!(status.success(), "could not clear the session of {user}");
}

fn http_get_ok(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

/// Starts the edge binary with `config` on these brokers, its /metrics on `http`, and waits
/// until /healthz answers 200 (connected and subscribed).
pub fn spawn_edge(config: &Path, mqtt_port: u16, kafka: &str, http: &str, rust_log: &str) -> KillOnDrop {
    let edge = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_edubrain-edge"))
            .arg("--config")
            .arg(config)
            .env("EDUBRAIN_EDGE_MQTT_PORT", mqtt_port.to_string())
            .env("EDUBRAIN_EDGE_KAFKA_BROKERS", kafka)
            .env("EDUBRAIN_EDGE_HTTP_LISTEN", http)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .spawn()
            .expect("the edge binary"),
    );
    while !(http_get_ok(http) && http_get(http, "/healthz").starts_with("HTTP/1.1 200")) {
        std::thread::sleep(Duration::from_millis(50));
    }
    edge
}

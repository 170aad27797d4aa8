//! Process plumbing shared by the edubrain binaries (`edubrain-agent`, `-edge`, `-cloud`,
//! `-demo`), so each `main` stays a few lines:
//!
//! - [`init_logging`]: `tracing` to stderr, filtered by `RUST_LOG` (default given per binary).
//! - [`shutdown_on_signals`]: a token cancelled on SIGINT (Ctrl-C) or SIGTERM (systemd,
//!   Kubernetes), so components drain in-flight work instead of dying mid-write.
//! - [`mqtt_tls`]: MQTT over TLS with client certificates (the edge and the terminal agent).
//! - [`kafka_security`]: Kafka over TLS and SASL/SCRAM (the edge and the cloud).
//! - [`progress`]: the progress bar of an operator's backfill or replay.

pub mod kafka_security;
pub mod mqtt_tls;
pub mod progress;

use tokio_util::sync::CancellationToken;

/// Logs to stderr; `RUST_LOG` overrides `default_filter` (e.g. `"info"`).
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: journald, log files and tests read plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A token that is cancelled when the process receives SIGINT or SIGTERM. Must be called
/// inside a tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutting down");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

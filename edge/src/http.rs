//! `/metrics` (Prometheus text format) and `/healthz` (200 while connected to MQTT and
//! subscribed, else 503).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;

pub async fn serve(listener: tokio::net::TcpListener, metrics: EdgeMetrics, shutdown: CancellationToken) {
    let app = Router::new().route("/metrics", get(render)).route("/healthz", get(health)).with_state(metrics);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "edge HTTP server failed");
    }
}

async fn render(State(m): State<EdgeMetrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn health(State(m): State<EdgeMetrics>) -> impl IntoResponse {
    let connected = m.mqtt_connected.get() == 1;
    let subscribed = m.mqtt_subscribed.get() == 1;
    let body = serde_json::json!({ "mqtt_connected": connected, "mqtt_subscribed": subscribed, "wal_unconfirmed_records": m.wal_unconfirmed_records.get(), "wal_full": m.wal_full.get() });
    (if connected && subscribed { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(body))
}

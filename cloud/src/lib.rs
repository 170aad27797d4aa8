//! edubrain cloud: the provincial warehouse and its analytics.
//!
//! - [`config`]: TOML + env configuration, and the plans' targets as named thresholds.
//! - [`batch`]: events to Arrow record batches (pure), partitioned by local date and city.
//! - [`sink`]: atomic, fsynced Parquet files.
//! - [`ingest`]: Kafka consumer; commits offsets only after Parquet is durable; quarantine.
//! - [`maintenance`]: small-file compaction and retention, swapped in atomically.
//! - [`backfill`]: a time range read again from Kafka or exported files, adding what is missing.
//! - [`registry`]: the school registry from CSV or Parquet; the `schools` table.
//! - [`warehouse`]: the DataFusion session over `events`, `presence`, `schools`, `school_dim`.
//! - [`analytics`]: utilisation, gap analysis, recommendations, zone monitoring.
//! - [`access`]: bearer-token principals and roles (province, city, alliance).
//! - [`audit`]: the audit log of API requests, SQL queries and refusals (JSON lines, fsynced).
//! - [`flight`]: Arrow Flight SQL over the same scoped sessions, for BI tools.
//! - [`api`]: HTTP API (JSON and CSV, `cloud/openapi.json`), SQL endpoint, `/metrics`, `/healthz`.
//! - [`headline`]: headline indicators per alliance and zone as Prometheus gauges.
//! - [`start`] / [`run`]: wire it together.

pub mod access;
pub mod analytics;
pub mod api;
pub mod audit;
pub mod backfill;
pub mod batch;
pub mod config;
pub mod flight;
pub mod headline;
pub mod ingest;
pub mod maintenance;
pub mod metrics;
pub mod registry;
pub mod sink;
pub mod warehouse;

use std::net::SocketAddr;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::CloudConfig;
pub use ingest::IngestProgress;
pub use metrics::CloudMetrics;
pub use warehouse::Warehouse;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("config: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parquet {path}: {message}")]
    Parquet { path: String, message: String },
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("query: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("query: {0}")]
    Query(String),
    #[error(transparent)]
    Schema(#[from] edubrain_schemas::SchemaError),
}

impl CloudError {
    /// Maps an I/O error on `path` to [`CloudError::Io`] naming it: `.map_err(CloudError::io(path))`.
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> CloudError + '_ {
        move |e| CloudError::Io { path: path.display().to_string(), source: e }
    }
}

/// A started cloud.
pub struct RunningCloud {
    pub http_addr: SocketAddr,
    /// Where Flight SQL listens, when `[flight_sql] listen` is set.
    pub flight_sql_addr: Option<SocketAddr>,
    pub warehouse: Warehouse,
    pub metrics: CloudMetrics,
    pub progress: watch::Receiver<IngestProgress>,
    ingest: tokio::sync::oneshot::Receiver<Result<(), CloudError>>,
    http: tokio::task::JoinHandle<()>,
    flight: Option<tokio::task::JoinHandle<()>>,
    audit_writer: std::thread::JoinHandle<()>,
}

impl RunningCloud {
    /// Waits for ingest to stop (after `shutdown`), flushing what it holds, and for the API to
    /// close and the audit log to be written out.
    pub async fn wait(self) -> Result<(), CloudError> {
        let ingest = self.ingest.await.map_err(|_| CloudError::Query("ingest thread panicked".into()))?;
        // The server holds the audit log's senders; once it has stopped, the writer drains.
        let _ = self.http.await;
        if let Some(flight) = self.flight {
            let _ = flight.await;
        }
        let writer = self.audit_writer;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|_| CloudError::Query("audit writer join failed".into()))?
            .map_err(|_| CloudError::Query("audit writer panicked".into()))?;
        ingest
    }
}

/// Loads the registry, opens the warehouse, binds the API and starts ingest.
pub async fn start(config: CloudConfig, shutdown: CancellationToken) -> Result<RunningCloud, CloudError> {
    let registry = registry::Registry::load(config.registry.as_deref(), &config.registries)?;
    let access = access::AccessControl::new(&config.access)?;
    if access.is_empty() {
        tracing::warn!("no [[access.principals]] configured: every /api/v1 data request will be refused");
    }
    let warehouse = Warehouse::open_with_limits(&config.warehouse_dir, registry, &config.query).await?;
    let metrics = CloudMetrics::new();
    let (tx, rx) = watch::channel(IngestProgress::default());
    let audit_dir = config.audit.dir.clone().unwrap_or_else(|| config.warehouse_dir.join("audit"));
    let (audit, audit_writer) = audit::AuditLog::start_retaining(&audit_dir, config.audit.retention_days, metrics.clone())?;
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .map_err(|e| CloudError::Io { path: config.http_listen.clone(), source: e })?;
    let http_addr = listener.local_addr().map_err(|e| CloudError::Io { path: config.http_listen.clone(), source: e })?;
    let state = api::AppState {
        warehouse: warehouse.clone(),
        thresholds: config.thresholds.clone(),
        weights: config.recommendation.clone(),
        zone_targets: config.zone_targets.clone(),
        limits: config.query.clone(),
        access: std::sync::Arc::new(access),
        metrics: metrics.clone(),
        progress: rx.clone(),
        scoped: Default::default(),
        audit,
    };
    let (flight_sql_addr, flight) = match &config.flight_sql.listen {
        None => (None, None),
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| CloudError::Io { path: listen.clone(), source: e })?;
            let addr = listener.local_addr().map_err(|e| CloudError::Io { path: listen.clone(), source: e })?;
            let (state, limits, shutdown) = (state.clone(), config.flight_sql.clone(), shutdown.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = flight::serve(state, limits, listener, shutdown).await {
                    tracing::error!(error = %e, "cloud Flight SQL server failed");
                }
            });
            tracing::info!(%addr, "Flight SQL listening");
            (Some(addr), Some(task))
        }
    };
    tokio::spawn(headline::run(
        warehouse.clone(),
        config.thresholds.clone(),
        config.zone_targets.clone(),
        config.headline.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        // With the peer's address, which the audit log records.
        let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await {
            tracing::error!(error = %e, "cloud HTTP server failed");
        }
    });
    tracing::info!(%http_addr, warehouse = %config.warehouse_dir.display(), registry_rows = warehouse.schools().len(), "cloud started");
    // Ingest makes blocking librdkafka calls (synchronous commits, watermarks) and writes files;
    // it gets its own thread and runtime so it can never starve the API or anything else
    // sharing the caller's runtime.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let ingest_metrics = metrics.clone();
    let leases = warehouse.stream_leases().clone();
    std::thread::Builder::new()
        .name("edubrain-ingest".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CloudError::Io { path: "ingest runtime".into(), source: e })
                .and_then(|rt| {
                    rt.block_on(ingest::run(config.clone(), config.warehouse_dir.clone(), ingest_metrics, leases, tx, shutdown))
                });
            let _ = done_tx.send(result);
        })
        .map_err(|e| CloudError::Io { path: "ingest thread".into(), source: e })?;
    Ok(RunningCloud { http_addr, flight_sql_addr, flight, warehouse, metrics, progress: rx, ingest: done_rx, http, audit_writer })
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: CloudConfig, shutdown: CancellationToken) -> Result<(), CloudError> {
    start(config, shutdown).await?.wait().await
}

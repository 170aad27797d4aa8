//! edubrain cloud: the provincial warehouse and its analytics.
//!
//! - [`config`]: TOML + env configuration, and the plans' targets as named thresholds.
//! - [`batch`]: events to Arrow record batches (pure), partitioned by local date and city.
//! - [`sink`]: atomic, fsynced Parquet files.
//! - [`ingest`]: Kafka consumer; commits offsets only after Parquet is durable; quarantine.
//! - [`registry`]: the school registry from CSV or Parquet; the `schools` table.
//! - [`warehouse`]: the DataFusion session over `events`, `schools`, `school_dim`.
//! - [`analytics`]: utilisation, gap analysis, recommendations.
//! - [`api`]: HTTP JSON API, `/metrics`, `/healthz`.
//! - [`start`] / [`run`]: wire it together.

pub mod analytics;
pub mod api;
pub mod batch;
pub mod config;
pub mod ingest;
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

/// A started cloud.
pub struct RunningCloud {
    pub http_addr: SocketAddr,
    pub warehouse: Warehouse,
    pub metrics: CloudMetrics,
    pub progress: watch::Receiver<IngestProgress>,
    ingest: tokio::sync::oneshot::Receiver<Result<(), CloudError>>,
}

impl RunningCloud {
    /// Waits for ingest to stop (after `shutdown`), flushing what it holds.
    pub async fn wait(self) -> Result<(), CloudError> {
        self.ingest.await.map_err(|_| CloudError::Query("ingest thread panicked".into()))?
    }
}

/// Loads the registry, opens the warehouse, binds the API and starts ingest.
pub async fn start(config: CloudConfig, shutdown: CancellationToken) -> Result<RunningCloud, CloudError> {
    let schools = match &config.registry {
        Some(p) => registry::load(p)?,
        None => Vec::new(),
    };
    let warehouse = Warehouse::open(&config.warehouse_dir, schools).await?;
    let metrics = CloudMetrics::new();
    let (tx, rx) = watch::channel(IngestProgress::default());
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .map_err(|e| CloudError::Io { path: config.http_listen.clone(), source: e })?;
    let http_addr = listener.local_addr().map_err(|e| CloudError::Io { path: config.http_listen.clone(), source: e })?;
    let state = api::AppState {
        warehouse: warehouse.clone(),
        thresholds: config.thresholds.clone(),
        weights: config.recommendation.clone(),
        metrics: metrics.clone(),
        progress: rx.clone(),
    };
    let http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, api::router(state)).with_graceful_shutdown(http_shutdown.cancelled_owned()).await {
            tracing::error!(error = %e, "cloud HTTP server failed");
        }
    });
    tracing::info!(%http_addr, warehouse = %config.warehouse_dir.display(), registry_rows = warehouse.schools().len(), "cloud started");
    // Ingest makes blocking librdkafka calls (synchronous commits, watermarks) and writes files;
    // it gets its own thread and runtime so it can never starve the API or anything else
    // sharing the caller's runtime.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let ingest_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("edubrain-ingest".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CloudError::Io { path: "ingest runtime".into(), source: e })
                .and_then(|rt| rt.block_on(ingest::run(config.clone(), config.warehouse_dir.clone(), ingest_metrics, tx, shutdown)));
            let _ = done_tx.send(result);
        })
        .map_err(|e| CloudError::Io { path: "ingest thread".into(), source: e })?;
    Ok(RunningCloud { http_addr, warehouse, metrics, progress: rx, ingest: done_rx })
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: CloudConfig, shutdown: CancellationToken) -> Result<(), CloudError> {
    start(config, shutdown).await?.wait().await
}

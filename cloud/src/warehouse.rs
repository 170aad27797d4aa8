//! The queryable warehouse: a DataFusion session with
//! - `events`: the hive-partitioned Parquet files (`date`, `city` partition columns), re-listed
//!   on every query so new files are visible as soon as they are renamed into place;
//! - `schools`: the registry, one row per school and level;
//! - `school_dim`: one row per school (a through-school's levels folded together).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;
use edubrain_schemas::School;
use edubrain_schemas::warehouse::event_file_schema;

use crate::CloudError;

#[derive(Clone)]
pub struct Warehouse {
    ctx: SessionContext,
    root: PathBuf,
    schools: Arc<Vec<School>>,
}

impl Warehouse {
    /// Opens (creating if needed) the warehouse at `root` with the given registry.
    pub async fn open(root: &Path, schools: Vec<School>) -> Result<Self, CloudError> {
        let events_dir = root.join("events");
        std::fs::create_dir_all(&events_dir).map_err(|e| CloudError::Io { path: events_dir.display().to_string(), source: e })?;
        let events_dir =
            std::fs::canonicalize(&events_dir).map_err(|e| CloudError::Io { path: events_dir.display().to_string(), source: e })?;
        let ctx = SessionContext::new();
        let url = ListingTableUrl::parse(format!("{}/", events_dir.display()))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".into(), DataType::Utf8), ("city".into(), DataType::Utf8)]);
        let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(event_file_schema());
        ctx.register_table("events", Arc::new(ListingTable::try_new(config)?))?;
        let batch = crate::registry::to_batch(&schools);
        ctx.register_table("schools", Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))?;
        let dim = ctx
            .sql(
                "SELECT school_id, MIN(school_name) AS school_name, MIN(city) AS city, MIN(county) AS county, \
                        MIN(alliance) AS alliance, MIN(zone) AS zone, MIN(locale) AS locale, BOOL_OR(strong) AS strong, \
                        SUM(enrolment) AS enrolment \
                 FROM schools GROUP BY school_id",
            )
            .await?
            .into_view();
        ctx.register_table("school_dim", dim)?;
        Ok(Self { ctx, root: root.to_path_buf(), schools: Arc::new(schools) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn events_dir(&self) -> PathBuf {
        self.root.join("events")
    }

    pub fn schools(&self) -> &[School] {
        &self.schools
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs SQL and collects the result.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, CloudError> {
        Ok(self.ctx.sql(sql).await?.collect().await?)
    }

    /// Runs SQL and returns rows as JSON objects.
    pub async fn query_json(&self, sql: &str) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, CloudError> {
        batches_to_json(&self.query(sql).await?)
    }
}

/// Arrow batches to JSON rows (nulls omitted, as arrow-json writes them).
pub fn batches_to_json(batches: &[RecordBatch]) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, CloudError> {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer.write_batches(&refs)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| CloudError::Query(format!("arrow-json output: {e}")))
}

//! The queryable warehouse: a DataFusion session with
//! - `events`: the hive-partitioned Parquet files (`date`, `city` partition columns), whose
//!   listing is kept until this process changes the files (see `FileCaches`), so new files
//!   are visible as soon as they are renamed into place, plus
//!   `registry_from`: the start of the registry version its date falls in;
//! - `presence`: the same partitions' classroom-days (the rooms with a heartbeat, per events
//!   file; see [`crate::sink::write_events`]), which utilisation reads instead of scanning
//!   every heartbeat, with its `registry_from` too;
//! - `schools`: the registry, one row per school, level and version (`school_year`,
//!   `registry_from`);
//! - `school_dim`: one row per school and version (a through-school's levels folded together).
//!
//! Joins of events to the registry match `school` and `registry_from`, so each event meets the
//! registry of its own school year.
//!
//! [`Warehouse::scoped`] gives a role its own session over the same files, in which these four
//! tables are views filtered to the role's schools (see [`crate::access`]). Every session runs
//! with a memory limit, so one query cannot take the process down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Column;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::{ParquetFormat, transform_schema_to_view};
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, ListFilesCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Expr, cast, col, in_list, lit};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use edubrain_schemas::School;
use edubrain_schemas::warehouse::{event_file_schema, presence_file_schema};

use crate::registry::Registry;
use crate::sink::{EVENTS, PRESENCE};

use crate::CloudError;
use crate::access::Role;
use crate::config::QueryLimits;

#[derive(Clone)]
pub struct Warehouse {
    ctx: SessionContext,
    root: PathBuf,
    registry: Arc<Registry>,
    role: Role,
    memory_limit_bytes: usize,
    query_log: Option<QueryLog>,
    leases: StreamLeases,
}

/// Keeps the files a streaming query listed where it listed them until the stream ends.
///
/// Compaction swaps a partition's files for a merged one; a query that listed the old files
/// and then opens one fails. A query that returns its answer only when complete is simply run
/// again ([`retry_after_swap`]), but a stream that has sent rows cannot be: the client would
/// get some rows twice. So a streaming query holds a lease from planning until its stream ends,
/// and maintenance swaps only when it can take every lease's lock exclusively; while a stream
/// is open, maintenance waits for a later run. Shared by a warehouse and its scoped views.
#[derive(Debug, Clone, Default)]
pub struct StreamLeases(Arc<tokio::sync::RwLock<()>>);

impl StreamLeases {
    /// A lease for one stream; waits only while a swap is in progress (milliseconds).
    pub async fn lease(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.0.clone().read_owned().await
    }

    /// The right to swap files, if no stream holds a lease now. New leases wait while it is held.
    pub fn try_exclusive(&self) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
        self.0.clone().try_write_owned().ok()
    }
}

/// The SQL each [`Warehouse::query`] ran, the rows it returned and its seconds, in order (the
/// benchmark replays them in DuckDB and compares the row counts and times).
pub type QueryLog = Arc<std::sync::Mutex<Vec<(String, usize, f64)>>>;

/// A table's schema as DataFusion reads its files (here [`event_file_schema`]'s) with its
/// strings as `Utf8View` (DataFusion's own `transform_schema_to_view`, what it reads Parquet
/// strings as when it infers the schema), which Parquet decodes without copying each value and
/// which hashes and compares faster. The analytics suite took 8% less time with it
/// (`cloud/benches/warehouse.rs`, 1M events: 1.81 s to 1.66 s; 100M: 3.13x DuckDB's time to
/// 2.48x). The files keep `Utf8`, which every reader (DuckDB, pyarrow) takes.
fn read_schema(file_schema: &Schema) -> SchemaRef {
    Arc::new(transform_schema_to_view(file_schema))
}

/// `schema` as callers see it: the `Utf8View` strings of [`read_schema`] as `Utf8`, the type
/// the files declare. Flight SQL's table listing describes tables with it, so a BI tool sees
/// the same types there as in a query's result (see [`Warehouse::plan_read_only`]).
pub fn client_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| if f.data_type() == &DataType::Utf8View { f.as_ref().clone().with_data_type(DataType::Utf8) } else { f.as_ref().clone() })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// A session whose queries together may hold at most `memory_limit_bytes` (sorts, joins and
/// aggregates that need more fail with "resources exhausted" instead of growing), and whose
/// queries can be cancelled at any point (see [`YieldEverywhere`]). `caches` are the Parquet
/// footer and statistics caches ([`FileCaches`]).
fn session(memory_limit_bytes: usize, caches: CacheManagerConfig) -> Result<SessionContext, CloudError> {
    let runtime = RuntimeEnvBuilder::new().with_memory_limit(memory_limit_bytes, 1.0).with_cache_manager(caches).build_arc()?;
    // DATAFUSION_* variables tune the engine (DATAFUSION_EXECUTION_TARGET_PARTITIONS=4, ...),
    // as in datafusion-cli; none are needed.
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::from_env()?)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(YieldEverywhere))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// What a session keeps of the files between queries.
///
/// - Each table's file listing, for [`QueryLimits::file_listing_ttl_ms`]: listing the
///   hundreds of partition directories of a warehouse was about 40% of planning (45 queries
///   over 10M events: 1.00-1.15 s of planning, 0.57-0.69 s with listings kept). A listing
///   must never hide a change this process made (DataFusion's default keeps it forever: the
///   Kafka outage test found files renamed into place after the first query never seen), so
///   every write, merge or deletion forgets them ([`forget_file_listings`]); only another
///   process's files wait for the TTL.
/// - Parquet footers (with their page indexes) and per-file statistics are kept, each entry
///   checked against its file's size and modification time, so a file compaction replaced is
///   read afresh. DataFusion's defaults (50 MiB and 20 MiB) hold about 800 and 1,300 of this
///   warehouse's files; past that every query read every footer again (100M events are 3,500
///   files), so their sizes come from [`QueryLimits`].
/// - A role's session ([`Warehouse::scoped`]) shares the province session's caches rather than
///   starting cold and holding a copy.
enum FileCaches<'a> {
    New(&'a QueryLimits),
    SharedWith(&'a SessionContext),
}

impl FileCaches<'_> {
    fn config(self) -> CacheManagerConfig {
        match self {
            FileCaches::New(limits) => {
                let config = CacheManagerConfig::default()
                    .with_metadata_cache_limit(limits.file_metadata_cache_bytes)
                    .with_file_statistics_cache_limit(limits.file_statistics_cache_bytes);
                match limits.file_listing_ttl_ms {
                    0 => config.with_list_files_cache_limit(0),
                    ttl => config
                        .with_list_files_cache(Some(file_listing_cache(Duration::from_millis(ttl))))
                        .with_list_files_cache_limit(FILE_LISTING_CACHE_BYTES),
                }
            }
            // The footer and listing caches, with their limits and TTL, as DataFusion copies
            // them into a new runtime. The events table keeps the statistics cache it was
            // built with, so a role's session needs none of its own.
            FileCaches::SharedWith(ctx) => RuntimeEnvBuilder::from_runtime_env(ctx.runtime_env().as_ref())
                .cache_manager
                .with_file_statistics_cache(None)
                .with_file_statistics_cache_limit(0),
        }
    }
}

/// Room for the listings of ~50,000 files (an entry is a path of ~90 bytes and its metadata);
/// a listing that does not fit is simply not kept.
const FILE_LISTING_CACHE_BYTES: usize = 8 << 20;

/// Every file-listing cache of this process, so that a change to the files through any
/// warehouse here is seen by all of them ([`forget_file_listings`]).
static FILE_LISTINGS: Mutex<Vec<Weak<ListFilesCache>>> = Mutex::new(Vec::new());

fn file_listing_cache(ttl: Duration) -> Arc<ListFilesCache> {
    let cache: Arc<ListFilesCache> =
        Arc::new(DefaultCache::new_with_ttl(FILE_LISTING_CACHE_BYTES, Some(ttl)).with_name("edubrain_file_listings"));
    let mut all = FILE_LISTINGS.lock().expect("file listings lock");
    all.retain(|cache| cache.strong_count() > 0);
    all.push(Arc::downgrade(&cache));
    cache
}

/// Forgets every file listing this process keeps, so the next query of any warehouse lists
/// its files again. Called on every change to the files: a Parquet file renamed into place
/// ([`crate::sink`]), the end of a maintenance run (while it still holds the streams' lock,
/// so no stream plans on a listing from before its swaps), and a query run again because a
/// file it listed was gone ([`retry_after_swap`]).
pub fn forget_file_listings() {
    for cache in FILE_LISTINGS.lock().expect("file listings lock").iter().filter_map(Weak::upgrade) {
        cache.clear();
    }
}

/// Wraps every operator of a physical plan in DataFusion's `CooperativeExec`, which spends a
/// unit of the Tokio task budget per batch it passes on.
///
/// DataFusion yields to the runtime only where its sources and exchanges do. An operator that
/// makes many batches from few input batches (a cross join) can run for a long time inside one
/// poll: the SQL endpoint's time limit then fired, but the aborted query kept a core busy until
/// its memory limit stopped it (12 s in `sql_endpoint_is_read_only_and_limited`). With a yield
/// point at every operator, an abort takes effect within a budget's worth of batches.
#[derive(Debug)]
struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.is::<CooperativeExec>() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A view over the Parquet files under `dir` (created if missing), hive-partitioned by `date`
/// and `city`, with the `registry_from` of each row's date.
fn hive_table(ctx: &SessionContext, dir: &Path, file_schema: SchemaRef, registry: &Registry) -> Result<Arc<dyn TableProvider>, CloudError> {
    std::fs::create_dir_all(dir).map_err(CloudError::io(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(CloudError::io(dir))?;
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".into(), DataType::Utf8), ("city".into(), DataType::Utf8)]);
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(read_schema(&file_schema));
    // A table built by hand has no statistics cache unless given the session's: without it
    // planning a query read every file's statistics again (~70% of planning at 10M events).
    let statistics_cache = ctx.runtime_env().cache_manager.get_file_statistic_cache();
    let files = ctx.read_table(Arc::new(ListingTable::try_new(config)?.with_cache(statistics_cache)))?;
    Ok(files.with_column("registry_from", registry.registry_from_expr())?.into_view())
}

/// Registers `schools` and the `school_dim` view over it.
async fn register_registry(ctx: &SessionContext, registry: &Registry) -> Result<(), CloudError> {
    let batch = registry.to_batch();
    ctx.register_table("schools", Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))?;
    let dim = ctx
        .sql(
            "SELECT school_id, registry_from, MIN(school_year) AS school_year, MIN(school_name) AS school_name, MIN(city) AS city, MIN(county) AS county, \
                    MIN(alliance) AS alliance, MIN(zone) AS zone, MIN(locale) AS locale, BOOL_OR(strong) AS strong, \
                    SUM(enrolment) AS enrolment \
             FROM schools GROUP BY school_id, registry_from",
        )
        .await?
        .into_view();
    ctx.register_table("school_dim", dim)?;
    Ok(())
}

impl Warehouse {
    /// Opens (creating if needed) the warehouse at `root` with the given registry, as the
    /// province sees it, with the default [`QueryLimits`] but for the memory limit.
    pub async fn open(root: &Path, registry: impl Into<Registry>, memory_limit_bytes: usize) -> Result<Self, CloudError> {
        Self::open_with_limits(root, registry, &QueryLimits { memory_limit_bytes, ..QueryLimits::default() }).await
    }

    /// Opens (creating if needed) the warehouse at `root` with the given registry, as the
    /// province sees it.
    pub async fn open_with_limits(root: &Path, registry: impl Into<Registry>, limits: &QueryLimits) -> Result<Self, CloudError> {
        let memory_limit_bytes = limits.memory_limit_bytes;
        let registry = registry.into();
        let ctx = session(memory_limit_bytes, FileCaches::New(limits).config())?;
        let events = hive_table(&ctx, &root.join(EVENTS), event_file_schema(), &registry)?;
        ctx.register_table("events", events)?;
        let presence = hive_table(&ctx, &root.join(PRESENCE), presence_file_schema(), &registry)?;
        ctx.register_table("presence", presence)?;
        register_registry(&ctx, &registry).await?;
        Ok(Self {
            ctx,
            root: root.to_path_buf(),
            registry: Arc::new(registry),
            role: Role::Province,
            memory_limit_bytes,
            query_log: None,
            leases: StreamLeases::default(),
        })
    }

    /// The warehouse as `role` sees it: a new session over the same files whose `events`,
    /// `presence`, `schools` and `school_dim` hold only the role's schools. The unfiltered tables
    /// are not registered in it, so no SQL run there can reach them.
    pub async fn scoped(&self, role: &Role) -> Result<Self, CloudError> {
        if *role == Role::Province {
            return Ok(self.clone());
        }
        let registry = self.registry.filter(|s| role.sees(s));
        // Per version: the role's schools of that school year.
        let mut visible = lit(false);
        for (from, schools) in registry.versions() {
            let mut ids: Vec<&str> = schools.iter().map(|s| s.school_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            if !ids.is_empty() {
                let in_version = col("registry_from").eq(lit(from)).and(in_list(col("school"), ids.into_iter().map(lit).collect(), false));
                visible = visible.or(in_version);
            }
        }
        // The city partition column lets a city's queries skip other cities' files.
        let predicate = match role {
            Role::City(city) => col("city").eq(lit(city.as_str())).and(visible),
            _ => visible,
        };
        let ctx = session(self.memory_limit_bytes, FileCaches::SharedWith(&self.ctx).config())?;
        for table in ["events", "presence"] {
            ctx.register_table(table, self.ctx.table(table).await?.filter(predicate.clone())?.into_view())?;
        }
        register_registry(&ctx, &registry).await?;
        Ok(Self {
            ctx,
            root: self.root.clone(),
            registry: Arc::new(registry),
            role: role.clone(),
            memory_limit_bytes: self.memory_limit_bytes,
            query_log: None,
            leases: self.leases.clone(),
        })
    }

    /// This warehouse in a session that lists the files for every query instead of using the
    /// kept listings. For streams: a listing kept from before a compaction swap (one a query
    /// took while the swap was happening) could name files that are gone before the stream
    /// reads them, and a stream that has sent rows cannot be run again. Same tables, settings,
    /// memory pool and footer and statistics caches.
    pub fn listing_afresh(&self) -> Result<Self, CloudError> {
        let mut runtime = RuntimeEnvBuilder::from_runtime_env(self.ctx.runtime_env().as_ref());
        runtime.cache_manager = runtime.cache_manager.with_list_files_cache(None).with_list_files_cache_limit(0);
        let state = SessionStateBuilder::new_from_existing(self.ctx.state()).with_runtime_env(runtime.build_arc()?).build();
        Ok(Self { ctx: SessionContext::new_with_state(state), ..self.clone() })
    }

    /// The role whose rows this warehouse holds.
    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn events_dir(&self) -> PathBuf {
        self.root.join(EVENTS)
    }

    /// The newest registry version's schools (as this warehouse's role sees them).
    pub fn schools(&self) -> &[School] {
        self.registry.newest()
    }

    /// Every registry version (as this warehouse's role sees them).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The leases streaming queries hold, shared with the ingest's maintenance.
    pub fn stream_leases(&self) -> &StreamLeases {
        &self.leases
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs SQL and collects the result, again if compaction swapped a listed file
    /// ([`retry_after_swap`]).
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, CloudError> {
        let started = std::time::Instant::now();
        let batches = retry_after_swap(|| async { self.ctx.sql(sql).await?.collect().await }).await?;
        if let Some(log) = &self.query_log {
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            log.lock().expect("query log lock").push((sql.to_string(), rows, started.elapsed().as_secs_f64()));
        }
        Ok(batches)
    }

    /// Plans `sql` as a caller's query: no DDL, DML or statements (`SET`), in this warehouse's
    /// (scoped) session. The SQL endpoint and Flight SQL both plan through here.
    /// Its string columns are `Utf8`, as the files declare them, whatever the engine used
    /// inside (see [`read_schema`]): what SQL and Flight SQL clients receive does not change.
    pub async fn plan_read_only(&self, sql: &str) -> Result<DataFrame, DataFusionError> {
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, options).await?;
        if !df.schema().fields().iter().any(|f| f.data_type() == &DataType::Utf8View) {
            return Ok(df);
        }
        let columns: Vec<Expr> = df
            .schema()
            .iter()
            .map(|(relation, field)| {
                let column = Expr::Column(Column::new(relation.cloned(), field.name()));
                // Qualified as before, so `SELECT a.x, b.x` keeps two distinct columns.
                match field.data_type() {
                    DataType::Utf8View => cast(column, DataType::Utf8).alias_qualified(relation.cloned(), field.name()),
                    _ => column,
                }
            })
            .collect();
        df.select(columns)
    }

    /// This warehouse recording every query it runs into the returned log.
    pub fn with_query_log(mut self) -> (Self, QueryLog) {
        let log = QueryLog::default();
        self.query_log = Some(log.clone());
        (self, log)
    }

    /// The newest local school day with events, if any.
    pub async fn last_day(&self) -> Result<Option<chrono::NaiveDate>, CloudError> {
        let rows = self.query_json("SELECT MAX(date) AS last FROM events").await?;
        Ok(rows.first().and_then(|r| r.get("last")?.as_str()).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()))
    }

    /// Runs SQL and returns rows as JSON objects.
    pub async fn query_json(&self, sql: &str) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, CloudError> {
        batches_to_json(&self.query(sql).await?)
    }
}

/// Whether a query failed because a file it had listed no longer exists at its path.
/// Runs `attempt` again, up to 3 more times, when it failed because a file it listed was
/// swapped out by compaction (the kill -9 test found this): a new listing finds the merged file
/// holding the same rows. For work that returns its answer only once complete.
pub async fn retry_after_swap<T, F, Fut>(mut attempt: F) -> Result<T, DataFusionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DataFusionError>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(e) if retries < 3 && listed_file_vanished(&e) => {
                retries += 1;
                // A kept listing may be what named the file (one another process removed).
                forget_file_listings();
                tracing::debug!(error = %e, retries, "a listed file was swapped out by compaction; querying again");
            }
            other => return other,
        }
    }
}

fn listed_file_vanished(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::parquet::errors::ParquetError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) {
            return true;
        }
        // DataFusion 55 flattens the object store's NotFound into a string when it reads a
        // file's footer (datafusion-datasource-parquet's `ParquetFileReader::get_metadata`), so
        // there is no io::Error left to find. CI's kill -9 test caught a reader there.
        if let Some(ParquetError::General(message)) = err.downcast_ref::<ParquetError>()
            && message.starts_with("Failed to fetch metadata for file")
            && message.contains("not found")
        {
            return true;
        }
        source = err.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Maintenance may swap only while no stream holds a lease, and a stream that starts during
    /// a swap waits for it, then reads the new files.
    #[tokio::test]
    async fn swaps_wait_for_open_streams_and_streams_for_a_swap() {
        let leases = StreamLeases::default();
        let (a, b) = (leases.lease().await, leases.lease().await);
        assert!(leases.try_exclusive().is_none(), "two streams are reading");
        drop(a);
        assert!(leases.try_exclusive().is_none(), "one stream is still reading");
        drop(b);
        let swap = leases.try_exclusive().expect("no stream is reading");
        let waiting = tokio::spawn({
            let leases = leases.clone();
            async move { leases.lease().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a stream does not list files while they are being swapped");
        drop(swap);
        let _lease = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("the lease follows the swap").unwrap();
        assert!(leases.try_exclusive().is_none());
    }

    /// Both shapes in which a vanished file reaches a query: with the io::Error in the chain
    /// (opening the file) and flattened into a string (reading its footer).
    #[test]
    fn a_vanished_file_is_recognised_in_either_shape() {
        use datafusion::parquet::errors::ParquetError;
        let gone = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        assert!(listed_file_vanished(&DataFusionError::IoError(gone)));
        let footer = ParquetError::General(
            "Failed to fetch metadata for file w/events/part-1.parquet: Object Store error: Object at location \
             /w/events/part-1.parquet not found: No such file or directory (os error 2)"
                .into(),
        );
        assert!(listed_file_vanished(&DataFusionError::ParquetError(Box::new(footer))));
        let corrupt = ParquetError::General("Failed to fetch metadata for file w/part-1.parquet: invalid footer".into());
        assert!(!listed_file_vanished(&DataFusionError::ParquetError(Box::new(corrupt))));
        assert!(!listed_file_vanished(&DataFusionError::Plan("table 'x' not found".into())));
    }

    fn heartbeat(n: u32) -> crate::batch::StoredEvent {
        use edubrain_schemas::event::{DeviceHeartbeat, DeviceKind, EventBody, Header};
        let header = Header {
            event_id: uuid::Uuid::from_u128(n as u128),
            schema_version: 1,
            city: "c01".into(),
            school: "c01-s1".into(),
            classroom: "c01-s1-r1".into(),
            terminal: "t1".into(),
            event_time: "2026-11-23T01:00:00Z".parse().unwrap(),
        };
        let body = EventBody::DeviceHeartbeat(DeviceHeartbeat {
            device_id: "d1".into(),
            device_kind: DeviceKind::ClassroomTerminal,
            uptime_s: n as u64,
        });
        let event = edubrain_schemas::Event { header, body };
        crate::batch::StoredEvent { received_time: event.header.event_time, event, clock_flag: None }
    }

    fn write(dir: &Path, name: &str, events: Vec<crate::batch::StoredEvent>) {
        crate::sink::write_events(dir, name, &events, chrono::FixedOffset::east_opt(8 * 3600).unwrap()).unwrap();
    }

    async fn count(w: Warehouse) -> u64 {
        w.query_json("SELECT COUNT(*) AS n FROM events").await.unwrap()[0]["n"].as_u64().unwrap()
    }

    /// Files renamed into place after a query are seen by the next one, in the province's
    /// session and in a scoped one.
    #[tokio::test]
    async fn new_files_are_visible_to_the_next_query() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open(dir.path(), Vec::new(), 1 << 28).await.unwrap();
        let scoped = w.scoped(&Role::City("c01".into())).await.unwrap();
        assert_eq!(count(w.clone()).await, 0);
        write(dir.path(), "part-1.parquet", vec![heartbeat(1)]);
        assert_eq!(count(w.clone()).await, 1);
        write(dir.path(), "part-2.parquet", vec![heartbeat(2)]);
        assert_eq!(count(w.clone()).await, 2);
        // The city role sees no school of an empty registry; it must not fail either.
        assert_eq!(count(scoped).await, 0);
    }

    /// Reads every row: an aggregate could be answered from the files' cached statistics
    /// without opening a file (DataFusion does so for `COUNT`, `MIN`, `MAX` and `SUM`).
    async fn sum_uptime(w: &Warehouse) -> u64 {
        w.query_json("SELECT uptime_s FROM events").await.unwrap().iter().map(|r| r["uptime_s"].as_u64().unwrap()).sum()
    }

    /// A table's file listing is kept between queries, shared with a role's session, and
    /// forgotten whenever this process changes the files; another process's changes show
    /// when it expires.
    #[tokio::test]
    async fn file_listings_are_kept_until_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_millis(1_500);
        let limits = QueryLimits { file_listing_ttl_ms: ttl.as_millis() as u64, ..QueryLimits::default() };
        let w = Warehouse::open_with_limits(dir.path(), Vec::<School>::new(), &limits).await.unwrap();
        let scoped = w.scoped(&Role::City("c01".into())).await.unwrap();
        let listings = w.context().runtime_env().cache_manager.get_list_files_cache().expect("a listing cache");
        let shared = scoped.context().runtime_env().cache_manager.get_list_files_cache().expect("a role's listing cache");
        assert!(Arc::ptr_eq(&listings, &shared), "a role's session shares the listings");

        write(dir.path(), "part-1.parquet", vec![heartbeat(1)]);
        assert_eq!(sum_uptime(&w).await, 1);
        assert!(!listings.is_empty(), "the listing is kept");
        // Another process's file (a copy made by hand) waits for the listing to expire …
        let partition = dir.path().join("events/date=2026-11-23/city=c01");
        let started = std::time::Instant::now();
        std::fs::copy(partition.join("part-1.parquet"), partition.join("part-9.parquet")).unwrap();
        let before_expiry = sum_uptime(&w).await;
        if started.elapsed() < ttl {
            assert_eq!(before_expiry, 1, "a kept listing was not used");
        }
        let afresh = w.listing_afresh().unwrap();
        assert!(afresh.context().runtime_env().cache_manager.get_list_files_cache().is_none());
        assert_eq!(sum_uptime(&afresh).await, 1 + 1, "a stream's session lists the files itself");
        // … but this process's writes are seen at once, with everything before them.
        write(dir.path(), "part-2.parquet", vec![heartbeat(2)]);
        assert_eq!(sum_uptime(&w).await, 1 + 2 + 1);
        std::fs::copy(partition.join("part-2.parquet"), partition.join("part-8.parquet")).unwrap();
        tokio::time::sleep(ttl).await;
        assert_eq!(sum_uptime(&w).await, 1 + 2 + 1 + 2, "the listing expired");
        // A file another process removed: gone once the listing expires.
        std::fs::remove_file(partition.join("part-8.parquet")).unwrap();
        tokio::time::sleep(ttl).await;
        assert_eq!(sum_uptime(&w).await, 1 + 2 + 1);
    }

    /// `file_listing_ttl_ms = 0`: no listing is kept.
    #[tokio::test]
    async fn file_listings_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits { file_listing_ttl_ms: 0, ..QueryLimits::default() };
        let w = Warehouse::open_with_limits(dir.path(), Vec::<School>::new(), &limits).await.unwrap();
        assert!(w.context().runtime_env().cache_manager.get_list_files_cache().is_none());
        write(dir.path(), "part-1.parquet", vec![heartbeat(1)]);
        let partition = dir.path().join("events/date=2026-11-23/city=c01");
        assert_eq!(sum_uptime(&w).await, 1);
        std::fs::copy(partition.join("part-1.parquet"), partition.join("part-9.parquet")).unwrap();
        assert_eq!(sum_uptime(&w).await, 2);
    }

    /// The footer and statistics caches: kept between queries, shared with a role's session,
    /// and never trusted for a file written again under the same name (as ingest does after a
    /// crash and compaction may). `COUNT(*)` is answered from statistics, so a stale entry
    /// would show as a wrong count.
    #[tokio::test]
    async fn cached_file_statistics_follow_a_rewritten_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open(dir.path(), Vec::new(), 1 << 28).await.unwrap();
        write(dir.path(), "part-1.parquet", vec![heartbeat(1)]);
        assert_eq!(count(w.clone()).await, 1);
        let caches = &w.context().runtime_env().cache_manager;
        assert_eq!(caches.get_file_statistic_cache().expect("a statistics cache").len(), 1);
        write(dir.path(), "part-1.parquet", vec![heartbeat(1), heartbeat(2), heartbeat(3)]);
        assert_eq!(count(w.clone()).await, 3);

        let scoped = w.scoped(&Role::City("c01".into())).await.unwrap();
        let shared = &scoped.context().runtime_env().cache_manager;
        assert!(Arc::ptr_eq(&caches.get_file_metadata_cache(), &shared.get_file_metadata_cache()), "a role's session shares the footers");
        let limits = QueryLimits::default();
        assert_eq!(shared.get_file_metadata_cache().cache_limit(), limits.file_metadata_cache_bytes);
    }

    /// The utilisation queries group every heartbeat by school, classroom and `registry_from`.
    /// With a one-version registry `registry_from` is the same for every event; DataFusion must
    /// not see it as a constant, or it picks a streaming aggregate without vectorized hashing
    /// (twice as slow there). `EXPLAIN` shows `ordering_mode=` on an aggregate that streams.
    #[tokio::test]
    async fn grouping_by_registry_version_uses_the_hash_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open(dir.path(), Vec::new(), 1 << 28).await.unwrap();
        write(dir.path(), "part-1.parquet", vec![heartbeat(1), heartbeat(2)]);
        let sql = "SELECT school, classroom, registry_from, COUNT(DISTINCT date) AS days FROM events \
                   WHERE event_type = 'device_heartbeat' GROUP BY school, classroom, registry_from";
        let rows = w.query_json(sql).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["registry_from"], crate::registry::ALWAYS);
        assert_eq!(rows[0]["days"], 1);
        let plan = batches_to_json(&w.query(&format!("EXPLAIN {sql}")).await.unwrap()).unwrap();
        let physical = plan.iter().find(|r| r["plan_type"] == "physical_plan").expect("a physical plan")["plan"].to_string();
        assert!(physical.contains("AggregateExec"), "{physical}");
        assert!(!physical.contains("ordering_mode"), "an aggregate streams:\n{physical}");
    }
}

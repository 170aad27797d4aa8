//! Warehouse maintenance: small-file compaction and retention by age.
//!
//! Ingest writes one file per (date, city) partition per flush, so a busy day ends with
//! hundreds of small files, which every query lists and opens. Compaction merges a partition's
//! small files into one, sorted by event type and school (so row groups prune well), and keeps
//! its large files as they are.
//!
//! Queries must never see an event twice or miss one, so a partition is replaced whole: the new
//! contents (the merged file plus hard links to the kept files) are built in a directory under
//! `maintenance/`, outside the `events` tree no query lists, and swapped with the partition's
//! directory in one `renameat2(RENAME_EXCHANGE)`. A crash before the swap leaves an invisible
//! directory; after it, the old files sit invisible in `maintenance/`. Either way the leftovers
//! are removed later (after [`GRACE`], so queries that listed the old files can finish reading
//! them). Retention moves a whole `date=` directory into `maintenance/` the same way.
//!
//! The `presence` table holds one small file per events file, of the same name (see
//! `sink::write_events`). Compaction writes a merged file's presence before the swap, and a
//! run ends by making the two match again: the presence files of replaced files leave for `maintenance/`
//! (only once every events file of their partition has its own, so no room-day goes missing in
//! between). The same step writes presence for a warehouse from before the table existed.
//!
//! Ingest runs maintenance itself, between flushes and only when every offset is committed: no
//! file is written during a swap, and no replay after a crash can rewrite a file that was
//! already merged. The one other writer, a backfill (`crate::backfill`, possibly another
//! process), holds the [`WriterLock`] while it writes; maintenance skips its run while the lock
//! is held, so a swap can never carry a backfilled file away.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use datafusion::arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use datafusion::arrow::record_batch::RecordBatch;
use rustix::fs::{CWD, RenameFlags, renameat_with};
use serde::{Deserialize, Serialize};

use crate::CloudError;
use crate::batch::presence_of_events_batch;
use crate::ingest::fnv1a;
use crate::sink::{EVENTS, PRESENCE, read_parquet, write_parquet_atomic, write_presence_atomic};

/// How long replaced files stay (invisibly) on disk for queries that listed them.
pub const GRACE: Duration = Duration::from_secs(300);

/// `[maintenance]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Merge a partition's small files once it has this many (0: never compact).
    pub compact_min_files: usize,
    /// Files below this size are "small".
    pub small_file_bytes: u64,
    /// At most this many bytes of small files are merged in one run, over all partitions (a run
    /// holds up ingest, so its work is bounded; what is left waits for the next run).
    pub max_merge_bytes: u64,
    /// Partitions dated more than this many days before today are deleted (0: keep forever).
    pub retention_days: u32,
    /// Least time between two maintenance runs.
    pub interval_secs: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self { compact_min_files: 8, small_file_bytes: 16 << 20, max_merge_bytes: 256 << 20, retention_days: 0, interval_secs: 60 }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub partitions_compacted: u64,
    pub files_merged: u64,
    pub partitions_expired: u64,
    pub leftovers_removed: u64,
    /// Half-written files (`.<name>.tmp`) a writer killed before its rename left behind.
    pub temp_files_removed: u64,
    /// Presence files written for events files that had none (a merged file, or one written
    /// before the presence table existed).
    pub presence_files_written: u64,
    /// Presence files whose events file is gone (merged, or never renamed into place).
    pub presence_files_removed: u64,
    /// Nothing was done: a backfill holds the writer lock.
    pub skipped_for_backfill: bool,
}

/// An exclusive `flock` on `<root>/writer.lock`: held by a backfill for its whole run and by
/// maintenance for each run, across processes; released when dropped (or when its process dies).
pub struct WriterLock {
    _file: std::fs::File,
}

impl WriterLock {
    /// The lock, or `None` when someone else holds it.
    pub fn try_acquire(root: &Path) -> Result<Option<Self>, CloudError> {
        std::fs::create_dir_all(root).map_err(CloudError::io(root))?;
        let path = root.join("writer.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(CloudError::io(&path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(CloudError::io(&path)(e.into())),
        }
    }

    /// The lock, waiting up to `patience` for a maintenance run (bounded by `max_merge_bytes`)
    /// or another backfill to release it.
    pub async fn acquire(root: &Path, patience: Duration) -> Result<Self, CloudError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(lock) = Self::try_acquire(root)? {
                return Ok(lock);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CloudError::Config(format!(
                    "{}/writer.lock is still held after {} s: another backfill is writing, or maintenance is stuck",
                    root.display(),
                    patience.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), CloudError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(CloudError::io(dir))
}

/// Sub-directories of `dir` (sorted), or nothing if it does not exist.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CloudError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(CloudError::io(dir))? {
        let entry = entry.map_err(CloudError::io(dir))?;
        if entry.file_type().map_err(CloudError::io(dir))?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The partition directories (`date=…/city=…`) of the table at `table`, sorted.
fn partitions(table: &Path) -> Result<Vec<PathBuf>, CloudError> {
    let mut all = Vec::new();
    for date_dir in subdirs(table)? {
        all.extend(subdirs(&date_dir)?);
    }
    Ok(all)
}

/// Swaps two directories atomically.
fn exchange(a: &Path, b: &Path) -> Result<(), CloudError> {
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
        .map_err(|e| CloudError::Io { path: format!("exchange {} and {}", a.display(), b.display()), source: e.into() })
}

/// A fresh, unique directory under `root/maintenance`.
fn work_dir(root: &Path, what: &str) -> Result<PathBuf, CloudError> {
    let base = root.join("maintenance");
    std::fs::create_dir_all(&base).map_err(CloudError::io(&base))?;
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = base.join(format!("{what}-{nanos}"));
    std::fs::create_dir(&dir).map_err(CloudError::io(&dir))?;
    Ok(dir)
}

/// Removes what earlier runs left in `maintenance/` once it is older than `grace`.
pub fn remove_leftovers(root: &Path, grace: Duration) -> Result<u64, CloudError> {
    let mut removed = 0;
    for dir in subdirs(&root.join("maintenance"))? {
        let age = std::fs::metadata(&dir).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
        if age >= grace {
            std::fs::remove_dir_all(&dir).map_err(CloudError::io(&dir))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the half-written files (`.<name>.tmp`, see `sink`) under `events/` and
/// `quarantine/` that a writer killed before its rename left behind. No query lists them, but
/// they hold disk until someone removes them. Only under the [`WriterLock`] and between
/// ingest's flushes, when no writer can have a temporary file open.
pub fn remove_temp_files(root: &Path) -> Result<u64, CloudError> {
    fn walk(dir: &Path, removed: &mut u64) -> Result<(), CloudError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CloudError::io(dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(CloudError::io(dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().map_err(CloudError::io(&path))?.is_dir() {
                walk(&path, removed)?;
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(CloudError::io(&path))?;
                *removed += 1;
            }
        }
        Ok(())
    }
    let mut removed = 0;
    for tree in [EVENTS, PRESENCE, "quarantine"] {
        walk(&root.join(tree), &mut removed)?;
    }
    Ok(removed)
}

/// Reads Parquet files into one batch sorted by event type, school and event time.
fn merge(files: &[PathBuf]) -> Result<RecordBatch, CloudError> {
    let batches = files.iter().map(|f| read_parquet(f, None)).collect::<Result<Vec<_>, _>>()?;
    let all = concat_batches(&edubrain_schemas::warehouse::event_file_schema(), &batches)?;
    let key = |name: &str| SortColumn { values: all.column_by_name(name).expect("event column").clone(), options: None };
    let order = lexsort_to_indices(&[key("event_type"), key("school"), key("event_time")], None)?;
    Ok(take_record_batch(&all, &order)?)
}

/// Compacts one partition directory if it has enough small files; returns the files merged.
/// `budget` is the bytes this run may still merge; it is reduced by what this merge reads.
fn compact_partition(root: &Path, partition: &Path, cfg: &MaintenanceConfig, budget: &mut u64) -> Result<u64, CloudError> {
    let mut small = Vec::new();
    let mut keep = Vec::new();
    for entry in std::fs::read_dir(partition).map_err(CloudError::io(partition))? {
        let entry = entry.map_err(CloudError::io(partition))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".parquet") || name.starts_with('.') {
            continue; // temporary files of a write in progress are not ours to touch
        }
        let size = entry.metadata().map_err(CloudError::io(&path))?.len();
        if size < cfg.small_file_bytes { small.push((size, path)) } else { keep.push(path) }
    }
    if cfg.compact_min_files == 0 || small.len() < cfg.compact_min_files.max(2) {
        return Ok(0);
    }
    // The smallest first, up to the run's budget; the rest wait for the next run.
    small.sort();
    let mut merged = Vec::new();
    for (size, path) in small {
        if size > *budget {
            keep.push(path);
            continue;
        }
        *budget -= size;
        merged.push(path);
    }
    if merged.len() < 2 {
        return Ok(0); // nothing worth a swap (the budget may be spent; the files stay as they are)
    }
    let batch = merge(&merged)?;
    let mut names: Vec<String> = merged.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    names.sort();
    let name = format!("compact-{:016x}.parquet", fnv1a(names.join("/").as_bytes()));
    let next = work_dir(root, "compacting")?;
    for path in &keep {
        let link = next.join(path.file_name().expect("a file"));
        std::fs::hard_link(path, &link).map_err(CloudError::io(&link))?;
    }
    write_parquet_atomic(&next, &name, &batch)?;
    // The merged file's presence, from the rows in hand, before the file becomes visible (as
    // ingest orders them); the replaced files' presence leaves in `reconcile_presence`.
    let presence_dir = root.join(PRESENCE).join(partition.strip_prefix(root.join(EVENTS)).expect("a partition of the events table"));
    write_presence_atomic(&presence_dir, &name, &presence_of_events_batch(&batch)?)?;
    exchange(partition, &next)?; // `next` now holds the old files, invisible to queries
    sync_dir(partition.parent().expect("a partition has a parent"))?;
    Ok(merged.len() as u64)
}

/// Moves `events/date=D` and `presence/date=D` directories older than the retention out of
/// the tables; returns the events days expired. Presence first: a crash between the two leaves
/// events whose presence maintenance writes again (and the next run expires), never presence
/// without its events.
fn expire(root: &Path, today: NaiveDate, days: u32) -> Result<u64, CloudError> {
    if days == 0 {
        return Ok(0);
    }
    let oldest_kept = today - chrono::Days::new(days as u64);
    expire_table(root, PRESENCE, oldest_kept)?;
    expire_table(root, EVENTS, oldest_kept)
}

/// Moves `root/table/date=D` directories dated before `oldest_kept` into `maintenance/`.
fn expire_table(root: &Path, table: &str, oldest_kept: NaiveDate) -> Result<u64, CloudError> {
    let dir_of_table = root.join(table);
    let mut expired = 0;
    for dir in subdirs(&dir_of_table)? {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(date) = name.strip_prefix("date=").and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) else { continue };
        if date < oldest_kept {
            let to = work_dir(root, &format!("expired-{table}-{name}"))?;
            exchange(&dir, &to)?; // the empty directory takes the partition's place …
            std::fs::remove_dir(&dir).map_err(CloudError::io(&dir))?; // … and goes
            expired += 1;
        }
    }
    if expired > 0 {
        sync_dir(&dir_of_table)?;
    }
    Ok(expired)
}

/// The Parquet files directly in `dir`, by name, without temporary ones; none if `dir` does not
/// exist.
fn parquet_names(dir: &Path) -> Result<BTreeSet<String>, CloudError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(CloudError::io(dir)(e)),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let name = entry.map_err(CloudError::io(dir))?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") && !name.starts_with('.') {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Makes every partition's presence files match its events files, one for one by name (see
/// `sink::write_events`): writes the presence of each events file that has none (one from
/// before the presence table, or one whose presence write failed) and moves out each presence file
/// whose events file is gone (merged away, expired, or never renamed into place because its
/// writer crashed in between). Returns (written, removed).
fn reconcile_presence(root: &Path) -> Result<(u64, u64), CloudError> {
    let (events, presence) = (root.join(EVENTS), root.join(PRESENCE));
    let mut both = BTreeSet::new();
    for table in [&events, &presence] {
        for partition in partitions(table)? {
            both.insert(partition.strip_prefix(table).expect("listed under its table").to_path_buf());
        }
    }
    let (mut written, mut removed) = (0, 0);
    let mut retired: Option<PathBuf> = None;
    for partition in both {
        let (events_dir, presence_dir) = (events.join(&partition), presence.join(&partition));
        let (have_events, have_presence) = (parquet_names(&events_dir)?, parquet_names(&presence_dir)?);
        for name in have_events.difference(&have_presence) {
            let rooms = read_parquet(&events_dir.join(name), Some(&["event_type", "school", "classroom"]))?;
            write_presence_atomic(&presence_dir, name, &presence_of_events_batch(&rooms)?)?;
            written += 1;
        }
        let orphans: Vec<&String> = have_presence.difference(&have_events).collect();
        if orphans.is_empty() {
            continue;
        }
        // Every events file here now has its presence file (a failure above returned), so the
        // orphans' rows are all in those too.
        // Out of the table as compaction's replaced files go: into `maintenance/`, removed
        // after the grace period, so a query that listed them can still read them.
        let retired = match &retired {
            Some(dir) => dir.clone(),
            None => retired.insert(work_dir(root, "presence-orphans")?).clone(),
        };
        let to = retired.join(&partition);
        std::fs::create_dir_all(&to).map_err(CloudError::io(&to))?;
        for name in orphans {
            std::fs::rename(presence_dir.join(name), to.join(name)).map_err(CloudError::io(&presence_dir))?;
            removed += 1;
        }
        sync_dir(&presence_dir)?;
    }
    Ok((written, removed))
}

/// One maintenance run over the warehouse at `root`: leftovers older than `grace`, retention
/// relative to `today` (local), compaction of every partition that needs it, then the presence
/// table made to match the events files again. Whatever it changed, and whether or not it
/// finished, this process's queries list the files again afterwards.
pub fn run(root: &Path, cfg: &MaintenanceConfig, today: NaiveDate, grace: Duration) -> Result<Report, CloudError> {
    let Some(_lock) = WriterLock::try_acquire(root)? else {
        return Ok(Report { skipped_for_backfill: true, ..Report::default() });
    };
    let report = run_locked(root, cfg, today, grace);
    crate::warehouse::forget_file_listings();
    report
}

fn run_locked(root: &Path, cfg: &MaintenanceConfig, today: NaiveDate, grace: Duration) -> Result<Report, CloudError> {
    let mut report =
        Report { leftovers_removed: remove_leftovers(root, grace)?, temp_files_removed: remove_temp_files(root)?, ..Report::default() };
    report.partitions_expired = expire(root, today, cfg.retention_days)?;
    let mut budget = cfg.max_merge_bytes;
    for partition in partitions(&root.join(EVENTS))? {
        let merged = compact_partition(root, &partition, cfg, &mut budget)?;
        if merged > 0 {
            report.partitions_compacted += 1;
            report.files_merged += merged;
            report.presence_files_written += 1; // the merged file's, written by the merge
        }
    }
    let (written, removed) = reconcile_presence(root)?;
    report.presence_files_written += written;
    report.presence_files_removed = removed;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_lock_is_exclusive_and_maintenance_skips_while_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = WriterLock::try_acquire(dir.path()).unwrap().expect("free");
        assert!(WriterLock::try_acquire(dir.path()).unwrap().is_none(), "taken twice");
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let report = run(dir.path(), &MaintenanceConfig::default(), today, GRACE).unwrap();
        assert!(report.skipped_for_backfill);
        drop(held);
        assert!(!run(dir.path(), &MaintenanceConfig::default(), today, GRACE).unwrap().skipped_for_backfill);
    }

    #[test]
    fn half_written_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let partition = dir.path().join("events/date=2026-11-16/city=c01");
        let quarantine = dir.path().join("quarantine");
        std::fs::create_dir_all(&partition).unwrap();
        std::fs::create_dir_all(&quarantine).unwrap();
        for file in [partition.join(".part-1.parquet.tmp"), quarantine.join(".q-1.parquet.tmp")] {
            std::fs::write(file, b"x").unwrap();
        }
        crate::sink::write_events(dir.path(), "part-2.parquet", &[event(2, 16, "c01")], offset()).unwrap();
        std::fs::write(dir.path().join(".not-a-tree.tmp"), b"x").unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let report = run(dir.path(), &MaintenanceConfig::default(), today, GRACE).unwrap();
        assert_eq!(report.temp_files_removed, 2);
        assert!(!partition.join(".part-1.parquet.tmp").exists() && !quarantine.join(".q-1.parquet.tmp").exists());
        assert!(partition.join("part-2.parquet").exists(), "a finished file was removed");
        assert!(dir.path().join(".not-a-tree.tmp").exists(), "outside events/ and quarantine/ is not maintenance's");
    }
    use crate::Warehouse;
    use crate::batch::StoredEvent;
    use edubrain_schemas::event::{DeviceHeartbeat, DeviceKind, EventBody, Header};

    fn event(n: u128, day: u32, city: &str) -> StoredEvent {
        let header = Header {
            event_id: uuid::Uuid::from_u128(n),
            schema_version: 1,
            city: city.into(),
            school: format!("{city}-s{}", n % 3),
            classroom: format!("{city}-s{}-r1", n % 3),
            terminal: "t1".into(),
            event_time: format!("2026-11-{day:02}T02:00:00Z").parse().unwrap(),
        };
        let body = EventBody::DeviceHeartbeat(DeviceHeartbeat {
            device_id: "d1".into(),
            device_kind: DeviceKind::ClassroomTerminal,
            uptime_s: n as u64,
        });
        let event = edubrain_schemas::Event { header, body };
        StoredEvent { received_time: event.header.event_time, event, clock_flag: None }
    }

    fn offset() -> chrono::FixedOffset {
        chrono::FixedOffset::east_opt(8 * 3600).unwrap()
    }

    async fn ids(w: &Warehouse) -> (usize, usize) {
        let rows = w.query_json("SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM events").await.unwrap();
        (rows[0]["n"].as_u64().unwrap() as usize, rows[0]["d"].as_u64().unwrap() as usize)
    }

    fn parquet_files(dir: &Path) -> usize {
        parquet_names(dir).unwrap().len()
    }

    /// Every events file has a presence file of the same name and no presence file is without
    /// one, and the presence table holds exactly the room-days of the heartbeats.
    async fn presence_matches_events(w: &Warehouse, root: &Path) {
        let names = |table: &str| {
            let mut all = Vec::new();
            for partition in partitions(&root.join(table)).unwrap() {
                let rel = partition.strip_prefix(root.join(table)).unwrap().to_path_buf();
                all.extend(parquet_names(&partition).unwrap().into_iter().map(|n| rel.join(n)));
            }
            all
        };
        assert_eq!(names(PRESENCE), names(EVENTS));
        let room_days = |sql: &'static str| async move {
            let rows = w.query_json(sql).await.unwrap();
            rows.iter().map(|r| format!("{}/{}/{}/{}", r["date"], r["city"], r["school"], r["classroom"])).collect::<Vec<_>>()
        };
        let from_presence = room_days("SELECT DISTINCT date, city, school, classroom FROM presence ORDER BY 1, 2, 3, 4").await;
        let from_events = room_days(
            "SELECT DISTINCT date, city, school, classroom FROM events WHERE event_type = 'device_heartbeat' ORDER BY 1, 2, 3, 4",
        )
        .await;
        assert!(!from_events.is_empty());
        assert_eq!(from_presence, from_events);
    }

    #[tokio::test]
    async fn compaction_merges_small_files_and_every_event_stays_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let w = Warehouse::open(root, Vec::new(), 1 << 28).await.unwrap();
        for flush in 0..10u128 {
            let events: Vec<_> = (0..50).map(|i| event(flush * 1000 + i, 23, if i % 2 == 0 { "c01" } else { "c02" })).collect();
            crate::sink::write_events(root, &format!("part-{flush:04}.parquet"), &events, offset()).unwrap();
        }
        let partition = root.join("events/date=2026-11-23/city=c01");
        assert_eq!(parquet_files(&partition), 10);
        assert_eq!(ids(&w).await, (500, 500));

        let cfg = MaintenanceConfig { compact_min_files: 4, ..MaintenanceConfig::default() };
        let report = run(root, &cfg, NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(), GRACE).unwrap();
        assert_eq!((report.partitions_compacted, report.files_merged), (2, 20));
        assert_eq!(parquet_files(&partition), 1);
        // The replaced files wait, invisible, in maintenance/: queries see each event once.
        assert_eq!(ids(&w).await, (500, 500));
        // The merged files got presence files; the replaced files' presence went the same way.
        assert_eq!((report.presence_files_written, report.presence_files_removed), (2, 20));
        presence_matches_events(&w, root).await;
        assert_eq!(subdirs(&root.join("maintenance")).unwrap().len(), 3);
        // Sorted by type, school and time inside the merged file.
        let schools = w.query_json("SELECT school FROM events WHERE city = 'c01'").await.unwrap();
        let schools: Vec<&str> = schools.iter().map(|r| r["school"].as_str().unwrap()).collect();
        assert!(schools.is_sorted(), "{schools:?}");

        // More flushes: the merged file is kept, the new small ones merged with nothing lost.
        for flush in 10..15u128 {
            crate::sink::write_events(root, &format!("part-{flush:04}.parquet"), &[event(flush * 1000, 23, "c01")], offset()).unwrap();
        }
        let cfg = MaintenanceConfig { small_file_bytes: 1, ..cfg }; // nothing is small now
        assert_eq!(run(root, &cfg, NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(), GRACE).unwrap().files_merged, 0);
        let cfg = MaintenanceConfig { small_file_bytes: 16 << 20, ..cfg };
        assert_eq!(run(root, &cfg, NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(), Duration::ZERO).unwrap().files_merged, 6);
        assert_eq!(ids(&w).await, (505, 505));
        presence_matches_events(&w, root).await;
        // A zero grace removed the earlier leftovers: this run's two are left.
        assert_eq!(subdirs(&root.join("maintenance")).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_run_merges_at_most_its_budget_and_the_next_run_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for flush in 0..6u128 {
            for city in ["c01", "c02"] {
                let events: Vec<_> = (0..20).map(|i| event(flush * 1000 + i + if city == "c01" { 0 } else { 500 }, 23, city)).collect();
                crate::sink::write_events(root, &format!("part-{flush:04}.parquet"), &events, offset()).unwrap();
            }
        }
        let one_file = std::fs::metadata(root.join("events/date=2026-11-23/city=c01/part-0000.parquet")).unwrap().len();
        // Room for about 8 of the 12 small files: the first partition whole, part of the second.
        let cfg = MaintenanceConfig { compact_min_files: 2, max_merge_bytes: one_file * 8 + one_file / 2, ..MaintenanceConfig::default() };
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let first = run(root, &cfg, today, GRACE).unwrap();
        assert!(first.files_merged <= 8 && first.files_merged >= 6, "{first:?}");
        let second = run(root, &cfg, today, GRACE).unwrap();
        assert!(second.files_merged >= 2, "{second:?}");
        let w = Warehouse::open(root, Vec::new(), 1 << 28).await.unwrap();
        assert_eq!(ids(&w).await, (240, 240));
        presence_matches_events(&w, root).await;
    }

    #[tokio::test]
    async fn presence_is_rebuilt_for_files_without_it_and_orphans_leave() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (flush, day) in [(0u128, 20), (1, 23), (2, 23)] {
            let events: Vec<_> = (0..30).map(|i| event(flush * 1000 + i, day, if i % 2 == 0 { "c01" } else { "c02" })).collect();
            crate::sink::write_events(root, &format!("part-{flush:04}.parquet"), &events, offset()).unwrap();
        }
        // A warehouse from before the presence table: none of it. And a presence file whose
        // writer died before it renamed the events file into place.
        std::fs::remove_dir_all(root.join(PRESENCE)).unwrap();
        let stray = root.join("presence/date=2026-11-23/city=c01");
        std::fs::create_dir_all(&stray).unwrap();
        write_presence_atomic(&stray, "part-0009.parquet", &crate::batch::build_presence(&[event(9, 23, "c01")]).unwrap()).unwrap();

        let report = run(root, &MaintenanceConfig::default(), NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(), GRACE).unwrap();
        assert_eq!((report.presence_files_written, report.presence_files_removed), (6, 1), "{report:?}");
        let w = Warehouse::open(root, Vec::new(), 1 << 28).await.unwrap();
        presence_matches_events(&w, root).await;
        let again = run(root, &MaintenanceConfig::default(), NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(), GRACE).unwrap();
        assert_eq!((again.presence_files_written, again.presence_files_removed), (0, 0), "{again:?}");
    }

    #[tokio::test]
    async fn files_under_maintenance_are_never_read_as_events() {
        // What a crash leaves (a half-built or a replaced partition) is outside the table.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        crate::sink::write_events(root, "part-1.parquet", &[event(1, 23, "c01")], offset()).unwrap();
        let stray = root.join("maintenance/compacting-1/date=2026-11-23/city=c01");
        std::fs::create_dir_all(&stray).unwrap();
        std::fs::copy(root.join("events/date=2026-11-23/city=c01/part-1.parquet"), stray.join("part-1.parquet")).unwrap();
        let w = Warehouse::open(root, Vec::new(), 1 << 28).await.unwrap();
        assert_eq!(ids(&w).await, (1, 1));
        assert_eq!(remove_leftovers(root, Duration::ZERO).unwrap(), 1);
    }

    #[tokio::test]
    async fn retention_drops_whole_old_days_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for day in [1, 10, 20, 23] {
            crate::sink::write_events(root, "part-1.parquet", &[event(day as u128, day, "c01")], offset()).unwrap();
        }
        let w = Warehouse::open(root, Vec::new(), 1 << 28).await.unwrap();
        let cfg = MaintenanceConfig { retention_days: 10, ..MaintenanceConfig::default() };
        let report = run(root, &cfg, NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(), GRACE).unwrap();
        assert_eq!(report.partitions_expired, 2); // 1 and 10 November; 17 November is the oldest kept
        let days = w.query_json("SELECT DISTINCT date FROM events ORDER BY date").await.unwrap();
        assert_eq!(days.iter().map(|r| r["date"].as_str().unwrap()).collect::<Vec<_>>(), ["2026-11-20", "2026-11-23"]);
        presence_matches_events(&w, root).await;
        let keep_all = MaintenanceConfig { retention_days: 0, ..MaintenanceConfig::default() };
        assert_eq!(run(root, &keep_all, NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(), GRACE).unwrap().partitions_expired, 0);
    }
}

//! The audit log: every API data request with its principal and outcome, every SQL query with
//! its text, and every refusal (missing or unknown token, a foreign school) with the client's
//! address. One JSON object per line in `<dir>/audit-YYYY-MM-DD.jsonl` (UTC days), written by
//! one thread in batches, each batch flushed and fsynced before the next is taken.
//!
//! A request waits for room in the writer's queue rather than go unrecorded: if the disk
//! stalls, the API slows down instead of forgetting who asked what. Tokens are never written;
//! a principal is named by its configured name.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::CloudError;
use crate::metrics::CloudMetrics;

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// An authenticated `/api/v1` request, with its status and duration.
    Request,
    /// A query on the SQL endpoint, with its text.
    Sql,
    /// A request refused: no token, an unknown one (a failed login), or a school the caller may
    /// not see.
    Denied,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Request => "request",
            AuditAction::Sql => "sql",
            AuditAction::Denied => "denied",
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: DateTime<Utc>,
    pub action: AuditAction,
    /// The principal's configured name; absent when none was authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The peer address, where the server knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Path and query string.
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why a request was refused (`missing_token`, `unknown_token`, `foreign_school`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
}

impl AuditRecord {
    /// A record of `action` on `target` now, with every optional field empty.
    pub fn new(action: AuditAction, target: impl Into<String>) -> Self {
        Self {
            time: Utc::now(),
            action,
            principal: None,
            role: None,
            client: None,
            target: target.into(),
            status: None,
            reason: None,
            sql: None,
            ok: None,
            secs: None,
        }
    }
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
}

/// Records queued for the writer before requests wait.
const QUEUE: usize = 10_000;

impl AuditLog {
    /// Starts the writer thread on `dir` (created if missing). It ends once every [`AuditLog`]
    /// clone is dropped and the queue is written.
    pub fn start(dir: &Path, metrics: CloudMetrics) -> Result<(Self, std::thread::JoinHandle<()>), CloudError> {
        Self::start_retaining(dir, 0, metrics)
    }

    /// [`AuditLog::start`], deleting day files older than `retention_days` (0: keep every day)
    /// at start and whenever a new day's file is opened.
    pub fn start_retaining(
        dir: &Path,
        retention_days: u32,
        metrics: CloudMetrics,
    ) -> Result<(Self, std::thread::JoinHandle<()>), CloudError> {
        std::fs::create_dir_all(dir).map_err(CloudError::io(dir))?;
        expire(dir, chrono::Utc::now().date_naive(), retention_days).map_err(CloudError::io(dir))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let dir = dir.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(dir, retention_days, rx, metrics))
            .map_err(|e| CloudError::Io { path: "audit writer thread".into(), source: e })?;
        Ok((Self { tx }, writer))
    }

    /// Queues `record`, waiting for room if the writer is behind.
    pub async fn record(&self, record: AuditRecord) {
        if self.tx.send(record).await.is_err() {
            tracing::error!("audit writer has stopped; record not written");
        }
    }
}

/// The file of `day`.
pub fn file_for(dir: &Path, day: NaiveDate) -> PathBuf {
    dir.join(format!("audit-{day}.jsonl"))
}

/// Reads every record of `day` (for tests and the operator).
pub fn read_day(dir: &Path, day: NaiveDate) -> Result<Vec<AuditRecord>, CloudError> {
    let path = file_for(dir, day);
    let text = std::fs::read_to_string(&path).map_err(CloudError::io(&path))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| CloudError::Query(format!("{} line {}: {e}", path.display(), i + 1))))
        .collect()
}

/// Deletes the day files of days before `today - retention_days` (none when it is 0); returns
/// how many. Only `audit-YYYY-MM-DD.jsonl` names are touched.
pub fn expire(dir: &Path, today: NaiveDate, retention_days: u32) -> std::io::Result<u64> {
    if retention_days == 0 {
        return Ok(0);
    }
    let oldest_kept = today - chrono::Days::new(u64::from(retention_days));
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let day = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("audit-")?.strip_suffix(".jsonl"))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        if day.is_some_and(|d| d < oldest_kept) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn write_loop(dir: PathBuf, retention_days: u32, mut rx: mpsc::Receiver<AuditRecord>, metrics: CloudMetrics) {
    let mut open: Option<(NaiveDate, std::fs::File)> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        let newest = batch.last().map(|r| r.time.date_naive());
        if newest.is_some_and(|d| open.as_ref().is_some_and(|(o, _)| *o != d))
            && let Err(e) = expire(&dir, newest.expect("checked"), retention_days)
        {
            tracing::warn!(error = %e, dir = %dir.display(), "old audit files not deleted");
        }
        if let Err(e) = write_batch(&dir, &mut open, &batch) {
            metrics.audit_write_errors.inc();
            tracing::error!(error = %e, records = batch.len(), dir = %dir.display(), "audit records not written");
            open = None;
            continue;
        }
        for r in &batch {
            metrics.audit_records.with_label_values(&[r.action.as_str()]).inc();
        }
    }
}

fn write_batch(dir: &Path, open: &mut Option<(NaiveDate, std::fs::File)>, batch: &[AuditRecord]) -> std::io::Result<()> {
    for r in batch {
        let day = r.time.date_naive();
        if open.as_ref().is_none_or(|(d, _)| *d != day) {
            if let Some((_, f)) = open.take() {
                f.sync_data()?;
            }
            let f = std::fs::OpenOptions::new().create(true).append(true).open(file_for(dir, day))?;
            *open = Some((day, f));
        }
        let (_, f) = open.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
    }
    if let Some((_, f)) = open.as_ref() {
        f.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_older_than_the_retention_are_deleted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["audit-2026-10-27.jsonl", "audit-2026-10-28.jsonl", "audit-2026-11-27.jsonl", "notes.txt", "audit-latest.jsonl"] {
            std::fs::write(dir.path().join(name), "{}\n").unwrap();
        }
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert_eq!(expire(dir.path(), today, 0).unwrap(), 0, "0 keeps every day");
        assert_eq!(expire(dir.path(), today, 30).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["audit-2026-10-28.jsonl", "audit-2026-11-27.jsonl", "audit-latest.jsonl", "notes.txt"]);
    }

    #[tokio::test]
    async fn records_are_written_one_per_line_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = CloudMetrics::new();
        let (log, writer) = AuditLog::start(dir.path(), metrics.clone()).unwrap();
        let mut sql = AuditRecord::new(AuditAction::Sql, "/api/v1/sql");
        sql.principal = Some("c01-hub".into());
        sql.sql = Some("SELECT 1\n-- a comment".into());
        sql.ok = Some(true);
        let mut denied = AuditRecord::new(AuditAction::Denied, "/api/v1/summary");
        denied.reason = Some("unknown_token".into());
        denied.client = Some("10.0.0.7:51234".into());
        log.record(sql.clone()).await;
        log.record(denied.clone()).await;
        drop(log);
        writer.join().unwrap();
        let back = read_day(dir.path(), sql.time.date_naive()).unwrap();
        assert_eq!(back, vec![sql, denied]);
        assert_eq!(metrics.audit_records.with_label_values(&["denied"]).get(), 1);
    }
}

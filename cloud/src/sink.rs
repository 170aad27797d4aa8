//! Durable Parquet files: written to a temporary name, fsynced, renamed into place, and the
//! directory fsynced, so a reader (or a crash) never sees a partial file.

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchReader};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use crate::CloudError;

/// The events table's directory under a warehouse root.
pub const EVENTS: &str = "events";
/// The presence table's directory: per events file, the rooms with a heartbeat in it.
pub const PRESENCE: &str = "presence";

/// Reads a Parquet file of the warehouse into one batch: only `columns` when given, else all.
pub fn read_parquet(path: &Path, columns: Option<&[&str]>) -> Result<RecordBatch, CloudError> {
    let err = |e: &dyn std::fmt::Display| CloudError::Parquet { path: path.display().to_string(), message: e.to_string() };
    let file = File::open(path).map_err(CloudError::io(path))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(&e))?;
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(|e| err(&e))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| err(&e))?;
    Ok(concat_batches(&schema, &batches)?)
}

/// Writes `batch` as `dir/name` atomically, zstd-compressed; returns the final path and its size
/// in bytes.
pub fn write_parquet_atomic(dir: &Path, name: &str, batch: &RecordBatch) -> Result<(PathBuf, u64), CloudError> {
    write_atomic(dir, name, batch, Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")))
}

/// Writes a presence file (a few hundred short rows) atomically, uncompressed: zstd's
/// contexts cost more than they save on a file this small, to write (0.50 against 0.35 ms of
/// CPU a file, fsyncs included) and again to read in every utilisation query.
pub fn write_presence_atomic(dir: &Path, name: &str, batch: &RecordBatch) -> Result<(PathBuf, u64), CloudError> {
    write_atomic(dir, name, batch, Compression::UNCOMPRESSED)
}

fn write_atomic(dir: &Path, name: &str, batch: &RecordBatch, compression: Compression) -> Result<(PathBuf, u64), CloudError> {
    std::fs::create_dir_all(dir).map_err(CloudError::io(dir))?;
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let file = File::create(&tmp_path).map_err(CloudError::io(&tmp_path))?;
    let props = WriterProperties::builder().set_compression(compression).set_max_row_group_row_count(Some(128 * 1024)).build();
    let parquet =
        |e: datafusion::parquet::errors::ParquetError| CloudError::Parquet { path: tmp_path.display().to_string(), message: e.to_string() };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet)?;
    writer.write(batch).map_err(parquet)?;
    let file = writer.into_inner().map_err(parquet)?;
    file.sync_all().map_err(CloudError::io(&tmp_path))?;
    let size = file.metadata().map_err(CloudError::io(&tmp_path))?.len();
    drop(file);
    std::fs::rename(&tmp_path, &final_path).map_err(CloudError::io(&final_path))?;
    // The next query of this process must see the file (or its new contents).
    crate::warehouse::forget_file_listings();
    File::open(dir).and_then(|d| d.sync_all()).map_err(CloudError::io(dir))?;
    Ok((final_path, size))
}

/// Writes `events` into the warehouse at `root` as `events/date=…/city=…/{name}`, one file per
/// partition, each atomically, and each partition's presence rows as `presence/…/{name}`;
/// returns (events files, bytes of both). Ingest names files after the Kafka offsets they
/// hold, so a re-read after a crash overwrites rather than duplicates.
///
/// A partition's presence file is written before its events file: after a crash between the
/// two, presence names a room-day whose events the replay is about to write, rather than
/// events being visible without the days they were on. Maintenance writes a presence file for
/// an events file without one and removes one whose events file is gone
/// (`maintenance::reconcile_presence`).
pub fn write_events(
    root: &Path,
    name: &str,
    events: &[crate::batch::StoredEvent],
    offset: chrono::FixedOffset,
) -> Result<(u64, u64), CloudError> {
    let (mut files, mut bytes) = (0, 0);
    for (key, part) in crate::batch::partition(events, offset) {
        let presence = crate::batch::build_presence(part.iter().copied())?;
        let (_, presence_size) = write_presence_atomic(&root.join(PRESENCE).join(key.dir()), name, &presence)?;
        let batch = crate::batch::build_batch(part)?;
        let (_, size) = write_parquet_atomic(&root.join(EVENTS).join(key.dir()), name, &batch)?;
        files += 1;
        bytes += size + presence_size;
    }
    Ok((files, bytes))
}

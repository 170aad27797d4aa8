//! edubrain-wal: a segmented, checksummed, append-only log with group commit and
//! out-of-order confirmation. Two users:
//!
//! - the edge's write-ahead log: an event is acknowledged to its terminal only once it is here
//!   and fsynced; it is deleted only after Kafka confirmed it;
//! - the terminal agent's outbox: an event is deleted only after the edge said it is durable.
//!
//! Layout of the directory:
//! - `{first_seq:020}.wal`: segments. Each record is framed as
//!   `[payload len u32 LE][crc32 u32 LE of seq+payload][seq u64 LE][payload]`. Sequence numbers
//!   increase by one per append, across segments.
//! - `confirmed`: a checkpoint, the lowest sequence number not yet confirmed (records below it
//!   are not replayed). Written by rename; when it is stale, more is replayed, never less.
//! - `damaged/`: bytes that failed their checksum at open, kept for inspection, never dropped
//!   silently.
//!
//! Why segments: deletion of confirmed data is a file unlink, never a rewrite; why a checkpoint
//! only as a hint: a crash between confirm and checkpoint replays records a second time, which
//! the consumers' `event_id` dedup absorbs, while a checkpoint that ran ahead would lose data.
//!
//! Recovery at [`Wal::open`] reads every segment, checks every frame, and on a bad frame scans
//! forward for the next valid one, so one flipped bit costs one record, not the rest of the log.
//! A damaged segment is rewritten with only its valid records, so the damage is reported once.
//!
//! [`Outstanding`] tracks which sequence numbers are unconfirmed (here, and in the edge's
//! shipper for records in flight).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

mod outstanding;
pub use outstanding::Outstanding;

const HEADER: usize = 16;
const SEGMENT_EXT: &str = "wal";
const CHECKPOINT: &str = "confirmed";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log holds `max_bytes` of unconfirmed data; the caller must stop accepting (and stop
    /// acknowledging) until confirmations free a segment.
    #[error("WAL {dir} is full: {disk_bytes} bytes of unconfirmed records (limit {max_bytes})")]
    Full { dir: PathBuf, disk_bytes: u64, max_bytes: u64 },
    #[error("WAL record of {len} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("WAL options: {0}")]
    Options(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Sizes of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed (and a new one started) once it reaches this size.
    pub segment_bytes: u64,
    /// Capacity: appends fail with [`WalError::Full`] beyond this many bytes on disk.
    pub max_bytes: u64,
    /// Largest payload; also bounds what recovery believes a length field.
    pub max_record_bytes: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self { segment_bytes: 16 << 20, max_bytes: 1 << 30, max_record_bytes: 1 << 20 }
    }
}

impl WalOptions {
    fn check(&self) -> Result<(), WalError> {
        if self.segment_bytes < 4096 {
            return Err(WalError::Options(format!("segment_bytes = {} is below 4096", self.segment_bytes)));
        }
        // Only whole segments are freed, so capacity must hold at least a few of them.
        if self.max_bytes < 3 * self.segment_bytes {
            return Err(WalError::Options(format!(
                "max_bytes = {} must be at least 3 x segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            )));
        }
        if u64::from(self.max_record_bytes) + HEADER as u64 > self.segment_bytes {
            return Err(WalError::Options(format!(
                "max_record_bytes = {} does not fit in a segment of {} bytes",
                self.max_record_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

/// What recovery found damaged in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    /// Byte offset of the first bad byte in the segment.
    pub offset: u64,
    pub bytes: u64,
    /// Damage at the very end of the newest segment is what a crash mid-write leaves (a torn
    /// tail); anywhere else it is corruption.
    pub torn_tail: bool,
    /// Where the bad bytes were saved.
    pub saved_to: PathBuf,
}

/// What [`Wal::open`] recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records not yet confirmed (at or after the checkpoint), in sequence order.
    pub records: Vec<(u64, Vec<u8>)>,
    pub damage: Vec<Damage>,
}

#[derive(Debug)]
struct Segment {
    /// Highest sequence number in the segment, if any.
    last_seq: Option<u64>,
    path: PathBuf,
    bytes: u64,
}

/// The log. Not thread-safe by design: one owner appends, commits and confirms.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    writer: BufWriter<File>,
    next_seq: u64,
    /// Appended (and recovered) records not yet confirmed.
    outstanding: Outstanding,
    /// The checkpoint last written.
    checkpointed: u64,
    uncommitted: bool,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and recovers what was not confirmed.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        options.check()?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let checkpoint = read_checkpoint(dir)?;
        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        let paths = list_segments(dir)?;
        let count = paths.len();
        let mut next_seq = checkpoint;
        for (i, (first_seq, path)) in paths.into_iter().enumerate() {
            let newest = i + 1 == count;
            let (records, damage, bytes) = recover_segment(dir, &path, first_seq, newest, options.max_record_bytes)?;
            let last_seq = records.last().map(|(s, _)| *s);
            if let Some(l) = last_seq {
                next_seq = next_seq.max(l + 1);
            }
            next_seq = next_seq.max(first_seq);
            recovered.damage.extend(damage);
            recovered.records.extend(records.into_iter().filter(|(s, _)| *s >= checkpoint));
            segments.push_back(Segment { last_seq, path, bytes });
        }
        let outstanding = recovered.records.iter().map(|(s, _)| *s).collect();
        // Append to the newest segment, or start one named after the next sequence number.
        if segments.back().is_none_or(|s| s.bytes >= options.segment_bytes) {
            segments.push_back(create_segment(dir, next_seq)?);
        }
        let active = segments.back().expect("at least one segment");
        let file = OpenOptions::new().append(true).open(&active.path).map_err(io_err(&active.path))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments,
            writer: BufWriter::with_capacity(256 * 1024, file),
            next_seq,
            outstanding,
            checkpointed: checkpoint,
            uncommitted: false,
        };
        for d in &recovered.damage {
            tracing::error!(segment = %d.segment.display(), offset = d.offset, bytes = d.bytes, torn_tail = d.torn_tail,
                saved_to = %d.saved_to.display(), "WAL damage found at open; the valid records around it were kept");
        }
        Ok((wal, recovered))
    }

    /// Appends one record (buffered; durable only after [`Wal::commit`]). Returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        if payload.len() > self.options.max_record_bytes as usize {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.options.max_record_bytes });
        }
        let frame = (HEADER + payload.len()) as u64;
        if self.disk_bytes() + frame > self.options.max_bytes {
            return Err(WalError::Full { dir: self.dir.clone(), disk_bytes: self.disk_bytes(), max_bytes: self.options.max_bytes });
        }
        if self.segments.back().expect("active segment").bytes + frame > self.options.segment_bytes {
            self.roll()?;
        }
        let seq = self.next_seq;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(payload);
        let active = self.segments.back_mut().expect("active segment");
        let mut header = [0u8; HEADER];
        header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        header[8..16].copy_from_slice(&seq.to_le_bytes());
        self.writer.write_all(&header).and_then(|_| self.writer.write_all(payload)).map_err(io_err(&active.path))?;
        active.bytes += frame;
        active.last_seq = Some(seq);
        self.next_seq += 1;
        self.outstanding.insert(seq);
        self.uncommitted = true;
        Ok(seq)
    }

    /// Whether `payload_len` more bytes fit without exceeding the capacity.
    pub fn has_room_for(&self, payload_len: usize) -> bool {
        self.disk_bytes() + (HEADER + payload_len) as u64 <= self.options.max_bytes
    }

    /// Makes every appended record durable (write + fdatasync): the group commit.
    pub fn commit(&mut self) -> Result<(), WalError> {
        if !self.uncommitted {
            return Ok(());
        }
        let path = self.segments.back().expect("active segment").path.clone();
        self.writer.flush().map_err(io_err(&path))?;
        self.writer.get_ref().sync_data().map_err(io_err(&path))?;
        self.uncommitted = false;
        Ok(())
    }

    /// Marks a record as delivered downstream. Order does not matter.
    pub fn confirm(&mut self, seq: u64) {
        self.outstanding.remove(seq);
    }

    /// The lowest sequence number not yet confirmed (everything below is).
    pub fn confirmed_below(&self) -> u64 {
        self.outstanding.first().unwrap_or(self.next_seq)
    }

    /// Deletes segments whose records are all confirmed (never the one being written), then
    /// writes the checkpoint if it moved. Returns how many segments were deleted.
    pub fn truncate(&mut self) -> Result<usize, WalError> {
        let below = self.confirmed_below();
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let done = oldest.last_seq.is_none_or(|l| l < below);
            if !done {
                break;
            }
            fs::remove_file(&oldest.path).map_err(io_err(&oldest.path))?;
            self.segments.pop_front();
            deleted += 1;
        }
        if deleted > 0 || below != self.checkpointed {
            self.checkpoint()?;
        }
        Ok(deleted)
    }

    /// Records the confirmed position so a restart replays less. Not fsynced: a stale
    /// checkpoint only means more replay.
    pub fn checkpoint(&mut self) -> Result<(), WalError> {
        let below = self.confirmed_below();
        if below == self.checkpointed {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{CHECKPOINT}.tmp"));
        let mut bytes = below.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&below.to_le_bytes()).to_le_bytes());
        fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
        let dst = self.dir.join(CHECKPOINT);
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        self.checkpointed = below;
        Ok(())
    }

    /// Bytes of all segments on disk (confirmed records count until their segment is deleted).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn max_bytes(&self) -> u64 {
        self.options.max_bytes
    }

    /// Records appended or recovered and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.outstanding.len()
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn roll(&mut self) -> Result<(), WalError> {
        self.commit()?;
        let segment = create_segment(&self.dir, self.next_seq)?;
        let file = OpenOptions::new().append(true).open(&segment.path).map_err(io_err(&segment.path))?;
        self.writer = BufWriter::with_capacity(256 * 1024, file);
        self.segments.push_back(segment);
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Best effort on a clean close; durability never depends on it.
        let _ = self.commit();
        let _ = self.checkpoint();
    }
}

/// Reads committed records in sequence order while a [`Wal`] keeps appending in the same
/// directory: for a shipper that fell behind the writer, or replays after a failure. It
/// remembers where its last read ended (segment and byte offset), so tailing the log reads each
/// byte once, in chunks of about `chunk_bytes`: memory stays bounded by the chunk, not the
/// segment. Reading from anywhere else starts at the beginning of the segment holding it.
/// Stops at the first incomplete frame, which is a write in progress; the caller bounds what it
/// trusts by the sequence numbers the writer has committed.
#[derive(Debug)]
pub struct WalReader {
    dir: PathBuf,
    max_record_bytes: u32,
    chunk_bytes: usize,
    /// Where the last read ended: (first sequence number of the segment, byte offset, the
    /// sequence number of the frame there).
    at: Option<(u64, u64, u64)>,
}

impl WalReader {
    pub fn new(dir: &Path, max_record_bytes: u32, chunk_bytes: usize) -> Self {
        // A chunk always holds at least one whole frame.
        let chunk_bytes = chunk_bytes.max(HEADER + max_record_bytes as usize);
        Self { dir: dir.to_path_buf(), max_record_bytes, chunk_bytes, at: None }
    }

    /// Records with sequence numbers `>= from`, oldest first: about one chunk of them, at least
    /// one if any is there, and none only when there is nothing at or after `from` yet.
    pub fn read(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let segments = list_segments(&self.dir)?;
        let holding = |from: u64| segments.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
        let (mut index, mut offset) = match self.at {
            Some((segment, offset, next)) if next == from => match segments.iter().position(|(first, _)| *first == segment) {
                Some(i) => (i, offset),
                None => (holding(from), 0),
            },
            _ => (holding(from), 0),
        };
        while let Some((first, path)) = segments.get(index) {
            let mut buf = Vec::with_capacity(self.chunk_bytes);
            let read = File::open(path).and_then(|mut f| {
                io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
                io::Read::read_to_end(&mut io::Read::take(f, self.chunk_bytes as u64), &mut buf)
            });
            match read {
                Ok(_) => {}
                // Deleted after every record in it was confirmed: nothing there for a reader.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    (index, offset) = (index + 1, 0);
                    continue;
                }
                Err(e) => return Err(WalError::Io { path: path.clone(), source: e }),
            }
            let mut out = Vec::new();
            let mut pos = 0;
            while let Some((seq, payload)) = frame_at(&buf, pos, self.max_record_bytes) {
                if seq >= from {
                    out.push((seq, payload.to_vec()));
                }
                pos += HEADER + payload.len();
            }
            offset += pos as u64;
            if let Some((last, _)) = out.last() {
                self.at = Some((*first, offset, last + 1));
                return Ok(out);
            }
            // Nothing at or after `from` here: read on in this segment while whole frames came
            // (skipping older records), else go to the next one if the writer started it.
            if pos == 0 || buf.len() < self.chunk_bytes && pos == buf.len() {
                if index + 1 == segments.len() {
                    break;
                }
                (index, offset) = (index + 1, 0);
            }
        }
        Ok(Vec::new())
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, WalError> {
    let path = dir.join(segment_name(first_seq));
    File::create(&path).map_err(io_err(&path))?;
    // The new file's directory entry must survive a crash, or records acked in it would vanish.
    sync_dir(dir)?;
    Ok(Segment { last_seq: None, path, bytes: 0 })
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        if let Some(seq) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn read_checkpoint(dir: &Path) -> Result<u64, WalError> {
    let path = dir.join(CHECKPOINT);
    match fs::read(&path) {
        Ok(b) if b.len() == 12 => {
            let seq = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
            if crc == crc32fast::hash(&b[0..8]) {
                return Ok(seq);
            }
            tracing::warn!(path = %path.display(), "WAL checkpoint fails its checksum; replaying the whole log");
            Ok(0)
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "WAL checkpoint has the wrong size; replaying the whole log");
            Ok(0)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(WalError::Io { path, source: e }),
    }
}

/// A frame at `pos` if it is complete and its checksum holds.
fn frame_at(buf: &[u8], pos: usize, max_record: u32) -> Option<(u64, &[u8])> {
    let header = buf.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    if len > max_record {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq_bytes = &header[8..16];
    let payload = buf.get(pos + HEADER..pos + HEADER + len as usize)?;
    let mut h = crc32fast::Hasher::new();
    h.update(seq_bytes);
    h.update(payload);
    (h.finalize() == crc).then(|| (u64::from_le_bytes(seq_bytes.try_into().expect("8 bytes")), payload))
}

type SegmentRecovery = (Vec<(u64, Vec<u8>)>, Vec<Damage>, u64);

/// Reads one segment; on damage, keeps every valid frame around it, saves the bad bytes and
/// rewrites the segment with the valid frames only.
fn recover_segment(dir: &Path, path: &Path, first_seq: u64, newest: bool, max_record: u32) -> Result<SegmentRecovery, WalError> {
    let buf = fs::read(path).map_err(io_err(path))?;
    let mut records = Vec::new();
    let mut bad: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    // Sequence numbers only increase; a frame that passes its checksum with a lower one is a
    // stale leftover, not data.
    let mut min_seq = first_seq;
    while pos < buf.len() {
        if let Some((seq, payload)) = frame_at(&buf, pos, max_record).filter(|(s, _)| *s >= min_seq) {
            records.push((seq, payload.to_vec()));
            min_seq = seq + 1;
            pos += HEADER + payload.len();
            continue;
        }
        let resume = (pos + 1..buf.len()).find(|&p| frame_at(&buf, p, max_record).is_some_and(|(s, _)| s >= min_seq));
        let end = resume.unwrap_or(buf.len());
        bad.push((pos, end));
        pos = end;
    }
    if bad.is_empty() {
        return Ok((records, Vec::new(), buf.len() as u64));
    }
    let damaged_dir = dir.join("damaged");
    fs::create_dir_all(&damaged_dir).map_err(io_err(&damaged_dir))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("segment").to_string();
    let mut damage = Vec::new();
    for (start, end) in &bad {
        let saved_to = damaged_dir.join(format!("{stem}.at-{start}.bin"));
        fs::write(&saved_to, &buf[*start..*end]).map_err(io_err(&saved_to))?;
        damage.push(Damage {
            segment: path.to_path_buf(),
            offset: *start as u64,
            bytes: (end - start) as u64,
            torn_tail: newest && *end == buf.len(),
            saved_to,
        });
    }
    // Rewrite the segment with the valid frames (temp, fsync, rename, fsync dir).
    let tmp = path.with_extension("rewrite");
    let mut out = Vec::with_capacity(buf.len());
    let mut from = 0;
    for (start, end) in &bad {
        out.extend_from_slice(&buf[from..*start]);
        from = *end;
    }
    out.extend_from_slice(&buf[from..]);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&out).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)?;
    Ok((records, damage, out.len() as u64))
}

#[cfg(test)]
mod tests;

//! One connection's active segment: created on the first record, rotated into `.flushed` by
//! size (`-ingest.segment-flush-size`) or age (`-ingest.segment-flush-age`).

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::IngestLog;
use super::sync::SyncGroup;
use crate::record::ULID_LEN;

/// When to rotate an active segment.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Rotate once the segment holds at least this many bytes.
    pub flush_size: u64,
    /// Rotate a non-empty segment this long after its first write.
    pub flush_age: Duration,
}

#[derive(Debug)]
struct Active {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    since: Instant,
    /// The greatest ULID written, when writes tell ([`SegmentWriter::write_stamped`]).
    last: Option<[u8; ULID_LEN]>,
    /// Whether every record so far was written in ULID order.
    sorted: bool,
}

/// The order of records handed to [`SegmentWriter::write_stamped`].
#[derive(Clone, Copy, Debug)]
pub struct Order {
    /// The least ULID among them.
    pub least: [u8; ULID_LEN],
    /// The greatest.
    pub greatest: [u8; ULID_LEN],
    /// Whether they are in ULID order among themselves.
    pub sorted: bool,
}

/// Writes complete records into a connection's active segment.
#[derive(Debug)]
pub struct SegmentWriter {
    log: Arc<IngestLog>,
    rotation: Rotation,
    active: Option<Active>,
}

impl SegmentWriter {
    /// A writer with no segment yet (the file is created on the first write).
    pub fn new(log: Arc<IngestLog>, rotation: Rotation) -> Self {
        SegmentWriter {
            log,
            rotation,
            active: None,
        }
    }

    /// Append complete records, in ULID order after those written before (the raw ports'
    /// own ULIDs); rotates when the segment reaches the flush size.
    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        self.append(records, None)
    }

    /// Append complete records in any `order` (the push protocols' event times): a segment
    /// they leave out of ULID order is flushed sorted ([`IngestLog::close`]).
    pub fn write_stamped(&mut self, records: &[u8], order: Order) -> io::Result<()> {
        self.append(records, Some(order))
    }

    fn append(&mut self, records: &[u8], order: Option<Order>) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let active = match &mut self.active {
            Some(a) => a,
            None => {
                let (file, path) = self.log.create()?;
                self.active.insert(Active {
                    file: Arc::new(file),
                    path,
                    len: 0,
                    since: Instant::now(),
                    last: None,
                    sorted: true,
                })
            }
        };
        if let Err(e) = (&*active.file).write_all(records) {
            // Disk full or an I/O error: cut off the part of this write that made it, so the
            // segment still ends with a complete record, and write the next records right
            // there (the file position is past the cut: writing there would leave a hole of
            // zero bytes inside the segment).
            let _ = active.file.set_len(active.len);
            let _ = (&*active.file).seek(io::SeekFrom::Start(active.len));
            return Err(e);
        }
        active.len += records.len() as u64;
        if let Some(o) = order {
            active.sorted &= o.sorted && active.last.is_none_or(|l| l <= o.least);
            active.last = Some(active.last.map_or(o.greatest, |l| l.max(o.greatest)));
        }
        if active.len >= self.rotation.flush_size {
            self.close()?;
        }
        Ok(())
    }

    /// fsync what was written so far, in the group's next pass (durable connections).
    pub async fn sync(&mut self, group: &SyncGroup) -> io::Result<()> {
        match &self.active {
            Some(a) => group.sync_async(Arc::clone(&a.file)).await,
            None => Ok(()),
        }
    }

    /// fsync what was written so far, in the group's next pass, from a thread that may block.
    pub fn sync_blocking(&mut self, group: &SyncGroup) -> io::Result<()> {
        match &self.active {
            Some(a) => group.sync(Arc::clone(&a.file)),
            None => Ok(()),
        }
    }

    /// Rotate if the segment is older than the flush age.
    pub fn tick(&mut self) -> io::Result<()> {
        match &self.active {
            Some(a) if a.since.elapsed() >= self.rotation.flush_age => self.close(),
            _ => Ok(()),
        }
    }

    /// Whether a segment is open (so closing it has work to do).
    pub fn is_open(&self) -> bool {
        self.active.is_some()
    }

    /// How long until [`SegmentWriter::tick`] has work to do.
    pub fn until_rotation(&self) -> Option<Duration> {
        self.active
            .as_ref()
            .map(|a| self.rotation.flush_age.saturating_sub(a.since.elapsed()))
    }

    /// Close the active segment into `.flushed` (sync, rename, sync the directory).
    pub fn close(&mut self) -> io::Result<()> {
        match self.active.take() {
            Some(a) => {
                // The sync thread holds a clone only while a pass runs, and this connection
                // waits for its passes: the file is ours again here.
                let file = Arc::try_unwrap(a.file)
                    .map_err(|_| io::Error::other("segment still being synced"))?;
                self.log.close(file, &a.path, a.len, a.sorted)
            }
            None => Ok(()),
        }
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing ingest segment");
        }
    }
}

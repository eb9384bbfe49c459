//! Retention (`-store.segment-retain`): segments whose newest record is older than the
//! longest retention go to the trash.

use std::io;

use super::Compacter;
use crate::record::{ULID_LEN, min_ulid};
use crate::store::log::FLUSHED;

impl Compacter {
    /// Segments whose newest record is older than this ULID are past retention.
    pub(super) fn retention_cutoff(&self) -> [u8; ULID_LEN] {
        let now = crate::gotime::now_ms().max(0) as u64;
        let longest = self.cfg.retention.longest();
        min_ulid(now.saturating_sub(longest.as_millis() as u64))
    }

    pub(super) fn trash(&self) -> io::Result<usize> {
        let cutoff = self.retention_cutoff();
        let old = self.log.scan(&[FLUSHED], |s| s.high < cutoff)?;
        for s in &old {
            self.log.trash(s)?;
            tracing::info!(segment = %s.path.display(), "segment past retention moved to trash");
        }
        self.metrics.store_trashed_segments.inc_by(old.len() as u64);
        Ok(old.len())
    }
}

//! Purge: trashed segments deleted once older than `-store.segment-purge`; the directory is
//! listed for it anyway, so files that cannot be segments are set aside (`.bad`) and segments
//! an operator copied in are indexed in the same step.

use std::io;

use super::Compacter;

impl Compacter {
    /// Set aside malformed names, index what was copied in, delete old trash; the segments
    /// deleted.
    pub(super) fn purge(&self) -> io::Result<usize> {
        self.quarantine_malformed_names()?;
        self.log.reconcile()?;
        let n = self.log.purge(self.cfg.purge)?;
        self.metrics.store_purged_segments.inc_by(n as u64);
        Ok(n)
    }

    fn quarantine_malformed_names(&self) -> io::Result<()> {
        for (path, reason) in self.log.malformed_names()? {
            self.log.quarantine(&path, reason)?;
            self.metrics.store_quarantined_files.inc();
        }
        Ok(())
    }
}

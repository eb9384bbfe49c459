//! Ingest segment files and their states.
//!
//! ```text
//! <uuid>.active ──close──▶ <uuid>.flushed ──take_oldest──▶ <uuid>.pending ──commit──▶ (deleted)
//!                                   ▲                              │
//!                                   └────────────fail──────────────┘
//! ```
//!
//! Each state is a file suffix and each transition a rename, so recovery needs no journal: at
//! start-up `.active` files are truncated to their last `\n` and, like `.pending` ones, become
//! `.flushed`.
//!
//! A flushed segment is sorted by ULID, as store nodes (ours and the original's) expect. The
//! raw ports write in ULID order; the push protocols file each record under its own time, so
//! their active segment may be out of order: closing it (or recovering it) then writes its
//! records sorted into `<uuid>.sorting`, syncs it and renames it `.flushed`, and only then
//! deletes the `.active` file. A crash in between leaves the `.active` file, recovered again;
//! a leftover `.sorting` file is deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::disk::{self, DataDir, OpenError, io_at};

/// Suffix of a segment being written.
pub const ACTIVE: &str = "active";
/// Suffix of a complete segment waiting for a consumer.
pub const FLUSHED: &str = "flushed";
/// Suffix of a segment claimed by a consumer.
pub const PENDING: &str = "pending";
/// Suffix of an out-of-order segment's records being written sorted (deleted at recovery).
pub const SORTING: &str = "sorting";
/// Suffix added to a file set aside: kept for an operator, never read.
pub const BAD: &str = "bad";

/// The ingest directory: its lock and its segment files.
#[derive(Debug)]
pub struct IngestLog {
    dir: DataDir,
}

/// Counts of segments and bytes per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// `.active` files and their bytes.
    pub active: (u64, u64),
    /// `.flushed` files and their bytes.
    pub flushed: (u64, u64),
    /// `.pending` files and their bytes.
    pub pending: (u64, u64),
    /// Files set aside as `.bad`.
    pub bad: (u64, u64),
}

impl IngestLog {
    /// Lock `dir` (creating it) and recover leftovers from an earlier run.
    pub fn open(dir: &Path) -> Result<IngestLog, OpenError> {
        let log = IngestLog {
            dir: DataDir::lock(dir)?,
        };
        log.recover(disk::state_files(dir)?)?;
        Ok(log)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Act on each of the directory's `files` by its state (see the module docs).
    fn recover(&self, files: Vec<disk::StateFile>) -> Result<(), OpenError> {
        for disk::StateFile {
            path,
            stem,
            state,
            regular,
        } in files
        {
            let (path, stem, state) = (&path, stem.as_str(), state.as_str());
            if !disk::is_uuid(stem) {
                continue;
            }
            if matches!(state, ACTIVE | FLUSHED | PENDING) && !regular {
                self.quarantine(path).map_err(io_at(path))?;
                continue;
            }
            match state {
                ACTIVE => {
                    let len = truncate_to_last_newline(path).map_err(io_at(path))?;
                    if len == 0 {
                        fs::remove_file(path).map_err(io_at(path))?;
                        continue;
                    }
                    tracing::info!(segment = %path.display(), bytes = len, "recovered active ingest segment");
                    let records = fs::read(path).map_err(io_at(path))?;
                    if is_sorted(&records) {
                        disk::rename_durably(path, &self.path(stem, FLUSHED))
                            .map_err(io_at(path))?;
                    } else {
                        self.flush_sorted(&records, path).map_err(io_at(path))?;
                    }
                }
                SORTING => fs::remove_file(path).map_err(io_at(path))?,
                PENDING => {
                    let to = self.path(stem, FLUSHED);
                    disk::rename_durably(path, &to).map_err(io_at(path))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn path(&self, stem: &str, state: &str) -> PathBuf {
        self.dir.join(format!("{stem}.{state}"))
    }

    /// Create a new, empty `.active` segment.
    pub fn create(&self) -> io::Result<(File, PathBuf)> {
        let path = self.path(&disk::new_uuid(), ACTIVE);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        Ok((file, path))
    }

    /// Close an active segment: sync it, rename it `.flushed`, sync the directory; an empty one
    /// is deleted instead. One whose records are not `sorted` is flushed sorted (module docs).
    pub fn close(&self, file: File, path: &Path, len: u64, sorted: bool) -> io::Result<()> {
        if len == 0 {
            drop(file);
            return fs::remove_file(path);
        }
        if !sorted {
            drop(file);
            let records = fs::read(path)?;
            return self.flush_sorted(&records, path);
        }
        let stem = stem_of(path)?;
        disk::sync_rename(&file, path, &self.path(stem, FLUSHED))
    }

    /// Write `records` (the active segment at `active`) sorted by ULID into `.sorting`, sync,
    /// rename it `.flushed`, and delete `active`.
    fn flush_sorted(&self, records: &[u8], active: &Path) -> io::Result<()> {
        let stem = stem_of(active)?;
        let sorting = self.path(stem, SORTING);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&sorting)?;
        let mut lines: Vec<&[u8]> = records.split_inclusive(|&b| b == b'\n').collect();
        // Stable: records of one millisecond keep the order they were written in.
        lines.sort_by(|a, b| ulid_of(a).cmp(ulid_of(b)));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        for line in lines {
            out.write_all(line)?;
        }
        out.flush()?;
        drop(out);
        disk::sync_rename(&file, &sorting, &self.path(stem, FLUSHED))?;
        fs::remove_file(active)?;
        disk::sync_dir(&self.dir)
    }

    /// Claim the oldest flushed segment (by modification time): rename it `.pending` and return
    /// its path. `Ok(None)` when none is flushed.
    pub fn take_oldest(&self) -> io::Result<Option<PathBuf>> {
        let now = SystemTime::now();
        let mut oldest: Option<(SystemTime, PathBuf)> = None;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if !matches!(split_name(&path), Some((_, FLUSHED))) {
                continue;
            }
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                // A directory or FIFO named like a segment: no consumer could ever read it.
                self.quarantine(&path)?;
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue; // consumed concurrently
            };
            let mtime = meta.modified().unwrap_or(now);
            if oldest.as_ref().is_none_or(|(t, _)| mtime < *t) {
                oldest = Some((mtime, path));
            }
        }
        let Some((_, path)) = oldest else {
            return Ok(None);
        };
        let to = self.path(stem_of(&path)?, PENDING);
        fs::rename(&path, &to)?;
        Ok(Some(to))
    }

    /// Set aside a file that cannot be a segment as `<name>.bad` (never opened: a FIFO would
    /// block), so that it never stalls the consumers.
    fn quarantine(&self, path: &Path) -> io::Result<()> {
        let mut to = path.as_os_str().to_owned();
        to.push(".");
        to.push(BAD);
        fs::rename(path, &to)?;
        tracing::error!(file = %path.display(), quarantined = %Path::new(&to).display(),
            reason = "not a regular file", "quarantined a bad ingest file");
        disk::sync_dir(&self.dir)
    }

    /// A consumer committed a pending segment: delete it.
    pub fn commit(&self, pending: &Path) -> io::Result<()> {
        fs::remove_file(pending)?;
        disk::sync_dir(&self.dir)
    }

    /// A consumer failed a pending segment: make it flushed again.
    pub fn fail(&self, pending: &Path) -> io::Result<()> {
        let to = self.path(stem_of(pending)?, FLUSHED);
        disk::rename_durably(pending, &to)
    }

    /// Segment counts and bytes per state.
    pub fn stats(&self) -> io::Result<LogStats> {
        let mut s = LogStats::default();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let slot = match split_name(&path) {
                Some((_, ACTIVE)) => &mut s.active,
                Some((_, FLUSHED)) => &mut s.flushed,
                Some((_, PENDING)) => &mut s.pending,
                _ if path.extension().is_some_and(|e| e == BAD) => &mut s.bad,
                _ => continue,
            };
            slot.0 += 1;
            slot.1 += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(s)
    }
}

/// `(uuid, state)` of an ingest segment file name; `None` for other files (LOCK, strays).
fn split_name(path: &Path) -> Option<(&str, &str)> {
    let name = path.file_name()?.to_str()?;
    let (stem, state) = name.rsplit_once('.')?;
    disk::is_uuid(stem).then_some((stem, state))
}

fn stem_of(path: &Path) -> io::Result<&str> {
    split_name(path)
        .map(|(stem, _)| stem)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an ingest segment name"))
}

/// Truncate a file after its last `\n` (dropping a torn final record); returns the new length.
/// A record line's ULID (its first 26 bytes; a shorter line is all key).
fn ulid_of(line: &[u8]) -> &[u8] {
    &line[..line.len().min(crate::record::ULID_LEN)]
}

/// Whether `records` (whole lines) are in ULID order.
fn is_sorted(records: &[u8]) -> bool {
    let mut prev: &[u8] = &[];
    for line in records.split_inclusive(|&b| b == b'\n') {
        let id = ulid_of(line);
        if id < prev {
            return false;
        }
        prev = id;
    }
    true
}

fn truncate_to_last_newline(path: &Path) -> io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end != len {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid_named(dir: &Path, state: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(format!("{}.{state}", disk::new_uuid()));
        fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn out_of_order_segments_are_flushed_sorted_on_close_and_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let a = "01BX5ZZKBKACTAV9WEVGEMMVR0 t a\n";
        let b = "01BX5ZZKBKACTAV9WEVGEMMVR1 t b\n";
        let c = "01BX5ZZKBKACTAV9WEVGEMMVS0 t c\n";
        let sorted = format!("{a}{b}{c}");
        // Left by a crash: out of order, its last record torn; and a stray `.sorting`.
        let active = uuid_named(dir.path(), ACTIVE, format!("{c}{a}{b}01BX5Z").as_bytes());
        let stray = uuid_named(dir.path(), SORTING, b"half");
        let log = IngestLog::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(active.with_extension(FLUSHED)).unwrap(),
            sorted
        );
        assert!(!active.exists() && !stray.exists());
        // Closed by its writer, which knows it is out of order.
        let (mut f, p) = log.create().unwrap();
        f.write_all(format!("{b}{c}{a}").as_bytes()).unwrap();
        log.close(f, &p, 93, false).unwrap();
        assert_eq!(
            fs::read_to_string(p.with_extension(FLUSHED)).unwrap(),
            sorted
        );
        assert!(!p.exists());
        assert_eq!(log.stats().unwrap().flushed, (2, 186));
        assert!(is_sorted(sorted.as_bytes()) && !is_sorted(format!("{b}{a}").as_bytes()));
    }

    #[test]
    fn recover_segments() {
        let dir = tempfile::tempdir().unwrap();
        let active = uuid_named(dir.path(), ACTIVE, b"A x\nB torn");
        let pending = uuid_named(dir.path(), PENDING, b"P\n");
        let flushed = uuid_named(dir.path(), FLUSHED, b"F\n");
        let empty = uuid_named(dir.path(), ACTIVE, b"no newline at all");
        fs::write(dir.path().join("IGNORED.ignored"), b"x").unwrap();
        let log = IngestLog::open(dir.path()).unwrap();
        let flushed_of = |p: &Path| p.with_extension(FLUSHED);
        assert_eq!(fs::read(flushed_of(&active)).unwrap(), b"A x\n");
        assert_eq!(fs::read(flushed_of(&pending)).unwrap(), b"P\n");
        assert_eq!(fs::read(&flushed).unwrap(), b"F\n");
        assert!(!empty.exists() && !flushed_of(&empty).exists());
        assert!(dir.path().join("IGNORED.ignored").exists());
        assert!(dir.path().join("LOCK").exists());
        assert_eq!(log.stats().unwrap().flushed, (3, 8));
        // A second process on the same directory is refused.
        let err = IngestLog::open(dir.path()).unwrap_err();
        assert!(matches!(err, OpenError::Locked { .. }));
    }

    #[test]
    fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::open(dir.path()).unwrap();
        assert_eq!(log.take_oldest().unwrap(), None);
        let (mut f, p) = log.create().unwrap();
        io::Write::write_all(&mut f, b"rec\n").unwrap();
        log.close(f, &p, 4, true).unwrap();
        let (f2, p2) = log.create().unwrap();
        log.close(f2, &p2, 0, true).unwrap();
        assert!(!p2.exists(), "empty segments are deleted");
        let pending = log.take_oldest().unwrap().unwrap();
        assert!(pending.to_str().unwrap().ends_with(".pending"));
        assert_eq!(log.take_oldest().unwrap(), None);
        log.fail(&pending).unwrap();
        let again = log.take_oldest().unwrap().unwrap();
        assert_eq!(again, pending);
        log.commit(&again).unwrap();
        assert_eq!(log.stats().unwrap(), LogStats::default());
    }

    #[test]
    fn files_that_are_not_regular_are_set_aside_not_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let at_start = d.join(format!("{}.active", disk::new_uuid()));
        fs::create_dir(&at_start).unwrap();
        let log = IngestLog::open(d).unwrap();
        assert!(!at_start.exists(), "quarantined at start-up");
        // Ones that appear later (oldest first, so a consumer would pick them first).
        let as_dir = d.join(format!("{}.flushed", disk::new_uuid()));
        fs::create_dir(&as_dir).unwrap();
        let fifo = d.join(format!("{}.flushed", disk::new_uuid()));
        let c = std::ffi::CString::new(fifo.clone().into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid, NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let good = uuid_named(d, FLUSHED, b"rec\n");
        let taken = log.take_oldest().unwrap().expect("the good segment");
        assert_eq!(taken, good.with_extension(PENDING));
        assert_eq!(log.take_oldest().unwrap(), None);
        assert_eq!(log.stats().unwrap().bad.0, 3, "counted as bad");
        assert!(Path::new(&format!("{}.bad", as_dir.display())).is_dir());
    }
}

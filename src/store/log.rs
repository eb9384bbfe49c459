//! Store segment files, their names and states.
//!
//! ```text
//! <uuid>.active ──close──▶ <LOW>-<HIGH>.flushed ◀──claim/release──▶ <LOW>-<HIGH>.reading
//!                                │          ▲                                │
//!                                │          └── <uuid>.converting (renamed in under the input's name)
//!                                ├──trash──▶ <LOW>-<HIGH>.trashed ──purge──▶ (deleted)
//!                                └──quarantine──▶ <name>.bad   (never opened again)
//! <uuid>.consuming        a consumer's spool file: never queried, deleted at start-up
//! <uuid>.converting       a conversion's output: deleted at start-up (its input is still there)
//! ```
//!
//! `docs/data-directory.md` has every state with what start-up does with it.
//!
//! The name of a flushed segment is its time index: the first and last ULID it holds. Names stay
//! exactly the original's so either implementation can read the other's directory. The
//! queryable segments (`.flushed` and `.reading`) are also kept in memory ([`Index`]), built at
//! start-up and changed only by the renames in this module, so planning a query costs
//! O(log n + segments in range) however many segments the directory holds. A query takes its
//! segment list under the read side of `segments`; anything that renames segments in or out
//! takes the write side for the rename and the index change together. Files added to the
//! directory by hand are picked up by [`StoreLog::reconcile`], which the lifecycle task runs
//! now and then.
//!
//! Only regular files are ever opened. Anything else with a segment's name (a directory, a
//! FIFO, a socket, a device, a symlink) is quarantined by a rename, which never opens it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use memmap2::Mmap;

use crate::disk::{self, DataDir, OpenError, io_at};
use crate::merge;
use crate::record::{ULID_LEN, check_record, is_valid_ulid, min_ulid, ulid_ms};
use crate::segment::{Format, Reader, Records, check_ends};

/// Suffix of a segment being written.
pub const ACTIVE: &str = "active";
/// Suffix of a queryable segment.
pub const FLUSHED: &str = "flushed";
/// Suffix of a segment claimed by compaction or retention (still queried).
pub const READING: &str = "reading";
/// Suffix of a consumer's spool file.
pub const CONSUMING: &str = "consuming";
/// Suffix of a segment moved out by retention, deleted after `-store.segment-purge`.
pub const TRASHED: &str = "trashed";
/// Suffix of a quarantined file: kept for an operator, never read again.
pub const BAD: &str = "bad";
/// Suffix of a segment being converted to another format: deleted at start-up.
pub const CONVERTING: &str = "converting";

/// A flushed (or reading) segment: its ULID range, size and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// First ULID.
    pub low: [u8; ULID_LEN],
    /// Last ULID.
    pub high: [u8; ULID_LEN],
    /// File size in bytes.
    pub size: u64,
    /// Raw (v1) or compressed (v2, v3 or v4).
    pub format: Format,
    /// Compressed in an older version than the one written now (v2): rewritten in the
    /// background.
    pub stale: bool,
}

/// A segment selected for a query, with its reader (`None`: empty or unreadable).
pub type OpenedSegment = (Segment, Option<Arc<Reader<Mmap>>>);

/// Threads that open a query's segments not opened before.
const OPEN_THREADS: usize = 8;

/// Open the segment files at `paths` a few at a time, each file's first reads asked of the
/// kernel before any is opened: one result per path, in order (`None`: its thread failed).
fn open_all(paths: &[&Path]) -> Vec<Option<io::Result<Option<Reader<Mmap>>>>> {
    for p in paths {
        crate::segment::prefetch_footer(p);
    }
    let threads = paths.len().min(OPEN_THREADS);
    let mut out: Vec<Option<io::Result<Option<Reader<Mmap>>>>> =
        paths.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..paths.len())
                        .step_by(threads)
                        .map(|i| (i, Reader::open_file(paths[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().unwrap_or_default() {
                out[i] = Some(r);
            }
        }
    });
    out
}

/// Parse `<LOW>-<HIGH>.<state>`.
pub fn parse_name(name: &str) -> Option<([u8; ULID_LEN], [u8; ULID_LEN], &str)> {
    let (stem, state) = name.rsplit_once('.')?;
    let (low, high) = stem.split_once('-')?;
    if !is_valid_ulid(low.as_bytes()) || !is_valid_ulid(high.as_bytes()) {
        return None;
    }
    Some((
        low.as_bytes().try_into().ok()?,
        high.as_bytes().try_into().ok()?,
        state,
    ))
}

/// Build `<LOW>-<HIGH>.<state>`.
pub fn build_name(low: &[u8; ULID_LEN], high: &[u8; ULID_LEN], state: &str) -> String {
    format!(
        "{}-{}.{state}",
        String::from_utf8_lossy(low),
        String::from_utf8_lossy(high)
    )
}

/// Whether `[a_lo, a_hi]` and `[b_lo, b_hi]` overlap (inclusive; swapped bounds normalised).
pub fn overlap<T: Ord + Copy>(a: (T, T), b: (T, T)) -> bool {
    let (a_lo, a_hi) = (a.0.min(a.1), a.0.max(a.1));
    let (b_lo, b_hi) = (b.0.min(b.1), b.0.max(b.1));
    a_lo <= b_hi && b_lo <= a_hi
}

/// The queryable segments (`.flushed` and `.reading`), ordered by (low, high, path).
#[derive(Debug, Default)]
pub struct Index {
    segments: BTreeMap<([u8; ULID_LEN], [u8; ULID_LEN], PathBuf), Segment>,
    /// How many segments span each number of milliseconds (high − low): the widest tells how
    /// far before a window's start an overlapping segment can begin.
    spans: BTreeMap<u64, usize>,
}

impl Index {
    fn key(s: &Segment) -> ([u8; ULID_LEN], [u8; ULID_LEN], PathBuf) {
        (s.low, s.high, s.path.clone())
    }

    fn span(s: &Segment) -> u64 {
        ulid_ms(&s.high).saturating_sub(ulid_ms(&s.low))
    }

    /// Add (or replace) a segment.
    fn insert(&mut self, seg: Segment) {
        let span = Self::span(&seg);
        if self.segments.insert(Self::key(&seg), seg).is_none() {
            *self.spans.entry(span).or_default() += 1;
        }
    }

    /// Remove the segment at `path` (named `<LOW>-<HIGH>.<state>`), if indexed.
    fn remove(&mut self, path: &Path) -> Option<Segment> {
        let name = path.file_name()?.to_str()?;
        let (low, high, _) = parse_name(name)?;
        let seg = self.segments.remove(&(low, high, path.to_path_buf()))?;
        let span = Self::span(&seg);
        if let Some(n) = self.spans.get_mut(&span) {
            *n -= 1;
            if *n == 0 {
                self.spans.remove(&span);
            }
        }
        Some(seg)
    }

    /// Segments overlapping `[from_ms, to_ms]`, sorted by (low, high).
    pub fn overlapping(&self, from_ms: u64, to_ms: u64) -> Vec<Segment> {
        let widest = self.spans.keys().next_back().copied().unwrap_or(0);
        let start = min_ulid(from_ms.saturating_sub(widest));
        self.segments
            .range((start, [0; ULID_LEN], PathBuf::new())..)
            .map(|(_, s)| s)
            .take_while(|s| ulid_ms(&s.low) <= to_ms)
            .filter(|s| overlap((ulid_ms(&s.low), ulid_ms(&s.high)), (from_ms, to_ms)))
            .cloned()
            .collect()
    }

    /// How many segments are indexed.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether no segment is indexed.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// The store directory.
#[derive(Debug)]
pub struct StoreLog {
    dir: DataDir,
    /// The queryable segments; its lock guards the set of queryable names (see the module
    /// docs).
    pub segments: RwLock<Index>,
    /// Files quarantined while opening the directory.
    pub quarantined_at_start: std::sync::atomic::AtomicU64,
    /// Mappings of queryable segments, kept between queries: a segment's page tables are
    /// then built once, not on every query (at 2 GB, re-mapping cost more than the search).
    /// Entries are dropped whenever their file is renamed or removed.
    maps: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<Reader<Mmap>>>>,
    /// The streams of each segment, read as it is stored ([`super::labels`]).
    labels: super::labels::LabelIndex,
}

impl StoreLog {
    /// The label index of the segments.
    pub fn labels(&self) -> &super::labels::LabelIndex {
        &self.labels
    }

    /// The queryable segment at `path`, if it is one.
    fn indexed(&self, path: &Path) -> Option<Segment> {
        let name = path.file_name()?.to_str()?;
        let (low, high, _) = parse_name(name)?;
        let index = self.segments.read().unwrap_or_else(|p| p.into_inner());
        index
            .segments
            .get(&(low, high, path.to_path_buf()))
            .cloned()
    }

    /// Read the streams of the segment just stored at `path` into the label index (outside
    /// the segment lock; a failure costs a read when the streams are asked for, nothing else).
    fn index_labels(&self, path: &Path) {
        if let Some(seg) = self.indexed(path)
            && let Err(e) = self.labels.index(&seg)
        {
            tracing::warn!(segment = %path.display(), error = %e, "reading a segment's stream labels");
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lock `dir` (creating it) and recover leftovers from an earlier run.
    pub fn open(dir: &Path) -> Result<StoreLog, OpenError> {
        let log = StoreLog {
            dir: DataDir::lock(dir)?,
            segments: RwLock::new(Index::default()),
            quarantined_at_start: std::sync::atomic::AtomicU64::new(0),
            maps: Default::default(),
            labels: super::labels::LabelIndex::new(dir),
        };
        log.recover(disk::state_files(dir)?)?;
        // Index files of segments gone while the node was down (removed, quarantined).
        let live = log.overlapping(0, u64::MAX >> 16).map_err(io_at(dir))?;
        log.labels.sweep(&live);
        Ok(log)
    }

    /// Act on each of the directory's `files` by its state (see the module docs).
    fn recover(&self, files: Vec<disk::StateFile>) -> Result<(), OpenError> {
        for f in files {
            let (path, stem, state) = (&f.path, f.stem.as_str(), f.state.as_str());
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let ours = match state {
                ACTIVE | CONSUMING | CONVERTING => disk::is_uuid(stem),
                FLUSHED | READING | TRASHED => parse_name(name).is_some(),
                _ => false,
            };
            if ours && !f.regular {
                // Never opened: a FIFO would block, a directory fail.
                self.quarantine(path, "not a regular file")
                    .map_err(io_at(path))?;
                self.quarantined_at_start
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            match state {
                ACTIVE if disk::is_uuid(stem) => self.recover_active(path).map_err(io_at(path))?,
                READING if parse_name(name).is_some() => {
                    let to = path.with_extension(FLUSHED);
                    disk::rename_durably(path, &to).map_err(io_at(path))?;
                }
                CONSUMING | CONVERTING if disk::is_uuid(stem) => {
                    fs::remove_file(path).map_err(io_at(path))?;
                }
                _ => {}
            }
        }
        // A flushed segment must start with its low ULID and end with a complete record
        // carrying its high one; anything else (torn, garbage, renamed by hand) is set aside.
        let segs = self.list(&[FLUSHED], |_| true).map_err(io_at(&self.dir))?;
        let mut index = Index::default();
        for s in segs {
            if let Err(reason) =
                check_ends(&s.path, s.format, &s.low, &s.high).map_err(io_at(&s.path))?
            {
                self.quarantine(&s.path, reason).map_err(io_at(&s.path))?;
                self.quarantined_at_start
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                index.insert(s);
            }
        }
        *self.segments.write().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(())
    }

    /// Bring the index in line with the directory: segments added by hand (or by another
    /// program) are indexed, vanished ones dropped. Returns how many entries changed. The
    /// directory is compared under the read lock (queries go on); only a difference takes the
    /// write lock, and each one is checked again under it.
    pub fn reconcile(&self) -> io::Result<usize> {
        let mut on_disk = std::collections::HashSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if parse_name(name).is_some_and(|(_, _, st)| st == FLUSHED || st == READING)
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                on_disk.insert(entry.path());
            }
        }
        let (gone, new): (Vec<PathBuf>, Vec<PathBuf>) = {
            let index = self.segments.read().unwrap_or_else(|p| p.into_inner());
            let indexed: std::collections::HashSet<&PathBuf> =
                index.segments.values().map(|s| &s.path).collect();
            (
                indexed
                    .iter()
                    .filter(|p| !on_disk.contains(**p))
                    .map(|p| (*p).clone())
                    .collect(),
                on_disk
                    .iter()
                    .filter(|p| !indexed.contains(p))
                    .cloned()
                    .collect(),
            )
        };
        if gone.is_empty() && new.is_empty() {
            return Ok(0);
        }
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = 0;
        for p in gone {
            if !p.exists() && index.remove(&p).is_some() {
                changed += 1;
            }
        }
        for p in new {
            let Some((low, high, _)) = p.file_name().and_then(|n| n.to_str()).and_then(parse_name)
            else {
                continue;
            };
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue; // renamed meanwhile
            };
            if !meta.is_file() || index.segments.contains_key(&(low, high, p.clone())) {
                continue;
            }
            tracing::info!(segment = %p.display(), "indexed a segment found in the directory");
            let (format, stale) = Format::of_file_stale(&p);
            index.insert(Segment {
                path: p,
                low,
                high,
                size: meta.len(),
                format,
                stale,
            });
            changed += 1;
        }
        Ok(changed)
    }

    /// Truncate an active segment to its last complete, well-formed, sorted record, then name
    /// it by its range (or delete it if nothing is left).
    fn recover_active(&self, path: &Path) -> io::Result<()> {
        let mut reader = BufReader::new(File::open(path)?);
        let mut line = Vec::new();
        let (mut good, mut low, mut high) = (0u64, None, None::<[u8; ULID_LEN]>);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let Ok(id) = check_record(&line[..n - 1]) else {
                break;
            };
            let id: [u8; ULID_LEN] = id.try_into().unwrap_or([0; ULID_LEN]);
            if high.is_some_and(|h| id < h) {
                break;
            }
            low.get_or_insert(id);
            high = Some(id);
            good += n as u64;
        }
        let (Some(low), Some(high)) = (low, high) else {
            tracing::info!(segment = %path.display(), "deleting empty active store segment");
            return fs::remove_file(path);
        };
        let file = OpenOptions::new().write(true).open(path)?;
        if file.metadata()?.len() != good {
            tracing::warn!(segment = %path.display(), kept = good, "truncating torn active store segment");
            file.set_len(good)?;
        }
        self.close(file, path, &low, &high)
    }

    /// A new `<uuid>.<state>` file for writing (`ACTIVE` or `CONSUMING`).
    pub fn create(&self, state: &str) -> io::Result<(File, PathBuf)> {
        let path = self.dir.join(format!("{}.{state}", disk::new_uuid()));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok((file, path))
    }

    /// Make a complete, checked segment file this process wrote elsewhere in the directory
    /// (the consumer's aggregate spool) queryable, without copying it: it is hard-linked in as
    /// `.active` (recovered like any other after a crash) and closed. `spool` stays.
    pub fn adopt(
        &self,
        spool: &Path,
        low: &[u8; ULID_LEN],
        high: &[u8; ULID_LEN],
    ) -> io::Result<()> {
        let path = self.dir.join(format!("{}.{ACTIVE}", disk::new_uuid()));
        fs::hard_link(spool, &path)?;
        let file = File::open(&path)?;
        let result = self.close(file, &path, low, high);
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Make a complete active segment queryable as `<LOW>-<HIGH>.flushed`.
    ///
    /// If that name exists (a retried replication, or a compaction that produced the same
    /// range), identical bytes are discarded; otherwise both are merged with dedup and the
    /// result replaces the name. The original failed here (500, then a stray `.active`).
    pub fn close(
        &self,
        file: File,
        path: &Path,
        low: &[u8; ULID_LEN],
        high: &[u8; ULID_LEN],
    ) -> io::Result<()> {
        self.close_as(file, path, low, high, Format::Raw)
    }

    /// [`StoreLog::close`] of a segment written in `format` (merged with an existing one of
    /// the same name, the result is raw).
    pub fn close_as(
        &self,
        file: File,
        path: &Path,
        low: &[u8; ULID_LEN],
        high: &[u8; ULID_LEN],
        format: Format,
    ) -> io::Result<()> {
        let target = self.dir.join(build_name(low, high, FLUSHED));
        self.rename_in(file, path, &target, (low, high), format)?;
        self.index_labels(&target);
        Ok(())
    }

    /// [`StoreLog::close_as`]'s renames, under the segment lock.
    fn rename_in(
        &self,
        file: File,
        path: &Path,
        target: &Path,
        (low, high): (&[u8; ULID_LEN], &[u8; ULID_LEN]),
        format: Format,
    ) -> io::Result<()> {
        let target = target.to_path_buf();
        file.sync_all()?;
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if !target.exists() {
            fs::rename(path, &target)?;
            let size = fs::metadata(&target)?.len();
            let stale = format == Format::Compressed && Format::of_file_stale(&target).1;
            index.insert(Segment {
                path: target,
                low: *low,
                high: *high,
                size,
                format,
                stale,
            });
            return disk::sync_dir(&self.dir);
        }
        self.forget(&target);
        if same_contents(path, &target)? {
            tracing::debug!(segment = %target.display(), "replica already stored; discarding the copy");
            return fs::remove_file(path);
        }
        let (mut out, out_path) = self.create(ACTIVE)?;
        let result = (|| {
            let mut sources = [Records::open(&target)?, Records::open(path)?];
            let mut w = BufWriter::new(&mut out);
            merge::merge(&mut sources, |l| w.write_all(l).map(|_| true))?;
            w.flush()?;
            drop(w);
            out.sync_all()?;
            fs::rename(&out_path, &target)?;
            index.insert(Segment {
                size: fs::metadata(&target)?.len(),
                format: Format::Raw,
                stale: false,
                path: target.clone(),
                low: *low,
                high: *high,
            });
            fs::remove_file(path)?;
            disk::sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&out_path);
        }
        result
    }

    /// Queryable segments (`.flushed` and `.reading`) whose range overlaps `[from_ms, to_ms]`,
    /// sorted by their low ULID. Files with unparseable names are skipped (the compacter
    /// quarantines them).
    pub fn overlapping(&self, from_ms: u64, to_ms: u64) -> io::Result<Vec<Segment>> {
        let index = self.segments.read().unwrap_or_else(|p| p.into_inner());
        Ok(index.overlapping(from_ms, to_ms))
    }

    /// [`StoreLog::overlapping`], with each segment mapped while the segment set cannot change
    /// (so compaction cannot delete an input between listing and opening it). `None` for an
    /// empty file, and for a compressed file whose footer cannot be read (damaged since
    /// start-up), counted in the second value.
    pub fn open_overlapping(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> io::Result<(Vec<OpenedSegment>, u64)> {
        let index = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let segs = index.overlapping(from_ms, to_ms);
        // The mappings not cached yet are opened a few at a time: a cold footer is three
        // reads, and one segment after another a cold query's first 16 segments took 0.13 s.
        let cached: Vec<Option<Arc<Reader<Mmap>>>> = {
            let maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
            segs.iter()
                .map(|s| maps.get(&s.path).filter(|m| m.len() == s.size).cloned())
                .collect()
        };
        let missing: Vec<&Path> = segs
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(s, _)| s.path.as_path())
            .collect();
        let mut opened = open_all(&missing).into_iter();
        let mut out = Vec::with_capacity(segs.len());
        let mut unreadable = 0;
        for (s, cached) in segs.into_iter().zip(cached) {
            if let Some(m) = cached {
                out.push((s, Some(m)));
                continue;
            }
            let Some(result) = opened.next().flatten() else {
                // Its thread failed: served as nothing, reported.
                out.push((s, None));
                unreadable += 1;
                continue;
            };
            match result {
                Ok(Some(m)) => {
                    let m = Arc::new(m);
                    self.maps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(s.path.clone(), Arc::clone(&m));
                    out.push((s, Some(m)));
                }
                Ok(None) => out.push((s, None)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // Checked at start-up; damaged since. Served as nothing, reported.
                    tracing::error!(segment = %s.path.display(), error = %e, "compressed segment unreadable");
                    out.push((s, None));
                    unreadable += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((out, unreadable))
    }

    /// Queryable segments still in the raw format.
    pub fn raw_segments(&self) -> usize {
        let index = self.segments.read().unwrap_or_else(|p| p.into_inner());
        index
            .segments
            .values()
            .filter(|s| s.format == Format::Raw)
            .count()
    }

    /// Drop the cached mapping of a file that is being renamed or removed.
    fn forget(&self, path: &Path) {
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }

    /// Segments in `states` with well-formed names that pass `keep`, sorted by (low, high):
    /// from the index for the queryable states, from the directory for the others.
    pub fn scan(
        &self,
        states: &[&str],
        keep: impl Fn(&Segment) -> bool,
    ) -> io::Result<Vec<Segment>> {
        if states.iter().all(|s| [FLUSHED, READING].contains(s)) {
            let index = self.segments.read().unwrap_or_else(|p| p.into_inner());
            return Ok(index
                .segments
                .values()
                .filter(|s| {
                    let state = s.path.extension().and_then(|e| e.to_str());
                    state.is_some_and(|st| states.contains(&st)) && keep(s)
                })
                .cloned()
                .collect());
        }
        self.list(states, keep)
    }

    /// [`StoreLog::scan`] of the directory itself: regular files only.
    fn list(&self, states: &[&str], keep: impl Fn(&Segment) -> bool) -> io::Result<Vec<Segment>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((low, high, state)) = parse_name(name) else {
                continue;
            };
            if !states.contains(&state) || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let (format, stale) = Format::of_file_stale(&entry.path());
            let seg = Segment {
                path: entry.path(),
                low,
                high,
                size: meta.len(),
                format,
                stale,
            };
            if keep(&seg) {
                out.push(seg);
            }
        }
        out.sort_by(|a, b| a.low.cmp(&b.low).then(a.high.cmp(&b.high)));
        Ok(out)
    }

    /// Rename `.flushed` segments to `.reading` (claimed by compaction or retention); those
    /// that vanished meanwhile are left out of the result.
    pub fn claim(&self, segs: &[Segment]) -> io::Result<Vec<Segment>> {
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(segs.len());
        for s in segs {
            let to = s.path.with_extension(READING);
            self.forget(&s.path);
            match fs::rename(&s.path, &to) {
                Ok(()) => {
                    index.remove(&s.path);
                    let claimed = Segment {
                        path: to,
                        ..s.clone()
                    };
                    index.insert(claimed.clone());
                    out.push(claimed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    index.remove(&s.path);
                }
                Err(e) => {
                    drop(index);
                    self.release(&out);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Swap a claimed (`.reading`) segment for a synced file holding the same records in
    /// `format` (a conversion): the file is renamed in as the segment's `.flushed` name, then
    /// the claimed one removed, under the write lock.
    pub fn replace(&self, claimed: &Segment, file: &Path, format: Format) -> io::Result<()> {
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let to = claimed.path.with_extension(FLUSHED);
        self.forget(&claimed.path);
        self.forget(&to);
        crate::failpoint::crash("convert-before-rename");
        fs::rename(file, &to)?;
        index.insert(Segment {
            size: fs::metadata(&to)?.len(),
            path: to.clone(),
            format,
            stale: false,
            ..claimed.clone()
        });
        crate::failpoint::crash("convert-before-remove");
        Self::unlink(&mut index, &claimed.path)?;
        disk::sync_dir(&self.dir)?;
        drop(index);
        // The same records: the same streams, under the new file's size.
        if let Some(new) = self.indexed(&to) {
            self.labels.moved(claimed, &new);
        }
        Ok(())
    }

    /// Give claimed (`.reading`) segments back as `.flushed`.
    pub fn release(&self, segs: &[Segment]) {
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        for s in segs {
            self.forget(&s.path);
            let to = s.path.with_extension(FLUSHED);
            match fs::rename(&s.path, &to) {
                Ok(()) => {
                    index.remove(&s.path);
                    index.insert(Segment {
                        path: to,
                        ..s.clone()
                    });
                }
                Err(e) => {
                    tracing::error!(segment = %s.path.display(), error = %e, "releasing a claimed segment");
                }
            }
        }
    }

    /// Delete claimed segments whose records now live elsewhere (compaction outputs).
    pub fn remove(&self, segs: &[Segment]) -> io::Result<()> {
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        for s in segs {
            self.forget(&s.path);
            Self::unlink(&mut index, &s.path)?;
            self.labels.forget(s);
        }
        disk::sync_dir(&self.dir)
    }

    /// Delete an indexed segment file (already gone is fine) and drop it from the index.
    fn unlink(index: &mut Index, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        index.remove(path);
        Ok(())
    }

    /// Move a segment out of the queryable set into the trash, stamped with the time of
    /// trashing (purge counts from it).
    pub fn trash(&self, seg: &Segment) -> io::Result<()> {
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let to = seg.path.with_extension(TRASHED);
        self.forget(&seg.path);
        fs::rename(&seg.path, &to)?;
        index.remove(&seg.path);
        self.labels.forget(seg);
        File::options()
            .write(true)
            .open(&to)?
            .set_modified(std::time::SystemTime::now())?;
        disk::sync_dir(&self.dir)
    }

    /// Delete trashed segments trashed more than `purge` ago; returns how many.
    pub fn purge(&self, purge: std::time::Duration) -> io::Result<usize> {
        let now = std::time::SystemTime::now();
        let mut n = 0;
        for s in self.scan(&[TRASHED], |_| true)? {
            let age = fs::metadata(&s.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age >= purge && fs::remove_file(&s.path).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Set aside a file that cannot be used (a malformed name or content) as `<name>.bad`:
    /// never deleted, never retried, out of every scan.
    pub fn quarantine(&self, path: &Path, reason: &str) -> io::Result<PathBuf> {
        let mut index = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut to = self.dir.join(format!("{stem}.{BAD}"));
        let mut i = 1;
        while to.exists() {
            to = self.dir.join(format!("{stem}.{i}.{BAD}"));
            i += 1;
        }
        self.forget(path);
        fs::rename(path, &to)?;
        index.remove(path);
        disk::sync_dir(&self.dir)?;
        tracing::error!(file = %path.display(), quarantined = %to.display(), reason, "quarantined a bad store file");
        Ok(to)
    }

    /// Files and bytes per state (`flushed`, `active`, `reading`, `consuming`, `trashed`,
    /// `bad`), for the metrics.
    pub fn stats(&self) -> io::Result<Vec<(&'static str, u64, u64)>> {
        let mut out: Vec<(&'static str, u64, u64)> =
            [FLUSHED, ACTIVE, READING, CONSUMING, TRASHED, BAD]
                .iter()
                .map(|&s| (s, 0, 0))
                .collect();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(state) = name
                .to_str()
                .and_then(|n| n.rsplit_once('.'))
                .map(|(_, s)| s)
            else {
                continue;
            };
            if let Some(slot) = out.iter_mut().find(|(s, _, _)| *s == state) {
                slot.1 += 1;
                slot.2 += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(out)
    }

    /// Files that look like segments (`.flushed`, `.reading`) but whose names do not parse.
    /// Files named like queryable segments that cannot be one: the name does not parse, or the
    /// file is not a regular file (a directory, a FIFO...). With the reason for each.
    pub fn malformed_names(&self) -> io::Result<Vec<(PathBuf, &'static str)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let state = name.rsplit_once('.').map(|(_, s)| s);
            if !matches!(state, Some(FLUSHED | READING)) {
                continue;
            }
            if parse_name(name).is_none() {
                out.push((path, "malformed segment name"));
            } else if !entry.file_type().is_ok_and(|t| t.is_file()) {
                out.push((path, "not a regular file"));
            }
        }
        Ok(out)
    }
}

/// A segment record for tests: `low`/`high` are ULID prefixes padded with `0`.
#[cfg(test)]
pub(crate) fn test_segment(low: &str, high: &str) -> Segment {
    let pad = |s: &str| -> [u8; ULID_LEN] { format!("{s:0<26}").as_bytes().try_into().unwrap() };
    Segment {
        path: format!("{low}-{high}").into(),
        low: pad(low),
        high: pad(high),
        size: 1,
        format: Format::Raw,
        stale: false,
    }
}

fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    fa.seek(SeekFrom::Start(0))?;
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_table() {
        // TestOverlap.
        let cases = [
            ((100, 200), (201, 301), false),
            ((100, 200), (199, 300), true),
            ((100, 200), (200, 300), true),
            ((300, 199), (200, 100), true),
            ((300, 201), (200, 100), false),
            ((200, 100), (199, 300), true),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlap(a, b), want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn recover_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let active = d.join(format!("{}.active", disk::new_uuid()));
        fs::write(
            &active,
            b"01ARYZ6S41TSV4RRFFQ69G5FAV One\n01ARYZ6S41TSV4RRFFZZZZZZZZ Two\n01ARYZ6S41TSV4RR torn",
        )
        .unwrap();
        let empty = d.join(format!("{}.active", disk::new_uuid()));
        fs::write(&empty, b"").unwrap();
        let reading = "01ARYZ6S41TSV4RRFFQ69G5FAV-01ARYZ6S41TSV4RRFFQ69G5FAW";
        fs::write(
            d.join(format!("{reading}.reading")),
            b"01ARYZ6S41TSV4RRFFQ69G5FAV a\n01ARYZ6S41TSV4RRFFQ69G5FAW b\n",
        )
        .unwrap();
        let spool = d.join(format!("{}.consuming", disk::new_uuid()));
        fs::write(&spool, b"spool").unwrap();
        for untouched in ["FLUSHED.flushed", "TRASHED.trashed", "IGNORED.ignored"] {
            fs::write(d.join(untouched), b"x").unwrap();
        }
        let _log = StoreLog::open(d).unwrap();
        let named = d.join("01ARYZ6S41TSV4RRFFQ69G5FAV-01ARYZ6S41TSV4RRFFZZZZZZZZ.flushed");
        assert_eq!(
            fs::read(named).unwrap(),
            b"01ARYZ6S41TSV4RRFFQ69G5FAV One\n01ARYZ6S41TSV4RRFFZZZZZZZZ Two\n"
        );
        assert!(!active.exists() && !empty.exists() && !spool.exists());
        assert!(d.join(format!("{reading}.flushed")).exists());
        for untouched in [
            "FLUSHED.flushed",
            "TRASHED.trashed",
            "IGNORED.ignored",
            "LOCK",
        ] {
            assert!(d.join(untouched).exists(), "{untouched}");
        }
        assert!(
            !d.join("00000000000000000000000000-00000000000000000000000000.flushed")
                .exists()
        );
    }

    #[test]
    fn names_round_trip_and_reject_junk() {
        let low = *b"01ARYZ6S41TSV4RRFFQ69G5FAV";
        let high = *b"01ARYZ6S41TSV4RRFFZZZZZZZZ";
        let name = build_name(&low, &high, FLUSHED);
        assert_eq!(parse_name(&name), Some((low, high, FLUSHED)));
        for bad in [
            "01ARYZ6S41TSV4RRFFQ69G5FAV-xxx.flushed",
            "LOCK",
            "a-b.flushed",
            "../x-y.flushed",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn close_collisions_are_idempotent_or_merged() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        let a = b"01ARYZ6S41TSV4RRFFQ69G5FAV A\n01ARYZ6S41TSV4RRFFZZZZZZZZ Z\n";
        let b = b"01ARYZ6S41TSV4RRFFQ69G5FAV A\n01ARYZ6S41TSV4RRFFQ69G5FAW B\n01ARYZ6S41TSV4RRFFZZZZZZZZ Z\n";
        let low = *b"01ARYZ6S41TSV4RRFFQ69G5FAV";
        let high = *b"01ARYZ6S41TSV4RRFFZZZZZZZZ";
        for content in [&a[..], &a[..], &b[..]] {
            let (mut f, p) = log.create(ACTIVE).unwrap();
            f.write_all(content).unwrap();
            log.close(f, &p, &low, &high).unwrap();
        }
        let segs = log.overlapping(0, u64::MAX).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(fs::read(&segs[0].path).unwrap(), b);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "labels")
            .collect();
        assert_eq!(names.len(), 2, "only the segment and LOCK: {names:?}");
    }

    #[test]
    fn corrupt_flushed_segments_are_quarantined_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, b) = ("01ARYZ6S41TSV4RRFFQ69G5FAV", "01ARYZ6S41TSV4RRFFQ69G5FAW");
        let good = format!("{a} one\n{b} two\n");
        let cases: &[(&str, String)] = &[
            ("good", good.clone()),
            ("torn", format!("{a} one\n{b} tw")),
            ("garbage", "this is not a segment at all, no\n".to_string()),
            ("wrong-last", format!("{a} one\n{a} two\n")),
            ("empty", String::new()),
        ];
        for (i, (_, content)) in cases.iter().enumerate() {
            let name = format!("{a}-{b}.flushed");
            let sub = d.join(format!("case{i}"));
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join(&name), content).unwrap();
            let log = StoreLog::open(&sub).unwrap();
            let quarantined = log
                .quarantined_at_start
                .load(std::sync::atomic::Ordering::Relaxed);
            let expect_bad = i != 0;
            assert_eq!(quarantined, u64::from(expect_bad), "case {}", cases[i].0);
            assert_eq!(sub.join(&name).exists(), !expect_bad, "case {}", cases[i].0);
            assert_eq!(
                sub.join(format!("{a}-{b}.bad")).exists(),
                expect_bad,
                "case {}",
                cases[i].0
            );
        }
    }

    #[test]
    fn the_index_answers_like_a_scan_of_every_segment() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut index = Index::default();
        let mut all = Vec::new();
        for i in 0..2000u64 {
            let low = rng.random_range(0..1_000_000u64);
            // Mostly narrow segments, a few wide ones (a long compaction output).
            let span = if i % 97 == 0 {
                rng.random_range(0..200_000)
            } else {
                rng.random_range(0..2_000)
            };
            let (lo, hi) = (encode(low, i), encode(low + span, i));
            let seg = Segment {
                path: PathBuf::from(build_name(&lo, &hi, FLUSHED)),
                low: lo,
                high: hi,
                size: 1,
                format: Format::Raw,
                stale: false,
            };
            index.insert(seg.clone());
            all.push(seg);
        }
        // Remove some, as compaction and retention do.
        for seg in all.iter().step_by(3) {
            let mut gone = index.clone_without(&seg.path);
            std::mem::swap(&mut index, &mut gone);
        }
        let live: Vec<&Segment> = all
            .iter()
            .skip(1)
            .step_by(3)
            .chain(all.iter().skip(2).step_by(3))
            .collect();
        assert_eq!(index.len(), live.len());
        for _ in 0..300 {
            let from = rng.random_range(0..1_100_000u64);
            let to = from + rng.random_range(0..50_000u64);
            let mut want: Vec<Segment> = live
                .iter()
                .filter(|s| overlap((ulid_ms(&s.low), ulid_ms(&s.high)), (from, to)))
                .map(|s| (*s).clone())
                .collect();
            want.sort_by(|a, b| (a.low, a.high, &a.path).cmp(&(b.low, b.high, &b.path)));
            assert_eq!(index.overlapping(from, to), want, "[{from}, {to}]");
        }
    }

    fn encode(ms: u64, n: u64) -> [u8; ULID_LEN] {
        crate::record::encode_ulid(ms, u128::from(n))
    }

    impl Index {
        /// The index without the segment at `path` (through `remove`, as the log does).
        fn clone_without(&self, path: &Path) -> Index {
            let mut copy = Index {
                segments: self.segments.clone(),
                spans: self.spans.clone(),
            };
            assert!(copy.remove(path).is_some(), "{}", path.display());
            copy
        }
    }

    #[test]
    fn files_that_are_not_regular_never_stop_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = "01ARYZ6S41TSV4RRFFQ69G5FAV-01ARYZ6S41TSV4RRFFQ69G5FAW";
        fs::write(
            d.join(format!("{good}.flushed")),
            b"01ARYZ6S41TSV4RRFFQ69G5FAV a\n01ARYZ6S41TSV4RRFFQ69G5FAW b\n",
        )
        .unwrap();
        let as_dir = "01ARYZ6S41TSV4RRFFQ69G5FB0-01ARYZ6S41TSV4RRFFQ69G5FB1.flushed";
        fs::create_dir(d.join(as_dir)).unwrap();
        let fifo = "01ARYZ6S41TSV4RRFFQ69G5FB2-01ARYZ6S41TSV4RRFFQ69G5FB3.flushed";
        let active_fifo = format!("{}.active", disk::new_uuid());
        for name in [fifo, active_fifo.as_str()] {
            let c =
                std::ffi::CString::new(d.join(name).into_os_string().into_encoded_bytes()).unwrap();
            // SAFETY: a valid, NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        // Opening a FIFO for reading would block here forever.
        let log = StoreLog::open(d).unwrap();
        assert_eq!(
            log.quarantined_at_start
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        let segs = log.overlapping(0, u64::MAX).unwrap();
        assert_eq!(segs.len(), 1, "{segs:?}");
        assert!(d.join(as_dir.replace(".flushed", ".bad")).is_dir());
        // One appearing while the store runs is set aside by the lifecycle's listing.
        let late = "01ARYZ6S41TSV4RRFFQ69G5FB4-01ARYZ6S41TSV4RRFFQ69G5FB5.reading";
        fs::create_dir(d.join(late)).unwrap();
        let found = log.malformed_names().unwrap();
        assert_eq!(found, vec![(d.join(late), "not a regular file")]);
        assert_eq!(log.reconcile().unwrap(), 0, "never indexed");
    }
}

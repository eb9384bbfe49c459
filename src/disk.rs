//! The durability points shared by the ingest and store logs: the data directory's `LOCK`,
//! fsync-then-rename-then-fsync-the-directory, and random segment names.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Errors opening a data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another live process holds the directory's lock.
    #[error("{path} is locked by another running oklog process; stop it or use another directory")]
    Locked {
        /// The LOCK file.
        path: PathBuf,
    },
    /// Any other I/O failure, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Attach a path to an I/O error.
pub fn io_at(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive `flock` on `<dir>/LOCK`, held until dropped. A LOCK file left by a dead process
/// is fine: the kernel released its lock when it died.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Create `dir` if needed and lock it.
    pub fn acquire(dir: &Path) -> Result<DirLock, OpenError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(OpenError::Locked { path }),
            Err(fs::TryLockError::Error(source)) => Err(OpenError::Io { path, source }),
        }
    }
}

/// A data directory, locked (its `LOCK`) for as long as this lives; derefs to its path.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: DirLock,
}

impl DataDir {
    /// Lock `dir`, creating it if needed.
    pub fn lock(dir: &Path) -> Result<DataDir, OpenError> {
        Ok(DataDir {
            _lock: DirLock::acquire(dir)?,
            path: dir.to_path_buf(),
        })
    }
}

impl AsRef<Path> for DataDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for DataDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// A file of a data directory named `<stem>.<state>`, as start-up recovery sees it.
#[derive(Debug)]
pub struct StateFile {
    /// Its path.
    pub path: PathBuf,
    /// The name before the last `.`.
    pub stem: String,
    /// The suffix after it: the file's state.
    pub state: String,
    /// Whether it is a regular file (anything else with a segment's name is never opened).
    pub regular: bool,
}

/// The files of `dir` named `<stem>.<state>` (others, such as `LOCK`, are left out), for
/// start-up recovery to act on by state.
pub fn state_files(dir: &Path) -> Result<Vec<StateFile>, OpenError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        let Some((stem, state)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('.'))
        else {
            continue;
        };
        let (stem, state) = (stem.to_string(), state.to_string());
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        out.push(StateFile {
            path,
            stem,
            state,
            regular,
        });
    }
    Ok(out)
}

/// fsync a directory, making the renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The named durability point: sync `file`, rename `from` to `to`, sync the directory.
/// A crash before the rename leaves `from` complete on disk; after it, `to`.
pub fn sync_rename(file: &File, from: &Path, to: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Rename and sync the directory (for files whose content is already durable).
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// A random version-4 UUID in canonical lower-case text, e.g.
/// `2c1b5f0e-8a7d-4c3b-9e2f-0123456789ab`.
pub fn new_uuid() -> String {
    let mut v: u128 = rand::random();
    v = (v & !(0xf << 76)) | (0x4 << 76); // version 4
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether `s` is a UUID in canonical lower-case text (what [`new_uuid`] makes).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_stale_lock_is_fine() {
        // TestLocking / TestLockBehavior.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("LOCK"), b"").unwrap(); // stale, unlocked
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("LOCK"), "{err}");
        assert!(matches!(err, OpenError::Locked { .. }));
        drop(first);
        assert!(dir.path().join("LOCK").exists(), "release keeps the file");
        DirLock::acquire(dir.path()).expect("relock after release");
    }

    #[test]
    fn uuids() {
        let a = new_uuid();
        assert!(is_uuid(&a), "{a}");
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uuid());
        assert!(!is_uuid("../../etc/passwd"));
        assert!(!is_uuid(&a.to_uppercase()));
        assert!(!is_uuid(&a[1..]));
    }
}

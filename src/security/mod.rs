//! What lets a node face a network: TLS on every TCP listener and for every client
//! ([`tls`]), bearer tokens with roles ([`auth`]), and the cluster key that authenticates and
//! encrypts gossip ([`key`]). Each is off until its flag is given (docs/security.md).
//!
//! Secret files (tokens, keys, the cluster key) must not be readable by other users; the
//! files that can change while a node runs (certificates, the token file, the cluster key) are
//! looked at every [`RELOAD_EVERY`] and taken in when they change, so a rotation needs no
//! restart. A file that fails to load keeps the node on what it had, loudly.

pub mod auth;
pub mod key;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

/// How often reloadable files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Refuse a secret file that other users can read or write (`chmod 600` or `640` it), or that
/// is not a file.
pub fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {}: not a file", path.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        bail!(
            "{what} {}: other users can access it (mode {mode:04o}); chmod o-rwx it",
            path.display()
        );
    }
    Ok(())
}

/// What tells a file's versions apart: modification time, size and inode (a Kubernetes
/// secret is swapped by renaming a symlinked directory, which changes the inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    /// The stamp of `path` now (a missing file has its own).
    pub fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(std::fs::metadata(path).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        }))
    }
}

/// Something loaded from files that can be loaded again when they change.
pub trait Reload: Send + Sync {
    /// What it is, for logs (`TLS certificate`, `token file`).
    fn what(&self) -> String;
    /// The files it is loaded from.
    fn files(&self) -> Vec<PathBuf>;
    /// Load the files again and take them in; on error keep what it had.
    fn reload(&self) -> anyhow::Result<()>;
}

/// The reloadable things of a node and the stamps of their files when last loaded.
#[derive(Default)]
pub struct Reloader {
    items: Mutex<Vec<Watched>>,
}

/// A watched item and the stamps of its files when it was last loaded.
type Watched = (Arc<dyn Reload>, Vec<Stamp>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// Watch `item` from now on (its files as they are now count as loaded).
    pub fn watch(&self, item: Arc<dyn Reload>) {
        let stamps = item.files().iter().map(|p| Stamp::of(p)).collect();
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((item, stamps));
    }

    /// Reload every item one of whose files changed since it was last looked at.
    pub fn poll(&self) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        for (item, stamps) in items.iter_mut() {
            let now: Vec<Stamp> = item.files().iter().map(|p| Stamp::of(p)).collect();
            if now == *stamps {
                continue;
            }
            *stamps = now;
            match item.reload() {
                Ok(()) => tracing::info!(what = %item.what(), "reloaded"),
                Err(e) => {
                    tracing::error!(what = %item.what(), error = %format!("{e:#}"), "reload failed; keeping the previous one")
                }
            }
        }
    }

    /// Poll every [`RELOAD_EVERY`] until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let me = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || me.poll()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_must_not_be_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "x query\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_private(&p, "-auth.token-file")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mode 0644") && e.contains("-auth.token-file"),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        check_private(&p, "-auth.token-file").unwrap();
        assert!(check_private(dir.path(), "x").is_err());
    }

    #[test]
    fn a_changed_file_is_reloaded_once() {
        struct Counting(PathBuf, std::sync::atomic::AtomicUsize);
        impl Reload for Counting {
            fn what(&self) -> String {
                "counting".into()
            }
            fn files(&self) -> Vec<PathBuf> {
                vec![self.0.clone()]
            }
            fn reload(&self) -> anyhow::Result<()> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a").unwrap();
        let item = Arc::new(Counting(p.clone(), Default::default()));
        let r = Reloader::default();
        r.watch(item.clone());
        r.poll();
        assert_eq!(item.1.load(std::sync::atomic::Ordering::SeqCst), 0);
        std::fs::write(&p, "bb").unwrap();
        r.poll();
        r.poll();
        assert_eq!(item.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

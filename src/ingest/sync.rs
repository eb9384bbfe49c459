//! Group commit for durable connections (DESIGN.md §10 "Durable writes"): one sync thread
//! fsyncs every dirty durable segment per pass, and each connection waits for the pass that
//! covers what it wrote before it reads more. Connections that write while a pass runs share
//! the next one, so concurrent durable producers cost one round of fsyncs per pass, not one
//! per batch each.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use tokio::sync::oneshot;

/// A request: the file to sync and where to report the outcome.
type Request = (Arc<File>, oneshot::Sender<io::Result<()>>);

/// Handle to the sync thread.
#[derive(Debug, Clone)]
pub struct SyncGroup {
    tx: Sender<Request>,
    /// Closed when the sync thread ends, however it ends.
    ended: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
}

impl SyncGroup {
    /// Start the sync thread; it ends when every handle is dropped.
    pub fn start() -> io::Result<SyncGroup> {
        Self::with_syncer(|f: &File| f.sync_data())
    }

    /// Start the sync thread with another way to sync a file: the seam through which tests
    /// make fsync fail, which no kill can.
    pub fn with_syncer(
        syncer: impl Fn(&File) -> io::Result<()> + Send + 'static,
    ) -> io::Result<SyncGroup> {
        let (tx, rx) = channel::<Request>();
        let (alive, ended) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ingest-sync".into())
            .spawn(move || {
                let _alive = alive; // dropped when the thread ends, even by a panic
                if crate::failpoint::armed("ingest-sync") {
                    std::thread::sleep(crate::failpoint::AFTER);
                    panic!("injected failure of ingest-sync (OKLOG_FAILPOINT)");
                }
                run(rx, syncer)
            })?;
        Ok(SyncGroup {
            tx,
            ended: Arc::new(tokio::sync::Mutex::new(Some(ended))),
        })
    }

    /// Resolves when the sync thread has ended (a part for the node's run group: it must not
    /// end while the node runs).
    pub async fn ended(&self) {
        if let Some(rx) = self.ended.lock().await.take() {
            let _ = rx.await;
        }
    }

    /// fsync `file` in the next pass and wait for it (from a thread that may block).
    pub fn sync(&self, file: Arc<File>) -> io::Result<()> {
        self.request(file)?.blocking_recv().map_err(|_| stopped())?
    }

    /// fsync `file` in the next pass and wait for it (from async code).
    pub async fn sync_async(&self, file: Arc<File>) -> io::Result<()> {
        self.request(file)?.await.map_err(|_| stopped())?
    }

    fn request(&self, file: Arc<File>) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx.send((file, done_tx)).map_err(|_| stopped())?;
        Ok(done_rx)
    }
}

fn stopped() -> io::Error {
    io::Error::other("the sync thread has stopped")
}

fn run(rx: Receiver<Request>, syncer: impl Fn(&File) -> io::Result<()>) {
    while let Ok(first) = rx.recv() {
        // One pass: everything queued by now. Each connection has at most one request in
        // flight (it waits for it), so every file in a pass is a different segment.
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        for (file, done) in batch {
            let result = syncer(&file);
            // Let go of the file before the connection wakes: it may close the segment next.
            drop(file);
            let _ = done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_syncs_complete() {
        let dir = tempfile::tempdir().unwrap();
        let group = SyncGroup::start().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let g = group.clone();
                let f = Arc::new(File::create(dir.path().join(format!("f{i}"))).unwrap());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        io::Write::write_all(&mut &*f, b"x\n").unwrap();
                        g.sync(Arc::clone(&f)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

//! The push writer: one thread that owns the protocols' active segment. Requests hand it
//! [`Batch`]es; it stamps each record with a ULID at the record's own time (or the time it is
//! written, for a record without one), writes every batch queued by then, fsyncs once for all
//! the batches that wait for it (a group commit, through the node's sync thread), and answers
//! each. Records of one millisecond keep their order; a segment left out of ULID order is
//! flushed sorted ([`crate::ingest::IngestLog::close`]).
//!
//! Batches wait for room before they are queued: at most [`ROOM`] bytes of records are in
//! flight, however many requests arrive.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use super::{ARRIVAL, Batch};
use crate::gotime::now_ms;
use crate::ingest::IngestLog;
use crate::ingest::sync::SyncGroup;
use crate::ingest::writer::{Order, Rotation, SegmentWriter};
use crate::metrics::Metrics;
use crate::record::{ULID_LEN, UlidGenerator};

/// Records in flight to the writer at most (64 MiB, counted in KiB).
pub const ROOM: usize = 64 << 20;
/// A writer pass takes queued batches up to about this many bytes (8 MiB) before it syncs.
const PASS_BYTES: usize = 8 << 20;

/// What a caller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The records are in the segment (written, not yet fsynced).
    Written,
    /// The records are fsynced.
    Synced,
}

struct Job {
    batch: Batch,
    wait: Wait,
    done: oneshot::Sender<io::Result<()>>,
}

/// What the writer thread is asked to do.
enum Msg {
    /// Write a batch.
    Write(Box<Job>),
    /// Close the active segment now (it becomes `.flushed`, for consumers).
    Rotate(oneshot::Sender<io::Result<()>>),
}

/// Handle to the push writer thread; it ends (closing its segment) when every handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct PushWriter {
    tx: Sender<Msg>,
    room: Arc<Semaphore>,
    ended: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Write(job) => write!(f, "Write({} records)", job.batch.len()),
            Msg::Rotate(_) => f.write_str("Rotate"),
        }
    }
}

impl PushWriter {
    /// Start the writer thread over `log`.
    pub fn start(
        log: Arc<IngestLog>,
        rotation: Rotation,
        sync: SyncGroup,
        metrics: Arc<Metrics>,
    ) -> io::Result<PushWriter> {
        let (tx, rx) = channel::<Msg>();
        let (alive, ended) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("push-writer".into())
            .spawn(move || {
                let _alive = alive;
                if crate::failpoint::armed("push-writer") {
                    std::thread::sleep(crate::failpoint::AFTER);
                    panic!("injected failure of push-writer (OKLOG_FAILPOINT)");
                }
                run(rx, SegmentWriter::new(log, rotation), &sync, &metrics)
            })?;
        Ok(PushWriter {
            tx,
            room: Arc::new(Semaphore::new(ROOM >> 10)),
            ended: Arc::new(tokio::sync::Mutex::new(Some(ended))),
        })
    }

    /// Write `batch` and wait as `wait` says. An error means the records may or may not be
    /// stored (the client should retry: a duplicate, never a loss).
    pub async fn write(&self, batch: Batch, wait: Wait) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let kib = (batch.bytes() >> 10).clamp(1, ROOM >> 10) as u32;
        let _room = self.room.acquire_many(kib).await.map_err(|_| stopped())?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Write(Box::new(Job { batch, wait, done })))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Close the active segment now, after the batches queued before this call, so that store
    /// nodes can take it (a stopping node does this before it drains).
    pub async fn rotate(&self) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Msg::Rotate(done)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Resolves when the writer thread has ended (a part of the node's run group).
    pub async fn ended(&self) {
        if let Some(rx) = self.ended.lock().await.take() {
            let _ = rx.await;
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("the push writer has stopped")
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn run(rx: Receiver<Msg>, mut writer: SegmentWriter, sync: &SyncGroup, metrics: &Metrics) {
    let mut ids = UlidGenerator::new();
    loop {
        let idle = writer.until_rotation().unwrap_or(Duration::from_secs(3600));
        let first = match rx.recv_timeout(idle) {
            Ok(Msg::Write(job)) => *job,
            Ok(Msg::Rotate(done)) => {
                let _ = done.send(writer.close());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = writer.tick() {
                    tracing::error!(error = %e, "rotating the push segment");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        let mut bytes = jobs[0].batch.bytes();
        let mut rotate = None;
        while bytes < PASS_BYTES {
            match rx.try_recv() {
                Ok(Msg::Write(job)) => {
                    bytes += job.batch.bytes();
                    jobs.push(*job);
                }
                Ok(Msg::Rotate(done)) => {
                    rotate = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        write_pass(&mut writer, &mut ids, jobs, sync, metrics);
        if let Some(done) = rotate {
            let _ = done.send(writer.close());
        }
        if let Err(e) = writer.tick() {
            tracing::error!(error = %e, "rotating the push segment");
        }
    }
}

/// Fill in `batch`'s ULIDs: each record's own time, else `now`.
fn stamp(batch: &mut Batch, ids: &mut UlidGenerator, now: u64) -> Order {
    let mut order = Order {
        least: [b'Z'; ULID_LEN],
        greatest: [b'0'; ULID_LEN],
        sorted: true,
    };
    for (&start, &time) in batch.starts.iter().zip(&batch.times) {
        let id = ids.at(if time == ARRIVAL { now } else { time });
        order.sorted &= id >= order.greatest;
        order.least = order.least.min(id);
        order.greatest = order.greatest.max(id);
        batch.buf[start..start + ULID_LEN].copy_from_slice(&id);
    }
    order
}

/// Write `jobs`, fsync once if any waits for it, and answer each.
fn write_pass(
    writer: &mut SegmentWriter,
    ids: &mut UlidGenerator,
    mut jobs: Vec<Job>,
    sync: &SyncGroup,
    metrics: &Metrics,
) {
    let mut results = Vec::with_capacity(jobs.len());
    for job in &mut jobs {
        let order = stamp(&mut job.batch, ids, now_ms() as u64);
        let batch = &job.batch;
        let result = writer.write_stamped(&batch.buf, order);
        match &result {
            Ok(()) => {
                metrics.ingest_bytes_written.inc_by(batch.buf.len() as u64);
                metrics.ingest_records_written.inc_by(batch.len() as u64);
            }
            Err(e) => {
                metrics.ingest_write_errors.inc();
                tracing::error!(error = %e, "writing pushed records");
            }
        }
        results.push(result);
    }
    let must_sync = jobs
        .iter()
        .zip(&results)
        .any(|(j, r)| j.wait == Wait::Synced && r.is_ok());
    if must_sync {
        metrics.ingest_syncs.inc();
        if let Err(e) = writer.sync_blocking(sync) {
            metrics.ingest_write_errors.inc();
            tracing::error!(error = %e, "syncing pushed records");
            for (job, r) in jobs.iter().zip(results.iter_mut()) {
                if job.wait == Wait::Synced && r.is_ok() {
                    *r = Err(copy_error(&e));
                }
            }
        }
    }
    for (job, r) in jobs.into_iter().zip(results) {
        let _ = job.done.send(r);
    }
}

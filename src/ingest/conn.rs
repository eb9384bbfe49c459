//! The fast, durable and bulk listeners, and the handler that turns one connection into
//! records in its own active segment.
//!
//! Each connection runs on its own thread with blocking reads and writes: the work is a memchr
//! over large buffers and sequential file writes, and a thread keeps fsync and file I/O off the
//! async workers that serve HTTP. A connection is acknowledged only by its close (DESIGN.md §10
//! "Durable writes"): after the client half-closes, the handler writes (and for durable
//! connections fsyncs) everything it read, then closes its side gracefully. Every socket is
//! set to reset on close until then, so any other ending (an I/O error, shutdown, the process
//! being killed) is a reset that a client never mistakes for an acknowledgement.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::IngestLog;
use super::writer::{Rotation, SegmentWriter};
use crate::gotime::now_ms;
use crate::metrics::Metrics;
use crate::record::{Framer, FramerConfig, FramerStats};

/// Bytes read from a socket at once (256 KiB).
const READ_BUF: usize = 256 << 10;
/// Records are buffered up to this many bytes (1 MiB) before a fast connection writes them.
const WRITE_BUF: usize = 1 << 20;
/// How often an idle connection wakes to flush, rotate by age, or notice shutdown.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// At most this many connections are served at once (per listener); more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 4096;

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    /// Buffered writes, no fsync.
    Fast,
    /// fsync after every batch read, before reading more.
    Durable,
    /// Length-prefixed segments (not implemented yet: connections are closed).
    Bulk,
}

impl Modality {
    /// The listener's name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Fast => "fast",
            Modality::Durable => "durable",
            Modality::Bulk => "bulk",
        }
    }
}

/// What every connection handler needs.
#[derive(Debug)]
pub struct Ingester {
    /// The segment files.
    pub log: Arc<IngestLog>,
    /// Topic and record-size rules.
    pub framer: FramerConfig,
    /// Segment rotation.
    pub rotation: Rotation,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set when the process shuts down: handlers flush and close.
    pub stop: AtomicBool,
    /// Live connection handlers.
    pub live: AtomicUsize,
    /// Group commit for durable connections.
    pub sync: super::sync::SyncGroup,
    /// Bulk batches waiting for their segment's commit.
    pub bulk: Arc<super::bulk::Waiters>,
}

impl Ingester {
    /// Stop every connection handler and wait (up to `timeout`) for them to flush.
    pub async fn stop(&self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.live.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Accept connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    modality: Modality,
    ingester: Arc<Ingester>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(listener = modality.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ingester.live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "too many ingest connections; refusing");
            drop(stream);
            continue;
        }
        let stream = match stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            // Until this handler acknowledges the connection, any close is a reset, even the
            // kernel's when this process dies: a client must never take the death of an
            // ingester that had read its data, but not yet written it, for an acknowledgement.
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "configuring connection");
                continue;
            }
        };
        let ing = Arc::clone(&ingester);
        ing.live.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("ingest-{}", modality.name()))
            .spawn(move || {
                let gauge = ing
                    .metrics
                    .connected_clients
                    .get_or_create(&vec![("modality", modality.name())])
                    .clone();
                gauge.inc();
                if modality == Modality::Bulk {
                    handle_bulk(stream, &ing);
                } else {
                    handle(stream, modality, &ing);
                }
                gauge.dec();
                ing.live.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            ingester.live.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "spawning connection thread");
        }
    }
}

fn handle_bulk(stream: TcpStream, ing: &Ingester) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ours = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "bulk connection");
            return;
        }
    };
    match super::bulk::handle(stream, ing, &ing.bulk) {
        Ok(()) => {
            // Every batch was answered: close gracefully.
            let _ = socket2::SockRef::from(&ours).set_linger(None);
            let _ = ours.shutdown(Shutdown::Both);
        }
        Err(e) => tracing::debug!(%peer, error = %e, "bulk connection ended"),
    }
}

/// How a connection ended.
enum End {
    /// The client half-closed and everything it sent is written.
    Eof,
    /// Shutdown, or the client's connection broke.
    Aborted,
}

fn handle(stream: TcpStream, modality: Modality, ing: &Ingester) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut writer = SegmentWriter::new(Arc::clone(&ing.log), ing.rotation);
    let result = pump(&stream, modality, ing, &mut writer).and_then(|end| {
        writer.close()?;
        Ok(end)
    });
    match result {
        Ok(End::Eof) => {
            // Everything read is in a segment: a graceful close (FIN) is the acknowledgement.
            let _ = socket2::SockRef::from(&stream).set_linger(None);
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(End::Aborted) => {} // closed with a reset (linger 0) when dropped
        Err(e) => {
            ing.metrics.ingest_write_errors.inc();
            tracing::error!(%peer, listener = modality.name(), error = %e, "ingest write failed; closing connection");
        }
    }
}

fn pump(
    mut stream: &TcpStream,
    modality: Modality,
    ing: &Ingester,
    writer: &mut SegmentWriter,
) -> io::Result<End> {
    stream.set_read_timeout(Some(IDLE_WAKE))?;
    let durable = modality == Modality::Durable;
    let mut framer = Framer::new(ing.framer.clone());
    let mut reported = FramerStats::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut out = Vec::with_capacity(WRITE_BUF + READ_BUF * 2);
    let mut warned_topic = false;
    let end = loop {
        if ing.stop.load(Ordering::Relaxed) {
            break End::Aborted;
        }
        let (read, eof) = match stream.read(&mut buf) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                (0, false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "ingest connection broke");
                break End::Aborted;
            }
        };
        let now = now_ms() as u64;
        if eof {
            framer.finish(now, &mut out);
        } else {
            framer.push(&buf[..read], now, &mut out);
        }
        // Idle, end of input, durable, or a full buffer: write out what is framed.
        if read == 0 || durable || out.len() >= WRITE_BUF {
            write_out(writer, &mut out, &ing.metrics)?;
            if durable {
                writer.sync(&ing.sync)?;
                ing.metrics.ingest_syncs.inc();
            }
        }
        let stats = framer.stats();
        if stats != reported {
            let m = &ing.metrics;
            m.ingest_records_written
                .inc_by(stats.records - reported.records);
            m.ingest_split_lines
                .inc_by(stats.split_lines - reported.split_lines);
            m.ingest_invalid_topics
                .inc_by(stats.invalid_topics - reported.invalid_topics);
            if stats.invalid_topics > 0 && !warned_topic {
                warned_topic = true;
                tracing::warn!(peer = ?stream.peer_addr().ok(), topic = %ing.framer.topic,
                    "line without a valid topic stored under the static topic (reported once per connection)");
            }
            reported = stats;
        }
        if eof {
            break End::Eof;
        }
        writer.tick()?;
    };
    // Complete records still buffered are kept whatever the ending; a torn final line is not.
    write_out(writer, &mut out, &ing.metrics)?;
    if durable {
        writer.sync(&ing.sync)?;
    }
    Ok(end)
}

fn write_out(writer: &mut SegmentWriter, out: &mut Vec<u8>, metrics: &Metrics) -> io::Result<()> {
    writer.write(out)?;
    metrics.ingest_bytes_written.inc_by(out.len() as u64);
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::sync::SyncGroup;
    use std::io::Write as _;

    /// A durable ingester on 127.0.0.1 whose fsyncs fail (or not).
    async fn durable(dir: &std::path::Path, fail: bool) -> (Arc<Ingester>, std::net::SocketAddr) {
        let ing = Arc::new(Ingester {
            log: Arc::new(IngestLog::open(dir).unwrap()),
            framer: FramerConfig {
                topic: "default".into(),
                mode: crate::record::TopicMode::Static,
                max_record_size: 1 << 20,
            },
            rotation: Rotation {
                flush_size: 1 << 20,
                flush_age: Duration::from_secs(60),
            },
            metrics: Metrics::new(),
            stop: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            sync: SyncGroup::with_syncer(move |f| {
                if fail {
                    Err(io::Error::other("injected fsync failure"))
                } else {
                    f.sync_data()
                }
            })
            .unwrap(),
            bulk: Arc::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, Modality::Durable, Arc::clone(&ing), rx));
        std::mem::forget(_tx); // keep serving for the test's lifetime
        (ing, addr)
    }

    /// Send one record, half-close, and read: `Ok(0)` is the acknowledgement.
    async fn send_and_wait(addr: std::net::SocketAddr) -> io::Result<usize> {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"a record\n");
            let _ = s.shutdown(Shutdown::Write);
            let mut buf = [0u8; 16];
            s.read(&mut buf)
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_synced_connection_is_acknowledged_by_its_close() {
        let dir = tempfile::tempdir().unwrap();
        let (ing, addr) = durable(dir.path(), false).await;
        assert_eq!(send_and_wait(addr).await.unwrap(), 0, "EOF: acknowledged");
        assert_eq!(ing.metrics.ingest_write_errors.get(), 0);
        assert!(ing.metrics.ingest_syncs.get() >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_is_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (ing, addr) = durable(dir.path(), true).await;
        match send_and_wait(addr).await {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("the close looked like an acknowledgement ({n} bytes then EOF)"),
        }
        assert_eq!(ing.metrics.ingest_write_errors.get(), 1, "counted");
    }
}

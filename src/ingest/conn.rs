//! The fast, durable and bulk listeners, and the handler that turns one connection into
//! records in its own active segment.
//!
//! # Acknowledgement (docs/ingest.md)
//!
//! A client asks for acknowledgements by sending one byte of TCP urgent data,
//! [`ACK_REQUEST`], before anything else. Urgent data is outside the byte stream (neither the
//! Go ingester nor ours reads it inline), so the Go ingester never sees the request and stores
//! nothing of it. To a client that asked, the ingester writes [`ACK_GREETING`]
//! (`OKLOG-ACK/1\n`) and then, every time it has written (fast) or fsynced (durable) the
//! records of the input up to some byte offset, that offset as a decimal line (`4096\n`).
//! Offsets count the connection's input bytes and fall just after a `\n`, so everything
//! before an acknowledged offset is stored and nothing after it is. Our forwarder keeps only
//! unacknowledged bytes for resending. Clients that did not ask (the Go forwarder, `nc`) are
//! sent nothing, as before: a Go forwarder never reads its socket, and unread bytes there would
//! turn its final close into a reset that discards its last unsent records. Acknowledgements
//! never block the ingester: one that does not fit in the send buffer is coalesced into the
//! next.
//!
//! Endings:
//! - the client half-closes (stdin's EOF): everything is written and fsynced, the final offset
//!   is sent, and the connection is closed gracefully (FIN), as before acknowledgements existed:
//!   the Go forwarder and ours both take that close as the acknowledgement of everything;
//! - the node stops (or the connection idles past `-ingest.idle-timeout`): reading stops, the
//!   complete lines read so far are written and fsynced, their offset is sent, then FIN; what
//!   was not acknowledged was not stored, so a forwarder resends exactly that: no duplicates;
//! - anything else (an I/O error, the process being killed): the socket resets (linger 0) and
//!   the client resends what was not acknowledged. Acknowledgements go out at least every
//!   [`ACK_EVERY`], which bounds what a kill makes a forwarder send twice.
//!
//! Connections are tasks on the node's runtime, not threads: an idle connection holds no
//! buffers (they are allocated when data arrives and given back when it stops), so thousands of
//! them cost a socket and a few hundred bytes each. Segment writes and rotations, which may
//! block on the disk, run in `block_in_place`; durable fsyncs go through the group commit
//! thread ([`super::sync`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ingester::{Ingester, Modality, reset_on_close};
use super::wire::{AuthLine, Wire, auth_line};
use super::writer::SegmentWriter;
use crate::gotime::now_ms;
use crate::record::{Framer, FramerStats};

/// The urgent byte (TCP out-of-band data) a client sends first to ask for acknowledgements. A
/// newline, so that a path which clears the urgent flag turns it into an empty line at worst.
pub const ACK_REQUEST: u8 = b'\n';
/// The first bytes an ingester writes to a client that asked for acknowledgements: acknowledged
/// offsets follow, one decimal number per line.
pub const ACK_GREETING: &[u8] = b"OKLOG-ACK/1\n";
/// Records read are written (and acknowledged) at least this often while data flows.
pub const ACK_EVERY: Duration = Duration::from_millis(50);
/// A read buffer starts this small (16 KiB) and grows when a read fills it.
const SMALL_BUF: usize = 16 << 10;
/// The largest read buffer (256 KiB).
const READ_BUF: usize = 256 << 10;
/// Records are buffered up to this many bytes (1 MiB) before a fast connection writes them.
const WRITE_BUF: usize = 1 << 20;
/// A connection that has read nothing for this long gives its buffers back.
const SHRINK_AFTER: Duration = Duration::from_secs(1);
/// How long a stopping connection waits to hand its final acknowledgement over, and then for
/// the client to close.
const FINAL_WAIT: Duration = Duration::from_secs(1);

/// Accept connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    modality: Modality,
    ingester: Arc<Ingester>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The connections are part of the listener: a panic in one (a bug) is this part's panic,
    // so the node's run group sees it and stops the node.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(Err(e)) = connections.join_next(), if !connections.is_empty() => {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                continue;
            }
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                if let Some(held) = ingester.refused_log.allow() {
                    tracing::warn!(listener = modality.name(), error = %e, suppressed = held, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Until a handler acknowledges the connection, any close is a reset, even the kernel's
        // when this process dies: a client must never take the death of an ingester that had
        // read its data, but not yet written it, for an acknowledgement.
        if let Err(e) = reset_on_close(&stream, true) {
            tracing::debug!(%peer, error = %e, "configuring connection");
            continue;
        }
        let ing = Arc::clone(&ingester);
        if ing.live.fetch_add(1, Ordering::SeqCst) >= ing.limits.max_connections {
            ing.live.fetch_sub(1, Ordering::SeqCst);
            ing.metrics
                .ingest_refused_connections
                .get_or_create(&vec![("modality", modality.name())])
                .inc();
            if let Some(held) = ing.refused_log.allow() {
                tracing::warn!(%peer, listener = modality.name(), max = ing.limits.max_connections,
                    suppressed = held, "too many ingest connections (-ingest.max-connections); refusing (reset)");
            }
            drop(stream); // a reset: nothing was acknowledged
            continue;
        }
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
        // Finished connections are reaped here (their results are only looked at for panics).
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let gauge = ing
                .metrics
                .connected_clients
                .get_or_create(&vec![("modality", modality.name())])
                .clone();
            gauge.inc();
            match ing.door.tls.clone() {
                None if modality == Modality::Bulk => {
                    super::bulk::serve_connection(stream, peer, false, &ing).await
                }
                None => handle(Wire::Plain(stream), None, false, peer, modality, &ing).await,
                Some(config) => serve_tls(stream, config, peer, modality, &ing).await,
            }
            gauge.dec();
            ing.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
    // The listener stops; its connections finish their own graceful stop ([`Ingester::stop`]).
    connections.detach_all();
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shake hands, then serve the connection as its listener does. A failed handshake (plain TCP
/// to a TLS port, an unknown CA, an expired certificate) only ends this connection.
async fn serve_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    modality: Modality,
    ing: &Ingester,
) {
    // The acknowledgement request is TCP urgent data sent before the handshake: look for it
    // before the handshake reads past it.
    let mut acks = None;
    if modality != Modality::Bulk
        && tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.readable())
            .await
            .is_ok_and(|r| r.is_ok())
    {
        acks = Some(Acks::requested(&stream));
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ing.door
                .refused(peer, modality.name(), &format!("TLS handshake failed: {e}"));
            return;
        }
        Err(_) => {
            ing.door
                .refused(peer, modality.name(), "TLS handshake timed out");
            return;
        }
    };
    let cert = tls.get_ref().1.peer_certificates().is_some();
    if modality == Modality::Bulk {
        return super::bulk::serve_connection(tls, peer, cert, ing).await;
    }
    let (tcp, conn) = tls.into_inner();
    handle(Wire::tls(tcp, conn), acks, cert, peer, modality, ing).await;
}

/// How a connection's reading ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client half-closed: everything it sent is to be stored and acknowledged.
    Eof,
    /// The node is stopping, or the connection idled out: acknowledge what was stored, close.
    Stop,
    /// The connection broke.
    Broken,
}

/// The acknowledgements still to be written to the client.
#[derive(Debug, Default)]
struct Acks {
    /// Bytes of the line being written, and how many of them went out.
    line: Vec<u8>,
    written: usize,
    /// The newest offset to acknowledge, and the newest put into `line`.
    want: u64,
    queued: u64,
    /// Writing failed: the client does not read (or is gone); stop trying.
    broken: bool,
}

impl Acks {
    /// Nothing is written until the client asks ([`Acks::requested`]).
    fn off() -> Acks {
        Acks {
            broken: true,
            ..Acks::default()
        }
    }

    /// Whether the client asked for acknowledgements: its first byte was [`ACK_REQUEST`] as
    /// urgent data. Call before the first normal read: once a read passes the urgent byte, the
    /// kernel forgets it.
    fn requested(stream: &TcpStream) -> Acks {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(stream).recv_out_of_band(&mut byte) {
            // SAFETY: recv wrote the one byte it reported.
            Ok(1) if unsafe { byte[0].assume_init() } == ACK_REQUEST => Acks {
                line: ACK_GREETING.to_vec(),
                ..Acks::default()
            },
            _ => Acks::off(),
        }
    }

    /// Write what fits without blocking; `true` once everything wanted is written.
    fn flush(&mut self, stream: &mut Wire) -> bool {
        while !self.broken {
            if self.written < self.line.len() {
                match stream.try_write(&self.line[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(_) => self.broken = true,
                }
            } else if self.want > self.queued {
                // Only whole lines go out, so the newest offset replaces any not yet started.
                self.line.clear();
                self.line
                    .extend_from_slice(self.want.to_string().as_bytes());
                self.line.push(b'\n');
                self.written = 0;
                self.queued = self.want;
            } else {
                return true;
            }
        }
        true
    }

    /// Write everything wanted, waiting up to `wait` for room in the send buffer.
    async fn flush_all(&mut self, stream: &mut Wire, wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.flush(stream) {
            match tokio::time::timeout_at(deadline, stream.writable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// One connection's input: the framer, its buffers, and the offsets reached.
struct Pump<'a> {
    ing: &'a Ingester,
    durable: bool,
    framer: Framer,
    reported: FramerStats,
    warned_topic: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Input bytes read.
    read: u64,
    /// Input offset just after the last `\n` read: the records before it are in `out` or written.
    framed: u64,
    /// Input offset whose records are written (and, if durable, fsynced).
    stored: u64,
    /// When `out` got its first unwritten record.
    out_since: Option<Instant>,
    writer: SegmentWriter,
}

impl Pump<'_> {
    /// Frame `n` bytes just read into `buf` (or the end of input when `n` is 0).
    fn push(&mut self, n: usize) {
        let buf = std::mem::take(&mut self.buf);
        self.push_data(&buf[..n]);
        self.buf = buf;
    }

    /// Frame `data` (the end of input when it is empty).
    fn push_data(&mut self, data: &[u8]) {
        let now = now_ms() as u64;
        if data.is_empty() {
            self.framer.finish(now, &mut self.out);
            self.framed = self.read;
        } else {
            self.framer.push(data, now, &mut self.out);
            if let Some(i) = memchr::memrchr(b'\n', data) {
                self.framed = self.read + i as u64 + 1;
            }
            self.read += data.len() as u64;
        }
        if !self.out.is_empty() && self.out_since.is_none() {
            self.out_since = Some(Instant::now());
        }
        self.count();
    }

    /// Whether what is framed should be written now.
    fn due(&self) -> bool {
        self.out.len() >= WRITE_BUF
            || (self.durable && !self.out.is_empty())
            || self.out_since.is_some_and(|t| t.elapsed() >= ACK_EVERY)
    }

    /// Write (and for durable connections fsync) what is framed; returns the offset stored.
    async fn store(&mut self) -> io::Result<u64> {
        if !self.out.is_empty() {
            let Pump { writer, out, .. } = self;
            tokio::task::block_in_place(|| writer.write(out))?;
            self.ing
                .metrics
                .ingest_bytes_written
                .inc_by(self.out.len() as u64);
            self.out.clear();
            self.out_since = None;
            if self.durable {
                self.writer.sync(&self.ing.sync).await?;
                self.ing.metrics.ingest_syncs.inc();
            }
        }
        self.stored = self.framed;
        Ok(self.stored)
    }

    /// Rotate the segment by age.
    fn tick(&mut self) -> io::Result<()> {
        let writer = &mut self.writer;
        match writer.until_rotation() {
            Some(d) if d.is_zero() => tokio::task::block_in_place(|| writer.tick()),
            _ => Ok(()),
        }
    }

    /// Whether there are buffers to give back.
    fn holds_buffers(&self) -> bool {
        self.buf.capacity() > 0 || self.out.capacity() > 0
    }

    /// Give the buffers back while the connection is quiet.
    fn shrink(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
            self.buf = Vec::new();
        }
    }

    /// Room to read into, grown when the last read filled it.
    fn room(&mut self, last_filled: bool) -> &mut [u8] {
        let want = if self.buf.is_empty() {
            SMALL_BUF
        } else if last_filled {
            READ_BUF
        } else {
            self.buf.len()
        };
        if self.buf.len() < want {
            self.buf = vec![0; want];
        }
        &mut self.buf
    }

    fn count(&mut self) {
        let stats = self.framer.stats();
        if stats == self.reported {
            return;
        }
        let m = &self.ing.metrics;
        m.ingest_records_written
            .inc_by(stats.records - self.reported.records);
        m.ingest_split_lines
            .inc_by(stats.split_lines - self.reported.split_lines);
        m.ingest_invalid_topics
            .inc_by(stats.invalid_topics - self.reported.invalid_topics);
        if stats.invalid_topics > 0 && !self.warned_topic {
            self.warned_topic = true;
            tracing::warn!(topic = %self.ing.framer.topic,
                "line without a valid topic stored under the static topic (reported once per connection)");
        }
        self.reported = stats;
    }
}

/// Serve a fast or durable connection: `acks` is the acknowledgement request already looked
/// for (TLS), `cert` whether the client presented a verified certificate.
async fn handle(
    mut stream: Wire,
    acks: Option<Acks>,
    cert: bool,
    peer: SocketAddr,
    modality: Modality,
    ing: &Ingester,
) {
    if crate::failpoint::armed("connection") {
        panic!("injected failure of an ingest connection (OKLOG_FAILPOINT)");
    }
    let _ = stream.tcp().set_nodelay(true);
    let mut pump = Pump {
        ing,
        durable: modality == Modality::Durable,
        framer: Framer::new(ing.framer.clone()),
        reported: FramerStats::default(),
        warned_topic: false,
        buf: Vec::new(),
        out: Vec::new(),
        read: 0,
        framed: 0,
        stored: 0,
        out_since: None,
        writer: SegmentWriter::new(Arc::clone(&ing.log), ing.rotation),
    };
    let asked = acks.is_some();
    let mut acks = acks.unwrap_or_else(Acks::off);
    let mut gate = Gate {
        pending: Some(Vec::new()),
        cert,
        refused: None,
    };
    let result: io::Result<End> = async {
        let end = read_loop(&mut stream, &mut pump, &mut acks, asked, &mut gate).await?;
        // Whatever the ending, the complete records read are kept (a torn line is not).
        pump.store().await?;
        let writer = &mut pump.writer;
        if writer.is_open() {
            tokio::task::block_in_place(|| writer.close())?;
        }
        Ok(end)
    }
    .await;
    if let Some(why) = gate.refused {
        ing.door.refused(peer, modality.name(), &why);
        // Said instead of the greeting, then a graceful close: nothing was stored.
        acks.line = format!("OKLOG-ERR {why}\n").into_bytes();
        acks.written = 0;
        acks.broken = false;
        acks.flush_all(&mut stream, FINAL_WAIT).await;
        let _ = reset_on_close(stream.tcp(), false);
        stream.shutdown(FINAL_WAIT).await;
        drain(&mut stream, FINAL_WAIT).await;
        return;
    }
    match result {
        Ok(End::Broken) => {} // reset (linger 0) when dropped
        Ok(end) => {
            acks.want = pump.stored;
            acks.flush_all(&mut stream, FINAL_WAIT).await;
            // The FIN follows the final acknowledgement: a client reads the offset, then EOF.
            let _ = reset_on_close(stream.tcp(), false);
            stream.shutdown(FINAL_WAIT).await;
            if end == End::Stop {
                // Whatever the client still sends is not stored; read it until the client,
                // having seen the EOF, closes (so the close is not a reset that could beat the
                // acknowledgement), or give up.
                drain(&mut stream, FINAL_WAIT).await;
            }
        }
        Err(e) => {
            ing.metrics.ingest_write_errors.inc();
            if let Some(held) = ing.failed_log.allow() {
                tracing::error!(%peer, listener = modality.name(), error = %e, suppressed = held,
                    "ingest write failed; closing connection (reset)");
            }
        }
    }
}

/// The start of a connection, until its `OKLOG-AUTH` line (if any) is read and checked.
struct Gate {
    /// Bytes read while it is not yet known whether they start with an `OKLOG-AUTH` line;
    /// `None` once known.
    pending: Option<Vec<u8>>,
    /// It presented a verified client certificate.
    cert: bool,
    /// Why it was refused.
    refused: Option<String>,
}

impl Gate {
    /// Take `n` bytes just read into the pump's buffer: pass input on to the pump, keep what
    /// may still be an `OKLOG-AUTH` line. `false` when the connection is refused.
    fn take(&mut self, pump: &mut Pump<'_>, n: usize) -> bool {
        let Some(pending) = &mut self.pending else {
            pump.push(n);
            return true;
        };
        pending.extend_from_slice(&pump.buf[..n]);
        let (token, skip) = match auth_line(pending) {
            AuthLine::More if n > 0 => return true,
            AuthLine::More | AuthLine::None => (None, 0),
            AuthLine::Token(t, len) => (Some(t.to_string()), len),
            AuthLine::Bad => {
                self.refused = Some("unauthorized: malformed OKLOG-AUTH line".into());
                return false;
            }
        };
        if let Err(why) = pump.ing.door.authorize(token.as_deref(), self.cert) {
            self.refused = Some(why.to_string());
            return false;
        }
        let pending = self.pending.take().unwrap_or_default();
        if pending.len() > skip {
            pump.push_data(&pending[skip..]);
        }
        if n == 0 {
            pump.push_data(&[]);
        }
        true
    }

    fn open(&self) -> bool {
        self.pending.is_none()
    }
}

/// Read, frame, store and acknowledge until the connection ends.
async fn read_loop(
    stream: &mut Wire,
    pump: &mut Pump<'_>,
    acks: &mut Acks,
    mut asked: bool,
    gate: &mut Gate,
) -> io::Result<End> {
    let ing = pump.ing;
    let mut stop = ing.stop.subscribe();
    let mut last_data = Instant::now();
    let mut filled = false;
    loop {
        if ing.stopping() {
            return Ok(End::Stop);
        }
        // The next time something is due without input: a write, a rotation, giving buffers
        // back, idling out. (Each only while it still has work: a wake-up in the past would
        // spin.)
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if pump.holds_buffers() {
            wake = wake.min(last_data + SHRINK_AFTER);
        }
        if let Some(t) = pump.out_since {
            wake = wake.min(t + ACK_EVERY);
        }
        if let Some(d) = pump.writer.until_rotation() {
            wake = wake.min(Instant::now() + d);
        }
        if let Some(idle) = ing.limits.idle_timeout {
            wake = wake.min(last_data + idle);
        }
        let readable = tokio::select! {
            r = stream.readable() => { r?; true }
            _ = tokio::time::sleep_until(wake) => false,
            _ = stop.wait_for(|s| *s) => return Ok(End::Stop),
        };
        if readable {
            if !asked {
                // Until the first byte is read, the request may still arrive (a readiness
                // event can come before the data does). Once read, it is gone from the kernel.
                let requested = Acks::requested(stream.tcp());
                if !requested.broken {
                    asked = true;
                    *acks = requested;
                }
            }
            let room = pump.room(filled);
            let len = room.len();
            match stream.try_read(room) {
                Ok(0) => {
                    // (Finishes the framing, as the end of input.)
                    if !gate.take(pump, 0) {
                        return Ok(End::Broken);
                    }
                    return Ok(End::Eof);
                }
                Ok(n) => {
                    asked = true;
                    filled = n == len;
                    last_data = Instant::now();
                    if !gate.take(pump, n) {
                        return Ok(End::Broken);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "ingest connection broke");
                    return Ok(End::Broken);
                }
            }
        } else if ing
            .limits
            .idle_timeout
            .is_some_and(|idle| last_data.elapsed() >= idle)
        {
            tracing::debug!("ingest connection idle; closing");
            return Ok(End::Stop);
        }
        if pump.due() {
            acks.want = pump.store().await?;
        }
        pump.tick()?;
        if last_data.elapsed() >= SHRINK_AFTER {
            pump.shrink();
        }
        if gate.open() {
            acks.flush(stream);
        }
    }
}

/// Read and discard until the peer closes, or `wait` passes.
async fn drain(stream: &mut Wire, wait: Duration) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestLog;
    use crate::ingest::ingester::ConnLimits;
    use crate::ingest::sync::SyncGroup;
    use crate::ingest::writer::Rotation;
    use crate::metrics::Metrics;
    use crate::record::FramerConfig;
    use std::io::{Read as _, Write as _};
    use std::net::Shutdown;

    /// An ingester on 127.0.0.1 whose fsyncs fail (or not).
    async fn ingester(
        dir: &std::path::Path,
        modality: Modality,
        fail: bool,
    ) -> (Arc<Ingester>, SocketAddr) {
        limited(dir, modality, fail, ConnLimits::default()).await
    }

    /// [`ingester`] with `limits`.
    async fn limited(
        dir: &std::path::Path,
        modality: Modality,
        fail: bool,
        limits: ConnLimits,
    ) -> (Arc<Ingester>, SocketAddr) {
        let ing = Arc::new(Ingester::new(
            Arc::new(IngestLog::open(dir).unwrap()),
            FramerConfig {
                topic: "default".into(),
                mode: crate::record::TopicMode::Static,
                max_record_size: 1 << 20,
            },
            Rotation {
                flush_size: 1 << 20,
                flush_age: Duration::from_secs(60),
            },
            limits,
            Metrics::new(),
            SyncGroup::with_syncer(move |f| {
                if fail {
                    Err(io::Error::other("injected fsync failure"))
                } else {
                    f.sync_data()
                }
            })
            .unwrap(),
            Arc::default(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, modality, Arc::clone(&ing), rx));
        std::mem::forget(_tx); // keep serving for the test's lifetime
        (ing, addr)
    }

    /// Every byte of the flushed segments in `dir`.
    fn flushed_bytes(dir: &std::path::Path) -> Vec<u8> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "flushed"))
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    /// Connect, asking for acknowledgements (or not).
    fn connect(addr: SocketAddr, ask: bool) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).unwrap();
        if ask {
            socket2::SockRef::from(&s)
                .send_out_of_band(&[ACK_REQUEST])
                .unwrap();
        }
        s
    }

    /// Send `data` asking for acknowledgements (or not), half-close, and read everything the
    /// ingester says until it closes.
    async fn send_and_read(
        addr: SocketAddr,
        ask: bool,
        data: &'static [u8],
    ) -> io::Result<Vec<u8>> {
        tokio::task::spawn_blocking(move || {
            let mut s = connect(addr, ask);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(data);
            let _ = s.shutdown(Shutdown::Write);
            let mut got = Vec::new();
            s.read_to_end(&mut got).map(|_| got)
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_synced_connection_is_acknowledged_up_to_its_end_then_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (ing, addr) = ingester(dir.path(), Modality::Durable, false).await;
        let got = send_and_read(addr, true, b"a record\nanother\n")
            .await
            .unwrap();
        let text = String::from_utf8(got).unwrap();
        assert!(text.starts_with("OKLOG-ACK/1\n"), "{text:?}");
        assert_eq!(
            text.lines().last(),
            Some("17"),
            "every byte acknowledged: {text:?}"
        );
        assert_eq!(ing.metrics.ingest_write_errors.get(), 0);
        assert!(ing.metrics.ingest_syncs.get() >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_did_not_ask_is_sent_nothing_and_its_data_stored_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let (_ing, addr) = ingester(dir.path(), Modality::Fast, false).await;
        let got = send_and_read(addr, false, b"line one\n\nline three\n")
            .await
            .unwrap();
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        // The urgent byte never reaches the records, and the client's own lines all do.
        let got = send_and_read(addr, true, b"after\n").await.unwrap();
        assert!(got.starts_with(ACK_GREETING));
        let stored = flushed_bytes(dir.path());
        let mut payloads: Vec<String> = stored
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(&l[27..]).into_owned())
            .collect();
        payloads.sort();
        assert_eq!(
            payloads,
            [
                "default ",
                "default after",
                "default line one",
                "default line three"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_is_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (ing, addr) = ingester(dir.path(), Modality::Durable, true).await;
        match send_and_read(addr, true, b"a record\n").await {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
            Ok(got) => panic!(
                "the close looked like an acknowledgement: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
        assert_eq!(ing.metrics.ingest_write_errors.get(), 1, "counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_ingester_acknowledges_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ing, addr) = ingester(dir.path(), Modality::Fast, false).await;
        let client = tokio::task::spawn_blocking(move || {
            let mut s = connect(addr, true);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"one\ntwo\nthree, torn").unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            got
        });
        // Wait until the complete lines are acknowledged, then stop.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ing.stop(Duration::from_secs(5)).await;
        assert_eq!(ing.live(), 0);
        let got = String::from_utf8(client.await.unwrap()).unwrap();
        assert_eq!(got, "OKLOG-ACK/1\n8\n", "acknowledged up to the torn line");
        let stored = flushed_bytes(dir.path());
        let lines: Vec<&[u8]> = stored
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&stored));
        assert!(lines[0].ends_with(b" default one") && lines[1].ends_with(b" default two"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_maximum_are_reset() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ConnLimits {
            max_connections: 2,
            idle_timeout: None,
            ..ConnLimits::default()
        };
        let (ing, addr) = limited(dir.path(), Modality::Fast, false, limits).await;
        let held: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        while ing.live() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let third = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got)
        })
        .await
        .unwrap();
        assert_eq!(
            third.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset,
            "refused with a reset, never a close that looks like an acknowledgement"
        );
        let refused = ing
            .metrics
            .ingest_refused_connections
            .get_or_create(&vec![("modality", "fast")])
            .get();
        assert_eq!(refused, 1);
        drop(held);
    }
}

//! Bulk ingest (port 7653): whole batches of records, acknowledged only once a store node has
//! committed them replicated N ways. The original left this mode unimplemented.
//!
//! # Framing (version 1)
//!
//! ```text
//! client → ingester:  "OKLOG-BULK/1\n"                      once, at the start
//!                     <u32 big-endian length N> <N bytes>   one batch; repeated
//! ingester → client:  "OK <records>\n" | "ERR <message>\n"  one reply per batch, in order
//! ```
//!
//! A batch is `<ULID> <payload>\n` lines, ULIDs valid and non-decreasing, the last line ending
//! in `\n`, at most [`MAX_BATCH`] bytes. The client stamps the ULIDs, so a batch sent again after
//! a failure carries the same IDs and reads deduplicate it. The ingester adds the topic (static,
//! or the payload's first word in dynamic mode), writes the batch as one flushed segment (fsync,
//! rename, fsync the directory), and answers `OK` only when a store node has committed that
//! segment, that is after it was replicated to N store nodes. A malformed batch is answered
//! `ERR` and nothing of it is stored; the connection stays usable. A bad greeting or a length
//! over the limit is answered `ERR` and the connection is closed (the stream cannot be
//! resynchronised). No answer within [`COMMIT_TIMEOUT`] is `ERR`: the client should send the
//! batch again (same ULIDs, so at worst a duplicate that reads drop).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ingester::{Ingester, Waiters, reset_on_close};
use crate::record::{TopicMode, ULID_LEN, check_record, is_valid_topic};

/// The greeting that opens a bulk connection.
pub const GREETING: &[u8] = b"OKLOG-BULK/1\n";
/// The largest batch accepted (64 MiB).
pub const MAX_BATCH: usize = 64 << 20;
/// How long a batch may wait for a store node to commit it.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a batch was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct BadBatch(pub String);

/// Check a batch and turn it into stored records (`<ULID> <topic> <payload>\n`): its ULIDs'
/// times must be within `bounds` at `now_ms` (the batch is sorted: its first and last tell).
pub fn to_records(
    batch: &[u8],
    topic: &str,
    mode: TopicMode,
    bounds: &super::EventBounds,
    now_ms: u64,
) -> Result<(Vec<u8>, u64), BadBatch> {
    if batch.is_empty() {
        return Ok((Vec::new(), 0));
    }
    if batch.last() != Some(&b'\n') {
        return Err(BadBatch("last record has no newline".into()));
    }
    let mut out = Vec::with_capacity(batch.len() + batch.len() / 8);
    let mut last: Option<&[u8]> = None;
    let mut n = 0u64;
    for line in batch.split_inclusive(|&b| b == b'\n') {
        n += 1;
        let body = &line[..line.len() - 1];
        let id = check_record(body).map_err(|e| BadBatch(format!("record {n}: {e}")))?;
        if last.is_some_and(|l| id < l) {
            return Err(BadBatch(format!(
                "record {n}: records are not sorted by ULID"
            )));
        }
        last = Some(id);
        let payload = &line[ULID_LEN + 1..];
        out.extend_from_slice(&line[..=ULID_LEN]);
        let first_word = payload.split(|&b| b == b' ').next().unwrap_or_default();
        let has_topic =
            mode == TopicMode::Dynamic && payload.contains(&b' ') && is_valid_topic(first_word);
        if !has_topic {
            out.extend_from_slice(topic.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(payload);
    }
    let first = crate::record::ulid_ms(&batch[..ULID_LEN]);
    let newest = last.map_or(first, crate::record::ulid_ms);
    for (ms, which) in [(first, "first"), (newest, "last")] {
        bounds
            .check(ms, now_ms)
            .map_err(|e| BadBatch(format!("the {which} record's ULID: {e}; nothing stored")))?;
    }
    Ok((out, n))
}

/// How long a bulk connection may send nothing while a batch (or the greeting) is expected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A connection's socket, under TLS or not.
pub trait Socket: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serve one bulk connection (`cert`: its client presented a verified certificate); closes it
/// gracefully once every batch was answered.
pub async fn serve_connection<S: Socket>(stream: S, peer: SocketAddr, cert: bool, ing: &Ingester) {
    let mut stream = stream;
    match handle(&mut stream, peer, cert, ing).await {
        Ok(()) => {
            // Every batch was answered: close gracefully.
            let _ = reset_on_close(stream.tcp(), false);
            let _ = stream.shutdown().await;
        }
        Err(e) => tracing::debug!(%peer, error = %e, "bulk connection ended"),
    }
}

/// Read exactly `buf.len()` bytes, each read within [`READ_TIMEOUT`].
async fn read_exact<S: Socket>(stream: &mut S, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf[got..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "bulk client idle"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}

/// Read the connection's start: an optional `OKLOG-AUTH <token>` line, then the greeting.
/// `Ok(Err(why))` when it is refused (a refusal for credentials is counted and logged).
async fn greeting<S: Socket>(
    stream: &mut S,
    peer: SocketAddr,
    cert: bool,
    ing: &Ingester,
) -> io::Result<Result<(), String>> {
    use crate::security::auth::RAW_AUTH_PREFIX;
    let mut start = [0u8; GREETING.len()];
    read_exact(stream, &mut start[..RAW_AUTH_PREFIX.len()]).await?;
    let mut token = None;
    if start[..RAW_AUTH_PREFIX.len()] == *RAW_AUTH_PREFIX {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            read_exact(stream, &mut byte).await?;
            if byte[0] == b'\n' {
                break;
            }
            if line.len() >= super::wire::MAX_AUTH_LINE {
                let why = "unauthorized: malformed OKLOG-AUTH line";
                ing.door().refused(peer, "bulk", why);
                return Ok(Err(why.into()));
            }
            line.push(byte[0]);
        }
        token = Some(String::from_utf8_lossy(&line).trim().to_string());
        read_exact(stream, &mut start[..RAW_AUTH_PREFIX.len()]).await?;
    }
    if let Err(why) = ing.door().authorize(token.as_deref(), cert) {
        let why = why.to_string();
        ing.door().refused(peer, "bulk", &why);
        return Ok(Err(why));
    }
    read_exact(stream, &mut start[RAW_AUTH_PREFIX.len()..]).await?;
    if start != GREETING {
        return Ok(Err("not an OKLOG-BULK/1 stream".into()));
    }
    Ok(Ok(()))
}

async fn handle<S: Socket>(
    stream: &mut S,
    peer: SocketAddr,
    cert: bool,
    ing: &Ingester,
) -> io::Result<()> {
    if let Err(why) = greeting(stream, peer, cert, ing).await? {
        return reply(stream, &format!("ERR {why}")).await;
    }
    loop {
        let mut len = [0u8; 4];
        match read_exact(stream, &mut len).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_BATCH {
            return reply(
                stream,
                &format!("ERR batch of {len} bytes is over the limit of {MAX_BATCH}"),
            )
            .await;
        }
        // The batch is held against the memory budget as it arrives, and its records as they
        // are made; a batch the budget has no room for ends the connection (the client sends
        // it again, with the same ULIDs).
        let mut hold = ing.budget.hold();
        let deadline = ing.limits.partial_timeout + Duration::from_secs((len >> 20) as u64);
        let batch = match tokio::time::timeout(deadline, read_batch(stream, len, &mut hold)).await {
            Ok(read) => match read? {
                Ok(b) => b,
                Err(full) => return reply(stream, &format!("ERR {full}")).await,
            },
            Err(_) => {
                let why = format!(
                    "ERR the batch did not arrive whole within {}",
                    crate::gotime::format_duration(deadline)
                );
                return reply(stream, &why).await;
            }
        };
        if let Err(full) = hold.set(batch.len() * 2 + batch.len() / 8) {
            return reply(stream, &format!("ERR {full}")).await;
        }
        let now = crate::gotime::now_ms() as u64;
        let made = to_records(&batch, &ing.framer.topic, ing.framer.mode, &ing.bounds, now);
        let (records, n) = match made {
            Ok(r) => r,
            Err(BadBatch(why)) => {
                reply(stream, &format!("ERR {why}")).await?;
                continue;
            }
        };
        drop(batch);
        let _ = hold.set(records.capacity());
        if n == 0 {
            reply(stream, "OK 0").await?;
            continue;
        }
        let answer = match store_and_wait(&records, ing, &ing.bulk).await {
            Ok(()) => {
                ing.metrics.ingest_records_written.inc_by(n);
                ing.metrics
                    .ingest_bytes_written
                    .inc_by(records.len() as u64);
                format!("OK {n}")
            }
            Err(e) => format!("ERR {e}"),
        };
        reply(stream, &answer).await?;
    }
}

/// Read a batch of `len` bytes in pieces, holding what has arrived against the budget: a
/// client that declares 64 MiB and sends a byte holds a byte.
async fn read_batch<S: Socket>(
    stream: &mut S,
    len: usize,
    hold: &mut crate::memory::Hold,
) -> io::Result<Result<Vec<u8>, crate::memory::Full>> {
    const PIECE: usize = 1 << 20;
    let mut batch: Vec<u8> = Vec::new();
    while batch.len() < len {
        let want = (batch.len() + PIECE).min(len);
        if batch.capacity() < want {
            let cap = (batch.capacity() * 2).max(want).min(len);
            if let Err(full) = hold.set(cap) {
                return Ok(Err(full));
            }
            batch.reserve_exact(cap - batch.len());
        }
        let at = batch.len();
        batch.resize(want, 0);
        read_exact(stream, &mut batch[at..]).await?;
    }
    Ok(Ok(batch))
}

/// Write the batch as one flushed segment and wait until a store node commits it.
async fn store_and_wait(records: &[u8], ing: &Ingester, waiters: &Arc<Waiters>) -> io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stem = tokio::task::block_in_place(|| -> io::Result<String> {
        let (mut file, path) = ing.log.create()?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        // Register before the segment can be seen, so the commit cannot be missed.
        waiters.lock().insert(stem.clone(), tx);
        let written = file
            .write_all(records)
            .and_then(|()| ing.log.close(file, &path, records.len() as u64, true));
        if let Err(e) = written {
            waiters.lock().remove(&stem);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(stem)
    })?;
    match tokio::time::timeout(COMMIT_TIMEOUT, rx).await {
        Ok(Ok(())) => Ok(()),
        _ => {
            waiters.lock().remove(&stem);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no store node committed the batch in time; send it again",
            ))
        }
    }
}

/// Write `line` and a newline (the bulk protocol's replies).
async fn reply<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, line: &str) -> io::Result<()> {
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::EventBounds;

    /// `batch` checked as if now were the time of the ULIDs below (01BB6RQR19: 2017-03-14).
    fn records(batch: &[u8], mode: TopicMode) -> Result<(Vec<u8>, u64), BadBatch> {
        let then = crate::record::ulid_ms(b"01BB6RQR190000000000000000");
        to_records(batch, "app", mode, &EventBounds::default(), then)
    }

    #[test]
    fn batches_become_records_with_topics() {
        let batch =
            b"01BB6RQR190000000000000000 hello world\n01BB6RQR190000000000000001 web GET /\n";
        let (out, n) = records(batch, TopicMode::Static).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            out,
            b"01BB6RQR190000000000000000 app hello world\n01BB6RQR190000000000000001 app web GET /\n"
        );
        let (out, _) = records(batch, TopicMode::Dynamic).unwrap();
        assert_eq!(
            out,
            b"01BB6RQR190000000000000000 hello world\n01BB6RQR190000000000000001 web GET /\n"
        );
        assert_eq!(records(b"", TopicMode::Static).unwrap().1, 0);
    }

    #[test]
    fn bad_batches_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (b"01BB6RQR190000000000000000 no newline", "no newline"),
            (b"garbage\n", "record 1"),
            (b"01BB6RQR19000000000000000U x\n", "record 1"),
            (
                b"01BB6RRTB70000000000000000 b\n01BB6RQR190000000000000000 a\n",
                "record 2: records are not sorted",
            ),
        ];
        let zero = b"00000000000000000000000000 a\n7ZZZZZZZZZZZZZZZZZZZZZZZZZ b\n";
        let far = b"01BB6RQR190000000000000000 a\n7ZZZZZZZZZZZZZZZZZZZZZZZZZ b\n";
        let cases = [
            cases,
            &[
                (&zero[..], "first record's ULID: its time 1970-01-01T00:00:00.000Z is more than 168h0m0s before now"),
                (&far[..], "last record's ULID: its time past 9999-12-31T23:59:59.999Z"),
            ],
        ]
        .concat();
        for (batch, want) in cases {
            let err = records(batch, TopicMode::Static).unwrap_err();
            assert!(
                err.0.contains(want),
                "{:?}: {}",
                String::from_utf8_lossy(batch),
                err.0
            );
        }
    }
}

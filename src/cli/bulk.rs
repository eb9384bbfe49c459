//! `oklog forward -bulk`: stamp ULIDs here, send batches to the bulk port, and count a batch
//! as delivered only when the ingester answers that a store node committed it (framing in
//! [`crate::ingest::bulk`]). A batch that fails is sent again with the same ULIDs, so a retry
//! never duplicates a record in query results.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::Duration;

use anyhow::bail;

use super::addr::Addr;
use super::dial::{Dialer, ReadWrite};
use crate::ingest::bulk::{COMMIT_TIMEOUT, GREETING};
use crate::metrics::Metrics;
use crate::record::{DEFAULT_MAX_RECORD_SIZE, UlidGenerator};

/// Read `input` as lines, stamp them, and deliver them in batches of about `size` bytes.
pub fn forward(
    input: &mut impl Read,
    prefix: &[u8],
    addrs: Vec<Addr>,
    dialer: Dialer,
    size: usize,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut sender = Sender {
        addrs,
        dialer,
        next: 0,
        conn: None,
    };
    let mut ids = UlidGenerator::new();
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::new();
    let mut batch: Vec<u8> = Vec::with_capacity(size + DEFAULT_MAX_RECORD_SIZE + 64);
    let mut records = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let now = crate::gotime::now_ms().max(0) as u64;
        let mut payload = prefix.to_vec();
        payload.extend_from_slice(&line);
        // A line longer than a record may be is split into consecutive records, as ingest does.
        let mut chunks = payload.chunks(DEFAULT_MAX_RECORD_SIZE).peekable();
        if chunks.peek().is_none() {
            batch.extend_from_slice(&ids.next(now));
            batch.extend_from_slice(b" \n");
            records += 1;
        }
        for chunk in chunks {
            batch.extend_from_slice(&ids.next(now));
            batch.push(b' ');
            batch.extend_from_slice(chunk);
            batch.push(b'\n');
            records += 1;
        }
        if batch.len() >= size {
            sender.deliver(&batch)?;
            metrics.forward_records.inc_by(records);
            metrics.forward_bytes.inc_by(batch.len() as u64);
            batch.clear();
            records = 0;
        }
    }
    if !batch.is_empty() {
        sender.deliver(&batch)?;
        metrics.forward_records.inc_by(records);
        metrics.forward_bytes.inc_by(batch.len() as u64);
    }
    Ok(())
}

struct Sender {
    addrs: Vec<Addr>,
    dialer: Dialer,
    next: usize,
    conn: Option<BufReader<Box<dyn ReadWrite>>>,
}

impl Sender {
    /// Send one batch until an ingester answers `OK`; a malformed batch is an error.
    fn deliver(&mut self, batch: &[u8]) -> anyhow::Result<()> {
        let mut backoff = Duration::ZERO;
        loop {
            match self.try_once(batch) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(refusal)) => {
                    if refusal.starts_with("record")
                        || refusal.starts_with("last record")
                        || refusal.starts_with("batch of")
                        || refusal.starts_with("unauthorized")
                        || refusal.starts_with("forbidden")
                    {
                        bail!("the ingester refused a batch: {refusal}");
                    }
                    tracing::warn!(reason = %refusal, "batch not acknowledged; sending it again");
                }
                Err(e) => {
                    if let Some(why) = super::dial::refusal(&e) {
                        bail!("{why}");
                    }
                    tracing::warn!(error = %e, "bulk connection failed; sending the batch again");
                    self.conn = None;
                }
            }
            backoff = (backoff * 2).clamp(Duration::from_millis(16), Duration::from_millis(1024));
            std::thread::sleep(backoff);
        }
    }

    /// One attempt: `Ok(Ok)` acknowledged, `Ok(Err(msg))` refused, `Err` connection trouble.
    fn try_once(&mut self, batch: &[u8]) -> io::Result<Result<(), String>> {
        if self.conn.is_none() {
            let addr = &self.addrs[self.next % self.addrs.len()];
            self.next += 1;
            let mut s = self.dialer.connect_blocking(addr)?;
            s.tcp()
                .set_read_timeout(Some(COMMIT_TIMEOUT + Duration::from_secs(10)))?;
            s.write_all(GREETING)?;
            self.conn = Some(BufReader::new(s));
        }
        let Some(r) = self.conn.as_mut() else {
            return Err(io::Error::other("not connected"));
        };
        let s = r.get_mut();
        s.write_all(&(batch.len() as u32).to_be_bytes())?;
        s.write_all(batch)?;
        s.flush()?;
        let mut answer = String::new();
        if r.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the ingester closed the connection",
            ));
        }
        let answer = answer.trim_end();
        Ok(match answer.strip_prefix("ERR ") {
            Some(msg) => Err(msg.to_string()),
            None if answer.starts_with("OK") => Ok(()),
            None => Err(format!("unexpected answer {answer:?}")),
        })
    }
}

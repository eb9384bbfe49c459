//! The consumer: a state machine that gathers flushed segments from ingesters, merges them
//! into one aggregate, replicates it to N store nodes and then commits (or fails) every
//! segment it gathered.
//!
//! The transaction is read → replicate → commit: until the commit, every gathered segment is
//! pending on its ingester and times out back to flushed on any failure, so the worst outcome is
//! a duplicate, which reads deduplicate. Never an unreplicated commit. Gathered segments are
//! spooled to `<uuid>.consuming` files in the store directory and merged into one more spool
//! file that is streamed to each replica: memory is bounded by buffers, not by segment sizes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::Method;
use rand::seq::{IndexedRandom, SliceRandom};
use tokio::sync::watch;

use super::log::{CONSUMING, StoreLog};
use crate::cluster::{Peers, Role};
use crate::http::{self, Client};
use crate::merge::{self, ReaderLines};
use crate::metrics::Metrics;
use crate::record::check_record;

/// How long to wait for an ingester's or store node's response headers.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to repeat the "not enough store nodes" warning.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long after start a node may take to find its store peers before the first warning.
const JOIN_GRACE: Duration = Duration::from_secs(2);

/// Consumer settings (the `-store.segment-*` flags).
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Replicate once the aggregate holds this many bytes (`-store.segment-target-size`).
    pub target_size: u64,
    /// Replicate once the aggregate is this old (`-store.segment-target-age`).
    pub target_age: Duration,
    /// Pause between polls when nothing is flushed (`-store.segment-delay`).
    pub delay: Duration,
    /// Copies of each aggregate (`-store.segment-replication-factor`).
    pub replication_factor: usize,
}

/// One consumer state machine.
#[derive(Debug)]
pub struct Consumer {
    log: Arc<StoreLog>,
    peers: Arc<dyn Peers>,
    client: Client,
    cfg: ConsumerConfig,
    metrics: Arc<Metrics>,
    /// Segments read and not yet committed: (ingester, id).
    pending: Vec<(String, String)>,
    /// Spool files of those segments.
    parts: Vec<PathBuf>,
    bytes: u64,
    since: Option<Instant>,
    empty_polls: usize,
    /// When the "not enough store nodes" warning was last given (set at start, so a node
    /// still joining its cluster does not warn).
    last_warn: Instant,
}

impl Consumer {
    /// A consumer with nothing gathered.
    pub fn new(
        log: Arc<StoreLog>,
        peers: Arc<dyn Peers>,
        client: Client,
        cfg: ConsumerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Consumer {
            log,
            peers,
            client,
            cfg,
            metrics,
            pending: Vec::new(),
            parts: Vec::new(),
            bytes: 0,
            since: None,
            empty_polls: 0,
            last_warn: Instant::now() - WARN_EVERY + JOIN_GRACE,
        }
    }

    /// Run until `shutdown`; pending work is failed back on the way out.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let pause = self.step().await;
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        }
        self.finish(false).await;
    }

    /// One step of the state machine; returns how long to pause before the next.
    async fn step(&mut self) -> Duration {
        let stores = self.peers.current(Role::Store);
        let ingesters = self.peers.current(Role::Ingest);
        let rf = self.cfg.replication_factor;
        if stores.len() < rf {
            if self.last_warn.elapsed() >= WARN_EVERY {
                self.last_warn = Instant::now();
                tracing::warn!(
                    replication_factor = rf,
                    store_nodes = stores.len(),
                    "replication factor exceeds the store nodes known; leaving ingest segments where they are"
                );
            }
            if !self.pending.is_empty() {
                self.finish(false).await;
            }
            return Duration::from_secs(1);
        }
        let ready = !self.parts.is_empty()
            && (self.bytes >= self.cfg.target_size
                || self
                    .since
                    .is_some_and(|t| t.elapsed() >= self.cfg.target_age)
                || self.empty_polls > 2 * ingesters.len().max(1));
        if ready {
            let newest = self.replicate(&stores).await;
            self.finish(newest.is_some()).await;
            if let Some(Some(ms)) = newest {
                let lag = (crate::gotime::now_ms() - ms as i64).max(0) as f64 / 1000.0;
                self.metrics.store_consumer_lag_seconds.set(lag);
            }
            return Duration::ZERO;
        }
        let Some(ingester) = ingesters.choose(&mut rand::rng()).cloned() else {
            return self.cfg.delay;
        };
        match self.gather(&ingester).await {
            Ok(true) => {
                self.empty_polls = 0;
                Duration::ZERO
            }
            Ok(false) => {
                self.empty_polls += 1;
                self.cfg.delay
            }
            Err(e) => {
                tracing::warn!(%ingester, error = %e, "gathering a segment failed; failing the aggregate back");
                self.finish(false).await;
                self.cfg.delay
            }
        }
    }

    /// Claim and read one segment from `ingester`; `Ok(false)` if it had none.
    async fn gather(&mut self, ingester: &str) -> io::Result<bool> {
        let url = format!("http://{ingester}/ingest/next");
        let (status, body) = http::call(
            &self.client,
            Method::GET,
            &url,
            http::empty_body(),
            CALL_TIMEOUT,
        )
        .await?;
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let text = http::body_text(body).await?;
        if !status.is_success() {
            return Err(io::Error::other(format!(
                "{url}: {status}: {}",
                text.trim()
            )));
        }
        let id = text.trim().to_string();
        self.pending.push((ingester.to_string(), id.clone()));
        let url = format!("http://{ingester}/ingest/read?id={id}");
        let (status, body) = http::call(
            &self.client,
            Method::GET,
            &url,
            http::empty_body(),
            CALL_TIMEOUT,
        )
        .await?;
        if !status.is_success() {
            let text = http::body_text(body).await.unwrap_or_default();
            return Err(io::Error::other(format!(
                "{url}: {status}: {}",
                text.trim()
            )));
        }
        let log = Arc::clone(&self.log);
        let (file, path) = tokio::task::spawn_blocking(move || log.create(CONSUMING))
            .await
            .map_err(io::Error::other)??;
        self.parts.push(path);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut stream = body.into_data_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(io::Error::other)?;
            n += chunk.len() as u64;
            out.write_all(&chunk)?;
        }
        out.flush()?;
        self.bytes += n;
        self.since.get_or_insert_with(Instant::now);
        self.metrics.store_consumed_segments.inc();
        self.metrics.store_consumed_bytes.inc_by(n);
        Ok(true)
    }

    /// Merge the gathered segments and send the aggregate to `replication_factor` store nodes.
    /// `Some` on success, with the time (ms) of the aggregate's newest record if it had any.
    async fn replicate(&mut self, stores: &[String]) -> Option<Option<u64>> {
        let log = Arc::clone(&self.log);
        let parts = self.parts.clone();
        let merged = tokio::task::spawn_blocking(move || merge_parts(&log, &parts)).await;
        let (path, bytes, newest) = match merged {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "merging gathered segments");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "merging gathered segments");
                return None;
            }
        };
        self.parts.push(path.clone());
        if bytes == 0 {
            return Some(None); // nothing but empty segments: commit them
        }
        let mut order = stores.to_vec();
        order.shuffle(&mut rand::rng());
        let mut copies = 0;
        for store in order {
            if copies >= self.cfg.replication_factor {
                break;
            }
            let url = format!("http://{store}/store/replicate");
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "opening aggregate spool");
                    return None;
                }
            };
            match http::call(
                &self.client,
                Method::POST,
                &url,
                http::file_client_body(file),
                CALL_TIMEOUT,
            )
            .await
            {
                Ok((status, body)) => {
                    let text = http::body_text(body).await.unwrap_or_default();
                    if status.is_success() {
                        copies += 1;
                        let m = &self.metrics;
                        m.store_replicated_segments
                            .get_or_create(&vec![("direction", "egress")])
                            .inc();
                        m.store_replicated_bytes
                            .get_or_create(&vec![("direction", "egress")])
                            .inc_by(bytes);
                    } else {
                        tracing::warn!(%store, %status, response = text.trim(), "replication refused");
                    }
                }
                Err(e) => tracing::warn!(%store, error = %e, "replication failed"),
            }
        }
        if copies < self.cfg.replication_factor {
            tracing::warn!(
                copies,
                wanted = self.cfg.replication_factor,
                "aggregate not replicated enough; failing it back"
            );
            return None;
        }
        Some(newest)
    }

    /// Commit (or fail) every pending segment, then reset.
    async fn finish(&mut self, commit: bool) {
        let verb = if commit { "commit" } else { "failed" };
        for (ingester, id) in std::mem::take(&mut self.pending) {
            let url = format!("http://{ingester}/ingest/{verb}?id={id}");
            match http::call(
                &self.client,
                Method::POST,
                &url,
                http::empty_body(),
                CALL_TIMEOUT,
            )
            .await
            {
                Ok((status, body)) => {
                    let text = http::body_text(body).await.unwrap_or_default();
                    if !status.is_success() {
                        tracing::warn!(%ingester, %id, %status, response = text.trim(), "{verb} refused");
                    }
                }
                Err(e) => tracing::warn!(%ingester, %id, error = %e, "{verb} failed"),
            }
        }
        for path in std::mem::take(&mut self.parts) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(spool = %path.display(), error = %e, "removing spool file");
            }
        }
        self.bytes = 0;
        self.since = None;
        self.empty_polls = 0;
    }
}

/// k-way merge the spooled segments into one more spool file, with dedup. Lines that are not
/// records, and records out of order within a segment, are dropped and logged rather than
/// allowed to make the replica unacceptable.
/// Returns the spool's path, its size and the time (ms) of its newest record.
fn merge_parts(log: &StoreLog, parts: &[PathBuf]) -> io::Result<(PathBuf, u64, Option<u64>)> {
    let (file, path) = log.create(CONSUMING)?;
    let result = (|| {
        let mut sources = parts
            .iter()
            .map(|p| ReaderLines::new(BufReader::with_capacity(256 << 10, File::open(p)?)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let mut last: Option<Vec<u8>> = None;
        let mut dropped = 0u64;
        let mut written = 0u64;
        merge::merge(&mut sources, |line| {
            let body = line.strip_suffix(b"\n");
            let ok = body.is_some_and(|b| check_record(b).is_ok())
                && last.as_deref().is_none_or(|l| l <= &line[..26]);
            if !ok {
                dropped += 1;
                return Ok(true);
            }
            last = Some(line[..26].to_vec());
            written += line.len() as u64;
            out.write_all(line).map(|_| true)
        })?;
        out.flush()?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "dropped malformed or unsorted lines from gathered segments"
            );
        }
        Ok((written, last.map(|id| crate::record::ulid_ms(&id))))
    })();
    match result {
        Ok((n, newest)) => Ok((path, n, newest)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

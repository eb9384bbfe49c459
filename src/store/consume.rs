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
use super::replicate::{ReplicaError, ReplicaWriter};
use crate::cluster::{Peers, Role};
use crate::http::{self, Client};
use crate::merge::{self, ReaderLines};
use crate::metrics::Metrics;
use crate::record::{BODY_OFFSET, ULID_LEN, check_record};

/// How long to wait for an ingester's or store node's response headers.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to repeat the "not enough store nodes" warning.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long an ingester that failed a call is skipped; doubled (up to [`COOL_DOWN_MAX`]) each
/// time it fails again.
const COOL_DOWN: Duration = Duration::from_secs(10);
const COOL_DOWN_MAX: Duration = Duration::from_secs(300);
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

/// An ingester in this process (an `ingeststore` node's own), which a consumer reaches
/// without HTTP: the same claim, read and commit as `/ingest/next`, `/ingest/read`,
/// `/ingest/commit` and `/ingest/failed`.
pub trait LocalIngest: Send + Sync + std::fmt::Debug {
    /// Claim the oldest flushed segment: its id, or `None` when there is none.
    fn next(&self) -> futures_util::future::BoxFuture<'_, io::Result<Option<String>>>;
    /// Open a claimed segment to read it (once).
    fn read(&self, id: &str) -> io::Result<std::fs::File>;
    /// Commit (`true`) or fail back a claimed segment.
    fn finish<'a>(
        &'a self,
        id: &'a str,
        commit: bool,
    ) -> futures_util::future::BoxFuture<'a, io::Result<()>>;
}

/// A segment's bytes as they are read.
type SegmentBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send>>;

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
    /// What the gather found in each of `parts`: the ULID range of a well-formed sorted
    /// segment, `None` for one that needs the forgiving merge.
    ranges: Vec<Option<Range>>,
    /// Which of `parts` in-order segments are appended to (the aggregate in the making).
    open: Option<usize>,
    bytes: u64,
    since: Option<Instant>,
    empty_polls: usize,
    /// When to warn next that there are fewer store nodes than the replication factor.
    warn_at: Instant,
    /// This node's API address and store: a replica for itself is adopted in place.
    local: Option<(String, Arc<super::StoreApi>)>,
    /// This node's API address and ingester: its segments are taken without HTTP (or TLS).
    local_ingest: Option<(String, Arc<dyn LocalIngest>)>,
    /// Ingesters that failed a call: skipped until the instant, with the cool-down to double
    /// if they fail again.
    cooling: std::collections::HashMap<String, (Instant, Duration)>,
    /// Rate limit of the "gathering a segment failed" line (one a second, with the count held
    /// back): on a full disk it would otherwise repeat at every poll.
    failed_log: crate::throttle::Throttle,
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
            ranges: Vec::new(),
            open: None,
            bytes: 0,
            since: None,
            empty_polls: 0,
            cooling: Default::default(),
            failed_log: crate::throttle::Throttle::new(Duration::from_secs(1)),
            // The first warning comes after a grace period for the cluster to form. (Subtracting
            // from `Instant::now()` here would panic on a machine booted moments ago.)
            warn_at: Instant::now() + JOIN_GRACE,
            local: None,
            local_ingest: None,
        }
    }

    /// Segments of this node's own ingester (API address `me`) are taken from `ingest`
    /// directly, not over HTTP.
    pub fn with_local_ingest(mut self, me: String, ingest: Arc<dyn LocalIngest>) -> Self {
        self.local_ingest = Some((me, ingest));
        self
    }

    /// The in-process ingester, if `ingester` is this node.
    fn local_ingester(&self, ingester: &str) -> Option<Arc<dyn LocalIngest>> {
        match &self.local_ingest {
            Some((me, li)) if me == ingester => Some(Arc::clone(li)),
            _ => None,
        }
    }

    /// Replicas for this node (API address `me`) go straight into `store`, not over HTTP.
    pub fn with_local(mut self, me: String, store: Arc<super::StoreApi>) -> Self {
        self.local = Some((me, store));
        self
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
            if Instant::now() >= self.warn_at {
                self.warn_at = Instant::now() + WARN_EVERY;
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
                // As many empty polls as there are ingesters: nothing more is flushed now
                // (likely), so what was gathered goes out rather than waiting its age.
                || self.empty_polls >= ingesters.len().max(1));
        if ready {
            let newest = self.replicate(&stores).await;
            self.finish(newest.is_some()).await;
            if let Some(Some(ms)) = newest {
                let lag = (crate::gotime::now_ms() - ms as i64).max(0) as f64 / 1000.0;
                self.metrics.store_consumer_lag_seconds.set(lag);
            }
            return Duration::ZERO;
        }
        // An ingester that failed (stopped, partitioned, its disk broken) is left alone for a
        // while, so it holds up the others' records for one timeout, not one per attempt.
        let now = Instant::now();
        self.cooling.retain(|i, _| ingesters.contains(i));
        let healthy: Vec<&String> = ingesters
            .iter()
            .filter(|i| self.cooling.get(*i).is_none_or(|(until, _)| now >= *until))
            .collect();
        let pick = if healthy.is_empty() {
            ingesters.choose(&mut rand::rng())
        } else {
            healthy.choose(&mut rand::rng()).copied()
        };
        let Some(ingester) = pick.cloned() else {
            return self.cfg.delay;
        };
        let result = self.gather(&ingester).await;
        match &result {
            Ok(_) => {
                self.cooling.remove(&ingester);
            }
            Err(_) => {
                let next = self
                    .cooling
                    .get(&ingester)
                    .map_or(COOL_DOWN, |(_, d)| (*d * 2).min(COOL_DOWN_MAX));
                self.cooling
                    .insert(ingester.clone(), (Instant::now() + next, next));
            }
        }
        match result {
            Ok(true) => {
                self.empty_polls = 0;
                Duration::ZERO
            }
            Ok(false) => {
                self.empty_polls += 1;
                self.cfg.delay
            }
            Err(e) => {
                if let Some(held) = self.failed_log.allow() {
                    tracing::warn!(%ingester, error = %e, suppressed = held, "gathering a segment failed; failing the aggregate back");
                }
                self.finish(false).await;
                self.cfg.delay
            }
        }
    }

    /// `GET url` of an ingester: its body if it answered 2xx, `None` for a 404 when
    /// `none_if_not_found`; any other answer is an error carrying its text.
    async fn get(
        &self,
        url: &str,
        none_if_not_found: bool,
    ) -> io::Result<Option<hyper::body::Incoming>> {
        let (status, body) = http::call(
            &self.client,
            Method::GET,
            url,
            http::empty_body(),
            CALL_TIMEOUT,
        )
        .await?;
        if none_if_not_found && status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let text = http::body_text(body).await.unwrap_or_default();
            return Err(http::CallError::status(url, status, &text));
        }
        Ok(Some(body))
    }

    /// Claim a segment of `ingester` over HTTP and start reading it (`None`: it had none).
    async fn claim_over_http(&mut self, ingester: &str) -> io::Result<Option<SegmentBody>> {
        let Some(body) = self.get(&http::url(ingester, "/ingest/next"), true).await? else {
            return Ok(None);
        };
        let id = http::body_text(body).await?.trim().to_string();
        self.pending.push((ingester.to_string(), id.clone()));
        let url = http::url(ingester, &format!("/ingest/read?id={id}"));
        let Some(body) = self.get(&url, false).await? else {
            return Ok(None);
        };
        // A segment body that stalls (a SIGSTOPped ingester) fails the step after CALL_TIMEOUT.
        Ok(Some(Box::pin(idle_timeout(
            body.into_data_stream(),
            CALL_TIMEOUT,
        ))))
    }

    /// Claim a segment of `ingester`, in process or over HTTP, and start reading it (`None`:
    /// it had none).
    async fn claim(&mut self, ingester: &str) -> io::Result<Option<SegmentBody>> {
        let Some(li) = self.local_ingester(ingester) else {
            return self.claim_over_http(ingester).await;
        };
        let Some(id) = li.next().await? else {
            return Ok(None);
        };
        self.pending.push((ingester.to_string(), id.clone()));
        Ok(Some(Box::pin(http::file_chunks(li.read(&id)?))))
    }

    /// Claim and read one segment from `ingester`; `Ok(false)` if it had none.
    async fn gather(&mut self, ingester: &str) -> io::Result<bool> {
        let Some(mut stream) = self.claim(ingester).await? else {
            return Ok(false);
        };
        let (head, first) = read_head(&mut stream).await?;
        // A segment that starts after everything in the open aggregate is appended to it:
        // one ingester's segments arrive in order, so the aggregate is written once and
        // needs no merge. Anything else is spooled on its own and merged later.
        let append = match (self.open, first) {
            // (An open aggregate without a range is still empty: its first segment was.)
            (Some(i), Some(f)) => self.ranges[i].is_none_or(|(_, high)| f > high),
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let target = self.target(append).await?;
        let chunks = futures_util::stream::iter(head.into_iter().map(Ok)).chain(stream);
        let n = self.copy_in(target, chunks).await?;
        self.bytes += n;
        self.since.get_or_insert_with(Instant::now);
        self.metrics.store_consumed_segments.inc();
        self.metrics.store_consumed_bytes.inc_by(n);
        Ok(true)
    }

    /// Where the next segment goes: appended to the open aggregate (`append`), or into a new
    /// spool (which becomes the open aggregate when `append`).
    async fn target(&mut self, append: bool) -> io::Result<Target> {
        if append && let Some(i) = self.open {
            let path = self.parts[i].clone();
            let file = std::fs::OpenOptions::new().append(true).open(&path)?;
            let len = file.metadata()?.len();
            return Ok(Target {
                file,
                path,
                index: i,
                appended_at: Some(len),
            });
        }
        let log = Arc::clone(&self.log);
        let (file, path) = tokio::task::spawn_blocking(move || log.create(CONSUMING))
            .await
            .map_err(io::Error::other)??;
        self.parts.push(path.clone());
        self.ranges.push(None);
        let index = self.parts.len() - 1;
        if append {
            self.open = Some(index);
        }
        Ok(Target {
            file,
            path,
            index,
            appended_at: None,
        })
    }

    /// Write a segment's `chunks` into `target`, checking its records on the way in (well
    /// formed and sorted); one that is not goes to a spool of its own, to be merged. Returns
    /// the bytes read.
    async fn copy_in(
        &mut self,
        target: Target,
        mut chunks: impl futures_util::Stream<Item = io::Result<bytes::Bytes>> + Unpin,
    ) -> io::Result<u64> {
        let Target {
            file,
            path,
            index,
            appended_at,
        } = target;
        let sync_handle = file.try_clone()?;
        let mut writer = ReplicaWriter::new(file, path);
        let mut well_formed = true;
        let mut n = 0u64;
        let mut spill: Option<BufWriter<File>> = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            if well_formed {
                match writer.push(&chunk) {
                    Ok(()) => continue,
                    Err(ReplicaError::Malformed { .. }) => well_formed = false,
                    Err(ReplicaError::Io(e)) => return Err(e),
                    Err(e @ ReplicaError::Body(_)) => return Err(io::Error::other(e)),
                }
                if let Some(len) = appended_at {
                    // Not fit to append after all: move what went into the aggregate to a
                    // spool of its own, and put the aggregate back as it was.
                    writer.flush()?;
                    let own = self.split_off(index, len)?;
                    spill = Some(BufWriter::with_capacity(1 << 20, own));
                }
            }
            match &mut spill {
                Some(w) => w.write_all(&chunk)?,
                None => writer.write_unchecked(&chunk)?,
            }
        }
        if let Some(mut w) = spill {
            w.flush()?;
            return Ok(n);
        }
        writer.flush()?;
        let checked = match well_formed.then(|| writer.finish()) {
            Some(Ok(r)) => Some(r),
            Some(Err(ReplicaError::Io(e))) => return Err(e),
            Some(Err(e @ ReplicaError::Body(_))) => return Err(io::Error::other(e)),
            Some(Err(ReplicaError::Malformed { .. })) | None => None,
        };
        match (checked, appended_at) {
            (Some(Some(r)), _) => {
                let low = self.ranges[index].map_or(r.low, |(low, _)| low);
                self.ranges[index] = Some((low, r.high));
                if self.open == Some(index) {
                    // Start writing the appended bytes back now, while the next segment
                    // is read, so the commit's fsync has little left to do.
                    tokio::task::spawn_blocking(move || sync_handle.sync_data());
                }
            }
            (Some(None), _) => {} // an empty segment
            // A torn last line: keep it out of the aggregate, in a spool of its own.
            (None, Some(len)) => {
                self.split_off(index, len)?;
            }
            // A malformed segment in a spool of its own is merged later; it takes no
            // appends.
            (None, None) => {
                if self.open == Some(index) {
                    self.open = None;
                }
            }
        }
        Ok(n)
    }

    /// Move the bytes of `parts[i]` past `len` (a segment that turned out unfit to append)
    /// into a spool of their own, to be merged, and cut `parts[i]` back to `len`.
    fn split_off(&mut self, i: usize, len: u64) -> io::Result<File> {
        let (mut own, own_path) = self.log.create(CONSUMING)?;
        let mut src = File::open(&self.parts[i])?;
        std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(len))?;
        std::io::copy(&mut src, &mut own)?;
        File::options()
            .write(true)
            .open(&self.parts[i])?
            .set_len(len)?;
        self.parts.push(own_path);
        self.ranges.push(None);
        Ok(own)
    }

    /// Merge the gathered segments and send the aggregate (split into its late and on-time
    /// parts, [`split_late`]) to `replication_factor` store nodes. `Some` on success, with the
    /// time (ms) of the aggregate's newest record if it had any.
    async fn replicate(&mut self, stores: &[String]) -> Option<Option<u64>> {
        let log = Arc::clone(&self.log);
        let parts = self.parts.clone();
        let ranges = self.ranges.clone();
        let merged = tokio::task::spawn_blocking(move || {
            let spool = aggregate(&log, &parts, &ranges)?;
            match split_late(&log, &spool) {
                Ok(split) => Ok((spool, split)),
                Err(e) => {
                    if !parts.contains(&spool.0) {
                        let _ = std::fs::remove_file(&spool.0);
                    }
                    Err(e)
                }
            }
        })
        .await;
        let (spool, split) = match merged {
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
        for (path, _, _) in std::iter::once(&spool).chain(&split) {
            if !self.parts.contains(path) {
                self.parts.push(path.clone());
            }
        }
        let Some((_, high)) = spool.2 else {
            return Some(None); // nothing but empty segments: commit them
        };
        let spools = if split.is_empty() { vec![spool] } else { split };
        for (path, bytes, range) in spools {
            let Some((low, high)) = range else { continue };
            if !self.replicate_one(stores, &path, bytes, low, high).await {
                return None;
            }
        }
        Some(Some(crate::record::ulid_ms(&high)))
    }

    /// Send one spool (records `low` to `high`) to `replication_factor` store nodes; whether
    /// enough took it.
    async fn replicate_one(
        &self,
        stores: &[String],
        path: &std::path::Path,
        bytes: u64,
        low: [u8; ULID_LEN],
        high: [u8; ULID_LEN],
    ) -> bool {
        let mut order = stores.to_vec();
        order.shuffle(&mut rand::rng());
        let mut copies = 0;
        for store in order {
            if copies >= self.cfg.replication_factor {
                break;
            }
            if let Some((me, api)) = &self.local
                && *me == store
            {
                let (api, spool) = (Arc::clone(api), path.to_path_buf());
                match tokio::task::spawn_blocking(move || {
                    api.accept_local(&spool, &low, &high, bytes)
                })
                .await
                {
                    Ok(Ok(())) => copies += 1,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "storing the aggregate locally failed")
                    }
                    Err(e) => tracing::warn!(error = %e, "storing the aggregate locally failed"),
                }
                continue;
            }
            let url = http::url(&store, "/store/replicate");
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "opening aggregate spool");
                    return false;
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
            return false;
        }
        true
    }

    /// Commit (or fail) every pending segment, then reset.
    async fn finish(&mut self, commit: bool) {
        let verb = if commit { "commit" } else { "failed" };
        // All at once: an ingester that does not answer delays no other's commit.
        let calls = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(ingester, id)| {
                let client = self.client.clone();
                let local = self.local_ingester(&ingester);
                async move {
                    if let Some(li) = local {
                        if let Err(e) = li.finish(&id, commit).await {
                            tracing::warn!(%ingester, %id, error = %e, "{verb} failed");
                        }
                        return;
                    }
                    let url = http::url(&ingester, &format!("/ingest/{verb}?id={id}"));
                    match http::call(&client, Method::POST, &url, http::empty_body(), CALL_TIMEOUT)
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
            });
        futures_util::stream::iter(calls)
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        self.ranges.clear();
        self.open = None;
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
/// First and last ULIDs of a segment.
type Range = ([u8; ULID_LEN], [u8; ULID_LEN]);

/// An aggregate spool: its path, its size and its first and last ULIDs (none if empty).
type Spool = (PathBuf, u64, Option<Range>);

/// Records more than this older than an aggregate's newest record are late: they go into a
/// segment of their own (an hour).
pub const LATE: Duration = Duration::from_secs(3600);

/// An aggregate's late records ([`LATE`]), which are its first ones (it is sorted), and the
/// rest, as two spools; none when it has no late records. A late record (an agent's replayed
/// buffer, yesterday's file) would otherwise widen the aggregate's ULID range back to its
/// time: every segment after it would overlap everything stored since, and each query would
/// open them all. Late segments are merged with each other by compaction instead.
fn split_late(log: &StoreLog, spool: &Spool) -> io::Result<Vec<Spool>> {
    let (path, bytes, Some((low, high))) = spool else {
        return Ok(Vec::new());
    };
    let cut = crate::record::ulid_ms(high).saturating_sub(LATE.as_millis() as u64);
    if crate::record::ulid_ms(low) >= cut {
        return Ok(Vec::new());
    }
    // Where the first on-time record starts, and the last late one's ULID.
    let mut reader = BufReader::with_capacity(256 << 10, File::open(path)?);
    let mut line = Vec::new();
    let (mut at, mut last_late) = (0u64, *low);
    let first_on_time = loop {
        line.clear();
        let n = io::BufRead::read_until(&mut reader, b'\n', &mut line)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let id = merge::key(&line);
        if crate::record::ulid_ms(&id) >= cut {
            break id;
        }
        last_late = id;
        at += n as u64;
    };
    let copy = |from: u64, len: u64| -> io::Result<PathBuf> {
        let (mut out, out_path) = log.create(CONSUMING)?;
        let mut src = File::open(path)?;
        io::Seek::seek(&mut src, io::SeekFrom::Start(from))?;
        if let Err(e) = io::copy(&mut io::Read::take(src, len), &mut out) {
            let _ = std::fs::remove_file(&out_path);
            return Err(e);
        }
        Ok(out_path)
    };
    let late = copy(0, at)?;
    let on_time = match copy(at, bytes - at) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&late);
            return Err(e);
        }
    };
    Ok(vec![
        (late, at, Some((*low, last_late))),
        (on_time, bytes - at, Some((first_on_time, *high))),
    ])
}

/// Build the aggregate of the gathered `parts` into one more spool file. When every part was
/// checked at gather time and no two overlap (one ingester's consecutive segments), the
/// aggregate is their concatenation in ULID order, copied by the kernel; otherwise they are
/// merged record by record with dedup ([`merge_parts`]).
fn aggregate(log: &StoreLog, parts: &[PathBuf], ranges: &[Option<Range>]) -> io::Result<Spool> {
    let mut order: Vec<(usize, Range)> = Vec::with_capacity(parts.len());
    for (i, r) in ranges.iter().enumerate() {
        match r {
            Some(r) => order.push((i, *r)),
            None if std::fs::metadata(&parts[i])?.len() == 0 => {} // an empty segment
            None => return merge_parts(log, parts),
        }
    }
    order.sort_by_key(|(_, (low, _))| *low);
    if order.windows(2).any(|w| w[0].1.1 >= w[1].1.0) {
        return merge_parts(log, parts);
    }
    if let [(i, range)] = order[..] {
        // One checked file (the appended aggregate): it is the answer as it is.
        let n = std::fs::metadata(&parts[i])?.len();
        return Ok((parts[i].clone(), n, Some(range)));
    }
    let (mut out, path) = log.create(CONSUMING)?;
    let result = (|| {
        let mut written = 0;
        for (i, _) in &order {
            // std::io::copy between files uses copy_file_range: no copy through user space.
            written += std::io::copy(&mut File::open(&parts[*i])?, &mut out)?;
        }
        Ok(written)
    })();
    match result {
        Ok(n) => Ok((
            path,
            n,
            order.first().zip(order.last()).map(|(f, l)| (f.1.0, l.1.1)),
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// A source that skips lines which are not records, so one bad line in the middle of a
/// segment (which would sort after every ULID) does not hold back the records after it.
struct WellFormed<S> {
    inner: S,
    skipped: u64,
}

impl<S: merge::Source> WellFormed<S> {
    fn new(inner: S) -> io::Result<Self> {
        let mut s = WellFormed { inner, skipped: 0 };
        s.skip_bad()?;
        Ok(s)
    }

    fn skip_bad(&mut self) -> io::Result<()> {
        while let Some(line) = self.inner.current() {
            let ok = line
                .strip_suffix(b"\n")
                .is_some_and(|b| check_record(b).is_ok());
            if ok {
                return Ok(());
            }
            self.skipped += 1;
            self.inner.advance()?;
        }
        Ok(())
    }
}

impl<S: merge::Source> merge::Source for WellFormed<S> {
    fn current(&self) -> Option<&[u8]> {
        self.inner.current()
    }
    fn advance(&mut self) -> io::Result<()> {
        self.inner.advance()?;
        self.skip_bad()
    }
}

fn merge_parts(log: &StoreLog, parts: &[PathBuf]) -> io::Result<Spool> {
    let (file, path) = log.create(CONSUMING)?;
    let result = (|| {
        let mut sources = parts
            .iter()
            .map(|p| {
                ReaderLines::new(BufReader::with_capacity(256 << 10, File::open(p)?))
                    .and_then(WellFormed::new)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let mut last: Option<Vec<u8>> = None;
        let mut first: Option<[u8; ULID_LEN]> = None;
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
            first.get_or_insert_with(|| merge::key(line));
            last = Some(line[..26].to_vec());
            written += line.len() as u64;
            out.write_all(line).map(|_| true)
        })?;
        out.flush()?;
        dropped += sources.iter().map(|s| s.skipped).sum::<u64>();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "dropped malformed or unsorted lines from gathered segments"
            );
        }
        Ok((written, first.zip(last.map(|l| merge::key(&l)))))
    })();
    match result {
        Ok((n, range)) => Ok((path, n, range)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// `stream`'s items as `io::Result`s; an error once no item arrived for `idle`.
fn idle_timeout<E: std::fmt::Display>(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    idle: Duration,
) -> impl futures_util::Stream<Item = io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(io::Error::other(e.to_string())), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("segment body idle for {idle:?}"),
                )),
                None,
            )),
        }
    })
}

/// Where a segment being gathered is written.
struct Target {
    file: File,
    path: std::path::PathBuf,
    /// Its index in the consumer's parts.
    index: usize,
    /// For an append to the open aggregate: the aggregate's length before it.
    appended_at: Option<u64>,
}

/// Read a segment body up to its first record's ULID (to choose where the segment goes):
/// the chunks read, and the ULID if the body starts with a valid one.
async fn read_head(
    stream: &mut SegmentBody,
) -> io::Result<(Vec<bytes::Bytes>, Option<[u8; ULID_LEN]>)> {
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut seen = 0;
    while seen < BODY_OFFSET {
        match stream.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                seen += chunk.len();
                chunks.push(chunk);
            }
            None => break,
        }
    }
    let head: Vec<u8> = chunks.iter().flatten().take(ULID_LEN).copied().collect();
    let first =
        (head.len() == ULID_LEN && crate::record::is_valid_ulid(&head)).then(|| merge::key(&head));
    Ok((chunks, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(log: &StoreLog, body: &str) -> (PathBuf, Option<Range>) {
        let (file, path) = log.create(CONSUMING).unwrap();
        let mut w = ReplicaWriter::new(file, path.clone());
        let range = match w.push(body.as_bytes()) {
            Ok(()) => w.finish().ok().flatten().map(|r| (r.low, r.high)),
            Err(_) => {
                w.write_unchecked(body.as_bytes()).unwrap();
                w.flush().unwrap();
                None
            }
        };
        (path, range)
    }

    fn rec(n: u32, text: &str) -> String {
        format!("{:026} t {text}\n", n)
    }

    #[test]
    fn late_records_are_split_off_into_a_segment_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        let now = crate::gotime::now_ms() as u64;
        let at = |ms: u64, e: u128, text: &str| {
            let id = crate::record::encode_ulid(ms, e);
            format!("{} t {text}\n", String::from_utf8_lossy(&id))
        };
        let late = [
            at(now - 5 * 86_400_000, 1, "days late"),
            at(now - 3_700_000, 2, "an hour late"),
        ];
        let on_time = [at(now - 3_500_000, 3, "minutes late"), at(now, 4, "new")];
        let whole = late.concat() + &on_time.concat();
        let (path, range) = part(&log, &whole);
        let spool = (path, whole.len() as u64, range);
        let split = split_late(&log, &spool).unwrap();
        let [(lp, ln, lr), (op, on, or)] = &split[..] else {
            panic!("{split:?}")
        };
        assert_eq!(std::fs::read_to_string(lp).unwrap(), late.concat());
        assert_eq!(std::fs::read_to_string(op).unwrap(), on_time.concat());
        assert_eq!((*ln + *on) as usize, whole.len());
        let key = |l: &str| merge::key(l.as_bytes());
        assert_eq!(*lr, Some((key(&late[0]), key(&late[1]))));
        assert_eq!(*or, Some((key(&on_time[0]), key(&on_time[1]))));
        // An aggregate within the hour of its newest record stays whole.
        let (path, range) = part(&log, &on_time.concat());
        let spool = (path, on_time.concat().len() as u64, range);
        assert!(split_late(&log, &spool).unwrap().is_empty());
    }

    #[test]
    fn aggregates_concatenate_disjoint_parts_and_merge_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        let build = |bodies: &[String]| {
            let (parts, ranges): (Vec<_>, Vec<_>) = bodies.iter().map(|b| part(&log, b)).unzip();
            let (path, n, range) = aggregate(&log, &parts, &ranges).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(n as usize, text.len());
            (text, range)
        };
        // Disjoint parts, gathered out of order: concatenated in ULID order.
        let a = rec(1, "a") + &rec(2, "b");
        let b = rec(3, "c") + &rec(4, "d");
        let (text, range) = build(&[b.clone(), String::new(), a.clone()]);
        assert_eq!(text, a.clone() + &b);
        let range = range.unwrap();
        assert_eq!(
            (&range.0[..], &range.1[..]),
            (
                &merge::key(a.as_bytes())[..],
                &merge::key(rec(4, "d").as_bytes())[..]
            )
        );
        // One checked part (the appended aggregate) is the aggregate itself, uncopied.
        let (parts, ranges): (Vec<_>, Vec<_>) = [a.clone()].iter().map(|b| part(&log, b)).unzip();
        let (path, _, _) = aggregate(&log, &parts, &ranges).unwrap();
        assert_eq!(path, parts[0]);
        // Overlapping parts (two ingesters, or a retried segment): merged with dedup.
        let c = rec(2, "b") + &rec(5, "e");
        let (text, _) = build(&[a.clone(), c]);
        assert_eq!(text, rec(1, "a") + &rec(2, "b") + &rec(5, "e"));
        // A malformed part goes through the forgiving merge: its bad lines are dropped.
        let bad = rec(6, "f") + "not a record\n" + &rec(7, "g");
        let (text, range) = build(&[a.clone(), bad]);
        assert_eq!(text, a + &rec(6, "f") + &rec(7, "g"));
        assert_eq!(
            &range.unwrap().1[..],
            &merge::key(rec(7, "g").as_bytes())[..]
        );
    }
}

//! The ingester's shared state, which every listener and connection handler holds: the
//! segment log, framing and rotation rules, limits, metrics, the group commit, the bulk
//! batches waiting for their commit, the stop signal, and the door (TLS and credentials).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::IngestLog;
use super::writer::Rotation;
use crate::metrics::{Labels, Metrics};
use crate::record::FramerConfig;
use crate::security::auth::Guard;
use crate::throttle::Throttle;

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    /// Buffered writes, no fsync.
    Fast,
    /// fsync after every batch read, before acknowledging it.
    Durable,
    /// Length-prefixed batches acknowledged once stored N ways ([`super::bulk`]).
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

/// Limits on ingest connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections served at once, all ingest listeners together; more are refused (reset).
    pub max_connections: usize,
    /// A fast or durable connection that sends nothing for this long is acknowledged and
    /// closed; `None` never.
    pub idle_timeout: Option<Duration>,
    /// A syslog frame or a bulk batch must arrive whole within this, plus 1 s per MiB a bulk
    /// batch declares (`-api.body-timeout`, as for HTTP bodies).
    pub partial_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(3600)),
            partial_timeout: crate::http::BODY_TIMEOUT,
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
    /// Connection limits.
    pub limits: ConnLimits,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Group commit for durable connections.
    pub sync: super::sync::SyncGroup,
    /// Bulk batches waiting for their segment's commit.
    pub bulk: Arc<Waiters>,
    /// Turns true when the node stops: handlers acknowledge what they stored and close.
    pub(super) stop: watch::Sender<bool>,
    /// Live connection handlers.
    pub(super) live: AtomicUsize,
    /// Rate limit of the "connection refused" and "write failed" log lines.
    pub(super) refused_log: Throttle,
    pub(super) failed_log: Throttle,
    /// TLS and credentials.
    pub(super) door: Arc<Door>,
    /// The node's memory budget, which bulk batches are read against.
    pub(super) budget: Arc<crate::memory::Budget>,
    /// How far from now a bulk record's ULID may be.
    pub(super) bounds: super::EventBounds,
}

/// What every ingest listener checks at the door: TLS (`-tls.cert-file`), and who may send (a
/// token with the `ingest` role, or a verified client certificate).
#[derive(Debug)]
pub struct Door {
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
    guard: Arc<Guard>,
    refused: Family<Labels, Counter>,
    refused_log: Throttle,
}

impl Ingester {
    /// An ingester with no connections yet.
    pub fn new(
        log: Arc<IngestLog>,
        framer: FramerConfig,
        rotation: Rotation,
        limits: ConnLimits,
        metrics: Arc<Metrics>,
        sync: super::sync::SyncGroup,
        bulk: Arc<Waiters>,
    ) -> Ingester {
        let door = Arc::new(Door::open(&metrics));
        Ingester {
            log,
            framer,
            rotation,
            limits,
            metrics,
            sync,
            bulk,
            stop: watch::channel(false).0,
            live: AtomicUsize::new(0),
            refused_log: Throttle::new(Duration::from_secs(10)),
            failed_log: Throttle::new(Duration::from_secs(10)),
            door,
            budget: crate::memory::Budget::new(usize::MAX),
            bounds: super::EventBounds::default(),
        }
    }

    /// Check every connection at `door`.
    pub fn secured(mut self, door: Arc<Door>) -> Self {
        self.door = door;
        self
    }

    /// The ingester refusing bulk records outside `bounds` (the defaults without).
    pub fn bounded(mut self, bounds: super::EventBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The ingester with the node's memory `budget` (unlimited without).
    pub fn budgeted(mut self, budget: Arc<crate::memory::Budget>) -> Self {
        self.budget = budget;
        self
    }
}

impl Door {
    /// No TLS, and everyone may send (`metrics` counts refusals all the same).
    pub fn open(metrics: &Metrics) -> Door {
        Door::new(None, Arc::new(Guard::default()), metrics)
    }

    /// Speak TLS with `tls`, and let only those `guard` allows send.
    pub fn new(
        tls: Option<Arc<rustls::ServerConfig>>,
        guard: Arc<Guard>,
        metrics: &Metrics,
    ) -> Door {
        Door {
            tls,
            guard,
            refused: metrics.ingest_refused_connections.clone(),
            refused_log: Throttle::new(Duration::from_secs(10)),
        }
    }

    /// Whether connections must present credentials (tokens or client certificates are on).
    pub fn checks(&self) -> bool {
        self.guard.is_on()
    }

    /// The listeners' TLS configuration, if any.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// Check the token of an `OKLOG-AUTH` line (`None`: there was none) of a connection that
    /// presented a verified client certificate or not (with nothing to check, anything goes).
    /// The refusal's text (`unauthorized: ...`, `forbidden: ...`) is what the client is told.
    pub fn authorize(
        &self,
        token: Option<&str>,
        cert: bool,
    ) -> Result<(), crate::security::auth::Refusal> {
        use crate::security::auth::{Need, Role};
        self.guard.check(Need::Role(Role::Ingest), token, cert)
    }

    /// Count and log (rate-limited, never the token) a connection refused for its credentials.
    pub fn refused(&self, peer: SocketAddr, listener: &'static str, why: &str) {
        self.refused
            .get_or_create(&vec![("modality", listener)])
            .inc();
        if let Some(held) = self.refused_log.allow() {
            tracing::warn!(%peer, listener, why, suppressed = held, "ingest connection refused");
        }
    }
}

impl Ingester {
    /// The door every connection passes.
    pub fn door(&self) -> &Arc<Door> {
        &self.door
    }

    /// Connection handlers running now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Stop every connection handler and wait (up to `timeout`) for them to acknowledge what
    /// they stored and close.
    pub async fn stop(&self, timeout: Duration) {
        self.stop.send_replace(true);
        let deadline = Instant::now() + timeout;
        while self.live() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Batches waiting for their segment to be committed, by segment file stem.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Waiters {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A store node committed the segment with this stem (called by the ingest API).
    pub fn committed(&self, stem: &str) {
        if let Some(tx) = self.lock().remove(stem) {
            let _ = tx.send(());
        }
    }
}

/// Make closing `stream` a reset (linger 0), or a graceful FIN again. (A zero linger never
/// blocks the closing thread; only a positive one would.)
pub(super) fn reset_on_close(stream: &TcpStream, reset: bool) -> io::Result<()> {
    socket2::SockRef::from(stream).set_linger(reset.then_some(Duration::ZERO))
}

//! The ingest HTTP API that store consumers drive, mounted at `/ingest`:
//! `GET /next` claims the oldest flushed segment and answers an id; `GET /read?id=` streams it;
//! `POST /commit?id=` deletes it; `POST /failed?id=` makes it flushed again. Pending segments
//! not committed within `-ingest.segment-pending-timeout` are failed back automatically.
//!
//! Ids are random UUIDs that map to files only through this module's table: a request can never
//! name a path. An id that is not a canonical UUID is a 400 and touches nothing.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

use super::IngestLog;
use crate::disk;
use crate::http::{file_body, text};
use crate::metrics::Metrics;

#[derive(Debug)]
struct Pending {
    path: PathBuf,
    deadline: Instant,
    reading: bool,
}

/// State shared by the ingest API handlers.
#[derive(Debug)]
pub struct IngestApi {
    log: Arc<IngestLog>,
    pending_timeout: Duration,
    metrics: Arc<Metrics>,
    pending: Mutex<HashMap<String, Pending>>,
    bulk: Arc<super::ingester::Waiters>,
}

type Params = Query<HashMap<String, String>>;

impl IngestApi {
    /// API state over `log`.
    pub fn new(
        log: Arc<IngestLog>,
        pending_timeout: Duration,
        metrics: Arc<Metrics>,
        bulk: Arc<super::ingester::Waiters>,
    ) -> Arc<Self> {
        Arc::new(IngestApi {
            log,
            pending_timeout,
            metrics,
            pending: Mutex::new(HashMap::new()),
            bulk,
        })
    }

    /// The `/ingest/*` routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ingest/next", get(next))
            .route("/ingest/read", get(read))
            .route("/ingest/commit", post(commit))
            .route("/ingest/failed", post(failed))
            .route("/ingest/_segmentstate", get(segment_state))
            .with_state(Arc::clone(self))
    }

    /// Number of segments claimed and not yet committed or failed.
    pub fn pending_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding this lock would be a bug in a few lines of map code; the map
        // itself stays consistent, so keep serving.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fail back pending segments past their deadline, every second, until shutdown.
    pub async fn run_timeouts(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let now = Instant::now();
            let expired: Vec<(String, PathBuf)> = {
                let mut map = self.lock();
                let ids: Vec<String> = map
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|id| map.remove(&id).map(|p| (id, p.path)))
                    .collect()
            };
            for (id, path) in expired {
                tracing::warn!(%id, segment = %path.display(), "pending segment timed out; failing it back");
                self.fail_path(path).await;
            }
        }
    }

    /// Fail every pending segment back (shutdown).
    pub async fn fail_all(&self) {
        let all: Vec<PathBuf> = self.lock().drain().map(|(_, p)| p.path).collect();
        for path in all {
            self.fail_path(path).await;
        }
    }

    async fn fail_path(&self, path: PathBuf) {
        let log = Arc::clone(&self.log);
        let shown = path.display().to_string();
        match tokio::task::spawn_blocking(move || log.fail(&path)).await {
            Ok(Ok(())) => {
                self.metrics.ingest_failed_segments.inc();
            }
            Ok(Err(e)) => tracing::error!(segment = %shown, error = %e, "failing segment"),
            Err(e) => tracing::error!(error = %e, "failing segment"),
        }
    }
}

/// The `id` parameter, checked: missing or not a canonical id → 400.
fn id_param(params: &Params) -> Result<String, Box<Response>> {
    match params.get("id") {
        None => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "missing id parameter\n",
        ))),
        Some(id) if disk::is_uuid(id) => Ok(id.clone()),
        Some(id) => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("invalid id {id:?}: not a segment id\n"),
        ))),
    }
}

fn unknown() -> Refused {
    (StatusCode::NOT_FOUND, "segment not found\n".into())
}

/// Why a claim, read, commit or fail was refused: the status and message the API answers.
pub type Refused = (StatusCode, String);

impl IngestApi {
    /// Claim the oldest flushed segment (`/ingest/next`): its id, or `None` when there is none.
    pub async fn claim(&self) -> io::Result<Option<String>> {
        let log = Arc::clone(&self.log);
        let taken = tokio::task::spawn_blocking(move || log.take_oldest())
            .await
            .map_err(io::Error::other)??;
        Ok(taken.map(|path| {
            let id = disk::new_uuid();
            self.lock().insert(
                id.clone(),
                Pending {
                    path,
                    deadline: Instant::now() + self.pending_timeout,
                    reading: false,
                },
            );
            id
        }))
    }

    /// Open a claimed segment to read it (`/ingest/read`); only once.
    pub fn open(&self, id: &str) -> Result<std::fs::File, Refused> {
        let path = {
            let mut map = self.lock();
            let Some(p) = map.get_mut(id) else {
                return Err(unknown());
            };
            if p.reading {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "another client is already reading this segment\n".into(),
                ));
            }
            p.reading = true;
            p.path.clone()
        };
        std::fs::File::open(&path)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
    }

    /// Commit a segment that was read (`/ingest/commit`).
    pub async fn commit(&self, id: &str) -> Result<(), Refused> {
        let path = {
            let mut map = self.lock();
            match map.get(id) {
                None => return Err(unknown()),
                Some(p) if !p.reading => {
                    return Err((
                        StatusCode::PRECONDITION_REQUIRED,
                        "segment hasn't been read yet; can't commit\n".into(),
                    ));
                }
                Some(_) => map.remove(id).map(|p| p.path).unwrap_or_default(),
            }
        };
        let log = Arc::clone(&self.log);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        match tokio::task::spawn_blocking(move || log.commit(&path)).await {
            Ok(Ok(())) => {
                self.metrics.ingest_committed_segments.inc();
                self.metrics.ingest_committed_bytes.inc_by(size);
                self.bulk.committed(&stem);
                Ok(())
            }
            Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
        }
    }

    /// Fail a claimed segment back (`/ingest/failed`): it is offered again.
    pub async fn fail(&self, id: &str) -> Result<(), Refused> {
        let Some(p) = self.lock().remove(id) else {
            return Err(unknown());
        };
        self.fail_path(p.path).await;
        Ok(())
    }
}

fn refused((status, message): Refused) -> Response {
    text(status, message)
}

async fn next(State(api): State<Arc<IngestApi>>) -> Response {
    match api.claim().await {
        Ok(Some(id)) => (StatusCode::OK, id).into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn read(State(api): State<Arc<IngestApi>>, params: Params) -> Response {
    let id = match id_param(&params) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match api.open(&id) {
        Ok(file) => (StatusCode::OK, file_body(file)).into_response(),
        Err(r) => refused(r),
    }
}

async fn commit(State(api): State<Arc<IngestApi>>, params: Params) -> Response {
    let id = match id_param(&params) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match api.commit(&id).await {
        Ok(()) => text(StatusCode::OK, "Commit OK\n"),
        Err(r) => refused(r),
    }
}

async fn failed(State(api): State<Arc<IngestApi>>, params: Params) -> Response {
    let id = match id_param(&params) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match api.fail(&id).await {
        Ok(()) => text(StatusCode::OK, "Failed OK\n"),
        Err(r) => refused(r),
    }
}

async fn segment_state(State(api): State<Arc<IngestApi>>) -> Response {
    let map = api.lock();
    let now = Instant::now();
    let mut out = format!("{} pending\n", map.len());
    for (id, p) in map.iter() {
        out.push_str(&format!(
            " {id}: reading={} deadline_in={:?}\n",
            p.reading,
            p.deadline.saturating_duration_since(now)
        ));
    }
    text(StatusCode::OK, out)
}

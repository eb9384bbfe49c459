//! The ingest HTTP API that store consumers drive, mounted at `/ingest`:
//! `GET /next` claims the oldest flushed segment and answers an id; `GET /read?id=` streams it;
//! `POST /commit?id=` deletes it; `POST /failed?id=` makes it flushed again. Pending segments
//! not committed within `-ingest.segment-pending-timeout` are failed back automatically.
//!
//! Ids are random UUIDs that map to files only through this module's table: a request can never
//! name a path. An id that is not a canonical UUID is a 400 and touches nothing.

use std::collections::HashMap;
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
    bulk: Arc<super::bulk::Waiters>,
}

type Params = Query<HashMap<String, String>>;

impl IngestApi {
    /// API state over `log`.
    pub fn new(
        log: Arc<IngestLog>,
        pending_timeout: Duration,
        metrics: Arc<Metrics>,
        bulk: Arc<super::bulk::Waiters>,
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

fn unknown() -> Response {
    text(StatusCode::NOT_FOUND, "segment not found\n")
}

async fn next(State(api): State<Arc<IngestApi>>) -> Response {
    let log = Arc::clone(&api.log);
    match tokio::task::spawn_blocking(move || log.take_oldest()).await {
        Ok(Ok(Some(path))) => {
            let id = disk::new_uuid();
            api.lock().insert(
                id.clone(),
                Pending {
                    path,
                    deadline: Instant::now() + api.pending_timeout,
                    reading: false,
                },
            );
            (StatusCode::OK, id).into_response()
        }
        Ok(Ok(None)) => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn read(State(api): State<Arc<IngestApi>>, params: Params) -> Response {
    let id = match id_param(&params) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let path = {
        let mut map = api.lock();
        let Some(p) = map.get_mut(&id) else {
            return unknown();
        };
        if p.reading {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "another client is already reading this segment\n",
            );
        }
        p.reading = true;
        p.path.clone()
    };
    match std::fs::File::open(&path) {
        Ok(file) => (StatusCode::OK, file_body(file)).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn commit(State(api): State<Arc<IngestApi>>, params: Params) -> Response {
    let id = match id_param(&params) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let path = {
        let mut map = api.lock();
        match map.get(&id) {
            None => return unknown(),
            Some(p) if !p.reading => {
                return text(
                    StatusCode::PRECONDITION_REQUIRED,
                    "segment hasn't been read yet; can't commit\n",
                );
            }
            Some(_) => map.remove(&id).map(|p| p.path).unwrap_or_default(),
        }
    };
    let log = Arc::clone(&api.log);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    match tokio::task::spawn_blocking(move || log.commit(&path)).await {
        Ok(Ok(())) => {
            api.metrics.ingest_committed_segments.inc();
            api.metrics.ingest_committed_bytes.inc_by(size);
            api.bulk.committed(&stem);
            text(StatusCode::OK, "Commit OK\n")
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn failed(State(api): State<Arc<IngestApi>>, params: Params) -> Response {
    let id = match id_param(&params) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let Some(p) = api.lock().remove(&id) else {
        return unknown();
    };
    api.fail_path(p.path).await;
    text(StatusCode::OK, "Failed OK\n")
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

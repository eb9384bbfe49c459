//! CPU profiling over HTTP, behind the `pprof` cargo feature: `GET /debug/pprof/profile?seconds=N`
//! answers a pprof protobuf (`go tool pprof`, `pprof -http`), `GET /debug/pprof/flamegraph?seconds=N`
//! an SVG flame graph. Sampling uses frame pointers (async-signal-safe), at 99 Hz.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pprof::protos::Message;

use super::text;

/// Seconds sampled when the request does not say.
const DEFAULT_SECONDS: u64 = 30;
/// Longest profile a request may ask for.
const MAX_SECONDS: u64 = 300;

/// The `/debug/pprof/*` routes.
pub fn router() -> Router {
    Router::new()
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/flamegraph", get(flamegraph))
}

async fn collect(params: &HashMap<String, String>) -> Result<pprof::Report, Response> {
    let seconds = match params.get("seconds") {
        None => DEFAULT_SECONDS,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_SECONDS).contains(&n) => n,
            _ => {
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("parsing 'seconds': {s:?}: must be 1 to {MAX_SECONDS}\n"),
                ));
            }
        },
    };
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| {
            text(
                StatusCode::CONFLICT,
                format!("starting the profiler (one profile at a time): {e}\n"),
            )
        })?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    guard
        .report()
        .build()
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
}

async fn profile(Query(params): Query<HashMap<String, String>>) -> Response {
    let report = match collect(&params).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match report.pprof() {
        Ok(p) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            p.encode_to_vec(),
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn flamegraph(Query(params): Query<HashMap<String, String>>) -> Response {
    let report = match collect(&params).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut svg = Vec::new();
    match report.flamegraph(&mut svg) {
        Ok(()) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

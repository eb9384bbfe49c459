//! The Loki query API (`/loki/api/v1/*`, and the same under `/select/loki/api/v1/*` for
//! clients set up with a VictoriaLogs-style prefix), so that Grafana's own Loki data source,
//! `logcli` and anything else that speaks Loki reads oklog: Loki's parameters, its exact JSON
//! (`pkg/util/marshal`), its errors (plain text; a bad query is a 400 with the position).
//! Queries are LogQL ([`crate::logql`]), run over the store by [`exec`].

pub mod exec;
pub mod fields;
pub mod index;
pub mod json;
pub mod params;
pub mod tail;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::logql::{self, Expr};
use crate::store::api::params::RawParams;
use crate::store::gather::Gateway;
use exec::{Refusal, bad, summary};
use logql::eval::{Steps, Value};

/// The paths that run queries over the store (limited like `/store/query`).
pub const QUERY_PATHS: &[&str] = &[
    "/loki/api/v1/query_range",
    "/loki/api/v1/query",
    "/loki/api/v1/index/volume_range",
    "/loki/api/v1/detected_fields",
    "/select/loki/api/v1/query_range",
    "/select/loki/api/v1/query",
    "/select/loki/api/v1/index/volume_range",
    "/select/loki/api/v1/detected_fields",
];

/// The header a client asks for three-element values with.
const ENCODING_FLAGS: &str = "X-Loki-Response-Encoding-Flags";

/// The Loki API's routes over `gw` (the node's gateway to every store node).
pub fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/query_range", get(query_range).post(query_range))
        .route("/query", get(query).post(query))
        .route("/status/buildinfo", get(buildinfo))
        .route("/labels", get(index::labels).post(index::labels))
        .route("/label", get(index::labels))
        .route("/label/{name}/values", get(index::label_values))
        .route("/series", get(index::series).post(index::series))
        .route("/index/stats", get(index::stats).post(index::stats))
        .route("/index/volume", get(index::volume).post(index::volume))
        .route("/index/volume_range", get(volume_range).post(volume_range))
        .route("/detected_labels", get(index::detected_labels))
        .route("/detected_fields", get(fields::detected_fields))
        .route(
            "/detected_field/{name}/values",
            get(fields::detected_field_values),
        )
        .route("/patterns", get(index::patterns))
        .route("/tail", get(tail::tail));
    Router::new()
        .nest("/loki/api/v1", api.clone())
        .nest("/select/loki/api/v1", api)
        .with_state(gw)
}

/// A JSON answer; `partial` (a store node did not answer) adds Loki's `warnings` and makes it
/// a 206.
pub fn json_response(status: StatusCode, body: String, partial: bool) -> Response {
    let body = if partial {
        // Loki's answers carry warnings beside the data; a store node that did not answer
        // is one (and the status says so, as /store/query does).
        body.replacen(
            r#"{"status":"success","#,
            r#"{"status":"success","warnings":["a store node did not answer: the result may be incomplete"],"#,
            1,
        )
    } else {
        body
    };
    let status = if partial && status == StatusCode::OK {
        StatusCode::PARTIAL_CONTENT
    } else {
        status
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

/// Whether the client asked for `categorize-labels`.
pub(crate) fn categorize(headers: &HeaderMap) -> bool {
    headers
        .get_all(ENCODING_FLAGS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "categorize-labels")
}

fn parse_query(p: &RawParams) -> Result<Expr, Refusal> {
    let q = p.get("query").unwrap_or("");
    logql::parse(q).map_err(bad)
}

/// A log query's answer: `streams`.
async fn log_answer(
    gw: &Arc<Gateway>,
    log: &logql::ast::LogExpr,
    ask: exec::LogAsk,
    started: Instant,
) -> Result<Response, Refusal> {
    let (streams, scanned) = exec::logs(gw, log, ask).await?;
    let returned = streams.iter().map(|s| s.entries.len() as u64).sum();
    let s = summary(&scanned, returned, started.elapsed().as_secs_f64());
    Ok(json_response(
        StatusCode::OK,
        json::streams(&streams, ask.categorize, &s),
        scanned.partial,
    ))
}

/// An answer, or its refusal as a response.
fn respond(r: Result<Response, Refusal>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `GET|POST /loki/api/v1/query_range`.
async fn query_range(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let started = Instant::now();
    respond(run_range(&gw, &RawParams(raw), categorize(&headers), started).await)
}

async fn run_range(
    gw: &Arc<Gateway>,
    p: &RawParams,
    categorize: bool,
    started: Instant,
) -> Result<Response, Refusal> {
    let expr = parse_query(p)?;
    let now = params::now_ns();
    let end = params::time("end", p.get("end"), now).map_err(bad)?;
    let start = params::time("start", p.get("start"), end - 3_600_000_000_000).map_err(bad)?;
    if end < start {
        return Err(bad(
            "end timestamp must not be before or equal to start time",
        ));
    }
    let limit = params::limit(p.get("limit")).map_err(bad)?;
    let backward = params::backward(p.get("direction")).map_err(bad)?;
    let interval = match p.get("interval").filter(|s| !s.is_empty()) {
        Some(v) => Some(params::duration("interval", v).map_err(bad)?).filter(|iv| *iv > 0),
        None => None,
    };
    if let Expr::Log(log) = &expr {
        let ask = exec::LogAsk {
            window: (start, end),
            limit,
            backward,
            categorize,
            interval,
        };
        return log_answer(gw, log, ask, started).await;
    }
    let step = match p.get("step").filter(|s| !s.is_empty()) {
        Some(v) => params::duration("step", v).map_err(bad)?,
        None => params::default_step(start, end),
    };
    if step <= 0 {
        return Err(bad(
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > params::MAX_POINTS {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let steps = Steps { start, end, step };
    let (value, scanned) = exec::metric(gw, p.get("query").unwrap_or(""), &expr, steps).await?;
    let series = match value {
        Value::Vector(s) => s,
        Value::Scalar(v) => vec![logql::eval::Series {
            labels: logql::labels::Labels::new(),
            points: v.into_iter().map(Some).collect(),
        }],
    };
    let returned = series
        .iter()
        .map(|s| s.points.iter().flatten().count() as u64)
        .sum();
    let s = summary(&scanned, returned, started.elapsed().as_secs_f64());
    Ok(json_response(
        StatusCode::OK,
        json::matrix(&series, steps, &s),
        scanned.partial,
    ))
}

/// `GET|POST /loki/api/v1/query`: an instant query at `time`.
async fn query(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let started = Instant::now();
    respond(run_instant(&gw, &RawParams(raw), categorize(&headers), started).await)
}

async fn run_instant(
    gw: &Arc<Gateway>,
    p: &RawParams,
    categorize: bool,
    started: Instant,
) -> Result<Response, Refusal> {
    let expr = parse_query(p)?;
    let time = params::time("time", p.get("time"), params::now_ns()).map_err(bad)?;
    let limit = params::limit(p.get("limit")).map_err(bad)?;
    let backward = params::backward(p.get("direction")).map_err(bad)?;
    if let Expr::Log(log) = &expr {
        // The hour up to `time` (Loki 3 refuses log queries here; Loki 2 answered streams).
        let window = (time - 3_600_000_000_000, time + 1);
        let ask = exec::LogAsk {
            window,
            limit,
            backward,
            categorize,
            interval: None,
        };
        return log_answer(gw, log, ask, started).await;
    }
    let steps = Steps {
        start: time,
        end: time,
        step: 1,
    };
    let (value, scanned) = exec::metric(gw, p.get("query").unwrap_or(""), &expr, steps).await?;
    let body = match value {
        Value::Scalar(v) => {
            let s = summary(&scanned, 1, started.elapsed().as_secs_f64());
            json::scalar(v[0], time, &s)
        }
        Value::Vector(series) => {
            let s = summary(
                &scanned,
                series.len() as u64,
                started.elapsed().as_secs_f64(),
            );
            json::vector(&series, time, &s)
        }
    };
    Ok(json_response(StatusCode::OK, body, scanned.partial))
}

/// `GET /loki/api/v1/status/buildinfo`: what Grafana asks to know which Loki it talks to.
async fn buildinfo() -> Response {
    let body = serde_json::json!({
        "version": "3.4.0",
        "revision": "oklog",
        "branch": "oklog",
        "buildUser": "oklog",
        "buildDate": "",
        "goVersion": format!("oklog {}", env!("CARGO_PKG_VERSION")),
    });
    json_response(StatusCode::OK, body.to_string(), false)
}

/// `GET /loki/api/v1/index/volume_range?query=&start=&end=&step=&targetLabels=`: bytes per
/// group of streams per step, a matrix: `sum by (<the selector's labels, or targetLabels>)
/// (bytes_over_time(<query>[<step>]))`, computed as that metric query is.
async fn volume_range(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let started = Instant::now();
    let mut p = RawParams(raw);
    let query = p.get("query").unwrap_or("").to_string();
    let log = match logql::parse::parse_log(&query) {
        Ok(l) => l,
        Err(e) => return bad(e).into_response(),
    };
    let targets: Vec<String> = match p.get("targetLabels").filter(|s| !s.is_empty()) {
        Some(t) => t.split(',').map(|s| s.trim().to_string()).collect(),
        None => log.selector.iter().map(|m| m.name.clone()).collect(),
    };
    if targets
        .iter()
        .any(|t| logql::labels::sanitize(t) != *t || t.is_empty())
    {
        return bad(format!("invalid targetLabels: {targets:?}")).into_response();
    }
    let end = params::time("end", p.get("end"), params::now_ns()).unwrap_or(params::now_ns());
    let start = params::time("start", p.get("start"), end - 3_600_000_000_000).unwrap_or(end);
    let step = match p.get("step").filter(|s| !s.is_empty()) {
        Some(v) => match params::duration("step", v) {
            Ok(s) => s,
            Err(e) => return bad(e).into_response(),
        },
        None => params::default_step(start, end),
    };
    let secs = (step / 1_000_000_000).max(1);
    let metric = format!(
        "sum by ({}) (bytes_over_time({query} [{secs}s]))",
        targets.join(", ")
    );
    p.0.retain(|(k, _)| k != "query");
    p.0.push(("query".into(), metric));
    match run_range(&gw, &p, false, started).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

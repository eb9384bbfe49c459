//! `detected_fields` and `detected_field/<name>/values`: the fields Grafana offers to filter
//! on, found as Loki finds them, in a sample of the query's newest lines (`line_limit`,
//! 1000): the structured metadata, and what `json` (for a line that is a JSON object) or
//! `logfmt` extracts, each with its type and number of values.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::exec::{Refusal, bad};
use super::params;
use crate::logql::ast::{Parser, Stage};
use crate::logql::labels::{Labels, Origin};
use crate::logql::pipeline::Pipeline;
use crate::store::api::params::RawParams;
use crate::store::gather::Gateway;

/// Values kept per field (the cardinality counts up to this).
const MAX_VALUES: usize = 1000;

#[derive(Default)]
struct Field {
    values: BTreeSet<String>,
    parsers: BTreeSet<&'static str>,
}

/// The fields of the query's sample of lines.
async fn detect(gw: &Arc<Gateway>, p: &RawParams) -> Result<BTreeMap<String, Field>, Refusal> {
    let q = p.get("query").unwrap_or("");
    let log = crate::logql::parse::parse_log(q).map_err(bad)?;
    let end = params::time("end", p.get("end"), params::now_ns()).map_err(bad)?;
    let start = params::time("start", p.get("start"), end - 3_600_000_000_000).map_err(bad)?;
    let limit = match p.get("line_limit").filter(|s| !s.is_empty()) {
        Some(v) => params::limit(Some(v)).map_err(bad)?,
        None => 1000,
    };
    let ask = super::exec::LogAsk {
        window: (start, end),
        limit,
        backward: true,
        categorize: true,
        interval: None,
    };
    let (streams, _) = super::exec::logs(gw, &log, ask).await?;
    let json = Pipeline::new(&[Stage::Parser(Parser::Json(Vec::new()))]).map_err(bad)?;
    let logfmt = Pipeline::new(&[Stage::Parser(Parser::Logfmt {
        strict: false,
        keep_empty: false,
        params: Vec::new(),
    })])
    .map_err(bad)?;
    let mut fields: BTreeMap<String, Field> = BTreeMap::new();
    for s in &streams {
        for (ns, line, rest) in &s.entries {
            for l in rest.of(Origin::Metadata) {
                let f = fields.entry(l.name.clone()).or_default();
                if f.values.len() < MAX_VALUES {
                    f.values.insert(l.value.clone());
                }
            }
            let (parser, name) = if line.first() == Some(&b'{') {
                (&json, "json")
            } else {
                (&logfmt, "logfmt")
            };
            let mut parsed = Labels::new();
            let mut line = line.clone();
            parser.run(&mut line, &mut parsed, *ns, &mut None);
            if parsed.get(crate::logql::labels::ERROR).is_some() {
                continue;
            }
            for l in parsed.of(Origin::Parsed) {
                let f = fields.entry(l.name.clone()).or_default();
                f.parsers.insert(name);
                if f.values.len() < MAX_VALUES {
                    f.values.insert(l.value.clone());
                }
            }
        }
    }
    Ok(fields)
}

/// What Loki calls a field's type, from its values.
fn kind(values: &BTreeSet<String>) -> &'static str {
    let all = |f: &dyn Fn(&str) -> bool| !values.is_empty() && values.iter().all(|v| f(v));
    if all(&|v| v.parse::<i64>().is_ok()) {
        "int"
    } else if all(&|v| v.parse::<f64>().is_ok()) {
        "float"
    } else if all(&|v| v == "true" || v == "false") {
        "boolean"
    } else if all(&|v| {
        v.ends_with(|c: char| c.is_ascii_alphabetic())
            && crate::logql::lex::parse_duration(v).is_some()
    }) {
        "duration"
    } else if all(&|v| {
        v.ends_with(|c: char| c.is_ascii_alphabetic())
            && crate::logql::lex::parse_bytes(v).is_some()
    }) {
        "bytes"
    } else {
        "string"
    }
}

/// `GET /loki/api/v1/detected_fields?query=&start=&end=&line_limit=&limit=`.
pub async fn detected_fields(
    State(gw): State<Arc<Gateway>>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    match detect(&gw, &p).await {
        Ok(fields) => {
            let limit = p
                .get("limit")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1000);
            let list: Vec<serde_json::Value> = fields
                .iter()
                .take(limit)
                .map(|(label, f)| {
                    let parsers: Option<Vec<&str>> =
                        (!f.parsers.is_empty()).then(|| f.parsers.iter().copied().collect());
                    serde_json::json!({
                        "label": label,
                        "type": kind(&f.values),
                        "cardinality": f.values.len(),
                        "parsers": parsers,
                        "jsonPath": [label],
                    })
                })
                .collect();
            let body = serde_json::json!({"fields": list, "limit": limit});
            super::json_response(StatusCode::OK, body.to_string(), false)
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /loki/api/v1/detected_field/<name>/values?query=&start=&end=`.
pub async fn detected_field_values(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Response {
    let p = RawParams(raw);
    match detect(&gw, &p).await {
        Ok(mut fields) => {
            let values: Vec<String> = fields
                .remove(&name)
                .map(|f| f.values.into_iter().collect())
                .unwrap_or_default();
            let body = serde_json::json!({"values": values, "limit": MAX_VALUES});
            super::json_response(StatusCode::OK, body.to_string(), false)
        }
        Err(e) => e.into_response(),
    }
}

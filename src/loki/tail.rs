//! `GET /loki/api/v1/tail` over WebSocket (Grafana's live tail, `logcli --tail`): first the
//! entries since `start` (at most `limit`, oldest first, as Loki sends them), then every new
//! entry as store nodes accept it, in frames of Loki's shape,
//! `{"streams":[{"stream":{...},"values":[["<ns>","<line>"]]}],"dropped_entries":[...]}`.
//!
//! New records come from the live stream (`/store/stream`'s machinery: every store node,
//! deduplicated across replicas), through the selector and pipeline here. A client that reads
//! too slowly has entries dropped, and told in `dropped_entries`; the node never holds more
//! than [`MAX_PENDING`] entries for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::exec::{Refusal, bad, plan};
use super::json::{self, Stream};
use super::params;
use crate::logql::ast::LogExpr;
use crate::logql::labels::Labels;
use crate::logql::pipeline::Pipeline;
use crate::logql::record::{Selector, entry};
use crate::store::api::params::RawParams;
use crate::store::gather::Gateway;

/// Entries waiting for a slow client at most; past this, new ones are dropped (and told).
pub const MAX_PENDING: usize = 10_000;
/// How often gathered entries go out (with `delay_for`, that much later).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The longest `delay_for` (Loki's limit).
const MAX_DELAY: i128 = 5_000_000_000;

struct Tail {
    log: LogExpr,
    start: i128,
    limit: u64,
    delay: Duration,
    categorize: bool,
}

fn parse(p: &RawParams, headers: &HeaderMap) -> Result<Tail, Refusal> {
    let q = p.get("query").unwrap_or("");
    let log = crate::logql::parse::parse_log(q).map_err(bad)?;
    crate::logql::parse::check_selector(&log.selector).map_err(bad)?;
    Pipeline::new(&log.pipeline).map_err(bad)?;
    let now = params::now_ns();
    let start = params::time("start", p.get("start"), now - 3_600_000_000_000).map_err(bad)?;
    let limit = params::limit(p.get("limit")).map_err(bad)?;
    let delay = match p.get("delay_for").filter(|s| !s.is_empty()) {
        Some(v) => {
            let ns = params::duration("delay_for", v).map_err(bad)?;
            if ns > MAX_DELAY {
                return Err(bad("delay_for can't be greater than 5"));
            }
            Duration::from_nanos(ns as u64)
        }
        None => Duration::ZERO,
    };
    Ok(Tail {
        log,
        start,
        limit,
        delay,
        categorize: super::categorize(headers),
    })
}

/// `GET /loki/api/v1/tail?query=&start=&limit=&delay_for=` (a WebSocket upgrade).
pub async fn tail(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Response {
    let t = match parse(&RawParams(raw), &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    ws.on_upgrade(move |socket| run(gw, socket, t))
}

/// A frame's worth of entries, by stream.
#[derive(Default)]
struct Frame {
    streams: std::collections::BTreeMap<Labels, Stream>,
    entries: usize,
    dropped: Vec<(Labels, i128)>,
}

impl Frame {
    fn add(&mut self, labels: Labels, ns: i128, line: Vec<u8>, categorize: bool) {
        if self.entries >= MAX_PENDING {
            if self.dropped.len() < MAX_PENDING {
                self.dropped.push((labels, ns));
            }
            return;
        }
        let (key, rest) = super::exec::split_labels(labels, categorize);
        self.streams
            .entry(key.clone())
            .or_insert_with(|| Stream {
                labels: key,
                entries: Vec::new(),
            })
            .entries
            .push((ns, line, rest));
        self.entries += 1;
    }

    fn is_empty(&self) -> bool {
        self.entries == 0 && self.dropped.is_empty()
    }

    fn text(self, categorize: bool) -> String {
        let streams: Vec<Stream> = self.streams.into_values().collect();
        json::tail_frame(&streams, &self.dropped, categorize)
    }
}

/// New records into the frame being gathered: those the selector and pipeline keep and the
/// past did not send.
fn take<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    (selector, pipeline): (&Selector, &Pipeline),
    sent: &HashSet<(i128, Vec<u8>)>,
    current: &mut Frame,
    categorize: bool,
) {
    for line in lines {
        let Some(e) = entry(line) else { continue };
        if !selector.matches(&e.labels) || sent.contains(&(e.ns, e.line.clone())) {
            continue;
        }
        let (ns, mut text, mut labels) = (e.ns, e.line, e.labels);
        if pipeline.run(&mut text, &mut labels, ns, &mut None) {
            current.add(labels, ns, text, categorize);
        }
    }
}

async fn run(gw: Arc<Gateway>, mut socket: WebSocket, t: Tail) {
    let now = params::now_ns();
    let ms = |ns: i128| ns.div_euclid(1_000_000).max(0) as u64;
    let Ok(Some(params)) = plan(&t.log, ms(t.start), ms(now), false) else {
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    // Follow first, so nothing accepted while the past is read is missed; what both see is
    // sent once.
    let mut live = match gw.follow(Gateway::stream_query(&params), Duration::from_millis(250)) {
        Ok(rx) => rx,
        Err(why) => {
            let _ = socket
                .send(Message::Text(
                    format!("{{\"error\":{}}}", serde_json::Value::String(why)).into(),
                ))
                .await;
            return;
        }
    };
    let ask = super::exec::LogAsk {
        window: (t.start, now),
        limit: t.limit,
        backward: false,
        categorize: t.categorize,
        interval: None,
    };
    let (past, _) = super::exec::logs(&gw, &t.log, ask)
        .await
        .unwrap_or_default();
    let mut sent: HashSet<(i128, Vec<u8>)> = HashSet::new();
    if !past.is_empty() {
        for s in &past {
            for (ns, line, _) in &s.entries {
                sent.insert((*ns, line.clone()));
            }
        }
        let frame = json::tail_frame(&past, &[], t.categorize);
        if socket.send(Message::Text(frame.into())).await.is_err() {
            return;
        }
    }
    let (Ok(pipeline), Ok(selector)) = (
        Pipeline::new(&t.log.pipeline),
        Selector::new(&t.log.selector),
    ) else {
        return;
    };
    let mut pending: std::collections::VecDeque<(tokio::time::Instant, Frame)> = Default::default();
    let mut current = Frame::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let forget_sent = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            chunk = live.recv() => {
                let Some(chunk) = chunk else { return };
                carry.extend_from_slice(&chunk);
                let end = memchr::memrchr(b'\n', &carry).map_or(0, |i| i + 1);
                let lines = carry[..end].split(|&b| b == b'\n').filter(|l| !l.is_empty());
                take(lines, (&selector, &pipeline), &sent, &mut current, t.categorize);
                carry.drain(..end);
            }
            _ = tick.tick() => {
                if !current.is_empty() {
                    pending.push_back((tokio::time::Instant::now() + t.delay, std::mem::take(&mut current)));
                }
                while pending.front().is_some_and(|(due, _)| *due <= tokio::time::Instant::now()) {
                    let (_, frame) = pending.pop_front().expect("a pending frame");
                    // A send that cannot go out at once holds the rest back: entries gather
                    // in `current`, which drops past its bound.
                    if socket.send(Message::Text(frame.text(t.categorize).into())).await.is_err() {
                        return;
                    }
                }
                // `sent` only matters while the live stream may still bring what the past
                // held (records accepted while the past was read).
                if !sent.is_empty() && tokio::time::Instant::now() > forget_sent {
                    sent.clear();
                }
            }
            msg = socket.recv() => {
                match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

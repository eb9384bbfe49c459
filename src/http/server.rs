//! The server side: binding listeners (and logging the bound address), serving an axum router
//! until shutdown (TLS or not, with header and body timeouts and a connection bound), the
//! layers every node puts on its router (`/health`, `/ready`, `/metrics`, request metrics,
//! concurrency limits, the credentials check).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

use super::body::*;
use super::flush;

/// Each supervised part of a node and its state (`running`, `stopped`, `failed: <why>`).
pub type PartStates = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// `/health`, `/ready` and `/metrics`, present on every API listener. `/health` answers 200
/// while the process serves, with each part's state when `parts` is given; `/ready` answers
/// 503 once `stopping` turns true (shutdown has begun), so orchestrators stop sending work.
pub fn common_routes(
    role: &'static str,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
    parts: Option<PartStates>,
) -> Router {
    let status = move |stopping: watch::Receiver<bool>| {
        let ready = !*stopping.borrow();
        let mut json = serde_json::json!({"role": role, "ready": ready});
        if let Some(parts) = &parts {
            let parts = parts.lock().unwrap_or_else(|p| p.into_inner()).clone();
            json["parts"] = serde_json::json!(parts);
        }
        let mut body = json.to_string();
        body.push('\n');
        (ready, body)
    };
    let (s1, s2) = (stopping.clone(), stopping);
    let status = Arc::new(status);
    let status2 = Arc::clone(&status);
    let health = move || {
        let (_, body) = status(s1.clone());
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    };
    let ready = move || {
        let (ready, body) = status2(s2.clone());
        let code = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        async move { (code, [(header::CONTENT_TYPE, "application/json")], body) }
    };
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(move || async move {
                let m = Arc::clone(&metrics);
                let text = tokio::task::spawn_blocking(move || m.scrape())
                    .await
                    .unwrap_or_default();
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }),
        );
    #[cfg(feature = "pprof")]
    let router = router.merge(super::pprof::router());
    router
}

/// Count and time every request of `router` in `oklog_api_request_duration_seconds`, labelled
/// by method, route (the pattern, so the label set stays small) and status code.
pub fn instrument(router: Router, metrics: Arc<Metrics>) -> Router {
    use axum::extract::{MatchedPath, Request};
    use axum::middleware::Next;
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let metrics = Arc::clone(&metrics);
            async move {
                let started = std::time::Instant::now();
                let method = method_label(req.method()).to_string();
                let path = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
                let response = next.run(req).await;
                let labels = vec![
                    ("method", method),
                    ("path", path),
                    ("status_code", response.status().as_u16().to_string()),
                ];
                metrics
                    .api_request_duration
                    .0
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                response
            }
        },
    ))
}

/// The `method` label of a request: one of the methods HTTP defines, or `other`, so that
/// made-up method names (hyper accepts any token) cannot grow `/metrics` without bound. The
/// `path` label is the matched route or `unmatched`, the status one of ours: every label value
/// comes from a fixed set, whatever the client sends, refused requests included.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Serve at most `max` requests at once to the routes in `paths` (a class of work, such as
/// queries); one more is answered 503 with `Retry-After: 1`. A request holds its place until
/// its response body (a streamed answer) is finished or dropped.
pub fn limit(router: Router, paths: &'static [&'static str], max: usize) -> Router {
    use axum::extract::{MatchedPath, Request};
    use axum::middleware::Next;
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let permits = Arc::clone(&permits);
            async move {
                let limited = req
                    .extensions()
                    .get::<MatchedPath>()
                    .is_some_and(|p| paths.contains(&p.as_str()));
                if !limited {
                    return next.run(req).await;
                }
                let Ok(permit) = permits.try_acquire_owned() else {
                    let mut r = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "too many concurrent requests of this kind (at most {max}); retry\n"
                        ),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return r;
                };
                let (parts, body) = next.run(req).await.into_parts();
                let body = Body::new(Held {
                    inner: body,
                    _permit: permit,
                });
                Response::from_parts(parts, body)
            }
        },
    ))
}

/// Refuse requests that lack the role their path needs ([`crate::security::auth::need`]): 401
/// with `WWW-Authenticate` without a valid token, 403 without the role. Nothing changes when
/// `guard` checks nothing.
pub fn guard(router: Router, guard: Arc<crate::security::auth::Guard>) -> Router {
    use crate::security::auth::{Refusal, bearer, need};
    use axum::extract::Request;
    use axum::middleware::Next;
    if !guard.is_on() {
        return router;
    }
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let guard = Arc::clone(&guard);
            async move {
                let needs = need(req.uri().path(), guard.protect_metrics);
                let token = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| bearer(v.as_bytes()));
                let cert = req
                    .extensions()
                    .get::<crate::security::tls::ClientCert>()
                    .is_some();
                match guard.check(needs, token, cert) {
                    Ok(()) => next.run(req).await,
                    Err(Refusal::Unauthenticated(why)) => {
                        tracing::debug!(path = %req.uri().path(), why, "request refused (401)");
                        let mut r = text(StatusCode::UNAUTHORIZED, format!("401 unauthorized: {why}\n"));
                        let challenge = if token.is_some() {
                            "Bearer realm=\"oklog\", error=\"invalid_token\""
                        } else {
                            "Bearer realm=\"oklog\""
                        };
                        r.headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                        r
                    }
                    Err(Refusal::Forbidden(why)) => {
                        tracing::debug!(path = %req.uri().path(), why = %why, "request refused (403)");
                        text(StatusCode::FORBIDDEN, format!("403 forbidden: {why}\n"))
                    }
                }
            }
        },
    ))
}

/// Pending connections a listener queues before the kernel drops SYNs.
pub const BACKLOG: i32 = 4096;

fn listen(sa: std::net::SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&sa.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Bind a TCP listener and log `listening name=<name> addr=<ip:port>` with the real port.
///
/// The accept queue holds [`BACKLOG`] connections (capped by the kernel's `somaxconn`): after a
/// restart every forwarder reconnects at once, and a queue of 128 would drop SYNs, each costing
/// its client a one-second retransmission.
pub async fn bind(name: &'static str, addr: &str) -> io::Result<TcpListener> {
    let fail =
        |e: io::Error| io::Error::new(e.kind(), format!("listening on {addr} ({name}): {e}"));
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut bound = None;
    for sa in tokio::net::lookup_host(addr).await.map_err(fail)? {
        match listen(sa) {
            Ok(l) => {
                bound = Some(l);
                break;
            }
            Err(e) => last = e,
        }
    }
    let listener = bound.ok_or(last).map_err(fail)?;
    let local = listener.local_addr()?;
    tracing::info!(name = %name, addr = %local, "listening");
    Ok(listener)
}

/// A client has this long to send a request's head (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body that sends nothing for this long is cut off.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body must arrive whole within this, plus [`BODY_TIME_PER_MIB`] for each MiB its
/// `Content-Length` declares: a client that trickles a byte now and then is cut off however
/// steadily it trickles.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A response write that makes no progress for this long ends its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a body may take per MiB it declares, beyond [`BODY_TIMEOUT`] (1 s: a link of 1 MiB/s).
pub const BODY_TIME_PER_MIB: Duration = Duration::from_secs(1);
/// The largest request head (request line and headers) accepted: larger ones get a 431.
pub const MAX_HEAD_BYTES: usize = 256 << 10;
/// hyper's read buffer limit that enforces [`MAX_HEAD_BYTES`]: hyper checks its limit only
/// before a read, and one read may add up to the limit again, so a buffer limit of half the
/// head limit is what keeps every head of more than [`MAX_HEAD_BYTES`] out (a 420 KB header
/// line got through a 256 KiB buffer limit).
const READ_BUF_LIMIT: usize = MAX_HEAD_BYTES / 2;
/// Connections served at once per API listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// The timeouts of an HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Time to send a request head (`-api.header-timeout`).
    pub header_read: Duration,
    /// Time a request body may send nothing (`-api.body-idle-timeout`).
    pub body_idle: Duration,
    /// Time a request body may take in all, beyond [`BODY_TIME_PER_MIB`] per MiB it declares
    /// (`-api.body-timeout`).
    pub body_total: Duration,
    /// Time a response write may make no progress (`-api.write-timeout`).
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: HEADER_READ_TIMEOUT,
            body_idle: BODY_IDLE_TIMEOUT,
            body_total: BODY_TIMEOUT,
            write: WRITE_TIMEOUT,
        }
    }
}

/// [`serve_with`] the default timeouts.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(listener, router, shutdown, Timeouts::default()).await
}

/// Serve `router` on `listener` until `shutdown` turns true, then stop accepting and let
/// running requests finish.
///
/// Every connection has `timeouts.header_read` to send each request head, of at most
/// [`MAX_HEAD_BYTES`], and every request body `timeouts.body_idle` between two reads; at most
/// [`MAX_CONNECTIONS`] are served at once.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
) -> io::Result<()> {
    serve_tls(listener, router, shutdown, timeouts, None).await
}

/// [`serve_with`], speaking TLS with `tls` when given: the handshake must finish within the
/// header timeout, and a request over a connection whose client certificate was verified
/// carries [`crate::security::tls::ClientCert`].
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let router = router
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(axum::middleware::map_request(
            move |req: axum::extract::Request| async move {
                let declared = req
                    .headers()
                    .get(axum::http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                let total = timeouts.body_total + BODY_TIME_PER_MIB * (declared >> 20) as u32;
                req.map(|b| Body::new(IdleBody::new(b, timeouts.body_idle, total)))
            },
        ));
    let service = hyper_util::service::TowerToHyperService::new(router);
    // Connections are told to close (gracefully: the request in flight is answered) when
    // this turns true; hyper-util's GracefulShutdown cannot watch a connection that may be
    // upgraded (a WebSocket), so this does the same by hand.
    let (closing, _) = watch::channel(false);
    let live = Arc::new(AtomicUsize::new(0));
    let refused_log = crate::throttle::Throttle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(held) = refused_log.allow() {
                    tracing::warn!(listener = "api", error = %e, suppressed = held, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            if let Some(held) = refused_log.allow() {
                tracing::warn!(%peer, max = MAX_CONNECTIONS, suppressed = held, "too many API connections; closing");
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let http1 = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(timeouts.header_read)
                .max_buf_size(READ_BUF_LIMIT);
            b
        };
        live.fetch_add(1, Ordering::SeqCst);
        let live = Arc::clone(&live);
        let flushes = flush::Flushes::default();
        match &tls {
            None => {
                let io = TokioIo::new(flush::FlushIo::new(stream, flushes.clone(), timeouts.write));
                let conn = closed_when(
                    http1.serve_connection(io, service.clone()).with_upgrades(),
                    closing.subscribe(),
                );
                let conn = flush::FLUSHES.scope(flushes, conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "API connection ended");
                    }
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                let (service, closing) = (service.clone(), closing.subscribe());
                let handshake_timeout = timeouts.header_read;
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls.get_ref().1.peer_certificates().is_some();
                            let service = hyper::service::service_fn(
                                move |mut req: hyper::Request<hyper::body::Incoming>| {
                                    if cert {
                                        req.extensions_mut()
                                            .insert(crate::security::tls::ClientCert);
                                    }
                                    hyper::service::Service::call(&service, req)
                                },
                            );
                            let io = TokioIo::new(flush::FlushIo::new(
                                tls,
                                flushes.clone(),
                                timeouts.write,
                            ));
                            let conn = closed_when(
                                http1.serve_connection(io, service).with_upgrades(),
                                closing,
                            );
                            if let Err(e) = flush::FLUSHES.scope(flushes, conn).await {
                                tracing::debug!(%peer, error = %e, "API connection ended");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
    drop(listener);
    closing.send_replace(true);
    while live.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Drive `conn` until it ends, shutting it down gracefully (the request in flight answered,
/// then closed) once `closing` turns true.
async fn closed_when<I, S, B>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    mut closing: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drop(closing.wait_for(|c| *c).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// A response body that holds a [`limit`] permit until it is finished or dropped; every frame
/// (trailers too) passes through.
struct Held {
    inner: Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when no data arrives for `idle`, or when it has not ended
/// within `total`: a client that stops sending mid-body, or trickles it, never holds a
/// handler (and, for a replicate, its file) for longer.
struct IdleBody {
    inner: Body,
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    total: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl IdleBody {
    fn new(inner: Body, idle: Duration, total: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            total,
            deadline: Box::pin(tokio::time::sleep(total)),
        }
    }
}

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let message = if this.timer.as_mut().poll(cx).is_ready() {
                    format!("request body idle for {:?}", this.idle)
                } else if this.deadline.as_mut().poll(cx).is_ready() {
                    format!("request body not received whole within {:?}", this.total)
                } else {
                    return Poll::Pending;
                };
                Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    message,
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

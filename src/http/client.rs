//! The client side: the node-to-node and CLI HTTP client (TLS and a bearer token when
//! configured), calls with timeouts, and error chains for messages.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::body::*;

/// Request body type of the node-to-node client.
pub type ClientBody = BoxBody<Bytes, io::Error>;

/// How a client proves who it is and checks whom it talks to.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// Verifies `https` servers (and presents a client certificate); `None`: the system's CAs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Sent as `Authorization: Bearer TOKEN` (`-auth.token`).
    pub token: Option<String>,
}

impl ClientSecurity {
    fn tls_config(&self) -> rustls::ClientConfig {
        match &self.tls {
            Some(c) => (**c).clone(),
            None => {
                static SYSTEM: std::sync::OnceLock<Arc<rustls::ClientConfig>> =
                    std::sync::OnceLock::new();
                let c = SYSTEM.get_or_init(|| {
                    crate::security::tls::client_config(None, None, None)
                        .expect("a client configuration without files")
                });
                (**c).clone()
            }
        }
    }

    fn authorization(&self) -> Option<HeaderValue> {
        let token = self.token.as_ref()?;
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTP/1.1 client with a connection pool, for `http://` and `https://` URLs, that sends
/// its bearer token (if any) with every request.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<Connector, ClientBody>,
    authorization: Option<HeaderValue>,
}

impl Client {
    fn new(
        mut conn: HttpConnector,
        sec: &ClientSecurity,
        builder: &hyper_util::client::legacy::Builder,
    ) -> Client {
        conn.enforce_http(false);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        conn.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(sec.tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        Client {
            inner: builder.build(https),
            authorization: sec.authorization(),
        }
    }

    /// Send `req` (with the token, if any).
    pub fn request(
        &self,
        mut req: hyper::Request<ClientBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        if let Some(a) = &self.authorization {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        self.inner.request(req)
    }
}

/// A client with a connect timeout and an idle-pool timeout shorter than servers' keep-alive.
pub fn client() -> Client {
    client_with(&ClientSecurity::default())
}

/// [`client`] with `sec`'s TLS configuration and token.
pub fn client_with(sec: &ClientSecurity) -> Client {
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(20));
    Client::new(HttpConnector::new(), sec, &builder)
}

/// A client for one large download (`oklog query`): reads the socket in 1 MiB buffers
/// instead of hyper's small adaptive ones, which halves the client's CPU per byte.
pub fn bulk_client(sec: &ClientSecurity) -> Client {
    let mut conn = HttpConnector::new();
    conn.set_recv_buffer_size(Some(4 << 20));
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder.http1_read_buf_exact_size(1 << 20);
    Client::new(conn, sec, &builder)
}

/// The URL of `path` (with its query) on `peer`: an `https://host:port` peer keeps its scheme,
/// a bare `host:port` is `http`.
pub fn url(peer: &str, path: &str) -> String {
    if peer.starts_with("https://") || peer.starts_with("http://") {
        format!("{peer}{path}")
    } else {
        format!("http://{peer}{path}")
    }
}

/// `s` percent-encoded for a query string (everything but letters, digits and `-_.~`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An empty request body.
pub fn empty_body() -> ClientBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A request body that streams a file, declaring its length (so the request carries a
/// `Content-Length`, and the receiver allows a large file the time it needs).
pub fn file_client_body(file: std::fs::File) -> ClientBody {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let len = file.metadata().map(|m| m.len()).ok();
    let stream = futures_util::StreamExt::map(file_chunks(file), |r| r.map(Frame::data));
    Declared {
        inner: StreamBody::new(Box::pin(stream)),
        len,
    }
    .boxed()
}

/// A body whose length is known before it is read.
struct Declared<B> {
    inner: B,
    len: Option<u64>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Declared<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.len {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => self.inner.size_hint(),
        }
    }
}

/// Send a request with `body` and return the status and the response body; `timeout` bounds
/// the wait for the response headers.
pub async fn call(
    client: &Client,
    method: hyper::Method,
    url: &str,
    body: ClientBody,
    timeout: Duration,
) -> io::Result<(StatusCode, hyper::body::Incoming)> {
    let (status, _, body) = call_full(client, method, url, body, timeout).await?;
    Ok((status, body))
}

/// [`call`], also returning the response headers.
pub async fn call_full(
    client: &Client,
    method: hyper::Method,
    url: &str,
    body: ClientBody,
    timeout: Duration,
) -> io::Result<(StatusCode, axum::http::HeaderMap, hyper::body::Incoming)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        // Query answers end with trailers that say whether anything was left out.
        .header(header::TE, "trailers")
        .body(body)
        .map_err(io::Error::other)?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{url}: no response within {timeout:?}"),
            )
        })?
        .map_err(|e| {
            io::Error::other(CallError::Transport {
                url: url.to_string(),
                chain: error_chain(&e),
            })
        })?;
    let (parts, body) = resp.into_parts();
    Ok((parts.status, parts.headers, body))
}

/// Why a call to a peer failed, as the `io::Error` the caller sees wraps it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request never got an answer (connect, TLS, a broken connection): the error's
    /// chain of causes.
    #[error("{url}: {chain}")]
    Transport {
        /// What was called.
        url: String,
        /// The error and its causes.
        chain: String,
    },
    /// An answer that is not a success, with its text.
    #[error("{url}: {status}: {text}")]
    Status {
        /// What was called.
        url: String,
        /// The answer's status.
        status: StatusCode,
        /// Its body, trimmed.
        text: String,
    },
}

impl CallError {
    /// The `io::Error` for an unsuccessful answer.
    pub fn status(url: &str, status: StatusCode, text: &str) -> io::Error {
        io::Error::other(CallError::Status {
            url: url.to_string(),
            status,
            text: text.trim().to_string(),
        })
    }
}

/// An error and its sources, `outer: inner: ...` (a client's "client error (Connect)" says
/// why only in its sources: an unknown CA, a refused connection).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

//! Bodies: plain-text answers, streamed files and channels, and reading a small body whole.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunk size for streamed file bodies (256 KiB).
const FILE_CHUNK: usize = 256 << 10;

/// A plain-text response, as Go's `http.Error` writes them.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    text_body(
        status,
        axum::http::HeaderMap::new(),
        Body::from(body.into()),
    )
}

/// A `text/plain` response with `headers` and a (streamed) body: records, as every query and
/// stream endpoint answers them.
pub fn text_body(status: StatusCode, headers: axum::http::HeaderMap, body: Body) -> Response {
    let mut r = (status, headers, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether a request said it takes trailers (`TE: trailers`).
pub fn accepts_trailers(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().split(';').next() == Some("trailers"))
        })
    })
}

/// A body fed by a channel of chunks; an `Err` chunk aborts the response.
pub fn channel_body(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> Body {
    Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Read `file` in 256 KiB chunks, as the consumer of the stream asks for them. An I/O error
/// is the last item. Nothing is held while the consumer waits (a client that stopped reading,
/// a SIGSTOPped peer) but the file and the stream itself: no thread blocks on a full channel.
pub fn file_chunks(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(tokio::fs::File::from_std(file)), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; FILE_CHUNK];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => {
                    buf.truncate(n);
                    return Some((Ok(Bytes::from(buf)), Some(file)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}

/// A response body that streams a file.
pub fn file_body(file: std::fs::File) -> Body {
    Body::from_stream(file_chunks(file))
}

/// How long a small response body (an id, an "OK") may take to arrive whole.
pub const SMALL_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read a whole (small) response body as text, within [`SMALL_BODY_TIMEOUT`].
pub async fn body_text(body: hyper::body::Incoming) -> io::Result<String> {
    use http_body_util::BodyExt;
    let bytes = tokio::time::timeout(SMALL_BODY_TIMEOUT, body.collect())
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("response body not complete within {SMALL_BODY_TIMEOUT:?}"),
            )
        })?
        .map_err(io::Error::other)?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

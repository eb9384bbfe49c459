//! Aborting a response only after what came before it reached the socket.
//!
//! A partial answer (a corrupt block, a node that failed mid-stream) ends with an error frame,
//! which makes hyper drop the connection so that a client without trailers sees a broken
//! transfer. Hyper drops its own write queue with it: up to its buffer of records already
//! produced would never reach that client. Hyper flushes the socket only once that queue is
//! empty, so the API server counts flushes per connection ([`FlushIo`]), and [`frame_body`]
//! holds an error back until a flush after the last frame.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// The flushes of one connection's socket, and who waits for the next.
#[derive(Clone, Debug, Default)]
pub struct Flushes(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    count: AtomicU64,
    waiting: AtomicWaker,
}

tokio::task_local! {
    /// The flushes of the connection whose task is running (set by the API server).
    pub static FLUSHES: Flushes;
}

/// A connection's stream, counting completed flushes, and failing a write that makes no
/// progress for its write timeout: a client that stops reading loses its connection (and the
/// response, its query slot and buffers with it) instead of holding them for ever.
#[derive(Debug)]
pub struct FlushIo<S> {
    inner: S,
    flushes: Flushes,
    write_timeout: std::time::Duration,
    /// Since the first write that could not go out, until one does.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FlushIo<S> {
    /// `inner`, its flushes counted in `flushes`, its writes cut off after `write_timeout`
    /// without progress.
    pub fn new(inner: S, flushes: Flushes, write_timeout: std::time::Duration) -> Self {
        FlushIo {
            inner,
            flushes,
            write_timeout,
            stalled: None,
        }
    }

    /// `poll` as the inner stream answered it, with the stall timer started, checked or
    /// cleared.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        use std::future::Future;
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {timeout:?} (-api.write-timeout)"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FlushIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlushIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        let done = ready!(self.watch(cx, poll));
        if done.is_ok() {
            self.flushes.0.count.fetch_add(1, Ordering::SeqCst);
            self.flushes.0.waiting.wake();
        }
        Poll::Ready(done)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wait for the current connection's next flush (at once when not served by the API server):
/// everything handed to hyper before the call has then reached the socket.
pub async fn flushed() {
    let Ok(flushes) = FLUSHES.try_with(Flushes::clone) else {
        return;
    };
    let at = flushes.0.count.load(Ordering::SeqCst);
    futures_util::future::poll_fn(|cx| {
        flushes.0.waiting.register(cx.waker());
        if flushes.0.count.load(Ordering::SeqCst) == at {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

/// A body fed by a channel of frames (data, then perhaps trailers); an `Err` aborts the
/// response, so the client sees a broken transfer rather than a short answer, but only once
/// every frame before it has been flushed to the socket (when served by the API server).
pub fn frame_body(rx: mpsc::Receiver<io::Result<hyper::body::Frame<Bytes>>>) -> Body {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let frame = rx.recv().await?;
        if frame.is_err() {
            flushed().await;
        }
        Some((frame, rx))
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

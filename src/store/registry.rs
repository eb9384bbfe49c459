//! Live streams on one store node: every segment this node accepts through replication is
//! handed to the registered stream queries, and each stream sends its client the records that
//! match.
//!
//! Publishing never blocks replication and copies nothing: each stream queues the accepted
//! segments themselves (`Bytes` over the file's mapping: page cache, not the heap) and matches
//! them as its client reads, a slice at a time. A stream's queue is bounded by the bytes of the
//! segments it holds ([`MAX_PENDING`]); a client that falls further behind is dropped and
//! counted (`oklog_store_dropped_streams_total`), and a dropped or departed client frees its
//! queue at once. Streams carry no time bounds: they see what arrives from now on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::search::{Matcher, Matches};

/// Bytes of accepted segments a stream may have queued, unread by its client (1 GiB of
/// mapped files: they cost page cache, and keep deleted files' space until read).
pub const MAX_PENDING: u64 = 1 << 30;
/// A queued segment is matched this many bytes (256 KiB) at a time, so a client's read never
/// waits for a whole segment to be searched.
const SLICE: usize = 256 << 10;

#[derive(Debug)]
struct Entry {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Arc<AtomicU64>,
}

/// The registered streams of this node.
#[derive(Debug)]
pub struct Registry {
    streams: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
    max_pending: u64,
}

/// A registered stream; dropping it deregisters it and frees its queue.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Bytes>,
    pending: Arc<AtomicU64>,
    matcher: Matcher,
    /// The segment being matched and how far.
    current: Bytes,
    at: usize,
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut streams = self.registry.lock();
        streams.remove(&self.id);
        self.registry
            .metrics
            .store_streams
            .set(streams.len() as i64);
    }
}

impl Subscription {
    /// The next chunk of matching record lines; `None` when the stream was dropped (too slow)
    /// or the node stops.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.at < self.current.len() {
                let rest = &self.current[self.at..];
                // A slice of whole lines (the segment ends with one).
                let end = if rest.len() <= SLICE {
                    rest.len()
                } else {
                    memchr::memchr(b'\n', &rest[SLICE..]).map_or(rest.len(), |i| SLICE + i + 1)
                };
                let slice = &rest[..end];
                self.at += end;
                let mut chunk = Vec::new();
                for line in Matches::new(slice, 0, u64::MAX, &self.matcher) {
                    chunk.extend_from_slice(line);
                }
                if self.at >= self.current.len() {
                    self.pending
                        .fetch_sub(self.current.len() as u64, Ordering::SeqCst);
                }
                if !chunk.is_empty() {
                    return Some(Bytes::from(chunk));
                }
                // Let other tasks run between slices of a long search.
                tokio::task::yield_now().await;
                continue;
            }
            self.current = self.rx.recv().await?;
            self.at = 0;
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Self::with_limit(metrics, MAX_PENDING)
    }

    /// An empty registry whose streams may queue `max_pending` bytes.
    pub fn with_limit(metrics: Arc<Metrics>, max_pending: u64) -> Arc<Registry> {
        Arc::new(Registry {
            streams: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            metrics,
            max_pending,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a stream for records matching `matcher`.
    pub fn register(self: &Arc<Self>, matcher: Matcher) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicU64::new(0));
        let mut streams = self.lock();
        streams.insert(
            id,
            Entry {
                tx,
                pending: Arc::clone(&pending),
            },
        );
        self.metrics.store_streams.set(streams.len() as i64);
        drop(streams);
        Subscription {
            rx,
            pending,
            matcher,
            current: Bytes::new(),
            at: 0,
            id,
            registry: Arc::clone(self),
        }
    }

    /// Whether any stream is registered (so publishing has work to do).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Hand a newly accepted segment (whole record lines) to every stream. Streams whose
    /// queue would pass [`MAX_PENDING`] are dropped.
    pub fn publish(&self, segment: Bytes) {
        if segment.is_empty() {
            return;
        }
        let len = segment.len() as u64;
        let mut streams = self.lock();
        streams.retain(|id, e| {
            let queued = e.pending.fetch_add(len, Ordering::SeqCst) + len;
            let keep = queued <= self.max_pending && e.tx.send(segment.clone()).is_ok();
            if !keep && !e.tx.is_closed() {
                self.metrics.store_dropped_streams.inc();
                tracing::warn!(stream = id, queued, "stream client too slow; dropping it");
            }
            keep
        });
        self.metrics.store_streams.set(streams.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn matching_records_reach_only_matching_streams() {
        // TestQueryRegistry.
        let reg = Registry::new(Metrics::new());
        let mut foo = reg.register(Matcher::new("foo", false).unwrap());
        let mut bar = reg.register(Matcher::new("bar", false).unwrap());
        reg.publish(Bytes::from_static(
            b"00000000000000000000000000 no match\n00000000000000000000000000 abc foo def\n",
        ));
        assert_eq!(
            &foo.next_chunk().await.unwrap()[..],
            b"00000000000000000000000000 abc foo def\n"
        );
        drop(foo);
        reg.publish(Bytes::from_static(b"00000000000000000000000001 foo bar\n"));
        assert_eq!(
            &bar.next_chunk().await.unwrap()[..],
            b"00000000000000000000000001 foo bar\n",
            "the first segment had nothing for bar"
        );
        drop(bar);
        assert!(reg.is_empty(), "dropping a subscription deregisters it");
    }

    #[tokio::test]
    async fn a_stream_that_falls_too_far_behind_is_dropped_and_frees_its_queue() {
        let metrics = Metrics::new();
        let limit = 8 << 20;
        let reg = Registry::with_limit(Arc::clone(&metrics), limit);
        let mut slow = reg.register(Matcher::new("", false).unwrap());
        let mut fast = reg.register(Matcher::new("", false).unwrap());
        // One big segment, shared by both streams (one allocation, however many streams).
        let line = b"00000000000000000000000000 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";
        let segment = Bytes::from(line.repeat((1 << 20) / line.len()));
        let per = (limit / segment.len() as u64) as usize;
        for _ in 0..per {
            reg.publish(segment.clone());
            // The reading stream keeps up.
            while fast.pending.load(Ordering::SeqCst) > 0 {
                fast.next_chunk().await.unwrap();
            }
        }
        assert_eq!(metrics.store_dropped_streams.get(), 0, "at the limit, kept");
        reg.publish(segment.clone());
        assert_eq!(metrics.store_dropped_streams.get(), 1, "past it, dropped");
        // The dropped stream ends once it has read what it had.
        let mut read = 0u64;
        while let Some(chunk) = slow.next_chunk().await {
            read += chunk.len() as u64;
        }
        assert_eq!(read, per as u64 * segment.len() as u64);
        assert_eq!(reg.lock().len(), 1, "the reading stream stays");
        drop(fast);
    }
}

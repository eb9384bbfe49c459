//! Live streams on one store node: every segment this node accepts through replication is
//! matched against the registered stream queries, and matching records are pushed to them.
//!
//! Publishing never blocks replication: each stream has a bounded queue, and a stream whose
//! queue is full (a slow client) is dropped and counted (`oklog_store_dropped_streams_total`).
//! Streams carry no time bounds: they see what arrives from now on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::search::{Matcher, Matches};

/// Chunks queued per stream before it counts as too slow.
pub const STREAM_QUEUE: usize = 1024;
/// Matching records are sent in chunks of up to this many bytes (64 KiB).
const CHUNK: usize = 64 << 10;

#[derive(Debug)]
struct Entry {
    matcher: Arc<Matcher>,
    tx: mpsc::Sender<Bytes>,
}

/// The registered streams of this node.
#[derive(Debug)]
pub struct Registry {
    streams: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A registered stream; dropping it deregisters.
#[derive(Debug)]
pub struct Subscription {
    /// Chunks of matching record lines.
    pub rx: mpsc::Receiver<Bytes>,
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            streams: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a stream for records matching `matcher`.
    pub fn register(self: &Arc<Self>, matcher: Matcher) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.lock().insert(
            id,
            Entry {
                matcher: Arc::new(matcher),
                tx,
            },
        );
        Subscription {
            rx,
            id,
            registry: Arc::clone(self),
        }
    }

    /// Whether any stream is registered (so publishing has work to do).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Push the matching records of a newly accepted segment to every stream (blocking code:
    /// call it off the async workers). Streams that cannot keep up are dropped.
    pub fn publish(&self, segment: &[u8]) {
        let entries: Vec<(u64, Arc<Matcher>, mpsc::Sender<Bytes>)> = self
            .lock()
            .iter()
            .map(|(id, e)| (*id, Arc::clone(&e.matcher), e.tx.clone()))
            .collect();
        let mut dead = Vec::new();
        for (id, matcher, tx) in entries {
            let mut chunk = Vec::new();
            let mut ok = true;
            for line in Matches::new(segment, 0, u64::MAX, &matcher) {
                chunk.extend_from_slice(line);
                if chunk.len() >= CHUNK {
                    ok = send(&tx, &mut chunk);
                    if !ok {
                        break;
                    }
                }
            }
            if ok && !chunk.is_empty() {
                ok = send(&tx, &mut chunk);
            }
            if !ok {
                dead.push(id);
            }
        }
        if !dead.is_empty() {
            let mut streams = self.lock();
            for id in dead {
                if streams.remove(&id).is_some_and(|e| !e.tx.is_closed()) {
                    self.metrics.store_dropped_streams.inc();
                    tracing::warn!(stream = id, "stream client too slow; dropping it");
                }
            }
        }
    }
}

fn send(tx: &mpsc::Sender<Bytes>, chunk: &mut Vec<u8>) -> bool {
    tx.try_send(Bytes::from(std::mem::take(chunk))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_records_reach_only_matching_streams() {
        // TestQueryRegistry.
        let reg = Registry::new(Metrics::new());
        let mut foo = reg.register(Matcher::new("foo", false).unwrap());
        let mut bar = reg.register(Matcher::new("bar", false).unwrap());
        reg.publish(
            b"00000000000000000000000000 no match\n00000000000000000000000000 abc foo def\n",
        );
        assert_eq!(
            &foo.rx.try_recv().unwrap()[..],
            b"00000000000000000000000000 abc foo def\n"
        );
        assert!(bar.rx.try_recv().is_err());
        drop(foo);
        reg.publish(b"00000000000000000000000001 foo bar\n");
        assert_eq!(
            &bar.rx.try_recv().unwrap()[..],
            b"00000000000000000000000001 foo bar\n"
        );
        drop(bar);
        assert!(reg.is_empty(), "dropping a subscription deregisters it");
    }

    #[test]
    fn slow_streams_are_dropped_not_waited_for() {
        let metrics = Metrics::new();
        let reg = Registry::new(Arc::clone(&metrics));
        let slow = reg.register(Matcher::new("", false).unwrap());
        for _ in 0..=STREAM_QUEUE {
            reg.publish(b"00000000000000000000000000 x\n");
        }
        assert!(reg.is_empty(), "the slow stream was dropped");
        assert_eq!(metrics.store_dropped_streams.get(), 1);
        drop(slow);
    }
}

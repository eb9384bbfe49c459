//! The user stream, `/store/stream`: connect to every store node's `/store/_stream`, follow
//! membership changes, and merge what arrives into one deduplicated, ULID-ordered stream.
//!
//! The window rule (DESIGN.md §10 "Streams"): a record is held for `window` from its first
//! arrival; every `window/10`, held records whose time is up are emitted in ULID order; a copy
//! whose ULID was emitted within the last `2×window` is dropped (the set of emitted IDs is
//! bounded by that). Late records are emitted, never dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{Peers, Role};
use crate::http::{self, Client};

/// A record's ULID as a number: Crockford base32 sorts in ASCII order, so numbers compare as
/// the text does, and a comparison or hash is one integer operation, not a 26-byte `memcmp`.
type Key = u128;

/// The [`Key`] of a record line.
fn key(line: &[u8]) -> Key {
    crate::record::ulid_value(line)
}

/// Hashes a [`Key`] by mixing its bits: a ULID's last 80 bits are random already.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type KeySet = HashSet<Key, std::hash::BuildHasherDefault<KeyHasher>>;

/// The default window, and the smallest allowed.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3);
/// Windows below this are raised to it (as the original).
pub const MIN_WINDOW: Duration = Duration::from_millis(100);
/// Lines sent to the client are joined into chunks of about this many bytes (256 KiB).
const OUT_CHUNK: usize = 256 << 10;
/// How often the peer list is read again, and how long to wait before reconnecting.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Bytes of records a stream holds for its window before it lets the oldest go early (4 MiB:
/// a few seconds of a busy cluster's records, 40 ms at 1 M records/s).
pub const MAX_HELD_BYTES: usize = 4 << 20;
/// A client that takes nothing for this long is dropped (its buffers freed).
pub const CLIENT_STALL: Duration = Duration::from_secs(30);
/// Emitted IDs remembered for deduplication at most (about 100 MiB at most).
pub const MAX_EMITTED: usize = 2_000_000;

/// Window deduplication, driven by the caller's clock (so tests control time).
///
/// Held records wait in arrival order, so the records due at a tick are always a prefix; each
/// tick's batch is sorted by ULID before it goes out. One set holds every ID that is held or
/// was emitted within the last `2×window`: a record costs one hash insert.
///
/// Memory is bounded whatever the ingest rate: past [`MAX_HELD_BYTES`] held, the earliest
/// arrivals are emitted before their window is up (in ULID order among themselves), and past
/// [`MAX_EMITTED`] remembered IDs the oldest are forgotten. At rates that reach either bound a
/// stream may be less ordered, or let a late duplicate through; it never loses a record.
#[derive(Debug)]
pub struct Deduplicator {
    window: Duration,
    held: VecDeque<(Key, Bytes, Instant)>,
    held_bytes: usize,
    seen: KeySet,
    emitted_order: VecDeque<(Key, Instant)>,
}

impl Deduplicator {
    /// A deduplicator for `window`.
    pub fn new(window: Duration) -> Self {
        Deduplicator {
            window,
            held: VecDeque::new(),
            held_bytes: 0,
            seen: KeySet::default(),
            emitted_order: VecDeque::new(),
        }
    }

    /// A record line (with `\n`) arrived at `now`.
    pub fn insert(&mut self, line: Bytes, now: Instant) {
        let k = key(&line);
        if !self.seen.insert(k) {
            return;
        }
        self.held_bytes += line.len();
        self.held.push_back((k, line, now));
    }

    /// Whether more is held than [`MAX_HELD_BYTES`] (so the next tick should come now).
    pub fn over_limit(&self) -> bool {
        self.held_bytes > MAX_HELD_BYTES
    }

    /// Records whose hold time is up at `now` (and, past the memory bound, the earliest
    /// arrivals), in ULID order.
    pub fn tick(&mut self, now: Instant) -> Vec<Bytes> {
        while let Some((k, t)) = self.emitted_order.front() {
            if now.duration_since(*t) < self.window * 2 && self.emitted_order.len() <= MAX_EMITTED {
                break;
            }
            self.seen.remove(k);
            self.emitted_order.pop_front();
        }
        let over = self.held_bytes > MAX_HELD_BYTES;
        let mut due = Vec::new();
        while let Some((_, line, arrived)) = self.held.front() {
            let late = now.duration_since(*arrived) >= self.window;
            let pressed = over && self.held_bytes > MAX_HELD_BYTES / 2;
            if !late && !pressed {
                break;
            }
            self.held_bytes -= line.len();
            let (k, line, _) = self.held.pop_front().expect("front");
            due.push((k, line));
        }
        due.sort_unstable_by_key(|(k, _)| *k);
        due.into_iter()
            .map(|(k, line)| {
                self.emitted_order.push_back((k, now));
                line
            })
            .collect()
    }
}

/// Parse the `window` parameter: a Go duration; unparsable → 3 s; at least 100 ms.
pub fn parse_window(value: Option<&str>) -> Duration {
    value
        .and_then(|v| crate::gotime::parse_duration(v).ok())
        .unwrap_or(DEFAULT_WINDOW)
        .max(MIN_WINDOW)
}

/// Fan out to every store node's `/store/_stream?<raw>`, deduplicate with `window`, and send
/// chunks of record lines to `out` until it closes.
pub async fn run(
    peers: Arc<dyn Peers>,
    client: Client,
    raw: String,
    window: Duration,
    out: mpsc::Sender<Bytes>,
) {
    // Chunks of whole lines from the peers (each a frame's worth, copied once).
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let mut conns: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut dedup = Deduplicator::new(window);
    let mut tick = tokio::time::interval(window / 10);
    let mut follow = tokio::time::interval(FOLLOW_EVERY);
    loop {
        tokio::select! {
            _ = follow.tick() => {
                let current = peers.current(Role::Store);
                conns.retain(|peer, task| {
                    let keep = current.contains(peer) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for peer in current {
                    if let std::collections::hash_map::Entry::Vacant(slot) = conns.entry(peer.clone()) {
                        slot.insert(tokio::spawn(follow_peer(client.clone(), peer, raw.clone(), tx.clone())));
                    }
                }
            }
            chunk = rx.recv() => {
                if let Some(chunk) = chunk {
                    let now = Instant::now();
                    let mut at = 0;
                    while let Some(i) = memchr::memchr(b'\n', &chunk[at..]) {
                        dedup.insert(chunk.slice(at..at + i + 1), now);
                        at += i + 1;
                    }
                }
                if dedup.over_limit() {
                    tick.reset_immediately();
                }
            }
            _ = tick.tick() => {
                // Due lines go out joined into chunks: one body frame per line would cost the
                // client more than the records.
                let mut chunk = Vec::new();
                let mut gone = false;
                for line in dedup.tick(Instant::now()) {
                    chunk.extend_from_slice(&line);
                    if chunk.len() >= OUT_CHUNK {
                        gone = !send(&out, Bytes::from(std::mem::take(&mut chunk))).await;
                        if gone {
                            break;
                        }
                    }
                }
                if gone || (!chunk.is_empty() && !send(&out, Bytes::from(chunk)).await) {
                    break;
                }
            }
            _ = out.closed() => break,
        }
    }
    for (_, task) in conns {
        task.abort();
    }
}

/// Send a chunk to the client; `false` if it went away or took nothing for [`CLIENT_STALL`].
async fn send(out: &mpsc::Sender<Bytes>, chunk: Bytes) -> bool {
    match tokio::time::timeout(CLIENT_STALL, out.send(chunk)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!("stream client took nothing for {CLIENT_STALL:?}; dropping it");
            false
        }
    }
}

/// Read one peer's `/store/_stream` and pass its lines on, until it ends (the caller reconnects
/// on its next membership pass).
async fn follow_peer(client: Client, peer: String, raw: String, tx: mpsc::Sender<Bytes>) {
    let url = format!("http://{peer}/store/_stream?{raw}");
    let (status, mut body) = match http::call(
        &client,
        Method::GET,
        &url,
        http::empty_body(),
        Duration::from_secs(5),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "stream connection failed");
            tokio::time::sleep(FOLLOW_EVERY).await;
            return;
        }
    };
    if !status.is_success() {
        tracing::warn!(%peer, %status, "stream refused");
        tokio::time::sleep(FOLLOW_EVERY).await;
        return;
    }
    let mut partial: Vec<u8> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // The frame's whole lines, copied once into a buffer of their own (so a held line
        // pins its own bytes, not the client's read buffers); a torn last line waits.
        let Some(last) = memchr::memrchr(b'\n', &data) else {
            partial.extend_from_slice(&data);
            continue;
        };
        let mut whole = Vec::with_capacity(partial.len() + last + 1);
        whole.extend_from_slice(&partial);
        whole.extend_from_slice(&data[..=last]);
        partial.clear();
        partial.extend_from_slice(&data[last + 1..]);
        if tx.send(Bytes::from(whole)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_as_the_ulid_text_does() {
        let ids: Vec<[u8; crate::record::ULID_LEN]> = (0..2000u64)
            .map(|i| {
                crate::record::encode_ulid(
                    i.wrapping_mul(0x9e37_79b9) % (1 << 47),
                    u128::from(i).wrapping_mul(0x1234_5678_9abc_def1_2345_6789),
                )
            })
            .chain([
                *b"00000000000000000000000000",
                *b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            ])
            .collect();
        for a in &ids {
            for b in ids.iter().step_by(7) {
                assert_eq!(
                    key(a).cmp(&key(b)),
                    a.cmp(b),
                    "{} {}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                );
            }
        }
    }

    fn rec(ms: u64, body: &str) -> Bytes {
        let mut v = crate::record::min_ulid(ms).to_vec();
        v.extend_from_slice(format!(" {body}\n").as_bytes());
        Bytes::from(v)
    }

    #[test]
    fn deduplicate() {
        // TestDeduplicate, with the window counted from first arrival.
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let mut d = Deduplicator::new(w);
        let (r1, r2, r2b, r3) = (
            rec(0, "A"),
            rec(1000, "Bbb1"),
            rec(1000, "Bbb2"),
            rec(2000, "C"),
        );
        d.insert(r3.clone(), t0);
        d.insert(r1.clone(), t0);
        d.insert(r3.clone(), t0);
        assert!(d.tick(t0 + w / 2).is_empty(), "held for the window");
        d.insert(r2.clone(), t0 + w / 2);
        d.insert(r2b, t0 + w / 2);
        d.insert(r1.clone(), t0 + w / 2);
        assert_eq!(
            d.tick(t0 + w),
            vec![r1.clone(), r3.clone()],
            "ULID order, once"
        );
        assert_eq!(d.tick(t0 + w * 3 / 2), vec![r2], "first copy wins");
        d.insert(r1.clone(), t0 + w * 2);
        assert!(
            d.tick(t0 + w * 4).is_empty(),
            "copies within 2×window are dropped"
        );
        // Long after, the emitted set has forgotten r1: a late copy is emitted, not dropped.
        d.insert(r1.clone(), t0 + w * 10);
        assert_eq!(d.tick(t0 + w * 11), vec![r1]);
    }

    #[tokio::test]
    async fn fan_out_ends_when_the_client_goes_away() {
        // TestIssue59: with peers that never answer, cancelling must still end the stream.
        let peers = Arc::new(crate::cluster::StaticPeers {
            ingest: vec![],
            store: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        });
        let (tx, rx) = mpsc::channel(1);
        let run = tokio::spawn(run(peers, http::client(), "q=x".into(), MIN_WINDOW, tx));
        tokio::time::sleep(Duration::from_millis(250)).await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .expect("the fan-out ends")
            .unwrap();
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window(None), DEFAULT_WINDOW);
        assert_eq!(parse_window(Some("junk")), DEFAULT_WINDOW);
        assert_eq!(parse_window(Some("10ms")), MIN_WINDOW);
        assert_eq!(parse_window(Some("1s")), Duration::from_secs(1));
    }
}

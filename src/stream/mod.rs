//! The user stream, `/store/stream`: connect to every store node's `/store/_stream`, follow
//! membership changes, and merge what arrives into one deduplicated, ULID-ordered stream.
//!
//! The window rule (DESIGN.md §10 "Streams"): a record is held for `window` (250 ms by default,
//! so a record is delivered within a second of its acknowledgement) from its first arrival;
//! every `window/10`, held records whose time is up are emitted in ULID order; a copy whose
//! ULID was emitted within the last `2×window`, and at least [`REMEMBER`], is dropped (the set
//! of emitted IDs is bounded by that). Late records are emitted, never dropped.

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

/// Hashes a [`Key`] with one folded multiply, so that both the low bits (the table slot) and
/// the top bits (hashbrown's tag) depend on every bit of the ULID: IDs made within one
/// millisecond differ only in their low bits (monotonic entropy), and a hash that left the top
/// bits equal for them made every probe compare keys.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let x = (v as u64) ^ ((v >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let folded = u128::from(x) * 0xd6e8_feb8_6659_fd93u128;
        self.0 = (folded as u64) ^ ((folded >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type KeySet = HashSet<Key, std::hash::BuildHasherDefault<KeyHasher>>;

/// The default window, and the smallest allowed.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(250);
/// How long emitted IDs are remembered at least, whatever the window (9 s: three times the
/// original's 3 s window), so that a slow replica's copy is still recognised.
pub const REMEMBER: Duration = Duration::from_secs(9);
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
/// IDs remembered for deduplication at most (about 100 MiB at most); past it the least
/// recently touched half is forgotten.
pub const MAX_EMITTED: usize = 2_000_000;

/// Bytes a stream holds whatever it deduplicates: the chunks queued for its client (four and
/// one in hand, 256 KiB each), the chunks its peers' readers have queued for it, and its
/// connections' buffers. A stream must find room for this in the memory budget to start.
pub const START_HOLD: usize = 3 << 20;
/// What a stream that the memory budget had no room for holds at most before it emits
/// ([`Deduplicator::shed`]): 256 KiB, one chunk.
pub const TIGHT_HELD_BYTES: usize = 256 << 10;
/// Bytes a remembered ID costs, with its share of the hash table.
const ID_COST: usize = 24;

/// Bits of a [`Key`] below its bucket number: a bucket of the seen set covers 32 ms of ULID
/// time (about 32 k records at 1 M records/s, a table that stays in cache).
const BUCKET_SHIFT: u32 = 80 + 5;

/// The IDs seen in one bucket of ULID time, and when one last arrived.
#[derive(Debug)]
struct Bucket {
    id: u64,
    keys: KeySet,
    touched: Instant,
}

/// Records of one chunk from a peer that are held: the chunk, when it arrived, and for each
/// record not seen before, its key and where its line is in the chunk.
#[derive(Debug)]
struct HeldChunk {
    data: Bytes,
    arrived: Instant,
    lines: Vec<(Key, u32, u32)>,
}

/// Window deduplication, driven by the caller's clock (so tests control time).
///
/// Records are held in the chunks they arrived in, in arrival order, so the records due at a
/// tick are always a prefix of chunks; each tick's batch is sorted by ULID and goes out as one
/// buffer. The IDs held or seen lately sit in sets by 32 ms of ULID time: the records of a
/// chunk fall into one or two of them, so a record costs one hash insert into a small table
/// in cache, and a whole bucket is forgotten at once when no copy has arrived for `3×window`
/// (its records were emitted at least `2×window` before).
///
/// Memory is bounded whatever the ingest rate: past [`MAX_HELD_BYTES`] held, the earliest
/// arrivals are emitted before their window is up (in ULID order among themselves), and past
/// [`MAX_EMITTED`] remembered IDs the least recently touched buckets are forgotten. At rates
/// that reach either bound a stream may be less ordered, or let a late duplicate through; it
/// never loses a record.
#[derive(Debug)]
pub struct Deduplicator {
    window: Duration,
    held: VecDeque<HeldChunk>,
    held_bytes: usize,
    buckets: Vec<Bucket>,
    /// Where each bucket is in `buckets`, by its id (records filed under their own time may
    /// fall into thousands of buckets at once: a replayed buffer spread over days).
    index: HashMap<u64, usize>,
    remembered: usize,
    /// The batch being sorted at a tick: key, held chunk, line start and end (kept between
    /// ticks for its allocation).
    batch: Vec<(Key, u32, u32, u32)>,
    /// Set by [`Deduplicator::shed`]: the next tick emits everything held.
    shed: bool,
    /// Set by [`Deduplicator::shed`] for good: hold at most [`TIGHT_HELD_BYTES`].
    tight: bool,
}

impl Deduplicator {
    /// A deduplicator for `window`.
    pub fn new(window: Duration) -> Self {
        Deduplicator {
            window,
            held: VecDeque::new(),
            held_bytes: 0,
            buckets: Vec::new(),
            index: HashMap::new(),
            remembered: 0,
            batch: Vec::new(),
            shed: false,
            tight: false,
        }
    }

    /// Bytes held before the earliest arrivals go out early.
    fn max_held(&self) -> usize {
        if self.tight {
            TIGHT_HELD_BYTES
        } else {
            MAX_HELD_BYTES
        }
    }

    /// About the bytes the deduplicator holds: the records, their line index, the IDs.
    pub fn cost(&self) -> usize {
        let lines: usize = self.held.iter().map(|c| c.lines.capacity() * 16).sum();
        self.held_bytes + lines + self.remembered * ID_COST + self.batch.capacity() * 32
    }

    /// Give memory up now: forget every remembered ID (a late copy of a record already sent
    /// may then go out again) and let the next tick emit everything held, whatever its
    /// window; from then on hold at most [`TIGHT_HELD_BYTES`]. Nothing is lost; order and
    /// deduplication are what is given up.
    pub fn shed(&mut self) {
        self.buckets = Vec::new();
        self.index = HashMap::new();
        self.remembered = 0;
        self.batch = Vec::new();
        self.shed = true;
        self.tight = true;
    }

    /// A chunk of whole record lines (each ending in `\n`) arrived at `now`.
    pub fn insert(&mut self, data: Bytes, now: Instant) {
        let mut lines = Vec::with_capacity(data.len() / 64);
        let mut at = 0;
        let mut bucket = usize::MAX;
        while let Some(i) = memchr::memchr(b'\n', &data[at..]) {
            let end = at + i + 1;
            let k = key(&data[at..end]);
            let id = (k >> BUCKET_SHIFT) as u64;
            if self.buckets.get(bucket).is_none_or(|b| b.id != id) {
                bucket = self.bucket(id);
            }
            let b = &mut self.buckets[bucket];
            b.touched = now;
            if b.keys.insert(k) {
                self.remembered += 1;
                lines.push((k, at as u32, end as u32));
            }
            at = end;
        }
        if lines.is_empty() {
            return;
        }
        self.held_bytes += data.len();
        self.held.push_back(HeldChunk {
            data,
            arrived: now,
            lines,
        });
    }

    /// The index of bucket `id`, made if new.
    fn bucket(&mut self, id: u64) -> usize {
        if let Some(&i) = self.index.get(&id) {
            return i;
        }
        self.buckets.push(Bucket {
            id,
            keys: KeySet::default(),
            touched: Instant::now(),
        });
        self.index.insert(id, self.buckets.len() - 1);
        self.buckets.len() - 1
    }

    /// Whether more is held than [`MAX_HELD_BYTES`] (so the next tick should come now).
    pub fn over_limit(&self) -> bool {
        self.held_bytes > self.max_held() || self.shed
    }

    /// The lines of the records whose hold time is up at `now` (and, past the memory bound,
    /// of the earliest arrivals), in ULID order, joined.
    pub fn tick(&mut self, now: Instant) -> Bytes {
        let keep = (self.window * 3).max(REMEMBER);
        let remembered = &mut self.remembered;
        let before = self.buckets.len();
        self.buckets.retain(|b| {
            let live = now.duration_since(b.touched) < keep;
            if !live {
                *remembered -= b.keys.len();
            }
            live
        });
        let mut moved = self.buckets.len() != before;
        if self.remembered > MAX_EMITTED {
            self.buckets.sort_by_key(|b| std::cmp::Reverse(b.touched));
            while self.remembered > MAX_EMITTED / 2 {
                let b = self.buckets.pop().expect("remembered keys are in buckets");
                self.remembered -= b.keys.len();
            }
            moved = true;
        }
        if moved {
            self.index.clear();
            self.index
                .extend(self.buckets.iter().enumerate().map(|(i, b)| (b.id, i)));
        }

        let over = self.held_bytes > self.max_held();
        let floor = if std::mem::take(&mut self.shed) {
            0
        } else {
            self.max_held() / 2
        };
        let mut due = 0;
        let mut left = self.held_bytes;
        for chunk in &self.held {
            let late = now.duration_since(chunk.arrived) >= self.window;
            let pressed = (over || floor == 0) && left > floor;
            if !(late || pressed) {
                break;
            }
            left -= chunk.data.len();
            due += 1;
        }
        if due == 0 {
            return Bytes::new();
        }
        self.batch.clear();
        let mut size = 0;
        for (c, chunk) in self.held.iter().take(due).enumerate() {
            for &(k, start, end) in &chunk.lines {
                self.batch.push((k, c as u32, start, end));
                size += (end - start) as usize;
            }
        }
        self.batch.sort_unstable_by_key(|r| r.0);
        let mut out = Vec::with_capacity(size);
        for &(_, c, start, end) in &self.batch {
            out.extend_from_slice(&self.held[c as usize].data[start as usize..end as usize]);
        }
        self.held.drain(..due);
        self.held_bytes = left;
        Bytes::from(out)
    }
}

/// Parse the `window` parameter: a Go duration (absent or empty: 250 ms), at least 100 ms; anything
/// else is an error for a 400.
pub fn parse_window(value: Option<&str>) -> Result<Duration, crate::gotime::DurationError> {
    Ok(match value {
        None | Some("") => DEFAULT_WINDOW,
        Some(v) => crate::gotime::parse_duration(v)?,
    }
    .max(MIN_WINDOW))
}

/// Fan out to every store node's `/store/_stream?<raw>`, deduplicate with `window`, and send
/// chunks of record lines to `out` until it closes. What the deduplicator holds is kept in
/// `hold`; when the memory budget has no room for more, the stream sheds
/// ([`Deduplicator::shed`]) rather than grow.
pub async fn run(
    peers: Arc<dyn Peers>,
    client: Client,
    raw: String,
    window: Duration,
    out: mpsc::Sender<Bytes>,
    mut hold: crate::memory::Hold,
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
                    dedup.insert(chunk, Instant::now());
                }
                if hold.set(dedup.cost() + START_HOLD).is_err() {
                    dedup.shed();
                    let _ = hold.set(dedup.cost() + START_HOLD);
                }
                // Past its bound the deduplicator lets records go at once, not at the next
                // tick: while peers keep it busy, the timer may not fire for a while.
                if dedup.over_limit() && !emit(&mut dedup, &out, &mut hold).await {
                    break;
                }
            }
            _ = tick.tick() => {
                if !emit(&mut dedup, &out, &mut hold).await {
                    break;
                }
            }
            _ = out.closed() => break,
        }
    }
    for (_, task) in conns {
        task.abort();
    }
    // Its deduplication sets were many small allocations: hand them back soon.
    drop(dedup);
    crate::memory::trim_soon();
}

/// Send what is due to the client, in chunks of whole lines (one body frame per line would cost
/// the client more than the records); `false` if it went away or took nothing for
/// [`CLIENT_STALL`].
async fn emit(
    dedup: &mut Deduplicator,
    out: &mpsc::Sender<Bytes>,
    hold: &mut crate::memory::Hold,
) -> bool {
    let mut due = dedup.tick(Instant::now());
    // What is due is held until the client takes it: counted, whatever the budget.
    hold.force(dedup.cost() + due.len() + START_HOLD);
    let mut gone = false;
    while !due.is_empty() && !gone {
        let cut = if due.len() <= OUT_CHUNK {
            due.len()
        } else {
            memchr::memrchr(b'\n', &due[..OUT_CHUNK]).map_or(due.len(), |i| i + 1)
        };
        gone = !send(out, due.split_to(cut)).await;
    }
    let _ = hold.set(dedup.cost() + START_HOLD);
    !gone
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
    let url = http::url(&peer, &format!("/store/_stream?{raw}"));
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

    fn join(lines: &[&Bytes]) -> Bytes {
        Bytes::from(
            lines
                .iter()
                .flat_map(|l| l.iter().copied())
                .collect::<Vec<u8>>(),
        )
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
        d.insert(join(&[&r3, &r1, &r3]), t0);
        assert!(d.tick(t0 + w / 2).is_empty(), "held for the window");
        d.insert(r2.clone(), t0 + w / 2);
        d.insert(join(&[&r2b, &r1]), t0 + w / 2);
        assert_eq!(d.tick(t0 + w), join(&[&r1, &r3]), "ULID order, once");
        assert_eq!(d.tick(t0 + w * 3 / 2), r2, "first copy wins");
        d.insert(r1.clone(), t0 + w * 2);
        assert!(
            d.tick(t0 + w * 4).is_empty(),
            "copies within 2×window are dropped"
        );
        // A slow replica's copy, past 2×window but within REMEMBER (9 s): still dropped.
        d.insert(r1.clone(), t0 + w * 6);
        assert!(d.tick(t0 + w * 8).is_empty(), "remembered for 9 s");
        // Long after (ticks go on), the seen set has forgotten r1: a late copy is emitted, not
        // dropped.
        assert!(d.tick(t0 + w * 16).is_empty());
        d.insert(r1.clone(), t0 + w * 17);
        assert_eq!(d.tick(t0 + w * 18), r1);
    }

    #[test]
    fn a_shed_stream_emits_what_it_holds_and_forgets_what_it_sent() {
        let t0 = Instant::now();
        let w = Duration::from_secs(3);
        let mut d = Deduplicator::new(w);
        let (r1, r2) = (rec(0, "A"), rec(5, "B"));
        d.insert(r1.clone(), t0);
        assert!(d.tick(t0).is_empty());
        d.insert(r2.clone(), t0);
        let before = d.cost();
        assert!(before > 0);
        d.shed();
        assert!(d.over_limit(), "the next tick comes at once");
        assert_eq!(d.tick(t0), join(&[&r1, &r2]), "all held, in order, now");
        assert!(d.cost() < before, "{} < {before}", d.cost());
        // Deduplication starts over: a copy of what went out goes out again (not lost).
        d.insert(r1.clone(), t0);
        assert_eq!(d.tick(t0 + w), r1);
        // And the window applies again after a shed.
        d.insert(rec(9, "C"), t0 + w);
        assert!(d.tick(t0 + w).is_empty());
    }

    #[test]
    fn held_bytes_are_bounded_and_nothing_is_lost() {
        // Two peers send the same records in interleaved chunks, far faster than the window:
        // past the bound the earliest arrivals go out early, each record exactly once, and
        // each batch in ULID order.
        let t0 = Instant::now();
        let mut d = Deduplicator::new(Duration::from_secs(3));
        let records: Vec<Bytes> = (0..60_000u64)
            .map(|i| {
                let mut v = crate::record::encode_ulid(i / 7, u128::from(i % 7)).to_vec();
                v.extend_from_slice(format!(" record {i:0>80}\n").as_bytes());
                Bytes::from(v)
            })
            .collect();
        let mut out = Vec::new();
        for (n, part) in records.chunks(500).enumerate() {
            let chunk = join(&part.iter().collect::<Vec<_>>());
            d.insert(chunk.clone(), t0);
            if n % 3 == 0 {
                d.insert(chunk, t0);
            }
            assert!(
                d.held_bytes <= MAX_HELD_BYTES + 2 * 500 * 120,
                "held {}",
                d.held_bytes
            );
            if d.over_limit() {
                let batch = d.tick(t0);
                assert!(!batch.is_empty(), "pressure lets the earliest go");
                out.push(batch);
            }
        }
        out.push(d.tick(t0 + Duration::from_secs(3)));
        let mut all = Vec::new();
        for batch in &out {
            let lines: Vec<&[u8]> = batch.split_inclusive(|&b| b == b'\n').collect();
            assert!(
                lines.windows(2).all(|w| w[0] < w[1]),
                "a batch is in ULID order"
            );
            all.extend(lines);
        }
        let want: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
        assert_eq!(all.len(), want.len(), "each record once");
        all.sort();
        assert!(all == want, "every record, none changed");
    }

    #[tokio::test]
    async fn fan_out_ends_when_the_client_goes_away() {
        // TestIssue59: with peers that never answer, cancelling must still end the stream.
        let peers = Arc::new(crate::cluster::StaticPeers {
            ingest: vec![],
            store: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        });
        let (tx, rx) = mpsc::channel(1);
        let run = tokio::spawn(run(
            peers,
            http::client(),
            "q=x".into(),
            MIN_WINDOW,
            tx,
            crate::memory::Budget::new(usize::MAX).hold(),
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .expect("the fan-out ends")
            .unwrap();
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window(None), Ok(DEFAULT_WINDOW));
        assert!(
            parse_window(Some("junk")).is_err(),
            "a bad window is refused"
        );
        assert_eq!(parse_window(Some("10ms")), Ok(MIN_WINDOW));
        assert_eq!(parse_window(Some("1s")), Ok(Duration::from_secs(1)));
    }
}

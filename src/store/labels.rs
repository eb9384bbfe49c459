//! The label index: for each queryable segment, the streams it holds — a topic and the stream
//! labels its agent sent (the labels part of a pushed record, [`crate::record::parts`]) — with
//! the first and last millisecond, records and bytes of each. The Loki API answers `labels`,
//! `label/<name>/values`, `series`, `index/stats` and `index/volume` from it, never by
//! reading records.
//!
//! A segment's streams are found by reading it once, as it is stored (the store log asks
//! when it closes a segment: consumed, replicated, compacted; a conversion keeps them), and
//! kept in memory and on disk in `labels/<LOW>-<HIGH>-<size>.json` beside the segments, so a
//! restart reads no segment again. A segment's name and size say which file it is: one
//! merged or rewritten under its name has another size and is read again. A segment stored
//! before the index existed (or by hand) is read when its streams are first asked for. The
//! files of removed and trashed segments are deleted with them, and any left over at
//! start-up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::log::{Segment, StoreLog, build_name};
use crate::merge::Source;
use crate::record::{BODY_OFFSET, ULID_LEN, parts, ulid_ms};
use crate::segment::Records;

/// The most streams one segment's entry keeps: past that, the rest of the segment's streams
/// are counted under their topic alone (an agent sending a label per record must not make the
/// index as large as the data).
pub const MAX_STREAMS_PER_SEGMENT: usize = 20_000;

/// One stream of a segment (or of several, merged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The topic.
    pub topic: String,
    /// The stream labels as stored (logfmt, a label with an empty value being the topic's).
    pub labels: String,
    /// First record's millisecond.
    pub first: u64,
    /// Last record's millisecond.
    pub last: u64,
    /// Records.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
}

/// A segment's streams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentLabels {
    /// The streams, by topic and labels.
    pub streams: Vec<StreamInfo>,
}

/// The label index of a store.
#[derive(Debug)]
pub struct LabelIndex {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Arc<SegmentLabels>>>,
}

fn key(seg: &Segment) -> String {
    let name = build_name(&seg.low, &seg.high, "x");
    format!("{}-{}", name.trim_end_matches(".x"), seg.size)
}

impl LabelIndex {
    /// The index of the store in `store_dir` (its files in `labels/` there).
    pub fn new(store_dir: &Path) -> LabelIndex {
        LabelIndex {
            dir: store_dir.join("labels"),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The streams of `seg`: remembered, read from its file, or found by reading the segment
    /// (and then written down).
    pub fn of(&self, seg: &Segment) -> io::Result<Arc<SegmentLabels>> {
        let k = key(seg);
        if let Some(l) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return Ok(Arc::clone(l));
        }
        let file = self.file(seg);
        let labels = match std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<SegmentLabels>(&b).ok())
        {
            Some(l) => l,
            None => {
                let l = read_segment(&seg.path)?;
                // The index is a cache of what the segments hold: failing to write it down
                // costs a read after a restart, nothing else.
                let _ = self.write(&file, &l);
                l
            }
        };
        let labels = Arc::new(labels);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, Arc::clone(&labels));
        Ok(labels)
    }

    fn write(&self, file: &Path, l: &SegmentLabels) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(l).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, file)
    }

    /// Read the streams of `seg`, just stored, and keep them.
    pub fn index(&self, seg: &Segment) -> io::Result<()> {
        self.of(seg).map(|_| ())
    }

    /// `new` holds the same records as `old` (a conversion): the same streams.
    pub fn moved(&self, old: &Segment, new: &Segment) {
        let Ok(l) = self.of(old) else { return };
        let _ = self.write(&self.file(new), &l);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(key(new), l);
        if key(old) != key(new) {
            cache.remove(&key(old));
            let _ = std::fs::remove_file(self.file(old));
        }
    }

    /// `seg` is gone: forget its streams.
    pub fn forget(&self, seg: &Segment) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(seg));
        let _ = std::fs::remove_file(self.file(seg));
    }

    /// Delete the files of segments not in `live` (gone while the node was down); reads
    /// nothing but the directory.
    pub fn sweep(&self, live: &[Segment]) {
        let live: HashSet<String> = live.iter().map(key).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.trim_end_matches(".json").trim_end_matches(".tmp");
            if !live.contains(stem) || name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn file(&self, seg: &Segment) -> PathBuf {
        self.dir.join(format!("{}.json", key(seg)))
    }

    /// The streams of `log`'s records in `[from_ms, to_ms]`, merged over its segments.
    pub fn streams(&self, log: &StoreLog, from_ms: u64, to_ms: u64) -> io::Result<Vec<StreamInfo>> {
        let mut merged: BTreeMap<(String, String), StreamInfo> = BTreeMap::new();
        for seg in log.overlapping(from_ms, to_ms)? {
            let l = match self.of(&seg) {
                Ok(l) => l,
                // Removed by compaction since it was listed: its records are in its outputs.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for s in &l.streams {
                if s.last < from_ms || s.first > to_ms {
                    continue;
                }
                merged
                    .entry((s.topic.clone(), s.labels.clone()))
                    .and_modify(|m| {
                        m.first = m.first.min(s.first);
                        m.last = m.last.max(s.last);
                        m.records += s.records;
                        m.bytes += s.bytes;
                    })
                    .or_insert_with(|| s.clone());
            }
        }
        Ok(merged.into_values().collect())
    }
}

/// Read a segment's streams.
fn read_segment(path: &Path) -> io::Result<SegmentLabels> {
    let mut records = Records::open(path)?;
    let mut streams: HashMap<(Vec<u8>, Vec<u8>), StreamInfo> = HashMap::new();
    while let Some(line) = records.current() {
        if line.len() > BODY_OFFSET {
            let ms = ulid_ms(&line[..ULID_LEN]);
            let body = &line[BODY_OFFSET..];
            let body = body.strip_suffix(b"\n").unwrap_or(body);
            let (topic, payload) = crate::record::topic_and_payload(body);
            let mut labels = parts::split(payload).labels;
            if streams.len() >= MAX_STREAMS_PER_SEGMENT
                && !streams.contains_key(&(topic.to_vec(), labels.to_vec()))
            {
                labels = &[];
            }
            let len = line.len() as u64;
            match streams.get_mut(&(topic.to_vec(), labels.to_vec())) {
                Some(s) => {
                    s.first = s.first.min(ms);
                    s.last = s.last.max(ms);
                    s.records += 1;
                    s.bytes += len;
                }
                None => {
                    streams.insert(
                        (topic.to_vec(), labels.to_vec()),
                        StreamInfo {
                            topic: String::from_utf8_lossy(topic).into_owned(),
                            labels: String::from_utf8_lossy(labels).into_owned(),
                            first: ms,
                            last: ms,
                            records: 1,
                            bytes: len,
                        },
                    );
                }
            }
        }
        records.advance()?;
    }
    let mut streams: Vec<StreamInfo> = streams.into_values().collect();
    streams.sort_by(|a, b| (&a.topic, &a.labels).cmp(&(&b.topic, &b.labels)));
    Ok(SegmentLabels { streams })
}

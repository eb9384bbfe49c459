//! Context lines (`before=N&after=N`, grep's `-B`/`-A`): around every match, up to N records of
//! the same topic, merged into one group when they overlap.
//!
//! [`Context`] reads records in the answer's order, each told whether it matches, and emits
//! the matches and their context in that same order, so answers stay sorted (and mergeable by
//! ULID) however topics interleave. A record that may still become "before" context of a later
//! match of its topic waits in its topic's ring (at most N per topic), and so does every record
//! emitted after it; past [`MAX_PENDING`] bytes waiting, the oldest waiting record is given up
//! (it will not be context), so memory stays bounded.
//!
//! Emitted lines carry their kind in the byte after the ULID, where a stored record has its
//! space: [`MATCH`] (a space, as stored) or [`CONTEXT`]; for the first record of a group (one
//! whose topic's previous record was not emitted) [`MATCH_START`] or [`CONTEXT_START`]; and for
//! a topic's first record in the answer, of which nothing before is known, [`MATCH_FIRST`] or
//! [`CONTEXT_FIRST`]. `oklog query` prints `--` between groups, as grep. A gateway merging the
//! answers of several nodes trusts a node's "start" (that node saw a record in between), not its
//! "first" (another node may hold the records before).

use std::collections::{HashMap, VecDeque};

use crate::record::ULID_LEN;

/// Kind byte of a match.
pub const MATCH: u8 = b' ';
/// Kind byte of a context record.
pub const CONTEXT: u8 = b'-';
/// Kind byte of a match that starts a group.
pub const MATCH_START: u8 = b'+';
/// Kind byte of a context record that starts a group.
pub const CONTEXT_START: u8 = b'~';
/// Kind byte of a match that is its topic's first record in the answer.
pub const MATCH_FIRST: u8 = b':';
/// Kind byte of a context record that is its topic's first record in the answer.
pub const CONTEXT_FIRST: u8 = b'=';

/// Bytes of records waiting for their turn before the oldest waiting one is given up (16 MiB).
pub const MAX_PENDING: usize = 16 << 20;

/// The kind byte of an answer line (`None` for a line too short to have one).
pub fn kind(line: &[u8]) -> Option<u8> {
    line.get(ULID_LEN).copied()
}

/// Whether an answer line's kind is a match.
pub fn is_match_kind(k: u8) -> bool {
    matches!(k, MATCH | MATCH_START | MATCH_FIRST)
}

/// Whether an answer line starts a group.
pub fn starts_group(k: u8) -> bool {
    matches!(k, MATCH_START | CONTEXT_START | MATCH_FIRST | CONTEXT_FIRST)
}

/// Whether an answer line is known to follow a gap in its topic (not only to be the first the
/// answer has of it).
pub fn after_gap(k: u8) -> bool {
    matches!(k, MATCH_START | CONTEXT_START)
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Emit(u8),
    Drop,
}

#[derive(Debug)]
struct Slot {
    line: Vec<u8>,
    topic: Vec<u8>,
    state: State,
    /// The record is known to follow a gap in its topic, whatever this processor sees (the
    /// node that sent it saw a record of its topic just before it that it did not send).
    gap: bool,
}

#[derive(Debug, Default)]
struct Topic {
    /// Sequence numbers of this topic's waiting records, oldest first.
    ring: VecDeque<u64>,
    /// Records still to emit after the last match.
    trail: usize,
    /// Whether the topic's last decided record was emitted (the next emitted one continues
    /// its group).
    last_emitted: bool,
    /// Whether a record of the topic was decided before.
    decided: bool,
}

impl Topic {
    /// Emit the topic's next record: its kind. `gap`: known to follow a gap.
    fn emit(&mut self, is_match: bool, gap: bool) -> u8 {
        let k = match (is_match, self.last_emitted && !gap, self.decided || gap) {
            (true, true, _) => MATCH,
            (false, true, _) => CONTEXT,
            (true, false, true) => MATCH_START,
            (false, false, true) => CONTEXT_START,
            (true, false, false) => MATCH_FIRST,
            (false, false, false) => CONTEXT_FIRST,
        };
        self.last_emitted = true;
        self.decided = true;
        k
    }

    /// Leave the topic's next record out.
    fn leave_out(&mut self) {
        self.last_emitted = false;
        self.decided = true;
    }
}

/// The context processor of one answer.
#[derive(Debug)]
pub struct Context {
    /// Records kept ahead of a match, in the answer's order.
    lead: usize,
    /// Records emitted after a match, in the answer's order.
    trail: usize,
    /// Matches still wanted (`limit`).
    matches_left: u64,
    /// Waiting and decided records, in order, from sequence number `base`.
    slots: VecDeque<Slot>,
    base: u64,
    topics: HashMap<Vec<u8>, Topic>,
    /// Topics with trailing records still to emit.
    trailing: usize,
    pending: usize,
}

impl Context {
    /// Context of `before` and `after` records (in time) around each match; `desc` when the
    /// records come newest first; at most `limit` matches.
    pub fn new(before: usize, after: usize, desc: bool, limit: Option<u64>) -> Context {
        let (lead, trail) = if desc {
            (after, before)
        } else {
            (before, after)
        };
        Context {
            lead,
            trail,
            matches_left: limit.unwrap_or(u64::MAX),
            slots: VecDeque::new(),
            base: 0,
            topics: HashMap::new(),
            trailing: 0,
            pending: 0,
        }
    }

    /// Whether nothing more can be emitted: the limit is reached and every match has its
    /// trailing records.
    pub fn done(&self) -> bool {
        self.matches_left == 0 && self.trailing == 0
    }

    /// Read the next record (a stored line, with its `\n`); append what can be emitted now to
    /// `out`.
    pub fn push(&mut self, line: &[u8], is_match: bool, out: &mut Vec<u8>) {
        self.push_hinted(line, is_match, false, out);
    }

    /// [`Context::push`] of a record that may be known to follow a gap in its topic (`gap`).
    pub fn push_hinted(&mut self, line: &[u8], is_match: bool, gap: bool, out: &mut Vec<u8>) {
        if line.len() <= ULID_LEN || self.done() {
            return;
        }
        let body = crate::search::body(line);
        let topic = crate::search::topic_of(body);
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_vec(), Topic::default());
        }
        let seq = self.base + self.slots.len() as u64;
        let is_match = is_match && self.matches_left > 0;
        let (lead, trail) = (self.lead, self.trail);
        let t = self.topics.get_mut(topic).expect("inserted above");
        let state = if is_match {
            self.matches_left -= 1;
            // The waiting records of the topic become its "before" context.
            let ring = std::mem::take(&mut t.ring);
            for s in ring {
                let slot = &mut self.slots[(s - self.base) as usize];
                slot.state = State::Emit(t.emit(false, slot.gap));
            }
            let k = t.emit(true, gap);
            if t.trail == 0 && trail > 0 {
                self.trailing += 1;
            } else if t.trail > 0 && trail == 0 {
                self.trailing -= 1;
            }
            t.trail = trail;
            State::Emit(k)
        } else if t.trail > 0 {
            t.trail -= 1;
            if t.trail == 0 {
                self.trailing -= 1;
            }
            State::Emit(t.emit(false, gap))
        } else if lead > 0 {
            t.ring.push_back(seq);
            if t.ring.len() > lead {
                let old = t.ring.pop_front().expect("longer than lead");
                self.slots[(old - self.base) as usize].state = State::Drop;
                t.leave_out();
            }
            State::Waiting
        } else {
            t.leave_out();
            State::Drop
        };
        if state == State::Drop && self.slots.is_empty() {
            return; // nothing waits before it: no slot needed
        }
        self.pending += line.len();
        self.slots.push_back(Slot {
            line: line.to_vec(),
            topic: topic.to_vec(),
            state,
            gap,
        });
        self.flush(out);
        while self.pending > MAX_PENDING {
            self.give_up_oldest();
            self.flush(out);
        }
    }

    /// Emit what is left at the end of the records.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        while !self.slots.is_empty() {
            self.give_up_oldest();
            self.flush(out);
        }
    }

    /// The oldest record still waiting will not be context.
    fn give_up_oldest(&mut self) {
        if let Some(front) = self.slots.front_mut()
            && front.state == State::Waiting
        {
            front.state = State::Drop;
            if let Some(t) = self.topics.get_mut(&front.topic) {
                t.ring.pop_front();
                // Records of the topic after it are all still waiting: none was decided.
                t.leave_out();
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.slots.front() {
            if front.state == State::Waiting {
                return;
            }
            let slot = self.slots.pop_front().expect("front exists");
            self.base += 1;
            self.pending -= slot.line.len();
            if let State::Emit(k) = slot.state {
                let at = out.len();
                out.extend_from_slice(&slot.line);
                out[at + ULID_LEN] = k;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines `<ulid(i)> <topic> <payload>`.
    fn line(i: u64, topic: &str, payload: &str) -> Vec<u8> {
        let mut l = crate::record::encode_ulid(1000 + i, u128::from(i)).to_vec();
        l.extend_from_slice(format!(" {topic} {payload}\n").as_bytes());
        l
    }

    /// Run `records` (topic, payload; "M" in the payload is a match) through a processor and
    /// return (kind, payload) per emitted line.
    fn run(
        records: &[(&str, &str)],
        before: usize,
        after: usize,
        desc: bool,
        limit: Option<u64>,
    ) -> Vec<(char, String)> {
        let mut lines: Vec<Vec<u8>> = records
            .iter()
            .enumerate()
            .map(|(i, (t, p))| line(i as u64, t, p))
            .collect();
        if desc {
            lines.reverse();
        }
        let mut c = Context::new(before, after, desc, limit);
        let mut out = Vec::new();
        for l in &lines {
            let m = l.ends_with(b"M\n"); // (a ULID may hold an M too)
            c.push(l, m, &mut out);
        }
        c.finish(&mut out);
        out.split_inclusive(|&b| b == b'\n')
            .map(|l| {
                let text = String::from_utf8_lossy(l);
                (
                    l[ULID_LEN] as char,
                    text.trim_end().rsplit(' ').next().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The reference: per topic, grep -B/-A over that topic's own sequence, then all kept
    /// records in the original order with the group starts grep would print `--` before.
    fn reference(records: &[(&str, &str)], before: usize, after: usize) -> Vec<(char, String)> {
        let mut keep = vec![None; records.len()];
        let topics: std::collections::BTreeSet<&str> = records.iter().map(|r| r.0).collect();
        for topic in topics {
            let idx: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].0 == topic)
                .collect();
            for (k, &i) in idx.iter().enumerate() {
                if records[i].1.ends_with('M') {
                    for &j in &idx[k.saturating_sub(before)..=(k + after).min(idx.len() - 1)] {
                        if keep[j].is_none() {
                            keep[j] = Some(false);
                        }
                    }
                    keep[i] = Some(true);
                }
            }
        }
        // Group starts, per topic.
        let mut out = Vec::new();
        let mut last_kept_of: HashMap<&str, Option<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let prev = last_kept_of.get(r.0).copied().flatten();
            let prev_idx = (0..i).rev().find(|&j| records[j].0 == r.0);
            if let Some(m) = keep[i] {
                let start = prev.is_none() || prev != prev_idx;
                let k = match (m, start, prev_idx.is_none()) {
                    (true, false, _) => MATCH,
                    (false, false, _) => CONTEXT,
                    (true, true, false) => MATCH_START,
                    (false, true, false) => CONTEXT_START,
                    (true, true, true) => MATCH_FIRST,
                    (false, true, true) => CONTEXT_FIRST,
                };
                out.push((k as char, r.1.to_string()));
                last_kept_of.insert(r.0, Some(i));
            }
        }
        out
    }

    #[test]
    fn grep_context_per_topic() {
        let recs = [
            ("a", "a0"),
            ("b", "b0"),
            ("a", "a1"),
            ("a", "a2M"),
            ("b", "b1"),
            ("a", "a3"),
            ("a", "a4"),
            ("a", "a5"),
            ("b", "b2M"),
            ("a", "a6M"),
            ("a", "a7"),
        ];
        let got = run(&recs, 1, 1, false, None);
        let want: Vec<(char, String)> = [
            ('~', "a1"),
            (' ', "a2M"),
            ('~', "b1"),
            ('-', "a3"),
            ('~', "a5"),
            (' ', "b2M"),
            (' ', "a6M"),
            ('-', "a7"),
        ]
        .iter()
        .map(|(k, p)| (*k, p.to_string()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(reference(&recs, 1, 1), want);
    }

    #[test]
    fn agrees_with_per_topic_grep_on_random_records() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(0..60);
            let owned: Vec<(String, String)> = (0..n)
                .map(|i| {
                    let t = ["a", "b", "c"][rng.random_range(0..3)].to_string();
                    let m = if rng.random_bool(0.15) { "M" } else { "" };
                    (t.clone(), format!("{t}{i}{m}"))
                })
                .collect();
            let recs: Vec<(&str, &str)> = owned
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let (b, a) = (rng.random_range(0..4), rng.random_range(0..4));
            let want = reference(&recs, b, a);
            assert_eq!(run(&recs, b, a, false, None), want, "-B{b} -A{a} {recs:?}");
            // Newest first: the same records and kinds except group starts, reversed.
            let plain = |v: Vec<(char, String)>| -> Vec<(bool, String)> {
                v.into_iter()
                    .map(|(k, p)| (is_match_kind(k as u8), p))
                    .collect()
            };
            let mut desc = plain(run(&recs, b, a, true, None));
            desc.reverse();
            assert_eq!(desc, plain(want), "desc -B{b} -A{a} {recs:?}");
        }
    }

    #[test]
    fn a_limit_counts_matches_and_keeps_the_last_ones_context() {
        let recs = [
            ("a", "0M"),
            ("a", "1"),
            ("a", "2M"),
            ("a", "3"),
            ("a", "4M"),
        ];
        let got = run(&recs, 0, 1, false, Some(2));
        let payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(payloads, ["0M", "1", "2M", "3"]);
    }

    #[test]
    fn waiting_is_bounded() {
        // A rare topic's record waits; a flood of matches of another topic must not pile up.
        let mut c = Context::new(1, 0, false, None);
        let mut out = Vec::new();
        c.push(&line(0, "rare", "x"), false, &mut out);
        let big = "y".repeat(4096);
        for i in 1..10_000 {
            c.push(&line(i, "busy", &format!("M{big}")), true, &mut out);
        }
        assert!(c.pending <= MAX_PENDING + 5000, "{}", c.pending);
        c.finish(&mut out);
        assert_eq!(out.split_inclusive(|&b| b == b'\n').count(), 9_999);
    }
}

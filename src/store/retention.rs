//! Per-topic retention (`-store.topic-retain PATTERN=DURATION`, repeatable): how long the
//! records of each topic are kept. A topic takes the first rule whose pattern (a name or a
//! `*`/`?` glob) matches it, else the store's `-store.segment-retain`.
//!
//! Records past their topic's retention are hidden from every query at once (the query path
//! asks [`Retention::cutoff_for`] for each topic it reads) and reclaimed by the lifecycle task:
//! compressed blocks of the topic are dropped and raw segments rewritten without them.

use std::time::Duration;

use crate::search::Topics;

/// One `PATTERN=DURATION` rule.
#[derive(Clone, Debug)]
struct Rule {
    pattern: String,
    topics: Topics,
    retain: Duration,
}

/// The retention of every topic.
#[derive(Clone, Debug)]
pub struct Retention {
    rules: Vec<Rule>,
    default: Duration,
}

/// A `-store.topic-retain` rule that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("-store.topic-retain {rule:?}: {why}")]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub why: RuleWhy,
}

/// What is wrong with a retention rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleWhy {
    /// Not `PATTERN=DURATION`.
    #[error("want PATTERN=DURATION, e.g. debug-*=24h")]
    Shape,
    /// The pattern is no topic or glob.
    #[error(transparent)]
    Topic(crate::search::QueryError),
    /// The duration does not parse.
    #[error(transparent)]
    Duration(crate::gotime::DurationError),
    /// A zero duration.
    #[error("the duration must be positive")]
    Zero,
}

impl Retention {
    /// Every topic kept for `default`, no rules.
    pub fn uniform(default: Duration) -> Retention {
        Retention {
            rules: Vec::new(),
            default,
        }
    }

    /// Rules `PATTERN=DURATION` (Go durations) over `default`.
    pub fn parse<S: AsRef<str>>(rules: &[S], default: Duration) -> Result<Retention, RuleError> {
        let mut out = Retention::uniform(default);
        for r in rules {
            let r = r.as_ref();
            let bad = |why: RuleWhy| RuleError {
                rule: r.to_string(),
                why,
            };
            let Some((pattern, d)) = r.split_once('=') else {
                return Err(bad(RuleWhy::Shape));
            };
            let topics = Topics::parse(&[pattern]).map_err(|e| bad(RuleWhy::Topic(e)))?;
            let retain = crate::gotime::parse_duration(d).map_err(|e| bad(RuleWhy::Duration(e)))?;
            if retain.is_zero() {
                return Err(bad(RuleWhy::Zero));
            }
            out.rules.push(Rule {
                pattern: pattern.to_string(),
                topics,
                retain,
            });
        }
        Ok(out)
    }

    /// Whether some topic is kept for less than the default (records must be filtered by
    /// topic, not only by segment age).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The rules as given, `PATTERN=DURATION`.
    pub fn rules(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| {
                format!(
                    "{}={}",
                    r.pattern,
                    super::hits::format_step(r.retain.as_millis() as u64)
                )
            })
            .collect()
    }

    /// How long records of `topic` are kept.
    pub fn retain_for(&self, topic: &[u8]) -> Duration {
        self.rules
            .iter()
            .find(|r| r.topics.matches(topic))
            .map_or(self.default, |r| r.retain)
    }

    /// The longest retention of any topic (segments wholly older are removed).
    pub fn longest(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.retain)
            .fold(self.default, Duration::max)
    }

    /// The shortest retention of any topic (records newer than `now` minus it are kept
    /// whatever their topic).
    pub fn shortest(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.retain)
            .fold(self.default, Duration::min)
    }

    /// The oldest millisecond still kept for `topic` at `now_ms`.
    pub fn cutoff_for(&self, topic: &[u8], now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.retain_for(topic).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_else_the_default() {
        let r = Retention::parse(
            &["debug-*=24h", "audit=2160h", "debug-keep=1000h"],
            Duration::from_secs(7 * 86400),
        )
        .unwrap();
        assert_eq!(r.retain_for(b"debug-x"), Duration::from_secs(86400));
        assert_eq!(r.retain_for(b"debug-keep"), Duration::from_secs(86400));
        assert_eq!(r.retain_for(b"audit"), Duration::from_secs(90 * 86400));
        assert_eq!(r.retain_for(b"web"), Duration::from_secs(7 * 86400));
        assert_eq!(r.longest(), Duration::from_secs(90 * 86400));
        assert_eq!(r.shortest(), Duration::from_secs(86400));
        assert_eq!(
            r.cutoff_for(b"debug-x", 100_000_000),
            100_000_000 - 86_400_000
        );
        assert!(r.has_rules());
        assert_eq!(r.rules()[0], "debug-*=24h");
    }

    #[test]
    fn bad_rules_say_why() {
        let d = Duration::from_secs(60);
        for (bad, why) in [
            ("debug", "PATTERN=DURATION"),
            ("a/b=1h", "topic"),
            ("a=soon", "a=soon"),
            ("a=0s", "positive"),
        ] {
            let e = Retention::parse(&[bad], d).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

//! A test-only hook: `OKLOG_FAILPOINT=<part>` makes that long-running part of a node fail on
//! purpose shortly after start-up, so tests can see the node notice, shut down in order and
//! exit non-zero. Unset (always, outside tests), it costs one environment lookup per part.

use std::time::Duration;

/// How long after start-up an armed part fails.
pub const AFTER: Duration = Duration::from_millis(300);

/// Whether `part` should fail.
pub fn armed(part: &str) -> bool {
    std::env::var("OKLOG_FAILPOINT").is_ok_and(|v| v == part)
}

/// Die at once, as a SIGKILL would (no unwinding, no cleanup), when `OKLOG_FAILPOINT` names
/// `point`: crash tests use it to stop a node between two exact steps.
pub fn crash(point: &str) {
    if armed(point) {
        eprintln!("failpoint {point}: aborting");
        std::process::abort();
    }
}

//! `oklog testsvc`: print log lines at a fixed rate, to generate load.
//!
//! As the original: 10,000 pre-generated random records, each line
//! `<RFC3339 now> <id> <9-digit counter> <record>`, `-size` bytes with its newline, `-rate` per
//! second, and a throughput report on stderr every 10 s.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::RngExt;

use super::client::config::TestsvcConfig;
use crate::gotime;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const RECORDS: usize = 10_000;

/// Print records until stdout closes.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(TestsvcConfig { id, size, rate }) = TestsvcConfig::parse(argv)? else {
        return Ok(());
    };
    let size = size as i64;
    // <RFC3339> <id> <%09d> <record>\n
    let overhead = ("2006-01-02T15:04:05Z07:00".len() + 1 + id.len() + 1 + 9 + 1) as i64;
    let record_len = size - overhead - 1;
    if record_len <= 0 {
        bail!("with -id {id:?}, minimum -size is {}", overhead + 2);
    }
    eprintln!("reticulating splines...");
    let records = generate(record_len as usize);
    let mut period = Duration::from_secs(1) / rate;
    let mut per_cycle = 1u64;
    while period < Duration::from_millis(50) {
        period *= 2;
        per_cycle *= 2;
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let (mut window_bytes, mut window_records) = (0u64, 0u64);
    let mut report_at = Instant::now() + Duration::from_secs(10);
    let mut window_start = Instant::now();
    let mut next = Instant::now();
    loop {
        for _ in 0..per_cycle {
            count += 1;
            let line = format!(
                "{} {id} {count:09} {}\n",
                gotime::rfc3339_local_secs(gotime::now_ms()),
                records[count as usize % RECORDS]
            );
            match out.write_all(line.as_bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            window_bytes += line.len() as u64;
            window_records += 1;
        }
        if let Err(e) = out.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
        if Instant::now() >= report_at {
            let secs = window_start.elapsed().as_secs_f64();
            eprintln!(
                "{:2}s average: {:.2} bytes/sec, {:.2} records/sec",
                secs.round() as u64,
                window_bytes as f64 / secs,
                window_records as f64 / secs
            );
            window_bytes = 0;
            window_records = 0;
            window_start = Instant::now();
            report_at = Instant::now() + Duration::from_secs(10);
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Random records of `len` characters with a space every 5 to 19 characters.
fn generate(len: usize) -> Vec<String> {
    let mut rng = rand::rng();
    (0..RECORDS)
        .map(|_| {
            let word_len = rng.random_range(5..20);
            let s: String = (0..len)
                .map(|i| {
                    if i % (word_len + 1) == word_len {
                        ' '
                    } else {
                        ALPHABET[rng.random_range(0..ALPHABET.len())] as char
                    }
                })
                .collect();
            s.trim().to_string()
        })
        .collect()
}

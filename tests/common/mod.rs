//! Shared test harness: start real `oklog` processes on 127.0.0.1 with OS-picked ports, learn
//! the ports from their logs, talk HTTP to them with raw bytes, and kill them when the test
//! ends (even on failure). Tests that start processes hold [`serial`] so one runs at a time.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_oklog");

static SERIAL: Mutex<()> = Mutex::new(());

/// Hold this while a test runs processes: multi-process tests run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The LogHub sample directory.
pub fn loghub() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/loghub-2k")
}

/// The LogHub sample files, sorted by name.
pub fn loghub_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(loghub())
        .expect("../shared/datasets/loghub-2k is beside the checkout")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// A running `oklog` server process, killed on drop.
pub struct Node {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub ports: HashMap<String, String>,
}

/// Flags that make a node fast enough for tests: quick rotation and consumption.
pub fn quick_flags() -> Vec<String> {
    [
        "-api",
        "127.0.0.1:0",
        "-ingest.fast",
        "127.0.0.1:0",
        "-ingest.durable",
        "127.0.0.1:0",
        "-ingest.bulk",
        "127.0.0.1:0",
        "-ingest.syslog-tcp",
        "127.0.0.1:0",
        "-ingest.syslog-udp",
        "127.0.0.1:0",
        "-cluster",
        "127.0.0.1:0",
        "-ingest.segment-flush-age",
        "100ms",
        "-store.segment-target-age",
        "100ms",
        "-store.segment-delay",
        "20ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `ingeststore` with `quick_flags()` and then `extra`.
pub fn ingeststore_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["ingeststore".to_string()];
    args.extend(quick_flags());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Start `oklog <mode>` in `dir` on OS-picked ports, joining through `peer` (a cluster address).
pub fn start_role(mode: &str, dir: &Path, peer: Option<&str>, extra: &[&str]) -> Node {
    let mut args: Vec<String> = vec![
        mode.into(),
        "-api".into(),
        "127.0.0.1:0".into(),
        "-cluster".into(),
        "127.0.0.1:0".into(),
    ];
    let mut listeners = vec!["api", "cluster"];
    if mode != "store" {
        for flag in [
            "-ingest.fast",
            "-ingest.durable",
            "-ingest.bulk",
            "-ingest.syslog-tcp",
            "-ingest.syslog-udp",
        ] {
            args.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
        }
        args.extend(["-ingest.segment-flush-age".into(), "100ms".into()]);
        listeners.extend(["fast", "durable", "bulk"]);
    }
    if mode != "ingest" {
        args.extend(
            [
                "-store.segment-target-age",
                "100ms",
                "-store.segment-delay",
                "20ms",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    if let Some(p) = peer {
        args.extend(["-peer".to_string(), p.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Node::start(dir, &args, &listeners)
}

impl Node {
    /// Start `oklog ingeststore` in `dir` with `quick_flags()` plus `extra`, and wait until its
    /// API and ingest listeners have logged their addresses.
    pub fn ingeststore(dir: &Path, extra: &[&str]) -> Node {
        Node::start(
            dir,
            &ingeststore_args(extra),
            &["api", "fast", "durable", "bulk"],
        )
    }

    /// Start `oklog <args>` in `dir`, waiting for the named listeners.
    pub fn start(dir: &Path, args: &[String], listeners: &[&str]) -> Node {
        Node::start_env(dir, args, listeners, &[])
    }

    /// [`Node::start`] with extra environment variables.
    pub fn start_env(
        dir: &Path,
        args: &[String],
        listeners: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("node-{}.log", std::process::id() ^ rand_u32()));
        let child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start oklog");
        let mut node = Node {
            child,
            dir: dir.to_path_buf(),
            log,
            ports: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            node.ports = listening(&std::fs::read_to_string(&node.log).unwrap_or_default());
            if listeners.iter().all(|l| node.ports.contains_key(*l)) {
                break;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("oklog exited with {status}: {}", node.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "node did not start: {}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// The address of listener `name` (`api`, `fast`, `durable`, `bulk`).
    pub fn addr(&self, name: &str) -> &str {
        &self.ports[name]
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM and wait for the exit status (up to `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// `name → addr` from `listening name=<name> addr=<addr>` log lines.
pub fn listening(log: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in log.lines().filter(|l| l.contains("listening")) {
        if line.starts_with('{') {
            // -log.format json: {"msg":"listening","name":...,"addr":...}
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && let (Some(name), Some(addr)) = (v["name"].as_str(), v["addr"].as_str())
            {
                out.insert(name.to_string(), addr.to_string());
            }
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|v| v.trim_matches('"').to_string())
        };
        if let (Some(name), Some(addr)) = (field("name="), field("addr=")) {
            out.insert(name, addr);
        }
    }
    out
}

/// Run `oklog forward ADDR` with `input` on stdin; returns its output.
pub fn forward(addr: &str, input: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("forward")
        .args(extra)
        .arg(addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start forward");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Run `oklog <args>` to completion.
pub fn oklog(args: &[&str]) -> Output {
    // In a scratch directory, so a mistaken start never writes ./data into the checkout.
    let scratch = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .args(args)
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .expect("run oklog")
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// Whether a chunked body ended with its last chunk (false: it broke off).
    pub complete: bool,
    /// Trailers after the last chunk (lower-case names).
    pub trailers: HashMap<String, String>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One HTTP/1.1 request with `Connection: close`, raw bytes both ways (chunked bodies decoded).
pub fn http(method: &str, addr: &str, path: &str, body: &[u8]) -> Response {
    http_with(method, addr, path, &[], body)
}

/// [`http`] with extra request headers. A chunked body that breaks off fails the test.
pub fn http_with(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let r = http_partial(method, addr, path, headers, body);
    assert!(r.complete, "{method} {path}: the chunked body broke off");
    r
}

/// [`http_with`] that also returns a chunked body that broke off (`complete` false), with
/// whatever arrived before, and any trailers.
pub fn http_partial(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    http_partial_after(method, addr, path, headers, body, Duration::ZERO)
}

/// [`http_partial`] by a client that waits `wait` after sending before it reads anything (the
/// server meanwhile fills the socket's buffers and its own).
pub fn http_partial_after(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    wait: Duration,
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (a 413, say) and close before it has read a body it refuses: the
    // answer is what is tested, so a write that breaks off is not a failure by itself.
    let _ = s.write_all(body);
    std::thread::sleep(wait);
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .unwrap();
    let headers = read_fields(&mut r);
    let mut body = Vec::new();
    let mut complete = true;
    let mut trailers = HashMap::new();
    if method == "HEAD" {
        // no body
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        complete = loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break false;
            }
            let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
                break false;
            };
            if n == 0 {
                trailers = read_fields(&mut r);
                break true;
            }
            let start = body.len();
            body.resize(start + n, 0);
            if r.read_exact(&mut body[start..]).is_err() {
                body.truncate(start);
                break false;
            }
            line.clear();
            r.read_line(&mut line).unwrap();
        };
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Response {
        status,
        headers,
        body,
        complete,
        trailers,
    }
}

/// Header (or trailer) lines up to the empty line, names in lower case.
fn read_fields(r: &mut impl BufRead) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            return fields;
        }
        let (k, v) = l.split_once(':').unwrap();
        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
}

/// The value of metric `name` (a line `name value`, no labels) on the node at `api`.
pub fn metric(api: &str, name: &str) -> Option<f64> {
    let r = http("GET", api, "/metrics", b"");
    r.text().lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The stdout lines of `child` (spawned with a piped stdout) as they come, on a channel fed by
/// a thread.
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("a piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A Loki JSON push of one stream labelled `job` with `entries` (`[nanoseconds, line]`).
#[allow(dead_code)]
pub fn loki_json(
    api: &str,
    job: &str,
    entries: impl IntoIterator<Item = (i128, String)>,
) -> Response {
    let values: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|(ns, line)| serde_json::json!([ns.to_string(), line]))
        .collect();
    let body = serde_json::json!({"streams": [{"stream": {"job": job}, "values": values}]});
    http(
        "POST",
        api,
        "/loki/api/v1/push",
        body.to_string().as_bytes(),
    )
}

/// The records of a query answer whose lines carry `evt-<n>`: each one's ULID time (Unix ms)
/// and `n`, in the order answered.
#[allow(dead_code)]
pub fn evt_answer(api: &str, path: &str) -> Vec<(u64, u64)> {
    let r = http("GET", api, path, b"");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.text()
        .lines()
        .map(|l| {
            let n = l
                .split("evt-")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no evt-<n> in {l}"));
            (oklog::record::ulid_ms(l.as_bytes()), n)
        })
        .collect()
}

/// A time in Unix milliseconds as a query parameter (RFC 3339, milliseconds, UTC).
#[allow(dead_code)]
pub fn ms_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S.%3fZ")
        .to_string()
}

/// An hour ago, on the second (inside the default event bounds): Unix seconds, and the time
/// as a record's `ts=` field writes it.
#[allow(dead_code)]
pub fn an_hour_ago() -> (i64, String) {
    let s = jiff::Timestamp::now().as_second() - 3600;
    (s, jiff::Timestamp::from_second(s).unwrap().to_string())
}

/// Poll `f` until it returns `Some`, or panic after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `want` live streams are registered on the store node at `api` (its
/// `oklog_store_streams` gauge): a stream sees only what arrives after that.
pub fn wait_for_streams(api: &str, want: u64) {
    eventually(Duration::from_secs(20), "the streams to register", || {
        (metric(api, "oklog_store_streams")? >= want as f64).then_some(())
    });
}

/// Every stored line (with ULID) the node returns for an all-time query.
pub fn all_records(api: &str) -> Vec<Vec<u8>> {
    records_at(api, "/store/query")
}

/// Every stored line an all-time query of `path` (`/store/query` or `/store/_query`) returns.
pub fn records_at(api: &str, path: &str) -> Vec<Vec<u8>> {
    let r = http(
        "GET",
        api,
        &format!("{path}?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
        .split_inclusive(|&b| b == b'\n')
        .map(|l| l.to_vec())
        .collect()
}

/// Wait until the node's store holds exactly `n` records.
pub fn wait_for_records(api: &str, n: usize) -> Vec<Vec<u8>> {
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let recs = all_records(api);
        if recs.len() == n {
            return recs;
        }
        assert!(
            recs.len() <= n,
            "more records than sent: {} > {n}",
            recs.len()
        );
        if recs.len() != last {
            last = recs.len();
        }
        assert!(
            Instant::now() < deadline,
            "only {last} of {n} records arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(threads, anonymous RSS in KiB)` of a process, from `/proc/<pid>/status`.
pub fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("Threads:"), field("RssAnon:"))
}

/// The node's threads and anonymous RSS once its RSS is under `bound_kib`, or after 25 s:
/// freed memory goes back to the kernel within the node's 10 s trim period.
pub fn settled(pid: u32, bound_kib: u64) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    loop {
        let now = threads_and_rss(pid);
        if now.1 < bound_kib || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Samples a process's anonymous RSS every 20 ms until [`PeakRss::stop`], which returns the
/// most it saw, in KiB.
pub struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    /// Start sampling `pid`.
    pub fn start(pid: u32) -> PeakRss {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(threads_and_rss(pid).1);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        PeakRss { stop, thread }
    }

    /// Stop sampling: the peak, in KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

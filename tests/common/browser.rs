//! A small Chrome DevTools Protocol driver for UI tests: Debian's Chromium, headless, over
//! `--remote-debugging-pipe` (commands on the child's fd 3, answers on its fd 4, each message
//! a JSON text ended by a NUL byte). Enough to open a page, evaluate JavaScript, collect
//! JavaScript errors and take a screenshot.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A headless Chromium with one page attached; killed on drop.
pub struct Browser {
    child: Child,
    tx: std::io::PipeWriter,
    rx: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Every event received so far (method and params).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `$OKLOG_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> String {
    if let Ok(p) = std::env::var("OKLOG_CHROMIUM") {
        return p;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
            .unwrap_or(false);
        if found {
            return name.to_string();
        }
    }
    panic!(
        "the UI tests need Chromium: `apt-get install chromium` (.ci/run does), \
         or set OKLOG_CHROMIUM to a Chrome binary"
    );
}

impl Browser {
    /// Start Chromium and attach to a blank page.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (from_browser, child_out) = std::io::pipe().unwrap();
        let (child_in, to_browser) = std::io::pipe().unwrap();
        let (r, w) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1280,860",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe
        // ends are first copied above 10 so that moving them to 3 and 4 cannot clobber one
        // another; dup2 leaves the targets without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let r2 = libc::fcntl(r, libc::F_DUPFD, 10);
                let w2 = libc::fcntl(w, libc::F_DUPFD, 10);
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((child_in, child_out));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_browser);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            tx: to_browser,
            rx,
            next_id: 0,
            session: None,
            events: Vec::new(),
            _profile: profile,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .expect("create a page");
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .expect("attach to the page");
        b.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(domain, json!({})).expect(domain);
        }
        b
    }

    /// Send one command (to the page once attached) and wait for its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.tx
            .write_all(&bytes)
            .map_err(|e| format!("{method}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .rx
                .recv_timeout(left)
                .map_err(|e| format!("{method}: no answer: {e}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(v["result"].clone());
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Open `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", json!({"url": url}))
            .expect("navigate");
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// Evaluate a JavaScript expression (promises awaited) and return its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .expect("evaluate");
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluate `expr` until it is true, or panic after `timeout` with `what`.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            // While a page loads, `document.body` may be null: that is "not yet", not a failure.
            let probe = format!(
                "(() => {{ try {{ return Boolean({expr}); }} catch (e) {{ return false; }} }})()"
            );
            if self.eval(&probe) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''");
                panic!("timed out waiting for {what} ({expr}); the page shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// JavaScript errors so far: uncaught exceptions, `console.error`, and non-network log
    /// errors (a 400 answer is logged as a network error and is expected in some tests).
    pub fn js_errors(&mut self) -> Vec<String> {
        // Drain events that arrived without a command.
        while let Ok(v) = self.rx.try_recv() {
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => e["params"]["type"] == "error",
                Some("Log.entryAdded") => {
                    e["params"]["entry"]["level"] == "error"
                        && e["params"]["entry"]["source"] != "network"
                }
                _ => false,
            })
            .map(|e| e["params"].to_string())
            .collect()
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .expect("screenshot");
        base64_decode(r["data"].as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding) to bytes.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

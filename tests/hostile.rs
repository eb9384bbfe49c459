//! What an attacker (or an unlucky operator) can do to a node through its ports and its data
//! directory, each a regression test: odd files with segment names, floods of idle ingest
//! connections and of half-sent HTTP requests. Floods stay bounded in count and time, on
//! 127.0.0.1 only.

mod common;

use std::ffi::CString;
use std::path::Path;
use std::time::Duration;

use common::*;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn odd_files_with_segment_names_never_stop_the_node() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/store");
    let ingest = dir.path().join("data/ingest");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&ingest).unwrap();
    // A directory and a FIFO named like store segments: the first made start-up exit 1, the
    // second made it hang with /health unanswered.
    std::fs::create_dir(
        store.join("01ARYZ6S41TSV4RRFFQ69G5FAV-01ARYZ6S41TSV4RRFFQ69G5FAW.flushed"),
    )
    .unwrap();
    mkfifo(&store.join("01ARYZ6S41TSV4RRFFQ69G5FB0-01ARYZ6S41TSV4RRFFQ69G5FB1.flushed"));
    let node = Node::ingeststore(dir.path(), &[]);
    let api = node.addr("api").to_string();
    assert_eq!(http("GET", &api, "/health", b"").status, 200);
    // A directory named like an ingest segment, made while the node runs: it used to make
    // every consumer fail ten times a second, forever.
    std::fs::create_dir(ingest.join("0b6e2ba2-6a4b-4f4e-9f43-3f0d3c7f1a10.flushed")).unwrap();
    let out = forward(node.addr("fast"), b"one\ntwo\nthree\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = wait_for_records(&api, 3);
    assert!(records[0].ends_with(b" default one\n"));
    let bad = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".bad")
            })
            .count()
    };
    assert_eq!(bad(&store), 2, "both set aside in the store");
    eventually(
        Duration::from_secs(10),
        "the ingest directory set aside",
        || (bad(&ingest) == 1).then_some(()),
    );
    let metrics = http("GET", &api, "/metrics", b"").text();
    assert!(
        metrics.contains(r#"oklog_ingest_segments{state="bad"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("oklog_store_quarantined_files_total 2"),
        "{metrics}"
    );
}

fn socket2_linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a struct of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Let this test process open thousands of sockets (the node raises its own limit).
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in, struct out.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn floods_of_idle_connections_and_half_sent_requests_stay_bounded() {
    let _serial = serial();
    raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let (api, fast, durable) = (
        node.addr("api").to_string(),
        node.addr("fast").to_string(),
        node.addr("durable").to_string(),
    );
    let pid = node.child.id();
    let out = forward(&fast, b"before the flood\n", &[]);
    assert!(out.status.success());
    wait_for_records(&api, 1);
    let (threads_before, rss_before) = threads_and_rss(pid);
    let t0 = std::time::Instant::now();

    // 3,000 idle ingest connections (fast and durable) and 1,000 HTTP requests whose head
    // never ends.
    let mut flood = Vec::new();
    for i in 0..3000 {
        let addr = if i % 2 == 0 { &fast } else { &durable };
        flood.push(std::net::TcpStream::connect(addr).expect("ingest connection"));
    }
    for _ in 0..1000 {
        let mut s = std::net::TcpStream::connect(&api).expect("API connection");
        std::io::Write::write_all(
            &mut s,
            b"GET /store/query?q=x HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        )
        .unwrap();
        flood.push(s);
    }
    // Every ingest connection is being served.
    eventually(Duration::from_secs(20), "the flood to be served", || {
        let served = |m: &str| {
            metric(
                &api,
                &format!("oklog_connected_clients{{modality=\"{m}\"}}"),
            )
        };
        (served("fast") == Some(1500.0) && served("durable") == Some(1500.0)).then_some(())
    });
    eprintln!("flood open after {:?}", t0.elapsed());
    let (threads, rss) = threads_and_rss(pid);
    eprintln!(
        "under the flood: {threads} threads (before {threads_before}), RssAnon {} MiB (before {} MiB)",
        rss / 1024,
        rss_before / 1024
    );
    assert!(threads < 64, "{threads} threads");
    assert!(rss < 256 * 1024, "{} MiB anonymous RSS", rss / 1024);
    // The node still takes new work.
    let out = forward(&fast, b"during the flood\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = wait_for_records(&api, 2);
    assert!(records[1].ends_with(b" default during the flood\n"));
    let metrics = http("GET", &api, "/metrics", b"").text();
    assert!(
        metrics.contains(r#"oklog_connected_clients{modality="fast"} 1500"#)
            || metrics.contains(r#"oklog_connected_clients{modality="fast"} 1501"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("connected_clients"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The half-sent requests are cut off by the header timeout.
    let mut slow = flood.split_off(3000);
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let mut cut = 0;
    for s in &mut slow {
        // The server answers 408 or just closes; either way the connection ends (a timed-out
        // read of ours would mean it was still held).
        loop {
            match std::io::Read::read(s, &mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!(
                        "a half-sent request still held after {:?}",
                        started.elapsed()
                    )
                }
                Err(_) => break,
            }
        }
        cut += 1;
    }
    assert_eq!(cut, 1000);
    eprintln!("half-sent requests cut after {:?}", t0.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the header timeout closed them"
    );
    drop(slow);
    drop(flood);

    // Floods of dripping durable connections, each sending a byte at a time, end without
    // leaving memory behind.
    for round in 0..2 {
        let mut drip: Vec<std::net::TcpStream> = (0..2000)
            .map(|_| std::net::TcpStream::connect(&durable).unwrap())
            .collect();
        for _ in 0..5 {
            for s in &mut drip {
                let _ = std::io::Write::write_all(s, b"x");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for s in &drip {
            // Gone without a word (a reset): nothing of theirs is a record.
            socket2_linger_zero(s);
        }
        drop(drip);
        eprintln!(
            "drip round {round} after {:?}: RssAnon {} MiB",
            t0.elapsed(),
            threads_and_rss(pid).1 / 1024
        );
    }
    eventually(Duration::from_secs(20), "connections to close", || {
        let m = http("GET", &api, "/metrics", b"").text();
        m.contains(r#"oklog_connected_clients{modality="durable"} 0"#)
            .then_some(())
    });
    // Freed memory goes back to the kernel within the node's 10 s trim period.
    let after = settled(pid, rss_before + 64 * 1024);
    eprintln!(
        "after the floods: {} threads, RssAnon {} MiB (before {} MiB)",
        after.0,
        after.1 / 1024,
        rss_before / 1024
    );
    assert!(
        after.1 < rss_before + 64 * 1024,
        "memory returns: {} MiB after, {} MiB before",
        after.1 / 1024,
        rss_before / 1024
    );
}

#[test]
fn stream_clients_that_never_read_cost_bounded_memory_and_a_reader_sees_everything() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &[]);
    let (api, fast) = (node.addr("api").to_string(), node.addr("fast").to_string());
    let pid = node.child.id();
    let (_, rss_before) = threads_and_rss(pid);
    let stream_req = "GET /store/stream?q=rec HTTP/1.1\r\nHost: a\r\n\r\n";
    // Ten clients that ask for everything and never read a byte.
    let stuck: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&api).unwrap();
            std::io::Write::write_all(&mut s, stream_req.as_bytes()).unwrap();
            s
        })
        .collect();
    // One that reads everything.
    let reader = {
        let mut s = std::net::TcpStream::connect(&api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        std::io::Write::write_all(&mut s, stream_req.as_bytes()).unwrap();
        std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut text = Vec::new();
            while seen.len() < 400_000 {
                let n = match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                text.extend_from_slice(&buf[..n]);
                let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in text[..end].split(|&b| b == b'\n') {
                    if let Some(i) = line.windows(4).position(|w| w == b"rec ") {
                        seen.insert(line[i..].to_vec());
                    }
                }
                text.drain(..end);
            }
            seen.len()
        })
    };
    wait_for_streams(&api, 11);
    let mut input = Vec::new();
    for i in 0..400_000 {
        input.extend_from_slice(format!("rec {i:07} {}\n", "x".repeat(80)).as_bytes());
    }
    let out = forward(&fast, &input, &[]);
    assert!(out.status.success());
    assert_eq!(
        reader.join().unwrap(),
        400_000,
        "the reading stream saw every record"
    );
    let bound = rss_before + (64 + stuck.len() as u64 * 20) * 1024;
    let (_, rss) = settled(pid, bound);
    eprintln!(
        "10 stuck streams after {} MB ingested: RssAnon {} MiB (before {} MiB)",
        input.len() >> 20,
        rss / 1024,
        rss_before / 1024
    );
    // Ingesting and the reading stream take up to ~64 MiB; each stuck stream holds at most
    // its window's 4 MiB, a few chunks and the buffers of its connections, whatever the volume.
    assert!(rss < bound, "{} MiB", rss / 1024);
    drop(stuck);
    // Their buffers are freed, and handed back to the kernel within the node's 10 s trim
    // period (the ingest's own state stays: the budget is for that).
    let (_, rss_after) = settled(pid, rss_before + 48 * 1024);
    eprintln!(
        "after the stuck clients left: RssAnon {} MiB",
        rss_after / 1024
    );
    assert!(
        rss_after < rss_before + 48 * 1024,
        "{} MiB",
        rss_after / 1024
    );
}

#[test]
fn broken_replicate_bodies_are_refused_counted_and_leave_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ingeststore(dir.path(), &["-api.body-idle-timeout", "1s"]);
    let api = node.addr("api").to_string();
    let record = "01BB6RQR190000000000000000 default a record\n";
    let send = |head: String, body: &[u8], half_close: bool| {
        let mut s = std::net::TcpStream::connect(&api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut s, body).unwrap();
        if half_close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // A malformed chunk size.
    let answer = send(
        "POST /store/replicate HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        format!("{:x}\r\n{record}\r\nZZ\r\n", record.len()).as_bytes(),
        false,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A body that stops mid-way and stays open: cut off after the idle timeout.
    let started = std::time::Instant::now();
    let answer = send(
        "POST /store/replicate HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".into(),
        record.as_bytes(),
        false,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("idle"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // A body shorter than announced, then the client's end.
    send(
        "POST /store/replicate HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".into(),
        record.as_bytes(),
        true,
    );
    let metrics = eventually(Duration::from_secs(5), "all three counted", || {
        let m = http("GET", &api, "/metrics", b"").text();
        m.contains("oklog_store_rejected_replicas_total 3")
            .then_some(m)
    });
    assert!(metrics.contains("oklog_store_rejected_replicas_total 3"));
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("data/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    assert!(leftovers.is_empty(), "partial files removed: {leftovers:?}");
    assert!(all_records(&api).is_empty(), "nothing stored");
    assert!(node.log_text().contains("replicate body broke off"));
}

#[test]
fn a_store_of_twenty_thousand_segments_starts_and_answers_a_narrow_window() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/store");
    std::fs::create_dir_all(&store).unwrap();
    // One-minute segments of two records each, ending an hour ago.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let end = now_ms - 3_600_000;
    let n = 20_000u64;
    let ulid = |ms: u64, entropy: u8| {
        const A: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut s = [b'0'; 26];
        let mut v = ms;
        for i in (0..10).rev() {
            s[i] = A[(v % 32) as usize];
            v /= 32;
        }
        s[25] = A[entropy as usize];
        String::from_utf8(s.to_vec()).unwrap()
    };
    for i in 0..n {
        let lo_ms = end - (n - i) * 60_000;
        let (lo, hi) = (ulid(lo_ms, 0), ulid(lo_ms + 30_000, 1));
        std::fs::write(
            store.join(format!("{lo}-{hi}.flushed")),
            format!("{lo} default segment {i} first\n{hi} default segment {i} second\n"),
        )
        .unwrap();
    }
    let node = Node::ingeststore(
        dir.path(),
        &[
            "-store.segment-target-size",
            "100",
            "-store.segment-retain",
            "10000h",
        ],
    );
    // A 1-minute window in the middle selects exactly its segment.
    let i = n / 2;
    let lo_ms = end - (n - i) * 60_000;
    let r = http(
        "GET",
        node.addr("api"),
        &format!(
            "/store/query?from={}&to={}",
            ulid(lo_ms - 1, 0),
            ulid(lo_ms + 40_000, 0)
        ),
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text()
            .lines()
            .map(|l| l[27..].to_string())
            .collect::<Vec<_>>(),
        [
            format!("default segment {i} first"),
            format!("default segment {i} second")
        ]
    );
    assert_eq!(
        r.header("x-oklog-segments-queried"),
        Some("1"),
        "{:?}",
        r.headers
    );
}

//! A full disk: ingest writes fail loudly (log, metric, connection reset), queries keep
//! working, nothing already stored is touched, and no torn record is ever stored. The ingest
//! directory lives on a small tmpfs mounted for the test (root is required, as in CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An `ingeststore` in `dir` whose ingest directory is on a 1 MiB tmpfs. The node is
/// declared first, so it stops before the filesystem is unmounted.
struct FullDisk {
    node: Node,
    _disk: Tmpfs,
}

impl FullDisk {
    fn start(dir: &Path) -> FullDisk {
        let disk = Tmpfs::mount(&dir.join("small"), "1m");
        let ingest_path = disk.0.join("ingest");
        let node = Node::ingeststore(dir, &["-ingest.path", ingest_path.to_str().unwrap()]);
        FullDisk { node, _disk: disk }
    }
}

#[test]
fn a_full_ingest_disk_fails_writes_loudly_and_loses_nothing_stored() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let full = FullDisk::start(dir.path());
    let node = &full.node;
    let api = node.addr("api").to_string();
    let first: Vec<u8> = (0..1000)
        .flat_map(|i| format!("stored before the disk filled {i}\n").into_bytes())
        .collect();
    assert!(forward(node.addr("fast"), &first, &[]).status.success());
    wait_for_records(&api, 1000);

    // 8 MB into a 1 MiB filesystem, on one connection that never closes: writes must fail.
    let mut producer = Command::new(BIN)
        .args(["forward", node.addr("fast")])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let big: Vec<u8> = (0..80_000)
        .flat_map(|i| format!("{i:08} {}\n", "x".repeat(90)).into_bytes())
        .collect();
    let mut stdin = producer.stdin.take().unwrap();
    // The forwarder reads only as fast as it can deliver, so feed it from another thread.
    let feeder = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &big);
    });
    std::thread::sleep(Duration::from_secs(3));
    let _ = producer.kill();
    let _ = producer.wait();
    feeder.join().unwrap();

    let metrics = http("GET", &api, "/metrics", b"").text();
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("oklog_ingest_write_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(errors >= 1, "write errors are counted:\n{metrics}");
    // The forwarder backs off instead of reconnecting as fast as it can (it made ~1,900
    // connections a second here once), and the node logs the repeated failure once per 10 s.
    assert!(
        errors < 30,
        "{errors} failed connections in 3 s: the forwarder does not back off"
    );
    let logged = node.log_text().matches("ingest write failed").count();
    assert!((1..=2).contains(&logged), "logged {logged} times");
    // The node still answers, with everything stored before, and only whole records.
    let records = all_records(&api);
    let before: Vec<Vec<u8>> = records
        .iter()
        .filter(|r| r.windows(8).any(|w| w == b"before t"))
        .cloned()
        .collect();
    assert_eq!(before.len(), 1000, "nothing already stored is touched");
    for r in &records {
        let body = &r[27..];
        assert!(
            body.starts_with(b"default stored before")
                || (body.len() == 8 + 9 + 90 + 1 && body.ends_with(b"x\n")),
            "a torn record was stored: {:?}",
            String::from_utf8_lossy(r)
        );
    }
    assert!(records.windows(2).all(|w| w[0][..26] < w[1][..26]));
}

#[test]
fn a_push_into_a_full_disk_is_a_503_and_stores_none_of_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let full = FullDisk::start(dir.path());
    let node = &full.node;
    let api = node.addr("api").to_string();

    // 2 MB of records into a 1 MiB filesystem: the write fails, the request is a 503 with
    // Retry-After, and no part of it is stored.
    let big: String = (0..20_000)
        .map(|i| format!("{{\"_msg\":\"too much {i:06} {}\"}}\n", "y".repeat(80)))
        .collect();
    let r = http("POST", &api, "/insert/jsonline", big.as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("not stored"), "{}", r.text());

    // The disk has room again for a request that fits: it is stored, whole.
    let (secs, ts) = an_hour_ago();
    let r = http(
        "POST",
        &api,
        "/loki/api/v1/push",
        format!(r#"{{"streams":[{{"stream":{{"job":"small"}},"values":[["{secs}000000000","fits"]]}}]}}"#)
            .as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let records = wait_for_records(&api, 1);
    assert!(
        records[0].ends_with(format!(" small fits\x1fjob=\x1fts={ts}\n").as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&records[0])
    );
    assert_eq!(http("GET", &api, "/health", b"").status, 200);
}

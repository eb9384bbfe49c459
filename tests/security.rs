//! Security (docs/security.md): TLS on every listener, tokens with roles, client certificates,
//! and the cluster key, with certificates made by `openssl` in the test and real clients
//! (curl, openssl s_client, our CLIs) against real nodes on 127.0.0.1.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NODE_TOKEN: &str = "node-token-0000000000000001";
const QUERY_TOKEN: &str = "query-token-000000000000001";
const INGEST_TOKEN: &str = "ingest-token-00000000000001";

/// Certificates made with openssl: a CA, a node certificate for 127.0.0.1, a client
/// certificate, an expired client certificate, and a second CA with a certificate of its own.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.cert("node", "ca", "node", 30);
        pki.cert("client", "ca", "client", 30);
        pki.cert("expired", "ca", "client", -1);
        pki.cert("stranger", "other-ca", "stranger", 30);
        pki
    }

    fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
    }

    /// A certificate `name.pem` (key `name.key`, mode 600) with subject `cn`, for 127.0.0.1
    /// and localhost, signed by `ca`, valid for `days` (negative: already expired).
    fn cert(&self, name: &str, ca: &str, cn: &str, days: i32) {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(
            self.dir.join(format!("{name}.ext")),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                &days.to_string(),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        private(&self.dir.join(format!("{name}.key")));
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

fn private(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Write a file only its owner may read.
fn secret(p: &Path, text: &str) {
    // Written beside and renamed, as a secret mount swaps it.
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    private(&tmp);
    std::fs::rename(&tmp, p).unwrap();
}

/// `curl -s` with `args`: the status code (0: no HTTP answer) and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// curl against the node's API over https, trusting `ca`, with `token` (if any).
fn api(pki: &Pki, node: &Node, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("https://{}{path}", node.addr("api"));
    let cacert = pki.path("ca.pem");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-X", method, "--cacert", &cacert, &url];
    if let Some(a) = &auth {
        args.extend(["-H", a]);
    }
    curl(&args)
}

/// The subject of the certificate the TLS listener at `addr` serves.
fn served_subject(addr: &str) -> String {
    let mut s = Command::new("openssl")
        .args(["s_client", "-connect", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pem = String::new();
    std::io::Read::read_to_string(s.stdout.as_mut().unwrap(), &mut pem).unwrap();
    let _ = s.wait();
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(x.stdin.as_mut().unwrap(), pem.as_bytes()).unwrap();
    let out = x.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `openssl s_client -quiet` to `addr`, trusting `ca`, having sent `text`; it stays until
/// killed.
fn tls_lines(ca: &str, addr: &str, text: &str) -> std::process::Child {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-CAfile", ca, "-connect", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    child
}

/// Run `oklog <args>` with `env`, to completion.
fn oklog_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let scratch = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .expect("run oklog")
}

/// `oklog forward` with `input`, killed after `wait` if it has not finished (a forwarder
/// retries forever against a node that refuses its handshake).
fn forward_for(
    addr: &str,
    input: &[u8],
    extra: &[&str],
    env: &[(&str, &str)],
    wait: Duration,
) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("forward")
        .args(extra)
        .arg(addr)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input).unwrap();
    drop(child.stdin.take());
    let deadline = Instant::now() + wait;
    let code = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
    (code, err)
}

/// Every record (with ULID) an all-time query returns, over https with `token`.
fn records(pki: &Pki, node: &Node, path: &str, token: &str) -> Vec<String> {
    let (code, body) = api(
        pki,
        node,
        "GET",
        &format!("{path}?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"),
        Some(token),
    );
    assert_eq!(code, 200, "{body}");
    body.lines().map(str::to_string).collect()
}

fn wait_for_bodies(pki: &Pki, node: &Node, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = records(pki, node, "/store/query", QUERY_TOKEN);
        if want
            .iter()
            .all(|w| got.iter().any(|l| l.contains(&format!(" {w}"))))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "want {want:?}, got {got:?}; log: {}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tls_flags(pki: &Pki) -> Vec<String> {
    vec![
        "-tls.cert-file".into(),
        pki.path("node.pem"),
        "-tls.key-file".into(),
        pki.path("node.key"),
        "-tls.ca-file".into(),
        pki.path("ca.pem"),
    ]
}

/// Forward `line` to the `port` listener over TLS with the ingest token: it is acknowledged.
fn send_with_token(pki: &Pki, node: &Node, port: &str, line: &str) {
    let ca = pki.path("ca.pem");
    let (code, err) = forward_for(
        node.addr(port),
        format!("{line}\n").as_bytes(),
        &["-tls.ca-file", &ca],
        &[("OKLOG_AUTH_TOKEN", INGEST_TOKEN)],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{port}: {err}");
}

/// A node with TLS on every listener and the token file `tokens` (node, query and ingest
/// tokens), its own token in `OKLOG_AUTH_TOKEN`.
fn token_node(tmp: &Path) -> (Pki, std::path::PathBuf, Node) {
    let pki = Pki::new(&tmp.join("pki"));
    let tokens = tmp.join("tokens");
    secret(
        &tokens,
        &format!(
            "# node, querier, agent\n{NODE_TOKEN} cluster,ingest\n{QUERY_TOKEN} query\n{INGEST_TOKEN} ingest\n"
        ),
    );
    let mut args = ingeststore_args(&["-auth.token-file", &tokens.display().to_string()]);
    args.extend(tls_flags(&pki));
    let node = Node::start_env(
        &tmp.join("node"),
        &args,
        &["api", "fast", "durable", "bulk", "syslog-tcp"],
        &[("OKLOG_AUTH_TOKEN", NODE_TOKEN)],
    );
    (pki, tokens, node)
}

#[test]
fn tokens_and_tls_guard_the_query_api_and_the_raw_ports() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _tokens, node) = token_node(tmp.path());
    // Syslog over UDP cannot be authenticated: named on the command line, it is served with a
    // warning (unnamed, it would be off).
    assert!(
        node.log_text()
            .contains("syslog over UDP takes records from anyone")
    );

    // Open: health, readiness, metrics, the UI's files.
    for path in ["/health", "/ready", "/metrics", "/ui/"] {
        assert_eq!(api(&pki, &node, "GET", path, None).0, 200, "{path}");
    }
    // Queries need a token with the query role: none or a bad one is 401, another role 403.
    let q = "/store/query?from=2000-01-01T00:00:00Z";
    let out = Command::new("curl")
        .args(["-s", "-i", "--cacert", &pki.path("ca.pem")])
        .arg(format!("https://{}{q}", node.addr("api")))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.contains("www-authenticate: Bearer realm=\"oklog\""),
        "{head}"
    );
    assert_eq!(
        api(&pki, &node, "GET", q, Some("not-a-token-at-all-x")).0,
        401
    );
    assert_eq!(api(&pki, &node, "GET", q, Some(INGEST_TOKEN)).0, 403);
    assert_eq!(api(&pki, &node, "GET", q, Some(QUERY_TOKEN)).0, 200);

    // Records in through every raw port, each with a token of the ingest role, over TLS.
    let ca = pki.path("ca.pem");
    let with_ingest = [("OKLOG_AUTH_TOKEN", INGEST_TOKEN)];
    for (port, line, extra) in [
        ("fast", "via-fast", vec![]),
        ("durable", "via-durable", vec![]),
        ("bulk", "via-bulk", vec!["-bulk"]),
    ] {
        let mut flags = vec!["-tls.ca-file", ca.as_str()];
        flags.extend(extra);
        let (code, err) = forward_for(
            node.addr(port),
            format!("{line}\n").as_bytes(),
            &flags,
            &with_ingest,
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(0), "{port}: {err}");
    }
    // syslog over TLS with the token line (openssl s_client as the client).
    let (_, ts) = an_hour_ago();
    let mut s = tls_lines(
        &ca,
        node.addr("syslog-tcp"),
        &format!("OKLOG-AUTH {INGEST_TOKEN}\n<13>1 {ts} host app - - - via-syslog\n"),
    );
    // (s_client -quiet stays until killed.)
    wait_for_bodies(
        &pki,
        &node,
        &["via-fast", "via-durable", "via-bulk", "via-syslog"],
    );
    let _ = s.kill();
    let _ = s.wait();
    // Without the token line, syslog over TLS is refused.
    let mut sneaky = tls_lines(
        &ca,
        node.addr("syslog-tcp"),
        &format!("<13>1 {ts} host app - - - sneaky-syslog\n"),
    );

    // Without a token, or with one of another role, the raw ports refuse and say why.
    let (code, err) = forward_for(
        node.addr("fast"),
        b"no-token\n",
        &["-tls.ca-file", &ca],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let with_query = [("OKLOG_AUTH_TOKEN", QUERY_TOKEN)];
    let (code, err) = forward_for(
        node.addr("durable"),
        b"query-token\n",
        &["-tls.ca-file", &ca],
        &with_query,
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("forbidden"), "{err}");
    let (code, err) = forward_for(
        node.addr("bulk"),
        b"bulk-no-token\n",
        &["-bulk", "-tls.ca-file", &ca],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    // Plain TCP to a TLS port: nothing goes through (the forwarder keeps retrying: it cannot
    // tell a refusal from a restart). A server certificate from a CA the client does not
    // trust: retrying cannot help, so the forwarder says why and exits 1. The node is unhurt.
    let (code, _) = forward_for(
        node.addr("fast"),
        b"plain-tcp\n",
        &[],
        &with_ingest,
        Duration::from_secs(2),
    );
    assert_eq!(
        code, None,
        "a forwarder never gets a plain connection acknowledged"
    );
    let other = pki.path("other-ca.pem");
    let (code, err) = forward_for(
        node.addr("fast"),
        b"wrong-ca\n",
        &["-tls.ca-file", &other],
        &with_ingest,
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("certificate was refused") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert_eq!(
        curl(&[
            "--cacert",
            &other,
            &format!("https://{}/health", node.addr("api"))
        ])
        .0,
        0
    );
    assert_eq!(
        curl(&[&format!("http://{}/health", node.addr("api"))]).0,
        0,
        "plain HTTP to the TLS API"
    );

    // Syslog without the token line never got in (a record sent since has), and the refusal
    // is counted.
    send_with_token(&pki, &node, "fast", "after-sneaky");
    wait_for_bodies(&pki, &node, &["after-sneaky"]);
    let _ = sneaky.kill();
    let _ = sneaky.wait();
    let all = records(&pki, &node, "/store/query", QUERY_TOKEN);
    assert!(
        !all.iter().any(|l| l.contains("sneaky-syslog")),
        "syslog without a token was stored"
    );
    let (_, metrics) = api(&pki, &node, "GET", "/metrics", None);
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("oklog_ingest_refused_connections_total{modality=\"syslog-tcp\"}")),
        "the refusal is counted"
    );
}

#[test]
fn internal_endpoints_want_the_cluster_role_and_our_clients_speak_https_with_tokens() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _tokens, node) = token_node(tmp.path());
    let ca = pki.path("ca.pem");
    let with_ingest = [("OKLOG_AUTH_TOKEN", INGEST_TOKEN)];
    send_with_token(&pki, &node, "durable", "via-durable");
    wait_for_bodies(&pki, &node, &["via-durable"]);
    // Every internal endpoint: 401 without a token, 403 with the query role, nothing changed.
    let internal = [
        ("GET", "/ingest/next"),
        ("GET", "/ingest/read?id=x"),
        ("POST", "/ingest/commit?id=x"),
        ("POST", "/ingest/failed?id=x"),
        ("GET", "/ingest/_segmentstate"),
        ("GET", "/ingest/_clusterstate"),
        ("POST", "/store/replicate"),
        ("GET", "/store/_query?from=2000-01-01T00:00:00Z"),
        ("GET", "/store/_hits?from=2000-01-01T00:00:00Z"),
        ("GET", "/store/_stream?q=x"),
        ("GET", "/store/_clusterstate"),
    ];
    for (method, path) in internal {
        assert_eq!(
            api(&pki, &node, method, path, None).0,
            401,
            "{method} {path}"
        );
        assert_eq!(
            api(&pki, &node, method, path, Some(QUERY_TOKEN)).0,
            403,
            "{method} {path}"
        );
        assert_eq!(
            api(&pki, &node, method, path, Some(INGEST_TOKEN)).0,
            403,
            "{method} {path}"
        );
    }
    // The record-stealing sequence (next → read → commit) fails at its first step, and the
    // record arrives in the store.
    send_with_token(&pki, &node, "fast", "not-stolen");
    for token in [None, Some(QUERY_TOKEN), Some(INGEST_TOKEN)] {
        let (code, body) = api(&pki, &node, "GET", "/ingest/next", token);
        assert!(code == 401 || code == 403, "{code} {body}");
    }
    wait_for_bodies(&pki, &node, &["not-stolen"]);
    // The node's own token may (it is how store nodes consume).
    assert_eq!(
        api(&pki, &node, "GET", "/store/_clusterstate", Some(NODE_TOKEN)).0,
        200
    );

    // Our CLIs: https and the token from the environment.
    let store = format!("https://{}", node.addr("api"));
    let query = |extra: &[&str], env: &[(&str, &str)]| {
        let base = [
            "query",
            "-store",
            &store,
            "-tls.ca-file",
            &ca,
            "-from",
            "1h",
        ];
        oklog_env(&[base.as_slice(), extra].concat(), env)
    };
    let with_query = [("OKLOG_AUTH_TOKEN", QUERY_TOKEN)];
    let out = query(&[], &with_query);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("via-durable"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = query(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // -tls.server-name: the certificate is checked for that name, not the address dialled.
    let named = |name: &str| query(&["-tls.server-name", name], &with_query);
    assert!(
        named("localhost").status.success(),
        "the certificate names localhost"
    );
    let out = named("elsewhere.example");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid for name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stream = Command::new(BIN)
        .args([
            "stream",
            "-store",
            &store,
            "-tls.ca-file",
            &ca,
            "-q",
            "live-one",
        ])
        .env("OKLOG_AUTH_TOKEN", QUERY_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        forward_for(
            node.addr("fast"),
            b"live-one\n",
            &["-tls.ca-file", &ca],
            &with_ingest,
            Duration::from_secs(10),
        );
        seen = lines
            .recv_timeout(Duration::from_secs(2))
            .is_ok_and(|l| l.contains("live-one"));
    }
    let _ = stream.kill();
    let _ = stream.wait();
    assert!(seen, "oklog stream over https with a token");

    // No token value is ever logged.
    let log = node.log_text();
    for t in [NODE_TOKEN, QUERY_TOKEN, INGEST_TOKEN] {
        assert!(!log.contains(t), "a token in the log");
    }
}

#[test]
fn tokens_and_certificates_reload_without_a_restart() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (pki, tokens, node) = token_node(tmp.path());
    let q = "/store/query?from=2000-01-01T00:00:00Z";
    assert_eq!(api(&pki, &node, "GET", q, Some(QUERY_TOKEN)).0, 200);
    // Reloads without a restart: a token removed stops working, one added starts; a new
    // certificate is served.
    let newcomer = "newcomer-token-00000000001";
    secret(
        &tokens,
        &format!("{NODE_TOKEN} cluster,ingest\n{newcomer} query\n"),
    );
    eventually(
        Duration::from_secs(10),
        "the token file to be reloaded",
        || (api(&pki, &node, "GET", q, Some(newcomer)).0 == 200).then_some(()),
    );
    assert_eq!(api(&pki, &node, "GET", q, Some(QUERY_TOKEN)).0, 401);
    assert_eq!(served_subject(node.addr("api")), "subject=CN = node");
    pki.cert("renewed", "ca", "node-renewed", 30);
    std::fs::copy(pki.dir.join("renewed.key"), pki.dir.join("node.key.new")).unwrap();
    private(&pki.dir.join("node.key.new"));
    std::fs::copy(pki.dir.join("renewed.pem"), pki.dir.join("node.pem.new")).unwrap();
    std::fs::rename(pki.dir.join("node.key.new"), pki.dir.join("node.key")).unwrap();
    std::fs::rename(pki.dir.join("node.pem.new"), pki.dir.join("node.pem")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the certificate to be reloaded",
        || (served_subject(node.addr("api")) == "subject=CN = node-renewed").then_some(()),
    );
    assert_eq!(
        served_subject(node.addr("fast")),
        "subject=CN = node-renewed"
    );
    // A bad file is refused and the node keeps what it had.
    secret(&tokens, "this line is wrong\n");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api(&pki, &node, "GET", q, Some(newcomer)).0, 200);
    assert!(node.log_text().contains("reload failed"));
    assert_eq!(api(&pki, &node, "GET", "/health", None).0, 200);
}

#[test]
fn client_certificates_guard_the_ingest_ports_and_the_internal_api() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let mut args = ingeststore_args(&["-tls.client-ca-file", &pki.path("ca.pem")]);
    args.extend(tls_flags(&pki));
    let node = Node::start(
        &tmp.path().join("node"),
        &args,
        &["api", "fast", "durable", "bulk"],
    );
    let ca = pki.path("ca.pem");
    let client = |name: &str| {
        vec![
            "-tls.ca-file".to_string(),
            ca.clone(),
            "-tls.cert-file".to_string(),
            pki.path(&format!("{name}.pem")),
            "-tls.key-file".to_string(),
            pki.path(&format!("{name}.key")),
        ]
    };
    let flags = client("client");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, err) = forward_for(
        node.addr("fast"),
        b"with-cert\n",
        &flags,
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
    let mut bulk = flags.clone();
    bulk.push("-bulk");
    let (code, err) = forward_for(
        node.addr("bulk"),
        b"bulk-with-cert\n",
        &bulk,
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
    // No certificate, an expired one, one from another CA: the node refuses the handshake
    // (and logs the peer, counted), and the forwarder names the refusal and exits 1 rather
    // than retrying for ever, fast, durable or bulk.
    for (who, port) in [
        (None, "durable"),
        (Some("expired"), "durable"),
        (Some("stranger"), "fast"),
        (Some("stranger"), "bulk"),
    ] {
        let mut flags = match who {
            None => vec!["-tls.ca-file".to_string(), ca.clone()],
            Some(n) => client(n),
        };
        if port == "bulk" {
            flags.push("-bulk".to_string());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (code, err) = forward_for(
            node.addr(port),
            b"refused\n",
            &flags,
            &[],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{who:?} on {port}: {err}");
        assert!(
            err.contains("the ingester refused the TLS connection (received fatal alert"),
            "{who:?} on {port}: {err}"
        );
    }
    let log = node.log_text();
    assert!(
        log.lines().any(|l| l.contains("ingest connection refused")
            && l.contains("peer=127.0.0.1:")
            && l.contains("TLS handshake failed")),
        "{log}"
    );
    let metrics = curl(&[
        "--cacert",
        &ca,
        &format!("https://{}/metrics", node.addr("api")),
    ])
    .1;
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("oklog_ingest_refused_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(refused >= 4, "{metrics}");
    // Queries stay open (no token file); the internal API wants the certificate.
    let url = |p: &str| format!("https://{}{p}", node.addr("api"));
    let with_cert = |p: &str| {
        curl(&[
            "--cacert",
            &ca,
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
            &url(p),
        ])
    };
    let (code, body) = curl(&[
        "--cacert",
        &ca,
        &url("/store/query?from=2000-01-01T00:00:00Z"),
    ]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&["--cacert", &ca, &url("/ingest/next")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("client certificate"), "{body}");
    assert_eq!(with_cert("/store/_clusterstate").0, 200);
    let (code, _) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &pki.path("expired.pem"),
        "--key",
        &pki.path("expired.key"),
        &url("/store/_clusterstate"),
    ]);
    assert_ne!(code, 200, "an expired client certificate");
    eventually(Duration::from_secs(30), "the records", || {
        let (_, body) = curl(&[
            "--cacert",
            &ca,
            &url("/store/query?from=2000-01-01T00:00:00Z"),
        ]);
        (body.contains("with-cert") && body.contains("bulk-with-cert") && !body.contains("refused"))
            .then_some(())
    });
    assert_eq!(curl(&["--cacert", &ca, &url("/health")]).0, 200, "unhurt");
}

#[test]
fn a_three_node_cluster_with_tls_tokens_and_a_cluster_key() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let tokens = tmp.path().join("tokens");
    secret(
        &tokens,
        &format!("{NODE_TOKEN} cluster,ingest\n{QUERY_TOKEN} query\n"),
    );
    let key = |name: &str| {
        let out = oklog(&["keygen"]);
        assert!(out.status.success());
        let k = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(k.len(), 64, "{k}");
        let p = tmp.path().join(name);
        secret(&p, &format!("{k}\n"));
        p
    };
    let cluster_key = key("cluster.key");
    let wrong_key = key("wrong.key");
    let secure = |key: &Path| {
        let mut v = tls_flags(&pki);
        v.extend([
            "-auth.token-file".to_string(),
            tokens.display().to_string(),
            "-cluster.key-file".to_string(),
            key.display().to_string(),
            "-store.segment-replication-factor".to_string(),
            "2".to_string(),
        ]);
        v
    };
    let start = |name: &str, peer: Option<&str>, key: &Path| {
        let extra = secure(key);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut args: Vec<String> = vec!["ingeststore".into()];
        args.extend(quick_flags());
        if let Some(p) = peer {
            args.extend(["-peer".into(), p.into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        if name == "c" {
            args.push("-auth.protect-metrics".into());
        }
        Node::start_env(
            &tmp.path().join(name),
            &args,
            &["api", "fast", "cluster"],
            &[("OKLOG_AUTH_TOKEN", NODE_TOKEN)],
        )
    };
    let a = start("a", None, &cluster_key);
    let peer = a.addr("cluster").to_string();
    let b = start("b", Some(&peer), &cluster_key);
    let c = start("c", Some(&peer), &cluster_key);
    let members = |n: &Node| -> Vec<String> {
        let (code, body) = api(&pki, n, "GET", "/store/_clusterstate", Some(NODE_TOKEN));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["api_addr"].as_str().unwrap().to_string())
            .collect()
    };
    eventually(Duration::from_secs(30), "three members", || {
        [&a, &b, &c]
            .iter()
            .all(|n| members(n).len() == 3)
            .then_some(())
    });
    // /metrics is open, unless the node protects it.
    assert_eq!(api(&pki, &a, "GET", "/metrics", None).0, 200);
    assert_eq!(api(&pki, &c, "GET", "/metrics", None).0, 401);
    assert_eq!(api(&pki, &c, "GET", "/metrics", Some(QUERY_TOKEN)).0, 200);
    assert!(
        members(&a).iter().all(|m| m.starts_with("https://")),
        "{:?}",
        members(&a)
    );
    // Records into one node, replicated twice, answered by the others' gateways.
    let ca = pki.path("ca.pem");
    let input: String = (0..200)
        .map(|i| format!("clustered record {i}\n"))
        .collect();
    let (code, err) = forward_for(
        a.addr("fast"),
        input.as_bytes(),
        &["-tls.ca-file", &ca],
        &[("OKLOG_AUTH_TOKEN", NODE_TOKEN)],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
    for n in [&b, &c] {
        eventually(
            Duration::from_secs(60),
            "every record from each gateway",
            || (records(&pki, n, "/store/query", QUERY_TOKEN).len() == 200).then_some(()),
        );
    }
    eventually(Duration::from_secs(60), "two copies of each record", || {
        let copies: usize = [&a, &b, &c]
            .iter()
            .map(|n| records(&pki, n, "/store/_query", NODE_TOKEN).len())
            .sum();
        (copies == 400).then_some(())
    });
    // A node with another key never joins, and the others count its packets as rejected.
    let stranger = start("d", Some(&peer), &wrong_key);
    std::thread::sleep(Duration::from_secs(4));
    let d_api = format!("https://{}", stranger.addr("api"));
    for n in [&a, &b, &c] {
        assert!(!members(n).contains(&d_api), "the stranger joined");
    }
    assert_eq!(members(&stranger).len(), 1);
    let (_, metrics) = api(&pki, &a, "GET", "/metrics", None);
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("oklog_cluster_rejected_packets_total "))
        .expect("the rejected packets counter")
        .trim()
        .parse()
        .unwrap();
    assert!(rejected > 0.0, "{rejected}");
    // Rotation: the stranger is given the cluster's key beside its own (file reloaded): it joins.
    let mut both = std::fs::read_to_string(&cluster_key).unwrap();
    both.push_str(&std::fs::read_to_string(&wrong_key).unwrap());
    secret(&wrong_key, &both);
    eventually(
        Duration::from_secs(30),
        "the stranger to join with the right key",
        || members(&a).contains(&d_api).then_some(()),
    );
}

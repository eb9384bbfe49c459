//! `oklog stream`: follow a live query across the cluster until SIGINT/SIGTERM.

use std::io::{self, Write};

use http_body_util::BodyExt;
use hyper::StatusCode;

use super::addr::parse_addr;
use super::flags::{FlagSet, Kind, flag};
use super::node::{API_PORT, wait_for_signal};
use super::query::encode;
use crate::http;
use crate::record::BODY_OFFSET;

/// The flags of `oklog stream`.
pub fn flag_set() -> FlagSet {
    FlagSet {
        usage: "oklog stream [flags]",
        flags: super::client::flags()
            .into_iter()
            .chain([
                flag(
                    "store",
                    Kind::Str,
                    "localhost:7650",
                    "address of store instance to query",
                ),
                flag("q", Kind::Str, "", "query expression"),
                flag("regex", Kind::Bool, "", "parse -q as regular expression"),
                flag(
                    "topic",
                    Kind::List,
                    "",
                    "only records of this topic (a name or a * glob; repeatable)",
                ),
                flag("window", Kind::Duration, "3s", "deduplication window"),
                flag(
                    "ulid",
                    Kind::Bool,
                    "",
                    "include ULID prefix with each record",
                ),
            ])
            .collect(),
        aliases: vec![],
    }
}

/// Print matching records as they arrive; SIGINT/SIGTERM end it with 0.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&flag_set(), argv)? else {
        return Ok(());
    };
    let store =
        parse_addr(&args.str("store"), API_PORT).map_err(|e| anyhow::anyhow!("-store: {e}"))?;
    let host = if store.host.is_empty() {
        format!("localhost:{}", store.port)
    } else {
        store.host_port()
    };
    let scheme = match store.network.as_str() {
        "https" => "https",
        "tcp" | "http" => "http",
        other => anyhow::bail!("-store: {other}:// is not http or https"),
    };
    let sec = super::client::ClientOpts::from_args(&args).http()?;
    let mut url = format!(
        "{scheme}://{host}/store/stream?q={}&window={}",
        encode(&args.str("q")),
        encode(&crate::gotime::format_duration(args.duration("window")))
    );
    if args.bool("regex") {
        url.push_str("&regex=true");
    }
    for t in args.list("topic") {
        url.push_str(&format!("&topic={}", encode(&t)));
    }
    let ulid = args.bool("ulid");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::select! {
            r = follow(&url, ulid, &sec) => r,
            _ = wait_for_signal() => Ok(()),
        }
    })
}

async fn follow(url: &str, ulid: bool, sec: &http::ClientSecurity) -> anyhow::Result<()> {
    let client = http::client_with(sec);
    let req = hyper::Request::builder()
        .uri(url)
        .body(http::empty_body())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {}", http::error_chain(&e)))?;
    let (parts, mut body) = resp.into_parts();
    if parts.status != StatusCode::OK {
        let text = http::body_text(body).await.unwrap_or_default();
        anyhow::bail!("GET {url}: {}: {}", parts.status, text.trim());
    }
    let stdout = io::stdout();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("stream broke: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        let Some(last) = memchr::memrchr(b'\n', &partial) else {
            continue;
        };
        let mut out = stdout.lock();
        for line in partial[..=last].split_inclusive(|&b| b == b'\n') {
            let shown = if ulid {
                line
            } else {
                line.get(BODY_OFFSET..).unwrap_or(b"\n")
            };
            match out.write_all(shown) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                r => r?,
            }
        }
        match out.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        partial.drain(..=last);
    }
    anyhow::bail!("the stream from {url} ended")
}

//! `oklog stream`: follow a live query across the cluster until SIGINT/SIGTERM.

use std::io::{self, Write};

use http_body_util::BodyExt;
use hyper::StatusCode;

use super::client::config::StreamConfig;
use super::node::wait_for_signal;
use crate::http;
use crate::record::BODY_OFFSET;

/// Print matching records as they arrive; SIGINT/SIGTERM end it with 0.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(cfg) = StreamConfig::parse(argv)? else {
        return Ok(());
    };
    let sec = cfg.reader.security.http()?;
    let url = cfg.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::select! {
            r = follow(&url, cfg.ulid, &sec) => r,
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

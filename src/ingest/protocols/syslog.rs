//! Syslog: RFC 5424 and RFC 3164 messages over TCP (`-ingest.syslog-tcp`; RFC 6587 octet
//! counting or newline framing, told apart per frame by its first byte) and UDP
//! (`-ingest.syslog-udp`, one message per datagram).
//!
//! The topic is the APP-NAME (5424) or TAG (3164); the message is MSG; the facility, severity,
//! hostname (`host`), PROCID (`pid`), MSGID and each structured-data parameter (`<SD-ID>.<name>`)
//! become fields; the header's timestamp is the time (a 3164 timestamp, which has no year or
//! zone, is read as UTC in the year that puts it nearest to now). An RFC 3339 timestamp (5424's,
//! or one in a 3164 header, as rsyslog forwards) is also the record's ULID time, checked against
//! the event bounds (a message outside them is dropped and counted); a 3164 timestamp is kept
//! as `ts=` only, the ULID being the time of arrival. A frame that is not syslog at all is
//! stored whole under the static topic: nothing is dropped.
//!
//! Syslog has no acknowledgement, so a connection waits only until its records are written
//! (as the fast port does); connections share `-ingest.max-connections` and
//! `-ingest.idle-timeout` with the raw ports' limits (each listener counts its own); a TCP connection whose octet count is not a number, or larger than
//! `-ingest.max-push-size`, is closed after the frames before it are stored.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

use crate::ingest::conn::HANDSHAKE_TIMEOUT;
use crate::ingest::ingester::Door;
use crate::ingest::wire::{AuthLine, auth_line};
use tokio::sync::watch;

use super::Protocol;
use super::http::Push;
use super::writer::Wait;
use super::{Batch, Topic};
use crate::ingest::ingester::ConnLimits;
use crate::throttle::Throttle;

/// Bytes read from a connection at a time (256 KiB).
const READ_BUF: usize = 256 << 10;
/// How long a connection waits before it tries the memory budget again.
const PAUSE: Duration = Duration::from_millis(100);
/// One "paused" line per 10 s, however many connections wait.
static PAUSED: crate::throttle::Throttle = crate::throttle::Throttle::new(Duration::from_secs(10));
/// Datagrams written together at most.
const UDP_BATCH: usize = 4096;

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Parse one syslog message (without framing) into a record of `batch` (a message over a
/// field limit, or one the batch has no room for, is dropped: syslog has no way to refuse).
pub fn parse_into(batch: &mut Batch, frame: &[u8], static_topic: &str, now_ns: i128) {
    let frame = frame.strip_suffix(b"\n").unwrap_or(frame);
    let frame = frame.strip_suffix(b"\r").unwrap_or(frame);
    let Some((pri, rest)) = pri(frame) else {
        batch
            .record(static_topic.as_bytes())
            .message(frame)
            .finish()
            .ok();
        return;
    };
    let mut m = Message::default();
    if let Some(r) = rest.strip_prefix(b"1 ") {
        rfc5424(r, &mut m);
    } else {
        rfc3164(rest, &mut m, now_ns);
    }
    let app = m.app.map(String::from_utf8_lossy);
    let topic = Topic::pick("app", app.as_deref(), static_topic);
    let mut r = batch.record(topic.name.as_bytes());
    r.message(m.msg);
    if let Some(h) = m.host {
        r.label(b"host", h);
    }
    if let Some(a) = &app {
        if topic.is_source("app") {
            r.source_label(b"app");
        } else {
            r.label(b"app", a.as_bytes());
        }
    }
    r.field(
        b"facility",
        FACILITIES
            .get(usize::from(pri >> 3))
            .map_or(b"unknown", |f| f.as_bytes()),
    );
    r.field(b"severity", SEVERITIES[usize::from(pri & 7)].as_bytes());
    if let Some(p) = m.pid {
        r.field(b"pid", p);
    }
    if let Some(id) = m.msgid {
        r.field(b"msgid", id);
    }
    for (k, v) in &m.sd {
        r.field(k.as_bytes(), v.as_bytes());
    }
    match m.time {
        Some(ns) if m.exact => {
            r.time(ns);
        }
        Some(ns) => {
            r.noted_time(ns);
        }
        None => {}
    }
    // A message refused for its time is dropped and counted, as syslog has no answer.
    let _ = r.finish();
}

#[derive(Default)]
struct Message<'a> {
    time: Option<i128>,
    /// Whether `time` is a whole RFC 3339 time (year and zone): the record's ULID time. A BSD
    /// timestamp (RFC 3164: no year, no zone) is kept as `ts=` only.
    exact: bool,
    host: Option<&'a [u8]>,
    app: Option<&'a [u8]>,
    pid: Option<&'a [u8]>,
    msgid: Option<&'a [u8]>,
    sd: Vec<(String, String)>,
    msg: &'a [u8],
}

/// `<PRI>`: 1–3 digits, at most 191.
fn pri(frame: &[u8]) -> Option<(u8, &[u8])> {
    let rest = frame.strip_prefix(b"<")?;
    let end = rest.iter().take(4).position(|&c| c == b'>')?;
    if end == 0 {
        return None;
    }
    let digits = std::str::from_utf8(&rest[..end]).ok()?;
    let v: u8 = digits.parse().ok().filter(|v| *v <= 191)?;
    Some((v, &rest[end + 1..]))
}

/// The next space-separated token, and what follows the space.
fn token(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn nil(t: &[u8]) -> Option<&[u8]> {
    (t != b"-" && !t.is_empty()).then_some(t)
}

fn rfc3339_nanos(t: &[u8]) -> Option<i128> {
    std::str::from_utf8(t)
        .ok()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_nanosecond())
}

fn rfc5424<'a>(s: &'a [u8], m: &mut Message<'a>) {
    let (ts, s) = token(s);
    m.time = rfc3339_nanos(ts);
    m.exact = true;
    let (host, s) = token(s);
    m.host = nil(host);
    let (app, s) = token(s);
    m.app = nil(app);
    let (pid, s) = token(s);
    m.pid = nil(pid);
    let (msgid, s) = token(s);
    m.msgid = nil(msgid);
    let rest = if let Some(r) = s.strip_prefix(b"-") {
        r
    } else if s.starts_with(b"[") {
        structured_data(s, &mut m.sd)
    } else {
        s
    };
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    m.msg = rest.strip_prefix("\u{feff}".as_bytes()).unwrap_or(rest);
}

/// `[id k="v" ...][id2 ...]`: the parameters as `id.k` fields; returns what follows.
fn structured_data<'a>(mut s: &'a [u8], out: &mut Vec<(String, String)>) -> &'a [u8] {
    while let Some(body) = s.strip_prefix(b"[") {
        let (id, mut rest) = match body.iter().position(|&c| c == b' ' || c == b']') {
            Some(i) => (String::from_utf8_lossy(&body[..i]).into_owned(), &body[i..]),
            None => return s,
        };
        loop {
            rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if let Some(r) = rest.strip_prefix(b"]") {
                rest = r;
                break;
            }
            let Some(eq) = memchr::memchr(b'=', rest) else {
                return s;
            };
            let name = String::from_utf8_lossy(&rest[..eq]).into_owned();
            let Some(v) = rest[eq + 1..].strip_prefix(b"\"") else {
                return s;
            };
            let mut value = Vec::new();
            let mut i = 0;
            while i < v.len() && v[i] != b'"' {
                if v[i] == b'\\' && i + 1 < v.len() {
                    i += 1;
                }
                value.push(v[i]);
                i += 1;
            }
            if i >= v.len() {
                return s;
            }
            out.push((
                format!("{id}.{name}"),
                String::from_utf8_lossy(&value).into_owned(),
            ));
            rest = &v[i + 1..];
        }
        s = rest;
    }
    s
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Mmm dd hh:mm:ss` (day space-padded), as nanoseconds in the year nearest to `now_ns`.
fn bsd_time(s: &[u8], now_ns: i128) -> Option<(i128, &[u8])> {
    if s.len() < 15 || s[3] != b' ' || s[6] != b' ' || s[9] != b':' || s[12] != b':' {
        return None;
    }
    let month = MONTHS.iter().position(|m| &s[..3] == *m)? as i8 + 1;
    let num = |a: usize, b: usize| -> Option<i8> {
        std::str::from_utf8(&s[a..b]).ok()?.trim().parse().ok()
    };
    let (day, h, mi, sec) = (num(4, 6)?, num(7, 9)?, num(10, 12)?, num(13, 15)?);
    if !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..61).contains(&sec)
    {
        return None;
    }
    let now = jiff::Timestamp::from_nanosecond(now_ns).ok()?;
    let year = i64::from(now.to_zoned_datetime(jiff::tz::TimeZone::UTC).year());
    let best = [year - 1, year, year + 1]
        .into_iter()
        .map(|y| {
            let days = crate::gotime::days_from_civil(y, month, day);
            let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec);
            i128::from(secs) * 1_000_000_000
        })
        .min_by_key(|ns| (ns - now_ns).abs())?;
    let rest = &s[15..];
    Some((best, rest.strip_prefix(b" ").unwrap_or(rest)))
}

fn rfc3164<'a>(s: &'a [u8], m: &mut Message<'a>, now_ns: i128) {
    let mut s = s;
    if let Some((ns, rest)) = bsd_time(s, now_ns) {
        m.time = Some(ns);
        s = rest;
    } else {
        let (t, rest) = token(s);
        if let Some(ns) = rfc3339_nanos(t) {
            m.time = Some(ns);
            m.exact = true;
            s = rest;
        }
    }
    // HOSTNAME, unless the next word is already the tag (`app:` or `app[12]:`).
    let (word, rest) = token(s);
    let is_tag = word.ends_with(b":") || word.contains(&b'[');
    if !is_tag && !rest.is_empty() && m.time.is_some() {
        m.host = nil(word);
        s = rest;
    }
    // TAG: letters up to `[`, `:` or a space.
    let end = s
        .iter()
        .position(|&c| c == b'[' || c == b':' || c == b' ')
        .unwrap_or(s.len());
    if end > 0 && end < s.len() && end <= 48 {
        m.app = Some(&s[..end]);
        let mut rest = &s[end..];
        if let Some(r) = rest.strip_prefix(b"[")
            && let Some(close) = memchr::memchr(b']', r)
        {
            m.pid = Some(&r[..close]);
            rest = &r[close + 1..];
        }
        rest = rest.strip_prefix(b":").unwrap_or(rest);
        s = rest.strip_prefix(b" ").unwrap_or(rest);
    }
    m.msg = s;
}

/// Why a syslog TCP stream cannot be framed any further (the connection is then closed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RFC 6587 octet counting with a count that is not a number.
    #[error("octet count is not a number")]
    NotACount,
    /// A count over the size limit.
    #[error("octet count {len} is over the limit of {max} bytes")]
    CountTooLarge {
        /// The count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A newline-framed line over the size limit.
    #[error("a line over the limit of {0} bytes")]
    LineTooLong(usize),
}

/// Split complete frames off the front of `buf`: octet-counted (`LEN SP MSG`) when a frame
/// starts with a digit, else up to a newline. `Err` for a count that is not a number or is
/// over `max`.
pub fn frames(
    buf: &mut BytesMut,
    max: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<(), FrameError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(());
        };
        if first.is_ascii_digit() {
            let Some(sp) = buf.iter().take(12).position(|&c| c == b' ') else {
                if buf.len() >= 12 {
                    return Err(FrameError::NotACount);
                }
                return Ok(());
            };
            let len: usize = std::str::from_utf8(&buf[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FrameError::NotACount)?;
            if len > max {
                return Err(FrameError::CountTooLarge { len, max });
            }
            if buf.len() < sp + 1 + len {
                return Ok(());
            }
            each(&buf[sp + 1..sp + 1 + len]);
            buf.advance(sp + 1 + len);
        } else {
            let Some(nl) = memchr::memchr(b'\n', buf) else {
                if buf.len() > max {
                    return Err(FrameError::LineTooLong(max));
                }
                return Ok(());
            };
            if nl > 0 && !(nl == 1 && buf[0] == b'\r') {
                each(&buf[..nl]);
            }
            buf.advance(nl + 1);
        }
    }
}

fn now_ns() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// Accept syslog TCP connections until `stop` turns true.
pub async fn serve_tcp(
    listener: TcpListener,
    push: Arc<Push>,
    limits: ConnLimits,
    door: Arc<Door>,
    mut stop: watch::Receiver<bool>,
) {
    let max_connections = limits.max_connections;
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let refused = Throttle::new(Duration::from_secs(10));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait instead of spinning.
                        if let Some(held) = refused.allow() {
                            tracing::warn!(error = %e, also_failed = held, "accepting a syslog connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    if let Some(held) = refused.allow() {
                        tracing::warn!(%peer, max = max_connections, also_refused = held, "syslog connection refused: too many open");
                    }
                    continue;
                };
                let (push, stop, door) = (Arc::clone(&push), stop.clone(), Arc::clone(&door));
                conns.spawn(async move {
                    let _permit = permit;
                    let (idle, partial) = (limits.idle_timeout, limits.partial_timeout);
                    match door.tls().cloned() {
                        None => {
                            if let Some((stream, buf)) = admit(stream, &door, false, peer).await {
                                connection(stream, buf, peer, push, idle, partial, stop).await;
                            }
                        }
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let cert = tls.get_ref().1.peer_certificates().is_some();
                                    if let Some((tls, buf)) = admit(tls, &door, cert, peer).await {
                                        connection(tls, buf, peer, push, idle, partial, stop).await;
                                    }
                                }
                                Ok(Err(e)) => door.refused(peer, "syslog-tcp", &format!("TLS handshake failed: {e}")),
                                Err(_) => door.refused(peer, "syslog-tcp", "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Read a connection's start and check it at `door` (when it checks anything): an
/// `OKLOG-AUTH <token>` line is taken off; the stream and what was read after it come back, or
/// `None` when it is refused. The first bytes must come within [`HANDSHAKE_TIMEOUT`].
async fn admit<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
    door: &Door,
    cert: bool,
    peer: std::net::SocketAddr,
) -> Option<(S, BytesMut)> {
    let mut buf = BytesMut::new();
    if !door.checks() {
        // Nothing to check: the connection starts as it always did (it may wait to send).
        return Some((stream, buf));
    }
    loop {
        let (token, skip) = match auth_line(&buf) {
            AuthLine::More => {
                buf.reserve(1024);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    _ if buf.is_empty() => return None,
                    _ => (None, 0),
                }
            }
            AuthLine::None => (None, 0),
            AuthLine::Token(t, len) => (Some(t.to_string()), len),
            AuthLine::Bad => {
                door.refused(
                    peer,
                    "syslog-tcp",
                    "unauthorized: malformed OKLOG-AUTH line",
                );
                return None;
            }
        };
        if let Err(why) = door.authorize(token.as_deref(), cert) {
            door.refused(peer, "syslog-tcp", &why.to_string());
            return None;
        }
        let _ = buf.split_to(skip);
        return Some((stream, buf));
    }
}

async fn connection<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
    mut buf: BytesMut,
    peer: std::net::SocketAddr,
    push: Arc<Push>,
    idle: Option<Duration>,
    partial_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let peer = Some(peer);
    let mut read_ahead = !buf.is_empty();
    let max = push.cfg.max_body;
    let topic = push.cfg.topic.clone();
    // The connection's buffer and the records framed from it, held against the memory
    // budget: when it has no room, the connection is not read (TCP holds the client back)
    // until it has.
    let mut hold = push.budget().hold();
    // Since when a frame has been begun and not ended: it must end within `partial_timeout`.
    let mut partial_since: Option<std::time::Instant> = None;
    loop {
        if partial_since.is_some_and(|t| t.elapsed() > partial_timeout) {
            if let Some(held) = PAUSED.allow() {
                tracing::warn!(?peer, timeout = ?partial_timeout, suppressed = held, "closing syslog connection: a frame did not arrive whole in time");
            }
            return;
        }
        let grow = if buf.capacity() - buf.len() < READ_BUF / 4 {
            READ_BUF
        } else {
            0
        };
        if let Err(full) = hold.set(buf.capacity() + grow + buf.len() * 2) {
            if let Some(held) = PAUSED.allow() {
                tracing::warn!(?peer, error = %full, suppressed = held, "syslog connection paused");
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => continue,
                _ = stop.changed() => return,
            }
        }
        buf.reserve(grow);
        let idle_for = idle.unwrap_or(Duration::MAX);
        // What came with the connection's first line is framed before reading more.
        let n = if std::mem::take(&mut read_ahead) {
            buf.len()
        } else {
            tokio::select! {
            r = stream.read_buf(&mut buf) => r.unwrap_or(0),
            _ = stop.changed() => 0,
            _ = tokio::time::sleep(idle_for), if idle.is_some() => {
                tracing::debug!(?peer, "closing idle syslog connection");
                0
            }
            }
        };
        let now = now_ns();
        let mut batch =
            Batch::with_capacity(buf.len() * 2).bounded(push.cfg.bounds, (now / 1_000_000) as u64);
        let mut ended = 0;
        let framed = frames(&mut buf, max, |f| {
            ended += 1;
            parse_into(&mut batch, f, &topic, now)
        });
        // A frame left unfinished is timed from when the one before it ended.
        partial_since = match (buf.is_empty(), ended, partial_since) {
            (true, _, _) => None,
            (false, 0, Some(since)) => Some(since),
            (false, _, _) => Some(std::time::Instant::now()),
        };
        if n == 0 && framed.is_ok() && !buf.is_empty() {
            if buf.first().is_some_and(u8::is_ascii_digit) {
                tracing::warn!(
                    ?peer,
                    bytes = buf.len(),
                    "syslog connection ended inside an octet-counted frame; its partial frame is not stored"
                );
            } else {
                parse_into(&mut batch, &buf, &topic, now);
            }
        }
        let bytes = batch.bytes();
        if push
            .store(Protocol::SyslogTcp, batch, bytes, Wait::Written)
            .await
            .is_err()
        {
            return;
        }
        if let Err(e) = framed {
            tracing::warn!(?peer, error = %e, "closing syslog connection");
            return;
        }
        if n == 0 {
            return;
        }
    }
}

/// Receive syslog datagrams until `stop` turns true.
pub async fn serve_udp(socket: UdpSocket, push: Arc<Push>, mut stop: watch::Receiver<bool>) {
    let topic = push.cfg.topic.clone();
    let mut buf = vec![0u8; 65536];
    loop {
        let first = tokio::select! {
            r = socket.recv(&mut buf) => r,
            _ = stop.changed() => return,
        };
        let Ok(n) = first else { continue };
        let now = now_ns();
        let mut batch = Batch::new().bounded(push.cfg.bounds, (now / 1_000_000) as u64);
        parse_into(&mut batch, &buf[..n], &topic, now);
        while batch.len() < UDP_BATCH {
            match socket.try_recv(&mut buf) {
                Ok(n) => parse_into(&mut batch, &buf[..n], &topic, now),
                Err(_) => break,
            }
        }
        let bytes = batch.bytes();
        let _ = push
            .store(Protocol::SyslogUdp, batch, bytes, Wait::Written)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i128 = 1_764_410_400_000_000_000; // 2025-11-29T10:00:00Z

    fn parse(frame: &str) -> String {
        let mut b = Batch::new();
        parse_into(&mut b, frame.as_bytes(), "default", NOW);
        b.lines().remove(0)
    }

    #[test]
    fn rfc5424_messages() {
        assert_eq!(
            parse(
                r#"<165>1 2025-11-29T09:59:58.123Z web-1 nginx 4242 ID47 [req@1 id="7" path="/a \"b\""][x@2 k="v"] ﻿GET /a"#
            ),
            r#"nginx GET /a␟host=web-1 app=␟facility=local4 severity=notice pid=4242 msgid=ID47 req@1.id=7 req@1.path="/a \"b\"" x@2.k=v ts=2025-11-29T09:59:58.123Z"#
        );
        assert_eq!(
            parse("<14>1 - - - - - -"),
            "default ␟␟facility=user severity=info"
        );
        assert_eq!(
            parse("<14>1 2025-11-29T09:59:58Z h my.app - - - hello"),
            "my_app hello␟host=h app=my.app␟facility=user severity=info ts=2025-11-29T09:59:58Z"
        );
    }

    #[test]
    fn rfc3164_messages() {
        assert_eq!(
            parse("<13>Nov 29 09:59:58 web-1 sshd[812]: Accepted key for bob"),
            "sshd Accepted key for bob␟host=web-1 app=␟facility=user severity=notice pid=812 ts=2025-11-29T09:59:58Z"
        );
        // A December message read in January belongs to last year.
        let mut b = Batch::new();
        parse_into(
            &mut b,
            b"<13>Dec 31 23:59:59 h cron: tick",
            "default",
            NOW + 40 * 86_400_000_000_000,
        );
        assert!(
            b.lines()[0].ends_with("ts=2025-12-31T23:59:59Z"),
            "{:?}",
            b.lines()
        );
        assert_eq!(
            parse("<13>2025-11-29T09:59:58Z h app: rfc3339 header"),
            "app rfc3339 header␟host=h app=␟facility=user severity=notice ts=2025-11-29T09:59:58Z"
        );
        assert_eq!(
            parse("<13>Nov  9 09:59:58 kernel: boot")
                .split(" ts=")
                .nth(1),
            Some("2025-11-09T09:59:58Z")
        );
        assert_eq!(parse("not syslog at all"), "default not syslog at all");
        assert_eq!(parse("<999>x"), "default <999>x");
    }

    #[test]
    fn frames_by_count_or_newline() {
        let mut buf = BytesMut::from(&b"11 <13>1 - - x5 <13>a\n<13>b\r\n\n7 <13>c"[..]);
        let mut got = Vec::new();
        frames(&mut buf, 1000, |f| {
            got.push(String::from_utf8_lossy(f).into_owned())
        })
        .unwrap();
        assert_eq!(got, ["<13>1 - - x", "<13>a", "<13>b\r"]);
        assert_eq!(&buf[..], b"7 <13>c", "a partial counted frame waits");
        let mut bad = BytesMut::from(&b"99999999 <13>x"[..]);
        assert_eq!(
            frames(&mut bad, 1000, |_| {}),
            Err(FrameError::CountTooLarge {
                len: 99999999,
                max: 1000
            })
        );
        let mut bad = BytesMut::from(&b"12x45678901234 <13>x"[..]);
        assert_eq!(frames(&mut bad, 1000, |_| {}), Err(FrameError::NotACount));
    }
}

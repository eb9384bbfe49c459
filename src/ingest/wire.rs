//! An ingest connection's byte stream, plain TCP or TLS, driven the way the fast and durable
//! handlers drive a socket: wait until readable, then read without blocking; write without
//! blocking. TLS runs rustls's connection over the socket's non-blocking reads and writes, so
//! a plain connection pays nothing for it. Also the first line a client may send to present a
//! token (`OKLOG-AUTH <token>`), which is not part of its input.

use std::io::{self, Read, Write};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::security::auth::RAW_AUTH_PREFIX;

/// The longest `OKLOG-AUTH` line taken.
pub const MAX_AUTH_LINE: usize = 4096;

/// An accepted ingest connection.
pub enum Wire {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, after the handshake.
    Tls(Box<TlsWire>),
}

/// A TLS connection whose handshake is done.
pub struct TlsWire {
    tcp: TcpStream,
    tls: rustls::ServerConnection,
    /// Bytes read from the socket and not yet given to rustls, `inbuf[pos..]` (rustls reads
    /// 4 KiB at a time: read straight from the socket, that was four system calls per record).
    /// Given back whenever the socket has nothing more, so idle connections hold none.
    inbuf: Vec<u8>,
    pos: usize,
}

/// The socket reads of a TLS connection (64 KiB).
const TLS_READ: usize = 64 << 10;

/// `io::Write` over a tokio socket's non-blocking writes (for rustls).
struct TryIo<'a>(&'a TcpStream);

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsWire {
    /// Write what rustls has for the peer, as far as the socket takes it.
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut TryIo(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read as much plaintext as is there, up to `buf`'s size (a TLS record holds at most
    /// 16 KiB: returning one at a time would make a durable connection fsync per record).
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = self.try_read_some(buf)?;
        if n == 0 {
            return Ok(0);
        }
        while n < buf.len() {
            match self.try_read_some(&mut buf[n..]) {
                Ok(0) | Err(_) => break, // the end or an error shows at the next read
                Ok(more) => n += more,
            }
        }
        Ok(n)
    }

    fn try_read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: the client said close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed TCP without close_notify: an end like a plain FIN (only
                // complete lines are stored, and they are acknowledged).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.pos == self.inbuf.len() {
                self.inbuf.resize(TLS_READ, 0);
                match self.tcp.try_read(&mut self.inbuf) {
                    Ok(got) => self.inbuf.truncate(got),
                    Err(e) => {
                        self.inbuf = Vec::new();
                        self.pos = 0;
                        return Err(e);
                    }
                }
                self.pos = 0;
            }
            let mut rest = &self.inbuf[self.pos..];
            let n = self.tls.read_tls(&mut rest)?; // 0 on an empty slice: the socket's end
            self.pos += n;
            self.tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.flush_tls()?;
            if n == 0 {
                return match self.tls.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(e),
                };
            }
        }
    }

    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.flush_tls()?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(data)?;
        self.flush_tls()?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Wire {
    /// Wrap a finished handshake.
    pub fn tls(tcp: TcpStream, tls: rustls::ServerConnection) -> Wire {
        Wire::Tls(Box::new(TlsWire {
            tcp,
            tls,
            inbuf: Vec::new(),
            pos: 0,
        }))
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(t) => &t.tcp,
        }
    }

    /// Wait until a read may return something (data, the end, or an error).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.readable().await,
            // rustls holds decrypted bytes already (or the connection has ended), or bytes
            // read from the socket wait for it.
            Wire::Tls(t) if !t.tls.wants_read() || t.pos < t.inbuf.len() => Ok(()),
            Wire::Tls(t) => t.tcp.readable().await,
        }
    }

    /// Read what is there without waiting (`WouldBlock` when nothing is; 0 at the end).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.try_read(buf),
            Wire::Tls(t) => t.try_read(buf),
        }
    }

    /// Write what fits without waiting (`WouldBlock` when nothing does).
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.try_write(data),
            Wire::Tls(t) => t.try_write(data),
        }
    }

    /// Wait until the socket takes writes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// End the sending side gracefully (TLS: close_notify first, flushed within `wait`).
    pub async fn shutdown(&mut self, wait: std::time::Duration) {
        match self {
            Wire::Plain(s) => {
                let _ = s.shutdown().await;
            }
            Wire::Tls(t) => {
                t.tls.send_close_notify();
                let _ = tokio::time::timeout(wait, async {
                    while t.tls.wants_write() {
                        if t.flush_tls().is_err() || t.tcp.writable().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                let _ = t.tcp.shutdown().await;
            }
        }
    }
}

/// What the first bytes of a connection say about a token.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthLine<'a> {
    /// Too few bytes to tell yet.
    More,
    /// No `OKLOG-AUTH` line: every byte is input.
    None,
    /// The token, and the length of its line (newline included).
    Token(&'a str, usize),
    /// An `OKLOG-AUTH` line that is too long or not text.
    Bad,
}

/// Look for an `OKLOG-AUTH <token>` line at the start of `buf`.
pub fn auth_line(buf: &[u8]) -> AuthLine<'_> {
    let n = buf.len().min(RAW_AUTH_PREFIX.len());
    if buf[..n] != RAW_AUTH_PREFIX[..n] {
        return AuthLine::None;
    }
    if buf.len() < RAW_AUTH_PREFIX.len() {
        return AuthLine::More;
    }
    match memchr::memchr(b'\n', buf) {
        Some(end) => match std::str::from_utf8(&buf[RAW_AUTH_PREFIX.len()..end]) {
            Ok(t) => AuthLine::Token(t.trim(), end + 1),
            Err(_) => AuthLine::Bad,
        },
        None if buf.len() < MAX_AUTH_LINE => AuthLine::More,
        None => AuthLine::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_line_is_found_only_at_the_start() {
        assert_eq!(auth_line(b"OKLOG-AU"), AuthLine::More);
        assert_eq!(auth_line(b""), AuthLine::More);
        assert_eq!(auth_line(b"OKLOG-AUTH abc"), AuthLine::More);
        assert_eq!(
            auth_line(b"OKLOG-AUTH abc\r\nrecord\n"),
            AuthLine::Token("abc", 16)
        );
        assert_eq!(auth_line(b"OKLOG-ACK\n"), AuthLine::None);
        assert_eq!(auth_line(b"hello\n"), AuthLine::None);
        assert_eq!(auth_line(b"OKLOG-AUTH \xff\n"), AuthLine::Bad);
        let long = [b"OKLOG-AUTH ".as_slice(), &[b'a'; MAX_AUTH_LINE]].concat();
        assert_eq!(auth_line(&long), AuthLine::Bad);
    }
}

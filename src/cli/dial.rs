//! How `oklog forward` reaches an ingester's raw ports: plain TCP, or TLS when a `-tls.*` flag
//! is given (or the address is `tls://`), and with `-auth.token`, an `OKLOG-AUTH <token>` line
//! before anything else (docs/security.md).
//!
//! The forwarder is synchronous (a writer, and a thread that reads acknowledgements); a TLS
//! connection is driven by a one-thread tokio runtime and split into a write half used by the
//! writer and a read half used by the reader thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::runtime::Handle;

use super::addr::Addr;
use super::client::ClientOpts;

/// Connect timeout per attempt (and for the TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Makes connections to ingesters.
pub struct Dialer {
    /// TLS, when asked for.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The runtime driving TLS connections, made by the first one (bulk never needs it).
    runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
    token: Option<String>,
}

/// One connection's sending side.
pub enum LinkIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS: the write half, and the socket (to shut it down from any thread).
    Tls {
        /// The runtime driving the connection.
        rt: Handle,
        /// The write half.
        w: WriteHalf<TlsStream>,
        /// The socket underneath.
        tcp: TcpStream,
    },
}

/// One connection's receiving side (for the acknowledgement reader).
pub enum LinkRead {
    /// Plain TCP.
    Plain(TcpStream),
    /// The TLS read half.
    Tls(Handle, ReadHalf<TlsStream>),
}

impl Read for LinkRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            LinkRead::Plain(s) => s.read(buf),
            LinkRead::Tls(rt, r) => match rt.block_on(r.read(buf)) {
                // The ingester closed without close_notify: the end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl LinkIo {
    /// Write all of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            LinkIo::Plain(s) => s.write_all(data),
            LinkIo::Tls { rt, w, .. } => rt.block_on(async {
                w.write_all(data).await?;
                w.flush().await
            }),
        }
    }

    /// End the sending side (TLS: close_notify first).
    pub fn shutdown_write(&mut self) {
        match self {
            LinkIo::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            LinkIo::Tls { rt, w, .. } => {
                let _ = rt
                    .block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, w.shutdown()).await });
            }
        }
    }

    /// End both sides at once (a blocked read or write then fails).
    pub fn shutdown_both(&self) {
        let tcp = match self {
            LinkIo::Plain(s) => s,
            LinkIo::Tls { tcp, .. } => tcp,
        };
        let _ = tcp.shutdown(Shutdown::Both);
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            LinkIo::Plain(s) => s,
            LinkIo::Tls { tcp, .. } => tcp,
        }
    }
}

impl Dialer {
    /// A dialer for `opts`; `tls` forces TLS even without a `-tls.*` flag.
    pub fn new(opts: &ClientOpts, tls: bool) -> anyhow::Result<Dialer> {
        Ok(Dialer {
            tls: if tls || opts.wants_tls() {
                Some(opts.tls()?)
            } else {
                None
            },
            runtime: std::sync::OnceLock::new(),
            token: opts.token.clone(),
        })
    }

    fn runtime(&self) -> io::Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("forward-tls")
            .enable_all()
            .build()?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// Send the token line, if there is a token.
    fn present_token(&self, w: impl FnOnce(&[u8]) -> io::Result<()>) -> io::Result<()> {
        match &self.token {
            Some(t) => w(format!("OKLOG-AUTH {t}\n").as_bytes()),
            None => Ok(()),
        }
    }

    /// Connect to `addr`; `before` runs on the TCP socket before TLS starts (the urgent
    /// acknowledgement request). Sends the token line, if any.
    pub fn connect(
        &self,
        addr: &Addr,
        before: impl FnOnce(&TcpStream) -> io::Result<()>,
    ) -> io::Result<(LinkIo, LinkRead)> {
        let stream = dial(addr)?;
        before(&stream)?;
        let (mut io, read) = match &self.tls {
            None => {
                let theirs = stream.try_clone()?;
                (LinkIo::Plain(stream), LinkRead::Plain(theirs))
            }
            Some(config) => {
                let (name, rt) = (tls_name(addr)?, self.runtime()?);
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let tcp = stream.try_clone()?;
                stream.set_nonblocking(true)?;
                let tls = rt.block_on(async {
                    let s = tokio::net::TcpStream::from_std(stream)?;
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, s))
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                        })?
                })?;
                let (r, w) = tokio::io::split(tls);
                let handle = rt.handle().clone();
                (
                    LinkIo::Tls {
                        rt: handle.clone(),
                        w,
                        tcp,
                    },
                    LinkRead::Tls(handle, r),
                )
            }
        };
        self.present_token(|line| io.write_all(line))?;
        Ok((io, read))
    }

    /// A blocking stream for request/answer protocols (bulk): TLS when asked for.
    pub fn connect_blocking(&self, addr: &Addr) -> io::Result<Box<dyn ReadWrite>> {
        let stream = dial(addr)?;
        let mut s: Box<dyn ReadWrite> = match &self.tls {
            None => Box::new(stream),
            Some(config) => {
                let conn = rustls::ClientConnection::new(Arc::clone(config), tls_name(addr)?)
                    .map_err(io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, stream))
            }
        };
        self.present_token(|line| s.write_all(line))?;
        Ok(s)
    }
}

/// Why a connection error means the TLS connection was refused for good, by the ingester (a
/// fatal alert: it did not accept our certificate) or by us (its certificate failed our
/// check): retrying cannot help, so the forwarder says so and stops. `None` for anything else.
pub fn refusal(e: &io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(alert) if *alert != rustls::AlertDescription::CloseNotify => {
            Some(format!(
                "the ingester refused the TLS connection ({tls}): check -tls.cert-file against its -tls.client-ca-file"
            ))
        }
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Some(format!(
                "the ingester's certificate was refused ({tls}): check -tls.ca-file and -tls.server-name"
            ))
        }
        _ => None,
    }
}

/// The name `addr`'s certificate is checked for.
fn tls_name(addr: &Addr) -> io::Result<rustls::pki_types::ServerName<'static>> {
    crate::security::tls::server_name(&addr.host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// A blocking byte stream with a socket underneath.
pub trait ReadWrite: Read + Write + Send {
    /// The socket.
    fn tcp(&self) -> &TcpStream;
}

impl ReadWrite for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ReadWrite for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Connect to `addr` (an empty host is 127.0.0.1), trying each address it resolves to.
pub fn dial(addr: &Addr) -> io::Result<TcpStream> {
    let host = if addr.host.is_empty() {
        "127.0.0.1"
    } else {
        addr.host.as_str()
    };
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no addresses", addr.host),
    );
    for sa in (host, addr.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

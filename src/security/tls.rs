//! TLS with rustls (ring): a node's identity (`-tls.cert-file`, `-tls.key-file`, reloaded when
//! the files change), the server configurations of its listeners (`-tls.client-ca-file` for
//! client certificates), and the client configuration every client uses (`-tls.ca-file`, or
//! the system's bundle, to verify servers; the identity, if any, presented to them).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The TLS files a process was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `-tls.cert-file`: this process's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `-tls.key-file`: its private key (PEM).
    pub key: Option<PathBuf>,
    /// `-tls.ca-file`: the CAs servers are verified against (default: the system's).
    pub ca: Option<PathBuf>,
    /// `-tls.client-ca-file`: the CAs client certificates are verified against (servers).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS flag was given.
    pub fn any(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some() || self.client_ca.is_some()
    }

    /// The identity, when both the certificate and the key were given (one alone is an error).
    pub fn identity(&self) -> anyhow::Result<Option<Arc<Identity>>> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some(Identity::load(c, k)?)),
            (None, None) => Ok(None),
            (Some(_), None) => bail!("-tls.cert-file needs -tls.key-file"),
            (None, Some(_)) => bail!("-tls.key-file needs -tls.cert-file"),
        }
    }
}

/// Marks a request (or connection) whose client presented a certificate the server verified.
#[derive(Clone, Copy, Debug)]
pub struct ClientCert;

/// A certificate chain and its key, replaced when the files change.
#[derive(Debug)]
pub struct Identity {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Identity {
    /// Load `cert` (a PEM chain, leaf first) and `key` (PEM, not readable by other users).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Identity>> {
        let current = certified_key(cert, key)?;
        Ok(Arc::new(Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(current),
        }))
    }

    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn certified_key(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = load_certs(cert, "-tls.cert-file")?;
    super::check_private(key, "-tls.key-file")?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("-tls.key-file {}: {e}", key.display()))?;
    let ck = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "-tls.cert-file {} with -tls.key-file {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// The crypto provider: ring's, with AES-128-GCM preferred (fewer rounds than AES-256 for the
/// same security margin at these volumes; both ends of a connection here prefer it).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::*;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        let aes128 = matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    Arc::new(p)
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    std::fs::metadata(path).with_context(|| format!("{flag} {}", path.display()))?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn roots(path: &Path, flag: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path, flag)? {
        store
            .add(c)
            .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// The system's CA bundle (`SSL_CERT_FILE`, or Debian's and Red Hat's usual places).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let candidates = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/cert.pem",
                ]
                .map(PathBuf::from),
            );
        let mut store = RootCertStore::empty();
        for path in candidates {
            if let Ok(iter) = CertificateDer::pem_file_iter(&path) {
                store.add_parsable_certificates(iter.flatten());
                break;
            }
        }
        Arc::new(store)
    }))
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl super::Reload for Identity {
    fn what(&self) -> String {
        format!("TLS certificate {}", self.cert.display())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }

    fn reload(&self) -> anyhow::Result<()> {
        let ck = certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }
}

/// The server side of a node's TLS: one configuration for the API (client certificates
/// optional: browsers have none) and one for the raw ingest ports.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The API listener's configuration.
    pub api: Arc<ServerConfig>,
    /// The fast, durable, bulk and syslog-tcp listeners' configuration.
    pub ingest: Arc<ServerConfig>,
}

impl ServerTls {
    /// Configurations serving `identity`; with `client_ca`, client certificates are verified
    /// against it, and required on the ingest ports unless `tokens` may stand in for them.
    pub fn new(
        identity: Arc<Identity>,
        client_ca: Option<&Path>,
        tokens: bool,
    ) -> anyhow::Result<ServerTls> {
        let client_roots = client_ca
            .map(|ca| roots(ca, "-tls.client-ca-file"))
            .transpose()?;
        let config = |require: bool| -> anyhow::Result<Arc<ServerConfig>> {
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
            let builder = match &client_roots {
                Some(ca) => {
                    let v = rustls::server::WebPkiClientVerifier::builder(Arc::clone(ca));
                    let v = if require {
                        v
                    } else {
                        v.allow_unauthenticated()
                    };
                    builder.with_client_cert_verifier(
                        v.build()
                            .map_err(|e| anyhow::anyhow!("-tls.client-ca-file: {e}"))?,
                    )
                }
                None => builder.with_no_client_auth(),
            };
            Ok(Arc::new(
                builder.with_cert_resolver(Arc::clone(&identity) as _),
            ))
        };
        Ok(ServerTls {
            api: config(false)?,
            ingest: config(!tokens)?,
        })
    }
}

/// A client configuration: servers verified against `ca` (default: the system's CAs), for
/// `server_name` instead of the address dialled when given (`-tls.server-name`: peers in
/// Kubernetes are dialled at pod IPs no certificate names), and `identity` presented when a
/// server asks for a client certificate.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<Arc<Identity>>,
    server_name: Option<&str>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = match ca {
        Some(p) => roots(p, "-tls.ca-file")?,
        None => system_roots(),
    };
    let client = || {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))
    };
    let builder = match server_name {
        None => client()?.with_root_certificates(roots),
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| anyhow::anyhow!("-tls.server-name {name:?}: {e}"))?;
            let inner = rustls::client::WebPkiServerVerifier::builder(roots)
                .build()
                .map_err(|e| anyhow::anyhow!("-tls.ca-file: {e}"))?;
            client()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(FixedName { inner, name }))
        }
    };
    Ok(Arc::new(match identity {
        Some(id) => builder.with_client_cert_resolver(id as _),
        None => builder.with_no_client_auth(),
    }))
}

/// Verifies a server's certificate as the standard verifier does, for a fixed name.
#[derive(Debug)]
struct FixedName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The host name to verify a server's certificate against (an IP address works too, when the
/// certificate names it).
pub fn server_name(host: &str) -> anyhow::Result<rustls::pki_types::ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| anyhow::anyhow!("{host:?}: not a host name for TLS: {e}"))
}

//! The client modes' configuration: the security flags every client shares (`forward`,
//! `query`, `stream`: the TLS files that verify servers and identify the client, and the
//! bearer token), and in [`config`] each mode's flags parsed once into a typed config.

pub mod config;

use std::path::PathBuf;
use std::sync::Arc;

use super::flags::{Args, Flag, Kind, flag};
use crate::http::ClientSecurity;
use crate::security::tls::{TlsFiles, client_config};

/// The client security flags.
pub fn flags() -> Vec<Flag> {
    vec![
        flag(
            "tls.ca-file",
            Kind::Str,
            "",
            "CA certificates (PEM) that servers are verified against (default: the system's)",
        ),
        flag(
            "tls.cert-file",
            Kind::Str,
            "",
            "client certificate (PEM) presented to servers that ask for one",
        ),
        flag(
            "tls.key-file",
            Kind::Str,
            "",
            "private key (PEM) of -tls.cert-file",
        ),
        flag(
            "tls.server-name",
            Kind::Str,
            "",
            "name the server's certificate must have (default: the host dialled)",
        ),
        flag(
            "auth.token",
            Kind::Str,
            "",
            "bearer token sent to the server (better given as OKLOG_AUTH_TOKEN)",
        ),
    ]
}

/// A client's security settings, read from its flags.
#[derive(Clone, Debug, Default)]
pub struct ClientOpts {
    /// The TLS files (`server`'s `client_ca` stays empty).
    pub files: TlsFiles,
    /// `-auth.token`.
    pub token: Option<String>,
    /// `-tls.server-name`.
    pub server_name: Option<String>,
}

fn path(args: &Args, name: &str) -> Option<PathBuf> {
    let v = args.str(name);
    (!v.is_empty()).then(|| PathBuf::from(v))
}

impl ClientOpts {
    /// Read the flags of [`flags`].
    pub fn from_args(args: &Args) -> ClientOpts {
        let token = args.str("auth.token");
        ClientOpts {
            files: TlsFiles {
                cert: path(args, "tls.cert-file"),
                key: path(args, "tls.key-file"),
                ca: path(args, "tls.ca-file"),
                client_ca: None,
            },
            token: (!token.trim().is_empty()).then(|| token.trim().to_string()),
            server_name: path(args, "tls.server-name").map(|p| p.display().to_string()),
        }
    }

    /// Whether a `-tls.*` flag was given (raw ingest connections then speak TLS).
    pub fn wants_tls(&self) -> bool {
        self.files.any() || self.server_name.is_some()
    }

    /// The rustls client configuration.
    pub fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        client_config(
            self.files.ca.as_deref(),
            self.files.identity()?,
            self.server_name.as_deref(),
        )
    }

    /// What an HTTP client needs.
    pub fn http(&self) -> anyhow::Result<ClientSecurity> {
        Ok(ClientSecurity {
            tls: Some(self.tls()?),
            token: self.token.clone(),
        })
    }
}

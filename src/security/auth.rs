//! Bearer tokens with roles (`-auth.token-file`), and which role each endpoint needs.
//!
//! The token file has one token per line, `TOKEN ROLE[,ROLE...]`, roles `ingest`, `query` and
//! `cluster`; blank lines and lines starting with `#` are skipped. Tokens are kept only as
//! SHA-256 digests, so a lookup takes no longer for a nearly right token than for a wrong one,
//! and no token value is ever logged.
//!
//! A client certificate verified against `-tls.client-ca-file` counts as the roles of machines,
//! `ingest` and `cluster`; `query` always needs a token (or no `-auth.token-file` at all).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Send records: the raw ingest ports and the push APIs.
    Ingest,
    /// Read records: queries, hits, topics, streams, the UI's calls.
    Query,
    /// Be a node: the internal endpoints other nodes call.
    Cluster,
}

impl Role {
    fn bit(self) -> u8 {
        match self {
            Role::Ingest => 1,
            Role::Query => 2,
            Role::Cluster => 4,
        }
    }

    /// `ingest`, `query` or `cluster`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Query => "query",
            Role::Cluster => "cluster",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "ingest" => Some(Role::Ingest),
            "query" => Some(Role::Query),
            "cluster" => Some(Role::Cluster),
            _ => None,
        }
    }
}

/// A set of roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    /// Whether `role` is in the set.
    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }
}

type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parse a token file's text; errors name the line, never the token.
pub fn parse_tokens(text: &str) -> anyhow::Result<HashMap<Digest, Roles>> {
    let mut table = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(token), Some(roles), None) = (fields.next(), fields.next(), fields.next()) else {
            bail!("line {}: want `TOKEN ROLE[,ROLE...]`", i + 1);
        };
        if token.len() < 16 {
            bail!("line {}: a token must have at least 16 characters", i + 1);
        }
        let mut set = Roles::default();
        for r in roles.split(',') {
            let Some(role) = Role::parse(r) else {
                bail!(
                    "line {}: unknown role {r:?} (roles: ingest, query, cluster)",
                    i + 1
                );
            };
            set.0 |= role.bit();
        }
        if table.insert(digest(token), set).is_some() {
            bail!("line {}: this token is already on an earlier line", i + 1);
        }
    }
    if table.is_empty() {
        bail!("no tokens");
    }
    Ok(table)
}

/// The tokens of `-auth.token-file`, reloaded when the file changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    table: RwLock<Arc<HashMap<Digest, Roles>>>,
}

impl Tokens {
    /// Load `path` (which other users must not be able to read).
    pub fn open(path: &Path) -> anyhow::Result<Arc<Tokens>> {
        let table = Self::load(path)?;
        Ok(Arc::new(Tokens {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
        }))
    }

    fn load(path: &Path) -> anyhow::Result<HashMap<Digest, Roles>> {
        super::check_private(path, "-auth.token-file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("-auth.token-file {}", path.display()))?;
        parse_tokens(&text).with_context(|| format!("-auth.token-file {}", path.display()))
    }

    /// The roles of `token`, if it is one.
    pub fn roles(&self, token: &str) -> Option<Roles> {
        let table = Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()));
        table.get(&digest(token)).copied()
    }
}

impl super::Reload for Tokens {
    fn what(&self) -> String {
        format!("token file {}", self.path.display())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn reload(&self) -> anyhow::Result<()> {
        let table = Self::load(&self.path)?;
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        Ok(())
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: `/health`, `/ready`, the UI's files.
    Open,
    /// This role.
    Role(Role),
    /// Any valid token or client certificate (`/metrics` with `-auth.protect-metrics`).
    Anyone,
}

/// The role an HTTP path needs.
pub fn need(path: &str, protect_metrics: bool) -> Need {
    const INTERNAL: &[&str] = &[
        "/ingest/next",
        "/ingest/read",
        "/ingest/commit",
        "/ingest/failed",
        "/ingest/_segmentstate",
        "/ingest/_clusterstate",
        "/store/replicate",
        "/store/_query",
        "/store/_hits",
        "/store/_stream",
        "/store/_labels",
        "/store/_samples",
        "/store/_clusterstate",
    ];
    // The Loki push path is for agents; the rest of `/loki/` (and `/select/`) reads.
    const PUSH: &[&str] = &["/loki/api/v1/push", "/v1/logs", "/insert/"];
    match path {
        "/health" | "/ready" => Need::Open,
        "/metrics" if protect_metrics => Need::Anyone,
        "/metrics" => Need::Open,
        "/ui" => Need::Open,
        p if p.starts_with("/ui/") => Need::Open,
        p if INTERNAL.contains(&p) => Need::Role(Role::Cluster),
        p if p.starts_with("/debug/") => Need::Role(Role::Cluster),
        p if PUSH.iter().any(|x| p.starts_with(x)) => Need::Role(Role::Ingest),
        _ => Need::Role(Role::Query),
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials, or a token that is not one: HTTP 401.
    #[error("unauthorized: {0}")]
    Unauthenticated(&'static str),
    /// Credentials without the role: HTTP 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// A node's access rules: its tokens, whether client certificates are verified, and whether
/// `/metrics` is protected.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// `-auth.token-file`.
    pub tokens: Option<Arc<Tokens>>,
    /// `-tls.client-ca-file` was given: a verified client certificate is a machine's identity.
    pub client_certs: bool,
    /// `-auth.protect-metrics`.
    pub protect_metrics: bool,
}

impl Guard {
    /// Whether anything is checked at all.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some() || self.client_certs
    }

    /// Check a request that needs `need`, made with `token` (if any) over a connection that
    /// presented a verified client certificate (`cert`).
    pub fn check(&self, need: Need, token: Option<&str>, cert: bool) -> Result<(), Refusal> {
        if need == Need::Open || !self.is_on() {
            return Ok(());
        }
        let machine = |role: Option<Role>| cert && role != Some(Role::Query);
        let role = match need {
            Need::Role(r) => Some(r),
            _ => None,
        };
        match (&self.tokens, token) {
            (Some(tokens), Some(t)) => match tokens.roles(t) {
                None => Err(Refusal::Unauthenticated("invalid token")),
                Some(roles) => match role {
                    Some(r) if !roles.has(r) && !machine(role) => Err(Refusal::Forbidden(format!(
                        "this token does not have the {} role",
                        r.name()
                    ))),
                    _ => Ok(()),
                },
            },
            _ if machine(role) => Ok(()),
            (Some(_), _) => Err(Refusal::Unauthenticated("a bearer token is required")),
            // Client certificates only: queries stay open, machines need their certificate.
            (None, _) if role == Some(Role::Query) => Ok(()),
            (None, _) => Err(Refusal::Forbidden(
                "a client certificate signed by -tls.client-ca-file is required".into(),
            )),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?;
    let (scheme, token) = s.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The first line a raw ingest client sends to present a token: `OKLOG-AUTH <token>`.
pub const RAW_AUTH_PREFIX: &[u8] = b"OKLOG-AUTH ";

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(text: &str, certs: bool) -> Guard {
        let table = parse_tokens(text).unwrap();
        Guard {
            tokens: Some(Arc::new(Tokens {
                path: PathBuf::new(),
                table: RwLock::new(Arc::new(table)),
            })),
            client_certs: certs,
            protect_metrics: false,
        }
    }

    #[test]
    fn token_file_errors_name_the_line_not_the_token() {
        let e = parse_tokens("# c\n\nsecret-secret-0001 query\nsecret-secret-0002 admin\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 4") && e.contains("admin") && !e.contains("secret-secret"),
            "{e}"
        );
        assert!(parse_tokens("short query\n").is_err());
        assert!(parse_tokens("secret-secret-0001\n").is_err());
        assert!(parse_tokens("\n# only comments\n").is_err());
        assert!(parse_tokens("secret-secret-0001 query\nsecret-secret-0001 ingest\n").is_err());
    }

    #[test]
    fn roles_decide_and_certificates_stand_for_machines() {
        let g = guard(
            "querier-token-0001 query\nnode-token-0000001 cluster,ingest\n",
            false,
        );
        let q = Need::Role(Role::Query);
        let c = Need::Role(Role::Cluster);
        let i = Need::Role(Role::Ingest);
        assert_eq!(g.check(q, Some("querier-token-0001"), false), Ok(()));
        assert!(matches!(
            g.check(c, Some("querier-token-0001"), false),
            Err(Refusal::Forbidden(_))
        ));
        assert_eq!(g.check(c, Some("node-token-0000001"), false), Ok(()));
        assert_eq!(g.check(i, Some("node-token-0000001"), false), Ok(()));
        assert_eq!(
            g.check(q, None, false),
            Err(Refusal::Unauthenticated("a bearer token is required"))
        );
        assert_eq!(
            g.check(q, Some("querier-token-0002"), false),
            Err(Refusal::Unauthenticated("invalid token"))
        );
        assert_eq!(g.check(Need::Open, None, false), Ok(()));
        // Without the client CA, a certificate is nothing; with it, it is a machine.
        let g = guard("querier-token-0001 query\n", true);
        assert_eq!(g.check(c, None, true), Ok(()));
        assert_eq!(g.check(c, Some("querier-token-0001"), true), Ok(()));
        assert!(g.check(q, None, true).is_err(), "queries need a token");
        let certs_only = Guard {
            client_certs: true,
            ..Guard::default()
        };
        assert_eq!(certs_only.check(q, None, false), Ok(()));
        assert!(matches!(
            certs_only.check(c, None, false),
            Err(Refusal::Forbidden(_))
        ));
        assert_eq!(certs_only.check(i, None, true), Ok(()));
        assert_eq!(Guard::default().check(c, None, false), Ok(()));
    }

    #[test]
    fn paths_need_their_roles() {
        use Need::*;
        for (p, n) in [
            ("/health", Open),
            ("/ui/app.js", Open),
            ("/metrics", Open),
            ("/store/query", Role(super::Role::Query)),
            ("/store/topics", Role(super::Role::Query)),
            ("/store/_query", Role(super::Role::Cluster)),
            ("/store/replicate", Role(super::Role::Cluster)),
            ("/ingest/next", Role(super::Role::Cluster)),
            ("/ingest/_clusterstate", Role(super::Role::Cluster)),
            ("/loki/api/v1/push", Role(super::Role::Ingest)),
            ("/loki/api/v1/query_range", Role(super::Role::Query)),
            ("/select/loki/api/v1/labels", Role(super::Role::Query)),
            ("/insert/elasticsearch/_bulk", Role(super::Role::Ingest)),
            ("/v1/logs", Role(super::Role::Ingest)),
            ("/nowhere", Role(super::Role::Query)),
        ] {
            assert_eq!(need(p, false), n, "{p}");
        }
        assert_eq!(need("/metrics", true), Anyone);
        assert_eq!(bearer(b"Bearer abc "), Some("abc"));
        assert_eq!(bearer(b"bearer abc"), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }
}

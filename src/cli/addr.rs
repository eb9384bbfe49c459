//! Address parsing for every flag and argument that names a listener or a peer.
//!
//! Accepts what the original accepted (`host`, `host:port`, `scheme://host[:port]`) and also a
//! bare `1.2.3.4:7651`, `:7650` and `[::1]:7650`, which the original rejected.

use std::fmt;

/// A parsed address: network (URL scheme, `tcp` by default), host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    /// `tcp`, or a scheme such as `udp` or `tcp+dns` kept verbatim.
    pub network: String,
    /// Host name or IP literal, without brackets; empty means all interfaces.
    pub host: String,
    /// Port number (0 lets the OS pick one).
    pub port: u16,
}

impl Addr {
    /// `host:port`, with brackets around IPv6 literals.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The address to listen on (an empty host means every interface).
    pub fn listen_addr(&self) -> String {
        if self.host.is_empty() {
            format!("0.0.0.0:{}", self.port)
        } else {
            self.host_port()
        }
    }

    /// The network without a `+suffix` (`tcp+dns` → `tcp`).
    pub fn base_network(&self) -> &str {
        self.network.split('+').next().unwrap_or("tcp")
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.network, self.host_port())
    }
}

/// Parse `addr`, adding `default_port` when it has none.
pub fn parse_addr(addr: &str, default_port: u16) -> Result<Addr, String> {
    let bad = || format!("{addr}: unsupported address format");
    let lower = addr.trim().to_ascii_lowercase();
    let (network, rest) = match lower.split_once("://") {
        Some((scheme, rest)) => {
            if scheme.is_empty()
                || !scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
            {
                return Err(bad());
            }
            (scheme.to_string(), rest.trim_end_matches('/'))
        }
        None => ("tcp".to_string(), lower.as_str()),
    };
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else if rest.matches(':').count() > 1 {
        // Only an unbracketed IPv6 literal such as `::` may hold several colons.
        if rest.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        (rest, None)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if network == "tcp" && host.is_empty() && port.is_none() {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("{addr}: invalid port {p:?}"))?,
        None => default_port,
    };
    Ok(Addr {
        network,
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addr_table() {
        // TestParseAddr, plus the forms the original could not parse.
        let cases: &[(&str, u16, &str, &str, u16)] = &[
            ("foo", 123, "tcp", "foo", 123),
            ("foo:80", 123, "tcp", "foo", 80),
            ("udp://foo", 123, "udp", "foo", 123),
            ("udp://foo:8080", 123, "udp", "foo", 8080),
            (
                "tcp+dnssrv://testing:7650",
                7650,
                "tcp+dnssrv",
                "testing",
                7650,
            ),
            ("1.2.3.4:7651", 7650, "tcp", "1.2.3.4", 7651),
            ("1.2.3.4", 7650, "tcp", "1.2.3.4", 7650),
            ("tcp://1.2.3.4:1234", 7650, "tcp", "1.2.3.4", 1234),
            ("tcp://0.0.0.0:7650/", 1, "tcp", "0.0.0.0", 7650),
            (":7650", 1, "tcp", "", 7650),
            ("127.0.0.1:0", 7650, "tcp", "127.0.0.1", 0),
            ("[::1]:9", 7650, "tcp", "::1", 9),
            ("::", 7659, "tcp", "::", 7659),
            ("LocalHost:1", 7650, "tcp", "localhost", 1),
        ];
        for (input, def, net, host, port) in cases {
            let a = parse_addr(input, *def).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (a.network.as_str(), a.host.as_str(), a.port),
                (*net, *host, *port),
                "{input}"
            );
        }
        assert_eq!(parse_addr("[::1]:9", 1).unwrap().host_port(), "[::1]:9");
        for bad in [
            "",
            "foo:bar",
            "foo:70000",
            "http://a/b",
            "://x",
            "a b://c",
            "host:port:x",
        ] {
            assert!(parse_addr(bad, 1).is_err(), "{bad:?} parsed");
        }
    }
}

//! Which address a node advertises to the cluster (DESIGN.md §10 "Addresses").
//!
//! Without `-peer` a node advertises loopback and reaches itself over it, whatever it binds
//! to. With `-peer`: an explicit `-cluster.advertise-addr` wins (an IP, or a name resolved
//! now); else a specific bind IP (or name); else, bound to all interfaces, the local address
//! the system would use to reach the first peer (a UDP `connect`, which sends nothing); else a
//! clear error asking for `-cluster.advertise-addr`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// Whether `host` (an IP or name, no port) is loopback or unspecified: unreachable by others.
pub fn is_unroutable(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => false,
    }
}

/// Whether any of `peers` (`host` or `host:port`) is not on this machine.
pub fn has_nonlocal(peers: &[String]) -> bool {
    peers.iter().any(|p| {
        let host = match p.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
            _ => p.as_str(),
        };
        !is_unroutable(host)
    })
}

/// Why the address to advertise cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// A name that does not resolve.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// A name that resolves to nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// The address of a flag, with the flag's name.
    #[error("{flag}: {source}")]
    Flag {
        /// `-cluster.advertise-addr` or `-cluster`.
        flag: &'static str,
        /// Why.
        source: Box<AdvertiseError>,
    },
    /// No local address reaches any peer.
    #[error("cannot find a local address that reaches the peers; set -cluster.advertise-addr")]
    Unreachable,
}

/// `host` as an IP, or the first address (IPv4 preferred) it resolves to.
pub fn resolve(host: &str) -> Result<IpAddr, AdvertiseError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|source| AdvertiseError::Resolve {
            host: host.to_string(),
            source,
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip())
        .ok_or_else(|| AdvertiseError::NoAddress(host.to_string()))
}

/// The IP to advertise. `bind_host` is the `-cluster` host, `advertise_host` the host part of
/// `-cluster.advertise-addr` (empty for none), `peers` the resolved `-peer` addresses.
pub fn advertise_ip(
    bind_host: &str,
    advertise_host: &str,
    peers: &[SocketAddr],
) -> Result<IpAddr, AdvertiseError> {
    let flag = |flag| {
        move |e| AdvertiseError::Flag {
            flag,
            source: Box::new(e),
        }
    };
    if peers.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    if !advertise_host.is_empty() {
        return resolve(advertise_host).map_err(flag("-cluster.advertise-addr"));
    }
    if !bind_host.is_empty() {
        let ip = resolve(bind_host).map_err(flag("-cluster"))?;
        if !ip.is_unspecified() {
            return Ok(ip);
        }
    }
    let probe = |peer: &SocketAddr| -> Option<IpAddr> {
        let any: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .ok()?;
        let s = UdpSocket::bind(any).ok()?;
        s.connect(peer).ok()?;
        s.local_addr()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
    };
    peers
        .iter()
        .find_map(probe)
        .ok_or(AdvertiseError::Unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unroutable() {
        // TestIsUnroutable.
        for h in ["0.0.0.0", "127.0.0.1", "127.128.129.130", "localhost", "::"] {
            assert!(is_unroutable(h), "{h}");
        }
        assert!(!is_unroutable("foo"));
        assert!(!is_unroutable("10.1.2.3"));
    }

    #[test]
    fn nonlocal() {
        // TestHasNonlocal.
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for local in [
            &[][..],
            &["127.0.0.9"],
            &["127.0.0.1:1234"],
            &["localhost"],
            &["localhost:1234", "127.0.0.1"],
        ] {
            assert!(!has_nonlocal(&s(local)), "{local:?}");
        }
        for remote in [
            &["1.2.3.4"][..],
            &["1.2.3.4:5678"],
            &["foo.corp"],
            &["foo.corp:7659"],
            &["localhost", "1.2.3.4"],
        ] {
            assert!(has_nonlocal(&s(remote)), "{remote:?}");
        }
    }

    #[test]
    fn advertise_choice() {
        // TestCalculateAdvertiseAddr, without a mock resolver: literal addresses only.
        let peer: Vec<SocketAddr> = vec!["127.0.0.1:7659".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            advertise_ip("0.0.0.0", "", &[]).unwrap(),
            ip("127.0.0.1"),
            "no peers: loopback"
        );
        assert_eq!(advertise_ip("1.2.3.4", "", &peer).unwrap(), ip("1.2.3.4"));
        assert_eq!(advertise_ip("10.1.2.3", "", &peer).unwrap(), ip("10.1.2.3"));
        assert_eq!(
            advertise_ip("0.0.0.0", "2.3.4.5", &peer).unwrap(),
            ip("2.3.4.5")
        );
        assert_eq!(
            advertise_ip("188.177.166.155", "10.11.12.13", &peer).unwrap(),
            ip("10.11.12.13")
        );
        assert_eq!(
            advertise_ip("::", "172.16.1.1", &peer).unwrap(),
            ip("172.16.1.1")
        );
        assert_eq!(
            advertise_ip("0.0.0.0", "", &peer).unwrap(),
            ip("127.0.0.1"),
            "routes to the peer"
        );
        assert!(advertise_ip("0.0.0.0", "", &peer).unwrap().is_loopback());
    }
}

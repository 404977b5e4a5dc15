//! ICE server configuration: the W3C `RTCIceServer` shape and its URLs
//!
//! Only what meshrtc speaks is accepted: `stun:HOST[:PORT]` and
//! `turn:HOST[:PORT][?transport=udp]` (UDP to the server). Anything else — `turns:`, `stuns:`,
//! `?transport=tcp`, a missing host — is a clear [`UrlError`], never silently dropped.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default port of STUN and TURN over UDP (RFC 8489 §9, RFC 8656 §4)
pub const DEFAULT_PORT: u16 = 3478;

/// One ICE server as an application configures it (W3C `RTCIceServer`)
///
///
/// It is also the signaling contract's `ice_servers` entry ([`crate::signal::IceServer`]):
/// `urls` is an array on the wire, and one string is accepted when parsing, as browsers do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:HOST:PORT` or `turn:HOST:PORT?transport=udp` URLs of one server
    #[serde(deserialize_with = "crate::signal::string_or_strings")]
    pub urls: Vec<String>,
    /// TURN username (for TURN REST credentials: `"<expiry>:<id>"`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl IceServer {
    /// A server with one URL and no credentials
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            username: None,
            credential: None,
        }
    }

    /// A server with one URL and TURN credentials
    pub fn with_credentials(
        url: impl Into<String>,
        username: impl Into<String>,
        credential: impl Into<String>,
    ) -> Self {
        Self {
            urls: vec![url.into()],
            username: Some(username.into()),
            credential: Some(credential.into()),
        }
    }

    /// Parses every URL of this server, attaching its credentials to the TURN ones
    ///
    /// A `turn:` URL without both `username` and `credential` is an error
    /// ([`UrlError::MissingCredentials`]), as in browsers.
    pub fn endpoints(&self) -> Result<Vec<ServerEndpoint>, UrlError> {
        let mut out = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let parsed = ServerUrl::parse(url)?;
            let credentials = match parsed.scheme {
                Scheme::Stun => None,
                Scheme::Turn => match (&self.username, &self.credential) {
                    (Some(u), Some(c)) => Some(TurnCredentials {
                        username: u.clone(),
                        password: c.clone(),
                    }),
                    _ => return Err(UrlError::MissingCredentials(url.clone())),
                },
            };
            out.push(ServerEndpoint {
                url: parsed,
                credentials,
            });
        }
        Ok(out)
    }
}

/// Which local candidates are used (W3C `iceTransportPolicy`)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IceTransportPolicy {
    /// Host, server-reflexive and relayed candidates
    #[default]
    All,
    /// Relayed candidates only: no host or server-reflexive candidate is offered, and no
    /// STUN server is asked
    Relay,
}

impl std::str::FromStr for IceTransportPolicy {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Self::All),
            "relay" => Ok(Self::Relay),
            other => Err(UrlError::BadPolicy(other.to_owned())),
        }
    }
}

/// STUN or TURN
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `stun:`: server-reflexive candidates only
    Stun,
    /// `turn:`: relayed candidates (and a server-reflexive one from the allocation)
    Turn,
}

/// Where a server is: a literal IP or a name the driver resolves
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal address (`[::1]` in a URL for IPv6)
    Ip(IpAddr),
    /// A DNS name; the core never resolves names, the driver does
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// A parsed `stun:` or `turn:` URL (RFC 7064, RFC 7065), UDP only
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    /// STUN or TURN
    pub scheme: Scheme,
    /// The server's host
    pub host: Host,
    /// The server's port ([`DEFAULT_PORT`] when the URL has none)
    pub port: u16,
}

impl ServerUrl {
    /// Parses `stun:HOST[:PORT]` or `turn:HOST[:PORT][?transport=udp]`
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let bad = |why: &'static str| UrlError::Malformed {
            url: url.to_owned(),
            why,
        };
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| bad("no scheme (want stun: or turn:)"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => Scheme::Stun,
            "turn" => Scheme::Turn,
            "stuns" | "turns" => return Err(UrlError::Unsupported(url.to_owned())),
            _ => return Err(bad("unknown scheme (want stun: or turn:)")),
        };
        if rest.starts_with("//") {
            return Err(bad("stun:/turn: URLs have no \"//\""));
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        if let Some(query) = query {
            if scheme == Scheme::Stun {
                return Err(bad("a stun: URL takes no query"));
            }
            match query.to_ascii_lowercase().as_str() {
                "transport=udp" => {}
                "transport=tcp" => return Err(UrlError::Unsupported(url.to_owned())),
                _ => return Err(bad("the only query is ?transport=udp")),
            }
        }
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        Ok(Self { scheme, host, port })
    }

    /// The server's socket address when the host is a literal IP
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Stun => write!(f, "stun:{}:{}", self.host, self.port),
            Scheme::Turn => write!(f, "turn:{}:{}?transport=udp", self.host, self.port),
        }
    }
}

fn split_host_port(s: &str) -> Option<(Host, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() || host.contains(':') {
            return None;
        }
        let host = match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => {
                let ok = host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !ok || host.len() > 253 {
                    return None;
                }
                Host::Name(host.to_ascii_lowercase())
            }
        };
        (host, port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return None,
            Ok(p) => p,
        },
    };
    Some((host, port))
}

/// Long-term credentials for a TURN server (RFC 8489 §9.2)
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TurnCredentials {
    /// The username
    pub username: String,
    /// The password
    pub password: String,
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password stays out of logs.
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One parsed server URL with the credentials it needs
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerEndpoint {
    /// The URL
    pub url: ServerUrl,
    /// TURN credentials (`None` for STUN)
    pub credentials: Option<TurnCredentials>,
}

impl ServerEndpoint {
    /// The server at a resolved address, ready for [`Gatherer::add_server`](super::Gatherer::add_server)
    ///
    /// For a literal-IP URL pass [`ServerUrl::socket_addr`]; for a name, the address the
    /// driver resolved.
    pub fn resolved(&self, addr: SocketAddr) -> ResolvedServer {
        ResolvedServer {
            addr,
            kind: match &self.credentials {
                Some(c) if self.url.scheme == Scheme::Turn => ServerKind::Turn(c.clone()),
                _ => ServerKind::Stun,
            },
        }
    }
}

/// A driver's answer for one server whose host is a name ([`Host::Name`]): the addresses it
/// resolved to, or why it could not
///
/// The core never resolves names. It asks its driver with
/// [`Output::Resolve`](crate::Output::Resolve) and takes the answers back with
/// [`Input::Resolved`](crate::Input::Resolved); which address is used (one of a family the
/// socket has) is the core's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The server, as it was handed to the driver
    pub endpoint: ServerEndpoint,
    /// Its addresses (with the URL's port), or what the resolver said
    pub addrs: Result<Vec<SocketAddr>, String>,
}

impl ServerEndpoint {
    /// The name to look up and the port, when the host is a name (`None` for a literal IP)
    pub fn lookup(&self) -> Option<(&str, u16)> {
        match &self.url.host {
            Host::Name(n) => Some((n.as_str(), self.url.port)),
            Host::Ip(_) => None,
        }
    }
}

/// What a server is used for
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// STUN binding requests for a server-reflexive candidate
    Stun,
    /// A TURN allocation for a relayed candidate (and a server-reflexive one)
    Turn(TurnCredentials),
}

/// A STUN or TURN server at a socket address
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedServer {
    /// The server's UDP address
    pub addr: SocketAddr,
    /// STUN or TURN (with credentials)
    pub kind: ServerKind,
}

impl ResolvedServer {
    /// A STUN server
    pub fn stun(addr: SocketAddr) -> Self {
        Self {
            addr,
            kind: ServerKind::Stun,
        }
    }

    /// A TURN server with long-term credentials
    pub fn turn(addr: SocketAddr, username: &str, password: &str) -> Self {
        Self {
            addr,
            kind: ServerKind::Turn(TurnCredentials {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
        }
    }
}

/// A server URL or policy that meshrtc cannot use
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a `stun:`/`turn:` URL or otherwise malformed
    #[error("bad ice server url {url:?}: {why}")]
    Malformed {
        /// The URL as given
        url: String,
        /// What is wrong
        why: &'static str,
    },
    /// A valid URL for a transport meshrtc does not speak (TLS, TCP)
    #[error("unsupported ice server url {0:?}: only stun: and turn: over udp")]
    Unsupported(String),
    /// A `turn:` URL without both a username and a credential
    #[error("turn server {0:?} needs a username and a credential")]
    MissingCredentials(String),
    /// An `iceTransportPolicy` other than `all` or `relay`
    #[error("bad ice transport policy {0:?} (want all or relay)")]
    BadPolicy(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ServerUrl {
        ServerUrl::parse(s).unwrap()
    }

    #[test]
    fn parses_stun_and_turn_urls() {
        let u = url("stun:127.0.0.1:3479");
        assert_eq!(u.scheme, Scheme::Stun);
        assert_eq!(u.socket_addr(), Some("127.0.0.1:3479".parse().unwrap()));
        let u = url("turn:turn.example.org?transport=udp");
        assert_eq!(u.scheme, Scheme::Turn);
        assert_eq!(u.host, Host::Name("turn.example.org".into()));
        assert_eq!(u.port, DEFAULT_PORT);
        assert_eq!(u.socket_addr(), None);
        let u = url("TURN:[::1]:5000");
        assert_eq!(u.socket_addr(), Some("[::1]:5000".parse().unwrap()));
        assert_eq!(u.to_string(), "turn:[::1]:5000?transport=udp");
        assert_eq!(url("stun:[2001:db8::1]").port, DEFAULT_PORT);
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        for bad in [
            "http://x",
            "stun:",
            "stun://host:1",
            "stun:host:0",
            "stun:host:99999",
            "stun:host:1?transport=udp",
            "turn:host:1?foo=bar",
            "turn:::1:3478",
            "turn:[::1",
            "turn:ho st",
            "3478",
        ] {
            assert!(
                matches!(ServerUrl::parse(bad), Err(UrlError::Malformed { .. })),
                "{bad}"
            );
        }
        for unsupported in ["turns:host:5349", "stuns:host", "turn:host?transport=tcp"] {
            assert_eq!(
                ServerUrl::parse(unsupported),
                Err(UrlError::Unsupported(unsupported.into()))
            );
        }
    }

    #[test]
    fn turn_needs_credentials() {
        let s = IceServer::new("turn:127.0.0.1:3478");
        assert!(matches!(
            s.endpoints(),
            Err(UrlError::MissingCredentials(_))
        ));
        let s = IceServer {
            urls: vec!["stun:127.0.0.1:1".into(), "turn:127.0.0.1:2".into()],
            username: Some("u".into()),
            credential: Some("p".into()),
        };
        let e = s.endpoints().unwrap();
        assert_eq!(e[0].credentials, None);
        assert_eq!(e[1].credentials.as_ref().unwrap().username, "u");
        let r = e[1].resolved(e[1].url.socket_addr().unwrap());
        assert_eq!(
            r,
            ResolvedServer::turn("127.0.0.1:2".parse().unwrap(), "u", "p")
        );
        assert!(!format!("{:?}", e[1]).contains("\"p\""));
    }

    #[test]
    fn json_shape_is_rtc_ice_server() {
        let s: IceServer =
            serde_json::from_str(r#"{"urls":["stun:1.2.3.4:3478"],"username":"u"}"#).unwrap();
        assert_eq!(s.username.as_deref(), Some("u"));
        assert_eq!(s.credential, None);
        let back = serde_json::to_string(&IceServer::new("stun:1.2.3.4:3478")).unwrap();
        assert_eq!(back, r#"{"urls":["stun:1.2.3.4:3478"]}"#);
        assert_eq!("relay".parse(), Ok(IceTransportPolicy::Relay));
        assert!("none".parse::<IceTransportPolicy>().is_err());
    }
}

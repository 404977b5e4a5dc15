//! What meshrtc's drivers share beyond the sans-IO core
//!
//! The core ([`meshrtc::session::Session`]) makes every protocol decision; a driver waits and
//! does IO. The two drivers (`meshrtc-tokio`, `meshrtc-blocking`) wait differently but set
//! up the same things, so that part lives here once: the session configuration both take,
//! binding the UDP socket and finding its local addresses (the host candidates), resolving
//! STUN/TURN server names when the session asks, checking the signaling URL, and the error
//! type both return.
#![deny(missing_docs)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use meshrtc::ice::{Resolution, ServerEndpoint};
use meshrtc::CandidatePolicy;

use meshrtc::clock::SharedClock;
use meshrtc::session::JoinError;
use meshrtc::signal::RoomId;
use meshrtc::CommandError;
use socket2::{Domain, Protocol, Socket, Type};

/// Default size of a UDP socket's kernel receive and send buffers
///
/// Linux's default (208 KiB) overflows on loopback when a data channel sends at full rate,
/// and every drop stalls SCTP for a retransmission timeout.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Default number of application commands queued between a handle and its driver
///
/// When the queue is full, sending waits: that is the back-pressure an application sees
/// when a peer's channel cannot keep up.
pub const DEFAULT_COMMAND_QUEUE: usize = 1024;

/// How a driver's session is set up
///
/// # Example
///
/// ```
/// use meshrtc::ice::IceServer;
/// use meshrtc::signal::{PeerId, RoomId};
/// use meshrtc_driver::SessionConfig;
///
/// let mut config = SessionConfig::new("ws://127.0.0.1:8787/", RoomId::new("demo").unwrap());
/// config.session.peer_id = Some(PeerId::new("alice").unwrap());
/// config.session.participant.capabilities.video = false; // audio and data only
/// config.session.participant.ice_servers.push(IceServer::new("stun:stun.example.org:3478"));
/// assert!(config.check().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The signaling server, `ws://host:port/`
    pub signal_url: String,
    /// Where the UDP socket binds (default `127.0.0.1:0`)
    ///
    /// A specific unicast address is the only host candidate. The wildcard binds every
    /// interface: `[::]:P` one dual-stack socket for IPv4 and IPv6, `0.0.0.0:P` IPv4 only;
    /// each usable interface address is then a host candidate ([`local_addresses`]), and
    /// every datagram's local address is read from the kernel (`IP_PKTINFO`). Only
    /// `meshrtc-tokio` binds the wildcard.
    pub bind: SocketAddr,
    /// Kernel receive and send buffer size of the UDP socket
    pub socket_buffer: usize,
    /// Application commands queued between the handle and the driver
    pub command_queue: usize,
    /// Where the driver reads the time; `None` is the driver's own clock (tokio's, which
    /// tests can pause, or the operating system's)
    pub clock: Option<SharedClock>,
    /// The sans-IO session: room, peer id, participant configuration, timeouts, reconnect
    /// backoff, event bound, test media
    pub session: meshrtc::session::SessionConfig,
}

impl SessionConfig {
    /// A configuration with defaults for everything but the server and the room
    pub fn new(signal_url: impl Into<String>, room: RoomId) -> Self {
        Self {
            signal_url: signal_url.into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            command_queue: DEFAULT_COMMAND_QUEUE,
            clock: None,
            session: meshrtc::session::SessionConfig::new(room),
        }
    }

    /// Checks what can be checked before any IO: the URL, the bind address and the ICE
    /// server URLs
    pub fn check(&self) -> Result<()> {
        SignalUrl::parse(&self.signal_url)?;
        if self.bind.ip().is_multicast() {
            return Err(Error::BadBindAddress(self.bind));
        }
        for server in &self.session.participant.ice_servers {
            server.endpoints().map_err(Error::IceServer)?;
        }
        Ok(())
    }

    /// A name for the driver's threads: the peer id, or "peer"
    pub fn thread_name(&self, prefix: &str) -> String {
        let peer = self.session.peer_id.as_ref().map_or("peer", |p| p.as_str());
        // Thread names show in `top -H` and /proc (15 bytes at most there).
        let mut name = format!("{prefix}-{peer}");
        let mut end = name.len().min(15);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name
    }
}

/// A checked `ws://host:port/path` signaling URL
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalUrl {
    /// The host, without brackets for IPv6
    pub host: String,
    /// The port (80 when the URL has none)
    pub port: u16,
}

impl SignalUrl {
    /// Checks that `url` is a `ws://` URL with a host
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(bad("wss:// is not supported; use ws://")),
            Some(_) => return Err(bad("the scheme must be ws://")),
            None => return Err(bad("missing ws:// scheme")),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("missing host"))?;
        Ok(Self {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port: uri.port_u16().unwrap_or(80),
        })
    }
}

/// Binds a UDP socket on `addr` with kernel buffers of `buffer` bytes each way
///
/// A specific IPv6 address gets an IPv6-only socket (its address is the candidate); the
/// IPv6 wildcard `[::]` a dual-stack one, which receives IPv4 traffic under IPv4-mapped
/// addresses (the drivers map them back). Kernel limits (`net.core.rmem_max`) may give
/// smaller buffers; that is logged, not an error. The socket is blocking.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> Result<UdpSocket> {
    let err = |source| Error::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(!addr.ip().is_unspecified())
            .map_err(err)?;
    }
    for (what, set, get) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> io::Result<usize>,
        ),
        (
            "send",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        if let Err(e) = set(&socket, buffer) {
            tracing::warn!(%e, what, "cannot size udp socket buffer");
        }
        let got = get(&socket).unwrap_or(0);
        if got < buffer {
            // Info, not warn: the kernel's limit is the administrator's choice.
            tracing::info!(
                what,
                got,
                wanted = buffer,
                "udp buffer smaller than asked (see net.core.rmem_max/wmem_max)"
            );
        }
    }
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

/// The local addresses of a socket bound on `bound`: the host candidates to give the
/// session (`Participant::add_local_candidate`)
///
/// A specific address is the only one. For the wildcard, every address of every interface
/// that is up, with the socket's port: IPv4 for `0.0.0.0`, IPv4 and IPv6 for `[::]` (a
/// dual-stack socket). Link-local addresses are left out (they need a scope), and so are
/// loopback addresses unless the candidate policy is
/// [`CandidatePolicy::LoopbackOnly`] — browsers do not offer them either.
pub fn local_addresses(bound: SocketAddr, policy: CandidatePolicy) -> io::Result<Vec<SocketAddr>> {
    if !bound.ip().is_unspecified() {
        return Ok(vec![bound]);
    }
    let loopback_only = policy == CandidatePolicy::LoopbackOnly;
    let mut out = Vec::new();
    for ip in interface_addresses()? {
        let family_ok = bound.is_ipv6() || ip.is_ipv4();
        let link_local = match ip {
            IpAddr::V4(v) => v.is_link_local(),
            IpAddr::V6(v) => v.is_unicast_link_local(),
        };
        let usable = !(ip.is_unspecified() || ip.is_multicast() || link_local);
        if family_ok && usable && ip.is_loopback() == loopback_only {
            let addr = SocketAddr::new(ip, bound.port());
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

/// The addresses of the interfaces that are up
#[cfg(unix)]
fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    use nix::ifaddrs::getifaddrs;
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for ifa in getifaddrs().map_err(io::Error::from)? {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

#[cfg(not(unix))]
fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "listing interface addresses is implemented for unix only; bind a specific address",
    ))
}

/// Resolves STUN/TURN server names, blocking (the session's `Output::Resolve`); an
/// answer per endpoint, in order
///
/// Runs the system resolver (`getaddrinfo`): call it off the thread that drives the
/// session. `meshrtc-tokio` uses tokio's resolver instead.
pub fn resolve_blocking(endpoints: Vec<ServerEndpoint>) -> Vec<Resolution> {
    endpoints
        .into_iter()
        .map(|endpoint| {
            let addrs = match endpoint.lookup() {
                Some((host, port)) => (host, port)
                    .to_socket_addrs()
                    .map(Iterator::collect)
                    .map_err(|e| e.to_string()),
                None => Ok(endpoint.url.socket_addr().into_iter().collect()),
            };
            Resolution { endpoint, addrs }
        })
        .collect()
}

/// A datagram's addresses as the core wants them: IPv4-mapped IPv6 addresses (from a
/// dual-stack socket) as plain IPv4
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What a driver returns when a session cannot start or a command cannot be given
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the configuration ----
    /// The signaling URL is not a `ws://` URL with a host
    #[error("bad signaling url {url:?}: {reason}")]
    BadUrl {
        /// The URL given
        url: String,
        /// What is wrong with it
        reason: String,
    },
    /// The bind address cannot be used (multicast, or the wildcard where the driver binds
    /// specific addresses only)
    #[error("bind address {0} cannot be a host candidate: give a unicast address")]
    BadBindAddress(SocketAddr),
    /// An ICE server URL cannot be used
    #[error(transparent)]
    IceServer(meshrtc::ice::UrlError),

    // ---- the network or the server ----
    /// Joining failed (server unreachable, refused, signaling lost, timed out)
    #[error(transparent)]
    Join(#[from] JoinError),

    // ---- local resources ----
    /// The UDP socket could not be bound
    #[error("cannot bind udp socket on {addr}: {source}")]
    Bind {
        /// The address
        addr: SocketAddr,
        /// The operating system's error
        source: io::Error,
    },
    /// A driver thread could not be started
    #[error("cannot start a driver thread: {0}")]
    Spawn(io::Error),

    // ---- the caller ----
    /// The session has ended (left, or its driver stopped)
    #[error("the session has ended")]
    SessionEnded,
    /// The core refused a command
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The drivers' result type
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a driver waits for the join beyond the session's own join timeout, for its
/// threads to start and report
pub const JOIN_GRACE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_urls_are_checked() {
        let u = SignalUrl::parse("ws://127.0.0.1:8787/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8787));
        let u = SignalUrl::parse("ws://[::1]:9/rpc").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(SignalUrl::parse("ws://example.org").unwrap().port, 80);
        for bad in ["wss://a:1/", "http://a:1/", "a:1", "ws:///x", "not a url"] {
            assert!(
                matches!(SignalUrl::parse(bad), Err(Error::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn multicast_bind_addresses_and_bad_ice_urls_are_refused() {
        let room = RoomId::new("r").unwrap();
        let mut c = SessionConfig::new("ws://127.0.0.1:1/", room);
        c.bind = "0.0.0.0:0".parse().unwrap();
        assert!(c.check().is_ok(), "the wildcard is every interface");
        c.bind = "224.0.0.1:0".parse().unwrap();
        assert!(matches!(c.check(), Err(Error::BadBindAddress(_))));
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.session.participant.ice_servers = vec![meshrtc::ice::IceServer::new("turn:x:1")];
        assert!(matches!(c.check(), Err(Error::IceServer(_))));
    }

    #[test]
    fn wildcard_sockets_have_every_interface_address() {
        let specific: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            local_addresses(specific, CandidatePolicy::Any).unwrap(),
            [specific]
        );
        let v4 = local_addresses(
            "0.0.0.0:5000".parse().unwrap(),
            CandidatePolicy::LoopbackOnly,
        )
        .unwrap();
        assert!(v4.contains(&"127.0.0.1:5000".parse().unwrap()), "{v4:?}");
        assert!(v4.iter().all(|a| a.is_ipv4() && a.ip().is_loopback()));
        let any = local_addresses("[::]:5000".parse().unwrap(), CandidatePolicy::Any).unwrap();
        assert!(any
            .iter()
            .all(|a| !a.ip().is_loopback() && a.port() == 5000));
        assert!(!any
            .iter()
            .any(|a| matches!(a.ip(), IpAddr::V6(v) if v.is_unicast_link_local())));
        // A dual-stack socket is bound and reachable over IPv4.
        let s = bind_udp("[::]:0".parse().unwrap(), 1 << 16).unwrap();
        let port = s.local_addr().unwrap().port();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"x", ("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0; 4];
        let (_, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!(canonical(from), c.local_addr().unwrap());
    }

    #[test]
    fn literal_servers_resolve_without_dns_and_names_through_the_system() {
        let server = meshrtc::ice::IceServer::with_credentials("turn:192.0.2.1:3478", "u", "p");
        let ep = server.endpoints().unwrap().remove(0);
        let r = resolve_blocking(vec![ep]);
        assert_eq!(r[0].addrs, Ok(vec!["192.0.2.1:3478".parse().unwrap()]));
        // `localhost` comes from /etc/hosts: no query leaves the machine.
        let ep = meshrtc::ice::IceServer::new("stun:localhost:3479")
            .endpoints()
            .unwrap()
            .remove(0);
        let r = resolve_blocking(vec![ep]);
        let addrs = r[0].addrs.as_ref().unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 3479),
            "{addrs:?}"
        );
    }

    #[test]
    fn bound_sockets_get_their_buffers() {
        let s = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert!(s.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn thread_names_fit_the_kernel_limit() {
        let mut c = SessionConfig::new("ws://127.0.0.1:1/", RoomId::new("r").unwrap());
        c.session.peer_id = Some(meshrtc::signal::PeerId::new("a-very-long-peer-name").unwrap());
        assert_eq!(c.thread_name("mrb-core"), "mrb-core-a-very");
    }
}

//! NATs as a property of a host (RFC 4787 behaviours) and public STUN/TURN server hosts
//!
//! A host behind a [`NatConfig`] keeps its private address; every datagram it sends leaves
//! from a public address of its NAT (`127.200.x.y`, one per NATed host) through a mapping,
//! and a datagram to that public address reaches the host only through a live mapping whose
//! filter lets it in. The private address is not routable from anywhere else.
//!
//! - **Mapping**: endpoint-independent (one public port per private address, whatever the
//!   destination: cone NATs) or address-and-port-dependent (a new public port for every
//!   destination: symmetric NATs).
//! - **Filtering**: endpoint-independent (anyone may send to a mapping), address-dependent
//!   (only IPs the host sent to) or address-and-port-dependent (only exact addresses the
//!   host sent to).
//! - **Timeouts**: a mapping, and each destination's filter entry, lives `timeout` after the
//!   last datagram the host sent through it (inbound traffic does not refresh it, as
//!   RFC 4787 REQ-6 allows); a datagram sent after that gets a new mapping with a new port.
//!
//! A [`TurnServerSpec`] host runs the sans-IO `turn-server-proto` server (STUN binding, TURN
//! allocations over UDP with long-term credentials, permissions, channels, refresh) in
//! virtual time at `127.250.0.n:3478`, relaying from ports 49152 and up of the same IP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer;
use turn_server_proto::stun::agent::Transmit as TurnTransmit;
use turn_server_proto::stun::Instant as TurnInstant;
use turn_server_proto::types::stun::TransportType;

/// How a NAT picks the public address of an outgoing datagram (RFC 4787 section 4.1)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatMapping {
    /// One public port per private address, whatever the destination (cone NATs)
    EndpointIndependent,
    /// A new public port for every destination address and port (symmetric NATs)
    AddressAndPortDependent,
}

/// Which inbound datagrams a NAT lets through a mapping (RFC 4787 section 5)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatFiltering {
    /// From anywhere (full cone)
    EndpointIndependent,
    /// Only from IPs the host sent to through the mapping (restricted cone)
    AddressDependent,
    /// Only from exact addresses the host sent to through the mapping (port-restricted cone,
    /// symmetric)
    AddressAndPortDependent,
}

/// A NAT in front of one host
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// How outgoing datagrams are mapped
    pub mapping: NatMapping,
    /// Which incoming datagrams get through
    pub filtering: NatFiltering,
    /// How long a mapping (and a destination's filter entry) lives after the last datagram
    /// the host sent through it
    pub timeout: Duration,
}

impl NatConfig {
    /// Default mapping timeout (RFC 4787 REQ-5 asks for at least 2 minutes)
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// Endpoint-independent mapping and filtering
    pub fn full_cone() -> Self {
        Self::new(
            NatMapping::EndpointIndependent,
            NatFiltering::EndpointIndependent,
        )
    }

    /// Endpoint-independent mapping, address-dependent filtering
    pub fn restricted_cone() -> Self {
        Self::new(
            NatMapping::EndpointIndependent,
            NatFiltering::AddressDependent,
        )
    }

    /// Endpoint-independent mapping, address-and-port-dependent filtering (the common home
    /// router: direct connections work through server-reflexive candidates)
    pub fn port_restricted_cone() -> Self {
        Self::new(
            NatMapping::EndpointIndependent,
            NatFiltering::AddressAndPortDependent,
        )
    }

    /// Address-and-port-dependent mapping and filtering (direct connections between two of
    /// these fail: TURN is needed)
    pub fn symmetric() -> Self {
        Self::new(
            NatMapping::AddressAndPortDependent,
            NatFiltering::AddressAndPortDependent,
        )
    }

    fn new(mapping: NatMapping, filtering: NatFiltering) -> Self {
        Self {
            mapping,
            filtering,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// What a host's NAT did so far
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings created (a new public port)
    pub mappings: u64,
    /// Mappings that timed out
    pub expired: u64,
    /// Datagrams translated on the way out
    pub outbound: u64,
    /// Datagrams translated on the way in
    pub inbound: u64,
    /// Inbound datagrams dropped: no live mapping at that port
    pub no_mapping: u64,
    /// Inbound datagrams dropped by the filter
    pub filtered: u64,
}

#[derive(Debug)]
struct Mapping {
    internal: SocketAddr,
    /// Destinations sent to, with the virtual time (ns) of the last datagram
    sent_to: BTreeMap<SocketAddr, u64>,
    last_out: u64,
}

/// One host's NAT: its public IP, live mappings by public port
#[derive(Debug)]
pub(crate) struct Nat {
    pub(crate) config: NatConfig,
    pub(crate) public_ip: IpAddr,
    next_port: u16,
    by_port: BTreeMap<u16, Mapping>,
    /// `(private address, destination if the mapping depends on it)` → public port
    by_key: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    pub(crate) stats: NatStats,
}

/// First public port a NAT hands out
const FIRST_PORT: u16 = 20000;

impl Nat {
    pub(crate) fn new(config: NatConfig, public_ip: IpAddr, seed: u64) -> Self {
        Self {
            config,
            public_ip,
            // Where the ports start differs from NAT to NAT, as it does on real ones.
            next_port: FIRST_PORT + (seed % 10_000) as u16,
            by_port: BTreeMap::new(),
            by_key: BTreeMap::new(),
            stats: NatStats::default(),
        }
    }

    fn timeout_ns(&self) -> u64 {
        self.config.timeout.as_nanos() as u64
    }

    fn expired(&self, m: &Mapping, now: u64) -> bool {
        now.saturating_sub(m.last_out) > self.timeout_ns()
    }

    /// The public source address of a datagram from `internal` to `dest`, now (virtual ns)
    pub(crate) fn outbound(
        &mut self,
        now: u64,
        internal: SocketAddr,
        dest: SocketAddr,
    ) -> SocketAddr {
        let key = match self.config.mapping {
            NatMapping::EndpointIndependent => (internal, None),
            NatMapping::AddressAndPortDependent => (internal, Some(dest)),
        };
        let live = self.by_key.get(&key).copied().filter(|port| {
            self.by_port
                .get(port)
                .is_some_and(|m| !self.expired(m, now))
        });
        let port = match live {
            Some(port) => port,
            None => {
                if let Some(old) = self.by_key.remove(&key) {
                    self.by_port.remove(&old);
                    self.stats.expired += 1;
                }
                let port = self.free_port();
                self.by_port.insert(
                    port,
                    Mapping {
                        internal,
                        sent_to: BTreeMap::new(),
                        last_out: now,
                    },
                );
                self.by_key.insert(key, port);
                self.stats.mappings += 1;
                port
            }
        };
        let m = self
            .by_port
            .get_mut(&port)
            .expect("a live mapping was found or made above; panic means bug");
        m.last_out = now;
        m.sent_to.insert(dest, now);
        self.stats.outbound += 1;
        SocketAddr::new(self.public_ip, port)
    }

    /// The private destination of a datagram from `source` to the public `port`, if a live
    /// mapping's filter lets it in
    pub(crate) fn inbound(
        &mut self,
        now: u64,
        source: SocketAddr,
        port: u16,
    ) -> Option<SocketAddr> {
        let timeout = self.timeout_ns();
        let Some(m) = self.by_port.get(&port) else {
            self.stats.no_mapping += 1;
            return None;
        };
        if self.expired(m, now) {
            self.stats.no_mapping += 1;
            return None;
        }
        let fresh = |t: &u64| now.saturating_sub(*t) <= timeout;
        let allowed = match self.config.filtering {
            NatFiltering::EndpointIndependent => true,
            NatFiltering::AddressDependent => m
                .sent_to
                .iter()
                .any(|(d, t)| d.ip() == source.ip() && fresh(t)),
            NatFiltering::AddressAndPortDependent => m.sent_to.get(&source).is_some_and(fresh),
        };
        if !allowed {
            self.stats.filtered += 1;
            return None;
        }
        self.stats.inbound += 1;
        Some(m.internal)
    }

    fn free_port(&mut self) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = if self.next_port == u16::MAX {
                FIRST_PORT
            } else {
                self.next_port + 1
            };
            if !self.by_port.contains_key(&port) {
                return port;
            }
        }
    }
}

/// The public address of the NAT of the `n`-th NATed host
pub(crate) fn nat_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        200,
        (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// A STUN/TURN server host ([`crate::Sim::add_turn_server`])
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TurnServerSpec {
    /// Long-term credentials it accepts: `(username, password)`
    pub users: Vec<(String, String)>,
}

/// Index of a STUN/TURN server host in the simulation
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub usize);

/// What a server host did so far
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams received (on its listening address and its relayed addresses)
    pub received: u64,
    /// Datagrams sent
    pub sent: u64,
    /// Relayed addresses allocated
    pub allocations: u64,
}

/// The realm of every simulated TURN server
pub const TURN_REALM: &str = "sim.meshrtc";

/// A datagram a server host sends: `(from, to, bytes)`
pub(crate) type ServerDatagram = (SocketAddr, SocketAddr, Vec<u8>);

/// A public STUN/TURN server running in virtual time
#[derive(Debug)]
pub(crate) struct ServerHost {
    pub(crate) addr: SocketAddr,
    server: TurnServer,
    next_relay_port: u16,
    /// Virtual ns of the server's next deadline
    pub(crate) wake: Option<u64>,
    pub(crate) stats: ServerStats,
}

impl ServerHost {
    pub(crate) fn new(addr: SocketAddr, spec: &TurnServerSpec) -> Self {
        let mut server = TurnServer::new(TransportType::Udp, addr, TURN_REALM.to_owned());
        for (user, pass) in &spec.users {
            server.add_user(user.clone(), pass.clone());
        }
        Self {
            addr,
            server,
            next_relay_port: 49152,
            wake: None,
            stats: ServerStats::default(),
        }
    }

    fn instant(now: u64) -> TurnInstant {
        TurnInstant::from_nanos(now as i64)
    }

    /// A datagram from `from` to `to` (the listening address or a relayed one)
    pub(crate) fn receive(
        &mut self,
        now: u64,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) -> Vec<ServerDatagram> {
        self.stats.received += 1;
        let mut out = Vec::new();
        let t = TurnTransmit::new(bytes, TransportType::Udp, from, to);
        if let Some(reply) = self.server.recv(t, Self::instant(now)) {
            let reply = reply.build();
            // turn-server-proto 0.7.3 addresses its Binding success responses to its own
            // listening address (the request's destination) instead of the client; nothing
            // else it sends goes from its listening address to itself.
            let dest = if reply.to == self.addr && reply.from == self.addr {
                from
            } else {
                reply.to
            };
            out.push((reply.from, dest, reply.data));
        }
        self.poll(now, &mut out);
        self.stats.sent += out.len() as u64;
        out
    }

    /// The deadline came
    pub(crate) fn timeout(&mut self, now: u64) -> Vec<ServerDatagram> {
        let mut out = Vec::new();
        self.poll(now, &mut out);
        self.stats.sent += out.len() as u64;
        out
    }

    fn poll(&mut self, now: u64, out: &mut Vec<ServerDatagram>) {
        let instant = Self::instant(now);
        self.wake = None;
        // Bounded: every round either allocates, closes or ends the loop.
        for _ in 0..1024 {
            match self.server.poll(instant) {
                TurnServerPollRet::WaitUntil(t) => {
                    let at = u64::try_from(t.as_nanos()).unwrap_or(0);
                    // A deadline already due is met a millisecond on, so it cannot spin.
                    self.wake = Some(if at > now { at } else { now + 1_000_000 });
                    break;
                }
                TurnServerPollRet::AllocateSocket {
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                } => {
                    let relayed = SocketAddr::new(self.addr.ip(), self.next_relay_port);
                    self.next_relay_port = self.next_relay_port.wrapping_add(1).max(49152);
                    self.stats.allocations += 1;
                    self.server.allocated_socket(
                        transport,
                        listen_addr,
                        client_addr,
                        allocation_transport,
                        family,
                        Ok(relayed),
                        instant,
                    );
                }
                // UDP only: nothing to connect or close.
                TurnServerPollRet::TcpConnect { .. }
                | TurnServerPollRet::TcpClose { .. }
                | TurnServerPollRet::SocketClose { .. } => {}
            }
        }
        while let Some(t) = self.server.poll_transmit(instant) {
            out.push((t.from, t.to, t.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nat(config: NatConfig) -> Nat {
        Nat::new(config, "127.200.0.1".parse().unwrap(), 0)
    }

    #[test]
    fn cone_mapping_is_one_port_whatever_the_destination() {
        let mut n = nat(NatConfig::port_restricted_cone());
        let host = addr("127.0.1.1:5000");
        let a = n.outbound(0, host, addr("127.250.0.1:3478"));
        let b = n.outbound(S, host, addr("127.200.0.2:20000"));
        assert_eq!(a, b);
        assert_eq!(n.stats.mappings, 1);
    }

    #[test]
    fn symmetric_mapping_is_a_port_per_destination() {
        let mut n = nat(NatConfig::symmetric());
        let host = addr("127.0.1.1:5000");
        let a = n.outbound(0, host, addr("127.250.0.1:3478"));
        let b = n.outbound(S, host, addr("127.250.0.1:3479"));
        let c = n.outbound(2 * S, host, addr("127.250.0.1:3478"));
        assert_ne!(a.port(), b.port());
        assert_eq!(a, c);
        assert_eq!(n.stats.mappings, 2);
    }

    #[test]
    fn filtering_lets_in_what_it_should() {
        let host = addr("127.0.1.1:5000");
        let sent_to = addr("127.250.0.1:3478");
        let same_ip = addr("127.250.0.1:49152");
        let other = addr("127.200.0.9:20000");
        for (config, from_same_ip, from_other) in [
            (NatConfig::full_cone(), true, true),
            (NatConfig::restricted_cone(), true, false),
            (NatConfig::port_restricted_cone(), false, false),
            (NatConfig::symmetric(), false, false),
        ] {
            let mut n = nat(config);
            let public = n.outbound(0, host, sent_to);
            assert_eq!(
                n.inbound(S, sent_to, public.port()),
                Some(host),
                "{config:?}"
            );
            assert_eq!(n.inbound(S, same_ip, public.port()).is_some(), from_same_ip);
            assert_eq!(n.inbound(S, other, public.port()).is_some(), from_other);
            // No mapping at all at another port.
            assert_eq!(n.inbound(S, sent_to, public.port() + 1), None);
        }
    }

    #[test]
    fn mappings_time_out_without_outbound_traffic() {
        let mut config = NatConfig::port_restricted_cone();
        config.timeout = Duration::from_secs(30);
        let mut n = nat(config);
        let host = addr("127.0.1.1:5000");
        let server = addr("127.250.0.1:3478");
        let first = n.outbound(0, host, server);
        // Inbound traffic does not keep it alive.
        assert!(n.inbound(20 * S, server, first.port()).is_some());
        assert!(n.inbound(31 * S, server, first.port()).is_none());
        // Outbound traffic after the timeout gets a new mapping, a new port.
        let second = n.outbound(31 * S, host, server);
        assert_ne!(first, second);
        assert_eq!(n.stats.expired, 1);
        // Refreshed by outbound traffic, it stays.
        n.outbound(55 * S, host, server);
        assert!(n.inbound(80 * S, server, second.port()).is_some());
    }
}

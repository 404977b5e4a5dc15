//! A small in-memory STUN/TURN server for the participant-level tests: long-term
//! credentials with a 401 challenge, Allocate, Refresh, CreatePermission, ChannelBind, Send
//! and Data indications, ChannelData both ways — and the ways a server goes wrong
//! (garbage, refusals, silence)
#![allow(dead_code)] // reason: tests use different parts of it

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::stun::{self, attr, method, Builder, Class, Message};
use super::Datagram;

/// The realm of the fake server
pub(crate) const REALM: &str = "fake.test";

/// How the server behaves
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// As a TURN server should
    Normal,
    /// Answers every request with random-looking bytes
    Garbage,
    /// Refuses allocations with this error code (486, 508, ...)
    Refuse(u16),
    /// Answers nothing and relays nothing (vanished)
    Silent,
}

#[derive(Debug)]
struct Allocation {
    relayed: SocketAddr,
    /// Peer IPs with a permission
    permissions: Vec<IpAddr>,
    /// Channel number → peer
    channels: BTreeMap<u16, SocketAddr>,
}

/// A fake STUN/TURN server at one address, relaying on `ip:40000+`
#[derive(Debug)]
pub(crate) struct FakeTurn {
    pub(crate) addr: SocketAddr,
    user: String,
    key: [u8; 16],
    pub(crate) mode: Mode,
    lifetime: u32,
    /// Client 5-tuple (its address) → allocation
    allocations: BTreeMap<SocketAddr, Allocation>,
    next_port: u16,
    /// Requests received, by method
    pub(crate) requests: BTreeMap<u16, u32>,
    /// Allocations released with Refresh(0)
    pub(crate) released: u32,
    /// Datagrams relayed (either way)
    pub(crate) relayed: u32,
    /// Datagrams received at all
    pub(crate) received: u32,
}

impl FakeTurn {
    pub(crate) fn new(addr: SocketAddr, user: &str, password: &str) -> Self {
        Self {
            addr,
            user: user.to_owned(),
            key: stun::long_term_key(user, REALM, password),
            mode: Mode::Normal,
            lifetime: 600,
            allocations: BTreeMap::new(),
            next_port: 40000,
            requests: BTreeMap::new(),
            released: 0,
            relayed: 0,
            received: 0,
        }
    }

    /// Grants allocations of `secs`
    pub(crate) fn with_lifetime(mut self, secs: u32) -> Self {
        self.lifetime = secs;
        self
    }

    /// Allocations alive
    pub(crate) fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// Whether `addr` is the server's or one of its relayed addresses
    pub(crate) fn owns(&self, addr: SocketAddr) -> bool {
        addr == self.addr || self.allocations.values().any(|a| a.relayed == addr)
    }

    /// A datagram to the server or to one of its relayed addresses; returns what it sends
    pub(crate) fn handle(&mut self, d: &Datagram) -> Vec<Datagram> {
        self.received += 1;
        if self.mode == Mode::Silent {
            return Vec::new();
        }
        if d.destination != self.addr {
            return self.peer_datagram(d);
        }
        if let Some((number, payload)) = stun::parse_channel_data(&d.contents) {
            let Some(a) = self.allocations.get(&d.source) else {
                return Vec::new();
            };
            let Some(peer) = a.channels.get(&number).copied() else {
                return Vec::new();
            };
            self.relayed += 1;
            return vec![Datagram {
                source: a.relayed,
                destination: peer,
                contents: payload.to_vec(),
            }];
        }
        let Ok(msg) = Message::parse(&d.contents) else {
            return Vec::new();
        };
        *self.requests.entry(msg.method).or_default() += 1;
        if self.mode == Mode::Garbage {
            let mut junk = vec![0x01, 0x01, 0, 8, 0x21, 0x12, 0xA4, 0x42];
            junk.extend_from_slice(&msg.tid);
            junk.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
            return vec![self.reply_raw(d.source, junk)];
        }
        if msg.class == Class::Indication && msg.method == method::SEND {
            return self.send_indication(d.source, &msg);
        }
        if msg.class != Class::Request {
            return Vec::new();
        }
        let answer = match msg.method {
            method::BINDING => Builder::new(Class::Success, method::BINDING, msg.tid, 12)
                .xor_addr(attr::XOR_MAPPED_ADDRESS, d.source)
                .fingerprint()
                .finish(),
            m => {
                // Long-term credentials: a request without (valid) integrity is challenged.
                let user = msg.attr(attr::USERNAME);
                if user != Some(self.user.as_bytes()) || !msg.verify_integrity(&self.key) {
                    return vec![self.reply_raw(d.source, self.challenge(&msg))];
                }
                match m {
                    method::ALLOCATE => self.allocate(d.source, &msg),
                    method::REFRESH => self.refresh(d.source, &msg),
                    method::CREATE_PERMISSION => self.permission(d.source, &msg),
                    method::CHANNEL_BIND => self.channel_bind(d.source, &msg),
                    _ => self.error(&msg, 400),
                }
            }
        };
        vec![self.reply_raw(d.source, answer)]
    }

    fn reply_raw(&self, to: SocketAddr, contents: Vec<u8>) -> Datagram {
        Datagram {
            source: self.addr,
            destination: to,
            contents,
        }
    }

    fn challenge(&self, msg: &Message<'_>) -> Vec<u8> {
        Builder::new(Class::Error, msg.method, msg.tid, 64)
            .error_code(401, "Unauthorized")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, b"fake-nonce")
            .fingerprint()
            .finish()
    }

    fn error(&self, msg: &Message<'_>, code: u16) -> Vec<u8> {
        Builder::new(Class::Error, msg.method, msg.tid, 32)
            .error_code(code, "Refused")
            .integrity(&self.key)
            .fingerprint()
            .finish()
    }

    fn ok(&self, msg: &Message<'_>, f: impl FnOnce(&mut Builder)) -> Vec<u8> {
        let mut b = Builder::new(Class::Success, msg.method, msg.tid, 64);
        f(&mut b);
        b.integrity(&self.key).fingerprint().finish()
    }

    fn allocate(&mut self, client: SocketAddr, msg: &Message<'_>) -> Vec<u8> {
        if let Mode::Refuse(code) = self.mode {
            return self.error(msg, code);
        }
        let relayed = match self.allocations.get(&client) {
            Some(a) => a.relayed,
            None => {
                let relayed = SocketAddr::new(self.addr.ip(), self.next_port);
                self.next_port += 1;
                self.allocations.insert(
                    client,
                    Allocation {
                        relayed,
                        permissions: Vec::new(),
                        channels: BTreeMap::new(),
                    },
                );
                relayed
            }
        };
        let lifetime = self.lifetime;
        self.ok(msg, |b| {
            b.xor_addr(attr::XOR_RELAYED_ADDRESS, relayed)
                .xor_addr(attr::XOR_MAPPED_ADDRESS, client)
                .u32(attr::LIFETIME, lifetime);
        })
    }

    fn refresh(&mut self, client: SocketAddr, msg: &Message<'_>) -> Vec<u8> {
        if !self.allocations.contains_key(&client) {
            return self.error(msg, 437);
        }
        let lifetime = msg.u32(attr::LIFETIME).unwrap_or(self.lifetime);
        if lifetime == 0 {
            self.allocations.remove(&client);
            self.released += 1;
        }
        let granted = lifetime.min(self.lifetime);
        self.ok(msg, |b| {
            b.u32(attr::LIFETIME, granted);
        })
    }

    fn permission(&mut self, client: SocketAddr, msg: &Message<'_>) -> Vec<u8> {
        let Some(peer) = msg.xor_addr(attr::XOR_PEER_ADDRESS) else {
            return self.error(msg, 400);
        };
        let Some(a) = self.allocations.get_mut(&client) else {
            return self.error(msg, 437);
        };
        if !a.permissions.contains(&peer.ip()) {
            a.permissions.push(peer.ip());
        }
        self.ok(msg, |_| {})
    }

    fn channel_bind(&mut self, client: SocketAddr, msg: &Message<'_>) -> Vec<u8> {
        let (Some(peer), Some(number)) = (
            msg.xor_addr(attr::XOR_PEER_ADDRESS),
            msg.u32(attr::CHANNEL_NUMBER),
        ) else {
            return self.error(msg, 400);
        };
        let Some(a) = self.allocations.get_mut(&client) else {
            return self.error(msg, 437);
        };
        a.channels.insert((number >> 16) as u16, peer);
        if !a.permissions.contains(&peer.ip()) {
            a.permissions.push(peer.ip());
        }
        self.ok(msg, |_| {})
    }

    fn send_indication(&mut self, client: SocketAddr, msg: &Message<'_>) -> Vec<Datagram> {
        let (Some(peer), Some(data)) = (msg.xor_addr(attr::XOR_PEER_ADDRESS), msg.attr(attr::DATA))
        else {
            return Vec::new();
        };
        let Some(a) = self.allocations.get(&client) else {
            return Vec::new();
        };
        if !a.permissions.contains(&peer.ip()) {
            return Vec::new();
        }
        self.relayed += 1;
        vec![Datagram {
            source: a.relayed,
            destination: peer,
            contents: data.to_vec(),
        }]
    }

    /// A peer's datagram to a relayed address: to the client, if permitted
    fn peer_datagram(&mut self, d: &Datagram) -> Vec<Datagram> {
        let Some((client, a)) = self
            .allocations
            .iter()
            .find(|(_, a)| a.relayed == d.destination)
        else {
            return Vec::new();
        };
        if !a.permissions.contains(&d.source.ip()) {
            return Vec::new();
        }
        let contents = match a.channels.iter().find(|(_, p)| **p == d.source) {
            Some((number, _)) => stun::channel_data(*number, &d.contents),
            None => {
                let mut tid = [0u8; 12];
                tid[..4].copy_from_slice(&self.relayed.to_be_bytes());
                Builder::new(Class::Indication, method::DATA, tid, d.contents.len() + 16)
                    .xor_addr(attr::XOR_PEER_ADDRESS, d.source)
                    .attr(attr::DATA, &d.contents)
                    .finish()
            }
        };
        let client = *client;
        self.relayed += 1;
        vec![self.reply_raw(client, contents)]
    }
}

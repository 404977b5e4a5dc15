//! STUN messages (RFC 8489) with the TURN attributes (RFC 8656), and TURN ChannelData
//!
//! Parsing never allocates and never panics: a [`Message`] borrows the datagram and finds
//! attributes by walking it. Building writes into one `Vec`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The magic cookie of every RFC 5389+ STUN message
pub(crate) const MAGIC: u32 = 0x2112_A442;
/// Size of the STUN header
pub(crate) const HEADER: usize = 20;
/// Size of the ChannelData header
pub(crate) const CHANNEL_HEADER: usize = 4;

/// A STUN transaction id
pub(crate) type TransactionId = [u8; 12];

/// STUN methods used here
pub(crate) mod method {
    pub(crate) const BINDING: u16 = 0x001;
    pub(crate) const ALLOCATE: u16 = 0x003;
    pub(crate) const REFRESH: u16 = 0x004;
    pub(crate) const SEND: u16 = 0x006;
    pub(crate) const DATA: u16 = 0x007;
    pub(crate) const CREATE_PERMISSION: u16 = 0x008;
    pub(crate) const CHANNEL_BIND: u16 = 0x009;
}

/// STUN and TURN attribute types used here
pub(crate) mod attr {
    pub(crate) const MAPPED_ADDRESS: u16 = 0x0001;
    pub(crate) const USERNAME: u16 = 0x0006;
    pub(crate) const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub(crate) const ERROR_CODE: u16 = 0x0009;
    pub(crate) const CHANNEL_NUMBER: u16 = 0x000C;
    pub(crate) const LIFETIME: u16 = 0x000D;
    pub(crate) const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub(crate) const DATA: u16 = 0x0013;
    pub(crate) const REALM: u16 = 0x0014;
    pub(crate) const NONCE: u16 = 0x0015;
    pub(crate) const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub(crate) const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub(crate) const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub(crate) const PRIORITY: u16 = 0x0024;
    pub(crate) const ICE_CONTROLLED: u16 = 0x8029;
    pub(crate) const ICE_CONTROLLING: u16 = 0x802A;
    pub(crate) const FINGERPRINT: u16 = 0x8028;
}

/// The class of a STUN message
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Self::Request => 0x000,
            Self::Indication => 0x010,
            Self::Success => 0x100,
            Self::Error => 0x110,
        }
    }
}

/// Whether a datagram looks like STUN (RFC 7983: first byte 0..=3, and the magic cookie)
pub(crate) fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER && b[0] < 4 && b[4..8] == MAGIC.to_be_bytes()
}

/// Whether a datagram looks like TURN ChannelData (RFC 7983: first byte 64..=79)
pub(crate) fn is_channel_data(b: &[u8]) -> bool {
    b.len() >= CHANNEL_HEADER && (0x40..=0x4F).contains(&b[0])
}

/// A parsed ChannelData message: (channel number, payload)
pub(crate) fn parse_channel_data(b: &[u8]) -> Option<(u16, &[u8])> {
    if !is_channel_data(b) {
        return None;
    }
    let number = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    // Over UDP the payload may be followed by up to 3 bytes of padding (RFC 8656 §12.5).
    let payload = b.get(CHANNEL_HEADER..CHANNEL_HEADER + len)?;
    if b.len() > CHANNEL_HEADER + len.next_multiple_of(4) {
        return None;
    }
    Some((number, payload))
}

/// Writes a ChannelData message (no padding: not required over UDP)
pub(crate) fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHANNEL_HEADER + payload.len());
    v.extend_from_slice(&number.to_be_bytes());
    // Callers keep payloads below 64 KiB (a UDP datagram); a longer one is cut off by the
    // length field and rejected by the server, never a panic here.
    v.extend_from_slice(&(payload.len().min(0xFFFF) as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Why a datagram is not a usable STUN message
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    NotStun,
    BadLength,
    BadAttribute,
    BadFingerprint,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotStun => "not a stun message",
            Self::BadLength => "stun length does not match the datagram",
            Self::BadAttribute => "truncated stun attribute",
            Self::BadFingerprint => "stun fingerprint mismatch",
        })
    }
}

/// A STUN message borrowed from a datagram
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    raw: &'a [u8],
    pub(crate) class: Class,
    pub(crate) method: u16,
    pub(crate) tid: TransactionId,
}

impl<'a> Message<'a> {
    /// Parses a whole datagram as one STUN message, checking lengths and any fingerprint
    pub(crate) fn parse(raw: &'a [u8]) -> Result<Self, ParseError> {
        if !is_stun(raw) {
            return Err(ParseError::NotStun);
        }
        let typ = u16::from_be_bytes([raw[0], raw[1]]);
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        if len % 4 != 0 || HEADER + len != raw.len() {
            return Err(ParseError::BadLength);
        }
        let class = match typ & 0x0110 {
            0x000 => Class::Request,
            0x010 => Class::Indication,
            0x100 => Class::Success,
            _ => Class::Error,
        };
        let method = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
        let mut tid = [0; 12];
        tid.copy_from_slice(&raw[8..20]);
        let msg = Self {
            raw,
            class,
            method,
            tid,
        };
        // Walk the attributes once so that lookups can trust the lengths.
        let mut fingerprint_at = None;
        for (typ, start, value) in msg.attrs() {
            if value.is_none() {
                return Err(ParseError::BadAttribute);
            }
            if typ == attr::FINGERPRINT {
                fingerprint_at = Some(start);
            }
        }
        if let Some(at) = fingerprint_at {
            let value = &raw[at + 4..];
            if value.len() != 4 || value != fingerprint(&raw[..at]).to_be_bytes() {
                return Err(ParseError::BadFingerprint);
            }
        }
        Ok(msg)
    }

    /// `(type, offset of the attribute header, value)`; value `None` when truncated (last)
    fn attrs(&self) -> impl Iterator<Item = (u16, usize, Option<&'a [u8]>)> + '_ {
        let raw = self.raw;
        let mut at = HEADER;
        let mut done = false;
        std::iter::from_fn(move || {
            if done || at + 4 > raw.len() {
                if !done && at != raw.len() {
                    done = true;
                    return Some((0, at, None));
                }
                return None;
            }
            let typ = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let len = usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]]));
            let start = at;
            let value = raw.get(at + 4..at + 4 + len);
            if value.is_none() {
                done = true;
            }
            at += 4 + len.next_multiple_of(4);
            Some((typ, start, value))
        })
    }

    /// The value of the first attribute of this type
    pub(crate) fn attr(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs().find(|a| a.0 == typ).and_then(|a| a.2)
    }

    /// An XOR-*-ADDRESS attribute
    pub(crate) fn xor_addr(&self, typ: u16) -> Option<SocketAddr> {
        let v = self.attr(typ)?;
        xor_addr(v, &self.tid)
    }

    /// A MAPPED-ADDRESS attribute (pre-RFC 5389 servers)
    pub(crate) fn mapped_addr(&self) -> Option<SocketAddr> {
        let v = self.attr(attr::MAPPED_ADDRESS)?;
        plain_addr(v)
    }

    /// A 32-bit attribute (LIFETIME)
    pub(crate) fn u32(&self, typ: u16) -> Option<u32> {
        let v: [u8; 4] = self.attr(typ)?.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    }

    /// ERROR-CODE as (code, reason phrase)
    pub(crate) fn error_code(&self) -> Option<(u16, &'a str)> {
        let v = self.attr(attr::ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x7) * 100 + u16::from(v[3]);
        if !(300..700).contains(&code) {
            return None;
        }
        Some((code, std::str::from_utf8(&v[4..]).unwrap_or("")))
    }

    /// Whether MESSAGE-INTEGRITY is present
    pub(crate) fn has_integrity(&self) -> bool {
        self.attr(attr::MESSAGE_INTEGRITY).is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) against a key; false when absent
    pub(crate) fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some((_, at, Some(value))) = self.attrs().find(|a| a.0 == attr::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        if value.len() != 20 {
            return false;
        }
        // The length covers everything up to and including MESSAGE-INTEGRITY.
        let mut mac = hmac_sha1(key);
        let len = (at + 24 - HEADER) as u16;
        mac.update(&self.raw[..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&self.raw[4..at]);
        mac.verify_slice(value).is_ok()
    }
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    // HMAC takes keys of any length.
    Hmac::<Sha1>::new_from_slice(key).expect("hmac accepts any key length")
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2)
///
/// SASLprep is not applied: usernames and passwords are used as given (as coturn does for
/// ASCII credentials).
pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

fn fingerprint(bytes_before: &[u8]) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    // The length field covers the FINGERPRINT attribute too.
    let len = (bytes_before.len() + 8 - HEADER) as u16;
    let mut d = CRC.digest();
    d.update(&bytes_before[..2]);
    d.update(&len.to_be_bytes());
    d.update(&bytes_before[4..]);
    d.finalize() ^ 0x5354_554E
}

fn xor_addr(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
            IpAddr::V4(Ipv4Addr::from(x))
        }
        (0x02, 20) => {
            let mut mask = [0; 16];
            mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            let mut b = [0; 16];
            for i in 0..16 {
                b[i] = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn plain_addr(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    let ip = match (v[1], v.len()) {
        (0x01, 8) => IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
        (0x02, 20) => {
            let b: [u8; 16] = v[4..20].try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Writes one STUN message
pub(crate) struct Builder {
    buf: Vec<u8>,
    tid: TransactionId,
}

impl Builder {
    /// Starts a message with room for `extra` bytes of attributes
    pub(crate) fn new(class: Class, method: u16, tid: TransactionId, extra: usize) -> Self {
        let typ = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2);
        let mut buf = Vec::with_capacity(HEADER + extra);
        buf.extend_from_slice(&(typ | class.bits()).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&tid);
        Self { buf, tid }
    }

    fn set_len(&mut self, len: usize) {
        let len = (len - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute (padded to 4 bytes)
    pub(crate) fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len().min(0xFFFF) as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().next_multiple_of(4) - value.len();
        self.buf.extend_from_slice(&[0; 3][..pad]);
        let len = self.buf.len();
        self.set_len(len);
        self
    }

    /// Appends a 32-bit attribute
    pub(crate) fn u32(&mut self, typ: u16, v: u32) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    /// Appends an XOR-*-ADDRESS attribute
    pub(crate) fn xor_addr(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let port = (addr.port() ^ (MAGIC >> 16) as u16).to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let x = (u32::from(ip) ^ MAGIC).to_be_bytes();
                self.attr(typ, &[0, 1, port[0], port[1], x[0], x[1], x[2], x[3]])
            }
            IpAddr::V6(ip) => {
                let mut v = [0u8; 20];
                v[1] = 2;
                v[2..4].copy_from_slice(&port);
                let mut mask = [0; 16];
                mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
                mask[4..].copy_from_slice(&self.tid);
                for (i, b) in ip.octets().iter().enumerate() {
                    v[4 + i] = b ^ mask[i];
                }
                self.attr(typ, &v)
            }
        }
    }

    /// Appends ERROR-CODE (the tests' scripted servers answer with it)
    #[cfg(test)]
    pub(crate) fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 with `key`)
    pub(crate) fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        self.set_len(at + 24);
        let mut mac = hmac_sha1(key);
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// Appends FINGERPRINT
    pub(crate) fn fingerprint(&mut self) -> &mut Self {
        let fp = fingerprint(&self.buf);
        self.u32(attr::FINGERPRINT, fp)
    }

    /// The finished message
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Retransmission timing of STUN requests over UDP (RFC 8489 §6.2.1)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitTiming {
    /// RTO: the wait after the first transmission, doubled after each (RFC: 500 ms or more)
    pub initial_rto: Duration,
    /// Rc: how many times a request is sent at most (RFC default 7)
    pub max_transmissions: u32,
    /// Rm: after the last transmission, wait this many RTO for an answer (RFC default 16)
    pub final_wait_factor: u32,
}

impl Default for RetransmitTiming {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(500),
            max_transmissions: 7,
            final_wait_factor: 16,
        }
    }
}

impl RetransmitTiming {
    /// How long a transaction lives when nothing answers
    pub fn total(&self) -> Duration {
        let mut t = Duration::ZERO;
        let mut rto = self.initial_rto;
        for _ in 1..self.max_transmissions.max(1) {
            t += rto;
            rto *= 2;
        }
        t + self.initial_rto * self.final_wait_factor
    }
}

/// One outstanding request: its bytes, and when to send it again or give up
#[derive(Debug)]
pub(crate) struct Transaction {
    pub(crate) tid: TransactionId,
    pub(crate) request: Vec<u8>,
    sent: u32,
    rto: Duration,
    next: Instant,
    timing: RetransmitTiming,
}

/// What a transaction wants after a timeout
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TxTimeout {
    /// Nothing yet
    Wait,
    /// Send `request` again
    Retransmit,
    /// No answer: give up
    TimedOut,
}

impl Transaction {
    /// A transaction whose first transmission happens now (the caller sends `request`)
    pub(crate) fn new(
        now: Instant,
        tid: TransactionId,
        request: Vec<u8>,
        timing: RetransmitTiming,
    ) -> Self {
        let last = timing.max_transmissions <= 1;
        let wait = if last {
            timing.initial_rto * timing.final_wait_factor
        } else {
            timing.initial_rto
        };
        Self {
            tid,
            request,
            sent: 1,
            rto: timing.initial_rto,
            next: now + wait,
            timing,
        }
    }

    /// When [`Self::handle_timeout`] is due
    pub(crate) fn deadline(&self) -> Instant {
        self.next
    }

    /// Advances time
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> TxTimeout {
        if now < self.next {
            return TxTimeout::Wait;
        }
        if self.sent >= self.timing.max_transmissions.max(1) {
            return TxTimeout::TimedOut;
        }
        self.sent += 1;
        self.rto *= 2;
        let wait = if self.sent >= self.timing.max_transmissions {
            self.timing.initial_rto * self.timing.final_wait_factor
        } else {
            self.rto
        };
        self.next = now + wait;
        TxTimeout::Retransmit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_integrity_and_fingerprint() {
        let tid = [7; 12];
        let peer: SocketAddr = "[2001:db8::5]:4000".parse().unwrap();
        let mapped: SocketAddr = "203.0.113.9:1234".parse().unwrap();
        let key = long_term_key("u", "realm", "p");
        let bytes = Builder::new(Class::Success, method::ALLOCATE, tid, 0)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .xor_addr(attr::XOR_MAPPED_ADDRESS, mapped)
            .u32(attr::LIFETIME, 600)
            .attr(0x8022, b"odd")
            .integrity(&key)
            .fingerprint()
            .finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            (m.class, m.method, m.tid),
            (Class::Success, method::ALLOCATE, tid)
        );
        assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Some(peer));
        assert_eq!(m.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(mapped));
        assert_eq!(m.u32(attr::LIFETIME), Some(600));
        assert_eq!(m.attr(0x8022), Some(&b"odd"[..]));
        assert!(m.verify_integrity(&key));
        assert!(!m.verify_integrity(&long_term_key("u", "realm", "q")));

        // Any flipped bit breaks the fingerprint or the integrity.
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert_eq!(Message::parse(&bad).err(), Some(ParseError::BadFingerprint));
    }

    #[test]
    fn method_and_class_bits() {
        for (class, method, typ) in [
            (Class::Request, method::BINDING, 0x0001),
            (Class::Success, method::BINDING, 0x0101),
            (Class::Error, method::ALLOCATE, 0x0113),
            (Class::Indication, method::SEND, 0x0016),
            (Class::Indication, method::DATA, 0x0017),
            (Class::Success, method::CHANNEL_BIND, 0x0109),
        ] {
            let b = Builder::new(class, method, [0; 12], 0).finish();
            assert_eq!(u16::from_be_bytes([b[0], b[1]]), typ);
            let m = Message::parse(&b).unwrap();
            assert_eq!((m.class, m.method), (class, method));
        }
    }

    #[test]
    fn error_code() {
        let b = Builder::new(Class::Error, method::ALLOCATE, [1; 12], 0)
            .error_code(486, "Allocation Quota Reached")
            .finish();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.error_code(), Some((486, "Allocation Quota Reached")));
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let good = Builder::new(Class::Request, method::BINDING, [3; 12], 0)
            .attr(attr::USERNAME, b"abcde")
            .finish();
        assert!(Message::parse(&good).is_ok());
        for cut in 0..good.len() {
            assert!(Message::parse(&good[..cut]).is_err());
        }
        // Claimed attribute length past the end.
        let mut b = good.clone();
        b[23] = 200;
        assert_eq!(Message::parse(&b).err(), Some(ParseError::BadAttribute));
        // Pseudo-random bytes with a STUN-looking header.
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..2000 {
            let len = rng.usize(20..120) & !3;
            let mut v: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            v[0] &= 1;
            v[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
            v[4..8].copy_from_slice(&MAGIC.to_be_bytes());
            if let Ok(m) = Message::parse(&v) {
                let _ = (m.error_code(), m.xor_addr(attr::XOR_MAPPED_ADDRESS));
                let _ = (
                    m.mapped_addr(),
                    m.u32(attr::LIFETIME),
                    m.verify_integrity(b"k"),
                );
            }
            let _ = parse_channel_data(&v);
        }
    }

    #[test]
    fn channel_data_framing() {
        let b = channel_data(0x4001, b"hello");
        assert_eq!(b.len(), 9);
        assert_eq!(parse_channel_data(&b), Some((0x4001, &b"hello"[..])));
        let mut padded = b.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse_channel_data(&padded), Some((0x4001, &b"hello"[..])));
        padded.push(0);
        assert_eq!(parse_channel_data(&padded), None);
        assert_eq!(parse_channel_data(&b[..8]), None);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // reason: an anchor for virtual time
    fn retransmissions_follow_rfc_8489() {
        let t0 = Instant::now();
        let timing = RetransmitTiming::default();
        assert_eq!(timing.total(), Duration::from_millis(39_500));
        let mut tx = Transaction::new(t0, [0; 12], vec![], timing);
        let mut sends = vec![Duration::ZERO];
        loop {
            let at = tx.deadline();
            match tx.handle_timeout(at) {
                TxTimeout::Retransmit => sends.push(at - t0),
                TxTimeout::TimedOut => {
                    assert_eq!(at - t0, Duration::from_millis(39_500));
                    break;
                }
                TxTimeout::Wait => unreachable!(),
            }
        }
        let ms: Vec<u64> = sends.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    }
}

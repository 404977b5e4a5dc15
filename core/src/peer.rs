//! One remote peer: a `str0m::Rtc` plus the state the mesh keeps about it

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Rtc};

use crate::participant::{
    CandidatePolicy, Config, DataMessage, FailReason, TimeoutReason, Transmit,
};
use crate::signal::PeerInfo;
use crate::stats::PeerStats;
use crate::Error;

/// Below this many buffered bytes str0m tells us the channel can take more
const BUFFERED_LOW_THRESHOLD: usize = 64 * 1024;

/// Remote candidates queued before the remote description is known, at most
const MAX_QUEUED_CANDIDATES: usize = 64;

/// Who sent the offer on this connection
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Offerer,
    Answerer,
}

/// What a drained peer hands back to the participant
#[derive(Debug)]
pub(crate) enum PeerOutput {
    Transmit(Transmit),
    Connected(Duration),
    Data { label: String, message: DataMessage },
    Closed,
}

pub(crate) struct Peer {
    info: PeerInfo,
    role: Role,
    rtc: Rtc,
    created: Instant,
    now: Instant,
    pending_offer: Option<SdpPendingOffer>,
    has_remote_description: bool,
    queued_candidates: Vec<String>,
    channel: Option<ChannelId>,
    /// Open channels with their labels, in opening order
    labels: Vec<(ChannelId, String)>,
    send_queue: VecDeque<DataMessage>,
    connected_at: Option<Instant>,
    dtls_connected: bool,
    ice_disconnected_since: Option<Instant>,
    next_timeout: Instant,
    stats: PeerStats,
}

impl Peer {
    pub(crate) fn new(
        now: Instant,
        info: PeerInfo,
        role: Role,
        config: &Config,
        crypto: Arc<CryptoProvider>,
        cert: DtlsCert,
        creds: IceCreds,
    ) -> Self {
        let _ = config;
        let rtc = Rtc::builder()
            .set_crypto_provider(crypto)
            .set_dtls_cert(cert)
            .set_local_ice_credentials(creds)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        Self {
            info,
            role,
            rtc,
            created: now,
            now,
            pending_offer: None,
            has_remote_description: false,
            queued_candidates: Vec::new(),
            channel: None,
            labels: Vec::new(),
            send_queue: VecDeque::new(),
            connected_at: None,
            dtls_connected: false,
            ice_disconnected_since: None,
            next_timeout: now,
            stats: PeerStats::default(),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected_at.is_some()
    }

    pub(crate) fn stats(&self) -> PeerStats {
        let mut s = self.stats.clone();
        s.connected = self.connected_at.is_some();
        s.connect_time = self.connected_at.map(|t| t - self.created);
        s.queued_messages = self.send_queue.len();
        s.is_offerer = self.role == Role::Offerer;
        s
    }

    pub(crate) fn accepts(&self, input: &str0m::Input<'_>) -> bool {
        self.rtc.accepts(input)
    }

    pub(crate) fn add_local_candidate(&mut self, c: Candidate) -> Option<String> {
        self.rtc
            .add_local_candidate(c)
            .map(Candidate::to_sdp_string)
    }

    /// Creates the offer: the data channel (if configured) and, later, media
    pub(crate) fn create_offer(&mut self, config: &Config) -> String {
        let mut api = self.rtc.sdp_api();
        // Without data or media there is nothing to negotiate; a data channel keeps the
        // connection (and its keepalives) alive.
        let label = config.channel_label.clone();
        api.add_channel(label);
        let (offer, pending) = api
            .apply()
            .expect("a change with a new channel always yields an offer; panic means bug");
        self.pending_offer = Some(pending);
        offer.to_sdp_string()
    }

    pub(crate) fn accept_offer(&mut self, sdp: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| e.to_string())?;
        self.on_remote_description();
        Ok(answer.to_sdp_string())
    }

    pub(crate) fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let Some(pending) = self.pending_offer.take() else {
            return Err("answer without a pending offer".into());
        };
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())?;
        self.on_remote_description();
        Ok(())
    }

    fn on_remote_description(&mut self) {
        self.has_remote_description = true;
        for line in std::mem::take(&mut self.queued_candidates) {
            if let Ok(Some(c)) = parse_candidate(&line) {
                self.rtc.add_remote_candidate(c);
            }
        }
    }

    /// Queues a candidate line that arrived before this peer existed
    pub(crate) fn queue_remote_candidate(&mut self, line: String) {
        if self.queued_candidates.len() < MAX_QUEUED_CANDIDATES {
            self.queued_candidates.push(line);
        }
    }

    /// Adds a trickled remote candidate (an empty line means end of candidates)
    pub(crate) fn add_remote_candidate(
        &mut self,
        line: &str,
        policy: CandidatePolicy,
    ) -> Result<(), String> {
        let Some(c) = parse_candidate(line)? else {
            return Ok(());
        };
        if !policy.allows(c.addr()) {
            self.stats.candidates_filtered += 1;
            return Ok(());
        }
        if self.has_remote_description {
            self.rtc.add_remote_candidate(c);
        } else {
            self.queue_remote_candidate(line.to_string());
        }
        Ok(())
    }

    pub(crate) fn send(&mut self, message: DataMessage, max_queued: usize) -> Result<(), Error> {
        if self.send_queue.len() >= max_queued {
            return Err(Error::SendQueueFull(self.info.peer_id.clone()));
        }
        self.send_queue.push_back(message);
        Ok(())
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<(), String> {
        self.now = self.now.max(now);
        self.rtc
            .handle_input(str0m::Input::Timeout(now))
            .map_err(|e| e.to_string())
    }

    pub(crate) fn handle_receive(&mut self, input: str0m::Input<'_>) -> Result<(), String> {
        if let str0m::Input::Receive(t, _) = &input {
            self.now = self.now.max(*t);
        }
        self.stats.datagrams_received += 1;
        self.rtc.handle_input(input).map_err(|e| e.to_string())
    }

    pub(crate) fn close(&mut self) {
        // Closing an already closing Rtc is harmless; the error only says so.
        let _ = self.rtc.close();
    }

    /// Writes queued messages while the channel takes them; true if any was written
    fn flush(&mut self) -> Result<bool, String> {
        let Some(id) = self.channel else {
            return Ok(false);
        };
        let Some(mut chan) = self.rtc.channel(id) else {
            return Ok(false);
        };
        let mut wrote = false;
        while let Some(m) = self.send_queue.front() {
            let binary = matches!(m, DataMessage::Binary(_));
            let accepted = chan
                .write(binary, m.as_bytes())
                .map_err(|e| e.to_string())?;
            if !accepted {
                break;
            }
            self.stats.messages_sent += 1;
            self.stats.bytes_sent += m.len() as u64;
            self.send_queue.pop_front();
            wrote = true;
        }
        Ok(wrote)
    }

    /// Polls the `Rtc` until it returns a timeout, flushing the send queue as it opens
    pub(crate) fn drain(&mut self, out: &mut Vec<PeerOutput>) -> Result<(), String> {
        loop {
            self.flush()?;
            loop {
                let o = self.rtc.poll_output().map_err(|e| e.to_string())?;
                match o {
                    str0m::Output::Timeout(t) => {
                        self.next_timeout = t;
                        break;
                    }
                    str0m::Output::Transmit(t) => {
                        self.stats.datagrams_sent += 1;
                        out.push(PeerOutput::Transmit(Transmit {
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents.into(),
                        }));
                    }
                    str0m::Output::Event(e) => self.handle_event(e, out),
                }
            }
            if !self.rtc.is_alive() {
                out.push(PeerOutput::Closed);
                return Ok(());
            }
            let writable = self.channel.is_some() && !self.send_queue.is_empty();
            if !writable || !self.flush()? {
                return Ok(());
            }
        }
    }

    fn handle_event(&mut self, e: RtcEvent, out: &mut Vec<PeerOutput>) {
        match e {
            RtcEvent::Connected => {
                self.dtls_connected = true;
            }
            RtcEvent::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => {
                    self.ice_disconnected_since.get_or_insert(self.now);
                }
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    self.ice_disconnected_since = None;
                }
                _ => {}
            },
            RtcEvent::ChannelOpen(id, label) => {
                if let Some(mut chan) = self.rtc.channel(id) {
                    chan.set_buffered_amount_low_threshold(BUFFERED_LOW_THRESHOLD);
                }
                self.labels.retain(|(c, _)| *c != id);
                self.labels.push((id, label));
                if self.channel.is_none() {
                    self.channel = Some(id);
                }
                if self.connected_at.is_none() {
                    self.connected_at = Some(self.now);
                    out.push(PeerOutput::Connected(self.now - self.created));
                }
            }
            RtcEvent::ChannelData(d) => {
                self.stats.messages_received += 1;
                self.stats.bytes_received += d.data.len() as u64;
                let label = self
                    .labels
                    .iter()
                    .find(|(c, _)| *c == d.id)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default();
                let message = if d.binary {
                    DataMessage::Binary(d.data)
                } else {
                    match String::from_utf8(d.data) {
                        Ok(s) => DataMessage::Text(s),
                        Err(e) => DataMessage::Binary(e.into_bytes()),
                    }
                };
                out.push(PeerOutput::Data { label, message });
            }
            RtcEvent::ChannelClose(id) => {
                self.labels.retain(|(c, _)| *c != id);
                if self.channel == Some(id) {
                    self.channel = self.labels.first().map(|(c, _)| *c);
                }
            }
            RtcEvent::PeerStats(s) => {
                if let Some(rtt) = s.rtt {
                    self.stats.rtt = Some(rtt);
                }
            }
            RtcEvent::Closed => out.push(PeerOutput::Closed),
            _ => {}
        }
    }

    /// Whether a connect or disconnect deadline has passed
    pub(crate) fn expired(&self, now: Instant, config: &Config) -> Option<FailReason> {
        if self.connected_at.is_none() && now >= self.created + config.connect_timeout {
            return Some(FailReason::ConnectTimeout);
        }
        if let Some(since) = self.ice_disconnected_since {
            if now >= since + config.disconnect_timeout {
                return Some(FailReason::Disconnected);
            }
        }
        None
    }

    pub(crate) fn next_timeout(&self, config: &Config) -> (Instant, TimeoutReason) {
        let mut best = (
            self.next_timeout,
            TimeoutReason::Rtc(self.rtc.last_timeout_reason()),
        );
        let deadline = if self.connected_at.is_none() {
            Some(self.created + config.connect_timeout)
        } else {
            self.ice_disconnected_since
                .map(|s| s + config.disconnect_timeout)
        };
        if let Some(d) = deadline {
            if d < best.0 {
                best = (d, TimeoutReason::PeerDeadline);
            }
        }
        best
    }
}

/// Parses a trickled candidate line; `Ok(None)` is the end-of-candidates marker
pub(crate) fn parse_candidate(line: &str) -> Result<Option<Candidate>, String> {
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    if line.is_empty() {
        return Ok(None);
    }
    Candidate::from_sdp_string(line)
        .map(Some)
        .map_err(|e| e.to_string())
}

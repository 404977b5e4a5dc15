//! Outgoing video tracks with m-lines of their own (several video tracks to one peer)
//!
//! A track declared with [`Participant::add_video_track`](crate::Participant::add_video_track)
//! gets, towards each peer it is sent to, a `sendonly` video m-line of its own, added by a
//! renegotiation the first time a frame of it is written for that peer. Its `msid` names
//! the track (`a=msid:meshrtc mrtc-track<N>`), so the remote tells it from our main video
//! m-line and from our other tracks, decodes it on its own and reports its frames with
//! [`Event::VideoFrame::track`](crate::Event::VideoFrame) set.

use str0m::media::Mid;

use crate::codec::VideoCodec;
use crate::media::{MediaOut, PeerMedia};
use crate::pipeline::TrackId;

/// The `msid` track id prefix of a separate track's m-line
const TRACK_PREFIX: &str = "mrtc-track";

/// Separate tracks a peer decodes from one remote at most (more m-lines are not decoded)
pub(crate) const MAX_RECV_TRACKS: usize = 8;

/// The `msid` track id of a separate track's m-line
pub(crate) fn track_msid(track: TrackId) -> String {
    format!("{TRACK_PREFIX}{}", track.index())
}

/// The separate video tracks a remote description announces: (mid, the sender's track id)
/// of each video m-line whose `msid` names one, at most [`MAX_RECV_TRACKS`]
pub(crate) fn remote_tracks(sdp: &str) -> Vec<(Mid, TrackId)> {
    let mut out = Vec::new();
    let mut video = false;
    let mut mid: Option<&str> = None;
    let mut track: Option<TrackId> = None;
    let mut flush = |video: bool, mid: Option<&str>, track: Option<TrackId>| {
        if let (true, Some(m), Some(t)) = (video, mid, track) {
            if out.len() < MAX_RECV_TRACKS {
                out.push((Mid::from(m), t));
            }
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(video, mid.take(), track.take());
            video = line.starts_with("m=video");
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.trim());
        } else if let Some(ids) = line.strip_prefix("a=msid:") {
            track = ids
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.strip_prefix(TRACK_PREFIX))
                .and_then(|n| n.parse::<u32>().ok())
                .map(TrackId::new);
        }
    }
    flush(video, mid, track);
    out
}

/// A separate track we send to one peer, on its own m-line
pub(crate) struct SendTrack {
    pub(crate) track: TrackId,
    pub(crate) mid: Mid,
    /// The remote answered the offer that added it
    pub(crate) confirmed: bool,
    /// A frame of it was written: the remote has had a keyframe (else the next one must be)
    pub(crate) started: bool,
    /// The codec we send it in (first of our preference the answer allows)
    pub(crate) codec: Option<VideoCodec>,
    /// RTP packets sent on it as str0m last reported them (cumulative)
    pub(crate) egress_packets: u64,
}

/// A separate track the remote sends us, on its own m-line: decoded and released on its
/// own (rendered when decoded; lip-sync follows the remote's main m-lines only)
pub(crate) struct RecvTrack {
    pub(crate) track: TrackId,
    pub(crate) mid: Mid,
    pub(crate) media: PeerMedia,
    pub(crate) out: Vec<MediaOut>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_are_read_from_video_msids_only() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:meshrtc mrtc-track9\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:meshrtc abcdef\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:x2\r\na=msid:meshrtc mrtc-track3\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=msid:meshrtc mrtc-track4\r\na=mid:y\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:z\r\na=msid:meshrtc mrtc-trackx\r\n";
        let got = remote_tracks(sdp);
        assert_eq!(
            got,
            vec![
                (Mid::from("x2"), TrackId::new(3)),
                (Mid::from("y"), TrackId::new(4))
            ]
        );
        assert_eq!(track_msid(TrackId::new(7)), "mrtc-track7");
    }
}

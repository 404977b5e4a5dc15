//! Reading the picture size a video frame declares, before a codec library sees it
//!
//! Decoder input comes from the network. libvpx and OpenH264 allocate frame buffers for
//! whatever size a frame declares, so the decoders check the declared size here first and
//! refuse anything above [`MAX_DECODE_PIXELS`](super::MAX_DECODE_PIXELS):
//!
//! - VP8: keyframes carry the size in their 10-byte header; inter frames cannot change it.
//! - VP9: every frame of a superframe has an uncompressed header. Keyframes and intra-only
//!   frames carry a size; inter frames either take the size of one of their references
//!   (`found_ref`) or carry a size of their own, which may differ from the references' (VP9
//!   scales references up to 16 times). [`Vp9Refs`] follows the eight reference slots so that
//!   both cases give the frame's real size.
//! - H.264: sizes come from sequence parameter sets (NAL type 7), read here up to
//!   `frame_mbs_only_flag`.
//!
//! Pure parsing with bounds checks throughout: any input gives a value or an error.

/// A declared picture size
pub(crate) type Size = (u32, u32);

/// Reads bits most significant first, with exp-Golomb codes for H.264
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Result<u32, String> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or_else(|| "header truncated".to_string())?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    /// Unsigned exp-Golomb, at most 32 bits of value
    fn ue(&mut self) -> Result<u32, String> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("exp-Golomb code too long".into());
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }

    /// Signed exp-Golomb
    fn se(&mut self) -> Result<i64, String> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// The size a VP8 frame declares: `Some` for a keyframe, `None` for an inter frame
///
/// Errors for frames too short for their header, a bad keyframe start code, a first
/// partition longer than the frame, or a zero size.
pub(crate) fn vp8_size(data: &[u8]) -> Result<Option<Size>, String> {
    let tag = data.get(..3).ok_or("vp8 frame shorter than its tag")?;
    let raw = u32::from(tag[0]) | u32::from(tag[1]) << 8 | u32::from(tag[2]) << 16;
    let keyframe = raw & 1 == 0;
    let version = (raw >> 1) & 7;
    let first_part = (raw >> 5) as usize;
    if version > 3 {
        return Err(format!("vp8 version {version}"));
    }
    let header = if keyframe { 10 } else { 3 };
    if data.len() < header || first_part > data.len() - header {
        return Err(format!(
            "vp8 first partition of {first_part} bytes in a {}-byte frame",
            data.len()
        ));
    }
    if !keyframe {
        return Ok(None);
    }
    if data[3..6] != [0x9d, 0x01, 0x2a] {
        return Err("vp8 keyframe start code missing".into());
    }
    // 14 bits of size, 2 of scaling (which leaves the decoded size alone).
    let w = u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3fff);
    if w == 0 || h == 0 {
        return Err(format!("vp8 keyframe of {w}x{h}"));
    }
    Ok(Some((w, h)))
}

/// The frames of a VP9 superframe (or the one frame of a plain frame), in decoding order
///
/// A superframe ends with an index: a marker byte `0b110mmfff` (`fff + 1` frames, `mm + 1`
/// bytes per size), the sizes, and the marker again. The frames must fit before it.
pub(crate) fn vp9_frames(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let Some(&last) = data.last() else {
        return Err("empty vp9 frame".into());
    };
    if last & 0xe0 != 0xc0 {
        return Ok(vec![data]);
    }
    let frames = usize::from(last & 7) + 1;
    let mag = usize::from((last >> 3) & 3) + 1;
    let index = 2 + mag * frames;
    if data.len() < index || data[data.len() - index] != last {
        // The marker pattern without a matching index: a plain frame whose last byte
        // happens to look like a marker (libvpx treats it so too).
        return Ok(vec![data]);
    }
    let sizes = &data[data.len() - index + 1..data.len() - 1];
    let mut out = Vec::with_capacity(frames);
    let mut at = 0;
    let body = data.len() - index;
    for chunk in sizes.chunks_exact(mag) {
        let size = chunk
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if size > body - at {
            return Err(format!(
                "vp9 superframe index claims {size} bytes, {} left",
                body - at
            ));
        }
        // Zero-sized entries are skipped by libvpx.
        if size > 0 {
            out.push(&data[at..at + size]);
        }
        at += size;
    }
    if out.is_empty() {
        return Err("vp9 superframe without frames".into());
    }
    Ok(out)
}

/// The eight VP9 reference slots' sizes, as far as the frames seen so far tell
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Vp9Refs {
    slots: [Option<Size>; 8],
}

/// What one VP9 frame header says
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp9Frame {
    /// The size the frame decodes to; `None` for `show_existing_frame` (no decoding) and for
    /// an inter frame whose size comes from a slot nothing has filled yet
    pub(crate) size: Option<Size>,
    /// Whether the size is one the frame states itself (rather than a reference's)
    pub(crate) explicit: bool,
    /// Reference slots this frame refreshes
    pub(crate) refresh: u8,
    /// For an inter frame, the sizes of the three slots it references (as far as known)
    pub(crate) ref_sizes: [Option<Size>; 3],
}

impl Vp9Frame {
    /// Whether this inter frame declares a size more than twice its largest known reference
    /// in either dimension
    ///
    /// VP9 lets a frame scale references up to 16 times; real encoders step sizes by at most
    /// 2:1 (spatial layers of SVC, libvpx's internal resize), so anything more is refused.
    pub(crate) fn outgrows_refs(&self) -> bool {
        let Some((w, h)) = self.size.filter(|_| self.explicit) else {
            return false;
        };
        let known: Vec<Size> = self.ref_sizes.iter().flatten().copied().collect();
        !known.is_empty()
            && known.iter().all(|&(rw, rh)| {
                u64::from(w) > 2 * u64::from(rw) || u64::from(h) > 2 * u64::from(rh)
            })
    }
}

impl Vp9Refs {
    /// Reads a frame's uncompressed header, against the slots as they stand
    pub(crate) fn parse(&self, data: &[u8]) -> Result<Vp9Frame, String> {
        let mut b = Bits::new(data);
        if b.bits(2)? != 2 {
            return Err("vp9 frame marker missing".into());
        }
        let low = b.bit()?;
        let profile = (b.bit()? << 1) | low;
        if profile == 3 && b.bit()? != 0 {
            return Err("vp9 reserved bit set".into());
        }
        if b.bit()? == 1 {
            // show_existing_frame: shows a slot, decodes nothing.
            b.bits(3)?;
            return Ok(Vp9Frame {
                size: None,
                explicit: false,
                refresh: 0,
                ref_sizes: [None; 3],
            });
        }
        let keyframe = b.bit()? == 0;
        let show_frame = b.bit()?;
        let error_resilient = b.bit()?;
        let explicit = |b: &mut Bits<'_>| -> Result<Size, String> {
            let w = b.bits(16)? + 1;
            let h = b.bits(16)? + 1;
            Ok((w, h))
        };
        if keyframe {
            sync_code(&mut b)?;
            color_config(&mut b, profile)?;
            let size = explicit(&mut b)?;
            return Ok(Vp9Frame {
                size: Some(size),
                explicit: true,
                refresh: 0xff,
                ref_sizes: [None; 3],
            });
        }
        let intra_only = if show_frame == 0 { b.bit()? } else { 0 };
        if error_resilient == 0 {
            b.bits(2)?; // reset_frame_context
        }
        if intra_only == 1 {
            sync_code(&mut b)?;
            if profile > 0 {
                color_config(&mut b, profile)?;
            }
            let refresh = b.bits(8)? as u8;
            let size = explicit(&mut b)?;
            return Ok(Vp9Frame {
                size: Some(size),
                explicit: true,
                refresh,
                ref_sizes: [None; 3],
            });
        }
        let refresh = b.bits(8)? as u8;
        let mut refs = [0usize; 3];
        for r in &mut refs {
            *r = b.bits(3)? as usize;
            b.bit()?; // sign bias
        }
        let ref_sizes = refs.map(|r| self.slots[r]);
        for r in refs {
            if b.bit()? == 1 {
                return Ok(Vp9Frame {
                    size: self.slots[r],
                    explicit: false,
                    refresh,
                    ref_sizes,
                });
            }
        }
        let size = explicit(&mut b)?;
        Ok(Vp9Frame {
            size: Some(size),
            explicit: true,
            refresh,
            ref_sizes,
        })
    }

    /// Records a frame the decoder accepted
    pub(crate) fn update(&mut self, frame: &Vp9Frame) {
        let Some(size) = frame.size else {
            return;
        };
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if frame.refresh & (1 << i) != 0 {
                *slot = Some(size);
            }
        }
    }

    /// Forgets every slot (after a decode error, when libvpx's slots are unknown)
    pub(crate) fn clear(&mut self) {
        self.slots = [None; 8];
    }
}

fn sync_code(b: &mut Bits<'_>) -> Result<(), String> {
    if b.bits(24)? != 0x49_83_42 {
        return Err("vp9 sync code missing".into());
    }
    Ok(())
}

fn color_config(b: &mut Bits<'_>, profile: u32) -> Result<(), String> {
    if profile >= 2 {
        b.bit()?; // ten_or_twelve_bit
    }
    let color_space = b.bits(3)?;
    if color_space != 7 {
        b.bit()?; // color_range
        if profile == 1 || profile == 3 {
            b.bits(3)?; // subsampling_x, subsampling_y, reserved
        }
    } else if profile == 1 || profile == 3 {
        b.bit()?; // reserved
    }
    Ok(())
}

/// The sizes the sequence parameter sets in an Annex-B access unit declare
///
/// Sizes are the coded size in macroblocks (cropping only makes the picture smaller). An
/// SPS that cannot be read is an error.
pub(crate) fn h264_sps_sizes(data: &[u8]) -> Result<Vec<Size>, String> {
    let mut sizes = Vec::new();
    for nal in annex_b_nals(data) {
        if nal.first().is_some_and(|h| h & 0x1f == 7) {
            sizes.push(sps_size(&unescape(&nal[1..]))?);
        }
    }
    Ok(sizes)
}

/// NAL units of an Annex-B stream (without start codes)
fn annex_b_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // Back over the start code and any zero bytes before it (a 4-byte start code).
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(move |(s, e)| &data[s..e.max(s)])
}

/// Removes emulation prevention bytes (`00 00 03` → `00 00`)
fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// The coded size an SPS payload (after the NAL header) declares
fn sps_size(rbsp: &[u8]) -> Result<Size, String> {
    let mut b = Bits::new(rbsp);
    let profile = b.bits(8)?;
    b.bits(16)?; // constraint flags, level
    b.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma = b.ue()?;
        if chroma == 3 {
            b.bit()?;
        }
        b.ue()?; // bit depth luma
        b.ue()?; // bit depth chroma
        b.bit()?; // transform bypass
        if b.bit()? == 1 {
            let lists = if chroma == 3 { 12 } else { 8 };
            for i in 0..lists {
                if b.bit()? == 1 {
                    skip_scaling_list(&mut b, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    b.ue()?; // log2_max_frame_num_minus4
    match b.ue()? {
        0 => {
            b.ue()?;
        }
        1 => {
            b.bit()?;
            b.se()?;
            b.se()?;
            let cycle = b.ue()?;
            if cycle > 255 {
                return Err(format!("h264 sps: {cycle} ref frames in poc cycle"));
            }
            for _ in 0..cycle {
                b.se()?;
            }
        }
        2 => {}
        t => return Err(format!("h264 sps: pic_order_cnt_type {t}")),
    }
    b.ue()?; // max_num_ref_frames
    b.bit()?; // gaps_in_frame_num_value_allowed_flag
    let w_mbs = u64::from(b.ue()?) + 1;
    let h_units = u64::from(b.ue()?) + 1;
    let frame_mbs_only = b.bit()?;
    let h_mbs = h_units * (2 - u64::from(frame_mbs_only));
    let (w, h) = (w_mbs * 16, h_mbs * 16);
    if w > u64::from(u32::MAX) || h > u64::from(u32::MAX) {
        return Err(format!("h264 sps: {w}x{h}"));
    }
    Ok((w as u32, h as u32))
}

fn skip_scaling_list(b: &mut Bits<'_>, size: usize) -> Result<(), String> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = b.se()?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes bits most significant first
    #[derive(Default)]
    pub(crate) struct BitWriter {
        pub(crate) out: Vec<u8>,
        n: usize,
    }

    impl BitWriter {
        pub(crate) fn put(&mut self, bits: u32, value: u64) {
            for i in (0..bits).rev() {
                if self.n.is_multiple_of(8) {
                    self.out.push(0);
                }
                let bit = ((value >> i) & 1) as u8;
                *self.out.last_mut().unwrap() |= bit << (7 - self.n % 8);
                self.n += 1;
            }
        }

        pub(crate) fn ue(&mut self, v: u32) {
            let v = u64::from(v) + 1;
            let len = 64 - v.leading_zeros();
            self.put(len - 1, 0);
            self.put(len, v);
        }
    }

    #[test]
    fn vp8_sizes() {
        let key = [
            0x50, 0x2d, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00, 0, 0, 0, 0,
        ];
        // first partition 0x2d50 >> 5 = 362 bytes: longer than this frame.
        assert!(vp8_size(&key).is_err());
        let key = [
            0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00, 0, 0, 0, 0,
        ];
        assert_eq!(vp8_size(&key), Ok(Some((320, 180))));
        let mut big = key;
        big[6..10].copy_from_slice(&[0xff, 0x3f, 0xff, 0x3f]);
        assert_eq!(vp8_size(&big), Ok(Some((16383, 16383))));
        let inter = [0x11, 0x00, 0x00, 1, 2, 3];
        assert_eq!(vp8_size(&inter), Ok(None));
        assert!(vp8_size(&[0x10]).is_err());
        let mut bad = key;
        bad[3] = 0;
        assert!(vp8_size(&bad).is_err());
    }

    /// A VP9 profile-0 keyframe header of `w` x `h`
    pub(crate) fn vp9_key(w: u32, h: u32) -> Vec<u8> {
        let mut b = BitWriter::default();
        b.put(2, 2); // marker
        b.put(2, 0); // profile 0
        b.put(1, 0); // show_existing
        b.put(1, 0); // keyframe
        b.put(1, 1); // show
        b.put(1, 0); // error resilient
        b.put(24, 0x49_83_42);
        b.put(3, 1); // BT.601
        b.put(1, 0); // range
        b.put(16, u64::from(w - 1));
        b.put(16, u64::from(h - 1));
        b.put(1, 0); // render_and_frame_size_different
        b.out.extend_from_slice(&[0; 8]);
        b.out
    }

    /// A VP9 profile-0 inter frame header: size from ref slot `from`, or explicit
    pub(crate) fn vp9_inter(refresh: u8, size: Result<u32, (u32, u32)>) -> Vec<u8> {
        let mut b = BitWriter::default();
        b.put(2, 2);
        b.put(2, 0);
        b.put(1, 0);
        b.put(1, 1); // inter
        b.put(1, 1); // show
        b.put(1, 0); // error resilient
        b.put(2, 0); // reset_frame_context
        b.put(8, u64::from(refresh));
        for slot in 0..3 {
            b.put(3, slot);
            b.put(1, 0);
        }
        match size {
            Ok(found) => {
                for i in 0..3 {
                    b.put(1, u64::from(i == found));
                    if i == found {
                        break;
                    }
                }
            }
            Err((w, h)) => {
                b.put(3, 0);
                b.put(16, u64::from(w - 1));
                b.put(16, u64::from(h - 1));
            }
        }
        b.put(1, 0);
        b.out.extend_from_slice(&[0; 8]);
        b.out
    }

    #[test]
    fn vp9_sizes_follow_the_reference_slots() {
        let mut refs = Vp9Refs::default();
        let key = refs.parse(&vp9_key(320, 180)).unwrap();
        assert_eq!(
            (key.size, key.explicit, key.refresh),
            (Some((320, 180)), true, 0xff)
        );
        refs.update(&key);
        // Size from slot 1: the keyframe's.
        let f = refs.parse(&vp9_inter(0x01, Ok(1))).unwrap();
        assert_eq!((f.size, f.explicit), (Some((320, 180)), false));
        // An inter frame with a size of its own, much larger than its references.
        let f = refs.parse(&vp9_inter(0x02, Err((4096, 2880)))).unwrap();
        assert_eq!(
            (f.size, f.explicit, f.refresh),
            (Some((4096, 2880)), true, 0x02)
        );
        assert!(f.outgrows_refs());
        // Twice the reference (as spatial layers do) is fine.
        assert!(!refs
            .parse(&vp9_inter(0, Err((640, 360))))
            .unwrap()
            .outgrows_refs());
        assert!(refs
            .parse(&vp9_inter(0, Err((642, 360))))
            .unwrap()
            .outgrows_refs());
        refs.update(&f);
        // Slot 1 now holds the large size; slot 0 still the keyframe's.
        assert_eq!(
            refs.parse(&vp9_inter(0, Ok(1))).unwrap().size,
            Some((4096, 2880))
        );
        assert_eq!(
            refs.parse(&vp9_inter(0, Ok(0))).unwrap().size,
            Some((320, 180))
        );
        refs.clear();
        assert_eq!(refs.parse(&vp9_inter(0, Ok(0))).unwrap().size, None);
        assert!(refs.parse(&[0x00]).is_err());
        assert!(refs.parse(&vp9_key(320, 180)[..5]).is_err());
    }

    #[test]
    fn vp9_superframes_split_and_lie_detected() {
        let a = vp9_key(64, 64);
        let b = vp9_inter(1, Ok(0));
        let mut sf = [a.clone(), b.clone()].concat();
        // Index: marker 0b110_00_001 (2 frames, 1 byte each), sizes, marker.
        let marker = 0xc1;
        sf.extend_from_slice(&[marker, a.len() as u8, b.len() as u8, marker]);
        let frames = vp9_frames(&sf).unwrap();
        assert_eq!(frames, [&a[..], &b[..]]);
        // An index claiming more bytes than there are.
        let n = sf.len();
        sf[n - 2] = 200;
        assert!(vp9_frames(&sf).is_err());
        assert_eq!(vp9_frames(&a).unwrap(), [&a[..]]);
        assert!(vp9_frames(&[]).is_err());
    }

    /// A baseline SPS NAL (with start code) for `w_mbs` x `h_mbs` macroblocks
    pub(crate) fn sps(w_mbs: u32, h_mbs: u32) -> Vec<u8> {
        let mut b = BitWriter::default();
        b.put(8, 0x67); // NAL header: SPS
        b.put(8, 66); // baseline
        b.put(8, 0xc0); // constraint flags
        b.put(8, 31); // level 3.1
        b.ue(0); // sps id
        b.ue(0); // log2_max_frame_num_minus4
        b.ue(2); // poc type 2
        b.ue(1); // max_num_ref_frames
        b.put(1, 0);
        b.ue(w_mbs - 1);
        b.ue(h_mbs - 1);
        b.put(1, 1); // frame_mbs_only
        b.put(1, 1); // direct_8x8_inference
        b.put(1, 0); // cropping
        b.put(1, 0); // vui
        b.put(1, 1); // stop bit
        let mut out = vec![0, 0, 0, 1];
        out.extend_from_slice(&b.out);
        out
    }

    #[test]
    fn h264_sps_sizes_are_read() {
        assert_eq!(h264_sps_sizes(&sps(20, 12)), Ok(vec![(320, 192)]));
        let mut two = sps(80, 45);
        two.extend_from_slice(&[0, 0, 1, 0x68, 0xce]); // a PPS after it
        two.extend_from_slice(&sps(512, 512)[1..]); // 3-byte start code
        assert_eq!(h264_sps_sizes(&two), Ok(vec![(1280, 720), (8192, 8192)]));
        assert_eq!(h264_sps_sizes(&[0, 0, 1, 0x65, 1, 2, 3]), Ok(vec![]));
        assert!(h264_sps_sizes(&[0, 0, 1, 0x67, 66]).is_err());
        // Emulation prevention bytes are removed before reading.
        assert_eq!(unescape(&[1, 0, 0, 3, 1, 0, 0, 3]), [1, 0, 0, 1, 0, 0]);
    }
}

//! `meshrtc peer --audio-file/--video-file` and `--record`: what one peer sends from files
//! comes back, recorded by another, with the same content after the codecs

use std::f64::consts::PI;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use meshrtc::codec::I420Frame;
use meshrtc::pipeline::files::{WavReader, Y4mReader};

use crate::cli::{meshrtc, start_signal, wait, Reaper};

/// Source audio: 44.1 kHz stereo, 3 s (resampled and mixed down to 48 kHz mono on the way)
const WAV_RATE: u32 = 44_100;
const WAV_SECONDS: f64 = 3.0;
/// Source video: 320x240 at 15 fps, 30 frames (a 2 s loop)
const W: u32 = 320;
const H: u32 = 240;
const FRAMES: u32 = 30;

/// Normalised cross-correlation the recorded audio must reach against the sent audio (median
/// over 0.5 s windows, each at its best lag): Opus at 32 kbit/s keeps these tones far above
pub const MIN_AUDIO_NCC: f64 = 0.95;
/// PSNR (luma) the recorded video must reach against the best-matching sent frame (median)
pub const MIN_VIDEO_PSNR_DB: f64 = 35.0;

/// A non-periodic 3 s signal: a rising chirp and an amplitude-modulated tone, differing per
/// channel, in 16-bit PCM
fn write_wav(path: &Path) {
    let n = (f64::from(WAV_RATE) * WAV_SECONDS) as usize;
    let mut data = Vec::with_capacity(n * 4);
    for i in 0..n {
        let t = i as f64 / f64::from(WAV_RATE);
        // Chirp 300 → 1500 Hz: phase = 2π(300 t + 200 t²).
        let chirp = (2.0 * PI * (300.0 * t + 200.0 * t * t)).sin();
        let am = (2.0 * PI * 700.0 * t).sin() * (0.5 + 0.5 * (2.0 * PI * 3.0 * t).sin());
        let left = 0.3 * chirp + 0.2 * am;
        let right = 0.3 * chirp - 0.1 * am;
        for v in [left, right] {
            data.extend_from_slice(&((v * 32767.0) as i16).to_le_bytes());
        }
    }
    let mut f = std::fs::File::create(path).unwrap();
    let block_align = 4u16;
    let mut head = Vec::new();
    head.extend_from_slice(b"RIFF");
    head.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    head.extend_from_slice(b"WAVEfmt ");
    head.extend_from_slice(&16u32.to_le_bytes());
    head.extend_from_slice(&1u16.to_le_bytes()); // PCM
    head.extend_from_slice(&2u16.to_le_bytes()); // channels
    head.extend_from_slice(&WAV_RATE.to_le_bytes());
    head.extend_from_slice(&(WAV_RATE * u32::from(block_align)).to_le_bytes());
    head.extend_from_slice(&block_align.to_le_bytes());
    head.extend_from_slice(&16u16.to_le_bytes());
    head.extend_from_slice(b"data");
    head.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.write_all(&head).unwrap();
    f.write_all(&data).unwrap();
}

/// Frame `k` of the source video: smooth waves drifting, and a bright square moving across
fn source_frame(k: u32) -> I420Frame {
    let mut f = I420Frame::black(W, H);
    let k = f64::from(k);
    for y in 0..H {
        for x in 0..W {
            let (xf, yf) = (f64::from(x), f64::from(y));
            let mut v =
                128.0 + 50.0 * ((xf + 5.0 * k) / 20.0).sin() + 40.0 * ((yf - 3.0 * k) / 15.0).cos();
            let bx = (10.0 * k) % f64::from(W - 40);
            if xf >= bx && xf < bx + 40.0 && (100.0..140.0).contains(&yf) {
                v = 235.0;
            }
            f.y[(y * W + x) as usize] = v.clamp(16.0, 235.0) as u8;
        }
    }
    let cw = W / 2;
    for y in 0..H / 2 {
        for x in 0..cw {
            let s = (f64::from(x + y) + 4.0 * k) / 12.0;
            f.u[(y * cw + x) as usize] = (128.0 + 40.0 * s.sin()) as u8;
            f.v[(y * cw + x) as usize] = (128.0 + 40.0 * s.cos()) as u8;
        }
    }
    f
}

fn write_y4m(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "YUV4MPEG2 W{W} H{H} F15:1 Ip A1:1 C420jpeg").unwrap();
    for k in 0..FRAMES {
        let fr = source_frame(k);
        f.write_all(b"FRAME\n").unwrap();
        f.write_all(&fr.y).unwrap();
        f.write_all(&fr.u).unwrap();
        f.write_all(&fr.v).unwrap();
    }
    f.flush().unwrap();
}

fn read_wav(path: &Path) -> Vec<f64> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = WavReader::new(std::io::BufReader::new(f), 1).unwrap();
    assert_eq!(r.info().sample_rate, 48_000, "recordings are 48 kHz");
    r.read_to_end(48_000 * 600)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Blocks of `k` samples averaged (a crude low-pass and decimation for the coarse search)
fn decimate(x: &[f64], k: usize) -> Vec<f64> {
    x.chunks_exact(k)
        .map(|c| c.iter().sum::<f64>() / k as f64)
        .collect()
}

/// Normalised cross-correlation of `seg` against the looped `reference` at `lag`
fn ncc_at(seg: &[f64], reference: &[f64], lag: usize) -> f64 {
    let n = reference.len();
    let (mut dot, mut ee) = (0.0, 0.0);
    for (i, s) in seg.iter().enumerate() {
        let r = reference[(lag + i) % n];
        dot += s * r;
        ee += r * r;
    }
    let ss: f64 = seg.iter().map(|s| s * s).sum();
    if ss == 0.0 || ee == 0.0 {
        return 0.0;
    }
    dot / (ss * ee).sqrt()
}

/// The best NCC of `seg` over every lag into the looped `reference`: coarse at 8 kHz, then
/// refined at 48 kHz
fn best_ncc(seg: &[f64], reference: &[f64]) -> f64 {
    const K: usize = 6;
    let (seg_d, ref_d) = (decimate(seg, K), decimate(reference, K));
    let coarse = (0..ref_d.len())
        .max_by(|&a, &b| ncc_at(&seg_d, &ref_d, a).total_cmp(&ncc_at(&seg_d, &ref_d, b)))
        .unwrap();
    let n = reference.len();
    (0..4 * K)
        .map(|d| (coarse * K + n + d - 2 * K) % n)
        .map(|lag| ncc_at(seg, reference, lag))
        .fold(f64::MIN, f64::max)
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0 * 255.0 / mse).log10()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// alice sends a 44.1 kHz stereo WAV and a 320x240 Y4M, both looped; bob records. bob's
/// `alice.wav` must correlate with what alice's file decodes to (48 kHz mono) at
/// [`MIN_AUDIO_NCC`], and each frame of `alice.y4m` must match some source frame at
/// [`MIN_VIDEO_PSNR_DB`] (medians over the second half of the recording, after start-up).
#[test]
fn files_sent_by_one_peer_come_back_recorded_by_another() {
    let dir = std::env::temp_dir().join(format!("meshrtc-files-{}", std::process::id()));
    let rec = dir.join("rec");
    std::fs::create_dir_all(&dir).unwrap();
    let (wav, y4m) = (dir.join("in.wav"), dir.join("in.y4m"));
    write_wav(&wav);
    write_y4m(&y4m);
    let (server, url) = start_signal();
    let spawn_peer = |id: &str, duration: &str, extra: &[&std::ffi::OsStr]| {
        meshrtc()
            .args(["peer", "--signal", &url, "--room", "files", "--id", id])
            .args([
                "--duration",
                duration,
                "--bind",
                "127.0.0.1",
                "--video-codec",
                "vp8",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Reaper::new)
            .unwrap()
    };
    // bob leaves first (and closes his files); alice is still sending until then.
    let bob = spawn_peer("bob", "7", &["--record".as_ref(), rec.as_os_str()]);
    let alice = spawn_peer(
        "alice",
        "9",
        &[
            "--audio-file".as_ref(),
            wav.as_os_str(),
            "--video-file".as_ref(),
            y4m.as_os_str(),
        ],
    );
    for (name, child) in [("bob", bob), ("alice", alice)] {
        let out = wait(child, Duration::from_secs(40));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        if name == "bob" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("recorded alice.wav"), "{stdout}");
            assert!(stdout.contains("recorded alice.y4m"), "{stdout}");
        }
    }
    drop(server);

    // Audio.
    let sent = {
        let f = std::fs::File::open(&wav).unwrap();
        let mut r = WavReader::new(std::io::BufReader::new(f), 1).unwrap();
        r.read_to_end(48_000 * 10)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect::<Vec<_>>()
    };
    let got = read_wav(&rec.join("alice.wav"));
    assert!(got.len() > 48_000 * 3, "{} samples recorded", got.len());
    let half = &got[got.len() / 2..];
    let nccs: Vec<f64> = half
        .chunks_exact(24_000)
        .take(6)
        .map(|seg| best_ncc(seg, &sent))
        .collect();
    let ncc = median(nccs.clone());

    // Video.
    let sources: Vec<I420Frame> = (0..FRAMES).map(source_frame).collect();
    let f = std::fs::File::open(rec.join("alice.y4m")).unwrap();
    let mut r = Y4mReader::new(std::io::BufReader::new(f)).unwrap();
    assert_eq!(
        (r.info().width, r.info().height),
        (W, H),
        "recorded at the sent size"
    );
    let mut frames = Vec::new();
    while let Some(fr) = r.next_frame().unwrap() {
        frames.push(fr);
    }
    assert!(frames.len() >= 30, "{} frames recorded", frames.len());
    let psnrs: Vec<f64> = frames[frames.len() / 2..]
        .iter()
        .map(|fr| {
            sources
                .iter()
                .map(|s| psnr(&fr.y, &s.y))
                .fold(f64::MIN, f64::max)
        })
        .collect();
    let db = median(psnrs.clone());
    eprintln!(
        "recorded vs sent: audio NCC median {ncc:.4} (windows {nccs:.3?}); video PSNR median {db:.2} dB over {} frames (min {:.2})",
        psnrs.len(),
        psnrs.iter().copied().fold(f64::MAX, f64::min)
    );
    assert!(
        ncc >= MIN_AUDIO_NCC,
        "audio NCC {ncc} < {MIN_AUDIO_NCC}: {nccs:?}"
    );
    assert!(
        db >= MIN_VIDEO_PSNR_DB,
        "video PSNR {db} dB < {MIN_VIDEO_PSNR_DB}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad files and directories are one clear line before joining, not a crash mid-call
#[test]
fn bad_media_files_are_refused_with_one_line() {
    let dir = std::env::temp_dir().join(format!("meshrtc-badfiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.wav");
    std::fs::write(&junk, b"RIFF\x04\0\0\0WAVEjunkjunkjunk").unwrap();
    let missing = dir.join("missing.y4m");
    let file_as_dir = dir.join("a-file");
    std::fs::write(&file_as_dir, b"x").unwrap();
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec!["--audio-file".into(), junk.clone().into()],
            "audio file",
        ),
        (
            vec!["--video-file".into(), missing.clone().into()],
            "cannot read video file",
        ),
        (
            vec!["--video-file".into(), junk.clone().into()],
            "video file",
        ),
        (
            vec!["--record".into(), file_as_dir.join("sub").into()],
            "record directory",
        ),
        (
            vec![
                "--audio".into(),
                "tone".into(),
                "--audio-file".into(),
                junk.clone().into(),
            ],
            "not both",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = meshrtc();
        // No server is needed: the files are checked before joining.
        cmd.args(["peer", "--signal", "ws://127.0.0.1:9/", "--room", "r"])
            .args(&args);
        let out = crate::cli::run(cmd, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json`: every log line on stderr is one JSON object with a level and a
/// message (the last line, the command's own error, stays plain text)
#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut cmd = meshrtc();
    cmd.env("RUST_LOG", "debug")
        .args([
            "--log-format",
            "json",
            "peer",
            "--signal",
            "ws://127.0.0.1:9/",
            "--room",
            "r",
        ])
        .args(["--bind", "127.0.0.1", "--duration", "1"]);
    let out = crate::cli::run(cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "nothing listens on port 9");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let (last, logs) = lines.split_last().expect("some output");
    assert!(last.starts_with("error: "), "{err}");
    assert!(!logs.is_empty(), "debug logs expected: {err}");
    for line in logs {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        assert!(
            v["timestamp"].is_string() && v["target"].is_string(),
            "{line}"
        );
    }
}

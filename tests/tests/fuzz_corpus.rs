//! Replays every file of every fuzz target's seed corpus (`fuzz/seeds/<target>/`) through
//! the target's own body (`fuzz/targets/`), on stable Rust: what the fuzzers found and
//! what they start from stays exercised on every test run, without nightly.
//!
//! Each target also gets a short mutation run on every test run: seeded mutations of its
//! seeds (bit flips, interesting bytes, insertions, deletions, duplicated ranges, splices of
//! two seeds) for a couple of seconds. Unlike `scripts/fuzz.sh` (libFuzzer, coverage-guided,
//! nightly) it has no coverage feedback; it is the short run CI does on every change. The
//! sequence of inputs is fixed by `MESHRTC_FUZZ_SEED` (default 1); a failing input is
//! written to `target/fuzz-findings/<target>-<hash>` and named in the failure.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/targets/mod.rs"]
mod targets;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_seeds_and_every_seed_directory_a_target() {
    for (name, _) in targets::ALL {
        let dir = seeds_dir().join(name);
        assert!(
            !files(&dir).is_empty(),
            "no seeds for {name} in {}",
            dir.display()
        );
    }
    for entry in std::fs::read_dir(seeds_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            targets::ALL.iter().any(|(t, _)| *t == name),
            "seed directory {name} has no target"
        );
    }
}

fn replay(target: &str) {
    let (_, run) = targets::ALL.iter().find(|(t, _)| *t == target).unwrap();
    let dir = seeds_dir().join(target);
    let all = files(&dir);
    for path in &all {
        let data = std::fs::read(path).unwrap();
        let res = std::panic::catch_unwind(|| run(&data));
        assert!(res.is_ok(), "{target}: {} fails", path.display());
    }
    eprintln!("{target}: {} inputs replayed", all.len());
}

/// How long each target's mutation run lasts, at most
const MUTATION_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// Inputs per target's mutation run, at most
const MUTATION_RUNS: u64 = 20_000;
/// Longest mutated input
const MAX_LEN: usize = 64 * 1024;

/// xorshift64*: a small seeded generator, enough to pick mutations
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `input`, with `other` as the splice partner
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'{', b'"', b'\n'];
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                input.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 1 => input.truncate(rng.below(len)),
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

/// Runs seeded mutations of the target's seeds through it for [`MUTATION_TIME`]
fn mutation_run(target: &str) {
    let (_, run) = targets::ALL.iter().find(|(t, _)| *t == target).unwrap();
    let seeds: Vec<Vec<u8>> = files(&seeds_dir().join(target))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let seed: u64 = std::env::var("MESHRTC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Mixes the target's name in so that targets do not share one sequence
    let name_hash = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng((seed ^ name_hash) | 1);
    // A finding panics inside the target; keep the default hook's message for it only.
    let start = std::time::Instant::now();
    let mut runs = 0;
    while runs < MUTATION_RUNS && start.elapsed() < MUTATION_TIME {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        mutate(&mut rng, &mut input, other);
        runs += 1;
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-findings");
            let path = dir.join(format!("{target}-{hash:016x}"));
            let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &input));
            panic!(
                "{target}: mutated input {runs} (MESHRTC_FUZZ_SEED={seed}) fails; {}",
                match saved {
                    Ok(()) => format!("saved as {}", path.display()),
                    Err(e) => format!("not saved ({e}): {input:?}"),
                }
            );
        }
    }
    eprintln!(
        "{target}: {runs} mutated inputs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
                mutation_run(stringify!($name));
            }
        )*
    };
}

replay_tests!(
    client_frame,
    server_frame,
    room_token,
    server_machine,
    decode_opus,
    decode_h264,
    decode_vp8,
    decode_vp9,
    participant,
    sdp,
    jitter,
);

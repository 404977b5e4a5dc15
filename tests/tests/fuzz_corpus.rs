//! Replays every file of every fuzz target's seed corpus (`fuzz/seeds/<target>/`) through
//! the target's own body (`fuzz/targets/`), on stable Rust: what the fuzzers found and
//! what they start from stays exercised on every test run, without nightly

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

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
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

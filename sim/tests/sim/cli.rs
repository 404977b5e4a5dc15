//! The `meshrtc-sim` binary: reports, plots, exact replay across processes, bad input

use std::path::Path;
use std::process::{Command, Output};

use crate::util::scratch;

fn sim(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshrtc-sim"))
        .args(args)
        .output()
        .unwrap()
}

const SMALL: &str = r#"
name = "small"
seed = 4
duration_s = 9

[[hosts]]
name = "a"
ppm = 300

[[hosts]]
name = "b"

[link]
latency_ms = 15
jitter = { shape = "exponential", mean_ms = 2 }
loss = { model = "random", rate = 0.03 }
# Slow enough that one byte more or less would move every later packet by microseconds.
rate_kbps = 400
queue_packets = 40

[[traffic]]
from = "*"
to = "*"
rate_hz = 50
stop_s = 4
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn runs_a_small_scenario_and_writes_a_valid_report_and_plot() {
    let dir = scratch("cli-small");
    let scenario = write(&dir, "small.toml", SMALL);
    let (report, plot) = (dir.join("r.json"), dir.join("d.svg"));
    let out = sim(&[
        scenario.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
        "--plot".as_ref(),
        plot.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("small seed 4"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["scenario"], "small");
    assert_eq!(json["seed"], 4);
    assert_eq!(json["duration_s"], 9.0);
    let pairs = json["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    for p in pairs {
        assert_eq!(p["connected"], true);
        assert!(p["connect_ms"].as_f64().unwrap() > 0.0);
        let s = &p["streams"][0];
        assert_eq!(s["name"], "data");
        assert!(s["sent"].as_u64().unwrap() > 150);
        assert_eq!(s["received"], s["sent"]);
        assert_eq!(s["lost"], 0);
        let d = &s["delay_ms"];
        assert!(d["p50"].as_f64().unwrap() >= 15.0);
        assert!(d["p99"].as_f64().unwrap() >= d["p95"].as_f64().unwrap());
        assert!(p["link"]["lost"].as_u64().unwrap() > 0);
    }
    // Field order is fixed (structs, not maps).
    let text = std::fs::read_to_string(&report).unwrap();
    let order = [
        "\"scenario\"",
        "\"seed\"",
        "\"duration_s\"",
        "\"hosts\"",
        "\"pairs\"",
    ];
    let pos: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("a → b data"));
}

#[test]
fn two_processes_write_the_same_bytes_and_another_seed_differs() {
    let dir = scratch("cli-replay");
    let scenario = write(&dir, "small.toml", SMALL);
    let run = |name: &str, seed: Option<&str>| {
        let path = dir.join(name);
        let mut args: Vec<&std::ffi::OsStr> =
            vec![scenario.as_os_str(), "--report".as_ref(), path.as_os_str()];
        if let Some(s) = seed {
            args.extend([std::ffi::OsStr::new("--seed"), std::ffi::OsStr::new(s)]);
        }
        let out = sim(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(path).unwrap()
    };
    let a = run("a.json", None);
    let b = run("b.json", None);
    let c = run("c.json", Some("4"));
    let d = run("d.json", Some("5"));
    assert_eq!(a, b);
    assert_eq!(a, c, "--seed 4 is the scenario's own seed");
    assert_ne!(a, d);
}

#[test]
fn bad_input_exits_non_zero_with_one_clear_line() {
    let dir = scratch("cli-bad");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec![dir.join("nope.toml").into()], "nope.toml"),
        (
            vec![write(&dir, "typo.toml", &SMALL.replace("latency_ms", "latncy_ms")).into()],
            "latncy_ms",
        ),
        (
            vec![write(&dir, "syntax.toml", "duration_s = = 3\n").into()],
            "syntax.toml",
        ),
        (
            vec![write(
                &dir,
                "host.toml",
                &format!("{SMALL}\n[[timeline]]\nat_s = 1\naction = \"leave\"\nhost = \"zed\"\n"),
            )
            .into()],
            "zed",
        ),
        (
            vec![write(
                &dir,
                "trace.toml",
                &SMALL.replace("rate_kbps = 400", "capacity_trace = \"absent.up\""),
            )
            .into()],
            "absent.up",
        ),
        (
            vec![
                write(&dir, "ok.toml", SMALL).into(),
                "--seed".into(),
                "many".into(),
            ],
            "many",
        ),
        (vec!["--frobnicate".into()], "frobnicate"),
    ];
    for (args, needle) in cases {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = sim(&refs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(needle),
            "the first line names the problem: {err}"
        );
    }
    // Every error is exactly one line.
    for args in [
        vec![dir.join("typo.toml").into_os_string()],
        vec!["--frobnicate".into()],
        vec![],
    ] {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = sim(&refs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("meshrtc-sim: "), "{err}");
    }
}

#[test]
fn help_describes_the_flags() {
    let out = sim(&["--help".as_ref()]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--seed", "--report", "--plot", "SCENARIO"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}

//! `meshrtc-sim SCENARIO.toml [--seed N] [--report report.json] [--plot plot.svg]
//! [--rates rates.csv] [--rate-plot rates.svg]`
//!
//! Runs a network scenario in virtual time, deterministically: the same scenario and seed
//! give a byte-identical report. Prints a short summary on stdout; on bad input exits
//! non-zero with one line on stderr.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use meshrtc_sim::report::DelayReport;
use meshrtc_sim::{plot, Error, Report, Scenario};

/// Runs a meshrtc network scenario in virtual time
#[derive(Debug, Parser)]
#[command(name = "meshrtc-sim", version, about)]
struct Args {
    /// The scenario file (TOML)
    scenario: PathBuf,
    /// Seed of every random choice (default: the scenario's)
    #[arg(long)]
    seed: Option<u64>,
    /// Write the JSON report here
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Draw one-way delay over time per pair into this SVG file
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Write every pair's rates over time (sent, delivered, capacity, estimate, video
    /// target) as CSV here
    #[arg(long, value_name = "FILE")]
    rates: Option<PathBuf>,
    /// Draw every pair's rates over time (sent, capacity, estimate, video target) into
    /// this SVG file
    #[arg(long, value_name = "FILE")]
    rate_plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, as for every other bad input (clap's own message has several).
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("meshrtc-sim: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    // The TURN server logs every 401 challenge (the first request of each
                    // allocation) as an error.
                    "warn,stun_proto::auth=off",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshrtc-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let scenario = Scenario::from_path(&args.scenario)?;
    // Wall time is only printed, never part of the report.
    #[allow(clippy::disallowed_methods)] // reason: measures the run's wall time for the summary
    let started = Instant::now();
    let outcome = scenario.run(args.seed)?;
    let wall = started.elapsed();
    if let Some(path) = &args.report {
        let mut json = serde_json::to_string_pretty(&outcome.report)
            .expect("a report of plain numbers and strings serializes; panic means bug");
        json.push('\n');
        std::fs::write(path, json).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} (seed {}): one-way delay",
            outcome.report.scenario, outcome.report.seed
        );
        plot::write_svg(path, &title, &outcome.series)?;
    }
    let names: Vec<String> = outcome
        .report
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .collect();
    if let Some(path) = &args.rate_plot {
        let title = format!(
            "{} (seed {}): rates",
            outcome.report.scenario, outcome.report.seed
        );
        plot::write_rates_svg(path, &title, &outcome.sim, &names)?;
    }
    if let Some(path) = &args.rates {
        let csv = meshrtc_sim::rates::csv(&outcome.sim, &names);
        std::fs::write(path, csv).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
    }
    print_summary(&outcome.report, wall.as_secs_f64());
    Ok(())
}

fn print_summary(r: &Report, wall_s: f64) {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{} seed {}: {:.1} s simulated in {:.2} s ({:.0}x)",
        r.scenario,
        r.seed,
        r.duration_s,
        wall_s,
        r.duration_s / wall_s.max(1e-9)
    );
    let connected = r.pairs.iter().filter(|p| p.connected).count();
    let _ = writeln!(
        out,
        "pairs connected at the end: {connected}/{}",
        r.pairs.len()
    );
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9}",
        "pair", "connect", "sent", "recv", "lost", "late", "p50 ms", "p95 ms", "p99 ms"
    );
    for p in &r.pairs {
        for s in &p.streams {
            let (p50, p95, p99) = percentiles(s.delay_ms.as_ref());
            let _ = writeln!(
                out,
                "{:<18} {:>9} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9}",
                format!("{}→{}", p.from, p.to),
                p.connect_ms.map_or("-".into(), fmt),
                s.sent,
                s.received,
                s.lost,
                s.late,
                p50,
                p95,
                p99
            );
        }
    }
    if r.pairs.iter().any(|p| !p.media.is_empty()) {
        let _ = writeln!(
            out,
            "{:<18} {:<8} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "media",
            "stream",
            "sent",
            "played",
            "lost",
            "late",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "gap ms"
        );
        for p in &r.pairs {
            for m in &p.media {
                let (p50, p95, p99) = percentiles(m.delay_ms.as_ref());
                let _ = writeln!(
                    out,
                    "{:<18} {:<8} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
                    format!("{}→{}", p.from, p.to),
                    m.name,
                    m.sent,
                    m.played,
                    m.lost,
                    m.late,
                    p50,
                    p95,
                    p99,
                    m.longest_gap_ms.map_or("-".into(), fmt)
                );
            }
        }
    }
    // A closed stdout (`| head`) is not an error: the report is already written.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A delay's p50, p95 and p99 for the table (`-` when nothing was measured)
fn percentiles(d: Option<&DelayReport>) -> (String, String, String) {
    d.map_or(("-".into(), "-".into(), "-".into()), |d| {
        (fmt(d.p50), fmt(d.p95), fmt(d.p99))
    })
}

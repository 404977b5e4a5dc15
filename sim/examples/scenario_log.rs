//! Runs a scenario and prints the simulation's event log (virtual time, host, event)
//!
//! `cargo run --release -p meshrtc-sim --example scenario_log -- scenarios/X.toml [seed]`

use meshrtc_sim::Scenario;

fn main() {
    // RUST_LOG=meshrtc=debug shows the core's decisions, each with its host and virtual time.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .without_time()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: scenario_log FILE [SEED]");
    let seed = args.next().map(|s| s.parse().expect("a number"));
    let scenario = Scenario::from_path(std::path::Path::new(&path)).expect("a scenario");
    let out = scenario.run(seed).expect("it runs");
    for e in out.sim.log() {
        let name = &out.report.hosts[e.host.0].name;
        println!("{:>10.3} {name:>6} {}", e.at.as_secs_f64(), e.what);
    }
}

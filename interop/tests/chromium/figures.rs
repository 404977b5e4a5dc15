//! Figures, run by hand (ignored in CI):
//!
//! ```text
//! cargo test -p meshrtc-interop --test chromium -- --ignored connect_time --nocapture
//! ```

use std::time::Duration;

use crate::harness::{num, run, World, PAGE_START};

const RUNS: usize = 10;

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn summary(what: &str, v: &[f64]) {
    if v.is_empty() {
        eprintln!("FIGURE {what}: no samples");
        return;
    }
    eprintln!(
        "FIGURE {what}: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 0.0),
        percentile(v, 1.0),
        v.len()
    );
}

/// Connect time (offer to usable data channel) between meshrtc and Chromium, 10 runs each
/// way: meshrtc offering to one Chromium (ten meshrtc peers one after another), and Chromium
/// offering to one meshrtc peer (ten Chromium pages one after another).
#[test]
#[ignore = "a figure, run by hand"]
fn connect_time_p50_over_10_runs() {
    run("connect_time_p50_over_10_runs", |w: &mut World| {
        let (mut mesh_side, mut page_side) = (Vec::new(), Vec::new());
        w.open_page("page", "id=chromium")?;
        w.wait_announced("page")?;
        for i in 0..RUNS {
            let id = format!("mesh{i}");
            w.spawn_peer(&id, Duration::from_secs(2), &[])?;
            let stats = w.finish_peer(&id, Duration::from_secs(20))?;
            let page = w.wait_page_saw_leave("page", &id)?;
            mesh_side.extend(num(&stats, "remote.chromium.connect_ms"));
            page_side.extend(num(&page["peers"][&id], "connect_ms"));
        }
        summary("meshrtc offers, connect time seen by meshrtc", &mesh_side);
        summary("meshrtc offers, connect time seen by Chromium", &page_side);
        w.close_page("page");

        let (mut mesh_side, mut page_side) = (Vec::new(), Vec::new());
        w.spawn_peer("host", Duration::from_secs(600), &[])?;
        w.peer("host").wait_joined(Duration::from_secs(20))?;
        for i in 0..RUNS {
            let tag = format!("page{i}");
            w.open_page(&tag, &format!("id=chromium{i}"))?;
            let page = w.wait_page_connected(&tag, "host", PAGE_START)?;
            page_side.extend(num(&page["peers"]["host"], "connect_ms"));
            w.close_page(&tag);
        }
        w.peer("host").terminate();
        let stats = w.finish_peer("host", Duration::from_secs(20))?;
        for i in 0..RUNS {
            mesh_side.extend(num(&stats, &format!("remote.chromium{i}.connect_ms")));
        }
        summary("Chromium offers, connect time seen by meshrtc", &mesh_side);
        summary("Chromium offers, connect time seen by Chromium", &page_side);
        Ok(())
    });
}

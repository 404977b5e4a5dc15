//! SVG plots over time (plotters, SVG backend): one-way delay per directed pair and
//! stream, and rates per directed pair

use std::path::Path;

use plotters::prelude::*;

use crate::report::Series;
use crate::Error;

/// Points per series at most; longer series keep the largest delay in each time bucket
const MAX_POINTS: usize = 1000;

/// Series drawn with a legend entry at most (a 10-peer mesh has 90 pairs)
const MAX_LEGEND: usize = 12;

/// Draws `series` (one-way delays) into an SVG file at `path`
pub fn write_svg(path: &Path, title: &str, series: &[Series]) -> Result<(), Error> {
    let svg = render_svg(title, series)?;
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

/// Draws `series` (one-way delays) as an SVG document
pub fn render_svg(title: &str, series: &[Series]) -> Result<String, Error> {
    render_svg_axes(title, "send time (s)", "one-way delay (ms)", series)
}

/// Draws every directed pair's rates (sent, delivered, capacity, estimate, video target)
/// into an SVG file at `path`
pub fn write_rates_svg(
    path: &Path,
    title: &str,
    sim: &crate::Sim,
    names: &[String],
) -> Result<(), Error> {
    let series = crate::rates::series(sim, names);
    let svg = render_svg_axes(title, "time (s)", "rate (kbit/s)", &series)?;
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

/// Draws `series` as an SVG document with the given axis labels
pub fn render_svg_axes(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<String, Error> {
    let plot_err = |e: &dyn std::fmt::Display| Error::Plot(e.to_string());
    let thinned: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.label.clone(), thin(&s.points)))
        .collect();
    let x_max = thinned
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0f64, f64::max);
    let y_max = thinned
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, 650)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| plot_err(&e))?;
        let legend = thinned.len() <= MAX_LEGEND;
        for (i, (label, points)) in thinned.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let drawn = chart
                .draw_series(LineSeries::new(points, color.stroke_width(1)))
                .map_err(|e| plot_err(&e))?;
            if legend {
                drawn.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if legend && !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| plot_err(&e))?;
        }
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(out)
}

/// At most [`MAX_POINTS`] points: the largest delay in each of as many equal time buckets
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let width = ((t1 - t0) / MAX_POINTS as f64).max(f64::MIN_POSITIVE);
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(MAX_POINTS + 1);
    let mut bucket = None;
    for &(t, d) in points {
        let b = ((t - t0) / width) as usize;
        match out.last_mut() {
            Some(last) if bucket == Some(b) => {
                if d > last.1 {
                    *last = (last.0, d);
                }
            }
            _ => {
                bucket = Some(b);
                out.push((t, d));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_peaks() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64 * 0.001, if i == 5000 { 900.0 } else { 20.0 }))
            .collect();
        let t = thin(&pts);
        assert!(t.len() <= MAX_POINTS + 1);
        assert!(t.iter().any(|p| p.1 == 900.0));
    }

    #[test]
    fn renders_svg() {
        let s = Series {
            label: "a → b data".into(),
            points: vec![(0.0, 10.0), (1.0, 12.0), (2.0, 30.0)],
        };
        let svg = render_svg("test", &[s]).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a → b data"));
    }
}

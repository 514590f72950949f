//! The `--html` report: a summary table and two inline SVG plots drawn with plotters'
//! SVG backend (latency by percentile on a log "nines" axis, and per-second p50 / p99).

use std::fmt::Write as _;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::cli::RunConfig;
use crate::report::{Report, fmt_us};

const SIZE: (u32, u32) = (960, 480);

/// Renders a self-contained HTML page for `runs` (label, report) made with `cfg`.
pub fn render(title: &str, cfg: &RunConfig, runs: &[(String, &Report)]) -> anyhow::Result<String> {
    let percentile_svg = percentile_plot(runs)?;
    let timeline_svg = timeline_plot(runs)?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;}} \
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;}} th{{background:#eee;}} \
         td:first-child{{text-align:left;}} pre{{background:#f6f6f6;padding:1em;}}</style>\n\
         </head>\n<body>\n<h1>{t}</h1>\n<p>{d}</p>\n",
        t = escape(title),
        d = escape(&crate::report::describe(cfg)),
    );
    html.push_str(
        "<table>\n<tr><th>run</th><th>target</th><th>req/s</th><th>count</th><th>p50</th>\
         <th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>errors</th><th>late</th></tr>\n",
    );
    for (label, r) in runs {
        let l = &r.latency_us;
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(label),
            escape(&r.urls.join(" ")),
            r.throughput_rps,
            r.requests,
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            r.errors.total,
            r.late,
        );
    }
    html.push_str("</table>\n<h2>Latency by percentile</h2>\n");
    html.push_str(&percentile_svg);
    html.push_str(
        "\n<h2>Latency over time (per second of send time; solid p50, dashed p99)</h2>\n",
    );
    html.push_str(&timeline_svg);
    let config = serde_json::to_string_pretty(cfg)?;
    let _ = write!(
        html,
        "\n<h2>Configuration</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&config)
    );
    Ok(html)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// x coordinate of a percentile: the number of nines, `-log10(1 - p/100)`, capped at
/// `log10(samples)` (where the maximum lies).
fn nines(percentile: f64, cap: f64) -> f64 {
    let rest = 1.0 - percentile / 100.0;
    if rest <= 0.0 {
        cap
    } else {
        (-rest.log10()).min(cap)
    }
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = if *x <= 2.0 {
        0
    } else {
        (x.ceil() as usize).saturating_sub(2)
    };
    format!("{p:.decimals$}%")
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

fn percentile_plot(runs: &[(String, &Report)]) -> anyhow::Result<String> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let (mut max_x, mut max_y) = (2.0f64, 0.001f64);
    for (label, r) in runs {
        let cap = (r.latency_us.samples.max(10) as f64).log10();
        let points: Vec<(f64, f64)> = r
            .percentiles
            .iter()
            .map(|p| (nines(p.percentile, cap), p.latency_us / 1000.0))
            .collect();
        for &(x, y) in &points {
            max_x = max_x.max(x);
            max_y = max_y.max(y);
        }
        series.push((label.clone(), points));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency by percentile", ("sans-serif", 20))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max_x.ceil(), 0f64..max_y * 1.05)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_labels(max_x.ceil() as usize + 1)
            .x_label_formatter(&nines_label)
            .draw()
            .map_err(plot_err)?;
        for (i, (label, points)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn timeline_plot(runs: &[(String, &Report)]) -> anyhow::Result<String> {
    let mut max_x = 1.0f64;
    let mut max_y = 0.001f64;
    for (_, r) in runs {
        max_x = max_x.max(r.timeline.len() as f64);
        for s in &r.timeline {
            max_y = max_y.max(s.p99_us / 1000.0);
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency over time", ("sans-serif", 20))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // Head-room for the legend box.
            .build_cartesian_2d(0f64..max_x, 0f64..max_y * 1.3)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the measured window")
            .y_desc("latency (ms)")
            .draw()
            .map_err(plot_err)?;
        for (i, (label, r)) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            // Each second's point sits in the middle of its second.
            let pts = |f: fn(&crate::report::SecondStats) -> f64| -> Vec<(f64, f64)> {
                r.timeline
                    .iter()
                    .filter(|s| s.requests > s.errors)
                    .map(|s| (s.second as f64 + 0.5, f(s) / 1000.0))
                    .collect()
            };
            chart
                .draw_series(LineSeries::new(pts(|s| s.p50_us), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(format!("{label} p50"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(DashedLineSeries::new(
                    pts(|s| s.p99_us),
                    6,
                    4,
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(format!("{label} p99"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0, 5.0), 0.0);
        assert!((nines(99.0, 5.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0, 3.0), 3.0);
        assert_eq!(nines_label(&0.0), "0%");
        assert_eq!(nines_label(&1.0), "90%");
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&4.0), "99.99%");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}

//! `infergate-loadtest`: an open- and closed-loop HTTP/1.1 and HTTP/2 load generator for
//! scoring URLs that measures latency honestly (from the intended send time in open loop,
//! so without coordinated omission) and reports HDR-histogram percentiles as a table,
//! JSON and an HTML page with plots; `--compare` runs two targets interleaved.
//!
//! The binary is a thin wrapper over [`main_with_args`]; tests and tools can build a
//! [`Cli`] (or a [`RunConfig`]) and call [`run_cli`] / [`run`] inside a tokio runtime.

pub mod cli;
mod client;
mod engine;
pub mod html;
pub mod report;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};

pub use cli::{Cli, Mode, RunConfig};
pub use engine::run;
pub use report::Report;

/// One run of a `--compare` session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRun {
    /// `A` or `B`.
    pub target: String,
    /// Round number, from 1.
    pub round: u32,
    /// The URL of that target.
    pub url: String,
    /// The run's report.
    pub report: Report,
}

/// Medians over the runs of one target (or ratios B/A of those medians).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Medians {
    /// Throughput, requests per second.
    pub throughput_rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// The result of `--compare URL_A URL_B`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// Every run, in the order they were made (A, B, A, B, ...).
    pub runs: Vec<CompareRun>,
    /// Medians of target A's runs.
    pub median_a: Medians,
    /// Medians of target B's runs.
    pub median_b: Medians,
    /// `median_b / median_a`, field by field (> 1 for req/s means B is faster; > 1 for
    /// latency means B is slower).
    pub ratio_b_over_a: Medians,
}

/// What [`run_cli`] measured.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A single run against the positional URL(s).
    Single(Box<Report>),
    /// A `--compare` session.
    Compare(Comparison),
}

/// The median of `values` (mean of the two middle values for an even count; 0 if empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn medians<'a>(reports: impl Iterator<Item = &'a Report> + Clone) -> Medians {
    let collect = |f: fn(&Report) -> f64| median(&reports.clone().map(f).collect::<Vec<_>>());
    Medians {
        throughput_rps: collect(|r| r.throughput_rps),
        p50_us: collect(|r| r.latency_us.p50_us),
        p99_us: collect(|r| r.latency_us.p99_us),
    }
}

fn ratio(b: f64, a: f64) -> f64 {
    if a == 0.0 { f64::NAN } else { b / a }
}

/// Builds the comparison summary of `runs`.
pub fn summarize(runs: Vec<CompareRun>) -> Comparison {
    let a = medians(runs.iter().filter(|r| r.target == "A").map(|r| &r.report));
    let b = medians(runs.iter().filter(|r| r.target == "B").map(|r| &r.report));
    Comparison {
        runs,
        median_a: a,
        median_b: b,
        ratio_b_over_a: Medians {
            throughput_rps: ratio(b.throughput_rps, a.throughput_rps),
            p50_us: ratio(b.p50_us, a.p50_us),
            p99_us: ratio(b.p99_us, a.p99_us),
        },
    }
}

/// Runs what `cli` asks for (one run or a comparison), prints the table unless `--quiet`,
/// and writes `--json` / `--html`.
pub async fn run_cli(cli: Cli) -> anyhow::Result<Outcome> {
    let say = |s: &str| {
        if !cli.quiet {
            println!("{s}");
        }
    };
    if let Some(pair) = &cli.compare {
        let [url_a, url_b] = pair.as_slice() else {
            anyhow::bail!("--compare takes exactly two URLs");
        };
        let cfg_a = cli.run_config(vec![url_a.clone()])?;
        let cfg_b = cli.run_config(vec![url_b.clone()])?;
        say(&format!("A = {url_a}\nB = {url_b}"));
        say(&report::describe(&cfg_a).replacen(url_a.as_str(), "A|B", 1));
        say(&report::table_header());
        let mut runs = Vec::new();
        for round in 1..=cli.rounds {
            for (target, cfg) in [("A", &cfg_a), ("B", &cfg_b)] {
                if !runs.is_empty() && !cli.pause.is_zero() {
                    tokio::time::sleep(cli.pause).await;
                }
                let r = run(cfg).await?;
                let label = format!("{target}#{round}");
                say(&report::table_row(&label, &r));
                let err = report::error_lines(&r);
                if !err.is_empty() {
                    say(&err);
                }
                runs.push(CompareRun {
                    target: target.to_owned(),
                    round,
                    url: cfg.urls[0].clone(),
                    report: r,
                });
            }
        }
        let cmp = summarize(runs);
        let (a, b, q) = (&cmp.median_a, &cmp.median_b, &cmp.ratio_b_over_a);
        let fmt = report::fmt_us;
        say(&format!(
            "median A: {:.1} req/s, p50 {}, p99 {}\nmedian B: {:.1} req/s, p50 {}, p99 {}\n\
             ratio B/A (medians): req/s {:.3}, p50 {:.3}, p99 {:.3}",
            a.throughput_rps,
            fmt(a.p50_us),
            fmt(a.p99_us),
            b.throughput_rps,
            fmt(b.p50_us),
            fmt(b.p99_us),
            q.throughput_rps,
            q.p50_us,
            q.p99_us,
        ));
        if let Some(path) = &cli.json {
            let value = serde_json::json!({ "config": cfg_a, "compare": &cmp });
            write_json(path, &value)?;
        }
        if let Some(path) = &cli.html {
            let runs: Vec<(String, &Report)> = cmp
                .runs
                .iter()
                .map(|r| (format!("{}#{}", r.target, r.round), &r.report))
                .collect();
            let title = format!("infergate-loadtest: A = {url_a} vs B = {url_b}");
            write_file(path, &html::render(&title, &cfg_a, &runs)?)?;
        }
        return Ok(Outcome::Compare(cmp));
    }

    let cfg = cli.run_config(cli.urls.clone())?;
    let r = run(&cfg).await?;
    say(&report::render_single(&cfg, &r));
    if let Some(path) = &cli.json {
        write_json(path, &serde_json::json!({ "config": &cfg, "report": &r }))?;
    }
    if let Some(path) = &cli.html {
        let title = format!("infergate-loadtest: {}", cfg.urls.join(" "));
        write_file(
            path,
            &html::render(&title, &cfg, &[("run".to_owned(), &r)])?,
        )?;
    }
    Ok(Outcome::Single(Box::new(r)))
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    write_file(path, &serde_json::to_string_pretty(value)?)
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The binary's `main`: parses `args`, builds the tokio runtime (`--threads`), runs and
/// reports. Exit code 2 on usage errors (from clap), 1 on failures.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let result = builder
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run_cli(cli)));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infergate-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}

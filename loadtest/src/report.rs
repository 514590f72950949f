//! Sample recording into HDR histograms, and the report (table / JSON) built from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::{Mode, RunConfig};

/// A request whose sending began more than this after its intended time is "late".
pub const LATE_THRESHOLD: Duration = Duration::from_millis(1);

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed (refused, unreachable, ...).
    Connect,
    /// TLS handshake failed (certificate, protocol, closed during handshake).
    Tls,
    /// No complete response within `--timeout`.
    Timeout,
    /// Connection reset or closed, I/O error while sending or reading.
    Io,
    /// Malformed HTTP or another protocol-level failure.
    Protocol,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A complete response (head and whole body).
    Response {
        /// Status code.
        status: u16,
        /// Body bytes read.
        bytes: u64,
    },
    /// A transport failure.
    Error(ErrorKind),
}

#[derive(Debug, Default)]
struct SecondRec {
    hist: Option<Histogram<u64>>,
    requests: u64,
    errors: u64,
}

/// Per-worker sample sink; merged into one at the end of a run.
#[derive(Debug)]
pub(crate) struct Recorder {
    window_start: Instant,
    window_end: Instant,
    /// Latency of complete responses, in nanoseconds.
    hist: Histogram<u64>,
    seconds: Vec<SecondRec>,
    status: BTreeMap<u16, u64>,
    errors: [u64; 5],
    requests: u64,
    late: u64,
    /// Send lag (actual minus intended send time), microseconds.
    lag: Histogram<u64>,
    bytes: u64,
    last_completion: Option<Instant>,
}

fn new_hist(sigfig: u8) -> Histogram<u64> {
    // Auto-resizing: memory grows with the largest value actually recorded.
    Histogram::new(sigfig).expect("1..=5 significant figures is valid")
}

/// Records `v`, growing the histogram as needed (`saturating_record` would clamp to the
/// current range instead of resizing).
fn record(h: &mut Histogram<u64>, v: u64) {
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

fn kind_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Connect => 0,
        ErrorKind::Tls => 1,
        ErrorKind::Timeout => 2,
        ErrorKind::Io => 3,
        ErrorKind::Protocol => 4,
    }
}

fn saturating_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Recorder {
    /// A recorder keeping samples sent in `[window_start, window_end)`.
    pub(crate) fn new(window_start: Instant, window_end: Instant) -> Self {
        Self {
            window_start,
            window_end,
            hist: new_hist(3),
            seconds: Vec::new(),
            status: BTreeMap::new(),
            errors: [0; 5],
            requests: 0,
            late: 0,
            lag: new_hist(3),
            bytes: 0,
            last_completion: None,
        }
    }

    /// Records one request sent (intended, in open loop) at `sent`, done at `done`, whose
    /// sending began `lag` after `sent`. Samples outside the window are dropped.
    pub(crate) fn record(&mut self, sent: Instant, done: Instant, lag: Duration, outcome: Outcome) {
        if sent < self.window_start || sent >= self.window_end {
            return;
        }
        self.requests += 1;
        self.last_completion = Some(self.last_completion.map_or(done, |l| l.max(done)));
        if lag > LATE_THRESHOLD {
            self.late += 1;
        }
        record(&mut self.lag, saturating_u64(lag.as_micros()));
        let idx = usize::try_from((sent - self.window_start).as_secs()).unwrap_or(usize::MAX);
        if self.seconds.len() <= idx {
            self.seconds.resize_with(idx + 1, SecondRec::default);
        }
        let sec = &mut self.seconds[idx];
        sec.requests += 1;
        let latency = done.saturating_duration_since(sent);
        match outcome {
            Outcome::Response { status, bytes } => {
                *self.status.entry(status).or_default() += 1;
                self.bytes += bytes;
                record(&mut self.hist, saturating_u64(latency.as_nanos()));
                record(
                    sec.hist.get_or_insert_with(|| new_hist(2)),
                    saturating_u64(latency.as_micros()),
                );
                if status >= 400 {
                    sec.errors += 1;
                }
            }
            Outcome::Error(kind) => {
                self.errors[kind_index(kind)] += 1;
                sec.errors += 1;
            }
        }
    }

    /// Adds `other`'s samples to this one.
    pub(crate) fn merge(&mut self, other: Recorder) {
        // Both auto-resize, so adding cannot fail for lack of range.
        let _ = self.hist.add(&other.hist);
        if self.seconds.len() < other.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), SecondRec::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(other.seconds) {
            mine.requests += theirs.requests;
            mine.errors += theirs.errors;
            match (&mut mine.hist, theirs.hist) {
                (Some(a), Some(b)) => {
                    let _ = a.add(&b);
                }
                (slot @ None, Some(b)) => *slot = Some(b),
                _ => {}
            }
        }
        for (status, n) in other.status {
            *self.status.entry(status).or_default() += n;
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.requests += other.requests;
        self.late += other.late;
        let _ = self.lag.add(&other.lag);
        self.bytes += other.bytes;
        self.last_completion = match (self.last_completion, other.last_completion) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Builds the report of a run made with `cfg`.
    pub(crate) fn into_report(self, cfg: &RunConfig) -> Report {
        let duration = self.window_end - self.window_start;
        let elapsed = self
            .last_completion
            .map_or(duration, |l| l.saturating_duration_since(self.window_start))
            .max(duration);
        let elapsed_s = elapsed.as_secs_f64();
        let h = &self.hist;
        let us = |ns: u64| ns as f64 / 1000.0;
        let samples = h.len();
        let q = |quantile: f64| {
            if samples == 0 {
                0.0
            } else {
                us(h.value_at_quantile(quantile))
            }
        };
        let latency = Latency {
            samples,
            min_us: if samples == 0 { 0.0 } else { us(h.min()) },
            mean_us: if samples == 0 { 0.0 } else { h.mean() / 1000.0 },
            stdev_us: if samples == 0 {
                0.0
            } else {
                h.stdev() / 1000.0
            },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if samples == 0 { 0.0 } else { us(h.max()) },
        };
        let mut percentiles: Vec<PercentilePoint> = Vec::new();
        if samples > 0 {
            for v in h.iter_quantiles(4) {
                let point = PercentilePoint {
                    percentile: v.quantile_iterated_to() * 100.0,
                    latency_us: us(h.highest_equivalent(v.value_iterated_to())),
                };
                if percentiles
                    .last()
                    .is_none_or(|p| p.percentile < point.percentile)
                {
                    percentiles.push(point);
                }
            }
        }
        let timeline = self
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (p50, p99, max) = match &s.hist {
                    Some(h) if !h.is_empty() => (
                        h.value_at_quantile(0.5) as f64,
                        h.value_at_quantile(0.99) as f64,
                        h.max() as f64,
                    ),
                    _ => (0.0, 0.0, 0.0),
                };
                SecondStats {
                    second: i as u64,
                    requests: s.requests,
                    errors: s.errors,
                    p50_us: p50,
                    p99_us: p99,
                    max_us: max,
                }
            })
            .collect();
        let ok: u64 = self
            .status
            .iter()
            .filter(|(s, _)| **s < 400)
            .map(|(_, n)| n)
            .sum();
        let by_status: BTreeMap<String, u64> = self
            .status
            .iter()
            .filter(|(s, _)| **s >= 400)
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        let [connect, tls, timeout, io, protocol] = self.errors;
        let errors = Errors {
            total: by_status.values().sum::<u64>() + connect + tls + timeout + io + protocol,
            by_status,
            connect,
            tls,
            timeout,
            io,
            protocol,
        };
        let (mode, target_rate) = match cfg.mode {
            Mode::Open { rate } => ("open".to_owned(), Some(rate)),
            Mode::Closed => ("closed".to_owned(), None),
        };
        Report {
            urls: cfg.urls.clone(),
            mode,
            target_rate,
            http2: cfg.http2,
            duration_s: duration.as_secs_f64(),
            elapsed_s,
            requests: self.requests,
            ok,
            throughput_rps: self.requests as f64 / elapsed_s,
            ok_rps: ok as f64 / elapsed_s,
            latency_us: latency,
            status: self
                .status
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            errors,
            late: self.late,
            send_lag_us: SendLag {
                p50_us: self.lag.value_at_quantile(0.5) as f64,
                p99_us: self.lag.value_at_quantile(0.99) as f64,
                max_us: self.lag.max() as f64,
            },
            bytes_received: self.bytes,
            percentiles,
            timeline,
        }
    }
}

/// Latency summary of the complete responses, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Number of latency samples (complete responses).
    pub samples: u64,
    /// Smallest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Standard deviation.
    pub stdev_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Failed requests: non-2xx/3xx answers by status and transport failures by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Sum of all of the below.
    pub total: u64,
    /// Answers with status >= 400, by status code.
    pub by_status: BTreeMap<String, u64>,
    /// TCP connect failures.
    pub connect: u64,
    /// TLS handshake failures.
    pub tls: u64,
    /// Requests without a complete response within the timeout.
    pub timeout: u64,
    /// Resets, closed connections and other I/O failures.
    pub io: u64,
    /// Malformed HTTP and other protocol errors.
    pub protocol: u64,
}

/// Distribution of the send lag (actual minus intended send time), microseconds
/// (1 µs resolution; all zero in closed loop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendLag {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// One point of the latency-by-percentile curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// Percentile, 0..=100.
    pub percentile: f64,
    /// Latency at that percentile, microseconds.
    pub latency_us: f64,
}

/// Figures of one second of the measured window (by send time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Seconds since the start of the window.
    pub second: u64,
    /// Requests sent in that second.
    pub requests: u64,
    /// Of which failed (transport error or status >= 400).
    pub errors: u64,
    /// Median latency, microseconds (2 significant digits).
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Largest latency, microseconds.
    pub max_us: f64,
}

/// The result of one load run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Target URLs.
    pub urls: Vec<String>,
    /// `open` or `closed`.
    pub mode: String,
    /// Open loop: the scheduled rate, requests per second.
    pub target_rate: Option<f64>,
    /// HTTP/2 was used.
    pub http2: bool,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    /// Throughput denominator: window start to last measured completion (>= duration).
    pub elapsed_s: f64,
    /// Measured requests (responses of any status plus transport failures).
    pub requests: u64,
    /// Responses with status < 400.
    pub ok: u64,
    /// `requests / elapsed_s`.
    pub throughput_rps: f64,
    /// `ok / elapsed_s`.
    pub ok_rps: f64,
    /// Latency summary of complete responses.
    pub latency_us: Latency,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    /// Failures.
    pub errors: Errors,
    /// Open loop: requests whose sending began more than 1 ms after their intended time.
    pub late: u64,
    /// Open loop: delay between intended and actual send time (generator-side queueing
    /// and timer wake-up; already included in the latencies).
    pub send_lag_us: SendLag,
    /// Response body bytes read.
    pub bytes_received: u64,
    /// Latency-by-percentile curve (HDR histogram iteration).
    pub percentiles: Vec<PercentilePoint>,
    /// Per-second figures.
    pub timeline: Vec<SecondStats>,
}

/// Formats microseconds with a unit: `812 µs`, `20.41 ms`, `1.20 s`.
pub fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.1} µs")
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Header line of the results table.
pub fn table_header() -> String {
    format!(
        "{:<6} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>6}",
        "run", "req/s", "count", "p50", "p90", "p99", "p99.9", "max", "errors", "late"
    )
}

/// One row of the results table.
pub fn table_row(label: &str, r: &Report) -> String {
    let l = &r.latency_us;
    // No complete response, no latency: show "-" rather than zeros.
    let fmt_us = |us: f64| {
        if l.samples == 0 {
            "-".to_owned()
        } else {
            fmt_us(us)
        }
    };
    format!(
        "{:<6} {:>10.1} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>6}",
        label,
        r.throughput_rps,
        r.requests,
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
        r.errors.total,
        r.late
    )
}

/// The error breakdown line(s) of a report (empty when there was no error).
pub fn error_lines(r: &Report) -> String {
    let e = &r.errors;
    let mut out = String::new();
    if e.total == 0 {
        return out;
    }
    let _ = write!(
        out,
        "  errors by kind: connect {}, tls {}, timeout {}, io {}, protocol {}",
        e.connect, e.tls, e.timeout, e.io, e.protocol
    );
    if !e.by_status.is_empty() {
        let statuses: Vec<String> = e
            .by_status
            .iter()
            .map(|(s, n)| format!("{s} x {n}"))
            .collect();
        let _ = write!(out, "; by status: {}", statuses.join(", "));
    }
    out
}

/// The full human-readable report of one run.
pub fn render_single(cfg: &RunConfig, r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", describe(cfg));
    let _ = writeln!(out, "{}", table_header());
    let _ = writeln!(out, "{}", table_row("run", r));
    let err = error_lines(r);
    if !err.is_empty() {
        let _ = writeln!(out, "{err}");
    }
    let statuses: Vec<String> = r.status.iter().map(|(s, n)| format!("{s} x {n}")).collect();
    let _ = writeln!(
        out,
        "  ok {} ({:.1} req/s), status: {}; latency mean {} (stdev {}), min {}; {} bytes received",
        r.ok,
        r.ok_rps,
        if statuses.is_empty() {
            "-".to_owned()
        } else {
            statuses.join(", ")
        },
        fmt_us(r.latency_us.mean_us),
        fmt_us(r.latency_us.stdev_us),
        fmt_us(r.latency_us.min_us),
        r.bytes_received
    );
    if r.mode == "open" {
        let _ = writeln!(
            out,
            "  open loop: {} late (sent > 1 ms after the intended time); send lag p50 {}, p99 {}, max {}",
            r.late,
            fmt_us(r.send_lag_us.p50_us),
            fmt_us(r.send_lag_us.p99_us),
            fmt_us(r.send_lag_us.max_us),
        );
    }
    out
}

/// One line describing the load of a configuration.
pub fn describe(cfg: &RunConfig) -> String {
    let load = match cfg.mode {
        Mode::Open { rate } => format!("open loop {rate} req/s"),
        Mode::Closed => "closed loop".to_owned(),
    };
    let proto = if cfg.http2 { "HTTP/2" } else { "HTTP/1.1" };
    format!(
        "{} {} [{}], {load}, {} connection(s) x {} stream(s), {proto}, body {} B, {} after {} warm-up",
        cfg.method,
        cfg.urls.join(" "),
        if cfg.urls.len() > 1 {
            "rotating"
        } else {
            "1 target"
        },
        cfg.connections,
        cfg.effective_streams(),
        cfg.body_bytes,
        humantime::format_duration(cfg.duration),
        humantime::format_duration(cfg.warmup),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_window_percentiles_and_errors() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_secs(1);
        let end = start + Duration::from_secs(2);
        let mut a = Recorder::new(start, end);
        let mut b = Recorder::new(start, end);
        // Warm-up sample: dropped.
        a.record(
            t0,
            t0 + Duration::from_millis(5),
            Duration::ZERO,
            Outcome::Response {
                status: 200,
                bytes: 1,
            },
        );
        for i in 0..100u64 {
            let sent = start + Duration::from_millis(i * 15);
            let done = sent + Duration::from_micros(1000 + i * 10);
            let rec = if i % 2 == 0 { &mut a } else { &mut b };
            rec.record(
                sent,
                done,
                Duration::from_micros(i * 30),
                Outcome::Response {
                    status: 200,
                    bytes: 10,
                },
            );
        }
        b.record(
            start,
            start,
            Duration::ZERO,
            Outcome::Response {
                status: 500,
                bytes: 0,
            },
        );
        b.record(
            start,
            start,
            Duration::ZERO,
            Outcome::Error(ErrorKind::Connect),
        );
        a.record(end, end, Duration::ZERO, Outcome::Error(ErrorKind::Io)); // after the window
        a.merge(b);
        let cfg = RunConfig::new(vec!["http://x/".into()]);
        let r = a.into_report(&cfg);
        assert_eq!(r.requests, 102);
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors.total, 2);
        assert_eq!(r.errors.connect, 1);
        assert_eq!(r.errors.by_status.get("500"), Some(&1));
        assert_eq!(r.latency_us.samples, 101);
        let l = &r.latency_us;
        assert!(l.min_us <= l.p50_us && l.p50_us <= l.p90_us && l.p90_us <= l.p99_us);
        assert!(l.p99_us <= l.p999_us && l.p999_us <= l.max_us);
        assert!((l.max_us - 1990.0).abs() < 2.0, "{l:?}");
        assert_eq!(r.late, 66); // lag 30 µs * i > 1 ms for i >= 34
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline.iter().map(|s| s.requests).sum::<u64>(), 102);
        assert!(
            r.percentiles
                .windows(2)
                .all(|w| w[0].percentile < w[1].percentile && w[0].latency_us <= w[1].latency_us)
        );
        assert_eq!(r.percentiles.last().unwrap().percentile, 100.0);
        assert_eq!(r.duration_s, 2.0);
        assert!(render_single(&cfg, &r).contains("500 x 1"));
    }

    #[test]
    fn formats_units() {
        assert_eq!(fmt_us(3.26), "3.3 µs");
        assert_eq!(fmt_us(812.4), "812 µs");
        assert_eq!(fmt_us(20_410.0), "20.41 ms");
        assert_eq!(fmt_us(1_200_000.0), "1.20 s");
    }
}

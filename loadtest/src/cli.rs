//! Command-line options (clap derive) and the run configuration they produce.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use serde::{Serialize, Serializer};

/// Open- and closed-loop HTTP load generator for scoring URLs, with HDR-histogram latency
/// reports (table, JSON, HTML plots) and an A/B comparison mode.
///
/// OPEN LOOP (`--rate N`): a scheduler issues request i at t0 + i/N, whatever the
/// responses do, and every latency is measured from that intended send time, so a
/// stalled server cannot hide its stalls (no coordinated omission). At most
/// `--connections` x `--streams` requests are in flight; when all are busy, the
/// following requests wait in the generator's queue and their latency keeps counting
/// from their intended time. Requests whose sending began more than 1 ms after their
/// intended time are reported as "late" (a high count means the generator or the
/// connection pool, not only the server, was the bottleneck: raise --connections).
/// In open loop `--timeout` also counts from the intended send time.
///
/// CLOSED LOOP (no `--rate`): `--connections` x `--streams` workers each send their
/// next request as soon as the previous one completed; latency is measured from the
/// actual send time. After a connect or TLS failure a worker pauses 10 ms.
///
/// Requests sent during `--warmup` are discarded; the report covers requests whose
/// intended (open loop) or actual (closed loop) send time falls in the `--duration`
/// window after it. Latency percentiles cover requests that got a complete response
/// (any status); transport failures are counted by kind, non-2xx/3xx answers by
/// status. Throughput is measured requests / (time from the window start to the last
/// measured completion, at least `--duration`).
#[derive(Debug, Clone, Parser)]
#[command(name = "infergate-loadtest", version, about, long_about)]
pub struct Cli {
    /// Target URL(s), http:// or https://. With several, requests rotate among them
    /// (request i goes to URL i mod n); `--connections` then applies per distinct origin.
    #[arg(value_name = "URL", required_unless_present = "compare")]
    pub urls: Vec<String>,

    /// Compare two targets: runs A, B, A, B, ... (`--rounds` each) with the same load,
    /// prints every run and the median ratio B/A of req/s, p50 and p99.
    #[arg(long, num_args = 2, value_names = ["URL_A", "URL_B"], conflicts_with = "urls")]
    pub compare: Option<Vec<String>>,

    /// Number of runs of each target in `--compare` mode.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Idle time between two runs in `--compare` mode (e.g. `500ms`, `2s`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub pause: Duration,

    /// Open loop: send this many requests per second at a constant rate (fractions
    /// allowed). Without it the load is closed loop.
    #[arg(short = 'r', long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,

    /// Number of connections (per distinct origin). Closed loop: number of concurrent
    /// workers (times `--streams`). Open loop: the pool the scheduled requests use.
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,

    /// HTTP/2 only: concurrent streams per connection (like h2load's -m). Ignored for
    /// HTTP/1.1, where a connection carries one request at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams: u64,

    /// Length of the measured window after the warm-up (e.g. `10s`, `1m`, `500ms`).
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Load applied before the measured window; its samples are discarded.
    #[arg(short = 'w', long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Per-request timeout (connect, send and whole response body). Open loop: counted
    /// from the intended send time.
    #[arg(short = 't', long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Use HTTP/2: negotiated with ALPN over TLS (https://), prior knowledge (h2c) for
    /// http://. Default is HTTP/1.1 with keep-alive.
    #[arg(long)]
    pub http2: bool,

    /// HTTP method. Default: POST when `--body` or `--body-size` is given, GET otherwise.
    #[arg(short = 'm', long)]
    pub method: Option<String>,

    /// Extra request header `'Name: value'`; repeat for several. `Host` overrides the
    /// authority sent; `Content-Type` defaults to `application/json` when a body is sent.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body read from this file (sent with every request).
    #[arg(short = 'b', long, value_name = "FILE", conflicts_with = "body_size")]
    pub body: Option<PathBuf>,

    /// Generate a JSON request body of exactly N bytes (`{"data":"xxx..."}`, N >= 11).
    #[arg(long, value_name = "N")]
    pub body_size: Option<usize>,

    /// PEM file with the CA certificate(s) that sign the server's certificate. Without it
    /// https:// targets are verified against the system store
    /// (/etc/ssl/certs/ca-certificates.crt).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Do not verify the server's TLS certificate (testing only).
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Write the machine-readable report (configuration, figures, percentile curve,
    /// per-second timeline; every run in `--compare` mode) to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write an HTML report with a latency-by-percentile plot (log percentile axis) and a
    /// latency-over-time plot (per-second p50 / p99) as inline SVG.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Tokio worker threads of the generator (default: the CPUs this process may use,
    /// e.g. 1 under `taskset -c 1`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,

    /// Print nothing but errors (the report still goes to `--json` / `--html`).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Load mode of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mode {
    /// Constant arrival rate, latency from the intended send time.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// Back-to-back workers.
    Closed,
}

/// Everything one load run needs (built from [`Cli`]; serialised into `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Target URLs; request i goes to `urls[i % len]`.
    pub urls: Vec<String>,
    /// Open or closed loop.
    pub mode: Mode,
    /// HTTP method.
    pub method: String,
    /// HTTP/2 instead of HTTP/1.1.
    pub http2: bool,
    /// Connections per origin.
    pub connections: u64,
    /// Concurrent streams per connection (1 for HTTP/1.1).
    pub streams: u64,
    /// Measured window.
    #[serde(rename = "duration_s", serialize_with = "secs")]
    pub duration: Duration,
    /// Discarded warm-up before the window.
    #[serde(rename = "warmup_s", serialize_with = "secs")]
    pub warmup: Duration,
    /// Per-request timeout.
    #[serde(rename = "timeout_s", serialize_with = "secs")]
    pub timeout: Duration,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// Request body (empty: none).
    #[serde(skip)]
    pub body: Bytes,
    /// Size of the body in bytes.
    pub body_bytes: usize,
    /// Where the body comes from: `none`, `generated` or the file path.
    pub body_source: String,
    /// CA certificates file for https targets.
    pub cacert: Option<PathBuf>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunConfig {
    /// A configuration with the CLI defaults for `urls` (closed loop, HTTP/1.1, GET, 64
    /// connections, 10 s after 2 s of warm-up, 30 s timeout, no body).
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            mode: Mode::Closed,
            method: "GET".to_owned(),
            http2: false,
            connections: 64,
            streams: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            headers: Vec::new(),
            body: Bytes::new(),
            body_bytes: 0,
            body_source: "none".to_owned(),
            cacert: None,
            insecure: false,
        }
    }

    /// Sets the body (and its size / source fields).
    pub fn with_body(mut self, body: Bytes, source: impl Into<String>) -> Self {
        self.body_bytes = body.len();
        self.body = body;
        self.body_source = source.into();
        self
    }

    /// Streams in flight per connection: `streams` for HTTP/2, 1 for HTTP/1.1.
    pub fn effective_streams(&self) -> u64 {
        if self.http2 { self.streams } else { 1 }
    }
}

impl Cli {
    /// Builds the configuration of one run against `urls` (reads `--body`, checks values).
    pub fn run_config(&self, urls: Vec<String>) -> anyhow::Result<RunConfig> {
        let mode = match self.rate {
            Some(rate) if rate.is_finite() && rate > 0.0 => Mode::Open { rate },
            Some(rate) => bail!("--rate must be a positive number, got {rate}"),
            None => Mode::Closed,
        };
        if self.duration.is_zero() {
            bail!("--duration must be greater than zero");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be greater than zero");
        }
        let (body, source) = if let Some(path) = &self.body {
            let data = std::fs::read(path)
                .with_context(|| format!("reading --body {}", path.display()))?;
            (Bytes::from(data), path.display().to_string())
        } else if let Some(n) = self.body_size {
            (generate_json_body(n)?, "generated".to_owned())
        } else {
            (Bytes::new(), "none".to_owned())
        };
        let has_body = self.body.is_some() || self.body_size.is_some();
        let method = match &self.method {
            Some(m) => m.to_ascii_uppercase(),
            None if has_body => "POST".to_owned(),
            None => "GET".to_owned(),
        };
        http::Method::from_bytes(method.as_bytes())
            .with_context(|| format!("invalid --method {method:?}"))?;
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut cfg = RunConfig::new(urls).with_body(body, source);
        cfg.mode = mode;
        cfg.method = method;
        cfg.http2 = self.http2;
        cfg.connections = self.connections;
        cfg.streams = self.streams;
        cfg.duration = self.duration;
        cfg.warmup = self.warmup;
        cfg.timeout = self.timeout;
        cfg.headers = headers;
        cfg.cacert = self.cacert.clone();
        cfg.insecure = self.insecure;
        Ok(cfg)
    }
}

/// Parses `'Name: value'` into a checked (name, value) pair.
pub fn parse_header(raw: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = raw
        .split_once(':')
        .with_context(|| format!("header {raw:?} is not of the form 'Name: value'"))?;
    let (name, value) = (name.trim(), value.trim());
    http::HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("invalid header name {name:?}"))?;
    http::HeaderValue::from_str(value)
        .with_context(|| format!("invalid value for header {name:?}"))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// A JSON document of exactly `n` bytes: `{"data":"xxx...x"}`.
pub fn generate_json_body(n: usize) -> anyhow::Result<Bytes> {
    const FRAME: usize = r#"{"data":""}"#.len();
    if n < FRAME {
        bail!("--body-size must be at least {FRAME} bytes");
    }
    let mut body = Vec::with_capacity(n);
    body.extend_from_slice(br#"{"data":""#);
    body.resize(n - 2, b'x');
    body.extend_from_slice(br#""}"#);
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_exact_size() {
        for n in [11, 12, 100, 1024] {
            let b = generate_json_body(n).unwrap();
            assert_eq!(b.len(), n);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert!(v["data"].is_string());
        }
        assert!(generate_json_body(5).is_err());
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("X-Api-Key:  abc: def ").unwrap(),
            ("X-Api-Key".to_owned(), "abc: def".to_owned())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
    }

    #[test]
    fn cli_defaults_and_method() {
        let cli = Cli::parse_from(["x", "http://127.0.0.1:1/score", "--body-size", "64"]);
        let cfg = cli.run_config(cli.urls.clone()).unwrap();
        assert_eq!(cfg.method, "POST");
        assert_eq!(cfg.mode, Mode::Closed);
        assert_eq!(cfg.body_bytes, 64);
        assert_eq!(cfg.connections, 64);
        let cli = Cli::parse_from(["x", "http://h/", "-r", "100", "-d", "1s", "--warmup", "0s"]);
        let cfg = cli.run_config(cli.urls.clone()).unwrap();
        assert_eq!(cfg.method, "GET");
        assert_eq!(cfg.mode, Mode::Open { rate: 100.0 });
        assert_eq!(cfg.duration, Duration::from_secs(1));
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from(["x", "--compare", "http://a/"]).is_err());
        let cli = Cli::parse_from(["x", "--compare", "http://a/", "http://b/", "--rounds", "2"]);
        assert_eq!(cli.compare.as_deref().map(<[String]>::len), Some(2));
        let cli = Cli::parse_from(["x", "http://h/", "-r", "0"]);
        assert!(cli.run_config(cli.urls.clone()).is_err());
    }
}

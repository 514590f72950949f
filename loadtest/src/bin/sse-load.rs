//! `infergate-sse-load`: many long server-sent-event streams at once, to a pod directly and
//! through a router in the same run, and what the router adds between events. Each stream is
//! one POST answered with `--chunks` events, one every `--interval` (the mock model's
//! `streamChunks` and `latencyMs`). Reported per target: streams completed and cut, the gap
//! between consecutive events as the client saw them (p50/p99/p99.9/max), each event's lateness
//! against its schedule (arrival - (first event + k x interval)), and the router's RSS (from
//! /proc) at the start, at its peak and at the end. See BENCHMARKS.md, "Server-sent events",
//! and `benches/scripts/sse.sh`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpStream;

/// Many SSE streams to a pod directly and through a router, side by side.
#[derive(Debug, Parser)]
#[command(name = "infergate-sse-load", version, about)]
struct Cli {
    /// The pod's scoring URL, called directly (the peer): http://HOST:PORT/score.
    #[arg(long)]
    direct: Option<Uri>,
    /// The router's scoring URL: http://HOST:PORT/api/v1/endpoint/NAME/score.
    #[arg(long)]
    routed: Option<Uri>,
    /// Streams to each target, all open at once.
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// Events per stream.
    #[arg(long, default_value_t = 600)]
    chunks: u32,
    /// Time between events.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Streams are started evenly over this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// HTTP/2 to the router (h2c), 100 streams per connection; HTTP/1.1 otherwise (one
    /// connection per stream). The pod is always called over HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// The router's pid: its RSS is sampled from /proc every second.
    #[arg(long)]
    router_pid: Option<u32>,
}

/// What the streams of one target saw.
struct Seen {
    /// Gap between consecutive events, µs.
    gaps: Histogram<u64>,
    /// Lateness of each event against the stream's schedule, µs.
    late: Histogram<u64>,
    complete: u64,
    cut: u64,
    events: u64,
}

impl Seen {
    fn new() -> Self {
        Seen {
            gaps: Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
            late: Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
            complete: 0,
            cut: 0,
            events: 0,
        }
    }
}

/// One target: where its streams go and how.
#[derive(Clone)]
struct Target {
    name: &'static str,
    uri: Uri,
    h2: Option<Vec<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>>,
}

async fn h2_connections(
    uri: &Uri,
    n: usize,
) -> anyhow::Result<Vec<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(authority(uri)?).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(conn);
        out.push(send);
    }
    Ok(out)
}

fn authority(uri: &Uri) -> anyhow::Result<String> {
    let a = uri.authority().context("the URL names no host:port")?;
    Ok(a.as_str().to_string())
}

/// One stream: the POST, then every event's arrival time. Returns the arrival times (empty on a
/// failure before the head) and whether the stream ended cleanly.
async fn stream(t: &Target, i: usize, path: &str) -> (Vec<Instant>, bool) {
    let req = Request::post(path)
        .header("host", t.uri.authority().map_or("", |a| a.as_str()))
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let resp = match &t.h2 {
        Some(conns) => {
            let mut s = conns[i % conns.len()].clone();
            match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            }
        }
        None => {
            let Ok(tcp) = TcpStream::connect(authority(&t.uri).unwrap_or_default()).await else {
                return (Vec::new(), false);
            };
            let _ = tcp.set_nodelay(true);
            let Ok((mut s, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
            else {
                return (Vec::new(), false);
            };
            tokio::spawn(conn);
            s.send_request(req).await
        }
    };
    let Ok(resp) = resp else {
        return (Vec::new(), false);
    };
    if resp.status() != 200 {
        return (Vec::new(), false);
    }
    let mut body = resp.into_body();
    let mut times = Vec::new();
    // Events end with a blank line; one may straddle frames.
    let mut carry = 0usize;
    loop {
        match body.frame().await {
            None => return (times, true),
            Some(Err(_)) => return (times, false),
            Some(Ok(f)) => {
                let now = Instant::now();
                if let Ok(d) = f.into_data() {
                    for w in d.iter() {
                        if *w == b'\n' {
                            carry += 1;
                            if carry == 2 {
                                times.push(now);
                                carry = 0;
                            }
                        } else {
                            carry = 0;
                        }
                    }
                }
            }
        }
    }
}

async fn run_target(t: Target, cli: Arc<Cli>, seen: Arc<Mutex<Seen>>) {
    let path = format!(
        "{}?streamChunks={}&latencyMs={}",
        t.uri.path(),
        cli.chunks,
        (cli.interval * cli.chunks).as_millis()
    );
    let path: Arc<str> = path.into();
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cli.streams {
        let (t, path, seen, cli) = (t.clone(), path.clone(), seen.clone(), cli.clone());
        let at = start + cli.ramp.mul_f64(i as f64 / cli.streams.max(1) as f64);
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let (times, clean) = stream(&t, i, &path).await;
            let mut s = seen.lock();
            s.events += times.len() as u64;
            if clean && times.len() == cli.chunks as usize {
                s.complete += 1;
            } else {
                s.cut += 1;
            }
            let Some(first) = times.first().copied() else {
                return;
            };
            for (k, w) in times.windows(2).enumerate() {
                let gap = (w[1] - w[0]).as_micros() as u64;
                s.gaps.saturating_record(gap.max(1));
                let due = first + cli.interval * (k as u32 + 1);
                let late = w[1].saturating_duration_since(due).as_micros() as u64;
                s.late.saturating_record(late.max(1));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The process's CPU time (user + system, every thread) in seconds, from /proc (USER_HZ is 100
/// on Linux whatever the kernel's tick).
fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, k): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + k) as f64 / 100.0)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn report(name: &str, s: &Seen) {
    println!(
        "{name:<7} streams complete {:>5}  cut {:>4}  events {:>8}  gap p50 {:>8.3} ms  p99 {:>8.3} ms  p99.9 {:>8.3} ms  max {:>8.3} ms  late p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms",
        s.complete,
        s.cut,
        s.events,
        ms(s.gaps.value_at_quantile(0.5)),
        ms(s.gaps.value_at_quantile(0.99)),
        ms(s.gaps.value_at_quantile(0.999)),
        ms(s.gaps.max()),
        ms(s.late.value_at_quantile(0.5)),
        ms(s.late.value_at_quantile(0.99)),
        ms(s.late.max()),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Arc::new(Cli::parse());
    if cli.direct.is_none() && cli.routed.is_none() {
        bail!("give --direct, --routed or both");
    }
    let mut targets = Vec::new();
    if let Some(u) = &cli.direct {
        targets.push(Target {
            name: "direct",
            uri: u.clone(),
            h2: None,
        });
    }
    if let Some(u) = &cli.routed {
        let h2 = match cli.h2 {
            true => Some(h2_connections(u, cli.streams.div_ceil(100)).await?),
            false => None,
        };
        targets.push(Target {
            name: "routed",
            uri: u.clone(),
            h2,
        });
    }
    println!(
        "{} streams per target, {} events each, one every {:?} ({:?} per stream); router side {}",
        cli.streams,
        cli.chunks,
        cli.interval,
        cli.interval * cli.chunks,
        if cli.h2 { "HTTP/2 (h2c)" } else { "HTTP/1.1" }
    );
    // The router's RSS, sampled every second while the streams run.
    let (rss_start, rss_peak) = (
        cli.router_pid.and_then(rss_kib).unwrap_or(0),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = cli.router_pid.map(|pid| {
        let peak = rss_peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(r) = rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });
    let t0 = Instant::now();
    let cpu0 = cli.router_pid.and_then(cpu_s);
    let seen: Vec<_> = targets
        .iter()
        .map(|_| Arc::new(Mutex::new(Seen::new())))
        .collect();
    let runs: Vec<_> = targets
        .iter()
        .cloned()
        .zip(seen.iter().cloned())
        .map(|(t, s)| tokio::spawn(run_target(t, cli.clone(), s)))
        .collect();
    for r in runs {
        r.await?;
    }
    if let Some(s) = sampler {
        s.abort();
    }
    println!("ran {:.1} s", t0.elapsed().as_secs_f64());
    let mut cut = 0;
    for (t, s) in targets.iter().zip(&seen) {
        let s = s.lock();
        report(t.name, &s);
        cut += s.cut;
    }
    if targets.len() == 2 {
        let (d, r) = (seen[0].lock(), seen[1].lock());
        let added = |q: f64| ms(r.gaps.value_at_quantile(q)) - ms(d.gaps.value_at_quantile(q));
        let added_late = ms(r.late.value_at_quantile(0.99)) - ms(d.late.value_at_quantile(0.99));
        println!(
            "added by the router: gap p50 {:+.3} ms, gap p99 {:+.3} ms, gap p99.9 {:+.3} ms, lateness p99 {added_late:+.3} ms",
            added(0.5),
            added(0.99),
            added(0.999)
        );
    }
    if let Some(pid) = cli.router_pid {
        println!(
            "router RSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB",
            rss_start as f64 / 1024.0,
            rss_peak.load(Ordering::Relaxed) as f64 / 1024.0,
            rss_kib(pid).unwrap_or(0) as f64 / 1024.0
        );
        if let (Some(a), Some(b)) = (cpu0, cpu_s(pid)) {
            let events = seen.last().map_or(0, |s| s.lock().events).max(1);
            println!(
                "router CPU: {:.2} s over the run ({:.0}% of one core), {:.1} µs per routed event",
                b - a,
                (b - a) / t0.elapsed().as_secs_f64() * 100.0,
                (b - a) * 1e6 / events as f64
            );
        }
    }
    Ok(if cut == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

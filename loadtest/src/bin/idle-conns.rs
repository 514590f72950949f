//! `infergate-idle-conns`: opens many connections that then send nothing (or one request, then
//! nothing), and measures how the router copes: when each is closed, the router's RSS while
//! they are open, and the latency of a normal request meanwhile. Runs as its own process so
//! that client and router each have their own file-descriptor limit. See BENCHMARKS.md,
//! "Edge limits", and `benches/scripts/idle-conns.sh`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Open many idle connections to a router and report when it closes them, its RSS meanwhile
/// and the latency of a normal request.
#[derive(Debug, Parser)]
#[command(name = "infergate-idle-conns", version, about)]
struct Cli {
    /// The listener to connect to (IP:PORT).
    #[arg(long)]
    target: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// What each connection does once open: nothing (TLS: after the handshake), or one
    /// HTTP/1.1 request and then nothing (an idle keep-alive connection).
    #[arg(long, value_enum, default_value_t = Mode::Silent)]
    mode: Mode,
    /// TLS with this CA (PEM); the server name is `localhost`.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// ALPN protocol offered with TLS.
    #[arg(long, default_value = "http/1.1")]
    alpn: String,
    /// Local addresses to connect from, in turn (e.g. 127.0.0.1,127.0.0.2): spreads the
    /// connections over client addresses, as many clients would.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Connects (and TLS handshakes) in progress at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Path of the normal request (POST, `{}`), sent every `--probe-every` on a new
    /// connection from `--probe-source` while the connections are open.
    #[arg(long, default_value = "/api/v1/endpoint/e/score")]
    probe_path: String,
    /// Source address of the probe requests.
    #[arg(long, default_value = "127.0.0.200")]
    probe_source: IpAddr,
    /// Interval between probe requests.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    probe_every: Duration,
    /// The router's pid: its RSS is sampled from /proc.
    #[arg(long)]
    router_pid: Option<u32>,
    /// Give up waiting for the router to close the connections after this long.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Connect (TLS: handshake) and send nothing.
    Silent,
    /// One HTTP/1.1 request, its answer, then nothing on the kept-alive connection.
    Keepalive,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What one connection saw, from the start of its connect: when it was open (handshake done,
/// request answered) and when the router closed it.
#[derive(Debug, Clone, Copy)]
struct Life {
    opened: Duration,
    closed: Duration,
}

struct Client {
    tls: Option<tokio_rustls::TlsConnector>,
    target: SocketAddr,
    path: String,
}

impl Client {
    async fn connect(&self, from: IpAddr) -> anyhow::Result<Box<dyn Io>> {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(from, 0))?;
        let tcp: TcpStream = s.connect(self.target).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            Some(c) => Box::new(c.connect(ServerName::try_from("localhost")?, tcp).await?),
            None => Box::new(tcp),
        })
    }

    /// One keep-alive request; Ok once the whole answer (content-length) is read.
    async fn request(&self, io: &mut dyn Io) -> anyhow::Result<u16> {
        let req = format!(
            "POST {} HTTP/1.1\r\nhost: router.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
            self.path
        );
        io.write_all(req.as_bytes()).await?;
        io.flush().await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed before the answer");
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                    return Ok(status);
                }
            }
        }
    }
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

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let connector = |alpn: &str| -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
        let Some(ca) = &cli.tls_ca else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).context("reading the CA")? {
            roots.add(c?)?;
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(cfg))))
    };
    let tls = connector(&cli.alpn)?;
    if cli.mode == Mode::Keepalive && cli.alpn != "http/1.1" {
        bail!("--mode keepalive speaks HTTP/1.1: use --alpn http/1.1");
    }
    let client = Arc::new(Client {
        tls,
        target: cli.target,
        path: cli.probe_path.clone(),
    });
    let rss_before = cli.router_pid.and_then(rss_kib);
    let t0 = Instant::now();
    let gate = Arc::new(Semaphore::new(cli.concurrency));
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(cli.conns);
    for i in 0..cli.conns {
        let from = cli.sources[i % cli.sources.len()];
        let (client, gate, opened, closed) =
            (client.clone(), gate.clone(), opened.clone(), closed.clone());
        let mode = cli.mode;
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok()?;
            let start = Instant::now();
            let mut io = client.connect(from).await.ok()?;
            if mode == Mode::Keepalive && client.request(&mut *io).await.ok()? != 200 {
                return None;
            }
            drop(permit);
            let open_at = start.elapsed();
            opened.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
            Some(Life {
                opened: open_at,
                closed: start.elapsed(),
            })
        }));
    }

    // While they open and idle: the router's RSS and a normal request every --probe-every.
    // The probe speaks HTTP/1.1 whatever the idle connections negotiated.
    let probe = Client {
        tls: connector("http/1.1")?,
        target: cli.target,
        path: cli.probe_path.clone(),
    };
    let mut probes_all_open = Vec::new();
    let mut probe_failures = 0usize;
    let mut rss_peak = 0u64;
    let mut all_open_at = None;
    let mut last_report = Instant::now();
    loop {
        let o = opened.load(Ordering::Relaxed);
        let c = closed.load(Ordering::Relaxed);
        if let Some(r) = cli.router_pid.and_then(rss_kib) {
            rss_peak = rss_peak.max(r);
        }
        if all_open_at.is_none() && o == cli.conns {
            all_open_at = Some(t0.elapsed());
        }
        // Probe only while every connection is open and none closed yet.
        let all_open = o == cli.conns && c == 0;
        let begin = Instant::now();
        let result = async {
            let mut io = probe.connect(cli.probe_source).await?;
            probe.request(&mut *io).await
        };
        match tokio::time::timeout(Duration::from_secs(5), result).await {
            Ok(Ok(200)) => {
                if all_open && closed.load(Ordering::Relaxed) == 0 {
                    probes_all_open.push(begin.elapsed());
                }
            }
            _ => probe_failures += 1,
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "t={:>5.1}s opened={o} closed={c} rss={} KiB",
                t0.elapsed().as_secs_f64(),
                cli.router_pid.and_then(rss_kib).unwrap_or(0)
            );
            last_report = Instant::now();
        }
        let done = tasks.iter().all(|t| t.is_finished());
        if done || t0.elapsed() > cli.max_wait {
            break;
        }
        tokio::time::sleep(cli.probe_every.saturating_sub(begin.elapsed())).await;
    }
    let mut lives = Vec::new();
    let mut failed = 0usize;
    let mut still_open = 0usize;
    for t in tasks {
        if !t.is_finished() {
            still_open += 1;
            t.abort();
            continue;
        }
        match t.await {
            Ok(Some(l)) => lives.push(l),
            _ => failed += 1,
        }
    }
    let rss_after = cli.router_pid.and_then(rss_kib);
    let mut open_times: Vec<_> = lives.iter().map(|l| l.opened).collect();
    let mut close_times: Vec<_> = lives.iter().map(|l| l.closed).collect();
    let mut held: Vec<_> = lives.iter().map(|l| l.closed - l.opened).collect();
    open_times.sort();
    close_times.sort();
    held.sort();
    probes_all_open.sort();
    let kib = |v: Option<u64>| v.map_or("n/a".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
    println!(
        "mode={:?} tls={} alpn={} conns={} sources={}",
        cli.mode,
        cli.tls_ca.is_some(),
        cli.alpn,
        cli.conns,
        cli.sources.len()
    );
    println!(
        "opened: {} of {} (failed {failed}); all open after {}",
        lives.len(),
        cli.conns,
        all_open_at.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    println!(
        "closed by the router: {} (still open after {:?}: {still_open})",
        close_times.len(),
        cli.max_wait
    );
    println!(
        "time from connect to close: min {:.1} s, p50 {:.1} s, max {:.1} s; held open after the handshake/request: p50 {:.1} s, max {:.1} s",
        pct(&close_times, 0.0).as_secs_f64(),
        pct(&close_times, 0.5).as_secs_f64(),
        pct(&close_times, 1.0).as_secs_f64(),
        pct(&held, 0.5).as_secs_f64(),
        pct(&held, 1.0).as_secs_f64(),
    );
    println!(
        "router RSS: before {}, peak {}, after {}",
        kib(rss_before),
        kib((rss_peak > 0).then_some(rss_peak)),
        kib(rss_after)
    );
    println!(
        "normal request (new connection{}) while all {} were open: n={} p50 {} max {}; failed probes over the whole run: {probe_failures}",
        if cli.tls_ca.is_some() {
            " + TLS handshake"
        } else {
            ""
        },
        cli.conns,
        probes_all_open.len(),
        ms(pct(&probes_all_open, 0.5)),
        ms(pct(&probes_all_open, 1.0)),
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.sources.is_empty() {
        eprintln!("error: --sources needs at least one address");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `mock-model`: runs one mock scoring pod until Ctrl-C or SIGTERM.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mock_model::{MockConfig, MockProtocol, MockTls};

/// A scoring-pod stand-in: answers POST /score, GET /swagger.json, GET / (liveness), GET /stats,
/// ANY /echo, GET /status/{code}, ANY /reset and the Open Inference Protocol's /v2/... over
/// HTTP/1.1 and h2c, and the Open Inference Protocol over gRPC
/// (inference.GRPCInferenceService: ModelInfer, ModelStreamInfer, ...).
#[derive(Debug, Parser)]
#[command(name = "mock-model", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8081 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: String,

    /// Pod name reported in answers and /stats [default: the bound listen address].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Service time of /score in milliseconds (per-request override: ?latencyMs=N).
    #[arg(long, value_name = "N", default_value_t = 0)]
    latency_ms: u64,

    /// Probability in [0, 1] that /score answers 500 (injected failure).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_fail_rate)]
    fail_rate: f64,

    /// Stream /score answers as N chunks spread over the service time; 0 = one JSON answer
    /// (per-request override: ?streamChunks=N).
    #[arg(long, value_name = "N", default_value_t = 0)]
    stream_chunks: u32,

    /// Let a /score's service time run to its end when the caller disconnects (as a model
    /// worker does); /stats counts it in flight until then.
    #[arg(long)]
    work_survives_disconnect: bool,

    /// Keep the service time to within a few µs instead of the timer's millisecond (costs CPU:
    /// the last millisecond is spent yielding).
    #[arg(long)]
    precise_latency: bool,

    /// A streamed /score answer stops after N chunks and never ends, its connection left open:
    /// a pod that stalls mid-answer (per-request override: ?stallAfterChunks=N).
    #[arg(long, value_name = "N")]
    stall_after_chunks: Option<u32>,

    /// What the port speaks: auto (HTTP/1.1 and h2c), h2c (HTTP/2 only) or h2 (HTTP/2 over TLS,
    /// with --tls-cert and --tls-key).
    #[arg(long, value_enum, default_value_t = Protocol::Auto)]
    protocol: Protocol,

    /// PEM certificate chain for --protocol h2.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for --protocol h2.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// HTTP/2 streams a connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS)
    /// [default: 200].
    #[arg(long, value_name = "N")]
    h2_max_concurrent_streams: Option<u32>,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Auto,
    H2c,
    H2,
}

/// The port's protocol and TLS from the arguments.
fn transport(args: &Args) -> anyhow::Result<(MockProtocol, Option<MockTls>)> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(MockTls::from_pem_files(c, k)?),
        _ => None,
    };
    let protocol = match args.protocol {
        Protocol::Auto => MockProtocol::Auto,
        Protocol::H2c => MockProtocol::H2c,
        Protocol::H2 => MockProtocol::H2,
    };
    match (protocol, &tls) {
        (MockProtocol::H2, None) => {
            anyhow::bail!("--protocol h2 serves TLS: give --tls-cert and --tls-key")
        }
        (MockProtocol::Auto | MockProtocol::H2c, Some(_)) => {
            anyhow::bail!("--tls-cert and --tls-key go with --protocol h2")
        }
        _ => Ok((protocol, tls)),
    }
}

fn parse_fail_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "fail rate must be between 0 and 1 (inclusive), got {s}"
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (protocol, tls) = transport(&args)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    let name = args.name.unwrap_or_else(|| addr.to_string());
    let config = MockConfig {
        name: name.clone(),
        latency: Duration::from_millis(args.latency_ms),
        fail_rate: args.fail_rate,
        stream_chunks: args.stream_chunks,
        work_survives_disconnect: args.work_survives_disconnect,
        precise_latency: args.precise_latency,
        stall_after_chunks: args.stall_after_chunks,
        protocol,
        tls,
        h2_max_concurrent_streams: args.h2_max_concurrent_streams,
    };
    let handle = mock_model::spawn(listener, config);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock-model {name} listening on {addr}")?;
        out.flush()?;
    }
    shutdown_signal().await?;
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            res = tokio::signal::ctrl_c() => res,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

//! `infergate-grpc-load`: open-loop load of OIP `ModelInfer` gRPC calls (unary) at a fixed rate,
//! over a few HTTP/2 connections, with an HDR histogram of the call latencies.
//!
//! Calls start on a schedule (rate per second, whatever the answers do), each on the next of the
//! connections in turn; a call's latency runs from when it was sent to its status. The calls
//! of the warm-up are not counted. Ends with one JSON line (and `--json FILE`): calls, errors,
//! the rate reached, the percentiles in microseconds, and how many calls were sent more than a
//! millisecond after their time (the generator falling behind).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use mock_model::grpc::{Client, client_over, infer_request};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "infergate-grpc-load")]
struct Args {
    /// Where to connect (h2c).
    target: SocketAddr,
    /// Calls per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Warm-up (not counted), e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Measured window, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The `azureml-endpoint` metadata value (infergate's routing); omitted when not given.
    #[arg(long)]
    endpoint: Option<String>,
    /// `authorization` metadata (e.g. "Bearer KEY").
    #[arg(long)]
    authorization: Option<String>,
    /// FP32 values in the request's input tensor.
    #[arg(long, default_value_t = 64)]
    values: usize,
    /// Most calls in flight; a tick finding this many is counted as an error.
    #[arg(long, default_value_t = 10_000)]
    max_outstanding: usize,
    /// Also write the JSON summary here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..a.connections.max(1) {
        let tcp = tokio::net::TcpStream::connect(a.target)
            .await
            .with_context(|| format!("connect {}", a.target))?;
        tcp.set_nodelay(true)?;
        let c = client_over(tcp, &format!("http://{}", a.target)).await?;
        clients.push(c);
    }
    let values: Vec<f32> = (0..a.values).map(|i| i as f32 * 0.5).collect();
    let template = infer_request("bench", &values, &[]);
    let meta: Vec<(
        &'static str,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )> = [
        ("azureml-endpoint", a.endpoint.as_deref()),
        ("authorization", a.authorization.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?.parse().ok()?)))
    .collect();
    let meta = Arc::new(meta);
    // One call first: the target must answer.
    {
        let mut q = tonic::Request::new(template.clone());
        for (k, v) in meta.iter() {
            q.metadata_mut().insert(*k, v.clone());
        }
        clients[0]
            .model_infer(q)
            .await
            .context("the first call failed")?;
    }

    let tally = Arc::new(Mutex::new(Tally {
        hist: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..Tally::default()
    }));
    let outstanding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let mut late = 0u64;
    let mut i: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        if now >= measure_from && now - due > Duration::from_millis(1) {
            late += 1;
        }
        i += 1;
        let counted = now >= measure_from;
        if outstanding.load(std::sync::atomic::Ordering::Relaxed) >= a.max_outstanding {
            if counted {
                let mut t = tally.lock().unwrap();
                t.errors += 1;
                t.first_error
                    .get_or_insert_with(|| "too many calls in flight".into());
            }
            continue;
        }
        let mut c = clients[(i as usize) % clients.len()].clone();
        let mut q = tonic::Request::new(template.clone());
        for (k, v) in meta.iter() {
            q.metadata_mut().insert(*k, v.clone());
        }
        let (tally, outstanding) = (tally.clone(), outstanding.clone());
        outstanding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tasks.spawn(async move {
            let sent = Instant::now();
            let r = c.model_infer(q).await;
            let took = sent.elapsed();
            outstanding.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if !counted {
                return;
            }
            let mut t = tally.lock().unwrap();
            t.calls += 1;
            match r {
                Ok(_) => {
                    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                    if let Some(h) = &mut t.hist {
                        let _ = h.record(us);
                    }
                }
                Err(e) => {
                    t.errors += 1;
                    t.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        });
        // Reap finished calls now and then so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let t = tally.lock().unwrap();
    let h = t.hist.as_ref().expect("made above");
    let q = |p: f64| h.value_at_quantile(p);
    let summary = serde_json::json!({
        "target": a.target.to_string(),
        "rate": a.rate,
        "calls": t.calls,
        "errors": t.errors,
        "first_error": t.first_error,
        "calls_per_s": t.calls as f64 / a.duration.as_secs_f64(),
        "late": late,
        "p50_us": q(0.50),
        "p90_us": q(0.90),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
    });
    println!("{summary}");
    if let Some(p) = &a.json {
        std::fs::write(p, summary.to_string())?;
    }
    Ok(())
}

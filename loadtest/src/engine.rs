//! The load loops: open loop (constant rate, latency from the intended send time) and
//! closed loop (back-to-back workers).
//!
//! Open loop: a dedicated OS thread wakes at each intended send time `t0 + i / rate`
//! (`std::thread::sleep` with the thread's timer slack lowered to 1 ns, typically
//! 40-100 µs late, much finer than the 1 ms tokio timer) and queues `(i, intended_time)`.
//! The report's send lag (actual minus intended send time) shows that cost. Idle workers (one per HTTP/1.1
//! connection, `--streams` per HTTP/2 connection) take requests from that queue in
//! order. When every worker is busy the queue grows: the request is sent as soon as a
//! worker frees up and its latency still counts from its intended time; it is "late" if
//! it waited more than [`LATE_THRESHOLD`](crate::report::LATE_THRESHOLD). A queued
//! request whose timeout (also counted from the intended time) expired before a worker
//! took it is counted as a timeout without being sent, which bounds the run to
//! warm-up + duration + timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use crate::cli::{Mode, RunConfig};
use crate::client::{Client, Slot, make_slots};
use crate::report::{ErrorKind, Outcome, Recorder, Report};

/// Pause of a closed-loop worker after a connect or TLS failure (avoids a busy loop
/// against a dead target).
const CLOSED_LOOP_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Longest time spent opening connections before the run starts.
const PRECONNECT_LIMIT: Duration = Duration::from_secs(5);

/// Runs one load as configured and returns its report.
///
/// Must be called inside a tokio runtime (multi-thread recommended). Connections are
/// opened before the clock starts; failures there are not counted (the requests that
/// then find no connection report them).
pub async fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    // Harmless when already installed; the TLS config also names ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Arc::new(Client::new(cfg).await?);
    let slots = preconnect(
        &client,
        make_slots(&client, cfg.connections, cfg.effective_streams()),
        cfg.timeout.min(PRECONNECT_LIMIT),
    )
    .await;

    let t0 = Instant::now();
    let window_start = t0 + cfg.warmup;
    let window_end = window_start + cfg.duration;
    let recorders = match cfg.mode {
        Mode::Open { rate } => {
            open_loop(&client, slots, cfg, rate, t0, window_start, window_end).await?
        }
        Mode::Closed => closed_loop(&client, slots, cfg, window_start, window_end).await?,
    };
    let mut total = Recorder::new(window_start, window_end);
    for r in recorders {
        total.merge(r);
    }
    Ok(total.into_report(cfg))
}

async fn preconnect(client: &Arc<Client>, slots: Vec<Slot>, limit: Duration) -> Vec<Slot> {
    let tasks: Vec<_> = slots
        .into_iter()
        .map(|mut slot| {
            let client = Arc::clone(client);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(limit, slot.preconnect(&client)).await;
                slot
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(slot) = t.await {
            out.push(slot);
        }
    }
    out
}

async fn open_loop(
    client: &Arc<Client>,
    slots: Vec<Slot>,
    cfg: &RunConfig,
    rate: f64,
    t0: Instant,
    window_start: Instant,
    window_end: Instant,
) -> anyhow::Result<Vec<Recorder>> {
    let span = (window_end - t0).as_secs_f64();
    // Requests whose intended time t0 + i/rate falls before the end of the window.
    let total = (span * rate).ceil() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    std::thread::Builder::new()
        .name("loadtest-scheduler".to_owned())
        .spawn(move || {
            tighten_timer_slack();
            for i in 0..total {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                loop {
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    std::thread::sleep(at - now);
                }
                if tx.send((i, at)).is_err() {
                    break;
                }
            }
        })?;
    let queue = Arc::new(Mutex::new(rx));
    let timeout = cfg.timeout;
    let workers: Vec<_> = slots
        .into_iter()
        .map(|mut slot| {
            let client = Arc::clone(client);
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let mut rec = Recorder::new(window_start, window_end);
                loop {
                    let job = queue.lock().await.recv().await;
                    let Some((i, intended)) = job else { break };
                    let start = Instant::now();
                    let lag = start.saturating_duration_since(intended);
                    let deadline = intended + timeout;
                    let outcome = if start >= deadline {
                        Outcome::Error(ErrorKind::Timeout)
                    } else {
                        let deadline = tokio::time::Instant::from_std(deadline);
                        match tokio::time::timeout_at(deadline, slot.send(&client, i)).await {
                            Ok(outcome) => outcome,
                            Err(_) => {
                                slot.on_timeout(&client, i);
                                Outcome::Error(ErrorKind::Timeout)
                            }
                        }
                    };
                    rec.record(intended, Instant::now(), lag, outcome);
                }
                rec
            })
        })
        .collect();
    join(workers).await
}

/// Asks Linux for 1 ns of timer slack on the calling thread instead of the default 50 µs,
/// which makes `thread::sleep` wake-ups about 50 µs more punctual (median overshoot
/// ~90 µs -> ~40 µs measured here). Best effort: a no-op where `/proc` lacks the file.
fn tighten_timer_slack() {
    if let Ok(link) = std::fs::read_link("/proc/thread-self")
        && let Some(tid) = link.file_name()
    {
        let path = std::path::Path::new("/proc")
            .join(tid)
            .join("timerslack_ns");
        let _ = std::fs::write(path, "1");
    }
}

async fn closed_loop(
    client: &Arc<Client>,
    slots: Vec<Slot>,
    cfg: &RunConfig,
    window_start: Instant,
    window_end: Instant,
) -> anyhow::Result<Vec<Recorder>> {
    let counter = Arc::new(AtomicU64::new(0));
    let timeout = cfg.timeout;
    let workers: Vec<_> = slots
        .into_iter()
        .map(|mut slot| {
            let client = Arc::clone(client);
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut rec = Recorder::new(window_start, window_end);
                loop {
                    let start = Instant::now();
                    if start >= window_end {
                        break;
                    }
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let outcome = match tokio::time::timeout(timeout, slot.send(&client, i)).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            slot.on_timeout(&client, i);
                            Outcome::Error(ErrorKind::Timeout)
                        }
                    };
                    rec.record(start, Instant::now(), Duration::ZERO, outcome);
                    if matches!(outcome, Outcome::Error(ErrorKind::Connect | ErrorKind::Tls)) {
                        tokio::time::sleep(CLOSED_LOOP_ERROR_PAUSE).await;
                    }
                }
                rec
            })
        })
        .collect();
    join(workers).await
}

async fn join(workers: Vec<tokio::task::JoinHandle<Recorder>>) -> anyhow::Result<Vec<Recorder>> {
    let mut out = Vec::with_capacity(workers.len());
    for w in workers {
        out.push(w.await?);
    }
    Ok(out)
}

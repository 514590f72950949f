//! The fake OpenTelemetry collector as a process, for load runs of the real binary with span
//! export on (`benches/scripts/ab.sh`).
//!
//! `fake-otlp-collector ADDR` listens on `ADDR` (e.g. `127.0.0.1:4318`) for OTLP/HTTP protobuf
//! and OTLP/gRPC trace exports, decodes each one (keeping only the counts), prints
//! `listening on http://ADDR`, and on SIGTERM or SIGINT prints `received N spans in M exports`
//! and exits 0.

use std::process::ExitCode;

use infergate_testkit::otlp::FakeCollector;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1).and_then(|a| a.parse().ok()) else {
        eprintln!("usage: fake-otlp-collector IP:PORT");
        return ExitCode::from(2);
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fake-otlp-collector: cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    let c = match FakeCollector::start_counting(addr).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fake-otlp-collector: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", c.url());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!(
        "received {} spans in {} exports",
        c.span_count(),
        c.requests()
    );
    ExitCode::SUCCESS
}

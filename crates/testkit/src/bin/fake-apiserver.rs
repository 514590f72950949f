//! The fake Kubernetes API server as a process, for scripts that run the real binary against it
//! (`deploy/observability/check.sh`).
//!
//! `fake-apiserver KUBECONFIG_PATH` serves [`infergate_testkit::default_kinds`] on
//! 127.0.0.1:0, writes a kubeconfig pointing at it to `KUBECONFIG_PATH` (atomically: once the
//! file exists it is complete), prints `listening on http://127.0.0.1:PORT`, and runs until
//! SIGTERM or SIGINT (exit 0). Objects are created and changed through its API like a real one
//! (`POST /apis/infergate.io/v1/namespaces/ml/inferenceendpoints`, merge `PATCH`, `DELETE`).

use std::path::PathBuf;
use std::process::ExitCode;

use infergate_testkit::FakeApiServer;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fake-apiserver KUBECONFIG_PATH");
        return ExitCode::from(2);
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fake-apiserver: cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    let api = FakeApiServer::start().await;
    let tmp = path.with_extension("tmp");
    if let Err(e) =
        std::fs::write(&tmp, api.kubeconfig()).and_then(|()| std::fs::rename(&tmp, &path))
    {
        eprintln!("fake-apiserver: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("listening on {}", api.url());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ExitCode::SUCCESS
}

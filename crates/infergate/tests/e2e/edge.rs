//! Issue 14 (edge hardening) against the real binary: what an outsider can make the router
//! write to its log, and configuration refusals made before any port is bound.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::runner::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_of_64kib_is_truncated_in_the_log() {
    // A 404 per request, each with a ~64 KiB path (the longest URI hyper takes is 65534
    // bytes): the access log line stays small.
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "infergate.yaml",
        "allowInsecureConnections: true\n\
         listen: {http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n\
         endpoints: []\n",
    );
    let mut bin = Bin::spawn(&["serve", "--config", &f]);
    let http = bin.listening("http");
    let long = format!("/{}", "a".repeat(65_000));
    for _ in 0..3 {
        let a = call(http, req("GET", &long, empty())).await;
        assert_eq!(a.status, 404);
        assert!(a.body.len() < 1024, "the error body does not echo the path");
    }
    for _ in 0..3 {
        let line = bin.wait_line(|l| l.contains("infergate::access"));
        assert!(line.len() < 2048, "{} bytes: {}", line.len(), &line[..200]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let path = v["path"].as_str().unwrap();
        assert!(path.starts_with("/aaaa"), "{path}");
        assert!(
            path.ends_with(&format!("…[+{} bytes]", 65_001 - 256)),
            "{path}"
        );
        assert_eq!(v["status"], 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_log_flood_is_rate_limited() {
    // Anyone who reaches the peer port can make the router refuse a connection (and log it):
    // a flood of 300 gets a few lines a second; the next line counts what was left out, and the
    // metric counts every one.
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", "0123456789abcdef-shared-secret");
    let peer = free_port();
    let f = write_file(
        dir.path(),
        "infergate.yaml",
        &format!(
            "allowInsecureConnections: true\n\
             listen: {{http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
             endpoints: []\n\
             cluster: {{listen: \"127.0.0.1:{peer}\", peers: [\"127.0.0.1:{peer}\"], secretFile: \"{secret}\"}}\n"
        ),
    );
    let mut bin = Bin::spawn(&["serve", "--config", &f]);
    let admin = bin.listening("admin");
    let started = Instant::now();
    let flood: u64 = 300;
    for _ in 0..flood {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", peer)).unwrap();
        // Not the peer protocol: refused at once.
        let _ = s.write_all(&[0xff; 64]);
        drop(s);
    }
    // Every refusal is counted.
    let counted = eventually(Duration::from_secs(20), async || {
        admin_metric(admin, "infergate_cluster_peer_auth_failures_total").await >= flood as f64
    })
    .await;
    assert!(counted, "every refused connection counted");
    // One more after the window: its line says how many were left out.
    std::thread::sleep(Duration::from_millis(1100));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", peer)).unwrap();
    let _ = s.write_all(&[0xff; 64]);
    drop(s);
    // Every refusal is a line, or counted in the `suppressed` of the next line.
    let (mut logged, mut accounted) = (0u64, 0u64);
    while accounted < flood + 1 {
        let l = bin.wait_line(|l| l.contains("peer connection refused"));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        logged += 1;
        accounted += 1 + v["suppressed"].as_u64().unwrap();
    }
    assert_eq!(accounted, flood + 1);
    let windows = started.elapsed().as_secs() + 1;
    assert!(
        logged <= 5 * (windows + 1),
        "{logged} lines for {flood} refusals in {windows} s"
    );
}

#[test]
fn set_defaults_max_queue_length_is_accepted() {
    // Listed as settable (README, the error's list), accepted by the binary.
    let (code, out, err) = run_to_exit(&[
        "check",
        "--config",
        "examples/static.yaml",
        "--set",
        "defaults.maxQueueLength=7",
        "--set",
        "requestSettingsCeilings.maxQueueLength=100",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("ok\n"), "{out}");
    let (code, _, err) = run_to_exit(&[
        "check",
        "--config",
        "examples/static.yaml",
        "--set",
        "defaults.maxQueueLength=101",
        "--set",
        "requestSettingsCeilings.maxQueueLength=100",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("defaults.maxQueueLength")
            && err.contains("requestSettingsCeilings.maxQueueLength"),
        "{err}"
    );
}

#[test]
fn short_key_is_refused_at_config() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "infergate.yaml",
        "allowInsecureConnections: true\n\
         endpoints:\n\
         \x20 - name: e\n    auth: {primaryKey: \"hunter2\"}\n    deployments: [{name: d, pods: [\"127.0.0.1:1\"]}]\n",
    );
    let (code, out, err) = run_to_exit(&["check", "--config", &f]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        err.contains("endpoints[0].auth.primaryKey")
            && err.contains("7 characters")
            && err.contains("fix:"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the key itself is never printed: {err}"
    );
}

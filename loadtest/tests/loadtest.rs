//! End-to-end tests: the load generator against the mock model (and a small TLS server)
//! over real sockets on 127.0.0.1. Every run is bounded (a few hundred ms to 2.5 s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infergate_loadtest::{Cli, Outcome, Report, run_cli};
use mock_model::{MockConfig, MockHandle, spawn_local};
use serde_json::Value;

async fn mock(latency_ms: u64) -> MockHandle {
    spawn_local(MockConfig {
        name: "loadtest".into(),
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    })
    .await
    .expect("mock model starts")
}

async fn single(args: &[&str]) -> Report {
    let mut argv = vec!["infergate-loadtest", "--quiet"];
    argv.extend_from_slice(args);
    match run_cli(Cli::parse_from(argv)).await.expect("run succeeds") {
        Outcome::Single(r) => *r,
        Outcome::Compare(_) => panic!("expected a single run"),
    }
}

fn assert_consistent(r: &Report) {
    let l = &r.latency_us;
    assert!(
        l.min_us <= l.p50_us
            && l.p50_us <= l.p90_us
            && l.p90_us <= l.p99_us
            && l.p99_us <= l.p999_us
            && l.p999_us <= l.max_us,
        "percentiles out of order: {l:?}"
    );
    let by_status: u64 = r.errors.by_status.values().sum();
    let e = &r.errors;
    assert_eq!(
        e.total,
        by_status + e.connect + e.tls + e.timeout + e.io + e.protocol
    );
    let responses: u64 = r.status.values().sum();
    assert_eq!(l.samples, responses);
    assert_eq!(
        r.requests,
        responses + e.connect + e.tls + e.timeout + e.io + e.protocol
    );
    assert_eq!(
        r.timeline.iter().map(|s| s.requests).sum::<u64>(),
        r.requests
    );
    assert!(r.elapsed_s >= r.duration_s);
    if r.requests > 0 {
        assert!((r.throughput_rps - r.requests as f64 / r.elapsed_s).abs() < 1e-6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_count_matches_rate_and_latency_includes_service_time() {
    let m = mock(20).await;
    let url = format!("http://{}/score", m.addr());
    let r = single(&[
        &url,
        "-r",
        "200",
        "-d",
        "2s",
        "--warmup",
        "500ms",
        "-c",
        "32",
        "--body-size",
        "256",
    ])
    .await;
    assert_consistent(&r);
    assert_eq!(r.mode, "open");
    assert_eq!(r.target_rate, Some(200.0));
    let expected = 200.0 * 2.0;
    assert!(
        (r.requests as f64 - expected).abs() <= expected * 0.1,
        "count {} vs rate x duration {expected}",
        r.requests
    );
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.ok, r.requests);
    assert!(
        r.latency_us.p50_us >= 20_000.0,
        "p50 {} < service time",
        r.latency_us.p50_us
    );
    assert!(
        r.latency_us.max_us < 5_000_000.0,
        "absurd max {}",
        r.latency_us.max_us
    );
    assert!(
        (r.throughput_rps - 200.0).abs() < 40.0,
        "throughput {}",
        r.throughput_rps
    );
    assert_eq!(r.timeline.len(), 2);
    // The mock saw the warm-up plus the measured requests.
    assert!(m.stats().served >= r.requests + 80);
    // The body was sent: the mock answers how many bytes it received.
    assert!(r.bytes_received > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_respects_connection_count() {
    let m = mock(1).await;
    let url = format!("http://{}/score", m.addr());
    let r = single(&[
        &url,
        "-c",
        "4",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--body-size",
        "64",
    ])
    .await;
    assert_consistent(&r);
    assert_eq!(r.mode, "closed");
    assert!(r.requests > 0);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(r.late, 0);
    assert!(r.latency_us.p50_us >= 1_000.0);
    let s = m.stats();
    assert!(s.max_in_flight <= 4, "max in flight {}", s.max_in_flight);
    assert_eq!(s.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_counted_by_code() {
    let m = mock(0).await;
    let url = format!("http://{}/status/500", m.addr());
    let r = single(&[&url, "-c", "2", "-d", "500ms", "--warmup", "0s"]).await;
    assert_consistent(&r);
    assert!(r.requests > 0);
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors.by_status.get("500").copied(), Some(r.requests));
    assert_eq!(r.errors.total, r.requests);
    assert_eq!(r.status.get("500").copied(), Some(r.requests));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_port_gives_connect_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/score");
    let r = single(&[
        &url, "-r", "50", "-d", "1s", "--warmup", "0s", "-c", "2", "-t", "2s",
    ])
    .await;
    assert_consistent(&r);
    assert!(
        (r.requests as f64 - 50.0).abs() <= 5.0,
        "count {}",
        r.requests
    );
    assert_eq!(r.errors.connect, r.requests);
    assert_eq!(r.latency_us.samples, 0);
    assert_eq!(r.ok, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_with_streams() {
    let m = mock(2).await;
    let url = format!("http://{}/score", m.addr());
    let r = single(&[
        &url,
        "--http2",
        "-c",
        "2",
        "--streams",
        "4",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--body-size",
        "100",
    ])
    .await;
    assert_consistent(&r);
    assert!(r.http2);
    assert!(r.requests > 0);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    // 2 connections x 4 streams = 8 workers in flight at most. The mock counts a request
    // until hyper drops the finished response body, which over HTTP/2 may lag the
    // client's next request a little on a busy machine, so allow some slack.
    let max = m.stats().max_in_flight;
    assert!(max <= 12, "max in flight {max}");
    // Open loop over h2c too.
    let r = single(&[
        &url,
        "--http2",
        "-m",
        "post",
        "-r",
        "100",
        "-c",
        "1",
        "--streams",
        "8",
        "-d",
        "1s",
        "--warmup",
        "0s",
    ])
    .await;
    assert_consistent(&r);
    assert!(
        (r.requests as f64 - 100.0).abs() <= 10.0,
        "count {}",
        r.requests
    );
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_html_outputs() {
    let m = mock(1).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let html = dir.path().join("out.html");
    // Two URLs on the same origin: requests rotate.
    let a = format!("http://{}/score", m.addr());
    let b = format!("http://{}/api/v1/endpoint/demo/score?latencyMs=2", m.addr());
    let r = single(&[
        &a,
        &b,
        "-r",
        "100",
        "-d",
        "1s",
        "--warmup",
        "0s",
        "-H",
        "Authorization: Bearer x",
        "--body-size",
        "64",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ])
    .await;
    assert_consistent(&r);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rep = &v["report"];
    for key in [
        "throughput_rps",
        "requests",
        "ok",
        "late",
        "elapsed_s",
        "duration_s",
    ] {
        assert!(rep[key].is_number(), "report.{key} missing in {rep}");
    }
    for key in [
        "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "min_us", "mean_us",
    ] {
        assert!(
            rep["latency_us"][key].is_number(),
            "latency_us.{key} missing"
        );
    }
    for key in ["connect", "tls", "timeout", "io", "protocol", "total"] {
        assert!(rep["errors"][key].is_number(), "errors.{key} missing");
    }
    assert!(rep["errors"]["by_status"].is_object());
    assert!(!rep["percentiles"].as_array().unwrap().is_empty());
    assert_eq!(rep["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(rep["requests"].as_u64(), Some(r.requests));
    let cfg = &v["config"];
    assert_eq!(cfg["mode"]["kind"], "open");
    assert_eq!(cfg["mode"]["rate"], 100.0);
    assert_eq!(cfg["method"], "POST");
    assert_eq!(cfg["urls"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["headers"][0][0], "Authorization");
    assert_eq!(cfg["body_bytes"], 64);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"), "no inline SVG");
    assert_eq!(page.matches("<svg").count(), 2);
    assert!(page.contains("Latency by percentile"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_interleaves_and_reports_ratio() {
    let fast = mock(0).await;
    let slow = mock(5).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cmp.json");
    let html = dir.path().join("cmp.html");
    let argv = [
        "infergate-loadtest",
        "-q",
        "--compare",
        &format!("http://{}/score", fast.addr()),
        &format!("http://{}/score", slow.addr()),
        "--rounds",
        "2",
        "--method",
        "POST",
        "--pause",
        "0s",
        "-c",
        "2",
        "-d",
        "400ms",
        "--warmup",
        "100ms",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ];
    let Outcome::Compare(cmp) = run_cli(Cli::parse_from(argv)).await.unwrap() else {
        panic!("expected a comparison");
    };
    let order: Vec<(&str, u32)> = cmp
        .runs
        .iter()
        .map(|r| (r.target.as_str(), r.round))
        .collect();
    assert_eq!(order, [("A", 1), ("B", 1), ("A", 2), ("B", 2)]);
    for run in &cmp.runs {
        assert_consistent(&run.report);
        assert_eq!(run.report.errors.total, 0);
    }
    // B adds 5 ms of service time: its median latency is clearly higher, throughput lower.
    assert!(cmp.ratio_b_over_a.p50_us > 1.5, "{:?}", cmp.ratio_b_over_a);
    assert!(
        cmp.ratio_b_over_a.throughput_rps < 1.0,
        "{:?}",
        cmp.ratio_b_over_a
    );
    assert!(cmp.median_b.p50_us >= 5_000.0);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["compare"]["runs"].as_array().unwrap().len(), 4);
    assert!(v["compare"]["ratio_b_over_a"]["p99_us"].is_number());
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
}

/// A TLS server (ALPN h2 + http/1.1) answering 200 "ok", counting HTTP/2 requests.
async fn tls_server() -> (SocketAddr, String, Arc<AtomicU64>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h2 = Arc::new(AtomicU64::new(0));
    let h2_count = Arc::clone(&h2);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let h2 = Arc::clone(&h2);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        if req.version() == http::Version::HTTP_2 {
                            h2.fetch_add(1, Ordering::Relaxed);
                        }
                        async {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.pem(), h2_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_cacert_http1_and_h2_alpn() {
    let (addr, ca_pem, h2) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let url = format!("https://localhost:{}/score", addr.port());
    let ca = ca.to_str().unwrap();
    let r = single(&[
        &url, "--cacert", ca, "-c", "2", "-d", "500ms", "--warmup", "0s",
    ])
    .await;
    assert_consistent(&r);
    assert!(r.ok > 0);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert_eq!(h2.load(Ordering::Relaxed), 0);
    let r = single(&[
        &url,
        "--http2",
        "--cacert",
        ca,
        "-c",
        "1",
        "--streams",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "0s",
    ])
    .await;
    assert_consistent(&r);
    assert!(r.ok > 0);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
    assert!(
        h2.load(Ordering::Relaxed) >= r.ok,
        "server did not see HTTP/2"
    );
    // A CA that did not sign the server certificate: every request fails the handshake.
    let (_, other_ca, _) = tls_server().await;
    let other = dir.path().join("other.pem");
    std::fs::write(&other, other_ca).unwrap();
    let r = single(&[
        &url,
        "--cacert",
        other.to_str().unwrap(),
        "-r",
        "20",
        "-c",
        "1",
        "-d",
        "500ms",
        "--warmup",
        "0s",
    ])
    .await;
    assert_consistent(&r);
    assert!(r.requests > 0);
    assert_eq!(r.errors.tls, r.requests);
    // --insecure accepts it.
    let r = single(&[
        &url,
        "--insecure",
        "-c",
        "1",
        "-d",
        "300ms",
        "--warmup",
        "0s",
    ])
    .await;
    assert!(r.ok > 0 && r.errors.total == 0, "{:?}", r.errors);
}

#[test]
fn binary_help_and_short_json_run() {
    let exe = env!("CARGO_BIN_EXE_infergate-loadtest");
    let out = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--rate",
        "--connections",
        "--streams",
        "--duration",
        "--warmup",
        "--timeout",
        "--http2",
        "--method",
        "--header",
        "--body",
        "--body-size",
        "--cacert",
        "--insecure",
        "--json",
        "--html",
        "--compare",
        "--rounds",
        "--pause",
        "--threads",
        "--quiet",
        "--version",
        "coordinated omission",
        "late",
    ] {
        assert!(help.contains(opt), "--help does not mention {opt}");
    }
    let bad = std::process::Command::new(exe)
        .arg("--no-such-option")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let m = rt.block_on(mock(1));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bin.json");
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"data": [[1, 2, 3]]}"#).unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "-r",
            "50",
            "-d",
            "1s",
            "--warmup",
            "0s",
            "-c",
            "4",
            "--threads",
            "1",
            "--body",
        ])
        .arg(&body)
        .arg("--json")
        .arg(&json)
        .arg(format!("http://{}/score", m.addr()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("req/s") && stdout.contains("p99.9"),
        "{stdout}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let requests = v["report"]["requests"].as_u64().unwrap();
    assert!((45..=55).contains(&requests), "requests {requests}");
    assert_eq!(v["report"]["errors"]["total"], 0);
    assert_eq!(v["config"]["body_bytes"], 21);
    assert_eq!(v["config"]["method"], "POST");
    drop(m);
}

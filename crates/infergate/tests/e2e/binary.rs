//! The real binary: start-up refusals, config errors, access log, SIGTERM drain, memory bound, demo
//! (or its absence without the `demo` feature).

use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use crate::runner::*;
use crate::support::*;

fn cfg_file(dir: &std::path::Path, yaml: &str) -> String {
    write_file(dir, "infergate.yaml", yaml)
}

/// A plain-HTTP config on 127.0.0.1:0 with endpoint `e` (no auth) in front of `pod`.
fn one_pod_config(dir: &std::path::Path, pod: &mock_model::MockHandle) -> String {
    cfg_file(
        dir,
        &format!(
            "allowInsecureConnections: true\n{}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
            listen_local(),
            pod.addr()
        ),
    )
}

fn listen_local() -> String {
    "listen: {https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n".into()
}

#[test]
fn no_tls_and_no_insecure_flag_refuses_to_start_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let f = cfg_file(
        dir.path(),
        &format!("listen: {{admin: \"127.0.0.1:{admin}\"}}\nendpoints: []\n"),
    );
    let (code, _, err) = run_to_exit(&["serve", "--config", &f]);
    assert_eq!(code, Some(2), "{err}");
    for k in [
        "sslCertPemFile",
        "sslKeyPemFile",
        "allowInsecureConnections",
    ] {
        assert!(err.contains(k), "{k} not named in: {err}");
    }
    assert_eq!(err.lines().count(), 1, "one message: {err}");
    std::net::TcpListener::bind(("127.0.0.1", admin)).expect("the admin port was never bound");
}

#[test]
fn config_errors_name_key_value_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let f = cfg_file(
        dir.path(),
        "allowInsecureConnections: true\nendpoints:\n  - name: e\n    traffic: {a: 70, b: 20}\n    deployments: [{name: a}, {name: b}]\n",
    );
    let (code, _, err) = run_to_exit(&["serve", "--config", &f]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("endpoints[0].traffic")
            && err.contains("{a: 70, b: 20}")
            && err.contains("fix:"),
        "{err}"
    );

    let f = cfg_file(dir.path(), "endpoints: []\n");
    let (code, _, err) = run_to_exit(&[
        "serve",
        "--config",
        &f,
        "--set",
        "allowInsecureConnections=Ture",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("allowInsecureConnections")
            && err.contains("Ture")
            && err.contains("True, False, true or false"),
        "{err}"
    );

    let f = cfg_file(
        dir.path(),
        "allowInsecureConnections: true\nlisten: {admn: \"x\"}\n",
    );
    let (code, _, err) = run_to_exit(&["serve", "--config", &f]);
    assert_eq!(code, Some(2));
    assert!(err.contains("admn"), "unknown key named: {err}");
}

#[test]
fn encrypted_key_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let f = cfg_file(
        dir.path(),
        &format!(
            "{}sslCertPemFile: {}\nsslKeyPemFile: {}\n",
            listen_local(),
            tls_fixture("rsa-pkcs1-cert.pem").display(),
            tls_fixture("encrypted-pkcs8-key.pem").display()
        ),
    );
    let (code, _, err) = run_to_exit(&["serve", "--config", &f]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("encrypted") && err.contains("encrypted-pkcs8-key.pem"),
        "{err}"
    );
}

#[test]
fn plain_http_port_is_not_bound_without_insecure_flag() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let f = cfg_file(
        dir.path(),
        &format!(
            "sslCertPemFile: certs-example/server.pem\nsslKeyPemFile: certs-example/server-key.pem\n\
             listen: {{https: \"127.0.0.1:0\", http: \"127.0.0.1:{http}\", admin: \"127.0.0.1:0\"}}\n"
        ),
    );
    let mut b = Bin::spawn(&["serve", "--config", &f]);
    b.wait_line(|l| l.contains("plain HTTP listener not opened"));
    b.listening("https");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http)).is_err(),
        "port {http} must not be bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_one_json_line_per_request_with_all_fields() {
    let pod = mock("logpod", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let f = one_pod_config(dir.path(), &pod);
    // One worker: idle pod connections are kept per worker, and the second request below must
    // find the first one's (each `call` is a new client connection, which two workers could
    // place on the other worker).
    let mut b = Bin::spawn(&["serve", "--config", &f, "--workers", "1"]);
    let http = b.listening("http");
    let mut q = post("/api/v1/endpoint/e/score", "{\"x\": 1}");
    q.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let a = call(http, q).await;
    assert_eq!(a.status, 200);
    let rid = a.header("x-request-id").to_string();
    let line = b.wait_line(|l| l.contains(&rid));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["target"], "infergate::access");
    assert_eq!(j["request_id"], rid.as_str());
    assert_eq!(j["endpoint"], "e");
    assert_eq!(j["deployment"], "d");
    assert_eq!(j["pod"], pod.addr().to_string());
    assert_eq!(j["status"], 200);
    assert_eq!(j["bytes_in"], 8);
    assert_eq!(j["bytes_out"], a.body.len());
    assert_eq!(j["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["pooled"], false, "the first request opens the connection");
    for phase in ["queue_ms", "connect_ms", "head_ms", "stream_ms", "total_ms"] {
        assert!(j[phase].as_f64().unwrap() >= 0.0, "{phase}: {line}");
    }
    let total = j["total_ms"].as_f64().unwrap();
    assert!(
        total > 0.0 && total >= j["head_ms"].as_f64().unwrap(),
        "{line}"
    );
    assert_eq!(j["outcome"], "ok");

    // The next request reuses the connection; without a traceparent there is no trace id
    // (no `tracing` section: the router starts no trace).
    let a = call(http, post("/api/v1/endpoint/e/score", "{}")).await;
    let rid = a.header("x-request-id").to_string();
    let j: serde_json::Value = serde_json::from_str(&b.wait_line(|l| l.contains(&rid))).unwrap();
    assert_eq!(j["pooled"], true);
    assert!(j.get("trace_id").is_none());

    let a = call(http, post("/api/v1/endpoint/missing/score", "{}")).await;
    let rid = a.header("x-request-id").to_string();
    let j: serde_json::Value = serde_json::from_str(&b.wait_line(|l| l.contains(&rid))).unwrap();
    assert_eq!(j["status"], 404);
    assert_eq!(j["outcome"], "EndpointNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_logged_and_counted_with_the_stream_timer() {
    use tokio::io::AsyncWriteExt;
    let pod = mock("unread", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let f = one_pod_config(dir.path(), &pod);
    let mut b = Bin::spawn(&[
        "serve",
        "--config",
        &f,
        "--set",
        "defaults.streamIdleTimeoutMs=500",
        "--set",
        "defaults.requestTimeoutMs=500",
    ]);
    let http = b.listening("http");
    let admin = b.listening("admin");
    // A 64 MiB answer to a client with a tiny receive buffer that never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(http).await.unwrap();
    let q = "POST /api/v1/endpoint/e/score?respondBytes=67108864 HTTP/1.1\r\nhost: router.test\r\ncontent-length: 2\r\n\r\n{}";
    s.write_all(q.as_bytes()).await.unwrap();
    let line = b.wait_line(|l| l.contains("infergate::access"));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["outcome"], "stream_idle_timeout", "{line}");
    assert_eq!(j["stalled"], "client", "{line}");
    assert_eq!(j["status"], 200, "the head had gone out: {line}");
    assert_eq!(
        (&j["endpoint"], &j["deployment"]),
        (&"e".into(), &"d".into())
    );
    assert!(j["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(j["held_ms"].as_f64().is_some(), "{line}");
    assert_eq!(
        admin_metric(
            admin,
            "infergate_stream_timeouts_total{endpoint=\"e\",deployment=\"d\",timer=\"stream_idle_timeout\"}"
        )
        .await,
        1.0
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_stalls_mid_answer_is_logged_with_the_timer_and_the_side() {
    let pod = mock("stalls", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let f = one_pod_config(dir.path(), &pod);
    let mut b = Bin::spawn(&[
        "serve",
        "--config",
        &f,
        "--set",
        "defaults.streamIdleTimeoutMs=500",
    ]);
    let http = b.listening("http");
    let mut c = Client::plain(http, Proto::H1).await;
    let resp = c
        .send(post(
            "/api/v1/endpoint/e/score?streamChunks=10&latencyMs=1000&stallAfterChunks=2",
            "{}",
        ))
        .await
        .unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the stream was cut: {body:?}");
    let line = b.wait_line(|l| l.contains(&rid));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["outcome"], "stream_idle_timeout", "{line}");
    assert_eq!(j["stalled"], "pod", "{line}");
    assert_eq!(j["status"], 200, "{line}");
    assert!(j["bytes_out"].as_u64().unwrap() > 0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let pod = mock("slow", 1500).await;
    let dir = tempfile::tempdir().unwrap();
    let f = one_pod_config(dir.path(), &pod);
    // One worker: the single-threaded runtime serves, handles the signal and drains too.
    let mut b = Bin::spawn(&["serve", "--config", &f, "--workers", "1"]);
    let http = b.listening("http");
    let admin = b.listening("admin");
    let inflight =
        tokio::spawn(async move { call(http, post("/api/v1/endpoint/e/score", "{}")).await });
    assert!(eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await);
    b.signal("TERM");
    assert!(
        eventually(Duration::from_secs(5), async || {
            match tokio::net::TcpStream::connect(admin).await {
                Ok(_) => admin_get(admin, "/readyz").await.status == 503,
                Err(_) => true,
            }
        })
        .await
    );
    let a = inflight.await.unwrap();
    assert_eq!(
        a.status, 200,
        "in-flight request completed during the drain"
    );
    let status = tokio::task::spawn_blocking(move || b.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_of_64_mib_stream_with_bounded_memory() {
    const SIZE: usize = 64 << 20;
    let pod = mock("big", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let f = one_pod_config(dir.path(), &pod);
    let b = {
        let mut b = Bin::spawn(&["serve", "--config", &f, "--workers", "2"]);
        b.listening("http");
        b
    };
    let http = b
        .seen
        .iter()
        .find(|l| l.contains("\"listener\":\"http\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["addr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .unwrap();
    // warm up: pools, buffers, metrics
    for _ in 0..3 {
        assert_eq!(
            call(
                http,
                post("/api/v1/endpoint/e/score?respondBytes=1048576", "{}")
            )
            .await
            .status,
            200
        );
    }
    let (hwm_before, _) = b.memory();

    // upload: 64 MiB generated lazily, never held by the client either
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let frames =
        (0..SIZE / chunk.len()).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let a = Client::plain(http, Proto::H1)
        .await
        .call(req("POST", "/api/v1/endpoint/e/score", body))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["bytesReceived"], SIZE as u64);

    // download: counted frame by frame, not collected
    let resp = Client::plain(http, Proto::H1)
        .await
        .send(post(
            &format!("/api/v1/endpoint/e/score?respondBytes={SIZE}"),
            "{}",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len();
        }
    }
    assert_eq!(got, SIZE);

    let (hwm_after, rss_after) = b.memory();
    let growth = hwm_after.saturating_sub(hwm_before);
    eprintln!(
        "64 MiB up + 64 MiB down: router peak RSS {} KiB -> {} KiB (+{} KiB)",
        hwm_before >> 10,
        hwm_after >> 10,
        growth >> 10
    );
    assert!(
        growth < 16 << 20,
        "router peak RSS grew by {} KiB (before {} KiB, after {} KiB, rss now {} KiB)",
        growth >> 10,
        hwm_before >> 10,
        hwm_after >> 10,
        rss_after >> 10
    );
}

#[cfg(feature = "demo")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_curl_commands_it_prints() {
    let mut b = Bin::spawn(&[
        "demo",
        "--https-port",
        "0",
        "--admin-port",
        "0",
        "--latency-ms",
        "1",
    ]);
    let line =
        b.wait_line(|l| l.contains("curl --cacert") && l.contains("/api/v1/endpoint/demo/score"));
    let port: u16 = line
        .split("https://localhost:")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"));
    assert!(line.contains("certs-example/ca.pem"), "{line}");
    let auth = line
        .split("-H 'Authorization: ")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or_else(|| panic!("no Authorization header in {line}"))
        .to_string();
    assert!(auth.starts_with("Bearer ") && auth.len() > 20, "{auth}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Client::tls(addr, Proto::H2).await;
    // the printed command without its key is refused
    c.call(post("/api/v1/endpoint/demo/score", "{}"))
        .await
        .assert_error(401, "Unauthorized");
    let mut deployments = std::collections::HashSet::new();
    let t0 = std::time::Instant::now();
    while deployments.len() < 2 && t0.elapsed() < Duration::from_secs(20) {
        let mut q = post("/api/v1/endpoint/demo/score", "{\"data\": [[1, 2, 3, 4]]}");
        q.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        let a = c.call(q).await;
        assert_eq!(a.status, 200);
        deployments.insert(a.header("azureml-model-deployment").to_string());
    }
    assert_eq!(
        deployments.len(),
        2,
        "both blue and green answer: {deployments:?}"
    );
    let a = c
        .call(req("GET", "/api/v1/service/demo/swagger.json", empty()))
        .await;
    assert_eq!(a.status, 200);
    b.signal("INT");
    let status = tokio::task::spawn_blocking(move || b.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Built without the `demo` feature (as the release image is), the binary has no `demo`.
#[cfg(not(feature = "demo"))]
#[test]
fn without_the_demo_feature_there_is_no_demo_subcommand() {
    let (code, out, err) = run_to_exit(&["demo"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("unrecognized subcommand 'demo'"), "{err}");
    let (code, help, err) = run_to_exit(&["--help"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(help.contains("serve") && !help.contains("demo"), "{help}");
}

/// A static configuration has nothing to scale: the autoscaler's decisions are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_scale_settings_log_the_decisions() {
    let pod = mock("slow", 400).await;
    let dir = tempfile::tempdir().unwrap();
    let f = cfg_file(
        dir.path(),
        &format!(
            "allowInsecureConnections: true\n{}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments:\n      - name: d\n        pods: [\"{}\"]\n        requestSettings: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 5000}}\n        scaleSettings: {{minInstances: 1, maxInstances: 3}}\n",
            listen_local(),
            pod.addr()
        ),
    );
    let mut b = Bin::spawn(&["serve", "--config", &f]);
    let http = b.listening("http");
    assert!(
        b.seen.iter().any(|l| l.contains("decisions are logged")),
        "{:?}",
        b.seen
    );
    // Six at once on one one-slot pod: up to 1 busy + 5 queued, which wants more than 1 pod.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move { call(http, post("/api/v1/endpoint/e/score", "{}")).await })
        })
        .collect();
    let line = tokio::task::block_in_place(|| b.wait_line(|l| l.contains("would scale")));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["endpoint"], "e");
    assert_eq!(v["pods"], 1);
    // (The first decision sees however many had queued by then; never above maxInstances.)
    let desired = v["desired"].as_u64().unwrap();
    assert!((2..=3).contains(&desired), "{line}");
    assert!(
        v["reason"].as_str().unwrap().contains("> target 70%"),
        "{line}"
    );
    for c in calls {
        assert_eq!(c.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_to_the_hard_one_so_the_cap_decides() {
    let hard = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    const SOFT: u64 = 256;
    const CONNS: usize = 400;
    if hard.parse::<u64>().is_ok_and(|h| h < 1024) {
        eprintln!("skipped: the hard open-files limit ({hard}) is too low to show the raise");
        return;
    }
    let pod = mock("p", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let f = cfg_file(
        dir.path(),
        &format!(
            "allowInsecureConnections: true\n{}limits: {{maxConnections: 1000}}\nendpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
            listen_local(),
            pod.addr()
        ),
    );
    let mut b = Bin::spawn_with_soft_nofile(SOFT, &["serve", "--config", &f]);
    let line = b.wait_line(|l| l.contains("open-files limit"));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["soft_before"], SOFT.to_string(), "{line}");
    assert_eq!(j["soft"], j["hard"], "{line}");
    assert_eq!(j["hard"], hard.as_str(), "{line}");
    let http = b.listening("http");
    let admin = b.listening("admin");
    // More connections than the old soft limit allows file descriptors: all are held open,
    // and a request is still served.
    let mut held = Vec::new();
    for _ in 0..CONNS {
        held.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let open = async || admin_metric(admin, "infergate_connections_open{listener=\"http\"}").await;
    assert!(
        eventually(Duration::from_secs(10), async || open().await
            >= CONNS as f64)
        .await,
        "open: {}",
        open().await
    );
    assert_eq!(
        call(http, post("/api/v1/endpoint/e/score", "{}"))
            .await
            .status,
        200
    );
    // The drain closes the idle connections at once.
    b.signal("TERM");
    let (out, _) = tokio::task::spawn_blocking(move || b.finish())
        .await
        .unwrap();
    assert!(!out.contains("accept failed"), "{out}");
    assert!(out.contains("drained: all connections closed"), "{out}");
    drop(held);
}

/// Per-thread CPU time (utime + stime, clock ticks) of the binary's threads named `prefix*`.
fn thread_ticks(pid: u32, prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        out.push((comm, ticks));
    }
    out.sort();
    out
}

/// `--workers 2`: two connection workers serve the clients' connections (both threads do work),
/// and a pod limited to one request still never sees two at once: the slots are shared between
/// the workers, exactly. The pod's own high-water mark is the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_connections_and_keep_a_one_slot_pod_exact() {
    let pod = mock("one", 5).await;
    let dir = tempfile::tempdir().unwrap();
    let f = cfg_file(
        dir.path(),
        &format!(
            "allowInsecureConnections: true\n{}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments:\n      - name: d\n        pods: [\"{}\"]\n        requestSettings: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 30000}}\n",
            listen_local(),
            pod.addr()
        ),
    );
    let mut b = Bin::spawn(&["serve", "--config", &f, "--workers", "2"]);
    let http = b.listening("http");
    let workers = thread_ticks(b.child.id(), "infergate-w");
    assert_eq!(
        workers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["infergate-w0", "infergate-w1"],
        "two worker threads"
    );
    // 8 clients, each on its own keep-alive connection, 25 requests each.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::plain(http, Proto::H1).await;
                let mut ok = 0;
                for _ in 0..25 {
                    if c.call(post("/api/v1/endpoint/e/score", "{}")).await.status == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for c in clients {
        ok += c.await.unwrap();
    }
    assert_eq!(ok, 200, "every request served");
    assert_eq!(
        pod.stats().max_in_flight,
        1,
        "the pod never saw two requests"
    );
    let after = thread_ticks(b.child.id(), "infergate-w");
    assert!(
        after.iter().all(|(_, t)| *t > 0),
        "both workers served connections: {after:?}"
    );
}

//! End-to-end tests of the mock pod over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{client, empty, full, h2_client, json, repeat, send};
use http_body_util::BodyExt;
use mock_model::{MockConfig, StatsSnapshot, spawn_local};

fn named(name: &str) -> MockConfig {
    MockConfig {
        name: name.to_owned(),
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn score_answers_json() {
    let pod = spawn_local(named("pod-a")).await.unwrap();
    let c = client();
    let url = format!("http://{}/score?x=1&y=2", pod.addr());
    let (status, headers, body) = send(&c, "POST", &url, full("hello")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["pod"], "pod-a");
    assert_eq!(v["bytesReceived"], 5);
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(v["result"], serde_json::json!([1.0, 2.0]));

    // Any path ending in /score, no query.
    let url = format!("http://{}/api/v1/service/svc/score", pod.addr());
    let (status, _, body) = send(&c, "POST", &url, empty()).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["bytesReceived"], 0);
    assert_eq!(v["query"], "");

    // Wrong method.
    let url = format!("http://{}/score", pod.addr());
    let (status, headers, _) = send(&c, "GET", &url, empty()).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");

    let s = pod.stats();
    assert_eq!(s.served, 2);
    assert_eq!(s.max_in_flight, 1);
}

#[tokio::test]
async fn score_over_h2c() {
    let pod = spawn_local(named("pod-h2")).await.unwrap();
    let c = h2_client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/score", pod.addr()))
        .body(full("abc"))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json(&body)["bytesReceived"], 3);
}

#[tokio::test]
async fn latency_is_honoured() {
    let pod = spawn_local(MockConfig {
        latency: Duration::from_millis(300),
        ..named("slow")
    })
    .await
    .unwrap();
    let c = client();
    let url = format!("http://{}/score", pod.addr());
    let t = Instant::now();
    let (status, _, _) = send(&c, "POST", &url, empty()).await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // Per-request override (both directions).
    let url = format!("http://{}/score?latencyMs=0", pod.addr());
    let (status, _, _) = send(&c, "POST", &url, empty()).await;
    assert_eq!(status, 200);
    let url = format!("http://{}/echo?latencyMs=200", pod.addr());
    let t = Instant::now();
    let (status, _, _) = send(&c, "GET", &url, empty()).await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn stream_chunks_arrive_separately() {
    let pod = spawn_local(MockConfig {
        latency: Duration::from_millis(600),
        stream_chunks: 4,
        ..named("streamer")
    })
    .await
    .unwrap();
    let c = client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/score", pod.addr()))
        .body(empty())
        .unwrap();
    let t = Instant::now();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert!(resp.headers().get("content-length").is_none());
    // Counted in flight while the body streams.
    assert_eq!(pod.stats().in_flight, 1);

    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push((t.elapsed(), data));
        }
    }
    let total = t.elapsed();
    assert!(total >= Duration::from_millis(600), "{total:?}");
    let (first_at, first) = &frames[0];
    assert!(
        *first_at < Duration::from_millis(300),
        "first chunk at {first_at:?}"
    );
    assert_eq!(&first[..], b"{\"chunk\":0,\"pod\":\"streamer\"}\n");
    assert!(frames.len() >= 2, "chunks were not streamed separately");
    let text: Vec<u8> = frames.iter().flat_map(|(_, d)| d.to_vec()).collect();
    let lines: Vec<_> = std::str::from_utf8(&text)
        .unwrap()
        .lines()
        .map(|l| json(l.as_bytes()))
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["chunk"], i);
        assert_eq!(line["pod"], "streamer");
    }
    // The last chunk is sent at 3/4 of the latency.
    assert!(frames.last().unwrap().0 >= Duration::from_millis(450));
}

#[tokio::test]
async fn stream_chunks_as_sse() {
    let pod = spawn_local(named("sse")).await.unwrap();
    let c = client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/score?streamChunks=3&latencyMs=90",
            pod.addr()
        ))
        .header("accept", "text/event-stream")
        .body(empty())
        .unwrap();
    let t = Instant::now();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(t.elapsed() >= Duration::from_millis(90));
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "data: {\"chunk\":0,\"pod\":\"sse\"}\n\n\
         data: {\"chunk\":1,\"pod\":\"sse\"}\n\n\
         data: {\"chunk\":2,\"pod\":\"sse\"}\n\n"
    );
}

async fn wait_idle(pod: &mock_model::MockHandle) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while pod.stats().in_flight != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pod.stats().in_flight, 0);
}

#[tokio::test]
async fn max_in_flight_high_water_mark() {
    let pod = spawn_local(named("busy")).await.unwrap();
    let c = client();
    let url = format!("http://{}/score?latencyMs=300", pod.addr());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move { send(&c, "POST", &url, full("x")).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    wait_idle(&pod).await;
    assert_eq!(
        pod.stats(),
        StatsSnapshot {
            in_flight: 0,
            max_in_flight: 6,
            served: 6,
            connections: pod.stats().connections,
        }
    );

    // /stats reports the same counters.
    let (status, _, body) = send(&c, "GET", &format!("http://{}/stats", pod.addr()), empty()).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["name"], "busy");
    assert_eq!(v["inFlight"], 0);
    assert_eq!(v["maxInFlight"], 6);
    assert_eq!(v["served"], 6);

    pod.reset_stats();
    assert_eq!(pod.stats(), StatsSnapshot::default());
}

#[tokio::test]
async fn fail_rate_one_always_fails() {
    let pod = spawn_local(MockConfig {
        fail_rate: 1.0,
        ..named("flaky")
    })
    .await
    .unwrap();
    let c = client();
    for _ in 0..3 {
        let (status, headers, body) = send(
            &c,
            "POST",
            &format!("http://{}/score", pod.addr()),
            full("x"),
        )
        .await;
        assert_eq!(status, 500);
        assert_eq!(headers["content-type"], "application/json");
        let v = json(&body);
        assert_eq!(v["error"], "injected failure");
        assert_eq!(v["pod"], "flaky");
    }
    wait_idle(&pod).await;
    // Other routes are unaffected.
    let (status, _, body) = send(&c, "GET", &format!("http://{}/", pod.addr()), empty()).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"Healthy");
}

#[tokio::test]
async fn large_upload_and_download_stream() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let pod = spawn_local(named("big")).await.unwrap();
    let c = client();

    let url = format!("http://{}/score", pod.addr());
    let (status, _, body) = send(&c, "POST", &url, repeat(SIZE)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["bytesReceived"], SIZE);

    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/score?respondBytes={SIZE}", pod.addr()))
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|&b| b == b'x'));
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);

    // An odd size ends with a partial chunk.
    let url = format!("http://{}/score?respondBytes=70000", pod.addr());
    let (_, _, body) = send(&c, "POST", &url, empty()).await;
    assert_eq!(body.len(), 70000);
}

#[tokio::test]
async fn echo_reports_request() {
    let pod = spawn_local(named("echoer")).await.unwrap();
    let c = client();
    let req = http::Request::builder()
        .method("PUT")
        .uri(format!("http://{}/echo/some/path?a=1&b=two", pod.addr()))
        .header("X-Forwarded-For", "10.0.0.1")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(full("0123456789"))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v = json(&resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(v["pod"], "echoer");
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/echo/some/path");
    assert_eq!(v["query"], "a=1&b=two");
    assert_eq!(v["bytesReceived"], 10);
    assert_eq!(v["headers"]["x-forwarded-for"], "10.0.0.1");
    assert_eq!(v["headers"]["x-multi"], "one, two");
    assert_eq!(v["headers"]["host"], pod.addr().to_string());
    // /echo does not touch the /score counters (the connection is counted).
    let one_connection = StatsSnapshot {
        connections: 1,
        ..StatsSnapshot::default()
    };
    assert_eq!(pod.stats(), one_connection);
}

#[tokio::test]
async fn misc_routes() {
    let pod = spawn_local(named("misc")).await.unwrap();
    let c = client();
    let base = format!("http://{}", pod.addr());

    let (status, headers, body) = send(&c, "GET", &format!("{base}/"), empty()).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(&body[..], b"Healthy");

    let (status, _, body) = send(&c, "GET", &format!("{base}/swagger.json"), empty()).await;
    assert_eq!(status, 200);
    let doc = json(&body);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    assert!(doc["info"]["title"].as_str().unwrap().contains("misc"));
    assert!(doc["paths"]["/score"]["post"]["responses"]["200"].is_object());

    let (status, _, body) = send(&c, "GET", &format!("{base}/status/503"), empty()).await;
    assert_eq!(status, 503);
    assert_eq!(json(&body)["status"], 503);
    let (status, _, body) = send(&c, "GET", &format!("{base}/status/204"), empty()).await;
    assert_eq!(status, 204);
    assert!(body.is_empty());
    let (status, _, _) = send(&c, "GET", &format!("{base}/status/abc"), empty()).await;
    assert_eq!(status, 400);

    let (status, headers, body) = send(&c, "GET", &format!("{base}/nope"), empty()).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body)["error"], "not found");
}

#[tokio::test]
async fn reset_drops_the_connection() {
    let pod = spawn_local(named("reset")).await.unwrap();
    for c in [client(), h2_client()] {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/reset", pod.addr()))
            .body(full("x"))
            .unwrap();
        let err = c.request(req).await.expect_err("/reset must not answer");
        drop(err);
        // The pod keeps serving other connections.
        let (status, _, _) = send(&c, "GET", &format!("http://{}/", pod.addr()), empty()).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn shutdown_stops_listener_and_connections() {
    let pod = spawn_local(named("bye")).await.unwrap();
    let addr = pod.addr();
    let c = client();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/score?latencyMs=30000"))
                .body(empty())
                .unwrap();
            c.request(req).await.map(|r| r.status())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while pod.stats().in_flight == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pod.stats().in_flight, 1);
    let t = Instant::now();
    pod.shutdown().await;
    let res = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .unwrap()
        .unwrap();
    assert!(res.is_err(), "aborted request must fail, got {res:?}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // New connections are refused once the accept loop is gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(_) => panic!("still accepting after shutdown"),
        }
    }
}

#[tokio::test]
async fn open_inference_protocol_v2_paths() {
    let pod = spawn_local(named("oip")).await.unwrap();
    let c = client();
    let base = format!("http://{}", pod.addr());
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/iris/ready",
        "/v2/models/iris/versions/2/ready",
    ] {
        let (status, _, body) = send(&c, "GET", &format!("{base}{path}"), empty()).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.is_empty(), "{path}: health answers have no body");
    }
    let (status, _, body) = send(&c, "GET", &format!("{base}/v2"), empty()).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["name"], "mock-model");
    let (status, _, body) = send(
        &c,
        "GET",
        &format!("{base}/v2/models/iris/versions/2"),
        empty(),
    )
    .await;
    assert_eq!(status, 200);
    let meta = json(&body);
    assert_eq!(meta["name"], "iris");
    assert_eq!(meta["versions"], serde_json::json!(["2"]));
    assert_eq!(meta["parameters"]["pod"], "oip");

    let infer = r#"{"id": "req-1", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]}]}"#;
    let (status, headers, body) = send(
        &c,
        "POST",
        &format!("{base}/v2/models/iris/versions/2/infer"),
        full(infer),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let a = json(&body);
    assert_eq!(a["model_name"], "iris");
    assert_eq!(a["model_version"], "2");
    assert_eq!(a["id"], "req-1");
    assert_eq!(
        a["outputs"],
        serde_json::json!([{"name": "x", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]}])
    );
    assert_eq!(pod.stats().served, 1);

    // The protocol's errors: `{"error": ...}`.
    let (status, _, body) = send(
        &c,
        "POST",
        &format!("{base}/v2/models/iris/infer"),
        full("nope"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("not JSON"));
    let (status, _, body) = send(
        &c,
        "POST",
        &format!("{base}/v2/models/iris/infer"),
        full("{}"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("inputs"));
    let (status, _, body) = send(&c, "GET", &format!("{base}/v2/nothing"), empty()).await;
    assert_eq!(status, 404);
    assert!(json(&body)["error"].is_string());
    let (status, headers, _) =
        send(&c, "GET", &format!("{base}/v2/models/iris/infer"), empty()).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
}

#[tokio::test]
async fn stall_after_chunks_keeps_the_stream_open_and_counted() {
    for (config, query) in [
        (named("stall-q"), "streamChunks=10&stallAfterChunks=2"),
        (
            MockConfig {
                stall_after_chunks: Some(2),
                ..named("stall-cfg")
            },
            "streamChunks=10",
        ),
    ] {
        let pod = spawn_local(config).await.unwrap();
        let c = client();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/score?{query}", pod.addr()))
            .body(empty())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while got.len() < 2 {
            let f = body.frame().await.unwrap().unwrap();
            if let Ok(d) = f.into_data() {
                got.extend(std::str::from_utf8(&d).unwrap().lines().map(str::to_owned));
            }
        }
        assert_eq!(got.len(), 2, "{query}: {got:?}");
        // Nothing more comes, and the stream does not end.
        let next = tokio::time::timeout(Duration::from_millis(500), body.frame()).await;
        assert!(next.is_err(), "{query}: stalled, got {next:?}");
        assert_eq!(
            pod.stats().in_flight,
            1,
            "{query}: still counted while stalled"
        );
        drop(body);
        wait_idle(&pod).await;
    }
}

#[tokio::test]
async fn stall_read_after_bytes_stops_reading_the_upload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod = spawn_local(named("noread")).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(pod.addr()).await.unwrap();
    s.write_all(b"POST /score?stallReadAfterBytes=1 HTTP/1.1\r\nhost: pod\r\ncontent-length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(read.is_err(), "no answer: {read:?}");
    assert_eq!(pod.stats().in_flight, 1, "held");
    assert_eq!(pod.stats().served, 0);
    // The caller gives up (its connection closes): the request is gone.
    drop(s);
    wait_idle(&pod).await;
}

#[tokio::test]
async fn gated_stream_sends_each_chunk_when_released() {
    let pod = spawn_local(named("gated")).await.unwrap();
    let c = client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/score?streamChunks=3&gated=1",
            pod.addr()
        ))
        .header("accept", "text/event-stream")
        .body(empty())
        .unwrap();
    let mut body = c.request(req).await.unwrap().into_body();
    let mut next = async || {
        let f = tokio::time::timeout(Duration::from_millis(300), body.frame()).await;
        f.ok().flatten().map(|f| f.unwrap().into_data().unwrap())
    };
    assert_eq!(
        &next().await.unwrap()[..],
        b"data: {\"chunk\":0,\"pod\":\"gated\"}\n\n"
    );
    assert!(next().await.is_none(), "chunk 1 waits for the gate");
    let release = format!("http://{}/gate/release?n=1", pod.addr());
    let (status, _, _) = send(&c, "POST", &release, empty()).await;
    assert_eq!(status, 200);
    assert_eq!(
        &next().await.unwrap()[..],
        b"data: {\"chunk\":1,\"pod\":\"gated\"}\n\n"
    );
    assert!(next().await.is_none(), "chunk 2 waits for the gate");
    send(&c, "POST", &release, empty()).await;
    assert_eq!(
        &next().await.unwrap()[..],
        b"data: {\"chunk\":2,\"pod\":\"gated\"}\n\n"
    );
}

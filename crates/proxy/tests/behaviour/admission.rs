//! Admission and balancing through real sockets: per-pod slots, retries and ejection when a pod
//! dies, mirroring, the autoscale gauges, and no slot leaks under mass cancellation.

use std::time::{Duration, Instant};

use mock_model::MockConfig;

use crate::support::*;

fn endpoint(pods: &[&mock_model::MockHandle], settings: &str) -> String {
    let pods: Vec<String> = pods.iter().map(|p| format!("\"{}\"", p.addr())).collect();
    insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [{}], requestSettings: {{{settings}}}}}]",
        pods.join(", ")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_never_put_two_requests_on_a_pod() {
    let (a, b) = (mock("a", 50).await, mock("b", 50).await);
    let r = Router::start(&endpoint(
        &[&a, &b],
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 10000",
    ))
    .await;
    let addr = r.http();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::plain(addr, Proto::H1).await;
                let mut ok = 0;
                for _ in 0..4 {
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
    assert_eq!(ok, 80, "every request served (queued, not refused)");
    assert_eq!(a.stats().max_in_flight, 1, "pod a never had two at once");
    assert_eq!(b.stats().max_in_flight, 1, "pod b never had two at once");
    assert_eq!(a.stats().served + b.stats().served, 80);
    assert!(
        a.stats().served >= 20 && b.stats().served >= 20,
        "both pods worked: {:?} {:?}",
        a.stats(),
        b.stats()
    );
    let t = metrics_text(&r).await;
    assert_eq!(
        metric(
            &t,
            "infergate_queue_wait_seconds_count{endpoint=\"e\",deployment=\"d\"}"
        ),
        80.0,
        "one queue wait per admitted request:\n{t}"
    );
}

/// Four clients at once, `n` requests each; returns the statuses.
async fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::plain(addr, Proto::H1).await;
                let mut st = vec![];
                for _ in 0..n {
                    st.push(
                        c.call(post("/api/v1/endpoint/e/score", "{}"))
                            .await
                            .status
                            .as_u16(),
                    );
                }
                st
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_causes_no_failure_for_requests_not_yet_sent_to_it() {
    let a = mock("a", 10).await;
    let b = mock("doomed", 10).await;
    let r = Router::start(&endpoint(
        &[&a, &b],
        "maxConcurrentRequestsPerInstance: 2, maxQueueWaitMs: 5000, ejectAfterConsecutiveFailures: 2, ejectionBaseMs: 60000",
    ))
    .await;
    assert!(burst(r.http(), 10).await.iter().all(|&s| s == 200));
    assert!(b.stats().served > 0, "both pods in use before the kill");
    b.shutdown().await;
    let after = burst(r.http(), 25).await;
    assert_eq!(after.len(), 100);
    assert!(
        after.iter().all(|&s| s == 200),
        "client-visible failures after the kill: {after:?}"
    );
    let t = metrics_text(&r).await;
    assert!(
        metric(
            &t,
            "infergate_retries_total{endpoint=\"e\",deployment=\"d\"}"
        ) >= 1.0,
        "{t}"
    );
    assert!(
        metric(
            &t,
            "infergate_pod_ejections_total{endpoint=\"e\",deployment=\"d\"}"
        ) >= 1.0,
        "{t}"
    );
    // once ejected, the dead pod is not tried at all: retries stop growing
    let before = metric(
        &t,
        "infergate_retries_total{endpoint=\"e\",deployment=\"d\"}",
    );
    assert!(burst(r.http(), 10).await.iter().all(|&s| s == 200));
    let later = metric(
        &metrics_text(&r).await,
        "infergate_retries_total{endpoint=\"e\",deployment=\"d\"}",
    );
    assert_eq!(before, later, "the ejected pod gets no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_requests_and_never_changes_the_clients_result() {
    let blue = mock("blue", 0).await;
    let green = mock_model::spawn_local(MockConfig {
        name: "green".into(),
        latency: Duration::from_millis(2500),
        fail_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    traffic: {{blue: 100, green: 0}}\n    mirror: {{deployment: green, percent: 100, maxBodyBytes: 1024}}\n    deployments:\n      - {{name: blue, pods: [\"{}\"]}}\n      - {{name: green, pods: [\"{}\"], requestSettings: {{maxConcurrentRequestsPerInstance: 64, requestTimeoutMs: 10000}}}}",
        blue.addr(),
        green.addr()
    )))
    .await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let t0 = Instant::now();
    for _ in 0..10 {
        let a = c
            .call(post("/api/v1/endpoint/e/score", "{\"data\": [1, 2]}"))
            .await;
        assert_eq!(a.status, 200, "the mirror's 500s never reach the client");
        assert_eq!(a.json()["pod"], "blue");
        assert_eq!(a.json()["bytesReceived"], 16);
    }
    // ten answers, each mirrored to a pod that takes 2.5 s: the client never waited for it
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "mirror latency leaked into the client's: {:?}",
        t0.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(10), async || green.stats().served >= 10).await,
        "every request was copied: {:?}",
        green.stats()
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(&metrics_text(&r).await, "infergate_mirror_requests_total{endpoint=\"e\",deployment=\"green\",result=\"failed\"}") == 10.0
        })
        .await
    );
    // bodies over maxBodyBytes are not copied
    let served = green.stats().served;
    let a = c
        .call(post("/api/v1/endpoint/e/score", &"x".repeat(4096)))
        .await;
    assert_eq!(a.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        green.stats().served,
        served,
        "oversized body was not mirrored"
    );
    let t = metrics_text(&r).await;
    for (result, n) in [("failed", 10.0), ("skipped", 1.0)] {
        assert_eq!(
            metric(
                &t,
                &format!(
                    "infergate_mirror_requests_total{{endpoint=\"e\",deployment=\"green\",result=\"{result}\"}}"
                )
            ),
            n,
            "{result}:\n{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_gauges_show_busy_queued_and_utilization() {
    let pod = mock("slow", 1500).await;
    let r = Router::start(&endpoint(
        &[&pod],
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 5000",
    ))
    .await;
    let addr = r.http();
    let held: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                call(addr, post("/api/v1/endpoint/e/score", "{}"))
                    .await
                    .status
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), async || {
            let t = metrics_text(&r).await;
            metric(
                &t,
                "infergate_deployment_busy_slots{endpoint=\"e\",deployment=\"d\"}",
            ) == 1.0
                && metric(
                    &t,
                    "infergate_deployment_queued_requests{endpoint=\"e\",deployment=\"d\"}",
                ) == 1.0
        })
        .await
    );
    let t = metrics_text(&r).await;
    assert_eq!(
        metric(
            &t,
            "infergate_deployment_pods{endpoint=\"e\",deployment=\"d\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &t,
            "infergate_deployment_slots{endpoint=\"e\",deployment=\"d\"}"
        ),
        1.0,
        "1 pod x 1 slot"
    );
    assert_eq!(
        metric(
            &t,
            "infergate_deployment_utilization{endpoint=\"e\",deployment=\"d\"}"
        ),
        2.0,
        "(1 busy + 1 queued) / (1 pod x 1 slot)"
    );
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    let t = metrics_text(&r).await;
    assert_eq!(
        metric(
            &t,
            "infergate_deployment_utilization{endpoint=\"e\",deployment=\"d\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_cancelled_requests_leak_no_slot() {
    let (a, b) = (mock("a", 5).await, mock("b", 5).await);
    let r = Router::start(&endpoint(
        &[&a, &b],
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 60000, maxQueueLength: 100000",
    ))
    .await;
    let addr = r.http();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000u64 {
        // clients give up at staggered moments: while queued, while the pod works, mid-body
        let give_up = Duration::from_micros((i * 7919) % 12_000);
        tasks.spawn(async move {
            let _ = tokio::time::timeout(give_up, async {
                let mut c = Client::plain(addr, Proto::H1).await;
                c.call(post("/api/v1/endpoint/e/score?streamChunks=3", "{}"))
                    .await
            })
            .await;
        });
        while tasks.len() >= 64 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(10), async || {
            let t = metrics_text(&r).await;
            metric(
                &t,
                "infergate_deployment_busy_slots{endpoint=\"e\",deployment=\"d\"}",
            ) == 0.0
                && metric(
                    &t,
                    "infergate_deployment_queued_requests{endpoint=\"e\",deployment=\"d\"}",
                ) == 0.0
        })
        .await,
        "every slot and queue place came back: {}",
        metrics_text(&r).await
    );
    // and the pool works normally afterwards
    let mut c = Client::plain(addr, Proto::H1).await;
    for _ in 0..4 {
        assert_eq!(
            c.call(post("/api/v1/endpoint/e/score", "{}")).await.status,
            200
        );
    }
    // A cancelled request that reached a pod kept its slot until the pod was done: the pods
    // never had two at once either.
    assert_eq!(a.stats().max_in_flight, 1, "{:?}", a.stats());
    assert_eq!(b.stats().max_in_flight, 1, "{:?}", b.stats());
}

/// Three pod-less deployments: `cold` (scaled to zero, waits 5 s for a pod; with `pod` when
/// given), `brief` (scaled to zero, waits 300 ms) and `plain` (no `scaleSettings`).
fn scaled_to_zero(pod: Option<std::net::SocketAddr>) -> String {
    let pods = pod.map(|p| format!("\"{p}\"")).unwrap_or_default();
    insecure(&format!(
        "  - name: cold
    deployments: [{{name: d, pods: [{pods}], scaleSettings: {{minInstances: 0, coldStartWaitMs: 5000}}, requestSettings: {{maxQueueWaitMs: 100}}}}]
  - name: brief
    deployments: [{{name: d, pods: [], scaleSettings: {{minInstances: 0, coldStartWaitMs: 300}}}}]
  - name: plain
    deployments: [{{name: d, pods: []}}]"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_scaled_to_zero_holds_requests_until_a_pod_comes() {
    let r = Router::start(&scaled_to_zero(None)).await;
    let http = r.http();
    let t0 = Instant::now();
    let waiting =
        tokio::spawn(async move { call(http, post("/api/v1/endpoint/cold/score", "{}")).await });
    // Queued and visible to the autoscaler (its signal to scale up from zero).
    assert!(
        eventually(Duration::from_secs(2), async || {
            r.router
                .autoscale_targets()
                .iter()
                .any(|t| t.endpoint == "cold" && t.load.queued == 1 && t.load.ready_pods == 0)
        })
        .await,
        "{:?}",
        r.router.autoscale_targets()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "no 503 while the deployment scales up"
    );

    // The autoscaler's pod is ready: the route table is republished with it.
    let pod = mock("first", 0).await;
    let cfg =
        infergate_config::Config::from_yaml(&scaled_to_zero(Some(pod.addr())), "<test>").unwrap();
    r.router
        .publish_specs(&infergate_proxy::specs_from_config(&cfg));
    let a = waiting.await.unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "served when the pod came, not at the end of the wait: {:?}",
        t0.elapsed()
    );
    assert_eq!(pod.stats().served, 1);

    // No pod within coldStartWaitMs: 503 ColdStartTimeout with Retry-After.
    let t0 = Instant::now();
    let a = call(http, post("/api/v1/endpoint/brief/score", "{}")).await;
    a.assert_error(503, "ColdStartTimeout");
    assert_eq!(a.header("retry-after"), "1");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Without scaleSettings: 503 NoPodAvailable at once, as before.
    let t0 = Instant::now();
    let a = call(http, post("/api/v1/endpoint/plain/score", "{}")).await;
    a.assert_error(503, "NoPodAvailable");
    assert_eq!(a.header("retry-after"), "1");
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

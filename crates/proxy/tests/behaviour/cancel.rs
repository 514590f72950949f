//! Client cancellation: a client that goes away after its request reached a pod does not free
//! the pod's slot while the pod still works on it (until the pod answers, or `requestTimeoutMs`);
//! one that goes away before (queued) frees its place at once. Every cancellation is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use mock_model::{MockConfig, MockHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const SCORE: &str = "/api/v1/endpoint/e/score";

fn one_deployment(pod: std::net::SocketAddr, settings: &str) -> String {
    insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{pod}\"], requestSettings: {{{settings}}}}}]"
    ))
}

/// A mock pod whose work runs to its end when the router's connection closes, as a model's does.
async fn stubborn_pod(latency_ms: u64) -> MockHandle {
    mock_model::spawn_local(MockConfig {
        name: "stubborn".into(),
        latency: Duration::from_millis(latency_ms),
        work_survives_disconnect: true,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// Opens a connection, sends a `/score` request head and body, and returns the connection.
async fn send_raw(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: router.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Resets the connection (RST, not FIN): the client is gone for good.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

fn sample(name: &str) -> String {
    format!("{name}{{endpoint=\"e\",deployment=\"d\"}}")
}

async fn cancelled(r: &Router) -> f64 {
    metric(
        &metrics_text(r).await,
        &sample("infergate_requests_cancelled_total"),
    )
}

/// (busy slots, queued requests) of the deployment, as the router reports them now.
async fn busy_queued(r: &Router) -> (f64, f64) {
    let t = metrics_text(r).await;
    (
        metric(&t, &sample("infergate_deployment_busy_slots")),
        metric(&t, &sample("infergate_deployment_queued_requests")),
    )
}

async fn settled(r: &Router) -> bool {
    eventually(Duration::from_secs(5), async || {
        busy_queued(r).await == (0.0, 0.0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_then_reset_loop_never_puts_two_requests_on_a_pod() {
    const N: usize = 12;
    let pod = stubborn_pod(200).await;
    let r = Router::start(&one_deployment(
        pod.addr(),
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 20000, maxQueueLength: 1000",
    ))
    .await;
    let addr = r.http();
    // Each client waits a different while (0 to 330 ms) after sending, then resets: some reset
    // while queued, others while the pod works on their request.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..N {
        clients.spawn(async move {
            let s = send_raw(addr, SCORE).await;
            tokio::time::sleep(Duration::from_millis((i as u64 * 30) % 360)).await;
            reset(s);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while clients.join_next().await.is_some() {}
    assert!(settled(&r).await, "{}", metrics_text(&r).await);
    // The pod's own view: never two at once, although every client left early.
    let stats = pod.stats();
    assert_eq!(stats.max_in_flight, 1, "{stats:?}");
    assert!(
        stats.served >= 1,
        "some requests reached the pod: {stats:?}"
    );
    assert_eq!(stats.in_flight, 0);
    let t = metrics_text(&r).await;
    assert_eq!(
        metric(&t, &sample("infergate_requests_cancelled_total")),
        N as f64,
        "every cancellation counted: {t}"
    );
    assert_eq!(
        metric(
            &t,
            "infergate_requests_total{endpoint=\"e\",deployment=\"d\",status=\"499\"}"
        ),
        N as f64
    );
    // The pool works normally afterwards, on the connection the cancelled requests left behind.
    let a = call(addr, post(SCORE, "{}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(pod.stats().max_in_flight, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reset_at_the_pod_holds_its_slot_until_the_pod_answers() {
    const N: usize = 5;
    let pod = stubborn_pod(200).await;
    let r = Router::start(&one_deployment(
        pod.addr(),
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 20000",
    ))
    .await;
    let addr = r.http();
    // One after another, each reset once the pod has it: all N reach the pod.
    for i in 0..N {
        let before = pod.stats().served;
        let t0 = Instant::now();
        let s = send_raw(addr, SCORE).await;
        assert!(
            eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await,
            "request {i} reached the pod"
        );
        reset(s);
        // The slot is still taken: a new request waits for the pod's answer to the reset one.
        let a = call(addr, post(SCORE, "{}")).await;
        assert_eq!(a.status, 200);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(380),
            "request {i}: the next one waited for the pod ({took:?})"
        );
        assert_eq!(pod.stats().served, before + 2);
    }
    assert_eq!(pod.stats().max_in_flight, 1, "{:?}", pod.stats());
    assert!(settled(&r).await);
    assert_eq!(cancelled(&r).await, N as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_while_queued_frees_the_queue_place_at_once() {
    let pod = mock("q", 600).await;
    let r = Router::start(&one_deployment(
        pod.addr(),
        "maxConcurrentRequestsPerInstance: 1, maxQueueLength: 1, maxQueueWaitMs: 5000",
    ))
    .await;
    let addr = r.http();
    // A takes the slot for 600 ms.
    let a = tokio::spawn(async move { call(addr, post(SCORE, "{}")).await.status });
    assert!(eventually(Duration::from_secs(2), async || pod.stats().in_flight == 1).await);
    // B takes the only queue place, then leaves.
    let b = send_raw(addr, SCORE).await;
    assert!(
        eventually(Duration::from_secs(2), async || busy_queued(&r).await
            == (1.0, 1.0))
        .await
    );
    let t0 = Instant::now();
    reset(b);
    // B's request ends at once (counted), long before A's ends.
    assert!(
        eventually(Duration::from_secs(2), async || cancelled(&r).await == 1.0).await,
        "B was cancelled"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "at once, not when A ends: {:?}",
        t0.elapsed()
    );
    // C is admitted to the queue (with B's place still taken it would be 503 QueueFull), and
    // served right after A.
    let c = call(addr, post(SCORE, "{}")).await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    assert!(t0.elapsed() < Duration::from_millis(1500));
    assert_eq!(a.await.unwrap(), 200);
    assert_eq!(pod.stats().served, 2, "B never reached the pod");
    assert_eq!(pod.stats().max_in_flight, 1);
}

/// A pod that reads requests and never answers; counts the connections closed by the router.
async fn silent_pod() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let c = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_answers_holds_the_slot_until_the_request_timeout() {
    let (pod, closed) = silent_pod().await;
    let r = Router::start(&one_deployment(
        pod,
        "maxConcurrentRequestsPerInstance: 1, requestTimeoutMs: 800, maxQueueWaitMs: 5000",
    ))
    .await;
    let t0 = Instant::now();
    let s = send_raw(r.http(), SCORE).await;
    assert!(
        eventually(Duration::from_secs(2), async || busy_queued(&r).await.0
            == 1.0)
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    reset(s);
    // Held past the cancellation, while the pod may still be working...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(busy_queued(&r).await.0, 1.0, "held after the client left");
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the pod connection stays open"
    );
    // ...and freed once the request timeout has passed, its connection closed first.
    assert!(
        eventually(Duration::from_secs(3), async || busy_queued(&r).await.0
            == 0.0)
        .await
    );
    let held = t0.elapsed();
    assert!(
        held >= Duration::from_millis(750) && held < Duration::from_millis(2000),
        "freed after {held:?}"
    );
    assert_eq!(closed.load(Ordering::SeqCst), 1);
    assert_eq!(cancelled(&r).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cancelled_mid_body_keeps_the_slot_until_the_body_ends() {
    let pod = mock("s", 0).await;
    let r = Router::start(&one_deployment(
        pod.addr(),
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 5000",
    ))
    .await;
    let addr = r.http();
    let t0 = Instant::now();
    {
        let mut c = Client::plain(addr, Proto::H1).await;
        let resp = c
            .send(post(&format!("{SCORE}?streamChunks=4&latencyMs=800"), "{}"))
            .await
            .unwrap();
        let mut body = resp.into_body();
        let _ = body.frame().await; // the first chunk, then the client goes away
    }
    // The stream goes on to its end at the pod: the next request waits for it.
    let a = call(addr, post(SCORE, "{}")).await;
    assert_eq!(a.status, 200);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(750),
        "admitted after {took:?}"
    );
    assert_eq!(pod.stats().max_in_flight, 1);
    assert_eq!(pod.stats().served, 2);
    assert!(settled(&r).await);
    assert_eq!(cancelled(&r).await, 1.0);
    let t = metrics_text(&r).await;
    assert_eq!(
        metric(
            &t,
            "infergate_requests_total{endpoint=\"e\",deployment=\"d\",status=\"200\"}"
        ),
        2.0,
        "the cancelled stream keeps the status its head had: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cancelled_mid_body_is_cut_off_at_the_request_timeout() {
    let pod = mock("s", 0).await;
    let r = Router::start(&one_deployment(
        pod.addr(),
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 5000, requestTimeoutMs: 600",
    ))
    .await;
    let addr = r.http();
    let t0 = Instant::now();
    {
        let mut c = Client::plain(addr, Proto::H1).await;
        let resp = c
            .send(post(
                &format!("{SCORE}?streamChunks=10&latencyMs=5000"),
                "{}",
            ))
            .await
            .unwrap();
        let mut body = resp.into_body();
        let _ = body.frame().await;
    }
    let a = call(addr, post(SCORE, "{}")).await;
    assert_eq!(a.status, 200);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2500),
        "admitted at the cancelled stream's deadline, not its end: {took:?}"
    );
    // (No `max_in_flight` check: at the deadline the router closes the connection and frees the
    // slot; the pod notices the close a moment later.)
    assert_eq!(cancelled(&r).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_at_the_pod_holds_its_slot_until_the_pod_answers() {
    let pod = stubborn_pod(300).await;
    let r = Router::start(&one_deployment(
        pod.addr(),
        "maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 20000",
    ))
    .await;
    let addr = r.http();
    let mut c = Client::plain(addr, Proto::H2).await;
    let t0 = Instant::now();
    // The request is abandoned (its stream reset) once the pod has it; the connection stays.
    let gone = tokio::time::timeout(Duration::from_millis(100), c.send(post(SCORE, "{}"))).await;
    assert!(gone.is_err(), "no answer within 100 ms from a 300 ms pod");
    assert_eq!(pod.stats().in_flight, 1);
    // The next request, on the same connection, waits for the pod's answer to the reset one.
    let a = c.call(post(SCORE, "{}")).await;
    assert_eq!(a.status, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(580),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(pod.stats().max_in_flight, 1);
    assert_eq!(pod.stats().served, 2);
    assert!(settled(&r).await);
    assert_eq!(cancelled(&r).await, 1.0);
}

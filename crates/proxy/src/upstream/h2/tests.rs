//! The HTTP/2 pool against an in-process HTTP/2 pod: streams per connection, new connections
//! only when the pod's limit is reached, GOAWAY, resets, the idle sweep.

use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http2 as server;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::upstream::{Checkout, ConnPool};

/// What the pod saw.
#[derive(Default)]
struct Seen {
    conns: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Requests whose handler was dropped before it answered (the stream was reset).
    reset: AtomicUsize,
}

struct Pod {
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// Requests are held until this is true.
    release: watch::Sender<bool>,
    /// Sends GOAWAY on every open connection.
    goaway: watch::Sender<u32>,
}

/// An h2c pod allowing `max_streams` streams per connection, holding every request until
/// released.
async fn pod(max_streams: u32) -> Pod {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let (release, release_rx) = watch::channel(false);
    let (goaway, goaway_rx) = watch::channel(0u32);
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            s.conns.fetch_add(1, Ordering::SeqCst);
            let (s, release, mut goaway) = (s.clone(), release_rx.clone(), goaway_rx.clone());
            // Only GOAWAYs asked for from now on concern this connection.
            goaway.borrow_and_update();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (s, mut release) = (s.clone(), release.clone());
                    async move {
                        struct Held(Arc<Seen>, bool);
                        impl Drop for Held {
                            fn drop(&mut self) {
                                self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
                                if !self.1 {
                                    self.0.reset.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                        let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        s.max_in_flight.fetch_max(n, Ordering::SeqCst);
                        let mut held = Held(s, false);
                        let _ = release.wait_for(|r| *r).await;
                        held.1 = true;
                        drop(held);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let mut b = server::Builder::new(TokioExecutor::new());
                b.max_concurrent_streams(max_streams);
                let conn = b.serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                let mut shutting = false;
                loop {
                    tokio::select! {
                        _ = conn.as_mut() => break,
                        changed = goaway.changed(), if !shutting => {
                            if changed.is_err() { break; }
                            shutting = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            });
        }
    });
    Pod {
        addr,
        seen,
        release,
        goaway,
    }
}

fn pool(p: &Pod) -> ConnPool {
    let t = PodTransport {
        protocol: UpstreamProtocol::H2c,
        tls: None,
    };
    ConnPool::new(&Upstream::new(), &[p.addr.into()], &t)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

fn req() -> Request<RequestBody> {
    let mut r = Request::new(RequestBody::buffered(Vec::new()));
    *r.uri_mut() = Uri::from_static("/score");
    r
}

/// Starts `n` exchanges at once on `pool` and returns them (held by the pod).
async fn start(pool: &ConnPool, addr: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<Bytes>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let c = pool.checkout(addr, soon()).await.unwrap();
        assert!(matches!(c, Checkout::H2(_)));
        let ex = c.send(req());
        out.push(tokio::spawn(async move {
            let resp = ex.await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    out
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not reached: {what}");
}

#[tokio::test]
async fn streams_share_a_connection_up_to_the_pods_limit_then_another_opens() {
    let p = pod(2).await;
    let pool = pool(&p);
    let held = start(&pool, p.addr, 5).await;
    eventually("five streams at the pod", || {
        p.seen.in_flight.load(Ordering::SeqCst) == 5
    })
    .await;
    // Two streams per connection, as the pod's SETTINGS say: three connections.
    assert_eq!(p.seen.conns.load(Ordering::SeqCst), 3);
    p.release.send(true).unwrap();
    for h in held {
        assert_eq!(&h.await.unwrap()[..], b"ok");
    }
    // Done streams free their places: the next ones reuse the connections.
    let again = start(&pool, p.addr, 4).await;
    for h in again {
        assert_eq!(&h.await.unwrap()[..], b"ok");
    }
    assert_eq!(p.seen.conns.load(Ordering::SeqCst), 3);
    assert_eq!(p.seen.reset.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_burst_on_a_new_pod_opens_one_connection() {
    let p = pod(100).await;
    let pool = Arc::new(pool(&p));
    // Twenty requests arrive together: one opens the connection, the others wait for it.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (pool, addr) = (pool.clone(), p.addr);
        tasks.push(tokio::spawn(async move {
            let c = pool.checkout(addr, soon()).await.unwrap();
            let resp = c.send(req()).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    eventually("twenty streams at the pod", || {
        p.seen.in_flight.load(Ordering::SeqCst) == 20
    })
    .await;
    p.release.send(true).unwrap();
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], b"ok");
    }
    assert_eq!(p.seen.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn after_goaway_new_streams_go_to_a_new_connection() {
    let p = pod(100).await;
    let pool = pool(&p);
    let first = start(&pool, p.addr, 1).await;
    eventually("a stream at the pod", || {
        p.seen.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    p.goaway.send(1).unwrap();
    let conn = pool.pods.load()[&p.addr].h2.state.lock().conns[0].clone();
    eventually("the pool saw the GOAWAY", || conn.peer.is_closing()).await;
    // The stream in progress finishes on the old connection; a new one takes the next.
    let second = start(&pool, p.addr, 1).await;
    eventually("the second stream at the pod", || {
        p.seen.in_flight.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(p.seen.conns.load(Ordering::SeqCst), 2);
    p.release.send(true).unwrap();
    for h in first.into_iter().chain(second) {
        assert_eq!(&h.await.unwrap()[..], b"ok");
    }
}

#[tokio::test]
async fn a_dropped_exchange_resets_its_stream_and_gives_its_place_back() {
    let p = pod(1).await;
    let pool = pool(&p);
    let c = pool.checkout(p.addr, soon()).await.unwrap();
    let mut ex = c.send(req());
    // Polled until the pod has the request, then dropped (the client went away).
    let poll = tokio::time::timeout(Duration::from_millis(200), &mut ex).await;
    assert!(poll.is_err(), "held by the pod");
    assert_eq!(p.seen.in_flight.load(Ordering::SeqCst), 1);
    drop(ex);
    eventually("the pod saw the reset", || {
        p.seen.reset.load(Ordering::SeqCst) == 1
    })
    .await;
    // Its place on the connection (the pod allows one stream) is free again: no new connection.
    let conn = pool.pods.load()[&p.addr].h2.state.lock().conns[0].clone();
    assert_eq!(conn.active.load(Ordering::SeqCst), 0);
    p.release.send(true).unwrap();
    let again = start(&pool, p.addr, 1).await;
    assert_eq!(&again.into_iter().next().unwrap().await.unwrap()[..], b"ok");
    assert_eq!(p.seen.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_are_swept_and_a_retired_pods_close() {
    let p = pod(100).await;
    let up = Upstream {
        idle_timeout: Duration::from_millis(100),
        ..Upstream::new()
    };
    let t = PodTransport {
        protocol: UpstreamProtocol::H2c,
        tls: None,
    };
    let pool = ConnPool::new(&up, &[p.addr.into()], &t);
    p.release.send(true).unwrap();
    for h in start(&pool, p.addr, 1).await {
        h.await.unwrap();
    }
    let conns = || pool.pods.load()[&p.addr].h2.state.lock().conns.len();
    pool.sweep();
    assert_eq!(conns(), 1, "fresh: kept");
    tokio::time::sleep(Duration::from_millis(150)).await;
    pool.sweep();
    assert_eq!(conns(), 0, "idle past the timeout: closed");
    for h in start(&pool, p.addr, 1).await {
        h.await.unwrap();
    }
    assert_eq!(p.seen.conns.load(Ordering::SeqCst), 2);
    // A protocol change closes the connections too: HTTP/1.1 from now on.
    pool.set_transport(&PodTransport::HTTP1, &[p.addr.into()]);
    assert!(matches!(
        pool.checkout(p.addr, soon()).await,
        Ok(Checkout::H1(_))
    ));
}

#[test]
fn h2_without_a_usable_ca_trusts_nothing() {
    let t = PodTransport {
        protocol: UpstreamProtocol::H2,
        tls: Some(Arc::new(infergate_spec::PodTls {
            ca_certs: vec![b"not DER".to_vec()],
            server_name: Some("model.local".into()),
        })),
    };
    let w = Wire::new(&t);
    assert!(matches!(
        w,
        Wire::H2 {
            server_name: Some(_),
            ..
        }
    ));
    assert_eq!(w.scheme(), Scheme::HTTPS);
}

#[tokio::test]
async fn a_pod_that_does_not_speak_http2_is_a_connect_failure() {
    // An HTTP/1.1-only server: it answers the HTTP/2 preface with a 400 and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let t = PodTransport {
        protocol: UpstreamProtocol::H2c,
        tls: None,
    };
    let pool = ConnPool::new(&Upstream::new(), &[addr.into()], &t);
    // Refused at connect, not taken for an HTTP/2 pod that sent no SETTINGS.
    let r = pool
        .checkout(addr, Instant::now() + Duration::from_secs(60))
        .await;
    assert!(matches!(r, Err(ConnectError::NotHttp2)), "{r:?}");
}

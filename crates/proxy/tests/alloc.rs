//! Heap allocations per proxied request, counted by a counting global allocator (this test
//! binary only): a keep-alive client posting 1 KiB through the real router (the server, the
//! route table, admission, the pod connection pool) to a pod on 127.0.0.1, in steady state.
//!
//! The client and the pod are raw sockets with fixed buffers, so that what is counted is the
//! router's (and its runtime's) allocations alone. The figure is printed (run with
//! `--nocapture`); the test fails if it grows past the bound below.

use std::alloc::System;
use std::net::SocketAddr;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations per request this build may make; measured: see BENCHMARKS.md ("Tuning the data
/// path", the lean upstream codec).
const MAX_ALLOCATIONS_PER_REQUEST: f64 = 8.0;

const WARM_UP: usize = 200;
const COUNTED: usize = 2_000;

/// Where the head ends and how long the body is (`content-length`), once a whole head is in
/// `buf`; no allocation.
fn head_and_length(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut len = 0;
    for line in buf[..end].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            len = line[15..]
                .iter()
                .filter(|b| b.is_ascii_digit())
                .fold(0, |n, b| n * 10 + usize::from(b - b'0'));
        }
    }
    Some((end, len))
}

/// Reads one whole message (head and `content-length` body) into `buf`; its length, or `None`
/// at the end of the stream.
async fn read_message(s: &mut TcpStream, buf: &mut [u8; 16384]) -> Option<usize> {
    let mut n = 0;
    loop {
        if let Some((head, len)) = head_and_length(&buf[..n])
            && n >= head + len
        {
            assert_eq!(n, head + len, "one message at a time");
            return Some(n);
        }
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => n += k,
        }
    }
}

/// A pod answering every request with a 1 KiB JSON body, on fixed buffers.
async fn pod() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = format!("{{\"data\":\"{}\"}}", "y".repeat(1000));
    let resp: &'static [u8] = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .leak();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16384];
                while read_message(&mut s, &mut buf).await.is_some() {
                    if s.write_all(resp).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn allocations_per_proxied_request_in_steady_state() {
    let pod = pod().await;
    let yaml = format!(
        "allowInsecureConnections: true\n\
         listen: {{http: \"127.0.0.1:0\", https: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
         endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments:\n      \
         - name: d\n        pods: [\"{pod}\"]\n"
    );
    let cfg = infergate_config::Config::from_yaml(&yaml, "<test>").unwrap();
    let server = infergate_proxy::Server::bind(&cfg).await.unwrap();
    let addr = server.http_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(1000));
    let req = format!(
        "POST /api/v1/endpoint/e/score HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16384];
    let exchange = async |c: &mut TcpStream, buf: &mut [u8; 16384]| {
        c.write_all(&req).await.unwrap();
        let n = read_message(c, buf).await.expect("an answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    };
    for _ in 0..WARM_UP {
        exchange(&mut c, &mut buf).await;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..COUNTED {
        exchange(&mut c, &mut buf).await;
    }
    let stats = region.change();
    let per_request = stats.allocations as f64 / COUNTED as f64;
    let bytes = stats.bytes_allocated as f64 / COUNTED as f64;
    let reallocs = stats.reallocations as f64 / COUNTED as f64;
    println!(
        "allocations per proxied request: {per_request:.2} ({reallocs:.2} reallocations, \
         {bytes:.0} bytes allocated)"
    );
    assert!(
        per_request <= MAX_ALLOCATIONS_PER_REQUEST,
        "{per_request:.2} allocations per request (bound {MAX_ALLOCATIONS_PER_REQUEST})"
    );
    drop(c);
    let _ = stop.send(());
    let _ = task.await;
}

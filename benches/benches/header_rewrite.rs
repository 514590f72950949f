//! Header rewriting on the way to the pod: hop-by-hop removal, forwarding headers, request id.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use infergate_proxy::headers::{Forwarding, new_request_id, rewrite_request, strip_hop_by_hop};

/// What a typical SDK scoring call carries (13 headers, a 43-byte bearer key).
fn realistic() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |k: &'static str, v: &'static str| {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    };
    add("host", "scoring.example.com");
    add(
        "user-agent",
        "azureml-sdk/1.56.0 python-requests/2.32.3 Python/3.11.9",
    );
    add("accept", "application/json");
    add("accept-encoding", "gzip, deflate");
    add("content-type", "application/json");
    add("content-length", "1024");
    add(
        "authorization",
        "Bearer 3f6c1a1f2e2d4c1b9d9a7b8e6f5a4c3b2a1f0e9d8c7",
    );
    add("connection", "keep-alive");
    add(
        "x-ms-client-request-id",
        "c7b1a8a4-3a52-4a4b-9b0e-6f1d1d2c9e11",
    );
    add("azureml-model-deployment", "blue");
    add(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    add("x-forwarded-for", "203.0.113.9");
    add("x-custom-tenant", "contoso");
    h
}

/// The same plus hop-by-hop headers a client should not send but some do.
fn with_hop_by_hop() -> HeaderMap {
    let mut h = realistic();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-hop-secret"),
    );
    h.insert(
        "keep-alive",
        HeaderValue::from_static("timeout=5, max=1000"),
    );
    h.insert("x-hop-secret", HeaderValue::from_static("1"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h
}

fn rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_rewrite");
    let client: IpAddr = Ipv4Addr::new(192, 0, 2, 7).into();
    let fwd = Forwarding::default();
    let id = new_request_id();
    let base = realistic();
    let hop = with_hop_by_hop();
    // Each case clones the incoming map, works on it and drops it, all inside the timed loop:
    // steady-state allocator behaviour (batched inputs made the first case pay fresh-page
    // faults). Subtract `clone_drop` to get the work itself.
    g.bench_function("clone_drop/13_headers", |b| {
        b.iter(|| black_box(base.clone()))
    });
    g.bench_function("clone_rewrite_request_drop/13_headers", |b| {
        b.iter(|| {
            let mut h = base.clone();
            rewrite_request(
                &mut h,
                &id,
                client,
                "https",
                Some("scoring.example.com"),
                fwd,
            );
            h
        })
    });
    g.bench_function("clone_rewrite_request_drop/17_headers_hop_by_hop", |b| {
        b.iter(|| {
            let mut h = hop.clone();
            rewrite_request(&mut h, &id, client, "https", None, fwd);
            h
        })
    });
    g.bench_function("clone_strip_hop_by_hop_drop/13_headers", |b| {
        b.iter(|| {
            let mut h = base.clone();
            strip_hop_by_hop(&mut h);
            h
        })
    });
    g.bench_function("clone_strip_hop_by_hop_drop/17_headers_hop_by_hop", |b| {
        b.iter(|| {
            let mut h = hop.clone();
            strip_hop_by_hop(&mut h);
            h
        })
    });
    g.bench_function("new_request_id", |b| b.iter(|| black_box(new_request_id())));
    // The whole per-request header work: a fresh id plus the rewrite.
    g.bench_function("clone_new_id_rewrite_request_drop/13_headers", |b| {
        b.iter(|| {
            let mut h = base.clone();
            let id = new_request_id();
            rewrite_request(
                &mut h,
                &id,
                client,
                "https",
                Some("scoring.example.com"),
                fwd,
            );
            h
        })
    });
    g.finish();
}

criterion_group!(benches, rewrite);
criterion_main!(benches);

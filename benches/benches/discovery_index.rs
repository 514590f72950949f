//! Kubernetes discovery: building the route table for 10,000 InferenceEndpoints / 100,000 pods,
//! and one incremental update (one EndpointSlice changes) at that size.
//!
//! Each endpoint has two deployments (`blue` 90 %, `green` 10 %), each a Service with one
//! EndpointSlice of 5 ready pods: 20,000 slices, 100,000 pods. "index" is the pure index alone
//! (apply + refresh); "publish" adds `Router::publish_specs` (route table built and swapped,
//! balancer pools updated in place).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use infergate_config::Defaults;
use infergate_discovery::Index;
use infergate_proxy::Router;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use serde_json::json;

const ENDPOINTS: usize = 10_000;
const PODS_PER_SLICE: usize = 5;

fn mk_ie(i: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": format!("model-{i:05}"), "namespace": format!("ns-{}", i % 100),
                     "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "traffic": {"blue": 90, "green": 10},
            "deployments": [
                {"name": "blue", "serviceName": format!("m{i}-blue"), "port": "http"},
                {"name": "green", "serviceName": format!("m{i}-green"), "port": "http"},
            ],
            "auth": {"mode": "none"},
        },
    }))
    .unwrap()
}

/// The slice of endpoint `i`, deployment `dep` (0 or 1); `gen` shifts the addresses.
fn mk_slice(i: usize, dep: usize, generation: usize) -> EndpointSlice {
    let svc = format!("m{i}-{}", ["blue", "green"][dep]);
    let base = (i * 2 + dep) * PODS_PER_SLICE + generation;
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-abcde"), "namespace": format!("ns-{}", i % 100),
                     "labels": {"kubernetes.io/service-name": svc,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 5001, "protocol": "TCP"}],
        "endpoints": (0..PODS_PER_SLICE).map(|p| {
            let n = base + p;
            json!({
                "addresses": [format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": format!("{svc}-pod-{p}"), "namespace": format!("ns-{}", i % 100)},
            })
        }).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn objects() -> (Vec<DynamicObject>, Vec<EndpointSlice>) {
    let ies = (0..ENDPOINTS).map(mk_ie).collect();
    let slices = (0..ENDPOINTS)
        .flat_map(|i| [mk_slice(i, 0, 0), mk_slice(i, 1, 0)])
        .collect();
    (ies, slices)
}

fn build(ies: &[DynamicObject], slices: &[EndpointSlice]) -> Index {
    let mut ix = Index::new(Defaults::default());
    ix.reset_endpoints(None, ies);
    ix.reset_slices(None, slices);
    ix.refresh();
    ix
}

fn discovery(c: &mut Criterion) {
    let (ies, slices) = objects();
    let ix = build(&ies, &slices);
    let pods: usize = ix
        .specs()
        .iter()
        .flat_map(|e| &e.deployments)
        .map(|d| d.pods.len())
        .sum();
    assert_eq!(
        (ix.specs().len(), pods),
        (ENDPOINTS, ENDPOINTS * 2 * PODS_PER_SLICE)
    );

    let mut g = c.benchmark_group("discovery_10k_endpoints_100k_pods");
    g.sample_size(10);
    g.bench_function("index/build", |b| {
        b.iter(|| black_box(build(&ies, &slices)))
    });
    g.bench_function("publish/build", |b| {
        b.iter(|| {
            let ix = build(&ies, &slices);
            let router = Router::new(&infergate_proxy::Registry::new());
            router.publish_specs(ix.specs());
            black_box(router)
        })
    });

    // One slice changes (a pod replaced); alternate between two versions so each one is a change.
    let versions = [mk_slice(4242, 0, 0), mk_slice(4242, 0, 1)];
    let mut ix = build(&ies, &slices);
    let mut flip = 0;
    g.sample_size(100);
    g.bench_function("index/one_slice_update", |b| {
        b.iter(|| {
            flip ^= 1;
            ix.apply_slice(&versions[flip]);
            let ch = ix.refresh();
            assert!(ch.specs_changed);
            black_box(ix.specs().len())
        })
    });
    let router = Router::new(&infergate_proxy::Registry::new());
    router.publish_specs(ix.specs());
    g.bench_function("publish/one_slice_update", |b| {
        b.iter(|| {
            flip ^= 1;
            ix.apply_slice(&versions[flip]);
            ix.refresh();
            router.publish_specs(ix.specs());
        })
    });
    g.finish();
}

criterion_group!(benches, discovery);
criterion_main!(benches);

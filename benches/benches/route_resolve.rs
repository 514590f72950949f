//! Route resolution: the one table lookup every request makes, as the proxy does it
//! ([`RouteTable::lookup`], then [`Endpoint::select`]).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Method};
use infergate_config::{DeploymentConfig, EndpointConfig};
use infergate_routing::{Deployment, Endpoint, RouteError, RouteTable};

fn mk_table(endpoints: usize) -> RouteTable<()> {
    let settings = infergate_config::Defaults::default();
    RouteTable::new((0..endpoints).map(|i| {
        let ep = EndpointConfig {
            name: format!("model-{i}"),
            traffic: [("blue".to_string(), 90), ("green".to_string(), 10)].into(),
            deployments: ["blue", "green"]
                .iter()
                .map(|d| DeploymentConfig {
                    name: d.to_string(),
                    pods: vec![format!("10.0.{}.{}:5001", i / 250, i % 250)],
                    scoring_path: "/score".into(),
                    swagger_path: "/swagger.json".into(),
                    request_settings: Default::default(),
                    scale_settings: None,
                    protocol: Default::default(),
                    upstream_tls: None,
                })
                .collect(),
            mirror: None,
            auth: Default::default(),
            swagger_auth: false,
            pass_authorization: false,
        };
        let deps = ep
            .deployments
            .iter()
            .zip(ep.weights())
            .map(|(d, w)| {
                let dep = Deployment::new(
                    &d.name,
                    &d.scoring_path,
                    &d.swagger_path,
                    settings,
                    d.pod_addrs(),
                    (),
                );
                (dep, w)
            })
            .collect();
        Endpoint::new(&ep.name, (), deps)
    }))
}

/// What the proxy does per request: the endpoint and action from the path, then the deployment.
fn resolve<'t>(
    t: &'t RouteTable<()>,
    method: &Method,
    path: &str,
    pinned: Option<&HeaderValue>,
    roll: u32,
) -> Result<&'t Deployment<()>, RouteError> {
    let (endpoint, _action) = t.lookup(method, path)?;
    endpoint.select(pinned, roll)
}

fn bench_resolve(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_resolve");
    for size in [10usize, 10_000] {
        let t = mk_table(size);
        let path = format!("/api/v1/endpoint/model-{}/score", size / 2);
        g.bench_function(format!("weighted/{size}_endpoints"), |b| {
            let mut roll = 0u32;
            b.iter(|| {
                roll = roll.wrapping_add(7);
                black_box(resolve(&t, &Method::POST, black_box(&path), None, roll).is_ok())
            })
        });
    }
    let t = mk_table(1000);
    let pin = HeaderValue::from_static("green");
    g.bench_function("pinned/1000_endpoints", |b| {
        b.iter(|| {
            black_box(
                resolve(
                    &t,
                    &Method::POST,
                    black_box("/api/v1/service/model-500/score"),
                    Some(&pin),
                    0,
                )
                .is_ok(),
            )
        })
    });
    g.bench_function("percent_encoded/1000_endpoints", |b| {
        b.iter(|| {
            black_box(
                resolve(
                    &t,
                    &Method::POST,
                    black_box("/api/v1/endpoint/model%2D500/score"),
                    None,
                    3,
                )
                .is_ok(),
            )
        })
    });
    g.bench_function("miss/1000_endpoints", |b| {
        b.iter(|| {
            black_box(
                resolve(
                    &t,
                    &Method::POST,
                    black_box("/api/v1/endpoint/nope/score"),
                    None,
                    3,
                )
                .is_err(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_resolve);
criterion_main!(benches);

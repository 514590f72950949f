use super::*;
use infergate_config::{Config, DeploymentConfig, EndpointConfig};

// === test-only API: a table from a configuration, and resolution in one call (the proxy
// builds its table from specs and calls `lookup`, then `Endpoint::select`) ===

/// A resolved request: which endpoint, which deployment, what for.
#[derive(Debug)]
struct Target<'a, B, E = ()> {
    /// The endpoint named in the URL.
    endpoint: &'a Endpoint<B, E>,
    /// The deployment chosen (pinned or by weight).
    deployment: &'a Deployment<B>,
    /// Score or swagger.
    action: Action,
}

impl<B, E> Target<'_, B, E> {
    /// The path on the pod this request goes to.
    fn upstream_path(&self) -> &str {
        match self.action {
            Action::Score => &self.deployment.scoring_path,
            Action::Swagger => &self.deployment.swagger_path,
        }
    }
}

impl<B, E> RouteTable<B, E> {
    /// The table of a validated configuration; `mk_ep` and `mk` make the payloads.
    fn from_config(
        cfg: &Config,
        mut mk_ep: impl FnMut(&EndpointConfig) -> E,
        mut mk: impl FnMut(&EndpointConfig, &DeploymentConfig, &ResolvedSettings) -> B,
    ) -> Self {
        Self::new(cfg.endpoints.iter().map(|ep| {
            let deps = ep
                .deployments
                .iter()
                .zip(ep.weights())
                .map(|(d, w)| {
                    let s = cfg.resolved_settings(d);
                    let b = mk(ep, d, &s);
                    let dep = Deployment::new(
                        &d.name,
                        &d.scoring_path,
                        &d.swagger_path,
                        s,
                        d.pod_addrs(),
                        b,
                    );
                    (dep, w)
                })
                .collect();
            Endpoint::new(&ep.name, mk_ep(ep), deps)
        }))
    }

    /// [`RouteTable::lookup`] then [`Endpoint::select`]. `path` is the URI path without the
    /// query; `pinned` is the `azureml-model-deployment` header, if any; `roll` is a random
    /// number for the weighted split.
    fn resolve(
        &self,
        method: &Method,
        path: &str,
        pinned: Option<&HeaderValue>,
        roll: u32,
    ) -> Result<Target<'_, B, E>, RouteError> {
        let (endpoint, action) = self.lookup(method, path)?;
        let deployment = endpoint.select(pinned, roll)?;
        Ok(Target {
            endpoint,
            deployment,
            action,
        })
    }
}

fn mk_table() -> RouteTable<u32> {
    let cfg = Config::from_yaml(
        r#"
allowInsecureConnections: true
endpoints:
  - name: demo
    traffic: {blue: 90, green: 10}
    deployments:
      - {name: blue, pods: ["127.0.0.1:5001", "127.0.0.1:5002"]}
      - {name: green, pods: ["127.0.0.1:5003"], scoringPath: /v2/predict, swaggerPath: /docs/api.json}
  - name: pinned-only
    traffic: {a: 0, b: 0}
    deployments: [{name: a}, {name: b}]
  - name: "my.model_v2"
    deployments: [{name: only}]
"#,
        "t",
    )
    .unwrap();
    cfg.validate().unwrap();
    let mut n = 0;
    RouteTable::from_config(
        &cfg,
        |_| (),
        |_, _, _| {
            n += 1;
            n
        },
    )
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

#[test]
fn url_shapes_resolve() {
    let t = mk_table();
    for p in ["/api/v1/endpoint/demo/score", "/api/v1/service/demo/score"] {
        let r = t.resolve(&Method::POST, p, None, 0).unwrap();
        assert_eq!(&*r.endpoint.name, "demo");
        assert_eq!(r.action, Action::Score);
        assert_eq!(r.upstream_path(), "/score");
    }
    for p in [
        "/api/v1/endpoint/demo/swagger.json",
        "/api/v1/service/demo/swagger.json",
    ] {
        let r = t.resolve(&Method::GET, p, None, 95).unwrap();
        assert_eq!(r.action, Action::Swagger);
        assert_eq!(&*r.deployment.name, "green");
        assert_eq!(r.upstream_path(), "/docs/api.json");
    }
    let r = t
        .resolve(&Method::POST, "/api/v1/endpoint/demo/score", None, 95)
        .unwrap();
    assert_eq!(r.upstream_path(), "/v2/predict");
}

#[test]
fn weights_split_exactly() {
    let t = mk_table();
    let mut green = 0;
    for roll in 0..1000u32 {
        let r = t
            .resolve(&Method::POST, "/api/v1/endpoint/demo/score", None, roll)
            .unwrap();
        if &*r.deployment.name == "green" {
            green += 1;
        }
    }
    assert_eq!(green, 100, "10% of rolls 0..1000 go to green");
    assert_eq!(t.endpoint("demo").unwrap().total_weight(), 100);
}

#[test]
fn header_pins_a_deployment() {
    let t = mk_table();
    for roll in [0, 50, 99] {
        let r = t
            .resolve(
                &Method::POST,
                "/api/v1/endpoint/demo/score",
                Some(&hv("green")),
                roll,
            )
            .unwrap();
        assert_eq!(&*r.deployment.name, "green");
        assert_eq!(r.deployment.header_value, "green");
    }
    let e = t
        .resolve(
            &Method::POST,
            "/api/v1/endpoint/demo/score",
            Some(&hv("purple")),
            0,
        )
        .unwrap_err();
    assert_eq!(
        e,
        RouteError::DeploymentNotFound {
            endpoint: "demo".into(),
            deployment: "purple".into()
        }
    );
    assert!(
        t.resolve(
            &Method::POST,
            "/api/v1/endpoint/demo/score",
            Some(&hv("Green")),
            0
        )
        .is_err(),
        "names match exactly"
    );
}

#[test]
fn all_zero_weights_serve_only_pinned() {
    let t = mk_table();
    let e = t
        .resolve(&Method::POST, "/api/v1/endpoint/pinned-only/score", None, 3)
        .unwrap_err();
    assert_eq!(e, RouteError::NoTrafficAllocated("pinned-only".into()));
    let r = t
        .resolve(
            &Method::POST,
            "/api/v1/endpoint/pinned-only/score",
            Some(&hv("b")),
            3,
        )
        .unwrap();
    assert_eq!(&*r.deployment.name, "b");
}

#[test]
fn unknown_and_malformed_paths() {
    let t = mk_table();
    let cases = [
        (
            "/api/v1/endpoint/nope/score",
            RouteError::EndpointNotFound("nope".into()),
        ),
        (
            "/api/v1/endpoint/DEMO/score",
            RouteError::EndpointNotFound("DEMO".into()),
        ),
        ("/api/v1/endpoint/demo/score/", RouteError::NoRoute),
        ("/api/v1/endpoint/demo/predict", RouteError::NoRoute),
        ("/api/v1/endpoint//score", RouteError::NoRoute),
        ("/api/v1/endpoint/score", RouteError::NoRoute),
        ("/api/v2/endpoint/demo/score", RouteError::NoRoute),
        ("/", RouteError::NoRoute),
        ("/api/v1/endpoint/demo/../demo/score", RouteError::NoRoute),
        (
            "/api/v1/endpoint/../score",
            RouteError::EndpointNotFound("..".into()),
        ),
        (
            "/api/v1/endpoint/%2e%2e/score",
            RouteError::EndpointNotFound("..".into()),
        ),
        (
            "/api/v1/endpoint/demo%2Fscore/score",
            RouteError::EndpointNotFound("demo/score".into()),
        ),
        (
            "/api/v1/endpoint/demo%2fx/score",
            RouteError::EndpointNotFound("demo/x".into()),
        ),
        (
            "/api/v1/endpoint/%ff/score",
            RouteError::EndpointNotFound("\u{fffd}".into()),
        ),
    ];
    for (p, want) in cases {
        assert_eq!(
            t.resolve(&Method::POST, p, None, 0).unwrap_err(),
            want,
            "{p}"
        );
    }
}

#[test]
fn percent_decoded_names_match_exactly() {
    let t = mk_table();
    let r = t
        .resolve(&Method::POST, "/api/v1/endpoint/my.model_v2/score", None, 0)
        .unwrap();
    assert_eq!(&*r.endpoint.name, "my.model_v2");
    let r = t
        .resolve(
            &Method::POST,
            "/api/v1/endpoint/my%2Emodel%5Fv2/score",
            None,
            0,
        )
        .unwrap();
    assert_eq!(&*r.endpoint.name, "my.model_v2");
    let r = t
        .resolve(&Method::POST, "/api/v1/endpoint/%64emo/score", None, 0)
        .unwrap();
    assert_eq!(&*r.endpoint.name, "demo");
}

#[test]
fn swagger_is_get_or_head_only() {
    let t = mk_table();
    assert!(
        t.resolve(&Method::HEAD, "/api/v1/endpoint/demo/swagger.json", None, 0)
            .is_ok()
    );
    assert_eq!(
        t.resolve(&Method::POST, "/api/v1/endpoint/demo/swagger.json", None, 0)
            .unwrap_err(),
        RouteError::MethodNotAllowed
    );
}

#[test]
fn payload_and_settings_travel_with_deployment() {
    let t = mk_table();
    let ep = t.endpoint("demo").unwrap();
    assert_eq!(ep.deployments[0].balancer, 1);
    assert_eq!(ep.deployments[1].balancer, 2);
    assert_eq!(ep.deployments[0].pods.len(), 2);
    assert_eq!(ep.deployments[0].settings.max_queue_wait_ms, 500);
    assert_eq!(t.len(), 3);
}

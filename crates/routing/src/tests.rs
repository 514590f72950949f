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
    /// Score, swagger or the Open Inference Protocol.
    action: Action,
    /// The client's path.
    path: &'a str,
}

impl<B, E> Target<'_, B, E> {
    /// The path on the pod this request goes to.
    fn upstream_path(&self) -> &str {
        match self.action {
            Action::Score => &self.deployment.scoring_path,
            Action::Swagger => &self.deployment.swagger_path,
            Action::Oip => model_path(self.path).expect("an OIP path"),
            Action::Grpc => "(the call's own path)",
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
    fn resolve<'a>(
        &'a self,
        method: &Method,
        path: &'a str,
        pinned: Option<&HeaderValue>,
        roll: u32,
    ) -> Result<Target<'a, B, E>, RouteError> {
        let (endpoint, action) = self.lookup(method, path)?;
        let deployment = endpoint.select(pinned, roll)?;
        Ok(Target {
            endpoint,
            deployment,
            action,
            path,
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
fn open_inference_protocol_paths_reach_the_same_path_on_the_pod() {
    let t = mk_table();
    let cases = [
        (
            "POST",
            "/api/v1/endpoint/demo/v2/models/iris/infer",
            "/v2/models/iris/infer",
        ),
        (
            "POST",
            "/api/v1/service/demo/v2/models/iris/versions/3/infer",
            "/v2/models/iris/versions/3/infer",
        ),
        (
            "GET",
            "/api/v1/endpoint/demo/v2/models/iris/ready",
            "/v2/models/iris/ready",
        ),
        (
            "GET",
            "/api/v1/endpoint/demo/v2/models/iris",
            "/v2/models/iris",
        ),
        (
            "GET",
            "/api/v1/endpoint/demo/v2/health/live",
            "/v2/health/live",
        ),
        (
            "GET",
            "/api/v1/endpoint/demo/v2/health/ready",
            "/v2/health/ready",
        ),
        ("GET", "/api/v1/endpoint/demo/v2", "/v2"),
        (
            "GET",
            "/api/v1/endpoint/%64emo/v2/models/a%20b",
            "/v2/models/a%20b",
        ),
        (
            "POST",
            "/api/v1/endpoint/demo/v2/models/m/generate_stream",
            "/v2/models/m/generate_stream",
        ),
    ];
    for (method, path, pod) in cases {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        // Whichever deployment serves: the pod path is the client's, not the scoring path.
        for roll in [0, 95] {
            let r = t.resolve(&method, path, None, roll).unwrap();
            assert_eq!(&*r.endpoint.name, "demo", "{path}");
            assert_eq!(r.action, Action::Oip, "{path}");
            assert_eq!(r.upstream_path(), pod, "{path}");
        }
    }
    // The query follows; the URI is built from the client's path.
    let r = t
        .resolve(
            &Method::POST,
            "/api/v1/endpoint/demo/v2/models/m/infer",
            None,
            0,
        )
        .unwrap();
    let uri = r
        .deployment
        .upstream_uri(r.action, r.path, Some("a=1"))
        .unwrap();
    assert_eq!(uri, "/v2/models/m/infer?a=1");
    let uri = r.deployment.upstream_uri(r.action, r.path, None).unwrap();
    assert_eq!(uri, "/v2/models/m/infer");
}

#[test]
fn open_inference_protocol_paths_cannot_leave_v2() {
    let t = mk_table();
    for p in [
        "/api/v1/endpoint/demo/v2/../stats",
        "/api/v1/endpoint/demo/v2/models/../../stats",
        "/api/v1/endpoint/demo/v2/./health/live",
        "/api/v1/endpoint/demo/v2/%2e%2E/stats",
        "/api/v1/endpoint/demo/v2/%2E/x",
        "/api/v1/endpoint/demo/v2/models/a%2F..%2F..%2Fstats",
        "/api/v1/endpoint/demo/v2/models/a%5c..",
        "/api/v1/endpoint/demo/v2/models/a\\b",
        "/api/v1/endpoint/demo/v2x/models",
        "/api/v1/endpoint/demo/v3/models/m/infer",
        "/api/v1/endpoint/demo/V2/health/live",
        "/api/v1/endpoint/demo/stats",
        "/api/v1/endpoint/demo/",
    ] {
        assert_eq!(
            t.resolve(&Method::GET, p, None, 0).unwrap_err(),
            RouteError::NoRoute,
            "{p}"
        );
        assert_eq!(model_path(p), None, "{p}");
    }
    // Dots inside a segment are names, not dot segments.
    let r = t
        .resolve(
            &Method::GET,
            "/api/v1/endpoint/demo/v2/models/a.b..c/ready",
            None,
            0,
        )
        .unwrap();
    assert_eq!(r.upstream_path(), "/v2/models/a.b..c/ready");
    assert_eq!(
        t.resolve(
            &Method::GET,
            "/api/v1/endpoint/nope/v2/health/live",
            None,
            0
        )
        .unwrap_err(),
        RouteError::EndpointNotFound("nope".into())
    );
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

// === property tests (fuzzing; `PROPTEST_CASES=100000 cargo test -p infergate-routing fuzz`) ===

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// The route a path names, computed another way: split on `/`, six segments exactly
    /// (or more under `v2`, none of them a dot segment or an encoded slash), the name
    /// percent-decoded (`None` when that is not UTF-8).
    fn reference(path: &str) -> Option<(Option<String>, Action)> {
        let seg: Vec<&str> = path.split('/').collect();
        let [first, api, v1, kind, name, action, more @ ..] = seg.as_slice() else {
            return None;
        };
        if !first.is_empty() || *api != "api" || *v1 != "v1" {
            return None;
        }
        if *kind != "endpoint" && *kind != "service" {
            return None;
        }
        let safe = |s: &&str| {
            let d = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
            d != "." && d != ".." && !d.contains('/') && !d.contains('\\')
        };
        let action = match (*action, more) {
            ("score", []) => Action::Score,
            ("swagger.json", []) => Action::Swagger,
            ("v2", more) if more.iter().all(safe) => Action::Oip,
            _ => return None,
        };
        if name.is_empty() {
            return None;
        }
        let decoded = percent_encoding::percent_decode_str(name).decode_utf8();
        Some((decoded.ok().map(|n| n.into_owned()), action))
    }

    /// Paths near the real shapes (and some far from them).
    fn paths() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("demo".to_string()),
            Just("my.model_v2".to_string()),
            Just("pinned-only".to_string()),
            Just("%64emo".to_string()),
            Just("demo%2Fx".to_string()),
            Just("..".to_string()),
            Just("%2E%2E".to_string()),
            Just(String::new()),
            "[a-z0-9._%/-]{0,12}",
            "\\PC{0,8}",
            "a{200,300}",
        ];
        let kind = prop_oneof![Just("endpoint"), Just("service"), Just("models"), Just("")];
        let action = prop_oneof![
            Just("score".to_string()),
            Just("swagger.json".to_string()),
            Just("score/".to_string()),
            Just("Score".to_string()),
            Just(String::new()),
            Just("v2".to_string()),
            Just("v2/models/m/infer".to_string()),
            Just("v2/health/live".to_string()),
            "v2[a-z0-9._%/\\\\-]{0,16}",
        ];
        prop_oneof![
            4 => (kind, name, action).prop_map(|(k, n, a)| format!("/api/v1/{k}/{n}/{a}")),
            1 => "\\PC{0,40}",
            1 => "/api/v1/[a-z/%.]{0,30}",
        ]
    }

    proptest! {
        // 256 cases by default (as `./test.sh` runs them); PROPTEST_CASES sets more.
        #[test]
        fn routing_agrees_with_a_reference_parse(path in paths(), get in any::<bool>()) {
            let t = mk_table();
            let method = if get { Method::GET } else { Method::POST };
            let got = t.lookup(&method, &path);
            match reference(&path) {
                None => prop_assert!(
                    matches!(got, Err(RouteError::NoRoute) | Err(RouteError::EndpointNotFound(_))),
                    "{path:?}: {got:?}"
                ),
                Some((name, action)) => {
                    // Undecodable: never an endpoint.
                    let name = name.unwrap_or_else(|| "/".to_string());
                    let known = ["demo", "pinned-only", "my.model_v2"].contains(&name.as_str());
                    match got {
                        Ok((ep, a)) => {
                            prop_assert!(known, "{path:?} routed to {}", ep.name);
                            prop_assert_eq!(&*ep.name, name.as_str());
                            prop_assert_eq!(a, action);
                        }
                        Err(RouteError::MethodNotAllowed) => {
                            prop_assert!(action == Action::Swagger && !get)
                        }
                        Err(RouteError::EndpointNotFound(n)) => {
                            prop_assert!(!known || name.contains('/') || name == "." || name == "..");
                            // What goes back to the client is bounded, whatever it sent.
                            prop_assert!(n.chars().count() <= MAX_NAME_IN_ERROR + 1);
                        }
                        Err(e) => prop_assert!(false, "{path:?}: {e:?}"),
                    }
                }
            }
        }

        #[test]
        fn deployment_pins_never_panic_and_errors_stay_small(
            pin in proptest::collection::vec(any::<u8>(), 0..400),
            roll in any::<u32>(),
        ) {
            let t = mk_table();
            let ep = t.endpoint("demo").unwrap();
            let Ok(h) = HeaderValue::from_bytes(&pin) else { return Ok(()) };
            match ep.select(Some(&h), roll) {
                Ok(d) => prop_assert_eq!(d.name.as_bytes(), &pin[..]),
                Err(RouteError::DeploymentNotFound { deployment, .. }) => {
                    prop_assert!(deployment.chars().count() <= MAX_NAME_IN_ERROR + 1)
                }
                Err(e) => prop_assert!(false, "{e:?}"),
            }
        }
    }
}

// === gRPC: the endpoint a call names, and the deployments that take it ===

#[test]
fn grpc_calls_name_their_endpoint_in_metadata_or_the_authority() {
    let hv = |s: &str| HeaderValue::from_str(s).unwrap();
    let name = |m: Option<&str>, a: Option<&str>, s: Option<&str>| {
        let m = m.map(hv);
        grpc_endpoint_name(m.as_ref(), a, s).map(str::to_string)
    };
    let suffix = Some("models.example.com");
    // Metadata wins over the authority; an empty value names nothing.
    assert_eq!(
        name(Some("ep"), Some("x.models.example.com"), suffix).as_deref(),
        Some("ep")
    );
    assert_eq!(name(Some(""), Some("x.models.example.com"), suffix), None);
    // The authority names it only with a suffix; port and case of the suffix do not matter.
    assert_eq!(
        name(None, Some("my-ep.models.example.com"), suffix).as_deref(),
        Some("my-ep")
    );
    assert_eq!(
        name(None, Some("my-ep.Models.Example.COM:443"), suffix).as_deref(),
        Some("my-ep")
    );
    assert_eq!(
        name(None, Some("a.b.models.example.com"), suffix).as_deref(),
        Some("a.b")
    );
    assert_eq!(name(None, Some("my-ep.models.example.com"), None), None);
    for other in [
        "models.example.com",
        ".models.example.com",
        "x.othermodels.example.com",
        "x.models.example.co",
        "xmodels.example.com",
        "é.models.example.com",
    ] {
        if other.starts_with('é') {
            // Not ASCII: the name may hold it, the router then finds no such endpoint.
            assert_eq!(name(None, Some(other), suffix).as_deref(), Some("é"));
            continue;
        }
        assert_eq!(name(None, Some(other), suffix), None, "{other}");
    }
    assert_eq!(name(None, None, suffix), None);
}

proptest::proptest! {
    #[test]
    fn grpc_endpoint_name_never_panics_and_round_trips(
        ep in "[a-z0-9][a-z0-9.-]{0,20}",
        suffix in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}",
        port in proptest::option::of(1u16..),
        junk in ".{0,40}",
    ) {
        let authority = match port {
            Some(p) => format!("{ep}.{suffix}:{p}"),
            None => format!("{ep}.{suffix}"),
        };
        proptest::prop_assert_eq!(grpc_endpoint_name(None, Some(&authority), Some(&suffix)), Some(ep.as_str()));
        let _ = grpc_endpoint_name(None, Some(&junk), Some(&suffix));
        let _ = grpc_endpoint_name(None, Some(&junk), Some(&junk));
    }
}

fn grpc_table() -> RouteTable<&'static str> {
    let dep = |name: &'static str, http2: bool| {
        Deployment::new(
            name,
            "/score",
            "/swagger.json",
            Default::default(),
            vec![],
            name,
        )
        .with_http2(http2)
    };
    RouteTable::new([
        Endpoint::new(
            "mixed",
            (),
            vec![
                (dep("rest", false), 60),
                (dep("g1", true), 30),
                (dep("g2", true), 10),
            ],
        ),
        Endpoint::new("rest-only", (), vec![(dep("rest", false), 100)]),
        Endpoint::new("pinned-only", (), vec![(dep("g", true), 0)]),
    ])
}

#[test]
fn grpc_calls_split_over_the_http2_deployments_only() {
    let t = grpc_table();
    let hv = |s: &'static str| HeaderValue::from_static(s);
    let ep = t.lookup_grpc(Some(&hv("mixed")), None, None).unwrap();
    let mut seen = std::collections::HashMap::new();
    for roll in 0..400u32 {
        *seen
            .entry(ep.select_grpc(None, roll).unwrap().balancer)
            .or_insert(0) += 1;
    }
    // 30:10 between the HTTP/2 deployments; the HTTP/1.1 one takes none.
    assert_eq!(seen.get("rest"), None);
    assert_eq!((seen["g1"], seen["g2"]), (300, 100));
    // A pinned call goes where it is pinned, if that speaks HTTP/2.
    assert_eq!(ep.select_grpc(Some(&hv("g2")), 0).unwrap().balancer, "g2");
    assert_eq!(
        ep.select_grpc(Some(&hv("rest")), 0).unwrap_err(),
        RouteError::NoHttp2Deployment {
            endpoint: "mixed".into(),
            deployment: Some("rest".into())
        }
    );
    assert!(matches!(
        ep.select_grpc(Some(&hv("nope")), 0).unwrap_err(),
        RouteError::DeploymentNotFound { .. }
    ));
    let rest = t.lookup_grpc(Some(&hv("rest-only")), None, None).unwrap();
    let e = rest.select_grpc(None, 7).unwrap_err();
    assert_eq!(
        e,
        RouteError::NoHttp2Deployment {
            endpoint: "rest-only".into(),
            deployment: None
        }
    );
    assert!(e.to_string().contains("h2c or h2"), "{e}");
    // Weights 0: only pinned calls.
    let pinned = t
        .lookup_grpc(None, Some("pinned-only.svc:80"), Some("svc"))
        .unwrap();
    assert!(pinned.select_grpc(None, 1).is_err());
    assert_eq!(pinned.select_grpc(Some(&hv("g")), 1).unwrap().balancer, "g");
    // Unknown or unnamed endpoints.
    assert_eq!(
        t.lookup_grpc(Some(&hv("nope")), None, None).err(),
        Some(RouteError::EndpointNotFound("nope".into()))
    );
    assert_eq!(
        t.lookup_grpc(None, Some("x"), None).err(),
        Some(RouteError::NoGrpcEndpoint)
    );
    // The call's own path goes to the pod: the table has none to offer.
    assert!(
        ep.deployments[1]
            .upstream_uri(
                Action::Grpc,
                "/inference.GRPCInferenceService/ModelInfer",
                None
            )
            .is_none()
    );
}

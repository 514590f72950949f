use super::*;

const FULL: &str = r#"
sslCertPemFile: Cargo.toml
sslKeyPemFile: Cargo.toml
allowInsecureConnections: false
listen: {https: "0.0.0.0:8443", http: "0.0.0.0:8080", admin: "0.0.0.0:9090"}
defaults: {requestTimeoutMs: 5000, maxConcurrentRequestsPerInstance: 1,
           maxQueueWaitMs: 500, maxRequestBodyBytes: 104857600}
endpoints:
  - name: demo
    traffic: {blue: 90, green: 10}
    deployments:
      - name: blue
        pods: ["127.0.0.1:5001", "127.0.0.1:5002"]
        scoringPath: /score
        swaggerPath: /swagger.json
        requestSettings: {requestTimeoutMs: 7000}
      - name: green
        pods: ["127.0.0.1:5003"]
"#;

fn mk(text: &str) -> Result<Config, ConfigError> {
    let c = Config::from_yaml(text, "<test>")?;
    c.validate()?;
    Ok(c)
}

fn err_text(text: &str) -> String {
    mk(text).unwrap_err().to_string()
}

const INSECURE: &str = "allowInsecureConnections: true\n";

#[test]
fn full_example_parses_with_overrides() {
    let c = mk(FULL).unwrap();
    assert_eq!(c.endpoints[0].weights(), vec![90, 10]);
    let blue = c.resolved_settings(&c.endpoints[0].deployments[0]);
    assert_eq!(blue.request_timeout_ms, 7000);
    assert_eq!(blue.max_queue_wait_ms, 500);
    let green = c.resolved_settings(&c.endpoints[0].deployments[1]);
    assert_eq!(green.request_timeout_ms, 5000);
    let l = c.listen_addrs().unwrap();
    assert!(l.https.is_some());
    assert!(
        l.http.is_none(),
        "http must not be bound without allowInsecureConnections"
    );
}

#[test]
fn every_key_has_its_default() {
    let c = mk(INSECURE).unwrap();
    assert_eq!(c.listen, Listen::default());
    assert_eq!(c.listen.https, "0.0.0.0:8443");
    assert_eq!(c.listen.http, "0.0.0.0:8080");
    assert_eq!(c.listen.admin, "0.0.0.0:9090");
    assert_eq!(c.defaults.request_timeout_ms, 5000);
    assert_eq!(c.defaults.max_concurrent_requests_per_instance, 1);
    assert_eq!(c.defaults.max_queue_wait_ms, 500);
    assert_eq!(c.defaults.max_request_body_bytes, 104_857_600);
    assert_eq!(c.drain_timeout_ms, 30_000);
    let c = mk("allowInsecureConnections: true\nendpoints: [{name: a, deployments: [{name: d}]}]")
        .unwrap();
    let d = &c.endpoints[0].deployments[0];
    assert_eq!(d.scoring_path, "/score");
    assert_eq!(d.swagger_path, "/swagger.json");
    assert_eq!(
        c.endpoints[0].weights(),
        vec![100],
        "a lone deployment takes all traffic"
    );
    let l = c.listen_addrs().unwrap();
    assert!(l.https.is_none());
    assert!(l.http.is_some());
}

#[test]
fn no_tls_and_not_insecure_names_all_three_keys() {
    let e = err_text("endpoints: []");
    for k in [
        "sslCertPemFile",
        "sslKeyPemFile",
        "allowInsecureConnections",
    ] {
        assert!(e.contains(k), "{e}");
    }
}

#[test]
fn half_tls_pair_is_an_error() {
    let e = err_text("sslCertPemFile: Cargo.toml\n");
    assert!(e.contains("sslKeyPemFile"), "{e}");
    let e = err_text("sslKeyPemFile: Cargo.toml\n");
    assert!(e.contains("sslCertPemFile"), "{e}");
    let e = err_text("sslCertPemFile: /nonexistent/x.pem\nsslKeyPemFile: Cargo.toml\n");
    assert!(
        e.contains("/nonexistent/x.pem") && e.contains("sslCertPemFile"),
        "{e}"
    );
}

#[test]
fn booleans_accept_four_spellings_only() {
    for (v, want) in [
        ("True", true),
        ("true", true),
        ("False", false),
        ("false", false),
    ] {
        let c = Config::from_yaml(&format!("allowInsecureConnections: {v}"), "t").unwrap();
        assert_eq!(c.allow_insecure_connections, want);
        let c = Config::from_yaml(&format!("allowInsecureConnections: \"{v}\""), "t").unwrap();
        assert_eq!(c.allow_insecure_connections, want);
        assert_eq!(parse_bool("k", v).unwrap(), want);
    }
    let e = Config::from_yaml("allowInsecureConnections: Ture", "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Ture") && e.contains("True, False, true or false"),
        "{e}"
    );
    let e = parse_bool("allowInsecureConnections", "Ture")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("allowInsecureConnections") && e.contains("Ture") && e.contains("True, False"),
        "{e}"
    );
    assert!(parse_bool("k", "yes").is_err());
    assert!(parse_bool("k", "1").is_err());
    // A near miss names the spelling meant, in YAML as with --set; a far one does not guess.
    let e = parse_bool("k", "TRUE").unwrap_err().to_string();
    assert!(e.contains("did you mean `True`?"), "{e}");
    let e = Config::from_yaml("allowInsecureConnections: Flase", "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean `False`?"), "{e}");
    let e = parse_bool("k", "1").unwrap_err().to_string();
    assert!(!e.contains("did you mean"), "{e}");
}

#[test]
fn set_overrides_top_level_keys() {
    let mut c = Config::from_yaml("endpoints: []", "t").unwrap();
    assert!(c.validate().is_err());
    c.apply_set("allowInsecureConnections=True").unwrap();
    c.apply_set("listen.http=127.0.0.1:0").unwrap();
    c.apply_set("defaults.maxQueueWaitMs=250").unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.listen_addrs().unwrap().http,
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(c.defaults.max_queue_wait_ms, 250);
    let e = c
        .apply_set("allowInsecureConnections=Ture")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("allowInsecureConnections")
            && e.contains("Ture")
            && e.contains("True, False, true or false"),
        "{e}"
    );
    let e = c.apply_set("bogus=1").unwrap_err().to_string();
    assert!(
        e.contains("bogus") && e.contains("allowInsecureConnections"),
        "{e}"
    );
    let e = c.apply_set("novalue").unwrap_err().to_string();
    assert!(e.contains("KEY=VALUE"), "{e}");
    let e = c
        .apply_set("defaults.maxQueueWaitMs=abc")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("defaults.maxQueueWaitMs") && e.contains("abc"),
        "{e}"
    );
}

/// `a.b` and `VALUE` as YAML: `a: {b: VALUE}`.
fn yaml_at(key: &str, value: &str) -> String {
    match key.split_once('.') {
        Some((outer, inner)) => format!("{outer}: {{{inner}: {value}}}"),
        None => format!("{key}: {value}"),
    }
}

#[test]
fn every_settable_key_can_be_set_and_reads_back_as_its_yaml_key() {
    let base = || Config::from_yaml("{}", "t").unwrap();
    let keys: Vec<&str> = settable_keys().collect();
    assert!(keys.len() >= 17, "{keys:?}");
    for key in keys {
        // The first sample the key's type takes: a number, a boolean or an address.
        let (value, set) = ["7", "True", "127.0.0.1:7"]
            .into_iter()
            .find_map(|v| {
                let mut c = base();
                c.apply_set(&format!("{key}={v}")).ok().map(|()| (v, c))
            })
            .unwrap_or_else(|| panic!("--set {key} takes none of the samples"));
        assert_ne!(set, base(), "--set {key}={value} changed nothing");
        let written =
            Config::from_yaml(&yaml_at(key, value), "t").unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            set, written,
            "--set {key}={value} is not the YAML key {key}"
        );
    }
}

#[test]
fn every_defaults_key_is_settable() {
    let yaml = serde_saphyr::to_string(&Defaults::default()).unwrap();
    let names: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect();
    assert_eq!(
        names,
        [
            "requestTimeoutMs",
            "maxConcurrentRequestsPerInstance",
            "maxQueueWaitMs",
            "maxRequestBodyBytes",
            "maxQueueLength",
            "ejectAfterConsecutiveFailures",
            "ejectionBaseMs",
            "ejectionMaxMs",
            "retryBudgetPercent",
        ]
    );
    for n in names {
        let key = format!("defaults.{n}");
        assert!(settable_keys().any(|k| k == key), "{key} is not settable");
    }
}

#[test]
fn set_max_queue_length() {
    let mut c = Config::from_yaml(INSECURE, "t").unwrap();
    assert_eq!(c.defaults.max_queue_length, 1024);
    c.apply_set("defaults.maxQueueLength=7").unwrap();
    c.validate().unwrap();
    assert_eq!(c.defaults.max_queue_length, 7);
    let e = c
        .apply_set("defaults.maxQueueLength=4294967296")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("defaults.maxQueueLength") && e.contains("too large"),
        "{e}"
    );
}

#[test]
fn an_unknown_set_key_names_it_lists_the_keys_and_suggests_the_closest() {
    let mut c = Config::from_yaml("{}", "t").unwrap();
    let e = c
        .apply_set("defaults.maxQueueLenght=7")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`defaults.maxQueueLenght`")
            && e.contains("unknown key")
            && e.contains("did you mean `defaults.maxQueueLength`?")
            && e.contains("listen.admin"),
        "{e}"
    );
    let e = c.apply_set("replicaCount=3").unwrap_err().to_string();
    assert!(
        e.contains("`replicaCount`") && !e.contains("did you mean") && e.contains("drainTimeoutMs"),
        "{e}"
    );
}

#[test]
fn request_settings_override_each_default_and_keep_the_rest() {
    let d = Defaults::default();
    assert_eq!(RequestSettings::default().over(d), d);
    let r: RequestSettings =
        serde_saphyr::from_str("{maxQueueLength: 3, ejectionMaxMs: 9}").unwrap();
    let s = r.over(d);
    assert_eq!((s.max_queue_length, s.ejection_max_ms), (3, 9));
    assert_eq!(
        ResolvedSettings {
            max_queue_length: d.max_queue_length,
            ejection_max_ms: d.ejection_max_ms,
            ..s
        },
        d
    );
    assert!(serde_saphyr::from_str::<RequestSettings>("{maxQueueLen: 3}").is_err());
    assert_eq!(
        serde_saphyr::to_string(&r).unwrap().trim(),
        "maxQueueLength: 3\nejectionMaxMs: 9"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let e = err_text("allowInsecureConnections: true\nbogusKey: 1\n");
    assert!(e.contains("bogusKey"), "{e}");
    let e = err_text(
        "allowInsecureConnections: true\nendpoints: [{name: a, deployments: [{name: d, podz: []}]}]",
    );
    assert!(e.contains("podz"), "{e}");
}

#[test]
fn traffic_rules() {
    let base = |traffic: &str| {
        format!(
            "{INSECURE}endpoints: [{{name: e, traffic: {traffic}, deployments: [{{name: a}}, {{name: b}}]}}]"
        )
    };
    assert_eq!(
        mk(&base("{a: 50, b: 50}")).unwrap().endpoints[0].weights(),
        vec![50, 50]
    );
    assert_eq!(
        mk(&base("{a: 0, b: 0}")).unwrap().endpoints[0].weights(),
        vec![0, 0]
    );
    assert_eq!(
        mk(&base("{a: 100}")).unwrap().endpoints[0].weights(),
        vec![100, 0]
    );
    let e = err_text(&base("{a: 50, b: 40}"));
    assert!(
        e.contains("endpoints[0].traffic") && e.contains("sum to 90") && e.contains("100"),
        "{e}"
    );
    let e = err_text(&base("{a: 50, c: 50}"));
    assert!(
        e.contains("endpoints[0].traffic.c") && e.contains("a, b"),
        "{e}"
    );
    // two deployments and no traffic map: nothing unpinned, all pinned
    let t = format!("{INSECURE}endpoints: [{{name: e, deployments: [{{name: a}}, {{name: b}}]}}]");
    assert_eq!(mk(&t).unwrap().endpoints[0].weights(), vec![0, 0]);
}

#[test]
fn names_paths_and_pods_are_checked() {
    let one = |ep: &str| format!("{INSECURE}endpoints: [{ep}]");
    for bad in ["..", ".", "a/b", "", "-x", "a b", "%2e"] {
        let e = err_text(&one(&format!(
            "{{name: \"{bad}\", deployments: [{{name: d}}]}}"
        )));
        assert!(e.contains("endpoints[0].name"), "{bad}: {e}");
    }
    let e = err_text(&one(
        "{name: e, deployments: [{name: d, pods: [\"nohost\"]}]}",
    ));
    assert!(
        e.contains("endpoints[0].deployments[0].pods[0]")
            && e.contains("nohost")
            && e.contains("IP:PORT"),
        "{e}"
    );
    let e = err_text(&one(
        "{name: e, deployments: [{name: d, scoringPath: score}]}",
    ));
    assert!(e.contains("scoringPath"), "{e}");
    let e = err_text(&one("{name: e, deployments: [{name: d}, {name: d}]}"));
    assert!(e.contains("deployments[1].name"), "{e}");
    let e = err_text(&one("{name: e, deployments: []}"));
    assert!(e.contains("endpoints[0].deployments"), "{e}");
    let e = err_text(&format!(
        "{INSECURE}endpoints: [{{name: e, deployments: [{{name: d}}]}}, {{name: e, deployments: [{{name: d}}]}}]"
    ));
    assert!(e.contains("endpoints[1].name"), "{e}");
    let e = err_text(&one(
        "{name: e, deployments: [{name: d, requestSettings: {maxConcurrentRequestsPerInstance: 0}}]}",
    ));
    assert!(
        e.contains("endpoints[0].deployments[0].requestSettings.maxConcurrentRequestsPerInstance"),
        "{e}"
    );
}

#[test]
fn listen_addresses_are_checked() {
    let e = err_text(&format!("{INSECURE}listen: {{admin: \"localhost\"}}"));
    assert!(
        e.contains("listen.admin") && e.contains("localhost") && e.contains("IP:PORT"),
        "{e}"
    );
}

#[test]
fn load_reads_file_and_names_missing_one() {
    let e = Config::load(Path::new("/nonexistent/cfg.yaml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/cfg.yaml"), "{e}");
}

#[test]
fn admission_settings_and_mirror_are_checked() {
    let one = |extra: &str| {
        format!(
            "{INSECURE}endpoints: [{{name: e, deployments: [{{name: a}}, {{name: b}}]{extra}}}]"
        )
    };
    let c = mk(&one(", mirror: {deployment: b, percent: 10}")).unwrap();
    let m = c.endpoints[0].mirror.as_ref().unwrap();
    assert_eq!((m.percent, m.max_body_bytes), (10, 1_048_576));
    let e = err_text(&one(", mirror: {deployment: c, percent: 10}"));
    assert!(
        e.contains("endpoints[0].mirror.deployment") && e.contains("`c`"),
        "{e}"
    );
    let e = err_text(&one(", mirror: {deployment: b, percent: 101}"));
    assert!(e.contains("endpoints[0].mirror.percent"), "{e}");
    let e = err_text(&format!(
        "{INSECURE}defaults: {{ejectionBaseMs: 10, ejectionMaxMs: 5}}"
    ));
    assert!(
        e.contains("defaults.ejectionBaseMs") && e.contains("ejectionMaxMs"),
        "{e}"
    );
    let e = err_text(&format!("{INSECURE}defaults: {{retryBudgetPercent: 150}}"));
    assert!(
        e.contains("defaults.retryBudgetPercent") && e.contains("150"),
        "{e}"
    );
    let c = mk(&format!("{INSECURE}defaults: {{maxQueueLength: 0}}\nendpoints: [{{name: e, deployments: [{{name: a, requestSettings: {{retryBudgetPercent: 0}}}}]}}]")).unwrap();
    let s = c.resolved_settings(&c.endpoints[0].deployments[0]);
    assert_eq!(
        (
            s.max_queue_length,
            s.retry_budget_percent,
            s.eject_after_consecutive_failures
        ),
        (0, 0, 5)
    );
}

#[test]
fn limits_have_edge_defaults_and_name_the_key_value_and_fix() {
    let c = mk(INSECURE).unwrap();
    let l = c.limits;
    assert_eq!(
        (l.header_read_timeout_ms, l.idle_timeout_ms),
        (30_000, 60_000)
    );
    assert_eq!(
        (l.max_connections, l.max_connections_per_client),
        (10_000, 5_000)
    );
    assert_eq!(
        (l.max_request_header_bytes, l.max_request_headers),
        (65_536, 100)
    );
    assert_eq!(
        (
            l.http2_max_concurrent_streams,
            l.http2_initial_stream_window_bytes,
            l.http2_initial_connection_window_bytes
        ),
        (100, 65_536, 1_048_576)
    );
    assert_eq!(
        (l.http2_keepalive_interval_ms, l.http2_keepalive_timeout_ms),
        (60_000, 20_000)
    );
    let c = mk(&format!(
        "{INSECURE}limits: {{idleTimeoutMs: 300, maxConnectionsPerClient: 0, http2KeepaliveIntervalMs: 0}}"
    ))
    .unwrap();
    assert_eq!(c.limits.idle_timeout_ms, 300);
    assert_eq!(
        c.limits.header_read_timeout_ms, 30_000,
        "others keep their default"
    );
    for (yaml, key, value) in [
        (
            "headerReadTimeoutMs: 0",
            "limits.headerReadTimeoutMs",
            "`0`",
        ),
        ("idleTimeoutMs: 0", "limits.idleTimeoutMs", "`0`"),
        ("maxConnections: 0", "limits.maxConnections", "`0`"),
        (
            "maxRequestHeaderBytes: 100",
            "limits.maxRequestHeaderBytes",
            "`100`",
        ),
        ("maxRequestHeaders: 0", "limits.maxRequestHeaders", "`0`"),
        (
            "http2MaxConcurrentStreams: 0",
            "limits.http2MaxConcurrentStreams",
            "`0`",
        ),
        (
            "http2InitialStreamWindowBytes: 1000",
            "limits.http2InitialStreamWindowBytes",
            "`1000`",
        ),
        (
            "http2InitialConnectionWindowBytes: 4294967295",
            "limits.http2InitialConnectionWindowBytes",
            "`4294967295`",
        ),
        (
            "http2KeepaliveTimeoutMs: 0",
            "limits.http2KeepaliveTimeoutMs",
            "`0`",
        ),
    ] {
        let e = err_text(&format!("{INSECURE}limits: {{{yaml}}}"));
        assert!(
            e.contains(key) && e.contains(value) && e.contains("fix: use"),
            "{yaml}: {e}"
        );
    }
    // Without PINGs their timeout is not checked.
    mk(&format!(
        "{INSECURE}limits: {{http2KeepaliveIntervalMs: 0, http2KeepaliveTimeoutMs: 0}}"
    ))
    .unwrap();
    let e = err_text(&format!("{INSECURE}limits: {{maxConection: 5}}"));
    assert!(e.contains("maxConection"), "{e}");
    let mut c = mk(INSECURE).unwrap();
    c.apply_set("limits.maxConnections=50000").unwrap();
    assert_eq!(c.limits.max_connections, 50_000);
}

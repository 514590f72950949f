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
    assert_eq!(c.defaults.stream_idle_timeout_ms, 60_000);
    assert_eq!(c.defaults.max_stream_duration_ms, 3_600_000);
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
        // The first sample the key's type takes: a number, a boolean, an address or a choice.
        let (value, set) = ["7", "True", "127.0.0.1:7", "allow"]
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
            "streamIdleTimeoutMs",
            "maxStreamDurationMs",
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
    let e = err_text(&format!(
        "{INSECURE}endpoints: [{{name: e, deployments: [{{name: a, requestSettings: {{requestTimeoutMs: 9000, maxStreamDurationMs: 8000}}}}]}}]"
    ));
    assert!(
        e.contains("endpoints[0].deployments[0].requestSettings.maxStreamDurationMs")
            && e.contains("`8000`")
            && e.contains("requestTimeoutMs (9000)"),
        "{e}"
    );
    // 0 turns either stream timer off.
    let c = mk(&format!(
        "{INSECURE}defaults: {{streamIdleTimeoutMs: 0, maxStreamDurationMs: 0}}"
    ))
    .unwrap();
    assert_eq!(
        (
            c.defaults.stream_idle_timeout_ms,
            c.defaults.max_stream_duration_ms
        ),
        (0, 0)
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
fn set_defaults_max_queue_length_is_accepted() {
    // `--set defaults.maxQueueLength` is listed as settable and is accepted: every `defaults.*`
    // and `requestSettingsCeilings.*` key comes from the one field list of the request settings.
    let mut c = Config::from_yaml(INSECURE, "t").unwrap();
    c.apply_set("defaults.maxQueueLength=2048").unwrap();
    c.validate().unwrap();
    assert_eq!(c.defaults.max_queue_length, 2048);
    let keys: Vec<&str> = settable_keys().collect();
    assert!(keys.contains(&"defaults.maxQueueLength"), "{keys:?}");
    assert!(
        keys.contains(&"requestSettingsCeilings.maxQueueLength"),
        "{keys:?}"
    );
}

/// One static endpoint whose deployment has these `requestSettings`.
fn with_overrides(settings: &str) -> String {
    format!(
        "{INSECURE}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments:\n      - name: d\n        requestSettings: {settings}\n"
    )
}

#[test]
fn every_request_setting_has_a_ceiling_above_its_default() {
    let (d, c) = (Defaults::default(), RequestSettingsCeilings::default());
    let yaml = serde_saphyr::to_string(&d).unwrap();
    let names: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect();
    let entries = c.entries();
    assert_eq!(
        entries.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        names,
        "one ceiling per setting, same keys and order"
    );
    // The defaults are within the default ceilings, and every ceiling is settable.
    c.check_defaults("defaults", &d).unwrap();
    for (k, _) in entries {
        let key = format!("requestSettingsCeilings.{k}");
        assert!(settable_keys().any(|s| s == key), "{key} is not settable");
    }
}

#[test]
fn request_settings_above_their_ceiling_are_refused() {
    // 2^64 - 1 in a deployment's overrides: refused, naming the key, the value and the ceiling.
    let e = err_text(&with_overrides("{requestTimeoutMs: 18446744073709551615}"));
    assert!(
        e.contains("endpoints[0].deployments[0].requestSettings.requestTimeoutMs")
            && e.contains("18446744073709551615")
            && e.contains("ceiling of 600000")
            && e.contains("requestSettingsCeilings.requestTimeoutMs"),
        "{e}"
    );
    let e = err_text(&with_overrides("{maxQueueLength: 4294967295}"));
    assert!(
        e.contains("requestSettings.maxQueueLength") && e.contains("100000"),
        "{e}"
    );
    // At the ceiling: fine. A raised ceiling lets it through.
    mk(&with_overrides(
        "{ejectionMaxMs: 3600000, ejectionBaseMs: 3600000}",
    ))
    .unwrap();
    let e = err_text(&with_overrides("{ejectionMaxMs: 3600001}"));
    assert!(e.contains("ejectionMaxMs"), "{e}");
    mk(&format!(
        "requestSettingsCeilings: {{ejectionMaxMs: 7200000}}\n{}",
        with_overrides("{ejectionMaxMs: 3600001}")
    ))
    .unwrap();
    // `defaults` above a ceiling: the fix names both keys.
    let e = err_text(&format!(
        "{INSECURE}defaults: {{maxRequestBodyBytes: 2000000000}}\n"
    ));
    assert!(
        e.contains("defaults.maxRequestBodyBytes")
            && e.contains("requestSettingsCeilings.maxRequestBodyBytes"),
        "{e}"
    );
    // Unknown ceiling keys are errors too.
    let e = err_text(&format!(
        "{INSECURE}requestSettingsCeilings: {{bogus: 1}}\n"
    ));
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn an_override_of_0_may_not_switch_the_stream_timers_off() {
    // 0 turns a stream timer off: in a deployment's overrides (which tenants write in an
    // InferenceEndpoint) that would lift the router's ceiling, so it is refused, naming the key.
    for key in ["streamIdleTimeoutMs", "maxStreamDurationMs"] {
        let e = err_text(&with_overrides(&format!("{{{key}: 0}}")));
        assert!(
            e.contains(&format!("requestSettings.{key}"))
                && e.contains("0 turns the timer off")
                && e.contains(&format!("requestSettingsCeilings.{key}")),
            "{e}"
        );
    }
    // The operator's own `defaults` may switch them off.
    let c = mk(&format!(
        "{INSECURE}defaults: {{streamIdleTimeoutMs: 0, maxStreamDurationMs: 0}}\n"
    ))
    .unwrap();
    assert_eq!(c.defaults.stream_idle_timeout_ms, 0);
    // Within the ceiling: fine; above: refused.
    mk(&with_overrides("{streamIdleTimeoutMs: 3600000}")).unwrap();
    let e = err_text(&with_overrides("{maxStreamDurationMs: 86400001}"));
    assert!(e.contains("ceiling of 86400000"), "{e}");
}

#[test]
fn edge_keys_are_checked() {
    let c = mk(INSECURE).unwrap();
    assert_eq!(c.xff_trusted_hops, 0);
    assert_eq!(c.headers_with_underscores, HeadersWithUnderscores::Reject);
    assert_eq!(c.max_token_lifetime_seconds, 86_400);
    let c = mk(&format!(
        "{INSECURE}xffTrustedHops: 2\nheadersWithUnderscores: drop\nmaxTokenLifetimeSeconds: 3600\n"
    ))
    .unwrap();
    assert_eq!(
        (
            c.xff_trusted_hops,
            c.headers_with_underscores,
            c.max_token_lifetime_seconds
        ),
        (2, HeadersWithUnderscores::Drop, 3600)
    );
    let e = err_text(&format!("{INSECURE}xffTrustedHops: 17\n"));
    assert!(e.contains("xffTrustedHops") && e.contains("fix:"), "{e}");
    let e = err_text(&format!("{INSECURE}maxTokenLifetimeSeconds: 0\n"));
    assert!(e.contains("maxTokenLifetimeSeconds"), "{e}");
    let e = err_text(&format!("{INSECURE}headersWithUnderscores: maybe\n"));
    assert!(e.contains("maybe") && e.contains("reject"), "{e}");
    let mut c = mk(INSECURE).unwrap();
    let e = c
        .apply_set("headersWithUnderscores=sometimes")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("headersWithUnderscores") && e.contains("reject, drop, allow"),
        "{e}"
    );
    // Defaults are not written when a configuration is serialized (rendered configs unchanged).
    let yaml = serde_saphyr::to_string(&c).unwrap();
    for k in [
        "xffTrustedHops",
        "headersWithUnderscores",
        "maxTokenLifetimeSeconds",
        "requestSettingsCeilings",
        "passAuthorization",
    ] {
        assert!(!yaml.contains(k), "{k} in {yaml}");
    }
}

// === property tests (fuzzing; `PROPTEST_CASES=100000 cargo test -p infergate-config fuzz`) ===

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const KEYS: [&str; 9] = [
        "requestTimeoutMs",
        "maxConcurrentRequestsPerInstance",
        "maxQueueWaitMs",
        "maxRequestBodyBytes",
        "maxQueueLength",
        "ejectAfterConsecutiveFailures",
        "ejectionBaseMs",
        "ejectionMaxMs",
        "retryBudgetPercent",
    ];

    /// Numbers a tenant or an operator might write, the extremes among them.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..2_000_000).prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            Just(u32::MAX.to_string()),
            Just("18446744073709551616".to_string()),
            Just("-1".to_string()),
            Just("1.5".to_string()),
            Just("\"10\"".to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
        ]
    }

    /// `{key: value, ...}` of request settings, a key misspelt now and then.
    fn settings() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            (
                prop_oneof![
                    9 => prop::sample::select(KEYS.to_vec()).prop_map(String::from),
                    1 => "[a-zA-Z]{1,12}",
                ],
                number(),
            ),
            0..5,
        )
        .prop_map(|kv| {
            let items: Vec<String> = kv.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", items.join(", "))
        })
    }

    /// Whether `e` names a key: a config-key error with a non-empty dotted key, or a parse
    /// error (the parser's message names line and column, and the field it rejects).
    fn names_a_key(e: &ConfigError) -> bool {
        match e {
            ConfigError::Invalid { key, fix, .. } => !key.is_empty() && !fix.is_empty(),
            ConfigError::Parse { message, .. } => message.contains("line"),
            ConfigError::Read { .. } => false,
        }
    }

    proptest! {
        // 256 cases by default (as `./test.sh` runs them); PROPTEST_CASES sets more.
        #[test]
        fn every_accepted_setting_is_within_its_ceiling_and_every_refusal_names_a_key(
            defaults in settings(),
            ceilings in settings(),
            overrides in settings(),
        ) {
            let yaml = format!(
                "{INSECURE}defaults: {defaults}\nrequestSettingsCeilings: {ceilings}\n\
                 endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments:\n\
                 \x20     - name: d\n        requestSettings: {overrides}\n"
            );
            match mk(&yaml) {
                Ok(c) => {
                    let limits = c.request_settings_ceilings.entries();
                    let s = c.resolved_settings(&c.endpoints[0].deployments[0]);
                    let values = s.entries();
                    for ((k, v), (_, max)) in values.iter().zip(&limits) {
                        prop_assert!(v <= max, "{k} = {v} above {max}\n{yaml}");
                    }
                }
                Err(e) => prop_assert!(names_a_key(&e), "{e}\n{yaml}"),
            }
        }

        #[test]
        fn any_text_is_parsed_or_refused_without_a_panic(text in "\\PC{0,200}") {
            if let Err(e) = mk(&text) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn a_damaged_configuration_is_refused_naming_a_key(
            at in any::<prop::sample::Index>(),
            cut in 0usize..8,
            insert in "[ -~\\n]{0,6}",
        ) {
            // The README's full example with a few bytes replaced.
            let mut text = FULL.replace("Cargo.toml", "/dev/null");
            let i = at.index(text.len());
            let end = (i + cut).min(text.len());
            if text.is_char_boundary(i) && text.is_char_boundary(end) {
                text.replace_range(i..end, &insert);
            }
            if let Err(e) = mk(&text) {
                prop_assert!(names_a_key(&e), "{e}");
            }
        }
    }
}

#[test]
fn tracing_section_parses_and_bad_values_name_the_key() {
    let base = "allowInsecureConnections: true\n";
    let yaml = format!(
        "{base}tracing:\n  samplingRatio: 0.25\n  otlp: {{endpoint: \"http://otel:4317\", protocol: grpc, headers: {{x-api-key: s3cret}}}}\n"
    );
    let c = mk(&yaml).unwrap();
    let t = c.tracing.unwrap();
    assert_eq!(t.sampling_ratio, 0.25);
    let o = t.otlp.unwrap();
    assert_eq!(o.protocol, crate::OtlpProtocol::Grpc);
    assert_eq!(o.max_queue_size, 2048);
    assert_eq!(mk(base).unwrap().tracing, None);
    let d = mk(&format!("{base}tracing: {{}}\n"))
        .unwrap()
        .tracing
        .unwrap();
    assert_eq!((d.sampling_ratio, d.otlp), (1.0, None));
    for (yaml, key) in [
        ("{samplingRatio: 1.5}", "tracing.samplingRatio"),
        ("{otlp: {endpoint: \"otel:4318\"}}", "tracing.otlp.endpoint"),
        (
            "{otlp: {endpoint: \"https://otel:4318\"}}",
            "tracing.otlp.endpoint",
        ),
        (
            "{otlp: {endpoint: \"http://o:1\", headers: {\"a b\": c}}}",
            "tracing.otlp.headers.a b",
        ),
        (
            "{otlp: {endpoint: \"http://o:1\", maxQueueSize: 0}}",
            "tracing.otlp.maxQueueSize",
        ),
        (
            "{otlp: {endpoint: \"http://o:1\", exportTimeoutMs: 0}}",
            "tracing.otlp.exportTimeoutMs",
        ),
        ("{samplingRatio: -0.1}", "tracing.samplingRatio"),
    ] {
        let e = err_text(&format!("{base}tracing: {yaml}\n"));
        assert!(e.contains(&format!("`{key}`")), "{yaml}: {e}");
    }
    // A bad endpoint: the key, the value, what is wrong and the fix.
    for (url, problem) in [
        ("otel:4318", "not an http:// URL"),
        ("https://otel:4318", "https is not supported"),
        ("http://", "no host"),
        ("http://otel:43x8", "`43x8` is not a port"),
        ("http://otel:0", "`0` is not a port"),
        ("http://ot el:4318", "is not a host name"),
        ("http://[::1:4318", "closing `]`"),
        ("http://[zz]:4318", "not an IPv6 address"),
        ("http://otel:4318/v1?x=1", "a query"),
    ] {
        let e = err_text(&format!(
            "{base}tracing: {{otlp: {{endpoint: \"{url}\"}}}}\n"
        ));
        assert!(
            e.contains("`tracing.otlp.endpoint`") && e.contains(url) && e.contains(problem),
            "{url}: {e}"
        );
        assert!(e.contains("fix: use the collector's base URL"), "{e}");
    }
    for url in [
        "http://otel-collector.monitoring:4318",
        "http://10.0.0.1:4317/",
        "http://[::1]:4318/otlp",
        "http://localhost",
    ] {
        mk(&format!(
            "{base}tracing: {{otlp: {{endpoint: \"{url}\"}}}}\n"
        ))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    assert!(
        err_text(&format!(
            "{base}tracing: {{otlp: {{endpoint: \"http://o:1\", protocol: http}}}}\n"
        ))
        .contains("http/protobuf")
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

#[test]
fn deployment_protocols_and_grpc_keys_are_checked_in_place() {
    let dep = |extra: &str| {
        format!(
            "allowInsecureConnections: true\nendpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments:\n      - {{name: d, pods: [\"127.0.0.1:5001\"]{extra}}}\n"
        )
    };
    let c = mk(&dep(", protocol: h2c")).unwrap();
    assert_eq!(
        c.endpoints[0].deployments[0].protocol,
        UpstreamProtocol::H2c
    );
    assert_eq!(
        mk(&dep("")).unwrap().endpoints[0].deployments[0].protocol,
        UpstreamProtocol::Http1
    );
    let e = err_text(&dep(", protocol: http2"));
    assert!(e.contains("http2") && e.contains("http1, h2c, h2"), "{e}");
    let e = err_text(&dep(", protocol: h2"));
    assert!(
        e.contains("`endpoints[0].deployments[0].upstreamTls`"),
        "{e}"
    );
    let e = err_text(&dep(
        ", protocol: h2, upstreamTls: {caPemFile: /nonexistent.pem}",
    ));
    assert!(
        e.contains("`endpoints[0].deployments[0].upstreamTls.caPemFile`")
            && e.contains("/nonexistent.pem"),
        "{e}"
    );
    let e = err_text(&dep(", upstreamTls: {caPemFile: x.pem}"));
    assert!(e.contains("applies only to protocol h2"), "{e}");
    let e = err_text(&dep(
        ", protocol: h2, upstreamTls: {caPemFile: x.pem, sni: y}",
    ));
    assert!(e.contains("sni"), "{e}");
    // Defaults are not written out.
    let text = serde_saphyr::to_string(&mk(&dep("")).unwrap()).unwrap();
    assert!(
        !text.contains("protocol") && !text.contains("grpc"),
        "{text}"
    );

    let with_grpc = |g: &str| format!("{}grpc: {g}\n", dep(", protocol: h2c"));
    let c = mk(&with_grpc("{hostSuffix: models.example.com}")).unwrap();
    assert_eq!(
        c.grpc.unwrap().host_suffix.as_deref(),
        Some("models.example.com")
    );
    let e = err_text(&with_grpc("{hostSuffix: \"*.example.com\"}"));
    assert!(e.contains("`grpc.hostSuffix`"), "{e}");
}

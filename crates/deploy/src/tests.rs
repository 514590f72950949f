//! Unit tests: every key's validation message, each exposure mode's Service, HA, security, drain.

use serde_json::Value;

use super::*;

const CERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../certs-example/server.pem"
);
const KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../certs-example/server-key.pem"
);
const CA_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../certs-example/ca-key.pem"
);

const BOOL_KEYS: &[&str] = &[
    "enableInference",
    "enableTraining",
    "allowInsecureConnections",
    "privateEndpointILB",
    "privateEndpointNodeport",
    "inferenceLoadBalancerHA",
    "inferenceRouterHA",
    "openshift",
    "installNvidiaDevicePlugin",
    "logAnalyticsWS",
];

// === builders ===

fn mk_args(config: &[&str]) -> RenderArgs {
    RenderArgs {
        config: config.iter().map(|s| s.to_string()).collect(),
        config_protected: vec![
            format!("sslCertPemFile={CERT}"),
            format!("sslKeyPemFile={KEY}"),
        ],
        ..RenderArgs::default()
    }
}

fn mk_insecure(config: &[&str]) -> RenderArgs {
    let mut config = config.to_vec();
    config.push("allowInsecureConnections=True");
    RenderArgs {
        config_protected: Vec::new(),
        ..mk_args(&config)
    }
}

fn ok(args: &RenderArgs) -> Rendered {
    render(args).unwrap_or_else(|e| panic!("render failed: {e}"))
}

fn err(args: &RenderArgs) -> String {
    match render(args) {
        Ok(_) => panic!("render of {args:?} succeeded; expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message does not mention {p:?}:\n{msg}");
    }
}

fn docs(r: &Rendered) -> Vec<Value> {
    r.documents
        .iter()
        .map(|(f, y)| {
            serde_saphyr::from_str(y).unwrap_or_else(|e| panic!("{f} is not YAML: {e}\n{y}"))
        })
        .collect()
}

fn kind(r: &Rendered, kind: &str) -> Option<Value> {
    docs(r).into_iter().find(|d| d["kind"] == kind)
}

fn the(r: &Rendered, k: &str) -> Value {
    kind(r, k).unwrap_or_else(|| panic!("no {k} rendered"))
}

fn pod_spec(r: &Rendered) -> Value {
    the(r, "Deployment")["spec"]["template"]["spec"].clone()
}

fn service_ports(r: &Rendered) -> Vec<(u64, String)> {
    the(r, "Service")["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The container port a Service target port name resolves to.
fn container_port(r: &Rendered, name: &str) -> Option<u64> {
    pod_spec(r)["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["containerPort"].as_u64().unwrap())
}

// === validation messages ===

#[test]
fn every_boolean_key_rejects_misspelled_values_naming_key_value_and_spellings() {
    for key in BOOL_KEYS {
        let msg = err(&mk_args(&[&format!("{key}=Ture")]));
        assert_mentions(
            &msg,
            &[key, "`Ture`", "not a boolean", "True, False, true or false"],
        );
    }
    for spelling in ["True", "true"] {
        ok(&mk_args(&[&format!("openshift={spelling}")]));
    }
    for spelling in ["False", "false"] {
        ok(&mk_args(&[&format!("openshift={spelling}")]));
    }
    let msg = err(&mk_args(&["openshift=TRUE"]));
    assert_mentions(&msg, &["openshift", "`TRUE`", "did you mean `True`?"]);
    // The seed doc's own typo.
    let msg = err(&mk_args(&["allowInsecureConnections=Ture"]));
    assert_mentions(&msg, &["did you mean `True`?"]);
    let msg = err(&mk_args(&["openshift=1"]));
    assert!(!msg.contains("did you mean"), "{msg}");
}

#[test]
fn enable_inference_false_is_an_error_that_says_why() {
    let msg = err(&mk_args(&["enableInference=False"]));
    assert_mentions(
        &msg,
        &[
            "enableInference",
            "`False`",
            "inference router",
            "set enableInference=True",
        ],
    );
    ok(&mk_args(&["enableInference=True"]));
    ok(&mk_args(&[])); // True is implied
}

#[test]
fn enable_training_true_is_an_error_that_says_why() {
    let msg = err(&mk_args(&["enableTraining=True"]));
    assert_mentions(
        &msg,
        &[
            "enableTraining",
            "`True`",
            "training is not infergate's job",
            "drop enableTraining",
        ],
    );
    ok(&mk_args(&["enableTraining=False", "enableInference=True"]));
}

#[test]
fn tls_is_required_unless_insecure_connections_are_allowed() {
    let args = RenderArgs {
        config: vec!["enableInference=True".into()],
        ..RenderArgs::default()
    };
    let msg = err(&args);
    assert_mentions(
        &msg,
        &[
            "sslCertPemFile",
            "sslKeyPemFile",
            "(not set)",
            "allowInsecureConnections=True",
            "--config-protected",
        ],
    );
    ok(&mk_insecure(&[]));
}

#[test]
fn allow_insecure_connections_false_with_certs_serves_https_only() {
    let r = ok(&mk_args(&["allowInsecureConnections=False"]));
    assert_eq!(service_ports(&r), vec![(443, "https".to_string())]);
}

#[test]
fn half_a_tls_pair_names_the_missing_key() {
    let mut args = mk_args(&[]);
    args.config_protected = vec![format!("sslCertPemFile={CERT}")];
    assert_mentions(
        &err(&args),
        &[
            "sslKeyPemFile",
            "(not set)",
            "sslCertPemFile is set",
            "add --config-protected sslKeyPemFile=",
        ],
    );
    args.config_protected = vec![format!("sslKeyPemFile={KEY}")];
    assert_mentions(
        &err(&args),
        &[
            "sslCertPemFile",
            "(not set)",
            "sslKeyPemFile is set",
            "add --config-protected sslCertPemFile=",
        ],
    );
    args.config_protected = vec!["sslKeyPemFile=".into(), format!("sslCertPemFile={CERT}")];
    assert_mentions(&err(&args), &["sslKeyPemFile", "the path is empty"]);
}

#[test]
fn unreadable_or_mismatched_tls_files_are_errors_naming_the_files() {
    let mut args = mk_args(&[]);
    args.config_protected = vec![
        "sslCertPemFile=/nonexistent/cert.pem".into(),
        format!("sslKeyPemFile={KEY}"),
    ];
    assert_mentions(
        &err(&args),
        &["sslCertPemFile", "/nonexistent/cert.pem", "sslKeyPemFile"],
    );
    // The CA's key does not match the server certificate.
    args.config_protected = vec![
        format!("sslCertPemFile={CERT}"),
        format!("sslKeyPemFile={CA_KEY}"),
    ];
    let e = render(&args).unwrap_err();
    assert!(matches!(e, RenderError::Tls { .. }), "{e}");
    assert_mentions(
        &e.to_string(),
        &["sslCertPemFile", "sslKeyPemFile", "ca-key.pem"],
    );
}

#[test]
fn protected_keys_in_plain_config_are_accepted_with_a_warning() {
    let args = RenderArgs {
        config: vec![
            format!("sslCertPemFile={CERT}"),
            format!("sslKeyPemFile={KEY}"),
        ],
        ..RenderArgs::default()
    };
    let r = ok(&args);
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    for (w, key) in r.warnings.iter().zip(["sslCertPemFile", "sslKeyPemFile"]) {
        assert_mentions(w, &[key, "--config-protected"]);
    }
    assert!(ok(&mk_args(&[])).warnings.is_empty());
}

#[test]
fn ilb_and_nodeport_are_exclusive() {
    let msg = err(&mk_args(&[
        "privateEndpointILB=True",
        "privateEndpointNodeport=True",
    ]));
    assert_mentions(
        &msg,
        &[
            "privateEndpointNodeport",
            "`True`",
            "privateEndpointILB=True",
            "keep only one",
        ],
    );
    ok(&mk_args(&[
        "privateEndpointILB=True",
        "privateEndpointNodeport=False",
    ]));
}

#[test]
fn ha_alias_is_accepted_and_must_agree() {
    assert_eq!(
        the(&ok(&mk_args(&["inferenceRouterHA=False"])), "Deployment")["spec"]["replicas"],
        1
    );
    ok(&mk_args(&[
        "inferenceLoadBalancerHA=False",
        "inferenceRouterHA=false",
    ]));
    let msg = err(&mk_args(&[
        "inferenceLoadBalancerHA=True",
        "inferenceRouterHA=False",
    ]));
    assert_mentions(
        &msg,
        &[
            "inferenceRouterHA",
            "`False`",
            "inferenceLoadBalancerHA=True",
            "give only one",
        ],
    );
}

#[test]
fn keys_without_effect_are_accepted_with_a_warning() {
    for key in ["installNvidiaDevicePlugin", "logAnalyticsWS"] {
        let r = ok(&mk_args(&[&format!("{key}=True")]));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert_mentions(&r.warnings[0], &[key, "no effect", "AzureML extension"]);
    }
}

#[test]
fn openshift_key_validates_and_switches_the_security_model() {
    assert!(
        kind(
            &ok(&mk_args(&["openshift=False"])),
            "SecurityContextConstraints"
        )
        .is_none()
    );
    assert!(
        kind(
            &ok(&mk_args(&["openshift=True"])),
            "SecurityContextConstraints"
        )
        .is_some()
    );
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    // The seed doc's own typo for sslKeyPemFile.
    let e = render(&mk_args(&["ssKeyPMFile=/tmp/key.pem"])).unwrap_err();
    let RenderError::UnknownKey { suggestion, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*suggestion, Some("sslKeyPemFile"));
    assert_mentions(
        &e.to_string(),
        &[
            "`ssKeyPMFile`",
            "/tmp/key.pem",
            "did you mean `sslKeyPemFile`?",
        ],
    );

    for (typo, want) in [
        ("enableinference", "enableInference"),
        ("privateEndpointIlb", "privateEndpointILB"),
        ("privateEndpointNodePort", "privateEndpointNodeport"),
        ("inferenceLoadbalancerHA", "inferenceLoadBalancerHA"),
        ("allowInsecureConnection", "allowInsecureConnections"),
        ("openShift", "openshift"),
    ] {
        assert_eq!(closest_key(typo), Some(want), "{typo}");
        assert_mentions(
            &err(&mk_args(&[&format!("{typo}=True")])),
            &[typo, &format!("did you mean `{want}`?")],
        );
    }
    let msg = err(&mk_args(&["replicaCount=3"]));
    assert_mentions(
        &msg,
        &[
            "`replicaCount`",
            "use one of the known keys",
            "enableInference",
            "openshift",
        ],
    );
    assert!(!msg.contains("did you mean"), "{msg}");
}

#[test]
fn malformed_and_repeated_settings_are_errors() {
    assert_mentions(
        &err(&mk_args(&["enableInference"])),
        &["--config", "`enableInference`", "KEY=VALUE"],
    );
    let msg = err(&mk_args(&["openshift=True", "openshift=False"]));
    assert_mentions(&msg, &["openshift", "`False`", "given twice", "`True`"]);
    ok(&mk_args(&["openshift=True", "openshift=True"]));
}

#[test]
fn service_type_key_and_ilb_provider_are_validated() {
    let msg = err(&mk_args(&["inferenceRouterServiceType=Ingress"]));
    assert_mentions(
        &msg,
        &[
            "inferenceRouterServiceType",
            "`Ingress`",
            "loadBalancer, nodePort or clusterIP",
        ],
    );
    let msg = err(&mk_args(&[
        "inferenceRouterServiceType=clusterIP",
        "privateEndpointILB=True",
    ]));
    assert_mentions(
        &msg,
        &[
            "inferenceRouterServiceType",
            "`clusterIP`",
            "privateEndpointILB=True needs a loadBalancer",
        ],
    );
    let msg = err(&mk_args(&[
        "inferenceRouterServiceType=loadBalancer",
        "privateEndpointNodeport=True",
    ]));
    assert_mentions(&msg, &["privateEndpointNodeport=True needs a nodePort"]);
    let msg = err(&mk_args(&["internalLoadBalancerProvider=aws"]));
    assert_mentions(
        &msg,
        &[
            "internalLoadBalancerProvider",
            "`aws`",
            "internalLoadBalancerProvider=azure",
        ],
    );
}

#[test]
fn names_and_image_are_validated() {
    let mut args = mk_args(&[]);
    args.namespace = "Azure_ML".into();
    assert_mentions(&err(&args), &["--namespace", "`Azure_ML`", "lowercase"]);
    let mut args = mk_args(&[]);
    args.name = "-router".into();
    assert_mentions(&err(&args), &["--name", "`-router`"]);
    let mut args = mk_args(&[]);
    args.image = " ".into();
    assert_mentions(&err(&args), &["--image", "container image"]);
}

// === Services per exposure mode ===

#[test]
fn public_load_balancer_is_the_default() {
    let r = ok(&mk_args(&["enableInference=True"]));
    let svc = the(&r, "Service");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert!(svc["metadata"].get("annotations").is_none(), "{svc}");
    assert_eq!(service_ports(&r), vec![(443, "https".to_string())]);
    assert_eq!(container_port(&r, "https"), Some(u64::from(HTTPS_PORT)));
    assert_eq!(
        ok(&mk_args(&["inferenceRouterServiceType=LoadBalancer"])).document("service.yaml"),
        r.document("service.yaml")
    );
}

#[test]
fn private_endpoint_ilb_is_an_internal_azure_load_balancer() {
    for config in [
        &["privateEndpointILB=True"][..],
        &["internalLoadBalancerProvider=azure"],
    ] {
        let r = ok(&mk_args(config));
        let svc = the(&r, "Service");
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(
            svc["metadata"]["annotations"]["service.beta.kubernetes.io/azure-load-balancer-internal"],
            "true"
        );
        assert_eq!(service_ports(&r), vec![(443, "https".to_string())]);
    }
    // The annotation's value is the string "true", quoted in YAML.
    let y = ok(&mk_args(&["privateEndpointILB=True"]));
    assert!(
        y.document("service.yaml")
            .unwrap()
            .contains("azure-load-balancer-internal: \"true\"")
    );
}

#[test]
fn private_endpoint_nodeport_is_a_nodeport_service() {
    for config in [
        &["privateEndpointNodeport=True"][..],
        &["inferenceRouterServiceType=nodePort"],
    ] {
        let r = ok(&mk_args(config));
        let svc = the(&r, "Service");
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert!(svc["metadata"].get("annotations").is_none());
        // Node ports are left to the cluster to allocate.
        assert!(svc["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(service_ports(&r), vec![(443, "https".to_string())]);
    }
}

#[test]
fn cluster_ip_service_for_an_ingress() {
    let r = ok(&mk_args(&["inferenceRouterServiceType=clusterIP"]));
    let svc = the(&r, "Service");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(svc["metadata"].get("annotations").is_none());
    assert_eq!(service_ports(&r), vec![(443, "https".to_string())]);
}

#[test]
fn insecure_only_serves_port_80_and_renders_no_secret() {
    for (config, ty) in [
        (&[][..], "LoadBalancer"),
        (&["privateEndpointILB=True"], "LoadBalancer"),
        (&["privateEndpointNodeport=True"], "NodePort"),
        (&["inferenceRouterServiceType=ClusterIP"], "ClusterIP"),
    ] {
        let r = ok(&mk_insecure(config));
        assert_eq!(the(&r, "Service")["spec"]["type"], ty);
        assert_eq!(service_ports(&r), vec![(80, "http".to_string())]);
        assert_eq!(container_port(&r, "http"), Some(u64::from(HTTP_PORT)));
        assert_eq!(container_port(&r, "https"), None);
        assert!(
            !docs(&r)
                .iter()
                .any(|d| d["kind"] == "Secret" && d["type"] == "kubernetes.io/tls"),
            "no TLS Secret"
        );
        let spec = pod_spec(&r);
        assert!(!spec.to_string().contains("/etc/infergate/tls"), "{spec}");
        let cfg = router_config(&r);
        assert!(cfg.allow_insecure_connections);
        assert!(cfg.ssl_cert_pem_file.is_none() && cfg.ssl_key_pem_file.is_none());
    }
    let w = ok(&mk_insecure(&[])).warnings;
    assert!(
        w.iter().any(|w| w.contains("plain HTTP to the internet")),
        "{w:?}"
    );
    assert!(
        ok(&mk_insecure(&["privateEndpointILB=True"]))
            .warnings
            .is_empty()
    );
}

#[test]
fn tls_plus_insecure_serves_both_ports() {
    let mut args = mk_args(&["allowInsecureConnections=true", "privateEndpointILB=True"]);
    args.config.push("enableInference=True".into());
    let r = ok(&args);
    assert_eq!(
        service_ports(&r),
        vec![(443, "https".to_string()), (80, "http".to_string())]
    );
    assert_eq!(container_port(&r, "https"), Some(u64::from(HTTPS_PORT)));
    assert_eq!(container_port(&r, "http"), Some(u64::from(HTTP_PORT)));
    assert_eq!(container_port(&r, "admin"), Some(u64::from(ADMIN_PORT)));
}

// === Deployment ===

#[test]
fn ha_runs_three_spread_replicas_with_a_disruption_budget() {
    let r = ok(&mk_args(&[]));
    let d = the(&r, "Deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    let spec = pod_spec(&r);
    let anti =
        &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    let keys: Vec<&str> = spec["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    let pdb = the(&r, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
}

#[test]
fn without_ha_one_replica_and_no_disruption_budget() {
    let r = ok(&mk_args(&["inferenceLoadBalancerHA=False"]));
    assert_eq!(the(&r, "Deployment")["spec"]["replicas"], 1);
    let spec = pod_spec(&r);
    assert!(spec.get("affinity").is_none());
    assert!(spec.get("topologySpreadConstraints").is_none());
    assert!(kind(&r, "PodDisruptionBudget").is_none());
    assert!(r.document("poddisruptionbudget.yaml").is_none());
}

#[test]
fn pods_run_non_root_read_only_without_privilege_escalation() {
    let r = ok(&mk_args(&[]));
    let spec = pod_spec(&r);
    let pod = &spec["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true);
    assert_eq!(pod["runAsUser"], 65532);
    assert_eq!(pod["fsGroup"], 65532);
    assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault");
    let c = &spec["containers"][0]["securityContext"];
    assert_eq!(c["allowPrivilegeEscalation"], false);
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert_eq!(c["runAsNonRoot"], true);
    assert_eq!(c["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["seccompProfile"]["type"], "RuntimeDefault");
    let res = &spec["containers"][0]["resources"];
    assert!(res["requests"]["cpu"].is_string() && res["requests"]["memory"].is_string());
    assert!(res["limits"]["memory"].is_string());
    assert!(kind(&r, "SecurityContextConstraints").is_none());
    // The RoleBindings are discovery's and the autoscaler's Lease one (no SCC grant off
    // OpenShift).
    let bindings: Vec<Value> = docs(&r)
        .iter()
        .filter(|d| d["kind"] == "RoleBinding")
        .map(|d| d["metadata"]["name"].clone())
        .collect();
    assert_eq!(
        bindings,
        [
            serde_json::json!("infergate-azureml-discovery"),
            serde_json::json!("infergate-autoscaler")
        ]
    );
}

#[test]
fn openshift_gets_no_fixed_ids_and_an_scc_granted_by_a_role_binding() {
    let r = ok(&mk_args(&["openshift=True"]));
    let spec = pod_spec(&r);
    let text = spec.to_string();
    for fixed in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert!(!text.contains(fixed), "{fixed} in {text}");
    }
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &spec["containers"][0]["securityContext"];
    assert_eq!(c["allowPrivilegeEscalation"], false);
    assert_eq!(c["readOnlyRootFilesystem"], true);

    let scc = the(&r, "SecurityContextConstraints");
    let scc_name = scc["metadata"]["name"].as_str().unwrap();
    assert_eq!(scc["apiVersion"], "security.openshift.io/v1");
    assert_eq!(scc["runAsUser"]["type"], "MustRunAsRange");
    assert_eq!(scc["allowPrivilegeEscalation"], false);
    assert_eq!(scc["allowPrivilegedContainer"], false);
    assert_eq!(scc["readOnlyRootFilesystem"], true);
    assert!(
        scc["metadata"].get("namespace").is_none(),
        "SCCs are cluster-scoped"
    );
    assert_eq!(
        the(&r, "Deployment")["spec"]["template"]["metadata"]["annotations"]["openshift.io/required-scc"],
        scc_name
    );

    let role = the(&r, "Role");
    assert_eq!(
        role["rules"][0]["resources"][0],
        "securitycontextconstraints"
    );
    assert_eq!(role["rules"][0]["resourceNames"][0], scc_name);
    assert_eq!(role["rules"][0]["verbs"][0], "use");
    let rb = the(&r, "RoleBinding");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(rb["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(rb["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(rb["subjects"][0]["name"], spec["serviceAccountName"]);
    assert_eq!(rb["subjects"][0]["namespace"], "azureml");
}

/// The router config in the ConfigMap, parsed with the router's own parser.
fn router_config(r: &Rendered) -> infergate_config::Config {
    let cm = the(r, "ConfigMap");
    let text = cm["data"]["infergate.yaml"].as_str().unwrap();
    infergate_config::Config::from_yaml(text, "configmap").unwrap()
}

#[test]
fn grace_period_covers_pre_stop_and_drain() {
    let r = ok(&mk_args(&[]));
    let cfg = router_config(&r);
    let spec = pod_spec(&r);
    let pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert_eq!(pre_stop, PRE_STOP_SECONDS);
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 >= pre_stop * 1000 + cfg.drain_timeout_ms,
        "grace {grace}s < preStop {pre_stop}s + drain {}ms",
        cfg.drain_timeout_ms
    );
    assert_eq!(termination_grace_seconds(30_000), 40);
    assert_eq!(termination_grace_seconds(30_001), 41);
}

#[test]
fn config_map_and_mounts_match_the_router_config() {
    let r = ok(&mk_args(&[]));
    let cfg = router_config(&r);
    assert_eq!(
        cfg.ssl_cert_pem_file.as_deref(),
        Some(std::path::Path::new("/etc/infergate/tls/tls.crt"))
    );
    assert_eq!(
        cfg.ssl_key_pem_file.as_deref(),
        Some(std::path::Path::new("/etc/infergate/tls/tls.key"))
    );
    assert!(!cfg.allow_insecure_connections);
    assert!(cfg.endpoints.is_empty());
    let addrs = cfg.listen_addrs().unwrap();
    assert_eq!(addrs.https.unwrap().port(), HTTPS_PORT);
    assert_eq!(addrs.admin.port(), ADMIN_PORT);

    let spec = pod_spec(&r);
    let c = &spec["containers"][0];
    assert_eq!(
        c["args"],
        serde_json::json!(["serve", "--config", CONFIG_PATH])
    );
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/infergate/config"),
            ("tls", TLS_DIR),
            ("cluster", CLUSTER_DIR)
        ]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(
        spec["volumes"][1]["secret"]["secretName"],
        the(&r, "Secret")["metadata"]["name"]
    );
    assert_eq!(
        spec["volumes"][0]["configMap"]["name"],
        the(&r, "ConfigMap")["metadata"]["name"]
    );
}

#[test]
fn secret_holds_the_pem_files() {
    use base64::Engine as _;
    let r = ok(&mk_args(&[]));
    let s = the(&r, "Secret");
    assert_eq!(s["type"], "kubernetes.io/tls");
    let decode = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s["data"][k].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(decode("tls.crt"), std::fs::read(CERT).unwrap());
    assert_eq!(decode("tls.key"), std::fs::read(KEY).unwrap());
}

#[test]
fn namespace_name_and_image_flow_into_every_object() {
    let args = RenderArgs {
        namespace: "ml-serving".into(),
        name: "router".into(),
        image: "registry.example/infergate:dev".into(),
        ..mk_args(&["openshift=True"])
    };
    let r = ok(&args);
    for d in docs(&r) {
        match d["kind"].as_str().unwrap() {
            "Namespace" => assert_eq!(d["metadata"]["name"], "ml-serving"),
            "SecurityContextConstraints" => assert_eq!(d["metadata"]["name"], "router-ml-serving"),
            "CustomResourceDefinition" => {
                assert_eq!(d["metadata"]["name"], "inferenceendpoints.infergate.io")
            }
            "ClusterRole" => assert_eq!(d["metadata"]["name"], "router-ml-serving-discovery"),
            "ClusterRoleBinding" => {
                assert_eq!(d["metadata"]["name"], "router-ml-serving-discovery");
                assert_eq!(d["subjects"][0]["name"], "router");
                assert_eq!(d["subjects"][0]["namespace"], "ml-serving");
            }
            _ => assert_eq!(d["metadata"]["namespace"], "ml-serving", "{d}"),
        }
    }
    assert_eq!(
        pod_spec(&r)["containers"][0]["image"],
        "registry.example/infergate:dev"
    );
    assert_eq!(the(&r, "Deployment")["metadata"]["name"], "router");
    assert_eq!(the(&r, "Secret")["metadata"]["name"], "router-tls");
}

#[test]
fn multi_doc_and_write_dir_hold_every_document() {
    let r = ok(&mk_args(&["openshift=True"]));
    let stream: Vec<Value> = serde_saphyr::from_multiple(&r.to_multi_doc()).unwrap();
    assert_eq!(stream, docs(&r));
    assert_eq!(
        stream[0]["kind"], "Namespace",
        "the namespace is applied first"
    );

    let dir = tempfile::tempdir().unwrap();
    r.write_dir(dir.path()).unwrap();
    for (file, yaml) in &r.documents {
        assert_eq!(
            &std::fs::read_to_string(dir.path().join(file)).unwrap(),
            yaml
        );
    }
    let files: Vec<&str> = r.documents.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        [
            "namespace.yaml",
            "serviceaccount.yaml",
            "securitycontextconstraints.yaml",
            "role.yaml",
            "rolebinding.yaml",
            "crd.yaml",
            "discovery-role-azureml.yaml",
            "discovery-rolebinding-azureml.yaml",
            "autoscaler-role.yaml",
            "autoscaler-rolebinding.yaml",
            "configmap.yaml",
            "secret.yaml",
            "cluster-secret.yaml",
            "service.yaml",
            "peer-service.yaml",
            "networkpolicy.yaml",
            "peer-networkpolicy.yaml",
            "deployment.yaml",
            "poddisruptionbudget.yaml",
        ]
    );
}

// === high availability: the replicas act as one router ===

/// The object of `kind` named `name`.
fn named(r: &Rendered, kind: &str, name: &str) -> Option<Value> {
    docs(r)
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn env_of(r: &Rendered) -> Vec<(String, String)> {
    pod_spec(r)["containers"][0]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_string(),
                        e["valueFrom"]["fieldRef"]["fieldPath"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ha_replicas_find_each_other_through_a_headless_service() {
    let r = ok(&mk_args(&[]));
    let d = the(&r, "Deployment");
    let selector = &d["spec"]["selector"]["matchLabels"];

    let svc = named(&r, "Service", "infergate-peers").expect("the peers' Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], false);
    assert_eq!(&svc["spec"]["selector"], selector);
    assert_eq!(
        svc["spec"]["ports"],
        serde_json::json!([{"name": "peer", "port": 7946, "targetPort": "peer", "protocol": "TCP"}])
    );
    assert!(svc["spec"].get("type").is_none());
    assert_eq!(
        the(&r, "Service")["metadata"]["name"],
        "infergate",
        "the serving Service comes first"
    );
    assert_eq!(container_port(&r, "peer"), Some(u64::from(PEER_PORT)));
    assert_eq!(
        env_of(&r),
        [
            ("POD_IP".to_string(), "status.podIP".to_string()),
            ("POD_NAME".to_string(), "metadata.name".to_string()),
            (
                "POD_NAMESPACE".to_string(),
                "metadata.namespace".to_string()
            )
        ]
    );

    // The router's config: a cluster over that Service, the mounted secret, and it validates.
    let cfg = router_config(&r);
    let c = cfg.cluster.as_ref().expect("a cluster section");
    assert_eq!(c.listen, "0.0.0.0:7946".parse().unwrap());
    assert_eq!(c.listen.port(), PEER_PORT);
    assert!(c.peers.is_empty() && c.advertise.is_none());
    let kube = c.kube.as_ref().unwrap();
    assert_eq!(kube.service, "infergate-peers");
    assert_eq!(
        kube.namespace, None,
        "the pod's own namespace (POD_NAMESPACE)"
    );
    assert_eq!(
        c.secret_file,
        std::path::Path::new(CLUSTER_DIR).join("secret")
    );
    assert_eq!(
        c.on_owner_unreachable,
        infergate_config::PartitionMode::Refuse
    );
    let mut check = cfg.clone();
    check.ssl_cert_pem_file = None;
    check.ssl_key_pem_file = None;
    check.allow_insecure_connections = true;
    check.validate().unwrap();

    // The discovery Role of the router's own namespace (the default inference namespace)
    // already lets the router list and watch the peers' EndpointSlices.
    let role = named(&r, "Role", "infergate-azureml-discovery").unwrap();
    assert_eq!(role["metadata"]["namespace"], "azureml");
    assert!(named(&r, "Role", "infergate-peers").is_none());
    assert!(
        role["rules"].as_array().unwrap().iter().any(|rule| {
            rule["apiGroups"] == serde_json::json!(["discovery.k8s.io"])
                && rule["resources"] == serde_json::json!(["endpointslices"])
                && rule["verbs"] == serde_json::json!(["list", "watch"])
        }),
        "{role}"
    );
}

#[test]
fn ha_peer_secret_is_random_immutable_and_mounted_read_only() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let a = ok(&mk_args(&[]));
    let s = named(&a, "Secret", "infergate-cluster").expect("the peers' Secret");
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["immutable"], true, "re-applying must not change it");
    assert!(
        s["metadata"]["annotations"]["infergate.io/generated"]
            .as_str()
            .unwrap()
            .contains("immutable")
    );
    let data = s["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["secret"]);
    // The file holds base64 text of 32 random bytes.
    let file = b64.decode(data["secret"].as_str().unwrap()).unwrap();
    let text = String::from_utf8(file).unwrap();
    assert_eq!(b64.decode(&text).unwrap().len(), CLUSTER_SECRET_BYTES);
    assert!(text.len() >= infergate_config::MIN_CLUSTER_SECRET_BYTES);

    let b = ok(&mk_args(&[]));
    let other = named(&b, "Secret", "infergate-cluster").unwrap();
    assert_ne!(s["data"], other["data"], "every render makes a new secret");

    let spec = pod_spec(&a);
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == CLUSTER_DIR)
        .cloned()
        .expect("the secret is mounted");
    assert_eq!(mount["readOnly"], true);
    let vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .cloned()
        .unwrap();
    assert_eq!(vol["secret"]["secretName"], "infergate-cluster");
    assert_eq!(vol["secret"]["defaultMode"], 0o440);
}

#[test]
fn ha_network_policy_admits_only_router_pods_to_the_peer_port() {
    let r = ok(&mk_args(&[]));
    let selector = the(&r, "Deployment")["spec"]["selector"]["matchLabels"].clone();
    let np = named(&r, "NetworkPolicy", "infergate-peers").expect("a NetworkPolicy");
    assert_eq!(np["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    // The peer port: from router pods of this namespace only, and nothing else.
    assert_eq!(
        np["spec"]["ingress"],
        serde_json::json!([{
            "from": [{"podSelector": {"matchLabels": selector}}],
            "ports": [{"port": PEER_PORT, "protocol": "TCP"}],
        }])
    );
}

/// The ports of an ingress rule.
fn rule_ports(rule: &Value) -> Vec<u16> {
    rule["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap() as u16)
        .collect()
}

#[test]
fn network_policy_opens_serving_ports_to_all_and_the_admin_port_to_metrics_namespaces() {
    for (args, serving) in [
        (mk_args(&[]), vec![HTTPS_PORT]),
        (mk_insecure(&[]), vec![HTTP_PORT]),
        (
            mk_args(&["allowInsecureConnections=True"]),
            vec![HTTPS_PORT, HTTP_PORT],
        ),
        (
            mk_args(&["inferenceLoadBalancerHA=False"]),
            vec![HTTPS_PORT],
        ),
    ] {
        let r = ok(&args);
        assert!(
            !r.warnings.iter().any(|w| w.contains("Namespaces")),
            "{:?}",
            r.warnings
        );
        let selector = the(&r, "Deployment")["spec"]["selector"]["matchLabels"].clone();
        let np = named(&r, "NetworkPolicy", "infergate").expect("the router's NetworkPolicy");
        assert_eq!(np["spec"]["podSelector"]["matchLabels"], selector);
        assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
        let rules = np["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        // Serving ports: from anywhere (clients, load balancers, the ingress controller).
        assert!(rules[0].get("from").is_none());
        assert_eq!(rule_ports(&rules[0]), serving);
        // The admin port: from the metrics namespace only (probes come from the node).
        assert_eq!(rule_ports(&rules[1]), [ADMIN_PORT]);
        assert_eq!(
            rules[1]["from"],
            serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
        );
        // Every container port is admitted by a rule of one of the policies.
        let mut admitted: Vec<u16> = rules.iter().flat_map(rule_ports).collect();
        if let Some(p) = named(&r, "NetworkPolicy", "infergate-peers") {
            admitted.extend(rule_ports(&p["spec"]["ingress"][0]));
        }
        let mut container: Vec<u16> = pod_spec(&r)["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        admitted.sort_unstable();
        container.sort_unstable();
        assert_eq!(admitted, container, "no container port is left closed");
        // The probes use the admin port.
        let c = &pod_spec(&r)["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    }
}

#[test]
fn metrics_namespaces_choose_who_reaches_the_admin_port() {
    let r = ok(&mk_args(&["metricsNamespaces=monitoring,kube-system"]));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let np = named(&r, "NetworkPolicy", "infergate").unwrap();
    assert_eq!(
        np["spec"]["ingress"][1]["from"],
        serde_json::json!([
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
        ])
    );
    // `*`: every namespace's pods, with a warning.
    let r = ok(&mk_args(&["metricsNamespaces=*"]));
    let np = named(&r, "NetworkPolicy", "infergate").unwrap();
    assert_eq!(
        np["spec"]["ingress"][1]["from"],
        serde_json::json!([{"namespaceSelector": {}}])
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("metricsNamespaces=*") && w.contains("/metrics")),
        "{:?}",
        r.warnings
    );
    for bad in ["", "Monitoring", "a,a", "*,monitoring"] {
        let e = err(&mk_args(&[&format!("metricsNamespaces={bad}")]));
        assert_mentions(&e, &["metricsNamespaces", "fix:"]);
    }
}

#[test]
fn without_ha_no_cluster_objects_port_env_mount_or_config() {
    for args in [
        mk_args(&["inferenceLoadBalancerHA=False"]),
        mk_insecure(&["inferenceRouterHA=False", "openshift=True"]),
    ] {
        let r = ok(&args);
        assert!(named(&r, "Service", "infergate-peers").is_none());
        assert!(named(&r, "Secret", "infergate-cluster").is_none());
        assert!(named(&r, "NetworkPolicy", "infergate-peers").is_none());
        assert!(named(&r, "NetworkPolicy", "infergate").is_some());
        for f in [
            "cluster-secret.yaml",
            "peer-service.yaml",
            "peer-networkpolicy.yaml",
            "peer-role.yaml",
        ] {
            assert!(r.document(f).is_none(), "{f}");
        }
        assert_eq!(container_port(&r, "peer"), None);
        assert_eq!(
            env_of(&r),
            [
                ("POD_NAME".to_string(), "metadata.name".to_string()),
                (
                    "POD_NAMESPACE".to_string(),
                    "metadata.namespace".to_string()
                ),
            ],
            "no POD_IP without HA"
        );
        let spec = pod_spec(&r).to_string();
        assert!(!spec.contains(CLUSTER_DIR), "{spec}");
        assert!(!spec.contains("infergate-cluster"), "{spec}");
        assert!(router_config(&r).cluster.is_none());
    }
}

#[test]
fn ha_names_follow_the_name_flag() {
    let args = RenderArgs {
        namespace: "ml-serving".into(),
        name: "router".into(),
        ..mk_args(&[])
    };
    let r = ok(&args);
    assert!(named(&r, "Service", "router-peers").is_some());
    assert!(named(&r, "NetworkPolicy", "router-peers").is_some());
    assert!(named(&r, "Secret", "router-cluster").is_some());
    let cfg = router_config(&r);
    assert_eq!(cfg.cluster.unwrap().kube.unwrap().service, "router-peers");
    // The longest name still gives a valid Service name for the peers.
    let long = "a".repeat(56);
    let r = ok(&RenderArgs {
        name: long.clone(),
        ..mk_args(&[])
    });
    let peers = format!("{long}-peers");
    assert!(peers.len() <= 63);
    assert!(named(&r, "Service", &peers).is_some());
}

// === placement: nodeSelector.<key> and tolerations ===

#[test]
fn node_selector_keys_become_the_pod_node_selector() {
    let r = ok(&mk_args(&[
        "nodeSelector.gpu=true",
        "nodeSelector.kubernetes.azure.com/accelerator=nvidia",
        "nodeSelector.agentpool=",
    ]));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let spec = pod_spec(&r);
    assert_eq!(
        spec["nodeSelector"],
        serde_json::json!({
            "gpu": "true",
            "kubernetes.azure.com/accelerator": "nvidia",
            "agentpool": "",
        })
    );
    // Only the router pods are placed: no other object carries a nodeSelector.
    for d in docs(&r) {
        if d["kind"] != "Deployment" {
            assert!(!d.to_string().contains("nodeSelector"), "{d}");
        }
    }
    // The same key and value twice (from either flag) is fine; two values are not.
    ok(&mk_args(&[
        "nodeSelector.gpu=true",
        "nodeSelector.gpu=true",
    ]));
    let msg = err(&mk_args(&[
        "nodeSelector.gpu=true",
        "nodeSelector.gpu=false",
    ]));
    assert_mentions(
        &msg,
        &["nodeSelector.gpu", "`false`", "given twice", "`true`"],
    );
}

#[test]
fn without_placement_keys_the_pod_has_no_node_selector_or_tolerations() {
    let spec = pod_spec(&ok(&mk_args(&[])));
    assert!(spec.get("nodeSelector").is_none(), "{spec}");
    assert!(spec.get("tolerations").is_none(), "{spec}");
}

#[test]
fn tolerations_compact_form_becomes_the_pod_tolerations() {
    let r = ok(&mk_args(&[
        "tolerations=sku=gpu:NoSchedule, dedicated:NoExecute,example.com/spot=true:PreferNoSchedule,maintenance",
        "nodeSelector.sku=gpu",
    ]));
    let spec = pod_spec(&r);
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([
            { "key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule" },
            { "key": "dedicated", "operator": "Exists", "effect": "NoExecute" },
            { "key": "example.com/spot", "operator": "Equal", "value": "true", "effect": "PreferNoSchedule" },
            { "key": "maintenance", "operator": "Exists" },
        ])
    );
    assert_eq!(spec["nodeSelector"], serde_json::json!({ "sku": "gpu" }));
    // HA placement (anti-affinity, spread) is kept alongside.
    assert!(spec.get("affinity").is_some());
    assert!(spec.get("topologySpreadConstraints").is_some());
    // The library's view of the same settings.
    let (s, _) = Settings::parse(
        &[
            "tolerations=a:NoExecute".into(),
            "allowInsecureConnections=True".into(),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        s.tolerations,
        vec![Toleration {
            key: "a".into(),
            value: None,
            effect: Some("NoExecute".into())
        }]
    );
}

#[test]
fn empty_node_selector_key_is_an_error_naming_key_value_and_fix() {
    let msg = err(&mk_args(&["nodeSelector.=gpu"]));
    assert_mentions(
        &msg,
        &[
            "`nodeSelector.`",
            "`gpu`",
            "is empty",
            "nodeSelector.<node label key>=<value>",
        ],
    );
    // The bare key, or a misspelled prefix, is an unknown key that shows the right form.
    for bad in [
        "nodeSelector=gpu",
        "nodeselector.gpu=true",
        "NodeSelector.gpu=true",
    ] {
        let e = render(&mk_args(&[bad])).unwrap_err();
        let RenderError::UnknownKey { suggestion, .. } = &e else {
            panic!("{bad}: {e}")
        };
        assert_eq!(*suggestion, Some("nodeSelector.<node label key>"));
        assert_mentions(
            &e.to_string(),
            &[bad.split_once('=').unwrap().0, "nodeSelector.agentpool=gpu"],
        );
    }
}

#[test]
fn node_selector_label_keys_kubernetes_rejects_are_errors() {
    for (bad, why) in [
        (
            "nodeSelector.-gpu=true",
            "begin and end with a letter or digit",
        ),
        ("nodeSelector.gpu type=true", "only letters, digits"),
        ("nodeSelector.Example.COM/gpu=true", "not a DNS subdomain"),
        ("nodeSelector./gpu=true", "prefix before '/'"),
        (
            "nodeSelector.example.com/=true",
            "name (after any prefix/) is empty",
        ),
        ("nodeSelector.a/b/c=true", "only letters, digits"),
    ] {
        let key = bad.split_once('=').unwrap().0;
        assert_mentions(
            &err(&mk_args(&[bad])),
            &[
                &format!("`{key}`"),
                "`true`",
                "not a Kubernetes label key",
                why,
                "nodeSelector.agentpool=gpu",
            ],
        );
    }
    let long = format!("nodeSelector.{}=x", "a".repeat(64));
    assert_mentions(&err(&mk_args(&[&long])), &["64 characters, at most 63"]);
}

#[test]
fn node_selector_label_values_kubernetes_rejects_are_errors() {
    let long = format!("nodeSelector.gpu={}", "v".repeat(64));
    for (bad, value, why) in [
        (
            "nodeSelector.gpu=a100 80gb",
            "a100 80gb",
            "only letters, digits",
        ),
        (
            "nodeSelector.gpu=-a100",
            "-a100",
            "begin and end with a letter or digit",
        ),
        ("nodeSelector.gpu=a/b", "a/b", "only letters, digits"),
        (long.as_str(), &"v".repeat(64), "at most 63"),
    ] {
        assert_mentions(
            &err(&mk_args(&[bad])),
            &[
                "`nodeSelector.gpu`",
                &format!("`{value}`"),
                "not a Kubernetes label value",
                why,
                "value of the node label gpu",
            ],
        );
    }
}

#[test]
fn tolerations_with_an_unknown_effect_are_errors() {
    for (value, effect) in [
        ("sku=gpu:NoSchedul", "NoSchedul"),
        ("sku:noschedule", "noschedule"),
        ("sku=gpu:", ""),
        ("a:NoExecute,b:Evict", "Evict"),
    ] {
        assert_mentions(
            &err(&mk_args(&[&format!("tolerations={value}")])),
            &[
                "`tolerations`",
                &format!("`{value}`"),
                &format!("`{effect}` is not a taint effect"),
                "NoSchedule, PreferNoSchedule or NoExecute",
                "tolerations=KEY[=VALUE][:EFFECT]",
            ],
        );
    }
}

#[test]
fn malformed_tolerations_are_errors_naming_the_entry() {
    for (value, why) in [
        ("", "the list is empty"),
        ("a:NoSchedule,,b", "between commas is empty"),
        ("=gpu:NoSchedule", "the taint key is empty"),
        (":NoSchedule", "the taint key is empty"),
        ("bad key:NoSchedule", "is not a taint key"),
        ("sku=a b:NoSchedule", "is not a taint value"),
        ("sku=gpu=x:NoSchedule", "is not a taint value"),
        ("a:NoSchedule,a:NoSchedule", "given twice"),
    ] {
        assert_mentions(
            &err(&mk_args(&[&format!("tolerations={value}")])),
            &["`tolerations`", why, "tolerations=KEY[=VALUE][:EFFECT]"],
        );
    }
}

// === the autoscaler ===

#[test]
fn the_autoscaler_gets_scale_subresources_hpas_events_and_its_own_lease_only() {
    let r = ok(&mk_args(&[]));
    let rules = named(&r, "Role", "infergate-azureml-discovery").unwrap()["rules"].clone();
    let has = |group: &str, resource: &str, verbs: &[&str]| {
        rules.as_array().unwrap().iter().any(|rule| {
            rule["apiGroups"] == serde_json::json!([group])
                && rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
                && rule["verbs"] == serde_json::json!(verbs)
        })
    };
    assert!(has(
        "apps",
        "deployments/scale",
        &["get", "update", "patch"]
    ));
    assert!(has(
        "apps",
        "statefulsets/scale",
        &["get", "update", "patch"]
    ));
    assert!(has(
        "autoscaling",
        "horizontalpodautoscalers",
        &["list", "watch"]
    ));
    assert!(has("events.k8s.io", "events", &["create"]));
    // Nothing on the workloads themselves.
    let text = rules.to_string();
    assert!(!text.contains("\"deployments\""), "{text}");
    // Leases: a Role in the router's namespace, get/update on its one Lease.
    let role = named(&r, "Role", "infergate-autoscaler").expect("lease role");
    assert_eq!(role["metadata"]["namespace"], DEFAULT_NAMESPACE);
    assert_eq!(
        role["rules"][1]["resourceNames"],
        serde_json::json!(["infergate-autoscaler"])
    );
    assert_eq!(
        role["rules"][1]["verbs"],
        serde_json::json!(["get", "update"])
    );
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["create"]));
    let binding = named(&r, "RoleBinding", "infergate-autoscaler").unwrap();
    assert_eq!(binding["subjects"][0]["name"], "infergate");
}

//! `discovery.kube`: parsing, validation, and its exclusion of static `endpoints`.

use crate::{Config, ConfigError, KubeDiscoveryConfig};

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    let cfg = Config::from_yaml(&format!("allowInsecureConnections: true\n{yaml}"), "<test>")?;
    cfg.validate()?;
    Ok(cfg)
}

fn invalid(yaml: &str) -> (String, String, String) {
    match parse(yaml) {
        Err(ConfigError::Invalid {
            key, value, fix, ..
        }) => (key, value, fix),
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn kube_discovery_parses_with_or_without_namespaces() {
    let cfg = parse("discovery: {kube: {namespaces: [ml, prod]}}\n").unwrap();
    assert_eq!(
        cfg.discovery.kube,
        Some(KubeDiscoveryConfig {
            namespaces: vec!["ml".into(), "prod".into()],
            endpoint_slice_managers: vec!["endpointslice-controller.k8s.io".into()],
        })
    );
    let cfg = parse("discovery: {kube: {}}\n").unwrap();
    assert_eq!(cfg.discovery.kube.unwrap().namespaces, Vec::<String>::new());
    let cfg = parse("").unwrap();
    assert!(cfg.discovery.is_empty());
    // Omitted when empty, so configs without it serialize as before.
    assert!(!serde_saphyr::to_string(&cfg).unwrap().contains("discovery"));
}

#[test]
fn unknown_keys_are_errors() {
    let e = parse("discovery: {kube: {namespace: [ml]}}\n").unwrap_err();
    assert!(e.to_string().contains("namespace"), "{e}");
    let e = parse("discovery: {consul: {}}\n").unwrap_err();
    assert!(e.to_string().contains("consul"), "{e}");
}

#[test]
fn static_endpoints_and_kube_discovery_exclude_each_other() {
    let (key, value, fix) = invalid(
        "discovery: {kube: {}}\nendpoints:\n  - name: e\n    deployments: [{name: d, pods: [\"127.0.0.1:1\"]}]\n",
    );
    assert_eq!(key, "endpoints, discovery.kube");
    assert!(value.contains("1 static endpoint"), "{value}");
    assert!(fix.contains("InferenceEndpoint"), "{fix}");
    // An empty list is no conflict.
    parse("discovery: {kube: {}}\nendpoints: []\n").unwrap();
}

#[test]
fn namespaces_must_be_names_listed_once() {
    let (key, value, _) = invalid("discovery: {kube: {namespaces: [ml, ML_Prod]}}\n");
    assert_eq!(
        (key.as_str(), value.as_str()),
        ("discovery.kube.namespaces[1]", "ML_Prod")
    );
    let (key, _, fix) = invalid("discovery: {kube: {namespaces: [ml, ml]}}\n");
    assert_eq!(key, "discovery.kube.namespaces[1]");
    assert!(fix.contains("once"));
}

#[test]
fn endpoint_slice_managers_default_to_the_controller_and_must_be_label_values() {
    let cfg = parse("discovery: {kube: {}}\n").unwrap();
    assert_eq!(
        cfg.discovery.kube.unwrap().endpoint_slice_managers,
        vec![crate::ENDPOINTSLICE_CONTROLLER.to_string()]
    );
    let cfg = parse(
        "discovery: {kube: {endpointSliceManagers: [endpointslice-controller.k8s.io, my-mesh.example]}}\n",
    )
    .unwrap();
    assert_eq!(cfg.discovery.kube.unwrap().endpoint_slice_managers.len(), 2);
    let (key, value, fix) = invalid("discovery: {kube: {endpointSliceManagers: []}}\n");
    assert_eq!(
        (key.as_str(), value.as_str()),
        ("discovery.kube.endpointSliceManagers", "[]")
    );
    assert!(fix.contains("endpointslice-controller.k8s.io"), "{fix}");
    let (key, value, _) =
        invalid("discovery: {kube: {endpointSliceManagers: [ok, \"bad value\"]}}\n");
    assert_eq!(
        (key.as_str(), value.as_str()),
        ("discovery.kube.endpointSliceManagers[1]", "bad value")
    );
}

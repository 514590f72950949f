//! The committed CRD (`deploy/crds/`) is generated from the Rust type: this fails when they drift.
//!
//! Regenerate: `INFERGATE_BLESS=1 cargo test -p infergate-discovery --test crd`
//! (or `infergate crd > deploy/crds/inferenceendpoints.infergate.io.yaml`).

use std::path::Path;

use kube::CustomResourceExt;

const FILE: &str = "deploy/crds/inferenceendpoints.infergate.io.yaml";

#[test]
fn committed_crd_matches_the_rust_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(FILE);
    let want = infergate_discovery::crd_yaml();
    if std::env::var_os("INFERGATE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{FILE} differs from the InferenceEndpoint type in crates/discovery/src/crd.rs; regenerate with \
         `INFERGATE_BLESS=1 cargo test -p infergate-discovery --test crd`\n--- committed:\n{have}\n--- generated:\n{want}"
    );
}

#[test]
fn the_crd_is_namespaced_v1_with_a_status_subresource() {
    let crd = infergate_discovery::InferenceEndpoint::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("inferenceendpoints.infergate.io")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!((v.name.as_str(), v.served, v.storage), ("v1", true, true));
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let schema = serde_json::to_value(&v.schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["deployments"]));
    let dep = &spec["properties"]["deployments"]["items"];
    assert_eq!(
        dep["properties"]["port"]["x-kubernetes-int-or-string"],
        true
    );
    assert_eq!(
        dep["properties"]["requestSettings"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
}

//! Kubernetes discovery in the manifests: the CRD and exactly the RBAC it needs, rendered and
//! committed (`deploy/crds/`, `deploy/rbac/`).
//!
//! Regenerate `deploy/rbac/`: `INFERGATE_BLESS=1 cargo test -p infergate-deploy --test discovery_rbac`.

use std::path::{Path, PathBuf};

use infergate_deploy::{RenderArgs, namespaced_discovery_rbac, render};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mk_args() -> RenderArgs {
    RenderArgs {
        config: vec![
            "enableInference=True".into(),
            "allowInsecureConnections=True".into(),
        ],
        ..RenderArgs::default()
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

/// The rules as (apiGroup, resource, verbs) triples.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let verbs = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                out.push((
                    g.as_str().unwrap().into(),
                    res.as_str().unwrap().into(),
                    verbs,
                ));
            }
        }
    }
    out.sort();
    out
}

fn exact() -> Vec<(String, String, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut v = vec![
        (
            "infergate.io".into(),
            "inferenceendpoints".into(),
            s(&["list", "watch"]),
        ),
        (
            "infergate.io".into(),
            "inferenceendpoints/status".into(),
            s(&["update", "patch"]),
        ),
        (
            "discovery.k8s.io".into(),
            "endpointslices".into(),
            s(&["list", "watch"]),
        ),
        // For the endpoints' keys (auth.secretName), read by the Secret watch (labelled
        // Secrets only, selected on the API server; never a get by name).
        ("".into(), "secrets".into(), s(&["list", "watch"])),
        // The autoscaler: the scaled workloads' replicas through their scale subresource,
        // HPAs on the same workloads, an Event per scale change.
        (
            "apps".into(),
            "deployments/scale".into(),
            s(&["get", "update", "patch"]),
        ),
        (
            "apps".into(),
            "statefulsets/scale".into(),
            s(&["get", "update", "patch"]),
        ),
        (
            "autoscaling".into(),
            "horizontalpodautoscalers".into(),
            s(&["list", "watch"]),
        ),
        ("events.k8s.io".into(), "events".into(), s(&["create"])),
    ];
    v.sort();
    v
}

fn mk_args_with(extra: &[&str]) -> RenderArgs {
    let mut a = mk_args();
    a.config.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The rendered router's `discovery.kube.namespaces`.
fn watched_namespaces(r: &infergate_deploy::Rendered) -> Vec<String> {
    let cm: Value = serde_saphyr::from_str(r.document("configmap.yaml").unwrap()).unwrap();
    let cfg = infergate_config::Config::from_yaml(
        cm["data"]["infergate.yaml"].as_str().unwrap(),
        "<rendered>",
    )
    .unwrap();
    cfg.discovery.kube.unwrap().namespaces
}

/// Every (kind, namespace) of a Role or ClusterRole whose rules reach `resource`, each with
/// the binding that grants it to the router's ServiceAccount checked.
fn granting(r: &infergate_deploy::Rendered, resource: &str) -> Vec<(String, String)> {
    let all = docs(&r.to_multi_doc());
    let mut out = Vec::new();
    for role in all
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        if !rules(role).iter().any(|(_, res, _)| res == resource) {
            continue;
        }
        let ns = role["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let binding_kind = format!("{}Binding", role["kind"].as_str().unwrap());
        let binding = all
            .iter()
            .find(|b| {
                b["kind"] == binding_kind.as_str()
                    && b["roleRef"]["name"] == role["metadata"]["name"]
                    && b["metadata"]["namespace"] == role["metadata"]["namespace"]
            })
            .unwrap_or_else(|| panic!("no binding for {role}"));
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "infergate", "namespace": "azureml"}])
        );
        out.push((role["kind"].as_str().unwrap().to_string(), ns));
    }
    out.sort();
    out
}

fn pair(kind: &str, ns: &str) -> (String, String) {
    (kind.to_string(), ns.to_string())
}

#[test]
fn render_has_the_crd_and_by_default_a_role_in_its_own_namespace_with_exactly_the_needed_verbs() {
    let r = render(&mk_args()).unwrap();
    let crd: Value = serde_saphyr::from_str(r.document("crd.yaml").unwrap()).unwrap();
    let committed: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("deploy/crds/inferenceendpoints.infergate.io.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(crd, committed);
    let role: Value =
        serde_saphyr::from_str(r.document("discovery-role-azureml.yaml").unwrap()).unwrap();
    assert_eq!(role["kind"], "Role");
    assert_eq!(role["metadata"]["namespace"], "azureml");
    assert_eq!(rules(&role), exact());
    let binding: Value =
        serde_saphyr::from_str(r.document("discovery-rolebinding-azureml.yaml").unwrap()).unwrap();
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert!(r.document("clusterrole.yaml").is_none());
    // The rendered router watches its own namespace, which the Role allows.
    assert_eq!(watched_namespaces(&r), ["azureml"]);
    assert!(
        !r.warnings.iter().any(|w| w.contains("Secrets")),
        "{:?}",
        r.warnings
    );
    // The CRD and the role come before the Deployment that needs them.
    let files: Vec<&str> = r.documents.iter().map(|(f, _)| f.as_str()).collect();
    let at = |f: &str| files.iter().position(|x| *x == f).unwrap();
    assert!(at("crd.yaml") < at("deployment.yaml"));
    assert!(at("discovery-rolebinding-azureml.yaml") < at("deployment.yaml"));
}

#[test]
fn render_grants_secrets_only_in_inference_namespaces() {
    // Default: the router's own namespace, nowhere else.
    let r = render(&mk_args()).unwrap();
    assert_eq!(granting(&r, "secrets"), [pair("Role", "azureml")]);

    // Listed: a Role in each, the router watches exactly those, and no ClusterRole anywhere.
    let r = render(&mk_args_with(&["inferenceNamespaces=models,staging"])).unwrap();
    assert_eq!(
        granting(&r, "secrets"),
        [pair("Role", "models"), pair("Role", "staging")]
    );
    assert_eq!(
        granting(&r, "inferenceendpoints"),
        [pair("Role", "models"), pair("Role", "staging")]
    );
    assert_eq!(watched_namespaces(&r), ["models", "staging"]);
    let all = docs(&r.to_multi_doc());
    assert!(
        !all.iter()
            .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "no cluster-wide grant"
    );
    assert!(
        !r.warnings.iter().any(|w| w.contains("Secrets")),
        "{:?}",
        r.warnings
    );
    // With HA, the peers' EndpointSlices in the router's own namespace get a Role of their own:
    // EndpointSlices only, no Secrets.
    let peer_role: Value = serde_saphyr::from_str(r.document("peer-role.yaml").unwrap()).unwrap();
    assert_eq!(peer_role["metadata"]["namespace"], "azureml");
    assert_eq!(
        rules(&peer_role),
        [(
            "discovery.k8s.io".to_string(),
            "endpointslices".to_string(),
            vec!["list".to_string(), "watch".to_string()]
        )]
    );
    assert_eq!(
        granting(&r, "endpointslices"),
        [
            pair("Role", "azureml"),
            pair("Role", "models"),
            pair("Role", "staging")
        ]
    );
    // Listing the router's own namespace covers the peers: no extra Role.
    let r = render(&mk_args_with(&["inferenceNamespaces=azureml,models"])).unwrap();
    assert!(r.document("peer-role.yaml").is_none());
    assert_eq!(
        granting(&r, "secrets"),
        [pair("Role", "azureml"), pair("Role", "models")]
    );

    // Bad values name the key and the fix.
    for bad in ["", "Models", "models,models", "models,*", "models,,staging"] {
        let e = render(&mk_args_with(&[&format!("inferenceNamespaces={bad}")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inferenceNamespaces") && e.contains("fix:"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn render_cluster_wide_secrets_only_with_star_and_warns() {
    let r = render(&mk_args_with(&["inferenceNamespaces=*"])).unwrap();
    assert_eq!(granting(&r, "secrets"), [pair("ClusterRole", "")]);
    let role: Value = serde_saphyr::from_str(r.document("clusterrole.yaml").unwrap()).unwrap();
    assert_eq!(rules(&role), exact());
    assert_eq!(role["metadata"]["name"], "infergate-azureml-discovery");
    assert_eq!(
        watched_namespaces(&r),
        Vec::<String>::new(),
        "every namespace"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("inferenceNamespaces=*")
                && w.contains("Secrets of every namespace")
                && w.contains("inferenceNamespaces=models,staging")),
        "{:?}",
        r.warnings
    );
    // Never without the star, whatever else is set.
    for extra in [
        &[][..],
        &["inferenceNamespaces=models"][..],
        &["openshift=True", "inferenceLoadBalancerHA=False"][..],
        &["privateEndpointILB=True"][..],
    ] {
        let r = render(&mk_args_with(extra)).unwrap();
        assert!(
            granting(&r, "secrets")
                .iter()
                .all(|(kind, _)| kind == "Role"),
            "{extra:?}"
        );
        assert!(r.document("clusterrole.yaml").is_none(), "{extra:?}");
        assert!(
            !r.warnings.iter().any(|w| w.contains("Secrets of every")),
            "{extra:?}"
        );
    }
}

#[test]
fn committed_namespaced_role_variant_is_generated() {
    let text = namespaced_discovery_rbac(&RenderArgs::default(), "models").unwrap();
    let want = format!(
        "# GENERATED by crates/deploy/tests/discovery_rbac.rs: do not edit.\n\
         # Regenerate: INFERGATE_BLESS=1 cargo test -p infergate-deploy --test discovery_rbac\n\
         #\n\
         # One more inference namespace for a rendered router, without re-rendering: apply a copy\n\
         # per namespace (change both `namespace: models`), and add the namespace to\n\
         # `discovery.kube.namespaces` in the ConfigMap `infergate-config` (`infergate render\n\
         # --config inferenceNamespaces=...` renders the same Roles). It grants list/watch on the\n\
         # namespace's Secrets: the router reads only those labelled infergate.io/auth=true.\n\
         # The ServiceAccount is the router's (`infergate` in `azureml`).\n{text}"
    );
    let path = root().join("deploy/rbac/role-namespaced.yaml");
    if std::env::var_os("INFERGATE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "deploy/rbac/role-namespaced.yaml is out of date; regenerate with \
         `INFERGATE_BLESS=1 cargo test -p infergate-deploy --test discovery_rbac`"
    );
    let d = docs(&have);
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0]["kind"].as_str(), d[1]["kind"].as_str()),
        (Some("Role"), Some("RoleBinding"))
    );
    assert_eq!(d[0]["metadata"]["namespace"], "models");
    assert_eq!(rules(&d[0]), exact());
    assert_eq!(d[1]["roleRef"]["kind"], "Role");
    assert_eq!(d[1]["subjects"][0]["namespace"], "azureml");
    assert!(namespaced_discovery_rbac(&RenderArgs::default(), "Not_A_Namespace").is_err());
}

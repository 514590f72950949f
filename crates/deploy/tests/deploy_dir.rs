//! `deploy/` is generated from `render`: it is up to date, and every overlay built with
//! `kubectl kustomize` equals the matching `render` output.
//!
//! Regenerate after changing the manifests:
//! `INFERGATE_BLESS=1 cargo test -p infergate-deploy --test deploy_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use infergate_deploy::{RenderArgs, Rendered, render};
use serde_json::Value;

const BLESS: &str = "INFERGATE_BLESS=1 cargo test -p infergate-deploy --test deploy_dir";

/// Each overlay and the extension settings it stands for (all with the example TLS pair).
const OVERLAYS: &[(&str, &[&str])] = &[
    ("public-lb", &["enableInference=True"]),
    (
        "internal-lb",
        &["enableInference=True", "privateEndpointILB=True"],
    ),
    (
        "nodeport",
        &["enableInference=True", "privateEndpointNodeport=True"],
    ),
    (
        "clusterip-ingress",
        &[
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
        ],
    ),
    (
        "single-replica",
        &["enableInference=True", "inferenceLoadBalancerHA=False"],
    ),
    ("openshift", &["enableInference=True", "openshift=True"]),
];

/// The overlays that only swap the Service of the base.
const EXPOSURES: &[&str] = &["public-lb", "internal-lb", "nodeport", "clusterip-ingress"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mk_render(config: &[&str]) -> Rendered {
    let certs = root().join("certs-example");
    let args = RenderArgs {
        config: config.iter().map(|s| s.to_string()).collect(),
        config_protected: vec![
            format!("sslCertPemFile={}", certs.join("server.pem").display()),
            format!("sslKeyPemFile={}", certs.join("server-key.pem").display()),
        ],
        ..RenderArgs::default()
    };
    render(&args).unwrap_or_else(|e| panic!("render {config:?}: {e}"))
}

fn overlay_render(overlay: &str) -> Rendered {
    let (_, config) = OVERLAYS.iter().find(|(o, _)| *o == overlay).unwrap();
    mk_render(config)
}

fn doc(r: &Rendered, file: &str) -> String {
    r.document(file)
        .unwrap_or_else(|| panic!("no {file}"))
        .to_string()
}

fn value(r: &Rendered, file: &str) -> Value {
    serde_saphyr::from_str(&doc(r, file)).unwrap()
}

// === the generator ===

fn header(extra: &str) -> String {
    format!(
        "# GENERATED from `infergate render` by crates/deploy/tests/deploy_dir.rs: do not edit.\n\
         # Regenerate: {BLESS}\n{extra}"
    )
}

const SECRET_WARNING: &str = "\
# TEST-ONLY TLS MATERIAL: this is certs-example/server.pem and server-key.pem, whose private
# key is PUBLIC. Replace this Secret with your own certificate before serving anything; see
# deploy/README.md (\"Your own certificate\").
";

fn kustomization(comment: &str, resources: &[&str], patches: &str) -> String {
    let mut out = header(comment);
    out.push_str("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n");
    for r in resources {
        out.push_str(&format!("- {r}\n"));
    }
    out.push_str(patches);
    out
}

/// Every generated file under `deploy/`, relative to it.
fn generated() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let base = overlay_render("public-lb");
    let base_files: Vec<&str> = base
        .documents
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "service.yaml")
        .collect();
    for f in &base_files {
        let extra = if *f == "secret.yaml" {
            SECRET_WARNING
        } else {
            ""
        };
        files.insert(format!("base/{f}"), header(extra) + &doc(&base, f));
    }
    files.insert(
        "base/kustomization.yaml".into(),
        kustomization(
            "# Everything but the Service, which each exposure overlay adds: build an overlay, not this.\n",
            &base_files,
            "",
        ),
    );

    for overlay in EXPOSURES {
        let r = overlay_render(overlay);
        let (_, config) = OVERLAYS.iter().find(|(o, _)| o == overlay).unwrap();
        files.insert(
            format!("overlays/{overlay}/service.yaml"),
            header("") + &doc(&r, "service.yaml"),
        );
        files.insert(
            format!("overlays/{overlay}/kustomization.yaml"),
            kustomization(
                &format!("# = infergate render --config {} --config-protected sslCertPemFile=... sslKeyPemFile=...\n", config.join(" ")),
                &["../../base", "service.yaml"],
                "",
            ),
        );
    }

    // single-replica: public-lb without HA.
    let single = overlay_render("single-replica");
    let replicas = &value(&single, "deployment.yaml")["spec"]["replicas"];
    let name = value(&single, "deployment.yaml")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    files.insert(
        "overlays/single-replica/kustomization.yaml".into(),
        kustomization(
            "# = infergate render --config enableInference=True inferenceLoadBalancerHA=False --config-protected ...\n\
             # One replica for development and small clusters: no spreading, no PodDisruptionBudget.\n",
            &["../public-lb"],
            &format!(
                "patches:\n\
                 - target:\n    kind: Deployment\n    name: {name}\n  patch: |-\n\
                 \x20   - op: replace\n      path: /spec/replicas\n      value: {replicas}\n\
                 \x20   - op: remove\n      path: /spec/template/spec/affinity\n\
                 \x20   - op: remove\n      path: /spec/template/spec/topologySpreadConstraints\n\
                 - target:\n    kind: PodDisruptionBudget\n    name: {name}\n  patch: |-\n\
                 \x20   $patch: delete\n    apiVersion: policy/v1\n    kind: PodDisruptionBudget\n    metadata:\n      name: {name}\n"
            ),
        ),
    );

    // openshift: public-lb with OpenShift-assigned IDs and the SCC that admits the pod.
    let os = overlay_render("openshift");
    let scc = value(&os, "securitycontextconstraints.yaml")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let os_files = [
        "securitycontextconstraints.yaml",
        "role.yaml",
        "rolebinding.yaml",
    ];
    for f in os_files {
        files.insert(format!("overlays/openshift/{f}"), header("") + &doc(&os, f));
    }
    let mut resources = vec!["../public-lb"];
    resources.extend(os_files);
    files.insert(
        "overlays/openshift/kustomization.yaml".into(),
        kustomization(
            "# = infergate render --config enableInference=True openshift=True --config-protected ...\n\
             # OpenShift assigns UIDs/GIDs from the namespace's range: no fixed IDs, and an SCC for the pod.\n",
            &resources,
            &format!(
                "patches:\n\
                 - target:\n    kind: Deployment\n    name: {name}\n  patch: |-\n\
                 \x20   - op: remove\n      path: /spec/template/spec/securityContext/runAsUser\n\
                 \x20   - op: remove\n      path: /spec/template/spec/securityContext/runAsGroup\n\
                 \x20   - op: remove\n      path: /spec/template/spec/securityContext/fsGroup\n\
                 \x20   - op: add\n      path: /spec/template/metadata/annotations/openshift.io~1required-scc\n      value: {scc}\n"
            ),
        ),
    );
    files
}

fn files_under(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = format!("{rel}{}", e.file_name().to_string_lossy());
        if e.path().is_dir() {
            files_under(&e.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn deploy_dir_is_generated_from_render() {
    let deploy = root().join("deploy");
    let want = generated();
    let mut on_disk = Vec::new();
    files_under(&deploy.join("base"), "base/", &mut on_disk);
    files_under(&deploy.join("overlays"), "overlays/", &mut on_disk);
    let stale: Vec<&String> = on_disk.iter().filter(|f| !want.contains_key(*f)).collect();

    if std::env::var_os("INFERGATE_BLESS").is_some_and(|v| v == "1") {
        for f in stale {
            std::fs::remove_file(deploy.join(f)).unwrap();
        }
        for (f, text) in &want {
            let path = deploy.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        eprintln!("wrote {} files under {}", want.len(), deploy.display());
        return;
    }
    let mut problems: Vec<String> = stale
        .iter()
        .map(|f| format!("deploy/{f} is not generated"))
        .collect();
    for (f, text) in &want {
        match std::fs::read_to_string(deploy.join(f)) {
            Ok(t) if &t == text => {}
            Ok(_) => problems.push(format!("deploy/{f} differs from render")),
            Err(_) => problems.push(format!("deploy/{f} is missing")),
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/ is out of date; regenerate with `{BLESS}`:\n  {}",
        problems.join("\n  ")
    );
}

// === overlays vs render ===

/// The documents sorted by kind, namespace and name, so order does not matter.
fn doc_set(docs: Vec<Value>) -> Vec<Value> {
    let mut docs = docs;
    docs.sort_by_key(|d| {
        let m = &d["metadata"];
        format!("{}/{}/{}", d["kind"], m["namespace"], m["name"])
    });
    docs
}

#[test]
fn every_overlay_builds_to_the_matching_render() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let probe = Command::new(&kubectl)
        .args(["version", "--client"])
        .output();
    if probe.is_err() {
        eprintln!(
            "\n!!!!!!!! SKIPPED: `{kubectl}` not found: the kustomize overlays in deploy/overlays were NOT \
             compared with `render`. Install kubectl (or set KUBECTL) to run this test. !!!!!!!!\n"
        );
        return;
    }
    for (overlay, config) in OVERLAYS {
        let dir = root().join("deploy/overlays").join(overlay);
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let built: Vec<Value> =
            serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
        let rendered: Vec<Value> =
            serde_saphyr::from_multiple(&mk_render(config).to_multi_doc()).unwrap();
        let (built, rendered) = (doc_set(built), doc_set(rendered));
        let kinds = |d: &[Value]| d.iter().map(|d| d["kind"].to_string()).collect::<Vec<_>>();
        assert_eq!(
            kinds(&built),
            kinds(&rendered),
            "overlay {overlay}: objects differ"
        );
        for (b, r) in built.iter().zip(&rendered) {
            assert!(
                b == r,
                "overlay {overlay}: {} differs from render {config:?}\n--- kustomize:\n{}\n--- render:\n{}",
                b["kind"],
                serde_json::to_string_pretty(b).unwrap(),
                serde_json::to_string_pretty(r).unwrap()
            );
        }
    }
}

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

/// Each overlay and the extension settings it stands for (all rendered with the example TLS
/// pair; only `example` carries it, and the peer secret: the others leave both Secrets to the
/// user).
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
    ("example", &["enableInference=True"]),
];

/// The overlay that carries the public test material (TLS pair, peer secret): for trying
/// things out only. Every other overlay is fit for production: it has no Secret at all.
const EXAMPLE: &str = "example";

/// The Secrets only the example overlay carries: `render`'s files for them.
const SECRET_FILES: &[&str] = &["secret.yaml", "cluster-secret.yaml"];

/// The overlays that only swap the Service of the base.
const EXPOSURES: &[&str] = &["public-lb", "internal-lb", "nodeport", "clusterip-ingress"];

/// Regenerating (`INFERGATE_BLESS=1`): the tests that read `deploy/` stand back while it is
/// rewritten, and run on the next plain `cargo test`.
fn blessing() -> bool {
    std::env::var_os("INFERGATE_BLESS").is_some_and(|v| v == "1")
}

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

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `cluster-secret.yaml` with the committed test value instead of the random one.
fn with_test_peer_secret(r: &Rendered) -> String {
    let text = doc(r, "cluster-secret.yaml");
    let random = value(r, "cluster-secret.yaml")["data"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(text.matches(&random).count(), 1);
    text.replace(&random, &b64(TEST_PEER_SECRET))
}

/// The position of the element of `array` whose `key` is `value`.
fn index_of(array: &Value, key: &str, value: &str) -> usize {
    array
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {key}={value} in {array}"))
}

// === the generator ===

fn header(extra: &str) -> String {
    format!(
        "# GENERATED from `infergate render` by crates/deploy/tests/deploy_dir.rs: do not edit.\n\
         # Regenerate: {BLESS}\n{extra}"
    )
}

/// The peer secret committed in `deploy/base` (`render` makes a random one every time).
const TEST_PEER_SECRET: &str = "TEST-ONLY-public-peer-secret-REPLACE-ME";

const PEER_SECRET_WARNING: &str = "\
# TEST-ONLY PEER SECRET: this value is PUBLIC (it is committed here); `infergate render` makes a
# random one. Replace it before running more than one replica for real: delete this Secret and
# create your own, e.g. `kubectl -n azureml create secret generic infergate-cluster
# --from-literal=secret=\"$(head -c 32 /dev/urandom | base64)\"`, then restart the Deployment.
";

const SECRET_WARNING: &str = "\
# TEST-ONLY TLS MATERIAL: this is certs-example/server.pem and server-key.pem, whose private
# key is PUBLIC. Only the `example` overlay uses it; the other overlays carry no Secret, and
# you create `infergate-tls` from your own certificate; see deploy/README.md (\"Your own
# certificate\").
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
        .filter(|f| *f != "service.yaml" && !SECRET_FILES.contains(f))
        .collect();
    for f in &base_files {
        files.insert(format!("base/{f}"), header("") + &doc(&base, f));
    }
    files.insert(
        "base/kustomization.yaml".into(),
        kustomization(
            "# Everything but the Service, which each exposure overlay adds, and the Secrets\n\
             # `infergate-tls` (your certificate) and `infergate-cluster` (HA: the peers' secret), which\n\
             # you create (deploy/README.md, \"Your own certificate\"): build an overlay, not this.\n",
            &base_files,
            "",
        ),
    );

    // example: public-lb with the public test material, to try things out.
    files.insert(
        format!("overlays/{EXAMPLE}/secret.yaml"),
        header(SECRET_WARNING) + &doc(&base, "secret.yaml"),
    );
    files.insert(
        format!("overlays/{EXAMPLE}/cluster-secret.yaml"),
        header(PEER_SECRET_WARNING) + &with_test_peer_secret(&base),
    );
    files.insert(
        format!("overlays/{EXAMPLE}/kustomization.yaml"),
        kustomization(
            "# = infergate render --config enableInference=True --config-protected\n\
             #   sslCertPemFile=certs-example/server.pem sslKeyPemFile=certs-example/server-key.pem\n\
             # TEST-ONLY: public-lb with the PUBLIC example certificate and key and a PUBLIC peer secret,\n\
             # for trying things out. Never serve anything with it: build your own overlay on another one.\n",
            &["../public-lb", "secret.yaml", "cluster-secret.yaml"],
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
                &format!(
                    "# = infergate render --config {} --config-protected sslCertPemFile=... sslKeyPemFile=...\n\
                     # but without the Secrets `infergate-tls` and `infergate-cluster`: create them first\n\
                     # (deploy/README.md, \"Your own certificate\").\n",
                    config.join(" ")
                ),
                &["../../base", "service.yaml"],
                "",
            ),
        );
    }

    // single-replica: public-lb without HA (and so without the peers' objects and settings).
    let single = overlay_render("single-replica");
    let replicas = &value(&single, "deployment.yaml")["spec"]["replicas"];
    let name = value(&single, "deployment.yaml")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let ha_spec = &value(&base, "deployment.yaml")["spec"]["template"]["spec"];
    let ha_container = &ha_spec["containers"][0];
    let peer_port = index_of(&ha_container["ports"], "name", "peer");
    let cluster_mount = index_of(&ha_container["volumeMounts"], "name", "cluster");
    let cluster_volume = index_of(&ha_spec["volumes"], "name", "cluster");
    let single_config = serde_json::to_string(
        value(&single, "configmap.yaml")["data"]["infergate.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let config_map = value(&single, "configmap.yaml")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let delete = |kind: &str, api_version: &str, object: &str| {
        format!(
            "- target:\n    kind: {kind}\n    name: {object}\n  patch: |-\n\
             \x20   $patch: delete\n    apiVersion: {api_version}\n    kind: {kind}\n    metadata:\n      name: {object}\n"
        )
    };
    files.insert(
        "overlays/single-replica/kustomization.yaml".into(),
        kustomization(
            "# = infergate render --config enableInference=True inferenceLoadBalancerHA=False --config-protected ...\n\
             # One replica for development and small clusters: no spreading, no PodDisruptionBudget,\n\
             # no peers (no cluster section, peer Service or peer NetworkPolicy; no peer Secret to create).\n",
            &["../public-lb"],
            &format!(
                "patches:\n\
                 - target:\n    kind: Deployment\n    name: {name}\n  patch: |-\n\
                 \x20   - op: replace\n      path: /spec/replicas\n      value: {replicas}\n\
                 \x20   - op: remove\n      path: /spec/template/spec/affinity\n\
                 \x20   - op: remove\n      path: /spec/template/spec/topologySpreadConstraints\n\
                 \x20   - op: remove\n      path: /spec/template/spec/containers/0/env/0\n\
                 \x20   - op: remove\n      path: /spec/template/spec/containers/0/ports/{peer_port}\n\
                 \x20   - op: remove\n      path: /spec/template/spec/containers/0/volumeMounts/{cluster_mount}\n\
                 \x20   - op: remove\n      path: /spec/template/spec/volumes/{cluster_volume}\n\
                 - target:\n    kind: ConfigMap\n    name: {config_map}\n  patch: |-\n\
                 \x20   - op: replace\n      path: /data/infergate.yaml\n      value: {single_config}\n\
                 {}{}{}",
                delete("PodDisruptionBudget", "policy/v1", &name),
                delete("Service", "v1", &format!("{name}-peers")),
                delete(
                    "NetworkPolicy",
                    "networking.k8s.io/v1",
                    &format!("{name}-peers")
                ),
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

    if blessing() {
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

/// The documents sorted by kind, namespace and name, so order does not matter; the random
/// peer secret's value masked.
fn doc_set(docs: Vec<Value>) -> Vec<Value> {
    let mut docs = docs;
    for d in &mut docs {
        if d["kind"] == "Secret" && d["type"] == "Opaque" && d["data"].get("secret").is_some() {
            d["data"]["secret"] = Value::from("(random)");
        }
    }
    docs.sort_by_key(|d| {
        let m = &d["metadata"];
        format!("{}/{}/{}", d["kind"], m["namespace"], m["name"])
    });
    docs
}

#[test]
fn every_overlay_builds_to_the_matching_render() {
    if blessing() {
        return;
    }
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
        let mut rendered: Vec<Value> =
            serde_saphyr::from_multiple(&mk_render(config).to_multi_doc()).unwrap();
        if *overlay != EXAMPLE {
            // Production overlays leave both Secrets to the user.
            rendered.retain(|d| d["kind"] != "Secret");
        }
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

// === no public test key outside the example overlay ===

/// Strings that give the public test material away: the example key's PEM body (a line of
/// it, as in the file, and the whole file base64-encoded, as in a Secret), any private key
/// block, and the committed test peer secret (base64, as in its Secret).
fn test_key_needles() -> Vec<String> {
    let key = std::fs::read_to_string(root().join("certs-example/server-key.pem")).unwrap();
    let body_line = key
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 40)
        .unwrap()
        .to_string();
    vec![
        body_line,
        b64(&key)[..64].to_string(),
        "PRIVATE KEY".to_string(),
        b64(TEST_PEER_SECRET),
        TEST_PEER_SECRET.to_string(),
    ]
}

/// The committed files under `deploy/` that `kubectl apply -k` of `overlay` reads.
fn files_of(overlay: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join("deploy/overlays").join(overlay)];
    while let Some(dir) = dirs.pop() {
        let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        out.push(dir.join("kustomization.yaml"));
        for r in k
            .lines()
            .filter_map(|l| l.strip_prefix("- "))
            .filter(|r| !r.contains(':'))
        {
            let p = dir.join(r);
            if p.is_dir() {
                dirs.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn production_overlay_has_no_test_key() {
    if blessing() {
        return;
    }
    let needles = test_key_needles();
    let overlays: Vec<&str> = OVERLAYS
        .iter()
        .map(|(o, _)| *o)
        .filter(|o| *o != EXAMPLE)
        .collect();
    // The files every production overlay is built from: no Secret, no test material.
    for overlay in &overlays {
        let files = files_of(overlay);
        assert!(files.len() > 5, "{overlay}: {files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for n in &needles {
                assert!(
                    !text.contains(n.as_str()),
                    "{} (overlay {overlay}) holds test material: {n}",
                    f.display()
                );
            }
            assert!(
                !text.contains("\nkind: Secret\n"),
                "{} (overlay {overlay}) holds a Secret",
                f.display()
            );
        }
    }
    // The needles do find the material where it is meant to be.
    let example: String = files_of(EXAMPLE)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // (the key base64-encoded in a Secret, and the peer secret)
    for n in [&needles[1], &needles[3]] {
        assert!(
            example.contains(n.as_str()),
            "the example overlay lacks {n}"
        );
    }

    // Built as `kubectl apply -k` builds them: no Secret object, the Deployment still mounts
    // `infergate-tls` (created by the user from their own certificate).
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    if Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!(
            "\n!!!!!!!! SKIPPED (in part): `{kubectl}` not found: the production overlays were checked \
             file by file but NOT built. !!!!!!!!\n"
        );
        return;
    }
    for overlay in &overlays {
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(root().join("deploy/overlays").join(overlay))
            .output()
            .unwrap();
        assert!(out.status.success(), "{overlay}");
        let text = String::from_utf8(out.stdout).unwrap();
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "overlay {overlay} builds test material: {n}"
            );
        }
        let built: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert!(
            built.iter().all(|d| d["kind"] != "Secret"),
            "overlay {overlay} builds a Secret"
        );
        let dep = built.iter().find(|d| d["kind"] == "Deployment").unwrap();
        assert!(
            dep["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "infergate-tls"),
            "{overlay}"
        );
    }
}

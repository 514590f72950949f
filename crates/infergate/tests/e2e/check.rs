//! `infergate version`, `--version` and `infergate check` (validation without binding, exit 0
//! or 2), on the README's examples and on each class of bad input.

use crate::runner::*;
use crate::support::*;

#[test]
fn version_prints_version_commit_build_date_rustc_and_crypto() {
    let (code, out, err) = run_to_exit(&["version"]);
    assert_eq!(code, Some(0), "{err}");
    let field = |k: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap_or_else(|| panic!("no `{k}:` line in {out}"))
            .to_string()
    };
    assert_eq!(field("version"), env!("CARGO_PKG_VERSION"));
    let commit = field("commit");
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    let date = field("build date");
    let b = date.as_bytes();
    assert!(
        date.len() == 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && date.ends_with('Z'),
        "{date}"
    );
    assert!(field("rustc").starts_with("rustc 1."), "{out}");
    assert_eq!(field("crypto"), "rustls ring");
}

#[test]
fn dash_dash_version_prints_one_line_with_every_field() {
    let (code, out, err) = run_to_exit(&["--version"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    let line = out.trim();
    assert!(
        line.starts_with(&format!("infergate {} (commit ", env!("CARGO_PKG_VERSION")))
            && line.contains(", built ")
            && line.contains("rustc 1.")
            && line.ends_with("rustls ring)"),
        "{line}"
    );
    let (_, version, _) = run_to_exit(&["version"]);
    let commit = version
        .lines()
        .find_map(|l| l.strip_prefix("commit: "))
        .unwrap();
    assert!(line.contains(&format!("(commit {commit},")), "{line}");
}

#[test]
fn check_passes_on_the_readme_examples_and_binds_nothing() {
    // README: `infergate serve --config examples/static.yaml` (TLS from certs-example/).
    let (code, out, err) = run_to_exit(&["check", "--config", "examples/static.yaml"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "endpoint demo: auth key, deployments blue (weight 90, 2 pods), green (weight 10, 1 pod)\nok\n"
    );
    assert!(err.is_empty(), "{err}");

    // README: the same with `--set`, ports that must stay free.
    let (https, admin) = (free_port(), free_port());
    let (code, out, err) = run_to_exit(&[
        "check",
        "--config",
        "examples/static.yaml",
        "--set",
        &format!("listen.https=127.0.0.1:{https}"),
        "--set",
        &format!("listen.admin=127.0.0.1:{admin}"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("ok\n"), "{out}");
    for p in [https, admin] {
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("check bound nothing");
    }

    // README ("Running in a cluster"): the router's configuration `render` writes, run locally
    // as the README's `--set allowInsecureConnections=True` example does.
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "discovery.yaml",
        "discovery:\n  kube:\n    namespaces: []\n",
    );
    let (code, out, err) = run_to_exit(&[
        "check",
        "--config",
        &f,
        "--set",
        "allowInsecureConnections=True",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("discovery: kube, all namespaces") && out.ends_with("\nok\n"),
        "{out}"
    );

    // Every endpoint gets a line: key, token and none modes; a cluster with its secret.
    let signing = write_file(dir.path(), "signing.key", &"k".repeat(32));
    let secret = write_file(dir.path(), "secret", "0123456789abcdef-shared");
    let f = write_file(
        dir.path(),
        "many.yaml",
        &format!(
            "allowInsecureConnections: true\n\
             listen: {{http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
             endpoints:\n\
             \x20 - name: a\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"127.0.0.1:1\"]}}]\n\
             \x20 - name: b\n    auth: {{mode: token, signingKeyFile: \"{signing}\"}}\n    traffic: {{x: 30, y: 70}}\n    deployments: [{{name: x, pods: [\"127.0.0.1:2\", \"127.0.0.1:3\"]}}, {{name: y}}]\n\
             cluster: {{listen: \"127.0.0.1:7946\", peers: [\"127.0.0.1:7946\"], secretFile: \"{secret}\"}}\n"
        ),
    );
    let (code, out, err) = run_to_exit(&["check", "--config", &f]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "endpoint a: auth none, deployments d (weight 100, 1 pod)\n\
         endpoint b: auth token, deployments x (weight 30, 2 pods), y (weight 70, 0 pods)\n\
         cluster: listen 127.0.0.1:7946, advertise 127.0.0.1:7946, 1 static peer(s), secret read\n\
         ok\n"
    );
}

/// Runs `check` on `yaml` and returns stderr, asserting exit 2, an `error:` message and no stdout.
fn check_fails(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "infergate.yaml", yaml);
    let (code, out, err) = run_to_exit(&["check", "--config", &f]);
    assert_eq!(code, Some(2), "stdout: {out}\nstderr: {err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

const INSECURE: &str =
    "allowInsecureConnections: true\nlisten: {http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n";

#[test]
fn check_refuses_a_yaml_syntax_error() {
    let err = check_fails(&format!(
        "{INSECURE}endpoints:\n  - name: e\n    deployments: [{{name: d\n"
    ));
    // The file, line and column (a syntax error has no key yet).
    assert!(
        err.contains("infergate.yaml") && err.contains("line 5 column 19"),
        "{err}"
    );
}

#[test]
fn check_refuses_an_unknown_key() {
    let err = check_fails(&format!(
        "{INSECURE}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deploymnts: []\n"
    ));
    assert!(err.contains("deploymnts"), "{err}");
}

#[test]
fn check_refuses_weights_that_do_not_sum_to_100() {
    let err = check_fails(&format!(
        "{INSECURE}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    traffic: {{a: 70, b: 20}}\n    deployments: [{{name: a}}, {{name: b}}]\n"
    ));
    assert!(
        err.contains("endpoints[0].traffic") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_missing_certificate_file() {
    let err = check_fails(&format!(
        "sslCertPemFile: /no/such/cert.pem\nsslKeyPemFile: {}\nendpoints: []\n",
        certs_example("server-key.pem").display()
    ));
    assert!(
        err.contains("sslCertPemFile") && err.contains("/no/such/cert.pem"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_key_that_does_not_match_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let key = write_file(dir.path(), "other-key.pem", &other);
    let err = check_fails(&format!(
        "sslCertPemFile: {}\nsslKeyPemFile: {key}\nendpoints: []\n",
        certs_example("server.pem").display()
    ));
    assert!(
        err.contains("sslKeyPemFile")
            && err.contains("sslCertPemFile")
            && err.contains("other-key.pem")
            && err.contains("server.pem"),
        "{err}"
    );
}

#[test]
fn check_refuses_an_unreadable_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    // A directory: not readable as a file, whoever runs the test (root included).
    let err = check_fails(&format!(
        "{INSECURE}endpoints: []\ncluster: {{listen: \"127.0.0.1:7946\", peers: [\"127.0.0.1:7946\"], secretFile: \"{}\"}}\n",
        dir.path().display()
    ));
    assert!(err.contains("cluster.secretFile"), "{err}");
}

#[test]
fn render_check_summarizes_valid_settings_without_printing_manifests() {
    let (code, out, err) = run_to_exit(&[
        "render",
        "--check",
        "--config",
        "inferenceRouterHA=True",
        "privateEndpointILB=True",
        "nodeSelector.gpu=true",
        "tolerations=dedicated=ml:NoSchedule",
        "--config-protected",
        "sslCertPemFile=certs-example/server.pem",
        "sslKeyPemFile=certs-example/server-key.pem",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("apiVersion"), "no manifests: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "router: internal LoadBalancer, 3 replicas acting as one (HA), https with certs-example/server.pem, no plain http, nodeSelector gpu=true, 1 toleration(s), endpoints and Secrets of its own namespace, admin port open to monitoring"
    );
    assert!(
        lines[1].contains(" objects: ") && lines[1].contains("deployment.yaml"),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"ok"));
}

#[test]
fn render_check_refuses_bad_settings_with_exit_2() {
    for (args, named) in [
        (vec!["nodeSelector.=x"], "nodeSelector."),
        (
            vec!["allowInsecureConnections=True", "inferenceRouterHA=maybe"],
            "inferenceRouterHA",
        ),
        (
            vec!["allowInsecureConnection=True"],
            "allowInsecureConnections",
        ),
    ] {
        let mut argv = vec!["render", "--check", "--config"];
        argv.extend(args.iter().copied());
        let (code, out, err) = run_to_exit(&argv);
        assert_eq!(code, Some(2), "{args:?}: {out} {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(named), "{named} not named: {err}");
        assert!(out.is_empty(), "{out}");
    }
    // The certificate is read and checked as rendering does.
    let (code, _, err) = run_to_exit(&[
        "render",
        "--check",
        "--config",
        "allowInsecureConnections=False",
        "--config-protected",
        "sslCertPemFile=certs-example/missing.pem",
        "sslKeyPemFile=certs-example/server-key.pem",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("sslCertPemFile"), "{err}");
}

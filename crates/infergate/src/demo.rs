//! `infergate demo`: three mock model pods (deployments `blue` x2 and `green` x1 of endpoint `demo`)
//! behind the router, TLS from the example certificate, on 127.0.0.1.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use infergate_config::{AuthConfig, Config, DeploymentConfig, EndpointConfig, KeyString};
use mock_model::MockConfig;

const CA_PEM: &str = include_str!("../../../certs-example/ca.pem");
const SERVER_PEM: &str = include_str!("../../../certs-example/server.pem");
const SERVER_KEY_PEM: &str = include_str!("../../../certs-example/server-key.pem");

/// Writes the embedded example certificate to a private temp folder; returns (folder, cert, key).
fn write_example_certs() -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("infergate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&ca, CA_PEM)?;
    std::fs::write(&cert, SERVER_PEM)?;
    std::fs::write(&key, SERVER_KEY_PEM)?;
    Ok((ca, cert, key))
}

fn deployment(name: &str, pods: Vec<String>) -> DeploymentConfig {
    DeploymentConfig {
        name: name.into(),
        pods,
        scoring_path: infergate_config::default_scoring_path(),
        swagger_path: infergate_config::default_swagger_path(),
        request_settings: Default::default(),
    }
}

/// Runs the demo until Ctrl-C / SIGTERM.
pub async fn run(https_port: u16, admin_port: u16, latency_ms: u64) -> anyhow::Result<()> {
    let mut mocks = Vec::new();
    for name in ["blue-0", "blue-1", "green-0"] {
        let m = mock_model::spawn_local(MockConfig {
            name: name.into(),
            latency: Duration::from_millis(latency_ms),
            ..MockConfig::default()
        })
        .await
        .context("starting a mock model pod")?;
        mocks.push(m);
    }
    let addr = |i: usize| mocks[i].addr().to_string();
    let (ca, cert, key) = write_example_certs()?;
    let mut cfg = Config::from_yaml("{}", "<demo>")?;
    cfg.ssl_cert_pem_file = Some(cert);
    cfg.ssl_key_pem_file = Some(key);
    cfg.listen.https = format!("127.0.0.1:{https_port}");
    cfg.listen.admin = format!("127.0.0.1:{admin_port}");
    cfg.defaults.max_concurrent_requests_per_instance = 4;
    cfg.drain_timeout_ms = 5_000;
    // A fresh random key per run: the endpoint is in key mode, like a real one.
    let key: String = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    cfg.endpoints = vec![EndpointConfig {
        name: "demo".into(),
        traffic: [("blue".to_string(), 90), ("green".to_string(), 10)].into(),
        deployments: vec![
            deployment("blue", vec![addr(0), addr(1)]),
            deployment("green", vec![addr(2)]),
        ],
        mirror: None,
        auth: AuthConfig {
            primary_key: Some(KeyString(key.clone())),
            ..AuthConfig::default()
        },
        swagger_auth: false,
    }];
    let server = infergate_proxy::Server::bind(&cfg).await?;
    let https = server.https_addr().context("the demo always has TLS")?;
    let admin = server.admin_addr();
    let base = format!("https://localhost:{}", https.port());
    // From a checkout, point at the committed copy (same bytes as the embedded one).
    let repo_ca = std::path::Path::new("certs-example/ca.pem");
    let ca = if repo_ca.exists() {
        repo_ca.to_path_buf()
    } else {
        ca
    };
    let ca = ca.display();
    let pin = infergate_proxy::headers::AZUREML_MODEL_DEPLOYMENT;
    println!(
        "\ninfergate demo: endpoint `demo` with deployments blue (2 pods, 90%) and green (1 pod, 10%), key {key}\n\
         \n  # score (traffic split 90/10)\n  curl --cacert {ca} {base}/api/v1/endpoint/demo/score -H 'Authorization: Bearer {key}' -H 'content-type: application/json' -d '{{\"data\": [[1, 2, 3, 4]]}}'\n\
         \n  # pin a deployment\n  curl --cacert {ca} {base}/api/v1/endpoint/demo/score -H 'Authorization: Bearer {key}' -H '{pin}: green' -d '{{}}'\n\
         \n  # without the key: 401\n  curl -i --cacert {ca} {base}/api/v1/endpoint/demo/score -d '{{}}'\n\
         \n  # the model's swagger document (open unless swaggerAuth is set)\n  curl --cacert {ca} {base}/api/v1/service/demo/swagger.json\n\
         \n  # health, readiness and Prometheus metrics\n  curl http://{admin}/readyz\n  curl http://{admin}/metrics\n\
         \nPress Ctrl-C to stop.\n"
    );
    server.run(crate::shutdown_signal()).await;
    drop(mocks);
    Ok(())
}

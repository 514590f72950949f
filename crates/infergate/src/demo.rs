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
        scale_settings: None,
        protocol: Default::default(),
        upstream_tls: None,
    }
}

/// Ports of the demo's routers: `https` and `admin` (0 = any free port) for the first, the
/// next ones for the others; peer ports from `peer` on (0 = free ports picked here).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub https: u16,
    pub admin: u16,
    pub peer: u16,
}

/// Port `base + i` (0 stays 0: any free port).
fn nth_port(base: u16, i: usize) -> anyhow::Result<u16> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(usize::from(base) + i)
        .ok()
        .with_context(|| format!("port {base} + {i} is past 65535"))
}

/// The peer addresses of `replicas` routers on 127.0.0.1: `base + i`, or free ports when
/// `base` is 0 (each must be known before any router binds: they are in every peer list).
fn peer_addrs(base: u16, replicas: usize) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let mut held = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..replicas {
        let port = nth_port(base, i)?;
        let l = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("peer port 127.0.0.1:{port} is not free"))?;
        addrs.push(l.local_addr()?);
        // Held until all are picked, so that no two are the same; released before binding.
        held.push(l);
    }
    Ok(addrs)
}

/// A `cluster` section for one replica: its peer listener, every replica as a peer, the secret.
fn cluster_section(
    listen: std::net::SocketAddr,
    peers: &[std::net::SocketAddr],
    secret: &std::path::Path,
) -> anyhow::Result<infergate_config::ClusterConfig> {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let yaml = format!(
        "cluster: {{listen: \"{listen}\", peers: [{}], secretFile: \"{}\"}}\n",
        peers.join(", "),
        secret.display()
    );
    Config::from_yaml(&yaml, "<demo>")?
        .cluster
        .context("the demo's cluster section")
}

/// Runs the demo until Ctrl-C / SIGTERM: `replicas` routers (one cluster when more than one)
/// in front of the same three mock pods.
pub async fn run(ports: Ports, latency_ms: u64, replicas: usize) -> anyhow::Result<()> {
    anyhow::ensure!(replicas >= 1, "--replicas must be at least 1");
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
        pass_authorization: false,
    }];

    // More than one replica: one cluster on 127.0.0.1, with a fresh shared secret.
    let peers = if replicas > 1 {
        let secret = std::env::temp_dir()
            .join(format!("infergate-demo-{}", std::process::id()))
            .join("cluster-secret");
        let bytes: [u8; 32] = rand::random();
        std::fs::write(&secret, bytes).with_context(|| format!("writing {}", secret.display()))?;
        Some((peer_addrs(ports.peer, replicas)?, secret))
    } else {
        None
    };
    let mut servers = Vec::new();
    for i in 0..replicas {
        let mut c = cfg.clone();
        c.listen.https = format!("127.0.0.1:{}", nth_port(ports.https, i)?);
        c.listen.admin = format!("127.0.0.1:{}", nth_port(ports.admin, i)?);
        if let Some((addrs, secret)) = &peers {
            c.cluster = Some(cluster_section(addrs[i], addrs, secret)?);
        }
        let server = infergate_proxy::Server::bind(&c)
            .await
            .with_context(|| format!("starting router replica {i}"))?;
        servers.push(server);
    }
    // The replicas find each other before the commands are printed (a few ms on 127.0.0.1).
    let formed = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while servers.iter().any(|s| {
        s.router()
            .cluster()
            .is_some_and(|c| c.peers() + 1 < replicas)
    }) && tokio::time::Instant::now() < formed
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let https = servers[0].https_addr().context("the demo always has TLS")?;
    let admin = servers[0].admin_addr();
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
    let replica_lines = match &peers {
        None => String::new(),
        Some((addrs, _)) => {
            let mut s = format!(
                "\n{replicas} router replicas acting as one (cluster: every pod's slots and the queue are global):\n"
            );
            for (i, server) in servers.iter().enumerate() {
                let h = server.https_addr().map_or(0, |a| a.port());
                s.push_str(&format!(
                    "  replica {i}: https://localhost:{h}  admin http://{}  peer {}\n",
                    server.admin_addr(),
                    addrs[i]
                ));
            }
            s.push_str("(the commands below use replica 0; any replica's port serves the same)\n");
            s
        }
    };
    println!(
        "\ninfergate demo: endpoint `demo` with deployments blue (2 pods, 90%) and green (1 pod, 10%), key {key}\n\
         {replica_lines}\
         \n  # score (traffic split 90/10)\n  curl --cacert {ca} {base}/api/v1/endpoint/demo/score -H 'Authorization: Bearer {key}' -H 'content-type: application/json' -d '{{\"data\": [[1, 2, 3, 4]]}}'\n\
         \n  # pin a deployment\n  curl --cacert {ca} {base}/api/v1/endpoint/demo/score -H 'Authorization: Bearer {key}' -H '{pin}: green' -d '{{}}'\n\
         \n  # without the key: 401\n  curl -i --cacert {ca} {base}/api/v1/endpoint/demo/score -d '{{}}'\n\
         \n  # the model's swagger document (open unless swaggerAuth is set)\n  curl --cacert {ca} {base}/api/v1/service/demo/swagger.json\n\
         \n  # health, readiness and Prometheus metrics\n  curl http://{admin}/readyz\n  curl http://{admin}/metrics\n\
         \nPress Ctrl-C to stop.\n"
    );
    // One signal stops every replica; each drains on its own.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for server in servers {
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(server.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })));
    }
    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.context("a router replica panicked")?;
    }
    drop(mocks);
    Ok(())
}

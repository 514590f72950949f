//! Behaviour 1: TLS termination, ALPN, versions, live certificate rotation, bad replacements.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

async fn tls_router(dir: &Path, pod: &mock_model::MockHandle) -> Router {
    std::fs::copy(certs_example("server.pem"), dir.join("cert.pem")).unwrap();
    std::fs::copy(certs_example("server-key.pem"), dir.join("key.pem")).unwrap();
    Router::start(&format!(
        "sslCertPemFile: {d}/cert.pem\nsslKeyPemFile: {d}/key.pem\ncertReloadIntervalMs: 50\n\
         endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{p}\"], requestSettings: {{maxConcurrentRequestsPerInstance: 8}}}}]\n",
        d = dir.display(),
        p = pod.addr()
    ))
    .await
}

async fn handshake_ok(addr: std::net::SocketAddr, root: &Path) -> bool {
    tls_connect(
        addr,
        tls_client_config(&[root.to_path_buf()], &[b"http/1.1"], false),
    )
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_selects_h2_or_http11_and_tls12_works() {
    let dir = tempfile::tempdir().unwrap();
    let pod = mock("p", 0).await;
    let r = tls_router(dir.path(), &pod).await;
    let addr = r.https.unwrap();
    assert!(
        r.http.is_none(),
        "no plain listener without allowInsecureConnections"
    );
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::tls(addr, proto).await; // asserts the negotiated ALPN
        let a = c.call(post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status, 200, "{proto:?}");
    }
    let s = tls_connect(
        addr,
        tls_client_config(&[certs_example("ca.pem")], &[b"http/1.1"], true),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let a = Client::over(s, Proto::H1)
        .await
        .call(post("/api/v1/endpoint/e/score", "{}"))
        .await;
    assert_eq!(a.status, 200);
    let a = Client::tls(addr, Proto::H1)
        .await
        .call(post("/api/v1/endpoint/e/score", "{}"))
        .await;
    // x-forwarded-proto is https on the TLS listener: checked through /echo elsewhere; here the route works
    assert_eq!(a.header("azureml-model-deployment"), "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_serves_the_new_pair_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pod = mock("p", 0).await;
    let r = tls_router(dir.path(), &pod).await;
    let addr = r.https.unwrap();
    let mut old_conn = Client::tls(addr, Proto::H1).await;
    assert_eq!(
        old_conn
            .call(post("/api/v1/endpoint/e/score", "{}"))
            .await
            .status,
        200
    );

    let new_cert = tls_fixture("rsa-pkcs1-cert.pem");
    std::fs::copy(tls_fixture("rsa-pkcs1-key.pem"), dir.path().join("key.pem")).unwrap();
    std::fs::copy(&new_cert, dir.path().join("cert.pem")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || handshake_ok(
            addr, &new_cert
        )
        .await)
        .await,
        "new handshakes present the new certificate"
    );
    assert!(
        !handshake_ok(addr, &certs_example("ca.pem")).await,
        "the old certificate is no longer served"
    );
    // the connection opened before the swap is untouched
    assert_eq!(
        old_conn
            .call(post("/api/v1/endpoint/e/score", "{}"))
            .await
            .status,
        200
    );
    let m = admin_get(r.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert_eq!(
        metric(&text, "infergate_tls_cert_reloads_total{result=\"ok\"}"),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_mismatched_replacement_keeps_the_old_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pod = mock("p", 0).await;
    let r = tls_router(dir.path(), &pod).await;
    let addr = r.https.unwrap();
    let failed = async || {
        admin_metric(
            r.admin,
            "infergate_tls_cert_reloads_total{result=\"failed\"}",
        )
        .await
    };
    let before = failed().await;
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || failed().await > before).await,
        "failure counted"
    );
    assert!(
        handshake_ok(addr, &certs_example("ca.pem")).await,
        "old pair still serves"
    );
    let a = Client::tls(addr, Proto::H2)
        .await
        .call(post("/api/v1/endpoint/e/score", "{}"))
        .await;
    assert_eq!(a.status, 200);

    // a valid certificate whose key does not match is refused the same way
    let before = failed().await;
    std::fs::copy(
        tls_fixture("rsa-pkcs1-cert.pem"),
        dir.path().join("cert.pem"),
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), async || failed().await > before).await);
    assert!(handshake_ok(addr, &certs_example("ca.pem")).await);
    assert!(!handshake_ok(addr, &tls_fixture("rsa-pkcs1-cert.pem")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pod = mock("p", 0).await;
    let r = tls_router(dir.path(), &pod).await;
    let count = async || admin_metric(r.admin, "infergate_tls_handshake_failures_total").await;
    let before = count().await;
    let mut s = tokio::net::TcpStream::connect(r.https.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(s);
    // a client that does not trust the certificate aborts the handshake too
    assert!(!handshake_ok(r.https.unwrap(), &tls_fixture("rsa-pkcs1-cert.pem")).await);
    assert!(
        eventually(Duration::from_secs(5), async || count().await
            == before + 2.0)
        .await
    );
}

//! The mock's gRPC service and protocols, called directly (no router).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{client, empty, h2_client, send};
use mock_model::grpc::{connect, infer_request, response_param};
use mock_model::{MockConfig, MockProtocol, MockTls, spawn_local};

fn certs(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../certs-example")
        .join(file)
}

#[tokio::test]
async fn model_infer_echoes_its_inputs_and_counts_in_flight() {
    let pod = spawn_local(MockConfig {
        name: "g".into(),
        latency: Duration::from_millis(200),
        protocol: MockProtocol::H2c,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let c = connect(pod.addr()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = infer_request("m", &[1.0, 2.0], &[]);
            let id = req.id.clone();
            let resp = c.model_infer(req).await.unwrap().into_inner();
            assert_eq!(resp.id, id);
            assert_eq!(response_param(&resp, "pod"), Some("g"));
            let out = resp.outputs[0].contents.clone().unwrap();
            assert_eq!(out.fp32_contents, vec![1.0, 2.0]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = pod.stats();
    assert_eq!(
        (s.served, s.max_in_flight, s.connections),
        (3, 3, 1),
        "{s:?}"
    );
    // A requested status, with the trailing metadata.
    let mut c = c.clone();
    let e = c
        .model_infer(infer_request("m", &[], &[("grpc_status", 7)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.metadata().get("mock-trailer").unwrap(), "g");
}

#[tokio::test]
async fn model_stream_infer_answers_each_request_with_its_chunks() {
    let pod = spawn_local(MockConfig {
        protocol: MockProtocol::H2c,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut c = connect(pod.addr()).await.unwrap();
    let reqs = vec![
        infer_request("m", &[1.0], &[("chunks", 2)]),
        infer_request("m", &[2.0], &[("chunks", 3)]),
    ];
    let ids: Vec<String> = reqs.iter().map(|r| r.id.clone()).collect();
    let mut s = c
        .model_stream_infer(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.push(m.infer_response.unwrap().id);
    }
    let want: Vec<String> = [0, 0, 1, 1, 1].iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(got, want);
    assert_eq!(pod.stats().served, 2);
}

#[tokio::test]
async fn h2c_only_refuses_http11_and_serves_http2() {
    let pod = spawn_local(MockConfig {
        protocol: MockProtocol::H2c,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}/", pod.addr());
    let h1 = client().request(http::Request::get(&url).body(empty()).unwrap());
    assert!(h1.await.is_err(), "HTTP/1.1 is refused");
    let (status, _, body) = send(&h2_client(), "GET", &url, empty()).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"Healthy"[..]));
}

#[tokio::test]
async fn h2_serves_tls_with_alpn_h2() {
    let tls = MockTls::from_pem_files(&certs("server.pem"), &certs("server-key.pem")).unwrap();
    let pod = spawn_local(MockConfig {
        name: "tls".into(),
        protocol: MockProtocol::H2,
        tls: Some(tls),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(certs("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls_pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(pod.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut c = mock_model::grpc::client_over(tls, "https://localhost")
        .await
        .unwrap();
    let resp = c
        .model_infer(infer_request("m", &[3.0], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response_param(&resp, "pod"), Some("tls"));
}

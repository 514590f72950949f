//! Test support: an in-process router, mock pods, clients (h1/h2, plain/TLS) and Prometheus text.
//! The e2e tests of the `infergate` binary include this file too (`#[path]`), next to their runner.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infergate_config::Config;
use mock_model::{MockConfig, MockHandle};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
pub fn certs_example(file: &str) -> PathBuf {
    repo_root().join("certs-example").join(file)
}
pub fn tls_fixture(file: &str) -> PathBuf {
    repo_root().join("crates/tls/tests/fixtures").join(file)
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A router running in this process.
pub struct Router {
    /// The live router, to publish new specs while serving.
    pub router: Arc<infergate_proxy::Router>,
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Router {
    /// Starts a router from YAML (listen addresses default to 127.0.0.1:0 unless given).
    pub async fn start(yaml: &str) -> Router {
        let mut cfg = Config::from_yaml(yaml, "<test>").expect("test config parses");
        for v in [
            &mut cfg.listen.https,
            &mut cfg.listen.http,
            &mut cfg.listen.admin,
        ] {
            if v.starts_with("0.0.0.0") {
                *v = "127.0.0.1:0".into();
            }
        }
        let server = infergate_proxy::Server::bind(&cfg)
            .await
            .expect("router starts");
        let (tx, rx) = oneshot::channel();
        let (https, http, admin) = (server.https_addr(), server.http_addr(), server.admin_addr());
        let router = server.router().clone();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Router {
            router,
            https,
            http,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn http(&self) -> SocketAddr {
        self.http.expect("plain http listener")
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One client connection, HTTP/1.1 or HTTP/2, plain or TLS.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    H1,
    H2,
}

pub fn tls_client_config(
    roots_pem: &[PathBuf],
    alpn: &[&[u8]],
    tls12_only: bool,
) -> Arc<rustls::ClientConfig> {
    infergate_tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for p in roots_pem {
        for c in CertificateDer::pem_file_iter(p).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A TLS stream to `addr` for SNI `localhost`, trusting the example CA.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

impl Client {
    pub async fn plain(addr: SocketAddr, proto: Proto) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client::over(tcp, proto).await
    }

    pub async fn tls(addr: SocketAddr, proto: Proto) -> Client {
        let alpn: &[&[u8]] = match proto {
            Proto::H1 => &[b"http/1.1"],
            Proto::H2 => &[b"h2"],
        };
        let s = tls_connect(
            addr,
            tls_client_config(&[certs_example("ca.pem")], alpn, false),
        )
        .await
        .expect("TLS handshake");
        let negotiated = s.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let want: &[u8] = if proto == Proto::H2 {
            b"h2"
        } else {
            b"http/1.1"
        };
        assert_eq!(negotiated.as_deref(), Some(want), "ALPN negotiated");
        Client::over(s, proto).await
    }

    pub async fn over<I>(io: I, proto: Proto) -> Client
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        match proto {
            Proto::H1 => {
                let (s, c) = hyper::client::conn::http1::handshake(io)
                    .await
                    .expect("h1 handshake");
                tokio::spawn(c);
                Client::H1(s)
            }
            Proto::H2 => {
                let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
                tokio::spawn(c);
                Client::H2(s)
            }
        }
    }

    pub async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Client::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Sends and collects the whole answer.
    pub async fn call(&mut self, req: Request<Body>) -> Answer {
        let resp = self.send(req).await.expect("response");
        Answer::collect(resp).await
    }
}

/// A collected response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub async fn collect(resp: Response<Incoming>) -> Answer {
        let (p, b) = resp.into_parts();
        Answer {
            status: p.status,
            headers: p.headers,
            body: b.collect().await.expect("body").to_bytes(),
        }
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    /// Asserts the router's error shape: status, code, and the request id in body and header.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let j = self.json();
        assert_eq!(j["error"]["code"], code, "{j}");
        assert!(
            j["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{j}"
        );
        let rid = self.header("x-request-id");
        assert_eq!(rid.len(), 36, "request id header");
        assert_eq!(j["requestId"], rid, "{j}");
        assert_eq!(self.header("content-type"), "application/json");
    }
}

pub fn req(method: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "router.test")
        .body(body)
        .unwrap()
}

pub fn post(path: &str, body: &str) -> Request<Body> {
    let mut r = req("POST", path, full(body.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// One request on a fresh plain HTTP/1.1 connection.
pub async fn call(addr: SocketAddr, r: Request<Body>) -> Answer {
    Client::plain(addr, Proto::H1).await.call(r).await
}

/// GET on the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, req("GET", path, empty())).await
}

/// The value of a Prometheus sample whose line starts with `prefix` (name and labels), or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The router's whole `/metrics` text.
pub async fn metrics_text(r: &Router) -> String {
    String::from_utf8_lossy(&admin_get(r.admin, "/metrics").await.body).into_owned()
}

/// Scrapes the admin listener's `/metrics` and reads one sample (see [`metric`]).
pub async fn admin_metric(admin: SocketAddr, prefix: &str) -> f64 {
    let m = admin_get(admin, "/metrics").await;
    metric(&String::from_utf8_lossy(&m.body), prefix)
}

/// Polls `f` until it returns true, for at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a mock pod named `name` with `latency_ms` of service time.
pub async fn mock(name: &str, latency_ms: u64) -> MockHandle {
    mock_model::spawn_local(MockConfig {
        name: name.into(),
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// A plain-HTTP router config with these endpoints (YAML list items, each starting with
/// `  - name: `). Each endpoint gets `auth: {mode: none}`: the default, key mode with no key,
/// would refuse these tests' requests. The auth tests write their own `auth`.
pub fn insecure(endpoints: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .lines()
        .map(|l| {
            if l.starts_with("  - name: ") {
                format!("{l}\n    auth: {{mode: none}}")
            } else {
                l.to_string()
            }
        })
        .collect();
    format!(
        "allowInsecureConnections: true\nendpoints:\n{}\n",
        endpoints.join("\n")
    )
}

// === auth helpers (the in-process auth tests and the binary's) ===

pub const PRIMARY: &str = "pk-e2e-PRIMARY-7f3a9c1d2b";
pub const SECONDARY: &str = "sk-e2e-SECONDARY-4e8b0a6f1c";

/// A plain-HTTP config with these endpoint items, written as is (no `auth` added).
pub fn cfg(endpoints: &str) -> String {
    format!("allowInsecureConnections: true\nendpoints:\n{endpoints}\n")
}

pub fn keyed(name: &str, pod: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    auth: {{mode: key, primaryKey: \"{PRIMARY}\", secondaryKey: \"{SECONDARY}\"}}\n{extra}    deployments: [{{name: d, pods: [\"{pod}\"]}}]\n"
    )
}

pub fn with_header(mut q: Request<Body>, value: &str) -> Request<Body> {
    q.headers_mut()
        .insert("authorization", value.parse().unwrap());
    q
}

pub fn score(endpoint: &str, authorization: Option<&str>) -> Request<Body> {
    let q = post(&format!("/api/v1/endpoint/{endpoint}/score"), "{}");
    match authorization {
        Some(v) => with_header(q, v),
        None => q,
    }
}

/// Asserts a 401 in the router's error shape with this `WWW-Authenticate`.
pub fn assert_401(a: &Answer, www_authenticate: &str) {
    a.assert_error(401, "Unauthorized");
    assert_eq!(a.header("www-authenticate"), www_authenticate, "{a:?}");
}

pub fn failures(text: &str, endpoint: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("infergate_auth_failures_total{{endpoint=\"{endpoint}\",reason=\"{reason}\"}}"),
    )
}

//! Targets, TLS set-up and the per-connection hyper 1 clients (HTTP/1.1 and HTTP/2).
//!
//! Each connection is opened with `hyper::client::conn::{http1, http2}` handshakes, so the
//! generator decides exactly how many connections exist: one per worker for HTTP/1.1, one
//! shared by `--streams` workers for HTTP/2. A broken connection is reopened on the next
//! request of its worker(s); that request's latency includes the reconnect.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::cli::RunConfig;
use crate::report::{ErrorKind, Outcome};

/// System CA bundle used for https targets when `--cacert` is not given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

type ReqBody = Full<Bytes>;

/// A scheme + host + port that connections are opened to.
#[derive(Debug)]
struct Origin {
    https: bool,
    /// Host for SNI and certificate checks (IPv6 without brackets).
    host: String,
    addrs: Vec<SocketAddr>,
}

/// One target URL, ready to build requests.
#[derive(Debug)]
struct Target {
    origin: usize,
    uri: Uri,
    headers: HeaderMap,
}

/// Shared, immutable request factory and connector of a run.
pub(crate) struct Client {
    origins: Vec<Origin>,
    targets: Vec<Target>,
    tls: Option<TlsConnector>,
    http2: bool,
    method: Method,
    body: Bytes,
}

impl Client {
    /// Parses and resolves the targets and builds the TLS configuration.
    pub(crate) async fn new(cfg: &RunConfig) -> anyhow::Result<Self> {
        if cfg.urls.is_empty() {
            bail!("no target URL");
        }
        let method = Method::from_bytes(cfg.method.as_bytes())
            .with_context(|| format!("invalid method {:?}", cfg.method))?;
        let mut base = HeaderMap::new();
        for (name, value) in &cfg.headers {
            base.append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        if !cfg.body.is_empty() && !base.contains_key(header::CONTENT_TYPE) {
            base.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let host_override = base.remove(header::HOST);

        let mut origins: Vec<Origin> = Vec::new();
        let mut keys: Vec<(bool, String, u16)> = Vec::new();
        let mut targets = Vec::new();
        for url in &cfg.urls {
            let uri: Uri = url
                .parse()
                .with_context(|| format!("invalid URL {url:?}"))?;
            let https = match uri.scheme_str() {
                Some("http") => false,
                Some("https") => true,
                _ => bail!("URL {url:?} must start with http:// or https://"),
            };
            let authority = uri
                .authority()
                .with_context(|| format!("URL {url:?} has no host"))?
                .clone();
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
            let key = (https, host.clone(), port);
            let origin = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .with_context(|| format!("resolving {host}:{port}"))?
                        .collect();
                    if addrs.is_empty() {
                        bail!("{host}:{port} resolves to no address");
                    }
                    keys.push(key);
                    origins.push(Origin { https, host, addrs });
                    origins.len() - 1
                }
            };
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let mut headers = base.clone();
            let uri = if cfg.http2 {
                // HTTP/2 sends :scheme and :authority from an absolute URI.
                let auth = match &host_override {
                    Some(h) => h.to_str().context("Host header must be ASCII")?.to_owned(),
                    None => authority.as_str().to_owned(),
                };
                Uri::builder()
                    .scheme(if https { "https" } else { "http" })
                    .authority(auth)
                    .path_and_query(path)
                    .build()?
            } else {
                let host = match &host_override {
                    Some(h) => h.clone(),
                    None => HeaderValue::from_str(authority.as_str())?,
                };
                headers.insert(header::HOST, host);
                Uri::builder().path_and_query(path).build()?
            };
            targets.push(Target {
                origin,
                uri,
                headers,
            });
        }
        let tls = if origins.iter().any(|o| o.https) {
            Some(TlsConnector::from(Arc::new(tls_config(cfg)?)))
        } else {
            None
        };
        Ok(Self {
            origins,
            targets,
            tls,
            http2: cfg.http2,
            method,
            body: cfg.body.clone(),
        })
    }

    /// Number of distinct origins.
    pub(crate) fn origin_count(&self) -> usize {
        self.origins.len()
    }

    /// Index of the target of request `i` (requests rotate among the targets).
    fn target(&self, i: u64) -> &Target {
        // The remainder is < len, so it fits in usize.
        &self.targets[(i % self.targets.len() as u64) as usize]
    }

    fn request(&self, t: &Target) -> Request<ReqBody> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = t.uri.clone();
        *req.headers_mut() = t.headers.clone();
        req
    }

    async fn connect(&self, origin: usize) -> Result<Sender, ErrorKind> {
        let o = &self.origins[origin];
        let tcp = connect_tcp(&o.addrs).await.ok_or(ErrorKind::Connect)?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, o.https) {
            (Some(tls), true) => {
                let name = ServerName::try_from(o.host.clone()).map_err(|_| ErrorKind::Tls)?;
                let stream = tls.connect(name, tcp).await.map_err(|_| ErrorKind::Tls)?;
                self.handshake(TokioIo::new(stream)).await
            }
            _ => self.handshake(TokioIo::new(tcp)).await,
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<Sender, ErrorKind>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if self.http2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| classify(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(|e| classify(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(sender))
        }
    }
}

async fn connect_tcp(addrs: &[SocketAddr]) -> Option<TcpStream> {
    for addr in addrs {
        if let Ok(s) = TcpStream::connect(addr).await {
            return Some(s);
        }
    }
    None
}

fn classify(e: &hyper::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_parse() || e.is_parse_status() || e.is_user() {
        ErrorKind::Protocol
    } else {
        ErrorKind::Io
    }
}

/// Reads a response body to its end, counting bytes without keeping them.
async fn read_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// An HTTP/2 connection shared by the workers (streams) of one connection slot.
type SharedH2 = Arc<Mutex<Option<http2::SendRequest<ReqBody>>>>;

enum Conn {
    H1(Option<http1::SendRequest<ReqBody>>),
    H2(SharedH2),
}

/// What one worker sends through: its own HTTP/1.1 connection per origin, or a share of an
/// HTTP/2 connection per origin.
pub(crate) struct Slot {
    conns: Vec<Conn>,
}

/// Builds the worker slots: `connections` connections per origin, each used by
/// `streams` workers (HTTP/2) or one worker (HTTP/1.1).
pub(crate) fn make_slots(client: &Client, connections: u64, streams: u64) -> Vec<Slot> {
    let mut slots = Vec::new();
    for _ in 0..connections {
        if client.http2 {
            let shared: Vec<SharedH2> = (0..client.origin_count())
                .map(|_| Arc::new(Mutex::new(None)))
                .collect();
            for _ in 0..streams {
                slots.push(Slot {
                    conns: shared.iter().map(|s| Conn::H2(Arc::clone(s))).collect(),
                });
            }
        } else {
            slots.push(Slot {
                conns: (0..client.origin_count()).map(|_| Conn::H1(None)).collect(),
            });
        }
    }
    slots
}

impl Slot {
    /// Opens this slot's connections ahead of the run (failures are left for the requests
    /// to report).
    pub(crate) async fn preconnect(&mut self, client: &Client) {
        for (origin, conn) in self.conns.iter_mut().enumerate() {
            match conn {
                Conn::H1(slot @ None) => {
                    if let Ok(Sender::H1(s)) = client.connect(origin).await {
                        *slot = Some(s);
                    }
                }
                Conn::H1(Some(_)) => {}
                Conn::H2(shared) => {
                    let mut guard = shared.lock().await;
                    if guard.is_none()
                        && let Ok(Sender::H2(s)) = client.connect(origin).await
                    {
                        *guard = Some(s);
                    }
                }
            }
        }
    }

    /// Forgets the HTTP/1.1 connection of request `i` after a timeout (its state is unknown).
    pub(crate) fn on_timeout(&mut self, client: &Client, i: u64) {
        if let Conn::H1(slot) = &mut self.conns[client.target(i).origin] {
            *slot = None;
        }
    }

    /// Sends request `i` and reads its whole response.
    pub(crate) async fn send(&mut self, client: &Client, i: u64) -> Outcome {
        let target = client.target(i);
        match &mut self.conns[target.origin] {
            Conn::H1(slot) => {
                if slot.as_ref().is_none_or(|s| s.is_closed()) {
                    *slot = None;
                    match client.connect(target.origin).await {
                        Ok(Sender::H1(s)) => *slot = Some(s),
                        Ok(Sender::H2(_)) => unreachable!("HTTP/1.1 slot got an HTTP/2 connection"),
                        Err(kind) => return Outcome::Error(kind),
                    }
                }
                let Some(sender) = slot.as_mut() else {
                    unreachable!("connection was just set")
                };
                let result = match sender.ready().await {
                    Ok(()) => exchange(sender.send_request(client.request(target))).await,
                    Err(e) => Err(classify(&e)),
                };
                if result.is_err() {
                    *slot = None;
                }
                result.unwrap_or_else(Outcome::Error)
            }
            Conn::H2(shared) => {
                let mut sender = {
                    let mut guard = shared.lock().await;
                    if guard.as_ref().is_none_or(|s| s.is_closed()) {
                        *guard = None;
                        match client.connect(target.origin).await {
                            Ok(Sender::H2(s)) => *guard = Some(s),
                            Ok(Sender::H1(_)) => {
                                unreachable!("HTTP/2 slot got an HTTP/1.1 connection")
                            }
                            Err(kind) => return Outcome::Error(kind),
                        }
                    }
                    match guard.as_ref() {
                        Some(s) => s.clone(),
                        None => unreachable!("connection was just set"),
                    }
                };
                let result = match sender.ready().await {
                    Ok(()) => exchange(sender.send_request(client.request(target))).await,
                    Err(e) => Err(classify(&e)),
                };
                if result.is_err() && sender.is_closed() {
                    let mut guard = shared.lock().await;
                    if guard.as_ref().is_some_and(|s| s.is_closed()) {
                        *guard = None;
                    }
                }
                result.unwrap_or_else(Outcome::Error)
            }
        }
    }
}

async fn exchange(
    response: impl Future<Output = Result<http::Response<Incoming>, hyper::Error>>,
) -> Result<Outcome, ErrorKind> {
    let resp = response.await.map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let bytes = read_body(resp.into_body())
        .await
        .map_err(|e| classify(&e))?;
    Ok(Outcome::Response { status, bytes })
}

fn tls_config(cfg: &RunConfig) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = if cfg.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let (path, strict) = match &cfg.cacert {
            Some(p) => (p.as_path(), true),
            None => (Path::new(SYSTEM_CA_BUNDLE), false),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| {
                format!(
                    "reading CA certificates from {} (use --cacert FILE or --insecure)",
                    path.display()
                )
            })?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing PEM in {}", path.display()))?;
        if strict {
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("bad CA certificate in {}", path.display()))?;
            }
        } else {
            roots.add_parsable_certificates(certs);
        }
        if roots.is_empty() {
            bail!("no CA certificate found in {}", path.display());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = if cfg.http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// `--insecure`: accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

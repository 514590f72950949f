//! The server-side TLS stream (`infergate_tls::stream`) over real sockets on 127.0.0.1, against
//! rustls's own buffered client (tokio-rustls): handshakes (SNI, ALPN, TLS 1.2), large and
//! fragmented transfers, every way of closing, certificate reloads, and the buffers a waiting
//! session holds (none).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use infergate_metrics::Registry;
use infergate_tls::stream::{BufPool, TlsAcceptor, TlsStream};
use infergate_tls::{ReloadingCert, install_crypto_provider, server_config};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

const LIMIT: Duration = Duration::from_secs(20);

// === helpers ===

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// The example certificate (localhost, *.infergate.local, 127.0.0.1) in a temporary directory
/// (so that a test can replace it), served by a [`ReloadingCert`].
struct Served {
    dir: tempfile::TempDir,
    resolver: Arc<ReloadingCert>,
}

impl Served {
    fn new() -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_file("../../certs-example/server.pem"),
            dir.path().join("cert.pem"),
        )
        .unwrap();
        std::fs::copy(
            repo_file("../../certs-example/server-key.pem"),
            dir.path().join("key.pem"),
        )
        .unwrap();
        let resolver = ReloadingCert::load(
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            &Registry::new(),
        )
        .unwrap();
        Served { dir, resolver }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::new(
            server_config(self.resolver.clone()),
            Arc::new(BufPool::default()),
        )
    }
}

fn example_ca() -> CertificateDer<'static> {
    first_cert(&repo_file("../../certs-example/ca.pem"))
}

struct Client {
    root: CertificateDer<'static>,
    alpn: Vec<Vec<u8>>,
    tls12: bool,
    sni: &'static str,
}

impl Client {
    fn new() -> Self {
        Client {
            root: example_ca(),
            alpn: vec![b"http/1.1".to_vec()],
            tls12: false,
            sni: "localhost",
        }
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = self.alpn.clone();
        Arc::new(c)
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<ClientStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(self.sni).unwrap();
        tokio::time::timeout(LIMIT, TlsConnector::from(self.config()).connect(name, tcp))
            .await
            .expect("client handshake timed out")
    }
}

/// A listener on 127.0.0.1:0 whose connections are handed over one by one (TCP only: the test
/// runs the TLS handshake).
struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Listener { listener, addr }
    }

    /// One connection from `client`: the server's stream (its handshake's result) and the
    /// client's.
    async fn pair(
        &self,
        acceptor: &TlsAcceptor,
        client: &Client,
    ) -> (
        std::io::Result<TlsStream>,
        std::io::Result<ClientStream<TcpStream>>,
    ) {
        let server = async {
            let (tcp, _) = self.listener.accept().await.unwrap();
            tokio::time::timeout(LIMIT, acceptor.accept(tcp))
                .await
                .expect("server handshake timed out")
        };
        tokio::join!(server, client.connect(self.addr))
    }

    async fn ok_pair(
        &self,
        acceptor: &TlsAcceptor,
        client: &Client,
    ) -> (TlsStream, ClientStream<TcpStream>) {
        let (s, c) = self.pair(acceptor, client).await;
        (s.expect("server handshake"), c.expect("client handshake"))
    }
}

/// A deterministic pattern of `n` bytes (not all alike, so that an order error shows).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

// === handshakes ===

/// Records the SNI each handshake presents, and serves the example certificate.
#[derive(Debug)]
struct SniRecorder {
    inner: Arc<ReloadingCert>,
    seen: Mutex<Vec<Option<String>>>,
}

impl ResolvesServerCert for SniRecorder {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.seen
            .lock()
            .push(hello.server_name().map(str::to_owned));
        self.inner.resolve(hello)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_passes_sni_to_the_resolver_and_agrees_on_alpn() {
    let served = Served::new();
    let recorder = Arc::new(SniRecorder {
        inner: served.resolver.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(recorder.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let l = Listener::new().await;

    type Case = (
        &'static str,
        &'static [&'static [u8]],
        Option<&'static [u8]>,
    );
    let cases: [Case; 4] = [
        ("localhost", &[b"h2", b"http/1.1"], Some(b"h2")),
        ("api.infergate.local", &[b"http/1.1"], Some(b"http/1.1")),
        ("localhost", &[b"http/1.1", b"h2"], Some(b"h2")),
        ("localhost", &[], None),
    ];
    for (sni, offer, want) in cases {
        let client = Client {
            sni,
            alpn: offer.iter().map(|p| p.to_vec()).collect(),
            ..Client::new()
        };
        let (mut s, mut c) = l.ok_pair(&acceptor, &client).await;
        assert_eq!(s.alpn_protocol(), want, "{sni} {offer:?}");
        assert_eq!(c.get_ref().1.alpn_protocol(), want);
        assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 4];
        within(s.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"ping");
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        within(c.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"pong");
    }
    assert_eq!(
        *recorder.seen.lock(),
        [
            Some("localhost".to_owned()),
            Some("api.infergate.local".to_owned()),
            Some("localhost".to_owned()),
            Some("localhost".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_client_handshakes_and_exchanges_data() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let client = Client {
        tls12: true,
        alpn: vec![b"h2".to_vec()],
        ..Client::new()
    };
    let (mut s, mut c) = l.ok_pair(&acceptor, &client).await;
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(s.alpn_protocol(), Some(&b"h2"[..]));
    let big = pattern(300_000, 3);
    let (sent, got) = tokio::join!(
        async {
            c.write_all(&big).await.unwrap();
            c.flush().await.unwrap();
        },
        async {
            let mut got = vec![0u8; big.len()];
            within(s.read_exact(&mut got)).await.unwrap();
            got
        }
    );
    let () = sent;
    assert!(got == big, "TLS 1.2 bytes arrive intact");
    s.write_all(b"over 1.2").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"over 1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshake_sends_the_alert_and_reports_the_reason() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    // No protocol in common: the server refuses with no_application_protocol.
    let client = Client {
        alpn: vec![b"spdy/3".to_vec()],
        ..Client::new()
    };
    let (s, c) = l.pair(&acceptor, &client).await;
    let s = s.expect_err("no common ALPN protocol");
    assert_eq!(s.kind(), std::io::ErrorKind::InvalidData, "{s}");
    let c = c.expect_err("the client is refused");
    assert!(
        c.to_string().contains("NoApplicationProtocol"),
        "the client got the server's alert: {c}"
    );
    // An untrusted certificate: the client's alert reaches the server.
    let client = Client {
        root: first_cert(&repo_file("tests/fixtures/rsa-pkcs1-cert.pem")),
        ..Client::new()
    };
    let (s, c) = l.pair(&acceptor, &client).await;
    assert!(c.is_err());
    let s = s.expect_err("the client refused the certificate");
    assert!(s.to_string().contains("alert"), "{s}");
    // The connection closes before the handshake ends.
    let tcp = TcpStream::connect(l.addr).await.unwrap();
    let (accepted, _) = l.listener.accept().await.unwrap();
    drop(tcp);
    let e = within(acceptor.accept(accepted)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(acceptor.pool().held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_input_waits_for_a_byte_from_the_client() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    for tls12 in [false, true] {
        let client = Client {
            tls12,
            ..Client::new()
        };
        let (mut s, mut c) = l.ok_pair(&acceptor, &client).await;
        // The handshake's last read got bytes (so the socket still counts as readable to
        // tokio), yet the client has sent nothing since.
        let early = tokio::time::timeout(Duration::from_millis(300), s.wait_for_input()).await;
        assert!(early.is_err(), "no input yet (TLS 1.2: {tls12})");
        assert_eq!(s.held_buffers(), 0);
        c.write_all(b"x").await.unwrap();
        c.flush().await.unwrap();
        within(s.wait_for_input()).await.unwrap();
        let mut got = [0u8; 1];
        within(s.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"x");
        // A client that closes is input too (the read that follows sees the end).
        c.shutdown().await.unwrap();
        within(s.wait_for_input()).await.unwrap();
        assert_eq!(within(s.read(&mut got)).await.unwrap(), 0);
    }
}

// === transfers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_in_records_larger_than_the_readers_buffer() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let (mut s, mut c) = l.ok_pair(&acceptor, &Client::new()).await;
    let request = pattern(5 << 20, 1);
    let response = pattern(6 << 20, 2);
    let (from_client, from_server) = tokio::join!(
        async {
            // The client writes 5 MiB (16 KiB records) while reading the answer.
            let (mut r, mut w) = tokio::io::split(&mut c);
            let ((), got) = tokio::join!(
                async {
                    w.write_all(&request).await.unwrap();
                    w.flush().await.unwrap();
                },
                async {
                    let mut got = vec![0u8; response.len()];
                    r.read_exact(&mut got).await.unwrap();
                    got
                }
            );
            got
        },
        async {
            // The server reads in 1000-byte steps (each record spans many reads) and answers
            // with 1 MiB writes as it goes.
            let mut got = Vec::with_capacity(request.len());
            let mut buf = [0u8; 1000];
            let mut sent = 0;
            while got.len() < request.len() {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "early end after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
                if sent < response.len() && got.len() >= sent / 2 {
                    let end = (sent + (1 << 20)).min(response.len());
                    s.write_all(&response[sent..end]).await.unwrap();
                    sent = end;
                }
            }
            s.write_all(&response[sent..]).await.unwrap();
            s.flush().await.unwrap();
            got
        }
    );
    assert!(from_server == request, "request arrived intact");
    assert!(from_client == response, "response arrived intact");
    assert_eq!(
        s.held_buffers(),
        0,
        "nothing held once all is read and sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_writes_arrive_in_order_and_vectored_writes_are_gathered() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let (mut s, mut c) = l.ok_pair(&acceptor, &Client::new()).await;
    let expected: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("{i},").into_bytes())
        .collect();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; expected.len()];
        within(c.read_exact(&mut got)).await.unwrap();
        (got == expected, c)
    });
    for i in 0..10_000u32 {
        s.write_all(format!("{i},").as_bytes()).await.unwrap();
    }
    // The rest as vectored writes of several small slices each (as an HTTP/2 frame header
    // and its payload come).
    let tail: Vec<String> = (10_000..20_000u32).map(|i| format!("{i},")).collect();
    for chunk in tail.chunks(7) {
        let total: usize = chunk.iter().map(String::len).sum();
        let mut done = 0;
        while done < total {
            // Resume after what the previous call took.
            let mut rest = Vec::new();
            let mut skip = done;
            for t in chunk {
                let b = t.as_bytes();
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                rest.push(std::io::IoSlice::new(&b[skip..]));
                skip = 0;
            }
            let n = s.write_vectored(&rest).await.unwrap();
            assert!(n > 0);
            done += n;
        }
    }
    s.flush().await.unwrap();
    let (intact, _c) = within(reader).await.unwrap();
    assert!(intact, "20,000 small writes arrive in order");
}

// === closing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_notify_ends_the_read_side_and_the_server_can_still_answer() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let (mut s, mut c) = l.ok_pair(&acceptor, &Client::new()).await;
    c.write_all(b"last words").await.unwrap();
    // close_notify, then the TCP write half.
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"last words", "the request, then a clean end");
    assert_eq!(
        within(s.read(&mut [0u8; 8])).await.unwrap(),
        0,
        "stays ended"
    );
    // The write side is still open: the answer, then our close_notify.
    s.write_all(b"answer").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(
        back, b"answer",
        "answer and a clean close_notify (no error)"
    );
    assert!(s.write_all(b"more").await.is_err(), "no write after close");
    drop(s);
    assert_eq!(acceptor.pool().held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_client_close_is_an_unexpected_eof() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let (mut s, mut c) = l.ok_pair(&acceptor, &Client::new()).await;
    s.write_all(b"hello").await.unwrap();
    s.flush().await.unwrap();
    within(c.read_exact(&mut [0u8; 5])).await.unwrap();
    // The client sends half a record and ends the connection (FIN, no close_notify).
    let (mut tcp, _) = c.into_inner();
    tcp.write_all(&[23, 3, 3, 0, 100, 1, 2, 3]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let e = within(s.read(&mut [0u8; 64])).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(s.held_buffers(), 1, "the half record is kept");
    drop(s);
    assert_eq!(acceptor.pool().held(), 0, "buffers given back on drop");

    // A reset (the client drops the socket with bytes it never read).
    let (mut s, c) = l.ok_pair(&acceptor, &Client::new()).await;
    s.write_all(b"never read").await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(c);
    let e = within(s.read(&mut [0u8; 64])).await.unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{e}"
    );
    drop(s);

    // Garbage where a record should be: a protocol error, and the alert goes out.
    let (mut s, c) = l.ok_pair(&acceptor, &Client::new()).await;
    let (mut tcp, _) = c.into_inner();
    tcp.write_all(&[23, 3, 3, 0, 20]).await.unwrap();
    tcp.write_all(&[0xAA; 20]).await.unwrap();
    let e = within(s.read(&mut [0u8; 64])).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    drop(s);
    assert_eq!(acceptor.pool().held(), 0);
    // What the client has not read yet: maybe session tickets, then the alert (TLS 1.3: an
    // encrypted record of 2 bytes + content type + 16-byte tag), then the end.
    let mut back = Vec::new();
    within(tcp.read_to_end(&mut back)).await.unwrap();
    let mut records = Vec::new();
    let mut rest = &back[..];
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        records.push((rest[0], len));
        rest = &rest[(5 + len).min(rest.len())..];
    }
    assert_eq!(
        records.last(),
        Some(&(23, 19)),
        "the alert came last: {records:?}"
    );
}

// === certificates ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_reload_serves_new_handshakes_and_keeps_open_sessions() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let (mut old_s, mut old_c) = l.ok_pair(&acceptor, &Client::new()).await;
    let new_cert = repo_file("tests/fixtures/rsa-pkcs1-cert.pem");
    std::fs::copy(
        repo_file("tests/fixtures/rsa-pkcs1-key.pem"),
        served.dir.path().join("key.pem"),
    )
    .unwrap();
    std::fs::copy(&new_cert, served.dir.path().join("cert.pem")).unwrap();
    assert!(served.resolver.reload().unwrap());

    let trusting_new = Client {
        root: first_cert(&new_cert),
        ..Client::new()
    };
    let (mut new_s, mut new_c) = l.ok_pair(&acceptor, &trusting_new).await;
    assert_eq!(
        new_c.get_ref().1.peer_certificates().unwrap()[0],
        first_cert(&new_cert)
    );
    let (s, c) = l.pair(&acceptor, &Client::new()).await;
    assert!(
        c.is_err() && s.is_err(),
        "the old chain is no longer served"
    );
    // Both open sessions keep working.
    for (s, c) in [(&mut old_s, &mut old_c), (&mut new_s, &mut new_c)] {
        c.write_all(b"still here").await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 10];
        within(s.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"still here");
        s.write_all(b"yes").await.unwrap();
        s.flush().await.unwrap();
        let mut back = [0u8; 3];
        within(c.read_exact(&mut back)).await.unwrap();
        assert_eq!(&back, b"yes");
    }
}

// === memory ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_sessions_hold_no_io_buffer() {
    let served = Served::new();
    let acceptor = served.acceptor();
    let l = Listener::new().await;
    let mut sessions = Vec::new();
    for i in 0..40u8 {
        let client = Client {
            tls12: i % 4 == 0,
            alpn: vec![if i % 2 == 0 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }],
            ..Client::new()
        };
        sessions.push(l.ok_pair(&acceptor, &client).await);
    }
    // Handshakes done (tickets sent), nothing else yet.
    assert_eq!(acceptor.pool().held(), 0, "after the handshakes");
    assert!(sessions.iter().all(|(s, _)| s.held_buffers() == 0));

    // One exchange each, with a body larger than one record.
    let body = pattern(40_000, 9);
    for (s, c) in &mut sessions {
        c.write_all(&body).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; body.len()];
        within(s.read_exact(&mut got)).await.unwrap();
        assert!(got == body);
        s.write_all(&body).await.unwrap();
        s.flush().await.unwrap();
        within(c.read_exact(&mut got)).await.unwrap();
        assert!(got == body);
    }
    assert_eq!(acceptor.pool().held(), 0, "between requests");

    // Reads pending on every session (as a server waits for the next request): still none.
    let mut waiting = Vec::new();
    let mut clients = Vec::new();
    let pool = acceptor.pool().clone();
    for (mut s, c) in sessions {
        clients.push(c);
        waiting.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            (buf[..n].to_vec(), s)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()));
    assert_eq!(pool.held(), 0, "while reads wait on the sockets");
    assert!(pool.free() > 0, "buffers were used and came back");

    for c in &mut clients {
        c.write_all(b"next").await.unwrap();
        c.flush().await.unwrap();
    }
    for w in waiting {
        let (got, s) = within(w).await.unwrap();
        assert_eq!(got, b"next");
        assert_eq!(s.held_buffers(), 0);
    }
    assert_eq!(pool.held(), 0);
}

//! TLS for infergate: PEM certificate loading and a hot-reloading rustls certificate resolver.
//!
//! The server certificate and key come from two PEM files (`sslCertPemFile`, `sslKeyPemFile`).
//! [`ReloadingCert`] serves them to rustls and can swap in a new pair atomically: new
//! handshakes get the new certificate, established connections are not affected. A broken
//! replacement is rejected and logged once while the previous pair keeps serving.
//!
//! [`stream`] serves the TLS sessions themselves: an `AsyncRead + AsyncWrite` stream over
//! rustls's unbuffered API whose I/O buffers are taken only while there are bytes to hold, so a
//! waiting session keeps no buffer.
//!
//! Only the `ring` crypto provider is used (never aws-lc-rs).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use infergate_metrics::{Counter, Describe, Gauge, Kind, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

pub mod stream;

/// Name of the counter of certificate reload attempts whose files had changed, labelled
/// `result="ok"` (new pair serving) or `result="failed"` (new content rejected).
pub const CERT_RELOADS_TOTAL: &str = "infergate_tls_cert_reloads_total";

/// Name of the gauge holding the serving leaf certificate's notAfter in Unix seconds, set when
/// the pair is loaded and at each successful reload (`x - time()` is the time left).
pub const CERT_EXPIRY_TIMESTAMP_SECONDS: &str =
    "infergate_tls_certificate_expiry_timestamp_seconds";

/// Name of the gauge that is 1 while the certificate and key files in place are the pair being
/// served (at load, and after each successful reload) and 0 once changed files were rejected
/// (the previous pair keeps serving until the files are fixed): what a reload-failing alert reads.
pub const CERT_LAST_RELOAD_SUCCESSFUL: &str = "infergate_tls_cert_last_reload_successful";

/// The metric families this crate records, with their help text.
pub const FAMILIES: &[Describe] = &[
    Describe::new(
        CERT_RELOADS_TOTAL,
        Kind::Counter,
        "TLS certificate reloads after the certificate or key file changed, by result (ok, failed).",
    ),
    Describe::new(
        CERT_LAST_RELOAD_SUCCESSFUL,
        Kind::Gauge,
        "1 while the certificate and key files in place are served; 0 after changed files were rejected (the previous pair keeps serving).",
    ),
    Describe::new(
        CERT_EXPIRY_TIMESTAMP_SECONDS,
        Kind::Gauge,
        "When the serving (leaf) certificate expires (its notAfter), Unix time; updated at load and at each reload.",
    ),
];

/// When the certificate `leaf` (DER) stops being valid, its notAfter, in seconds since the Unix
/// epoch; `None` if it does not parse as an RFC 5280 certificate.
pub fn not_after_unix_seconds(leaf: &[u8]) -> Option<u64> {
    let cert = x509_cert::Certificate::from_der(leaf).ok()?;
    Some(
        cert.tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs(),
    )
}

/// ALPN protocols offered by [`server_config`], in server preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Installs ring as the process-wide rustls `CryptoProvider`.
///
/// Idempotent and safe to call from every test. If a different provider was already
/// installed it is left in place; the configs built by this crate use ring explicitly.
pub fn install_crypto_provider() {
    // Err means a provider is already installed (ours from an earlier call, or another one,
    // which is left in place: the configs built here name ring explicitly anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a certificate/key pair could not be loaded.
///
/// Every message names the offending file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, permissions, ...).
    #[error(
        "cannot read {}: {source}; check that the file exists and is readable by the infergate process",
        path.display()
    )]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A file is not well-formed PEM.
    #[error("{} is not valid PEM: {source}; expected PEM blocks such as `-----BEGIN CERTIFICATE-----`", path.display())]
    Pem {
        /// The malformed file.
        path: PathBuf,
        /// The PEM parser's error.
        #[source]
        source: pem::Error,
    },

    /// The certificate file holds no certificate.
    #[error(
        "no certificate found in {}; it must contain the PEM certificate chain \
         (`-----BEGIN CERTIFICATE-----`), leaf certificate first",
        path.display()
    )]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },

    /// The leaf certificate could not be parsed as X.509.
    #[error(
        "the first certificate in {} is not a valid X.509 certificate ({source}); \
         it must be the server's leaf certificate in PEM",
        path.display()
    )]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What rustls/webpki objected to.
        #[source]
        source: rustls::Error,
    },

    /// The key file holds no private key.
    #[error(
        "no private key found in {}; expected an unencrypted PEM private key: PKCS#8 \
         (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`)",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },

    /// The private key is passphrase-protected.
    #[error(
        "the private key in {p} is encrypted with a passphrase; infergate needs an unencrypted key: \
         decrypt it with `openssl pkey -in {p} -out {p}.dec` and point the key file setting at the result",
        p = path.display()
    )]
    EncryptedKey {
        /// The key file.
        path: PathBuf,
    },

    /// The private key is of a type (or size) the ring provider cannot sign with.
    #[error(
        "unsupported private key in {} ({source}); supported are RSA (2048 bits or more), \
         ECDSA P-256/P-384 and Ed25519",
        path.display()
    )]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// The provider's error.
        #[source]
        source: rustls::Error,
    },

    /// The private key does not belong to the leaf certificate.
    #[error(
        "the private key in {} does not match the certificate in {} (the first certificate in the \
         chain must be the leaf issued for this key); check that the certificate and key files belong together",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// True if the PEM text holds a passphrase-protected key (PKCS#8 `ENCRYPTED PRIVATE KEY`
/// or a legacy OpenSSL `Proc-Type: 4,ENCRYPTED` header).
fn looks_encrypted(pem_text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem_text);
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.lines().any(|line| {
            line.trim()
                .replace(' ', "")
                .eq_ignore_ascii_case("Proc-Type:4,ENCRYPTED")
        })
}

/// Parses a PEM chain and key (already read from `cert_path` / `key_path`) into a
/// signing-ready [`CertifiedKey`].
fn parse_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }

    // Before parsing: the PEM parser would otherwise report "no key" or a base64 error.
    if looks_encrypted(key_pem) {
        return Err(TlsError::EncryptedKey {
            path: key_path.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey {
                path: key_path.to_owned(),
            });
        }
        Err(source) => {
            return Err(TlsError::Pem {
                path: key_path.to_owned(),
                source,
            });
        }
    };

    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            })
        }
        // The key cannot report its public key: nothing to compare (not the case for ring keys).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(source) => Err(TlsError::InvalidCertificate {
            path: cert_path.to_owned(),
            source,
        }),
    }
}

/// Loads a PEM certificate chain (leaf first) and an unencrypted PKCS#8, PKCS#1 or SEC1
/// private key, checks that the key matches the leaf certificate and returns the
/// signing-ready pair (using the ring provider).
pub fn load_certified_key(cert_pem: &Path, key_pem: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_bytes = read(cert_pem)?;
    let key_bytes = read(key_pem)?;
    parse_pair(cert_pem, &cert_bytes, key_pem, &key_bytes).map(Arc::new)
}

/// What the last (re)load attempt saw, to avoid re-parsing and re-logging unchanged files.
#[derive(PartialEq, Eq)]
enum Seen {
    /// Both files were read; their contents.
    Bytes { cert: Vec<u8>, key: Vec<u8> },
    /// Reading failed; the error message.
    ReadFailed(String),
}

/// A rustls [`ResolvesServerCert`] serving one certificate/key pair loaded from PEM files,
/// which can be swapped atomically by [`ReloadingCert::reload`] (or periodically by
/// [`ReloadingCert::spawn_watcher`]).
///
/// New handshakes use the newest pair; open connections are untouched.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Also serialises concurrent `reload` calls.
    last_seen: Mutex<Seen>,
    reloads_ok: Counter,
    reloads_failed: Counter,
    /// [`CERT_LAST_RELOAD_SUCCESSFUL`].
    last_ok: Gauge,
    /// Where the expiry gauge is registered, once a leaf's notAfter could be read.
    registry: Registry,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the initial pair; fails (for start-up to abort) if it is unusable.
    /// Reloads are counted in `registry` ([`CERT_RELOADS_TOTAL`]), and the serving leaf's
    /// expiry is exported there ([`CERT_EXPIRY_TIMESTAMP_SECONDS`]).
    pub fn load(
        cert_pem: PathBuf,
        key_pem: PathBuf,
        registry: &Registry,
    ) -> Result<Arc<Self>, TlsError> {
        registry.describe(FAMILIES);
        let cert = read(&cert_pem)?;
        let key = read(&key_pem)?;
        let certified = parse_pair(&cert_pem, &cert, &key_pem, &key)?;
        tracing::info!(cert = %cert_pem.display(), key = %key_pem.display(), "loaded TLS certificate");
        let this = Self {
            current: ArcSwap::from_pointee(certified),
            last_seen: Mutex::new(Seen::Bytes { cert, key }),
            reloads_ok: registry.counter(CERT_RELOADS_TOTAL, &[("result", "ok")]),
            reloads_failed: registry.counter(CERT_RELOADS_TOTAL, &[("result", "failed")]),
            last_ok: registry.gauge(CERT_LAST_RELOAD_SUCCESSFUL, &[]),
            registry: registry.clone(),
            cert_path: cert_pem,
            key_path: key_pem,
        };
        this.record_expiry(&this.current());
        this.last_ok.set(1.0);
        Ok(Arc::new(this))
    }

    /// Sets [`CERT_EXPIRY_TIMESTAMP_SECONDS`] from the leaf of `certified`. A leaf whose notAfter
    /// cannot be read (rustls accepted it, so this is not expected) leaves the gauge as it was
    /// (absent at start) and logs a warning: an unknown expiry is never exported as a number.
    fn record_expiry(&self, certified: &CertifiedKey) {
        match certified
            .end_entity_cert()
            .ok()
            .and_then(|leaf| not_after_unix_seconds(leaf))
        {
            Some(secs) => self
                .registry
                .gauge(CERT_EXPIRY_TIMESTAMP_SECONDS, &[])
                .set(secs as f64),
            None => tracing::warn!(
                cert = %self.cert_path.display(),
                "cannot read the certificate's expiry (notAfter); {CERT_EXPIRY_TIMESTAMP_SECONDS} is not updated"
            ),
        }
    }

    /// Re-reads both files and, if their bytes changed since the last attempt, parses them.
    ///
    /// - `Ok(true)`: the new pair was swapped in and serves new handshakes.
    /// - `Ok(false)`: the files are unchanged since the last attempt, whether that attempt
    ///   succeeded or was rejected (a rejected content is not retried or re-logged until the
    ///   files change again).
    /// - `Err`: the new content (or reading it) failed; the previous pair keeps serving.
    ///
    /// Each attempt on changed content is logged and counted in [`CERT_RELOADS_TOTAL`].
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let read_both = read(&self.cert_path).and_then(|cert| Ok((cert, read(&self.key_path)?)));
        let (cert, key) = match read_both {
            Ok(pair) => pair,
            Err(err) => {
                let seen = Seen::ReadFailed(err.to_string());
                if *last_seen == seen {
                    return Ok(false);
                }
                *last_seen = seen;
                return Err(self.rejected(err));
            }
        };
        if matches!(&*last_seen, Seen::Bytes { cert: c, key: k } if *c == cert && *k == key) {
            return Ok(false);
        }
        let parsed = parse_pair(&self.cert_path, &cert, &self.key_path, &key);
        *last_seen = Seen::Bytes { cert, key };
        match parsed {
            Ok(certified) => {
                self.record_expiry(&certified);
                self.current.store(Arc::new(certified));
                self.reloads_ok.increment(1);
                self.last_ok.set(1.0);
                tracing::info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    "reloaded TLS certificate; new connections use it"
                );
                Ok(true)
            }
            Err(err) => Err(self.rejected(err)),
        }
    }

    fn rejected(&self, err: TlsError) -> TlsError {
        self.reloads_failed.increment(1);
        self.last_ok.set(0.0);
        tracing::error!(
            cert = %self.cert_path.display(),
            key = %self.key_path.display(),
            error = %err,
            "TLS certificate reload failed; still serving the previous certificate"
        );
        err
    }

    /// Spawns a tokio task that calls [`reload`](Self::reload) every `interval` (at least 1 ms).
    ///
    /// Polling rather than inotify: Kubernetes Secret volumes update by swapping a `..data`
    /// symlink, which inotify watchers often miss. The task ends when every other `Arc` to
    /// this resolver is dropped, or when the returned handle is aborted. Must be called
    /// within a tokio runtime.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(this) = weak.upgrade() else { break };
                // File I/O off the async workers. Outcomes are logged and counted by reload().
                if tokio::task::spawn_blocking(move || this.reload())
                    .await
                    .is_err()
                {
                    break; // runtime shutting down
                }
            }
        })
    }

    /// The pair currently served to new handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// The certificate chain file this resolver reads.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key file this resolver reads.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Builds the server config: ring provider, TLS 1.2 and 1.3, ALPN `["h2", "http/1.1"]`,
/// no client authentication, certificates from `resolver`.
pub fn server_config(resolver: Arc<ReloadingCert>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("the ring provider supports TLS 1.2 and 1.3")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

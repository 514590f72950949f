//! Listeners: HTTPS (TLS terminated here), plain HTTP (only when allowed), admin; graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use infergate_config::Config;
use infergate_metrics::Registry;
use infergate_spec::{Readiness, specs_from_config};
use infergate_tls::stream::TlsAcceptor;
use infergate_tls::{ReloadingCert, TlsError};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::conn::{Edge, HeadLimits};
use crate::forward::ConnInfo;
use crate::metrics::CONNECTIONS_OPEN;
use crate::otlp::Exporter;
use crate::response::ProxyBody;
use crate::router::Router;

/// How long a client of the admin listener may take to send a request head.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] infergate_config::ConfigError),
    /// The certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr} (config key `listen.{listener}`): {source}; fix: free the port or choose another address"
    )]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound, not yet running router.
pub struct Server {
    router: Arc<Router>,
    https: Option<(TcpListener, TlsAcceptor)>,
    http: Option<TcpListener>,
    admin: TcpListener,
    cert: Option<Arc<ReloadingCert>>,
    registry: Registry,
    ready: Arc<Readiness>,
    drain_timeout: Duration,
    reload_interval: Duration,
    cluster: Option<infergate_cluster::Cluster>,
    edge: Arc<Edge>,
    workers: Option<Arc<crate::workers::Workers>>,
    /// With `tracing.otlp`: the span export, flushed at the end of the drain.
    otlp: Option<Exporter>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("https", &self.https_addr())
            .field("http", &self.http_addr())
            .field("admin", &self.admin_addr())
            .finish_non_exhaustive()
    }
}

/// Connections the kernel may hold complete but not yet accepted (capped by
/// `net.core.somaxconn`): a burst of connects waits there instead of being dropped.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(LISTEN_BACKLOG)
        })
        .map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })
}

impl Server {
    /// Validates `cfg`, loads the certificate, builds the routes and binds the listeners.
    /// Nothing is bound unless everything before it succeeded. The server counts in a registry
    /// of its own ([`Server::registry`]), which `/metrics` renders.
    pub async fn bind(cfg: &Config) -> Result<Server, StartError> {
        Self::bind_with_peers(cfg, None).await
    }

    /// Like [`Server::bind`]; with `cluster`, the members come from `peers` when given (the
    /// headless Service's endpoints) instead of `cluster.peers`.
    pub async fn bind_with_peers(
        cfg: &Config,
        peers: Option<tokio::sync::watch::Receiver<Vec<SocketAddr>>>,
    ) -> Result<Server, StartError> {
        cfg.validate()?;
        let addrs = cfg.listen_addrs()?;
        infergate_tls::install_crypto_provider();
        let registry = Registry::new();
        let cert = match (&cfg.ssl_cert_pem_file, &cfg.ssl_key_pem_file) {
            (Some(c), Some(k)) => Some(ReloadingCert::load(c.clone(), k.clone(), &registry)?),
            _ => None,
        };
        let router = Router::with_head_limits(&registry, HeadLimits::from_limits(&cfg.limits));
        router.apply_edge_config(cfg);
        let mut otlp = None;
        if let Some(t) = &cfg.tracing {
            router.set_tracing(crate::trace::TraceSettings {
                sampling_ratio: t.sampling_ratio,
            });
            if let Some(o) = &t.otlp {
                let exporter = Exporter::start(o, &registry).map_err(|e| {
                    infergate_config::ConfigError::invalid(
                        "tracing.otlp.endpoint",
                        &o.endpoint,
                        format!("the span exporter cannot start: {e}"),
                        "use the collector's base URL, e.g. http://otel-collector.monitoring:4318 (http/protobuf) or http://otel-collector.monitoring:4317 (grpc)",
                    )
                })?;
                router.set_span_sink(exporter.sink());
                otlp = Some(exporter);
            }
        }
        let edge = Arc::new(Edge::new(&cfg.limits, &registry));
        let cluster = match &cfg.cluster {
            Some(c) => {
                let cluster = start_cluster(c, peers, &router, &registry).await?;
                router.set_cluster(cluster.clone());
                Some(cluster)
            }
            None => None,
        };
        router.publish_specs(&specs_from_config(cfg));

        let https = match (addrs.https, &cert) {
            (Some(a), Some(c)) => Some((
                bind("https", a).await?,
                TlsAcceptor::from(infergate_tls::server_config(c.clone())),
            )),
            _ => None,
        };
        let http = match addrs.http {
            Some(a) => Some(bind("http", a).await?),
            None => {
                tracing::info!(
                    addr = %cfg.listen.http,
                    "plain HTTP listener not opened: allowInsecureConnections is false"
                );
                None
            }
        };
        let admin = bind("admin", addrs.admin).await?;
        let ready = Arc::new(Readiness::default());
        // With Kubernetes discovery the table is published after the first full sync.
        ready.set_published(cfg.discovery.kube.is_none());
        if let Some(c) = &cluster {
            // A cluster task that stops (see `Cluster::failed`) takes this replica out of its
            // Services: its peers admit for the deployments it owned.
            let (c, ready) = (c.clone(), ready.clone());
            tokio::spawn(async move {
                let _why = c.failed().await;
                ready.set_failed();
            });
        }
        Ok(Server {
            router,
            https,
            http,
            admin,
            cert,
            registry,
            ready,
            drain_timeout: Duration::from_millis(cfg.drain_timeout_ms),
            reload_interval: Duration::from_millis(cfg.cert_reload_interval_ms),
            cluster,
            edge,
            workers: None,
            otlp,
        })
    }

    /// Serves client connections on these per-core workers (`--workers N`) instead of the
    /// runtime that runs [`Server::run`] (which keeps the accept loops, admin and the rest).
    pub fn with_workers(mut self, workers: Arc<crate::workers::Workers>) -> Self {
        self.workers = Some(workers);
        self
    }

    /// The bound HTTPS address, if TLS is configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
    /// The bound plain-HTTP address, if insecure connections are allowed.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }
    /// The router (to publish new tables).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }
    /// The registry every part of this server counts in (`/metrics` renders it).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    /// Readiness state.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.ready
    }

    /// Serves until `shutdown` completes, then drains: readiness turns false, listeners stop
    /// accepting, in-flight requests get up to the drain timeout to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            router,
            https,
            http,
            admin,
            cert,
            registry,
            ready,
            drain_timeout,
            reload_interval,
            cluster,
            edge,
            workers,
            otlp,
        } = self;
        let workers = workers.as_deref();
        for (name, addr) in [
            (
                "https",
                https.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            ),
            ("http", http.as_ref().and_then(|l| l.local_addr().ok())),
            ("admin", admin.local_addr().ok()),
        ] {
            if let Some(addr) = addr {
                tracing::info!(listener = name, %addr, "listening");
            }
        }
        let watcher_task = cert.as_ref().map(|c| c.spawn_watcher(reload_interval));
        let upkeep = {
            let registry = registry.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    registry.run_upkeep();
                    router.sweep_idle();
                }
            })
        };
        let admin_task = tokio::spawn(admin_loop(admin, registry, ready.clone(), router.clone()));

        let (stop_tx, stop_rx) = watch::channel(false);
        let accept = async {
            tokio::join!(
                async {
                    if let Some((l, tls)) = https {
                        accept_loop(l, Some(tls), &router, &edge, workers, stop_rx.clone()).await;
                    }
                },
                async {
                    if let Some(l) = http {
                        accept_loop(l, None, &router, &edge, workers, stop_rx.clone()).await;
                    }
                },
            )
        };
        let signal = async {
            shutdown.await;
            ready.set_draining();
            // Hand this replica's deployments over at once; its own requests keep their
            // leases until they finish.
            if let Some(c) = &cluster {
                c.leave();
            }
            tracing::info!(
                drain_timeout_ms = drain_timeout.as_millis() as u64,
                "draining"
            );
            let _ = stop_tx.send(true);
        };
        tokio::join!(accept, signal);
        match tokio::time::timeout(drain_timeout, edge.all_closed()).await {
            Ok(()) => tracing::info!("drained: all connections closed"),
            Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
        }
        admin_task.abort();
        upkeep.abort();
        if let Some(c) = &cluster {
            c.stop();
        }
        if let Some(w) = watcher_task {
            w.abort();
        }
        // The spans of the requests served until now, within a bounded time.
        if let Some(o) = otlp {
            o.shutdown().await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: &Arc<Router>,
    edge: &Arc<Edge>,
    workers: Option<&crate::workers::Workers>,
    mut stop: watch::Receiver<bool>,
) {
    let proto = if tls.is_some() { "https" } else { "http" };
    let open = router
        .registry()
        .gauge(CONNECTIONS_OPEN, &[("listener", proto)]);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(admitted) = crate::conn::admit(edge, &tcp, remote, &open) else {
            continue;
        };
        let info = ConnInfo { remote, proto };
        let (tls, router, edge, stop) = (tls.clone(), router.clone(), edge.clone(), stop.clone());
        match workers {
            Some(w) => w.dispatch(tcp, move |tcp| {
                crate::conn::serve(tcp, info, tls, router, edge, admitted, stop)
            }),
            None => {
                tokio::spawn(crate::conn::serve(
                    tcp, info, tls, router, edge, admitted, stop,
                ));
            }
        }
    }
    tracing::info!(listener = proto, "stopped accepting");
}

/// Completes once `stop` is true. (The guard `wait_for` returns is dropped here, not held by the caller.)
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn admin_loop(
    listener: TcpListener,
    registry: Registry,
    ready: Arc<Readiness>,
    router: Arc<Router>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let registry = registry.clone();
        let ready = ready.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = admin_response(req.uri().path(), &registry, &ready, &router);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn admin_response(
    path: &str,
    registry: &Registry,
    ready: &Readiness,
    router: &Router,
) -> Response<ProxyBody> {
    let (status, ctype, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/readyz" if ready.is_ready() => {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"not ready\n"),
        ),
        "/metrics" => {
            router.update_gauges();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(registry.render()),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

/// Binds the peer port and joins the cluster described by `c`.
async fn start_cluster(
    c: &infergate_config::ClusterConfig,
    peers: Option<tokio::sync::watch::Receiver<Vec<SocketAddr>>>,
    router: &Arc<Router>,
    registry: &Registry,
) -> Result<infergate_cluster::Cluster, StartError> {
    let secret = c.read_secret()?;
    let advertise = c.advertised()?;
    let follow = peers.is_some();
    let members = peers.unwrap_or_else(|| tokio::sync::watch::channel(c.peers.clone()).1);
    let opts = infergate_cluster::Options {
        listen: c.listen,
        advertise,
        members,
        secret,
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        dead_after: Duration::from_millis(c.dead_after_ms),
        on_owner_unreachable: c.on_owner_unreachable,
        members_follow: follow,
    };
    let deployments = Arc::new(crate::router::RouterDeployments(Arc::downgrade(router)));
    infergate_cluster::Cluster::start(opts, deployments, registry)
        .await
        .map_err(|source| StartError::Bind {
            listener: "cluster",
            addr: c.listen,
            source,
        })
}

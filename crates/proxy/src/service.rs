//! The per-request path: resolve, admit, forward, stream back, account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use infergate_balance::{DEFAULT_MAX_QUEUE, Lease, PodSpec, PodState, Pool};
use infergate_routing::{Action, Deployment, Endpoint, RouteTable};
use metrics::{Counter, Gauge, Histogram, Label};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::body::{BodyTooLarge, ProxyBody, RequestBody};
use crate::error::{ProxyError, error_response};
use crate::headers::{
    AZUREML_MODEL_DEPLOYMENT, X_MS_CLIENT_REQUEST_ID, X_REQUEST_ID, new_request_id,
    rewrite_request, strip_hop_by_hop,
};
use crate::metrics::{
    REQUEST_DURATION_SECONDS, REQUESTS_IN_FLIGHT, REQUESTS_TOTAL, UPSTREAM_DURATION_SECONDS,
};

use crate::spec::EndpointSpec;

/// The route table the proxy serves: each endpoint carries its policy, each deployment its
/// balancer and metric handles.
pub type Table = RouteTable<Arc<DeploymentState>, Arc<EndpointState>>;

/// Endpoint-wide state.
#[derive(Debug)]
pub struct EndpointState {
    /// Endpoint name.
    pub name: Arc<str>,
}

/// Where a connection came from and over what.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// `https` or `http`, for `x-forwarded-proto`.
    pub proto: &'static str,
}

/// Live state of one deployment: its pool of pods and its metric handles.
#[derive(Debug)]
pub struct DeploymentState {
    /// Slots, queue and pick over the deployment's pods.
    pub pool: Pool,
    /// Endpoint name (labels, logs).
    pub endpoint: Arc<str>,
    /// Deployment name (labels, logs).
    pub deployment: Arc<str>,
    metrics: LabelledMetrics,
}

impl DeploymentState {
    /// State for a deployment of `endpoint` with these pods and per-pod slots.
    pub fn new(endpoint: &str, deployment: &str, pods: &[PodSpec], slots: u32) -> Self {
        DeploymentState {
            pool: Pool::new(pods, slots, DEFAULT_MAX_QUEUE),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            metrics: LabelledMetrics::new(endpoint, deployment),
        }
    }
}

/// Metric handles for one (endpoint, deployment) label pair, resolved once rather than per request.
#[derive(Debug)]
struct LabelledMetrics {
    labels: [Label; 2],
    duration: Histogram,
    upstream: Histogram,
    by_status: RwLock<Vec<(u16, Counter)>>,
}

impl LabelledMetrics {
    fn new(endpoint: &str, deployment: &str) -> Self {
        let labels = [
            Label::new("endpoint", endpoint.to_string()),
            Label::new("deployment", deployment.to_string()),
        ];
        LabelledMetrics {
            duration: metrics::histogram!(REQUEST_DURATION_SECONDS, labels.to_vec()),
            upstream: metrics::histogram!(UPSTREAM_DURATION_SECONDS, labels.to_vec()),
            labels,
            by_status: RwLock::new(Vec::new()),
        }
    }

    fn count(&self, status: u16) {
        if let Some((_, c)) = self.by_status.read().iter().find(|(s, _)| *s == status) {
            c.increment(1);
            return;
        }
        let mut w = self.by_status.write();
        let c = match w.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.clone(),
            None => {
                let mut labels = self.labels.to_vec();
                labels.push(Label::new("status", status.to_string()));
                let c = metrics::counter!(REQUESTS_TOTAL, labels);
                w.push((status, c.clone()));
                c
            }
        };
        c.increment(1);
    }
}

/// What is known about a request for its access-log line.
struct LogCtx<'a> {
    request_id: &'a HeaderValue,
    method: &'a Method,
    path: &'a str,
    start: Instant,
}

/// The end of a forwarded request, run once when its response body ends, fails or is dropped:
/// frees the pod slot, records metrics, writes the access-log line.
#[derive(Debug)]
pub struct Completion {
    pub(crate) bytes_out: u64,
    lease: Lease,
    dep: Arc<DeploymentState>,
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
    status: u16,
    start: Instant,
    upstream: Duration,
    bytes_in: Arc<AtomicU64>,
    in_flight: Gauge,
}

impl Completion {
    /// Finishes the request with `outcome` (`ok`, `client_aborted`, `upstream_error`).
    pub(crate) fn finish(self, outcome: &'static str) {
        let elapsed = self.start.elapsed();
        let m = &self.dep.metrics;
        m.count(self.status);
        m.duration.record(elapsed.as_secs_f64());
        self.in_flight.decrement(1.0);
        access_log(
            &LogCtx {
                request_id: &self.request_id,
                method: &self.method,
                path: self.uri.path(),
                start: self.start,
            },
            Some(&self.dep),
            Some(self.lease.pod()),
            self.status,
            Some(self.upstream),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out,
            outcome,
        );
        // `self.lease` drops here: the slot goes back to the pool (or the next waiter).
    }
}

#[allow(clippy::too_many_arguments)]
fn access_log(
    ctx: &LogCtx<'_>,
    dep: Option<&DeploymentState>,
    pod: Option<&PodState>,
    status: u16,
    upstream: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    outcome: &str,
) {
    tracing::info!(
        target: "infergate::access",
        request_id = ctx.request_id.to_str().unwrap_or(""),
        method = %ctx.method,
        path = ctx.path,
        endpoint = dep.map_or("", |d| &d.endpoint),
        deployment = dep.map_or("", |d| &d.deployment),
        pod = pod.map(|p| tracing::field::display(p.addr())),
        pod_name = pod.and_then(|p| p.name()),
        status,
        duration_ms = ctx.start.elapsed().as_secs_f64() * 1e3,
        upstream_ms = upstream.map(|u| u.as_secs_f64() * 1e3),
        bytes_in,
        bytes_out,
        outcome,
        "request"
    );
}

/// The router: the current route table and the pooled client to the pods.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<Table>,
    client: Client<HttpConnector, RequestBody>,
    in_flight: Gauge,
    unrouted: LabelledMetrics,
}

impl Router {
    /// A router with an empty table; see [`Router::publish_specs`].
    pub fn new() -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Arc::new(Router {
            table: ArcSwap::from_pointee(Table::default()),
            client,
            in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
            unrouted: LabelledMetrics::new("", ""),
        })
    }

    /// Builds a table from `specs` and publishes it with one atomic swap.
    ///
    /// A deployment that exists in the current table under the same (endpoint, deployment)
    /// names keeps its state: its pool is updated in place, so in-flight counts, waiters and
    /// per-pod state carry over; pods that left take no new requests but finish their own.
    pub fn publish_specs(&self, specs: &[EndpointSpec]) {
        let old = self.table.load_full();
        let table = RouteTable::new(specs.iter().map(|ep| {
            let prev = old.endpoint(&ep.name);
            let deployments = ep
                .deployments
                .iter()
                .map(|d| {
                    let slots = d.settings.max_concurrent_requests_per_instance;
                    let state = match prev.and_then(|e| e.deployment(d.name.as_bytes())) {
                        Some(p) => {
                            p.balancer.pool.set_pods(&d.pods, slots);
                            p.balancer.clone()
                        }
                        None => Arc::new(DeploymentState::new(&ep.name, &d.name, &d.pods, slots)),
                    };
                    let dep = Deployment::new(
                        &d.name,
                        &d.scoring_path,
                        &d.swagger_path,
                        d.settings,
                        d.pods.iter().map(|p| p.addr).collect(),
                        state,
                    );
                    (dep, d.weight)
                })
                .collect();
            let state = match prev {
                Some(p) => p.state.clone(),
                None => Arc::new(EndpointState {
                    name: ep.name.as_str().into(),
                }),
            };
            Endpoint::new(&ep.name, state, deployments)
        }));
        self.publish(table);
    }

    /// Publishes a new table with one atomic swap; requests already running keep the old one.
    pub fn publish(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// The table being served now.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Serves one request.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        self.in_flight.increment(1.0);
        let request_id = new_request_id();
        let (mut parts, body) = req.into_parts();
        let ctx = LogCtx {
            request_id: &request_id,
            method: &parts.method,
            path: parts.uri.path(),
            start,
        };
        let roll: u64 = rand::random();

        // One snapshot per request, held (as an Arc, not a lock) until the response head.
        let table = self.table.load_full();
        let (endpoint, action) = match table.lookup(&parts.method, parts.uri.path()) {
            Ok(x) => x,
            Err(e) => return self.fail(ProxyError::Route(e), &ctx, None, None, 0),
        };
        // Endpoint-level checks go here: before a deployment is chosen, a pod contacted or a slot taken.
        let dep = match endpoint.select(parts.headers.get(AZUREML_MODEL_DEPLOYMENT), roll as u32) {
            Ok(d) => d,
            Err(e) => return self.fail(ProxyError::Route(e), &ctx, None, None, 0),
        };
        let upstream_path: &str = match action {
            Action::Score => &dep.scoring_path,
            Action::Swagger => &dep.swagger_path,
        };
        let state = &dep.balancer;
        let settings = dep.settings;
        let limit = settings.max_request_body_bytes;

        if http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > limit)
            || content_length(&parts.headers).is_some_and(|n| n > limit)
        {
            return self.fail(
                ProxyError::PayloadTooLarge { limit },
                &ctx,
                Some(state),
                None,
                0,
            );
        }

        let wait = Duration::from_millis(settings.max_queue_wait_ms);
        let lease = match state.pool.acquire(roll, wait).await {
            Ok(l) => l,
            Err(e) => return self.fail(ProxyError::Unavailable(e), &ctx, Some(state), None, 0),
        };
        let pod = lease.pod().clone();

        let upstream_uri = match upstream_uri(pod.addr(), upstream_path, parts.uri.query()) {
            Some(u) => u,
            None => {
                let e = ProxyError::UpstreamFailed("the upstream URI could not be built");
                return self.fail(e, &ctx, Some(state), Some(&pod), 0);
            }
        };
        let authority = parts.uri.authority().map(|a| a.to_string());
        rewrite_request(
            &mut parts.headers,
            &request_id,
            conn.remote.ip(),
            conn.proto,
            authority.as_deref(),
        );
        let client_request_id = parts.headers.get(X_MS_CLIENT_REQUEST_ID).cloned();
        let method = parts.method.clone();
        let uri = std::mem::replace(&mut parts.uri, upstream_uri);
        parts.version = Version::HTTP_11;
        let bytes_in = Arc::new(AtomicU64::new(0));
        let up_req = Request::from_parts(parts, RequestBody::new(body, limit, bytes_in.clone()));
        let ctx = LogCtx {
            request_id: &request_id,
            method: &method,
            path: uri.path(),
            start,
        };

        let sent = Instant::now();
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let resp = match tokio::time::timeout(timeout, self.client.request(up_req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let n = bytes_in.load(Ordering::Relaxed);
                return self.fail(classify(&e, limit), &ctx, Some(state), Some(&pod), n);
            }
            Err(_) => {
                let n = bytes_in.load(Ordering::Relaxed);
                let e = ProxyError::UpstreamTimeout {
                    ms: settings.request_timeout_ms,
                };
                return self.fail(e, &ctx, Some(state), Some(&pod), n);
            }
        };
        let upstream = sent.elapsed();
        state.metrics.upstream.record(upstream.as_secs_f64());

        let (mut rp, inner) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        rp.headers.insert(X_REQUEST_ID, request_id.clone());
        rp.headers
            .insert(AZUREML_MODEL_DEPLOYMENT, dep.header_value.clone());
        if let Some(c) = client_request_id {
            rp.headers.entry(X_MS_CLIENT_REQUEST_ID).or_insert(c);
        }
        let status = rp.status.as_u16();
        let completion = Completion {
            bytes_out: 0,
            lease,
            dep: state.clone(),
            request_id,
            method,
            uri,
            status,
            start,
            upstream,
            bytes_in,
            in_flight: self.in_flight.clone(),
        };
        Response::from_parts(
            rp,
            ProxyBody::Upstream {
                inner,
                done: Some(completion),
            },
        )
    }

    /// Answers a failure: the error response, metrics and the access-log line.
    fn fail(
        &self,
        err: ProxyError,
        ctx: &LogCtx<'_>,
        dep: Option<&Arc<DeploymentState>>,
        pod: Option<&PodState>,
        bytes_in: u64,
    ) -> Response<ProxyBody> {
        let resp = error_response(&err, ctx.request_id);
        let status = resp.status().as_u16();
        let m = dep.map_or(&self.unrouted, |d| &d.metrics);
        m.count(status);
        if dep.is_some() {
            m.duration.record(ctx.start.elapsed().as_secs_f64());
        }
        self.in_flight.decrement(1.0);
        let (_, code) = err.status_and_code();
        let bytes_out = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        access_log(
            ctx,
            dep.map(|d| &**d),
            pod,
            status,
            None,
            bytes_in,
            bytes_out,
            code,
        );
        resp
    }
}

/// Maps a client error to the failure it stands for.
fn classify(e: &hyper_util::client::legacy::Error, limit: u64) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<BodyTooLarge>().is_some() {
            return ProxyError::PayloadTooLarge { limit };
        }
        src = s.source();
    }
    if e.is_connect() {
        return ProxyError::UpstreamConnect;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return ProxyError::UpstreamFailed("malformed response");
            }
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return ProxyError::UpstreamFailed("connection closed before a response");
            }
        }
        src = s.source();
    }
    ProxyError::UpstreamFailed("connection error")
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn upstream_uri(pod: SocketAddr, path: &str, query: Option<&str>) -> Option<Uri> {
    use std::fmt::Write;
    let mut s = String::with_capacity(8 + 47 + path.len() + query.map_or(0, |q| q.len() + 1));
    write!(s, "http://{pod}{path}").ok()?;
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    Uri::try_from(s).ok()
}

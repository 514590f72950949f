//! The per-request path: resolve, admit, forward (retrying a connection that never opened on
//! another pod), stream back, account; plus mirroring and the per-deployment autoscale signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use infergate_balance::{Lease, Outcome, PodSpec, PodState, Pool, PoolSettings};
use infergate_config::ResolvedSettings;
use infergate_routing::{Action, Deployment, Endpoint, RouteTable};
use infergate_spec::{EndpointSpec, MirrorSpec};
use metrics::{Counter, Gauge, Histogram, Label};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::body::{BodyTooLarge, ProxyBody, RequestBody, RequestShared, Tee};
use crate::error::{ProxyError, error_response};
use crate::headers::{
    AZUREML_MODEL_DEPLOYMENT, X_MS_CLIENT_REQUEST_ID, X_REQUEST_ID, new_request_id,
    rewrite_request, strip_hop_by_hop,
};
use crate::metrics::{
    DEPLOYMENT_BUSY_SLOTS, DEPLOYMENT_PODS, DEPLOYMENT_QUEUED_REQUESTS, DEPLOYMENT_UTILIZATION,
    MIRROR_REQUESTS_TOTAL, POD_EJECTIONS_TOTAL, QUEUE_WAIT_SECONDS, REQUEST_DURATION_SECONDS,
    REQUESTS_IN_FLIGHT, REQUESTS_TOTAL, RETRIES_TOTAL, UPSTREAM_DURATION_SECONDS,
};
use crate::upstream::{Checkout, ConnectError, SendError, Upstream};

/// The route table the proxy serves: each endpoint carries its policy, each deployment its
/// balancer and metric handles.
pub type Table = RouteTable<Arc<DeploymentState>, Arc<EndpointState>>;

/// Endpoint-wide state.
#[derive(Debug)]
pub struct EndpointState {
    /// Endpoint name.
    pub name: Arc<str>,
    /// How callers authenticate: always the policy of the latest published spec.
    pub auth: infergate_auth::AuthPolicy,
    /// Whether `swagger.json` needs authentication too.
    pub swagger_auth: bool,
    /// Refusals by reason (handles kept across route-table swaps).
    pub(crate) auth_failures: Arc<crate::auth::AuthFailureCounters>,
    /// Requests copied to another deployment, if any.
    pub mirror: Option<MirrorSpec>,
    /// The spec this endpoint was built from: an unchanged spec reuses the endpoint as is.
    pub(crate) spec: EndpointSpec,
}

/// Where a connection came from and over what.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// `https` or `http`, for `x-forwarded-proto`.
    pub proto: &'static str,
}

/// How a deployment's request settings drive its pool.
pub fn pool_settings(s: &ResolvedSettings) -> PoolSettings {
    PoolSettings {
        slots: s.max_concurrent_requests_per_instance,
        max_queue: s.max_queue_length,
        eject_after: s.eject_after_consecutive_failures,
        ejection_base: Duration::from_millis(s.ejection_base_ms),
        ejection_max: Duration::from_millis(s.ejection_max_ms),
    }
}

/// Live state of one deployment: its pool of pods, retry budget and metric handles. Kept across
/// route-table swaps while the (endpoint, deployment) names stay.
#[derive(Debug)]
pub struct DeploymentState {
    /// Slots, queue and pick over the deployment's pods.
    pub pool: Pool,
    /// Endpoint name (labels, logs).
    pub endpoint: Arc<str>,
    /// Deployment name (labels, logs).
    pub deployment: Arc<str>,
    retry_budget: RetryBudget,
    metrics: LabelledMetrics,
}

impl DeploymentState {
    /// State for a deployment of `endpoint` with these pods and settings.
    pub fn new(
        endpoint: &str,
        deployment: &str,
        pods: &[PodSpec],
        settings: &ResolvedSettings,
    ) -> Self {
        DeploymentState {
            pool: Pool::new(pods, pool_settings(settings)),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            retry_budget: RetryBudget::new(),
            metrics: LabelledMetrics::new(endpoint, deployment),
        }
    }
}

/// A token bucket for retries: every request deposits `retryBudgetPercent`/100 of a retry,
/// every retry withdraws one, so retries stay a bounded share of traffic (no retry storms when
/// a whole deployment is down). Starts with 10 retries, holds at most 100.
#[derive(Debug)]
struct RetryBudget {
    milli: AtomicI64,
}

impl RetryBudget {
    const ONE: i64 = 1000;
    const CAP: i64 = 100 * Self::ONE;

    fn new() -> Self {
        RetryBudget {
            milli: AtomicI64::new(10 * Self::ONE),
        }
    }
    fn deposit(&self, percent: u32) {
        if percent > 0 && self.milli.load(Ordering::Relaxed) < Self::CAP {
            self.milli
                .fetch_add(i64::from(percent) * 10, Ordering::Relaxed);
        }
    }
    fn withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                (m >= Self::ONE).then_some(m - Self::ONE)
            })
            .is_ok()
    }
}

/// Metric handles for one (endpoint, deployment) label pair, resolved once rather than per request.
#[derive(Debug)]
struct LabelledMetrics {
    labels: [Label; 2],
    duration: Histogram,
    upstream: Histogram,
    queue_wait: Histogram,
    retries: Counter,
    ejections: Counter,
    mirror: [Counter; 3],
    busy: Gauge,
    queued: Gauge,
    pods: Gauge,
    utilization: Gauge,
    by_status: RwLock<Vec<(u16, Counter)>>,
}

const MIRROR_OK: usize = 0;
const MIRROR_FAILED: usize = 1;
const MIRROR_SKIPPED: usize = 2;

impl LabelledMetrics {
    fn new(endpoint: &str, deployment: &str) -> Self {
        let labels = [
            Label::new("endpoint", endpoint.to_string()),
            Label::new("deployment", deployment.to_string()),
        ];
        let l = || labels.to_vec();
        let mirror = |result: &'static str| {
            let mut v = l();
            v.push(Label::new("result", result));
            metrics::counter!(MIRROR_REQUESTS_TOTAL, v)
        };
        LabelledMetrics {
            duration: metrics::histogram!(REQUEST_DURATION_SECONDS, l()),
            upstream: metrics::histogram!(UPSTREAM_DURATION_SECONDS, l()),
            queue_wait: metrics::histogram!(QUEUE_WAIT_SECONDS, l()),
            retries: metrics::counter!(RETRIES_TOTAL, l()),
            ejections: metrics::counter!(POD_EJECTIONS_TOTAL, l()),
            mirror: [mirror("ok"), mirror("failed"), mirror("skipped")],
            busy: metrics::gauge!(DEPLOYMENT_BUSY_SLOTS, l()),
            queued: metrics::gauge!(DEPLOYMENT_QUEUED_REQUESTS, l()),
            pods: metrics::gauge!(DEPLOYMENT_PODS, l()),
            utilization: metrics::gauge!(DEPLOYMENT_UTILIZATION, l()),
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

/// Reports an outcome to the pool and counts an ejection it causes.
fn report(lease: &Lease, dep: &DeploymentState, outcome: Outcome) {
    if lease.report(outcome) {
        dep.metrics.ejections.increment(1);
        tracing::warn!(
            endpoint = &*dep.endpoint,
            deployment = &*dep.deployment,
            pod = %lease.pod().addr(),
            "pod ejected after consecutive failures"
        );
    }
}

/// What is known about a request for its access-log line.
struct LogCtx<'a> {
    request_id: &'a HeaderValue,
    /// The endpoint, once the URL has named a known one.
    endpoint: &'a str,
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
    shared: Arc<RequestShared>,
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
                endpoint: &self.dep.endpoint,
                method: &self.method,
                path: self.uri.path(),
                start: self.start,
            },
            Some(&self.dep),
            Some(self.lease.pod()),
            self.status,
            Some(self.upstream),
            self.shared.bytes_in(),
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
        endpoint = dep.map_or(ctx.endpoint, |d| &d.endpoint),
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

/// The router: the current route table and the connections to the pods.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<Table>,
    upstream: Upstream,
    in_flight: Gauge,
    unrouted: LabelledMetrics,
}

impl Router {
    /// A router with an empty table; see [`Router::publish_specs`].
    pub fn new() -> Arc<Self> {
        Arc::new(Router {
            table: ArcSwap::from_pointee(Table::default()),
            upstream: Upstream::new(),
            in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
            unrouted: LabelledMetrics::new("", ""),
        })
    }

    /// Builds a table from `specs` and publishes it with one atomic swap.
    ///
    /// A deployment that exists in the current table under the same (endpoint, deployment)
    /// names keeps its state: its pool is updated in place, so in-flight counts, waiters and
    /// per-pod state (latency estimates, ejections) carry over; pods that left take no new
    /// requests but finish their own.
    pub fn publish_specs(&self, specs: &[EndpointSpec]) {
        let old = self.table.load_full();
        let table = RouteTable::from_shared(specs.iter().map(|ep| {
            // Unchanged endpoints are shared with the old table: one change costs a pointer
            // copy per endpoint, not a rebuild of every deployment and pod.
            if let Some(prev) = old.endpoint_shared(&ep.name)
                && prev.state.spec == *ep
            {
                return prev.clone();
            }
            let prev = old.endpoint(&ep.name);
            let deployments = ep
                .deployments
                .iter()
                .map(|d| {
                    let state = match prev.and_then(|e| e.deployment(d.name.as_bytes())) {
                        Some(p) => {
                            p.balancer
                                .pool
                                .set_pods(&d.pods, pool_settings(&d.settings));
                            p.balancer.clone()
                        }
                        None => Arc::new(DeploymentState::new(
                            &ep.name,
                            &d.name,
                            &d.pods,
                            &d.settings,
                        )),
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
            crate::auth::log_policy_change(prev.map(|p| &*p.state), ep);
            let state = Arc::new(EndpointState {
                name: ep.name.as_str().into(),
                auth: ep.auth.clone(),
                swagger_auth: ep.swagger_auth,
                auth_failures: prev.map_or_else(
                    || crate::auth::AuthFailureCounters::new(&ep.name),
                    |p| p.state.auth_failures.clone(),
                ),
                mirror: ep.mirror.clone(),
                spec: ep.clone(),
            });
            Arc::new(Endpoint::new(&ep.name, state, deployments))
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

    /// Closes upstream connections idle for longer than the idle timeout (called periodically).
    pub fn sweep_idle(&self) {
        let table = self.table.load();
        for ep in table.endpoints() {
            for d in ep.deployments.iter() {
                for pod in d.balancer.pool.pods().iter() {
                    self.upstream.sweep(pod);
                }
            }
        }
    }

    /// Sets the per-deployment autoscale gauges from the pools (called when `/metrics` is scraped):
    /// busy slots, queued requests, pods, and utilization = (busy + queued) / (pods x slots).
    pub fn update_gauges(&self) {
        let table = self.table.load();
        for ep in table.endpoints() {
            for d in ep.deployments.iter() {
                let pool = &d.balancer.pool;
                let m = &d.balancer.metrics;
                let (busy, queued) = (f64::from(pool.busy()), pool.queued() as f64);
                let pods = pool.pods().len() as f64;
                let capacity = pods * f64::from(pool.limit());
                m.busy.set(busy);
                m.queued.set(queued);
                m.pods.set(pods);
                m.utilization.set(if capacity > 0.0 {
                    (busy + queued) / capacity
                } else if busy + queued > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                });
            }
        }
    }

    /// Serves one request.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        self.in_flight.increment(1.0);
        let request_id = new_request_id();
        let (mut parts, body) = req.into_parts();
        let ctx = LogCtx {
            request_id: &request_id,
            endpoint: "",
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
        let ctx = LogCtx {
            endpoint: &endpoint.name,
            ..ctx
        };
        // Endpoint-level checks go here: before a deployment is chosen, a pod contacted or a slot taken.
        if let Err(reason) = endpoint.state.authorize(action, &mut parts.headers) {
            return self.fail(ProxyError::Unauthorized { reason }, &ctx, None, None, 0);
        }
        let dep = match endpoint.select(parts.headers.get(AZUREML_MODEL_DEPLOYMENT), roll as u32) {
            Ok(d) => d,
            Err(e) => return self.fail(ProxyError::Route(e), &ctx, None, None, 0),
        };
        let state = &dep.balancer;
        let settings = dep.settings;
        let limit = settings.max_request_body_bytes;
        state.retry_budget.deposit(settings.retry_budget_percent);

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

        let queued_at = Instant::now();
        let wait = Duration::from_millis(settings.max_queue_wait_ms);
        let acquired = state.pool.acquire(roll, wait).await;
        state
            .metrics
            .queue_wait
            .record(queued_at.elapsed().as_secs_f64());
        let mut lease = match acquired {
            Ok(l) => l,
            Err(e) => return self.fail(ProxyError::Unavailable(e), &ctx, Some(state), None, 0),
        };

        rewrite_request(
            &mut parts.headers,
            &request_id,
            conn.remote.ip(),
            conn.proto,
            parts.uri.authority().map(|a| a.as_str()),
        );
        let client_request_id = parts.headers.get(X_MS_CLIENT_REQUEST_ID).cloned();
        let shared = RequestShared::new(&body);
        let tee = self.mirror_tee(endpoint, action, &parts, roll, &shared);
        let method = parts.method.clone();
        let Some(upstream_uri) = dep.upstream_uri(action, parts.uri.query()) else {
            let e = ProxyError::UpstreamFailed("the upstream URI could not be built");
            return self.fail(e, &ctx, Some(state), Some(lease.pod()), 0);
        };
        let uri = std::mem::replace(&mut parts.uri, upstream_uri);
        parts.version = Version::HTTP_11;
        let ctx = LogCtx {
            request_id: &request_id,
            endpoint: &endpoint.name,
            method: &method,
            path: uri.path(),
            start,
        };
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        // The request is built once; it comes back untouched when a connection never took it.
        let mut pending = Some(Request::from_parts(
            parts,
            RequestBody::new(body, shared.clone(), limit, tee),
        ));
        let mut may_retry = settings.retry_budget_percent > 0;

        let (resp, upstream) = loop {
            let pod = lease.pod().clone();
            let deadline = Instant::now() + timeout;
            let timed_out = |lease: &Lease| {
                report(lease, state, Outcome::Failure);
                ProxyError::UpstreamTimeout {
                    ms: settings.request_timeout_ms,
                }
            };
            // No timer here: a pooled connection is at hand at once, and a connect is bounded
            // by the deadline inside `checkout`.
            let conn: Checkout = match self.upstream.checkout(&pod, deadline).await {
                Ok(c) => c,
                Err(ConnectError::Deadline) => {
                    let e = timed_out(&lease);
                    return self.fail(e, &ctx, Some(state), Some(&pod), 0);
                }
                Err(e) => {
                    report(&lease, state, Outcome::Failure);
                    tracing::debug!(pod = %pod.addr(), error = %e, "upstream connect failed");
                    // Nothing reached any pod (the request is handed to a connection only once
                    // one is open): once, on another pod, within the budget.
                    if may_retry
                        && state.pool.pods().len() > 1
                        && state.retry_budget.withdraw()
                        && let Ok(next) = state
                            .pool
                            .acquire_avoiding(roll.rotate_left(21), wait, Some(pod.clone()))
                            .await
                    {
                        may_retry = false;
                        state.metrics.retries.increment(1);
                        tracing::debug!(pod = %pod.addr(), next = %next.pod().addr(), "retrying on another pod");
                        drop(std::mem::replace(&mut lease, next));
                        continue;
                    }
                    return self.fail(connect_error(&e), &ctx, Some(state), Some(&pod), 0);
                }
            };
            let mut req = pending.take().expect("the request for this attempt");
            req.headers_mut().insert(header::HOST, conn.host());
            let sent = Instant::now();
            match tokio::time::timeout_at(deadline, conn.send(req)).await {
                Ok(Ok(r)) => {
                    let upstream = sent.elapsed();
                    let outcome = if r.status().is_server_error() {
                        Outcome::Failure
                    } else {
                        Outcome::Success(upstream)
                    };
                    report(&lease, state, outcome);
                    break (r, upstream);
                }
                // A pooled connection closed before taking the request (the pod ended an idle
                // keep-alive connection): the same request goes out on a fresh connection.
                Ok(Err(SendError::NotSent {
                    req, reused: true, ..
                })) => {
                    pending = Some(req);
                    continue;
                }
                Ok(Err(SendError::NotSent { error: e, .. } | SendError::Failed(e))) => {
                    report(&lease, state, Outcome::Failure);
                    let n = shared.bytes_in();
                    return self.fail(classify(&e, limit), &ctx, Some(state), Some(&pod), n);
                }
                Err(_) => {
                    let e = timed_out(&lease);
                    let n = shared.bytes_in();
                    return self.fail(e, &ctx, Some(state), Some(&pod), n);
                }
            }
        };
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
            shared,
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

    /// When this request is chosen for mirroring: a tee that sends the copy once the body has
    /// streamed to the primary pod (or at once for an empty body). The copy never touches the
    /// client's response: it runs in its own task, takes a mirror slot only if one is free, and
    /// its answer is discarded.
    fn mirror_tee(
        &self,
        endpoint: &Endpoint<Arc<DeploymentState>, Arc<EndpointState>>,
        action: Action,
        parts: &Parts,
        roll: u64,
        shared: &Arc<RequestShared>,
    ) -> Option<Tee> {
        let m = endpoint.state.mirror.as_ref()?;
        if ((roll >> 40) % 100) as u32 >= m.percent {
            return None;
        }
        let target = endpoint.deployment(m.deployment.as_bytes())?;
        let state = target.balancer.clone();
        if shared
            .size_hint_exact()
            .is_some_and(|n| n > m.max_body_bytes)
        {
            state.metrics.mirror[MIRROR_SKIPPED].increment(1);
            return None;
        }
        let mirror = MirrorRequest {
            upstream: self.upstream.clone(),
            state: state.clone(),
            method: parts.method.clone(),
            uri: target.upstream_uri(action, parts.uri.query()),
            headers: parts.headers.clone(),
            timeout: Duration::from_millis(target.settings.request_timeout_ms),
        };
        if shared.is_empty_body() {
            tokio::spawn(mirror.send(Vec::new()));
            return None;
        }
        let skipped = state.metrics.mirror[MIRROR_SKIPPED].clone();
        Some(Tee::new(
            m.max_body_bytes,
            Box::new(move |frames| {
                tokio::spawn(mirror.send(frames));
            }),
            skipped,
        ))
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

fn request_parts(method: &Method, headers: HeaderMap) -> Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = method.clone();
    p.headers = headers;
    p.version = Version::HTTP_11;
    p
}

/// A copy of a request for the mirror deployment.
struct MirrorRequest {
    upstream: Upstream,
    state: Arc<DeploymentState>,
    method: Method,
    /// None when the mirror deployment's path and the query make no valid URI.
    uri: Option<Uri>,
    headers: HeaderMap,
    timeout: Duration,
}

impl MirrorRequest {
    async fn send(self, body: Vec<Bytes>) {
        let m = &self.state.metrics;
        let Some(lease) = self.state.pool.try_acquire(rand::random()) else {
            m.mirror[MIRROR_SKIPPED].increment(1);
            return;
        };
        let Some(uri) = self.uri else {
            m.mirror[MIRROR_FAILED].increment(1);
            return;
        };
        let mut p = request_parts(&self.method, self.headers);
        p.uri = uri;
        let pod = lease.pod().clone();
        let upstream = &self.upstream;
        let send = async move {
            let conn = upstream
                .checkout(&pod, Instant::now() + self.timeout)
                .await
                .ok()?;
            p.headers.insert(header::HOST, conn.host());
            let req = Request::from_parts(p, RequestBody::buffered(body));
            conn.send(req).await.ok()
        };
        let sent = Instant::now();
        let ok = match tokio::time::timeout(self.timeout, send).await {
            Ok(Some(resp)) => {
                let ok = !resp.status().is_server_error();
                // Read the answer to its end so the connection goes back to the pool; keep nothing.
                let mut b = resp.into_body();
                while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut b).await {}
                report(
                    &lease,
                    &self.state,
                    if ok {
                        Outcome::Success(sent.elapsed())
                    } else {
                        Outcome::Failure
                    },
                );
                ok
            }
            _ => {
                report(&lease, &self.state, Outcome::Failure);
                false
            }
        };
        m.mirror[if ok { MIRROR_OK } else { MIRROR_FAILED }].increment(1);
    }
}

/// Maps a failed exchange with a pod to the failure it stands for.
fn classify(e: &hyper::Error, limit: u64) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<BodyTooLarge>().is_some() {
            return ProxyError::PayloadTooLarge { limit };
        }
        src = s.source();
    }
    if e.is_parse() || e.is_parse_status() {
        return ProxyError::UpstreamFailed("malformed response");
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return ProxyError::UpstreamFailed("connection closed before a response");
    }
    ProxyError::UpstreamFailed("connection error")
}

/// Maps a failed connect to the failure it stands for.
fn connect_error(e: &ConnectError) -> ProxyError {
    match e {
        ConnectError::Io(_) | ConnectError::Timeout(_) => ProxyError::UpstreamConnect,
        ConnectError::Deadline => ProxyError::UpstreamFailed("request deadline passed"),
        ConnectError::Handshake(_) => ProxyError::UpstreamFailed("connection error"),
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

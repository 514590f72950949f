//! The router: the route table it serves, and each request as a list of phases (route,
//! authorize, select, admit, prepare, forward, respond) with one error boundary.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use infergate_metrics::Registry;
use infergate_routing::{Action, Deployment, Endpoint, RouteTable};

use crate::body::{RequestShared, admit_watching};
use crate::conn::HeadLimits;
use crate::deployment::{DeploymentState, StatusCounters};
use crate::endpoint::{EndpointState, Table};
use crate::error::ProxyError;
use crate::forward::{self, ConnInfo};
use crate::headers::{
    AZUREML_MODEL_DEPLOYMENT, Forwarding, drop_underscore_headers, underscore_header,
};
use crate::metrics::REQUESTS_IN_FLIGHT;
use crate::response::{ProxyBody, RequestCtx, RequestMetrics, rescue, respond};
use crate::swagger;
use crate::trace::TraceSettings;
use crate::upstream::{Upstream, UpstreamBody};
use infergate_balance::AcquireError;
use infergate_config::{DEFAULT_MAX_TOKEN_LIFETIME_SECONDS, HeadersWithUnderscores};
use infergate_routing::AZUREML_ENDPOINT;
use infergate_spec::EndpointSpec;

/// The router: the current route table, how pods are reached, and where it counts.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<Table>,
    upstream: Upstream,
    registry: Registry,
    metrics: Arc<RequestMetrics>,
    /// With `cluster`: every deployment leases its slots from its owner replica.
    cluster: std::sync::OnceLock<infergate_cluster::Cluster>,
    /// How the request head is treated at the edge (set from the configuration).
    edge: EdgeRules,
    /// With `tracing`: the router takes part in its requests' traces.
    tracing: std::sync::OnceLock<TraceSettings>,
    /// What a request head may hold (`limits.maxRequestHeaderBytes`, `maxRequestHeaders`).
    head: HeadLimits,
}

/// The configuration's edge keys, read per request without a lock (a reload stores new ones).
#[derive(Debug)]
struct EdgeRules {
    /// `headersWithUnderscores`, as [`HeadersWithUnderscores`] `as u8`.
    underscores: AtomicU8,
    /// `xffTrustedHops`.
    xff_trusted_hops: AtomicU32,
    /// `maxTokenLifetimeSeconds`.
    max_token_lifetime_s: AtomicU64,
    /// `grpc.hostSuffix`.
    grpc_host_suffix: arc_swap::ArcSwapOption<String>,
}

impl Default for EdgeRules {
    fn default() -> Self {
        EdgeRules {
            underscores: AtomicU8::new(HeadersWithUnderscores::default() as u8),
            xff_trusted_hops: AtomicU32::new(0),
            max_token_lifetime_s: AtomicU64::new(DEFAULT_MAX_TOKEN_LIFETIME_SECONDS),
            grpc_host_suffix: arc_swap::ArcSwapOption::empty(),
        }
    }
}

impl EdgeRules {
    fn underscores(&self) -> HeadersWithUnderscores {
        match self.underscores.load(Ordering::Relaxed) {
            x if x == HeadersWithUnderscores::Drop as u8 => HeadersWithUnderscores::Drop,
            x if x == HeadersWithUnderscores::Allow as u8 => HeadersWithUnderscores::Allow,
            _ => HeadersWithUnderscores::Reject,
        }
    }
}

impl Router {
    /// A router with an empty table (see [`Router::publish_specs`]) counting in `registry`,
    /// with the default head limits.
    pub fn new(registry: &Registry) -> Arc<Self> {
        let head = HeadLimits::from_limits(&infergate_config::Limits::default());
        Self::with_head_limits(registry, head)
    }

    /// [`Router::new`] with these head limits: a larger head is answered 431.
    pub fn with_head_limits(registry: &Registry, head: HeadLimits) -> Arc<Self> {
        crate::metrics::describe(registry);
        Arc::new(Router {
            table: ArcSwap::from_pointee(Table::default()),
            upstream: Upstream::new(),
            registry: registry.clone(),
            cluster: std::sync::OnceLock::new(),
            edge: EdgeRules::default(),
            tracing: std::sync::OnceLock::new(),
            head,
            metrics: Arc::new(RequestMetrics {
                in_flight: registry.gauge(REQUESTS_IN_FLIGHT, &[]),
                unrouted: StatusCounters::new(registry, "", ""),
                spans: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Serves one request: the phases in order; the first failure becomes the answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        // The head's size first (the parsers let heads up to twice the limit through, so that
        // this answer can carry the JSON body and the request id).
        let checked = self.head.check(&parts);
        let uri = std::mem::take(&mut parts.uri);
        let mut ctx = RequestCtx::start(&self.metrics, parts.method.clone(), uri);
        ctx.grpc = crate::grpc::is_grpc(&parts.headers);
        if let Err(err) = checked {
            let mut resp = rescue(&err, ctx);
            // HTTP/1.1: the rest of such a request is not read; the connection closes.
            if parts.version < http::Version::HTTP_2 {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            return resp;
        }
        ctx.trace = crate::trace::start(&mut parts.headers, self.tracing.get());
        if ctx
            .trace
            .as_ref()
            .is_some_and(|t| t.sampled && t.span_id.is_some())
            && let Some(sink) = self.metrics.spans.get()
        {
            ctx.span = Some(crate::otlp::SpanStart::capture(
                &parts,
                &ctx.uri,
                &ctx.request_id,
                &conn,
                Some(sink),
            ));
        }
        match self.forward(&mut ctx, parts, body, conn).await {
            Ok((resp, None)) => respond(resp, ctx),
            Ok((resp, Some(base))) => {
                let head_only = ctx.method == http::Method::HEAD;
                crate::swagger::respond_rewritten(resp, ctx, &base, head_only).await
            }
            Err(err) => rescue(&err, ctx),
        }
    }

    /// Counts an answer made before routing (e.g. the HTTP/1.1 parser's own 431).
    pub(crate) fn count_unrouted(&self, status: u16) {
        self.metrics.unrouted.count(status);
    }

    async fn forward(
        &self,
        ctx: &mut RequestCtx,
        mut parts: Parts,
        mut body: Incoming,
        conn: ConnInfo,
    ) -> Result<(Response<UpstreamBody>, Option<swagger::Base>), ProxyError> {
        let roll: u64 = rand::random();
        // The head: header names with `_` (aliases of `-` names behind WSGI/CGI gateways).
        self.check_header_names(&mut parts.headers)?;
        // Route: one snapshot per request, held (as an Arc, not a lock) until the response head.
        let table = self.table.load_full();
        // A gRPC call (not to a scoring URL) names its endpoint in metadata or its authority.
        let (endpoint, action) = if ctx.grpc && !ctx.uri.path().starts_with("/api/v1/") {
            let suffix = self.edge.grpc_host_suffix.load();
            let authority = ctx.uri.authority().map(|a| a.as_str()).or_else(|| {
                let host = parts.headers.get(http::header::HOST)?;
                host.to_str().ok()
            });
            let named = parts.headers.get(AZUREML_ENDPOINT);
            let ep = table.lookup_grpc(named, authority, suffix.as_deref().map(String::as_str))?;
            (ep, Action::Grpc)
        } else {
            table.lookup(&ctx.method, ctx.uri.path())?
        };
        ctx.endpoint = Some(endpoint.state.name.clone());
        // Authorize: before a deployment is chosen, a pod contacted or a slot taken.
        let max_token_lifetime =
            Duration::from_secs(self.edge.max_token_lifetime_s.load(Ordering::Relaxed));
        endpoint
            .state
            .authorize(action, &parts.headers, max_token_lifetime)?;
        // Select the deployment: pinned by header, or by the traffic weights (a gRPC call: among
        // the deployments that speak HTTP/2).
        let pinned = parts.headers.get(AZUREML_MODEL_DEPLOYMENT);
        let dep = match action {
            Action::Grpc => endpoint.select_grpc(pinned, roll as u32)?,
            _ => endpoint.select(pinned, roll as u32)?,
        };
        let state = &dep.balancer;
        ctx.dep = Some(state.clone());
        // A gRPC call's deadline: its grpc-timeout, at most maxStreamDurationMs.
        let mut settings = dep.settings;
        if ctx.grpc {
            ctx.call_deadline = call_deadline(ctx.start, &parts.headers, &settings)?;
        }
        if let Some((at, _)) = ctx.call_deadline {
            // No longer in the queue than the call may last.
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            settings.max_queue_wait_ms = settings.max_queue_wait_ms.min(left_ms);
        }
        // Admit: the body's announced size, then a pod slot (FIFO wait, bounded).
        state.check_body(&settings, &parts.headers, &body)?;
        // (What the body announces, before any of it is read.)
        let shared = RequestShared::new(&body);
        let mut first = None;
        let admit = state.admit(&settings, roll);
        let queued_at = tokio::time::Instant::now();
        let slot = admit_watching(admit, &mut body, &mut first).await;
        ctx.queue = Some(queued_at.elapsed());
        if let Some(s) = &mut ctx.span {
            s.queued_at = Some(queued_at);
        }
        ctx.lease = Some(match (slot, ctx.call_deadline) {
            (Err(ProxyError::Unavailable(AcquireError::QueueTimeout)), Some((at, ms)))
                if at <= tokio::time::Instant::now() =>
            {
                return Err(ProxyError::DeadlineExceeded { ms });
            }
            (slot, _) => slot?,
        });
        // Forward: the request rebuilt for the pod, then the attempts.
        let body = (body, first, shared);
        let fwd = Forwarding {
            xff_trusted_hops: self.edge.xff_trusted_hops.load(Ordering::Relaxed),
            pass_authorization: endpoint.state.pass_authorization,
        };
        // The swagger document will name the router as its server, as this client reached it.
        let swagger = (action == Action::Swagger)
            .then(|| {
                swagger::Base::of(
                    &parts.headers,
                    &ctx.uri,
                    (conn.proto, fwd.xff_trusted_hops > 0),
                    (&dep.scoring_path, dep.settings.request_timeout_ms),
                )
            })
            .flatten();
        let req = forward::prepare(ctx, (endpoint, dep, action), parts, body, (conn, fwd), roll)?;
        Ok((forward::send(dep, ctx, req, roll).await?, swagger))
    }

    /// `headersWithUnderscores`: refuses (400), drops or lets through header names with `_`.
    fn check_header_names(&self, headers: &mut http::HeaderMap) -> Result<(), ProxyError> {
        let rule = self.edge.underscores();
        if rule == HeadersWithUnderscores::Allow {
            return Ok(());
        }
        let Some(name) = underscore_header(headers) else {
            return Ok(());
        };
        if rule == HeadersWithUnderscores::Reject {
            let name = name.as_str();
            let cut = name.char_indices().nth(64).map_or(name.len(), |(i, _)| i);
            return Err(ProxyError::InvalidHeaderName {
                name: name[..cut].to_string(),
            });
        }
        drop_underscore_headers(headers);
        Ok(())
    }

    /// Takes the configuration's edge keys (`headersWithUnderscores`, `xffTrustedHops`,
    /// `maxTokenLifetimeSeconds`, `grpc.hostSuffix`); the next request uses them. At start and
    /// at every reload.
    pub fn apply_edge_config(&self, cfg: &infergate_config::Config) {
        let e = &self.edge;
        e.underscores
            .store(cfg.headers_with_underscores as u8, Ordering::Relaxed);
        e.xff_trusted_hops
            .store(cfg.xff_trusted_hops, Ordering::Relaxed);
        e.max_token_lifetime_s
            .store(cfg.max_token_lifetime_seconds, Ordering::Relaxed);
        let suffix = cfg.grpc.as_ref().and_then(|g| g.host_suffix.as_deref());
        e.grpc_host_suffix
            .store(suffix.map(|s| Arc::new(s.to_ascii_lowercase())));
    }

    /// Builds a table from `specs` and publishes it with one atomic swap.
    ///
    /// A deployment that exists in the current table under the same (endpoint, deployment)
    /// names keeps its state: its pool is updated in place, so in-flight counts, waiters and
    /// per-pod state (latency estimates, ejections, connections) carry over; pods that left
    /// take no new requests but finish their own.
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
            let deployments =
                ep.deployments
                    .iter()
                    .map(|d| {
                        // Scale from zero: a deployment with `scaleSettings` may have no pods; its
                        // requests then wait `coldStartWaitMs` for one instead of a 503 at once.
                        let cold_start = d.autoscale.as_ref().map(|a| {
                            std::time::Duration::from_millis(a.settings.cold_start_wait_ms)
                        });
                        let state = match prev.and_then(|e| e.deployment(d.name.as_bytes())) {
                            Some(p) => {
                                p.balancer
                                    .update(&d.pods, &d.settings, cold_start, &d.transport);
                                p.balancer.clone()
                            }
                            None => Arc::new(DeploymentState::new(
                                (&ep.name, &d.name),
                                &d.pods,
                                &d.settings,
                                cold_start,
                                (&self.upstream, &d.transport),
                                &self.registry,
                                self.cluster.get(),
                            )),
                        };
                        let pods = d.pods.iter().map(|p| p.addr).collect();
                        let dep = Deployment::new(
                            &d.name,
                            &d.scoring_path,
                            &d.swagger_path,
                            d.settings,
                            pods,
                            state,
                        )
                        .with_http2(d.transport.protocol.is_http2());
                        (dep, d.weight)
                    })
                    .collect();
            let state = EndpointState::new(ep, prev.map(|p| &*p.state), &self.registry);
            Arc::new(Endpoint::new(&ep.name, Arc::new(state), deployments))
        }));
        let gone = Unpublished::between(&old, &table);
        self.publish(table);
        drop(old);
        // The metric series of what is no longer published leave `/metrics` once the requests
        // still using them are done: endpoints that come and go cannot grow the registry.
        if !gone.is_empty() {
            self.registry.retire_where(|l| gone.covers(l));
        }
    }

    /// Makes this router one replica of a cluster: deployments published from now on lease their
    /// slots from their owner replica. Set before the first table is published.
    pub fn set_cluster(&self, cluster: infergate_cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// Makes the router take part in its requests' traces (see `trace.rs`). Set before serving.
    pub fn set_tracing(&self, settings: TraceSettings) {
        let _ = self.tracing.set(settings);
    }

    /// Sends the spans of sampled requests to `sink` for export (`tracing.otlp`; with
    /// [`Router::set_tracing`]). Set before serving.
    pub(crate) fn set_span_sink(&self, sink: Arc<crate::otlp::SpanSink>) {
        let _ = self.metrics.spans.set(sink);
    }

    /// The cluster this router is a replica of, if any.
    pub fn cluster(&self) -> Option<&infergate_cluster::Cluster> {
        self.cluster.get()
    }

    /// Publishes a new table with one atomic swap; requests already running keep the old one.
    pub fn publish(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// The table being served now.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// The registry this router counts in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Closes upstream connections idle for longer than the idle timeout (called periodically).
    pub fn sweep_idle(&self) {
        self.each_deployment(|d| d.conns.sweep());
    }

    /// Sets the per-deployment autoscale gauges from the pools (called when `/metrics` is scraped):
    /// busy slots, queued requests, pods, and utilization = (busy + queued) / (pods x slots).
    pub fn update_gauges(&self) {
        self.each_deployment(DeploymentState::update_gauges);
    }

    /// Every deployment with valid `scaleSettings`, with its load now.
    pub fn autoscale_targets(&self) -> Vec<infergate_spec::AutoscaleTarget> {
        let table = self.table.load();
        let mut out = Vec::new();
        for ep in table.endpoints() {
            for d in ep.state.spec().deployments.iter() {
                let (Some(spec), Some(dep)) = (
                    &d.autoscale,
                    ep.deployments.iter().find(|x| *x.name == *d.name),
                ) else {
                    continue;
                };
                out.push(infergate_spec::AutoscaleTarget {
                    endpoint: ep.state.name.to_string(),
                    deployment: d.name.clone(),
                    spec: spec.clone(),
                    load: dep.balancer.load(&dep.settings),
                });
            }
        }
        out
    }

    fn each_deployment(&self, f: impl Fn(&DeploymentState)) {
        let table = self.table.load();
        for ep in table.endpoints() {
            for d in ep.deployments.iter() {
                f(&d.balancer);
            }
        }
    }
}

/// A gRPC call's deadline: now + its `grpc-timeout` (from the request's start), at most
/// `maxStreamDurationMs` when that is on; with the timeout it stands for, in ms. No
/// `grpc-timeout`: the deployment's limits alone.
fn call_deadline(
    start: tokio::time::Instant,
    headers: &http::HeaderMap,
    settings: &infergate_config::ResolvedSettings,
) -> Result<Option<(tokio::time::Instant, u64)>, ProxyError> {
    let Some(v) = headers.get(crate::grpc::GRPC_TIMEOUT) else {
        return Ok(None);
    };
    let mut timeout =
        crate::grpc::parse_timeout(v.as_bytes()).ok_or(ProxyError::InvalidGrpcTimeout)?;
    if settings.max_stream_duration_ms > 0 {
        timeout = timeout.min(Duration::from_millis(settings.max_stream_duration_ms));
    }
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    Ok(Some((start + timeout, ms)))
}

/// What a table swap stops publishing: whole endpoints, and deployments of endpoints that stay.
#[derive(Debug, Default)]
struct Unpublished {
    endpoints: HashSet<Box<str>>,
    deployments: HashMap<Box<str>, HashSet<Box<str>>>,
}

impl Unpublished {
    fn between(old: &Table, new: &Table) -> Self {
        let mut gone = Unpublished::default();
        for ep in old.endpoints() {
            let Some(now) = new.endpoint_shared(&ep.name) else {
                gone.endpoints.insert(ep.name.clone());
                continue;
            };
            if old
                .endpoint_shared(&ep.name)
                .is_some_and(|o| Arc::ptr_eq(o, now))
            {
                continue; // unchanged, shared
            }
            for d in ep.deployments.iter() {
                if now.deployment(d.name.as_bytes()).is_none() {
                    let set = gone.deployments.entry(ep.name.clone()).or_default();
                    set.insert(d.name.clone());
                }
            }
        }
        gone
    }

    fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.deployments.is_empty()
    }

    /// Whether a series with these labels belongs to something no longer published.
    fn covers(&self, l: infergate_metrics::Labels<'_>) -> bool {
        let Some(ep) = l.get("endpoint") else {
            return false;
        };
        self.endpoints.contains(ep)
            || l.get("deployment")
                .is_some_and(|d| self.deployments.get(ep).is_some_and(|s| s.contains(d)))
    }
}

/// The cluster finds a deployment's pool in the router's current table.
#[derive(Debug)]
pub(crate) struct RouterDeployments(pub(crate) std::sync::Weak<Router>);

impl infergate_cluster::Deployments for RouterDeployments {
    fn get(&self, key: &str) -> Option<infergate_cluster::DepHandle> {
        let (endpoint, deployment) = key.split_once('/')?;
        let router = self.0.upgrade()?;
        let table = router.table.load();
        let d = table
            .endpoint(endpoint)?
            .deployment(deployment.as_bytes())?;
        Some(infergate_cluster::DepHandle {
            pool: d.balancer.pool.clone(),
            max_queue: d.settings.max_queue_length as usize,
            request_timeout_ms: d.settings.request_timeout_ms,
        })
    }
}

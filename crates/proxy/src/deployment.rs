//! Per-deployment state, kept across route-table swaps: the pod pool (slots, queue, pick), the
//! connections to its pods, the retry budget and the metric handles; and the admission phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use hyper::body::Incoming;
use infergate_balance::{AcquireError, Lease, Outcome, PodSpec, PodState, Pool, PoolSettings};
use infergate_cluster::{Cluster, ClusterError, ClusterLease};
use infergate_config::PartitionMode;
use infergate_config::ResolvedSettings;
use infergate_metrics::{Counter, Gauge, Histogram, LogLimiter, Registry};
use infergate_spec::{DeploymentLoad, PodTransport};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::metrics::{
    ADMISSION_REJECTION_REASONS, ADMISSION_REJECTIONS_TOTAL, DEPLOYMENT_BUSY_SLOTS,
    DEPLOYMENT_PODS, DEPLOYMENT_QUEUED_REQUESTS, DEPLOYMENT_SLOTS, DEPLOYMENT_UTILIZATION,
    MIRROR_REQUESTS_TOTAL, POD_EJECTIONS_TOTAL, QUEUE_WAIT_SECONDS, REQUEST_DURATION_SECONDS,
    REQUESTS_CANCELLED_TOTAL, REQUESTS_TOTAL, RESPONSE_STREAM_SECONDS, RETRIES_TOTAL,
    STREAM_TIMEOUTS_TOTAL, UPSTREAM_CONNECT_SECONDS, UPSTREAM_DURATION_SECONDS,
};
use crate::upstream::{ConnPool, Upstream};
use crate::watchdog::StreamTimer;

/// How a deployment's request settings drive its pool. `cold_start_wait`: `Some` for a
/// deployment with `scaleSettings` (it may be scaled to zero; requests then wait that long for a
/// pod), `None` otherwise (no pods: 503 `NoPodAvailable` at once).
pub fn pool_settings(s: &ResolvedSettings, cold_start_wait: Option<Duration>) -> PoolSettings {
    PoolSettings {
        slots: s.max_concurrent_requests_per_instance,
        max_queue: s.max_queue_length,
        eject_after: s.eject_after_consecutive_failures,
        ejection_base: Duration::from_millis(s.ejection_base_ms),
        ejection_max: Duration::from_millis(s.ejection_max_ms),
        cold_start_wait,
    }
}

/// Live state of one deployment. Kept across route-table swaps while the (endpoint, deployment)
/// names stay.
#[derive(Debug)]
pub struct DeploymentState {
    /// Slots, queue and pick over the deployment's pods.
    pub pool: Pool,
    /// Endpoint name (labels, logs).
    pub endpoint: Arc<str>,
    /// Deployment name (labels, logs).
    pub deployment: Arc<str>,
    /// The deployment's name as the `azureml-model-deployment` response header.
    pub(crate) header: HeaderValue,
    pub(crate) conns: ConnPool,
    retry_budget: RetryBudget,
    pub(crate) metrics: DeploymentMetrics,
    /// With `cluster`: slots are leased from the deployment's owner replica.
    shared: Option<Shared>,
}

/// A deployment admitted through the cluster.
#[derive(Debug)]
struct Shared {
    cluster: Cluster,
    /// `endpoint/deployment`, the deployment's name in the cluster.
    key: infergate_cluster::core::Dep,
    busy: Gauge,
    queued: Gauge,
    utilization: Gauge,
}

/// A pod slot held by a request: from this replica's own pool, or leased from the deployment's
/// owner replica. Dropping it gives the slot back.
#[derive(Debug)]
pub enum Slot {
    /// From the local pool (no cluster, or a local share while the owner is unreachable).
    Local(Lease),
    /// Leased through the cluster.
    Cluster {
        /// The lease (released to the owner on drop).
        lease: ClusterLease,
        /// The pod's local state (for its address, name and connections).
        pod: Arc<PodState>,
    },
}

impl Slot {
    /// The pod this slot is on.
    pub fn pod(&self) -> &Arc<PodState> {
        match self {
            Slot::Local(l) => l.pod(),
            Slot::Cluster { pod, .. } => pod,
        }
    }
}

impl DeploymentState {
    /// State for deployment `deployment` of `endpoint` with these pods and settings
    /// (`cold_start_wait`: see [`pool_settings`]); connections are opened as `upstream` says,
    /// speaking `transport`, and metrics registered in `registry`.
    pub(crate) fn new(
        (endpoint, deployment): (&str, &str),
        pods: &[PodSpec],
        settings: &ResolvedSettings,
        cold_start_wait: Option<Duration>,
        (upstream, transport): (&Upstream, &PodTransport),
        registry: &Registry,
        cluster: Option<&Cluster>,
    ) -> Self {
        let shared = cluster.map(|c| {
            let l = [("endpoint", endpoint), ("deployment", deployment)];
            Shared {
                cluster: c.clone(),
                key: format!("{endpoint}/{deployment}").into(),
                busy: registry.gauge(infergate_cluster::runtime::CLUSTER_BUSY_SLOTS, &l),
                queued: registry.gauge(infergate_cluster::runtime::CLUSTER_QUEUED_REQUESTS, &l),
                utilization: registry.gauge(infergate_cluster::runtime::CLUSTER_UTILIZATION, &l),
            }
        });
        DeploymentState {
            shared,
            pool: Pool::new(pods, pool_settings(settings, cold_start_wait)),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            header: HeaderValue::from_str(deployment)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            conns: ConnPool::new(upstream, pods, transport),
            retry_budget: RetryBudget::new(),
            metrics: DeploymentMetrics::new(registry, endpoint, deployment),
        }
    }

    /// The deployment's pods or settings changed: in place, so in-flight counts, waiters,
    /// per-pod state and connections of the pods that stay carry over (connections only while
    /// the `transport` stays the same).
    /// Requests queued while the deployment had no pods are served here, oldest first.
    pub(crate) fn update(
        &self,
        pods: &[PodSpec],
        settings: &ResolvedSettings,
        cold_start_wait: Option<Duration>,
        transport: &PodTransport,
    ) {
        // Connections first: a waiter the pool serves goes straight to its pod.
        self.conns.set_transport(transport, pods);
        self.conns.set_pods(pods);
        self.pool
            .set_pods(pods, pool_settings(settings, cold_start_wait));
        // With `cluster`, requests wait in the owner's queue: if that is this replica, serve
        // them now (the first pods of a deployment scaled to zero).
        if let Some(s) = &self.shared {
            s.cluster.pods_changed(&s.key);
        }
    }

    /// Refuses a body that announces more than the deployment allows (before a slot is taken).
    pub(crate) fn check_body(
        &self,
        settings: &ResolvedSettings,
        headers: &HeaderMap,
        body: &Incoming,
    ) -> Result<(), ProxyError> {
        let limit = settings.max_request_body_bytes;
        let announced = http_body::Body::size_hint(body)
            .exact()
            .or_else(|| content_length(headers));
        match announced {
            Some(n) if n > limit => Err(ProxyError::PayloadTooLarge { limit }),
            _ => Ok(()),
        }
    }

    /// Admission: a slot on a pod, waiting in FIFO order for at most `maxQueueWaitMs`. Every
    /// request also deposits its share into the retry budget.
    ///
    /// Cold start: a deployment with `scaleSettings` and no pods (scaled to zero) queues the
    /// request (FIFO, `maxQueueLength`) for up to `coldStartWaitMs` instead of `maxQueueWaitMs`
    /// ([`Pool::acquire`] has the rule); when no pod came in that time: 503 `ColdStartTimeout`.
    pub(crate) async fn admit(
        &self,
        settings: &ResolvedSettings,
        roll: u64,
    ) -> Result<Slot, ProxyError> {
        self.retry_budget.deposit(settings.retry_budget_percent);
        let queued_at = Instant::now();
        let wait = Duration::from_millis(settings.max_queue_wait_ms);
        let acquired = match &self.shared {
            None => self
                .pool
                .acquire(roll, wait)
                .await
                .map(Slot::Local)
                .map_err(Into::into),
            Some(s) => self.lease(s, roll, wait, None).await,
        };
        self.metrics
            .queue_wait
            .record(queued_at.elapsed().as_secs_f64());
        if let Err(e) = &acquired {
            self.metrics.rejected(e).increment(1);
        }
        acquired
    }

    /// A slot leased from the deployment's owner replica; when that replica cannot be reached,
    /// a refusal or a local share of the slots, as `cluster.onOwnerUnreachable` says.
    async fn lease(
        &self,
        s: &Shared,
        roll: u64,
        wait: Duration,
        avoid: Option<&PodState>,
    ) -> Result<Slot, ProxyError> {
        let avoid_addr = avoid.map(PodState::addr);
        // Scaled to zero (as this replica's table says): the request waits `coldStartWaitMs`,
        // in the owner's queue, which holds it until that deadline or its first pod.
        let cold = self
            .pool
            .cold_start_wait()
            .filter(|_| !wait.is_zero() && self.pool.pods().is_empty());
        let wait = cold.unwrap_or(wait);
        match s.cluster.acquire(&s.key, wait, avoid_addr).await {
            Ok(lease) => {
                let addr = lease.pod();
                let pod = self
                    .pool
                    .pods()
                    .iter()
                    .find(|p| p.addr() == addr)
                    .cloned()
                    .unwrap_or_else(|| PodState::detached(&PodSpec::from(addr)));
                Ok(Slot::Cluster { lease, pod })
            }
            Err(ClusterError::QueueTimeout) if cold.is_some() && self.pool.pods().is_empty() => {
                Err(AcquireError::ColdStartTimeout.into())
            }
            Err(ClusterError::QueueTimeout) => Err(AcquireError::QueueTimeout.into()),
            Err(ClusterError::QueueFull) => Err(AcquireError::QueueFull.into()),
            Err(ClusterError::NoPods) => Err(AcquireError::NoPods.into()),
            Err(ClusterError::OwnerUnavailable) => {
                let local = s.cluster.partition_mode() == PartitionMode::LocalShare;
                s.cluster.count_degraded(local);
                // Once per request while cut off: a few lines a second, the rest counted.
                static LOG: LogLimiter = LogLimiter::new(5, Duration::from_secs(1));
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(
                        endpoint = &*self.endpoint,
                        deployment = &*self.deployment,
                        mode = if local { "local_share" } else { "refused" },
                        suppressed,
                        "the replica that admits for this deployment is unreachable"
                    );
                }
                if !local {
                    return Err(ProxyError::OwnerUnavailable);
                }
                // Availability first: this replica's share of each pod's slots, no queue.
                let share = self.pool.limit().div_ceil(s.cluster.members() as u32);
                self.pool
                    .try_acquire_within(roll, avoid_addr, share)
                    .map(Slot::Local)
                    .ok_or(ProxyError::OwnerUnavailable)
            }
        }
    }

    /// A slot now or never (a mirror copy): the local pool's, or the owner's without queueing.
    pub(crate) async fn try_slot(&self, roll: u64) -> Option<Slot> {
        match &self.shared {
            None => self.pool.try_acquire(roll).map(Slot::Local),
            Some(s) => self.lease(s, roll, Duration::ZERO, None).await.ok(),
        }
    }

    /// A slot on another pod than `failed` for a retry, if the budget allows one.
    pub(crate) async fn retry_lease(
        &self,
        settings: &ResolvedSettings,
        roll: u64,
        failed: &Slot,
    ) -> Option<Slot> {
        if settings.retry_budget_percent == 0
            || self.pool.pods().len() < 2
            || !self.retry_budget.withdraw()
        {
            return None;
        }
        let wait = Duration::from_millis(settings.max_queue_wait_ms);
        let roll = roll.rotate_left(21);
        let next = match &self.shared {
            None => self
                .pool
                .acquire_avoiding(roll, wait, Some(failed.pod().clone()))
                .await
                .map(Slot::Local)
                .ok()?,
            Some(s) => self.lease(s, roll, wait, Some(failed.pod())).await.ok()?,
        };
        self.metrics.retries.increment(1);
        tracing::debug!(pod = %failed.pod().addr(), next = %next.pod().addr(), "retrying on another pod");
        Some(next)
    }

    /// Reports an outcome to the pool and counts an ejection it causes.
    pub(crate) fn report(&self, slot: &Slot, outcome: Outcome) {
        let lease = match slot {
            Slot::Local(l) => l,
            Slot::Cluster { lease, .. } => {
                // The owner judges the pod's health from what its leases report.
                lease.report(match outcome {
                    Outcome::Success(d) => infergate_cluster::core::Outcome::Success(
                        d.as_micros().min(u128::from(u64::MAX)) as u64,
                    ),
                    Outcome::Failure => infergate_cluster::core::Outcome::Failure,
                });
                return;
            }
        };
        if lease.report(outcome) {
            self.metrics.ejections.increment(1);
            // Pods that fail on purpose could otherwise write lines as fast as they fail.
            static LOG: LogLimiter = LogLimiter::new(5, Duration::from_secs(1));
            if let Some(suppressed) = LOG.allow() {
                tracing::warn!(
                    endpoint = &*self.endpoint,
                    deployment = &*self.deployment,
                    pod = %lease.pod().addr(),
                    suppressed,
                    "pod ejected after consecutive failures"
                );
            }
        }
    }

    /// Sets the autoscale gauges from the pool: busy slots, queued requests, pods, and
    /// utilization = (busy + queued) / (pods x slots).
    /// The load the autoscaler reads: with `cluster`, busy and queued as the deployment's
    /// owner reports them for the whole fleet (this replica's own pool when the report is
    /// stale); else this replica's pool.
    pub fn load(&self, settings: &ResolvedSettings) -> DeploymentLoad {
        let pool = &self.pool;
        let pods = pool.pods();
        let ready = pods.iter().filter(|p| p.is_active()).count() as u32;
        let known: Vec<Duration> = pods
            .iter()
            .map(|p| p.latency_estimate())
            .filter(|d| !d.is_zero())
            .collect();
        let service_time =
            (!known.is_empty()).then(|| known.iter().sum::<Duration>() / known.len() as u32);
        let mut load = DeploymentLoad {
            busy: pool.busy(),
            queued: pool.queued() as u32,
            ready_pods: ready,
            slots_per_pod: pool.limit(),
            service_time,
            max_queue_wait: Duration::from_millis(settings.max_queue_wait_ms),
            fleet_wide: self.shared.is_none(),
        };
        if let Some(s) = &self.shared
            && let Some((busy, queued, _)) = s.cluster.global_status(&s.key)
        {
            (load.busy, load.queued, load.fleet_wide) = (busy, queued, true);
        }
        load
    }

    pub(crate) fn update_gauges(&self) {
        let (pool, m) = (&self.pool, &self.metrics);
        let (busy, queued) = (f64::from(pool.busy()), pool.queued() as f64);
        let pods = pool.pods().len() as f64;
        let capacity = pods * f64::from(pool.limit());
        m.busy.set(busy);
        m.queued.set(queued);
        m.pods.set(pods);
        m.slots.set(capacity);
        m.utilization.set(utilization(busy, queued, capacity));
        if let Some(s) = &self.shared
            && let Some((busy, queued, cap)) = s.cluster.global_status(&s.key)
        {
            let (busy, queued, cap) = (f64::from(busy), f64::from(queued), f64::from(cap));
            s.busy.set(busy);
            s.queued.set(queued);
            s.utilization.set(utilization(busy, queued, cap));
        }
    }
}

/// (busy + queued) / capacity; infinite when requests wait and there is no capacity.
fn utilization(busy: f64, queued: f64, capacity: f64) -> f64 {
    if capacity > 0.0 {
        (busy + queued) / capacity
    } else if busy + queued > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
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

/// `infergate_requests_total{..., status}` handles, each registered on the first answer with
/// that status label and then reused.
///
/// A pod may answer with any status from 100 to 999: registered codes (and the router's 499)
/// are labelled by their number; any other code by its class (`2xx`, `5xx`, ...), and codes
/// from 600 up as `other`, so the series per deployment stay a few dozen whatever pods send.
///
/// Without an endpoint or deployment (a request that reached none), the series has no such
/// label.
#[derive(Debug)]
pub(crate) struct StatusCounters {
    registry: Registry,
    endpoint: Arc<str>,
    deployment: Arc<str>,
    by_status: RwLock<Vec<(u16, Counter)>>,
}

/// The status label of `status` as a key: the code itself when it is registered (or the
/// router's own 499), `1000 + class` for another code of classes 1-5, `1000` for 600 and up.
pub(crate) fn status_bucket(status: u16) -> u16 {
    let known = status == 499
        || http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .is_some();
    match status {
        _ if known => status,
        100..=599 => 1000 + status / 100,
        _ => 1000,
    }
}

/// The label text of a [`status_bucket`] key.
pub(crate) fn status_label(bucket: u16) -> std::borrow::Cow<'static, str> {
    match bucket {
        1000 => "other".into(),
        1001..=1005 => ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(bucket - 1001)].into(),
        code => code.to_string().into(),
    }
}

impl StatusCounters {
    pub(crate) fn new(registry: &Registry, endpoint: &str, deployment: &str) -> Self {
        StatusCounters {
            registry: registry.clone(),
            endpoint: endpoint.into(),
            deployment: deployment.into(),
            by_status: RwLock::new(Vec::new()),
        }
    }

    /// Counts one answer with `status`.
    pub(crate) fn count(&self, status: u16) {
        let bucket = status_bucket(status);
        if let Some((_, c)) = self.by_status.read().iter().find(|(s, _)| *s == bucket) {
            c.increment(1);
            return;
        }
        let mut w = self.by_status.write();
        let c = match w.iter().find(|(s, _)| *s == bucket) {
            Some((_, c)) => c.clone(),
            None => {
                let label = status_label(bucket);
                // Requests that reached no endpoint or deployment carry no such label (not an
                // empty one).
                let labels: Vec<(&'static str, &str)> = [
                    ("endpoint", &*self.endpoint),
                    ("deployment", &*self.deployment),
                    ("status", &*label),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect();
                let c = self.registry.counter(REQUESTS_TOTAL, &labels);
                w.push((bucket, c.clone()));
                c
            }
        };
        c.increment(1);
    }
}

/// Mirror copies by result.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MirrorResult {
    Ok = 0,
    Failed = 1,
    Skipped = 2,
}

/// Metric handles for one (endpoint, deployment), registered once rather than per request.
#[derive(Debug)]
pub(crate) struct DeploymentMetrics {
    pub(crate) status: StatusCounters,
    pub(crate) duration: Histogram,
    pub(crate) upstream: Histogram,
    /// Getting a connection to the pod: `[new, pooled]`.
    pub(crate) connect: [Histogram; 2],
    /// The pod's response head until the end of its body.
    pub(crate) stream: Histogram,
    /// Requests whose client went away before the answer ended.
    pub(crate) cancelled: Counter,
    /// Requests ended by each stream timer (idle, max duration).
    stream_timeouts: [Counter; 2],
    queue_wait: Histogram,
    /// Admission refusals, in the order of [`ADMISSION_REJECTION_REASONS`].
    rejected: [Counter; 5],
    retries: Counter,
    ejections: Counter,
    mirror: [Counter; 3],
    busy: Gauge,
    queued: Gauge,
    pods: Gauge,
    slots: Gauge,
    utilization: Gauge,
}

impl DeploymentMetrics {
    fn new(registry: &Registry, endpoint: &str, deployment: &str) -> Self {
        let l = [("endpoint", endpoint), ("deployment", deployment)];
        let mirror = |result: &'static str| {
            registry.counter(
                MIRROR_REQUESTS_TOTAL,
                &[
                    ("endpoint", endpoint),
                    ("deployment", deployment),
                    ("result", result),
                ],
            )
        };
        DeploymentMetrics {
            status: StatusCounters::new(registry, endpoint, deployment),
            duration: registry.histogram(REQUEST_DURATION_SECONDS, &l),
            upstream: registry.histogram(UPSTREAM_DURATION_SECONDS, &l),
            connect: ["false", "true"].map(|pooled| {
                registry.histogram(
                    UPSTREAM_CONNECT_SECONDS,
                    &[
                        ("endpoint", endpoint),
                        ("deployment", deployment),
                        ("pooled", pooled),
                    ],
                )
            }),
            stream: registry.histogram(RESPONSE_STREAM_SECONDS, &l),
            cancelled: registry.counter(REQUESTS_CANCELLED_TOTAL, &l),
            stream_timeouts: [StreamTimer::Idle, StreamTimer::MaxDuration].map(|t| {
                registry.counter(
                    STREAM_TIMEOUTS_TOTAL,
                    &[
                        ("endpoint", endpoint),
                        ("deployment", deployment),
                        ("timer", t.outcome()),
                    ],
                )
            }),
            queue_wait: registry.histogram(QUEUE_WAIT_SECONDS, &l),
            rejected: ADMISSION_REJECTION_REASONS.map(|reason| {
                registry.counter(
                    ADMISSION_REJECTIONS_TOTAL,
                    &[
                        ("endpoint", endpoint),
                        ("deployment", deployment),
                        ("reason", reason),
                    ],
                )
            }),
            retries: registry.counter(RETRIES_TOTAL, &l),
            ejections: registry.counter(POD_EJECTIONS_TOTAL, &l),
            mirror: [mirror("ok"), mirror("failed"), mirror("skipped")],
            busy: registry.gauge(DEPLOYMENT_BUSY_SLOTS, &l),
            queued: registry.gauge(DEPLOYMENT_QUEUED_REQUESTS, &l),
            pods: registry.gauge(DEPLOYMENT_PODS, &l),
            slots: registry.gauge(DEPLOYMENT_SLOTS, &l),
            utilization: registry.gauge(DEPLOYMENT_UTILIZATION, &l),
        }
    }

    /// The admission-refusal counter for `e` (an error [`DeploymentState::admit`] returns).
    fn rejected(&self, e: &ProxyError) -> &Counter {
        let i = match e {
            ProxyError::Unavailable(AcquireError::QueueTimeout) => 0,
            ProxyError::Unavailable(AcquireError::QueueFull) => 1,
            ProxyError::Unavailable(AcquireError::NoPods) => 2,
            ProxyError::Unavailable(AcquireError::ColdStartTimeout) => 3,
            // `OwnerUnavailable`; admission makes no other error.
            _ => 4,
        };
        &self.rejected[i]
    }

    /// The counter of requests `timer` ended.
    pub(crate) fn stream_timeout(&self, timer: StreamTimer) -> &Counter {
        &self.stream_timeouts[timer.code() as usize - 1]
    }

    /// The mirror counter for `result`.
    pub(crate) fn mirror(&self, result: MirrorResult) -> &Counter {
        &self.mirror[result as usize]
    }
}

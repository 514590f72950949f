//! Per-pod concurrency slots, a bounded FIFO wait queue and pod picking for one deployment.
//!
//! A [`Pool`] holds the pods of one deployment. [`Pool::acquire`] returns a [`Lease`] on a pod
//! with a free slot, picked by power of two choices over in-flight counts with a peak-EWMA
//! latency tie-break; when every slot is taken, the request joins a FIFO queue and waits up to a
//! deadline. A released slot goes straight to the oldest waiter (no barging), and a lease gives
//! its slot back when dropped, so no slot can leak whatever path a request takes.
//!
//! Passive health: [`Lease::report`] feeds each outcome back; a pod with too many consecutive
//! failures is ejected for a while (doubling with each ejection in a row), gets no traffic until
//! the ejection ends, and when every pod is ejected the pool fails open to all of them.
//!
//! Cold start (scale from zero): a pool with [`PoolSettings::cold_start_wait`] set and no pods
//! does not refuse with [`AcquireError::NoPods`]; the request joins the same FIFO queue (bounded
//! by `max_queue`, counted in [`Pool::queued`]) and waits up to `cold_start_wait` for
//! [`Pool::set_pods`] to bring pods, which serves the queue at once, oldest first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
/// A pod as discovery or configuration describes it (defined in `infergate-spec`).
pub use infergate_spec::PodSpec;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// The deployment has no pods.
    #[error("the deployment has no pods")]
    NoPods,
    /// No slot freed up within the wait deadline.
    #[error("no pod slot freed up within the queue wait")]
    QueueTimeout,
    /// The queue is at its length cap.
    #[error("the wait queue is full")]
    QueueFull,
    /// The request queued while the deployment had no pods (scaled to zero) and no slot came
    /// within the cold-start wait; the deployment still has no pods.
    #[error("no pod of the deployment came up within the cold-start wait")]
    ColdStartTimeout,
}

/// One pod's shared state. Kept by address across pod-set updates, so in-flight counts survive
/// a route-table swap.
#[derive(Debug)]
pub struct PodState {
    addr: SocketAddr,
    name: Option<Arc<str>>,
    in_flight: AtomicU32,
    served: AtomicU64,
    active: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Ejections in a row (reset by a success): the next ejection lasts base * 2^ejections.
    ejections: AtomicU32,
    /// Pool clock (ns) until which the pod is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Peak-EWMA of response-head latency, ns.
    ewma_ns: AtomicU64,
    /// Pool clock (ns) of the last EWMA update.
    ewma_at: AtomicU64,
}

impl PodState {
    fn new(spec: &PodSpec) -> Arc<Self> {
        Arc::new(PodState {
            addr: spec.addr,
            name: spec.name.clone(),
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            active: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
        })
    }

    /// A pod's state outside any pool (a pod another replica granted that this one's discovery
    /// has not seen yet).
    pub fn detached(spec: &PodSpec) -> Arc<Self> {
        Self::new(spec)
    }

    /// Peak-EWMA latency estimate.
    pub fn latency_estimate(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed))
    }
    fn ejected_at(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Acquire) > now
    }
    /// The pod's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The pod's name, when discovery knows it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// The pod's name, shared (for records that outlive the request, e.g. an exported span).
    pub fn shared_name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }
    /// Requests holding a slot on this pod now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
    /// Leases ever granted on this pod.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
    /// False once the pod has left the pool (it finishes what it has, takes nothing new).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn try_take(&self, limit: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

/// How a pool admits and judges its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Slots per pod (`maxConcurrentRequestsPerInstance`).
    pub slots: u32,
    /// Cap on waiting requests; more get [`AcquireError::QueueFull`]. 0: no waiting.
    pub max_queue: u32,
    /// Consecutive failures that eject a pod; 0: never eject.
    pub eject_after: u32,
    /// First ejection time.
    pub ejection_base: Duration,
    /// Longest ejection time.
    pub ejection_max: Duration,
    /// Scale from zero: with `Some(wait)`, a request that finds no pods waits in the queue up to
    /// `wait` for pods to appear instead of failing with [`AcquireError::NoPods`] at once.
    pub cold_start_wait: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            slots: 1,
            max_queue: DEFAULT_MAX_QUEUE as u32,
            eject_after: 5,
            ejection_base: Duration::from_secs(5),
            ejection_max: Duration::from_secs(300),
            cold_start_wait: None,
        }
    }
}

/// What happened to a request, fed back with [`Lease::report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The pod answered (not a 5xx) after this long.
    Success(Duration),
    /// A connect failure or a 5xx answer.
    Failure,
}

/// Time constant of the latency EWMA.
const EWMA_TAU_NS: f64 = 10e9;
/// A pod with no latency sample for this long is treated as unknown again (probed).
const PROBE_AFTER_NS: u64 = 10_000_000_000;
/// How long the fastest latency found by a full scan may stand in for a new scan.
const BEST_HINT_TTL_NS: u64 = 100_000_000;

#[derive(Debug)]
struct Shared {
    pods: ArcSwap<Vec<Arc<PodState>>>,
    settings: parking_lot::RwLock<PoolSettings>,
    limit: AtomicU32,
    epoch: tokio::time::Instant,
    /// Mirrors `queue.len()` so the fast path can see waiters without the lock.
    waiting: AtomicUsize,
    /// The fastest latency estimate the last full scan of [`Shared::worth_taking`] found (ns;
    /// 0: none), and when (pool clock, ns). A pod within 2x of it is worth taking without a
    /// new O(pods) scan.
    best_hint: AtomicU64,
    best_hint_at: AtomicU64,
    queue: Mutex<VecDeque<Waiter>>,
}

/// A request waiting for a slot, and the pod it must not get (the one its first attempt failed on).
#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Lease>,
    avoid: Option<Arc<PodState>>,
}

/// The pods of one deployment with their slots and wait queue. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// A slot on one pod; dropping it gives the slot back (to the oldest waiter first).
#[derive(Debug)]
pub struct Lease {
    pod: Option<Arc<PodState>>,
    shared: Arc<Shared>,
}

impl Lease {
    /// The pod this lease is on.
    pub fn pod(&self) -> &Arc<PodState> {
        self.pod.as_ref().expect("a live lease always has its pod")
    }

    /// Feeds the request's outcome back into the pod's health and latency estimate.
    /// Returns true when this report ejected the pod.
    pub fn report(&self, outcome: Outcome) -> bool {
        let pod = self.pod();
        let now = self.shared.now_ns();
        match outcome {
            Outcome::Success(latency) => {
                pod.consecutive_failures.store(0, Ordering::Relaxed);
                if !pod.ejected_at(now) {
                    pod.ejections.store(0, Ordering::Relaxed);
                }
                let sample = latency.as_nanos().min(u64::MAX as u128) as u64;
                let prev = pod.ewma_ns.load(Ordering::Relaxed);
                let at = pod.ewma_at.swap(now, Ordering::Relaxed);
                let next = if sample >= prev || prev == 0 {
                    sample // peak: jump up at once
                } else {
                    let w = (-(now.saturating_sub(at) as f64) / EWMA_TAU_NS).exp();
                    (prev as f64 * w + sample as f64 * (1.0 - w)) as u64
                };
                pod.ewma_ns.store(next, Ordering::Relaxed);
                false
            }
            Outcome::Failure => {
                let s = *self.shared.settings.read();
                let n = pod.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if s.eject_after == 0 || n < s.eject_after {
                    return false;
                }
                pod.consecutive_failures.store(0, Ordering::Relaxed);
                let k = pod.ejections.fetch_add(1, Ordering::AcqRel).min(30);
                let dur = s
                    .ejection_base
                    .saturating_mul(1u32 << k.min(20))
                    .min(s.ejection_max);
                // Saturating: an `ejectionMaxMs` near 2^64 ms must not overflow the clock.
                let dur_ns = u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX);
                pod.ejected_until
                    .store(now.saturating_add(dur_ns), Ordering::Release);
                true
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            self.shared.release(&pod);
        }
    }
}

/// Default cap on requests waiting in one deployment's queue.
pub const DEFAULT_MAX_QUEUE: usize = 1024;

impl Pool {
    /// A pool of `pods` run with `settings`.
    pub fn new(pods: &[PodSpec], settings: PoolSettings) -> Self {
        Pool {
            shared: Arc::new(Shared {
                pods: ArcSwap::from_pointee(pods.iter().map(PodState::new).collect()),
                limit: AtomicU32::new(settings.slots.max(1)),
                settings: parking_lot::RwLock::new(settings),
                epoch: tokio::time::Instant::now(),
                waiting: AtomicUsize::new(0),
                best_hint: AtomicU64::new(0),
                best_hint_at: AtomicU64::new(0),
                queue: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Replaces the pod set and the per-pod slot count. A pod whose address stays keeps its
    /// state (in-flight count included); a removed pod keeps its in-flight requests but gets no
    /// new ones; waiters are served at once if the change frees capacity.
    pub fn set_pods(&self, pods: &[PodSpec], settings: PoolSettings) {
        let old = self.shared.pods.load_full();
        let new: Vec<Arc<PodState>> = pods
            .iter()
            .map(|spec| {
                old.iter()
                    .find(|p| p.addr == spec.addr && p.name == spec.name)
                    .cloned()
                    .unwrap_or_else(|| PodState::new(spec))
            })
            .collect();
        for p in old.iter() {
            if !new.iter().any(|n| Arc::ptr_eq(n, p)) {
                p.active.store(false, Ordering::Release);
            }
        }
        self.shared
            .limit
            .store(settings.slots.max(1), Ordering::Release);
        *self.shared.settings.write() = settings;
        self.shared.pods.store(Arc::new(new));
        let mut q = self.shared.queue.lock();
        self.shared.dispatch(&mut q);
    }

    /// The pods now in the pool.
    pub fn pods(&self) -> Arc<Vec<Arc<PodState>>> {
        self.shared.pods.load_full()
    }

    /// Slots per pod.
    pub fn limit(&self) -> u32 {
        self.shared.limit.load(Ordering::Acquire)
    }

    /// The cold-start wait of a pod-less pool ([`PoolSettings::cold_start_wait`]).
    pub fn cold_start_wait(&self) -> Option<Duration> {
        self.shared.settings.read().cold_start_wait
    }

    /// Requests waiting for a slot now (those waiting for a pod-less pool's first pod included).
    pub fn queued(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// Slots taken now on the pool's pods.
    pub fn busy(&self) -> u32 {
        self.shared.pods.load().iter().map(|p| p.in_flight()).sum()
    }

    /// Takes a free slot at once, or `None`. `roll` is any random number (for the pick).
    pub fn try_acquire(&self, roll: u64) -> Option<Lease> {
        self.shared
            .try_pick(roll, None, 0)
            .map(|pod| self.shared.lease(pod))
    }

    /// Takes a free slot at once on any pod but `avoid` (a retry after `avoid` failed).
    pub fn try_acquire_avoiding(&self, roll: u64, avoid: &PodState) -> Option<Lease> {
        self.shared
            .try_pick(roll, Some(avoid), 0)
            .map(|pod| self.shared.lease(pod))
    }

    /// Takes a free slot at once on any pod but `avoid` (by address), counting against `limit`
    /// slots per pod instead of the pool's (a share of them); `None` when no slot is free.
    pub fn try_acquire_within(
        &self,
        roll: u64,
        avoid: Option<SocketAddr>,
        limit: u32,
    ) -> Option<Lease> {
        let pods = self.shared.pods.load();
        let avoid = avoid.and_then(|a| pods.iter().find(|p| p.addr == a).cloned());
        self.shared
            .try_pick_with(roll, avoid.as_deref(), 0, limit.max(1))
            .map(|pod| self.shared.lease(pod))
    }

    /// Counts a slot on the pod at `addr` as taken even past the limit (a lease another replica
    /// holds, learned when this one took over the deployment); `None` if the pod is not here.
    pub fn occupy(&self, addr: SocketAddr) -> Option<Lease> {
        let pod = self
            .shared
            .pods
            .load()
            .iter()
            .find(|p| p.addr == addr)?
            .clone();
        pod.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(self.shared.lease(pod))
    }

    /// Pods ejected now.
    pub fn ejected(&self) -> usize {
        let now = self.shared.now_ns();
        self.shared
            .pods
            .load()
            .iter()
            .filter(|p| p.ejected_at(now))
            .count()
    }

    /// Takes a slot, waiting in FIFO order up to `max_wait` when none is free.
    ///
    /// With no pods: [`AcquireError::NoPods`] at once, unless the pool has a
    /// [`PoolSettings::cold_start_wait`]. Then the request queues like any other (FIFO, the
    /// `max_queue` cap) but its deadline is the cold-start wait, not `max_wait`: the rule is
    /// decided once, when the request enqueues (under the queue lock, so no `set_pods` is
    /// missed), and kept even if pods arrive and are all busy. If it runs out while the pool
    /// still has no pods the error is [`AcquireError::ColdStartTimeout`], else
    /// [`AcquireError::QueueTimeout`].
    pub async fn acquire(&self, roll: u64, max_wait: Duration) -> Result<Lease, AcquireError> {
        self.acquire_avoiding(roll, max_wait, None).await
    }

    /// Like [`Pool::acquire`], never on `avoid` (a retry after that pod failed). While the oldest
    /// waiter can only be served by the pod it avoids, younger waiters may go first.
    pub async fn acquire_avoiding(
        &self,
        roll: u64,
        max_wait: Duration,
        avoid: Option<Arc<PodState>>,
    ) -> Result<Lease, AcquireError> {
        let avoid_ref = avoid.as_deref();
        if self.shared.pods.load().is_empty() && self.cold_start_wait().is_none() {
            return Err(AcquireError::NoPods);
        }
        // Fast path, only when nobody is waiting: a newcomer never overtakes a waiter.
        if self.shared.waiting.load(Ordering::Acquire) == 0
            && let Some(pod) = self.shared.try_pick(roll, avoid_ref, 0)
        {
            return Ok(self.shared.lease(pod));
        }
        let (rx, wait, cold_start) = {
            let mut q = self.shared.queue.lock();
            // Pod-less under the lock: `set_pods` stores the pods before it takes the lock to
            // dispatch, so a waiter queued now is served by that dispatch.
            let cold_start = self.cold_start_wait();
            let wait = match (self.shared.pods.load().is_empty(), cold_start) {
                (false, _) => max_wait,
                (true, Some(cold)) => cold,
                (true, None) => return Err(AcquireError::NoPods),
            };
            q.retain(|w| !w.tx.is_closed());
            // Re-check under the lock: a release that ran since the fast path found no waiter.
            if q.is_empty()
                && let Some(pod) = self.shared.try_pick(roll, avoid_ref, 0)
            {
                self.shared.waiting.store(0, Ordering::Release);
                drop(q);
                return Ok(self.shared.lease(pod));
            }
            if q.len() >= self.shared.settings.read().max_queue as usize {
                self.shared.waiting.store(q.len(), Ordering::Release);
                return Err(AcquireError::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            q.push_back(Waiter { tx, avoid });
            self.shared.waiting.store(q.len(), Ordering::Release);
            (rx, wait, cold_start)
        };
        if let Ok(Ok(lease)) = tokio::time::timeout(wait, rx).await {
            return Ok(lease);
        }
        // Timed out (the sender is only dropped without a send when the pool itself goes
        // away). The waiter leaves the queue now, so `queued()` (what the autoscaler reads)
        // does not count it after it gave up.
        let pod_less = {
            let mut q = self.shared.queue.lock();
            q.retain(|w| !w.tx.is_closed());
            self.shared.waiting.store(q.len(), Ordering::Release);
            self.shared.pods.load().is_empty()
        };
        Err(if pod_less && cold_start.is_some() {
            AcquireError::ColdStartTimeout
        } else {
            AcquireError::QueueTimeout
        })
    }
}

impl Shared {
    /// Nanoseconds on the pool's clock (tokio's, so paused-time tests drive it).
    fn now_ns(&self) -> u64 {
        // +1: a pod whose `ejected_until` is 0 is never ejected, even at the first instant.
        self.epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64 + 1
    }

    fn lease(self: &Arc<Self>, pod: Arc<PodState>) -> Lease {
        pod.served.fetch_add(1, Ordering::Relaxed);
        Lease {
            pod: Some(pod),
            shared: self.clone(),
        }
    }

    /// Power of two choices among eligible pods with a free slot: fewer in flight wins, then the
    /// lower peak-EWMA latency. Ejected pods are not eligible unless every pod is ejected (then
    /// all are: fail open); `avoid` never is. A free pod much slower than the others is taken
    /// only when it is expected to finish sooner than waiting for a faster one would
    /// ([`Shared::worth_taking`]); `ahead` is how many requests wait before this one.
    fn try_pick(&self, roll: u64, avoid: Option<&PodState>, ahead: usize) -> Option<Arc<PodState>> {
        self.try_pick_with(roll, avoid, ahead, self.limit.load(Ordering::Acquire))
    }

    fn try_pick_with(
        &self,
        roll: u64,
        avoid: Option<&PodState>,
        ahead: usize,
        limit: u32,
    ) -> Option<Arc<PodState>> {
        let pods = self.pods.load();
        let n = pods.len();
        if n == 0 {
            return None;
        }
        let now = self.now_ns();
        let fail_open = pods.iter().all(|p| p.ejected_at(now));
        let eligible = |p: &PodState| {
            !avoid.is_some_and(|a| std::ptr::eq(a, p)) && (fail_open || !p.ejected_at(now))
        };
        let key = |p: &PodState| (p.in_flight(), p.ewma_ns.load(Ordering::Relaxed));
        let usable = |i: usize| {
            eligible(&pods[i]) && self.worth_taking(&pods, i, limit, ahead, now, &eligible)
        };
        if n >= 2 {
            let a = (roll % n as u64) as usize;
            let b = (a + 1 + ((roll >> 32) % (n as u64 - 1)) as usize) % n;
            let (first, second) = if key(&pods[b]) < key(&pods[a]) {
                (b, a)
            } else {
                (a, b)
            };
            for i in [first, second] {
                if pods[i].in_flight() < limit && usable(i) && pods[i].try_take(limit) {
                    return Some(pods[i].clone());
                }
            }
        }
        // Both choices full or unusable (or a single pod): the best usable pod with a free
        // slot; retried when another thread takes that slot first.
        for _ in 0..n {
            let best = (0..n)
                .filter(|&i| pods[i].in_flight() < limit && usable(i))
                .min_by_key(|&i| key(&pods[i]))?;
            if pods[best].try_take(limit) {
                return Some(pods[best].clone());
            }
        }
        None
    }

    /// A pod's latency estimate as picking sees it: 0 (unknown, so tried like a new pod) when it
    /// has had no sample for [`PROBE_AFTER_NS`], so a pod that was avoided for being slow gets a
    /// request now and then and can show it recovered.
    fn estimate(p: &PodState, now: u64) -> u64 {
        let at = p.ewma_at.load(Ordering::Relaxed);
        if at == 0 || now.saturating_sub(at) > PROBE_AFTER_NS {
            0
        } else {
            p.ewma_ns.load(Ordering::Relaxed)
        }
    }

    /// Whether sending a request to free pod `i` beats waiting for a faster one.
    ///
    /// A pod at most twice as slow as the fastest eligible pod is always worth it. A slower one
    /// (latency `L`) is worth it only if `L <= (ahead + 1) / mu + best`, where `mu` is the rate at
    /// which the faster pods complete requests (sum of slots / latency) and `best` the fastest
    /// latency: the time this request would otherwise spend queued and then served. Under light
    /// load a slow pod gets nothing while a fast slot frees soon; as the queue grows, it takes
    /// the requests that would have waited longest.
    fn worth_taking(
        &self,
        pods: &[Arc<PodState>],
        i: usize,
        limit: u32,
        ahead: usize,
        now: u64,
        eligible: &impl Fn(&PodState) -> bool,
    ) -> bool {
        let l = Self::estimate(&pods[i], now);
        if l == 0 {
            return true;
        }
        // The common case, every pod about as fast: no scan. A hint that is too low (the fastest
        // pod left or slowed down) only sends this to the exact scan below; one that is too high
        // (a faster pod appeared) lasts at most BEST_HINT_TTL_NS.
        let hint = self.best_hint.load(Ordering::Relaxed);
        if hint != 0
            && l <= hint.saturating_mul(2)
            && now.saturating_sub(self.best_hint_at.load(Ordering::Relaxed)) < BEST_HINT_TTL_NS
        {
            return true;
        }
        let mut best = u64::MAX;
        let mut mu = 0.0f64; // completions per ns of the pods more than twice as fast
        for (j, p) in pods.iter().enumerate() {
            let e = Self::estimate(p, now);
            if j == i || e == 0 || !eligible(p) {
                continue;
            }
            best = best.min(e);
            if e.saturating_mul(2) < l {
                mu += f64::from(limit) / e as f64;
            }
        }
        let seen = best.min(l);
        self.best_hint.store(seen, Ordering::Relaxed);
        self.best_hint_at.store(now, Ordering::Relaxed);
        if best == u64::MAX || l <= best.saturating_mul(2) || mu == 0.0 {
            return true;
        }
        l as f64 <= (ahead as f64 + 1.0) / mu + best as f64
    }

    fn release(self: &Arc<Self>, pod: &PodState) {
        let mut q = self.queue.lock();
        pod.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.dispatch(&mut q);
    }

    /// Serves waiters, oldest first, while a slot is free. Called with the queue locked.
    ///
    /// A waiter that cannot be served (the only free pod is one it avoids, or one too slow to be
    /// worth it at its place in the queue) lets later waiters try; the scan stops as soon as no
    /// pod has a free slot, and after [`DISPATCH_SCAN`] waiters.
    fn dispatch(self: &Arc<Self>, q: &mut VecDeque<Waiter>) {
        let mut roll = self.waiting.load(Ordering::Relaxed) as u64 ^ 0x9E37_79B9_7F4A_7C15;
        let mut i = 0;
        while i < q.len() && i < DISPATCH_SCAN {
            if q[i].tx.is_closed() {
                q.remove(i);
                continue;
            }
            roll = roll.rotate_left(17).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let Some(pod) = self.try_pick(roll, q[i].avoid.as_deref(), i) else {
                if !self.any_free() {
                    break;
                }
                i += 1;
                continue;
            };
            let w = q.remove(i).expect("index in range");
            if let Err(mut back) = w.tx.send(self.lease(pod)) {
                // The waiter gave up between the check and the send: free the slot quietly
                // (not through the lease's drop, which would take the lock again).
                let pod = back.pod.take().expect("lease just built");
                pod.served.fetch_sub(1, Ordering::Relaxed);
                pod.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.store(q.len(), Ordering::Release);
    }

    fn any_free(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.pods.load().iter().any(|p| p.in_flight() < limit)
    }
}

/// How many waiters one dispatch looks at beyond those it serves.
const DISPATCH_SCAN: usize = 256;

#[cfg(test)]
mod tests;

//! Per-pod concurrency slots, a bounded FIFO wait queue and pod picking for one deployment.
//!
//! A [`Pool`] holds the pods of one deployment. [`Pool::acquire`] returns a [`Lease`] on a pod
//! with a free slot, picked by power of two choices over in-flight counts; when every slot is
//! taken, the request joins a FIFO queue and waits up to a deadline. A released slot is handed
//! straight to the oldest waiter (no barging), and a lease gives its slot back when dropped,
//! so no slot can leak whatever path a request takes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
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
}

/// A pod as discovery or configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The pod's name (Kubernetes `targetRef`), for logs and metrics.
    pub name: Option<Arc<str>>,
}

impl From<SocketAddr> for PodSpec {
    fn from(addr: SocketAddr) -> Self {
        PodSpec { addr, name: None }
    }
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
}

impl PodState {
    fn new(spec: &PodSpec) -> Arc<Self> {
        Arc::new(PodState {
            addr: spec.addr,
            name: spec.name.clone(),
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            active: AtomicBool::new(true),
        })
    }
    /// The pod's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The pod's name, when discovery knows it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
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
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }
}

#[derive(Debug)]
struct Shared {
    pods: ArcSwap<Vec<Arc<PodState>>>,
    limit: AtomicU32,
    max_queue: usize,
    /// Mirrors `queue.len()` so the fast path can see waiters without the lock.
    waiting: AtomicUsize,
    queue: Mutex<VecDeque<oneshot::Sender<Lease>>>,
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
    /// A pool of `pods`, each with `limit` slots, and a queue of at most `max_queue` waiters.
    pub fn new(pods: &[PodSpec], limit: u32, max_queue: usize) -> Self {
        Pool {
            shared: Arc::new(Shared {
                pods: ArcSwap::from_pointee(pods.iter().map(PodState::new).collect()),
                limit: AtomicU32::new(limit.max(1)),
                max_queue,
                waiting: AtomicUsize::new(0),
                queue: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Replaces the pod set and the per-pod slot count. A pod whose address stays keeps its
    /// state (in-flight count included); a removed pod keeps its in-flight requests but gets no
    /// new ones; waiters are served at once if the change frees capacity.
    pub fn set_pods(&self, pods: &[PodSpec], limit: u32) {
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
        self.shared.limit.store(limit.max(1), Ordering::Release);
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

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// Slots taken now on the pool's pods.
    pub fn busy(&self) -> u32 {
        self.shared.pods.load().iter().map(|p| p.in_flight()).sum()
    }

    /// Takes a free slot at once, or `None`. `roll` is any random number (for the pick).
    pub fn try_acquire(&self, roll: u64) -> Option<Lease> {
        self.shared.try_pick(roll).map(|pod| self.shared.lease(pod))
    }

    /// Takes a slot, waiting in FIFO order up to `max_wait` when none is free.
    pub async fn acquire(&self, roll: u64, max_wait: Duration) -> Result<Lease, AcquireError> {
        if self.shared.pods.load().is_empty() {
            return Err(AcquireError::NoPods);
        }
        // Fast path, only when nobody is waiting: a newcomer never overtakes a waiter.
        if self.shared.waiting.load(Ordering::Acquire) == 0
            && let Some(l) = self.try_acquire(roll)
        {
            return Ok(l);
        }
        let rx = {
            let mut q = self.shared.queue.lock();
            q.retain(|tx| !tx.is_closed());
            // Re-check under the lock: a release that ran since the fast path found no waiter.
            if q.is_empty()
                && let Some(pod) = self.shared.try_pick(roll)
            {
                self.shared.waiting.store(0, Ordering::Release);
                drop(q);
                return Ok(self.shared.lease(pod));
            }
            if q.len() >= self.shared.max_queue {
                self.shared.waiting.store(q.len(), Ordering::Release);
                return Err(AcquireError::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            q.push_back(tx);
            self.shared.waiting.store(q.len(), Ordering::Release);
            rx
        };
        match tokio::time::timeout(max_wait, rx).await {
            Ok(Ok(lease)) => Ok(lease),
            // The sender is only dropped without a send when the pool itself goes away.
            Ok(Err(_)) | Err(_) => Err(AcquireError::QueueTimeout),
        }
    }
}

impl Shared {
    fn lease(self: &Arc<Self>, pod: Arc<PodState>) -> Lease {
        pod.served.fetch_add(1, Ordering::Relaxed);
        Lease {
            pod: Some(pod),
            shared: self.clone(),
        }
    }

    /// Power of two choices over in-flight counts among the pool's pods with a free slot.
    fn try_pick(&self, roll: u64) -> Option<Arc<PodState>> {
        let pods = self.pods.load();
        let limit = self.limit.load(Ordering::Acquire);
        let n = pods.len();
        match n {
            0 => return None,
            1 => return pods[0].try_take(limit).then(|| pods[0].clone()),
            _ => {}
        }
        let a = (roll % n as u64) as usize;
        let b = (a + 1 + ((roll >> 32) % (n as u64 - 1)) as usize) % n;
        let (first, second) = if pods[b].in_flight() < pods[a].in_flight() {
            (b, a)
        } else {
            (a, b)
        };
        for i in [first, second] {
            if pods[i].try_take(limit) {
                return Some(pods[i].clone());
            }
        }
        // Both choices are full: take the least loaded pod with a free slot.
        let mut best: Option<(usize, u32)> = None;
        for (i, p) in pods.iter().enumerate() {
            let f = p.in_flight();
            if f < limit && best.is_none_or(|(_, bf)| f < bf) {
                best = Some((i, f));
            }
        }
        let (start, _) = best?;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| pods[i].try_take(limit))
            .map(|i| pods[i].clone())
    }

    fn release(self: &Arc<Self>, pod: &PodState) {
        let mut q = self.queue.lock();
        pod.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.dispatch(&mut q);
    }

    /// Serves waiters, oldest first, while a slot is free. Called with the queue locked.
    fn dispatch(self: &Arc<Self>, q: &mut VecDeque<oneshot::Sender<Lease>>) {
        let mut roll = self.waiting.load(Ordering::Relaxed) as u64 ^ 0x9E37_79B9_7F4A_7C15;
        while let Some(front) = q.front() {
            if front.is_closed() {
                q.pop_front();
                continue;
            }
            roll = roll.rotate_left(17).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let Some(pod) = self.try_pick(roll) else { break };
            let tx = q.pop_front().expect("front exists");
            if let Err(mut back) = tx.send(self.lease(pod)) {
                // The waiter gave up between the check and the send: free the slot quietly
                // (not through the lease's drop, which would take the lock again).
                let pod = back.pod.take().expect("lease just built");
                pod.served.fetch_sub(1, Ordering::Relaxed);
                pod.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.store(q.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests;

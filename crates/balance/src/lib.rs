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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

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

/// One pod's shared state.
#[derive(Debug)]
pub struct PodState {
    addr: SocketAddr,
    in_flight: AtomicU32,
    served: AtomicU64,
}

impl PodState {
    /// The pod's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Requests holding a slot on this pod now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
    /// Leases ever granted on this pod.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    fn try_take(&self, limit: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

#[derive(Debug)]
struct Shared {
    pods: Box<[Arc<PodState>]>,
    limit: u32,
    max_queue: usize,
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
            self.shared.release(pod);
        }
    }
}

/// Default cap on requests waiting in one deployment's queue.
pub const DEFAULT_MAX_QUEUE: usize = 1024;

impl Pool {
    /// A pool of `pods`, each with `limit` slots, and a queue of at most `max_queue` waiters.
    pub fn new(pods: &[SocketAddr], limit: u32, max_queue: usize) -> Self {
        let pods = pods
            .iter()
            .map(|&addr| {
                Arc::new(PodState {
                    addr,
                    in_flight: AtomicU32::new(0),
                    served: AtomicU64::new(0),
                })
            })
            .collect();
        Pool {
            shared: Arc::new(Shared {
                pods,
                limit: limit.max(1),
                max_queue,
                queue: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The pods.
    pub fn pods(&self) -> &[Arc<PodState>] {
        &self.shared.pods
    }

    /// Slots per pod.
    pub fn limit(&self) -> u32 {
        self.shared.limit
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().len()
    }

    /// Slots taken now, over all pods.
    pub fn busy(&self) -> u32 {
        self.shared.pods.iter().map(|p| p.in_flight()).sum()
    }

    /// Takes a free slot at once, or `None`. `roll` is any random number (for the pick).
    pub fn try_acquire(&self, roll: u64) -> Option<Lease> {
        self.shared.try_pick(roll).map(|pod| self.lease(pod))
    }

    /// Takes a slot, waiting in FIFO order up to `max_wait` when none is free.
    pub async fn acquire(&self, roll: u64, max_wait: Duration) -> Result<Lease, AcquireError> {
        if self.shared.pods.is_empty() {
            return Err(AcquireError::NoPods);
        }
        if let Some(l) = self.try_acquire(roll) {
            return Ok(l);
        }
        let rx = {
            let mut q = self.shared.queue.lock();
            // Re-check under the lock: a release that ran between the fast path and here saw an
            // empty queue and freed its slot instead of handing it over.
            if let Some(pod) = self.shared.try_pick(roll) {
                drop(q);
                return Ok(self.lease(pod));
            }
            q.retain(|tx| !tx.is_closed());
            if q.len() >= self.shared.max_queue {
                return Err(AcquireError::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            q.push_back(tx);
            rx
        };
        match tokio::time::timeout(max_wait, rx).await {
            Ok(Ok(lease)) => Ok(lease),
            // The sender is only dropped without a send when the pool itself goes away.
            Ok(Err(_)) => Err(AcquireError::QueueTimeout),
            Err(_) => Err(AcquireError::QueueTimeout),
        }
    }

    fn lease(&self, pod: Arc<PodState>) -> Lease {
        pod.served.fetch_add(1, Ordering::Relaxed);
        Lease {
            pod: Some(pod),
            shared: self.shared.clone(),
        }
    }
}

impl Shared {
    /// Power of two choices over in-flight counts among pods with a free slot.
    fn try_pick(&self, roll: u64) -> Option<Arc<PodState>> {
        let n = self.pods.len();
        match n {
            0 => return None,
            1 => {
                return self.pods[0]
                    .try_take(self.limit)
                    .then(|| self.pods[0].clone());
            }
            _ => {}
        }
        let a = (roll % n as u64) as usize;
        let b = (a + 1 + ((roll >> 32) % (n as u64 - 1)) as usize) % n;
        let (first, second) = if self.pods[b].in_flight() < self.pods[a].in_flight() {
            (b, a)
        } else {
            (a, b)
        };
        for i in [first, second] {
            if self.pods[i].try_take(self.limit) {
                return Some(self.pods[i].clone());
            }
        }
        // Both choices are full: take the least loaded pod with a free slot.
        let mut best: Option<usize> = None;
        for (i, p) in self.pods.iter().enumerate() {
            let f = p.in_flight();
            if f < self.limit && best.is_none_or(|b| f < self.pods[b].in_flight()) {
                best = Some(i);
            }
        }
        let start = best?;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.pods[i].try_take(self.limit))
            .map(|i| self.pods[i].clone())
    }

    fn release(self: &Arc<Self>, pod: Arc<PodState>) {
        let mut q = self.queue.lock();
        let mut pod = pod;
        while let Some(tx) = q.pop_front() {
            pod.served.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                pod: Some(pod),
                shared: self.clone(),
            };
            match tx.send(lease) {
                Ok(()) => return,
                Err(mut back) => {
                    // The waiter gave up: take the pod back without running the lease's drop.
                    pod = back.pod.take().expect("lease just built");
                    pod.served.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        pod.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;

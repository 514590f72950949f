//! The cluster at run time: the peer listener and dialers, the authenticated connections, the
//! heartbeat and the clock that drive the protocol [`Node`], and the slot leases the data path
//! asks for.
//!
//! One mutex guards the node and the connection table. It is never held across an `.await`:
//! a call into the node and the hand-off of what it outputs (frames into per-connection
//! queues, answers into one-shot channels) happen under it, which also keeps the messages to
//! each peer in the order the node produced them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use infergate_balance::{Lease, Pool};
use infergate_config::PartitionMode;
use infergate_metrics::{Counter, Describe, Gauge, Histogram, Kind, Registry};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::core::{
    Admission, Dep, Millis, NoSlot, Node, NodeId, Outcome, Output, Pod, Refusal, ReqId,
};
use crate::wire::{self, Challenge, Frame, Hello};

/// Live peers (this replica not included).
pub const CLUSTER_PEERS: &str = "infergate_cluster_peers";
/// Round trip of a slot lease asked of another replica (request to grant), seconds.
pub const CLUSTER_LEASE_RTT_SECONDS: &str = "infergate_cluster_lease_rtt_seconds";
/// Times this replica took over a deployment (a claim completed).
pub const CLUSTER_OWNERSHIP_CHANGES_TOTAL: &str = "infergate_cluster_ownership_changes_total";
/// Requests that found their deployment's owner unreachable, by `mode` (`refused`, `local_share`).
pub const CLUSTER_DEGRADED_TOTAL: &str = "infergate_cluster_degraded_total";
/// Peer connections closed because they failed authentication.
pub const CLUSTER_PEER_AUTH_FAILURES_TOTAL: &str = "infergate_cluster_peer_auth_failures_total";
/// Slots taken across all replicas, by `endpoint` and `deployment` (from the owner).
pub const CLUSTER_BUSY_SLOTS: &str = "infergate_cluster_deployment_busy_slots";
/// Requests waiting across all replicas, by `endpoint` and `deployment` (the owner's queue).
pub const CLUSTER_QUEUED_REQUESTS: &str = "infergate_cluster_deployment_queued_requests";
/// (busy + queued) / capacity across all replicas, by `endpoint` and `deployment`.
pub const CLUSTER_UTILIZATION: &str = "infergate_cluster_deployment_utilization";

/// The cluster's metric families.
pub const FAMILIES: &[Describe] = &[
    Describe::new(
        CLUSTER_PEERS,
        Kind::Gauge,
        "Live peer replicas (this one not included).",
    ),
    Describe::seconds(
        CLUSTER_LEASE_RTT_SECONDS,
        "Time from asking a deployment's owner replica for a slot to its grant.",
    ),
    Describe::new(
        CLUSTER_OWNERSHIP_CHANGES_TOTAL,
        Kind::Counter,
        "Deployments this replica took over (claims completed).",
    ),
    Describe::new(
        CLUSTER_DEGRADED_TOTAL,
        Kind::Counter,
        "Requests whose deployment owner was unreachable, by what was done (refused, local_share).",
    ),
    Describe::new(
        CLUSTER_PEER_AUTH_FAILURES_TOTAL,
        Kind::Counter,
        "Peer connections closed for failing authentication.",
    ),
    Describe::new(
        CLUSTER_BUSY_SLOTS,
        Kind::Gauge,
        "Pod slots taken across all replicas (as the deployment's owner counts them).",
    ),
    Describe::new(
        CLUSTER_QUEUED_REQUESTS,
        Kind::Gauge,
        "Requests waiting for a slot across all replicas (the owner's queue).",
    ),
    Describe::new(
        CLUSTER_UTILIZATION,
        Kind::Gauge,
        "(busy + queued) / (pods x slots) across all replicas.",
    ),
];

/// What the owner needs of a deployment it admits for.
#[derive(Debug, Clone)]
pub struct DepHandle {
    /// The deployment's pod pool (slots and pick).
    pub pool: Pool,
    /// Its queue cap.
    pub max_queue: usize,
    /// Its `requestTimeoutMs`.
    pub request_timeout_ms: u64,
}

/// Finds a deployment's pool by key (`endpoint/deployment`) in the current route table.
pub trait Deployments: Send + Sync + 'static {
    /// The deployment, if this replica knows it.
    fn get(&self, dep: &str) -> Option<DepHandle>;
}

/// The owner's slot accounting: the deployment's own pool.
struct PoolAdmission {
    deps: Arc<dyn Deployments>,
}

impl std::fmt::Debug for PoolAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolAdmission")
    }
}

impl Admission for PoolAdmission {
    type Slot = Option<Lease>;

    fn try_grant(
        &mut self,
        dep: &Dep,
        avoid: Option<Pod>,
        _ahead: usize,
    ) -> Result<(Pod, Option<Lease>), NoSlot> {
        let h = self.deps.get(dep).ok_or(NoSlot::NoPods)?;
        if h.pool.pods().is_empty() {
            // Scaled to zero: the request waits in the owner's queue for the first pod.
            return Err(if h.pool.cold_start_wait().is_some() {
                NoSlot::ColdStart
            } else {
                NoSlot::NoPods
            });
        }
        let lease = h
            .pool
            .try_acquire_within(rand::random(), avoid, h.pool.limit())
            .ok_or(NoSlot::Busy)?;
        Ok((lease.pod().addr(), Some(lease)))
    }

    fn occupy(&mut self, dep: &Dep, pod: Pod) -> Option<Lease> {
        self.deps.get(dep)?.pool.occupy(pod)
    }

    fn finish(&mut self, slot: Option<Lease>, outcome: Outcome) {
        if let Some(lease) = slot {
            match outcome {
                Outcome::Success(us) => {
                    lease.report(infergate_balance::Outcome::Success(Duration::from_micros(
                        us,
                    )));
                }
                Outcome::Failure => {
                    lease.report(infergate_balance::Outcome::Failure);
                }
                Outcome::Unknown => {}
            }
        }
    }

    fn max_queue(&self, dep: &Dep) -> usize {
        self.deps.get(dep).map_or(0, |h| h.max_queue)
    }

    fn request_timeout(&self, dep: &Dep) -> Millis {
        self.deps.get(dep).map_or(60_000, |h| h.request_timeout_ms)
    }
}

/// How the cluster runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The peer listener address.
    pub listen: SocketAddr,
    /// The address peers know this replica by.
    pub advertise: SocketAddr,
    /// The member addresses (this replica's may be among them); updated as they change.
    pub members: watch::Receiver<Vec<SocketAddr>>,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silence after which a peer is dead.
    pub dead_after: Duration,
    /// What to do when the owner is unreachable.
    pub on_owner_unreachable: PartitionMode,
    /// Whether `members` follows a watch (`cluster.kube`) whose end is a failure; `false`: a
    /// fixed list (its sender may be gone from the start).
    pub members_follow: bool,
}

/// Why no slot was had through the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The owner's queue did not give a slot within the wait.
    #[error("no pod slot freed up within the queue wait")]
    QueueTimeout,
    /// The owner's queue is full.
    #[error("the wait queue is full")]
    QueueFull,
    /// The deployment has no pods.
    #[error("the deployment has no pods")]
    NoPods,
    /// The deployment's owner could not be reached within the wait (or this replica is in a
    /// minority partition).
    #[error("the replica that admits for this deployment could not be reached")]
    OwnerUnavailable,
}

struct Conn {
    id: u64,
    addr: SocketAddr,
    tx: mpsc::UnboundedSender<Bytes>,
    last_heard: Arc<AtomicU64>,
    tasks: [JoinHandle<()>; 2],
}

struct Waiter {
    tx: Option<oneshot::Sender<Result<Pod, Refusal>>>,
    queued: bool,
}

struct State {
    node: Node<PoolAdmission>,
    conns: HashMap<NodeId, Conn>,
    waiters: HashMap<ReqId, Waiter>,
    /// Owners' reports of their deployments' load: dep -> (busy, queued, capacity, at ms).
    status: HashMap<Dep, (u32, u32, u32, Millis)>,
    members: Vec<SocketAddr>,
    /// Member addresses with no connection, since when (ms).
    missing_since: HashMap<SocketAddr, Millis>,
    out: Vec<Output>,
    buf: BytesMut,
    changes_seen: u64,
    leaving: bool,
}

struct Metrics {
    peers: Gauge,
    rtt: Histogram,
    changes: Counter,
    degraded_refused: Counter,
    degraded_local: Counter,
    auth_failures: Counter,
}

struct Inner {
    id: NodeId,
    addr: SocketAddr,
    start: Instant,
    opts: Options,
    state: Mutex<State>,
    next_req: AtomicU64,
    next_conn: AtomicU64,
    metrics: Metrics,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Wakes the clock early when the node has time-driven work (it sleeps long when idle).
    poke: tokio::sync::Notify,
    /// When the clock last finished a round (ms): a process that was frozen or starved wakes
    /// with this stale and uses no slot before the clock has looked at its peers again.
    last_tick: AtomicU64,
    /// Why a cluster task stopped (see [`Cluster::failed`]); `None` while all run.
    failure: watch::Sender<Option<String>>,
}

/// A handle on this replica's place in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish()
    }
}

/// A slot leased through the cluster; dropping it gives the slot back to the owner.
#[derive(Debug)]
pub struct ClusterLease {
    inner: Arc<Inner>,
    dep: Dep,
    req: ReqId,
    pod: Pod,
    /// The outcome to report: 0 unknown, 1 failure, else 2 + microseconds.
    outcome: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("id", &self.id).finish()
    }
}

impl ClusterLease {
    /// The pod granted.
    pub fn pod(&self) -> Pod {
        self.pod
    }
    /// Records how the exchange went (sent to the owner with the release).
    pub fn report(&self, outcome: Outcome) {
        let v = match outcome {
            Outcome::Unknown => 0,
            Outcome::Failure => 1,
            Outcome::Success(us) => 2 + us.min(u64::MAX - 2),
        };
        self.outcome.store(v, Ordering::Relaxed);
    }
}

impl Drop for ClusterLease {
    fn drop(&mut self) {
        let outcome = match self.outcome.load(Ordering::Relaxed) {
            0 => Outcome::Unknown,
            1 => Outcome::Failure,
            v => Outcome::Success(v - 2),
        };
        let now = self.inner.now();
        let mut st = self.inner.state.lock();
        st.node.release(now, &self.dep, self.req, outcome);
        self.inner.dispatch(&mut st);
    }
}

/// A local request waiting for a slot; dropping it before the answer takes the request back.
struct PendingGuard<'a> {
    inner: &'a Arc<Inner>,
    dep: &'a Dep,
    req: ReqId,
    rx: Option<oneshot::Receiver<Result<Pod, Refusal>>>,
    done: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = self.inner.now();
        let mut st = self.inner.state.lock();
        st.waiters.remove(&self.req);
        st.node.cancel(now, self.req);
        // A grant that arrived as the request gave up is given back at once.
        if let Some(mut rx) = self.rx.take()
            && let Ok(Ok(_)) = rx.try_recv()
        {
            st.node.release(now, self.dep, self.req, Outcome::Unknown);
        }
        self.inner.dispatch(&mut st);
    }
}

impl Cluster {
    /// Binds the peer listener and starts the cluster: dialers, heartbeats, the clock.
    pub async fn start(
        opts: Options,
        deployments: Arc<dyn Deployments>,
        registry: &Registry,
    ) -> std::io::Result<Cluster> {
        let listener = TcpListener::bind(opts.listen).await?;
        registry.describe(FAMILIES);
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let members = opts.members.borrow().clone();
        let node = Node::new(
            id,
            opts.advertise,
            &members,
            PoolAdmission { deps: deployments },
        );
        let inner = Arc::new(Inner {
            id,
            addr: opts.advertise,
            start: Instant::now(),
            state: Mutex::new(State {
                node,
                conns: HashMap::new(),
                waiters: HashMap::new(),
                status: HashMap::new(),
                members: Vec::new(),
                missing_since: HashMap::new(),
                out: Vec::new(),
                buf: BytesMut::with_capacity(4096),
                changes_seen: 0,
                leaving: false,
            }),
            next_req: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            metrics: Metrics {
                peers: registry.gauge(CLUSTER_PEERS, &[]),
                rtt: registry.histogram(CLUSTER_LEASE_RTT_SECONDS, &[]),
                changes: registry.counter(CLUSTER_OWNERSHIP_CHANGES_TOTAL, &[]),
                degraded_refused: registry.counter(CLUSTER_DEGRADED_TOTAL, &[("mode", "refused")]),
                degraded_local: registry
                    .counter(CLUSTER_DEGRADED_TOTAL, &[("mode", "local_share")]),
                auth_failures: registry.counter(CLUSTER_PEER_AUTH_FAILURES_TOTAL, &[]),
            },
            opts,
            tasks: Mutex::new(Vec::new()),
            poke: tokio::sync::Notify::new(),
            last_tick: AtomicU64::new(1),
            failure: watch::Sender::new(None),
        });
        inner.set_members(&members);
        tracing::info!(
            node = format!("{id:016x}"),
            advertise = %inner.addr,
            listen = %listener.local_addr()?,
            members = members.len(),
            "cluster peer listener bound"
        );
        let accept = tokio::spawn(watched(
            inner.clone(),
            "peer listener",
            accept_loop(inner.clone(), listener),
        ));
        let clock = tokio::spawn(watched(inner.clone(), "clock", clock_loop(inner.clone())));
        let membership = tokio::spawn(watched(
            inner.clone(),
            "member list",
            members_loop(inner.clone()),
        ));
        inner.tasks.lock().extend([accept, clock, membership]);
        Ok(Cluster { inner })
    }

    /// Completes when one of the cluster's own tasks (the peer listener, the clock, the member
    /// list) has stopped for good (a panic, or the peer watch behind the member list ended),
    /// with the reason. This replica then admits nothing reliably for its peers (the clock's
    /// fencing refuses every grant once it stalls): the server turns `/readyz` to 503 so that
    /// traffic goes to the other replicas. Never completes while all run.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.failure.subscribe();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The sender lives in `inner`, which `self` holds.
            Err(_) => std::future::pending().await,
        }
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// What to do when a deployment's owner cannot be reached.
    pub fn partition_mode(&self) -> PartitionMode {
        self.inner.opts.on_owner_unreachable
    }

    /// Live peers, this replica not included.
    pub fn peers(&self) -> usize {
        self.inner.state.lock().conns.len()
    }

    /// Live members counted against the members known (for a local share of the slots).
    pub fn members(&self) -> usize {
        self.inner.state.lock().members.len().max(1)
    }

    /// A slot of `dep`, waiting at most `wait` in the owner's queue, not on `avoid`.
    pub async fn acquire(
        &self,
        dep: &Dep,
        wait: Duration,
        avoid: Option<SocketAddr>,
    ) -> Result<ClusterLease, ClusterError> {
        let inner = &self.inner;
        let req = inner.next_req.fetch_add(1, Ordering::Relaxed);
        let wait_ms = wait.as_millis().min(u64::MAX as u128) as u64;
        let asked = Instant::now();
        let rx = {
            let now = inner.now();
            let mut st = inner.state.lock();
            let answer = st.node.acquire(now, dep, req, wait_ms, avoid);
            match answer {
                Some(a) => {
                    inner.dispatch(&mut st);
                    return self.finish(dep, a);
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.insert(
                        req,
                        Waiter {
                            tx: Some(tx),
                            queued: false,
                        },
                    );
                    inner.dispatch(&mut st);
                    rx
                }
            }
        };
        let mut guard = PendingGuard {
            inner,
            dep,
            req,
            rx: Some(rx),
            done: false,
        };
        // Never longer than the request's own queue wait, whoever is (not) answering.
        let rx = guard.rx.as_mut().expect("set above");
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(a)) => {
                guard.done = true;
                let remote = a.is_ok();
                if remote {
                    inner.metrics.rtt.record(asked.elapsed().as_secs_f64());
                }
                inner.state.lock().waiters.remove(&req);
                self.finish(dep, a.map(|pod| (req, pod)))
            }
            Ok(Err(_)) => Err(ClusterError::OwnerUnavailable),
            Err(_) => {
                let queued = inner
                    .state
                    .lock()
                    .waiters
                    .get(&req)
                    .is_some_and(|w| w.queued);
                drop(guard);
                Err(if queued {
                    ClusterError::QueueTimeout
                } else {
                    ClusterError::OwnerUnavailable
                })
            }
        }
    }

    fn finish(
        &self,
        dep: &Dep,
        answer: Result<(ReqId, Pod), Refusal>,
    ) -> Result<ClusterLease, ClusterError> {
        match answer {
            Ok((req, pod)) => {
                let lease = ClusterLease {
                    inner: self.inner.clone(),
                    dep: dep.clone(),
                    req,
                    pod,
                    outcome: AtomicU64::new(0),
                };
                // Fencing: if the clock has not run for half the dead time, this process was
                // frozen or starved, its peers may have declared it dead and given its slots
                // away; the grant (or parked slot) goes back unused.
                let inner = &self.inner;
                let stale = inner
                    .now()
                    .saturating_sub(inner.last_tick.load(Ordering::Acquire));
                if stale > inner.opts.dead_after.as_millis() as u64 / 2 {
                    tracing::warn!(
                        stale_ms = stale,
                        "the cluster clock stalled: a slot is given back unused"
                    );
                    drop(lease);
                    return Err(ClusterError::OwnerUnavailable);
                }
                Ok(lease)
            }
            Err(Refusal::QueueTimeout) => Err(ClusterError::QueueTimeout),
            Err(Refusal::QueueFull) => Err(ClusterError::QueueFull),
            Err(Refusal::NoPods) => Err(ClusterError::NoPods),
            Err(Refusal::NotOwner | Refusal::NoQuorum) => Err(ClusterError::OwnerUnavailable),
        }
    }

    /// The pods of `dep` changed (a new route table): if this replica owns it, requests queued
    /// for it are served now (the first pods of a deployment scaled to zero).
    pub fn pods_changed(&self, dep: &Dep) {
        let now = self.inner.now();
        let mut st = self.inner.state.lock();
        st.node.pods_changed(now, dep);
        self.inner.dispatch(&mut st);
    }

    /// Counts a request that found its owner unreachable, and how it was served.
    pub fn count_degraded(&self, local_share: bool) {
        if local_share {
            self.inner.metrics.degraded_local.increment(1);
        } else {
            self.inner.metrics.degraded_refused.increment(1);
        }
    }

    /// The cluster-wide load of `dep` as its owner last reported it (this replica's own pool
    /// when it is the owner): (busy, queued, capacity).
    pub fn global_status(&self, dep: &str) -> Option<(u32, u32, u32)> {
        let st = self.inner.state.lock();
        let now = self.inner.now();
        if let Some(queued) = st.node.serving(dep) {
            let h = st.node.admission.deps.get(dep)?;
            let cap = h.pool.pods().len() as u32 * h.pool.limit();
            return Some((h.pool.busy(), queued as u32, cap));
        }
        let fresh = 4 * self.inner.opts.heartbeat.as_millis() as u64 + 1000;
        st.status
            .get(dep)
            .filter(|s| now.saturating_sub(s.3) <= fresh)
            .map(|s| (s.0, s.1, s.2))
    }

    /// This replica is shutting down: it hands its deployments over at once and keeps its
    /// leases (and the connections) until its requests are done.
    pub fn leave(&self) {
        let now = self.inner.now();
        let mut st = self.inner.state.lock();
        st.leaving = true;
        st.node.leave(now);
        self.inner.ping_all(&mut st);
        self.inner.dispatch(&mut st);
        tracing::info!("leaving the cluster: deployments handed over");
    }

    /// Stops every cluster task and closes the peer connections.
    pub fn stop(&self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
        let mut st = self.inner.state.lock();
        for (_, c) in st.conns.drain() {
            for t in &c.tasks {
                t.abort();
            }
        }
    }
}

impl Inner {
    fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis + 1
    }

    /// Carries out the node's output: frames into the connections' queues, answers to the
    /// waiting requests. Called with the state locked.
    fn dispatch(&self, st: &mut State) {
        let st = &mut *st;
        // What carrying out the output makes the node say (a grant nobody waits for, given
        // back) goes out in a further round, after what came before it.
        loop {
            st.node.drain_output(&mut st.out);
            if st.out.is_empty() {
                break;
            }
            let mut out = std::mem::take(&mut st.out);
            for o in out.drain(..) {
                match o {
                    Output::Send(to, msg) => {
                        if let Some(c) = st.conns.get(&to) {
                            st.buf.clear();
                            wire::encode(&Frame::Msg(msg), &mut st.buf);
                            let _ = c.tx.send(st.buf.split().freeze());
                        }
                    }
                    Output::Granted { req, pod } => {
                        let sent = st
                            .waiters
                            .get_mut(&req)
                            .and_then(|w| w.tx.take())
                            .is_some_and(|tx| tx.send(Ok(pod)).is_ok());
                        if !sent && let Some(dep) = st.node.held_dep(req) {
                            // Nobody waits for it any more: it goes back.
                            st.node.release(self.now(), &dep, req, Outcome::Unknown);
                        }
                    }
                    Output::Refused { req, reason } => {
                        if let Some(tx) = st.waiters.get_mut(&req).and_then(|w| w.tx.take()) {
                            let _ = tx.send(Err(reason));
                        }
                    }
                    Output::Queued(req) => {
                        if let Some(w) = st.waiters.get_mut(&req) {
                            w.queued = true;
                        }
                    }
                }
            }
            st.out = out;
        }
        if st.node.busy() {
            self.poke.notify_one();
        }
        let changes = st.node.ownership_changes();
        if changes > st.changes_seen {
            self.metrics.changes.increment(changes - st.changes_seen);
            st.changes_seen = changes;
        }
    }

    fn ping_all(&self, st: &mut State) {
        let status: Vec<(Dep, u32, u32, u32)> = st
            .node
            .served()
            .into_iter()
            .filter_map(|(dep, queued)| {
                let h = st.node.admission.deps.get(&dep)?;
                let cap = h.pool.pods().len() as u32 * h.pool.limit();
                Some((dep, h.pool.busy(), queued as u32, cap))
            })
            .collect();
        st.buf.clear();
        wire::encode(
            &Frame::Ping {
                leaving: st.leaving,
                status,
            },
            &mut st.buf,
        );
        let frame = st.buf.split().freeze();
        for c in st.conns.values() {
            let _ = c.tx.send(frame.clone());
        }
    }

    fn set_members(&self, members: &[SocketAddr]) {
        let now = self.now();
        let mut st = self.state.lock();
        let mut m: Vec<SocketAddr> = members.to_vec();
        if !m.contains(&self.addr) {
            m.push(self.addr);
        }
        m.sort();
        m.dedup();
        st.node.set_members(now, &m);
        let connected: Vec<SocketAddr> = st.conns.values().map(|c| c.addr).collect();
        st.missing_since.retain(|a, _| m.contains(a));
        for a in &m {
            if *a != self.addr && !connected.contains(a) {
                st.missing_since.entry(*a).or_insert(now);
            }
        }
        st.members = m;
        self.dispatch(&mut st);
    }

    /// A peer authenticated: its connection's reader and writer run, and the node hears of it.
    fn register(self: &Arc<Self>, node: NodeId, addr: SocketAddr, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let last_heard = Arc::new(AtomicU64::new(self.now()));
        let now = self.now();
        let mut st = self.state.lock();
        let writer = tokio::spawn(write_loop(wr, rx));
        let reader = tokio::spawn(read_loop(
            self.clone(),
            node,
            conn_id,
            rd,
            last_heard.clone(),
        ));
        if let Some(old) = st.conns.insert(
            node,
            Conn {
                id: conn_id,
                addr,
                tx,
                last_heard,
                tasks: [reader, writer],
            },
        ) {
            for t in &old.tasks {
                t.abort();
            }
        }
        // An older process at the same address is gone.
        let stale: Vec<NodeId> = st
            .conns
            .iter()
            .filter(|(n, c)| c.addr == addr && **n != node)
            .map(|(n, _)| *n)
            .collect();
        for n in stale {
            if let Some(c) = st.conns.remove(&n) {
                for t in &c.tasks {
                    t.abort();
                }
            }
        }
        st.missing_since.remove(&addr);
        st.node.peer_up(now, node, addr);
        self.metrics.peers.set(st.conns.len() as f64);
        // Tell the newcomer at once whether this replica is leaving.
        self.ping_all(&mut st);
        self.dispatch(&mut st);
        tracing::info!(peer = %addr, node = format!("{node:016x}"), "cluster peer up");
    }

    /// A connection ended (closed, failed, or silent too long).
    fn lost(&self, node: NodeId, conn_id: u64, why: &str) {
        let now = self.now();
        let mut st = self.state.lock();
        if st.conns.get(&node).is_none_or(|c| c.id != conn_id) {
            return;
        }
        let c = st.conns.remove(&node).expect("checked");
        for t in &c.tasks {
            t.abort();
        }
        st.missing_since.insert(c.addr, now);
        st.node.peer_down(now, node);
        self.metrics.peers.set(st.conns.len() as f64);
        self.dispatch(&mut st);
        tracing::warn!(peer = %c.addr, reason = why, "cluster peer down");
    }

    fn frame(&self, from: NodeId, frame: Frame) {
        let now = self.now();
        let mut st = self.state.lock();
        match frame {
            Frame::Msg(m) => st.node.receive(now, from, m),
            Frame::Ping { leaving, status } => {
                if leaving {
                    st.node.peer_leaving(now, from);
                }
                for (dep, busy, queued, cap) in status {
                    st.status.insert(dep, (busy, queued, cap, now));
                }
            }
        }
        self.dispatch(&mut st);
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(rd: &mut R) -> std::io::Result<Bytes> {
    let len = rd.read_u32().await? as usize;
    if len > wire::MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "peer frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

async fn write_frame(wr: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut b = BytesMut::with_capacity(body.len() + 4);
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(body);
    wr.write_all(&b).await
}

async fn read_loop(
    inner: Arc<Inner>,
    node: NodeId,
    conn_id: u64,
    rd: OwnedReadHalf,
    last_heard: Arc<AtomicU64>,
) {
    let mut rd = tokio::io::BufReader::with_capacity(16 * 1024, rd);
    loop {
        let body = match read_frame(&mut rd).await {
            Ok(b) => b,
            Err(_) => break,
        };
        last_heard.store(inner.now(), Ordering::Relaxed);
        match wire::decode(body) {
            Ok(f) => inner.frame(node, f),
            Err(e) => {
                tracing::warn!(error = %e, "closing a peer connection");
                break;
            }
        }
    }
    inner.lost(node, conn_id, "connection closed");
}

/// The dialing side of the handshake: hello, check the acceptor's proof, send ours.
async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
) -> std::io::Result<(NodeId, SocketAddr, TcpStream)> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let nonce: [u8; 16] = rand::random();
    let mut b = BytesMut::new();
    Hello {
        node: inner.id,
        addr: inner.addr,
        nonce,
    }
    .encode(&mut b);
    write_frame(&mut s, &b).await?;
    let ch = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut s))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    let ch = Challenge::decode(ch).map_err(invalid)?;
    let secret = &inner.opts.secret;
    if !wire::mac_ok(secret, b"A", (&nonce, &ch.nonce), ch.node, ch.addr, &ch.mac) {
        inner.metrics.auth_failures.increment(1);
        return Err(invalid("the peer does not know the cluster secret"));
    }
    let proof = wire::handshake_mac(secret, b"C", (&ch.nonce, &nonce), inner.id, inner.addr);
    write_frame(&mut s, &proof).await?;
    Ok((ch.node, ch.addr, s))
}

/// The accepting side: read hello, answer with our proof and challenge, check the dialer's.
async fn accept(
    inner: &Arc<Inner>,
    mut s: TcpStream,
) -> std::io::Result<(NodeId, SocketAddr, TcpStream)> {
    let hello = Hello::decode(read_frame(&mut s).await?).map_err(invalid)?;
    let nonce: [u8; 16] = rand::random();
    let secret = &inner.opts.secret;
    let mac = wire::handshake_mac(secret, b"A", (&hello.nonce, &nonce), inner.id, inner.addr);
    let mut b = BytesMut::new();
    Challenge {
        node: inner.id,
        addr: inner.addr,
        nonce,
        mac,
    }
    .encode(&mut b);
    write_frame(&mut s, &b).await?;
    // A peer that said hello and leaves instead of proving it knows the secret (it found that
    // this side does not) failed authentication too.
    let proof = read_frame(&mut s)
        .await
        .map_err(|_| invalid("the peer left the handshake without proving the secret"))?;
    if !wire::mac_ok(
        secret,
        b"C",
        (&nonce, &hello.nonce),
        hello.node,
        hello.addr,
        &proof,
    ) {
        return Err(invalid("the peer does not know the cluster secret"));
    }
    Ok((hello.node, hello.addr, s))
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// The log lines of refused peer connections (see `accept_loop`).
static PEER_REFUSED_LOG: infergate_metrics::LogLimiter =
    infergate_metrics::LogLimiter::new(5, Duration::from_secs(1));

/// Runs one of the cluster's own tasks; if it ever stops (it should not: each loops for the
/// life of the process), records why (see [`Cluster::failed`]) and logs it. An abort (the
/// cluster stopping) says nothing.
async fn watched(inner: Arc<Inner>, task: &'static str, fut: impl Future<Output = ()>) {
    let end = infergate_metrics::supervised(fut).await;
    let why = match (&end, task) {
        (infergate_metrics::TaskEnd::Returned, "member list") => {
            "the peer watch ended: the member list no longer follows the Service".to_string()
        }
        _ => format!("{task}: {end}"),
    };
    tracing::error!(
        task,
        reason = %why,
        "cluster: a cluster task stopped; this replica can no longer take part reliably: \
         /readyz answers 503 from now on (restart the pod)"
    );
    inner.failure.send_if_modified(|f| {
        if f.is_some() {
            return false;
        }
        *f = Some(why);
        true
    });
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let Ok((s, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(2), accept(&inner, s)).await {
                Ok(Ok((node, addr, s))) => inner.register(node, addr, s),
                // Anyone who reaches the peer port can cause these: a few lines a second, and
                // the next line says how many were left out (the metric counts them all).
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        inner.metrics.auth_failures.increment(1);
                    }
                    if let Some(suppressed) = PEER_REFUSED_LOG.allow() {
                        tracing::warn!(%remote, error = %e, suppressed, "peer connection refused");
                    }
                }
                Err(_) => {
                    inner.metrics.auth_failures.increment(1);
                    if let Some(suppressed) = PEER_REFUSED_LOG.allow() {
                        tracing::warn!(%remote, suppressed, "peer handshake timed out");
                    }
                }
            }
        });
    }
}

/// Keeps a connection to every member with a higher address than ours (the other side dials
/// the lower ones), follows membership changes, and beats.
async fn members_loop(inner: Arc<Inner>) {
    let mut rx = inner.opts.members.clone();
    let mut dialers: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let members = rx.borrow_and_update().clone();
        inner.set_members(&members);
        let want: Vec<SocketAddr> = members
            .iter()
            .copied()
            .filter(|a| *a != inner.addr && *a > inner.addr)
            .collect();
        dialers.retain(|a, h| {
            let keep = want.contains(a);
            if !keep {
                h.abort();
            }
            keep
        });
        for a in want {
            dialers
                .entry(a)
                .or_insert_with(|| tokio::spawn(dial_loop(inner.clone(), a)));
        }
        if rx.changed().await.is_err() {
            if inner.opts.members_follow {
                // The peer watch ended (or panicked): the list no longer follows the Service.
                return;
            }
            // A fixed member list.
            std::future::pending::<()>().await;
        }
    }
}

async fn dial_loop(inner: Arc<Inner>, addr: SocketAddr) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = inner.state.lock().conns.values().any(|c| c.addr == addr);
        if !connected {
            match dial(&inner, addr).await {
                Ok((node, advertised, s)) => {
                    if advertised != addr {
                        // Owners are ranked by the addresses replicas call themselves: a list
                        // that names a replica otherwise gives replicas different views.
                        tracing::warn!(
                            listed = %addr,
                            %advertised,
                            "a peer advertises another address than the one listed; list the advertised one"
                        );
                    }
                    inner.register(node, addr, s);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        // Nothing listens there: no process that could hold leases.
                        let now = inner.now();
                        let mut st = inner.state.lock();
                        st.node.absent(now, addr);
                        inner.dispatch(&mut st);
                    }
                    tracing::debug!(peer = %addr, error = %e, "peer dial failed");
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// The clock: retries and deadlines every 10 ms, heartbeats, silent peers, absent members.
async fn clock_loop(inner: Arc<Inner>) {
    let beat = inner.opts.heartbeat.as_millis() as Millis;
    let dead = inner.opts.dead_after.as_millis() as Millis;
    // Idle, the clock wakes a few times per heartbeat (each wake-up of an idle process costs
    // more CPU than a request's own coordination); with retries or waiting requests, every 10 ms.
    let idle = Duration::from_millis((beat / 4).clamp(10, 50));
    let mut last_beat: Millis = 0;
    loop {
        let busy = inner.state.lock().node.busy();
        let period = if busy {
            Duration::from_millis(10)
        } else {
            idle
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = inner.poke.notified(), if !busy => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let now = inner.now();
        let silent: Vec<(NodeId, u64)> = {
            let mut st = inner.state.lock();
            st.node.tick(now);
            if now.saturating_sub(last_beat) >= beat {
                last_beat = now;
                inner.ping_all(&mut st);
            }
            let absent: Vec<SocketAddr> = st
                .missing_since
                .iter()
                .filter(|(_, since)| now.saturating_sub(**since) >= dead)
                .map(|(a, _)| *a)
                .collect();
            for a in absent {
                st.node.absent(now, a);
            }
            inner.dispatch(&mut st);
            st.conns
                .iter()
                .filter(|(_, c)| now.saturating_sub(c.last_heard.load(Ordering::Relaxed)) > dead)
                .map(|(n, c)| (*n, c.id))
                .collect()
        };
        for (node, conn_id) in silent {
            inner.lost(node, conn_id, "silent for longer than deadAfterMs");
        }
        // Only now, with silent peers declared dead, may slots be used again.
        inner.last_tick.store(inner.now(), Ordering::Release);
    }
}

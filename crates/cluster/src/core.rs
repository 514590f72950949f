//! The protocol core: ownership, slot leases, claims and failover, without I/O or clocks.
//!
//! One [`Node`] per replica. The runtime feeds it what happened (a request wants a slot, a
//! message arrived, a peer came or went, time passed) and carries out what it asks for
//! ([`Output`]: messages to send, slots granted or refused). Slot accounting on the owner is
//! delegated to an [`Admission`] (the real pod pool, or a counting model in tests).
//!
//! Rules, in short:
//! - The owner of a deployment is the live, non-leaving node ranked first by rendezvous hashing
//!   of (node address, deployment). A node only owns with a quorum (more than half the members).
//! - A node that becomes owner *claims*: it asks every live peer to report the leases it holds
//!   for the deployment and admits nothing until all have. A peer reports only to the owner its
//!   own view names, and only once the owner it followed is dead or has yielded; from then on it
//!   accepts grants of the new term alone.
//! - The owner's own grants are noted to the peers before they are used, so they stay counted
//!   when the owner dies. A dead node's leases stay counted until `requestTimeoutMs` has passed
//!   (the pod must have finished by then).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

/// A node: one process incarnation (a restarted replica is a new node at the same address).
pub type NodeId = u64;
/// A deployment's key, `endpoint/deployment`.
pub type Dep = Arc<str>;
/// A pod, by address.
pub type Pod = SocketAddr;
/// A request's id, unique per node.
pub type ReqId = u64;
/// Milliseconds on the node's own clock.
pub type Millis = u64;
/// A lease: the holder, its request, the pod.
pub type Key = (NodeId, ReqId, Pod);
/// The least pod address (for ranges over a request's leases).
const MIN_POD: Pod = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// One claim of ownership: who, and which claim of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Term {
    /// The owner.
    pub owner: NodeId,
    /// The owner's claim counter.
    pub seq: u64,
}

/// Why a slot was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The asked node does not own the deployment (the asker retries with the right one).
    NotOwner,
    /// No slot freed up within the wait.
    QueueTimeout,
    /// The deployment's queue is full.
    QueueFull,
    /// The deployment has no pods.
    NoPods,
    /// This node sees too few peers to own anything (a minority partition).
    NoQuorum,
}

/// What a request's exchange with its pod came to, fed back to the owner's pod health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered after this many microseconds.
    Success(u64),
    /// Failed (connect error or 5xx).
    Failure,
    /// Nothing to learn (cancelled, or a slot given back unused).
    Unknown,
}

/// A lease as reported to a claiming owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The node whose request holds it.
    pub holder: NodeId,
    /// The holder's request id.
    pub req: ReqId,
    /// The pod.
    pub pod: Pod,
    /// For a dead holder's lease: how much longer it stays counted.
    pub expires_in: Option<Millis>,
}

/// Peer-to-peer messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Holder to owner: a slot, waiting at most `wait` ms, not on `avoid`.
    Acquire {
        /// Deployment.
        dep: Dep,
        /// Holder's request id.
        req: ReqId,
        /// Longest wait in the owner's queue.
        wait: Millis,
        /// A pod the request must not get (a retry).
        avoid: Option<Pod>,
    },
    /// Owner to holder: the request waits in the queue (the owner is there).
    Queued {
        /// Deployment.
        dep: Dep,
        /// Holder's request id.
        req: ReqId,
    },
    /// Owner to holder: a slot on `pod` under `term`.
    Grant {
        /// Deployment.
        dep: Dep,
        /// Holder's request id.
        req: ReqId,
        /// The owner's term.
        term: Term,
        /// The pod.
        pod: Pod,
        /// The owner's queue was empty: the holder may keep the slot parked for its next
        /// request (until recalled, or idle for a while).
        park: bool,
    },
    /// Owner to holder: requests wait; give back the slots you keep parked.
    Recall {
        /// Deployment.
        dep: Dep,
    },
    /// Owner to holder: no slot.
    Refuse {
        /// Deployment.
        dep: Dep,
        /// Holder's request id.
        req: ReqId,
        /// Why.
        reason: Refusal,
    },
    /// Holder to owner: the slot is free again.
    Release {
        /// Deployment.
        dep: Dep,
        /// Holder's request id.
        req: ReqId,
        /// The pod the lease was on.
        pod: Pod,
        /// How the exchange went.
        outcome: Outcome,
    },
    /// Holder to owner: the request no longer wants a slot.
    Cancel {
        /// Deployment.
        dep: Dep,
        /// Holder's request id.
        req: ReqId,
    },
    /// New owner to everyone: report your leases of `dep`.
    Claim {
        /// Deployment.
        dep: Dep,
        /// The new term.
        term: Term,
    },
    /// Answer to a claim: the leases this node holds (or keeps for dead nodes).
    Report {
        /// Deployment.
        dep: Dep,
        /// The claim answered.
        term: Term,
        /// The leases.
        leases: Vec<Entry>,
    },
    /// Answer to a claim: not (yet) — this node's view names another owner.
    Nack {
        /// Deployment.
        dep: Dep,
        /// The claim refused.
        term: Term,
    },
    /// Owner to everyone: it took a slot for its own request.
    Note {
        /// Deployment.
        dep: Dep,
        /// Owner's request id.
        req: ReqId,
        /// The pod.
        pod: Pod,
    },
    /// Answer to a note: it is kept (the owner may now use that slot).
    NoteAck {
        /// Deployment.
        dep: Dep,
        /// Owner's request id.
        req: ReqId,
    },
    /// Owner to everyone: that slot is free again.
    Unnote {
        /// Deployment.
        dep: Dep,
        /// Owner's request id.
        req: ReqId,
    },
    /// Owner to everyone: it no longer owns `dep`.
    Yield {
        /// Deployment.
        dep: Dep,
        /// The term that ended.
        term: Term,
    },
}

/// What the node asks its runtime to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a message to a peer.
    Send(NodeId, Msg),
    /// A local request got a slot.
    Granted {
        /// The request.
        req: ReqId,
        /// The pod.
        pod: Pod,
    },
    /// A local request was refused.
    Refused {
        /// The request.
        req: ReqId,
        /// Why.
        reason: Refusal,
    },
    /// A local request waits in a live owner's queue.
    Queued(ReqId),
}

/// Why the admission has no slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every usable slot is taken.
    Busy,
    /// The deployment has no pods here.
    NoPods,
    /// The deployment has no pods now but may get some (scaled to zero, cold start): the
    /// request queues like one that finds every slot busy, until its own deadline or until
    /// [`Node::pods_changed`] finds a slot.
    ColdStart,
}

/// Slot accounting on the owner: the real pod pool, or a model.
pub trait Admission {
    /// A held slot; dropping it frees the slot.
    type Slot;
    /// A free slot on some pod but `avoid`; `ahead` waiters are before this one.
    fn try_grant(
        &mut self,
        dep: &Dep,
        avoid: Option<Pod>,
        ahead: usize,
    ) -> Result<(Pod, Self::Slot), NoSlot>;
    /// Counts a slot that is known to be taken (a lease recovered from a report), even past the
    /// limit.
    fn occupy(&mut self, dep: &Dep, pod: Pod) -> Self::Slot;
    /// Feeds an outcome back and frees the slot.
    fn finish(&mut self, slot: Self::Slot, outcome: Outcome);
    /// The deployment's queue cap.
    fn max_queue(&self, dep: &Dep) -> usize;
    /// The deployment's `requestTimeoutMs`.
    fn request_timeout(&self, dep: &Dep) -> Millis;
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    leaving: bool,
}

#[derive(Debug)]
struct Pending {
    dep: Dep,
    until: Millis,
    avoid: Option<Pod>,
    /// The owner asked, or `None` while waiting to ask again (or queued locally).
    to: Option<NodeId>,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    holder: NodeId,
    req: ReqId,
    until: Millis,
    avoid: Option<Pod>,
}

#[derive(Debug)]
struct Granted<S> {
    slot: S,
    /// For a dead holder: when the slot may be freed.
    expires: Option<Millis>,
}

#[derive(Debug)]
struct Own<S> {
    term: Term,
    /// Peers whose report is still awaited.
    missing: BTreeSet<NodeId>,
    /// All reports were in and the reported leases counted: admitting.
    started: bool,
    /// Leases reported while claiming: when a dead holder's lease may go, and whether the
    /// holder itself reported it. A live holder's own report is the truth about its leases;
    /// what others say of them (a former owner, a stale handover) counts only if the holder is
    /// dead by the time the claim completes.
    collected: BTreeMap<Key, (Option<Millis>, bool)>,
    granted: BTreeMap<Key, Granted<S>>,
    queue: VecDeque<Waiter>,
    /// Holders granted parkable slots since the last recall.
    parkers: BTreeSet<NodeId>,
}

impl<S> Own<S> {
    fn serving(&self) -> bool {
        self.started
    }
}

#[derive(Debug)]
struct DepState<S> {
    /// The term this node reported to and takes grants from.
    follow: Option<Term>,
    /// This node's own leases.
    held: BTreeMap<ReqId, Pod>,
    /// Owners' own grants, noted to this node.
    notes: BTreeMap<(NodeId, ReqId), Pod>,
    /// Other nodes' leases this node knows of without owning the deployment (it did, or the
    /// owner noted them): (holder, req) -> (pod, kept until, holder alive when last seen). A
    /// dead holder's lease counts until its time; a live holder reports its own.
    handover: BTreeMap<Key, (Millis, bool)>,
    own: Option<Own<S>>,
    /// Leases that may be parked when their request ends (granted while nobody waited).
    parkable: BTreeSet<ReqId>,
    /// Leases parked: held, idle, ready for this node's next request: (lease, pod, since).
    parked: Vec<(ReqId, Pod, Millis)>,
}

impl<S> Default for DepState<S> {
    fn default() -> Self {
        DepState {
            follow: None,
            held: BTreeMap::new(),
            notes: BTreeMap::new(),
            handover: BTreeMap::new(),
            own: None,
            parkable: BTreeSet::new(),
            parked: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Retry {
    Route(ReqId),
    Claim(Dep, NodeId, Term),
}

/// How long a node waits before asking again after "not the owner" (views still converging).
pub const RETRY_MS: Millis = 10;
/// How long a former owner remembers the leases of live holders, in case one dies before it
/// reports to the next owner.
pub const HEARSAY_TTL_MS: Millis = 30_000;
/// How long a parked slot waits for this node's next request before it goes back.
pub const PARK_MS: Millis = 50;

/// One replica's protocol state.
#[derive(Debug)]
pub struct Node<A: Admission> {
    me: NodeId,
    /// The slot accounting for deployments this node owns.
    pub admission: A,
    live: BTreeMap<NodeId, Peer>,
    members: usize,
    /// Member addresses not heard from yet (since this node started or the address joined):
    /// one may hold leases nobody else knows of, so no claim completes until each is up or
    /// known absent.
    unknown: BTreeSet<SocketAddr>,
    leaving: bool,
    seq: u64,
    deps: BTreeMap<Dep, DepState<A::Slot>>,
    pending: BTreeMap<ReqId, Pending>,
    /// The owner's own grants waiting for a peer to acknowledge their note: (dep, pod).
    unacked: BTreeMap<ReqId, (Dep, Pod)>,
    retries: Vec<(Millis, Retry)>,
    out: Vec<Output>,
    ownership_changes: u64,
    park_ms: Millis,
}

/// Rendezvous score of `addr` for `dep`: FNV-1a over both, then a 64-bit finalizer.
pub fn score(addr: &SocketAddr, dep: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match addr.ip() {
        std::net::IpAddr::V4(ip) => eat(&ip.octets()),
        std::net::IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_be_bytes());
    eat(&[0xff]);
    eat(dep.as_bytes());
    // splitmix64 finalizer
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl<A: Admission> Node<A> {
    /// Node `me`, reachable at `addr`, in a cluster of these member addresses (its own included
    /// or not).
    pub fn new(me: NodeId, addr: SocketAddr, members: &[SocketAddr], admission: A) -> Self {
        let unknown: BTreeSet<SocketAddr> =
            members.iter().copied().filter(|a| *a != addr).collect();
        let mut live = BTreeMap::new();
        live.insert(
            me,
            Peer {
                addr,
                leaving: false,
            },
        );
        Node {
            me,
            admission,
            live,
            members: unknown.len() + 1,
            unknown,
            leaving: false,
            seq: 0,
            deps: BTreeMap::new(),
            pending: BTreeMap::new(),
            unacked: BTreeMap::new(),
            retries: Vec::new(),
            out: Vec::new(),
            ownership_changes: 0,
            park_ms: PARK_MS,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// What the runtime must do now, in order.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Drains the output into `buf` (reusing its allocation).
    pub fn drain_output(&mut self, buf: &mut Vec<Output>) {
        buf.append(&mut self.out);
    }

    /// Live nodes, this one included.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// How many times this node started serving a deployment it claimed.
    pub fn ownership_changes(&self) -> u64 {
        self.ownership_changes
    }

    /// Whether this node sees more than half of the members.
    pub fn has_quorum(&self) -> bool {
        self.live.len() * 2 > self.members
    }

    /// The cluster's size, as the peer list or the peers' Service says.
    pub fn set_members(&mut self, now: Millis, members: &[SocketAddr]) {
        let me = self.live[&self.me].addr;
        let others: BTreeSet<SocketAddr> = members.iter().copied().filter(|a| *a != me).collect();
        let known: BTreeSet<SocketAddr> = self.live.values().map(|p| p.addr).collect();
        self.unknown.retain(|a| others.contains(a));
        for a in &others {
            if !known.contains(a) {
                self.unknown.insert(*a);
            }
        }
        self.members = others.len() + 1;
        let deps: Vec<Dep> = self.deps.keys().cloned().collect();
        for dep in deps {
            self.maybe_serve(now, &dep);
        }
        self.reconsider(now);
    }

    /// The owner of `dep` in this node's view.
    pub fn owner_of(&self, dep: &str) -> Option<NodeId> {
        self.live
            .iter()
            .filter(|(_, p)| !p.leaving)
            .max_by_key(|(_, p)| (score(&p.addr, dep), p.addr))
            .map(|(id, _)| *id)
    }

    /// Whether this node serves `dep` now (owner, claim complete): (queued requests) when it does.
    pub fn serving(&self, dep: &str) -> Option<usize> {
        let own = self.deps.get(dep)?.own.as_ref()?;
        own.serving().then_some(own.queue.len())
    }

    /// Whether time-driven work is due soon (a retry, or a local request waiting for an answer):
    /// the runtime's clock then ticks often; otherwise rarely.
    pub fn busy(&self) -> bool {
        !self.retries.is_empty() || !self.pending.is_empty()
    }

    /// The deployments this node serves now, with their queue lengths.
    pub fn served(&self) -> Vec<(Dep, usize)> {
        self.deps
            .iter()
            .filter_map(|(d, s)| {
                let own = s.own.as_ref()?;
                own.serving().then(|| (d.clone(), own.queue.len()))
            })
            .collect()
    }

    /// The deployment of a lease this node holds.
    pub fn held_dep(&self, req: ReqId) -> Option<Dep> {
        self.deps
            .iter()
            .find(|(_, s)| s.held.contains_key(&req))
            .map(|(d, _)| d.clone())
    }

    /// A peer connected (or reconnected).
    pub fn peer_up(&mut self, now: Millis, id: NodeId, addr: SocketAddr) {
        if id == self.me {
            return;
        }
        self.unknown.remove(&addr);
        // A new process at a known address: the old one there is gone.
        let old: Vec<NodeId> = self
            .live
            .iter()
            .filter(|(n, p)| p.addr == addr && **n != id)
            .map(|(n, _)| *n)
            .collect();
        for n in old {
            self.peer_down(now, n);
        }
        let fresh = self
            .live
            .insert(
                id,
                Peer {
                    addr,
                    leaving: false,
                },
            )
            .is_none();
        if fresh {
            for (dep, d) in self.deps.iter_mut() {
                if let Some(own) = &mut d.own {
                    // The newcomer keeps notes of this owner's own leases too, so they outlive
                    // this node even when the peers that had them are gone.
                    for (req, pod) in &d.held {
                        if own.granted.contains_key(&(self.me, *req, *pod)) {
                            self.out.push(Output::Send(
                                id,
                                Msg::Note {
                                    dep: dep.clone(),
                                    req: *req,
                                    pod: *pod,
                                },
                            ));
                        }
                    }
                    if !own.started {
                        own.missing.insert(id);
                    }
                    self.out.push(Output::Send(
                        id,
                        Msg::Claim {
                            dep: dep.clone(),
                            term: own.term,
                        },
                    ));
                }
            }
        }
        self.reconsider(now);
    }

    /// A member address did not answer within the dead time (nothing runs there, or nothing
    /// this node can reach): claims no longer wait for it.
    pub fn absent(&mut self, now: Millis, addr: SocketAddr) {
        if self.unknown.remove(&addr) {
            let deps: Vec<Dep> = self.deps.keys().cloned().collect();
            for dep in deps {
                self.maybe_serve(now, &dep);
            }
        }
    }

    /// A peer announced it is leaving (it keeps its leases until it is gone).
    pub fn peer_leaving(&mut self, now: Millis, id: NodeId) {
        if let Some(p) = self.live.get_mut(&id) {
            p.leaving = true;
        }
        self.reconsider(now);
    }

    /// This node is leaving: it hands its deployments over and owns nothing new.
    pub fn leave(&mut self, now: Millis) {
        self.leaving = true;
        let deps: Vec<Dep> = self.deps.keys().cloned().collect();
        for dep in &deps {
            self.unpark(now, dep);
        }
        if let Some(p) = self.live.get_mut(&self.me) {
            p.leaving = true;
        }
        self.reconsider(now);
    }

    /// A peer is dead (connection lost, or silent too long).
    pub fn peer_down(&mut self, now: Millis, id: NodeId) {
        if id == self.me || self.live.remove(&id).is_none() {
            return;
        }
        for (dep, d) in self.deps.iter_mut() {
            let hold = self.admission.request_timeout(dep);
            if let Some(own) = &mut d.own {
                for ((holder, _, _), g) in own.granted.iter_mut() {
                    if *holder == id && g.expires.is_none() {
                        g.expires = Some(now.saturating_add(hold));
                    }
                }
                own.queue.retain(|w| w.holder != id);
                own.missing.remove(&id);
            }
            let dead: Vec<_> = d
                .notes
                .iter()
                .filter(|((o, _), _)| *o == id)
                .map(|(k, p)| (*k, *p))
                .collect();
            for (k, pod) in dead {
                d.notes.remove(&k);
                d.handover
                    .insert((k.0, k.1, pod), (now.saturating_add(hold), false));
            }
            for ((holder, _, _), (until, alive)) in d.handover.iter_mut() {
                if *holder == id && *alive {
                    (*until, *alive) = (now.saturating_add(hold), false);
                }
            }
            if d.follow.is_some_and(|t| t.owner == id) {
                d.follow = None;
            }
        }
        self.reconsider(now);
        let deps: Vec<Dep> = self.deps.keys().cloned().collect();
        for dep in deps {
            self.maybe_serve(now, &dep);
        }
    }

    /// A local request wants a slot of `dep` within `wait` ms. `Some` when decided at once;
    /// otherwise the answer comes as [`Output::Granted`] or [`Output::Refused`].
    pub fn acquire(
        &mut self,
        now: Millis,
        dep: &Dep,
        req: ReqId,
        wait: Millis,
        avoid: Option<Pod>,
    ) -> Option<Result<(ReqId, Pod), Refusal>> {
        // A slot parked here by an earlier request: no message at all. Only while fresh: a
        // process that was frozen must not wake up and use a slot its owner may have freed
        // since (the owner waits requestTimeoutMs after declaring it dead, far longer than a
        // slot stays parked).
        let park_ms = self.park_ms;
        if let Some(d) = self.deps.get_mut(dep)
            && d.follow
                .is_some_and(|t| t.owner == self.me || self.live.contains_key(&t.owner))
            && let Some(i) = d
                .parked
                .iter()
                .rposition(|(_, p, since)| Some(*p) != avoid && now < since + park_ms)
        {
            let (lease, pod, _) = d.parked.remove(i);
            return Some(Ok((lease, pod)));
        }
        self.pending.insert(
            req,
            Pending {
                dep: dep.clone(),
                until: now.saturating_add(wait),
                avoid,
                to: None,
            },
        );
        let mark = self.out.len();
        self.route(now, req);
        // An answer decided at once is returned instead of queued as output.
        let at = self.out[mark..].iter().position(
            |o| matches!(o, Output::Granted { req: r, .. } | Output::Refused { req: r, .. } if *r == req),
        )?;
        match self.out.remove(mark + at) {
            Output::Granted { pod, .. } => Some(Ok((req, pod))),
            Output::Refused { reason, .. } => Some(Err(reason)),
            _ => None,
        }
    }

    /// The pods of `dep` changed on this node (a new route table): if it owns `dep`, queued
    /// requests are served now, oldest first (the first pods of a deployment scaled to zero).
    pub fn pods_changed(&mut self, now: Millis, dep: &Dep) {
        if self.deps.get(dep).is_some_and(|d| d.own.is_some()) {
            self.dispatch(now, dep);
        }
    }

    /// A local request is done with its slot (`lease`, as granted). While nobody waits for the
    /// deployment, the slot is parked for this node's next request instead of going back.
    pub fn release(&mut self, now: Millis, dep: &Dep, lease: ReqId, outcome: Outcome) {
        let me = self.me;
        let live = &self.live;
        if let Some(d) = self.deps.get_mut(dep)
            && let Some(pod) = d.held.get(&lease)
            && d.parkable.contains(&lease)
            && d.follow
                .is_some_and(|t| t.owner == me || live.contains_key(&t.owner))
        {
            d.parked.push((lease, *pod, now));
            return;
        }
        self.release_now(now, dep, lease, outcome);
    }

    /// Gives a held slot back to the owner.
    fn release_now(&mut self, now: Millis, dep: &Dep, req: ReqId, outcome: Outcome) {
        let Some(d) = self.deps.get_mut(dep) else {
            return;
        };
        let Some(pod) = d.held.remove(&req) else {
            return;
        };
        d.parkable.remove(&req);
        d.parked.retain(|(l, _, _)| *l != req);
        let me = self.me;
        match d.follow {
            Some(t) if t.owner == me => {
                self.owner_release(now, dep, (me, req, pod), outcome);
                self.broadcast(|| Msg::Unnote {
                    dep: dep.clone(),
                    req,
                });
            }
            Some(t) => self.out.push(Output::Send(
                t.owner,
                Msg::Release {
                    dep: dep.clone(),
                    req,
                    pod,
                    outcome,
                },
            )),
            None => {}
        }
    }

    /// Gives back every slot parked for `dep` and parks no more of the ones in use.
    fn unpark(&mut self, now: Millis, dep: &Dep) {
        let Some(d) = self.deps.get_mut(dep) else {
            return;
        };
        d.parkable.clear();
        let parked: Vec<ReqId> = d.parked.drain(..).map(|(l, _, _)| l).collect();
        for l in parked {
            self.release_now(now, dep, l, Outcome::Unknown);
        }
    }

    /// Sets how long a parked slot waits for the next request (0: never park).
    pub fn set_park_ms(&mut self, ms: Millis) {
        self.park_ms = ms;
    }

    /// A local request no longer wants a slot (its client left, or its own deadline passed).
    pub fn cancel(&mut self, now: Millis, req: ReqId) {
        let Some(p) = self.pending.remove(&req) else {
            return;
        };
        if let Some((dep, pod)) = self.unacked.remove(&req) {
            self.owner_release(now, &dep, (self.me, req, pod), Outcome::Unknown);
            self.broadcast(|| Msg::Unnote {
                dep: dep.clone(),
                req,
            });
            return;
        }
        match p.to {
            Some(o) if o != self.me => self
                .out
                .push(Output::Send(o, Msg::Cancel { dep: p.dep, req })),
            _ => {
                if let Some(own) = self.deps.get_mut(&p.dep).and_then(|d| d.own.as_mut()) {
                    own.queue.retain(|w| !(w.holder == self.me && w.req == req));
                }
            }
        }
    }

    /// Time passed: retries, queue deadlines, dead nodes' leases that may go.
    pub fn tick(&mut self, now: Millis) {
        if !self.retries.is_empty() {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
                .into_iter()
                .partition(|(t, _)| *t <= now);
            self.retries = later;
            for (_, r) in due {
                match r {
                    Retry::Route(req) => match self.pending.get(&req) {
                        Some(p) if p.to.is_none() && p.until <= now => {
                            self.pending.remove(&req);
                            self.out.push(Output::Refused {
                                req,
                                reason: Refusal::NoQuorum,
                            });
                        }
                        Some(p) if p.to.is_none() => self.route(now, req),
                        _ => {}
                    },
                    Retry::Claim(dep, peer, term) => {
                        let live = self.live.contains_key(&peer);
                        let still = self
                            .deps
                            .get(&dep)
                            .and_then(|d| d.own.as_ref())
                            .is_some_and(|o| {
                                o.term == term && live && (o.missing.contains(&peer) || o.started)
                            });
                        if still {
                            self.out.push(Output::Send(peer, Msg::Claim { dep, term }));
                        }
                    }
                }
            }
        }
        let deps: Vec<Dep> = self.deps.keys().cloned().collect();
        for dep in deps {
            // Parked slots idle too long, or whose owner is gone, go back.
            let d = &self.deps[&dep];
            let owner_ok = d
                .follow
                .is_some_and(|t| t.owner == self.me || self.live.contains_key(&t.owner));
            let stale: Vec<ReqId> = d
                .parked
                .iter()
                .filter(|(_, _, since)| !owner_ok || now >= since + self.park_ms)
                .map(|(l, _, _)| *l)
                .collect();
            for l in stale {
                self.release_now(now, &dep, l, Outcome::Unknown);
            }
            let d = self.deps.get_mut(&dep).expect("key listed");
            d.handover.retain(|_, (until, _)| *until > now);
            let Some(own) = &mut d.own else { continue };
            let mut freed = false;
            let expired: Vec<_> = own
                .granted
                .iter()
                .filter(|(_, g)| g.expires.is_some_and(|t| t <= now))
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                trace(|| format!("t={now} node {} expires {dep} {k:?}", self.me));
                let g = own.granted.remove(&k).expect("key listed");
                self.admission.finish(g.slot, Outcome::Unknown);
                freed = true;
            }
            let mut timed_out = Vec::new();
            own.queue.retain(|w| {
                let keep = w.until > now;
                if !keep {
                    timed_out.push(*w);
                }
                keep
            });
            for w in timed_out {
                self.answer(w.holder, &dep, w.req, Err(Refusal::QueueTimeout));
            }
            if freed {
                self.dispatch(now, &dep);
            }
        }
    }

    /// A message from peer `from`.
    pub fn receive(&mut self, now: Millis, from: NodeId, msg: Msg) {
        match msg {
            Msg::Acquire {
                dep,
                req,
                wait,
                avoid,
            } => self.on_acquire(now, from, dep, req, wait, avoid),
            Msg::Queued { req, .. } => {
                if self.pending.get(&req).is_some_and(|p| p.to == Some(from)) {
                    self.out.push(Output::Queued(req));
                }
            }
            Msg::Grant {
                dep,
                req,
                term,
                pod,
                park,
            } => self.on_grant(now, from, dep, req, term, (pod, park)),
            Msg::Recall { dep } => self.unpark(now, &dep),
            Msg::Refuse { req, reason, .. } => {
                let Some(p) = self.pending.get_mut(&req) else {
                    return;
                };
                if p.to != Some(from) {
                    return;
                }
                match reason {
                    Refusal::NotOwner | Refusal::NoQuorum => {
                        p.to = None;
                        self.retries.push((now + RETRY_MS, Retry::Route(req)));
                    }
                    _ => {
                        self.pending.remove(&req);
                        self.out.push(Output::Refused { req, reason });
                    }
                }
            }
            Msg::Release {
                dep,
                req,
                pod,
                outcome,
            } => self.owner_release(now, &dep, (from, req, pod), outcome),
            Msg::Cancel { dep, req } => {
                let Some(own) = self.deps.get_mut(&dep).and_then(|d| d.own.as_mut()) else {
                    return;
                };
                own.queue.retain(|w| !(w.holder == from && w.req == req));
                let keys: Vec<Key> = own
                    .granted
                    .range((from, req, MIN_POD)..)
                    .take_while(|(k, _)| k.0 == from && k.1 == req)
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    self.owner_release(now, &dep, k, Outcome::Unknown);
                }
            }
            Msg::Claim { dep, term } => self.on_claim(now, from, dep, term),
            Msg::Report { dep, term, leases } => self.on_report(now, from, dep, term, leases),
            Msg::Nack { dep, term } => {
                let due = self
                    .deps
                    .get(&dep)
                    .and_then(|d| d.own.as_ref())
                    .is_some_and(|o| o.term == term && (o.missing.contains(&from) || o.started));
                if due {
                    self.retries
                        .push((now + RETRY_MS, Retry::Claim(dep, from, term)));
                }
            }
            Msg::Note { dep, req, pod } => {
                if self.live.contains_key(&from) {
                    self.deps
                        .entry(dep.clone())
                        .or_default()
                        .notes
                        .insert((from, req), pod);
                    self.out.push(Output::Send(from, Msg::NoteAck { dep, req }));
                }
            }
            Msg::NoteAck { dep, req } => {
                if self.unacked.get(&req).is_some_and(|(d, _)| *d == dep) {
                    let (dep, pod) = self.unacked.remove(&req).expect("checked");
                    self.pending.remove(&req);
                    self.deps.entry(dep).or_default().held.insert(req, pod);
                    self.out.push(Output::Granted { req, pod });
                }
            }
            Msg::Unnote { dep, req } => {
                if let Some(d) = self.deps.get_mut(&dep) {
                    d.notes.remove(&(from, req));
                }
            }
            // Its notes stay: its own leases are still running, and if it dies before reporting
            // them to the next owner, they are known here.
            Msg::Yield { dep, term } => {
                if let Some(d) = self.deps.get_mut(&dep)
                    && d.follow == Some(term)
                {
                    d.follow = None;
                }
            }
        }
    }

    // ---- holder side ----

    /// Sends pending request `req` to the owner its view names (or queues it here).
    fn route(&mut self, now: Millis, req: ReqId) {
        let Some(p) = self.pending.get(&req) else {
            return;
        };
        let dep = p.dep.clone();
        // Without a quorum (the cluster is forming, or this node is cut off), or with every live
        // node leaving, nobody may admit: the request asks again until its own deadline (the
        // runtime gives up then).
        let owner = self.owner_of(&dep).filter(|_| self.has_quorum());
        let Some(owner) = owner else {
            self.pending.get_mut(&req).expect("checked").to = None;
            self.retries.push((now + RETRY_MS, Retry::Route(req)));
            return;
        };
        if owner != self.me {
            let p = self.pending.get_mut(&req).expect("checked");
            p.to = Some(owner);
            let msg = Msg::Acquire {
                dep,
                req,
                wait: p.until.saturating_sub(now),
                avoid: p.avoid,
            };
            self.out.push(Output::Send(owner, msg));
            return;
        }
        let p = self.pending.get_mut(&req).expect("checked");
        p.to = Some(self.me);
        let (until, avoid) = (p.until, p.avoid);
        self.ensure_claim(now, &dep);
        self.admit(now, &dep, self.me, req, until, avoid);
    }

    fn on_grant(
        &mut self,
        now: Millis,
        from: NodeId,
        dep: Dep,
        req: ReqId,
        term: Term,
        (pod, park): (Pod, bool),
    ) {
        let owner_now = self.owner_of(&dep);
        let d = self.deps.entry(dep.clone()).or_default();
        if d.held.contains_key(&req) {
            return; // a duplicate
        }
        let wanted = self
            .pending
            .get(&req)
            .is_some_and(|p| p.dep == dep && p.to == Some(from));
        let current = match d.follow {
            Some(t) => t == term,
            None => owner_now == Some(term.owner) && term.owner == from,
        };
        if wanted && current {
            d.follow = Some(term);
            d.held.insert(req, pod);
            if park && self.park_ms > 0 {
                d.parkable.insert(req);
            }
            self.pending.remove(&req);
            self.out.push(Output::Granted { req, pod });
            return;
        }
        // Stale (an old term), or nobody waits for it any more: give it back.
        self.out.push(Output::Send(
            from,
            Msg::Release {
                dep,
                req,
                pod,
                outcome: Outcome::Unknown,
            },
        ));
        if let Some(p) = self.pending.get_mut(&req)
            && p.to == Some(from)
        {
            p.to = None;
            self.retries.push((now + RETRY_MS, Retry::Route(req)));
        }
    }

    fn on_claim(&mut self, now: Millis, from: NodeId, dep: Dep, term: Term) {
        if self.owner_of(&dep) != Some(from) || term.owner != from {
            self.out.push(Output::Send(from, Msg::Nack { dep, term }));
            return;
        }
        let me = self.me;
        let d = self.deps.entry(dep.clone()).or_default();
        if let Some(f) = d.follow {
            if f.owner == from && f.seq > term.seq {
                return; // an old claim arriving late
            }
            if f.owner != from && f.owner != me && self.live.contains_key(&f.owner) {
                // The owner this node follows is alive and has not yielded yet: not before it does.
                self.out.push(Output::Send(from, Msg::Nack { dep, term }));
                return;
            }
        }
        if d.own.is_some() {
            self.yield_dep(now, &dep);
        }
        let d = self.deps.get_mut(&dep).expect("just used");
        d.follow = Some(term);
        let mut leases: Vec<Entry> = d
            .held
            .iter()
            .map(|(req, pod)| Entry {
                holder: me,
                req: *req,
                pod: *pod,
                expires_in: None,
            })
            .collect();
        // Owners' own leases noted here: the claimant counts them if it thinks their owner dead
        // (its view may lag this node's).
        leases.extend(d.notes.iter().map(|((holder, req), pod)| Entry {
            holder: *holder,
            req: *req,
            pod: *pod,
            expires_in: None,
        }));
        leases.extend(d.handover.iter().filter(|(_, (t, _))| *t > now).map(
            |((holder, req, pod), (t, alive))| Entry {
                holder: *holder,
                req: *req,
                pod: *pod,
                expires_in: (!alive).then(|| t - now),
            },
        ));
        self.out.push(Output::Send(
            from,
            Msg::Report {
                dep: dep.clone(),
                term,
                leases,
            },
        ));
        // Requests waiting elsewhere (or for a retry) go to the new owner now.
        let moved: Vec<ReqId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.dep == dep && p.to != Some(from))
            .map(|(r, _)| *r)
            .collect();
        for req in moved {
            if let Some(p) = self.pending.get(&req)
                && let Some(old) = p.to
                && old != me
            {
                self.out.push(Output::Send(
                    old,
                    Msg::Cancel {
                        dep: dep.clone(),
                        req,
                    },
                ));
            }
            self.route(now, req);
        }
    }

    // ---- owner side ----

    fn ensure_claim(&mut self, now: Millis, dep: &Dep) {
        let me = self.me;
        let d = self.deps.entry(dep.clone()).or_default();
        if d.own.is_some() {
            return;
        }
        self.seq += 1;
        let term = Term {
            owner: me,
            seq: self.seq,
        };
        let missing: BTreeSet<NodeId> = self.live.keys().copied().filter(|&n| n != me).collect();
        let mut collected = BTreeMap::new();
        for (req, pod) in &d.held {
            collected.insert((me, *req, *pod), (None, true));
        }
        for (key, (t, alive)) in &d.handover {
            collected.insert(*key, ((!alive).then_some(*t), false));
        }
        d.follow = Some(term);
        d.own = Some(Own {
            term,
            missing: missing.clone(),
            started: false,
            collected,
            granted: BTreeMap::new(),
            queue: VecDeque::new(),
            parkers: BTreeSet::new(),
        });
        for peer in missing {
            self.out.push(Output::Send(
                peer,
                Msg::Claim {
                    dep: dep.clone(),
                    term,
                },
            ));
        }
        self.maybe_serve(now, dep);
    }

    fn on_report(&mut self, now: Millis, from: NodeId, dep: Dep, term: Term, leases: Vec<Entry>) {
        let me = self.me;
        let Some(own) = self.deps.get_mut(&dep).and_then(|d| d.own.as_mut()) else {
            return;
        };
        if own.term != term {
            return;
        }
        if !own.started && own.missing.remove(&from) {
            for e in &leases {
                let key = (e.holder, e.req, e.pod);
                if e.holder == me {
                    continue; // this node knows its own leases
                }
                if e.holder == from {
                    own.collected.insert(key, (None, true));
                } else {
                    let exp = e.expires_in.map(|t| now.saturating_add(t));
                    own.collected.entry(key).or_insert((exp, false));
                }
            }
            self.maybe_serve(now, &dep);
        } else if own.started {
            // A late joiner's report: count what this owner does not know yet (its own leases,
            // and dead nodes' it kept).
            let hold = self.admission.request_timeout(&dep);
            // The reporter is alive: its own leases no longer expire (what it lacks may be a
            // grant still on its way to it, and stays).
            for e in &leases {
                let key = (e.holder, e.req, e.pod);
                let exp = if e.holder == from {
                    None
                } else if self.live.contains_key(&e.holder) || e.holder == me {
                    continue;
                } else {
                    Some(now.saturating_add(e.expires_in.unwrap_or(hold)))
                };
                match own.granted.get_mut(&key) {
                    Some(g) if exp.is_none() => g.expires = None,
                    Some(_) => {}
                    None => {
                        let slot = self.admission.occupy(&dep, e.pod);
                        own.granted.insert(key, Granted { slot, expires: exp });
                    }
                }
            }
        }
    }

    /// A claim whose reports are all in starts serving: the reported leases first, then the queue.
    fn maybe_serve(&mut self, now: Millis, dep: &Dep) {
        let Some(own) = self.deps.get_mut(dep).and_then(|d| d.own.as_mut()) else {
            return;
        };
        if own.started
            || !own.missing.is_empty()
            || !self.unknown.is_empty()
            || self.live.len() * 2 <= self.members
        {
            return;
        }
        own.started = true;
        let hold = self.admission.request_timeout(dep);
        trace(|| {
            format!(
                "t={now} node {} serves {dep} {:?} from {:?}",
                self.me, own.term, own.collected
            )
        });
        for (key, (exp, vouched)) in std::mem::take(&mut own.collected) {
            let holder = key.0;
            let live = holder == self.me || self.live.contains_key(&holder);
            if live && !vouched {
                continue; // a live holder's own report is the truth about its leases
            }
            let expires = match exp {
                None if !live => Some(now.saturating_add(hold)),
                e => e,
            };
            let slot = self.admission.occupy(dep, key.2);
            own.granted.insert(key, Granted { slot, expires });
        }
        self.ownership_changes += 1;
        self.dispatch(now, dep);
    }

    /// Admission of (holder, req) on the owner: a slot now, or a place in the queue.
    fn admit(
        &mut self,
        now: Millis,
        dep: &Dep,
        holder: NodeId,
        req: ReqId,
        until: Millis,
        avoid: Option<Pod>,
    ) {
        let max_queue = self.admission.max_queue(dep);
        let own = self
            .deps
            .get_mut(dep)
            .and_then(|d| d.own.as_mut())
            .expect("admit on an owned deployment");
        if own.queue.iter().any(|w| w.holder == holder && w.req == req) {
            return; // a duplicate
        }
        if own.serving() && own.queue.is_empty() {
            match self.admission.try_grant(dep, avoid, 0) {
                Ok((pod, slot)) => {
                    self.grant(dep, holder, req, pod, slot);
                    return;
                }
                Err(NoSlot::NoPods) => {
                    self.answer(holder, dep, req, Err(Refusal::NoPods));
                    return;
                }
                Err(NoSlot::Busy | NoSlot::ColdStart) => {}
            }
        }
        let own = self
            .deps
            .get_mut(dep)
            .and_then(|d| d.own.as_mut())
            .expect("owned");
        if own.queue.len() >= max_queue {
            self.answer(holder, dep, req, Err(Refusal::QueueFull));
            return;
        }
        own.queue.push_back(Waiter {
            holder,
            req,
            until,
            avoid,
        });
        // Requests wait: slots parked anywhere come back (none stays idle while one waits).
        let parkers = std::mem::take(&mut own.parkers);
        for p in parkers {
            if p == self.me {
                self.unpark(now, dep);
            } else {
                self.out
                    .push(Output::Send(p, Msg::Recall { dep: dep.clone() }));
            }
        }
        if holder != self.me {
            self.out.push(Output::Send(
                holder,
                Msg::Queued {
                    dep: dep.clone(),
                    req,
                },
            ));
        }
    }

    fn on_acquire(
        &mut self,
        now: Millis,
        from: NodeId,
        dep: Dep,
        req: ReqId,
        wait: Millis,
        avoid: Option<Pod>,
    ) {
        if let Some(own) = self.deps.get_mut(&dep).and_then(|d| d.own.as_mut())
            && let Some((key, g)) = own
                .granted
                .range_mut((from, req, MIN_POD)..)
                .next()
                .filter(|(k, _)| k.0 == from && k.1 == req)
        {
            // A duplicate of a request already granted: the same answer again (its holder is
            // alive: the lease no longer expires).
            g.expires = None;
            let (term, pod) = (own.term, key.2);
            self.out.push(Output::Send(
                from,
                Msg::Grant {
                    dep,
                    req,
                    term,
                    pod,
                    park: false,
                },
            ));
            return;
        }
        if !self.has_quorum() {
            self.out.push(Output::Send(
                from,
                Msg::Refuse {
                    dep,
                    req,
                    reason: Refusal::NoQuorum,
                },
            ));
            return;
        }
        let owns = self.deps.get(&dep).is_some_and(|d| d.own.is_some());
        if !owns {
            if self.owner_of(&dep) != Some(self.me) {
                self.out.push(Output::Send(
                    from,
                    Msg::Refuse {
                        dep,
                        req,
                        reason: Refusal::NotOwner,
                    },
                ));
                return;
            }
            self.ensure_claim(now, &dep);
        }
        self.admit(now, &dep, from, req, now.saturating_add(wait), avoid);
    }

    fn grant(&mut self, dep: &Dep, holder: NodeId, req: ReqId, pod: Pod, slot: A::Slot) {
        let me = self.me;
        trace(|| format!("node {me} grants {dep} ({holder}, {req}, {pod})"));
        let d = self.deps.get_mut(dep).expect("owned");
        let own = d.own.as_mut().expect("owned");
        let term = own.term;
        own.granted.insert(
            (holder, req, pod),
            Granted {
                slot,
                expires: None,
            },
        );
        // Nobody waits: the holder may keep the slot parked for its next request.
        let park = own.queue.is_empty() && self.park_ms > 0;
        if park {
            own.parkers.insert(holder);
            if holder == me {
                d.parkable.insert(req);
            }
        }
        if holder == me && self.live.len() == 1 {
            d.held.insert(req, pod);
            self.pending.remove(&req);
            self.out.push(Output::Granted { req, pod });
        } else if holder == me {
            // Usable once a peer keeps the note: a slot only this node knew of would be lost
            // with it, and its successor would give the busy slot away.
            self.unacked.insert(req, (dep.clone(), pod));
            self.broadcast(|| Msg::Note {
                dep: dep.clone(),
                req,
                pod,
            });
        } else {
            self.out.push(Output::Send(
                holder,
                Msg::Grant {
                    dep: dep.clone(),
                    req,
                    term,
                    pod,
                    park,
                },
            ));
        }
    }

    fn answer(&mut self, holder: NodeId, dep: &Dep, req: ReqId, result: Result<Pod, Refusal>) {
        let Err(reason) = result else { return };
        if holder == self.me {
            if self.pending.remove(&req).is_some() {
                self.out.push(Output::Refused { req, reason });
            }
        } else {
            self.out.push(Output::Send(
                holder,
                Msg::Refuse {
                    dep: dep.clone(),
                    req,
                    reason,
                },
            ));
        }
    }

    fn owner_release(&mut self, now: Millis, dep: &Dep, key: Key, outcome: Outcome) {
        trace(|| format!("t={now} node {} releases {dep} {key:?}", self.me));
        let Some(own) = self.deps.get_mut(dep).and_then(|d| d.own.as_mut()) else {
            return;
        };
        if !own.started {
            own.collected.remove(&key);
        } else if let Some(g) = own.granted.remove(&key) {
            self.admission.finish(g.slot, outcome);
            self.dispatch(now, dep);
        }
    }

    /// Serves queued requests, oldest first, while slots are free.
    fn dispatch(&mut self, now: Millis, dep: &Dep) {
        let mut i = 0;
        loop {
            let Some(own) = self.deps.get_mut(dep).and_then(|d| d.own.as_mut()) else {
                return;
            };
            if !own.serving() || i >= own.queue.len() || i >= 256 {
                return;
            }
            let w = own.queue[i];
            if w.until <= now {
                own.queue.remove(i);
                self.answer(w.holder, dep, w.req, Err(Refusal::QueueTimeout));
                continue;
            }
            match self.admission.try_grant(dep, w.avoid, i) {
                Ok((pod, slot)) => {
                    let own = self
                        .deps
                        .get_mut(dep)
                        .and_then(|d| d.own.as_mut())
                        .expect("owned");
                    own.queue.remove(i);
                    self.grant(dep, w.holder, w.req, pod, slot);
                }
                Err(NoSlot::Busy) if w.avoid.is_some() => i += 1,
                Err(NoSlot::Busy | NoSlot::ColdStart) => return,
                Err(NoSlot::NoPods) => {
                    let own = self
                        .deps
                        .get_mut(dep)
                        .and_then(|d| d.own.as_mut())
                        .expect("owned");
                    own.queue.remove(i);
                    self.answer(w.holder, dep, w.req, Err(Refusal::NoPods));
                }
            }
        }
    }

    /// Stops owning `dep`: queued requests go to the next owner, kept leases of dead nodes are
    /// handed over with the next report, and everyone hears of it.
    fn yield_dep(&mut self, now: Millis, dep: &Dep) {
        let me = self.me;
        trace(|| format!("t={now} node {me} yields {dep}"));
        let Some(d) = self.deps.get_mut(dep) else {
            return;
        };
        let Some(own) = d.own.take() else { return };
        if d.follow == Some(own.term) {
            d.follow = None;
        }
        // Every lease of another node is kept, so it stays counted if its holder dies before it
        // reports to the next owner.
        let entries = own
            .granted
            .into_iter()
            .map(|(k, g)| (k, g.expires))
            .chain(own.collected.into_iter().map(|(k, (exp, _))| (k, exp)));
        for (key, exp) in entries {
            if key.0 != me {
                let kept = match exp {
                    Some(t) => (t, false),
                    None => (now + HEARSAY_TTL_MS, true),
                };
                d.handover.insert(key, kept);
            }
        }
        let term = own.term;
        let mut local: Vec<ReqId> = self
            .unacked
            .iter()
            .filter(|(_, (d, _))| d == dep)
            .map(|(r, _)| *r)
            .collect();
        // Own grants not yet acknowledged were never used: they go back, and ask again.
        for &req in &local {
            self.unacked.remove(&req);
            self.broadcast(|| Msg::Unnote {
                dep: dep.clone(),
                req,
            });
        }
        for w in own.queue {
            if w.holder == me {
                local.push(w.req);
            } else {
                self.out.push(Output::Send(
                    w.holder,
                    Msg::Refuse {
                        dep: dep.clone(),
                        req: w.req,
                        reason: Refusal::NotOwner,
                    },
                ));
            }
        }
        self.broadcast(|| Msg::Yield {
            dep: dep.clone(),
            term,
        });
        for req in local {
            if let Some(p) = self.pending.get_mut(&req) {
                p.to = None;
            }
            self.retries.push((now, Retry::Route(req)));
        }
    }

    /// After the view changed: yield what this node no longer owns, forget dead owners, and send
    /// requests that waited on a dead or former owner to the new one.
    fn reconsider(&mut self, now: Millis) {
        let quorum = self.has_quorum();
        let deps: Vec<Dep> = self.deps.keys().cloned().collect();
        for dep in &deps {
            let owner = self.owner_of(dep);
            let d = self.deps.get_mut(dep).expect("key listed");
            if d.own.is_some() && (owner != Some(self.me) || !quorum) {
                self.yield_dep(now, dep);
            }
        }
        let stale: Vec<ReqId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.to.is_some_and(|o| o != self.me && !self.live.contains_key(&o))
            })
            .map(|(r, _)| *r)
            .collect();
        for req in stale {
            if let Some(p) = self.pending.get_mut(&req) {
                p.to = None;
            }
            self.route(now, req);
        }
    }

    fn broadcast(&mut self, msg: impl Fn() -> Msg) {
        for &id in self.live.keys() {
            if id != self.me {
                self.out.push(Output::Send(id, msg()));
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Test-only event trace (`SIMTRACE=1`).
#[cfg(test)]
fn trace(f: impl FnOnce() -> String) {
    if std::env::var("SIMTRACE").is_ok() {
        eprintln!("{}", f());
    }
}
#[cfg(not(test))]
fn trace(_: impl FnOnce() -> String) {}

//! Model-based tests of the protocol core: several nodes over a simulated network that delays,
//! reorders (across connections), duplicates and loses messages, with crashes, restarts,
//! connection breaks and graceful leaves. The truth is the pods' own concurrency, counted from
//! the moment a holder sends a request to its pod until the pod finishes it (which may be after
//! the holder crashed); it never exceeds the pod's limit.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use proptest::prelude::*;

use super::*;

const LIMIT: u32 = 1;
const TIMEOUT: Millis = 40;

fn pod(i: u16) -> Pod {
    SocketAddr::from(([10, 0, 0, 1], 9000 + i))
}
fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))
}

/// The owner's slot counts, as the real pool would keep them.
#[derive(Debug, Default)]
struct Model {
    pods: HashMap<Dep, Vec<Pod>>,
    counts: Rc<RefCell<HashMap<Pod, u32>>>,
    /// Deployments that may be scaled to zero: with no pods, requests wait for one.
    cold: std::collections::HashSet<Dep>,
}

#[derive(Debug)]
struct Slot {
    counts: Rc<RefCell<HashMap<Pod, u32>>>,
    pod: Pod,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self
            .counts
            .borrow_mut()
            .get_mut(&self.pod)
            .expect("counted") -= 1;
    }
}

impl Admission for Model {
    type Slot = Slot;
    fn try_grant(
        &mut self,
        dep: &Dep,
        avoid: Option<Pod>,
        _: usize,
    ) -> Result<(Pod, Slot), NoSlot> {
        let cold = self.cold.contains(dep);
        let pods = match self.pods.get(dep) {
            Some(p) if !(p.is_empty() && cold) => p,
            _ if cold => return Err(NoSlot::ColdStart),
            _ => return Err(NoSlot::NoPods),
        };
        let free = pods.iter().copied().find(|p| {
            Some(*p) != avoid && self.counts.borrow().get(p).copied().unwrap_or(0) < LIMIT
        });
        match free {
            Some(p) => Ok((p, self.occupy(&"".into(), p))),
            None => Err(NoSlot::Busy),
        }
    }
    fn occupy(&mut self, _: &Dep, pod: Pod) -> Slot {
        *self.counts.borrow_mut().entry(pod).or_insert(0) += 1;
        Slot {
            counts: self.counts.clone(),
            pod,
        }
    }
    fn finish(&mut self, slot: Slot, _: Outcome) {
        drop(slot);
    }
    fn max_queue(&self, _: &Dep) -> usize {
        16
    }
    fn request_timeout(&self, _: &Dep) -> Millis {
        TIMEOUT
    }
}

#[derive(Debug)]
enum Wire {
    Msg(NodeId, Msg),
    Up(NodeId, SocketAddr),
    Down(NodeId),
    Leaving(NodeId),
}

/// A request running at a pod: (holder slot index, holder node id, dep, req, pod, ends at).
#[derive(Debug)]
struct Running {
    slot: usize,
    node: NodeId,
    dep: Dep,
    req: ReqId,
    pod: Pod,
    ends: Millis,
}

struct Sim {
    now: Millis,
    nodes: Vec<Option<Node<Model>>>,
    ids: Vec<NodeId>,
    next_id: NodeId,
    /// Inbound FIFO per (from, to) slot pair.
    links: HashMap<(usize, usize), VecDeque<Wire>>,
    connected: HashMap<(usize, usize), bool>,
    real: HashMap<Pod, u32>,
    running: Vec<Running>,
    next_req: ReqId,
    granted: u64,
    deps: Vec<Dep>,
    pods: HashMap<Dep, Vec<Pod>>,
    members: usize,
    last_crash: Option<Millis>,
    /// How long slots stay parked (0: never).
    park_ms: Millis,
}

impl Sim {
    fn new(n: usize, pods: usize) -> Self {
        Self::with_parking(n, pods, 15)
    }
    fn with_parking(n: usize, pods: usize, park_ms: Millis) -> Self {
        let deps: Vec<Dep> = vec!["ep/a".into(), "ep/b".into()];
        // Each deployment has its own pods (a pod belongs to one deployment).
        let pods: HashMap<Dep, Vec<Pod>> = deps
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    d.clone(),
                    (0..pods as u16).map(|p| pod(p + 100 * i as u16)).collect(),
                )
            })
            .collect();
        let mut s = Sim {
            now: 1,
            nodes: Vec::new(),
            ids: Vec::new(),
            next_id: 1,
            links: HashMap::new(),
            connected: HashMap::new(),
            real: HashMap::new(),
            running: Vec::new(),
            next_req: 1,
            granted: 0,
            deps,
            pods,
            members: n,
            last_crash: None,
            park_ms,
        };
        for i in 0..n {
            let id = s.fresh_id();
            s.ids.push(id);
            s.nodes.push(Some(s.make(i, id)));
        }
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    s.connect(a, b);
                }
            }
        }
        s
    }
    fn fresh_id(&mut self) -> NodeId {
        self.next_id += 1;
        self.next_id * 1000
    }
    fn make(&self, i: usize, id: NodeId) -> Node<Model> {
        let members: Vec<SocketAddr> = (0..self.members).map(node_addr).collect();
        let mut node = Node::new(
            id,
            node_addr(i),
            &members,
            Model {
                pods: self.pods.clone(),
                counts: Default::default(),
                cold: Default::default(),
            },
        );
        node.set_park_ms(self.park_ms);
        node
    }
    fn n(&self) -> usize {
        self.ids.len()
    }
    /// Both sides learn of each other (in order with their other messages).
    fn connect(&mut self, a: usize, b: usize) {
        if self.nodes[a].is_none() || self.nodes[b].is_none() {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            self.connected.insert((x, y), true);
            let up = Wire::Up(self.ids[x], node_addr(x));
            self.links.entry((x, y)).or_default().push_back(up);
        }
    }
    /// The connection breaks: what was in flight either way is lost, both sides see it closed.
    fn break_link(&mut self, a: usize, b: usize) {
        if !self.connected.get(&(a, b)).copied().unwrap_or(false) {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            self.connected.insert((x, y), false);
            let q = self.links.entry((x, y)).or_default();
            q.clear();
            q.push_back(Wire::Down(self.ids[x]));
        }
    }
    /// The process dies: what it wrote is still delivered (the kernel flushes its sockets), then
    /// its peers see the connection close; nothing more reaches it.
    ///
    /// One failure at a time: a crash only while every node is up and the last crash's leases
    /// have expired (with all replicas dead at once, nobody could know what the pods still run).
    fn crash(&mut self, a: usize) {
        if !self.may_fail() {
            return;
        }
        self.last_crash = Some(self.now);
        self.nodes[a] = None;
        for b in 0..self.n() {
            if b == a {
                continue;
            }
            if self.connected.get(&(a, b)).copied().unwrap_or(false) {
                self.links
                    .entry((a, b))
                    .or_default()
                    .push_back(Wire::Down(self.ids[a]));
            }
            self.connected.insert((a, b), false);
            self.connected.insert((b, a), false);
            self.links.entry((b, a)).or_default().clear();
        }
    }
    /// One failure at a time: a new one only once every node is up and connected again, all
    /// messages are through (the cluster has healed) and the last failure's leases have expired. (With two replicas of three cut off at once there is no
    /// quorum; with every replica dead nobody could know what the pods still run.)
    fn may_fail(&self) -> bool {
        let recent = self.last_crash.is_some_and(|t| self.now < t + TIMEOUT + 2);
        !recent
            && self.nodes.iter().all(Option::is_some)
            && self.connected.values().all(|c| *c)
            && self.links.values().all(VecDeque::is_empty)
    }
    /// Node `a` is cut off from every peer (a port that stops answering).
    fn isolate(&mut self, a: usize) {
        if !self.may_fail() {
            return;
        }
        self.last_crash = Some(self.now);
        for b in 0..self.n() {
            if b != a {
                self.break_link(a, b);
            }
        }
    }
    /// Every broken connection between live nodes comes back.
    fn heal(&mut self) {
        for a in 0..self.n() {
            for b in (a + 1)..self.n() {
                if !self.connected.get(&(a, b)).copied().unwrap_or(false) {
                    self.connect(a, b);
                }
            }
        }
    }
    fn restart(&mut self, a: usize) {
        if self.nodes[a].is_some() {
            return;
        }
        let id = self.fresh_id();
        self.ids[a] = id;
        let mut node = self.make(a, id);
        // A dead peer's port refuses the connection at once.
        for b in 0..self.n() {
            if b != a && self.nodes[b].is_none() {
                node.absent(self.now, node_addr(b));
            }
        }
        self.nodes[a] = Some(node);
        for b in 0..self.n() {
            if b != a {
                self.connect(a, b);
            }
        }
    }
    fn leave(&mut self, a: usize) {
        let now = self.now;
        let Some(node) = self.nodes[a].as_mut() else {
            return;
        };
        node.leave(now);
        for b in 0..self.n() {
            if b != a && self.connected.get(&(a, b)).copied().unwrap_or(false) {
                let w = Wire::Leaving(self.ids[a]);
                self.links.entry((a, b)).or_default().push_back(w);
            }
        }
        self.flush(a);
    }
    fn slot_of(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().position(|&x| x == id)
    }
    /// Carries out node `a`'s output.
    fn flush(&mut self, a: usize) {
        let Some(node) = self.nodes[a].as_mut() else {
            return;
        };
        let out = node.take_output();
        for o in out {
            match o {
                Output::Send(to, msg) => {
                    if let Some(b) = self.slot_of(to)
                        && self.connected.get(&(a, b)).copied().unwrap_or(false)
                    {
                        self.links
                            .entry((a, b))
                            .or_default()
                            .push_back(Wire::Msg(self.ids[a], msg));
                    }
                }
                Output::Granted { req, pod, .. } => self.start(a, req, pod),
                Output::Refused { .. } | Output::Queued(_) => {}
            }
        }
    }
    fn start(&mut self, a: usize, req: ReqId, pod: Pod) {
        let dep = self
            .deps
            .iter()
            .find(|d| {
                self.nodes[a]
                    .as_ref()
                    .and_then(|n| n.deps.get(*d))
                    .is_some_and(|s| s.held.contains_key(&req))
            })
            .cloned()
            .expect("a granted request holds a lease");
        trace(|| format!("t={} START node {a} req {req} pod {pod}", self.now));
        let r = self.real.entry(pod).or_insert(0);
        *r += 1;
        self.granted += 1;
        let ends = self.now + 1 + (req * 7 + self.now) % (TIMEOUT - 2);
        self.running.push(Running {
            slot: a,
            node: self.ids[a],
            dep,
            req,
            pod,
            ends,
        });
    }
    fn check(&self) {
        for (p, n) in &self.real {
            assert!(
                *n <= LIMIT,
                "pod {p} runs {n} requests, its limit is {LIMIT}"
            );
        }
    }
    fn request(&mut self, a: usize, dep: usize, wait: Millis) {
        let now = self.now;
        let req = self.next_req;
        self.next_req += 1;
        let dep = self.deps[dep % self.deps.len()].clone();
        let Some(node) = self.nodes[a].as_mut() else {
            return;
        };
        if let Some(Ok((lease, pod))) = node.acquire(now, &dep, req, wait, None) {
            self.flush(a);
            self.start(a, lease, pod);
        } else {
            self.flush(a);
        }
    }
    fn deliver(&mut self, pick: usize, dup: bool) {
        let mut keys: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return;
        }
        keys.sort();
        let (a, b) = keys[pick % keys.len()];
        let q = self.links.get_mut(&(a, b)).expect("listed");
        let w = if dup {
            match q.front() {
                Some(Wire::Msg(f, m)) => Wire::Msg(*f, m.clone()),
                _ => q.pop_front().expect("non-empty"),
            }
        } else {
            q.pop_front().expect("non-empty")
        };
        let now = self.now;
        let Some(node) = self.nodes[b].as_mut() else {
            return;
        };
        trace(|| format!("t={now} {a}->{b}: {w:?}"));
        match w {
            Wire::Msg(from, m) => node.receive(now, from, m),
            Wire::Up(id, addr) => node.peer_up(now, id, addr),
            Wire::Down(id) => node.peer_down(now, id),
            Wire::Leaving(id) => node.peer_leaving(now, id),
        }
        self.flush(b);
    }
    fn advance(&mut self, ms: Millis) {
        self.now += ms;
        let now = self.now;
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.ends <= now);
        self.running = still;
        for r in done {
            *self.real.get_mut(&r.pod).expect("running") -= 1;
            // The holder gives the slot back, if it is still the same process.
            if self.ids[r.slot] == r.node
                && let Some(node) = self.nodes[r.slot].as_mut()
            {
                node.release(now, &r.dep, r.req, Outcome::Success(1));
                self.flush(r.slot);
            }
        }
        for a in 0..self.n() {
            if let Some(node) = self.nodes[a].as_mut() {
                node.tick(now);
                self.flush(a);
            }
        }
    }
    fn cancel_some(&mut self, a: usize, pick: u64) {
        let now = self.now;
        if let Some(node) = self.nodes[a].as_mut() {
            let mut reqs: Vec<ReqId> = node.pending.keys().copied().collect();
            reqs.sort();
            if !reqs.is_empty() {
                node.cancel(now, reqs[pick as usize % reqs.len()]);
            }
            self.flush(a);
        }
    }
    /// Lets everything settle: all messages delivered, time moves until pods are idle.
    fn settle(&mut self) {
        for _ in 0..2000 {
            if self.links.values().all(|q| q.is_empty()) {
                break;
            }
            self.deliver(0, false);
            self.check();
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Request {
        node: usize,
        dep: usize,
        wait: Millis,
    },
    Deliver {
        pick: usize,
        dup: bool,
    },
    Advance(Millis),
    Cancel {
        node: usize,
        pick: u64,
    },
    Crash(usize),
    Restart(usize),
    Isolate(usize),
    Heal,
    Leave(usize),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..n, 0..2usize, 1..120u64).prop_map(|(node, dep, wait)| Op::Request { node, dep, wait }),
        50 => (0..64usize, prop::bool::weighted(0.05)).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
        12 => (1..6u64).prop_map(Op::Advance),
        3 => (0..n, any::<u64>()).prop_map(|(node, pick)| Op::Cancel { node, pick }),
        2 => (0..n).prop_map(Op::Crash),
        3 => (0..n).prop_map(Op::Restart),
        2 => (0..n).prop_map(Op::Isolate),
        3 => Just(Op::Heal),
        1 => (0..n).prop_map(Op::Leave),
    ]
}

fn run(n: usize, pods: usize, park_ms: Millis, ops: &[Op]) -> Sim {
    let mut sim = Sim::with_parking(n, pods, park_ms);
    // Let the nodes meet.
    sim.settle();
    for o in ops {
        match *o {
            Op::Request { node, dep, wait } => sim.request(node, dep, wait),
            Op::Deliver { pick, dup } => sim.deliver(pick, dup),
            Op::Advance(ms) => sim.advance(ms),
            Op::Cancel { node, pick } => sim.cancel_some(node, pick),
            Op::Crash(a) => sim.crash(a),
            Op::Restart(a) => sim.restart(a),
            Op::Isolate(a) => sim.isolate(a),
            Op::Heal => sim.heal(),
            Op::Leave(a) => sim.leave(a),
        }
        sim.check();
    }
    sim.settle();
    sim
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the network and the processes do, no pod ever runs more than its limit.
    #[test]
    fn pods_never_exceed_their_limit(
        n in 2..5usize,
        pods in 1..4usize,
        park_ms in prop_oneof![Just(0u64), Just(15u64)],
        ops in prop::collection::vec(op(4), 1..600),
    ) {
        let ops: Vec<Op> = ops.into_iter().map(|o| clamp(o, n)).collect();
        run(n, pods, park_ms, &ops);
    }
}

fn clamp(o: Op, n: usize) -> Op {
    match o {
        Op::Request { node, dep, wait } => Op::Request {
            node: node % n,
            dep,
            wait,
        },
        Op::Cancel { node, pick } => Op::Cancel {
            node: node % n,
            pick,
        },
        Op::Crash(a) => Op::Crash(a % n),
        Op::Restart(a) => Op::Restart(a % n),
        Op::Isolate(a) => Op::Isolate(a % n),
        Op::Leave(a) => Op::Leave(a % n),
        other => other,
    }
}

/// Without faults, every node's requests are served, and each pod's slot is shared by all.
#[test]
fn a_healthy_cluster_serves_every_node_one_slot_at_a_time() {
    let mut sim = Sim::new(3, 1);
    sim.settle();
    for round in 0..60 {
        sim.request(round % 3, round % 2, 10_000);
        sim.request((round + 1) % 3, round % 2, 10_000);
        for _ in 0..30 {
            sim.settle();
            sim.advance(3);
        }
    }
    assert_eq!(sim.granted, 120, "every request got its slot in the end");
    let max = sim.real.values().copied().max().unwrap_or(0);
    assert_eq!(max, 0, "all done");
}

/// The owner dies holding its own slot: the new owner counts that slot (from the notes) until
/// requestTimeoutMs passed, and then admits again.
#[test]
fn a_dead_owners_own_slot_stays_counted_until_the_pod_must_have_finished() {
    let mut sim = Sim::new(3, 1);
    sim.settle();
    let dep: Dep = "ep/a".into();
    let owner_id = sim.nodes[0].as_ref().unwrap().owner_of(&dep).unwrap();
    let owner = sim.slot_of(owner_id).unwrap();
    sim.request(owner, 0, 1000);
    sim.settle();
    assert_eq!(sim.real[&pod(0)], 1, "the owner's request runs");
    sim.crash(owner);
    sim.settle();
    let other = (owner + 1) % 3;
    sim.request(other, 0, 1000);
    sim.settle();
    assert_eq!(
        sim.granted, 1,
        "nothing else admitted while the dead owner's slot may be busy"
    );
    // The pod finishes; the slot stays counted until TIMEOUT after the death, then frees.
    for _ in 0..(TIMEOUT / 2 + 2) {
        sim.advance(2);
        sim.settle();
    }
    assert_eq!(sim.granted, 2, "admitted once requestTimeoutMs passed");
}

/// A replica that asks a node which is not (or no longer) the owner is sent on and served.
#[test]
fn ownership_follows_membership() {
    let mut sim = Sim::new(3, 2);
    sim.settle();
    let dep: Dep = "ep/b".into();
    let first = sim.nodes[1].as_ref().unwrap().owner_of(&dep).unwrap();
    let gone = sim.slot_of(first).unwrap();
    sim.leave(gone);
    sim.settle();
    let next = sim.nodes[(gone + 1) % 3]
        .as_ref()
        .unwrap()
        .owner_of(&dep)
        .unwrap();
    assert_ne!(next, first, "a leaving node owns nothing");
    let asker = (gone + 2) % 3;
    sim.request(asker, 1, 1000);
    sim.settle();
    assert_eq!(sim.granted, 1);
    let n = sim.nodes[sim.slot_of(next).unwrap()].as_ref().unwrap();
    assert!(
        n.serving(&dep).is_some(),
        "the next node claimed and serves"
    );
}

/// While nobody waits, a holder keeps its slot parked and its next request takes it with no
/// message at all; as soon as a request waits anywhere, the owner recalls the parked slot.
#[test]
fn a_parked_slot_serves_the_next_request_and_comes_back_when_someone_waits() {
    let mut sim = Sim::new(3, 1);
    sim.settle();
    let dep: Dep = "ep/a".into();
    let owner_id = sim.nodes[0].as_ref().unwrap().owner_of(&dep).unwrap();
    let owner = sim.slot_of(owner_id).unwrap();
    let b = (owner + 1) % 3;
    let c = (owner + 2) % 3;
    sim.request(b, 0, 1000);
    sim.settle();
    assert_eq!(sim.granted, 1);
    // The request ends: the slot is parked at b, not released.
    while !sim.running.is_empty() {
        sim.advance(1);
        sim.settle();
    }
    let parked = |sim: &Sim| sim.nodes[b].as_ref().unwrap().deps[&dep].parked.len();
    assert_eq!(parked(&sim), 1, "the slot is parked at its holder");
    // b's next request takes it at once: nothing is sent.
    let before: usize = sim.links.values().map(VecDeque::len).sum();
    sim.request(b, 0, 1000);
    let after: usize = sim.links.values().map(VecDeque::len).sum();
    assert_eq!(sim.granted, 2, "served from the parked slot");
    assert_eq!(after, before, "no message for a parked slot");
    while !sim.running.is_empty() {
        sim.advance(1);
        sim.settle();
    }
    assert_eq!(parked(&sim), 1);
    // c asks: the pod's one slot is parked at b; the owner recalls it and c is served.
    sim.request(c, 0, 1000);
    sim.settle();
    sim.settle();
    assert_eq!(parked(&sim), 0, "recalled");
    assert_eq!(
        sim.granted, 3,
        "c got the slot without waiting for the park to expire"
    );
}

/// Scale from zero: the owner has no pods for a deployment that may be scaled to zero. Requests
/// (a peer's and its own) queue in FIFO order with their own deadlines instead of a NoPods
/// refusal, and are served, oldest first, as soon as the pods come.
#[test]
fn a_deployment_scaled_to_zero_queues_requests_until_its_pods_come() {
    let mut sim = Sim::new(3, 1);
    sim.settle();
    let dep: Dep = "ep/a".into();
    let scale_to_zero = |sim: &mut Sim, pods: Vec<Pod>| {
        for n in sim.nodes.iter_mut().flatten() {
            n.admission.pods.insert(dep.clone(), pods.clone());
            n.admission.cold.insert(dep.clone());
        }
    };
    scale_to_zero(&mut sim, vec![]);
    let owner_id = sim.nodes[0].as_ref().unwrap().owner_of(&dep).unwrap();
    let owner = sim.slot_of(owner_id).unwrap();
    let (b, c) = ((owner + 1) % 3, (owner + 2) % 3);
    sim.request(b, 0, 1000);
    sim.settle();
    sim.request(owner, 0, 1000);
    sim.settle();
    sim.request(c, 0, 1000);
    sim.settle();
    sim.advance(5);
    sim.settle();
    assert_eq!(sim.granted, 0);
    assert_eq!(
        sim.nodes[owner].as_ref().unwrap().serving(&dep),
        Some(3),
        "all three wait in the owner's queue"
    );
    assert!(
        [b, owner, c]
            .iter()
            .all(|&n| sim.nodes[n].as_ref().unwrap().pending.len() == 1),
        "nobody was refused"
    );
    // The first pod comes (one slot): the requests are served one at a time, oldest first.
    scale_to_zero(&mut sim, vec![pod(0)]);
    let now = sim.now;
    sim.nodes[owner].as_mut().unwrap().pods_changed(now, &dep);
    sim.flush(owner);
    sim.settle();
    let mut order = vec![];
    for _ in 0..200 {
        for r in &sim.running {
            if !order.contains(&(r.slot, r.req)) {
                order.push((r.slot, r.req));
            }
        }
        if order.len() == 3 {
            break;
        }
        sim.advance(1);
        sim.settle();
    }
    let holders: Vec<usize> = order.iter().map(|(s, _)| *s).collect();
    assert_eq!(holders, vec![b, owner, c], "FIFO across the fleet");
    assert_eq!(sim.granted, 3);
}

/// Scaled to zero and no pod comes: a queued request is refused at its own deadline with
/// QueueTimeout; a deployment that may not scale to zero still refuses NoPods at once.
#[test]
fn a_request_waiting_for_a_cold_start_times_out_at_its_own_deadline() {
    let mut sim = Sim::new(3, 1);
    sim.settle();
    let (cold, plain): (Dep, Dep) = ("ep/a".into(), "ep/b".into());
    for n in sim.nodes.iter_mut().flatten() {
        n.admission.pods.insert(cold.clone(), vec![]);
        n.admission.cold.insert(cold.clone());
        n.admission.pods.remove(&plain);
    }
    let owner_id = sim.nodes[0].as_ref().unwrap().owner_of(&cold).unwrap();
    let b = (sim.slot_of(owner_id).unwrap() + 1) % 3;
    let now = sim.now;
    let node = sim.nodes[b].as_mut().unwrap();
    assert_eq!(
        node.acquire(now, &cold, 900, 30, None),
        None,
        "no answer yet"
    );
    sim.flush(b);
    sim.settle();
    for _ in 0..25 {
        sim.advance(1);
        sim.settle();
    }
    assert!(
        sim.nodes[b].as_ref().unwrap().pending.contains_key(&900),
        "still waiting"
    );
    let out = (0..20).find_map(|_| {
        sim.advance(1);
        for _ in 0..50 {
            let Some((a, to)) = sim
                .links
                .iter()
                .find(|(_, q)| !q.is_empty())
                .map(|(k, _)| *k)
            else {
                break;
            };
            let w = sim.links.get_mut(&(a, to)).unwrap().pop_front().unwrap();
            let now = sim.now;
            let node = sim.nodes[to].as_mut().unwrap();
            match w {
                Wire::Msg(from, m) => node.receive(now, from, m),
                Wire::Up(id, addr) => node.peer_up(now, id, addr),
                Wire::Down(id) => node.peer_down(now, id),
                Wire::Leaving(id) => node.peer_leaving(now, id),
            }
            let refused = node
                .take_output()
                .into_iter()
                .find(|o| matches!(o, Output::Refused { req: 900, .. }));
            if refused.is_some() {
                return refused;
            }
        }
        None
    });
    assert_eq!(
        out,
        Some(Output::Refused {
            req: 900,
            reason: Refusal::QueueTimeout
        })
    );
    assert!(sim.nodes[b].as_ref().unwrap().pending.is_empty());
    // Not scaled to zero: NoPods, no wait.
    sim.settle();
    let plain_owner = sim.nodes[0].as_ref().unwrap().owner_of(&plain).unwrap();
    let p = sim.slot_of(plain_owner).unwrap();
    let (now, before) = (sim.now, sim.granted);
    sim.request(p, 1, 1000);
    sim.settle();
    assert_eq!(sim.now, now, "no time passed");
    assert!(
        sim.nodes[p].as_ref().unwrap().pending.is_empty(),
        "refused at once (the claim done)"
    );
    assert_eq!(sim.granted, before);
}

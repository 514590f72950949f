//! A model of the election: several [`Elector`]s against a compare-and-swap Lease store, with
//! random request and response delays, lost requests, lost responses (the write applied but
//! its writer never learns it), duplicated writes, crashes and releases. Checked at every
//! millisecond: never two live replicas that believe they lead; and after the faults stop, one
//! leads.

use std::time::Duration;

use infergate_autoscale::lease::{Action, Elector, LeaseRecord, Timing};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// The API server: one Lease, replaced only when the writer's resourceVersion is current.
#[derive(Default)]
struct Store {
    lease: Option<LeaseRecord>,
    rv: u64,
}

enum Reply {
    Read(Option<LeaseRecord>),
    Stored(LeaseRecord),
    Conflict,
}

impl Store {
    fn apply(&mut self, req: &Req) -> Reply {
        match req {
            Req::Read => Reply::Read(self.lease.clone()),
            Req::Create(r) => {
                if self.lease.is_some() {
                    return Reply::Conflict;
                }
                self.store(r)
            }
            Req::Update(r) => {
                if self.lease.as_ref().map(|l| &l.resource_version) != Some(&r.resource_version) {
                    return Reply::Conflict;
                }
                self.store(r)
            }
        }
    }

    fn store(&mut self, r: &LeaseRecord) -> Reply {
        self.rv += 1;
        let mut stored = r.clone();
        stored.resource_version = Some(self.rv.to_string());
        self.lease = Some(stored.clone());
        Reply::Stored(stored)
    }
}

#[derive(Clone)]
enum Req {
    Read,
    Create(LeaseRecord),
    Update(LeaseRecord),
}

struct InFlight {
    req: Req,
    started: u64,
    arrive: u64,
    respond: u64,
    reply: Option<Reply>,
    lost_request: bool,
    lost_response: bool,
    /// A duplicate of the request reaches the server at this time too.
    duplicate: Option<u64>,
}

struct Node {
    e: Elector,
    next_step: u64,
    flight: Option<InFlight>,
    crashed: bool,
}

fn wall(t: u64) -> MicroTime {
    MicroTime(Timestamp::from_millisecond(1_767_225_600_000 + t as i64).unwrap())
}

/// The faults of one run, drawn by proptest.
#[derive(Debug, Clone)]
struct Faults {
    seed: u64,
    /// Per-mille chance of a lost request, a lost response, a duplicate.
    lose_req: u64,
    lose_resp: u64,
    dup: u64,
    /// Longest one-way delay (ms).
    max_delay: u64,
    /// (time, node) of crashes and of releases.
    crashes: Vec<(u64, usize)>,
    releases: Vec<(u64, usize)>,
}

/// A small deterministic generator (the run is reproducible from the seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

const NODES: usize = 3;
/// Faults happen before this time; the run goes on quietly until `END`.
const FAULTS_UNTIL: u64 = 12_000;
const END: u64 = 20_000;

fn timing() -> Timing {
    Timing {
        lease_duration: MS(1500),
        retry_period: MS(300),
        renew_deadline: MS(1000),
    }
}

fn run(f: &Faults) -> Result<(), String> {
    let mut rng = Rng(f.seed | 1);
    let mut store = Store::default();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node {
            e: Elector::new(format!("r{i}"), timing()),
            next_step: rng.below(300),
            flight: None,
            crashed: false,
        })
        .collect();
    let mut t = 0u64;
    while t < END {
        let faulty = t < FAULTS_UNTIL;
        for &(at, n) in &f.crashes {
            if at == t && faulty {
                nodes[n].crashed = true;
            }
        }
        for &(at, n) in &f.releases {
            if at == t
                && faulty
                && !nodes[n].crashed
                && nodes[n].flight.is_none()
                && let Some(rec) = nodes[n].e.release(wall(t))
            {
                {
                    let d = 1 + rng.below(f.max_delay);
                    nodes[n].flight = Some(InFlight {
                        req: Req::Update(rec),
                        started: t,
                        arrive: t + d,
                        respond: t + d + 1 + rng.below(f.max_delay),
                        reply: None,
                        lost_request: false,
                        lost_response: false,
                        duplicate: None,
                    });
                }
            }
        }
        for node in nodes.iter_mut() {
            if node.crashed {
                // A crashed process does nothing, but a request it sent may still arrive.
                if let Some(fl) = &mut node.flight
                    && fl.arrive == t
                    && !fl.lost_request
                {
                    store.apply(&fl.req);
                }
                continue;
            }
            // The server side of a request in flight.
            if let Some(fl) = &mut node.flight {
                if fl.arrive == t && !fl.lost_request {
                    fl.reply = Some(store.apply(&fl.req));
                }
                if fl.duplicate == Some(t) {
                    store.apply(&fl.req);
                }
            }
            // The reply.
            if node.flight.as_ref().is_some_and(|fl| fl.respond <= t) {
                let fl = node.flight.take().expect("checked");
                match (fl.lost_request || fl.lost_response, fl.reply) {
                    (true, _) | (false, None) => node.e.failed(),
                    (false, Some(Reply::Read(l))) => node.e.observe(l, MS(t)),
                    (false, Some(Reply::Stored(s))) => node.e.written(s, MS(fl.started)),
                    (false, Some(Reply::Conflict)) => node.e.conflict(),
                }
                // (A write was sent with its next step a retry period later.)
                node.next_step = node.next_step.max(t + 1);
            }
            if node.flight.is_none() && node.next_step <= t {
                let req = match node.e.next(MS(t), wall(t)) {
                    Action::Read => Req::Read,
                    Action::Create(r) => Req::Create(r),
                    Action::Update(r) => Req::Update(r),
                    Action::Wait => {
                        node.next_step = t + 300;
                        continue;
                    }
                };
                // A renewal waits a retry period; reads follow at once.
                let d = 1 + rng.below(f.max_delay);
                let chance = |rng: &mut Rng, p: u64| faulty && rng.below(1000) < p;
                let dup = chance(&mut rng, f.dup);
                node.flight = Some(InFlight {
                    started: t,
                    arrive: t + d,
                    respond: t + d + 1 + rng.below(f.max_delay),
                    reply: None,
                    lost_request: chance(&mut rng, f.lose_req),
                    lost_response: chance(&mut rng, f.lose_resp),
                    duplicate: dup.then(|| t + d + 1 + rng.below(f.max_delay)),
                    req,
                });
                if !matches!(node.flight.as_ref().map(|f| &f.req), Some(Req::Read)) {
                    node.next_step = t + 300;
                }
            }
        }
        // Safety: at most one live replica believes it leads, at every millisecond.
        let leaders: Vec<usize> = (0..NODES)
            .filter(|&i| !nodes[i].crashed && nodes[i].e.is_leader(MS(t)))
            .collect();
        if leaders.len() > 1 {
            return Err(format!("two leaders at {t} ms: {leaders:?}"));
        }
        t += 1;
    }
    // Liveness: once the faults stop, a live replica leads (if any is alive).
    let alive = nodes.iter().filter(|n| !n.crashed).count();
    let leaders = nodes
        .iter()
        .filter(|n| !n.crashed && n.e.is_leader(MS(END - 1)))
        .count();
    if alive > 0 && leaders != 1 {
        return Err(format!(
            "{leaders} leaders among {alive} live replicas {} ms after the faults stopped",
            END - FAULTS_UNTIL
        ));
    }
    Ok(())
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        any::<u64>(),
        0u64..200,
        0u64..200,
        0u64..100,
        1u64..150,
        proptest::collection::vec((0..FAULTS_UNTIL, 0..NODES), 0..2),
        proptest::collection::vec((0..FAULTS_UNTIL, 0..NODES), 0..4),
    )
        .prop_map(
            |(seed, lose_req, lose_resp, dup, max_delay, crashes, releases)| Faults {
                seed,
                lose_req,
                lose_resp,
                dup,
                max_delay,
                crashes,
                releases,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn never_two_leaders_and_one_after_the_faults(f in faults()) {
        prop_assert!(run(&f).is_ok(), "{:?}: {}", f, run(&f).unwrap_err());
    }
}

#[test]
fn without_faults_one_replica_leads_all_along_after_the_first_election() {
    let f = Faults {
        seed: 7,
        lose_req: 0,
        lose_resp: 0,
        dup: 0,
        max_delay: 20,
        crashes: vec![],
        releases: vec![],
    };
    run(&f).unwrap();
}

#[test]
fn the_leaders_crash_hands_over() {
    // Node 0 starts first and leads; it crashes at 5 s; the others take over.
    for seed in 1..20 {
        let f = Faults {
            seed,
            lose_req: 50,
            lose_resp: 50,
            dup: 50,
            max_delay: 50,
            crashes: vec![(5_000, 0), (9_000, 1)],
            releases: vec![(3_000, 2)],
        };
        run(&f).unwrap();
    }
}

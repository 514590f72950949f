//! Leader election on a `coordination.k8s.io/v1` Lease: client-go's algorithm, written with a
//! compare-and-swap on the Lease's `metadata.resourceVersion`.
//!
//! - [`Elector`] is the pure state machine (no I/O; local time passed in as a [`Duration`]
//!   since an origin): it says what to do next ([`Action`]) from the Lease as last read.
//! - [`spawn`] runs it against the API server and hands out a [`Leadership`].
//!
//! The rules, as in client-go:
//!
//! - a Lease held by another identity is taken over only once it has not changed (its record
//!   or `resourceVersion`) for its `leaseDurationSeconds`, measured on OUR clock from when we
//!   saw it change, never from the timestamps in it (so clock skew between replicas does not
//!   matter);
//! - a Lease with no holder is taken at once; a missing one is created (`POST`; 409
//!   AlreadyExists: re-read);
//! - every write is a `PUT` of the whole Lease carrying the `resourceVersion` read (409
//!   Conflict: someone else wrote first, re-read);
//! - leadership is valid until `start of the last successful renew + renew_deadline` by the
//!   local clock, and `renew_deadline < lease_duration`: when renewals fail (API server
//!   outage), a leader stops being one BEFORE another replica can take the Lease over (that one
//!   waits `lease_duration` from when it saw the last renew, which was written after the renew
//!   started).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease's default name.
pub const DEFAULT_LEASE_NAME: &str = "infergate-autoscaler";

/// The election's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease stays held without renewal before others may take it over (written
    /// to `leaseDurationSeconds`, rounded up to whole seconds). Default 15 s.
    pub lease_duration: Duration,
    /// How often to try to acquire or renew. Default 5 s.
    pub retry_period: Duration,
    /// How long after the start of its last successful renew a leader stops being one.
    /// Default 10 s; must be below `lease_duration` (the safety margin) and above
    /// `retry_period`.
    pub renew_deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

impl Timing {
    /// Checks `0 < retry_period < renew_deadline < lease_duration`.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("retry period must be positive".into());
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// What the Lease says, as read (the fields the election uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// `spec.holderIdentity` (`None` or empty: free).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`.
    pub lease_duration: Option<Duration>,
    /// `spec.acquireTime`.
    pub acquire_time: Option<MicroTime>,
    /// `spec.renewTime`.
    pub renew_time: Option<MicroTime>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `metadata.resourceVersion` (`None` for a record not yet stored).
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// The record of a Lease object.
    pub fn from_lease(lease: &Lease) -> LeaseRecord {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            lease_duration: spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64)),
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }

    /// Writes this record into a Lease object (its spec fields and `resourceVersion`; other
    /// fields are kept).
    pub fn apply_to(&self, lease: &mut Lease) {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = self.holder.clone();
        spec.lease_duration_seconds = self
            .lease_duration
            .map(|d| d.as_millis().div_ceil(1000).clamp(1, i32::MAX as u128) as i32);
        spec.acquire_time = self.acquire_time.clone();
        spec.renew_time = self.renew_time.clone();
        spec.lease_transitions = Some(self.transitions);
        lease.metadata.resource_version = self.resource_version.clone();
    }

    /// The holder, if any (an empty identity is none).
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// What the [`Elector`] wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the Lease (`GET`), then [`Elector::observe`] it.
    Read,
    /// Create the Lease with this record (`POST`).
    Create(LeaseRecord),
    /// Replace the Lease with this record (`PUT` carrying its `resource_version`): a takeover
    /// or a renewal.
    Update(LeaseRecord),
    /// Another identity holds an unexpired Lease: wait a retry period (then read again).
    Wait,
}

/// The election's pure state machine (no I/O). Times are local, as [`Duration`]s since any
/// fixed origin.
///
/// Drive it with [`next`](Elector::next) and report the outcome of what it asked for:
/// [`observe`](Elector::observe) after a read, [`written`](Elector::written) after a
/// successful write, [`conflict`](Elector::conflict) after a 409,
/// [`failed`](Elector::failed) after any other error.
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    timing: Timing,
    /// The Lease as last read or written (`None`: absent, or never read).
    record: Option<LeaseRecord>,
    /// When `record` was last seen to change (local time).
    observed_at: Duration,
    /// Whether `record` can be acted on without reading again.
    fresh: bool,
    /// Start of our last successful acquire or renew, while we hold the Lease.
    renewed_at: Option<Duration>,
}

impl Elector {
    /// A new elector for `identity` (nothing read yet: the first action is [`Action::Read`]).
    pub fn new(identity: impl Into<String>, timing: Timing) -> Elector {
        Elector {
            identity: identity.into(),
            timing,
            record: None,
            observed_at: Duration::ZERO,
            fresh: false,
            renewed_at: None,
        }
    }

    /// Our identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The Lease as last read or written.
    pub fn record(&self) -> Option<&LeaseRecord> {
        self.record.as_ref()
    }

    /// Reports a read at local time `now`: the Lease, or `None` when there is none. A record
    /// that differs from the last one seen (any field, `resourceVersion` included) restarts
    /// the expiry clock. Held by another identity: we are not leader any more.
    pub fn observe(&mut self, lease: Option<LeaseRecord>, now: Duration) {
        if lease != self.record {
            self.observed_at = now;
        }
        if lease.as_ref().and_then(LeaseRecord::holder) != Some(self.identity.as_str()) {
            self.renewed_at = None;
        }
        self.record = lease;
        self.fresh = true;
    }

    /// What to do at local time `now`; `wall` is the wall-clock time written into
    /// `acquireTime`/`renewTime` (informational: nobody's decisions depend on it).
    pub fn next(&mut self, now: Duration, wall: MicroTime) -> Action {
        if !self.fresh {
            return Action::Read;
        }
        let Some(rec) = &self.record else {
            return Action::Create(LeaseRecord {
                holder: Some(self.identity.clone()),
                lease_duration: Some(self.timing.lease_duration),
                acquire_time: Some(wall.clone()),
                renew_time: Some(wall),
                transitions: 0,
                resource_version: None,
            });
        };
        match rec.holder() {
            Some(h) if h == self.identity => Action::Update(LeaseRecord {
                lease_duration: Some(self.timing.lease_duration),
                renew_time: Some(wall),
                ..rec.clone()
            }),
            Some(_) if now < self.expiry() => {
                self.fresh = false;
                Action::Wait
            }
            _ => Action::Update(LeaseRecord {
                holder: Some(self.identity.clone()),
                lease_duration: Some(self.timing.lease_duration),
                acquire_time: Some(wall.clone()),
                renew_time: Some(wall),
                transitions: rec.transitions + 1,
                resource_version: rec.resource_version.clone(),
            }),
        }
    }

    /// Local time at which the Lease as last seen expires (if its holder does not renew).
    fn expiry(&self) -> Duration {
        let d = self
            .record
            .as_ref()
            .and_then(|r| r.lease_duration)
            .unwrap_or(self.timing.lease_duration);
        self.observed_at + d
    }

    /// Reports a successful create or replace that was started at local time `started`;
    /// `stored` is the record the server answered (with its new `resourceVersion`).
    pub fn written(&mut self, stored: LeaseRecord, started: Duration) {
        self.renewed_at = (stored.holder() == Some(self.identity.as_str())).then_some(started);
        self.record = Some(stored);
        self.observed_at = started;
        self.fresh = true;
    }

    /// Reports a 409 (Conflict on a replace, AlreadyExists on a create): someone else wrote
    /// first; the next action is a read. Leadership stands until that read shows another
    /// holder or the deadline passes.
    pub fn conflict(&mut self) {
        self.fresh = false;
    }

    /// Reports any other failure (outage, timeout): read again next time. Leadership is not
    /// extended, so it lapses at its deadline.
    pub fn failed(&mut self) {
        self.fresh = false;
    }

    /// Whether we are leader at local time `now`: we hold the Lease and `now` is before
    /// [`leader_until`](Elector::leader_until).
    pub fn is_leader(&self, now: Duration) -> bool {
        self.leader_until().is_some_and(|u| now < u)
    }

    /// The local time our leadership ends unless renewed: the start of the last successful
    /// renew plus the renew deadline. `None` when we do not hold the Lease.
    pub fn leader_until(&self) -> Option<Duration> {
        self.renewed_at.map(|t| t + self.timing.renew_deadline)
    }

    /// Gives the Lease up: we stop being leader now; when the Lease as last written is ours,
    /// returns the record to `PUT` (no holder, a 1 s duration) so a successor takes over at
    /// once.
    pub fn release(&mut self, wall: MicroTime) -> Option<LeaseRecord> {
        self.renewed_at = None;
        let rec = self.record.as_ref()?;
        if rec.holder() != Some(self.identity.as_str()) {
            return None;
        }
        Some(LeaseRecord {
            holder: None,
            lease_duration: Some(Duration::from_secs(1)),
            acquire_time: Some(wall.clone()),
            renew_time: Some(wall),
            ..rec.clone()
        })
    }
}

/// The current wall-clock time as a [`MicroTime`].
pub fn wall_now() -> MicroTime {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

// === the driver ===

/// Where and as whom to run the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name (default [`DEFAULT_LEASE_NAME`]).
    pub name: String,
    /// This replica's identity (e.g. the pod name), unique among the replicas.
    pub identity: String,
    /// See [`Timing::lease_duration`] (default 15 s).
    pub lease_duration: Duration,
    /// See [`Timing::retry_period`] (default 5 s).
    pub retry_period: Duration,
    /// See [`Timing::renew_deadline`] (default 10 s).
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// The defaults: Lease [`DEFAULT_LEASE_NAME`] in `namespace`, 15 s / 5 s / 10 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        let t = Timing::default();
        LeaseConfig {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.into(),
            identity: identity.into(),
            lease_duration: t.lease_duration,
            retry_period: t.retry_period,
            renew_deadline: t.renew_deadline,
        }
    }

    /// The timing part.
    pub fn timing(&self) -> Timing {
        Timing {
            lease_duration: self.lease_duration,
            retry_period: self.retry_period,
            renew_deadline: self.renew_deadline,
        }
    }
}

/// A handle on a running election (cheap to clone). The election runs until
/// [`release`](Leadership::release), [`abort`](Leadership::abort), or the last handle is
/// dropped (which aborts it without releasing).
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
    guard: Arc<TaskGuard>,
    rx: watch::Receiver<bool>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("identity", &self.inner.identity)
            .field("lease", &self.inner.name)
            .field("is_leader", &self.is_leader())
            .finish()
    }
}

struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    identity: String,
    name: String,
    namespace: String,
    api: Api<Lease>,
    timing: Timing,
    origin: Instant,
    /// Leadership's end (`None`: not leader), checked against the clock by `is_leader`.
    until: std::sync::Mutex<Option<Instant>>,
    tx: watch::Sender<bool>,
    core: tokio::sync::Mutex<Core>,
}

struct Core {
    elector: Elector,
    /// The Lease object as last read or written (its other fields are kept on writes).
    last: Option<Lease>,
    /// The last failure, for the log.
    last_error: Option<String>,
    stopped: bool,
}

/// Starts the election for `cfg` on `client` (a tokio task); returns its handle.
///
/// Panics when the timing is invalid (see [`Timing::validate`]).
pub fn spawn(client: kube::Client, cfg: LeaseConfig) -> Leadership {
    let timing = cfg.timing();
    if let Err(e) = timing.validate() {
        panic!("leader election: {e}");
    }
    let (tx, rx) = watch::channel(false);
    let inner = Arc::new(Inner {
        identity: cfg.identity.clone(),
        name: cfg.name.clone(),
        namespace: cfg.namespace.clone(),
        api: Api::namespaced(client, &cfg.namespace),
        timing,
        origin: Instant::now(),
        until: std::sync::Mutex::new(None),
        tx,
        core: tokio::sync::Mutex::new(Core {
            elector: Elector::new(cfg.identity, timing),
            last: None,
            last_error: None,
            stopped: false,
        }),
    });
    let task = {
        let (inner, identity) = (inner.clone(), inner.identity.clone());
        tokio::spawn(async move {
            // Leadership is checked against the clock: should the election stop, it lapses at
            // the renew deadline by itself; say so, loudly.
            let end = infergate_metrics::supervised(run(inner)).await;
            tracing::error!(
                %identity,
                reason = %end,
                "leader election stopped: this replica's leadership lapses at its renew deadline \
                 and it never leads again (restart the pod)"
            );
        })
    };
    Leadership {
        inner,
        guard: Arc::new(TaskGuard(task.abort_handle())),
        rx,
    }
}

impl Leadership {
    /// Whether this replica is leader now: it holds the Lease and its last successful renew
    /// started less than the renew deadline ago. Checked against the clock, so it turns
    /// false at the deadline even when the election task is stuck or gone.
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// Waits until leadership changes (as published by the election task; it publishes a
    /// lapse at the deadline) and returns the new state.
    pub async fn changed(&mut self) -> bool {
        if self.rx.changed().await.is_err() {
            // Not reached while `self` holds the sender's owner; stay pending like a dead
            // election would.
            std::future::pending::<()>().await;
        }
        *self.rx.borrow_and_update()
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// Stops the election and, when we hold the Lease, clears its holder (a compare-and-swap
    /// `PUT`) so a successor takes over at once instead of waiting for it to expire. For
    /// shutdown. Leadership ends before the write is sent.
    pub async fn release(&self) {
        let inner = &self.inner;
        let mut core = inner.core.lock().await;
        core.stopped = true;
        self.guard.0.abort();
        let was = inner.is_leader();
        *inner.until.lock().expect("until") = None;
        inner.tx.send_replace(false);
        let Some(rec) = core.elector.release(wall_now()) else {
            return;
        };
        let mut lease = core.last.clone().unwrap_or_else(|| inner.blank());
        rec.apply_to(&mut lease);
        let pp = PostParams::default();
        let put = inner.api.replace(&inner.name, &pp, &lease);
        match tokio::time::timeout(inner.call_timeout(), put).await {
            Ok(Ok(_)) => tracing::info!(
                identity = %inner.identity, lease = %inner.name, was_leader = was,
                "released the lease"
            ),
            Ok(Err(e)) => tracing::warn!(
                identity = %inner.identity, lease = %inner.name, error = %e,
                "could not release the lease (a successor waits for it to expire)"
            ),
            Err(_) => tracing::warn!(
                identity = %inner.identity, lease = %inner.name,
                "releasing the lease timed out (a successor waits for it to expire)"
            ),
        }
    }

    /// Stops the election task at once without releasing (as SIGKILL would; for tests):
    /// leadership lapses at its deadline and others take over when the Lease expires.
    pub fn abort(&self) {
        self.guard.0.abort();
    }
}

impl Inner {
    fn is_leader(&self) -> bool {
        self.until
            .lock()
            .expect("until")
            .is_some_and(|u| Instant::now() < u)
    }

    fn now(&self) -> Duration {
        Instant::now() - self.origin
    }

    /// Timeout of one API call.
    fn call_timeout(&self) -> Duration {
        self.timing
            .retry_period
            .max(Duration::from_secs(1))
            .min(self.timing.renew_deadline)
    }

    fn blank(&self) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    /// One attempt: read when needed, then acquire or renew (at most a few steps, so a
    /// conflict is followed by a re-read and another try at once).
    async fn attempt(&self, core: &mut Core) {
        for _ in 0..4 {
            let now = self.now();
            match core.elector.next(now, wall_now()) {
                Action::Wait => return,
                Action::Read => {
                    let get = self.api.get_opt(&self.name);
                    match tokio::time::timeout(self.call_timeout(), get).await {
                        Ok(Ok(lease)) => {
                            let rec = lease.as_ref().map(LeaseRecord::from_lease);
                            core.last = lease;
                            core.elector.observe(rec, self.now());
                        }
                        Ok(Err(e)) => return self.failed(core, format!("reading the lease: {e}")),
                        Err(_) => return self.failed(core, "reading the lease timed out".into()),
                    }
                }
                Action::Create(rec) | Action::Update(rec) => {
                    let create = rec.resource_version.is_none();
                    let mut lease = core.last.clone().unwrap_or_else(|| self.blank());
                    rec.apply_to(&mut lease);
                    let pp = PostParams::default();
                    let res = if create {
                        tokio::time::timeout(self.call_timeout(), self.api.create(&pp, &lease))
                            .await
                    } else {
                        tokio::time::timeout(
                            self.call_timeout(),
                            self.api.replace(&self.name, &pp, &lease),
                        )
                        .await
                    };
                    match res {
                        Ok(Ok(stored)) => {
                            core.elector.written(LeaseRecord::from_lease(&stored), now);
                            core.last = Some(stored);
                            core.last_error = None;
                            return;
                        }
                        Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                            tracing::debug!(
                                identity = %self.identity, lease = %self.name, reason = %s.reason,
                                "lost a write race on the lease; re-reading"
                            );
                            core.elector.conflict();
                        }
                        Ok(Err(e)) => {
                            return self.failed(core, format!("writing the lease: {e}"));
                        }
                        Err(_) => return self.failed(core, "writing the lease timed out".into()),
                    }
                }
            }
        }
    }

    fn failed(&self, core: &mut Core, error: String) {
        tracing::debug!(identity = %self.identity, lease = %self.name, %error, "lease attempt failed");
        core.elector.failed();
        core.last_error = Some(error);
    }

    /// Publishes the elector's leadership (deadline and watch) and logs transitions.
    fn publish(&self, core: &Core) {
        let until = core.elector.leader_until().map(|u| self.origin + u);
        *self.until.lock().expect("until") = until;
        let now = self.is_leader();
        let was = *self.tx.borrow();
        if now == was {
            return;
        }
        self.tx.send_replace(now);
        let rec = core.elector.record();
        if now {
            tracing::info!(
                identity = %self.identity, lease = %self.name,
                transitions = rec.map_or(0, |r| r.transitions),
                "became leader"
            );
        } else {
            let reason = match rec.and_then(LeaseRecord::holder) {
                Some(h) if h != self.identity => format!("the lease is held by {h}"),
                _ => match &core.last_error {
                    Some(e) => format!("no successful renew within the renew deadline ({e})"),
                    None => "no successful renew within the renew deadline".into(),
                },
            };
            tracing::warn!(identity = %self.identity, lease = %self.name, %reason, "lost leadership");
        }
    }
}

async fn run(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut core = inner.core.lock().await;
            if core.stopped {
                return;
            }
            let started = Instant::now();
            inner.attempt(&mut core).await;
            inner.publish(&core);
            // Wake for the next attempt, or earlier to publish a lapse at the deadline.
            let next = started + inner.timing.retry_period;
            match *inner.until.lock().expect("until") {
                Some(u) if u > Instant::now() && u < next => u,
                _ => next,
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests;

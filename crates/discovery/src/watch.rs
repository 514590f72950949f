//! The glue: watch-event streams -> [`Index`] -> one route-table swap per batch.
//!
//! It takes streams, not a client, so tests feed events directly. Each stream is one
//! [`Feed`]: a kind (InferenceEndpoints, EndpointSlices or Secrets) in a scope (a namespace,
//! or all).
//! A relist (`Init` .. `InitDone`) is buffered and replaces the feed's objects at `InitDone`;
//! until then, and while a watch fails, the last table keeps serving. Nothing is published
//! before every feed has completed its first list; then readiness turns true. Events that are
//! ready together are applied together and published with one swap, so a burst is one rebuild
//! and a single event is published as soon as it is read.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, Stream, StreamExt};
use infergate_config::Defaults;
use infergate_spec::{PublishSpecs, Readiness};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::index::{Index, StatusUpdate};
use crate::metrics;
use infergate_metrics::{Counter, Gauge, Registry};

/// Most events applied before a rebuild, so a flood cannot delay publishing indefinitely.
const MAX_BATCH: usize = 4096;

/// The kind a feed carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// `InferenceEndpoint` objects (as [`DynamicObject`], parsed one by one so that a
    /// malformed one is skipped instead of failing the whole list).
    Endpoints,
    /// `EndpointSlice` objects.
    Slices,
    /// `Secret` objects (the endpoints' keys; only their auth entries are kept).
    Secrets,
}

impl FeedKind {
    /// The Kubernetes kind, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Endpoints => "InferenceEndpoint",
            FeedKind::Slices => "EndpointSlice",
            FeedKind::Secrets => "Secret",
        }
    }
}

enum Item {
    Endpoint(watcher::Result<Event<DynamicObject>>),
    Slice(watcher::Result<Event<EndpointSlice>>),
    Secret(watcher::Result<Event<Secret>>),
}

/// One watch stream: a kind in a scope.
pub struct Feed {
    kind: FeedKind,
    namespace: Option<String>,
    stream: BoxStream<'static, Item>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("kind", &self.kind)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// InferenceEndpoints of `namespace` (`None`: all namespaces).
    pub fn endpoints<S>(namespace: Option<&str>, s: S) -> Feed
    where
        S: Stream<Item = watcher::Result<Event<DynamicObject>>> + Send + 'static,
    {
        Feed {
            kind: FeedKind::Endpoints,
            namespace: namespace.map(str::to_string),
            stream: s.map(Item::Endpoint).boxed(),
        }
    }

    /// EndpointSlices of `namespace` (`None`: all namespaces).
    pub fn slices<S>(namespace: Option<&str>, s: S) -> Feed
    where
        S: Stream<Item = watcher::Result<Event<EndpointSlice>>> + Send + 'static,
    {
        Feed {
            kind: FeedKind::Slices,
            namespace: namespace.map(str::to_string),
            stream: s.map(Item::Slice).boxed(),
        }
    }

    /// Secrets of `namespace` (`None`: all namespaces), for the endpoints' keys.
    pub fn secrets<S>(namespace: Option<&str>, s: S) -> Feed
    where
        S: Stream<Item = watcher::Result<Event<Secret>>> + Send + 'static,
    {
        Feed {
            kind: FeedKind::Secrets,
            namespace: namespace.map(str::to_string),
            stream: s.map(Item::Secret).boxed(),
        }
    }
}

#[derive(Default)]
struct Staging {
    endpoints: Vec<DynamicObject>,
    slices: Vec<EndpointSlice>,
    secrets: Vec<Secret>,
}

struct FeedState {
    kind: FeedKind,
    namespace: Option<String>,
    /// Completed one full list.
    synced: bool,
    /// Buffer of the relist in progress.
    staging: Option<Staging>,
    /// The last item was not an error (or none came for a recovery window).
    up: bool,
    /// When the last error arrived.
    last_error: Option<Instant>,
    /// `infergate_discovery_watch_up{kind, namespace}`.
    up_gauge: Gauge,
    /// `infergate_discovery_lists_total{kind, namespace}`.
    lists: Counter,
    /// `infergate_discovery_watch_errors_total{kind, namespace}`.
    errors: Counter,
}

impl FeedState {
    fn new(feed: &Feed, registry: &Registry) -> Self {
        let ns = feed.namespace.as_deref().unwrap_or("*");
        let labels = [("kind", feed.kind.as_str()), ("namespace", ns)];
        FeedState {
            kind: feed.kind,
            namespace: feed.namespace.clone(),
            synced: false,
            staging: None,
            up: true,
            last_error: None,
            up_gauge: registry.gauge(metrics::WATCH_UP, &labels),
            lists: registry.counter(metrics::LISTS_TOTAL, &labels),
            errors: registry.counter(metrics::WATCH_ERRORS_TOTAL, &labels),
        }
    }

    fn ns_label(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| "*".into())
    }
}

/// Runs the index over feeds and publishes to a router (any [`PublishSpecs`]).
pub struct Discovery {
    index: Index,
    publisher: Arc<dyn PublishSpecs>,
    readiness: Option<Arc<Readiness>>,
    status: Option<mpsc::UnboundedSender<StatusUpdate>>,
    recovery: Duration,
    registry: Registry,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    /// Publishes to `publisher` (the proxy's `Router`); deployments' settings resolve over
    /// `defaults`.
    pub fn new(defaults: Defaults, publisher: Arc<dyn PublishSpecs>) -> Self {
        Discovery {
            index: Index::new(defaults),
            publisher,
            readiness: None,
            status: None,
            recovery: Duration::from_secs(61),
            registry: Registry::new(),
        }
    }

    /// Refuses `requestSettings` above `ceilings` (the router's `requestSettingsCeilings`).
    pub fn with_ceilings(mut self, ceilings: infergate_config::RequestSettingsCeilings) -> Self {
        self.index = std::mem::replace(&mut self.index, Index::new(Defaults::default()))
            .with_ceilings(ceilings);
        self
    }

    /// Counts in `registry` (the server's, so that `/metrics` shows discovery's health); without
    /// it, in a registry of its own that nothing renders.
    pub fn with_registry(mut self, registry: &Registry) -> Self {
        registry.describe(metrics::FAMILIES);
        self.registry = registry.clone();
        self
    }

    /// A failed watch counts as up again when no further error came for `window` (a watch
    /// that resumed on a quiet cluster yields no event to prove it). Make it longer than the
    /// longest retry delay; the default is 61 s (twice the default 30 s, plus a second).
    pub fn with_recovery_window(mut self, window: Duration) -> Self {
        self.recovery = window;
        self
    }

    /// Trusts the EndpointSlices of these managers (`discovery.kube.endpointSliceManagers`)
    /// instead of Kubernetes' EndpointSlice controller alone.
    pub fn with_slice_managers(mut self, managers: Vec<String>) -> Self {
        self.index.set_slice_managers(managers);
        self
    }

    /// Marks `readiness` published after the first full sync of every feed.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Sends status updates to `tx` (the status writer, or a test).
    pub fn with_status_sink(mut self, tx: mpsc::UnboundedSender<StatusUpdate>) -> Self {
        self.status = Some(tx);
        self
    }

    /// Runs [`Discovery::run`] on a task of its own, watched: should that task ever end (a
    /// panic, or every feed ended; watch streams never do), readiness fails for good (so
    /// `/readyz` answers 503 and the pod leaves its Services), `infergate_discovery_synced`
    /// drops to 0 and an ERROR log says why. The last route table keeps serving meanwhile.
    /// Aborting the returned handle stops discovery quietly.
    pub fn spawn(self, feeds: Vec<Feed>) -> tokio::task::JoinHandle<()> {
        let readiness = self.readiness.clone();
        let synced = self.registry.gauge(metrics::SYNCED, &[]);
        let inner = AbortOnDrop(tokio::spawn(self.run(feeds)));
        tokio::spawn(async move {
            let mut inner = inner;
            let outcome = (&mut inner.0).await;
            if let Some(r) = &readiness {
                r.set_failed();
            }
            synced.set(0.0);
            match outcome {
                Err(e) if e.is_panic() => {
                    let why = infergate_metrics::panic_message(e.into_panic().as_ref());
                    tracing::error!(
                        panic = %why,
                        "discovery: the discovery task panicked; the route table no longer follows \
                         the cluster: /readyz answers 503 from now on (restart the pod)"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "discovery: the discovery task was cancelled; /readyz answers 503 from now on \
                     (restart the pod)"
                ),
                Ok(()) => tracing::error!(
                    "discovery: every watch stream ended; the route table no longer follows the \
                     cluster: /readyz answers 503 from now on (restart the pod)"
                ),
            }
        })
    }

    /// Consumes the feeds until they all end (watch streams never do).
    pub async fn run(mut self, feeds: Vec<Feed>) {
        let mut states: Vec<FeedState> = feeds
            .iter()
            .map(|f| FeedState::new(f, &self.registry))
            .collect();
        for s in &states {
            s.up_gauge.set(1.0);
        }
        let synced = self.registry.gauge(metrics::SYNCED, &[]);
        synced.set(0.0);
        let mut merged: SelectAll<_> = futures_util::stream::select_all(
            feeds
                .into_iter()
                .enumerate()
                .map(|(i, f)| f.stream.map(move |it| (i, it))),
        );
        let mut synced_all = false;
        let mut open = true;
        while open {
            let quiet_since = states
                .iter()
                .filter(|s| !s.up)
                .filter_map(|s| s.last_error)
                .min();
            let next = match quiet_since {
                Some(t) => tokio::select! {
                    n = merged.next() => n,
                    _ = tokio::time::sleep_until(t + self.recovery) => {
                        let now = Instant::now();
                        for st in states.iter_mut().filter(|s| !s.up) {
                            if st.last_error.is_some_and(|e| now >= e + self.recovery) {
                                recovered(st);
                            }
                        }
                        continue;
                    }
                },
                None => merged.next().await,
            };
            let Some((i, item)) = next else {
                break;
            };
            let first_seen = Instant::now();
            self.handle(&mut states[i], item);
            for _ in 0..MAX_BATCH {
                match merged.next().now_or_never() {
                    Some(Some((i, item))) => self.handle(&mut states[i], item),
                    Some(None) => {
                        open = false;
                        break;
                    }
                    None => break,
                }
            }
            if !synced_all {
                if !states.iter().all(|s| s.synced) {
                    continue;
                }
                synced_all = true;
                self.publish(true, first_seen);
                if let Some(r) = &self.readiness {
                    r.set_published(true);
                }
                synced.set(1.0);
                let (known, routed) = self.index.counts();
                tracing::info!(
                    inference_endpoints = known,
                    routed,
                    "discovery: first full sync of every watch; route table published, ready"
                );
            } else if self.index.is_dirty() {
                self.publish(false, first_seen);
            }
        }
    }

    fn handle(&mut self, st: &mut FeedState, item: Item) {
        let ok = match item {
            Item::Endpoint(Ok(ev)) => {
                self.endpoint_event(st, ev);
                true
            }
            Item::Slice(Ok(ev)) => {
                self.slice_event(st, ev);
                true
            }
            Item::Secret(Ok(ev)) => {
                self.secret_event(st, ev);
                true
            }
            Item::Endpoint(Err(e)) | Item::Slice(Err(e)) | Item::Secret(Err(e)) => {
                watch_failed(st, &e);
                false
            }
        };
        if ok && !st.up {
            recovered(st);
        }
    }

    fn endpoint_event(&mut self, st: &mut FeedState, ev: Event<DynamicObject>) {
        match ev {
            Event::Init => st.staging = Some(Staging::default()),
            Event::InitApply(o) => st.staging.get_or_insert_default().endpoints.push(o),
            Event::InitDone => {
                let objs = st.staging.take().unwrap_or_default().endpoints;
                self.index.reset_endpoints(st.namespace.as_deref(), &objs);
                listed(st, objs.len());
            }
            Event::Apply(o) => self.index.apply_endpoint(&o),
            Event::Delete(o) => self.index.delete_endpoint(&o),
        }
    }

    fn slice_event(&mut self, st: &mut FeedState, ev: Event<EndpointSlice>) {
        match ev {
            Event::Init => st.staging = Some(Staging::default()),
            Event::InitApply(o) => st.staging.get_or_insert_default().slices.push(o),
            Event::InitDone => {
                let objs = st.staging.take().unwrap_or_default().slices;
                self.index.reset_slices(st.namespace.as_deref(), &objs);
                listed(st, objs.len());
            }
            Event::Apply(o) => self.index.apply_slice(&o),
            Event::Delete(o) => self.index.delete_slice(&o),
        }
    }

    fn secret_event(&mut self, st: &mut FeedState, ev: Event<Secret>) {
        match ev {
            Event::Init => st.staging = Some(Staging::default()),
            Event::InitApply(o) => st.staging.get_or_insert_default().secrets.push(o),
            Event::InitDone => {
                let objs = st.staging.take().unwrap_or_default().secrets;
                self.index.reset_secrets(st.namespace.as_deref(), &objs);
                listed(st, objs.len());
            }
            Event::Apply(o) => self.index.apply_secret(&o),
            Event::Delete(o) => self.index.delete_secret(&o),
        }
    }

    fn publish(&mut self, force: bool, since: Instant) {
        let changes = self.index.refresh();
        for r in &changes.reports {
            if r.is_problem {
                tracing::warn!(object = %r.object, reason = %r.reason, "discovery: object not served");
            } else {
                tracing::info!(object = %r.object, reason = %r.reason, "discovery: object served again");
            }
        }
        if changes.specs_changed || force {
            self.publisher.publish_specs(self.index.specs());
            let r = &self.registry;
            r.counter(metrics::PUBLISHES_TOTAL, &[]).increment(1);
            r.histogram(metrics::PUBLISH_DURATION_SECONDS, &[])
                .record(since.elapsed().as_secs_f64());
        }
        let (known, routed) = self.index.counts();
        let endpoints = |state| self.registry.gauge(metrics::ENDPOINTS, &[("state", state)]);
        endpoints("routed").set(routed as f64);
        endpoints("not_routed").set(known.saturating_sub(routed) as f64);
        if let Some(tx) = &self.status {
            for s in changes.statuses {
                let _ = tx.send(s);
            }
        }
    }
}

/// Aborts the task when dropped (the supervisor was aborted: stop what it watches).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn listed(st: &mut FeedState, n: usize) {
    st.lists.increment(1);
    if st.synced {
        tracing::info!(
            kind = st.kind.as_str(),
            namespace = %st.ns_label(),
            objects = n,
            "discovery: relisted"
        );
    } else {
        tracing::debug!(
            kind = st.kind.as_str(),
            namespace = %st.ns_label(),
            objects = n,
            "discovery: listed"
        );
    }
    st.synced = true;
}

fn recovered(st: &mut FeedState) {
    st.up = true;
    st.up_gauge.set(1.0);
    tracing::info!(
        kind = st.kind.as_str(),
        namespace = %st.ns_label(),
        "discovery: watch recovered"
    );
}

fn watch_failed(st: &mut FeedState, e: &watcher::Error) {
    let gone = matches!(e, watcher::Error::WatchError(s) if s.code == 410);
    st.errors.increment(1);
    st.up_gauge.set(0.0);
    st.up = false;
    st.last_error = Some(Instant::now());
    if gone {
        tracing::info!(
            kind = st.kind.as_str(),
            namespace = %st.ns_label(),
            "discovery: watch expired (410 Gone); relisting, the last route table keeps serving"
        );
    } else {
        tracing::warn!(
            kind = st.kind.as_str(),
            namespace = %st.ns_label(),
            error = %e,
            "discovery: watch failed; retrying with backoff, the last route table keeps serving"
        );
    }
}

#[cfg(test)]
mod tests;

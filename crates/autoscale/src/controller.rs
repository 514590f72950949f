//! The autoscaler's loop: on the replica that leads, each autoscaled deployment is decided every
//! `pollingIntervalSeconds` (at once when requests wait for a deployment at zero), and a new
//! replica count is written through the workload's `scale` subresource, with an Event on the
//! InferenceEndpoint, metrics, and the status view for the status writer.
//!
//! Without Kubernetes (a static configuration) decisions are only logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use infergate_config::{ScaleSettings, ScaleTargetRef};
use infergate_discovery::crd::DeploymentScale;
use infergate_discovery::{EndpointScale, ObjectKey, ScaleBoard};
use infergate_metrics::{Counter, Describe, Gauge, Kind, Registry};
use infergate_spec::{AutoscaleTarget, DeploymentLoad};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::time::Instant;

use crate::decide::{Decider, Decision, Observation};

/// Desired replicas of each autoscaled deployment, by `endpoint` and `deployment`.
pub const DESIRED_REPLICAS: &str = "infergate_autoscaler_desired_replicas";
/// Replicas the workload had at the last decision, by `endpoint` and `deployment`.
pub const CURRENT_REPLICAS: &str = "infergate_autoscaler_current_replicas";
/// Replica changes written, by `endpoint`, `deployment` and `direction` (`up`, `down`).
pub const DECISIONS_TOTAL: &str = "infergate_autoscaler_decisions_total";
/// 1 on the replica that holds the autoscaler Lease (and acts), else 0.
pub const LEADER: &str = "infergate_autoscaler_leader";
/// Failed reads or writes of a scale subresource (or of HPAs), by `endpoint` and `deployment`.
pub const ERRORS_TOTAL: &str = "infergate_autoscaler_errors_total";

/// The autoscaler's metric families.
pub const FAMILIES: &[Describe] = &[
    Describe::new(
        DESIRED_REPLICAS,
        Kind::Gauge,
        "Replicas the autoscaler wants, by endpoint and deployment.",
    ),
    Describe::new(
        CURRENT_REPLICAS,
        Kind::Gauge,
        "Replicas of the scaled workload at the last decision, by endpoint and deployment.",
    ),
    Describe::new(
        DECISIONS_TOTAL,
        Kind::Counter,
        "Replica changes written through the scale subresource, by endpoint, deployment and direction (up, down).",
    ),
    Describe::new(
        LEADER,
        Kind::Gauge,
        "1 on the replica that holds the autoscaler Lease and acts, else 0.",
    ),
    Describe::new(
        ERRORS_TOTAL,
        Kind::Counter,
        "Failed reads or writes of a scale subresource or of HPAs, by endpoint and deployment.",
    ),
];

/// Where the autoscaled deployments and their load come from (the router).
pub trait Fleet: Send + Sync + 'static {
    /// Every deployment with valid `scaleSettings`, with its load now.
    fn targets(&self) -> Vec<AutoscaleTarget>;
}

impl<F: Fn() -> Vec<AutoscaleTarget> + Send + Sync + 'static> Fleet for F {
    fn targets(&self) -> Vec<AutoscaleTarget> {
        self()
    }
}

/// Whether this replica may act now (it holds the Lease, within its renew deadline).
pub type IsLeader = Arc<dyn Fn() -> bool + Send + Sync>;

/// Timings of the loop.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This replica's name (Events' `reportingInstance`, logs).
    pub identity: String,
    /// How often the loop looks at the deployments (decisions still follow each one's
    /// `pollingIntervalSeconds`; this bounds how fast a request waiting at zero is seen).
    pub tick: Duration,
    /// How often each namespace's HPAs are listed.
    pub hpa_check: Duration,
    /// The pod start-up time assumed until one is measured (panic mode uses it).
    pub startup_guess: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            identity: "infergate".into(),
            tick: Duration::from_millis(200),
            hpa_check: Duration::from_secs(10),
            startup_guess: Duration::from_secs(30),
        }
    }
}

/// `(namespace, endpoint, deployment)`; the namespace is empty for a static configuration.
type Key = (String, String, String);

struct Target {
    decider: Decider,
    settings: ScaleSettings,
    last_at: Option<Instant>,
    view: DeploymentScale,
    /// A scale-up waiting for its pods: (when written, replicas wanted).
    starting: Option<(Instant, u32)>,
    startup: Duration,
    /// Why this deployment is not scaled: (reason, message).
    blocked: Option<(String, String)>,
    desired: Gauge,
    current: Gauge,
    up: Counter,
    down: Counter,
    errors: Counter,
}

/// The autoscaler.
pub struct Controller {
    client: Option<Client>,
    fleet: Arc<dyn Fleet>,
    is_leader: IsLeader,
    board: Option<Arc<ScaleBoard>>,
    registry: Registry,
    cfg: ControllerConfig,
    origin: Instant,
    targets: HashMap<Key, Target>,
    /// HPAs per namespace: (when listed, `Kind/name` of each HPA's target -> HPA name).
    hpas: HashMap<String, (Instant, HashMap<String, String>)>,
    leader_gauge: Gauge,
    was_leader: bool,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("identity", &self.cfg.identity)
            .finish_non_exhaustive()
    }
}

/// The plural of a workload kind (the path segment of its API).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

fn api_resource(t: &ScaleTargetRef) -> ApiResource {
    let (group, version) = t
        .api_version
        .split_once('/')
        .unwrap_or(("", t.api_version.as_str()));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: t.api_version.clone(),
        kind: t.kind.clone(),
        plural: plural(&t.kind),
    }
}

impl Controller {
    /// An autoscaler scaling through `client` (none: decisions are only logged), acting only
    /// while `is_leader` says so, publishing its status view on `board`.
    pub fn new(
        client: Option<Client>,
        fleet: Arc<dyn Fleet>,
        is_leader: IsLeader,
        board: Option<Arc<ScaleBoard>>,
        registry: &Registry,
        cfg: ControllerConfig,
    ) -> Self {
        registry.describe(FAMILIES);
        Controller {
            client,
            fleet,
            is_leader,
            board,
            registry: registry.clone(),
            origin: Instant::now(),
            targets: HashMap::new(),
            hpas: HashMap::new(),
            leader_gauge: registry.gauge(LEADER, &[]),
            was_leader: false,
            cfg,
        }
    }

    /// Runs the loop until the task is aborted. Should the loop ever stop (a panic), the
    /// `infergate_autoscaler_leader` gauge drops to 0, an ERROR log says why, and `on_stop` runs
    /// (the binary gives the Lease up there, so that another replica's autoscaler takes over
    /// instead of this replica holding the Lease while deciding nothing).
    pub fn spawn_with(
        mut self,
        on_stop: impl FnOnce() + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let gauge = self.leader_gauge.clone();
            let identity = self.cfg.identity.clone();
            let end = infergate_metrics::supervised(async {
                let mut tick = tokio::time::interval(self.cfg.tick);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    self.round().await;
                }
            })
            .await;
            gauge.set(0.0);
            tracing::error!(
                %identity,
                reason = %end,
                "autoscaler: the decision loop stopped; this replica scales nothing from now on \
                 and gives its leadership up (restart the pod)"
            );
            on_stop();
        })
    }

    /// [`Controller::spawn_with`] with nothing to do when the loop stops.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        self.spawn_with(|| {})
    }

    /// One look at every deployment.
    pub async fn round(&mut self) {
        let leader = (self.is_leader)();
        self.leader_gauge.set(if leader { 1.0 } else { 0.0 });
        if leader != self.was_leader {
            tracing::info!(
                identity = %self.cfg.identity,
                leader,
                "autoscaler: {}",
                if leader { "this replica acts" } else { "this replica stopped acting" }
            );
            self.was_leader = leader;
            if !leader {
                // A new term starts from scratch: its windows are not this term's.
                self.targets.clear();
                if let Some(b) = &self.board {
                    b.clear();
                }
            }
        }
        if !leader {
            return;
        }
        let now = Instant::now();
        let list = self.fleet.targets();
        let keys: Vec<Key> = list
            .iter()
            .map(|t| {
                (
                    t.spec.namespace.clone().unwrap_or_default(),
                    t.endpoint.clone(),
                    t.deployment.clone(),
                )
            })
            .collect();
        self.targets.retain(|k, _| keys.contains(k));
        for (key, t) in keys.into_iter().zip(&list) {
            self.step(key, t, now).await;
        }
        self.publish();
    }

    fn target(&mut self, key: &Key, settings: &ScaleSettings) -> &mut Target {
        let registry = &self.registry;
        let startup = self.cfg.startup_guess;
        let t = self.targets.entry(key.clone()).or_insert_with(|| {
            let labels = [("endpoint", key.1.as_str()), ("deployment", key.2.as_str())];
            let dir = |d: &'static str| {
                registry.counter(DECISIONS_TOTAL, &[labels[0], labels[1], ("direction", d)])
            };
            Target {
                decider: Decider::new(settings),
                settings: settings.clone(),
                last_at: None,
                view: DeploymentScale::default(),
                starting: None,
                startup,
                blocked: None,
                desired: registry.gauge(DESIRED_REPLICAS, &labels),
                current: registry.gauge(CURRENT_REPLICAS, &labels),
                up: dir("up"),
                down: dir("down"),
                errors: registry.counter(ERRORS_TOTAL, &labels),
            }
        });
        if t.settings != *settings {
            t.decider.set_settings(settings);
            t.settings = settings.clone();
        }
        t
    }

    async fn step(&mut self, key: Key, at: &AutoscaleTarget, now: Instant) {
        let settings = &at.spec.settings;
        let load = at.load;
        let elapsed = now - self.origin;
        let t = self.target(&key, settings);
        let polling = Duration::from_secs(u64::from(settings.polling_interval_seconds));
        // Requests waiting for a deployment at zero are not left to the next poll.
        let cold = load.ready_pods == 0 && load.queued > 0 && t.view.desired == 0;
        if t.last_at.is_some_and(|l| now - l < polling) && !cold {
            return;
        }
        t.last_at = Some(now);
        let (Some(client), Some(ns), Some(target_ref)) = (
            self.client.clone(),
            at.spec.namespace.clone(),
            settings.scale_target_ref.clone(),
        ) else {
            self.log_only(&key, at, elapsed);
            return;
        };
        let kind_name = format!("{}/{}", target_ref.kind, target_ref.name);
        if let Some(hpa) = self.hpa_on(&client, &ns, &kind_name, now).await {
            let t = self.targets.get_mut(&key).expect("inserted above");
            let msg = format!(
                "HorizontalPodAutoscaler {ns}/{hpa} scales {kind_name}: infergate does not act on it (two autoscalers would fight); fix: delete the HPA, or remove scaleSettings from deployment {}",
                key.2
            );
            if t.blocked.as_ref().map(|b| &b.0) != Some(&"HPAConflict".to_string()) {
                tracing::warn!(endpoint = %key.1, deployment = %key.2, "autoscaler: {msg}");
            }
            t.blocked = Some(("HPAConflict".into(), msg));
            t.view.target = kind_name;
            return;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &api_resource(&target_ref));
        let current = match api.get_scale(&target_ref.name).await {
            Ok(s) => s.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32,
            Err(e) => {
                let t = self.targets.get_mut(&key).expect("inserted above");
                t.errors.increment(1);
                let (reason, msg) = match &e {
                    kube::Error::Api(s) if s.code == 404 => (
                        "TargetNotFound",
                        format!(
                            "scaleTargetRef {kind_name} ({}) not found in namespace {ns}, or it has no scale subresource; fix: name an existing Deployment, StatefulSet or other workload with a scale subresource",
                            target_ref.api_version
                        ),
                    ),
                    kube::Error::Api(s) if s.code == 403 => (
                        "Forbidden",
                        format!(
                            "not allowed to read the scale of {kind_name}: {}; fix: grant get/patch on its scale subresource to the router's service account",
                            s.message
                        ),
                    ),
                    other => (
                        "ScaleReadFailed",
                        format!("cannot read the scale of {kind_name}: {other}"),
                    ),
                };
                if t.blocked.as_ref().map(|b| b.0.as_str()) != Some(reason) {
                    tracing::warn!(endpoint = %key.1, deployment = %key.2, "autoscaler: {msg}");
                }
                t.blocked = Some((reason.into(), msg));
                t.view.target = kind_name;
                return;
            }
        };
        let t = self.targets.get_mut(&key).expect("inserted above");
        t.blocked = None;
        // Start-up time: from a scale-up write until the router sees the pods ready.
        if let Some((since, want)) = t.starting
            && load.ready_pods >= want.min(current)
        {
            let sample = now - since;
            t.startup = if t.startup == self.cfg.startup_guess {
                sample
            } else {
                (t.startup * 3 + sample) / 4
            };
            t.starting = None;
        }
        let d = t
            .decider
            .decide(&observation(&load, current, t.startup), elapsed);
        t.desired.set(f64::from(d.desired));
        t.current.set(f64::from(current));
        t.view.target = kind_name.clone();
        t.view.current = current;
        t.view.desired = d.desired;
        if d.desired == current {
            return;
        }
        // Checked again right before the write: a replica whose leadership lapsed during the
        // reads does not write.
        if !(self.is_leader)() {
            return;
        }
        let patch = json!({"spec": {"replicas": d.desired}});
        let t = self.targets.get_mut(&key).expect("inserted above");
        match api
            .patch_scale(
                &target_ref.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                let up = d.desired > current;
                if up { &t.up } else { &t.down }.increment(1);
                if up {
                    t.starting = Some((now, d.desired));
                }
                t.view.current = d.desired;
                t.view.last_decision = d.reason.to_string();
                t.view.last_scale_time = Some(rfc3339(Timestamp::now(), false));
                tracing::info!(
                    endpoint = %key.1,
                    deployment = %key.2,
                    target = %kind_name,
                    from = current,
                    to = d.desired,
                    panic = d.panic,
                    reason = %d.reason,
                    busy = load.busy,
                    queued = load.queued,
                    "autoscaler: scaled"
                );
                let note = format!(
                    "deployment {}: {kind_name} {current} -> {}: {}",
                    key.2, d.desired, d.reason
                );
                let reason = if up { "ScaledUp" } else { "ScaledDown" };
                self.event(&client, &ns, &key.1, &target_ref, reason, &note)
                    .await;
            }
            Err(e) => {
                t.errors.increment(1);
                tracing::warn!(endpoint = %key.1, deployment = %key.2, target = %kind_name, error = %e, "autoscaler: cannot write the scale; retrying at the next decision");
            }
        }
    }

    /// A static configuration: the decision is logged when it changes, nothing is written.
    fn log_only(&mut self, key: &Key, at: &AutoscaleTarget, elapsed: Duration) {
        let load = at.load;
        let t = self.targets.get_mut(key).expect("inserted before");
        let current = load.ready_pods;
        let d: Decision = t
            .decider
            .decide(&observation(&load, current, t.startup), elapsed);
        t.desired.set(f64::from(d.desired));
        t.current.set(f64::from(current));
        if d.desired != t.view.desired || t.last_at.is_none() {
            if d.desired != current {
                tracing::info!(
                    endpoint = %key.1,
                    deployment = %key.2,
                    pods = current,
                    desired = d.desired,
                    reason = %d.reason,
                    "autoscaler: would scale (static configuration: nothing to scale, decision only logged)"
                );
            }
            t.view.desired = d.desired;
        }
        t.view.current = current;
    }

    /// The HPA targeting `kind_name` in `ns`, if any (listed at most every `hpa_check`).
    async fn hpa_on(
        &mut self,
        client: &Client,
        ns: &str,
        kind_name: &str,
        now: Instant,
    ) -> Option<String> {
        let stale = self
            .hpas
            .get(ns)
            .is_none_or(|(at, _)| now - *at >= self.cfg.hpa_check);
        if stale {
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    let map = list
                        .items
                        .into_iter()
                        .filter_map(|h| {
                            let name = h.metadata.name?;
                            let r = h.spec.scale_target_ref;
                            Some((format!("{}/{}", r.kind, r.name), name))
                        })
                        .collect();
                    self.hpas.insert(ns.to_string(), (now, map));
                }
                Err(e) => {
                    // Not knowing is not a conflict: keep the last answer, try again later.
                    tracing::debug!(namespace = ns, error = %e, "autoscaler: cannot list HPAs");
                    let entry = self
                        .hpas
                        .entry(ns.to_string())
                        .or_insert_with(|| (now, HashMap::new()));
                    entry.0 = now;
                }
            }
        }
        self.hpas.get(ns)?.1.get(kind_name).cloned()
    }

    async fn event(
        &self,
        client: &Client,
        ns: &str,
        endpoint: &str,
        target: &ScaleTargetRef,
        reason: &str,
        note: &str,
    ) {
        let ar = ApiResource {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            api_version: "events.k8s.io/v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
        };
        let obj = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{endpoint}."), "namespace": ns},
            "eventTime": rfc3339(Timestamp::now(), true),
            "reportingController": "infergate.io/autoscaler",
            "reportingInstance": self.cfg.identity,
            "action": "Scale",
            "reason": reason,
            "type": "Normal",
            "note": note,
            "regarding": {
                "apiVersion": "infergate.io/v1",
                "kind": "InferenceEndpoint",
                "namespace": ns,
                "name": endpoint,
            },
            "related": {
                "apiVersion": target.api_version,
                "kind": target.kind,
                "namespace": ns,
                "name": target.name,
            },
        });
        let Ok(obj) = serde_json::from_value::<DynamicObject>(obj) else {
            return;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        if let Err(e) = api.create(&PostParams::default(), &obj).await {
            tracing::debug!(error = %e, "autoscaler: cannot create an Event");
        }
    }

    /// Puts every endpoint's view on the board for the status writer.
    fn publish(&self) {
        let Some(board) = &self.board else { return };
        let mut by_endpoint: BTreeMap<ObjectKey, EndpointScale> = BTreeMap::new();
        for ((ns, ep, dep), t) in &self.targets {
            if ns.is_empty() {
                continue;
            }
            let e = by_endpoint.entry(ObjectKey::new(ns, ep)).or_default();
            e.deployments.insert(dep.clone(), t.view.clone());
            let cond = match &t.blocked {
                Some((reason, msg)) => (false, reason.clone(), msg.clone()),
                None => (
                    true,
                    "Autoscaling".to_string(),
                    format!(
                        "scaled by {} through the scale subresource",
                        self.cfg.identity
                    ),
                ),
            };
            // A blocked deployment makes the endpoint's condition False.
            match &e.condition {
                Some((false, _, _)) => {}
                _ => e.condition = Some(cond),
            }
        }
        for (k, v) in by_endpoint {
            board.set(k, v);
        }
    }
}

/// What the decision sees of a deployment whose workload has `current` replicas.
fn observation(load: &DeploymentLoad, current: u32, startup: Duration) -> Observation {
    Observation {
        current,
        ready: load.ready_pods,
        busy: load.busy,
        queued: load.queued,
        slots_per_pod: load.slots_per_pod,
        max_queue_wait: load.max_queue_wait,
        service_time: load.service_time,
        startup_time: startup,
    }
}

fn rfc3339(t: Timestamp, micros: bool) -> String {
    if micros {
        t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_of_workload_kinds() {
        assert_eq!(plural("Deployment"), "deployments");
        assert_eq!(plural("StatefulSet"), "statefulsets");
        assert_eq!(plural("InferencePolicy"), "inferencepolicies");
        assert_eq!(plural("Ingress"), "ingresses");
    }

    #[test]
    fn api_resources_split_group_and_version() {
        let r = api_resource(&ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "x".into(),
        });
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.plural.as_str()),
            ("apps", "v1", "statefulsets")
        );
    }

    /// A decision loop that breaks (here its view of the fleet panics) does not hold the
    /// leadership while deciding nothing: the leader gauge drops to 0 and `on_stop` runs (the
    /// binary gives the Lease up there).
    #[tokio::test]
    async fn a_decision_loop_that_panics_gives_its_leadership_up() {
        let registry = Registry::new();
        let fleet: Arc<dyn Fleet> =
            Arc::new(|| -> Vec<AutoscaleTarget> { panic!("the fleet view broke") });
        let c = Controller::new(
            None,
            fleet,
            Arc::new(|| true),
            None,
            &registry,
            ControllerConfig {
                tick: Duration::from_millis(10),
                ..ControllerConfig::default()
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = c.spawn_with(move || {
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("on_stop ran")
            .unwrap();
        task.await.expect("the task itself ends cleanly");
        let text = registry.render();
        assert!(text.contains(&format!("{LEADER} 0")), "{text}");
    }
}

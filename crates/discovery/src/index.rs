//! The pure discovery index: InferenceEndpoints, EndpointSlices and Secrets in, endpoint
//! specs, statuses and reports out. No I/O, no clock, no async.
//!
//! Secrets: only Secrets labelled [`AUTH_SECRET_LABEL`]`=true` are read (the watch selects
//! them on the API server; an unlabelled one that arrives anyway is treated as absent). Each
//! is known by name (so that "missing" is told apart from "lacks the entries"), but only its
//! auth entries (`primaryKey`, `secondaryKey`, `signingKey`) are kept; nothing else of a
//! Secret is stored, and the `Debug` of a stored Secret prints entry names only.
//!
//! EndpointSlices: only slices of a trusted manager (label [`MANAGED_BY_LABEL`], by default
//! Kubernetes' EndpointSlice controller) are used, and of those only endpoints whose
//! `targetRef` is a Pod of the slice's own namespace. Anything else is refused: a warning
//! report, and the InferenceEndpoint's status says so (condition `EndpointsTrusted`).
//!
//! Watch events go in through `apply_*`, `delete_*` and `reset_*` (a relist replaces every
//! object of a kind in a scope). Each call marks the URL names it may change as dirty;
//! [`Index::refresh`] rebuilds only those, keeps the spec list sorted by name, and returns the
//! status updates and reports that the rebuild produced.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use infergate_auth::{
    AuthMode, AuthPolicy, SECRET_PRIMARY_KEY, SECRET_SECONDARY_KEY, SECRET_SIGNING_KEY,
};
use infergate_config::{
    ConfigError, Defaults, EndpointConfig, RequestSettingsCeilings, ResolvedSettings,
    ScaleSettings, UpstreamProtocol, is_valid_name,
};
use infergate_spec::{AutoscaleSpec, DeploymentSpec, EndpointSpec, PodSpec, PodTransport};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::crd::{
    AuthRef, DeploymentStatus, EndpointCondition, InferenceEndpointSpec, InferenceEndpointStatus,
    PortRef,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// The label a Secret needs for the router to read it (value [`AUTH_SECRET_LABEL_VALUE`]).
pub const AUTH_SECRET_LABEL: &str = "infergate.io/auth";

/// The value of [`AUTH_SECRET_LABEL`].
pub const AUTH_SECRET_LABEL_VALUE: &str = "true";

/// The label selector of the Secret watch.
pub const AUTH_SECRET_SELECTOR: &str = "infergate.io/auth=true";

/// The status condition that lists refused (untrusted) EndpointSlices and endpoints; present
/// only while something is refused.
pub const ENDPOINTS_TRUSTED: &str = "EndpointsTrusted";

/// Most refusals spelled out in a status message (the rest are counted).
const MAX_REFUSALS_SHOWN: usize = 5;

/// `namespace/name` of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an object is not routed: the key, the value, the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.traffic`.
    pub key: String,
    /// The offending value.
    pub value: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: value `{}` is invalid: {}; fix: {}",
            self.key, self.value, self.problem, self.fix
        )
    }
}

impl Problem {
    fn new(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Problem {
            key: key.into(),
            value: value.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid {
                key,
                value,
                problem,
                fix,
            } => Problem {
                key,
                value,
                problem,
                fix,
            },
            other => Problem::new("spec", "", other.to_string(), "correct the spec"),
        }
    }
}

/// Something the glue should log: an object skipped, a name conflict, a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `InferenceEndpoint ns/name` or `EndpointSlice ns/name`.
    pub object: String,
    /// Why.
    pub reason: String,
    /// `false` for good news (an object accepted again).
    pub is_problem: bool,
}

/// A status the glue should write (it differs from what the object shows).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// The InferenceEndpoint.
    pub key: ObjectKey,
    /// The status to write (conditions without `lastTransitionTime`).
    pub status: InferenceEndpointStatus,
    /// The status the object shows now, for carrying transition times over.
    pub observed: Option<InferenceEndpointStatus>,
}

/// What one [`Index::refresh`] produced.
#[derive(Debug, Default)]
pub struct Changes {
    /// Whether the spec list changed (publish it).
    pub specs_changed: bool,
    /// Statuses to write.
    pub statuses: Vec<StatusUpdate>,
    /// Lines to log.
    pub reports: Vec<Report>,
}

/// A deployment after parsing and validation.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    name: String,
    service: String,
    port: Option<PortRef>,
    scoring_path: String,
    swagger_path: String,
    settings: ResolvedSettings,
    weight: u32,
    /// `scaleSettings`: none, valid, or why not (reported in status; routing is unaffected).
    scale: Result<Option<ScaleSettings>, String>,
    /// `protocol` and `upstreamTls` (its CA file read when the spec was parsed).
    transport: PodTransport,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    deployments: Vec<Plan>,
    /// `spec.passAuthorization`.
    pass_authorization: bool,
}

#[derive(Debug, Clone)]
struct EndpointEntry {
    created: Option<Time>,
    generation: Option<i64>,
    parsed: Result<Parsed, Problem>,
    /// Opaque auth reference for the Secret watch (issue 5).
    auth: Option<AuthRef>,
    observed: Option<InferenceEndpointStatus>,
    services: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpState {
    Ready,
    /// `serving` and `terminating`: finishes its requests, takes no new ones.
    Draining,
    NotReady,
}

#[derive(Debug, Clone, PartialEq)]
struct SliceEndpoint {
    ip: IpAddr,
    name: Option<Arc<str>>,
    state: EpState,
}

#[derive(Debug, Clone, PartialEq)]
struct SlicePort {
    name: Option<String>,
    port: u16,
}

#[derive(Debug, Clone, PartialEq)]
struct SliceEntry {
    ports: Vec<SlicePort>,
    /// The trusted endpoints.
    endpoints: Vec<SliceEndpoint>,
    /// Why the slice, or some of its endpoints, are refused (empty: all trusted).
    refused: Vec<String>,
}

/// `(namespace, service)`.
type ServiceKey = (String, String);

/// The auth entries of one Secret (`primaryKey`, `secondaryKey`, `signingKey`); other entries
/// are not kept. `Debug` prints the entry names, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
struct SecretData(BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The Secret entries the index keeps.
const AUTH_ENTRIES: [&str; 3] = [SECRET_PRIMARY_KEY, SECRET_SECONDARY_KEY, SECRET_SIGNING_KEY];

/// Which objects a reset replaces: one namespace, or all.
pub type Scope<'a> = Option<&'a str>;

/// The discovery index. See the module docs.
#[derive(Debug)]
pub struct Index {
    defaults: Defaults,
    /// `endpointslice.kubernetes.io/managed-by` values whose slices are trusted.
    slice_managers: Vec<String>,
    /// The highest value each `requestSettings` override may have.
    ceilings: RequestSettingsCeilings,
    endpoints: HashMap<ObjectKey, EndpointEntry>,
    /// URL name -> namespaces of the InferenceEndpoints claiming it.
    claims: HashMap<String, BTreeSet<String>>,
    /// Service -> InferenceEndpoints naming it.
    users: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    /// Service -> slice name -> slice.
    slices: HashMap<ServiceKey, BTreeMap<String, SliceEntry>>,
    /// Slice -> its service (to follow label changes and deletions).
    slice_service: HashMap<ObjectKey, String>,
    /// Secret -> its auth entries (every Secret of the watched namespaces, entries filtered).
    secrets: HashMap<ObjectKey, SecretData>,
    /// Secret -> InferenceEndpoints naming it in `spec.auth.secretName`.
    secret_users: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    dirty: BTreeSet<String>,
    /// Built specs, sorted by name.
    specs: Vec<EndpointSpec>,
    /// Last problem reported per object (reports only on change).
    reported: HashMap<ObjectKey, String>,
    /// Last auth problem reported per routed InferenceEndpoint (reports only on change).
    reported_auth: HashMap<ObjectKey, String>,
    /// Last status handed out per object (not handed out again until it changes).
    sent: HashMap<ObjectKey, InferenceEndpointStatus>,
    reports: Vec<Report>,
}

impl Index {
    /// An empty index; deployments' request settings resolve over `defaults`.
    pub fn new(defaults: Defaults) -> Self {
        Index {
            defaults,
            slice_managers: vec![infergate_config::ENDPOINTSLICE_CONTROLLER.to_string()],
            ceilings: RequestSettingsCeilings::default(),
            endpoints: HashMap::new(),
            claims: HashMap::new(),
            users: HashMap::new(),
            slices: HashMap::new(),
            slice_service: HashMap::new(),
            secrets: HashMap::new(),
            secret_users: HashMap::new(),
            dirty: BTreeSet::new(),
            specs: Vec::new(),
            reported: HashMap::new(),
            reported_auth: HashMap::new(),
            sent: HashMap::new(),
            reports: Vec::new(),
        }
    }

    /// Trusts the EndpointSlices of these managers (label [`MANAGED_BY_LABEL`]) instead of
    /// Kubernetes' EndpointSlice controller alone (`discovery.kube.endpointSliceManagers`).
    /// Call before any slice is applied.
    pub fn set_slice_managers(&mut self, managers: Vec<String>) {
        self.slice_managers = managers;
    }

    /// Refuses `requestSettings` overrides above `ceilings` (the router's
    /// `requestSettingsCeilings`; the defaults otherwise): the object is not routed and its
    /// status names the key, the value and the ceiling.
    pub fn with_ceilings(mut self, ceilings: RequestSettingsCeilings) -> Self {
        self.ceilings = ceilings;
        self
    }

    // === InferenceEndpoints ===

    /// An InferenceEndpoint was added or changed.
    pub fn apply_endpoint(&mut self, obj: &DynamicObject) {
        let Some(key) = key_of(&obj.metadata.namespace, &obj.metadata.name) else {
            return;
        };
        let (parsed, auth) = parse_endpoint(&key.name, obj, &self.defaults, &self.ceilings);
        let entry = EndpointEntry {
            created: obj.metadata.creation_timestamp.clone(),
            generation: obj.metadata.generation,
            services: match &parsed {
                Ok(p) => p.deployments.iter().map(|d| d.service.clone()).collect(),
                Err(_) => Vec::new(),
            },
            parsed,
            auth,
            observed: obj
                .data
                .get("status")
                .and_then(|s| serde_json::from_value(s.clone()).ok()),
        };
        if let Some(old) = self.endpoints.get(&key)
            && old.parsed == entry.parsed
            && old.created == entry.created
            && old.generation == entry.generation
            && old.auth == entry.auth
        {
            // Only the status changed (our own write, most likely): nothing to rebuild, but
            // the status may now match (or not) what we want.
            let observed_changed = old.observed != entry.observed;
            self.endpoints.insert(key.clone(), entry);
            if observed_changed {
                self.dirty.insert(key.name);
            }
            return;
        }
        self.remove_endpoint(&key);
        for svc in &entry.services {
            self.users
                .entry((key.namespace.clone(), svc.clone()))
                .or_default()
                .insert(key.clone());
        }
        self.claims
            .entry(key.name.clone())
            .or_default()
            .insert(key.namespace.clone());
        if let Some(sk) = secret_key(&key.namespace, entry.auth.as_ref()) {
            self.secret_users.entry(sk).or_default().insert(key.clone());
        }
        self.endpoints.insert(key.clone(), entry);
        self.dirty.insert(key.name);
    }

    /// An InferenceEndpoint was deleted.
    pub fn delete_endpoint(&mut self, obj: &DynamicObject) {
        if let Some(key) = key_of(&obj.metadata.namespace, &obj.metadata.name) {
            self.remove_endpoint(&key);
            self.sent.remove(&key);
            self.reported.remove(&key);
            self.reported_auth.remove(&key);
        }
    }

    /// A relist: `objs` are every InferenceEndpoint in `scope` (a namespace, or all).
    pub fn reset_endpoints(&mut self, scope: Scope<'_>, objs: &[DynamicObject]) {
        let keep: HashSet<ObjectKey> = objs
            .iter()
            .filter_map(|o| key_of(&o.metadata.namespace, &o.metadata.name))
            .collect();
        let gone: Vec<ObjectKey> = self
            .endpoints
            .keys()
            .filter(|k| in_scope(scope, &k.namespace) && !keep.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_endpoint(&k);
            self.sent.remove(&k);
            self.reported.remove(&k);
            self.reported_auth.remove(&k);
        }
        for o in objs {
            self.apply_endpoint(o);
        }
    }

    fn remove_endpoint(&mut self, key: &ObjectKey) {
        let Some(old) = self.endpoints.remove(key) else {
            return;
        };
        for svc in &old.services {
            let sk = (key.namespace.clone(), svc.clone());
            if let Some(u) = self.users.get_mut(&sk) {
                u.remove(key);
                if u.is_empty() {
                    self.users.remove(&sk);
                }
            }
        }
        if let Some(c) = self.claims.get_mut(&key.name) {
            c.remove(&key.namespace);
            if c.is_empty() {
                self.claims.remove(&key.name);
            }
        }
        if let Some(sk) = secret_key(&key.namespace, old.auth.as_ref())
            && let Some(u) = self.secret_users.get_mut(&sk)
        {
            u.remove(key);
            if u.is_empty() {
                self.secret_users.remove(&sk);
            }
        }
        self.dirty.insert(key.name.clone());
    }

    // === Secrets ===

    /// A Secret was added or changed. Only its auth entries are kept, and only when it carries
    /// the label [`AUTH_SECRET_LABEL`]`=true` (without it, it counts as absent).
    pub fn apply_secret(&mut self, s: &Secret) {
        let Some(key) = key_of(&s.metadata.namespace, &s.metadata.name) else {
            return;
        };
        let labelled = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(AUTH_SECRET_LABEL))
            .is_some_and(|v| v == AUTH_SECRET_LABEL_VALUE);
        if !labelled {
            self.remove_secret(&key);
            return;
        }
        let data = SecretData(
            s.data
                .iter()
                .flatten()
                .filter(|(k, _)| AUTH_ENTRIES.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        );
        if self.secrets.get(&key) == Some(&data) {
            return;
        }
        self.secrets.insert(key.clone(), data);
        self.mark_secret(&key);
    }

    /// A Secret was deleted.
    pub fn delete_secret(&mut self, s: &Secret) {
        if let Some(key) = key_of(&s.metadata.namespace, &s.metadata.name) {
            self.remove_secret(&key);
        }
    }

    /// A relist: `secrets` are every Secret in `scope` (a namespace, or all).
    pub fn reset_secrets(&mut self, scope: Scope<'_>, secrets: &[Secret]) {
        let keep: HashSet<ObjectKey> = secrets
            .iter()
            .filter_map(|s| key_of(&s.metadata.namespace, &s.metadata.name))
            .collect();
        let gone: Vec<ObjectKey> = self
            .secrets
            .keys()
            .filter(|k| in_scope(scope, &k.namespace) && !keep.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_secret(&k);
        }
        for s in secrets {
            self.apply_secret(s);
        }
    }

    fn remove_secret(&mut self, key: &ObjectKey) {
        if self.secrets.remove(key).is_some() {
            self.mark_secret(key);
        }
    }

    fn mark_secret(&mut self, key: &ObjectKey) {
        if let Some(users) = self.secret_users.get(key) {
            for u in users {
                self.dirty.insert(u.name.clone());
            }
        }
    }

    /// The policy of an InferenceEndpoint's `spec.auth` with the Secrets known now, and why it
    /// refuses every request when it does for a reason the user can fix (never key material).
    fn auth_for(&self, key: &ObjectKey, auth: Option<&AuthRef>) -> (AuthPolicy, Option<String>) {
        let mode = auth
            .and_then(|a| a.mode.as_deref())
            .and_then(AuthMode::from_name)
            .unwrap_or_default();
        if mode == AuthMode::None {
            return (AuthPolicy::None, None);
        }
        let mode_name = mode.as_str();
        let Some(sk) = secret_key(&key.namespace, auth) else {
            return (
                AuthPolicy::default(),
                Some(format!(
                    "spec.auth.secretName is not set: mode {mode_name} needs a Secret with the keys \
                     (or set `auth: {{mode: none}}`)"
                )),
            );
        };
        let Some(data) = self.secrets.get(&sk) else {
            return (
                AuthPolicy::default(),
                Some(format!(
                    "Secret {sk} (spec.auth.secretName) not found, or without the label \
                     {AUTH_SECRET_SELECTOR} (the router reads no other Secret); fix: create it, \
                     or `kubectl -n {} label secret {} {AUTH_SECRET_SELECTOR}`",
                    sk.namespace, sk.name
                )),
            );
        };
        match AuthPolicy::from_secret_data(mode, &data.0) {
            Ok(p) if p.refuses_all() => (
                p,
                Some(format!(
                    "Secret {sk} has no `{SECRET_PRIMARY_KEY}` or `{SECRET_SECONDARY_KEY}` entry, \
                     which mode key needs"
                )),
            ),
            Ok(p) => (p, None),
            Err(e) => (AuthPolicy::default(), Some(format!("Secret {sk}: {e}"))),
        }
    }

    // === EndpointSlices ===

    /// An EndpointSlice was added or changed.
    pub fn apply_slice(&mut self, s: &EndpointSlice) {
        let Some(key) = key_of(&s.metadata.namespace, &s.metadata.name) else {
            return;
        };
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        let Some(service) = service else {
            // Not (or no longer) a Service's slice.
            self.remove_slice(&key);
            return;
        };
        let entry = self.parse_slice(&key, s);
        let old_refused = self
            .slice_service
            .get(&key)
            .and_then(|svc| self.slices.get(&(key.namespace.clone(), svc.clone())))
            .and_then(|m| m.get(&key.name))
            .map(|e| e.refused.clone());
        if !entry.refused.is_empty() && old_refused.as_ref() != Some(&entry.refused) {
            for why in &entry.refused {
                self.reports.push(Report {
                    object: format!("EndpointSlice {key}"),
                    reason: format!("refused: {why}"),
                    is_problem: true,
                });
            }
        }
        if self.slice_service.get(&key) == Some(&service) {
            let sk = (key.namespace.clone(), service);
            let slot = self.slices.entry(sk.clone()).or_default();
            if slot.get(&key.name) == Some(&entry) {
                return;
            }
            slot.insert(key.name.clone(), entry);
            self.mark_service(&sk);
            return;
        }
        self.remove_slice(&key);
        let sk = (key.namespace.clone(), service.clone());
        self.slices
            .entry(sk.clone())
            .or_default()
            .insert(key.name.clone(), entry);
        self.slice_service.insert(key, service);
        self.mark_service(&sk);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, s: &EndpointSlice) {
        if let Some(key) = key_of(&s.metadata.namespace, &s.metadata.name) {
            self.remove_slice(&key);
        }
    }

    /// A relist: `slices` are every EndpointSlice in `scope` (a namespace, or all).
    pub fn reset_slices(&mut self, scope: Scope<'_>, slices: &[EndpointSlice]) {
        let keep: HashSet<ObjectKey> = slices
            .iter()
            .filter_map(|s| key_of(&s.metadata.namespace, &s.metadata.name))
            .collect();
        let gone: Vec<ObjectKey> = self
            .slice_service
            .keys()
            .filter(|k| in_scope(scope, &k.namespace) && !keep.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_slice(&k);
        }
        for s in slices {
            self.apply_slice(s);
        }
    }

    fn remove_slice(&mut self, key: &ObjectKey) {
        let Some(service) = self.slice_service.remove(key) else {
            return;
        };
        let sk = (key.namespace.clone(), service);
        if let Some(m) = self.slices.get_mut(&sk) {
            m.remove(&key.name);
            if m.is_empty() {
                self.slices.remove(&sk);
            }
        }
        self.mark_service(&sk);
    }

    fn mark_service(&mut self, sk: &ServiceKey) {
        if let Some(users) = self.users.get(sk) {
            for u in users {
                self.dirty.insert(u.name.clone());
            }
        }
    }

    fn parse_slice(&mut self, key: &ObjectKey, s: &EndpointSlice) -> SliceEntry {
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|pr| pr == "TCP"))
            .filter_map(|p| {
                Some(SlicePort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: u16::try_from(p.port?).ok().filter(|&n| n != 0)?,
                })
            })
            .collect();
        let mut endpoints = Vec::new();
        let mut refused = Vec::new();
        let manager = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL));
        let allowed = || {
            format!(
                "trusted: {} (discovery.kube.endpointSliceManagers)",
                self.slice_managers.join(", ")
            )
        };
        match manager {
            Some(m) if self.slice_managers.contains(m) => {}
            Some(m) => {
                refused.push(format!(
                    "EndpointSlice {key} is managed by `{m}`, not by a trusted manager ({}); its \
                     endpoints are not routed; fix: give the Service a selector so that the \
                     EndpointSlice controller writes its slices, or add `{m}` to \
                     discovery.kube.endpointSliceManagers if it is trusted to name pods",
                    allowed()
                ));
                return SliceEntry {
                    ports,
                    endpoints,
                    refused,
                };
            }
            None => {
                refused.push(format!(
                    "EndpointSlice {key} has no label {MANAGED_BY_LABEL} (made by hand?), so no \
                     trusted controller wrote it ({}); its endpoints are not routed; fix: give the \
                     Service a selector so that the EndpointSlice controller writes its slices",
                    allowed()
                ));
                return SliceEntry {
                    ports,
                    endpoints,
                    refused,
                };
            }
        }
        if s.address_type == "IPv4" || s.address_type == "IPv6" {
            for e in s.endpoints.iter().flatten() {
                // Consumers use the first address only (the others are the same pod).
                let Some(addr) = e.addresses.first() else {
                    continue;
                };
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    self.reports.push(Report {
                        object: format!("EndpointSlice {key}"),
                        reason: format!("endpoint address `{addr}` is not an IP address; skipped"),
                        is_problem: true,
                    });
                    continue;
                };
                // A Pod of this namespace only: the controller writes the Pod's own IP.
                let pod = match &e.target_ref {
                    None => Err("has no targetRef".to_string()),
                    Some(r) if r.kind.as_deref() != Some("Pod") => Err(format!(
                        "has targetRef kind `{}`, not Pod",
                        r.kind.as_deref().unwrap_or("")
                    )),
                    Some(r) if r.namespace.as_deref() != Some(key.namespace.as_str()) => {
                        Err(format!(
                            "has targetRef Pod {}/{} in another namespace",
                            r.namespace.as_deref().unwrap_or("(none)"),
                            r.name.as_deref().unwrap_or("")
                        ))
                    }
                    Some(r) => match r.name.as_deref().filter(|n| !n.is_empty()) {
                        Some(n) => Ok(Arc::<str>::from(n)),
                        None => Err("has a targetRef without a name".to_string()),
                    },
                };
                let name = match pod {
                    Ok(n) => Some(n),
                    Err(why) => {
                        refused.push(format!(
                            "EndpointSlice {key}: endpoint {ip} {why}; only Pods of namespace {} \
                             are routed",
                            key.namespace
                        ));
                        continue;
                    }
                };
                let c = e.conditions.clone().unwrap_or_default();
                // Unknown (absent) conditions count as ready and serving, as Kubernetes advises.
                let ready = c.ready.unwrap_or(true);
                let serving = c.serving.unwrap_or(ready);
                let state = match (c.terminating.unwrap_or(false), serving, ready) {
                    (true, true, _) => EpState::Draining,
                    (true, false, _) => EpState::NotReady,
                    (false, _, true) => EpState::Ready,
                    (false, _, false) => EpState::NotReady,
                };
                endpoints.push(SliceEndpoint { ip, name, state });
            }
        }
        SliceEntry {
            ports,
            endpoints,
            refused,
        }
    }

    // === output ===

    /// Whether events since the last [`Index::refresh`] may change the output.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.reports.is_empty()
    }

    /// The endpoint specs as of the last [`Index::refresh`], sorted by name.
    pub fn specs(&self) -> &[EndpointSpec] {
        &self.specs
    }

    /// The auth reference of the InferenceEndpoint serving `url_name`, for the Secret watch
    /// (issue 5): which Secret holds its keys.
    pub fn auth_ref(&self, url_name: &str) -> Option<(&ObjectKey, Option<&AuthRef>)> {
        let ns = self.owner(url_name)?;
        let (k, e) = self
            .endpoints
            .get_key_value(&ObjectKey::new(&ns, url_name))?;
        Some((k, e.auth.as_ref()))
    }

    /// Number of InferenceEndpoints known, and of those routed.
    pub fn counts(&self) -> (usize, usize) {
        (self.endpoints.len(), self.specs.len())
    }

    /// Rebuilds what changed since the last call.
    pub fn refresh(&mut self) -> Changes {
        let mut changes = Changes {
            reports: std::mem::take(&mut self.reports),
            ..Changes::default()
        };
        let dirty = std::mem::take(&mut self.dirty);
        for url in dirty {
            let owner = self.owner(&url);
            let claimants: Vec<String> = self
                .claims
                .get(&url)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default();
            let mut spec = None;
            for ns in claimants {
                let key = ObjectKey::new(&ns, &url);
                // The pods of each deployment, found once for the spec and the status.
                let pods: Option<Vec<Pods>> = self.endpoints.get(&key).and_then(|e| {
                    let p = e.parsed.as_ref().ok()?;
                    Some(p.deployments.iter().map(|d| self.pods(&ns, d)).collect())
                });
                // The keys, for the routed object only.
                let auth = match (owner.as_deref() == Some(ns.as_str()), &pods) {
                    (true, Some(_)) => {
                        Some(self.auth_for(&key, self.endpoints[&key].auth.as_ref()))
                    }
                    _ => None,
                };
                let auth_problem = auth.as_ref().and_then(|a| a.1.as_deref());
                self.status_for(
                    &key,
                    owner.as_deref(),
                    pods.as_deref(),
                    auth_problem,
                    &mut changes,
                );
                if let (Some(pods), Some((policy, _))) = (pods, auth) {
                    let e = &self.endpoints[&key];
                    if let Ok(p) = &e.parsed {
                        spec = Some(build(&url, &key.namespace, p, policy, pods));
                    }
                }
            }
            changes.specs_changed |= self.put_spec(&url, spec);
        }
        changes
    }

    /// The namespace of the InferenceEndpoint that owns `url`: the oldest claimant (creation
    /// time, then namespace name), valid or not, so that a broken spec never hands its URL
    /// to another namespace.
    fn owner(&self, url: &str) -> Option<String> {
        let claims = self.claims.get(url)?;
        claims
            .iter()
            .min_by(|a, b| {
                let ca = &self.endpoints[&ObjectKey::new(a, url)].created;
                let cb = &self.endpoints[&ObjectKey::new(b, url)].created;
                // A missing timestamp sorts last.
                (ca.is_none(), ca, *a).cmp(&(cb.is_none(), cb, *b))
            })
            .cloned()
    }

    fn put_spec(&mut self, url: &str, spec: Option<EndpointSpec>) -> bool {
        let at = self.specs.binary_search_by(|s| s.name.as_str().cmp(url));
        match (at, spec) {
            (Ok(i), Some(s)) => {
                if self.specs[i] == s {
                    return false;
                }
                self.specs[i] = s;
            }
            (Ok(i), None) => {
                self.specs.remove(i);
            }
            (Err(i), Some(s)) => self.specs.insert(i, s),
            (Err(_), None) => return false,
        }
        true
    }

    /// The pods of one deployment: ready ones (routed), draining ones (counted), and why
    /// none could be found when that is the case.
    fn pods(&self, ns: &str, d: &Plan) -> Pods {
        let mut out = Pods::default();
        let Some(slices) = self.slices.get(&(ns.to_string(), d.service.clone())) else {
            out.why_none = Some(format!(
                "Service {ns}/{} has no EndpointSlices (no such Service, or no pods selected)",
                d.service
            ));
            return out;
        };
        let mut ready: BTreeMap<SocketAddr, Option<Arc<str>>> = BTreeMap::new();
        let mut draining: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut port_missing = None;
        for (slice_name, s) in slices {
            out.refused.extend(s.refused.iter().cloned());
            let port = match &d.port {
                Some(PortRef::Number(n)) => s.ports.iter().find(|p| i64::from(p.port) == *n),
                Some(PortRef::Name(name)) => {
                    s.ports.iter().find(|p| p.name.as_deref() == Some(name))
                }
                None if s.ports.len() == 1 => s.ports.first(),
                None => None,
            };
            let Some(port) = port else {
                if !s.endpoints.is_empty() {
                    port_missing = Some(port_problem(slice_name, s, d.port.as_ref()));
                }
                continue;
            };
            for e in &s.endpoints {
                let addr = SocketAddr::new(e.ip, port.port);
                match e.state {
                    EpState::Ready => {
                        ready.insert(addr, e.name.clone());
                    }
                    EpState::Draining => {
                        draining.insert(addr);
                    }
                    EpState::NotReady => {}
                }
            }
        }
        out.draining = draining.iter().filter(|a| !ready.contains_key(a)).count() as u32;
        out.pods = ready
            .into_iter()
            .map(|(addr, name)| PodSpec { addr, name })
            .collect();
        if out.pods.is_empty() {
            out.why_none = port_missing.or_else(|| {
                Some(if out.refused.is_empty() {
                    format!("Service {ns}/{} has no ready endpoints", d.service)
                } else {
                    format!(
                        "Service {ns}/{} has no trusted ready endpoints ({} refused; see condition \
                         {ENDPOINTS_TRUSTED})",
                        d.service,
                        out.refused.len()
                    )
                })
            });
        }
        out
    }

    fn status_for(
        &mut self,
        key: &ObjectKey,
        owner: Option<&str>,
        pods: Option<&[Pods]>,
        auth_problem: Option<&str>,
        changes: &mut Changes,
    ) {
        let Some(e) = self.endpoints.get(key) else {
            return;
        };
        let gen_ = e.generation;
        let cond = |type_: &str, ok: bool, reason: &str, message: String| EndpointCondition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message,
            last_transition_time: None,
            observed_generation: gen_,
        };
        let mut status = InferenceEndpointStatus {
            observed_generation: gen_,
            ..Default::default()
        };
        let is_owner = owner == Some(key.namespace.as_str());
        let problem = match (&e.parsed, is_owner) {
            (Err(p), _) => {
                status
                    .conditions
                    .push(cond("Accepted", false, "Invalid", p.to_string()));
                status.conditions.push(cond(
                    "Ready",
                    false,
                    "NotAccepted",
                    "the spec is invalid; the endpoint is not routed".into(),
                ));
                Some(format!("skipped: {p}"))
            }
            (Ok(_), false) => {
                let msg = format!(
                    "the URL name `{}` belongs to InferenceEndpoint {}/{} (created earlier); this one is not routed",
                    key.name,
                    owner.unwrap_or("?"),
                    key.name
                );
                status
                    .conditions
                    .push(cond("Accepted", false, "NameConflict", msg.clone()));
                status.conditions.push(cond(
                    "Ready",
                    false,
                    "NotAccepted",
                    "another namespace owns the URL name".into(),
                ));
                Some(format!("not routed: {msg}"))
            }
            (Ok(_), true) => None,
        };
        if let (Ok(p), Some(pods)) = (&e.parsed, pods) {
            let mut missing = Vec::new();
            let mut untrusted_missing = false;
            let mut refused: Vec<&str> = Vec::new();
            for (d, pods) in p.deployments.iter().zip(pods) {
                refused.extend(pods.refused.iter().map(String::as_str));
                status.deployments.push(DeploymentStatus {
                    name: d.name.clone(),
                    ready_pods: pods.pods.len() as u32,
                    terminating_pods: pods.draining,
                    scale: None,
                });
                let needs_pods = d.weight > 0 || p.deployments.iter().all(|x| x.weight == 0);
                if needs_pods && let Some(why) = &pods.why_none {
                    missing.push(format!("deployment {}: {why}", d.name));
                    untrusted_missing |= !pods.refused.is_empty();
                }
            }
            let bad_scale: Vec<String> = p
                .deployments
                .iter()
                .filter_map(|d| {
                    d.scale
                        .as_ref()
                        .err()
                        .map(|e| format!("deployment {}: {e}", d.name))
                })
                .collect();
            if is_owner {
                status.conditions.push(cond(
                    "Accepted",
                    true,
                    "Accepted",
                    format!("routed at /api/v1/endpoint/{}/", key.name),
                ));
                status
                    .conditions
                    .push(match (auth_problem, missing.is_empty()) {
                        (Some(why), _) => {
                            let mut msg = format!("every request is refused (401): {why}");
                            for m in &missing {
                                msg.push_str("; ");
                                msg.push_str(m);
                            }
                            cond("Ready", false, "AuthNotConfigured", msg)
                        }
                        (None, true) => cond(
                            "Ready",
                            true,
                            "PodsReady",
                            "every deployment with traffic has a ready pod".into(),
                        ),
                        (None, false) => cond(
                            "Ready",
                            false,
                            if untrusted_missing {
                                "UntrustedEndpoints"
                            } else {
                                "NoReadyPods"
                            },
                            missing.join("; "),
                        ),
                    });
            }
            if is_owner && !refused.is_empty() {
                refused.sort_unstable();
                refused.dedup();
                let mut msg = refused
                    .iter()
                    .take(MAX_REFUSALS_SHOWN)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("; ");
                if refused.len() > MAX_REFUSALS_SHOWN {
                    msg.push_str(&format!(
                        "; and {} more",
                        refused.len() - MAX_REFUSALS_SHOWN
                    ));
                }
                status
                    .conditions
                    .push(cond(ENDPOINTS_TRUSTED, false, "UntrustedEndpoints", msg));
            }
            if is_owner && !bad_scale.is_empty() {
                status.conditions.push(cond(
                    "Scaling",
                    false,
                    "InvalidScaleSettings",
                    format!(
                        "not autoscaled (routing is unaffected): {}",
                        bad_scale.join("; ")
                    ),
                ));
            }
        }

        // Reports: on a change of problem only.
        let object = format!("InferenceEndpoint {key}");
        match (problem, self.reported.get(key)) {
            (Some(p), prev) if prev != Some(&p) => {
                changes.reports.push(Report {
                    object,
                    reason: p.clone(),
                    is_problem: true,
                });
                self.reported.insert(key.clone(), p);
            }
            (None, Some(_)) => {
                changes.reports.push(Report {
                    object,
                    reason: "accepted: routed".into(),
                    is_problem: false,
                });
                self.reported.remove(key);
            }
            _ => {}
        }
        match (auth_problem, self.reported_auth.get(key)) {
            (Some(p), prev) if prev.map(String::as_str) != Some(p) => {
                changes.reports.push(Report {
                    object: format!("InferenceEndpoint {key}"),
                    reason: format!("every request is refused (401): {p}"),
                    is_problem: true,
                });
                self.reported_auth.insert(key.clone(), p.to_string());
            }
            (None, Some(_)) => {
                changes.reports.push(Report {
                    object: format!("InferenceEndpoint {key}"),
                    reason: "keys loaded: requests are authenticated again".into(),
                    is_problem: false,
                });
                self.reported_auth.remove(key);
            }
            _ => {}
        }

        let e = &self.endpoints[key];
        let shown = e.observed.as_ref().is_some_and(|o| same_status(o, &status));
        if shown {
            self.sent.remove(key);
        } else if self.sent.get(key) != Some(&status) {
            self.sent.insert(key.clone(), status.clone());
            changes.statuses.push(StatusUpdate {
                key: key.clone(),
                status,
                observed: e.observed.clone(),
            });
        }
    }
}

#[derive(Debug, Default)]
struct Pods {
    pods: Vec<PodSpec>,
    draining: u32,
    why_none: Option<String>,
    /// Why slices or endpoints of the deployment's Service were refused (untrusted).
    refused: Vec<String>,
}

fn build(url: &str, ns: &str, p: &Parsed, auth: AuthPolicy, pods: Vec<Pods>) -> EndpointSpec {
    EndpointSpec {
        name: url.to_string(),
        deployments: p
            .deployments
            .iter()
            .zip(pods)
            .map(|(d, pods)| DeploymentSpec {
                name: d.name.clone(),
                pods: pods.pods,
                scoring_path: d.scoring_path.clone(),
                swagger_path: d.swagger_path.clone(),
                settings: d.settings,
                weight: d.weight,
                autoscale: d
                    .scale
                    .clone()
                    .ok()
                    .flatten()
                    .map(|settings| AutoscaleSpec {
                        settings,
                        namespace: Some(ns.to_string()),
                    }),
                transport: d.transport.clone(),
            })
            .collect(),
        // Mirroring is not part of the InferenceEndpoint spec yet.
        mirror: None,
        // From the Secret `spec.auth.secretName` ([`Index::auth_for`]); fails closed.
        auth,
        swagger_auth: false,
        pass_authorization: p.pass_authorization,
    }
}

fn port_problem(slice: &str, s: &SliceEntry, want: Option<&PortRef>) -> String {
    let have: Vec<String> = s
        .ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{n}:{}", p.port),
            None => p.port.to_string(),
        })
        .collect();
    match want {
        Some(p) => format!(
            "port `{p}` is not among the ports of EndpointSlice {slice} ({})",
            have.join(", ")
        ),
        None => format!(
            "EndpointSlice {slice} has {} ports ({}): name one in `port`",
            have.len(),
            have.join(", ")
        ),
    }
}

/// Equal but for `lastTransitionTime`.
pub fn same_status(a: &InferenceEndpointStatus, b: &InferenceEndpointStatus) -> bool {
    let strip = |s: &InferenceEndpointStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

/// The Secret an endpoint's `spec.auth` names (same namespace), unless its mode is `none`.
fn secret_key(ns: &str, auth: Option<&AuthRef>) -> Option<ObjectKey> {
    let a = auth?;
    if a.mode.as_deref() == Some("none") {
        return None;
    }
    let name = a.secret_name.as_deref().filter(|n| !n.is_empty())?;
    Some(ObjectKey::new(ns, name))
}

fn in_scope(scope: Scope<'_>, ns: &str) -> bool {
    scope.is_none_or(|s| s == ns)
}

fn key_of(ns: &Option<String>, name: &Option<String>) -> Option<ObjectKey> {
    Some(ObjectKey::new(ns.as_deref()?, name.as_deref()?))
}

/// Parses and validates an InferenceEndpoint's spec; the auth reference is kept even when the
/// rest is invalid.
fn parse_endpoint(
    name: &str,
    obj: &DynamicObject,
    defaults: &Defaults,
    ceilings: &RequestSettingsCeilings,
) -> (Result<Parsed, Problem>, Option<AuthRef>) {
    let raw = obj.data.get("spec").cloned().unwrap_or(json!(null));
    let auth = raw
        .get("auth")
        .and_then(|a| serde_json::from_value::<AuthRef>(a.clone()).ok());
    (parse_spec(name, raw, defaults, ceilings), auth)
}

/// Parses and validates an InferenceEndpoint's `spec` (the JSON a tenant wrote) for the URL
/// `name`: never panics; every error names the key.
pub(crate) fn parse_spec(
    name: &str,
    raw: serde_json::Value,
    defaults: &Defaults,
    ceilings: &RequestSettingsCeilings,
) -> Result<Parsed, Problem> {
    if !is_valid_name(name) {
        return Err(Problem::new(
            "metadata.name",
            name,
            "not usable as an endpoint name in a URL",
            "use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
    check_request_settings(&raw)?;
    let spec: InferenceEndpointSpec = serde_json::from_value(raw.clone()).map_err(|e| {
        Problem::new(
            "spec",
            short(&raw.to_string()),
            format!("does not match the InferenceEndpoint schema: {e}"),
            "correct the spec (`kubectl explain inferenceendpoint.spec`)",
        )
    })?;
    if let Some(mode) = spec.auth.as_ref().and_then(|a| a.mode.as_deref())
        && AuthMode::from_name(mode).is_none()
    {
        return Err(Problem::new(
            "spec.auth.mode",
            mode,
            "unknown authentication mode",
            format!("use one of {}", AuthMode::NAMES.join(", ")),
        ));
    }
    for (i, d) in spec.deployments.iter().enumerate() {
        let key = format!("spec.deployments[{i}]");
        if !infergate_config::is_dns_label(&d.service_name) {
            return Err(Problem::new(
                format!("{key}.serviceName"),
                &d.service_name,
                "not a Service name",
                "name a Service in the same namespace (lowercase letters, digits and '-', at most 63)",
            ));
        }
        match &d.port {
            Some(PortRef::Number(n)) if !(1..=65535).contains(n) => {
                return Err(Problem::new(
                    format!("{key}.port"),
                    n,
                    "not a port number",
                    "use 1-65535, or the Service port's name",
                ));
            }
            Some(PortRef::Name(s)) if s.is_empty() || s.len() > 15 => {
                return Err(Problem::new(
                    format!("{key}.port"),
                    s,
                    "not a port name",
                    "use the Service port's name (1-15 characters), or its number",
                ));
            }
            _ => {}
        }
        if let Some(p) = &d.protocol
            && UpstreamProtocol::from_name(p).is_none()
        {
            return Err(Problem::new(
                format!("{key}.protocol"),
                short(p),
                "not a protocol",
                format!("use one of {}", UpstreamProtocol::NAMES.join(", ")),
            ));
        }
    }
    // The static file's rules (names, traffic sums, paths, settings), through its own validator.
    let as_config = json!({
        "name": name,
        "traffic": spec.traffic,
        "deployments": spec.deployments.iter().map(|d| {
            let mut v = json!({
                "name": d.name,
                "requestSettings": d.request_settings,
            });
            if let Some(p) = &d.scoring_path { v["scoringPath"] = json!(p); }
            if let Some(p) = &d.swagger_path { v["swaggerPath"] = json!(p); }
            if let Some(p) = &d.protocol { v["protocol"] = json!(p); }
            if let Some(t) = &d.upstream_tls { v["upstreamTls"] = json!(t); }
            v
        }).collect::<Vec<_>>(),
        "auth": {"mode": "none"},
    });
    let ep: EndpointConfig = serde_json::from_value(as_config)
        .map_err(|e| Problem::new("spec", "", e.to_string(), "correct the spec"))?;
    ep.validate("spec", defaults, ceilings)?;
    let deployments = spec
        .deployments
        .iter()
        .zip(&ep.deployments)
        .zip(ep.weights())
        .enumerate()
        .map(|(i, ((d, c), weight))| {
            Ok(Plan {
                name: d.name.clone(),
                service: d.service_name.clone(),
                port: d.port.clone(),
                scoring_path: c.scoring_path.clone(),
                swagger_path: c.swagger_path.clone(),
                settings: c.request_settings.over(*defaults),
                weight,
                scale: parse_scale(
                    &format!("spec.deployments[{i}].scaleSettings"),
                    d.scale_settings.as_ref(),
                ),
                transport: PodTransport::load(
                    &format!("spec.deployments[{i}]"),
                    c.protocol,
                    c.upstream_tls.as_ref(),
                )?,
            })
        })
        .collect::<Result<Vec<Plan>, Problem>>()?;
    Ok(Parsed {
        deployments,
        pass_authorization: spec.pass_authorization.unwrap_or(false),
    })
}

/// Each `spec.deployments[i].requestSettings` entry read on its own, so that an unknown key or
/// a value that is not a whole number of the setting's range (2^64, -1, 1.5, "10") is refused
/// naming that key, rather than as the whole spec not matching the schema.
fn check_request_settings(raw: &Value) -> Result<(), Problem> {
    let Some(deployments) = raw.get("deployments").and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, d) in deployments.iter().enumerate() {
        let Some(settings) = d.get("requestSettings").and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in settings {
            let one = Value::Object([(k.clone(), v.clone())].into_iter().collect());
            if let Err(e) = serde_json::from_value::<infergate_config::RequestSettings>(one) {
                let unknown = e.to_string().starts_with("unknown field");
                return Err(Problem::new(
                    format!("spec.deployments[{i}].requestSettings.{}", short(k)),
                    short(&v.to_string()),
                    if unknown {
                        "not a request setting".to_string()
                    } else {
                        format!("not a whole number of the setting's range: {e}")
                    },
                    if unknown {
                        "use only the keys of the router's `defaults` (requestTimeoutMs, maxConcurrentRequestsPerInstance, maxQueueWaitMs, maxRequestBodyBytes, maxQueueLength, ...)"
                    } else {
                        "write a whole number (no quotes, no fraction, not negative)"
                    },
                ));
            }
        }
    }
    Ok(())
}

/// A deployment's `scaleSettings`: parsed and checked, with a workload to scale (in a cluster
/// the target is required).
fn parse_scale(key: &str, v: Option<&Value>) -> Result<Option<ScaleSettings>, String> {
    let Some(v) = v else { return Ok(None) };
    let s: ScaleSettings = serde_json::from_value(v.clone()).map_err(|e| {
        format!("config key `{key}`: {e}; fix: use only scaleTargetRef, minInstances, maxInstances, targetUtilizationPercentage, pollingIntervalSeconds, scaleDownDelaySeconds, coldStartWaitMs")
    })?;
    s.validate(key).map_err(|e| e.to_string())?;
    if s.scale_target_ref.is_none() {
        return Err(format!(
            "config key `{key}.scaleTargetRef`: missing; fix: name the workload to scale, e.g. scaleTargetRef: {{kind: Deployment, name: my-model}}"
        ));
    }
    Ok(Some(s))
}

fn short(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    let mut end = 117;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
pub(crate) mod tests;

//! The Kubernetes objects, built as JSON values from validated [`Settings`].

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::settings::{Exposure, Namespaces, Settings, TlsFiles};
use crate::{RenderArgs, RenderError};

/// Container port of the HTTPS listener (`listen.https`); the Service maps 443 to it.
pub const HTTPS_PORT: u16 = 8443;
/// Container port of the plain HTTP listener (`listen.http`); the Service maps 80 to it.
pub const HTTP_PORT: u16 = 8080;
/// Container port of the admin listener (`/healthz`, `/readyz`, `/metrics`); not on the Service.
/// The NetworkPolicy `<name>` admits only pods of the `metricsNamespaces` to it (the kubelet's
/// probes come from the pod's own node, which a NetworkPolicy does not filter).
pub const ADMIN_PORT: u16 = 9090;
/// Where the ConfigMap's `infergate.yaml` is mounted.
pub const CONFIG_PATH: &str = "/etc/infergate/config/infergate.yaml";
/// Where the TLS Secret is mounted (`tls.crt`, `tls.key`).
pub const TLS_DIR: &str = "/etc/infergate/tls";
/// The preStop delay: endpoint controllers and load balancers stop sending new connections
/// to the pod before SIGTERM makes the router drain.
pub const PRE_STOP_SECONDS: u64 = 5;
/// Container port of the HA peer listener (`cluster.listen`), named `peer`; only with high
/// availability. The headless `<name>-peers` Service publishes it, and a NetworkPolicy admits
/// only the router pods to it.
pub const PEER_PORT: u16 = 7946;
/// Where the peers' shared-secret Secret is mounted (the key `secret`).
pub const CLUSTER_DIR: &str = "/etc/infergate/cluster";
/// Random bytes in the rendered peer secret.
pub const CLUSTER_SECRET_BYTES: usize = 32;
/// Slack on top of preStop + drain before the kubelet sends SIGKILL.
const GRACE_SLACK_SECONDS: u64 = 5;

const CONFIG_DIR: &str = "/etc/infergate/config";
const CONFIG_FILE: &str = "infergate.yaml";
/// The key of the peer secret in its Secret (and so the file under [`CLUSTER_DIR`]).
const CLUSTER_SECRET_KEY: &str = "secret";
/// The distroless `nonroot` user and group.
const NONROOT: u32 = 65532;
/// Group-readable only: the pod's fsGroup (or OpenShift's assigned group) owns the files.
const SECRET_MODE: u32 = 0o440;

/// `terminationGracePeriodSeconds` for a drain timeout: preStop + drain (rounded up) + slack.
pub fn termination_grace_seconds(drain_timeout_ms: u64) -> u64 {
    PRE_STOP_SECONDS + drain_timeout_ms.div_ceil(1000) + GRACE_SLACK_SECONDS
}

/// Names and labels shared by every object.
struct Ctx<'a> {
    ns: &'a str,
    name: &'a str,
    image: &'a str,
    s: &'a Settings,
}

impl Ctx<'_> {
    fn config_map(&self) -> String {
        format!("{}-config", self.name)
    }
    fn secret(&self) -> String {
        format!("{}-tls", self.name)
    }
    /// The HA peers' headless Service (and their NetworkPolicy).
    fn peers(&self) -> String {
        format!("{}-peers", self.name)
    }
    /// The HA peers' shared secret.
    fn cluster_secret(&self) -> String {
        format!("{}-cluster", self.name)
    }
    /// SCCs are cluster-scoped: the namespace keeps two installations apart.
    fn scc(&self) -> String {
        format!("{}-{}", self.name, self.ns)
    }
    fn scc_role(&self) -> String {
        format!("{}-scc", self.name)
    }
    /// The discovery ClusterRole, or the Role in each inference namespace.
    fn discovery_role(&self) -> String {
        discovery_role_name(self.name, self.ns)
    }
    /// The namespaces the router watches (`None`: every namespace).
    fn watched(&self) -> Option<Vec<String>> {
        match &self.s.inference_namespaces {
            None => Some(vec![self.ns.to_string()]),
            Some(Namespaces::Listed(l)) => Some(l.clone()),
            Some(Namespaces::All) => None,
        }
    }

    fn selector(&self) -> Value {
        json!({
            "app.kubernetes.io/name": "infergate",
            "app.kubernetes.io/instance": self.name,
        })
    }

    fn labels(&self) -> Value {
        json!({
            "app.kubernetes.io/name": "infergate",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": "inference-router",
            "app.kubernetes.io/part-of": "infergate",
        })
    }

    fn meta(&self, name: &str) -> Value {
        json!({ "name": name, "namespace": self.ns, "labels": self.labels() })
    }
}

/// Every object, in apply order, with the file it is written to.
pub(crate) fn documents(
    args: &RenderArgs,
    s: &Settings,
) -> Result<Vec<(String, Value)>, RenderError> {
    check_name("--namespace", &args.namespace, 63)?;
    // Leave room for the longest derived name that must be a 63-character DNS label
    // (`-config`; `-peers` is a Service name). `-cluster` names a Secret (253 characters).
    check_name("--name", &args.name, 56)?;
    if args.image.trim().is_empty() || args.image.contains(char::is_whitespace) {
        return Err(RenderError::invalid(
            "--image",
            &args.image,
            "not a container image reference",
            "write e.g. --image ghcr.io/infergate/infergate:0.1.0",
        ));
    }
    let cx = Ctx {
        ns: &args.namespace,
        name: &args.name,
        image: &args.image,
        s,
    };
    let config = router_config(&cx)?;

    let mut docs = vec![
        ("namespace.yaml".to_string(), namespace(&cx)),
        ("serviceaccount.yaml".to_string(), service_account(&cx)),
    ];
    if s.openshift {
        docs.push(("securitycontextconstraints.yaml".into(), scc(&cx)));
        docs.push(("role.yaml".into(), scc_role(&cx)));
        docs.push(("rolebinding.yaml".into(), scc_role_binding(&cx)));
    }
    docs.extend(discovery_documents(&cx)?);
    docs.push(("configmap.yaml".into(), config_map(&cx, &config.0)));
    if let Some(tls) = &s.tls {
        docs.push(("secret.yaml".into(), tls_secret(&cx, tls)?));
    }
    if s.high_availability {
        docs.push(("cluster-secret.yaml".into(), cluster_secret(&cx)));
    }
    docs.push(("service.yaml".into(), service(&cx)));
    if s.high_availability {
        docs.push(("peer-service.yaml".into(), peer_service(&cx)));
    }
    docs.push(("networkpolicy.yaml".into(), network_policy(&cx)));
    if s.high_availability {
        docs.push(("peer-networkpolicy.yaml".into(), peer_network_policy(&cx)));
    }
    docs.push(("deployment.yaml".into(), deployment(&cx, config.1)));
    if s.high_availability {
        docs.push((
            "poddisruptionbudget.yaml".into(),
            pod_disruption_budget(&cx),
        ));
    }
    Ok(docs)
}

/// The InferenceEndpoint CustomResourceDefinition as committed under `deploy/crds/`. It is
/// generated from the Rust type (`infergate crd`); a test of `infergate-discovery` fails when
/// the two drift.
pub const CRD_YAML: &str =
    include_str!("../../../deploy/crds/inferenceendpoints.infergate.io.yaml");

/// What Kubernetes discovery needs, in one place for the Role of each inference namespace and
/// the ClusterRole (`inferenceNamespaces=*`): list/watch of InferenceEndpoints and
/// EndpointSlices, update/patch of InferenceEndpoint status, and list/watch of Secrets for the
/// endpoints' keys (the router watches only those labelled `infergate.io/auth=true` and never
/// gets one by name; RBAC cannot narrow a grant by label, hence Roles in the inference
/// namespaces only). The EndpointSlice rule also covers the HA peers (`cluster.kube`: the
/// `<name>-peers` Service's slices in the router's own namespace) when that namespace is an
/// inference namespace; otherwise [`peer_rules`] are granted there.
pub fn discovery_rules() -> Value {
    json!([
        {
            "apiGroups": ["infergate.io"],
            "resources": ["inferenceendpoints"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["infergate.io"],
            "resources": ["inferenceendpoints/status"],
            "verbs": ["update", "patch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["list", "watch"],
        },
        // The autoscaler: the replicas of the workloads that `scaleSettings.scaleTargetRef`
        // names, through their scale subresource only (a custom workload kind needs a rule
        // like these for its own `<plural>/scale`).
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale", "statefulsets/scale"],
            "verbs": ["get", "update", "patch"],
        },
        // An HPA on the same workload is detected, and the autoscaler stands back.
        {
            "apiGroups": ["autoscaling"],
            "resources": ["horizontalpodautoscalers"],
            "verbs": ["list", "watch"],
        },
        // An Event on the InferenceEndpoint for each scale change.
        {
            "apiGroups": ["events.k8s.io"],
            "resources": ["events"],
            "verbs": ["create"],
        },
    ])
}

/// The HA peers (`cluster.kube`): the EndpointSlices of the `<name>-peers` Service, in the
/// router's own namespace. Granted by a Role of their own when that namespace is not an
/// inference namespace (whose discovery Role covers them).
pub fn peer_rules() -> Value {
    json!([
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ])
}

/// The autoscaler's leader election: the Lease in the router's own namespace (create, then
/// get and update of that one Lease).
pub fn lease_rules() -> Value {
    json!([
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [infergate_config::AutoscalerConfig::default().lease_name],
            "verbs": ["get", "update"],
        },
    ])
}

/// Kubernetes discovery (`discovery.kube` in the rendered config): the InferenceEndpoint CRD,
/// and the discovery rules granted to the router's ServiceAccount by a Role and RoleBinding in
/// each inference namespace (default: the router's own), or by a ClusterRole and its binding
/// with `inferenceNamespaces=*`; the autoscaler's Lease Role and, with HA when the router's
/// namespace is not an inference namespace, the peers' Role. Applied right after the
/// ServiceAccount, before the Deployment.
fn discovery_documents(cx: &Ctx) -> Result<Vec<(String, Value)>, RenderError> {
    let crd: Value = serde_saphyr::from_str(CRD_YAML)
        .map_err(|e| RenderError::Yaml(format!("deploy/crds: {e}")))?;
    let role = cx.discovery_role();
    let subjects = json!([{ "kind": "ServiceAccount", "name": cx.name, "namespace": cx.ns }]);
    let mut docs = vec![("crd.yaml".to_string(), crd)];
    let watched = cx.watched();
    match &watched {
        None => {
            // Cluster-scoped: the namespace keeps two installations apart.
            let meta = json!({ "name": role, "labels": cx.labels() });
            docs.push((
                "clusterrole.yaml".into(),
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": meta,
                    "rules": discovery_rules(),
                }),
            ));
            docs.push((
                "clusterrolebinding.yaml".into(),
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": meta,
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": subjects,
                }),
            ));
        }
        Some(list) => {
            for ns in list {
                let (r, b) = role_and_binding(cx.name, cx.ns, ns, &role, discovery_rules());
                docs.push((format!("discovery-role-{ns}.yaml"), r));
                docs.push((format!("discovery-rolebinding-{ns}.yaml"), b));
            }
        }
    }
    let (r, b) = role_and_binding(
        cx.name,
        cx.ns,
        cx.ns,
        &format!("{}-autoscaler", cx.name),
        lease_rules(),
    );
    docs.push(("autoscaler-role.yaml".into(), r));
    docs.push(("autoscaler-rolebinding.yaml".into(), b));
    let peers_covered = watched.is_none_or(|l| l.iter().any(|n| n == cx.ns));
    if cx.s.high_availability && !peers_covered {
        let (r, b) = role_and_binding(cx.name, cx.ns, cx.ns, &cx.peers(), peer_rules());
        docs.push(("peer-role.yaml".into(), r));
        docs.push(("peer-rolebinding.yaml".into(), b));
    }
    Ok(docs)
}

/// `<name>-<namespace>-discovery`: the discovery ClusterRole, or the Role in each inference
/// namespace (the router's namespace in the name keeps two installations apart).
fn discovery_role_name(name: &str, ns: &str) -> String {
    format!("{name}-{ns}-discovery")
}

/// A Role named `role` in `ns` with `rules`, and its RoleBinding to the router's ServiceAccount
/// (`name` in `own_ns`).
fn role_and_binding(
    name: &str,
    own_ns: &str,
    ns: &str,
    role: &str,
    rules: Value,
) -> (Value, Value) {
    let labels = json!({
        "app.kubernetes.io/name": "infergate",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference-router",
        "app.kubernetes.io/part-of": "infergate",
    });
    let meta = json!({ "name": role, "namespace": ns, "labels": labels });
    (
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": own_ns }],
        }),
    )
}

/// The discovery Role and RoleBinding for one more inference namespace `watched`, granting the
/// router's ServiceAccount (`args.name` in `args.namespace`) what [`discovery_rules`] lists
/// there: what `render` emits for each namespace of `inferenceNamespaces`, for adding one
/// later without re-rendering (then add it to `discovery.kube.namespaces` in the ConfigMap).
/// Multi-document YAML.
pub fn namespaced_discovery_rbac(args: &RenderArgs, watched: &str) -> Result<String, RenderError> {
    check_name("--namespace", &args.namespace, 63)?;
    check_name("--name", &args.name, 56)?;
    check_name("watched namespace", watched, 63)?;
    let (role, binding) = role_and_binding(
        &args.name,
        &args.namespace,
        watched,
        &discovery_role_name(&args.name, &args.namespace),
        discovery_rules(),
    );
    Ok(format!(
        "---\n{}---\n{}",
        crate::yaml::to_yaml(&role)?,
        crate::yaml::to_yaml(&binding)?
    ))
}

fn check_name(flag: &str, v: &str, max: usize) -> Result<(), RenderError> {
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        return Ok(());
    }
    Err(RenderError::invalid(
        flag,
        v,
        "not a valid Kubernetes name",
        format!(
            "use 1-{max} lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
        ),
    ))
}

/// The router's configuration file (YAML text) and its drain timeout.
fn router_config(cx: &Ctx) -> Result<(String, u64), RenderError> {
    let s = cx.s;
    let bug = |e: infergate_config::ConfigError| RenderError::Yaml(e.to_string());
    // Start from the file format's own defaults so new fields keep theirs.
    let mut cfg = infergate_config::Config::from_yaml("{}", "<render>").map_err(bug)?;
    cfg.allow_insecure_connections = s.allow_insecure_connections;
    // Endpoints come from InferenceEndpoints of the inference namespaces (their Roles allow
    // it), or of every namespace (`inferenceNamespaces=*`, the ClusterRole).
    cfg.discovery.kube = Some(infergate_config::KubeDiscoveryConfig {
        namespaces: cx.watched().unwrap_or_default(),
        ..Default::default()
    });
    if s.tls.is_some() {
        cfg.ssl_cert_pem_file = Some(Path::new(TLS_DIR).join("tls.crt"));
        cfg.ssl_key_pem_file = Some(Path::new(TLS_DIR).join("tls.key"));
    }
    if s.high_availability {
        // The replicas act as one router: peers are the ready pods of the headless Service, in
        // the pod's own namespace (POD_NAMESPACE); each advertises $POD_IP:7946.
        cfg.cluster = Some(infergate_config::ClusterConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], PEER_PORT)),
            advertise: None,
            peers: Vec::new(),
            kube: Some(infergate_config::ClusterKube {
                service: cx.peers(),
                namespace: None,
            }),
            secret_file: Path::new(CLUSTER_DIR).join(CLUSTER_SECRET_KEY),
            on_owner_unreachable: infergate_config::PartitionMode::default(),
            heartbeat_ms: 200,
            dead_after_ms: 1_500,
        });
    }
    // Validate everything but the existence of the files, which only exist in the pod.
    let mut check = cfg.clone();
    check.ssl_cert_pem_file = None;
    check.ssl_key_pem_file = None;
    check.allow_insecure_connections = true;
    check.validate().map_err(bug)?;
    let body = serde_saphyr::to_string(&cfg).map_err(|e| RenderError::Yaml(e.to_string()))?;
    let text = format!(
        "# infergate router configuration, rendered by `infergate render`.\n\
         # Endpoints come from discovery; see `infergate serve --help` for every key.\n{body}"
    );
    Ok((text, cfg.drain_timeout_ms))
}

fn namespace(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": cx.ns },
    })
}

fn service_account(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": cx.meta(cx.name),
    })
}

fn config_map(cx: &Ctx, config: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": cx.meta(&cx.config_map()),
        "data": { CONFIG_FILE: config },
    })
}

fn tls_secret(cx: &Ctx, tls: &TlsFiles) -> Result<Value, RenderError> {
    infergate_tls::install_crypto_provider();
    infergate_tls::load_certified_key(&tls.cert, &tls.key).map_err(|source| RenderError::Tls {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        source: Box::new(source),
    })?;
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            RenderError::invalid(
                key,
                path.display(),
                format!("cannot read the file: {e}"),
                format!("point {key} at an existing, readable PEM file"),
            )
        })
    };
    let cert = read("sslCertPemFile", &tls.cert)?;
    let key = read("sslKeyPemFile", &tls.key)?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": cx.meta(&cx.secret()),
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": BASE64.encode(cert),
            "tls.key": BASE64.encode(key),
        },
    }))
}

/// The peers' shared secret: [`CLUSTER_SECRET_BYTES`] random bytes, base64 (the router trims
/// the file and uses its text as the HMAC key).
///
/// Every render makes a new value, so the Secret is `immutable`: re-applying a later render
/// can then never change the secret under running replicas. A changed secret would split the
/// cluster: kubelet rewrites the mounted file, and any replica that starts (or re-reads it)
/// with the new value cannot authenticate to those still holding the old one, so each side
/// owns the deployments alone and the global limits no longer hold. Instead the API server
/// refuses the change (`kubectl apply` reports `field is immutable` for this one object and
/// applies the others) and the first value stays. A GitOps copy of the output is stable
/// anyway. To rotate: delete the Secret, apply, then `kubectl rollout restart` the
/// Deployment.
fn cluster_secret(cx: &Ctx) -> Value {
    let bytes: [u8; CLUSTER_SECRET_BYTES] = rand::random();
    let mut meta = cx.meta(&cx.cluster_secret());
    meta["annotations"] = json!({
        "infergate.io/generated": "random at render; immutable, so re-applying a later render \
                                   keeps this value (delete it, apply, restart the Deployment to rotate)",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "immutable": true,
        "data": { CLUSTER_SECRET_KEY: BASE64.encode(BASE64.encode(bytes)) },
    })
}

/// The headless Service whose EndpointSlices list the ready router pods: the HA peers.
fn peer_service(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": cx.meta(&cx.peers()),
        "spec": {
            "clusterIP": "None",
            "selector": cx.selector(),
            // Only ready replicas are peers: a starting or draining pod owns nothing.
            "publishNotReadyAddresses": false,
            "ports": [{ "name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP" }],
        },
    })
}

/// The router pods' ingress: every source reaches the serving ports; only pods of the
/// `metricsNamespaces` reach the admin port (`/metrics`, `/readyz`, `/healthz`). The kubelet's
/// probes need no rule: they come from the pod's own node, which a NetworkPolicy cannot block.
/// A pod selected by an Ingress policy is closed to everything no policy admits (with HA, the
/// `<name>-peers` policy adds the peer port).
fn network_policy(cx: &Ctx) -> Value {
    let s = cx.s;
    let mut open = Vec::new();
    if s.tls.is_some() {
        open.push(json!({ "port": HTTPS_PORT, "protocol": "TCP" }));
    }
    if s.allow_insecure_connections {
        open.push(json!({ "port": HTTP_PORT, "protocol": "TCP" }));
    }
    let scrapers: Vec<Value> = match &s.metrics_namespaces {
        Namespaces::All => vec![json!({ "namespaceSelector": {} })],
        Namespaces::Listed(l) => l
            .iter()
            .map(|ns| {
                json!({ "namespaceSelector": {
                    "matchLabels": { "kubernetes.io/metadata.name": ns },
                } })
            })
            .collect(),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": cx.meta(cx.name),
        "spec": {
            "podSelector": { "matchLabels": cx.selector() },
            "policyTypes": ["Ingress"],
            "ingress": [
                { "ports": open },
                {
                    "from": scrapers,
                    "ports": [{ "port": ADMIN_PORT, "protocol": "TCP" }],
                },
            ],
        },
    })
}

/// HA: only router pods reach the peer port (the NetworkPolicy `<name>` admits the rest).
fn peer_network_policy(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": cx.meta(&cx.peers()),
        "spec": {
            "podSelector": { "matchLabels": cx.selector() },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{ "podSelector": { "matchLabels": cx.selector() } }],
                    "ports": [{ "port": PEER_PORT, "protocol": "TCP" }],
                },
            ],
        },
    })
}

fn service(cx: &Ctx) -> Value {
    let mut ports = Vec::new();
    if cx.s.tls.is_some() {
        ports.push(
            json!({ "name": "https", "port": 443, "targetPort": "https", "protocol": "TCP" }),
        );
    }
    if cx.s.allow_insecure_connections {
        ports.push(json!({ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }));
    }
    let mut meta = cx.meta(cx.name);
    if cx.s.exposure == Exposure::InternalLoadBalancer {
        meta["annotations"] =
            json!({ "service.beta.kubernetes.io/azure-load-balancer-internal": "true" });
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": cx.s.exposure.service_type(),
            "selector": cx.selector(),
            "ports": ports,
        },
    })
}

fn deployment(cx: &Ctx, drain_timeout_ms: u64) -> Value {
    let s = cx.s;
    let mut ports = Vec::new();
    if s.tls.is_some() {
        ports.push(json!({ "name": "https", "containerPort": HTTPS_PORT, "protocol": "TCP" }));
    }
    if s.allow_insecure_connections {
        ports.push(json!({ "name": "http", "containerPort": HTTP_PORT, "protocol": "TCP" }));
    }
    ports.push(json!({ "name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP" }));
    if s.high_availability {
        ports.push(json!({ "name": "peer", "containerPort": PEER_PORT, "protocol": "TCP" }));
    }

    let mut mounts = vec![json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true })];
    let mut volumes = vec![json!({ "name": "config", "configMap": { "name": cx.config_map() } })];
    if s.tls.is_some() {
        mounts.push(json!({ "name": "tls", "mountPath": TLS_DIR, "readOnly": true }));
        volumes.push(json!({
            "name": "tls",
            "secret": { "secretName": cx.secret(), "defaultMode": SECRET_MODE },
        }));
    }
    if s.high_availability {
        mounts.push(json!({ "name": "cluster", "mountPath": CLUSTER_DIR, "readOnly": true }));
        volumes.push(json!({
            "name": "cluster",
            "secret": { "secretName": cx.cluster_secret(), "defaultMode": SECRET_MODE },
        }));
    }

    // OpenShift assigns the UID, GID and fsGroup from the namespace's range: fixing them
    // would make the pod fail admission.
    let pod_security = if s.openshift {
        json!({ "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } })
    } else {
        json!({
            "runAsNonRoot": true,
            "runAsUser": NONROOT,
            "runAsGroup": NONROOT,
            "fsGroup": NONROOT,
            "seccompProfile": { "type": "RuntimeDefault" },
        })
    };

    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": "admin" },
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        })
    };

    let mut container = json!({
        "name": "infergate",
        "image": cx.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve", "--config", CONFIG_PATH],
        "ports": ports,
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        // The sleep action needs no shell (the image is distroless); Kubernetes >= 1.30.
        "lifecycle": { "preStop": { "sleep": { "seconds": PRE_STOP_SECONDS } } },
        // No CPU limit: CFS throttling of a latency-sensitive proxy shows up as tail latency.
        "resources": {
            "requests": { "cpu": "250m", "memory": "128Mi" },
            "limits": { "memory": "512Mi" },
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": mounts,
    });
    // The autoscaler's identity in its Lease and the Lease's namespace (also the peers'
    // Service's); with HA, the address peers reach this replica at (`cluster.listen` is
    // 0.0.0.0).
    let field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": path } } });
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
    ];
    if s.high_availability {
        env.insert(0, field("POD_IP", "status.podIP"));
    }
    container["env"] = json!(env);

    let mut pod_annotations = json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": ADMIN_PORT.to_string(),
        "prometheus.io/path": "/metrics",
    });
    if s.openshift {
        pod_annotations["openshift.io/required-scc"] = json!(cx.scc());
    }

    let mut pod_spec = json!({
        "serviceAccountName": cx.name,
        "terminationGracePeriodSeconds": termination_grace_seconds(drain_timeout_ms),
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    });
    if s.high_availability {
        // Preferred, not required: with maxSurge 1 on a three-node cluster a required
        // anti-affinity would leave the surge pod unschedulable and stall every rollout.
        pod_spec["affinity"] = json!({
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": { "matchLabels": cx.selector() },
                    },
                }],
            },
        });
        let spread = |key: &str| {
            json!({
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": { "matchLabels": cx.selector() },
                "matchLabelKeys": ["pod-template-hash"],
            })
        };
        pod_spec["topologySpreadConstraints"] = json!([
            spread("topology.kubernetes.io/zone"),
            spread("kubernetes.io/hostname")
        ]);
    }

    if !s.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(s.node_selector);
    }
    if !s.tolerations.is_empty() {
        pod_spec["tolerations"] = Value::Array(s.tolerations.iter().map(|t| t.to_json()).collect());
    }

    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": cx.meta(cx.name),
        "spec": {
            "replicas": if s.high_availability { 3 } else { 1 },
            "revisionHistoryLimit": 5,
            "selector": { "matchLabels": cx.selector() },
            // Never below the desired count during a rollout (a single replica included).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 },
            },
            "template": {
                "metadata": { "labels": cx.labels(), "annotations": pod_annotations },
                "spec": pod_spec,
            },
        },
    })
}

fn pod_disruption_budget(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": cx.meta(cx.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": cx.selector() },
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    })
}

/// As strict as OpenShift's `restricted-v2`, plus a read-only root filesystem; UIDs, GIDs and
/// SELinux labels come from the namespace's ranges.
fn scc(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "security.openshift.io/v1",
        "kind": "SecurityContextConstraints",
        "metadata": { "name": cx.scc(), "labels": cx.labels() },
        "allowHostDirVolumePlugin": false,
        "allowHostIPC": false,
        "allowHostNetwork": false,
        "allowHostPID": false,
        "allowHostPorts": false,
        "allowPrivilegeEscalation": false,
        "allowPrivilegedContainer": false,
        "allowedCapabilities": null,
        "defaultAddCapabilities": null,
        "priority": null,
        "readOnlyRootFilesystem": true,
        "requiredDropCapabilities": ["ALL"],
        "runAsUser": { "type": "MustRunAsRange" },
        "seLinuxContext": { "type": "MustRunAs" },
        "fsGroup": { "type": "MustRunAs" },
        "supplementalGroups": { "type": "RunAsAny" },
        "seccompProfiles": ["runtime/default"],
        "volumes": ["configMap", "downwardAPI", "emptyDir", "projected", "secret"],
        "users": [],
        "groups": [],
    })
}

fn scc_role(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": cx.meta(&cx.scc_role()),
        "rules": [{
            "apiGroups": ["security.openshift.io"],
            "resources": ["securitycontextconstraints"],
            "resourceNames": [cx.scc()],
            "verbs": ["use"],
        }],
    })
}

fn scc_role_binding(cx: &Ctx) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": cx.meta(&cx.scc_role()),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": cx.scc_role(),
        },
        "subjects": [{ "kind": "ServiceAccount", "name": cx.name, "namespace": cx.ns }],
    })
}

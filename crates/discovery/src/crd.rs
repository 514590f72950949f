//! The `InferenceEndpoint` custom resource (`infergate.io/v1`): one scoring URL, its deployments
//! (each a Service whose EndpointSlices hold the pods) and the traffic split.

use std::collections::BTreeMap;

use infergate_config::RequestSettings;
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The spec of an `InferenceEndpoint`; its `metadata.name` is the URL name
/// (`/api/v1/endpoint/<name>/score`).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infergate.io",
    version = "v1",
    kind = "InferenceEndpoint",
    namespaced,
    status = "InferenceEndpointStatus",
    shortname = "ie",
    category = "infergate",
    doc = "A scoring endpoint served by infergate: metadata.name is the URL name, each deployment names a Service whose EndpointSlices hold the model pods.",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceEndpointSpec {
    /// Percent of unpinned requests per deployment name. Sums to 100, or all 0 (then only
    /// requests pinning a deployment with the `azureml-model-deployment` header are served).
    /// May be omitted when there is exactly one deployment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<String, u32>,
    /// The deployments behind this endpoint.
    pub deployments: Vec<InferenceDeployment>,
    /// How callers authenticate: `{mode: key|token|none, secretName}`. Omitted: key mode, keys
    /// from the Secret `secretName` in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthRef>,
    /// Forward the caller's `Authorization` header to the pods (for a model that does its own
    /// authentication). Default false: the router removes it in every auth mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_authorization: Option<bool>,
}

/// One deployment: a Service in the endpoint's namespace whose ready endpoints are the pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceDeployment {
    /// The name clients pin with the `azureml-model-deployment` header.
    pub name: String,
    /// A Service in the same namespace; its EndpointSlices (label `kubernetes.io/service-name`)
    /// list the pods.
    pub service_name: String,
    /// The pod port: a number (the target port as the EndpointSlice lists it) or the Service
    /// port's name. May be omitted when the Service has a single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub port: Option<PortRef>,
    /// Path of the scoring route on the pod (default `/score`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring_path: Option<String>,
    /// Path of the swagger document on the pod (default `/swagger.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swagger_path: Option<String>,
    /// Overrides of the router's `defaults`: any of its keys (`requestTimeoutMs`,
    /// `maxConcurrentRequestsPerInstance`, `maxQueueWaitMs`, `maxRequestBodyBytes`, ...), each
    /// at most the router's ceiling for it (`requestSettingsCeilings`; above it the endpoint is
    /// not routed and its status says why).
    #[serde(default, skip_serializing_if = "is_default_settings")]
    #[schemars(schema_with = "request_settings_schema")]
    pub request_settings: RequestSettings,
    /// Autoscaling of this deployment's workload by the router: `scaleTargetRef` {apiVersion
    /// (apps/v1), kind (Deployment), name} of anything with a scale subresource, minInstances
    /// (1; 0 = scale to zero), maxInstances (10), targetUtilizationPercentage (70),
    /// pollingIntervalSeconds (1), scaleDownDelaySeconds (60), coldStartWaitMs (60000).
    /// Omitted: no autoscaling. A bad value is reported in status (condition `Scaling`) and
    /// never affects routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "scale_settings_schema")]
    pub scale_settings: Option<serde_json::Value>,
    /// What the router speaks to the pods: `http1` (default), `h2c` (HTTP/2 without TLS) or
    /// `h2` (HTTP/2 over TLS, with `upstreamTls`). gRPC calls go only to `h2c` and `h2`
    /// deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "protocol_schema")]
    pub protocol: Option<String>,
    /// With `protocol: h2`: how the pods' certificates are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsRef>,
}

/// `upstreamTls` of a deployment with `protocol: h2`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsRef {
    /// A PEM file of the CA certificate(s) that sign the pods' certificates, as a path on the
    /// router's own filesystem (the router's operator mounts it, e.g. from a ConfigMap); only
    /// these CAs are trusted. Read when the InferenceEndpoint is (re)applied.
    pub ca_pem_file: String,
    /// The name the pods' certificates hold (a DNS name or an IP address), also sent as SNI.
    /// Omitted: each pod's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn protocol_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "What the router speaks to the pods: http1 (default), h2c (HTTP/2 without TLS) or h2 (HTTP/2 over TLS, with upstreamTls). gRPC calls go only to h2c and h2 deployments.",
        "type": "string",
        "enum": ["http1", "h2c", "h2"],
    })
}

fn is_default_settings(s: &RequestSettings) -> bool {
    *s == RequestSettings::default()
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number (1-65535).
    Number(i64),
    /// A Service port name.
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// An endpoint's authentication reference, kept loosely typed: the Secret watch (issue 5)
/// turns it into an [`infergate_auth::AuthPolicy`]. Unknown keys are preserved by the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct AuthRef {
    /// `key` (default), `token` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// A Secret in the endpoint's namespace holding `primaryKey`/`secondaryKey` (key mode) or
    /// `signingKey` (token mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The pod port: a number (the target port as the EndpointSlice lists it) or the Service port's name. May be omitted when the Service has a single port.",
        "x-kubernetes-int-or-string": true,
    })
}

fn request_settings_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Overrides of the router's `defaults`: any of its keys (requestTimeoutMs, maxConcurrentRequestsPerInstance, maxQueueWaitMs, maxRequestBodyBytes, ...). Checked by the router: an unknown key, a bad value or one above the router's ceiling (requestSettingsCeilings) makes it skip the endpoint and report why in status.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn scale_settings_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Autoscaling of this deployment's workload by the router (azureml-fe's keys): scaleTargetRef {apiVersion (default apps/v1), kind (default Deployment), name} of anything with a scale subresource, minInstances (1; 0 = scale to zero), maxInstances (10), targetUtilizationPercentage (70), pollingIntervalSeconds (1), scaleDownDelaySeconds (60), coldStartWaitMs (60000). Omitted: no autoscaling. Checked by the router: a bad value is reported in status (condition Scaling) and never affects routing.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// What the router observed, written by the router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceEndpointStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods per deployment.
    #[serde(default)]
    pub deployments: Vec<DeploymentStatus>,
    /// `Accepted` (the spec is valid and this object owns its URL name) and `Ready` (every
    /// deployment with traffic has a ready pod).
    #[serde(default)]
    pub conditions: Vec<EndpointCondition>,
}

/// Pods of one deployment as the router sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Deployment name.
    pub name: String,
    /// Pods taking new requests (EndpointSlice condition `ready`).
    pub ready_pods: u32,
    /// Pods finishing their requests, taking no new ones (`serving` and `terminating`).
    pub terminating_pods: u32,
    /// The autoscaler's view, when the deployment has `scaleSettings` (written by the replica
    /// that holds the autoscaler Lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<DeploymentScale>,
}

/// What the autoscaler last saw and decided for one deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentScale {
    /// The scaled workload, `Kind/name`.
    pub target: String,
    /// Its replicas (`spec.replicas` of its scale subresource) when last read.
    pub current: u32,
    /// What the autoscaler wants.
    pub desired: u32,
    /// Why, in one line (utilization against target, the scale-down wait, a bound, ...).
    pub last_decision: String,
    /// When the autoscaler last changed the replicas (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
}

/// A condition, as in Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCondition {
    /// `Accepted` or `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// For humans.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CustomResourceDefinition of [`InferenceEndpoint`] as YAML, the way `infergate crd`
/// prints it and `deploy/crds/` commits it.
pub fn crd_yaml() -> String {
    let mut crd = serde_json::to_value(InferenceEndpoint::crd()).expect("a CRD serializes");
    integral_numbers(&mut crd);
    let body = serde_saphyr::to_string(&crd).expect("a CRD serializes");
    format!(
        "# GENERATED from the Rust type (crates/discovery/src/crd.rs) by `infergate crd`: do not edit.\n{body}"
    )
}

/// `minimum: 0.0` -> `minimum: 0`: schemars writes integral bounds as floats, which tools such
/// as kustomize rewrite; the committed CRD keeps the form they keep.
fn integral_numbers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *v = serde_json::Value::from(f as i64);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_numbers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

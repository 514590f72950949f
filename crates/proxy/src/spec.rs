//! What a route-table source (static file, Kubernetes discovery) hands the router: plain
//! descriptions of endpoints, deployments and pods, turned into a live table by
//! [`Router::publish_specs`](crate::Router::publish_specs).

use infergate_auth::AuthPolicy;
use infergate_balance::PodSpec;
use infergate_config::{AuthMode, Config, EndpointConfig, ResolvedSettings};

/// One deployment as a source describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    /// Deployment name (the `azureml-model-deployment` value).
    pub name: String,
    /// Pods that take new requests.
    pub pods: Vec<PodSpec>,
    /// Scoring path on the pod.
    pub scoring_path: String,
    /// Swagger path on the pod.
    pub swagger_path: String,
    /// Effective request settings.
    pub settings: ResolvedSettings,
    /// Percent of unpinned traffic.
    pub weight: u32,
}

/// One endpoint as a source describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    /// The URL name.
    pub name: String,
    /// Its deployments.
    pub deployments: Vec<DeploymentSpec>,
    /// Requests copied to another of its deployments.
    pub mirror: Option<MirrorSpec>,
    /// How callers authenticate; [`AuthPolicy::default`] refuses everything. Publishing a spec
    /// with a new policy takes effect for the next request (key rotation).
    pub auth: AuthPolicy,
    /// Whether `swagger.json` needs authentication too.
    pub swagger_auth: bool,
}

/// Mirroring: a share of an endpoint's requests copied to one of its deployments, answers discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The deployment receiving the copies.
    pub deployment: String,
    /// Percent of requests copied.
    pub percent: u32,
    /// Larger bodies (or streamed ones that grow larger) are not copied.
    pub max_body_bytes: u64,
}

/// The endpoints of a validated static configuration.
pub fn specs_from_config(cfg: &Config) -> Vec<EndpointSpec> {
    cfg.endpoints
        .iter()
        .map(|ep| EndpointSpec {
            name: ep.name.clone(),
            deployments: ep
                .deployments
                .iter()
                .zip(ep.weights())
                .map(|(d, weight)| DeploymentSpec {
                    name: d.name.clone(),
                    pods: d.pod_addrs().into_iter().map(PodSpec::from).collect(),
                    scoring_path: d.scoring_path.clone(),
                    swagger_path: d.swagger_path.clone(),
                    settings: cfg.resolved_settings(d),
                    weight,
                })
                .collect(),
            mirror: ep.mirror.as_ref().map(|m| MirrorSpec {
                deployment: m.deployment.clone(),
                percent: m.percent,
                max_body_bytes: m.max_body_bytes,
            }),
            auth: auth_policy(ep),
            swagger_auth: ep.swagger_auth,
        })
        .collect()
}

/// The policy of a validated endpoint. Token mode reads `signingKeyFile` here; should that fail
/// (the file changed since validation), the endpoint fails closed: it refuses every request.
fn auth_policy(ep: &EndpointConfig) -> AuthPolicy {
    let a = &ep.auth;
    match a.mode {
        AuthMode::None => AuthPolicy::None,
        AuthMode::Key => AuthPolicy::keys(
            a.primary_key.as_ref().map(|k| k.0.as_bytes()),
            a.secondary_key.as_ref().map(|k| k.0.as_bytes()),
        ),
        AuthMode::Token => {
            let key = a.signing_key_file.as_deref().map(|p| {
                infergate_config::read_signing_key_file("auth.signingKeyFile", p)
                    .map_err(|e| e.to_string())
                    .and_then(|k| AuthPolicy::token(&k).map_err(|e| e.to_string()))
            });
            match key {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::error!(endpoint = %ep.name, error = %e, "cannot load the signing key: every request to this endpoint is refused");
                    AuthPolicy::default()
                }
                None => AuthPolicy::default(),
            }
        }
    }
}

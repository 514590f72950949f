//! What a route-table source (static file, Kubernetes discovery) hands the router: plain
//! descriptions of endpoints, deployments and pods, turned into a live table by
//! [`Router::publish_specs`](crate::Router::publish_specs).

use infergate_balance::PodSpec;
use infergate_config::{Config, ResolvedSettings};

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
        })
        .collect()
}

//! The contract between route-table sources (static configuration, Kubernetes discovery) and the router: endpoint specs, readiness and publishing.
//!
//! A source describes endpoints as plain [`EndpointSpec`]s and hands them to a
//! [`PublishSpecs`] (the proxy's `Router`, which turns them into a live route table); it marks
//! [`Readiness`] published once its first full table is out. Nothing here does I/O, so a
//! source depends on this crate, not on the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use infergate_auth::AuthPolicy;
use infergate_config::{
    AuthMode, Config, ConfigError, EndpointConfig, ResolvedSettings, UpstreamProtocol, UpstreamTls,
};

/// A pod as discovery or configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The pod's name (Kubernetes `targetRef`), for logs and metrics.
    pub name: Option<Arc<str>>,
}

impl From<SocketAddr> for PodSpec {
    fn from(addr: SocketAddr) -> Self {
        PodSpec { addr, name: None }
    }
}

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
    /// Autoscaling of the deployment's workload, when its `scaleSettings` are set and valid.
    pub autoscale: Option<AutoscaleSpec>,
    /// What the router speaks to the pods (`protocol`, `upstreamTls`).
    pub transport: PodTransport,
}

/// How the router reaches a deployment's pods: the protocol, and for `h2` the trust it checks
/// their certificates with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodTransport {
    /// `protocol`.
    pub protocol: UpstreamProtocol,
    /// With `h2`: the CA certificates (read from `upstreamTls.caPemFile`) and the name.
    pub tls: Option<Arc<PodTls>>,
}

/// The trust for a deployment's pods' certificates (`upstreamTls`, its CA file read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTls {
    /// The CA certificates, DER. Empty when the file could not be read after validation: every
    /// handshake then fails (closed, not open).
    pub ca_certs: Vec<Vec<u8>>,
    /// The name the pods' certificates must hold (and SNI); `None`: each pod's IP address.
    pub server_name: Option<String>,
}

impl PodTransport {
    /// Plain HTTP/1.1 (the default).
    pub const HTTP1: PodTransport = PodTransport {
        protocol: UpstreamProtocol::Http1,
        tls: None,
    };

    /// The transport a deployment's `protocol` and `upstreamTls` describe (checked as
    /// [`infergate_config::validate_upstream`] does, at config key `key`), the CA file read now.
    pub fn load(
        key: &str,
        protocol: UpstreamProtocol,
        tls: Option<&UpstreamTls>,
    ) -> Result<Self, ConfigError> {
        infergate_config::validate_upstream(key, protocol, tls)?;
        let tls = match (protocol, tls) {
            (UpstreamProtocol::H2, Some(t)) => Some(Arc::new(PodTls {
                ca_certs: infergate_config::load_ca_pem(
                    &format!("{key}.upstreamTls.caPemFile"),
                    &t.ca_pem_file,
                )?,
                server_name: t.server_name.clone(),
            })),
            _ => None,
        };
        Ok(PodTransport { protocol, tls })
    }
}

/// A deployment's load as the autoscaler reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeploymentLoad {
    /// Slots taken.
    pub busy: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
    /// Pods taking new requests.
    pub ready_pods: u32,
    /// `maxConcurrentRequestsPerInstance`.
    pub slots_per_pod: u32,
    /// Mean time a pod takes to answer (the pods' latency estimates), once known.
    pub service_time: Option<std::time::Duration>,
    /// `maxQueueWaitMs`.
    pub max_queue_wait: std::time::Duration,
    /// Whether `busy` and `queued` are the whole fleet's (with `cluster`, as the deployment's
    /// owner replica reports them) or this replica's own.
    pub fleet_wide: bool,
}

/// One autoscaled deployment and its load now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscaleTarget {
    /// Endpoint (URL) name.
    pub endpoint: String,
    /// Deployment name.
    pub deployment: String,
    /// Its settings and namespace.
    pub spec: AutoscaleSpec,
    /// Its load.
    pub load: DeploymentLoad,
}

/// What the autoscaler needs of one deployment besides its pods and load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscaleSpec {
    /// The validated `scaleSettings`.
    pub settings: infergate_config::ScaleSettings,
    /// The InferenceEndpoint's namespace (where the workload is); `None` for a static
    /// configuration, whose decisions are only logged.
    pub namespace: Option<String>,
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
    /// Whether the client's `Authorization` header goes on to the pod (`passAuthorization`);
    /// by default it is removed in every mode.
    pub pass_authorization: bool,
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
                    autoscale: d.scale_settings.clone().map(|settings| AutoscaleSpec {
                        settings,
                        namespace: None,
                    }),
                    transport: transport(ep, d),
                })
                .collect(),
            mirror: ep.mirror.as_ref().map(|m| MirrorSpec {
                deployment: m.deployment.clone(),
                percent: m.percent,
                max_body_bytes: m.max_body_bytes,
            }),
            auth: auth_policy(ep),
            swagger_auth: ep.swagger_auth,
            pass_authorization: ep.pass_authorization,
        })
        .collect()
}

/// The transport of a validated deployment. Should its CA file no longer read (changed since
/// validation), the pods are not trusted at all: every TLS handshake with them fails.
fn transport(ep: &EndpointConfig, d: &infergate_config::DeploymentConfig) -> PodTransport {
    let key = format!("endpoints[{}].deployments[{}]", ep.name, d.name);
    PodTransport::load(&key, d.protocol, d.upstream_tls.as_ref()).unwrap_or_else(|e| {
        tracing::error!(endpoint = %ep.name, deployment = %d.name, error = %e, "the pods' CA cannot be read: every connection to them fails");
        PodTransport {
            protocol: d.protocol,
            tls: Some(Arc::new(PodTls {
                ca_certs: Vec::new(),
                server_name: None,
            })),
        }
    })
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
        )
        .unwrap_or_else(|e| {
            // (Validation refuses short keys first; fail closed should one get here.)
            tracing::error!(endpoint = %ep.name, error = %e, "every request to this endpoint is refused");
            AuthPolicy::default()
        }),
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

/// Takes a source's endpoints and makes them the route table (the proxy's `Router`).
pub trait PublishSpecs: Send + Sync {
    /// Replaces the route table with `specs`; what did not change keeps its state.
    fn publish_specs(&self, specs: &[EndpointSpec]);
}

/// Readiness: routes published, no source of them failed, and not draining.
#[derive(Debug, Default)]
pub struct Readiness {
    published: AtomicBool,
    draining: AtomicBool,
    failed: AtomicBool,
}

impl Readiness {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.published.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.failed.load(Ordering::Acquire)
    }

    /// Marks the source of the route table as dead (its task ended or panicked, so the table
    /// would never change again): not ready from now on, for good. The last table keeps
    /// serving the requests that still arrive.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Whether [`Readiness::set_failed`] was called.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the route table as published (or not). The server does it at bind for a static
    /// configuration; with `discovery.kube` the discovery task does it after the first full
    /// sync of every watch.
    pub fn set_published(&self, published: bool) {
        self.published.store(published, Ordering::Release);
    }

    /// Marks the server as draining (shutting down): not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_published_until_draining() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        r.set_published(true);
        assert!(r.is_ready());
        r.set_published(false);
        assert!(!r.is_ready());
        r.set_published(true);
        r.set_draining();
        assert!(!r.is_ready());
        r.set_published(true);
        assert!(!r.is_ready(), "draining is for good");
    }

    #[test]
    fn a_failed_source_is_not_ready_for_good() {
        let r = Readiness::default();
        r.set_published(true);
        assert!(r.is_ready() && !r.is_failed());
        r.set_failed();
        assert!(!r.is_ready() && r.is_failed());
        r.set_published(true);
        assert!(!r.is_ready(), "failed is for good");
    }

    #[test]
    fn publishers_are_object_safe() {
        struct Count(std::sync::Mutex<Vec<usize>>);
        impl PublishSpecs for Count {
            fn publish_specs(&self, specs: &[EndpointSpec]) {
                self.0.lock().unwrap().push(specs.len());
            }
        }
        let c = Arc::new(Count(Default::default()));
        let p: Arc<dyn PublishSpecs> = c.clone();
        p.publish_specs(&[]);
        assert_eq!(*c.0.lock().unwrap(), vec![0]);
    }

    #[test]
    fn static_endpoints_become_specs() {
        let cfg = Config::from_yaml(
            "allowInsecureConnections: true\n\
             endpoints:\n\
             - name: demo\n\
             \x20 auth: {mode: none}\n\
             \x20 traffic: {blue: 90, green: 10}\n\
             \x20 deployments:\n\
             \x20 - {name: blue, pods: [\"10.0.0.1:5001\", \"10.0.0.2:5001\"]}\n\
             \x20 - {name: green, pods: [\"10.0.0.3:5001\"]}\n",
            "<test>",
        )
        .unwrap();
        let specs = specs_from_config(&cfg);
        assert_eq!(specs.len(), 1);
        let ep = &specs[0];
        assert_eq!(ep.name, "demo");
        assert_eq!(ep.auth, AuthPolicy::None);
        let got: Vec<(&str, u32, usize)> = ep
            .deployments
            .iter()
            .map(|d| (d.name.as_str(), d.weight, d.pods.len()))
            .collect();
        assert_eq!(got, vec![("blue", 90, 2), ("green", 10, 1)]);
        assert_eq!(
            ep.deployments[0].pods[0],
            PodSpec::from(SocketAddr::from(([10, 0, 0, 1], 5001)))
        );
    }
}

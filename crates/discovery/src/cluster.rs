//! Kubernetes wiring: the client, the watches of every configured namespace, the status writer.

use std::sync::Arc;
use std::time::Duration;

use infergate_config::{Defaults, KubeDiscoveryConfig, RequestSettingsCeilings};
use infergate_metrics::Registry;
use infergate_spec::{PublishSpecs, Readiness};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use crate::crd::InferenceEndpoint;
use crate::index::{AUTH_SECRET_SELECTOR, SERVICE_NAME_LABEL};
use crate::status::write_statuses;
use crate::watch::{Discovery, Feed};

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No client configuration (neither in-cluster nor KUBECONFIG).
    #[error(
        "config key `discovery.kube`: cannot build a Kubernetes client: {0}; fix: run in a pod \
         with a service account, or set KUBECONFIG to a kubeconfig file (or remove \
         `discovery.kube` to serve the static `endpoints`)"
    )]
    Client(#[source] kube::Error),
}

/// Retry timing of failed lists and watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Longest delay (the delay doubles up to it).
    pub max: Duration,
}

impl Default for Backoff {
    /// client-go's reflector timing: 800 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(800),
            max: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with +-20 % jitter, reset by any successful event.
pub(crate) struct Exp {
    b: Backoff,
    next: Option<Duration>,
    seed: u64,
}

impl Iterator for Exp {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = match self.next {
            None => self.b.min,
            Some(d) => (d * 2).min(self.b.max),
        };
        self.next = Some(d);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.8 + (self.seed % 1000) as f64 / 2500.0;
        Some(d.mul_f64(jitter))
    }
}

impl kube::runtime::utils::Backoff for Exp {
    fn reset(&mut self) {
        self.next = None;
    }
}

pub(crate) fn exp(b: Backoff) -> Exp {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    Exp {
        b,
        next: None,
        seed,
    }
}

/// A client from the environment, as kube finds it: KUBECONFIG (or `~/.kube/config`), else
/// the pod's service account.
pub async fn client_from_env() -> Result<Client, DiscoveryError> {
    Client::try_default().await.map_err(DiscoveryError::Client)
}

/// The watch feeds of `cfg`: per namespace (or once for all), InferenceEndpoints, the
/// EndpointSlices that belong to a Service, and the Secrets labelled `infergate.io/auth=true`
/// (the endpoints' keys; selected by the API server, so no other Secret is ever sent to the
/// router; the index keeps only the auth entries).
pub fn feeds(client: &Client, cfg: &KubeDiscoveryConfig, backoff: Backoff) -> Vec<Feed> {
    let ar = ApiResource::erase::<InferenceEndpoint>(&());
    let scopes: Vec<Option<&str>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut feeds = Vec::new();
    for ns in scopes {
        let ie: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let slices: Api<EndpointSlice> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        feeds.push(Feed::endpoints(
            ns,
            watcher(ie, watcher::Config::default()).backoff(exp(backoff)),
        ));
        feeds.push(Feed::slices(
            ns,
            watcher(
                slices,
                watcher::Config::default().labels(SERVICE_NAME_LABEL),
            )
            .backoff(exp(backoff)),
        ));
        let secrets: Api<Secret> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        feeds.push(Feed::secrets(
            ns,
            watcher(
                secrets,
                watcher::Config::default().labels(AUTH_SECRET_SELECTOR),
            )
            .backoff(exp(backoff)),
        ));
    }
    feeds
}

/// Starts discovery with `client`: the watches, the index publishing to `publisher` (the
/// proxy's `Router`), `readiness` marked published after the first full sync, and the status
/// writer, all counting in `registry`. Runs until the returned task is aborted; should it end
/// by itself (a panic), `readiness` fails for good and an ERROR log says so
/// ([`Discovery::spawn`]).
#[expect(
    clippy::too_many_arguments,
    reason = "the binary's one call site names each part; a struct would only rename them"
)]
pub fn spawn(
    client: Client,
    cfg: &KubeDiscoveryConfig,
    (defaults, ceilings): (Defaults, RequestSettingsCeilings),
    publisher: Arc<dyn PublishSpecs>,
    readiness: Arc<Readiness>,
    registry: &Registry,
    backoff: Backoff,
    board: Option<Arc<crate::ScaleBoard>>,
) -> tokio::task::JoinHandle<()> {
    let feeds = feeds(&client, cfg, backoff);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_statuses(client, rx, registry.clone(), board));
    let namespaces = if cfg.namespaces.is_empty() {
        "(all)".to_string()
    } else {
        cfg.namespaces.join(",")
    };
    tracing::info!(
        %namespaces,
        secrets = AUTH_SECRET_SELECTOR,
        endpoint_slice_managers = %cfg.endpoint_slice_managers.join(","),
        "discovery: watching InferenceEndpoints, EndpointSlices and labelled Secrets"
    );
    let d = Discovery::new(defaults, publisher)
        .with_ceilings(ceilings)
        .with_registry(registry)
        .with_readiness(readiness)
        .with_status_sink(tx)
        .with_slice_managers(cfg.endpoint_slice_managers.clone())
        // Retries come at most 1.2 x max apart (jitter): quiet for longer means recovered.
        .with_recovery_window(backoff.max * 2 + Duration::from_secs(1));
    // The writer ends by itself when the discovery task's sender is dropped (the task ended,
    // panicked or was aborted).
    drop(writer);
    d.spawn(feeds)
}

/// The client for `cfg.discovery.kube`, or `None` without it. Built before any port is bound,
/// so a missing kubeconfig stops start-up.
///
/// kube's TLS is rustls: install the process's crypto provider first (the binary calls
/// `infergate_tls::install_crypto_provider`), so that kube never has to pick one.
pub async fn client_if_configured(
    cfg: &infergate_config::Config,
) -> Result<Option<Client>, DiscoveryError> {
    let peers_from_kube = cfg.cluster.as_ref().is_some_and(|c| c.kube.is_some());
    if cfg.discovery.kube.is_some() || peers_from_kube {
        client_from_env().await.map(Some)
    } else {
        Ok(None)
    }
}

/// [`spawn`] with the configuration's namespaces, defaults and the default backoff, publishing
/// to `publisher` and marking `readiness` (the binary passes its bound server's router and
/// readiness). With `board`, the status writer merges the autoscaler's view into the status
/// it writes. Without `discovery.kube` it does nothing.
pub fn start(
    client: Client,
    cfg: &infergate_config::Config,
    publisher: Arc<dyn PublishSpecs>,
    readiness: Arc<Readiness>,
    registry: &Registry,
    board: Option<Arc<crate::ScaleBoard>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let kube = cfg.discovery.kube.as_ref()?;
    Some(spawn(
        client,
        kube,
        (cfg.defaults, cfg.request_settings_ceilings),
        publisher,
        readiness,
        registry,
        Backoff::default(),
        board,
    ))
}

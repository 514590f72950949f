//! The autoscaler in `serve`: with `discovery.kube`, every replica runs the leader election on
//! the `autoscaler.leaseName` Lease in its own namespace and the one that holds it scales the
//! deployments with `scaleSettings`; with a static configuration whose deployments have
//! `scaleSettings`, the decisions are only logged.

use std::sync::Arc;
use std::time::Duration;

use infergate_autoscale::controller::{Controller, ControllerConfig, IsLeader};
use infergate_autoscale::lease::{self, Leadership, LeaseConfig};
use infergate_config::Config;
use infergate_discovery::ScaleBoard;
use infergate_proxy::Router;

/// The running autoscaler.
pub struct Running {
    controller: tokio::task::JoinHandle<()>,
    leadership: Option<Leadership>,
}

/// This replica's name: `POD_NAME` (the downward API, as `render` sets it), else `HOSTNAME`
/// (the pod name in Kubernetes), else a name made from the process id.
fn identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| format!("infergate-{}", std::process::id()))
}

/// Starts the autoscaler when there is something for it to do (see the module docs).
pub fn start(
    kube: Option<&kube::Client>,
    cfg: &Config,
    router: &Arc<Router>,
    board: Option<Arc<ScaleBoard>>,
) -> Option<Running> {
    let fleet = {
        let r = router.clone();
        Arc::new(move || r.autoscale_targets())
    };
    let identity = identity();
    let ccfg = ControllerConfig {
        identity: identity.clone(),
        ..ControllerConfig::default()
    };
    match (kube, &cfg.discovery.kube) {
        (Some(client), Some(_)) => {
            let a = &cfg.autoscaler;
            let namespace = infergate_discovery::peer_namespace(None);
            let l = lease::spawn(
                client.clone(),
                LeaseConfig {
                    namespace: namespace.clone(),
                    name: a.lease_name.clone(),
                    identity: identity.clone(),
                    lease_duration: Duration::from_millis(a.lease_duration_ms),
                    retry_period: Duration::from_millis(a.retry_period_ms),
                    renew_deadline: Duration::from_millis(a.renew_deadline_ms),
                },
            );
            tracing::info!(%identity, lease = %format!("{namespace}/{}", a.lease_name), "autoscaler: leader election started");
            let is_leader: IsLeader = {
                let l = l.clone();
                Arc::new(move || l.is_leader())
            };
            let c = Controller::new(
                Some(client.clone()),
                fleet,
                is_leader,
                board,
                router.registry(),
                ccfg,
            );
            let give_up = l.clone();
            Some(Running {
                // A loop that stops stops renewing the Lease: another replica takes over when
                // it expires.
                controller: c.spawn_with(move || give_up.abort()),
                leadership: Some(l),
            })
        }
        _ if cfg
            .endpoints
            .iter()
            .flat_map(|e| &e.deployments)
            .any(|d| d.scale_settings.is_some()) =>
        {
            tracing::info!(
                "autoscaler: static configuration: scaling decisions are logged, nothing is scaled"
            );
            let c = Controller::new(
                None,
                fleet,
                Arc::new(|| true),
                None,
                router.registry(),
                ccfg,
            );
            Some(Running {
                controller: c.spawn(),
                leadership: None,
            })
        }
        _ => None,
    }
}

impl Running {
    /// Stops deciding and hands the Lease over at once (the next replica need not wait for it
    /// to expire).
    pub async fn stop(self) {
        self.controller.abort();
        if let Some(l) = self.leadership {
            l.release().await;
        }
    }
}

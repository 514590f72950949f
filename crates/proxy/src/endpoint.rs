//! Endpoint-wide state and the authorization phase: the check made right after the route lookup
//! (before a deployment is chosen, a pod contacted or a slot taken), its per-reason counters, and
//! the logs when a published policy changes.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};
use infergate_auth::{AuthFailure, AuthPolicy};
use infergate_metrics::{Counter, Registry};
use infergate_routing::Action;

use crate::deployment::DeploymentState;
use crate::metrics::AUTH_FAILURES_TOTAL;
use infergate_spec::{EndpointSpec, MirrorSpec};

/// Endpoint-wide state.
#[derive(Debug)]
pub struct EndpointState {
    /// Endpoint name.
    pub name: Arc<str>,
    /// How callers authenticate: always the policy of the latest published spec.
    pub auth: AuthPolicy,
    /// Whether `swagger.json` needs authentication too.
    pub swagger_auth: bool,
    /// Whether the client's `Authorization` header reaches the pods (`passAuthorization`).
    pub pass_authorization: bool,
    /// Refusals by reason (handles kept across route-table swaps).
    auth_failures: Arc<AuthFailureCounters>,
    /// Requests copied to another deployment, if any.
    pub mirror: Option<MirrorSpec>,
    /// The spec this endpoint was built from: an unchanged spec reuses the endpoint as is.
    pub(crate) spec: EndpointSpec,
}

impl EndpointState {
    /// The spec this endpoint serves.
    pub fn spec(&self) -> &EndpointSpec {
        &self.spec
    }

    /// The state for `spec`, keeping `prev`'s counters when the endpoint existed before.
    pub(crate) fn new(
        spec: &EndpointSpec,
        prev: Option<&EndpointState>,
        registry: &Registry,
    ) -> Self {
        log_policy_change(prev, spec);
        EndpointState {
            name: spec.name.as_str().into(),
            auth: spec.auth.clone(),
            swagger_auth: spec.swagger_auth,
            pass_authorization: spec.pass_authorization,
            auth_failures: prev.map_or_else(
                || AuthFailureCounters::new(registry, &spec.name),
                |p| p.auth_failures.clone(),
            ),
            mirror: spec.mirror.clone(),
            spec: spec.clone(),
        }
    }

    /// Checks the request against the endpoint's policy: scoring, the Open Inference Protocol
    /// paths and gRPC calls always (unless the mode is `none`), swagger only with `swaggerAuth`;
    /// a token lives at most `max_token_lifetime`.
    /// (The `Authorization` header is removed before forwarding, in every mode, unless the
    /// endpoint sets `passAuthorization`: see `headers::rewrite_request`.)
    pub(crate) fn authorize(
        &self,
        action: Action,
        headers: &HeaderMap,
        max_token_lifetime: Duration,
    ) -> Result<(), AuthFailure> {
        if matches!(self.auth, AuthPolicy::None) {
            return Ok(());
        }
        if action != Action::Swagger || self.swagger_auth {
            let checked = self.auth.check_with(
                headers.get(header::AUTHORIZATION),
                &self.name,
                SystemTime::now(),
                max_token_lifetime,
            );
            if let Err(reason) = checked {
                self.auth_failures.count(reason);
                return Err(reason);
            }
        }
        Ok(())
    }
}

/// `infergate_auth_failures_total{endpoint, reason}` handles for one endpoint, each registered
/// on its first use and then reused (no allocation per request). Kept across route-table swaps.
#[derive(Debug)]
struct AuthFailureCounters {
    registry: Registry,
    endpoint: Arc<str>,
    by_reason: [OnceLock<Counter>; AuthFailure::ALL.len()],
}

impl AuthFailureCounters {
    fn new(registry: &Registry, endpoint: &str) -> Arc<Self> {
        Arc::new(AuthFailureCounters {
            registry: registry.clone(),
            endpoint: endpoint.into(),
            by_reason: Default::default(),
        })
    }

    fn count(&self, reason: AuthFailure) {
        self.by_reason[reason.index()]
            .get_or_init(|| {
                self.registry.counter(
                    AUTH_FAILURES_TOTAL,
                    &[("endpoint", &self.endpoint), ("reason", reason.reason())],
                )
            })
            .increment(1);
    }
}

/// Logs what an operator needs to know when `spec`'s policy replaces `prev`'s (no secret is
/// ever logged): a warning when an endpoint starts refusing everything, an info line when the
/// keys or mode change (rotation).
fn log_policy_change(prev: Option<&EndpointState>, spec: &EndpointSpec) {
    let refuses = spec.auth.refuses_all();
    if refuses && !prev.is_some_and(|p| p.auth.refuses_all()) {
        tracing::warn!(
            endpoint = %spec.name,
            "endpoint is in auth mode `key` with no key configured: every request is refused with 401; \
             set auth.primaryKey (or the Secret's primaryKey), or write `auth: {{mode: none}}` to serve without authentication"
        );
    } else if let Some(p) = prev
        && p.auth != spec.auth
    {
        tracing::info!(
            endpoint = %spec.name,
            mode = ?spec.auth.mode(),
            "endpoint authentication changed; it applies to the next request"
        );
    }
}

/// The route table the proxy serves: each endpoint carries its policy, each deployment its
/// live state.
pub type Table = infergate_routing::RouteTable<Arc<DeploymentState>, Arc<EndpointState>>;
/// An endpoint of the [`Table`].
pub(crate) type Endpoint = infergate_routing::Endpoint<Arc<DeploymentState>, Arc<EndpointState>>;
/// A deployment of the [`Table`].
pub(crate) type Deployment = infergate_routing::Deployment<Arc<DeploymentState>>;

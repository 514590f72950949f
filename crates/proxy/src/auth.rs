//! Endpoint authentication on the request path: the check made right after the route lookup
//! (before a deployment is chosen, a pod contacted or a slot taken), its per-reason counters,
//! and the logs when a published policy changes.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::{HeaderMap, header};
use infergate_auth::{AuthFailure, AuthPolicy};
use infergate_routing::Action;
use infergate_spec::EndpointSpec;
use metrics::{Counter, Label};

use crate::metrics::AUTH_FAILURES_TOTAL;
use crate::service::EndpointState;

/// `infergate_auth_failures_total{endpoint, reason}` handles for one endpoint, each registered
/// on its first use and then reused (no allocation per request). Kept across route-table swaps.
#[derive(Debug)]
pub struct AuthFailureCounters {
    endpoint: Arc<str>,
    by_reason: [OnceLock<Counter>; AuthFailure::ALL.len()],
}

impl AuthFailureCounters {
    /// Counters for `endpoint`.
    pub fn new(endpoint: &str) -> Arc<Self> {
        Arc::new(AuthFailureCounters {
            endpoint: endpoint.into(),
            by_reason: Default::default(),
        })
    }

    /// Counts one refusal.
    pub fn count(&self, reason: AuthFailure) {
        self.by_reason[reason.index()]
            .get_or_init(|| {
                metrics::counter!(
                    AUTH_FAILURES_TOTAL,
                    vec![
                        Label::new("endpoint", self.endpoint.to_string()),
                        Label::new("reason", reason.reason()),
                    ]
                )
            })
            .increment(1);
    }
}

impl EndpointState {
    /// Checks the request against the endpoint's policy: scoring always (unless the mode is
    /// `none`), swagger only with `swaggerAuth`. On success the `Authorization` header is
    /// removed when the router consumed it (key and token modes): the model never sees the
    /// router's credentials. In mode `none` the header passes through untouched.
    pub(crate) fn authorize(
        &self,
        action: Action,
        headers: &mut HeaderMap,
    ) -> Result<(), AuthFailure> {
        if matches!(self.auth, AuthPolicy::None) {
            return Ok(());
        }
        if action == Action::Score || self.swagger_auth {
            let checked = self.auth.check(
                headers.get(header::AUTHORIZATION),
                &self.name,
                SystemTime::now(),
            );
            if let Err(reason) = checked {
                self.auth_failures.count(reason);
                return Err(reason);
            }
        }
        headers.remove(header::AUTHORIZATION);
        Ok(())
    }
}

/// Logs what an operator needs to know when `spec`'s policy replaces `prev`'s (no secret is
/// ever logged): a warning when an endpoint starts refusing everything, an info line when the
/// keys or mode change (rotation).
pub(crate) fn log_policy_change(prev: Option<&EndpointState>, spec: &EndpointSpec) {
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

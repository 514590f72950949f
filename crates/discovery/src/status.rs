//! Writes InferenceEndpoint status (merge patch on the `status` subresource), newest first,
//! retrying failures with backoff.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;

use crate::crd::{InferenceEndpoint, InferenceEndpointStatus};
use crate::index::{ObjectKey, StatusUpdate};
use infergate_metrics::Registry;

use crate::metrics::STATUS_WRITES_TOTAL;

/// Writes the updates received on `rx` until it closes.
/// Writes are counted in `registry`.
pub async fn write_statuses(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<StatusUpdate>,
    registry: Registry,
) {
    let ok = registry.counter(STATUS_WRITES_TOTAL, &[("result", "ok")]);
    let failed_writes = registry.counter(STATUS_WRITES_TOTAL, &[("result", "failed")]);
    let ar = ApiResource::erase::<InferenceEndpoint>(&());
    let mut pending: BTreeMap<ObjectKey, StatusUpdate> = BTreeMap::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(u) => {
                    pending.insert(u.key.clone(), u);
                }
                None => return,
            }
        }
        while let Ok(u) = rx.try_recv() {
            pending.insert(u.key.clone(), u);
        }
        let mut failed = false;
        for (key, u) in std::mem::take(&mut pending) {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &ar);
            let body =
                json!({ "status": with_times(&u.status, u.observed.as_ref(), Timestamp::now()) });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => ok.increment(1),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    failed_writes.increment(1);
                    tracing::warn!(object = %key, error = %e, "discovery: cannot write InferenceEndpoint status; retrying");
                    failed = true;
                    // A newer update received meanwhile wins.
                    pending.entry(key).or_insert(u);
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                u = rx.recv() => match u {
                    Some(u) => { pending.insert(u.key.clone(), u); }
                    None => return,
                },
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(500);
        }
    }
}

/// `status` with each condition's `lastTransitionTime`: the observed one when the condition's
/// status did not change, `now` otherwise.
pub fn with_times(
    status: &InferenceEndpointStatus,
    observed: Option<&InferenceEndpointStatus>,
    now: Timestamp,
) -> InferenceEndpointStatus {
    let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut s = status.clone();
    for c in &mut s.conditions {
        let prev = observed
            .into_iter()
            .flat_map(|o| o.conditions.iter())
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .and_then(|p| p.last_transition_time.clone());
        c.last_transition_time = Some(prev.unwrap_or_else(|| now.clone()));
    }
    s
}

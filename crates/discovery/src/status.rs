//! Writes InferenceEndpoint status (merge patch on the `status` subresource), newest first,
//! retrying failures with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;

use crate::crd::{InferenceEndpoint, InferenceEndpointStatus};
use crate::index::{ObjectKey, StatusUpdate};
use crate::scale_board::{EndpointScale, SCALING, ScaleBoard, merge_scale};
use infergate_metrics::Registry;

use crate::metrics::STATUS_WRITES_TOTAL;

/// What is to be written for one object.
enum Pending {
    /// Discovery's new status (the autoscaler's fields merged in when written).
    Discovery(StatusUpdate),
    /// Only the autoscaler's view changed: read the object, put the view in, write it back.
    ScaleOnly,
}

/// Writes the updates received on `rx` until it closes, and, with `board`, the autoscaler's
/// view of each endpoint whenever it changes. Writes are counted in `registry`.
pub async fn write_statuses(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<StatusUpdate>,
    registry: Registry,
    board: Option<Arc<ScaleBoard>>,
) {
    let ok = registry.counter(STATUS_WRITES_TOTAL, &[("result", "ok")]);
    let failed_writes = registry.counter(STATUS_WRITES_TOTAL, &[("result", "failed")]);
    let ar = ApiResource::erase::<InferenceEndpoint>(&());
    let mut pending: BTreeMap<ObjectKey, Pending> = BTreeMap::new();
    // The autoscaler views written so far.
    let mut written: BTreeMap<ObjectKey, EndpointScale> = BTreeMap::new();
    let mut board_rx = board.as_ref().map(|b| b.subscribe());
    let mut backoff = Duration::from_millis(500);
    let scale_changes = |written: &BTreeMap<ObjectKey, EndpointScale>,
                         pending: &mut BTreeMap<ObjectKey, Pending>| {
        if let Some(b) = &board {
            for (k, v) in b.all() {
                if written.get(&k) != Some(&v) {
                    pending.entry(k).or_insert(Pending::ScaleOnly);
                }
            }
        }
    };
    loop {
        if pending.is_empty() {
            tokio::select! {
                u = rx.recv() => match u {
                    Some(u) => {
                        pending.insert(u.key.clone(), Pending::Discovery(u));
                    }
                    None => return,
                },
                Ok(()) = async {
                    match board_rx.as_mut() {
                        Some(r) => r.changed().await,
                        None => std::future::pending().await,
                    }
                } => scale_changes(&written, &mut pending),
            }
        }
        while let Ok(u) = rx.try_recv() {
            pending.insert(u.key.clone(), Pending::Discovery(u));
        }
        let mut failed = false;
        for (key, p) in std::mem::take(&mut pending) {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &ar);
            let view = board.as_ref().and_then(|b| b.get(&key));
            let (status, observed) = match &p {
                Pending::Discovery(u) => {
                    let mut status = u.status.clone();
                    if board.is_some() {
                        merge_scale(&mut status, u.observed.as_ref(), view.as_ref());
                    }
                    (status, u.observed.clone())
                }
                Pending::ScaleOnly => match api.get_status(&key.name).await {
                    Ok(obj) => {
                        let observed: InferenceEndpointStatus = obj
                            .data
                            .get("status")
                            .and_then(|s| serde_json::from_value(s.clone()).ok())
                            .unwrap_or_default();
                        let mut status = observed.clone();
                        status
                            .conditions
                            .retain(|c| c.type_ != SCALING || c.reason == "InvalidScaleSettings");
                        merge_scale(&mut status, Some(&observed), view.as_ref());
                        (status, Some(observed))
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => continue,
                    Err(e) => {
                        failed_writes.increment(1);
                        tracing::warn!(object = %key, error = %e, "cannot read InferenceEndpoint status; retrying");
                        failed = true;
                        pending.entry(key).or_insert(p);
                        continue;
                    }
                },
            };
            let body =
                json!({ "status": with_times(&status, observed.as_ref(), Timestamp::now()) });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    ok.increment(1);
                    if let Some(v) = view {
                        written.insert(key, v);
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    failed_writes.increment(1);
                    tracing::warn!(object = %key, error = %e, "discovery: cannot write InferenceEndpoint status; retrying");
                    failed = true;
                    // A newer update received meanwhile wins.
                    pending.entry(key).or_insert(p);
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                u = rx.recv() => match u {
                    Some(u) => { pending.insert(u.key.clone(), Pending::Discovery(u)); }
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

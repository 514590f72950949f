//! Mirroring: a share of an endpoint's requests copied to another of its deployments. The copy
//! never touches the client's response: it runs in its own task, takes a mirror slot only if one
//! is free, and its answer is discarded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Uri};
use infergate_balance::Outcome;
use infergate_routing::Action;
use tokio::time::Instant;

use crate::body::{RequestBody, RequestShared, Tee};
use crate::deployment::{DeploymentState, MirrorResult};
use crate::endpoint::Endpoint;

/// When this request is chosen for mirroring: a tee that sends the copy once the body has
/// streamed to the primary pod (or at once for an empty body).
pub(crate) fn tee(
    endpoint: &Endpoint,
    action: Action,
    parts: &Parts,
    client_uri: &Uri,
    roll: u64,
    shared: &RequestShared,
) -> Option<Tee> {
    let m = endpoint.state.mirror.as_ref()?;
    // A gRPC call is not copied: its frames and trailers stream both ways.
    if action == Action::Grpc || ((roll >> 40) % 100) as u32 >= m.percent {
        return None;
    }
    let target = endpoint.deployment(m.deployment.as_bytes())?;
    let state = target.balancer.clone();
    let skipped = state.metrics.mirror(MirrorResult::Skipped).clone();
    if shared
        .size_hint_exact()
        .is_some_and(|n| n > m.max_body_bytes)
    {
        skipped.increment(1);
        return None;
    }
    let mirror = MirrorRequest {
        state,
        method: parts.method.clone(),
        uri: target.upstream_uri(action, client_uri.path(), client_uri.query()),
        headers: parts.headers.clone(),
        timeout: Duration::from_millis(target.settings.request_timeout_ms),
    };
    if shared.is_empty_body() {
        tokio::spawn(mirror.send(Vec::new()));
        return None;
    }
    Some(Tee::new(
        m.max_body_bytes,
        Box::new(move |frames| {
            tokio::spawn(mirror.send(frames));
        }),
        skipped,
    ))
}

/// A copy of a request for the mirror deployment.
struct MirrorRequest {
    state: Arc<DeploymentState>,
    method: Method,
    /// None when the mirror deployment's path and the query make no valid URI.
    uri: Option<Uri>,
    headers: HeaderMap,
    timeout: Duration,
}

impl MirrorRequest {
    async fn send(self, body: Vec<Bytes>) {
        let state = &self.state;
        let Some(lease) = state.try_slot(rand::random()).await else {
            state.metrics.mirror(MirrorResult::Skipped).increment(1);
            return;
        };
        let Some(uri) = self.uri else {
            state.metrics.mirror(MirrorResult::Failed).increment(1);
            return;
        };
        let mut req = Request::new(RequestBody::buffered(body));
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers;
        let addr = lease.pod().addr();
        let send = async move {
            let conn = state
                .conns
                .checkout(addr, crate::forward::deadline_after(self.timeout))
                .await
                .ok()?;
            conn.send(req).await.ok()
        };
        let sent = Instant::now();
        let ok = match tokio::time::timeout(self.timeout, send).await {
            Ok(Some(resp)) => {
                let ok = !resp.status().is_server_error();
                // Read the answer to its end so the connection goes back to the pool; keep nothing.
                let mut b = resp.into_body();
                while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut b).await {}
                ok
            }
            _ => false,
        };
        let (outcome, result) = if ok {
            (Outcome::Success(sent.elapsed()), MirrorResult::Ok)
        } else {
            (Outcome::Failure, MirrorResult::Failed)
        };
        self.state.report(&lease, outcome);
        self.state.metrics.mirror(result).increment(1);
    }
}

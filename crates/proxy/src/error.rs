//! Every failure the proxy answers itself, and the one function that turns it into a response.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use infergate_auth::AuthFailure;
use infergate_balance::AcquireError;
use infergate_routing::RouteError;

use crate::body::ProxyBody;
use crate::headers::X_REQUEST_ID;

/// A failure answered by the router rather than by a pod.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route: unknown path, endpoint or deployment.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The request body is larger than the deployment allows.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// No pod slot could be had.
    #[error("{0}")]
    Unavailable(#[from] AcquireError),
    /// The pod did not send a response head in time.
    #[error("the model pod did not answer within {ms} ms")]
    UpstreamTimeout {
        /// The timeout in milliseconds.
        ms: u64,
    },
    /// The pod refused or could not be reached.
    #[error("could not connect to the model pod")]
    UpstreamConnect,
    /// The pod reset the connection or sent a malformed response.
    #[error("the model pod failed: {0}")]
    UpstreamFailed(&'static str),
    /// The endpoint's authentication refused the request (no key or token in the message).
    #[error("{reason}")]
    Unauthorized {
        /// Why.
        reason: AuthFailure,
    },
}

impl ProxyError {
    /// The HTTP status and the stable error code for this failure.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Route(r) => match r {
                RouteError::NoRoute => (StatusCode::NOT_FOUND, "NotFound"),
                RouteError::EndpointNotFound(_) => (StatusCode::NOT_FOUND, "EndpointNotFound"),
                RouteError::DeploymentNotFound { .. } => {
                    (StatusCode::NOT_FOUND, "DeploymentNotFound")
                }
                RouteError::NoTrafficAllocated(_) => (StatusCode::NOT_FOUND, "NoTrafficAllocated"),
                RouteError::MethodNotAllowed => {
                    (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
                }
            },
            ProxyError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge")
            }
            ProxyError::Unavailable(a) => match a {
                AcquireError::NoPods => (StatusCode::SERVICE_UNAVAILABLE, "NoPodAvailable"),
                AcquireError::QueueTimeout => (StatusCode::SERVICE_UNAVAILABLE, "QueueTimeout"),
                AcquireError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "QueueFull"),
            },
            ProxyError::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout"),
            ProxyError::UpstreamConnect => (StatusCode::BAD_GATEWAY, "UpstreamConnectFailed"),
            ProxyError::UpstreamFailed(_) => (StatusCode::BAD_GATEWAY, "UpstreamFailed"),
            ProxyError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        }
    }
}

/// The one place a [`ProxyError`] becomes a response: status, `{"error": {"code", "message"}, "requestId"}`
/// body, `x-request-id`, and `Retry-After` / `Allow` / `WWW-Authenticate` where they apply.
pub fn error_response(err: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let (status, code) = err.status_and_code();
    let body = serde_json::json!({
        "error": {"code": code, "message": err.to_string()},
        "requestId": request_id.to_str().unwrap_or(""),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(ProxyBody::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID, request_id.clone());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if let ProxyError::Unauthorized { reason } = err {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(reason.www_authenticate()),
        );
    }
    resp
}

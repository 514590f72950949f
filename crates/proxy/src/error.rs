//! Every failure the proxy answers itself, with its status and stable error code. The one
//! conversion into a response is [`error_response`](crate::error_response).

use http::StatusCode;
use infergate_auth::AuthFailure;
use infergate_balance::AcquireError;
use infergate_routing::RouteError;

use crate::grpc::Code;
use crate::watchdog::{Side, StreamTimer};

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
    /// The request head is over `limits.maxRequestHeaderBytes` or `limits.maxRequestHeaders`.
    #[error("the request head has more {what} than the limit of {limit}")]
    HeadTooLarge {
        /// What is counted: header fields, or bytes.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// An HTTP/1.1 request head began but did not complete within `limits.headerReadTimeoutMs`.
    #[error("the request head did not arrive within limits.headerReadTimeoutMs ({ms} ms)")]
    HeaderReadTimeout {
        /// The setting in milliseconds.
        ms: u64,
    },
    /// No pod slot could be had.
    #[error("{0}")]
    Unavailable(#[from] AcquireError),
    /// The replica that admits for the deployment could not be reached within the queue wait
    /// (`cluster.onOwnerUnreachable: refuse`).
    #[error("the router replica that admits for this deployment could not be reached")]
    OwnerUnavailable,
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
    /// A header name holds `_` and `headersWithUnderscores` is `reject`.
    #[error(
        "the header name `{name}` contains an underscore, which this router refuses (servers behind it may read it as the same header with `-`); send it with `-` instead"
    )]
    InvalidHeaderName {
        /// The header name (cut to 64 characters).
        name: String,
    },
    /// A stream timer ended the exchange before the response head: the client's upload stalled
    /// (408), the pod stopped reading it (504), or the exchange outlived `maxStreamDurationMs`.
    #[error(
        "the request did not complete: {} ({ms} ms) passed{}",
        timer.key(),
        if *side == Side::Pod { " while the model pod was not reading the request body" } else { "" }
    )]
    StreamTimeout {
        /// The timer that fired.
        timer: StreamTimer,
        /// Its setting in milliseconds.
        ms: u64,
        /// The side the exchange was waiting on.
        side: Side,
    },
    /// The endpoint's authentication refused the request (no key or token in the message).
    #[error("{reason}")]
    Unauthorized {
        /// Why.
        reason: AuthFailure,
    },
    /// A gRPC call's deadline (its `grpc-timeout`, at most the deployment's limits) passed
    /// before the pod answered.
    #[error("the call's deadline of {ms} ms (grpc-timeout) passed before the model pod answered")]
    DeadlineExceeded {
        /// The call's timeout in milliseconds.
        ms: u64,
    },
    /// A gRPC call's `grpc-timeout` is not 1-8 digits and a unit.
    #[error("grpc-timeout is not 1 to 8 digits followed by a unit (H, M, S, m, u or n), e.g. 500m")]
    InvalidGrpcTimeout,
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
                RouteError::NoGrpcEndpoint => (StatusCode::NOT_FOUND, "NoGrpcEndpoint"),
                RouteError::NoHttp2Deployment { .. } => {
                    (StatusCode::NOT_FOUND, "NoHttp2Deployment")
                }
            },
            ProxyError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge")
            }
            ProxyError::HeadTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "RequestHeaderFieldsTooLarge",
            ),
            ProxyError::HeaderReadTimeout { .. } => {
                (StatusCode::REQUEST_TIMEOUT, "RequestHeaderTimeout")
            }
            ProxyError::Unavailable(a) => match a {
                AcquireError::NoPods => (StatusCode::SERVICE_UNAVAILABLE, "NoPodAvailable"),
                AcquireError::QueueTimeout => (StatusCode::SERVICE_UNAVAILABLE, "QueueTimeout"),
                AcquireError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "QueueFull"),
                AcquireError::ColdStartTimeout => {
                    (StatusCode::SERVICE_UNAVAILABLE, "ColdStartTimeout")
                }
            },
            ProxyError::OwnerUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "OwnerUnavailable"),
            ProxyError::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout"),
            ProxyError::UpstreamConnect => (StatusCode::BAD_GATEWAY, "UpstreamConnectFailed"),
            ProxyError::UpstreamFailed(_) => (StatusCode::BAD_GATEWAY, "UpstreamFailed"),
            ProxyError::StreamTimeout { timer, side, .. } => (
                match side {
                    Side::Client => StatusCode::REQUEST_TIMEOUT,
                    Side::Pod => StatusCode::GATEWAY_TIMEOUT,
                },
                match timer {
                    StreamTimer::Idle => "StreamIdleTimeout",
                    StreamTimer::MaxDuration => "MaxStreamDuration",
                },
            ),
            ProxyError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ProxyError::InvalidHeaderName { .. } => (StatusCode::BAD_REQUEST, "InvalidHeaderName"),
            ProxyError::DeadlineExceeded { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "DeadlineExceeded")
            }
            ProxyError::InvalidGrpcTimeout => (StatusCode::BAD_REQUEST, "InvalidGrpcTimeout"),
        }
    }

    /// The gRPC status code a gRPC call gets for this failure (see `grpc.rs`): UNAUTHENTICATED
    /// for 401, RESOURCE_EXHAUSTED for 413, 431 and a full queue, DEADLINE_EXCEEDED for a
    /// deadline or a timer, NOT_FOUND for an unknown endpoint or deployment, UNIMPLEMENTED when
    /// no deployment speaks HTTP/2, INVALID_ARGUMENT for a malformed call, UNAVAILABLE for the
    /// rest (no slot in time, no pod, the pod unreachable or failing).
    pub fn grpc_code(&self) -> Code {
        match self {
            ProxyError::Unauthorized { .. } => Code::Unauthenticated,
            ProxyError::PayloadTooLarge { .. }
            | ProxyError::HeadTooLarge { .. }
            | ProxyError::Unavailable(AcquireError::QueueFull) => Code::ResourceExhausted,
            ProxyError::DeadlineExceeded { .. }
            | ProxyError::HeaderReadTimeout { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::StreamTimeout { .. } => Code::DeadlineExceeded,
            ProxyError::Route(
                RouteError::EndpointNotFound(_) | RouteError::DeploymentNotFound { .. },
            ) => Code::NotFound,
            ProxyError::Route(RouteError::NoHttp2Deployment { .. }) => Code::Unimplemented,
            ProxyError::Route(
                RouteError::NoRoute | RouteError::NoGrpcEndpoint | RouteError::MethodNotAllowed,
            )
            | ProxyError::InvalidHeaderName { .. }
            | ProxyError::InvalidGrpcTimeout => Code::InvalidArgument,
            ProxyError::Route(RouteError::NoTrafficAllocated(_))
            | ProxyError::Unavailable(_)
            | ProxyError::OwnerUnavailable
            | ProxyError::UpstreamConnect
            | ProxyError::UpstreamFailed(_) => Code::Unavailable,
        }
    }
}

impl From<AuthFailure> for ProxyError {
    fn from(reason: AuthFailure) -> Self {
        ProxyError::Unauthorized { reason }
    }
}

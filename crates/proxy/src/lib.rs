//! The infergate data path: listeners, TLS accept, forwarding to model pods, errors, metrics and access logs.
//!
//! [`Server::bind`] validates the configuration and binds; [`Server::run`] serves until a
//! shutdown signal and drains. Each request goes through [`Router::handle`], a list of phases:
//!
//! | phase | file |
//! |---|---|
//! | the connection: caps, TLS, protocol, deadlines, the head's size | `conn.rs` |
//! | the request's context, started (finished once, on drop) | `response.rs` |
//! | route: one route-table snapshot, the endpoint and action | `router.rs` |
//! | authorize: the endpoint's key or token | `endpoint.rs` |
//! | select and admit: the deployment, the body limit, a pod slot | `deployment.rs` |
//! | prepare and forward: headers, the pod's URI, the body, the attempts | `forward.rs` (+ `body.rs`, `mirror.rs`) |
//! | the pod connection: pooled, driven by the request; HTTP/1.1, or HTTP/2 multiplexed per pod | `upstream.rs` (+ `h1/`, the HTTP/1.1 codec; `upstream/h2.rs`, `upstream/frames.rs`) |
//! | gRPC calls: detection, `grpc-timeout`, the router's answers as gRPC statuses | `grpc.rs` |
//! | respond or rescue: the answer, or the one error-to-response conversion | `response.rs` |
//! | the swagger document, rewritten to name the router as its server | `swagger.rs` |
//! | trace context: the client's `traceparent`, the router's span | `trace.rs` |
//! | span export (`tracing.otlp`): the request's span and its phases, batched off the request path | `otlp.rs` |
//! | a client that leaves: the slot kept until the pod is done | `cancel.rs` |
//! | a client that stalls: the stream timers, outside the request's own future | `watchdog.rs` |
//! | which thread: per-core workers, a connection on one for its life | `workers.rs` |

pub mod body;
mod cancel;
mod conn;
mod deployment;
mod endpoint;
pub mod error;
mod forward;
pub mod grpc;
mod h1;
pub mod headers;
mod memory;
pub mod metrics;
mod mirror;
mod otlp;
mod response;
mod router;
mod server;
mod swagger;
pub mod trace;
mod upstream;
mod watchdog;
pub mod workers;

pub use conn::HeadLimits;
pub use deployment::{DeploymentState, pool_settings};
pub use endpoint::{EndpointState, Table};
pub use error::ProxyError;
pub use forward::ConnInfo;
pub use infergate_auth::{AuthFailure, AuthMode, AuthPolicy};
pub use infergate_balance::PodSpec;
pub use infergate_metrics::Registry;
pub use infergate_spec::{
    DeploymentSpec, EndpointSpec, MirrorSpec, PublishSpecs, Readiness, specs_from_config,
};
pub use response::{MAX_LOGGED_BYTES, ProxyBody, RequestCtx, clip_for_log, error_response};
pub use router::Router;
pub use server::{Server, StartError};
pub use watchdog::StreamTimer;

/// The router is what sources (static configuration, discovery) publish to.
impl PublishSpecs for Router {
    fn publish_specs(&self, specs: &[EndpointSpec]) {
        Router::publish_specs(self, specs)
    }
}

#[cfg(test)]
mod tests;

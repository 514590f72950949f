//! The infergate data path: listeners, TLS accept, forwarding to model pods, errors, metrics and access logs.
//!
//! [`Server::bind`] validates the configuration and binds; [`Server::run`] serves until a
//! shutdown signal and drains. Each request goes through [`Router::handle`]: one route-table
//! snapshot, a pod slot from the deployment's pool, the body streamed both ways.

mod auth;
pub mod body;
pub mod error;
pub mod headers;
pub mod metrics;
mod server;
mod service;
mod upstream;

pub use error::{ProxyError, error_response};
pub use infergate_auth::{AuthFailure, AuthMode, AuthPolicy};
pub use infergate_balance::PodSpec;
pub use infergate_spec::{
    DeploymentSpec, EndpointSpec, MirrorSpec, PublishSpecs, Readiness, specs_from_config,
};
pub use server::{Server, StartError};
pub use service::{ConnInfo, DeploymentState, EndpointState, Router, Table, pool_settings};

/// The router is what sources (static configuration, discovery) publish to.
impl PublishSpecs for Router {
    fn publish_specs(&self, specs: &[EndpointSpec]) {
        Router::publish_specs(self, specs)
    }
}

#[cfg(test)]
mod tests;

//! End-to-end tests over real sockets on 127.0.0.1: the router in process and as the real binary,
//! in front of mock model pods.

mod admin;
mod binary;
mod errors;
mod headers;
mod routing;
mod streaming;
mod support;
mod tls;

use std::time::Duration;

use mock_model::{MockConfig, MockHandle};

/// Starts a mock pod named `name` with `latency_ms` of service time.
pub async fn mock(name: &str, latency_ms: u64) -> MockHandle {
    mock_model::spawn_local(MockConfig {
        name: name.into(),
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// A plain-HTTP router config with these endpoints (YAML list items).
pub fn insecure(endpoints: &str) -> String {
    format!("allowInsecureConnections: true\nendpoints:\n{endpoints}\n")
}

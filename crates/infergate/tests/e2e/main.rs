//! End-to-end tests over real sockets on 127.0.0.1: the router in process and as the real binary,
//! in front of mock model pods.

mod admin;
mod admission;
mod auth;
mod binary;
mod discovery;
mod errors;
mod headers;
mod routing;
mod streaming;
mod support;
mod tls;
mod upstream;

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

/// A plain-HTTP router config with these endpoints (YAML list items, each starting with
/// `  - name: `). Each endpoint gets `auth: {mode: none}`: the default, key mode with no key,
/// would refuse these tests' requests. The auth tests write their own `auth`.
pub fn insecure(endpoints: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .lines()
        .map(|l| {
            if l.starts_with("  - name: ") {
                format!("{l}\n    auth: {{mode: none}}")
            } else {
                l.to_string()
            }
        })
        .collect();
    format!(
        "allowInsecureConnections: true\nendpoints:\n{}\n",
        endpoints.join("\n")
    )
}

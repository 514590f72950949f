//! `discovery: {kube: {namespaces: [...]}}`: endpoints from Kubernetes instead of the `endpoints` list.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Where endpoints come from besides the static `endpoints` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Watch InferenceEndpoints and EndpointSlices through the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeDiscoveryConfig>,
}

impl DiscoveryConfig {
    /// Whether nothing is configured (the static `endpoints` list is the only source).
    pub fn is_empty(&self) -> bool {
        self.kube.is_none()
    }
}

/// Kubernetes discovery: which namespaces to watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeDiscoveryConfig {
    /// Namespaces to watch; empty: all namespaces (needs the ClusterRole).
    #[serde(default)]
    pub namespaces: Vec<String>,
}

impl DiscoveryConfig {
    pub(crate) fn validate(&self, static_endpoints: usize) -> Result<(), ConfigError> {
        let Some(k) = &self.kube else {
            return Ok(());
        };
        if static_endpoints > 0 {
            return Err(ConfigError::invalid(
                "endpoints, discovery.kube",
                format!("{static_endpoints} static endpoint(s) and Kubernetes discovery"),
                "both the static `endpoints` list and `discovery.kube` are configured; one source \
                 owns the route table",
                "remove `endpoints` (declare each endpoint as an InferenceEndpoint object) or remove \
                 `discovery.kube`",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in k.namespaces.iter().enumerate() {
            let key = format!("discovery.kube.namespaces[{i}]");
            if !is_dns_label(ns) {
                return Err(ConfigError::invalid(
                    key,
                    ns,
                    "not a Kubernetes namespace name",
                    "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or \
                     digit; or list no namespace to watch all",
                ));
            }
            if !seen.insert(ns.as_str()) {
                return Err(ConfigError::invalid(
                    key,
                    ns,
                    "listed twice",
                    "list each namespace once",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is an RFC 1123 DNS label: what Kubernetes namespace and Service names are
/// (1-63 lowercase letters, digits and `-`, starting and ending with a letter or digit).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests;

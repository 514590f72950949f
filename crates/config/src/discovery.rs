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

/// The `endpointslice.kubernetes.io/managed-by` value of the slices Kubernetes' own
/// EndpointSlice controller writes (for Services with a selector).
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Kubernetes discovery: which namespaces to watch, and which EndpointSlices to trust.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeDiscoveryConfig {
    /// Namespaces to watch; empty: all namespaces (needs a ClusterRole).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The EndpointSlice managers whose slices are trusted (label
    /// `endpointslice.kubernetes.io/managed-by`); slices of any other manager, or with no such
    /// label (hand-made ones), are refused. Default: Kubernetes' EndpointSlice controller only.
    #[serde(default = "default_slice_managers")]
    pub endpoint_slice_managers: Vec<String>,
}

impl Default for KubeDiscoveryConfig {
    fn default() -> Self {
        KubeDiscoveryConfig {
            namespaces: Vec::new(),
            endpoint_slice_managers: default_slice_managers(),
        }
    }
}

fn default_slice_managers() -> Vec<String> {
    vec![ENDPOINTSLICE_CONTROLLER.to_string()]
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
        if k.endpoint_slice_managers.is_empty() {
            return Err(ConfigError::invalid(
                "discovery.kube.endpointSliceManagers",
                "[]",
                "no EndpointSlice would be trusted, so no endpoint would ever have a pod",
                format!(
                    "list at least one manager (the `endpointslice.kubernetes.io/managed-by` \
                     label value), e.g. [{ENDPOINTSLICE_CONTROLLER}], or omit the key"
                ),
            ));
        }
        for (i, m) in k.endpoint_slice_managers.iter().enumerate() {
            if !is_label_value(m) || m.is_empty() {
                return Err(ConfigError::invalid(
                    format!("discovery.kube.endpointSliceManagers[{i}]"),
                    m,
                    "not a Kubernetes label value (what `endpointslice.kubernetes.io/managed-by` holds)",
                    format!(
                        "use 1-63 letters, digits, '-', '_' or '.', starting and ending with a \
                         letter or digit, e.g. {ENDPOINTSLICE_CONTROLLER}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a Kubernetes label value: at most 63 characters, alphanumerics, `-`, `_`
/// and `.`, starting and ending with an alphanumeric (or empty).
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
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

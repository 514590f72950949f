//! `scaleSettings` of a deployment: what the autoscaler scales, between which bounds, towards
//! which utilization (azureml-fe's keys and defaults).

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The workload the autoscaler scales: anything with a `scale` subresource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleTargetRef {
    /// `apps/v1` (default), or the group/version of a custom workload.
    #[serde(default = "d_api_version")]
    pub api_version: String,
    /// `Deployment` (default), `StatefulSet`, or a custom kind with a scale subresource.
    #[serde(default = "d_kind")]
    pub kind: String,
    /// The workload's name, in the endpoint's namespace.
    pub name: String,
}

fn d_api_version() -> String {
    "apps/v1".into()
}
fn d_kind() -> String {
    "Deployment".into()
}

/// `scaleSettings`: omitted means no autoscaling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleSettings {
    /// What is scaled. In a static configuration (no Kubernetes) it may be omitted: decisions
    /// are only logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target_ref: Option<ScaleTargetRef>,
    /// Fewest replicas; 0 allows scale to zero (requests then wait up to `coldStartWaitMs`).
    #[serde(default = "d_min")]
    pub min_instances: u32,
    /// Most replicas.
    #[serde(default = "d_max")]
    pub max_instances: u32,
    /// Target (busy + queued) / (replicas x slots), in percent (1-100).
    #[serde(default = "d_target")]
    pub target_utilization_percentage: u32,
    /// How often the decision runs, in seconds (1-60).
    #[serde(default = "d_polling")]
    pub polling_interval_seconds: u32,
    /// How long a lower desire must last before a step down, in seconds (0-3600).
    #[serde(default = "d_down")]
    pub scale_down_delay_seconds: u32,
    /// With 0 ready pods: how long a request waits for the first one before 503, in ms.
    #[serde(default = "d_cold")]
    pub cold_start_wait_ms: u64,
}

fn d_min() -> u32 {
    1
}
fn d_max() -> u32 {
    10
}
fn d_target() -> u32 {
    70
}
fn d_polling() -> u32 {
    1
}
fn d_down() -> u32 {
    60
}
fn d_cold() -> u64 {
    60_000
}

impl Default for ScaleSettings {
    fn default() -> Self {
        ScaleSettings {
            scale_target_ref: None,
            min_instances: d_min(),
            max_instances: d_max(),
            target_utilization_percentage: d_target(),
            polling_interval_seconds: d_polling(),
            scale_down_delay_seconds: d_down(),
            cold_start_wait_ms: d_cold(),
        }
    }
}

/// Most replicas a `maxInstances` may ask for.
pub const MAX_INSTANCES_LIMIT: u32 = 1000;

impl ScaleSettings {
    /// Checks the bounds; `key` is the settings' own key (e.g. `endpoints[0].deployments[1].scaleSettings`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES_LIMIT {
            return Err(ConfigError::invalid(
                format!("{key}.maxInstances"),
                self.max_instances,
                format!("must be 1-{MAX_INSTANCES_LIMIT}"),
                "use e.g. 10 (the default)",
            ));
        }
        if self.min_instances > self.max_instances {
            return Err(ConfigError::invalid(
                format!("{key}.minInstances"),
                self.min_instances,
                format!("is above maxInstances ({})", self.max_instances),
                "make minInstances at most maxInstances",
            ));
        }
        if !(1..=100).contains(&self.target_utilization_percentage) {
            return Err(ConfigError::invalid(
                format!("{key}.targetUtilizationPercentage"),
                self.target_utilization_percentage,
                "must be 1-100",
                "use e.g. 70 (the default)",
            ));
        }
        if !(1..=60).contains(&self.polling_interval_seconds) {
            return Err(ConfigError::invalid(
                format!("{key}.pollingIntervalSeconds"),
                self.polling_interval_seconds,
                "must be 1-60",
                "use e.g. 1 (the default)",
            ));
        }
        if self.scale_down_delay_seconds > 3600 {
            return Err(ConfigError::invalid(
                format!("{key}.scaleDownDelaySeconds"),
                self.scale_down_delay_seconds,
                "longer than an hour",
                "use at most 3600 (the default is 60)",
            ));
        }
        if self.cold_start_wait_ms > 600_000 {
            return Err(ConfigError::invalid(
                format!("{key}.coldStartWaitMs"),
                self.cold_start_wait_ms,
                "longer than 10 minutes",
                "use at most 600000 (the default is 60000)",
            ));
        }
        if let Some(t) = &self.scale_target_ref {
            if t.name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.scaleTargetRef.name"),
                    "\"\"",
                    "is empty",
                    "name the Deployment (or other workload with a scale subresource) to scale",
                ));
            }
            if !t.api_version.contains('/') && t.api_version != "v1" {
                return Err(ConfigError::invalid(
                    format!("{key}.scaleTargetRef.apiVersion"),
                    &t.api_version,
                    "is not GROUP/VERSION",
                    "write e.g. apps/v1",
                ));
            }
        }
        Ok(())
    }
}

/// `autoscaler`: the leader election of the replicas that scale model deployments (with
/// `discovery.kube`). Omitted: the defaults below.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// The `coordination.k8s.io/v1` Lease, in the router's namespace.
    #[serde(default = "d_lease_name")]
    pub lease_name: String,
    /// How long a leader's Lease holds without a renewal.
    #[serde(default = "d_lease_duration")]
    pub lease_duration_ms: u64,
    /// A leader that has not renewed for this long stops acting (before the Lease expires).
    #[serde(default = "d_renew_deadline")]
    pub renew_deadline_ms: u64,
    /// How often the Lease is renewed, or tried when another replica holds it.
    #[serde(default = "d_retry_period")]
    pub retry_period_ms: u64,
}

fn d_lease_name() -> String {
    "infergate-autoscaler".into()
}
fn d_lease_duration() -> u64 {
    15_000
}
fn d_renew_deadline() -> u64 {
    10_000
}
fn d_retry_period() -> u64 {
    5_000
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            lease_name: d_lease_name(),
            lease_duration_ms: d_lease_duration(),
            renew_deadline_ms: d_renew_deadline(),
            retry_period_ms: d_retry_period(),
        }
    }
}

impl AutoscalerConfig {
    /// Checks `retryPeriodMs < renewDeadlineMs < leaseDurationMs` and the Lease name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !crate::is_dns_label(&self.lease_name) && !is_dns_subdomain(&self.lease_name) {
            return Err(ConfigError::invalid(
                "autoscaler.leaseName",
                &self.lease_name,
                "not a Kubernetes object name",
                "use lower-case letters, digits, '-' and '.', e.g. infergate-autoscaler",
            ));
        }
        if self.retry_period_ms == 0 || self.retry_period_ms >= self.renew_deadline_ms {
            return Err(ConfigError::invalid(
                "autoscaler.retryPeriodMs",
                self.retry_period_ms,
                format!(
                    "must be positive and below renewDeadlineMs ({})",
                    self.renew_deadline_ms
                ),
                "use e.g. 5000 with renewDeadlineMs 10000 (the defaults)",
            ));
        }
        if self.renew_deadline_ms >= self.lease_duration_ms {
            return Err(ConfigError::invalid(
                "autoscaler.renewDeadlineMs",
                self.renew_deadline_ms,
                format!(
                    "must be below leaseDurationMs ({}): a leader must stop acting before its Lease can be taken",
                    self.lease_duration_ms
                ),
                "use e.g. 10000 with leaseDurationMs 15000 (the defaults)",
            ));
        }
        if self.lease_duration_ms > 600_000 {
            return Err(ConfigError::invalid(
                "autoscaler.leaseDurationMs",
                self.lease_duration_ms,
                "longer than 10 minutes",
                "use e.g. 15000 (the default)",
            ));
        }
        Ok(())
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(crate::is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_azureml_fes() {
        let s: ScaleSettings = serde_saphyr::from_str("{}").unwrap();
        assert_eq!(s, ScaleSettings::default());
        assert_eq!(
            (
                s.min_instances,
                s.max_instances,
                s.target_utilization_percentage,
                s.polling_interval_seconds,
                s.scale_down_delay_seconds
            ),
            (1, 10, 70, 1, 60)
        );
        s.validate("k").unwrap();
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let cases = [
            ("{minInstances: 5, maxInstances: 2}", "k.minInstances"),
            ("{maxInstances: 0}", "k.maxInstances"),
            (
                "{targetUtilizationPercentage: 0}",
                "k.targetUtilizationPercentage",
            ),
            (
                "{targetUtilizationPercentage: 150}",
                "k.targetUtilizationPercentage",
            ),
            ("{pollingIntervalSeconds: 0}", "k.pollingIntervalSeconds"),
            ("{scaleDownDelaySeconds: 7200}", "k.scaleDownDelaySeconds"),
            ("{scaleTargetRef: {name: \"\"}}", "k.scaleTargetRef.name"),
            (
                "{scaleTargetRef: {name: a, apiVersion: apps}}",
                "k.scaleTargetRef.apiVersion",
            ),
        ];
        for (yaml, key) in cases {
            let s: ScaleSettings = serde_saphyr::from_str(yaml).unwrap();
            let e = s.validate("k").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("fix"), "{yaml}: {e}");
        }
        let zero: ScaleSettings = serde_saphyr::from_str("{minInstances: 0}").unwrap();
        zero.validate("k").unwrap();
    }

    #[test]
    fn autoscaler_timings_must_nest() {
        AutoscalerConfig::default().validate().unwrap();
        let c = AutoscalerConfig {
            renew_deadline_ms: 20_000,
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("autoscaler.renewDeadlineMs"), "{e}");
        let c = AutoscalerConfig {
            retry_period_ms: 10_000,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("retryPeriodMs")
        );
        let c = AutoscalerConfig {
            lease_name: "Bad_Name".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("leaseName"));
    }
}

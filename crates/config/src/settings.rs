//! Request settings: the `defaults`, per-deployment `requestSettings` overrides, and mirroring.

use serde::{Deserialize, Serialize};

/// Request settings that apply to every deployment unless its `requestSettings` overrides them.
/// Also the resolved form every deployment runs with ([`ResolvedSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Defaults {
    /// Time allowed for the pod's response head, in milliseconds (then 504).
    #[serde(default = "d_timeout")]
    pub request_timeout_ms: u64,
    /// Requests a pod serves at once.
    #[serde(default = "d_conc")]
    pub max_concurrent_requests_per_instance: u32,
    /// Time a request may wait for a free pod slot, in milliseconds (then 503).
    #[serde(default = "d_wait")]
    pub max_queue_wait_ms: u64,
    /// Largest request body accepted, in bytes (then 413).
    #[serde(default = "d_body")]
    pub max_request_body_bytes: u64,
    /// Requests that may wait for a slot per deployment; more get 503 at once. 0: no waiting.
    #[serde(default = "d_queue_len")]
    pub max_queue_length: u32,
    /// Consecutive connect failures or 5xx answers that eject a pod for a while. 0: never eject.
    #[serde(default = "d_eject_after")]
    pub eject_after_consecutive_failures: u32,
    /// First ejection time, doubled for each further ejection in a row, in milliseconds.
    #[serde(default = "d_eject_base")]
    pub ejection_base_ms: u64,
    /// Longest ejection, in milliseconds.
    #[serde(default = "d_eject_max")]
    pub ejection_max_ms: u64,
    /// Retries (of requests whose connection never opened) allowed, as a percentage of requests.
    #[serde(default = "d_retry_budget")]
    pub retry_budget_percent: u32,
}

/// Request settings with every value filled in.
pub type ResolvedSettings = Defaults;

fn d_timeout() -> u64 {
    5_000
}
fn d_conc() -> u32 {
    1
}
fn d_wait() -> u64 {
    500
}
fn d_body() -> u64 {
    104_857_600
}
fn d_queue_len() -> u32 {
    1024
}
fn d_eject_after() -> u32 {
    5
}
fn d_eject_base() -> u64 {
    5_000
}
fn d_eject_max() -> u64 {
    300_000
}
fn d_retry_budget() -> u32 {
    20
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            request_timeout_ms: d_timeout(),
            max_concurrent_requests_per_instance: d_conc(),
            max_queue_wait_ms: d_wait(),
            max_request_body_bytes: d_body(),
            max_queue_length: d_queue_len(),
            eject_after_consecutive_failures: d_eject_after(),
            ejection_base_ms: d_eject_base(),
            ejection_max_ms: d_eject_max(),
            retry_budget_percent: d_retry_budget(),
        }
    }
}

/// Per-deployment overrides of [`Defaults`]; every key is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSettings {
    /// See [`Defaults::request_timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// See [`Defaults::max_concurrent_requests_per_instance`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests_per_instance: Option<u32>,
    /// See [`Defaults::max_queue_wait_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_wait_ms: Option<u64>,
    /// See [`Defaults::max_request_body_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// See [`Defaults::max_queue_length`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_length: Option<u32>,
    /// See [`Defaults::eject_after_consecutive_failures`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eject_after_consecutive_failures: Option<u32>,
    /// See [`Defaults::ejection_base_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_base_ms: Option<u64>,
    /// See [`Defaults::ejection_max_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_max_ms: Option<u64>,
    /// See [`Defaults::retry_budget_percent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<u32>,
}

impl RequestSettings {
    /// These overrides laid over `defaults`.
    pub fn over(&self, d: Defaults) -> ResolvedSettings {
        Defaults {
            request_timeout_ms: self.request_timeout_ms.unwrap_or(d.request_timeout_ms),
            max_concurrent_requests_per_instance: self
                .max_concurrent_requests_per_instance
                .unwrap_or(d.max_concurrent_requests_per_instance),
            max_queue_wait_ms: self.max_queue_wait_ms.unwrap_or(d.max_queue_wait_ms),
            max_request_body_bytes: self
                .max_request_body_bytes
                .unwrap_or(d.max_request_body_bytes),
            max_queue_length: self.max_queue_length.unwrap_or(d.max_queue_length),
            eject_after_consecutive_failures: self
                .eject_after_consecutive_failures
                .unwrap_or(d.eject_after_consecutive_failures),
            ejection_base_ms: self.ejection_base_ms.unwrap_or(d.ejection_base_ms),
            ejection_max_ms: self.ejection_max_ms.unwrap_or(d.ejection_max_ms),
            retry_budget_percent: self.retry_budget_percent.unwrap_or(d.retry_budget_percent),
        }
    }
}

/// `mirror: {deployment, percent, maxBodyBytes}` on an endpoint: copies of requests whose answers
/// are discarded, for trying a deployment on live traffic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// The deployment (of the same endpoint) that receives the copies.
    pub deployment: String,
    /// Percent of the endpoint's requests copied.
    pub percent: u32,
    /// Requests with larger bodies (or of unknown length) are not mirrored.
    #[serde(default = "d_mirror_body")]
    pub max_body_bytes: u64,
}

fn d_mirror_body() -> u64 {
    1_048_576
}

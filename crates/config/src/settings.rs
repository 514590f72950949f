//! Request settings: the `defaults`, per-deployment `requestSettings` overrides, and mirroring.

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::set::Settable;

/// Writes the request settings once: each field's doc, name, YAML key, type, default and
/// ceiling.
///
/// From that one list come [`Defaults`] (every value, each with its default), the
/// [`RequestSettings`] overrides (every value optional), [`RequestSettings::over`], the
/// [`RequestSettingsCeilings`] (the highest value an override may set, each with its default
/// ceiling), and the `defaults.*` and `requestSettingsCeilings.*` keys `--set` accepts. A new
/// setting is one line here.
macro_rules! request_settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident ($key:literal): $ty:ty = $default:expr, ceiling $ceiling:expr;
    )*) => {
        /// Request settings that apply to every deployment unless its `requestSettings` overrides them.
        /// Also the resolved form every deployment runs with ([`ResolvedSettings`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Defaults {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $key)]
                pub $field: $ty,
            )*
        }

        impl Default for Defaults {
            fn default() -> Self {
                Defaults {
                    $($field: $default,)*
                }
            }
        }

        /// Per-deployment overrides of [`Defaults`]; every key is optional.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct RequestSettings {
            $(
                #[doc = concat!("See [`Defaults::", stringify!($field), "`].")]
                #[serde(rename = $key, default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        impl RequestSettings {
            /// These overrides laid over `defaults`.
            pub fn over(&self, d: Defaults) -> ResolvedSettings {
                Defaults {
                    $($field: self.$field.unwrap_or(d.$field),)*
                }
            }
        }

        /// `requestSettingsCeilings`: the highest value a deployment's `requestSettings` (a
        /// static file's, or an InferenceEndpoint's, which tenants write) may give each request
        /// setting, and that `defaults` may hold. A value above its ceiling is refused, naming
        /// the key, the value and the ceiling.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct RequestSettingsCeilings {
            $(
                #[doc = concat!("Ceiling of [`Defaults::", stringify!($field), "`] (default ", stringify!($ceiling), ").")]
                #[serde(rename = $key)]
                pub $field: $ty,
            )*
        }

        impl Default for RequestSettingsCeilings {
            fn default() -> Self {
                RequestSettingsCeilings {
                    $($field: $ceiling,)*
                }
            }
        }

        impl RequestSettingsCeilings {
            /// Refuses an override above its ceiling; `key` is where the overrides sit (e.g.
            /// `spec.deployments[0].requestSettings`).
            pub fn check(&self, key: &str, s: &RequestSettings) -> Result<(), ConfigError> {
                $(
                    if let Some(v) = s.$field
                        && (v > self.$field || (v == 0 && ZERO_IS_OFF.contains(&$key)))
                    {
                        return Err(above_ceiling(key, $key, u64::from(v), self.$field, false));
                    }
                )*
                Ok(())
            }

            /// Refuses a `defaults` value above its ceiling (`key`: `defaults`).
            pub fn check_defaults(&self, key: &str, d: &Defaults) -> Result<(), ConfigError> {
                $(
                    if d.$field > self.$field {
                        return Err(above_ceiling(key, $key, u64::from(d.$field), self.$field, true));
                    }
                )*
                Ok(())
            }

            /// Every setting's YAML key with its ceiling here, in field order.
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![$(($key, u64::from(self.$field)),)*]
            }
        }

        impl Defaults {
            /// Every setting's YAML key with its value, in field order (as
            /// [`RequestSettingsCeilings::entries`]).
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![$(($key, u64::from(self.$field)),)*]
            }
        }

        /// `--set defaults.KEY=VALUE`: every key of [`Defaults`].
        pub(crate) const DEFAULTS_SETTABLE: &[Settable] = settable! {
            $(concat!("defaults.", $key) => defaults.$field;)*
        };

        /// `--set requestSettingsCeilings.KEY=VALUE`: every key of [`RequestSettingsCeilings`].
        pub(crate) const CEILINGS_SETTABLE: &[Settable] = settable! {
            $(concat!("requestSettingsCeilings.", $key) => request_settings_ceilings.$field;)*
        };
    };
}

/// Settings whose 0 turns their timer off: no limit at all, so an override of 0 is above any
/// ceiling (a tenant may not switch off the router's stream timers).
const ZERO_IS_OFF: [&str; 2] = ["streamIdleTimeoutMs", "maxStreamDurationMs"];

fn above_ceiling(
    key: &str,
    setting: &str,
    value: u64,
    ceiling: impl Into<u64>,
    defaults: bool,
) -> ConfigError {
    let ceiling = ceiling.into();
    let fix = if defaults {
        format!(
            "lower it to at most {ceiling}, or raise requestSettingsCeilings.{setting} in the same file"
        )
    } else {
        format!(
            "use at most {ceiling}; the router's operator can raise requestSettingsCeilings.{setting}"
        )
    };
    let why = if value == 0 {
        format!(
            "0 turns the timer off, which lifts the router's ceiling of {ceiling} (requestSettingsCeilings.{setting})"
        )
    } else {
        format!("above the router's ceiling of {ceiling} (requestSettingsCeilings.{setting})")
    };
    ConfigError::invalid(format!("{key}.{setting}"), value, why, fix)
}

request_settings! {
    /// Time allowed for the pod's response head, in milliseconds (then 504).
    request_timeout_ms ("requestTimeoutMs"): u64 = 5_000, ceiling 600_000;
    /// Requests a pod serves at once.
    max_concurrent_requests_per_instance ("maxConcurrentRequestsPerInstance"): u32 = 1, ceiling 1_000;
    /// Time a request may wait for a free pod slot, in milliseconds (then 503).
    max_queue_wait_ms ("maxQueueWaitMs"): u64 = 500, ceiling 600_000;
    /// Largest request body accepted, in bytes (then 413).
    max_request_body_bytes ("maxRequestBodyBytes"): u64 = 104_857_600, ceiling 1_073_741_824;
    /// Requests that may wait for a slot per deployment; more get 503 at once. 0: no waiting.
    max_queue_length ("maxQueueLength"): u32 = 1024, ceiling 100_000;
    /// Consecutive connect failures or 5xx answers that eject a pod for a while. 0: never eject.
    eject_after_consecutive_failures ("ejectAfterConsecutiveFailures"): u32 = 5, ceiling 1_000;
    /// First ejection time, doubled for each further ejection in a row, in milliseconds.
    ejection_base_ms ("ejectionBaseMs"): u64 = 5_000, ceiling 3_600_000;
    /// Longest ejection, in milliseconds.
    ejection_max_ms ("ejectionMaxMs"): u64 = 300_000, ceiling 3_600_000;
    /// Retries (of requests whose connection never opened) allowed, as a percentage of requests.
    retry_budget_percent ("retryBudgetPercent"): u32 = 20, ceiling 100;
    /// Longest gap between body frames, either direction (the client's request body or the
    /// answer going out to it), in milliseconds; then the exchange ends and its slot is freed.
    /// Not counted while the pod computes its response head (`requestTimeoutMs` bounds that).
    /// 0: off (in `defaults` only: an override of 0 would lift the ceiling and is refused).
    stream_idle_timeout_ms ("streamIdleTimeoutMs"): u64 = 60_000, ceiling 3_600_000;
    /// Longest whole exchange, from the request head to the end of the response body, in
    /// milliseconds; then it ends as `streamIdleTimeoutMs` does. A cap for clients that read a
    /// byte just often enough to stay under the idle timeout. 0: off (in `defaults` only, as
    /// for `streamIdleTimeoutMs`).
    max_stream_duration_ms ("maxStreamDurationMs"): u64 = 3_600_000, ceiling 86_400_000;
}

/// Request settings with every value filled in.
pub type ResolvedSettings = Defaults;

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

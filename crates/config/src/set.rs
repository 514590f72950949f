//! `--set KEY=VALUE`: one table of the keys it accepts, each with how its value is written.

use std::path::PathBuf;

use crate::{Config, ConfigError, parse_bool};

/// One key `--set` accepts: its dotted name and how a value given for it is written into a
/// [`Config`] (errors name `key`).
pub(crate) struct Settable {
    /// The dotted key, e.g. `listen.http` or `defaults.maxQueueLength`.
    pub(crate) key: &'static str,
    /// Parses the value and writes it.
    pub(crate) set: fn(c: &mut Config, key: &str, value: &str) -> Result<(), ConfigError>,
}

/// A value type `--set` can write, parsed from the text after `=`.
pub(crate) trait FromSetting: Sized {
    fn from_setting(key: &str, value: &str) -> Result<Self, ConfigError>;
}

impl FromSetting for u64 {
    fn from_setting(key: &str, value: &str) -> Result<Self, ConfigError> {
        value.parse().map_err(|_| {
            ConfigError::invalid(
                key,
                value,
                "not a whole number",
                "write digits only, e.g. 5000",
            )
        })
    }
}

impl FromSetting for u32 {
    fn from_setting(key: &str, value: &str) -> Result<Self, ConfigError> {
        u32::try_from(u64::from_setting(key, value)?).map_err(|_| {
            ConfigError::invalid(key, value, "too large", "use a value below 4294967296")
        })
    }
}

impl FromSetting for bool {
    fn from_setting(key: &str, value: &str) -> Result<Self, ConfigError> {
        parse_bool(key, value)
    }
}

impl FromSetting for String {
    fn from_setting(_: &str, value: &str) -> Result<Self, ConfigError> {
        Ok(value.to_string())
    }
}

/// A file path; empty: not set.
impl FromSetting for Option<PathBuf> {
    fn from_setting(_: &str, value: &str) -> Result<Self, ConfigError> {
        Ok((!value.is_empty()).then(|| PathBuf::from(value)))
    }
}

/// Table entries: `"key" => field.path;` writes the value into `config.field.path`.
macro_rules! settable {
    ($($key:expr => $($field:ident).+;)*) => {
        &[$(
            $crate::set::Settable {
                key: $key,
                set: |c, key, value| {
                    c.$($field).+ = $crate::set::FromSetting::from_setting(key, value)?;
                    Ok(())
                },
            },
        )*]
    };
}

/// The keys outside `defaults` and `requestSettingsCeilings`, whose keys come with the request
/// settings' one field list.
const TOP_LEVEL: &[Settable] = settable! {
    "sslCertPemFile" => ssl_cert_pem_file;
    "sslKeyPemFile" => ssl_key_pem_file;
    "allowInsecureConnections" => allow_insecure_connections;
    "drainTimeoutMs" => drain_timeout_ms;
    "certReloadIntervalMs" => cert_reload_interval_ms;
    "configReloadIntervalMs" => config_reload_interval_ms;
    "xffTrustedHops" => xff_trusted_hops;
    "headersWithUnderscores" => headers_with_underscores;
    "maxTokenLifetimeSeconds" => max_token_lifetime_seconds;
    "listen.https" => listen.https;
    "listen.http" => listen.http;
    "listen.admin" => listen.admin;
};

fn table() -> impl Iterator<Item = &'static Settable> {
    TOP_LEVEL
        .iter()
        .chain(crate::settings::DEFAULTS_SETTABLE)
        .chain(crate::settings::CEILINGS_SETTABLE)
        .chain(crate::limits::LIMITS_SETTABLE)
}

/// The keys `--set` accepts: the top-level scalars, `listen.*`, every `defaults.*`, every
/// `requestSettingsCeilings.*` and every `limits.*` key.
pub fn settable_keys() -> impl Iterator<Item = &'static str> {
    table().map(|s| s.key)
}

/// The candidate closest to `key` (case-insensitive edit distance), if it is close enough to be
/// a typo of it.
pub fn closest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    let (distance, best) = candidates
        .into_iter()
        .map(|k| (strsim::levenshtein(&lower, &k.to_ascii_lowercase()), k))
        .min_by_key(|(d, _)| *d)?;
    (distance <= 3.max(key.chars().count() / 3)).then_some(best)
}

impl Config {
    /// Applies one `KEY=VALUE` override; `KEY` is one of [`settable_keys`].
    pub fn apply_set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(ConfigError::invalid(
                "--set",
                assignment,
                "not of the form KEY=VALUE",
                "write for example --set allowInsecureConnections=True",
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match table().find(|s| s.key == key) {
            Some(s) => (s.set)(self, key, value),
            None => {
                let keys = settable_keys().collect::<Vec<_>>().join(", ");
                let fix = match closest(key, settable_keys()) {
                    Some(near) => format!("did you mean `{near}`? (settable keys: {keys})"),
                    None => format!("use one of: {keys}"),
                };
                Err(ConfigError::invalid("--set", key, "unknown key", fix))
            }
        }
    }
}

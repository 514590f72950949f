//! The one error type of this crate.

use std::path::PathBuf;

use infergate_config::ConfigError;

/// Why `infergate render` refused to produce manifests.
///
/// Every message names the key, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A key (or a flag such as `--namespace`) holds a value that is not allowed, or names a
    /// file that cannot be read: a [`ConfigError::Invalid`], the router configuration's own
    /// shape and message (config key `K`: value `V` is invalid: P; fix: F).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key that neither the AzureML extension nor infergate knows.
    #[error("config key `{key}` (value `{value}`) is unknown; fix: {fix}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Its value as written.
        value: String,
        /// The known key closest to it, when one is close enough to be a likely typo.
        suggestion: Option<&'static str>,
        /// How to fix it (names the suggestion and lists the known keys).
        fix: String,
    },
    /// The certificate chain and key do not form a usable pair (unparsable chain, wrong key, ...).
    #[error(
        "config keys `sslCertPemFile` and `sslKeyPemFile`: values `{}` and `{}` are not a usable certificate and key: {source}",
        cert.display(),
        key.display()
    )]
    Tls {
        /// The `sslCertPemFile` value.
        cert: PathBuf,
        /// The `sslKeyPemFile` value.
        key: PathBuf,
        /// What the TLS loader found (its message names the file and the fix).
        #[source]
        source: Box<infergate_tls::TlsError>,
    },
    /// A manifest could not be written as YAML (a bug: please report it).
    #[error(
        "cannot write a manifest as YAML: {0}; fix: this is a bug in infergate, please report it"
    )]
    Yaml(String),
}

impl RenderError {
    pub(crate) fn invalid(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        RenderError::Config(ConfigError::invalid(key, value, problem, fix))
    }
}

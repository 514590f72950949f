//! Endpoint authentication settings: `auth: {mode, primaryKey, secondaryKey, signingKeyFile}`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, EndpointConfig};

/// An endpoint's authentication: `{mode: key, primaryKey, secondaryKey}`, `{mode: token,
/// signingKeyFile}` or `{mode: none}`. Omitted: key mode with no keys, which refuses every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// `key` (default), `token` or `none`.
    #[serde(default)]
    pub mode: AuthModeConfig,
    /// Key mode: the primary key (`Authorization: Bearer <key>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<KeyString>,
    /// Key mode: the secondary key, accepted like the primary (rotation without downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<KeyString>,
    /// Token mode: a file whose bytes (all of them, at least 32) are the HS256 signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
}

/// The authentication modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthModeConfig {
    /// Primary/secondary keys.
    #[default]
    Key,
    /// Expiring HS256 tokens with the endpoint name as audience.
    Token,
    /// No authentication (must be written explicitly).
    None,
}

/// A key from the configuration file: `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct KeyString(pub String);

impl fmt::Debug for KeyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Smallest signing key accepted in token mode, in bytes (the HS256 hash size).
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

const KEYGEN_HINT: &str = "e.g. `head -c 32 /dev/urandom > FILE`";

/// Reads a token-mode signing key file: every byte is key material, at least
/// [`MIN_SIGNING_KEY_BYTES`] of them. `key` names the config key in errors.
pub fn read_signing_key_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::invalid(
            key,
            path.display(),
            format!("cannot read the file: {e}"),
            format!("point it at an existing file readable by the router ({KEYGEN_HINT})"),
        )
    })?;
    if bytes.len() < MIN_SIGNING_KEY_BYTES {
        return Err(ConfigError::invalid(
            key,
            path.display(),
            format!(
                "the signing key is {} bytes; HS256 needs at least {MIN_SIGNING_KEY_BYTES}",
                bytes.len()
            ),
            format!("write at least {MIN_SIGNING_KEY_BYTES} random bytes to it, {KEYGEN_HINT}"),
        ));
    }
    Ok(bytes)
}

impl EndpointConfig {
    pub(crate) fn validate_auth(&self, key: &str) -> Result<(), ConfigError> {
        let a = &self.auth;
        let akey = format!("{key}.auth");
        let keys = [
            ("primaryKey", a.primary_key.as_ref()),
            ("secondaryKey", a.secondary_key.as_ref()),
        ];
        match a.mode {
            AuthModeConfig::Key => {
                if let Some(p) = &a.signing_key_file {
                    return Err(ConfigError::invalid(
                        format!("{akey}.signingKeyFile"),
                        p.display(),
                        "signingKeyFile belongs to token mode; this endpoint is in key mode",
                        "remove signingKeyFile, or set `mode: token` (and remove the keys)",
                    ));
                }
                for (name, k) in keys {
                    if k.is_some_and(|k| {
                        k.0.is_empty() || !k.0.bytes().all(|c| c.is_ascii_graphic())
                    }) {
                        return Err(ConfigError::invalid(
                            format!("{akey}.{name}"),
                            "(hidden)",
                            "a key must be 1 or more visible ASCII characters, without spaces",
                            "use e.g. the output of `openssl rand -base64 32`, or remove the key",
                        ));
                    }
                }
            }
            AuthModeConfig::Token => {
                if let Some((name, _)) = keys.iter().find(|(_, k)| k.is_some()) {
                    return Err(ConfigError::invalid(
                        format!("{akey}.{name}"),
                        "(hidden)",
                        "keys are not used in token mode",
                        "remove primaryKey and secondaryKey, or set `mode: key` (and remove signingKeyFile)",
                    ));
                }
                let fkey = format!("{akey}.signingKeyFile");
                match &a.signing_key_file {
                    Some(p) => {
                        read_signing_key_file(&fkey, p)?;
                    }
                    None => {
                        return Err(ConfigError::invalid(
                            fkey,
                            "(not set)",
                            "token mode needs a signing key",
                            format!(
                                "set signingKeyFile to a file of at least {MIN_SIGNING_KEY_BYTES} random bytes, {KEYGEN_HINT}"
                            ),
                        ));
                    }
                }
            }
            AuthModeConfig::None => {
                let set: Vec<&str> = keys
                    .iter()
                    .filter(|(_, k)| k.is_some())
                    .map(|(n, _)| *n)
                    .chain(a.signing_key_file.as_ref().map(|_| "signingKeyFile"))
                    .collect();
                if let Some(first) = set.first() {
                    return Err(ConfigError::invalid(
                        format!("{akey}.{first}"),
                        "(hidden)",
                        format!("{} would be ignored: the mode is none", set.join(", ")),
                        "remove them, or set `mode: key` or `mode: token`",
                    ));
                }
                if self.swagger_auth {
                    return Err(ConfigError::invalid(
                        format!("{key}.swaggerAuth"),
                        "true",
                        "swaggerAuth asks for authentication, but the auth mode is none",
                        "remove swaggerAuth, or set the auth mode to key or token",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether this endpoint is in key mode with no key: valid, but every request is refused.
    pub fn refuses_all(&self) -> bool {
        self.auth.mode == AuthModeConfig::Key
            && self.auth.primary_key.is_none()
            && self.auth.secondary_key.is_none()
    }
}

#[cfg(test)]
mod tests;

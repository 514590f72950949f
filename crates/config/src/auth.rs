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
    pub mode: AuthMode,
    /// Key mode: the primary key (`Authorization: Bearer <key>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<KeyString>,
    /// Key mode: the secondary key, accepted like the primary (rotation without downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<KeyString>,
    /// Token mode: a file whose bytes (all of them, at least [`MIN_SIGNING_KEY_BYTES`]) are the HS256 signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
}

/// How an endpoint authenticates callers, as its configuration (file or InferenceEndpoint)
/// asks: written `key`, `token` or `none`. The one mode enum: `infergate_auth` re-exports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AuthMode {
    /// Primary/secondary keys (the default).
    #[default]
    Key,
    /// Expiring HS256 tokens with the endpoint name as audience.
    Token,
    /// No authentication (must be written explicitly).
    None,
}

impl AuthMode {
    /// Every mode, in the order of [`AuthMode::NAMES`].
    pub const ALL: [AuthMode; 3] = [AuthMode::Key, AuthMode::Token, AuthMode::None];
    /// How each mode is written, in the order of [`AuthMode::ALL`].
    pub const NAMES: &'static [&'static str] = &["key", "token", "none"];

    /// How this mode is written: `key`, `token` or `none`.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The mode written `name` (exact, lowercase), if any.
    pub fn from_name(name: &str) -> Option<AuthMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AuthMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AuthMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AuthMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "one of {}", AuthMode::NAMES.join(", "))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AuthMode, E> {
                AuthMode::from_name(v).ok_or_else(|| E::unknown_variant(v, AuthMode::NAMES))
            }
        }
        d.deserialize_str(V)
    }
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

/// Shortest endpoint key accepted (key mode, in the file and in a Secret), in bytes: a short
/// key can be guessed online. The one copy: `infergate_auth` re-exports it and enforces it.
pub const MIN_KEY_BYTES: usize = 16;

/// Smallest HS256 signing key accepted in token mode, in bytes (RFC 7518 section 3.2: at least
/// the hash size). The one copy: `infergate_auth` re-exports it and enforces it on every key.
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

fn keygen_hint() -> String {
    format!("e.g. `head -c {MIN_SIGNING_KEY_BYTES} /dev/urandom > FILE`")
}

/// Reads a token-mode signing key file: every byte is key material, at least
/// [`MIN_SIGNING_KEY_BYTES`] of them. `key` names the config key in errors.
pub fn read_signing_key_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::invalid(
            key,
            path.display(),
            format!("cannot read the file: {e}"),
            format!(
                "point it at an existing file readable by the router ({})",
                keygen_hint()
            ),
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
            format!(
                "write at least {MIN_SIGNING_KEY_BYTES} random bytes to it, {}",
                keygen_hint()
            ),
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
            AuthMode::Key => {
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
                    if let Some(k) = k
                        && k.0.len() < MIN_KEY_BYTES
                    {
                        return Err(ConfigError::invalid(
                            format!("{akey}.{name}"),
                            format!("(hidden, {} characters)", k.0.len()),
                            format!("shorter than {MIN_KEY_BYTES} characters: easy to guess"),
                            "use a longer random key, e.g. the output of `openssl rand -base64 32`",
                        ));
                    }
                }
            }
            AuthMode::Token => {
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
                                "set signingKeyFile to a file of at least {MIN_SIGNING_KEY_BYTES} random bytes, {}",
                                keygen_hint()
                            ),
                        ));
                    }
                }
            }
            AuthMode::None => {
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
        self.auth.mode == AuthMode::Key
            && self.auth.primary_key.is_none()
            && self.auth.secondary_key.is_none()
    }
}

#[cfg(test)]
mod tests;

//! How the router treats what clients send at the edge: header names with underscores, the
//! `X-Forwarded-For` chain, and the longest token lifetime it accepts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::set::FromSetting;

/// `headersWithUnderscores`: what a request whose header names hold `_` gets. Servers behind
/// WSGI/CGI gateways read `X_Api_Key` and `X-Api-Key` as the same variable, so a header the
/// router checks or strips could be smuggled past it under its underscore spelling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HeadersWithUnderscores {
    /// 400 `InvalidHeaderName` (the default).
    #[default]
    Reject,
    /// The header is removed before forwarding; the request goes on.
    Drop,
    /// Forwarded as is.
    Allow,
}

impl HeadersWithUnderscores {
    /// How each choice is written, in the order reject, drop, allow.
    pub const NAMES: &'static [&'static str] = &["reject", "drop", "allow"];
    const ALL: [HeadersWithUnderscores; 3] = [Self::Reject, Self::Drop, Self::Allow];

    /// How this choice is written.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether it is the default (not written when a configuration is serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for HeadersWithUnderscores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for HeadersWithUnderscores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HeadersWithUnderscores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_name(&s).ok_or_else(|| serde::de::Error::unknown_variant(&s, Self::NAMES))
    }
}

impl FromSetting for HeadersWithUnderscores {
    fn from_setting(key: &str, value: &str) -> Result<Self, ConfigError> {
        Self::from_name(value).ok_or_else(|| {
            ConfigError::invalid(
                key,
                value,
                "not one of the choices",
                format!("write one of {}", Self::NAMES.join(", ")),
            )
        })
    }
}

/// Default `maxTokenLifetimeSeconds`: one day.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 86_400;
/// The largest `maxTokenLifetimeSeconds` accepted: one year.
pub const MAX_TOKEN_LIFETIME_LIMIT: u64 = 366 * 86_400;
/// The largest `xffTrustedHops` accepted.
pub const MAX_XFF_TRUSTED_HOPS: u32 = 16;

pub(crate) fn default_max_token_lifetime_seconds() -> u64 {
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
}

pub(crate) fn is_default_max_token_lifetime(v: &u64) -> bool {
    *v == DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
}

pub(crate) fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Checks the edge keys of a configuration.
pub(crate) fn validate(
    xff_trusted_hops: u32,
    max_token_lifetime_seconds: u64,
) -> Result<(), ConfigError> {
    if xff_trusted_hops > MAX_XFF_TRUSTED_HOPS {
        return Err(ConfigError::invalid(
            "xffTrustedHops",
            xff_trusted_hops,
            format!("more than {MAX_XFF_TRUSTED_HOPS} proxies in front of the router"),
            "count only the proxies you run in front of the router that append to X-Forwarded-For (0, the default, when clients connect directly)",
        ));
    }
    if max_token_lifetime_seconds == 0 || max_token_lifetime_seconds > MAX_TOKEN_LIFETIME_LIMIT {
        return Err(ConfigError::invalid(
            "maxTokenLifetimeSeconds",
            max_token_lifetime_seconds,
            format!("must be 1 to {MAX_TOKEN_LIFETIME_LIMIT} (a year)"),
            format!("use e.g. {DEFAULT_MAX_TOKEN_LIFETIME_SECONDS} (a day, the default)"),
        ));
    }
    Ok(())
}

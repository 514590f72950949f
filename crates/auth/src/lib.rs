//! Endpoint authentication: primary/secondary keys and expiring HS256 tokens, checked in constant time.
//!
//! Clients send `Authorization: Bearer <key-or-token>`. An endpoint's [`AuthPolicy`] is one of:
//!
//! - [`AuthPolicy::Keys`]: the bearer value must equal the primary or the secondary key (two
//!   keys so that one can be replaced while clients use the other). With no key at all the
//!   endpoint refuses every request: key mode never falls open. This is the [`Default`]. Keys
//!   are at least [`MIN_KEY_BYTES`] long and are kept as SHA-256 digests: a presented key is
//!   hashed and the two 32-byte digests compared in constant time, so neither the time taken
//!   nor the code path depends on how much of the key, or of its length, was right.
//! - [`AuthPolicy::Token`]: the bearer value is a JWT signed with HMAC-SHA256 under the
//!   endpoint's signing key, with `exp` (seconds since the epoch) in the future, `nbf` (if any)
//!   passed, `aud` equal to the endpoint name, and a lifetime (`exp - iat`, and `exp - now`) of
//!   at most the router's `maxTokenLifetimeSeconds`. [`issue_token`] makes one.
//! - [`AuthPolicy::None`]: no check.
//!
//! Secrets live in [`Secret`], whose `Debug` prints `[redacted]` and which is zeroed on drop.
//! A refusal is an [`AuthFailure`], whose [`reason`](AuthFailure::reason) is one of a fixed set of
//! strings, safe for metric labels and logs; nothing derived from the presented credential is
//! ever part of it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The mode an endpoint's configuration asks for, and the smallest HS256 signing key accepted
/// (defined once, in `infergate_config`).
pub use infergate_config::{
    AuthMode, DEFAULT_MAX_TOKEN_LIFETIME_SECONDS, MIN_KEY_BYTES, MIN_SIGNING_KEY_BYTES,
};

/// The Kubernetes Secret data key holding the primary key (key mode).
pub const SECRET_PRIMARY_KEY: &str = "primaryKey";
/// The Kubernetes Secret data key holding the secondary key (key mode).
pub const SECRET_SECONDARY_KEY: &str = "secondaryKey";
/// The Kubernetes Secret data key holding the signing key (token mode).
pub const SECRET_SIGNING_KEY: &str = "signingKey";

/// Secret bytes: `Debug` prints `[redacted]`, equality is constant-time, memory is zeroed on drop.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps a copy of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        Secret(bytes.into())
    }

    /// The secret bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// An endpoint key as it is kept: the SHA-256 digest of its bytes (zeroed on drop).
///
/// Checking a presented key hashes it and compares the two 32-byte digests in constant time:
/// the comparison takes the same time whatever the presented key's length or content, which a
/// byte-wise comparison (constant time only for equal lengths) would not.
#[derive(Clone)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        KeyDigest(out)
    }

    /// Whether `given` is the key this digest was made from: `given` is hashed, then the two
    /// digests are compared in constant time.
    pub fn matches(&self, given: &[u8]) -> subtle::Choice {
        KeyDigest::of(given).0.ct_eq(&self.0)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for KeyDigest {}

impl Drop for KeyDigest {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// An HS256 signing key with its ready-made verification state (cheap to clone).
#[derive(Clone)]
pub struct SigningKey(Arc<SigningKeyInner>);

struct SigningKeyInner {
    raw: Secret,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.raw == other.0.raw
    }
}
impl Eq for SigningKey {}

impl SigningKey {
    /// A signing key from raw bytes (all of them, as stored in the file or Secret); at least
    /// [`MIN_SIGNING_KEY_BYTES`] long.
    pub fn new(bytes: &[u8]) -> Result<Self, AuthError> {
        if bytes.len() < MIN_SIGNING_KEY_BYTES {
            return Err(AuthError::SigningKeyTooShort { len: bytes.len() });
        }
        let decoding =
            DecodingKey::from_secret(bytes).map_err(|e| AuthError::Jwt(e.to_string()))?;
        // Algorithm pinned to HS256 (no `none`, no algorithm confusion). `exp` and `aud` are
        // required here and compared in `verify` against the caller's clock and endpoint.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "aud"]);
        Ok(SigningKey(Arc::new(SigningKeyInner {
            raw: Secret::new(bytes),
            decoding,
            validation,
        })))
    }

    fn verify(
        &self,
        token: &str,
        endpoint: &str,
        now: SystemTime,
        max_lifetime: Duration,
    ) -> Result<(), AuthFailure> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    AuthFailure::BadSignature
                }
                _ => AuthFailure::Malformed,
            })?;
        let aud_ok = match &data.claims.aud {
            Audience::One(a) => a == endpoint,
            Audience::Many(v) => v.iter().any(|a| a == endpoint),
        };
        if !aud_ok {
            return Err(AuthFailure::WrongAudience);
        }
        let (now, c) = (unix_secs(now), &data.claims);
        if c.exp <= now {
            return Err(AuthFailure::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now) {
            return Err(AuthFailure::NotYetValid);
        }
        // A stolen long-lived token is a standing key: its lifetime, as issued (`exp - iat`)
        // and as left (`exp - now`, so that a made-up `iat` does not help), is capped.
        let max = max_lifetime.as_secs();
        let issued = c.iat.map_or(0, |iat| c.exp.saturating_sub(iat));
        if issued > max || c.exp - now > max {
            return Err(AuthFailure::LifetimeTooLong);
        }
        Ok(())
    }
}

/// The claims infergate issues and checks.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The endpoint name.
    aud: Audience,
    /// Expiry, seconds since the Unix epoch; the token is refused from that second on.
    exp: u64,
    /// Issued at, seconds since the Unix epoch: `exp - iat` is the token's lifetime, capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Not before, seconds since the Unix epoch: refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How an endpoint authenticates callers. [`Default`] is key mode with no keys: every request refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPolicy {
    /// No authentication: every request passes.
    None,
    /// `Bearer <key>` must equal the primary or the secondary key. Neither set: refuse all.
    Keys {
        /// The primary key's digest.
        primary: Option<KeyDigest>,
        /// The secondary key's digest.
        secondary: Option<KeyDigest>,
    },
    /// `Bearer <jwt>`: HS256 under `signing_key`, `aud` = endpoint name, `exp` in the future.
    Token {
        /// The HMAC key that signs and verifies tokens.
        signing_key: SigningKey,
    },
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy::Keys {
            primary: None,
            secondary: None,
        }
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The HS256 signing key is shorter than [`MIN_SIGNING_KEY_BYTES`].
    #[error(
        "the signing key is {len} bytes; at least {MIN_SIGNING_KEY_BYTES} are needed (generate one with `head -c {MIN_SIGNING_KEY_BYTES} /dev/urandom`)"
    )]
    SigningKeyTooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// A key-mode key shorter than [`MIN_KEY_BYTES`].
    #[error(
        "the `{entry}` key is {len} bytes; at least {MIN_KEY_BYTES} are needed (generate one with `openssl rand -base64 32`)"
    )]
    KeyTooShort {
        /// Which key: `primaryKey` or `secondaryKey`.
        entry: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// Token mode, but the Secret has no `signingKey`.
    #[error("the Secret has no `{0}` entry, which this mode needs")]
    MissingSecretEntry(&'static str),
    /// The JWT library refused the key or the claims.
    #[error("cannot sign or verify tokens: {0}")]
    Jwt(String),
}

impl AuthPolicy {
    /// Key mode. Keys are trimmed of surrounding ASCII whitespace (a bearer value never holds
    /// any); an empty key counts as not set; a key shorter than [`MIN_KEY_BYTES`] is refused,
    /// naming it (`primaryKey` or `secondaryKey`).
    pub fn keys(primary: Option<&[u8]>, secondary: Option<&[u8]>) -> Result<Self, AuthError> {
        let mk = |entry: &'static str, k: Option<&[u8]>| match k.map(<[u8]>::trim_ascii) {
            Some([]) | None => Ok(None),
            Some(k) if k.len() < MIN_KEY_BYTES => Err(AuthError::KeyTooShort {
                entry,
                len: k.len(),
            }),
            Some(k) => Ok(Some(KeyDigest::of(k))),
        };
        Ok(AuthPolicy::Keys {
            primary: mk(SECRET_PRIMARY_KEY, primary)?,
            secondary: mk(SECRET_SECONDARY_KEY, secondary)?,
        })
    }

    /// Token mode with this HS256 signing key (all its bytes, at least [`MIN_SIGNING_KEY_BYTES`]).
    pub fn token(signing_key: &[u8]) -> Result<Self, AuthError> {
        Ok(AuthPolicy::Token {
            signing_key: SigningKey::new(signing_key)?,
        })
    }

    /// The policy a Kubernetes Secret's `data` gives for `mode`: `primaryKey` / `secondaryKey`
    /// in key mode (none present is valid and refuses every request), `signingKey` in token
    /// mode (required). Other entries are ignored; mode `None` ignores the Secret.
    pub fn from_secret_data(
        mode: AuthMode,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, AuthError> {
        match mode {
            AuthMode::None => Ok(AuthPolicy::None),
            AuthMode::Key => AuthPolicy::keys(
                data.get(SECRET_PRIMARY_KEY).map(Vec::as_slice),
                data.get(SECRET_SECONDARY_KEY).map(Vec::as_slice),
            ),
            AuthMode::Token => match data.get(SECRET_SIGNING_KEY) {
                Some(k) => AuthPolicy::token(k),
                None => Err(AuthError::MissingSecretEntry(SECRET_SIGNING_KEY)),
            },
        }
    }

    /// The mode of this policy.
    pub fn mode(&self) -> AuthMode {
        match self {
            AuthPolicy::None => AuthMode::None,
            AuthPolicy::Keys { .. } => AuthMode::Key,
            AuthPolicy::Token { .. } => AuthMode::Token,
        }
    }

    /// Whether this policy refuses every request (key mode with no key).
    pub fn refuses_all(&self) -> bool {
        matches!(
            self,
            AuthPolicy::Keys {
                primary: None,
                secondary: None
            }
        )
    }

    /// Checks a request's `Authorization` header for `endpoint` at time `now`, with tokens of
    /// at most [`DEFAULT_MAX_TOKEN_LIFETIME_SECONDS`] (see [`AuthPolicy::check_with`]).
    pub fn check(
        &self,
        authorization: Option<&HeaderValue>,
        endpoint: &str,
        now: SystemTime,
    ) -> Result<(), AuthFailure> {
        let max = Duration::from_secs(DEFAULT_MAX_TOKEN_LIFETIME_SECONDS);
        self.check_with(authorization, endpoint, now, max)
    }

    /// Checks a request's `Authorization` header for `endpoint` at time `now`; a token may live
    /// at most `max_token_lifetime` (the router's `maxTokenLifetimeSeconds`).
    pub fn check_with(
        &self,
        authorization: Option<&HeaderValue>,
        endpoint: &str,
        now: SystemTime,
        max_token_lifetime: Duration,
    ) -> Result<(), AuthFailure> {
        let (primary, secondary) = match self {
            AuthPolicy::None => return Ok(()),
            AuthPolicy::Keys { primary, secondary } => {
                if primary.is_none() && secondary.is_none() {
                    return Err(AuthFailure::NoKeysConfigured);
                }
                (primary.as_ref(), secondary.as_ref())
            }
            AuthPolicy::Token { signing_key } => {
                let token = bearer(authorization)?;
                let token = std::str::from_utf8(token).map_err(|_| AuthFailure::Malformed)?;
                return signing_key.verify(token, endpoint, now, max_token_lifetime);
            }
        };
        let given = bearer(authorization)?;
        // Both keys are always compared, each as a constant-time comparison of SHA-256 digests
        // (so of equal lengths whatever was sent): neither timing nor the code path tells which
        // key matched, or how close a guess came.
        let given = KeyDigest::of(given);
        let hit =
            |k: Option<&KeyDigest>| k.map_or(subtle::Choice::from(0), |k| k.0.ct_eq(&given.0));
        if bool::from(hit(primary) | hit(secondary)) {
            Ok(())
        } else {
            Err(AuthFailure::InvalidKey)
        }
    }
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive).
fn bearer(authorization: Option<&HeaderValue>) -> Result<&[u8], AuthFailure> {
    let v = authorization.ok_or(AuthFailure::Missing)?.as_bytes();
    let v = v.trim_ascii();
    if v.is_empty() {
        return Err(AuthFailure::Missing);
    }
    if v.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthFailure::Malformed);
    }
    match v.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
            let cred = rest.trim_ascii_start();
            if cred.is_empty() {
                Err(AuthFailure::Malformed)
            } else {
                Ok(cred)
            }
        }
        _ => Err(AuthFailure::BadScheme),
    }
}

/// Why a request was refused. [`reason`](AuthFailure::reason) is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization` header (or an empty one).
    #[error("authentication required: send `Authorization: Bearer <key or token>`")]
    Missing,
    /// An `Authorization` header with a scheme other than `Bearer`.
    #[error("unsupported authorization scheme: use `Authorization: Bearer <key or token>`")]
    BadScheme,
    /// Key mode: the key matches neither the primary nor the secondary key.
    #[error("the key is not valid for this endpoint")]
    InvalidKey,
    /// Key mode with no key configured: every request is refused.
    #[error("this endpoint has no keys configured, so every request is refused")]
    NoKeysConfigured,
    /// Token mode: `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Token mode: `nbf` has not come yet.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// Token mode: `exp - iat` or `exp - now` is above the router's `maxTokenLifetimeSeconds`.
    #[error("the token lives longer than this router accepts (maxTokenLifetimeSeconds)")]
    LifetimeTooLong,
    /// Token mode: `aud` is not this endpoint.
    #[error("the token was issued for another endpoint")]
    WrongAudience,
    /// Token mode: the signature does not verify (or the algorithm is not HS256).
    #[error("the token signature is not valid")]
    BadSignature,
    /// Token mode: not a well-formed token with `exp` and `aud`; or an empty bearer value.
    #[error("the token is malformed")]
    Malformed,
}

impl AuthFailure {
    /// Every failure, in a fixed order.
    pub const ALL: [AuthFailure; 10] = [
        AuthFailure::Missing,
        AuthFailure::BadScheme,
        AuthFailure::InvalidKey,
        AuthFailure::NoKeysConfigured,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::LifetimeTooLong,
        AuthFailure::WrongAudience,
        AuthFailure::BadSignature,
        AuthFailure::Malformed,
    ];

    /// The metric label: `missing`, `bad_scheme`, `invalid_key`, `no_keys_configured`,
    /// `expired`, `not_yet_valid`, `lifetime_too_long`, `wrong_audience`, `bad_signature` or
    /// `malformed`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::BadScheme => "bad_scheme",
            AuthFailure::InvalidKey => "invalid_key",
            AuthFailure::NoKeysConfigured => "no_keys_configured",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::LifetimeTooLong => "lifetime_too_long",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Malformed => "malformed",
        }
    }

    /// Position in [`AuthFailure::ALL`] (for per-reason handle arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `WWW-Authenticate` value for a 401 (RFC 6750 section 3).
    pub fn www_authenticate(self) -> &'static str {
        match self {
            AuthFailure::Missing | AuthFailure::NoKeysConfigured => "Bearer",
            AuthFailure::BadScheme => "Bearer error=\"invalid_request\"",
            _ => "Bearer error=\"invalid_token\"",
        }
    }
}

/// A token for `endpoint` valid for `ttl` from now, signed with `signing_key`.
pub fn issue_token(endpoint: &str, ttl: Duration, signing_key: &[u8]) -> Result<String, AuthError> {
    let now = SystemTime::now();
    issue_token_at(endpoint, now, now + ttl, signing_key)
}

/// A token for `endpoint` issued at `iat` and expiring at `exp`, signed with `signing_key`.
pub fn issue_token_at(
    endpoint: &str,
    iat: SystemTime,
    exp: SystemTime,
    signing_key: &[u8],
) -> Result<String, AuthError> {
    issue_token_with(endpoint, iat, None, exp, signing_key)
}

/// A token for `endpoint` issued at `iat`, not valid before `nbf` (when given) and expiring at
/// `exp`, signed with `signing_key`.
pub fn issue_token_with(
    endpoint: &str,
    iat: SystemTime,
    nbf: Option<SystemTime>,
    exp: SystemTime,
    signing_key: &[u8],
) -> Result<String, AuthError> {
    if signing_key.len() < MIN_SIGNING_KEY_BYTES {
        return Err(AuthError::SigningKeyTooShort {
            len: signing_key.len(),
        });
    }
    let key = EncodingKey::from_secret(signing_key).map_err(|e| AuthError::Jwt(e.to_string()))?;
    let claims = Claims {
        aud: Audience::One(endpoint.to_string()),
        exp: unix_secs(exp),
        iat: Some(unix_secs(iat)),
        nbf: nbf.map(unix_secs),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthError::Jwt(e.to_string()))
}

#[cfg(test)]
mod tests;

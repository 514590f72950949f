//! Typed, validated infergate configuration: the YAML file, `--set` overrides and every check made before a port is bound.
//!
//! Keys are camelCase. The TLS keys (`sslCertPemFile`, `sslKeyPemFile`,
//! `allowInsecureConnections`) carry the names the AzureML Kubernetes extension uses.
//! Every error names the key, the bad value and how to fix it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

mod auth;
mod cluster;
mod discovery;
mod edge;
mod scale;
#[macro_use]
mod set;
mod limits;
mod settings;
mod trace;
mod upstream;
pub use auth::{
    AuthConfig, AuthMode, KeyString, MIN_KEY_BYTES, MIN_SIGNING_KEY_BYTES, read_signing_key_file,
};
pub use cluster::{ClusterConfig, ClusterKube, MIN_CLUSTER_SECRET_BYTES, PartitionMode};
pub use discovery::{
    DiscoveryConfig, ENDPOINTSLICE_CONTROLLER, KubeDiscoveryConfig, is_dns_label, is_label_value,
};
pub use edge::{
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS, HeadersWithUnderscores, MAX_TOKEN_LIFETIME_LIMIT,
    MAX_XFF_TRUSTED_HOPS,
};
pub use limits::Limits;
pub use scale::{AutoscalerConfig, MAX_INSTANCES_LIMIT, ScaleSettings, ScaleTargetRef};
pub use set::{closest, settable_keys};
pub use settings::{
    Defaults, MirrorConfig, RequestSettings, RequestSettingsCeilings, ResolvedSettings,
};
pub use trace::{OtlpConfig, OtlpProtocol, TracingConfig};
pub use upstream::{GrpcConfig, UpstreamProtocol, UpstreamTls, load_ca_pem, validate_upstream};

/// A configuration error: which key, which value, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key holds a value that is not allowed.
    #[error("config key `{key}`: value `{value}` is invalid: {problem}; fix: {fix}")]
    Invalid {
        /// Dotted path of the key, e.g. `endpoints[0].traffic`.
        key: String,
        /// The offending value as written.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// The YAML could not be read into the configuration's shape (unknown key, wrong type, syntax).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file (or `<inline>`).
        path: String,
        /// The parser's message, which names the line and column.
        message: String,
    },
    /// The file could not be read.
    #[error(
        "config file {path}: cannot read it: {message}; fix: pass an existing, readable YAML file with --config"
    )]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
}

impl ConfigError {
    /// A [`ConfigError::Invalid`]: the one shape (and message) of "this key holds a bad value",
    /// shared with `infergate render`'s settings.
    pub fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The accepted spellings of a boolean, as the extension's `--config key=value` settings take them.
pub const BOOL_SPELLINGS: &str = "True, False, true or false";

/// The one reading of a boolean: `True`, `False`, `true`, `false` and nothing else. Otherwise
/// the fix to show: the spellings, and the nearest one when `value` looks like a typo of it.
fn bool_spelling(value: &str) -> Result<bool, String> {
    match value {
        "True" | "true" => Ok(true),
        "False" | "false" => Ok(false),
        other => {
            let lower = other.to_ascii_lowercase();
            let hint = [("true", "True"), ("false", "False")]
                .into_iter()
                .find(|(w, _)| strsim::levenshtein(&lower, w) <= 2)
                .map(|(_, spelled)| format!(" (did you mean `{spelled}`?)"))
                .unwrap_or_default();
            Err(format!("write one of {BOOL_SPELLINGS}{hint}"))
        }
    }
}

/// Parses a boolean the way the extension does: `True`, `False`, `true`, `false` and nothing else.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    bool_spelling(value).map_err(|fix| ConfigError::invalid(key, value, "not a boolean", fix))
}

/// A boolean read from YAML that accepts `true`/`false` as well as the strings `True`/`False`.
fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a boolean ({BOOL_SPELLINGS})")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            bool_spelling(v).map_err(|fix| E::custom(format!("`{v}` is not a boolean; {fix}")))
        }
    }
    d.deserialize_any(V)
}

/// The whole router configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// PEM certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_cert_pem_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_key_pem_file: Option<PathBuf>,
    /// Serve plain HTTP on `listen.http`. Off unless set explicitly.
    #[serde(default, deserialize_with = "de_bool")]
    pub allow_insecure_connections: bool,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Defaults for every deployment's request settings.
    #[serde(default)]
    pub defaults: Defaults,
    /// How long in-flight requests may run after SIGTERM before the process exits.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// How often the certificate files are checked for changes.
    #[serde(default = "default_cert_reload_interval_ms")]
    pub cert_reload_interval_ms: u64,
    /// How often the configuration file (and the signing key files it names) is checked for
    /// changes, which are then applied without a restart; 0 turns the check off (SIGHUP still
    /// reloads).
    #[serde(default = "default_config_reload_interval_ms")]
    pub config_reload_interval_ms: u64,
    /// The scoring endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Endpoints from Kubernetes (`discovery.kube`) instead of `endpoints`.
    #[serde(default, skip_serializing_if = "DiscoveryConfig::is_empty")]
    pub discovery: DiscoveryConfig,
    /// Replicas acting as one router: global per-pod slots and queue (see README, "High availability").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// The autoscaler's leader election (with `discovery.kube`; see README, "Autoscaling").
    #[serde(default, skip_serializing_if = "is_default_autoscaler")]
    pub autoscaler: AutoscalerConfig,
    /// The highest value each request setting may take in `requestSettings` (and `defaults`).
    #[serde(default, skip_serializing_if = "is_default_ceilings")]
    pub request_settings_ceilings: RequestSettingsCeilings,
    /// Proxies in front of the router whose `X-Forwarded-For` entries are kept (0: the client's
    /// header is replaced by the peer address).
    #[serde(default, skip_serializing_if = "edge::is_zero")]
    pub xff_trusted_hops: u32,
    /// What a request with `_` in a header name gets: `reject` (400), `drop` or `allow`.
    #[serde(default, skip_serializing_if = "HeadersWithUnderscores::is_default")]
    pub headers_with_underscores: HeadersWithUnderscores,
    /// Token mode: the longest lifetime (`exp - iat`, and `exp - now`) a token may have.
    #[serde(
        default = "edge::default_max_token_lifetime_seconds",
        skip_serializing_if = "edge::is_default_max_token_lifetime"
    )]
    pub max_token_lifetime_seconds: u64,
    /// Trace context and OpenTelemetry export (see README, "Observability").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Connection-level limits at the edge (see README, "Edge limits").
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: Limits,
    /// How gRPC calls name their endpoint besides the `azureml-endpoint` metadata key (see
    /// README, "gRPC").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcConfig>,
}

fn is_default_ceilings(c: &RequestSettingsCeilings) -> bool {
    *c == RequestSettingsCeilings::default()
}

fn is_default_autoscaler(a: &AutoscalerConfig) -> bool {
    *a == AutoscalerConfig::default()
}

fn is_default_limits(l: &Limits) -> bool {
    *l == Limits::default()
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_cert_reload_interval_ms() -> u64 {
    2_000
}
fn default_config_reload_interval_ms() -> u64 {
    2_000
}

/// Listener addresses (`host:port`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// HTTPS listener (TLS terminated here).
    #[serde(default = "default_https")]
    pub https: String,
    /// Plain HTTP listener, bound only when `allowInsecureConnections` is true.
    #[serde(default = "default_http")]
    pub http: String,
    /// Admin listener: `/healthz`, `/readyz`, `/metrics` (plain HTTP).
    #[serde(default = "default_admin")]
    pub admin: String,
}

fn default_https() -> String {
    "0.0.0.0:8443".into()
}
fn default_http() -> String {
    "0.0.0.0:8080".into()
}
fn default_admin() -> String {
    "0.0.0.0:9090".into()
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            https: default_https(),
            http: default_http(),
            admin: default_admin(),
        }
    }
}

/// One scoring endpoint: a URL name, its deployments and how traffic is split between them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// The name in `/api/v1/endpoint/<name>/score` and `/api/v1/service/<name>/score`.
    pub name: String,
    /// Percent of unpinned traffic per deployment; sums to 100, or all 0 (then only pinned requests are served).
    /// May be omitted when there is exactly one deployment (it gets 100).
    #[serde(default)]
    pub traffic: BTreeMap<String, u32>,
    /// The deployments behind this endpoint.
    pub deployments: Vec<DeploymentConfig>,
    /// How callers authenticate. Omitted: key mode (with no keys, every request is refused).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Whether `swagger.json` needs authentication too (by default it is open: it documents the API).
    #[serde(default, deserialize_with = "de_bool")]
    pub swagger_auth: bool,
    /// Copy a share of requests to another deployment, discarding its answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Forward the client's `Authorization` header to the pod (by default it is removed in
    /// every auth mode: the model never sees the caller's credentials).
    #[serde(
        default,
        deserialize_with = "de_bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub pass_authorization: bool,
}

/// One deployment: a set of identical model pods.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The name clients pin with the `azureml-model-deployment` header.
    pub name: String,
    /// Pod addresses, `ip:port`.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Path of the scoring route on the pod.
    #[serde(default = "default_scoring_path")]
    pub scoring_path: String,
    /// Path of the swagger document on the pod.
    #[serde(default = "default_swagger_path")]
    pub swagger_path: String,
    /// Overrides of `defaults` for this deployment.
    #[serde(default)]
    pub request_settings: RequestSettings,
    /// Autoscaling: without Kubernetes the decisions are only logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_settings: Option<ScaleSettings>,
    /// What the router speaks to the pods: `http1` (the default), `h2c` (HTTP/2 without TLS)
    /// or `h2` (HTTP/2 over TLS, with `upstreamTls`). gRPC calls need `h2c` or `h2`.
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_default")]
    pub protocol: UpstreamProtocol,
    /// With `protocol: h2`: the CA that signs the pods' certificates and the name they hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
}

/// Default path of the scoring route on a pod.
pub fn default_scoring_path() -> String {
    "/score".into()
}
/// Default path of the swagger document on a pod.
pub fn default_swagger_path() -> String {
    "/swagger.json".into()
}

/// Listener addresses after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    /// HTTPS, when TLS files are configured.
    pub https: Option<SocketAddr>,
    /// Plain HTTP, when `allowInsecureConnections` is true.
    pub http: Option<SocketAddr>,
    /// Admin.
    pub admin: SocketAddr,
}

impl Config {
    /// Parses YAML text into a configuration (shape only; call [`Config::validate`] after overrides).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Reads a YAML file, applies `--set KEY=VALUE` overrides and validates the result.
    pub fn load(path: &Path, sets: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut cfg = Config::from_yaml(&text, &path.display().to_string())?;
        for s in sets {
            cfg.apply_set(s)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule a running router relies on. Nothing is bound before this passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addrs()?;
        self.check_tls()?;
        validate_settings("defaults", &self.defaults)?;
        self.request_settings_ceilings
            .check_defaults("defaults", &self.defaults)?;
        edge::validate(self.xff_trusted_hops, self.max_token_lifetime_seconds)?;
        if self.drain_timeout_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "drainTimeoutMs",
                self.drain_timeout_ms,
                "longer than an hour",
                "use at most 3600000 (the default is 30000)",
            ));
        }
        if self.cert_reload_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "certReloadIntervalMs",
                0,
                "must be positive",
                "use e.g. 2000 (the default)",
            ));
        }
        if self.config_reload_interval_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "configReloadIntervalMs",
                self.config_reload_interval_ms,
                "longer than an hour",
                "use at most 3600000, or 0 to reload only on SIGHUP (the default is 2000)",
            ));
        }
        self.discovery.validate(self.endpoints.len())?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        self.autoscaler.validate()?;
        if let Some(t) = &self.tracing {
            t.validate()?;
        }
        self.limits.validate()?;
        if let Some(g) = &self.grpc {
            g.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let key = format!("endpoints[{i}]");
            ep.validate(&key, &self.defaults, &self.request_settings_ceilings)?;
            if !seen.insert(ep.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    &ep.name,
                    "another endpoint already has this name",
                    "give every endpoint a distinct name",
                ));
            }
        }
        Ok(())
    }

    fn check_tls(&self) -> Result<(), ConfigError> {
        match (&self.ssl_cert_pem_file, &self.ssl_key_pem_file) {
            (None, None) if !self.allow_insecure_connections => Err(ConfigError::invalid(
                "sslCertPemFile, sslKeyPemFile, allowInsecureConnections",
                "(not set)",
                "no TLS certificate is configured and plain HTTP is not allowed",
                "set sslCertPemFile and sslKeyPemFile to a PEM certificate chain and its key, \
                 or set allowInsecureConnections=True to serve plain HTTP (not for production)",
            )),
            (Some(c), None) => Err(ConfigError::invalid(
                "sslKeyPemFile",
                "(not set)",
                format!("sslCertPemFile is set ({}) but its key is not", c.display()),
                "set sslKeyPemFile to the PEM private key of that certificate",
            )),
            (None, Some(k)) => Err(ConfigError::invalid(
                "sslCertPemFile",
                "(not set)",
                format!(
                    "sslKeyPemFile is set ({}) but no certificate is",
                    k.display()
                ),
                "set sslCertPemFile to the PEM certificate chain (leaf first) for that key",
            )),
            (Some(c), Some(k)) => {
                for (key, p) in [("sslCertPemFile", c), ("sslKeyPemFile", k)] {
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(ConfigError::invalid(
                            key,
                            p.display(),
                            format!("cannot read the file: {e}"),
                            "point it at an existing PEM file readable by the router",
                        ));
                    }
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// The validated listener addresses: HTTPS only with TLS files, HTTP only with `allowInsecureConnections`.
    pub fn listen_addrs(&self) -> Result<ListenAddrs, ConfigError> {
        let parse = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                ConfigError::invalid(
                    key,
                    v,
                    "not a socket address",
                    "write IP:PORT, e.g. 0.0.0.0:8443 or [::]:8443",
                )
            })
        };
        let https = parse("listen.https", &self.listen.https)?;
        let http = parse("listen.http", &self.listen.http)?;
        let admin = parse("listen.admin", &self.listen.admin)?;
        let tls = self.ssl_cert_pem_file.is_some() && self.ssl_key_pem_file.is_some();
        Ok(ListenAddrs {
            https: tls.then_some(https),
            http: self.allow_insecure_connections.then_some(http),
            admin,
        })
    }

    /// The settings a deployment runs with: its `requestSettings` over `defaults`.
    pub fn resolved_settings(&self, dep: &DeploymentConfig) -> ResolvedSettings {
        dep.request_settings.over(self.defaults)
    }
}

/// Whether `name` may be used as an endpoint or deployment name in a URL or header.
///
/// Letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most 63 characters:
/// never `.`/`..`, never a slash, so a name cannot step into another route.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

const NAME_FIX: &str = "use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit";

impl EndpointConfig {
    /// Checks this endpoint as if it sat at config key `key` (e.g. `endpoints[0]`; Kubernetes
    /// discovery passes `spec`), with deployment settings resolved over `defaults` and each
    /// override at most its ceiling.
    pub fn validate(
        &self,
        key: &str,
        defaults: &Defaults,
        ceilings: &RequestSettingsCeilings,
    ) -> Result<(), ConfigError> {
        if !is_valid_name(&self.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                &self.name,
                "not a valid endpoint name",
                NAME_FIX,
            ));
        }
        if self.deployments.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.deployments"),
                "[]",
                "an endpoint needs at least one deployment",
                "list the deployments (name, pods) behind this endpoint",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (j, d) in self.deployments.iter().enumerate() {
            let dkey = format!("{key}.deployments[{j}]");
            d.validate(&dkey, defaults, ceilings)?;
            if !names.insert(d.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{dkey}.name"),
                    &d.name,
                    "another deployment of this endpoint has this name",
                    "give every deployment of an endpoint a distinct name",
                ));
            }
        }
        for name in self.traffic.keys() {
            if !names.contains(name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.traffic.{name}"),
                    name,
                    "no deployment of this endpoint has that name",
                    format!(
                        "name one of the deployments ({})",
                        self.deployments
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        self.validate_auth(key)?;
        let sum: u64 = self.traffic.values().map(|&w| u64::from(w)).sum();
        if !self.traffic.is_empty() && sum != 100 && sum != 0 {
            return Err(ConfigError::invalid(
                format!("{key}.traffic"),
                format_traffic(&self.traffic),
                format!("weights sum to {sum}"),
                "make the weights sum to 100 (or set all to 0 to serve only requests that pin a deployment)",
            ));
        }
        if let Some(m) = &self.mirror {
            if !names.contains(m.deployment.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.mirror.deployment"),
                    &m.deployment,
                    "no deployment of this endpoint has that name",
                    "name one of this endpoint's deployments",
                ));
            }
            if m.percent > 100 {
                return Err(ConfigError::invalid(
                    format!("{key}.mirror.percent"),
                    m.percent,
                    "more than 100 percent",
                    "use 0 to 100",
                ));
            }
        }
        Ok(())
    }

    /// Traffic weight per deployment, in `deployments` order. An omitted map gives a lone deployment 100.
    pub fn weights(&self) -> Vec<u32> {
        if self.traffic.is_empty() {
            let lone = self.deployments.len() == 1;
            return self
                .deployments
                .iter()
                .map(|_| if lone { 100 } else { 0 })
                .collect();
        }
        self.deployments
            .iter()
            .map(|d| self.traffic.get(&d.name).copied().unwrap_or(0))
            .collect()
    }
}

fn format_traffic(t: &BTreeMap<String, u32>) -> String {
    let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

impl DeploymentConfig {
    fn validate(
        &self,
        key: &str,
        defaults: &Defaults,
        ceilings: &RequestSettingsCeilings,
    ) -> Result<(), ConfigError> {
        if !is_valid_name(&self.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                &self.name,
                "not a valid deployment name",
                NAME_FIX,
            ));
        }
        for (k, p) in [
            ("scoringPath", &self.scoring_path),
            ("swaggerPath", &self.swagger_path),
        ] {
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                return Err(ConfigError::invalid(
                    format!("{key}.{k}"),
                    p,
                    "not an absolute path",
                    "write a path starting with '/', without query or fragment, e.g. /score",
                ));
            }
        }
        for (i, pod) in self.pods.iter().enumerate() {
            if pod.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.pods[{i}]"),
                    pod,
                    "not a socket address",
                    "write IP:PORT, e.g. 10.0.0.12:5001",
                ));
            }
        }
        if let Some(s) = &self.scale_settings {
            s.validate(&format!("{key}.scaleSettings"))?;
        }
        validate_upstream(key, self.protocol, self.upstream_tls.as_ref())?;
        let skey = format!("{key}.requestSettings");
        ceilings.check(&skey, &self.request_settings)?;
        validate_settings(&skey, &self.request_settings.over(*defaults))
    }

    /// The pod addresses (validated by [`Config::validate`]; unparsable ones are skipped).
    pub fn pod_addrs(&self) -> Vec<SocketAddr> {
        self.pods.iter().filter_map(|p| p.parse().ok()).collect()
    }
}

fn validate_settings(key: &str, s: &ResolvedSettings) -> Result<(), ConfigError> {
    if s.request_timeout_ms == 0 {
        return Err(ConfigError::invalid(
            format!("{key}.requestTimeoutMs"),
            0,
            "must be positive",
            "use e.g. 5000 (the default)",
        ));
    }
    if s.max_concurrent_requests_per_instance == 0 {
        return Err(ConfigError::invalid(
            format!("{key}.maxConcurrentRequestsPerInstance"),
            0,
            "a pod must accept at least one request",
            "use 1 or more (the default is 1)",
        ));
    }
    if s.ejection_base_ms > s.ejection_max_ms {
        return Err(ConfigError::invalid(
            format!("{key}.ejectionBaseMs"),
            s.ejection_base_ms,
            format!("longer than ejectionMaxMs ({})", s.ejection_max_ms),
            "make ejectionBaseMs at most ejectionMaxMs",
        ));
    }
    if s.retry_budget_percent > 100 {
        return Err(ConfigError::invalid(
            format!("{key}.retryBudgetPercent"),
            s.retry_budget_percent,
            "more than 100 percent",
            "use 0 (no retries) to 100; the default is 20",
        ));
    }
    if s.max_stream_duration_ms != 0 && s.max_stream_duration_ms < s.request_timeout_ms {
        return Err(ConfigError::invalid(
            format!("{key}.maxStreamDurationMs"),
            s.max_stream_duration_ms,
            format!(
                "shorter than requestTimeoutMs ({}): exchanges would end before the pod may answer",
                s.request_timeout_ms
            ),
            "make maxStreamDurationMs at least requestTimeoutMs, or 0 for no cap",
        ));
    }
    if s.max_request_body_bytes == 0 {
        return Err(ConfigError::invalid(
            format!("{key}.maxRequestBodyBytes"),
            0,
            "must be positive",
            "use e.g. 104857600 (100 MiB, the default)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

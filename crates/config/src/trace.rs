//! `tracing`: W3C trace context and OpenTelemetry (OTLP) span export.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The `tracing` section. Present: the router takes part in its requests' traces (its own span
/// id in the `traceparent` sent to the pod and returned to the client; a new trace when the
/// client sent none). Absent: a valid client `traceparent` passes unchanged, a malformed one is
/// removed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The share of new traces (started by the router) that are sampled, 0 to 1. A client's
    /// trace keeps its own sampled flag.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// Export the router's spans to an OpenTelemetry collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`), port 4318 by convention.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC (`TraceService/Export`), port 4317 by convention.
    #[serde(rename = "grpc")]
    Grpc,
}

/// `tracing.otlp`: where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL, `http://host:port` (`/v1/traces` is added for http/protobuf).
    pub endpoint: String,
    /// `http/protobuf` (the default) or `grpc`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Extra request headers for the collector (e.g. an API key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Spans waiting for export at most; more are dropped (and counted).
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// Spans per export request at most.
    #[serde(default = "default_max_export_batch_size")]
    pub max_export_batch_size: usize,
    /// How often a partial batch is sent.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
    /// An export request that takes longer fails (its spans are dropped and counted).
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
}

fn default_max_queue_size() -> usize {
    2048
}
fn default_max_export_batch_size() -> usize {
    512
}
fn default_export_interval_ms() -> u64 {
    1000
}
fn default_export_timeout_ms() -> u64 {
    10_000
}

impl TracingConfig {
    /// Checks the ratio and the exporter's settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(ConfigError::invalid(
                "tracing.samplingRatio",
                self.sampling_ratio,
                "not between 0 and 1",
                "use e.g. 0.1 to sample one new trace in ten, 1 for all (the default)",
            ));
        }
        let Some(o) = &self.otlp else {
            return Ok(());
        };
        if let Err(problem) = check_endpoint(&o.endpoint) {
            return Err(ConfigError::invalid(
                "tracing.otlp.endpoint",
                &o.endpoint,
                problem,
                "use the collector's base URL, e.g. http://otel-collector.monitoring:4318 (http/protobuf; /v1/traces is added) or http://otel-collector.monitoring:4317 (grpc)",
            ));
        }
        for (k, v) in &o.headers {
            let name_ok = !k.is_empty()
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
            let value_ok = v.bytes().all(|c| c == b' ' || c.is_ascii_graphic());
            if !name_ok || !value_ok {
                return Err(ConfigError::invalid(
                    format!("tracing.otlp.headers.{k}"),
                    v,
                    "not a valid HTTP header name and value",
                    "use a token name (letters, digits, `-`) and a printable ASCII value",
                ));
            }
        }
        let bounds = [
            ("maxQueueSize", o.max_queue_size as u64, 1, 1_000_000),
            (
                "maxExportBatchSize",
                o.max_export_batch_size as u64,
                1,
                100_000,
            ),
            ("exportIntervalMs", o.export_interval_ms, 10, 600_000),
            ("exportTimeoutMs", o.export_timeout_ms, 10, 600_000),
        ];
        for (key, v, min, max) in bounds {
            if !(min..=max).contains(&v) {
                return Err(ConfigError::invalid(
                    format!("tracing.otlp.{key}"),
                    v,
                    format!("not between {min} and {max}"),
                    "leave it out for the default",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `url` is a collector address the exporter can use: `http://`, a host (a name, an IPv4
/// address or a bracketed IPv6 one), an optional port, an optional path; nothing else.
fn check_endpoint(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(
            "https is not supported: spans go to the collector over plain http (a collector or agent inside the cluster)"
                .into(),
        );
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("not an http:// URL".into());
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, tail) = v6
                .split_once(']')
                .ok_or("an IPv6 host without its closing `]`")?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{host}` is not an IPv6 address"));
            }
            match tail {
                "" => (host, None),
                _ => match tail.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(format!("`{tail}` after the IPv6 host")),
                },
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !host
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".-_:".contains(&c))
    {
        return Err(format!("`{host}` is not a host name"));
    }
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("`{p}` is not a port (1-65535)"));
    }
    if !path
        .bytes()
        .all(|c| c.is_ascii_graphic() && !b"?#".contains(&c))
    {
        return Err("the path holds a query, a fragment, spaces or non-ASCII characters".into());
    }
    Ok(())
}

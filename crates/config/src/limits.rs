//! `limits`: what one client connection may cost the router at the edge (timeouts before and
//! between requests, connection caps, request-head sizes, HTTP/2 settings).

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::set::Settable;

/// Connection-level limits of the HTTPS and plain HTTP listeners (not the admin listener).
///
/// The defaults follow Envoy's edge-proxy guide and HAProxy where those set a value; the README
/// ("Edge limits") lists each with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Time from the accept to the first complete request head (TLS handshake and protocol
    /// detection included); on a keep-alive HTTP/1.1 connection, from the first byte of a
    /// later request to its complete head.
    pub header_read_timeout_ms: u64,
    /// How long a connection may stay open with no request in flight (HTTP/1.1 between
    /// keep-alive requests, until the next request's first byte; HTTP/2 with no open stream).
    pub idle_timeout_ms: u64,
    /// Open client connections on the HTTPS and HTTP listeners together; a connection above
    /// it is closed at once.
    pub max_connections: u64,
    /// Open connections from one client IP address; 0 turns the per-address cap off (as does a
    /// value at or above `max_connections`).
    pub max_connections_per_client: u64,
    /// Largest request head: the request line (or HTTP/2 pseudo-headers) and the header
    /// fields, counted as in HTTP/1.1 (`name: value\r\n` per field).
    pub max_request_header_bytes: u64,
    /// Most header fields in one request.
    pub max_request_headers: u32,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one connection may have open.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 initial flow-control window of each stream (bytes a client may send unacknowledged).
    pub http2_initial_stream_window_bytes: u32,
    /// HTTP/2 initial flow-control window of the whole connection.
    pub http2_initial_connection_window_bytes: u32,
    /// Interval of HTTP/2 keep-alive PINGs; 0 turns them off.
    pub http2_keepalive_interval_ms: u64,
    /// A PING not acknowledged within this closes the connection.
    pub http2_keepalive_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            max_connections_per_client: 5_000,
            max_request_header_bytes: 65_536,
            max_request_headers: 100,
            http2_max_concurrent_streams: 100,
            http2_initial_stream_window_bytes: 65_536,
            http2_initial_connection_window_bytes: 1_048_576,
            http2_keepalive_interval_ms: 60_000,
            http2_keepalive_timeout_ms: 20_000,
        }
    }
}

/// The smallest HTTP/2 flow-control window (RFC 9113: the initial window is 65535).
const MIN_H2_WINDOW: u32 = 65_535;
/// The largest HTTP/2 flow-control window (RFC 9113: 2^31 - 1).
const MAX_H2_WINDOW: u32 = (1 << 31) - 1;

/// `--set limits.KEY=VALUE`: every key of [`Limits`].
pub(crate) const LIMITS_SETTABLE: &[Settable] = settable! {
    "limits.headerReadTimeoutMs" => limits.header_read_timeout_ms;
    "limits.idleTimeoutMs" => limits.idle_timeout_ms;
    "limits.maxConnections" => limits.max_connections;
    "limits.maxConnectionsPerClient" => limits.max_connections_per_client;
    "limits.maxRequestHeaderBytes" => limits.max_request_header_bytes;
    "limits.maxRequestHeaders" => limits.max_request_headers;
    "limits.http2MaxConcurrentStreams" => limits.http2_max_concurrent_streams;
    "limits.http2InitialStreamWindowBytes" => limits.http2_initial_stream_window_bytes;
    "limits.http2InitialConnectionWindowBytes" => limits.http2_initial_connection_window_bytes;
    "limits.http2KeepaliveIntervalMs" => limits.http2_keepalive_interval_ms;
    "limits.http2KeepaliveTimeoutMs" => limits.http2_keepalive_timeout_ms;
};

/// `value` must lie in `lo..=hi`; else an error naming `limits.<key>` with `fix`.
fn in_range(key: &str, value: u64, lo: u64, hi: u64, fix: &str) -> Result<(), ConfigError> {
    if value < lo {
        let problem = match lo {
            1 => "must be positive".to_string(),
            _ => format!("below the minimum of {lo}"),
        };
        return Err(ConfigError::invalid(
            format!("limits.{key}"),
            value,
            problem,
            fix,
        ));
    }
    if value > hi {
        return Err(ConfigError::invalid(
            format!("limits.{key}"),
            value,
            format!("above the maximum of {hi}"),
            fix,
        ));
    }
    Ok(())
}

impl Limits {
    /// Checks every limit; an error names `limits.<key>`, the value and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const HOUR: u64 = 3_600_000;
        in_range(
            "headerReadTimeoutMs",
            self.header_read_timeout_ms,
            1,
            HOUR,
            "use 1 to 3600000 ms (the default is 30000)",
        )?;
        in_range(
            "idleTimeoutMs",
            self.idle_timeout_ms,
            1,
            24 * HOUR,
            "use 1 to 86400000 ms (the default is 60000)",
        )?;
        in_range(
            "maxConnections",
            self.max_connections,
            1,
            10_000_000,
            "use 1 to 10000000 (the default is 10000); the open-files limit must allow as many",
        )?;
        in_range(
            "maxRequestHeaderBytes",
            self.max_request_header_bytes,
            1024,
            1 << 20,
            "use 1024 to 1048576 bytes (the default is 65536)",
        )?;
        in_range(
            "maxRequestHeaders",
            u64::from(self.max_request_headers),
            1,
            10_000,
            "use 1 to 10000 (the default is 100)",
        )?;
        in_range(
            "http2MaxConcurrentStreams",
            u64::from(self.http2_max_concurrent_streams),
            1,
            10_000,
            "use 1 to 10000 (the default is 100)",
        )?;
        for (key, v, default) in [
            (
                "http2InitialStreamWindowBytes",
                self.http2_initial_stream_window_bytes,
                65_536,
            ),
            (
                "http2InitialConnectionWindowBytes",
                self.http2_initial_connection_window_bytes,
                1_048_576,
            ),
        ] {
            in_range(
                key,
                u64::from(v),
                u64::from(MIN_H2_WINDOW),
                u64::from(MAX_H2_WINDOW),
                &format!(
                    "use 65535 to 2147483647 bytes (HTTP/2's bounds; the default is {default})"
                ),
            )?;
        }
        if self.http2_keepalive_interval_ms > 0 {
            in_range(
                "http2KeepaliveTimeoutMs",
                self.http2_keepalive_timeout_ms,
                1,
                HOUR,
                "use 1 to 3600000 ms (the default is 20000), or set http2KeepaliveIntervalMs to 0 to send no PINGs",
            )?;
        }
        Ok(())
    }
}

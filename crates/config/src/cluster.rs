//! `cluster`: several router replicas acting as one (global per-pod slots and queue).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// What a replica cut off from a deployment's owner does with that deployment's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PartitionMode {
    /// Keep the limits exact: refuse with 503 `OwnerUnavailable` (the default).
    #[default]
    Refuse,
    /// Availability first: serve from a local share of each pod's slots.
    LocalShare,
}

/// Peers found from a headless Service's EndpointSlices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterKube {
    /// The headless Service that selects the router pods (its ready endpoints are the peers).
    pub service: String,
    /// Its namespace; omitted: the router's own (`POD_NAMESPACE`, else the service account's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The `cluster` section: the peer port, how peers are found, and how they authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// The peer listener (its own port).
    pub listen: SocketAddr,
    /// The address peers reach this replica at. Omitted: `listen` when it names one IP, else
    /// `$POD_IP` with the listen port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// A static peer list (this replica's own address may be in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<SocketAddr>,
    /// Peers from a headless Service instead of a static list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<ClusterKube>,
    /// The shared secret (at least 16 bytes) that authenticates peers.
    pub secret_file: PathBuf,
    /// What a replica cut off from an owner does.
    #[serde(default)]
    pub on_owner_unreachable: PartitionMode,
    /// How often peers exchange heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A peer silent for this long is dead.
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    200
}
fn default_dead_after_ms() -> u64 {
    1_500
}

/// The shortest peer secret accepted.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 16;

impl ClusterConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match (self.peers.is_empty(), &self.kube) {
            (true, None) => {
                return Err(ConfigError::invalid(
                    "cluster.peers, cluster.kube",
                    "(neither set)",
                    "a cluster needs a way to find its peers",
                    "list the peers' addresses in `cluster.peers` (ip:port), or name the headless \
                     Service that selects the router pods in `cluster.kube.service`",
                ));
            }
            (false, Some(_)) => {
                return Err(ConfigError::invalid(
                    "cluster.peers, cluster.kube",
                    "(both set)",
                    "peers come from one source",
                    "keep either the static `cluster.peers` list or `cluster.kube`",
                ));
            }
            _ => {}
        }
        if let Some(k) = &self.kube {
            if !crate::is_dns_label(&k.service) {
                return Err(ConfigError::invalid(
                    "cluster.kube.service",
                    &k.service,
                    "not a Kubernetes Service name",
                    "use 1-63 lowercase letters, digits and '-'",
                ));
            }
            if let Some(ns) = &k.namespace
                && !crate::is_dns_label(ns)
            {
                return Err(ConfigError::invalid(
                    "cluster.kube.namespace",
                    ns,
                    "not a Kubernetes namespace name",
                    "use 1-63 lowercase letters, digits and '-', or leave it out",
                ));
            }
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms > 10_000 {
            return Err(ConfigError::invalid(
                "cluster.heartbeatMs",
                self.heartbeat_ms,
                "out of range",
                "use 1..=10000 (the default is 200)",
            ));
        }
        if self.dead_after_ms < 3 * self.heartbeat_ms {
            return Err(ConfigError::invalid(
                "cluster.deadAfterMs",
                self.dead_after_ms,
                format!(
                    "shorter than 3 heartbeats ({} ms): live peers would be declared dead",
                    3 * self.heartbeat_ms
                ),
                "use at least 3 x cluster.heartbeatMs (the default is 1500)",
            ));
        }
        Ok(())
    }

    /// The address this replica is known by: `advertise`, else `listen` when it is one IP, else
    /// `$POD_IP` with the listen port.
    pub fn advertised(&self) -> Result<SocketAddr, ConfigError> {
        if let Some(a) = self.advertise {
            return Ok(a);
        }
        if !self.listen.ip().is_unspecified() {
            return Ok(self.listen);
        }
        match std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok()) {
            Some(ip) => Ok(SocketAddr::new(ip, self.listen.port())),
            None => Err(ConfigError::invalid(
                "cluster.advertise",
                "(not set)",
                format!(
                    "`cluster.listen` is {} (every address), so the address peers reach this \
                     replica at is unknown, and POD_IP is not set",
                    self.listen
                ),
                "set `cluster.advertise` to this replica's ip:port, or set the POD_IP \
                 environment variable (the downward API's status.podIP)",
            )),
        }
    }

    /// Reads the shared secret.
    pub fn read_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let key = "cluster.secretFile";
        let path = self.secret_file.display().to_string();
        let bytes = std::fs::read(&self.secret_file).map_err(|e| {
            ConfigError::invalid(
                key,
                &path,
                format!("cannot read it: {e}"),
                "point it at a readable file holding the peers' shared secret",
            )
        })?;
        let trimmed = bytes.trim_ascii().to_vec();
        if trimmed.len() < MIN_CLUSTER_SECRET_BYTES {
            return Err(ConfigError::invalid(
                key,
                &path,
                format!(
                    "the secret is {} bytes; at least {MIN_CLUSTER_SECRET_BYTES} are needed",
                    trimmed.len()
                ),
                "write a long random secret, e.g. `head -c 32 /dev/urandom | base64 > FILE`",
            ));
        }
        Ok(trimmed)
    }
}

//! HA peers from a headless Service: the ready endpoints of its EndpointSlices, watched live.
//!
//! `cluster.kube.service` names a headless Service that selects the router pods; its
//! EndpointSlices (label `kubernetes.io/service-name=<service>`) list every router replica and
//! whether it is ready. [`watch_peers`] turns them into one sorted, deduplicated list of peer
//! addresses on a [`tokio::sync::watch`] channel; the cluster layer reads it as its membership
//! source (and still decides liveness itself, by heartbeats).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use futures_util::StreamExt;
use infergate_metrics::{Counter, Gauge, Registry};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use tokio::sync::watch;

use crate::cluster::{Backoff, exp};
use crate::index::SERVICE_NAME_LABEL;
use crate::metrics;

/// The name of the peer port in the headless Service (and so in its EndpointSlices).
pub const PEER_PORT_NAME: &str = "peer";

/// Where a pod's service account namespace is mounted.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The `kind` label of the peer watch's metrics (apart from discovery's own EndpointSlice feeds).
pub const PEERS_KIND: &str = "PeerEndpointSlice";

/// The namespace of the peers' Service: `explicit` (`cluster.kube.namespace`), else the
/// `POD_NAMESPACE` environment variable (the downward API's `metadata.namespace`), else the
/// pod's service account namespace file, else `default`. Empty values count as absent.
pub fn peer_namespace(explicit: Option<&str>) -> String {
    resolve_namespace(
        explicit,
        std::env::var("POD_NAMESPACE").ok().as_deref(),
        Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE),
    )
}

/// [`peer_namespace`] with the environment variable's value and the file given (for tests).
pub(crate) fn resolve_namespace(explicit: Option<&str>, env: Option<&str>, file: &Path) -> String {
    let given = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    given(explicit)
        .or_else(|| given(env))
        .or_else(|| given(std::fs::read_to_string(file).ok().as_deref()))
        .unwrap_or_else(|| "default".to_string())
}

/// The peers of one slice: the first address of each ready endpoint (`conditions.ready` true or
/// absent, as Kubernetes advises for unknown conditions) with the slice's port named
/// [`PEER_PORT_NAME`], or `default_port` when the slice has no port of that name. FQDN slices
/// hold no IPs and give nothing.
pub fn slice_peers(slice: &EndpointSlice, default_port: u16) -> Vec<SocketAddr> {
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return Vec::new();
    }
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PEER_PORT_NAME))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .unwrap_or(default_port);
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.addresses.first()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// The peer set: each slice's peers by slice name, merged on output.
#[derive(Debug, Default)]
struct PeerSet {
    by_slice: BTreeMap<String, Vec<SocketAddr>>,
    /// The relist in progress (`Init` .. `InitDone`), which replaces `by_slice` when done.
    staging: Option<BTreeMap<String, Vec<SocketAddr>>>,
    port: u16,
}

impl PeerSet {
    fn key(s: &EndpointSlice) -> String {
        s.metadata.name.clone().unwrap_or_default()
    }

    /// Applies one event; true when the published list may have changed.
    fn apply(&mut self, ev: Event<EndpointSlice>) -> bool {
        match ev {
            Event::Init => {
                self.staging = Some(BTreeMap::new());
                false
            }
            Event::InitApply(s) => {
                let peers = slice_peers(&s, self.port);
                self.staging
                    .get_or_insert_default()
                    .insert(Self::key(&s), peers);
                false
            }
            Event::InitDone => {
                self.by_slice = self.staging.take().unwrap_or_default();
                true
            }
            Event::Apply(s) => {
                let peers = slice_peers(&s, self.port);
                self.by_slice.insert(Self::key(&s), peers);
                true
            }
            Event::Delete(s) => self.by_slice.remove(&Self::key(&s)).is_some(),
        }
    }

    /// Sorted and deduplicated (a pod may appear in two slices while they are rebalanced).
    fn peers(&self) -> Vec<SocketAddr> {
        let all: BTreeSet<SocketAddr> = self.by_slice.values().flatten().copied().collect();
        all.into_iter().collect()
    }
}

/// The watch's health metrics: discovery's families with `kind="PeerEndpointSlice"`.
struct PeerMetrics {
    up: Gauge,
    lists: Counter,
    errors: Counter,
}

impl PeerMetrics {
    fn new(registry: Option<&Registry>, namespace: &str) -> Self {
        // Without a registry, in one of its own that nothing renders.
        let own;
        let r = match registry {
            Some(r) => {
                r.describe(metrics::FAMILIES);
                r
            }
            None => {
                own = Registry::new();
                &own
            }
        };
        let labels = [("kind", PEERS_KIND), ("namespace", namespace)];
        PeerMetrics {
            up: r.gauge(metrics::WATCH_UP, &labels),
            lists: r.counter(metrics::LISTS_TOTAL, &labels),
            errors: r.counter(metrics::WATCH_ERRORS_TOTAL, &labels),
        }
    }
}

/// Watches the EndpointSlices of the headless Service `service` in `namespace` and publishes its
/// ready peers: sorted, deduplicated `ip:port`, the port being the slices' port named `peer`
/// (else `port`). The channel starts empty and changes only when the list does; after a failed
/// list or watch the last list stays (the watch retries with [`Backoff::default`]).
///
/// Spawns a task on the current tokio runtime, which ends when every receiver is dropped.
/// `registry`: where the watch's health is counted (`infergate_discovery_watch_up`,
/// `_lists_total`, `_watch_errors_total` with `kind="PeerEndpointSlice"`); `None`: nowhere.
/// The router's service account needs list/watch of `discovery.k8s.io` EndpointSlices in
/// `namespace` (the rendered discovery Role of that namespace, or the `<name>-peers` Role,
/// grants it).
pub fn watch_peers(
    client: Client,
    namespace: String,
    service: String,
    port: u16,
    registry: Option<&Registry>,
) -> watch::Receiver<Vec<SocketAddr>> {
    watch_peers_with(
        client,
        namespace,
        service,
        port,
        registry,
        Backoff::default(),
    )
}

/// [`watch_peers`] with the retry timing of failed lists and watches.
pub fn watch_peers_with(
    client: Client,
    namespace: String,
    service: String,
    port: u16,
    registry: Option<&Registry>,
    backoff: Backoff,
) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(Vec::new());
    let m = PeerMetrics::new(registry, &namespace);
    m.up.set(1.0);
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut stream = watch_stream(api, cfg).backoff(exp(backoff)).boxed();
    tracing::info!(%namespace, %service, "cluster: watching the peers' EndpointSlices");
    tokio::spawn(async move {
        let mut set = PeerSet {
            port,
            ..PeerSet::default()
        };
        let mut synced = false;
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = stream.next() => item,
            };
            let Some(item) = item else { return };
            match item {
                Ok(ev) => {
                    m.up.set(1.0);
                    let done = matches!(ev, Event::InitDone);
                    if done {
                        m.lists.increment(1);
                    }
                    if set.apply(ev) {
                        let peers = set.peers();
                        tx.send_if_modified(|cur| {
                            if *cur == peers {
                                return false;
                            }
                            tracing::info!(
                                %namespace,
                                %service,
                                peers = ?peers,
                                "cluster: peers from the Service's EndpointSlices"
                            );
                            *cur = peers;
                            true
                        });
                    }
                    if done && !synced {
                        synced = true;
                        tracing::debug!(%namespace, %service, "cluster: peer slices listed");
                    }
                }
                Err(e) => {
                    m.up.set(0.0);
                    m.errors.increment(1);
                    tracing::warn!(
                        %namespace,
                        %service,
                        error = %e,
                        "cluster: peer watch failed; retrying with backoff, the last peer list stays"
                    );
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ready_or_unknown_endpoints_with_the_named_port() {
        let s = slice(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "ports": [{"name": "other", "port": 1}, {"name": "peer", "port": 7000}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.4"], "conditions": {}},
                {"addresses": ["not-an-ip"]},
            ],
        }));
        let got = slice_peers(&s, 7946);
        let want: Vec<SocketAddr> = ["10.0.0.2:7000", "10.0.0.1:7000", "10.0.0.4:7000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn default_port_without_a_peer_port_and_nothing_from_fqdn() {
        let s = slice(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": ["fd00::1"]}],
        }));
        assert_eq!(
            slice_peers(&s, 7946),
            vec!["[fd00::1]:7946".parse().unwrap()]
        );
        let f = slice(json!({
            "metadata": {"name": "f"},
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["pod.example"]}],
        }));
        assert!(slice_peers(&f, 7946).is_empty());
    }

    #[test]
    fn relist_replaces_and_output_is_sorted_and_deduplicated() {
        let mk = |name: &str, ips: &[&str]| {
            slice(json!({
                "metadata": {"name": name},
                "addressType": "IPv4",
                "endpoints": ips.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>(),
            }))
        };
        let mut set = PeerSet {
            port: 7946,
            ..PeerSet::default()
        };
        assert!(set.apply(Event::Apply(mk("a", &["10.0.0.9", "10.0.0.1"]))));
        assert!(set.apply(Event::Apply(mk("b", &["10.0.0.1", "10.0.0.5"]))));
        let p: Vec<String> = set.peers().iter().map(|a| a.to_string()).collect();
        assert_eq!(p, ["10.0.0.1:7946", "10.0.0.5:7946", "10.0.0.9:7946"]);
        assert!(!set.apply(Event::Init));
        assert!(!set.apply(Event::InitApply(mk("c", &["10.0.0.7"]))));
        assert_eq!(set.peers().len(), 3, "the old list stays during a relist");
        assert!(set.apply(Event::InitDone));
        let p: Vec<String> = set.peers().iter().map(|a| a.to_string()).collect();
        assert_eq!(p, ["10.0.0.7:7946"]);
        assert!(!set.apply(Event::Delete(mk("gone", &[]))));
        assert!(set.apply(Event::Delete(mk("c", &[]))));
        assert!(set.peers().is_empty());
    }

    #[test]
    fn namespace_explicit_then_env_then_file_then_default() {
        let dir = std::env::temp_dir().join(format!("infergate-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("namespace");
        std::fs::write(&file, "from-file\n").unwrap();
        let missing = dir.join("missing");
        assert_eq!(resolve_namespace(Some("ex"), Some("env"), &file), "ex");
        assert_eq!(resolve_namespace(None, Some("env"), &file), "env");
        assert_eq!(resolve_namespace(Some(""), Some(" "), &file), "from-file");
        assert_eq!(resolve_namespace(None, None, &file), "from-file");
        assert_eq!(resolve_namespace(None, None, &missing), "default");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

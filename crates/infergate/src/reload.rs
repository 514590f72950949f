//! Configuration reload without a restart: on SIGHUP, and when the configuration file (or a
//! signing key file it names) changes on disk.
//!
//! A reload re-reads `--config` with the same `--set` overrides, validates it as `serve` and
//! `check` do, and publishes the new endpoints with one swap of the route table
//! ([`Router::publish_specs`]): requests already running finish on the old table, and a
//! deployment that stays keeps its pool (slots, queue, latency estimates, ejections,
//! connections). An invalid file changes nothing: the error (key, value, fix) is logged and
//! counted, and the previous configuration keeps serving.
//!
//! What is bound or started once (listeners, the certificate files' paths, the cluster, Kubernetes
//! discovery, the drain and watch intervals) is not swapped: a change there is logged as
//! needing a restart, on every reload until the file and the running process agree again, and
//! `infergate_config_restart_pending` is 1 meanwhile.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infergate_config::{AuthMode, Config};
use infergate_metrics::{Counter, Describe, Gauge, Kind, Registry};
use infergate_proxy::{EndpointSpec, Router, specs_from_config};

/// Reload attempts, by `result` (`applied`, `failed`).
pub const CONFIG_RELOADS_TOTAL: &str = "infergate_config_reloads_total";
/// 1 while the file sets a key that only a restart applies to a different value than the
/// running process uses.
pub const CONFIG_RESTART_PENDING: &str = "infergate_config_restart_pending";
/// When the configuration in effect was last loaded (start or reload), Unix seconds.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "infergate_config_last_reload_success_timestamp_seconds";

/// The reload's metric families.
pub const FAMILIES: &[Describe] = &[
    Describe::new(
        CONFIG_RELOADS_TOTAL,
        Kind::Counter,
        "Configuration reloads (SIGHUP or file change), by result (applied, failed).",
    ),
    Describe::new(
        CONFIG_RESTART_PENDING,
        Kind::Gauge,
        "1 while the configuration file changes a key that only a restart applies (listeners, limits, certificate paths, cluster, discovery, tracing, intervals).",
    ),
    Describe::new(
        CONFIG_LAST_RELOAD_SUCCESS,
        Kind::Gauge,
        "When the configuration in effect was loaded (start or reload), Unix seconds.",
    ),
];

/// A file change is applied once the file has stayed the same for this long (an editor or a
/// copy may still be writing it).
const SETTLE: Duration = Duration::from_millis(200);

/// What started a reload (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file (or a signing key file) changed on disk.
    File,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::File => "file_change",
        }
    }
}

/// A key whose new value waits for a restart: (key, value in effect, value in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartNeeded {
    /// The configuration key.
    pub key: &'static str,
    /// The value the running process uses.
    pub running: String,
    /// The value the file now has.
    pub file: String,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration is serving; these keys wait for a restart.
    Applied {
        /// Keys changed in the file that only a restart applies.
        restart: Vec<RestartNeeded>,
    },
    /// The file is invalid; nothing changed.
    Failed(String),
}

/// Reloads one router's configuration from its file.
pub struct Reloader {
    path: PathBuf,
    sets: Vec<String>,
    router: Arc<Router>,
    /// The configuration the process started with: what the restart-only keys are.
    started: Config,
    /// The configuration in effect (the last one applied).
    current: Config,
    applied: Counter,
    failed: Counter,
    pending: Gauge,
    last_ok: Gauge,
    /// The configuration file's contents hashed before the running configuration was read from
    /// it (see [`Reloader::loaded_from`]).
    loaded: u64,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the router serving `cfg`, loaded from `path` with `sets`.
    pub fn new(path: &Path, sets: &[String], cfg: &Config, router: Arc<Router>) -> Self {
        let registry: &Registry = router.registry();
        registry.describe(FAMILIES);
        let r = Reloader {
            path: path.to_path_buf(),
            sets: sets.to_vec(),
            started: cfg.clone(),
            current: cfg.clone(),
            applied: registry.counter(CONFIG_RELOADS_TOTAL, &[("result", "applied")]),
            failed: registry.counter(CONFIG_RELOADS_TOTAL, &[("result", "failed")]),
            pending: registry.gauge(CONFIG_RESTART_PENDING, &[]),
            last_ok: registry.gauge(CONFIG_LAST_RELOAD_SUCCESS, &[]),
            loaded: file_hash(path),
            router,
        };
        r.pending.set(0.0);
        r.last_ok.set(unix_now());
        r
    }

    /// The file's hash taken (with [`file_hash`]) before `cfg` was read from it. A change written
    /// between that read and [`Reloader::spawn`] is then seen at the first tick; a file that
    /// changed between the hash and the read is read once more (harmless).
    pub fn loaded_from(mut self, hash: u64) -> Self {
        self.loaded = hash;
        self
    }

    /// Re-reads, validates and applies the configuration file.
    pub fn reload(&mut self, trigger: Trigger) -> Outcome {
        let new = match self.load() {
            Ok(c) => c,
            Err(e) => {
                self.failed.increment(1);
                tracing::error!(
                    trigger = trigger.as_str(),
                    file = %self.path.display(),
                    error = %e,
                    "configuration reload failed; the previous configuration keeps serving"
                );
                return Outcome::Failed(e);
            }
        };
        let restart = restart_needed(&self.started, &new);
        for r in &restart {
            tracing::warn!(
                key = r.key,
                running = %r.running,
                file = %r.file,
                "configuration key changed in the file takes effect only after a restart; the running value stays"
            );
        }
        self.pending.set(if restart.is_empty() { 0.0 } else { 1.0 });
        self.router.apply_edge_config(&new);
        // Endpoints from Kubernetes are discovery's; the file's (empty) list is not published.
        let static_endpoints =
            self.started.discovery.kube.is_none() && new.discovery.kube.is_none();
        let summary = if static_endpoints {
            // (From the table being served: the signing key files may have changed since.)
            let before: Vec<EndpointSpec> = self
                .router
                .table()
                .endpoints()
                .map(|e| e.state.spec().clone())
                .collect();
            let after = specs_from_config(&new);
            self.router.publish_specs(&after);
            changes(&before, &after)
        } else {
            "endpoints come from discovery".to_string()
        };
        self.current = new;
        self.applied.increment(1);
        self.last_ok.set(unix_now());
        tracing::info!(
            trigger = trigger.as_str(),
            file = %self.path.display(),
            endpoints = self.current.endpoints.len(),
            changes = %summary,
            restart_pending = !restart.is_empty(),
            "configuration reloaded"
        );
        Outcome::Applied { restart }
    }

    fn load(&self) -> Result<Config, String> {
        let cfg = Config::load(&self.path, &self.sets).map_err(|e| e.to_string())?;
        // The certificate files in use are the certificate watcher's: a pair being rotated
        // must not hold a route change back. New paths are loaded to be reported now rather
        // than at the restart that applies them.
        let new_tls = cfg.ssl_cert_pem_file != self.started.ssl_cert_pem_file
            || cfg.ssl_key_pem_file != self.started.ssl_key_pem_file;
        crate::check::validate_files(&cfg, new_tls)?;
        Ok(cfg)
    }

    /// A fingerprint of the watched files: the configuration and the signing key files of the
    /// configuration in effect.
    fn fingerprint(&self) -> u64 {
        self.fingerprint_with(self.file_hash())
    }

    /// The configuration file's contents, hashed.
    fn file_hash(&self) -> u64 {
        file_hash(&self.path)
    }

    /// [`Reloader::fingerprint`] with the configuration file's part given: the file as it was
    /// before a reload read it (a change written while the reload ran is then seen at the next
    /// tick, not taken for the one just loaded), the key files of the configuration now in
    /// effect.
    fn fingerprint_with(&self, file: u64) -> u64 {
        let mut h = DefaultHasher::new();
        file.hash(&mut h);
        let keys = self
            .current
            .endpoints
            .iter()
            .filter_map(|e| match e.auth.mode {
                AuthMode::Token => e.auth.signing_key_file.as_deref(),
                _ => None,
            });
        for p in keys {
            std::fs::read(p).ok().hash(&mut h);
        }
        h.finish()
    }

    /// Reloads on SIGHUP, and every `configReloadIntervalMs` (unless 0) when a watched file has
    /// changed and then settled. The SIGHUP handler is installed before this returns, so a
    /// SIGHUP sent once the router logs its listeners reloads instead of ending the process.
    pub fn spawn(mut self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let interval = Duration::from_millis(self.started.config_reload_interval_ms);
        // From the file as it was loaded, not as it is when the task first runs: on a
        // single-threaded runtime that is after the listeners are up, and a change written
        // meanwhile would be taken for the one running.
        let mut seen = self.fingerprint_with(self.loaded);
        Ok(tokio::spawn(async move {
            let mut tick = (!interval.is_zero()).then(|| {
                let mut t = tokio::time::interval(interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        let file = self.file_hash();
                        self.reload(Trigger::Signal);
                        seen = self.fingerprint_with(file);
                    }
                    _ = async { tick.as_mut().expect("only polled with a tick").tick().await },
                        if tick.is_some() =>
                    {
                        let now = self.fingerprint();
                        if now == seen {
                            continue;
                        }
                        tokio::time::sleep(SETTLE).await;
                        if self.fingerprint() != now {
                            continue; // still being written: the next tick looks again
                        }
                        let file = self.file_hash();
                        self.reload(Trigger::File);
                        // (After a failure too: the same broken file is not retried until it
                        // changes again.)
                        seen = self.fingerprint_with(file);
                    }
                }
            }
        }))
    }
}

/// A file's contents, hashed (a file that cannot be read hashes as such).
pub fn file_hash(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    std::fs::read(path).ok().hash(&mut h);
    h.finish()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The keys only a restart applies whose file value differs from the running one.
pub fn restart_needed(running: &Config, file: &Config) -> Vec<RestartNeeded> {
    let mut out = Vec::new();
    let mut diff = |key: &'static str, a: String, b: String| {
        if a != b {
            out.push(RestartNeeded {
                key,
                running: a,
                file: b,
            });
        }
    };
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("(none)".into(), |p| p.display().to_string())
    };
    diff(
        "listen.https",
        running.listen.https.clone(),
        file.listen.https.clone(),
    );
    diff(
        "listen.http",
        running.listen.http.clone(),
        file.listen.http.clone(),
    );
    diff(
        "listen.admin",
        running.listen.admin.clone(),
        file.listen.admin.clone(),
    );
    diff(
        "allowInsecureConnections",
        running.allow_insecure_connections.to_string(),
        file.allow_insecure_connections.to_string(),
    );
    diff(
        "sslCertPemFile",
        path(&running.ssl_cert_pem_file),
        path(&file.ssl_cert_pem_file),
    );
    diff(
        "sslKeyPemFile",
        path(&running.ssl_key_pem_file),
        path(&file.ssl_key_pem_file),
    );
    diff(
        "drainTimeoutMs",
        running.drain_timeout_ms.to_string(),
        file.drain_timeout_ms.to_string(),
    );
    diff(
        "certReloadIntervalMs",
        running.cert_reload_interval_ms.to_string(),
        file.cert_reload_interval_ms.to_string(),
    );
    diff(
        "configReloadIntervalMs",
        running.config_reload_interval_ms.to_string(),
        file.config_reload_interval_ms.to_string(),
    );
    let section = |a: bool, b: bool| match (a, b) {
        (false, true) => ("(none)".to_string(), "(set)".to_string()),
        (true, false) => ("(set)".to_string(), "(none)".to_string()),
        _ => ("(set)".to_string(), "(changed)".to_string()),
    };
    if running.discovery != file.discovery {
        let (a, b) = section(
            running.discovery.kube.is_some(),
            file.discovery.kube.is_some(),
        );
        diff("discovery", a, b);
    }
    // Discovery builds its deployments' settings from the defaults it started with.
    if running.discovery.kube.is_some() && running.defaults != file.defaults {
        diff("defaults", "(running)".into(), "(changed)".into());
    }
    // And checks InferenceEndpoints against the ceilings it started with.
    if running.discovery.kube.is_some()
        && running.request_settings_ceilings != file.request_settings_ceilings
    {
        diff(
            "requestSettingsCeilings",
            "(running)".into(),
            "(changed)".into(),
        );
    }
    // The listeners' connection limits are built into them at start.
    if running.limits != file.limits {
        diff("limits", "(running)".into(), "(changed)".into());
    }
    if running.cluster != file.cluster {
        let (a, b) = section(running.cluster.is_some(), file.cluster.is_some());
        diff("cluster", a, b);
    }
    if running.tracing != file.tracing {
        let (a, b) = section(running.tracing.is_some(), file.tracing.is_some());
        diff("tracing", a, b);
    }
    out
}

/// "added a, b; removed c; changed d" (or "none") between two endpoint lists.
fn changes(before: &[EndpointSpec], after: &[EndpointSpec]) -> String {
    let find = |list: &[EndpointSpec], name: &str| list.iter().position(|e| e.name == name);
    let names = |it: &mut dyn Iterator<Item = &EndpointSpec>| -> Vec<String> {
        it.map(|e| e.name.clone()).collect()
    };
    let added = names(&mut after.iter().filter(|e| find(before, &e.name).is_none()));
    let removed = names(&mut before.iter().filter(|e| find(after, &e.name).is_none()));
    let changed = names(
        &mut after
            .iter()
            .filter(|e| find(before, &e.name).is_some_and(|i| before[i] != **e)),
    );
    let mut parts = Vec::new();
    for (what, list) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        let c = Config::from_yaml(yaml, "test.yaml").unwrap();
        c.validate().unwrap();
        c
    }

    const BASE: &str = "allowInsecureConnections: true\nendpoints:\n  - name: e\n    auth: {mode: none}\n    deployments: [{name: d, pods: [\"127.0.0.1:1\"]}]\n";

    #[test]
    fn endpoint_and_settings_changes_need_no_restart() {
        let a = cfg(BASE);
        let b = cfg(&format!(
            "{BASE}  - name: f\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"127.0.0.1:2\"]}}]\ndefaults: {{requestTimeoutMs: 900}}\n"
        ));
        assert_eq!(restart_needed(&a, &b), vec![]);
    }

    #[test]
    fn listeners_paths_and_sections_are_reported_with_both_values() {
        let a = cfg(BASE);
        let b = cfg(&format!(
            "{BASE}listen: {{admin: \"127.0.0.1:9999\"}}\ndrainTimeoutMs: 5\nconfigReloadIntervalMs: 0\n"
        ));
        let r = restart_needed(&a, &b);
        assert_eq!(
            r,
            vec![
                RestartNeeded {
                    key: "listen.admin",
                    running: "0.0.0.0:9090".into(),
                    file: "127.0.0.1:9999".into()
                },
                RestartNeeded {
                    key: "drainTimeoutMs",
                    running: "30000".into(),
                    file: "5".into()
                },
                RestartNeeded {
                    key: "configReloadIntervalMs",
                    running: "2000".into(),
                    file: "0".into()
                },
            ]
        );
        let c = cfg("allowInsecureConnections: true\ndiscovery: {kube: {namespaces: [ml]}}\n");
        let d = cfg(
            "allowInsecureConnections: true\ndiscovery: {kube: {namespaces: [ml]}}\ndefaults: {requestTimeoutMs: 900}\n",
        );
        let keys: Vec<_> = restart_needed(&a, &c).into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["discovery"]);
        let e = cfg(&format!("{BASE}limits: {{maxConnections: 10}}\n"));
        let keys: Vec<_> = restart_needed(&a, &e).into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["limits"], "the listeners' limits are fixed at start");
        let keys: Vec<_> = restart_needed(&c, &d).into_iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            ["defaults"],
            "discovery's defaults are fixed at start"
        );
    }

    #[test]
    fn changes_name_added_removed_and_changed_endpoints() {
        let spec = |name: &str, pod: &str| {
            specs_from_config(&cfg(&format!(
                "allowInsecureConnections: true\nendpoints:\n  - name: {name}\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{pod}\"]}}]\n"
            )))
            .remove(0)
        };
        let before = [spec("a", "127.0.0.1:1"), spec("b", "127.0.0.1:1")];
        let after = [spec("b", "127.0.0.1:2"), spec("c", "127.0.0.1:1")];
        assert_eq!(changes(&before, &after), "added c; removed a; changed b");
        assert_eq!(changes(&before, &before), "none");
    }
}

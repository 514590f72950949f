//! The `cluster` section: what parses, and errors that name the key.
//!
//! No test here sets environment variables (tests run in parallel threads of one process):
//! `advertised()` is tested through `advertise` and a specific listen IP, and its error only
//! when POD_IP happens to be unset.

use std::path::PathBuf;

use infergate_config::{
    ClusterConfig, ClusterKube, Config, ConfigError, MIN_CLUSTER_SECRET_BYTES, PartitionMode,
};

fn mk(cluster: &str) -> Result<Config, ConfigError> {
    let text = format!("allowInsecureConnections: true\ncluster:\n{cluster}");
    let c = Config::from_yaml(&text, "<test>")?;
    c.validate()?;
    Ok(c)
}

fn cluster(yaml: &str) -> ClusterConfig {
    mk(yaml)
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
        .cluster
        .expect("a cluster section")
}

/// The error's key and whole message.
fn err(yaml: &str) -> (String, String) {
    match mk(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => {
            let key = match &e {
                ConfigError::Invalid { key, .. } => key.clone(),
                other => format!("(not Invalid: {other})"),
            };
            (key, e.to_string())
        }
    }
}

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!(
            "infergate-config-cluster-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&p, content).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const KUBE: &str = "  listen: \"0.0.0.0:7946\"\n  kube: {service: infergate-peers}\n  secretFile: /etc/infergate/cluster/secret\n";

// === what parses ===

#[test]
fn no_cluster_section_is_none() {
    let c = Config::from_yaml("allowInsecureConnections: true\n", "<test>").unwrap();
    c.validate().unwrap();
    assert!(c.cluster.is_none());
}

#[test]
fn kube_section_with_defaults() {
    let c = cluster(KUBE);
    assert_eq!(c.listen, "0.0.0.0:7946".parse().unwrap());
    assert_eq!(
        c.kube,
        Some(ClusterKube {
            service: "infergate-peers".into(),
            namespace: None
        })
    );
    assert!(c.peers.is_empty());
    assert_eq!(c.advertise, None);
    assert_eq!(
        c.secret_file,
        PathBuf::from("/etc/infergate/cluster/secret")
    );
    assert_eq!(c.on_owner_unreachable, PartitionMode::Refuse);
    assert_eq!(c.heartbeat_ms, 200);
    assert_eq!(c.dead_after_ms, 1500);
}

#[test]
fn static_peers_with_every_key() {
    let c = cluster(
        "  listen: \"127.0.0.1:7001\"\n\
         \x20 advertise: \"127.0.0.1:7001\"\n\
         \x20 peers: [\"127.0.0.1:7001\", \"127.0.0.1:7002\", \"[::1]:7003\"]\n\
         \x20 secretFile: /tmp/s\n\
         \x20 onOwnerUnreachable: localShare\n\
         \x20 heartbeatMs: 100\n\
         \x20 deadAfterMs: 300\n",
    );
    assert_eq!(c.peers.len(), 3);
    assert_eq!(c.peers[2], "[::1]:7003".parse().unwrap());
    assert!(c.kube.is_none());
    assert_eq!(c.on_owner_unreachable, PartitionMode::LocalShare);
    assert_eq!((c.heartbeat_ms, c.dead_after_ms), (100, 300));
}

#[test]
fn kube_namespace_and_range_edges_parse() {
    let c = cluster(
        "  listen: \"0.0.0.0:7946\"\n  kube: {service: p, namespace: ml-serving}\n  secretFile: s\n  heartbeatMs: 10000\n  deadAfterMs: 30000\n",
    );
    assert_eq!(c.kube.unwrap().namespace.as_deref(), Some("ml-serving"));
    let c = cluster(
        "  listen: \"0.0.0.0:7946\"\n  peers: [\"10.0.0.1:7946\"]\n  secretFile: s\n  heartbeatMs: 1\n  deadAfterMs: 3\n",
    );
    assert_eq!((c.heartbeat_ms, c.dead_after_ms), (1, 3));
}

#[test]
fn the_section_round_trips_through_yaml() {
    let c = mk(KUBE).unwrap();
    let text = serde_saphyr::to_string(&c).unwrap();
    let again = Config::from_yaml(&text, "<round trip>").unwrap();
    assert_eq!(again.cluster, c.cluster);
}

// === errors name the key ===

#[test]
fn peers_and_kube_both_or_neither() {
    let (key, msg) = err("  listen: \"0.0.0.0:7946\"\n  secretFile: s\n");
    assert_eq!(key, "cluster.peers, cluster.kube");
    assert!(msg.contains("neither"), "{msg}");
    let (key, msg) = err(
        "  listen: \"0.0.0.0:7946\"\n  peers: [\"10.0.0.1:7946\"]\n  kube: {service: p}\n  secretFile: s\n",
    );
    assert_eq!(key, "cluster.peers, cluster.kube");
    assert!(msg.contains("both"), "{msg}");
}

#[test]
fn bad_service_and_namespace_names() {
    for bad in [
        "Peers",
        "-peers",
        "peers_svc",
        "peers.svc",
        &"a".repeat(64),
        "\"\"",
    ] {
        let (key, msg) = err(&format!(
            "  listen: \"0.0.0.0:7946\"\n  kube: {{service: {bad}}}\n  secretFile: s\n"
        ));
        assert_eq!(key, "cluster.kube.service", "{bad}: {msg}");
    }
    let (key, _) =
        err("  listen: \"0.0.0.0:7946\"\n  kube: {service: p, namespace: ML}\n  secretFile: s\n");
    assert_eq!(key, "cluster.kube.namespace");
}

#[test]
fn heartbeat_out_of_range() {
    for hb in [0, 10_001] {
        let (key, msg) = err(&format!("{KUBE}  heartbeatMs: {hb}\n"));
        assert_eq!(key, "cluster.heartbeatMs", "{msg}");
        assert!(msg.contains(&hb.to_string()), "{msg}");
    }
}

#[test]
fn dead_after_shorter_than_three_heartbeats() {
    let (key, msg) = err(&format!("{KUBE}  heartbeatMs: 200\n  deadAfterMs: 599\n"));
    assert_eq!(key, "cluster.deadAfterMs");
    assert!(msg.contains("600"), "{msg}");
    // The default heartbeat (200) applies when only deadAfterMs is given.
    let (key, _) = err(&format!("{KUBE}  deadAfterMs: 100\n"));
    assert_eq!(key, "cluster.deadAfterMs");
}

/// Shape errors come from the parser: they name the field, or the line and column.
#[test]
fn shape_errors_name_the_field_or_its_place() {
    for (yaml, field) in [
        (
            "  listen: \"0.0.0.0:7946\"\n  kube: {service: p}\n",
            "secretFile",
        ),
        ("  kube: {service: p}\n  secretFile: s\n", "listen"),
        (&format!("{KUBE}  gossip: true\n") as &str, "gossip"),
        (&format!("{KUBE}  onOwnerUnreachable: wait\n"), "wait"),
        (
            "  listen: \"0.0.0.0:7946\"\n  kube: {service: p, nameSpace: x}\n  secretFile: s\n",
            "nameSpace",
        ),
        (
            "  listen: \"0.0.0.0\"\n  kube: {service: p}\n  secretFile: s\n",
            "line 3 column 11: invalid socket address",
        ),
        (
            "  listen: \"0.0.0.0:7946\"\n  peers: [\"peer-1:7946\"]\n  secretFile: s\n",
            "line 4 column 11: invalid socket address",
        ),
    ] {
        let e = mk(yaml).expect_err(yaml).to_string();
        assert!(
            matches!(mk(yaml), Err(ConfigError::Parse { .. })),
            "{yaml}: {e}"
        );
        assert!(e.contains(field), "{yaml}: {e}");
    }
}

// === the secret file ===

#[test]
fn secret_is_read_and_trimmed() {
    let f = TempFile::new("ok", b"  0123456789abcdef0123\n");
    let c = cluster(&format!(
        "  listen: \"0.0.0.0:7946\"\n  kube: {{service: p}}\n  secretFile: {:?}\n",
        f.0.display().to_string()
    ));
    assert_eq!(c.read_secret().unwrap(), b"0123456789abcdef0123");
}

#[test]
fn short_secret_names_the_key_and_the_minimum() {
    // 15 bytes after trimming, though the file is longer.
    let f = TempFile::new("short", b"0123456789abcde\n\n   ");
    let c = cluster(&format!(
        "  listen: \"0.0.0.0:7946\"\n  kube: {{service: p}}\n  secretFile: {:?}\n",
        f.0.display().to_string()
    ));
    let e = c.read_secret().unwrap_err();
    let ConfigError::Invalid { key, problem, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(key, "cluster.secretFile");
    assert!(problem.contains("15 bytes"), "{problem}");
    assert!(
        problem.contains(&MIN_CLUSTER_SECRET_BYTES.to_string()),
        "{problem}"
    );
    let exact = TempFile::new("exact", &[b'x'; MIN_CLUSTER_SECRET_BYTES]);
    let mut c = c;
    c.secret_file = exact.0.clone();
    assert_eq!(c.read_secret().unwrap().len(), MIN_CLUSTER_SECRET_BYTES);
}

#[test]
fn unreadable_secret_file_names_the_key_and_the_path() {
    let missing = std::env::temp_dir().join(format!(
        "infergate-config-cluster-{}-missing",
        std::process::id()
    ));
    let c = cluster(&format!(
        "  listen: \"0.0.0.0:7946\"\n  kube: {{service: p}}\n  secretFile: {:?}\n",
        missing.display().to_string()
    ));
    let e = c.read_secret().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`cluster.secretFile`"), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read"), "{msg}");
    // A directory is not a secret file either.
    let mut c = c;
    c.secret_file = std::env::temp_dir();
    assert!(
        c.read_secret()
            .unwrap_err()
            .to_string()
            .contains("`cluster.secretFile`")
    );
}

#[test]
fn validation_does_not_read_the_secret_file() {
    // The file only exists in the pod (`render` validates the config it writes).
    let c = cluster(KUBE);
    assert!(c.read_secret().is_err());
}

// === the advertised address ===

#[test]
fn advertise_explicit_or_the_specific_listen_address() {
    let c = cluster(
        "  listen: \"0.0.0.0:7946\"\n  advertise: \"10.0.0.5:7000\"\n  kube: {service: p}\n  secretFile: s\n",
    );
    assert_eq!(c.advertised().unwrap(), "10.0.0.5:7000".parse().unwrap());
    let c = cluster(
        "  listen: \"127.0.0.1:7001\"\n  peers: [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\n  secretFile: s\n",
    );
    assert_eq!(c.advertised().unwrap(), "127.0.0.1:7001".parse().unwrap());
    // Explicit wins over a specific listen address too.
    let c = cluster(
        "  listen: \"127.0.0.1:7001\"\n  advertise: \"192.0.2.1:7001\"\n  peers: [\"127.0.0.1:7002\"]\n  secretFile: s\n",
    );
    assert_eq!(c.advertised().unwrap(), "192.0.2.1:7001".parse().unwrap());
}

#[test]
fn advertise_unknown_on_every_address_without_pod_ip() {
    if std::env::var_os("POD_IP").is_some() {
        eprintln!("POD_IP is set in this environment: the error path is not tested");
        return;
    }
    for listen in ["0.0.0.0:7946", "[::]:7946"] {
        let c = cluster(&format!(
            "  listen: \"{listen}\"\n  kube: {{service: p}}\n  secretFile: s\n"
        ));
        let e = c.advertised().unwrap_err();
        let msg = e.to_string();
        let ConfigError::Invalid { key, .. } = &e else {
            panic!("{msg}")
        };
        assert_eq!(key, "cluster.advertise");
        assert!(msg.contains("POD_IP"), "{msg}");
        assert!(msg.contains(listen), "{msg}");
    }
}

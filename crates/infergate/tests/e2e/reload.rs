//! Configuration reload of the real binary: SIGHUP and file changes, under load, with weights,
//! keys, an invalid edit and keys that need a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::runner::*;
use crate::support::*;

const LISTEN: &str =
    "listen: {https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n";

/// The file is checked every 100 ms.
const WATCH: &str = "configReloadIntervalMs: 100\n";
/// Only SIGHUP reloads (a test that signals knows which trigger to expect).
const NO_WATCH: &str = "configReloadIntervalMs: 0\n";

/// Endpoint `e` split between deployments `blue` (pod `a`) and `green` (pod `b`), after the
/// top-level keys `settings`; more endpoint items may be appended.
fn split(a: SocketAddr, b: SocketAddr, blue: u32, green: u32, settings: &str) -> String {
    format!(
        "allowInsecureConnections: true\n{LISTEN}{settings}endpoints:\n  - name: e\n    auth: {{mode: none}}\n    traffic: {{blue: {blue}, green: {green}}}\n    deployments: [{{name: blue, pods: [\"{a}\"]}}, {{name: green, pods: [\"{b}\"]}}]\n"
    )
}

/// Writes the file as a ConfigMap update does: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(dir: &Path, text: &str) -> (Bin, PathBuf, SocketAddr, SocketAddr) {
    let path = dir.join("infergate.yaml");
    std::fs::write(&path, text).unwrap();
    let mut b = Bin::spawn(&["serve", "--config", path.to_str().unwrap()]);
    let http = b.listening("http");
    let admin = b.listening("admin");
    (b, path, http, admin)
}

/// Waits for the next reload log line (applied or failed) and returns it.
fn next_reload(b: &mut Bin) -> String {
    tokio::task::block_in_place(|| {
        b.wait_line(|l| {
            l.contains("configuration reloaded") || l.contains("configuration reload failed")
        })
    })
}

/// `n` requests to endpoint `e` from 4 keep-alive clients; returns the statuses.
async fn traffic(http: SocketAddr, endpoint: &str, n: usize) -> Vec<u16> {
    let path = format!("/api/v1/endpoint/{endpoint}/score");
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut c = Client::plain(http, Proto::H1).await;
                let mut st = vec![];
                for _ in (i..n).step_by(4) {
                    st.push(c.call(post(&path, "{}")).await.status.as_u16());
                }
                st
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn reloads(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("infergate_config_reloads_total{{result=\"{result}\"}}"),
    )
}

async fn metrics(admin: SocketAddr) -> String {
    String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_weights_within_ten_percent_over_1000_requests() {
    let (a, b) = (mock("blue", 0).await, mock("green", 0).await);
    let dir = tempfile::tempdir().unwrap();
    let (mut bin, path, http, admin) =
        start(dir.path(), &split(a.addr(), b.addr(), 90, 10, NO_WATCH));
    assert!(traffic(http, "e", 200).await.iter().all(|&s| s == 200));
    assert!(
        a.stats().served > b.stats().served,
        "90/10 before the reload"
    );

    replace(&path, &split(a.addr(), b.addr(), 20, 80, NO_WATCH));
    bin.signal("HUP");
    let line = next_reload(&mut bin);
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(line.contains("\"trigger\":\"sighup\""), "{line}");
    assert!(line.contains("changed e"), "{line}");
    a.reset_stats();
    b.reset_stats();
    let st = traffic(http, "e", 1000).await;
    assert!(st.iter().all(|&s| s == 200), "{st:?}");
    let green = b.stats().served;
    assert_eq!(a.stats().served + green, 1000);
    // 80 % of 1000, within 10 % of it: 720..=880 (binomial sd ~13).
    assert!((720..=880).contains(&green), "green served {green} of 1000");
    let m = metrics(admin).await;
    assert_eq!(reloads(&m, "applied"), 1.0, "{m}");
    assert_eq!(reloads(&m, "failed"), 0.0, "{m}");
    assert_eq!(metric(&m, "infergate_config_restart_pending"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_change_alone_is_applied_and_an_in_flight_request_finishes_on_the_old_table() {
    let (a, b) = (mock("blue", 0).await, mock("green", 0).await);
    let slow = mock("slow", 1500).await;
    let dir = tempfile::tempdir().unwrap();
    let with_slow = format!(
        "{}  - name: s\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
        split(a.addr(), b.addr(), 50, 50, WATCH),
        slow.addr()
    );
    let (mut bin, path, http, _admin) = start(dir.path(), &with_slow);
    assert_eq!(
        call(http, post("/api/v1/endpoint/f/score", "{}"))
            .await
            .status,
        404
    );
    let inflight =
        tokio::spawn(async move { call(http, post("/api/v1/endpoint/s/score", "{}")).await });
    assert!(eventually(Duration::from_secs(5), async || slow.stats().in_flight == 1).await);

    // Written in place (not renamed), no signal: endpoint `s` goes, `f` comes.
    let with_f = format!(
        "{}  - name: f\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
        split(a.addr(), b.addr(), 50, 50, WATCH),
        a.addr()
    );
    std::fs::write(&path, with_f).unwrap();
    let line = next_reload(&mut bin);
    assert!(line.contains("\"trigger\":\"file_change\""), "{line}");
    assert!(line.contains("added f; removed s"), "{line}");
    assert_eq!(
        call(http, post("/api/v1/endpoint/f/score", "{}"))
            .await
            .status,
        200
    );
    let gone = call(http, post("/api/v1/endpoint/s/score", "{}")).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        inflight.await.unwrap().status,
        200,
        "finished on the old table"
    );
    assert_eq!(slow.stats().served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_keep_every_pods_slots() {
    // One slot per pod and a queue: a pool rebuilt by a reload would let a second request
    // reach a pod while the first is still there (the pod's own count would show 2).
    let (a, b) = (mock("blue", 15).await, mock("green", 15).await);
    let dir = tempfile::tempdir().unwrap();
    let settings = |timeout: u32| {
        format!(
            "{WATCH}defaults: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 10000, maxQueueLength: 100, requestTimeoutMs: {timeout}}}\n"
        )
    };
    let (mut bin, path, http, admin) = start(
        dir.path(),
        &split(a.addr(), b.addr(), 50, 50, &settings(5000)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = Client::plain(http, Proto::H1).await;
                let mut st = vec![];
                while !stop.load(Ordering::Relaxed) {
                    st.push(
                        c.call(post("/api/v1/endpoint/e/score", "{}"))
                            .await
                            .status
                            .as_u16(),
                    );
                }
                st
            })
        })
        .collect();
    // Eight reloads while the clients run: weights and request settings change each time, by
    // signal and by file.
    for i in 0..8u32 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (blue, green) = if i % 2 == 0 { (30, 70) } else { (70, 30) };
        let text = split(a.addr(), b.addr(), blue, green, &settings(5000 + i));
        replace(&path, &text);
        if i % 2 == 0 {
            bin.signal("HUP");
        }
        let line = next_reload(&mut bin);
        assert!(line.contains("configuration reloaded"), "{line}");
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = vec![];
    for c in clients {
        all.extend(c.await.unwrap());
    }
    assert!(all.len() > 100, "load ran: {} requests", all.len());
    let failed: Vec<_> = all.iter().filter(|&&s| s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        all.len()
    );
    assert_eq!(a.stats().max_in_flight, 1, "pod a had two at once");
    assert_eq!(b.stats().max_in_flight, 1, "pod b had two at once");
    let m = metrics(admin).await;
    // (A file the watcher sees before the signal arrives is applied twice.)
    assert!(reloads(&m, "applied") >= 8.0, "{m}");
    assert_eq!(reloads(&m, "failed"), 0.0, "{m}");
    // Every admitted request waited once in the one queue per deployment, across all tables.
    let waits = metric(&m, "infergate_queue_wait_seconds_count{endpoint=\"e\"");
    assert_eq!(waits as usize, all.len(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_old_config_serving_until_a_valid_one() {
    let (a, b) = (mock("blue", 0).await, mock("green", 0).await);
    let dir = tempfile::tempdir().unwrap();
    let (mut bin, path, http, admin) = start(dir.path(), &split(a.addr(), b.addr(), 100, 0, WATCH));

    // Weights that do not sum to 100: refused, named, counted.
    replace(&path, &split(a.addr(), b.addr(), 0, 150, WATCH));
    let line = next_reload(&mut bin);
    assert!(line.contains("configuration reload failed"), "{line}");
    assert!(line.contains("\"trigger\":\"file_change\""), "{line}");
    assert!(
        line.contains("endpoints[0].traffic"),
        "names the key: {line}"
    );
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    // Not YAML at all.
    replace(&path, "endpoints: [\n");
    assert!(next_reload(&mut bin).contains("configuration reload failed"));
    // The watcher does not retry the same broken file; a signal does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reloads(&metrics(admin).await, "failed"), 2.0);
    bin.signal("HUP");
    let line = next_reload(&mut bin);
    assert!(line.contains("configuration reload failed"), "{line}");
    assert!(line.contains("\"trigger\":\"sighup\""), "{line}");

    let st = traffic(http, "e", 40).await;
    assert!(st.iter().all(|&s| s == 200), "{st:?}");
    assert_eq!(b.stats().served, 0, "still the old 100/0 split");
    let m = metrics(admin).await;
    assert_eq!(reloads(&m, "failed"), 3.0, "{m}");
    assert_eq!(reloads(&m, "applied"), 0.0, "{m}");

    replace(&path, &split(a.addr(), b.addr(), 0, 100, WATCH));
    let line = next_reload(&mut bin);
    assert!(line.contains("configuration reloaded"), "{line}");
    a.reset_stats();
    assert!(traffic(http, "e", 20).await.iter().all(|&s| s == 200));
    assert_eq!(a.stats().served, 0, "the new 0/100 split");
    assert_eq!(reloads(&metrics(admin).await, "applied"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_by_reload_take_effect_at_once() {
    let pod = mock("k", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let keyed = |primary: &str, secondary: &str| {
        format!(
            "allowInsecureConnections: true\n{LISTEN}{NO_WATCH}endpoints:\n  - name: e\n    auth: {{mode: key, primaryKey: \"{primary}\", secondaryKey: \"{secondary}\"}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
            pod.addr()
        )
    };
    let (old, new) = ("old-key-0123456789abcdef", "new-key-fedcba9876543210");
    let (mut bin, path, http, _) = start(dir.path(), &keyed(old, "spare-key-0000000000000"));
    let bearer = |k: &str| format!("Bearer {k}");
    assert_eq!(call(http, score("e", Some(&bearer(old)))).await.status, 200);
    // Step 1: the new key becomes the secondary; both work.
    replace(&path, &keyed(old, new));
    bin.signal("HUP");
    assert!(next_reload(&mut bin).contains("configuration reloaded"));
    assert_eq!(call(http, score("e", Some(&bearer(old)))).await.status, 200);
    assert_eq!(call(http, score("e", Some(&bearer(new)))).await.status, 200);
    // Step 2: the old key is dropped.
    replace(&path, &keyed(new, "spare-key-1111111111111"));
    bin.signal("HUP");
    assert!(next_reload(&mut bin).contains("configuration reloaded"));
    assert_eq!(call(http, score("e", Some(&bearer(old)))).await.status, 401);
    assert_eq!(call(http, score("e", Some(&bearer(new)))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_are_reported_as_needing_a_restart() {
    let (a, b) = (mock("blue", 0).await, mock("green", 0).await);
    let dir = tempfile::tempdir().unwrap();
    let (mut bin, path, http, admin) =
        start(dir.path(), &split(a.addr(), b.addr(), 50, 50, NO_WATCH));
    let port = free_port();
    let moved = split(a.addr(), b.addr(), 100, 0, NO_WATCH).replace(
        "admin: \"127.0.0.1:0\"",
        &format!("admin: \"127.0.0.1:{port}\""),
    );
    replace(&path, &moved);
    bin.signal("HUP");
    let warn = tokio::task::block_in_place(|| {
        bin.wait_line(|l| l.contains("takes effect only after a restart"))
    });
    assert!(warn.contains("\"key\":\"listen.admin\""), "{warn}");
    assert!(warn.contains("\"running\":\"127.0.0.1:0\""), "{warn}");
    assert!(
        warn.contains(&format!("\"file\":\"127.0.0.1:{port}\"")),
        "{warn}"
    );
    let line = next_reload(&mut bin);
    assert!(line.contains("\"restart_pending\":true"), "{line}");
    // The rest of the file is applied; the admin listener stays where it is.
    b.reset_stats();
    assert!(traffic(http, "e", 20).await.iter().all(|&s| s == 200));
    assert_eq!(b.stats().served, 0);
    let m = metrics(admin).await;
    assert_eq!(metric(&m, "infergate_config_restart_pending"), 1.0, "{m}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "not bound"
    );
    // Back to the running value: nothing pending.
    replace(&path, &split(a.addr(), b.addr(), 100, 0, NO_WATCH));
    bin.signal("HUP");
    assert!(next_reload(&mut bin).contains("\"restart_pending\":false"));
    assert_eq!(
        metric(&metrics(admin).await, "infergate_config_restart_pending"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_file_is_picked_up_without_a_signal() {
    let pod = mock("t", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(
        dir.path(),
        "signing",
        "old-signing-key-0123456789abcdef-0123\n",
    );
    let issue = |key: &str| {
        let (code, out, err) = run_to_exit(&[
            "token",
            "issue",
            "--endpoint",
            "e",
            "--ttl",
            "1h",
            "--key-file",
            key,
        ]);
        assert_eq!(code, Some(0), "{err}");
        format!("Bearer {}", out.trim())
    };
    let old = issue(&key_file);
    let text = format!(
        "allowInsecureConnections: true\n{LISTEN}{WATCH}endpoints:\n  - name: e\n    auth: {{mode: token, signingKeyFile: \"{key_file}\"}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
        pod.addr()
    );
    let (mut bin, _path, http, admin) = start(dir.path(), &text);
    assert_eq!(call(http, score("e", Some(&old))).await.status, 200);

    // Only the key file changes (as a mounted Secret does); the config file stays the same.
    replace(
        Path::new(&key_file),
        "new-signing-key-fedcba9876543210-4567\n",
    );
    let line = next_reload(&mut bin);
    assert!(line.contains("\"trigger\":\"file_change\""), "{line}");
    assert!(line.contains("changed e"), "{line}");
    let new = issue(&key_file);
    assert_eq!(call(http, score("e", Some(&new))).await.status, 200);
    assert_eq!(call(http, score("e", Some(&old))).await.status, 401);
    assert_eq!(reloads(&metrics(admin).await, "applied"), 1.0);

    // A key file made too short is refused; the last good key keeps working.
    replace(Path::new(&key_file), "short\n");
    let line = next_reload(&mut bin);
    assert!(line.contains("configuration reload failed"), "{line}");
    assert!(line.contains("signingKeyFile"), "{line}");
    assert_eq!(call(http, score("e", Some(&new))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_settings_and_mirror_change_by_reload() {
    let (a, b) = (mock("blue", 300).await, mock("green", 0).await);
    let dir = tempfile::tempdir().unwrap();
    let (mut bin, path, http, _) = start(dir.path(), &split(a.addr(), b.addr(), 100, 0, NO_WATCH));
    assert_eq!(
        call(http, post("/api/v1/endpoint/e/score", "{}"))
            .await
            .status,
        200
    );
    assert_eq!(b.stats().served, 0);

    // A 100 ms timeout for a 300 ms pod, and every request copied to green.
    let text = split(
        a.addr(),
        b.addr(),
        100,
        0,
        &format!("{NO_WATCH}defaults: {{requestTimeoutMs: 100}}\n"),
    )
    .replace(
        "    traffic:",
        "    mirror: {deployment: green, percent: 100}\n    traffic:",
    );
    replace(&path, &text);
    bin.signal("HUP");
    assert!(next_reload(&mut bin).contains("configuration reloaded"));
    let a1 = call(http, post("/api/v1/endpoint/e/score", "{}")).await;
    assert_eq!(a1.status, 504, "{a1:?}");
    assert!(
        eventually(Duration::from_secs(5), async || b.stats().served == 1).await,
        "the mirror got its copy"
    );
}

//! HA: several `infergate serve` processes acting as one router (the `cluster` section), in front
//! of mock pods on 127.0.0.1. The truth is the pod's own high-water mark (`maxInFlight`), not the
//! routers' counters. Clients are spread round-robin over the replicas; a replica that is down
//! (killed, restarting, stopped) is skipped by its clients while it is down.
//!
//! The harness ([`Replicas`], [`Load`]) starts N router processes on fixed free ports (so that a
//! replica restarts on the same ports), each with `cluster: {listen, peers: all N, secretFile}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use mock_model::MockHandle;

use crate::runner::*;
use crate::support::*;

/// The multi-process HA tests run one at a time: each starts three routers and its pods, and
/// their timing checks (a survivor serves within ~2 s) assume the machine is not also running
/// another such cluster.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Settings of one HA run.
#[derive(Clone, Debug)]
pub struct HaOpts {
    pub replicas: usize,
    /// `maxConcurrentRequestsPerInstance`.
    pub slots: u32,
    pub max_queue_wait_ms: u64,
    pub request_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    /// `cluster.heartbeatMs` / `cluster.deadAfterMs` (None: the defaults).
    pub heartbeat_ms: Option<u64>,
    pub dead_after_ms: Option<u64>,
    /// false: no `cluster` section (today's per-replica slots), to check the harness itself.
    pub cluster: bool,
    /// `cluster.onOwnerUnreachable` (None: the default, `refuse`).
    pub on_owner_unreachable: Option<&'static str>,
}

impl Default for HaOpts {
    fn default() -> Self {
        HaOpts {
            replicas: 3,
            slots: 1,
            max_queue_wait_ms: 10_000,
            request_timeout_ms: 5_000,
            drain_timeout_ms: 2_000,
            heartbeat_ms: None,
            dead_after_ms: None,
            cluster: true,
            on_owner_unreachable: None,
        }
    }
}

/// 32 random bytes (the peers' shared secret) written to `path`.
pub fn write_secret(path: &Path) {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// One router replica: its fixed ports, its config file, and the process while it runs.
pub struct Replica {
    pub http: u16,
    pub admin: u16,
    pub peer: u16,
    pub config: String,
    pub bin: Option<Bin>,
}

impl Replica {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }
}

/// N router processes with a `cluster` section each (peers: all N), in front of `pods`.
pub struct Replicas {
    pub dir: tempfile::TempDir,
    pub secret: PathBuf,
    pub opts: HaOpts,
    pub list: Vec<Replica>,
}

fn config_yaml(
    opts: &HaOpts,
    r: (u16, u16, u16),
    pods: &[SocketAddr],
    peers: &[u16],
    secret: &Path,
) -> String {
    let (http, admin, peer) = r;
    let pods: Vec<String> = pods.iter().map(|p| format!("\"{p}\"")).collect();
    let mut y = format!(
        "allowInsecureConnections: true\n\
         listen: {{https: \"127.0.0.1:0\", http: \"127.0.0.1:{http}\", admin: \"127.0.0.1:{admin}\"}}\n\
         drainTimeoutMs: {}\n\
         defaults: {{maxConcurrentRequestsPerInstance: {}, maxQueueWaitMs: {}, requestTimeoutMs: {}}}\n\
         endpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [{}]}}]\n",
        opts.drain_timeout_ms,
        opts.slots,
        opts.max_queue_wait_ms,
        opts.request_timeout_ms,
        pods.join(", ")
    );
    if opts.cluster {
        let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        y.push_str(&format!(
            "cluster:\n  listen: \"127.0.0.1:{peer}\"\n  peers: [{}]\n  secretFile: \"{}\"\n",
            peers.join(", "),
            secret.display()
        ));
        if let Some(h) = opts.heartbeat_ms {
            y.push_str(&format!("  heartbeatMs: {h}\n"));
        }
        if let Some(d) = opts.dead_after_ms {
            y.push_str(&format!("  deadAfterMs: {d}\n"));
        }
        if let Some(m) = opts.on_owner_unreachable {
            y.push_str(&format!("  onOwnerUnreachable: {m}\n"));
        }
    }
    y
}

/// Distinct free ports on 127.0.0.1 (each bound until all are picked, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Replicas {
    /// Writes the secret and every replica's config; starts nothing.
    pub fn new(opts: HaOpts, pods: &[SocketAddr]) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster-secret");
        write_secret(&secret);
        let ports = free_ports(3 * opts.replicas);
        let peers: Vec<u16> = (0..opts.replicas).map(|i| ports[3 * i + 2]).collect();
        let list = (0..opts.replicas)
            .map(|i| {
                let (http, admin, peer) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
                let yaml = config_yaml(&opts, (http, admin, peer), pods, &peers, &secret);
                let config = write_file(dir.path(), &format!("replica-{i}.yaml"), &yaml);
                Replica {
                    http,
                    admin,
                    peer,
                    config,
                    bin: None,
                }
            })
            .collect();
        Replicas {
            dir,
            secret,
            opts,
            list,
        }
    }

    /// Starts all replicas and waits until they serve and have found each other.
    pub async fn start(opts: HaOpts, pods: &[SocketAddr]) -> Replicas {
        let mut rs = Replicas::new(opts, pods);
        for (i, r) in rs.list.iter().enumerate() {
            eprintln!(
                "replica {i}: http {} admin {} peer {}",
                r.http, r.admin, r.peer
            );
        }
        for i in 0..rs.list.len() {
            rs.spawn(i);
        }
        for i in 0..rs.list.len() {
            rs.wait_listening(i);
        }
        rs.wait_formed().await;
        rs
    }

    /// Gives replica `i` its own secret file (a different secret: it must not join).
    pub fn use_other_secret(&mut self, i: usize) {
        let other = self.dir.path().join(format!("other-secret-{i}"));
        write_secret(&other);
        let yaml = std::fs::read_to_string(&self.list[i].config)
            .unwrap()
            .replace(
                &format!("secretFile: \"{}\"", self.secret.display()),
                &format!("secretFile: \"{}\"", other.display()),
            );
        assert!(yaml.contains(&other.display().to_string()));
        std::fs::write(&self.list[i].config, yaml).unwrap();
    }

    /// Starts the process of replica `i` (not waiting for it).
    pub fn spawn(&mut self, i: usize) {
        let r = &mut self.list[i];
        assert!(r.bin.is_none(), "replica {i} already runs");
        r.bin = Some(Bin::spawn(&[
            "serve",
            "--config",
            &r.config,
            "--workers",
            "1",
        ]));
    }

    /// Waits for replica `i`'s plain HTTP and admin listeners (its log lines).
    pub fn wait_listening(&mut self, i: usize) {
        let r = &mut self.list[i];
        let b = r.bin.as_mut().expect("replica is running");
        assert_eq!(b.listening("http").port(), r.http);
        // The admin line follows the http one.
        assert_eq!(b.listening("admin").port(), r.admin);
    }

    /// The indexes of the running replicas.
    pub fn running(&self) -> Vec<usize> {
        (0..self.list.len())
            .filter(|&i| self.list[i].bin.is_some())
            .collect()
    }

    /// Waits (up to 5 s) until every running replica is ready and counts the others as peers
    /// (`infergate_cluster_peers` >= running - 1). Without the cluster it only waits for
    /// readiness; when no replica has the metric at all a second after all are ready (a build
    /// without the cluster runtime), it stops waiting and says so.
    pub async fn wait_formed(&self) {
        let running = self.running();
        let want = running.len().saturating_sub(1) as f64;
        let t0 = Instant::now();
        let mut ready_since: Option<Instant> = None;
        let mut outcome = "timed out";
        while t0.elapsed() < Duration::from_secs(5) {
            let mut all_ready = true;
            let mut peers = Vec::new();
            for &i in &running {
                let admin = self.list[i].admin_addr();
                if tokio::net::TcpStream::connect(admin).await.is_err()
                    || admin_get(admin, "/readyz").await.status != 200
                {
                    all_ready = false;
                    break;
                }
                if self.opts.cluster {
                    peers.push(gauge(&metrics_of(admin).await, "infergate_cluster_peers"));
                }
            }
            if all_ready {
                let since = *ready_since.get_or_insert_with(Instant::now);
                if peers.iter().all(|p| p.is_some_and(|p| p >= want)) {
                    return;
                }
                if peers.iter().all(Option::is_none) && since.elapsed() > Duration::from_secs(1) {
                    outcome = "no replica has the metric (no cluster runtime?)";
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        eprintln!(
            "warning: replicas {running:?} did not all report {want} peers (infergate_cluster_peers): {outcome}"
        );
    }

    /// SIGKILL replica `i` (no drain, no goodbye to its peers).
    pub fn kill(&mut self, i: usize) {
        let mut b = self.list[i].bin.take().expect("replica is running");
        b.child.kill().unwrap();
        b.child.wait().unwrap();
    }

    /// SIGTERM replica `i` and wait for its drain and exit (blocking: call from spawn_blocking
    /// or accept blocking the runtime thread briefly).
    pub async fn terminate(&mut self, i: usize) {
        let b = self.list[i].bin.take().expect("replica is running");
        b.signal("TERM");
        let mut b = b;
        let status = tokio::task::spawn_blocking(move || {
            let s = b.wait_exit();
            drop(b);
            s
        })
        .await
        .unwrap();
        assert_eq!(status.code(), Some(0), "replica {i} exits 0 after SIGTERM");
    }

    /// Sends a signal (STOP, CONT, ...) to replica `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        self.list[i]
            .bin
            .as_ref()
            .expect("replica is running")
            .signal(sig);
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.list.iter().map(Replica::http_addr).collect()
    }
}

/// The whole `/metrics` text of an admin listener.
pub async fn metrics_of(admin: SocketAddr) -> String {
    String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned()
}

/// The sum of the samples of metric `name` (exactly that name, any labels), or None when the
/// metric is absent.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// What one client request ended with.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// An HTTP answer: status and, for router errors, the JSON `error.code`.
    Answer(u16, String),
    /// No connection, or it broke before an answer.
    ConnError(String),
    /// No answer within the client's timeout.
    Timeout,
}

#[derive(Clone, Debug)]
pub struct Rec {
    pub replica: usize,
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Outcome,
}

impl Rec {
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Answer(200, String::new())
    }
}

/// Closed-loop clients, client j sending to replica j mod N, until stopped, a request budget is
/// spent, or the time limit passes. A replica marked down is skipped (its clients wait 10 ms
/// and look again) and their connection to it is dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub down: Arc<Vec<AtomicBool>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Rec>>>,
}

/// Per-request timeout of the load's clients.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

impl Load {
    /// `clients` clients over `targets`; `budget` requests in all (None: until stopped);
    /// `limit`: the load stops by itself after this long.
    pub fn start(
        targets: Vec<SocketAddr>,
        clients: usize,
        budget: Option<u64>,
        limit: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let down: Arc<Vec<AtomicBool>> =
            Arc::new(targets.iter().map(|_| AtomicBool::new(false)).collect());
        let left = Arc::new(AtomicU64::new(budget.unwrap_or(u64::MAX)));
        let end = Instant::now() + limit;
        let tasks = (0..clients)
            .map(|j| {
                let replica = j % targets.len();
                let addr = targets[replica];
                let (stop, down, left) = (stop.clone(), down.clone(), left.clone());
                tokio::spawn(async move {
                    let mut recs = Vec::new();
                    let mut conn: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        if down[replica].load(Ordering::SeqCst) {
                            conn = None;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        if left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_err()
                        {
                            break;
                        }
                        let sent = Instant::now();
                        let outcome = match tokio::time::timeout(
                            CLIENT_TIMEOUT,
                            one(addr, &mut conn),
                        )
                        .await
                        {
                            Ok(o) => o,
                            Err(_) => {
                                conn = None;
                                Outcome::Timeout
                            }
                        };
                        if !matches!(outcome, Outcome::Answer(..)) {
                            conn = None;
                            // Do not spin on a dead port.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        recs.push(Rec {
                            replica,
                            sent,
                            done: Instant::now(),
                            outcome,
                        });
                    }
                    recs
                })
            })
            .collect();
        Load { stop, down, tasks }
    }

    pub fn set_down(&self, replica: usize, is_down: bool) {
        self.down[replica].store(is_down, Ordering::SeqCst);
    }

    /// Waits for the budget (or the time limit) to run out.
    pub async fn finish(self) -> Vec<Rec> {
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|r| r.sent);
        all
    }

    /// Stops the clients (each finishes its current request) and returns every record.
    pub async fn stop(self) -> Vec<Rec> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }
}

/// One POST on the client's connection (opened when there is none). A connection that turns
/// out closed before the request went out is replaced once, silently (nothing was sent).
async fn one(addr: SocketAddr, conn: &mut Option<Client>) -> Outcome {
    for attempt in 0..2 {
        if conn.is_none() {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    *conn = Some(Client::over(tcp, Proto::H1).await);
                }
                Err(e) => return Outcome::ConnError(format!("connect: {e}")),
            }
        }
        let Some(Client::H1(s)) = conn.as_mut() else {
            unreachable!("HTTP/1.1 clients only")
        };
        if s.ready().await.is_err() || s.is_closed() {
            *conn = None;
            if attempt == 0 {
                continue;
            }
            return Outcome::ConnError("connection closed".into());
        }
        let resp = match s
            .send_request(post("/api/v1/endpoint/e/score", "{\"x\": 1}"))
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::ConnError(format!("send: {e}")),
        };
        let status = resp.status().as_u16();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Outcome::ConnError(format!("body: {e}")),
        };
        let code = if status == 200 {
            String::new()
        } else {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|j| j["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        return Outcome::Answer(status, code);
    }
    unreachable!()
}

/// Counts of outcomes, for messages: `{"200": 590, "503 QueueTimeout": 3, "conn": 2}`.
pub fn tally<'a>(
    recs: impl IntoIterator<Item = &'a Rec>,
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in recs {
        let k = match &r.outcome {
            Outcome::Answer(s, c) if c.is_empty() => s.to_string(),
            Outcome::Answer(s, c) => format!("{s} {c}"),
            Outcome::ConnError(_) => "conn".into(),
            Outcome::Timeout => "timeout".into(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// For each replica in `survivors`: how long after `at` the first request it got that was sent
/// after `at` completed with 200 (None: none did).
pub fn recovery(recs: &[Rec], survivors: &[usize], at: Instant) -> Vec<Option<Duration>> {
    survivors
        .iter()
        .map(|&s| {
            recs.iter()
                .filter(|r| r.replica == s && r.sent >= at && r.ok())
                .map(|r| r.done - at)
                .min()
        })
        .collect()
}

/// The longest time, within [from, to], in which no request to `replica` completed with 200.
pub fn longest_gap(recs: &[Rec], replica: usize, from: Instant, to: Instant) -> Duration {
    let mut done: Vec<Instant> = recs
        .iter()
        .filter(|r| r.replica == replica && r.ok() && r.done >= from && r.done <= to)
        .map(|r| r.done)
        .collect();
    done.sort();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for d in done.into_iter().chain([to]) {
        gap = gap.max(d - last);
        last = d;
    }
    gap
}

/// The pod's own high-water mark, read over HTTP from its `/stats` (the truth).
pub async fn pod_max_in_flight(pod: &MockHandle) -> u64 {
    let a = call(pod.addr(), req("GET", "/stats", empty())).await;
    let j = a.json();
    let max = j["maxInFlight"].as_u64().unwrap();
    assert_eq!(max, pod.stats().max_in_flight);
    max
}

/// How long recovery may take after a replica dies or stops answering (the 2 s).
const RECOVERY: Duration = Duration::from_millis(2_000);

/// Spent time of a test, for the log.
fn took(t0: Instant) -> String {
    format!("{:.1} s", t0.elapsed().as_secs_f64())
}

// === the tests ===

/// 3 replicas, 1 pod x 1 slot, 9 clients spread over the replicas, 600 requests: the pod never
/// sees two at once, and every request is served (the queue wait is long enough for all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_one_slot_pod_sees_one_request_at_a_time_across_three_replicas() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let pod = mock("ha-a", 5).await;
    let rs = Replicas::start(HaOpts::default(), &[pod.addr()]).await;
    pod.reset_stats();
    let load = Load::start(rs.http_addrs(), 9, Some(600), Duration::from_secs(15));
    let recs = load.finish().await;
    let counts = tally(&recs);
    let max = pod_max_in_flight(&pod).await;
    eprintln!(
        "a: {} requests {counts:?}, pod maxInFlight {max}, served {}, {}",
        recs.len(),
        pod.stats().served,
        took(t0)
    );
    assert_eq!(recs.len(), 600, "the whole budget within 15 s: {counts:?}");
    assert!(recs.iter().all(Rec::ok), "every request 200: {counts:?}");
    assert_eq!(max, 1, "the pod's own high-water mark");
    assert_eq!(pod.stats().served, 600);
}

/// SIGKILL of replica 0 under traffic (it may be the owner): the pod still never sees two at once,
/// and the surviving replicas' clients get 200s again within 2 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_sigkill_of_a_replica_keeps_the_limit_and_the_others_serve_within_2s() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let pod = mock("ha-b", 5).await;
    let opts = HaOpts {
        request_timeout_ms: 1_000,
        max_queue_wait_ms: 5_000,
        ..HaOpts::default()
    };
    let mut rs = Replicas::start(opts, &[pod.addr()]).await;
    pod.reset_stats();
    let load = Load::start(rs.http_addrs(), 9, None, Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    load.set_down(0, true);
    let killed = Instant::now();
    rs.kill(0);
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let end = Instant::now();
    let recs = load.stop().await;
    let max = pod_max_in_flight(&pod).await;

    let before: Vec<&Rec> = recs.iter().filter(|r| r.done < killed).collect();
    let after: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.replica != 0 && r.sent >= killed)
        .collect();
    let rec = recovery(&recs, &[1, 2], killed);
    let gaps: Vec<Duration> = [1, 2]
        .iter()
        .map(|&s| longest_gap(&recs, s, killed, end))
        .collect();
    let late: Vec<&Rec> = after
        .iter()
        .copied()
        .filter(|r| r.sent >= killed + RECOVERY)
        .collect();
    eprintln!(
        "b: before the kill {:?}; survivors after it {:?} (sent 2 s or more after: {:?}); \
         recovery {rec:?}, longest gap without a 200 {gaps:?}; pod maxInFlight {max}; {}",
        tally(before.iter().copied()),
        tally(after.iter().copied()),
        tally(late.iter().copied()),
        took(t0)
    );
    assert!(
        before.iter().all(|r| r.ok()),
        "all 200 before the kill: {:?}",
        tally(before.iter().copied())
    );
    for (s, r) in [1, 2].iter().zip(&rec) {
        assert!(
            r.is_some_and(|d| d < RECOVERY),
            "replica {s}: a 200 within {RECOVERY:?} of the kill, got {r:?}"
        );
    }
    assert!(
        late.iter().all(|r| r.ok()),
        "survivors: every request sent 2 s after the kill is 200: {:?}",
        tally(late.iter().copied())
    );
    assert!(late.len() > 50, "traffic continued: {}", late.len());
    assert_eq!(max, 1, "the pod's own high-water mark, the kill included");
}

/// Rolling restart (SIGTERM replica i, start it again on the same ports, for each i) under
/// traffic: the pod never sees two at once; every answer is 200; the only failures are
/// connection errors to the replica that is restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_rolling_restart_keeps_the_limit_and_every_answer_is_200() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let pod = mock("ha-c", 5).await;
    let opts = HaOpts {
        request_timeout_ms: 1_000,
        max_queue_wait_ms: 5_000,
        ..HaOpts::default()
    };
    let mut rs = Replicas::start(opts, &[pod.addr()]).await;
    pod.reset_stats();
    let load = Load::start(rs.http_addrs(), 9, None, Duration::from_secs(18));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // (replica, from, to): while each was down for its clients.
    let mut windows = Vec::new();
    for i in 0..rs.list.len() {
        load.set_down(i, true);
        let from = Instant::now();
        rs.terminate(i).await;
        rs.spawn(i);
        rs.wait_listening(i);
        rs.wait_formed().await;
        load.set_down(i, false);
        let to = Instant::now();
        eprintln!(
            "c: replica {i} restarted in {:.0} ms",
            (to - from).as_secs_f64() * 1e3
        );
        windows.push((i, from, to));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let recs = load.stop().await;
    let max = pod_max_in_flight(&pod).await;
    let answers: Vec<&Rec> = recs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Answer(..)))
        .collect();
    // A failure is excused only if it is a connection error (or the client's timeout) to a
    // replica while it was restarting.
    let unexcused: Vec<&Rec> = recs
        .iter()
        .filter(|r| !r.ok())
        .filter(|r| {
            let excused = matches!(r.outcome, Outcome::ConnError(_))
                && windows
                    .iter()
                    .any(|&(i, from, to)| i == r.replica && r.done >= from && r.sent <= to);
            !excused
        })
        .collect();
    eprintln!(
        "c: {} requests {:?}; unexcused failures {:?} (first: {:?}); pod maxInFlight {max}; {}",
        recs.len(),
        tally(&recs),
        tally(unexcused.iter().copied()),
        unexcused.first(),
        took(t0)
    );
    assert!(
        unexcused.is_empty(),
        "only connection errors to the restarting replica: {:?}",
        tally(unexcused.iter().copied())
    );
    assert!(answers.iter().all(|r| r.ok()), "every answer 200");
    assert!(answers.len() > 200, "traffic flowed: {}", answers.len());
    assert_eq!(
        max, 1,
        "the pod's own high-water mark through the rolling restart"
    );
}

/// A replica whose peer port stops answering (SIGSTOP: its sockets stay open, nothing is read):
/// the others keep serving within 2 s, and after SIGCONT (it wakes up believing what it believed)
/// the pod still never sees two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_a_stopped_replica_is_declared_dead_and_the_others_serve_within_2s() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let pod = mock("ha-d", 5).await;
    let opts = HaOpts {
        request_timeout_ms: 800,
        max_queue_wait_ms: 5_000,
        heartbeat_ms: Some(100),
        dead_after_ms: Some(1_000),
        ..HaOpts::default()
    };
    let mut rs = Replicas::start(opts, &[pod.addr()]).await;
    pod.reset_stats();
    let load = Load::start(rs.http_addrs(), 9, None, Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    load.set_down(0, true);
    let stopped = Instant::now();
    rs.signal(0, "STOP");
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    rs.signal(0, "CONT");
    // It wakes up with whatever it held; its own clients stay away, the others keep going.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let end = Instant::now();
    let recs = load.stop().await;
    rs.kill(0);
    let max = pod_max_in_flight(&pod).await;

    let rec = recovery(&recs, &[1, 2], stopped);
    let gaps: Vec<Duration> = [1, 2]
        .iter()
        .map(|&s| longest_gap(&recs, s, stopped, end))
        .collect();
    let late: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.replica != 0 && r.sent >= stopped + RECOVERY)
        .collect();
    eprintln!(
        "d: survivors after the stop {:?} (sent 2 s or more after: {:?}); recovery {rec:?}, \
         longest gap without a 200 {gaps:?}; pod maxInFlight {max}; {}",
        tally(recs.iter().filter(|r| r.replica != 0 && r.sent >= stopped)),
        tally(late.iter().copied()),
        took(t0)
    );
    for (s, r) in [1, 2].iter().zip(&rec) {
        assert!(
            r.is_some_and(|d| d < RECOVERY + Duration::from_millis(500)),
            "replica {s}: a 200 within ~{RECOVERY:?} of the stop, got {r:?}"
        );
    }
    assert!(
        late.iter().all(|r| r.ok()),
        "survivors: every request sent 2 s after the stop is 200: {:?}",
        tally(late.iter().copied())
    );
    assert!(late.len() > 50, "traffic continued: {}", late.len());
    assert_eq!(
        max, 1,
        "the pod's own high-water mark, the stop and the wake-up included"
    );
}

/// Peer auth: a replica with another secret is refused by the others (counted in
/// `infergate_cluster_peer_auth_failures_total`) and does not join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_a_replica_with_another_secret_is_refused_and_counted() {
    let _serial = serial().await;
    let t0 = Instant::now();
    let pod = mock("ha-e", 1).await;
    let mut rs = Replicas::new(HaOpts::default(), &[pod.addr()]);
    rs.use_other_secret(2);
    rs.spawn(0);
    rs.spawn(1);
    rs.wait_listening(0);
    rs.wait_listening(1);
    rs.wait_formed().await;
    let peers_before: Vec<Option<f64>> = {
        let mut v = Vec::new();
        for i in [0, 1] {
            v.push(gauge(
                &metrics_of(rs.list[i].admin_addr()).await,
                "infergate_cluster_peers",
            ));
        }
        v
    };
    rs.spawn(2);
    rs.wait_listening(2);
    let list = &rs.list;
    let counted = eventually(Duration::from_secs(5), async || {
        let mut n = 0.0;
        for i in [0, 1] {
            n += gauge(
                &metrics_of(list[i].admin_addr()).await,
                "infergate_cluster_peer_auth_failures_total",
            )
            .unwrap_or(0.0);
        }
        n >= 1.0
    })
    .await;
    // Give it time to (wrongly) join, then look again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut peers_after = Vec::new();
    let mut failures = Vec::new();
    for i in [0, 1] {
        let text = metrics_of(rs.list[i].admin_addr()).await;
        peers_after.push(gauge(&text, "infergate_cluster_peers"));
        failures.push(gauge(&text, "infergate_cluster_peer_auth_failures_total"));
    }
    eprintln!(
        "e: peers before {peers_before:?} after {peers_after:?}; auth failures {failures:?}; {}",
        took(t0)
    );
    assert!(
        counted,
        "a good replica counts the refused peer: infergate_cluster_peer_auth_failures_total {failures:?}"
    );
    for (i, (b, a)) in peers_before.iter().zip(&peers_after).enumerate() {
        assert!(
            b.is_some_and(|b| b >= 1.0),
            "replica {i} sees its good peer: {b:?}"
        );
        assert_eq!(a, b, "replica {i}: the refused replica did not join");
    }
}

/// `infergate demo --replicas 3`: three routers in one process, each on its own printed port,
/// sharing the demo pods; each serves the printed curl command.
#[cfg(feature = "demo")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_three_replicas_serves_on_each_printed_port() {
    let _serial = serial().await;
    let mut b = Bin::spawn(&[
        "demo",
        "--replicas",
        "3",
        "--https-port",
        "0",
        "--admin-port",
        "0",
        "--peer-port",
        "0",
        "--latency-ms",
        "1",
    ]);
    let mut ports = Vec::new();
    for i in 0..3 {
        let line = b.wait_line(|l| {
            l.trim_start()
                .starts_with(&format!("replica {i}: https://"))
        });
        let port: u16 = line
            .split("https://localhost:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line}"));
        assert!(line.contains("admin http://127.0.0.1:") && line.contains("peer 127.0.0.1:"));
        ports.push(port);
    }
    let line =
        b.wait_line(|l| l.contains("curl --cacert") && l.contains("/api/v1/endpoint/demo/score"));
    let auth = line
        .split("-H 'Authorization: ")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or_else(|| panic!("no Authorization header in {line}"))
        .to_string();
    assert!(
        line.contains(&format!("https://localhost:{}/", ports[0])),
        "the commands use replica 0: {line}"
    );
    let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "three ports: {ports:?}");
    for port in &ports {
        let mut c = Client::tls(SocketAddr::from(([127, 0, 0, 1], *port)), Proto::H2).await;
        let mut q = post("/api/v1/endpoint/demo/score", "{\"data\": [[1, 2, 3, 4]]}");
        q.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        let a = c.call(q).await;
        assert_eq!(a.status, 200, "replica on port {port}");
        assert!(a.json()["pod"].as_str().is_some(), "{a:?}");
    }
    b.signal("INT");
    let status = tokio::task::spawn_blocking(move || b.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A replica cut off from the others (both of them stop answering: no quorum) does what
/// `cluster.onOwnerUnreachable` says, within the request's own queue wait: `refuse` answers 503
/// `OwnerUnavailable` with `Retry-After`, `localShare` serves from its share of the pod's slots;
/// either way the degraded counter says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_a_cut_off_replica_refuses_or_serves_a_local_share_as_configured() {
    let _serial = serial().await;
    for (mode, want_status, label) in [
        (None, 503, "refused"),
        (Some("localShare"), 200, "local_share"),
    ] {
        let pod = mock("ha-f", 1).await;
        let opts = HaOpts {
            slots: 3,
            max_queue_wait_ms: 400,
            heartbeat_ms: Some(100),
            dead_after_ms: Some(600),
            on_owner_unreachable: mode,
            ..HaOpts::default()
        };
        let mut rs = Replicas::start(opts, &[pod.addr()]).await;
        rs.signal(1, "STOP");
        rs.signal(2, "STOP");
        // Replica 0 declares both dead (600 ms of silence) and is left without a quorum.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let asked = Instant::now();
        let a = call(
            rs.list[0].http_addr(),
            post("/api/v1/endpoint/e/score", "{\"x\": 1}"),
        )
        .await;
        let took = asked.elapsed();
        let text = metrics_of(rs.list[0].admin_addr()).await;
        let degraded = text
            .lines()
            .filter(|l| l.starts_with("infergate_cluster_degraded_total") && l.contains(label))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        rs.signal(1, "CONT");
        rs.signal(2, "CONT");
        for i in 0..3 {
            rs.kill(i);
        }
        eprintln!(
            "f: mode {mode:?}: {} in {took:?}, degraded {degraded:?}",
            a.status
        );
        assert_eq!(a.status, want_status, "mode {mode:?}: {:?}", a.body);
        assert!(
            took < Duration::from_millis(400 + 300),
            "mode {mode:?}: answered within the queue wait ({took:?})"
        );
        if want_status == 503 {
            assert_eq!(
                a.json()["error"]["code"],
                "OwnerUnavailable",
                "{:?}",
                a.body
            );
            assert_eq!(a.headers.get("retry-after").unwrap(), "1");
        }
        assert_eq!(
            degraded,
            Some(1.0),
            "mode {mode:?}: counted once as {label}"
        );
    }
}

//! The autoscaler in a closed loop: the real `infergate serve` binary with Kubernetes discovery
//! against the fake API server, which plays the Deployment controller. Every write of the
//! Deployment's `scale` subresource starts mock pods (each added to the Service's EndpointSlices
//! once it is "ready", after a start-up delay) or stops surplus ones (taken out of the slices,
//! then shut down), and keeps the Deployment's `status.replicas`. An open-loop load generator
//! (a fixed request rate, whatever the answers) drives the router's plain HTTP listener.
//!
//! The short tests run in `cargo test`; `autoscale_long` (ignored) is the long form run by
//! `benches/scripts/autoscale.sh`, its durations read from the environment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use infergate_autoscale::decide::ideal_replicas;
use infergate_testkit::{FakeApiServer, ScaleWrite};
use mock_model::MockHandle;
use serde_json::{Value, json};

use crate::ha::{gauge, metrics_of};
use crate::runner::*;
use crate::support::*;

const NS: &str = "ml";
const ENDPOINT: &str = "model-ep";
const DEPLOYMENT: &str = "model";
const SCORE: &str = "/api/v1/endpoint/model-ep/score";

/// Settings of one closed-loop run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Service time of each mock pod.
    pub latency_ms: u64,
    /// `maxConcurrentRequestsPerInstance`.
    pub slots: u32,
    pub max_queue_wait_ms: u64,
    /// From a scale-up write until a new pod is in the EndpointSlices.
    pub startup: Duration,
    /// Grace between taking a pod out of the slices and shutting it down.
    pub stop_grace: Duration,
    /// The Deployment's replicas (and ready pods) at the start.
    pub initial: u32,
    /// `scaleSettings` present (false: the same endpoint without autoscaling).
    pub autoscale: bool,
    pub min: u32,
    pub max: u32,
    pub target_pct: u32,
    pub polling_s: u32,
    pub down_delay_s: u32,
    pub cold_start_ms: u64,
    /// Lease timings of the `autoscaler` section (ms): duration, renew deadline, retry period.
    pub lease: (u64, u64, u64),
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            latency_ms: 50,
            slots: 1,
            max_queue_wait_ms: 500,
            startup: Duration::from_millis(1500),
            stop_grace: Duration::from_millis(500),
            initial: 1,
            autoscale: true,
            min: 1,
            max: 30,
            target_pct: 70,
            polling_s: 1,
            down_delay_s: 60,
            cold_start_ms: 10_000,
            lease: (2000, 1500, 300),
        }
    }
}

impl Opts {
    pub fn polling(&self) -> Duration {
        Duration::from_secs(u64::from(self.polling_s))
    }
    pub fn ideal(&self, rps: f64) -> u32 {
        ideal_replicas(
            rps,
            Duration::from_millis(self.latency_ms),
            self.slots,
            self.target_pct,
        )
    }
}

/// The autoscale tests run one at a time, and not alongside the HA ones: their timing checks
/// assume the two cores are not shared with another multi-process run.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    crate::ha::serial().await
}

// === the fake cluster: API server + Deployment controller ===

struct Pod {
    name: String,
    mock: MockHandle,
}

#[derive(Default)]
struct Pods {
    ready: Vec<Pod>,
    /// Pods started but not ready yet: (name, the task that makes them ready).
    starting: Vec<(String, tokio::task::JoinHandle<()>)>,
    next: u32,
}

/// The fake API server with the Deployment `ml/model`, its pods and the InferenceEndpoint.
pub struct Cluster {
    pub api: Arc<FakeApiServer>,
    pub opts: Opts,
    /// Every scale write of `ml/model`, in order.
    writes: Arc<std::sync::Mutex<Vec<ScaleWrite>>>,
    /// (when, ready pods) at every change of the ready pods.
    ready_log: Arc<std::sync::Mutex<Vec<(Instant, usize)>>>,
    pods: Arc<tokio::sync::Mutex<Pods>>,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

/// One EndpointSlice per pod (each pod has its own port on 127.0.0.1; a slice's ports are
/// shared by its endpoints).
fn slice(pod: &str, port: u16) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{DEPLOYMENT}-{pod}"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": DEPLOYMENT,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}],
    })
}

fn endpoint(o: &Opts) -> Value {
    let mut dep = json!({"name": "blue", "serviceName": DEPLOYMENT, "port": "http"});
    if o.autoscale {
        dep["scaleSettings"] = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
            "minInstances": o.min,
            "maxInstances": o.max,
            "targetUtilizationPercentage": o.target_pct,
            "pollingIntervalSeconds": o.polling_s,
            "scaleDownDelaySeconds": o.down_delay_s,
            "coldStartWaitMs": o.cold_start_ms,
        });
    }
    json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": ENDPOINT, "namespace": NS},
        "spec": {"deployments": [dep], "auth": {"mode": "none"}},
    })
}

/// Writes the Deployment's `status` from the pods (read-modify-write of the stored object).
fn write_status(api: &FakeApiServer, pods: &Pods) {
    if let Some(mut d) = api.get("Deployment", NS, DEPLOYMENT) {
        let total = pods.ready.len() + pods.starting.len();
        d["status"] = json!({"replicas": total, "readyReplicas": pods.ready.len(),
                             "availableReplicas": pods.ready.len()});
        api.apply(d);
    }
}

impl Cluster {
    /// The API server with the Deployment at `opts.initial` replicas (its pods ready), the
    /// InferenceEndpoint, and the Deployment controller listening to scale writes.
    pub async fn start(opts: Opts) -> Cluster {
        let api = Arc::new(FakeApiServer::start_with(infergate_testkit::autoscale_kinds()).await);
        let mut rx = api.scale_writes();
        api.apply(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": DEPLOYMENT, "namespace": NS},
            "spec": {"replicas": opts.initial,
                     "selector": {"matchLabels": {"app": DEPLOYMENT}},
                     "template": {"metadata": {"labels": {"app": DEPLOYMENT}},
                                  "spec": {"containers": [{"name": "model", "image": "mock"}]}}},
            "status": {"replicas": 0},
        }));
        let pods = Arc::new(tokio::sync::Mutex::new(Pods::default()));
        let ready_log = Arc::new(std::sync::Mutex::new(vec![(Instant::now(), 0)]));
        {
            let mut p = pods.lock().await;
            for _ in 0..opts.initial {
                let name = format!("{DEPLOYMENT}-{}", p.next);
                p.next += 1;
                let mock = mock(&name, opts.latency_ms).await;
                api.apply(slice(&name, mock.addr().port()));
                p.ready.push(Pod { name, mock });
            }
            write_status(&api, &p);
            ready_log
                .lock()
                .unwrap()
                .push((Instant::now(), p.ready.len()));
        }
        api.apply(endpoint(&opts));
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let controller = {
            let (api, pods, writes, ready_log, opts) = (
                api.clone(),
                pods.clone(),
                writes.clone(),
                ready_log.clone(),
                opts.clone(),
            );
            tokio::spawn(async move {
                while let Some(w) = rx.recv().await {
                    if (w.kind.as_str(), w.namespace.as_str(), w.name.as_str())
                        != ("Deployment", NS, DEPLOYMENT)
                    {
                        continue;
                    }
                    writes.lock().unwrap().push(w.clone());
                    reconcile(&api, &pods, &ready_log, &opts, w.replicas.max(0) as usize).await;
                }
            })
        };
        Cluster {
            api,
            opts,
            writes,
            ready_log,
            pods,
            controller,
        }
    }

    pub fn writes(&self) -> Vec<ScaleWrite> {
        self.writes.lock().unwrap().clone()
    }

    pub fn ready_log(&self) -> Vec<(Instant, usize)> {
        self.ready_log.lock().unwrap().clone()
    }

    pub async fn ready_pods(&self) -> usize {
        self.pods.lock().await.ready.len()
    }

    pub fn kubeconfig(&self, dir: &std::path::Path) -> String {
        write_file(dir, "kubeconfig", &self.api.kubeconfig())
    }
}

/// Starts or stops pods until `want` are ready or starting.
async fn reconcile(
    api: &Arc<FakeApiServer>,
    pods: &Arc<tokio::sync::Mutex<Pods>>,
    ready_log: &Arc<std::sync::Mutex<Vec<(Instant, usize)>>>,
    opts: &Opts,
    want: usize,
) {
    let mut p = pods.lock().await;
    let have = p.ready.len() + p.starting.len();
    if want > have {
        for _ in have..want {
            let name = format!("{DEPLOYMENT}-{}", p.next);
            p.next += 1;
            let task = {
                let (api, pods, ready_log) = (api.clone(), pods.clone(), ready_log.clone());
                let (name, startup, latency) = (name.clone(), opts.startup, opts.latency_ms);
                tokio::spawn(async move {
                    tokio::time::sleep(startup).await;
                    let mock = mock(&name, latency).await;
                    let mut p = pods.lock().await;
                    let Some(i) = p.starting.iter().position(|(n, _)| *n == name) else {
                        return; // stopped while starting
                    };
                    p.starting.remove(i);
                    api.apply(slice(&name, mock.addr().port()));
                    p.ready.push(Pod { name, mock });
                    write_status(&api, &p);
                    ready_log
                        .lock()
                        .unwrap()
                        .push((Instant::now(), p.ready.len()));
                })
            };
            p.starting.push((name, task));
        }
    } else {
        let mut surplus = have - want;
        while surplus > 0
            && let Some((_, task)) = p.starting.pop()
        {
            task.abort();
            surplus -= 1;
        }
        while surplus > 0
            && let Some(pod) = p.ready.pop()
        {
            api.delete("EndpointSlice", NS, &format!("{DEPLOYMENT}-{}", pod.name));
            let grace = opts.stop_grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                pod.mock.shutdown().await;
            });
            surplus -= 1;
        }
        ready_log
            .lock()
            .unwrap()
            .push((Instant::now(), p.ready.len()));
    }
    write_status(api, &p);
}

// === the router ===

/// One `infergate serve` process with Kubernetes discovery against the cluster.
pub struct RouterProc {
    pub bin: Bin,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub name: String,
}

impl RouterProc {
    pub async fn start(c: &Cluster, dir: &std::path::Path, name: &str) -> RouterProc {
        let o = &c.opts;
        let kubeconfig = c.kubeconfig(dir);
        let f = write_file(
            dir,
            &format!("{name}.yaml"),
            &format!(
                "allowInsecureConnections: true\n\
                 listen: {{https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
                 discovery: {{kube: {{namespaces: [{NS}]}}}}\n\
                 defaults: {{maxConcurrentRequestsPerInstance: {}, maxQueueWaitMs: {}, requestTimeoutMs: 10000}}\n\
                 autoscaler: {{leaseDurationMs: {}, renewDeadlineMs: {}, retryPeriodMs: {}}}\n",
                o.slots, o.max_queue_wait_ms, o.lease.0, o.lease.1, o.lease.2
            ),
        );
        let mut bin = Bin::spawn_env(
            &["serve", "--config", &f, "--workers", "1"],
            &[
                ("KUBECONFIG", &kubeconfig),
                ("POD_NAMESPACE", NS),
                ("POD_NAME", name),
                ("RUST_LOG", "warn,infergate=info,infergate_autoscale=info"),
            ],
        );
        let http = bin.listening("http");
        let admin = bin.listening("admin");
        bin.seen_or_wait_line(|l| l.contains("discovery: first full sync"));
        RouterProc {
            bin,
            http,
            admin,
            name: name.to_string(),
        }
    }

    pub async fn metrics(&self) -> String {
        metrics_of(self.admin).await
    }

    pub async fn is_leader(&self) -> bool {
        tokio::net::TcpStream::connect(self.admin).await.is_ok()
            && gauge(&self.metrics().await, "infergate_autoscaler_leader") == Some(1.0)
    }

    /// Scale writes this process made (its `infergate_autoscaler_decisions_total`).
    pub async fn decisions(&self) -> f64 {
        gauge(
            &self.metrics().await,
            "infergate_autoscaler_decisions_total",
        )
        .unwrap_or(0.0)
    }
}

/// Waits until the router has the endpoint (its status lists the deployment) and, with pods,
/// serves it.
async fn wait_serving(c: &Cluster, r: &RouterProc) {
    assert!(
        eventually(Duration::from_secs(10), async || {
            c.api
                .get("InferenceEndpoint", NS, ENDPOINT)
                .is_some_and(|o| o["status"]["deployments"][0]["name"] == "blue")
        })
        .await,
        "the router never wrote the endpoint's status"
    );
    if c.opts.initial > 0 {
        assert!(
            eventually(Duration::from_secs(10), async || {
                call(r.http, post(SCORE, "{}")).await.status == 200
            })
            .await,
            "the router never served the endpoint"
        );
    }
}

// === the open-loop load ===

/// One request of the load: when it was sent, its status (0: no answer: connection error or
/// client timeout), its latency.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub at: Instant,
    pub status: u16,
    pub latency: Duration,
}

/// Statuses of a set of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub ok: usize,
    pub s503: usize,
    pub other: usize,
}

pub fn counts<'a>(recs: impl IntoIterator<Item = &'a Sent>) -> Counts {
    let mut c = Counts::default();
    for r in recs {
        match r.status {
            200 => c.ok += 1,
            503 => c.s503 += 1,
            _ => c.other += 1,
        }
    }
    c
}

/// The `q` quantile of the latencies of the 200 answers.
pub fn quantile(recs: &[Sent], q: f64) -> Duration {
    let mut l: Vec<Duration> = recs
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.latency)
        .collect();
    if l.is_empty() {
        return Duration::ZERO;
    }
    l.sort();
    l[((l.len() - 1) as f64 * q).round() as usize]
}

/// Per-request timeout of the load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Idle keep-alive connections to the router, shared by the load's requests.
type Pool = Arc<std::sync::Mutex<Vec<hyper::client::conn::http1::SendRequest<Body>>>>;

async fn one(addr: SocketAddr, pool: &Pool) -> u16 {
    let idle = pool.lock().unwrap().pop();
    let mut s = match idle {
        Some(s) if !s.is_closed() => s,
        _ => {
            let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                return 0;
            };
            let _ = tcp.set_nodelay(true);
            let Ok((s, conn)) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
            else {
                return 0;
            };
            tokio::spawn(conn);
            s
        }
    };
    if s.ready().await.is_err() {
        return 0;
    }
    let Ok(resp) = s.send_request(post(SCORE, "{}")).await else {
        return 0;
    };
    let status = resp.status().as_u16();
    if resp.into_body().collect().await.is_err() {
        return 0;
    }
    pool.lock().unwrap().push(s);
    status
}

/// Sends to `addr` at each phase's rate (requests/s, evenly spaced) for its duration, phase
/// after phase, whatever the answers; waits for the last answers (each bounded by
/// [`LOAD_TIMEOUT`]). Returns every request and the start of each phase.
pub async fn open_loop(addr: SocketAddr, phases: &[(f64, Duration)]) -> (Vec<Sent>, Vec<Instant>) {
    assert!(addr.ip().is_loopback());
    let pool: Pool = Arc::default();
    let mut tasks = Vec::new();
    let mut starts = Vec::new();
    for &(rate, dur) in phases {
        let start = Instant::now();
        starts.push(start);
        if rate <= 0.0 {
            tokio::time::sleep(dur).await;
            continue;
        }
        let n = (rate * dur.as_secs_f64()).round() as u64;
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let at = Instant::now();
                let status = tokio::time::timeout(LOAD_TIMEOUT, one(addr, &pool))
                    .await
                    .unwrap_or(0);
                Sent {
                    at,
                    status,
                    latency: at.elapsed(),
                }
            }));
        }
        tokio::time::sleep_until((start + dur).into()).await;
    }
    let mut recs = Vec::with_capacity(tasks.len());
    for t in tasks {
        recs.push(t.await.unwrap());
    }
    (recs, starts)
}

/// `t - since` in seconds, negative when `t` is earlier.
fn signed(t: Instant, since: Instant) -> f64 {
    t.saturating_duration_since(since).as_secs_f64()
        - since.saturating_duration_since(t).as_secs_f64()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

// === the step ===

/// Settings of a load step: `low_rps` for `low`, then `high_rps` for `settle + steady`.
#[derive(Clone, Debug)]
pub struct Step {
    pub low_rps: f64,
    pub high_rps: f64,
    pub low: Duration,
    pub settle: Duration,
    pub steady: Duration,
    /// 503s are compared over this much of the step's start.
    pub compare: Duration,
}

/// What a step run measured.
#[derive(Debug, Default)]
pub struct StepReport {
    /// From the step to the first scale write after it.
    pub first_write: Option<Duration>,
    /// From the step to ready pods >= the ideal.
    pub enough_ready: Option<Duration>,
    pub ideal: u32,
    /// Replicas of the last write (the initial ones without any).
    pub replicas: u32,
    pub max_ready: usize,
    /// Scale writes during the steady part.
    pub steady_changes: usize,
    /// Over `compare` from the step.
    pub step_counts: Counts,
    pub high_counts: Counts,
    pub low_counts: Counts,
    pub p50: Duration,
    pub p99: Duration,
    /// Every scale write: (seconds from the step, replicas).
    pub writes: Vec<(f64, i64)>,
}

/// One step against a fresh cluster and router (autoscaling per `opts.autoscale`).
pub async fn step_run(
    opts: &Opts,
    s: &Step,
) -> (StepReport, Cluster, RouterProc, tempfile::TempDir) {
    let c = Cluster::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let r = RouterProc::start(&c, dir.path(), "router-0").await;
    wait_serving(&c, &r).await;
    let (recs, starts) = open_loop(
        r.http,
        &[(s.low_rps, s.low), (s.high_rps, s.settle + s.steady)],
    )
    .await;
    let step = starts[1];
    let writes = c.writes();
    let ideal = opts.ideal(s.high_rps);
    let after: Vec<&ScaleWrite> = writes.iter().filter(|w| w.at >= step).collect();
    let steady_from = step + s.settle;
    let steady_to = step + s.settle + s.steady;
    let ready = c.ready_log();
    let high: Vec<Sent> = recs.iter().filter(|x| x.at >= step).copied().collect();
    let rep = StepReport {
        first_write: after.first().map(|w| w.at - step),
        enough_ready: ready
            .iter()
            .find(|(t, n)| *t >= step && *n >= ideal as usize)
            .map(|(t, _)| *t - step),
        ideal,
        replicas: writes
            .last()
            .map_or(opts.initial, |w| w.replicas.max(0) as u32),
        max_ready: ready.iter().map(|(_, n)| *n).max().unwrap_or(0),
        steady_changes: writes
            .iter()
            .filter(|w| w.at >= steady_from && w.at <= steady_to)
            .count(),
        step_counts: counts(
            recs.iter()
                .filter(|x| x.at >= step && x.at < step + s.compare),
        ),
        high_counts: counts(&high),
        low_counts: counts(recs.iter().filter(|x| x.at < step)),
        p50: quantile(&high, 0.5),
        p99: quantile(&high, 0.99),
        writes: writes
            .iter()
            .map(|w| (signed(w.at, step), w.replicas))
            .collect(),
    };
    (rep, c, r, dir)
}

/// The same step with autoscaling off (no `scaleSettings`), held for `s.compare`: the 503s to
/// compare with.
async fn step_off(opts: &Opts, s: &Step) -> StepReport {
    let off_opts = Opts {
        autoscale: false,
        ..opts.clone()
    };
    let off_step = Step {
        settle: Duration::ZERO,
        steady: s.compare,
        ..s.clone()
    };
    let (off, c, r, _dir) = step_run(&off_opts, &off_step).await;
    print_step("off", &off_opts, &off_step, &off);
    drop((r, c));
    off
}

fn print_step(label: &str, opts: &Opts, s: &Step, rep: &StepReport) {
    eprintln!(
        "autoscale {label}: step {} -> {} req/s ({} ms, {} slot(s)/pod, target {}%): ideal {} replicas",
        s.low_rps, s.high_rps, opts.latency_ms, opts.slots, opts.target_pct, rep.ideal
    );
    eprintln!(
        "  first scale write after the step: {}; ready pods >= ideal after: {}",
        rep.first_write.map_or("none".into(), secs),
        rep.enough_ready.map_or("never".into(), secs)
    );
    eprintln!(
        "  replicas at the end: {} (ideal {}), most ready pods {}; scale changes during {} of steady load: {}",
        rep.replicas,
        rep.ideal,
        rep.max_ready,
        secs(s.steady),
        rep.steady_changes
    );
    eprintln!(
        "  503s over the step's first {}: {} (200: {}, other: {}); whole high phase: {:?}; low phase: {:?}",
        secs(s.compare),
        rep.step_counts.s503,
        rep.step_counts.ok,
        rep.step_counts.other,
        rep.high_counts,
        rep.low_counts
    );
    eprintln!(
        "  latency of the 200s in the high phase: p50 {} p99 {}",
        secs(rep.p50),
        secs(rep.p99)
    );
    eprintln!(
        "  scale writes (time from the step, replicas): {:?}",
        rep.writes
            .iter()
            .map(|(t, n)| format!("{t:+.2}s:{n}"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_step_scales_up_within_two_polls_and_holds_steady() {
    let _g = serial().await;
    let opts = Opts {
        initial: 2,
        down_delay_s: 60,
        ..Opts::default()
    };
    let s = Step {
        low_rps: 20.0,
        high_rps: 200.0,
        low: Duration::from_secs(2),
        settle: Duration::from_secs(5),
        steady: Duration::from_secs(7),
        compare: Duration::from_secs(5),
    };
    let (on, c, r, _dir) = step_run(&opts, &s).await;
    print_step("on", &opts, &s, &on);
    drop((r, c));
    let off = step_off(&opts, &s).await;
    eprintln!(
        "autoscale step: 503s over the step's first {}: {} with autoscaling, {} without",
        secs(s.compare),
        on.step_counts.s503,
        off.step_counts.s503
    );

    let first = on.first_write.expect("a scale write after the step");
    assert!(
        first <= 2 * opts.polling(),
        "first scale write {first:?} after the step"
    );
    assert!(
        on.replicas >= on.ideal,
        "replicas {} below the ideal {}",
        on.replicas,
        on.ideal
    );
    assert!(on.enough_ready.is_some(), "never {} ready pods", on.ideal);
    assert_eq!(on.steady_changes, 0, "scale changes at steady load");
    assert_eq!(on.high_counts.other, 0, "{:?}", on.high_counts);
    assert!(off.writes.is_empty(), "no scaleSettings, yet scaled");
    assert!(
        on.step_counts.s503 < off.step_counts.s503,
        "503s: {} with autoscaling, {} without",
        on.step_counts.s503,
        off.step_counts.s503
    );
}

/// After the load stops: (time from the stop to the first scale-down write, to the write that
/// reaches `minInstances`).
async fn scale_down_after(
    c: &Cluster,
    stopped: Instant,
    limit: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let min = i64::from(c.opts.min);
    eventually(limit, async || {
        c.writes()
            .last()
            .is_some_and(|w| w.at > stopped && w.replicas == min)
    })
    .await;
    let writes = c.writes();
    let after: Vec<&ScaleWrite> = writes.iter().filter(|w| w.at > stopped).collect();
    (
        after.first().map(|w| w.at - stopped),
        after
            .iter()
            .find(|w| w.replicas == min)
            .map(|w| w.at - stopped),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_scale_down_waits_for_the_delay_then_reaches_min() {
    let _g = serial().await;
    let opts = Opts {
        initial: 1,
        down_delay_s: 3,
        ..Opts::default()
    };
    let c = Cluster::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let r = RouterProc::start(&c, dir.path(), "router-0").await;
    wait_serving(&c, &r).await;
    let (recs, _) = open_loop(r.http, &[(100.0, Duration::from_secs(4))]).await;
    // The last answer: no request is in flight after it.
    let stopped = recs.iter().map(|x| x.at + x.latency).max().unwrap();
    let peak = c.writes().iter().map(|w| w.replicas).max().unwrap_or(0);
    let delay = Duration::from_secs(u64::from(opts.down_delay_s));
    let (first, at_min) = scale_down_after(&c, stopped, delay + 6 * opts.polling()).await;
    eprintln!(
        "autoscale scale-down: peak {peak} replicas under 100 req/s; after the load stopped: first scale-down write {}, minInstances ({}) written {} (scaleDownDelaySeconds {}); writes {:?}",
        first.map_or("none".into(), secs),
        opts.min,
        at_min.map_or("never".into(), secs),
        opts.down_delay_s,
        c.writes()
            .iter()
            .map(|w| format!("{:+.2}s:{}", signed(w.at, stopped), w.replicas))
            .collect::<Vec<_>>()
    );
    assert!(peak > i64::from(opts.min), "the load scaled nothing up");
    // A first step down may come earlier (to the highest want of the window, which the load
    // itself kept below the peak); minInstances needs the window free of every want above it.
    assert!(first.is_some(), "no scale-down");
    let at_min = at_min.expect("minInstances reached");
    // The last decision that saw the load may precede the last answer by up to one poll.
    assert!(
        at_min + opts.polling() >= delay,
        "minInstances written {at_min:?} after the load stopped, before scaleDownDelaySeconds"
    );
    assert!(
        at_min <= delay + 3 * opts.polling(),
        "minInstances reached only {at_min:?} after the load stopped"
    );
    assert!(
        eventually(Duration::from_secs(5), async || c.ready_pods().await
            == opts.min as usize)
        .await
    );
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_from_zero_answers_the_first_request() {
    let _g = serial().await;
    let opts = Opts {
        initial: 0,
        min: 0,
        down_delay_s: 60,
        ..Opts::default()
    };
    let c = Cluster::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let r = RouterProc::start(&c, dir.path(), "router-0").await;
    wait_serving(&c, &r).await;
    // Idle at zero: nothing is scaled.
    tokio::time::sleep(2 * opts.polling()).await;
    assert!(c.writes().is_empty(), "{:?}", c.writes());
    let t0 = Instant::now();
    let a = call(r.http, post(SCORE, "{}")).await;
    let took = t0.elapsed();
    let w = c.writes();
    eprintln!(
        "autoscale from zero: first request answered {} after {} (scale write {} after it; pod start-up {})",
        a.status,
        secs(took),
        w.first()
            .map_or("none".into(), |w| secs(w.at.saturating_duration_since(t0))),
        secs(opts.startup)
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        took <= opts.startup + Duration::from_secs(1),
        "first request took {took:?}"
    );
    // One waiting request at 70%: ceil(1 / 0.7) = 2 replicas (the decision's formula).
    assert_eq!(w.first().map(|w| w.replicas), Some(2), "{w:?}");
    let m = r.metrics().await;
    assert_eq!(
        gauge(&m, "infergate_autoscaler_errors_total").unwrap_or(0.0),
        0.0
    );
}

/// The scale PATCHes the API server answered with 200, with when.
fn scale_patches(api: &FakeApiServer) -> Vec<Instant> {
    api.requests()
        .into_iter()
        .filter(|q| {
            q.method == "PATCH"
                && q.path == format!("/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOYMENT}/scale")
                && q.status == 200
        })
        .map(|q| q.at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_leader_failover_hands_over_without_overlap() {
    let _g = serial().await;
    let opts = Opts {
        initial: 1,
        down_delay_s: 60,
        ..Opts::default()
    };
    let (lease_ms, _, retry_ms) = opts.lease;
    let c = Cluster::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut rs = vec![
        RouterProc::start(&c, dir.path(), "router-a").await,
        RouterProc::start(&c, dir.path(), "router-b").await,
    ];
    wait_serving(&c, &rs[0]).await;
    wait_serving(&c, &rs[1]).await;
    let mut leader = None;
    assert!(
        eventually(Duration::from_secs(10), async || {
            let l = [rs[0].is_leader().await, rs[1].is_leader().await];
            leader = match l {
                [true, false] => Some(0),
                [false, true] => Some(1),
                _ => None,
            };
            leader.is_some()
        })
        .await,
        "no single leader"
    );
    let a = leader.unwrap();
    let b = 1 - a;
    eprintln!("autoscale failover: leader {}", rs[a].name);
    // A small load through the leader (1 pod of 1 slot 90% busy, evenly spaced: hardly a queue, so no
    // panic and no jump far beyond): it scales to 2. The decision samples the slots taken at each
    // poll, so on a loaded machine a few polls may fall between requests: the load goes on, a
    // second at a time, until the write (at most 12 s).
    let load_start = Instant::now();
    while c.writes().is_empty() && load_start.elapsed() < Duration::from_secs(12) {
        open_loop(rs[a].http, &[(18.0, Duration::from_secs(1))]).await;
    }
    if !eventually(Duration::from_secs(3), async || !c.writes().is_empty()).await {
        let m = rs[a].metrics().await;
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| l.contains("autoscaler") || l.contains("cluster_deployment"))
            .collect();
        panic!("the leader did not scale in 15 s; its metrics: {lines:#?}");
    }
    let by_a = rs[a].decisions().await;
    assert_eq!(rs[b].decisions().await, 0.0, "the follower wrote a scale");
    assert!(!rs[b].is_leader().await);
    let before = scale_patches(&c.api);
    assert_eq!(
        before.len() as f64,
        by_a,
        "scale PATCHes vs the leader's writes"
    );

    // SIGKILL the leader: no release of the Lease, the other waits for it to expire.
    let killed = Instant::now();
    rs[a].bin.child.kill().unwrap();
    rs[a].bin.child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || rs[b].is_leader().await).await,
        "no new leader"
    );
    let took = killed.elapsed();
    let lease = c.api.get("Lease", NS, "infergate-autoscaler").unwrap();
    eprintln!(
        "autoscale failover: {} leads {} after the SIGKILL (lease {lease_ms} ms, retry {retry_ms} ms); Lease holder {}",
        rs[b].name,
        secs(took),
        lease["spec"]["holderIdentity"]
    );
    assert_eq!(lease["spec"]["holderIdentity"], rs[b].name.as_str());
    assert!(
        took <= Duration::from_millis(lease_ms + 2 * retry_ms + 500),
        "took {took:?}"
    );
    // The new leader acts: a larger step through it.
    let n_before = c.writes().len();
    open_loop(rs[b].http, &[(200.0, Duration::from_secs(3))]).await;
    let scaled = eventually(Duration::from_secs(3), async || c.writes().len() > n_before).await;
    if !scaled {
        let m = rs[b].metrics().await;
        let lines: Vec<&str> = m.lines().filter(|l| l.contains("autoscaler")).collect();
        panic!(
            "the new leader did not scale: writes {:?}\nits metrics: {lines:#?}",
            c.writes()
        );
    }
    let by_b = rs[b].decisions().await;
    let all = scale_patches(&c.api);
    let after: Vec<Instant> = all.iter().copied().filter(|t| *t > killed).collect();
    eprintln!(
        "autoscale failover: scale writes by {} before the kill: {by_a}, by {} after: {by_b}; PATCHes before {}, after {}; replicas written {:?}",
        rs[a].name,
        rs[b].name,
        before.len(),
        after.len(),
        c.writes().iter().map(|w| w.replicas).collect::<Vec<_>>()
    );
    assert_eq!(all.len(), before.len() + after.len(), "a PATCH between");
    assert_eq!(
        after.len() as f64,
        by_b,
        "every later PATCH is the new leader's"
    );
    assert!(after.first().unwrap() > before.last().unwrap());
    rs.clear();
}

/// The Events of the namespace, as the API server lists them.
async fn events(api: &FakeApiServer) -> Vec<Value> {
    let a = call(
        api.addr(),
        req(
            "GET",
            &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            empty(),
        ),
    )
    .await;
    a.json()["items"].as_array().cloned().unwrap_or_default()
}

fn condition(o: &Value, kind: &str) -> Value {
    o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_status_condition_and_events_after_a_scale_up() {
    let _g = serial().await;
    let opts = Opts {
        initial: 1,
        ..Opts::default()
    };
    let c = Cluster::start(opts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let r = RouterProc::start(&c, dir.path(), "router-0").await;
    wait_serving(&c, &r).await;
    open_loop(r.http, &[(100.0, Duration::from_secs(3))]).await;
    let last = c.writes().last().cloned().expect("scaled up");
    let mut ep = Value::Null;
    let ok = eventually(Duration::from_secs(5), async || {
        ep = c.api.get("InferenceEndpoint", NS, ENDPOINT).unwrap();
        let s = &ep["status"]["deployments"][0]["scale"];
        s["current"] == last.replicas
            && s["desired"].as_i64().is_some()
            && s["lastDecision"].as_str().is_some_and(|d| !d.is_empty())
            && s["lastScaleTime"].as_str().is_some()
            && condition(&ep, "Scaling")["status"] == "True"
    })
    .await;
    eprintln!(
        "autoscale status: {}\n  Scaling: {}",
        ep["status"]["deployments"][0]["scale"],
        condition(&ep, "Scaling")
    );
    assert!(ok, "status not written: {}", ep["status"]);
    assert_eq!(
        ep["status"]["deployments"][0]["scale"]["target"],
        "Deployment/model"
    );
    let evs = events(&c.api).await;
    let up: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e["reason"] == "ScaledUp"
                && e["regarding"]["kind"] == "InferenceEndpoint"
                && e["regarding"]["name"] == ENDPOINT
        })
        .collect();
    eprintln!(
        "autoscale events: {} ScaledUp, e.g. {}",
        up.len(),
        up.first().map_or(String::new(), |e| e["note"].to_string())
    );
    assert!(!up.is_empty(), "{evs:?}");
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_stands_back_when_an_hpa_targets_the_deployment() {
    let _g = serial().await;
    let opts = Opts {
        initial: 1,
        ..Opts::default()
    };
    let c = Cluster::start(opts.clone()).await;
    c.api.apply(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "model-hpa", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
                 "minReplicas": 1, "maxReplicas": 5},
    }));
    let dir = tempfile::tempdir().unwrap();
    let r = RouterProc::start(&c, dir.path(), "router-0").await;
    wait_serving(&c, &r).await;
    open_loop(r.http, &[(100.0, Duration::from_secs(3))]).await;
    let mut ep = Value::Null;
    let ok = eventually(Duration::from_secs(5), async || {
        ep = c.api.get("InferenceEndpoint", NS, ENDPOINT).unwrap();
        let s = condition(&ep, "Scaling");
        s["status"] == "False" && s["reason"] == "HPAConflict"
    })
    .await;
    eprintln!("autoscale HPA: Scaling {}", condition(&ep, "Scaling"));
    assert!(ok, "{}", ep["status"]);
    assert!(
        c.writes().is_empty(),
        "scaled under an HPA: {:?}",
        c.writes()
    );
    assert!(scale_patches(&c.api).is_empty());
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_reports_a_missing_target_and_keeps_routing() {
    let _g = serial().await;
    let opts = Opts::default();
    let c = Cluster::start(opts.clone()).await;
    let mut ie = endpoint(&opts);
    ie["spec"]["deployments"][0]["scaleSettings"]["scaleTargetRef"]["name"] =
        json!("no-such-model");
    c.api.apply(ie);
    let dir = tempfile::tempdir().unwrap();
    let r = RouterProc::start(&c, dir.path(), "router-0").await;
    wait_serving(&c, &r).await;
    let mut ep = Value::Null;
    let ok = eventually(Duration::from_secs(10), async || {
        ep = c.api.get("InferenceEndpoint", NS, ENDPOINT).unwrap();
        let s = condition(&ep, "Scaling");
        s["status"] == "False" && s["reason"] == "TargetNotFound"
    })
    .await;
    let s = condition(&ep, "Scaling");
    eprintln!("autoscale missing target: Scaling {s}");
    assert!(ok, "{}", ep["status"]);
    let msg = s["message"].as_str().unwrap();
    assert!(
        msg.contains("Deployment/no-such-model") && msg.contains("fix"),
        "{msg}"
    );
    // Routing is unaffected, and nothing was written.
    let (sent, _) = open_loop(r.http, &[(20.0, Duration::from_secs(1))]).await;
    let n = counts(&sent);
    assert!(n.ok > 0 && n.s503 == 0 && n.other == 0, "{n:?}");
    assert!(c.writes().is_empty(), "{:?}", c.writes());
    drop(r);
}

// === the long form ===

fn env_f(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_s(name: &str, default: f64) -> Duration {
    Duration::from_secs_f64(env_f(name, default))
}

/// `benches/scripts/autoscale.sh`: a 10x step, `AS_STEADY_S` of constant load, the scale-down,
/// and the same step without autoscaling. Environment (defaults): AS_LOW_RPS (20),
/// AS_STEP_FACTOR (10), AS_LATENCY_MS (50), AS_SLOTS (1), AS_TARGET (70), AS_STARTUP_MS (1500),
/// AS_LOW_S (5), AS_SETTLE_S (AS_DOWN_DELAY_S + 10), AS_STEADY_S (300), AS_COMPARE_S (10),
/// AS_DOWN_DELAY_S (30), AS_MAX (40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by benches/scripts/autoscale.sh"]
async fn autoscale_long() {
    let _g = serial().await;
    let low = env_f("AS_LOW_RPS", 20.0);
    let opts = Opts {
        latency_ms: env_f("AS_LATENCY_MS", 50.0) as u64,
        slots: env_f("AS_SLOTS", 1.0) as u32,
        target_pct: env_f("AS_TARGET", 70.0) as u32,
        startup: env_s("AS_STARTUP_MS", 1500.0) / 1000,
        down_delay_s: env_f("AS_DOWN_DELAY_S", 30.0) as u32,
        max: env_f("AS_MAX", 40.0) as u32,
        ..Opts::default()
    };
    let opts = Opts {
        initial: opts.ideal(low).max(1),
        ..opts
    };
    let s = Step {
        low_rps: low,
        high_rps: low * env_f("AS_STEP_FACTOR", 10.0),
        low: env_s("AS_LOW_S", 5.0),
        // Panic mode may overshoot (it sizes from the backlog); the correction, one scale-down
        // after scaleDownDelaySeconds, is part of settling by default.
        settle: env_s("AS_SETTLE_S", f64::from(opts.down_delay_s) + 10.0),
        steady: env_s("AS_STEADY_S", 300.0),
        compare: env_s("AS_COMPARE_S", 10.0),
    };
    let (on, c, r, _dir) = step_run(&opts, &s).await;
    print_step("on", &opts, &s, &on);
    let stopped = Instant::now();
    let delay = Duration::from_secs(u64::from(opts.down_delay_s));
    let (first, at_min) = scale_down_after(&c, stopped, delay + Duration::from_secs(30)).await;
    eprintln!(
        "  scale-down after the load stopped: first write {}, minInstances ({}) written {} (scaleDownDelaySeconds {})",
        first.map_or("none".into(), secs),
        opts.min,
        at_min.map_or("never".into(), secs),
        opts.down_delay_s
    );
    drop((r, c));
    let off = step_off(&opts, &s).await;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| step | {} -> {} req/s, {} ms, {} slot(s), target {}% |",
        s.low_rps, s.high_rps, opts.latency_ms, opts.slots, opts.target_pct
    );
    println!(
        "| step -> first scale write | {} |",
        on.first_write.map_or("none".into(), secs)
    );
    println!(
        "| step -> ready pods >= ideal | {} |",
        on.enough_ready.map_or("never".into(), secs)
    );
    println!(
        "| 503s, first {} of the step: autoscaling on / off | {} / {} |",
        secs(s.compare),
        on.step_counts.s503,
        off.step_counts.s503
    );
    println!(
        "| steady replicas vs ideal | {} vs {} |",
        on.replicas, on.ideal
    );
    println!(
        "| scale changes during {} of constant load | {} |",
        secs(s.steady),
        on.steady_changes
    );
    println!(
        "| scale-down: first write / minInstances after the load stopped (delay {} s) | {} / {} |",
        opts.down_delay_s,
        first.map_or("none".into(), secs),
        at_min.map_or("never".into(), secs)
    );
}

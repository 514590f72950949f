//! Test support for infergate: a fake Kubernetes API server on 127.0.0.1 that speaks the real list/watch wire protocol.
//!
//! [`otlp`] holds a fake OpenTelemetry collector that decodes the spans it receives.
//!
//! [`FakeApiServer`] holds objects as JSON and serves them the way kube-apiserver does to
//! the real `kube` client:
//!
//! - `GET .../{plural}` LIST with `resourceVersion`, `limit`/`continue` paging,
//!   `labelSelector` (`k`, `!k`, `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`) and
//!   `fieldSelector` (`metadata.name` and `metadata.namespace` with `=`, `==`, `!=`; another
//!   field is refused with 400, so a test never passes on a filter that was silently ignored);
//! - `GET ...?watch=true` WATCH (the same selectors): newline-delimited `WatchEvent` JSON on a
//!   held-open chunked response: `ADDED`, `MODIFIED`, `DELETED` (an object leaving a selector is a
//!   `DELETED` for that watch), `BOOKMARK` (with `allowWatchBookmarks`), and `ERROR` with a
//!   410 `Status` when the requested `resourceVersion` was compacted away; `timeoutSeconds`
//!   ends the response;
//! - `GET`, `POST`, `PUT`, merge `PATCH` and `DELETE` of single objects, and `PUT`/`PATCH` of
//!   the `status` subresource (recorded, with the answer's time and code: see
//!   [`FakeApiServer::requests`]); `PUT` is a compare-and-swap on `metadata.resourceVersion`
//!   (409 `Conflict`), `POST` with `metadata.generateName` and no name gets a generated name;
//! - `GET`, `PUT` and merge `PATCH` of the `scale` subresource (an `autoscaling/v1` `Scale`) of
//!   Deployments and StatefulSets; writes set the workload's `spec.replicas` and are reported
//!   on [`FakeApiServer::scale_writes`] (so a test can play the Deployment controller).
//!
//! Tests change objects directly ([`FakeApiServer::apply`], [`FakeApiServer::delete`]) and
//! break things on command: [`drop_watches`](FakeApiServer::drop_watches),
//! [`expire_watches`](FakeApiServer::expire_watches) (410 Gone),
//! [`compact`](FakeApiServer::compact), [`set_down`](FakeApiServer::set_down) (refuse
//! connections and cut the open ones).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub mod otlp;
mod selector;
pub use selector::Selector;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A kind of object the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKind {
    /// API group (`""` for the core group).
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Plural, the path segment, e.g. `endpointslices`.
    pub plural: String,
    /// Kind, e.g. `EndpointSlice`.
    pub kind: String,
}

impl ResourceKind {
    /// A resource kind.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str) -> Self {
        ResourceKind {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
        }
    }
    /// `apiVersion` as written in objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The kinds served by default: EndpointSlices, InferenceEndpoints, Services, Secrets.
pub fn default_kinds() -> Vec<ResourceKind> {
    vec![
        ResourceKind::new("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
        ResourceKind::new(
            "infergate.io",
            "v1",
            "inferenceendpoints",
            "InferenceEndpoint",
        ),
        ResourceKind::new("", "v1", "services", "Service"),
        ResourceKind::new("", "v1", "secrets", "Secret"),
    ]
}

/// The kinds an autoscaler needs: [`default_kinds`] plus Leases, Deployments, StatefulSets,
/// HorizontalPodAutoscalers (`autoscaling/v2`) and Events (`events.k8s.io/v1`, then core `v1`).
///
/// Two kinds are named `Event`: the kind-name lookups ([`FakeApiServer::get`],
/// [`FakeApiServer::delete`]) find `events.k8s.io/v1` (listed first); objects carrying
/// `apiVersion` (as in [`FakeApiServer::apply`]) and API paths tell them apart.
pub fn autoscale_kinds() -> Vec<ResourceKind> {
    let mut kinds = default_kinds();
    kinds.extend([
        ResourceKind::new("coordination.k8s.io", "v1", "leases", "Lease"),
        ResourceKind::new("apps", "v1", "deployments", "Deployment"),
        ResourceKind::new("apps", "v1", "statefulsets", "StatefulSet"),
        ResourceKind::new(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
        ),
        ResourceKind::new("events.k8s.io", "v1", "events", "Event"),
        ResourceKind::new("", "v1", "events", "Event"),
    ]);
    kinds
}

/// Plurals with a `scale` subresource.
const SCALABLE: [&str; 2] = ["deployments", "statefulsets"];

/// A successful write through the `scale` subresource (see [`FakeApiServer::scale_writes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleWrite {
    /// The workload's kind, e.g. `Deployment`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The `spec.replicas` written.
    pub replicas: i64,
    /// When the write was stored.
    pub at: std::time::Instant,
}

/// One request the server answered (watches included), for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string (raw).
    pub query: String,
    /// `content-type` header, if any.
    pub content_type: Option<String>,
    /// The body, parsed as JSON when it is JSON.
    pub body: Option<Value>,
    /// When it was answered (the answer's head was ready; for a watch, when it opened).
    pub at: std::time::Instant,
    /// The answer's HTTP status code.
    pub status: u16,
}

impl RecordedRequest {
    /// Whether this was a watch.
    pub fn is_watch(&self) -> bool {
        query_pairs(&self.query)
            .iter()
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    }
    /// Whether this was a LIST (a GET on a collection that is not a watch).
    pub fn is_list_of(&self, plural: &str) -> bool {
        self.method == "GET" && self.path.ends_with(&format!("/{plural}")) && !self.is_watch()
    }
}

#[derive(Debug, Clone)]
struct LogEntry {
    rv: u64,
    plural: String,
    namespace: String,
    old: Option<Value>,
    new: Option<Value>,
}

struct WatchConn {
    plural: String,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct State {
    kinds: Vec<ResourceKind>,
    rv: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    /// (plural, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<LogEntry>,
    watches: Vec<WatchConn>,
    requests: Vec<RecordedRequest>,
    next_uid: u64,
    /// Extra delay before each answer (slow API server).
    delay: Duration,
    /// The subscriber of scale writes, if any.
    scale_tx: Option<mpsc::UnboundedSender<ScaleWrite>>,
    /// Counter for `metadata.generateName`.
    next_generated: u64,
}

struct Shared {
    state: Mutex<State>,
    down: watch::Sender<bool>,
}

/// A fake Kubernetes API server on 127.0.0.1 (plain HTTP, no authentication).
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.down.send_replace(true);
    }
}

impl FakeApiServer {
    /// Starts a server on 127.0.0.1:0 serving [`default_kinds`].
    pub async fn start() -> FakeApiServer {
        FakeApiServer::start_with(default_kinds()).await
    }

    /// Starts a server on 127.0.0.1:0 serving `kinds`.
    pub async fn start_with(kinds: Vec<ResourceKind>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (down, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                kinds,
                rv: 1000,
                compacted: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                watches: Vec::new(),
                requests: Vec::new(),
                next_uid: 1,
                delay: Duration::ZERO,
                scale_tx: None,
                next_generated: 0,
            }),
            down,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeApiServer { addr, shared, task }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file's text pointing at this server (no credentials), namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().rv
    }

    /// Creates or replaces an object (found by `apiVersion`, `kind`, `metadata.namespace` and
    /// `metadata.name`). Sets `resourceVersion`, `uid`, `creationTimestamp` (unless given) and
    /// `generation` (bumped when anything but metadata and status changes). Returns the stored
    /// object.
    pub fn apply(&self, obj: Value) -> Value {
        let mut st = self.shared.state.lock();
        let kind = st
            .kind_of(&obj)
            .unwrap_or_else(|| panic!("no served kind for {}", obj["kind"]));
        st.upsert(&kind.plural, obj, false)
    }

    /// Deletes an object; returns it, or `None` when there was none.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut st = self.shared.state.lock();
        let plural = st.kinds.iter().find(|k| k.kind == kind)?.plural.clone();
        st.remove(&plural, namespace, name)
    }

    /// One object, as stored.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.shared.state.lock();
        let plural = &st.kinds.iter().find(|k| k.kind == kind)?.plural;
        st.objects
            .get(&(plural.clone(), namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Every successful write through a `scale` subresource from now on (`PUT` or `PATCH` of
    /// `.../deployments/NAME/scale` or `.../statefulsets/NAME/scale`), in order. One
    /// subscriber: a new call replaces the previous receiver (whose channel then ends).
    pub fn scale_writes(&self) -> mpsc::UnboundedReceiver<ScaleWrite> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.state.lock().scale_tx = Some(tx);
        rx
    }

    /// Number of open watch responses.
    pub fn open_watches(&self) -> usize {
        let mut st = self.shared.state.lock();
        st.watches.retain(|w| !w.tx.is_closed());
        st.watches.len()
    }

    /// Ends every open watch response cleanly (the client re-watches from its last version).
    pub fn drop_watches(&self) {
        self.shared.state.lock().watches.clear();
    }

    /// Forgets the event history: a watch from any older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.shared.state.lock();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Compacts, then sends `ERROR` (410 Gone, reason `Expired`) on every open watch and ends
    /// it: the client must relist.
    pub fn expire_watches(&self) {
        let mut st = self.shared.state.lock();
        st.compacted = st.rv;
        st.log.clear();
        let line = event_line("ERROR", &gone_status(0, st.compacted));
        for w in st.watches.drain(..) {
            let _ = w.tx.send(line.clone());
        }
    }

    /// Sends a `BOOKMARK` at the current resourceVersion on every watch that asked for them.
    pub fn bookmark(&self) {
        let mut st = self.shared.state.lock();
        let rv = st.rv;
        let kinds = st.kinds.clone();
        st.watches.retain(|w| {
            if !w.bookmarks {
                return true;
            }
            let k = kinds.iter().find(|k| k.plural == w.plural).expect("kind");
            let obj = json!({
                "apiVersion": k.api_version(),
                "kind": k.kind,
                "metadata": {"resourceVersion": rv.to_string()},
            });
            w.tx.send(event_line("BOOKMARK", &obj)).is_ok()
        });
    }

    /// `true`: refuse new connections (accepted, then closed at once) and cut open ones,
    /// watches included. `false`: serve again.
    pub fn set_down(&self, down: bool) {
        // Refuse first, then end the watches: a client re-watching in between is refused.
        self.shared.down.send_replace(down);
        if down {
            self.shared.state.lock().watches.clear();
        }
    }

    /// Delays every answer by `d` (a slow API server).
    pub fn set_delay(&self, d: Duration) {
        self.shared.state.lock().delay = d;
    }
}

// === impl State ===

impl State {
    fn kind_of(&self, obj: &Value) -> Option<ResourceKind> {
        let av = obj["apiVersion"].as_str()?;
        let kind = obj["kind"].as_str()?;
        self.kinds
            .iter()
            .find(|k| k.api_version() == av && k.kind == kind)
            .cloned()
    }

    fn kind_by_path(&self, group: &str, version: &str, plural: &str) -> Option<ResourceKind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }

    /// Stores `obj`. With `status_only`, only `status` changes on an existing object.
    fn upsert(&mut self, plural: &str, mut obj: Value, status_only: bool) -> Value {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let key = (plural.to_string(), ns.clone(), name);
        let old = self.objects.get(&key).cloned();
        self.rv += 1;
        let rv = self.rv;
        if let Some(o) = &old {
            if status_only {
                let status = obj.get("status").cloned();
                obj = o.clone();
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            for k in ["uid", "creationTimestamp"] {
                obj["metadata"][k] = o["metadata"][k].clone();
            }
            let spec_changed = strip_meta(o) != strip_meta(&obj);
            let gen_ = o["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(if spec_changed { gen_ + 1 } else { gen_ });
        } else {
            if obj["metadata"]["uid"].is_null() {
                obj["metadata"]["uid"] = json!(format!("uid-{:08}", self.next_uid));
                self.next_uid += 1;
            }
            if obj["metadata"]["creationTimestamp"].is_null() {
                obj["metadata"]["creationTimestamp"] = json!(now_rfc3339(self.next_uid));
            }
            obj["metadata"]["generation"] = json!(1);
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key, obj.clone());
        self.record(plural, &ns, old, Some(obj.clone()));
        obj
    }

    fn remove(&mut self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let mut old =
            self.objects
                .remove(&(plural.to_string(), ns.to_string(), name.to_string()))?;
        self.rv += 1;
        old["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(plural, ns, Some(old.clone()), None);
        Some(old)
    }

    fn record(&mut self, plural: &str, ns: &str, old: Option<Value>, new: Option<Value>) {
        let entry = LogEntry {
            rv: self.rv,
            plural: plural.to_string(),
            namespace: ns.to_string(),
            old,
            new,
        };
        self.watches
            .retain(|w| match watch_event_for(w, &entry, self.rv) {
                Some(line) => w.tx.send(line).is_ok(),
                None => !w.tx.is_closed(),
            });
        self.log.push(entry);
    }
}

/// The event line a watch sees for a change, if it sees one.
fn watch_event_for(w: &WatchConn, e: &LogEntry, rv: u64) -> Option<Bytes> {
    if w.plural != e.plural || w.namespace.as_ref().is_some_and(|n| *n != e.namespace) {
        return None;
    }
    let matches = |o: &Option<Value>| o.as_ref().is_some_and(|o| w.selector.matches(o));
    let (was, is) = (matches(&e.old), matches(&e.new));
    match (was, is) {
        (false, false) => None,
        (false, true) => Some(event_line("ADDED", e.new.as_ref()?)),
        (true, true) => Some(event_line("MODIFIED", e.new.as_ref()?)),
        (true, false) => {
            // Deleted, or left the selector: the watch sees a DELETED of the last state.
            let mut o = e.new.clone().or_else(|| e.old.clone())?;
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            Some(event_line("DELETED", &o))
        }
    }
}

fn strip_meta(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_string(&json!({"type": kind, "object": obj})).expect("json");
    s.push('\n');
    Bytes::from(s)
}

fn gone_status(asked: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {asked} ({oldest})"),
        "reason": "Expired",
        "code": 410,
    })
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// A creation timestamp: the wall clock, plus `seq` seconds so objects created in one test
/// second still order by creation.
fn now_rfc3339(seq: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + seq;
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

// === the HTTP side ===

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut down = shared.down.subscribe();
        if *down.borrow() {
            drop(tcp);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                biased;
                _ = down.wait_for(|d| *d) => {}
                _ = conn => {}
            }
        });
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(v: &Value, code: StatusCode) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(serde_json::to_vec(v).expect("json")))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn fail(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(&status_body(code, reason, message), code)
}

/// A parsed API path.
struct ApiPath {
    kind: ResourceKind,
    namespace: Option<String>,
    name: Option<String>,
    /// The subresource (`status`, `scale`, ...), if any.
    sub: Option<String>,
}

fn parse_path(st: &State, path: &str) -> Option<ApiPath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let kind = st.kind_by_path(group, version, plural)?;
    // The subresources served: `status` of every kind, `scale` of the scalable ones.
    match sub.as_deref() {
        None | Some("status") => {}
        Some("scale") if SCALABLE.contains(&plural) => {}
        Some(_) => return None,
    }
    Some(ApiPath {
        kind,
        namespace,
        name,
        sub,
    })
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (idx, resp) = answer(shared, req).await;
    let mut st = shared.state.lock();
    if let Some(r) = st.requests.get_mut(idx) {
        r.at = std::time::Instant::now();
        r.status = resp.status().as_u16();
    }
    resp
}

/// Answers a request; returns its index in the request log and the answer.
async fn answer(shared: &Arc<Shared>, req: Request<Incoming>) -> (usize, Response<Body>) {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (idx, delay) = {
        let mut st = shared.state.lock();
        st.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
            at: std::time::Instant::now(),
            status: 0,
        });
        (st.requests.len() - 1, st.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let params: BTreeMap<String, String> = query_pairs(&query).into_iter().collect();
    let mut st = shared.state.lock();
    let resp = respond(&mut st, shared, &parts, body, content_type, &path, &params);
    (idx, resp)
}

fn respond(
    st: &mut State,
    shared: &Shared,
    parts: &http::request::Parts,
    body: Option<Value>,
    content_type: Option<String>,
    path: &str,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    // Checked under the state lock: `set_down` flips the flag and then clears the watches under
    // it, so a request either ran before the outage (and its watch was cleared) or is refused.
    // Without this, a request already on an open connection could register a watch after the
    // clear and deliver changes made during the "outage".
    if *shared.down.borrow() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is down (test)",
        );
    }
    let Some(ap) = parse_path(st, path) else {
        return fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    let plural = ap.kind.plural.clone();
    if ap.sub.as_deref() == Some("scale") {
        return scale(st, &ap, &parts.method, body, content_type.as_deref());
    }
    let status_sub = ap.sub.as_deref() == Some("status");
    match (&parts.method, &ap.name) {
        (&Method::GET, None) => {
            let selector = match Selector::parse_with_fields(
                params.get("labelSelector").map_or("", |s| s),
                params.get("fieldSelector").map_or("", |s| s),
            ) {
                Ok(s) => s,
                Err(e) => return fail(StatusCode::BAD_REQUEST, "BadRequest", &e),
            };
            if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch(st, ap, selector, params)
            } else {
                list(st, &ap, &selector, params)
            }
        }
        (&Method::GET, Some(name)) => {
            let key = (plural, ap.namespace.unwrap_or_default(), name.clone());
            match st.objects.get(&key) {
                Some(o) => full(o, StatusCode::OK),
                None => not_found(&ap.kind, name),
            }
        }
        (&Method::POST, None) => {
            let Some(mut obj) = body else {
                return fail(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
            };
            if let Some(ns) = &ap.namespace {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let name = match (
                obj["metadata"]["name"].as_str(),
                obj["metadata"]["generateName"].as_str(),
            ) {
                (Some(n), _) if !n.is_empty() => n.to_string(),
                (_, Some(prefix)) if !prefix.is_empty() => {
                    // kube-apiserver appends 5 random characters; a counter is deterministic.
                    st.next_generated += 1;
                    let n = format!("{prefix}{:05}", st.next_generated);
                    obj["metadata"]["name"] = json!(n);
                    n
                }
                _ => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "metadata.name or metadata.generateName missing",
                    );
                }
            };
            let key = (plural.clone(), ap.namespace.unwrap_or_default(), name);
            if st.objects.contains_key(&key) {
                return fail(StatusCode::CONFLICT, "AlreadyExists", "already exists");
            }
            if let Some(s) = obj.as_object_mut() {
                s.remove("status");
            }
            let stored = st.upsert(&plural, obj, false);
            full(&stored, StatusCode::CREATED)
        }
        (&Method::PUT | &Method::PATCH, Some(name)) => {
            let key = (
                plural.clone(),
                ap.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            let Some(current) = st.objects.get(&key).cloned() else {
                return not_found(&ap.kind, name);
            };
            let Some(body) = body else {
                return fail(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
            };
            let mut next = match written(
                &parts.method,
                body,
                &current,
                current.clone(),
                content_type.as_deref(),
            ) {
                Ok(v) => v,
                Err(resp) => return *resp,
            };
            next["apiVersion"] = current["apiVersion"].clone();
            next["kind"] = current["kind"].clone();
            next["metadata"]["name"] = json!(name);
            next["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
            if !status_sub {
                // The main resource ignores status changes, as with a status subresource.
                match current.get("status") {
                    Some(s) => next["status"] = s.clone(),
                    None => {
                        if let Some(m) = next.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            let stored = st.upsert(&plural, next, status_sub);
            full(&stored, StatusCode::OK)
        }
        (&Method::DELETE, Some(name)) => {
            match st.remove(&plural, &ap.namespace.unwrap_or_default(), name) {
                Some(o) => full(&o, StatusCode::OK),
                None => not_found(&ap.kind, name),
            }
        }
        _ => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the fake API server",
        ),
    }
}

/// The `scale` subresource of a Deployment or StatefulSet: `GET` answers an `autoscaling/v1`
/// `Scale`; `PUT` (compare-and-swap when it carries `metadata.resourceVersion`) and merge
/// `PATCH` set the workload's `spec.replicas`, report a [`ScaleWrite`] and answer the new Scale.
fn scale(
    st: &mut State,
    ap: &ApiPath,
    method: &Method,
    body: Option<Value>,
    content_type: Option<&str>,
) -> Response<Body> {
    let Some(name) = &ap.name else {
        return fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            "scale needs an object name",
        );
    };
    let ns = ap.namespace.clone().unwrap_or_default();
    let key = (ap.kind.plural.clone(), ns.clone(), name.clone());
    let Some(current) = st.objects.get(&key).cloned() else {
        return not_found(&ap.kind, name);
    };
    let replicas = match *method {
        Method::GET => return full(&scale_of(&current), StatusCode::OK),
        Method::PUT | Method::PATCH => {
            let Some(body) = body else {
                return fail(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
            };
            let body = match written(method, body, &current, scale_of(&current), content_type) {
                Ok(v) => v,
                Err(resp) => return *resp,
            };
            match body["spec"]["replicas"].as_i64() {
                Some(r) if r >= 0 => r,
                _ => {
                    return fail(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "spec.replicas: must be a non-negative integer",
                    );
                }
            }
        }
        _ => {
            return fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported by the fake API server",
            );
        }
    };
    let mut next = current;
    next["spec"]["replicas"] = json!(replicas);
    let stored = st.upsert(&ap.kind.plural, next, false);
    if let Some(tx) = &st.scale_tx {
        let _ = tx.send(ScaleWrite {
            kind: ap.kind.kind.clone(),
            namespace: ns,
            name: name.clone(),
            replicas,
            at: std::time::Instant::now(),
        });
    }
    full(&scale_of(&stored), StatusCode::OK)
}

/// The `autoscaling/v1` `Scale` of a workload.
fn scale_of(w: &Value) -> Value {
    let spec = w["spec"]["replicas"].as_i64().unwrap_or(1);
    let status = w["status"]["replicas"].as_i64().unwrap_or(spec);
    let selector = w["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": w["metadata"]["name"],
            "namespace": w["metadata"]["namespace"],
            "resourceVersion": w["metadata"]["resourceVersion"],
            "uid": w["metadata"]["uid"],
            "creationTimestamp": w["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": spec},
        "status": {"replicas": status, "selector": selector},
    })
}

/// The object a write asks for: a `PUT`'s body, refused with 409 when it carries a
/// `resourceVersion` other than `current`'s; a merge `PATCH` applied to `base` (JSON patches are
/// refused with 415).
fn written(
    method: &Method,
    body: Value,
    current: &Value,
    mut base: Value,
    content_type: Option<&str>,
) -> Result<Value, Box<Response<Body>>> {
    if *method == Method::PUT {
        let want = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !want.is_empty() && current["metadata"]["resourceVersion"] != want {
            return Err(Box::new(fail(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )));
        }
        return Ok(body);
    }
    if content_type
        .unwrap_or("")
        .starts_with("application/json-patch+json")
    {
        return Err(Box::new(fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the fake API server takes merge and apply patches only",
        )));
    }
    merge_patch(&mut base, &body);
    Ok(base)
}

fn not_found(kind: &ResourceKind, name: &str) -> Response<Body> {
    fail(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{}.{} \"{name}\" not found", kind.plural, kind.group),
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn list(
    st: &State,
    ap: &ApiPath,
    selector: &Selector,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    // Continue token: "<list rv>|<namespace>/<name>" of the last item sent.
    let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let Some((rv, last)) = c.split_once('|') else {
                return fail(StatusCode::BAD_REQUEST, "BadRequest", "bad continue token");
            };
            let rv: u64 = rv.parse().unwrap_or(0);
            if rv < st.compacted {
                let mut r = full(&gone_status(rv, st.compacted), StatusCode::GONE);
                *r.status_mut() = StatusCode::GONE;
                return r;
            }
            let (ns, name) = last.split_once('/').unwrap_or(("", last));
            (rv, Some((ns.to_string(), name.to_string())))
        }
        None => (st.rv, None),
    };
    let items: Vec<&Value> = st
        .objects
        .iter()
        .filter(|((p, ns, name), _)| {
            *p == ap.kind.plural
                && ap.namespace.as_ref().is_none_or(|n| n == ns)
                && after
                    .as_ref()
                    .is_none_or(|(ans, aname)| (ns, name) > (ans, aname))
        })
        .map(|(_, o)| o)
        .filter(|o| selector.matches(o))
        .collect();
    let more = items.len() > limit;
    let page: Vec<Value> = items.into_iter().take(limit).cloned().collect();
    let cont = if more {
        let last = page.last().expect("a full page");
        format!(
            "{list_rv}|{}/{}",
            last["metadata"]["namespace"].as_str().unwrap_or(""),
            last["metadata"]["name"].as_str().unwrap_or("")
        )
    } else {
        String::new()
    };
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if !cont.is_empty() {
        meta["continue"] = json!(cont);
    }
    full(
        &json!({
            "apiVersion": ap.kind.api_version(),
            "kind": format!("{}List", ap.kind.kind),
            "metadata": meta,
            "items": page,
        }),
        StatusCode::OK,
    )
}

fn watch(
    st: &mut State,
    ap: ApiPath,
    selector: Selector,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let conn = WatchConn {
        plural: ap.kind.plural.clone(),
        namespace: ap.namespace.clone(),
        selector,
        bookmarks: params
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true"),
        tx,
    };
    if from != 0 && from < st.compacted {
        let _ = conn
            .tx
            .send(event_line("ERROR", &gone_status(from, st.compacted)));
        drop(conn);
    } else {
        if from == 0 {
            // "Any" version: the current state as ADDED events, then changes.
            for ((p, ns, _), o) in &st.objects {
                if *p == conn.plural
                    && conn.namespace.as_ref().is_none_or(|n| n == ns)
                    && conn.selector.matches(o)
                {
                    let _ = conn.tx.send(event_line("ADDED", o));
                }
            }
        } else {
            for e in st.log.iter().filter(|e| e.rv > from) {
                if let Some(line) = watch_event_for(&conn, e, e.rv) {
                    let _ = conn.tx.send(line);
                }
            }
        }
        st.watches.push(conn);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        tokio::select! {
            m = rx.recv() => m.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx)),
            _ = tokio::time::sleep_until(deadline) => None,
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests;

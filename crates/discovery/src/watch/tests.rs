//! The glue fed with event streams directly: no API server.

use std::time::Duration;

use futures_util::stream;
use infergate_config::Defaults;
use infergate_proxy::Router;
use infergate_spec::Readiness;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::index::tests::{mk_ie, mk_slice};

type EpTx = mpsc::UnboundedSender<watcher::Result<Event<DynamicObject>>>;
type SlTx = mpsc::UnboundedSender<watcher::Result<Event<EndpointSlice>>>;

fn channel_stream<T: Send + 'static>() -> (mpsc::UnboundedSender<T>, impl Stream<Item = T> + Send) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        tx,
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }),
    )
}

struct Fed {
    ep: EpTx,
    sl: SlTx,
    router: Arc<Router>,
    ready: Arc<Readiness>,
    statuses: mpsc::UnboundedReceiver<StatusUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mk_fed() -> Fed {
    let (ep, eps) = channel_stream();
    let (sl, sls) = channel_stream();
    let router = Router::new(&infergate_proxy::Registry::new());
    let ready = Arc::new(Readiness::default());
    let (stx, statuses) = mpsc::unbounded_channel();
    let d = Discovery::new(Defaults::default(), router.clone())
        .with_readiness(ready.clone())
        .with_status_sink(stx);
    let task = tokio::spawn(d.run(vec![Feed::endpoints(None, eps), Feed::slices(None, sls)]));
    Fed {
        ep,
        sl,
        router,
        ready,
        statuses,
        task,
    }
}

fn ie(ns: &str, name: &str) -> DynamicObject {
    mk_ie(
        ns,
        name,
        json!({"deployments": [{"name": "blue", "serviceName": "svc", "port": "http"}],
               "auth": {"mode": "none"}}),
        0,
    )
}

fn sl(ns: &str, name: &str, ip: &'static str) -> EndpointSlice {
    mk_slice(
        ns,
        name,
        "svc",
        &[("http", 80)],
        &[(ip, Some(true), Some(true), Some(false), "pod")],
    )
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

fn pods(f: &Fed, ep: &str) -> Option<Vec<String>> {
    let t = f.router.table();
    let e = t.endpoint(ep)?;
    Some(
        e.deployments[0]
            .pods
            .iter()
            .map(|p| p.to_string())
            .collect(),
    )
}

#[tokio::test]
async fn nothing_is_published_before_every_feed_has_listed() {
    let f = mk_fed();
    f.ep.send(Ok(Event::Init)).unwrap();
    f.ep.send(Ok(Event::InitApply(ie("ml", "e")))).unwrap();
    f.ep.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    assert!(!f.ready.is_ready(), "slices not listed yet");
    assert!(f.router.table().is_empty());
    f.sl.send(Ok(Event::Init)).unwrap();
    f.sl.send(Ok(Event::InitApply(sl("ml", "s", "10.0.0.1"))))
        .unwrap();
    settle().await;
    assert!(!f.ready.is_ready(), "the slice list is not complete");
    f.sl.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    assert!(f.ready.is_ready());
    assert_eq!(pods(&f, "e").unwrap(), ["10.0.0.1:80"]);
}

#[tokio::test]
async fn a_relist_replaces_the_feed_at_init_done_and_errors_keep_the_table() {
    let mut f = mk_fed();
    for (tx_ep, obj) in [(true, None), (false, Some(sl("ml", "s", "10.0.0.1")))] {
        if tx_ep {
            f.ep.send(Ok(Event::Init)).unwrap();
            f.ep.send(Ok(Event::InitApply(ie("ml", "e")))).unwrap();
            f.ep.send(Ok(Event::InitApply(ie("ml", "gone-soon"))))
                .unwrap();
            f.ep.send(Ok(Event::InitDone)).unwrap();
        } else {
            f.sl.send(Ok(Event::Init)).unwrap();
            f.sl.send(Ok(Event::InitApply(obj.unwrap()))).unwrap();
            f.sl.send(Ok(Event::InitDone)).unwrap();
        }
    }
    settle().await;
    assert!(pods(&f, "gone-soon").is_some());

    // The watch fails: nothing changes.
    f.ep.send(Err(watcher::Error::NoResourceVersion)).unwrap();
    f.sl.send(Err(watcher::Error::NoResourceVersion)).unwrap();
    settle().await;
    assert!(f.ready.is_ready());
    assert!(pods(&f, "gone-soon").is_some());

    // A relist in progress serves the old table; at InitDone the missing object is gone.
    f.ep.send(Ok(Event::Init)).unwrap();
    f.ep.send(Ok(Event::InitApply(ie("ml", "e")))).unwrap();
    settle().await;
    assert!(pods(&f, "gone-soon").is_some(), "the relist is not done");
    f.ep.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    assert!(pods(&f, "gone-soon").is_none());
    assert!(pods(&f, "e").is_some());

    // Live events.
    f.sl.send(Ok(Event::Apply(sl("ml", "s", "10.0.0.2"))))
        .unwrap();
    settle().await;
    assert_eq!(pods(&f, "e").unwrap(), ["10.0.0.2:80"]);
    f.sl.send(Ok(Event::Delete(sl("ml", "s", "10.0.0.2"))))
        .unwrap();
    settle().await;
    assert_eq!(pods(&f, "e").unwrap(), Vec::<String>::new());

    // Statuses went to the sink.
    let mut keys = Vec::new();
    while let Ok(u) = f.statuses.try_recv() {
        keys.push(u.key.to_string());
    }
    assert!(keys.contains(&"ml/e".to_string()), "{keys:?}");
}

#[tokio::test]
async fn a_burst_of_events_is_applied_and_published() {
    let f = mk_fed();
    f.ep.send(Ok(Event::Init)).unwrap();
    f.ep.send(Ok(Event::InitDone)).unwrap();
    f.sl.send(Ok(Event::Init)).unwrap();
    f.sl.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    let before = Arc::as_ptr(&f.router.table());
    // Sent before the task runs again: one batch.
    for i in 0..100 {
        f.ep.send(Ok(Event::Apply(ie("ml", &format!("e{i}")))))
            .unwrap();
    }
    f.sl.send(Ok(Event::Apply(sl("ml", "s", "10.0.0.1"))))
        .unwrap();
    settle().await;
    let t = f.router.table();
    assert_ne!(Arc::as_ptr(&t), before);
    assert_eq!(t.len(), 100);
    assert_eq!(pods(&f, "e99").unwrap(), ["10.0.0.1:80"]);
}

#[tokio::test]
async fn a_task_whose_feeds_end_fails_readiness_and_an_aborted_one_stops_quietly() {
    // Every feed ended (watch streams never do): discovery is dead, readiness fails for good.
    let router = Router::new(&infergate_proxy::Registry::new());
    let ready = Arc::new(Readiness::default());
    let listed = stream::iter(vec![Ok(Event::Init), Ok(Event::InitDone)]);
    Discovery::new(Defaults::default(), router.clone())
        .with_readiness(ready.clone())
        .spawn(vec![Feed::endpoints(None, listed)])
        .await
        .unwrap();
    assert!(ready.is_failed() && !ready.is_ready());

    // Aborted (shutdown, a test's end): the watched task stops too, readiness is untouched.
    let ready = Arc::new(Readiness::default());
    let (ep, eps) = channel_stream();
    let h = Discovery::new(Defaults::default(), router)
        .with_readiness(ready.clone())
        .spawn(vec![Feed::endpoints(None, eps)]);
    let ep: EpTx = ep;
    ep.send(Ok(Event::Init)).unwrap();
    ep.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    assert!(ready.is_ready());
    h.abort();
    assert!(h.await.unwrap_err().is_cancelled());
    settle().await;
    assert!(ep.is_closed(), "the discovery task still runs");
    assert!(!ready.is_failed() && ready.is_ready());
}

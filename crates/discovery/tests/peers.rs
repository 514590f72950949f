//! HA peers from a headless Service's EndpointSlices, through the fake API server and the real
//! kube client.

use std::net::SocketAddr;
use std::time::Duration;

use infergate_discovery::{Backoff, watch_peers_with};
use infergate_metrics::Registry;
use infergate_testkit::FakeApiServer;
use serde_json::{Value, json};
use tokio::sync::watch;

const FAST: Backoff = Backoff {
    min: Duration::from_millis(50),
    max: Duration::from_millis(400),
};

/// How long a change may take to show (the fake API server is local: far less in practice).
const WAIT: Duration = Duration::from_secs(10);

fn client(api: &FakeApiServer) -> kube::Client {
    infergate_tls::install_crypto_provider();
    kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap()
}

/// An EndpointSlice of Service `svc` with `(ip, ready)` endpoints (`None`: no conditions) and
/// the given ports (`name`, `port`).
fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: &[(&str, u16)],
    eps: &[(&str, Option<bool>)],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": eps.iter().map(|(ip, ready)| match ready {
            Some(r) => json!({"addresses": [ip], "conditions": {"ready": r}}),
            None => json!({"addresses": [ip]}),
        }).collect::<Vec<_>>(),
    })
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// Waits until the receiver holds `want`; panics with the last value after [`WAIT`].
async fn expect(rx: &mut watch::Receiver<Vec<SocketAddr>>, want: &[&str]) {
    let want = addrs(want);
    let r = tokio::time::timeout(WAIT, rx.wait_for(|v| *v == want))
        .await
        .map(|r| r.map(|_| ()));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("peer watch ended; wanted {want:?}"),
        Err(_) => panic!(
            "peers are {:?} after {WAIT:?}; wanted {want:?}",
            *rx.borrow()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_peers_follow_the_slices() {
    let api = FakeApiServer::start().await;
    // Present before the watch starts: found by the first list.
    api.apply(slice(
        "ha",
        "peers-a",
        "router-peers",
        &[("peer", 7946)],
        &[("10.0.0.3", Some(true)), ("10.0.0.1", None)],
    ));
    // Another Service's slice and the same Service in another namespace: never peers.
    api.apply(slice(
        "ha",
        "other",
        "something-else",
        &[("peer", 7946)],
        &[("10.9.9.9", Some(true))],
    ));
    api.apply(slice(
        "elsewhere",
        "peers-x",
        "router-peers",
        &[("peer", 7946)],
        &[("10.8.8.8", Some(true))],
    ));
    let registry = Registry::new();
    let mut rx = watch_peers_with(
        client(&api),
        "ha".into(),
        "router-peers".into(),
        7946,
        Some(&registry),
        FAST,
    );
    expect(&mut rx, &["10.0.0.1:7946", "10.0.0.3:7946"]).await;

    // A second slice appears: merged, sorted, the duplicate once; no port named `peer` there,
    // so the given port number.
    api.apply(slice(
        "ha",
        "peers-b",
        "router-peers",
        &[("http", 80)],
        &[("10.0.0.2", Some(true)), ("10.0.0.3", Some(true))],
    ));
    expect(
        &mut rx,
        &["10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.3:7946"],
    )
    .await;

    // An endpoint turns not ready: gone. 10.0.0.3 stays (peers-b still lists it ready).
    api.apply(slice(
        "ha",
        "peers-a",
        "router-peers",
        &[("peer", 7946)],
        &[("10.0.0.3", Some(false)), ("10.0.0.1", Some(false))],
    ));
    expect(&mut rx, &["10.0.0.2:7946", "10.0.0.3:7946"]).await;

    // A slice is deleted.
    api.delete("EndpointSlice", "ha", "peers-b");
    expect(&mut rx, &[]).await;

    // Ready again, on a named port other than the default.
    api.apply(slice(
        "ha",
        "peers-a",
        "router-peers",
        &[("peer", 7000)],
        &[("10.0.0.1", Some(true))],
    ));
    expect(&mut rx, &["10.0.0.1:7000"]).await;

    let text = registry.render();
    assert!(
        text.contains(
            r#"infergate_discovery_lists_total{kind="PeerEndpointSlice",namespace="ha"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_list_and_a_relist_catches_up() {
    let api = FakeApiServer::start().await;
    api.apply(slice(
        "ha",
        "s",
        "peers",
        &[("peer", 7946)],
        &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(true))],
    ));
    let mut rx = watch_peers_with(client(&api), "ha".into(), "peers".into(), 7946, None, FAST);
    expect(&mut rx, &["10.0.0.1:7946", "10.0.0.2:7946"]).await;

    api.set_down(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *rx.borrow(),
        addrs(&["10.0.0.1:7946", "10.0.0.2:7946"]),
        "the last list stays while the API server is down"
    );
    // Changed while down; then compacted, so the watch must relist (410 Gone).
    api.apply(slice(
        "ha",
        "s",
        "peers",
        &[("peer", 7946)],
        &[("10.0.0.2", Some(true))],
    ));
    api.compact();
    api.set_down(false);
    expect(&mut rx, &["10.0.0.2:7946"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_ends_with_its_last_receiver() {
    let api = FakeApiServer::start().await;
    let rx = watch_peers_with(client(&api), "ha".into(), "peers".into(), 7946, None, FAST);
    let deadline = tokio::time::Instant::now() + WAIT;
    while api.open_watches() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no watch opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(rx);
    while api.open_watches() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch stays open after its receiver is gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Issue 14 (edge hardening), the request head and what outsiders can grow: header names with
//! `_`, `X-Forwarded-For` / `Forwarded` / `X-Real-IP` spoofing, a pod's made-up status codes,
//! metric series of endpoints that are gone, and settings near 2^64 from a source that skipped
//! the ceilings. Each test performs the attack over real sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use infergate_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

async fn echo_router(extra: &str) -> (Router, mock_model::MockHandle) {
    let pod = mock("p", 0).await;
    let r = Router::start(&format!(
        "{extra}{}",
        insecure(&format!(
            "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], scoringPath: /echo}}]",
            pod.addr()
        ))
    ))
    .await;
    (r, pod)
}

fn echo_with(headers: &[(&str, &str)]) -> http::Request<Body> {
    let mut q = post("/api/v1/endpoint/e/score", "{}");
    for (k, v) in headers {
        q.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_header_is_rejected() {
    // `X_Api_Key` and `X-Api-Key` are one CGI variable (HTTP_X_API_KEY) behind WSGI servers:
    // a header the router removes could be smuggled under its underscore spelling.
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        let mut q = post("/api/v1/endpoint/e/score", "{}");
        q.headers_mut()
            .insert("x_forwarded_for", "10.0.0.1".parse().unwrap());
        let a = c.call(q).await;
        a.assert_error(400, "InvalidHeaderName");
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("x_forwarded_for"),
            "{}",
            a.json()
        );
    }
    assert_eq!(pod.stats().served, 0, "refused before any pod");
    // Other names with `-` pass.
    let ok = call(r.http(), echo_with(&[("x-api-key", "v")])).await;
    assert_eq!(ok.status, 200);
    assert_eq!(pod.stats().served, 1);

    // `drop`: the request goes on without the header; `allow`: it passes as is.
    let (d, _p) = echo_router("headersWithUnderscores: drop\n").await;
    let a = call(
        d.http(),
        echo_with(&[("x_api_key", "smuggled"), ("x-kept", "1")]),
    )
    .await;
    assert_eq!(a.status, 200);
    let up = &a.json()["headers"];
    assert!(up.get("x_api_key").is_none(), "{up}");
    assert_eq!(up["x-kept"], "1");
    let (al, _p) = echo_router("headersWithUnderscores: allow\n").await;
    let a = call(al.http(), echo_with(&[("x_api_key", "v")])).await;
    assert_eq!(a.json()["headers"]["x_api_key"], "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_x_forwarded_for_is_overwritten() {
    // A client claiming to be 10.0.0.1 (an internal address a model might trust).
    let (r, _pod) = echo_router("").await;
    let spoof = [
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-for", "10.0.0.2"),
    ];
    let a = call(r.http(), echo_with(&spoof)).await;
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "127.0.0.1");

    // Behind one trusted proxy: its entry (the last) is kept, what the client wrote before it
    // is not.
    let (r, _pod) = echo_router("xffTrustedHops: 1\n").await;
    let a = call(
        r.http(),
        echo_with(&[("x-forwarded-for", "10.0.0.1, 198.51.100.23")]),
    )
    .await;
    assert_eq!(
        a.json()["headers"]["x-forwarded-for"],
        "198.51.100.23, 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarded_and_x_real_ip_are_dropped() {
    let (r, _pod) = echo_router("").await;
    let a = call(
        r.http(),
        echo_with(&[
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("x-real-ip", "10.0.0.1"),
        ]),
    )
    .await;
    assert_eq!(a.status, 200);
    let up = &a.json()["headers"];
    assert!(up.get("forwarded").is_none(), "{up}");
    assert!(up.get("x-real-ip").is_none(), "{up}");
    assert_eq!(up["x-forwarded-for"], "127.0.0.1");
}

/// A pod that answers every request with the next status from `codes` (one per connection).
async fn status_pod(codes: Vec<u16>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let next = Arc::new(AtomicU16::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            let code = codes[i % codes.len()];
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {code} Made Up\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_999_does_not_become_a_label() {
    // A pod that answers with made-up codes cannot make a series per code.
    let codes: Vec<u16> = [999, 600, 777, 299, 598, 451, 200]
        .into_iter()
        .chain((600..1000).step_by(37))
        .collect();
    let pod = status_pod(codes.clone()).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{pod}\"]}}]"
    )))
    .await;
    for &want in &codes {
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status.as_u16(), want, "passed through to the client");
    }
    let t = metrics_text(&r).await;
    let series: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("infergate_requests_total{endpoint=\"e\""))
        .collect();
    for l in &series {
        let status = l
            .split("status=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            ["200", "451", "2xx", "5xx", "other"].contains(&status),
            "{l}"
        );
    }
    let other = metric(
        &t,
        "infergate_requests_total{endpoint=\"e\",deployment=\"d\",status=\"other\"}",
    );
    let made_up = codes.iter().filter(|c| **c >= 600).count() as f64;
    assert_eq!(other, made_up, "{t}");
    assert!(!t.contains("status=\"999\""), "{t}");
}

/// Endpoint items for `names`, each with one deployment on `pod`, in mode none.
fn endpoints_yaml(names: &[String], pod: &str) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "  - name: {n}\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{pod}\"]}}]\n"
            )
        })
        .collect()
}

fn specs(names: &[String], pod: &str) -> Vec<infergate_proxy::EndpointSpec> {
    let cfg = Config::from_yaml(&cfg(&endpoints_yaml(names, pod)), "<test>").unwrap();
    infergate_proxy::specs_from_config(&cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_series_disappear_from_metrics() {
    let pod = mock("p", 0).await;
    let p = pod.addr().to_string();
    let both = ["kept".to_string(), "gone".to_string()];
    let r = Router::start(&cfg(&endpoints_yaml(&both, &p))).await;
    for ep in &both {
        let a = call(
            r.http(),
            post(&format!("/api/v1/endpoint/{ep}/score"), "{}"),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let t = metrics_text(&r).await;
    assert!(t.contains("endpoint=\"gone\""), "{t}");
    let baseline = t
        .lines()
        .filter(|l| l.contains("endpoint=\"kept\""))
        .count();

    r.router.publish_specs(&specs(&both[..1], &p));
    let gone = eventually(Duration::from_secs(10), async || {
        !metrics_text(&r).await.contains("endpoint=\"gone\"")
    })
    .await;
    assert!(gone, "{}", metrics_text(&r).await);
    let t = metrics_text(&r).await;
    assert_eq!(
        t.lines()
            .filter(|l| l.contains("endpoint=\"kept\""))
            .count(),
        baseline,
        "the endpoint that stays keeps its series"
    );
    assert_eq!(
        metric(
            &t,
            "infergate_requests_total{endpoint=\"kept\",deployment=\"d\",status=\"200\"}"
        ),
        1.0
    );

    // Endpoints created and deleted over and over (a tenant churning InferenceEndpoints):
    // the registry does not grow.
    let lines = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    let before = lines(&metrics_text(&r).await);
    for round in 0..20 {
        let names: Vec<String> = (0..10).map(|i| format!("churn-{round}-{i}")).collect();
        let mut all = names.clone();
        all.push("kept".into());
        r.router.publish_specs(&specs(&all, &p));
        let a = call(
            r.http(),
            post(&format!("/api/v1/endpoint/{}/score", names[0]), "{}"),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    r.router.publish_specs(&specs(&both[..1], &p));
    let settled = eventually(Duration::from_secs(10), async || {
        let t = metrics_text(&r).await;
        !t.contains("churn-") && lines(&t) == before
    })
    .await;
    assert!(settled, "{}", metrics_text(&r).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_max_overflow_does_not_panic() {
    // Settings near 2^64 from a source that skipped the ceilings (the config and CRD paths
    // refuse them): a failing pod's ejection end (now + 2^64 ms, in nanoseconds) does not fit
    // the pool's clock, and used to panic the request task (debug) or wrap so that the pod was
    // never ejected (release). Now the pod is ejected "forever", the pool fails open, and every
    // request is answered.
    let p = status_pod(vec![503]).await.to_string();
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{p}\"]}}]"
    )))
    .await;
    let mut specs = specs(&["e".to_string()], &p);
    let s = &mut specs[0].deployments[0].settings;
    s.eject_after_consecutive_failures = 1;
    s.ejection_base_ms = u64::MAX;
    s.ejection_max_ms = u64::MAX;
    s.request_timeout_ms = u64::MAX;
    s.max_queue_wait_ms = u64::MAX;
    r.router.publish_specs(&specs);
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for _ in 0..10 {
        let a = c.call(post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(
            a.status, 503,
            "the pod's own 503, passed through (fail open)"
        );
        assert_eq!(a.body, "ok", "the pod's body");
    }
    let t = metrics_text(&r).await;
    assert!(
        metric(&t, "infergate_pod_ejections_total{endpoint=\"e\"") >= 1.0,
        "{t}"
    );
}

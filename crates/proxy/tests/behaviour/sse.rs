//! Server-sent events stay unbuffered end to end: every event the pod sends reaches the client
//! before the pod sends the next one, as its own chunk (HTTP/1.1) or DATA frame (HTTP/2), over
//! plain and TLS listeners, with nothing compressed or coalesced by the router. The pod's stream
//! is gated (the mock sends event k+1 only when told, and the test tells it only once the client
//! has event k), so a router that held an event back would hang the test, however fast the
//! machine; no timing is asserted.

use std::time::Duration;

use http_body_util::BodyExt;

use crate::support::*;

const EVENTS: usize = 6;

async fn release(pod: &mock_model::MockHandle) {
    let a = call(pod.addr(), req("POST", "/gate/release?n=1", empty())).await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_client_before_the_pod_sends_the_next() {
    let pod = mock("sse", 0).await;
    let r = Router::start(&format!(
        "sslCertPemFile: {}\nsslKeyPemFile: {}\nallowInsecureConnections: true\nendpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
        certs_example("server.pem").display(),
        certs_example("server-key.pem").display(),
        pod.addr()
    ))
    .await;
    let https = r.https.expect("TLS listener");
    for (tls, proto) in [
        (false, Proto::H1),
        (false, Proto::H2),
        (true, Proto::H1),
        (true, Proto::H2),
    ] {
        let what = format!("{}{proto:?}", if tls { "TLS " } else { "plain " });
        let mut c = match tls {
            true => Client::tls(https, proto).await,
            false => Client::plain(r.http(), proto).await,
        };
        let mut q = post(
            &format!("/api/v1/endpoint/e/score?streamChunks={EVENTS}&gated=1"),
            "{}",
        );
        let h = q.headers_mut();
        h.insert("accept", "text/event-stream".parse().unwrap());
        h.insert("accept-encoding", "gzip, br".parse().unwrap());
        let resp = c.send(q).await.unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        let headers = resp.headers().clone();
        assert_eq!(headers["content-type"], "text/event-stream", "{what}");
        assert_eq!(headers["cache-control"], "no-cache", "{what}");
        assert!(
            headers.get("content-encoding").is_none(),
            "{what}: not compressed"
        );
        assert!(headers.get("content-length").is_none(), "{what}");
        let mut body = resp.into_body();
        for k in 0..EVENTS {
            let want = format!("data: {{\"chunk\":{k},\"pod\":\"sse\"}}\n\n");
            // Whatever arrives before the pod may send event k+1 is exactly event k.
            let mut got = Vec::new();
            let mut frames = 0;
            while got.len() < want.len() {
                let f = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: event {k} held back by the router"))
                    .expect("the stream goes on")
                    .expect("no error");
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                    frames += 1;
                }
            }
            assert_eq!(String::from_utf8_lossy(&got), want, "{what}");
            assert_eq!(frames, 1, "{what}: event {k} came as one chunk");
            if k + 1 < EVENTS {
                release(&pod).await;
            }
        }
        // Then the end of the stream, and nothing more (an empty DATA frame may carry the end).
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the stream ends")
            .expect("cleanly");
        assert!(rest.to_bytes().is_empty(), "{what}");
    }
}

//! The swagger document fetched through the router names the router as its server (OpenAPI 3:
//! `servers`; Swagger 2.0: `host`, `basePath`, `schemes`), from the request's own scheme, host and
//! URL shape, so that a tool reading it calls the router's scoring URL; the rest of the document
//! is the pod's, and `Content-Length` fits the new body.

use http::Request;

use crate::support::*;

async fn pod_doc(pod: &mock_model::MockHandle, query: &str) -> serde_json::Value {
    call(
        pod.addr(),
        req("GET", &format!("/swagger.json{query}"), empty()),
    )
    .await
    .json()
}

fn get(path: &str, host: &str) -> Request<Body> {
    let mut q = req("GET", path, empty());
    q.headers_mut().insert("host", host.parse().unwrap());
    q
}

/// The document without the keys the router sets.
fn without(mut doc: serde_json::Value, keys: &[&str]) -> serde_json::Value {
    for k in keys {
        doc.as_object_mut().unwrap().remove(*k);
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_3_names_the_router_as_its_server_and_a_tool_can_call_it() {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: demo\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    let original = pod_doc(&pod, "").await;
    for shape in ["endpoint", "service"] {
        for proto in [Proto::H1, Proto::H2] {
            let mut c = Client::plain(r.http(), proto).await;
            let host = format!("127.0.0.1:{}", r.http().port());
            let path = format!("/api/v1/{shape}/demo/swagger.json");
            let mut q = get(&path, &host);
            if proto == Proto::H2 {
                // HTTP/2 names the host in :authority.
                *q.uri_mut() = format!("http://{host}{path}").parse().unwrap();
                q.headers_mut().remove("host");
            }
            let a = c.call(q).await;
            assert_eq!(a.status, 200, "{a:?}");
            assert_eq!(a.header("content-length"), a.body.len().to_string());
            assert_eq!(a.header("content-type"), "application/json");
            let doc = a.json();
            let base = format!("http://{host}/api/v1/{shape}/demo");
            assert_eq!(
                doc["servers"],
                serde_json::json!([{"url": base}]),
                "{proto:?}"
            );
            assert_eq!(
                without(doc.clone(), &["servers"]),
                original,
                "the rest is the pod's"
            );

            // A tool: the server URL + the documented path, nothing else told.
            let url = format!("{}{}", doc["servers"][0]["url"].as_str().unwrap(), "/score");
            let uri: http::Uri = url.parse().unwrap();
            let addr: std::net::SocketAddr = uri.authority().unwrap().as_str().parse().unwrap();
            let a = call(addr, post(uri.path(), "{\"data\": [1]}")).await;
            assert_eq!(a.status, 200, "{url}: {a:?}");
            assert_eq!(a.json()["pod"], "p");
        }
    }
    // HEAD: no length that would not fit the rewritten document.
    let a = call(
        r.http(),
        req("HEAD", "/api/v1/endpoint/demo/swagger.json", empty()),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(a.headers.get("content-length").is_none(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_2_gets_host_base_path_and_schemes() {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: demo\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    // The query reaches the pod (`version=2`: the Azure ML inference server's Swagger 2.0).
    let original = pod_doc(&pod, "?version=2").await;
    assert_eq!(original["swagger"], "2.0");
    let a = call(
        r.http(),
        get(
            "/api/v1/endpoint/demo/swagger.json?version=2",
            "infer.example.com",
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), a.body.len().to_string());
    let doc = a.json();
    assert_eq!(doc["host"], "infer.example.com");
    assert_eq!(doc["basePath"], "/api/v1/endpoint/demo");
    assert_eq!(doc["schemes"], serde_json::json!(["http"]));
    assert!(doc.get("servers").is_none());
    let keys = ["host", "basePath", "schemes"];
    assert_eq!(without(doc, &keys), without(original, &keys));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheme_is_the_listeners_or_a_trusted_proxys() {
    let pod = mock("p", 0).await;
    let endpoints = format!(
        "endpoints:\n  - name: demo\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
        pod.addr()
    );
    let tls = format!(
        "sslCertPemFile: {}\nsslKeyPemFile: {}\nallowInsecureConnections: true\n",
        certs_example("server.pem").display(),
        certs_example("server-key.pem").display(),
    );
    // TLS (HTTP/2, ALPN): https and the :authority.
    let r = Router::start(&format!("{tls}{endpoints}")).await;
    let https = r.https.unwrap();
    let mut c = Client::tls(https, Proto::H2).await;
    let mut q = req("GET", "/api/v1/endpoint/demo/swagger.json", empty());
    *q.uri_mut() = format!(
        "https://localhost:{}/api/v1/endpoint/demo/swagger.json",
        https.port()
    )
    .parse()
    .unwrap();
    q.headers_mut().remove("host");
    let doc = c.call(q).await.json();
    assert_eq!(
        doc["servers"][0]["url"],
        format!("https://localhost:{}/api/v1/endpoint/demo", https.port())
    );
    // A client's X-Forwarded-Proto is not believed by a router that trusts no proxy...
    let mut q = get("/api/v1/endpoint/demo/swagger.json", "infer.example.com");
    q.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let doc = call(r.http(), q).await.json();
    assert_eq!(
        doc["servers"][0]["url"],
        "http://infer.example.com/api/v1/endpoint/demo"
    );
    drop(r);

    // ... and is, behind a trusted proxy (`xffTrustedHops: 1`) that terminated TLS.
    let r = Router::start(&format!(
        "allowInsecureConnections: true\nxffTrustedHops: 1\n{endpoints}"
    ))
    .await;
    let mut q = get("/api/v1/endpoint/demo/swagger.json", "infer.example.com");
    q.headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let doc = call(r.http(), q).await.json();
    assert_eq!(
        doc["servers"][0]["url"],
        "https://infer.example.com/api/v1/endpoint/demo"
    );
}
